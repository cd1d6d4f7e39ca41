//! Checks on a decoded [`Desired`] that its types cannot express: names,
//! references between sections, vdevs, sizes. Pure: it sees only the model
//! (and pool capacities when the caller knows them), never the host.
//!
//! Every check runs, so the operator gets all findings at once; each finding
//! carries the key path it is about, which the caller turns into a
//! `file:line:column`.

use std::collections::{BTreeMap, HashMap};

use super::model::{Desired, Disk, Pool, Vdisk};
use super::parse::{Point, Step, Undecoded};
use super::values::{Mode, SECTOR_BYTES, Size, Source, Toolstack};
use crate::vdev::Vdev;

/// Longest vdisk name: a device-mapper name holds 127 bytes, less `xendisk-`.
pub const MAX_VDISK_NAME: usize = 127 - "xendisk-".len();

const MIB_SECTORS: u64 = (1 << 20) / SECTOR_BYTES;

/// One thing wrong, and where in the file it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: Vec<Step>,
    pub point: Point,
    pub message: String,
    pub notes: Vec<String>,
}

/// Sizes of devices the caller knows (from the state DB or the host), by
/// path. A pool's capacity is known when the sizes of all its devices are;
/// otherwise its vdisks are not checked against it.
pub type Capacities = BTreeMap<String, Size>;

/// Runs every check and returns all findings, in no particular order.
/// `undecoded` names the entries that failed to decode, so references to them
/// are not reported as unknown.
pub fn validate(desired: &Desired, capacities: &Capacities, undecoded: &Undecoded) -> Vec<Finding> {
    let mut findings = Findings::default();
    check_pools(desired, undecoded, &mut findings);
    check_vdisks(desired, capacities, undecoded, &mut findings);
    check_domains(desired, undecoded, &mut findings);
    check_shared_writers(desired, &mut findings);
    findings.0
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, path: Vec<Step>, point: Point, message: String, note: impl Into<String>) {
        self.0.push(Finding {
            path,
            point,
            message,
            notes: vec![note.into()],
        });
    }
}

fn path(keys: &[&str]) -> Vec<Step> {
    keys.iter().map(|k| Step::Key((*k).to_owned())).collect()
}

/// A name usable as a xenstore path element (alphanumerics, `-`, `_`; see
/// xen's docs/misc/xenstore.txt) and inside a device-mapper name.
fn check_name(kind: &str, name: &str, section: &str, findings: &mut Findings) {
    let well_formed = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let message = if !well_formed {
        format!("{kind} name \"{name}\" is not allowed")
    } else if name.len() > MAX_VDISK_NAME {
        format!("{kind} name \"{name}\" is {} characters long", name.len())
    } else {
        return;
    };
    findings.add(
        path(&[section, name]),
        Point::Key,
        message,
        format!(
            "expected a letter or digit, then letters, digits, `-` or `_`, at most \
             {MAX_VDISK_NAME} characters (it becomes a xenstore path element and the \
             device-mapper name xendisk-NAME)"
        ),
    );
}

fn check_pools(desired: &Desired, undecoded: &Undecoded, findings: &mut Findings) {
    for name in &undecoded.pools {
        check_name("pool", name, "pools", findings);
    }
    // First place each device was listed, to name it when it comes again.
    let mut first_listed: HashMap<String, (&str, usize)> = HashMap::new();
    for (name, pool) in &desired.pools {
        check_name("pool", name, "pools", findings);
        check_extent_size(name, pool, findings);
        for (index, device) in pool.devices.iter().enumerate() {
            let at = || {
                let mut p = path(&["pools", name, "devices"]);
                p.push(Step::Index(index));
                p
            };
            if !device.starts_with('/') {
                findings.add(
                    at(),
                    Point::Value,
                    format!("pool device \"{device}\" is not an absolute path"),
                    "expected a block device or image path such as \"/dev/sdb3\"",
                );
                continue;
            }
            let key = normalise_path(device);
            match first_listed.get(&key) {
                Some(&(other, _)) if other == name.as_str() => findings.add(
                    at(),
                    Point::Value,
                    format!("pool device \"{device}\" is listed twice in pool `{name}`"),
                    "remove the second entry",
                ),
                Some(&(other, _)) => findings.add(
                    at(),
                    Point::Value,
                    format!("pool device \"{device}\" is in pool `{name}` and in pool `{other}`"),
                    "a device belongs to one pool only; remove it from one of them",
                ),
                None => {
                    first_listed.insert(key, (name, index));
                }
            }
        }
    }
}

