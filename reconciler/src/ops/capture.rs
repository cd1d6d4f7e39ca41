//! `xendisk capture DIR`: a simulated host (`--sim DIR`) made from a live
//! one, holding exactly what observation reads.
//!
//! - `xenstore.xs`: the whole xenstore tree with permissions, read through
//!   [`crate::xs_client`] and written as `xenstore-ls -f -p` prints it into a
//!   file (nothing cut). On a simulated host, the values its seed cut are
//!   written cut again (`\...`), so a capture never claims more than it has.
//! - `etc/machine-id` (or `var/lib/dbus/machine-id`): the host's identity.
//! - `proc/mounts`, `proc/swaps`, and for each other mount namespace the
//!   first process in it, as observation picks it: `proc/PID/ns/mnt` (a
//!   link, as the kernel shows it) and `proc/PID/mounts`; `proc/self/ns/mnt`.
//! - `sys/class/block/*`, kept as the (relative) links they are, and of
//!   each device's own directory only what observation reads: `dev`,
//!   `size`, `partition`, `start`, `dm/name`, `loop/{backing_file,offset,
//!   sizelimit}`, `holders/` and `slaves/` (their links), and a partition's
//!   parent's `dev`.
//!
//! Not captured: `/dev` (nodes need root to make; a captured host finds
//! `/dev/NAME` and `/dev/mapper/NAME` in its block device table instead)
//! and image files, which a file attachment's path then does not reach.
//! Everything is read under `--host-root`, so a simulated host can be
//! captured too (the round trip test does).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{Console, Exit};
use crate::sim::dump::{self, Cut};
use crate::sim::store::Store;
use crate::xs_client::{XsClient, socket_path};

/// What each block device's directory gives observation.
const DEVICE_FILES: [&str; 8] = [
    "dev",
    "size",
    "partition",
    "start",
    "dm/name",
    "loop/backing_file",
    "loop/offset",
    "loop/sizelimit",
];

/// `xendisk capture`
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Where to make the simulated host; a new or empty directory.
    pub dir: PathBuf,
    pub host_root: PathBuf,
    /// Values the running host's own seed cut (a simulated host's).
    pub cuts: BTreeMap<String, Cut>,
}

/// What was captured, for the summary.
#[derive(Debug, Default)]
struct Counts {
    nodes: usize,
    devices: usize,
    namespaces: usize,
}

pub fn capture(options: &CaptureOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    let dir = &options.dir;
    if fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} is not empty: capture makes a new simulated host, name a new directory",
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let store = read_tree()?;
    let mut counts = Counts {
        nodes: store.entries().len(),
        ..Counts::default()
    };
    write(
        &dir.join("xenstore.xs"),
        dump::write_seed(&store, &options.cuts).as_bytes(),
    )?;
    let root = &options.host_root;
    for id in crate::state::MACHINE_ID_FILES {
        copy_file(root, dir, id.trim_start_matches('/'))?;
    }
    for table in ["proc/mounts", "proc/swaps"] {
        if !copy_file(root, dir, table)? {
            bail!("cannot read {}", root.join(table).display());
        }
    }
    counts.namespaces = copy_mount_namespaces(root, dir)?;
    counts.devices = copy_block_devices(root, dir)?;
    writeln!(
        console.err,
        "Captured {} xenstore nodes, {} block devices and {} other mount namespaces into {}; \
         try `xendisk --sim {} plan FILE`",
        counts.nodes,
        counts.devices,
        counts.namespaces,
        dir.display(),
        dir.display()
    )?;
    Ok(Exit::Success)
}

/// Every node below the root, with its value and permissions. A node that
/// goes while it is read is left out, as xenstore-ls leaves it.
fn read_tree() -> anyhow::Result<Store> {
    let mut client = XsClient::connect().with_context(|| {
        format!(
            "cannot reach xenstore at {} (XENSTORED_PATH) or the xenbus device",
            socket_path()
        )
    })?;
    let mut store = Store::default();
    let mut pending = vec!["/".to_owned()];
    while let Some(path) = pending.pop() {
        let Some(children) = client.directory(0, &path)? else {
            continue;
        };
        for name in children.iter().rev() {
            let child = match path.as_str() {
                "/" => format!("/{name}"),
                _ => format!("{path}/{name}"),
            };
            let Some(value) = client.read_bytes(0, &child)? else {
                continue;
            };
            let Some(perms) = client.get_perms(0, &child)? else {
                continue;
            };
            store
                .write(&child, &value)
                .map_err(|e| anyhow::anyhow!("xenstore listed `{child}`, not a path ({e})"))?;
            store
                .set_perms(&child, perms.clone())
                .map_err(|e| anyhow::anyhow!("{child} has permissions {perms:?} ({e})"))?;
            pending.push(child);
        }
    }
    Ok(store)
}

