//! The simulated host's hotplug step: what Xen's `block` script
//! (tools/hotplug/Linux/block, block-common.sh, xen-hotplug-common.sh)
//! does for `add`, run as dom0 once blkback has taken a backend up
//! (InitWait) and the backend names a `block` script, as libxl (or
//! xendisk's xenstore toolstack) runs it.
//!
//! It decides from a [`HostView`], the simulated dom0's block devices and
//! mounts, instead of `stat` and `/proc/mounts`; image files are looked up
//! under the view's directory. Like the script it:
//! - reads `params`, `mode` and `frontend-id`, each required (`fatal
//!   "xenstore-read backend/vbd/D/N/params failed."`, status `error`);
//! - takes a known block device as it is, a regular file through a new
//!   loop device (written to `node`), and anything else as nothing to do:
//!   the real script then writes `hotplug-status = "connected"` and no
//!   `physical-device`, and blkback never connects;
//! - refuses (status `busy`) a device whose exact number dom0 mounts (read-
//!   write, for a read-only request) or another domain's backend holds (any
//!   mode for `w`, writable for `r`), with the script's own words; `w!`
//!   skips the check;
//! - writes `physical-device` as `%x:%x` (`stat -c %t:%T`),
//!   `physical-device-path` and `hotplug-status = "connected"`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::store::Store;
use super::vbds::VbdIndex;
use crate::extent::DevNum;

/// The major number of loop devices.
const LOOP_MAJOR: u32 = 7;
/// The major number device-mapper gets on Linux hosts (253, `fd`).
const DM_MAJOR: u32 = 253;

/// A block device node of the simulated dom0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    pub number: DevNum,
    pub sectors: u64,
    /// The node the path leads to (`/dev/dm-0` for `/dev/mapper/vg0-root`).
    pub canonical: String,
}

/// What the simulated dom0 has, as far as the block script looks.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    /// Block device nodes by path (`/dev/NAME`, `/dev/mapper/DM-NAME`).
    pub devices: BTreeMap<String, HostDevice>,
    /// Devices dom0 mounts read-write, and read-only.
    pub mounted_rw: BTreeSet<DevNum>,
    pub mounted_ro: BTreeSet<DevNum>,
    /// Where image files are: a file's path is looked up under this
    /// directory (a `--sim` host's); `None`: no file exists.
    pub files_under: Option<PathBuf>,
    /// Device-mapper nodes under this prefix are taken to exist (a
    /// `--sim` host's vdisks, which xendisk realises by path alone): each
    /// gets the next free device-mapper number, and a size of 0 sectors.
    pub assumed_under: Option<String>,
}

impl HostView {
    /// The view of the dom0 captured under `root` (`sys/`, `proc/mounts`),
    /// read as `observe` reads it; vdisks realised by path are assumed.
    pub fn of_host_root(root: &Path) -> Result<HostView, crate::observe::ObserveError> {
        let options = crate::observe::ObserveOptions {
            host_root: root.to_owned(),
        };
        let (devices, uses) = crate::observe::observe_dom0(&options)?;
        let mut view = HostView {
            files_under: Some(root.to_owned()),
            assumed_under: Some("/dev/mapper/xendisk-".to_owned()),
            ..HostView::default()
        };
        for device in &devices {
            let canonical = format!("/dev/{}", device.name);
            let node = HostDevice {
                number: device.device,
                sectors: device.sectors,
                canonical: canonical.clone(),
            };
            if let Some(dm) = &device.dm_name {
                view.devices
                    .insert(format!("/dev/mapper/{dm}"), node.clone());
            }
            view.devices.insert(canonical, node);
        }
        for used in uses {
            if let (crate::observe::UseKind::Mount, Some(via)) = (used.kind, used.via) {
                match used.writable {
                    true => view.mounted_rw.insert(via),
                    false => view.mounted_ro.insert(via),
                };
            }
        }
        Ok(view)
    }

    /// An image file `path` names, under the view's directory.
    fn file(&self, path: &str) -> Option<PathBuf> {
        let under = self.files_under.as_ref()?;
        let file = under.join(path.trim_start_matches('/'));
        file.is_file().then_some(file)
    }
}

/// `stat -c %t:%T`: major and minor in hexadecimal.
pub fn hex(number: DevNum) -> String {
    format!("{:x}:{:x}", number.major, number.minor)
}

/// `physical-device` read back (`%x:%x`, as blkback scans it).
pub fn parse_hex(text: &str) -> Option<DevNum> {
    let (major, minor) = text.trim().split_once(':')?;
    Some(DevNum::new(
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    ))
}

/// The script's `canonicalise_mode`: `r`, `w`, or `!` for `w!`.
fn canonical_mode(mode: &str) -> char {
    match (mode.contains('w'), mode.contains('!')) {
        (false, _) => 'r',
        (true, false) => 'w',
        (true, true) => '!',
    }
}