/// Lexically normalised, so `/dev//sdb` and `/dev/./sdb` count as `/dev/sdb`.
/// Symbolic links (by-id names) are resolved later, against the host.
fn normalise_path(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

fn check_extent_size(name: &str, pool: &Pool, findings: &mut Findings) {
    let sectors = pool.extent_size.sectors();
    if sectors < MIB_SECTORS || !sectors.is_multiple_of(MIB_SECTORS) {
        findings.add(
            path(&["pools", name, "extent_size"]),
            Point::Value,
            format!(
                "extent size of pool `{name}` is {}, not a whole number of MiB",
                pool.extent_size
            ),
            "expected at least 1MiB, in whole MiB, such as \"64MiB\"",
        );
    }
}

fn check_vdisks(
    desired: &Desired,
    capacities: &Capacities,
    undecoded: &Undecoded,
    findings: &mut Findings,
) {
    for name in &undecoded.vdisks {
        check_name("vdisk", name, "vdisks", findings);
    }
    for (name, vdisk) in &desired.vdisks {
        check_name("vdisk", name, "vdisks", findings);
        let Some(pool) = desired.pools.get(&vdisk.pool) else {
            if !undecoded.pools.contains(&vdisk.pool) {
                findings.add(
                    path(&["vdisks", name, "pool"]),
                    Point::Value,
                    format!("vdisk `{name}` is in unknown pool `{}`", vdisk.pool),
                    known("pools", desired.pools.keys().chain(&undecoded.pools)),
                );
            }
            continue;
        };
        check_size(name, vdisk, pool, pool_capacity(pool, capacities), findings);
    }
}

/// Whole extents on all the pool's devices, if every device's size is known.
fn pool_capacity(pool: &Pool, capacities: &Capacities) -> Option<Size> {
    let extent = pool.extent_size.sectors().max(1);
    let mut sectors = 0u64;
    for device in &pool.devices {
        let size = capacities
            .get(device)
            .or_else(|| capacities.get(&normalise_path(device)))?;
        sectors = sectors.saturating_add(size.sectors() / extent * extent);
    }
    Some(Size::from_sectors(sectors))
}

fn check_size(
    name: &str,
    vdisk: &Vdisk,
    pool: &Pool,
    capacity: Option<Size>,
    findings: &mut Findings,
) {
    let at = || path(&["vdisks", name, "size"]);
    if vdisk.size.sectors() == 0 {
        findings.add(
            at(),
            Point::Value,
            format!("vdisk `{name}` has size 0"),
            "expected a size of at least one extent",
        );
        return;
    }
    let Some(capacity) = capacity else {
        return;
    };
    let extent = pool.extent_size.sectors().max(1);
    let needed = vdisk.size.sectors().div_ceil(extent).saturating_mul(extent);
    if needed > capacity.sectors() {
        findings.add(
            at(),
            Point::Value,
            format!(
                "vdisk `{name}` needs {} but pool `{}` holds only {}",
                Size::from_sectors(needed),
                vdisk.pool,
                capacity
            ),
            "add devices to the pool or make the vdisk smaller",
        );
    }
}

fn check_domains(desired: &Desired, undecoded: &Undecoded, findings: &mut Findings) {
    for (name, domain) in &desired.domains {
        if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
            findings.add(
                path(&["domains", name]),
                Point::Key,
                format!("domain name \"{}\" is not allowed", name.escape_default()),
                "expected the name xl shows for the domain: not empty, no `/`, no control characters",
            );
        }
        // Device id to the vdev that claimed it first.
        let mut ids: BTreeMap<u32, &str> = BTreeMap::new();
        for (vdev_text, disk) in &domain.disks {
            let at = |leaf: Option<&str>| {
                let mut p = path(&["domains", name, "disks", vdev_text]);
                p.extend(leaf.map(|l| Step::Key(l.to_owned())));
                p
            };
            match Vdev::parse(vdev_text) {
                Err(error) => findings.add(
                    at(None),
                    Point::Key,
                    format!("invalid vdev in domain `{name}`: {error}"),
                    "see `xendisk vdev NAME` and xen-vbd-interface(7)",
                ),
                Ok(vdev) => {
                    if let Some(first) = ids.insert(vdev.device_id(), vdev_text) {
                        ids.insert(vdev.device_id(), first);
                        findings.add(
                            at(None),
                            Point::Key,
                            format!(
                                "vdevs `{first}` and `{vdev_text}` of domain `{name}` are the same \
                                 device (id {}, {vdev})",
                                vdev.device_id()
                            ),
                            "a guest sees one disk per device id; keep one of them",
                        );
                    }
                }
            }
            check_format(name, vdev_text, disk, at(Some("format")), findings);
            if let Source::Vdisk(vdisk) = &disk.source
                && !desired.vdisks.contains_key(vdisk)
                && !undecoded.vdisks.contains(vdisk)
            {
                findings.add(
                    at(Some("source")),
                    Point::Value,
                    format!("{vdev_text} of domain `{name}` uses unknown vdisk `{vdisk}`"),
                    known("vdisks", desired.vdisks.keys().chain(&undecoded.vdisks)),
                );
            }
        }
    }
}