/// The mount table of each mount namespace but this process's, from the
/// first process in it (as observation reads them), and this process's
/// namespace link. Returns how many tables.
fn copy_mount_namespaces(root: &Path, dir: &Path) -> anyhow::Result<usize> {
    let namespaces = crate::observe::mount_namespaces(root);
    if let Some(own) = &namespaces.own {
        link(&dir.join("proc/self/ns/mnt"), own)?;
    }
    let mut seen: BTreeSet<&PathBuf> = namespaces.own.iter().collect();
    let mut tables = 0;
    for (pid, namespace) in &namespaces.processes {
        if seen.contains(namespace) {
            continue;
        }
        // A process that ended meanwhile: the next one in its namespace.
        let Ok(mounts) = fs::read(root.join(format!("proc/{pid}/mounts"))) else {
            continue;
        };
        seen.insert(namespace);
        write(&dir.join(format!("proc/{pid}/mounts")), &mounts)?;
        link(&dir.join(format!("proc/{pid}/ns/mnt")), namespace)?;
        tables += 1;
    }
    Ok(tables)
}

/// `sys/class/block/*` and what observation reads of each device.
fn copy_block_devices(root: &Path, dir: &Path) -> anyhow::Result<usize> {
    let class = root.join("sys/class/block");
    let real_root = fs::canonicalize(root)
        .with_context(|| format!("cannot read the host root {}", root.display()))?;
    let mut names: Vec<_> = fs::read_dir(&class)
        .with_context(|| format!("cannot read {}", class.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in &names {
        let entry = class.join(name);
        let device = fs::canonicalize(&entry)
            .with_context(|| format!("cannot follow {}", entry.display()))?;
        let Ok(relative) = device.strip_prefix(&real_root) else {
            bail!(
                "{} leads out of the host root, to {}",
                entry.display(),
                device.display()
            );
        };
        if let Ok(target) = fs::read_link(&entry) {
            let at = Path::new("sys/class/block").join(name);
            link(&dir.join(&at), &relative_link(&at, &target))?;
        }
        for file in DEVICE_FILES {
            copy_file(root, dir, &relative.join(file).to_string_lossy())?;
        }
        if device.join("partition").exists()
            && let Some(parent) = relative.parent()
        {
            copy_file(root, dir, &parent.join("dev").to_string_lossy())?;
        }
        for list in ["holders", "slaves"] {
            copy_listing(&device.join(list), &dir.join(relative).join(list))?;
        }
    }
    Ok(names.len())
}

/// A link's target as a link at `at` (relative to the host root) may
/// hold it: relative as it is; an absolute one made relative, so that it
/// never leads out of the captured tree.
fn relative_link(at: &Path, target: &Path) -> PathBuf {
    if target.is_relative() {
        return target.to_owned();
    }
    let depth = at.components().count().saturating_sub(1);
    let mut out = PathBuf::new();
    for _ in 0..depth {
        out.push("..");
    }
    out.join(target.strip_prefix("/").unwrap_or(target))
}

/// The names in a `holders/` or `slaves/` directory, as links (or, in a
/// captured tree that has them so, empty files and directories).
fn copy_listing(from: &Path, to: &Path) -> anyhow::Result<()> {
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(());
    };
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in entries.filter_map(Result::ok) {
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            link(&target, &fs::read_link(entry.path())?)?;
        } else if kind.is_dir() {
            fs::create_dir_all(&target)?;
        } else {
            write(&target, b"")?;
        }
    }
    Ok(())
}

/// Copies `root/relative` to `dir/relative` if it is there; whether it was.
fn copy_file(root: &Path, dir: &Path, relative: &str) -> anyhow::Result<bool> {
    match fs::read(root.join(relative)) {
        Ok(bytes) => {
            write(&dir.join(relative), &bytes)?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn link(path: &Path, target: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if fs::symlink_metadata(path).is_ok() {
        return Ok(()); // made already (a device listed twice)
    }
    std::os::unix::fs::symlink(target, path)
        .with_context(|| format!("cannot make the link {}", path.display()))
}