fn read(store: &Store, path: &str) -> Option<String> {
    store
        .read(path)
        .ok()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A device a simulated script made or took, as blkback finds it: its
/// number and size, for a backend's `physical-device`.
pub fn opened(store: &Store, host: &HostView, backend: &str) -> Option<(DevNum, u64)> {
    let number = parse_hex(&read(store, &format!("{backend}/physical-device"))?)?;
    if let Some(device) = host.devices.values().find(|d| d.number == number) {
        return Some((number, device.sectors));
    }
    let path = read(store, &format!("{backend}/physical-device-path"))?;
    if read(store, &format!("{backend}/node")).as_deref() == Some(path.as_str()) {
        let params = read(store, &format!("{backend}/params"))?;
        let size = std::fs::metadata(host.file(&params)?).ok()?.len();
        return Some((number, size / 512));
    }
    let assumed = host
        .assumed_under
        .as_deref()
        .is_some_and(|prefix| path.starts_with(prefix));
    (assumed && number.major == DM_MAJOR).then_some((number, 0))
}

/// The writes of one run of the script's `add` for `backend`, in order.
pub fn add(
    store: &Store,
    vbds: &VbdIndex,
    host: &HostView,
    backend: &str,
) -> Vec<(String, String)> {
    let relative = backend.trim_start_matches("/local/domain/0/");
    let at = |leaf: &str| format!("{backend}/{leaf}");
    let fatal = |message: String| {
        vec![
            (at("hotplug-error"), message),
            (at("hotplug-status"), "error".to_owned()),
        ]
    };
    let busy = |message: String| {
        vec![
            (at("hotplug-error"), message),
            (at("hotplug-status"), "busy".to_owned()),
        ]
    };
    // xenstore_read: a missing or empty node is fatal.
    let required = |leaf: &str| {
        read(store, &at(leaf))
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("xenstore-read {relative}/{leaf} failed."))
    };
    let (params, mode) = match (required("params"), required("mode")) {
        (Ok(p), Ok(m)) => (p, m),
        (Err(e), _) | (_, Err(e)) => return fatal(e),
    };
    // "Depending upon the hotplug configuration, it is possible for this
    // script to be called twice, so just bail."
    if store.exists(&at("physical-device")) {
        return Vec::new();
    }
    let frontend_id = match required("frontend-id") {
        Ok(id) => id,
        Err(e) => return fatal(e),
    };
    let mode = canonical_mode(&mode);
    let sharing = Sharing {
        store,
        vbds,
        host,
        frontend_id: &frontend_id,
        mode,
    };
    let connected = |number: DevNum, path: &str| {
        vec![
            (at("physical-device"), hex(number)),
            (at("physical-device-path"), path.to_owned()),
            (at("hotplug-status"), "connected".to_owned()),
        ]
    };
    if let Some(device) = host.devices.get(&params) {
        let dev = &device.canonical;
        if let Some(result) = sharing.check(&[device.number]) {
            return busy(ebusy(&format!("Device {dev} is mounted "), mode, &result));
        }
        return connected(device.number, dev);
    }
    if let Some(file) = host.file(&params) {
        let writable = std::fs::metadata(&file).is_ok_and(|m| m.permissions().mode() & 0o222 != 0);
        if mode == 'w' && !writable {
            return busy(format!(
                "File {params} is read-only, and so I will not\nmount it read-write in a guest domain."
            ));
        }
        let loops = loops_over(vbds, &params);
        // Sharing.check skips `w!` itself; no loop over the file is "ok".
        if let Some(result) = sharing.check(&loops) {
            let through = result.split_once(' ').map_or("", |(_, d)| d).to_owned();
            let prefix =
                format!("File {params} is loopback-mounted through {through},\nwhich is mounted ");
            return busy(ebusy(&prefix, mode, &result));
        }
        let Some(minor) = free_loop(vbds, host) else {
            return fatal("Failed to find an unused loop device".to_owned());
        };
        let node = format!("/dev/loop{minor}");
        let mut writes = vec![(at("node"), node.clone())];
        writes.extend(connected(DevNum::new(LOOP_MAJOR, minor), &node));
        return writes;
    }
    if let Some(prefix) = host.assumed_under.as_deref()
        && params.starts_with(prefix)
    {
        let number = assumed_number(vbds, host, &params);
        if let Some(result) = sharing.check(&[number]) {
            return busy(ebusy(
                &format!("Device {params} is mounted "),
                mode,
                &result,
            ));
        }
        return connected(number, &params);
    }
    // Neither a block device nor a regular file: the script's `""` case.
    vec![(at("hotplug-status"), "connected".to_owned())]
}

/// The script's `do_ebusy` message; `result` is `local D` or `guest D`.
fn ebusy(prefix: &str, mode: char, result: &str) -> String {
    let (dom, when) = if result.starts_with("guest") {
        ("a guest ", "now")
    } else {
        ("the privileged ", "by a guest")
    };
    let (m1, m2) = if mode == 'w' {
        ("", "")
    } else {
        ("read-write ", "read-only ")
    };
    format!("{prefix}{m1}in {dom}domain,\nand so cannot be mounted {m2}{when}.")
}