/// Only an image file has a format of its own: a vdisk is raw extents, and
/// a block device is handed over as it is (blkback serves raw only).
fn check_format(domain: &str, vdev: &str, disk: &Disk, at: Vec<Step>, findings: &mut Findings) {
    let what = match &disk.source {
        _ if disk.format.is_raw() => return,
        Source::File(_) => return,
        Source::Vdisk(_) => "a vdisk, which is raw extents",
        Source::Phy(_) => "a block device, which is handed to the guest as it is",
    };
    findings.add(
        at,
        Point::Value,
        format!(
            "{vdev} of domain `{domain}` has format \"{}\" but its source {} is {what}",
            disk.format, disk.source
        ),
        "a format other than raw is for image files: source = \"file:/PATH\"; \
         remove `format` (or write format = \"raw\")",
    );
}

/// `w!` in more than one domain under `toolstack = "xl"`: xl's access is
/// only `r` or `rw`, and Xen's `block` hotplug script refuses a device
/// another domain already writes (tools/hotplug/Linux/block,
/// `check_sharing`), so the second attach would fail on the host after the
/// first had been made. The xenstore toolstack writes mode `w!`, for which
/// the script skips that check.
fn check_shared_writers(desired: &Desired, findings: &mut Findings) {
    if desired.settings.toolstack != Toolstack::Xl {
        return;
    }
    // Source to the first domain that writes it with `w!`.
    let mut first: HashMap<String, &str> = HashMap::new();
    for (name, domain) in &desired.domains {
        for (vdev, disk) in &domain.disks {
            if disk.mode != Mode::WriteShared {
                continue;
            }
            let source = disk.source.to_string();
            match first.get(source.as_str()) {
                None => {
                    first.insert(source, name);
                }
                Some(other) if *other != name.as_str() => findings.add(
                    path(&["domains", name, "disks", vdev, "mode"]),
                    Point::Value,
                    format!(
                        "{source} is written by domains `{other}` and `{name}` (`w!`), which \
                         toolstack \"xl\" cannot attach: xl has no `w!` access, and Xen's block \
                         hotplug script refuses a second writer"
                    ),
                    "set toolstack = \"xenstore\" in [settings] (it writes mode `w!`, which the \
                     script accepts), or let only one domain write the disk",
                ),
                Some(_) => {}
            }
        }
    }
}

fn known<'a>(what: &str, names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if names.is_empty() {
        format!("no {what} are declared; declare it under [{what}.NAME]")
    } else {
        format!("declared {what}: {}", names.join(", "))
    }
}