/// The script's `check_sharing`.
struct Sharing<'a> {
    store: &'a Store,
    vbds: &'a VbdIndex,
    host: &'a HostView,
    frontend_id: &'a str,
    mode: char,
}

impl Sharing<'_> {
    /// `None` when the devices may be used; else `local D` or `guest D`.
    fn check(&self, devices: &[DevNum]) -> Option<String> {
        if self.mode == '!' {
            return None;
        }
        let mounted = self
            .host
            .mounted_rw
            .iter()
            .chain(self.host.mounted_ro.iter().filter(|_| self.mode == 'w'));
        if let Some(d) = mounted.into_iter().find(|d| devices.contains(d)) {
            return Some(format!("local {}", hex(*d)));
        }
        // The script reads every backend's `physical-device`; those that
        // hold one of `devices` are what it goes on with.
        for (backend, vbd) in devices.iter().flat_map(|d| self.vbds.holding(*d)) {
            let Some(d) = vbd.physical_device.map(hex) else {
                continue;
            };
            let dom = backend.rsplit('/').nth(1).unwrap_or_default();
            let writer = self.mode == 'w'
                || vbd
                    .mode
                    .as_deref()
                    .is_some_and(|m| canonical_mode(m) == 'w');
            if writer && !self.same_vm(dom) {
                return Some(format!("guest {d}"));
            }
        }
        None
    }

    /// The script's `same_vm`, without stub domains' targets: the other
    /// domain's `vm` is the frontend's (a domain gone counts as the same).
    fn same_vm(&self, other: &str) -> bool {
        let vm = |dom: &str| read(self.store, &format!("/local/domain/{dom}/vm"));
        let frontend = vm(self.frontend_id).unwrap_or_else(|| "unknown".to_owned());
        vm(other).unwrap_or_else(|| frontend.clone()) == frontend
    }
}

/// The loop devices simulated scripts made over `file`: `losetup -a`.
fn loops_over(vbds: &VbdIndex, file: &str) -> Vec<DevNum> {
    vbds.iter()
        .filter(|(_, vbd)| vbd.params.as_deref() == Some(file) && vbd.node.is_some())
        .filter_map(|(_, vbd)| vbd.physical_device)
        .collect()
}

/// `losetup -f`: the first loop device neither the host has nor a
/// simulated script made.
fn free_loop(vbds: &VbdIndex, host: &HostView) -> Option<u32> {
    let taken: BTreeSet<&str> = vbds
        .iter()
        .filter_map(|(_, vbd)| vbd.node.as_deref())
        .collect();
    (0..1024).find(|n| {
        let node = format!("/dev/loop{n}");
        !host.devices.contains_key(&node) && !taken.contains(node.as_str())
    })
}

/// The number of an assumed device-mapper node: the one a backend already
/// has for it, else the next after every device-mapper number in use.
fn assumed_number(vbds: &VbdIndex, host: &HostView, path: &str) -> DevNum {
    let dm = DevNum::new(DM_MAJOR, 0)..=DevNum::new(DM_MAJOR, u32::MAX);
    if let Some(device) = vbds.devices_at(path).find(|d| dm.contains(d)) {
        return device;
    }
    let highest = vbds.highest_in(dm).map(|device| device.minor);
    let host_highest = host
        .devices
        .values()
        .filter(|d| d.number.major == DM_MAJOR)
        .map(|d| d.number.minor)
        .max();
    let next = highest.max(host_highest).map_or(0, |m| m + 1);
    DevNum::new(DM_MAJOR, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_are_written_as_stat_prints_them() {
        assert_eq!(hex(DevNum::new(253, 1)), "fd:1");
        assert_eq!(hex(DevNum::new(7, 10)), "7:a");
        assert_eq!(parse_hex("fd:1"), Some(DevNum::new(253, 1)));
        assert_eq!(parse_hex("253"), None);
    }

    #[test]
    fn the_script_s_busy_messages() {
        assert_eq!(
            ebusy("Device /dev/sdb1 is mounted ", 'w', "guest 8:11"),
            "Device /dev/sdb1 is mounted in a guest domain,\nand so cannot be mounted now."
        );
        assert_eq!(
            ebusy("Device /dev/sdb1 is mounted ", 'r', "local 8:11"),
            "Device /dev/sdb1 is mounted read-write in the privileged domain,\n\
             and so cannot be mounted read-only by a guest."
        );
        assert_eq!(canonical_mode("w!"), '!');
        assert_eq!(canonical_mode("ro"), 'r');
    }

    #[test]
    fn the_view_of_a_captured_dom0() {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hosts/demo");
        let view = HostView::of_host_root(&demo).unwrap();
        let root = &view.devices["/dev/mapper/vg0-root"];
        assert_eq!(root.canonical, "/dev/dm-0");
        assert!(view.mounted_rw.contains(&root.number));
        assert!(view.devices.contains_key("/dev/sdb1"));
    }
}
