//! What dom0 itself uses: mounted filesystems (`/proc/mounts`), swap
//! (`/proc/swaps`) and devices held by device-mapper, md or LVM (`holders/`),
//! each turned into sectors of whole disks, or a file identity.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{BlockDevice, Dom0Use, ObserveError, UseKind, UseTarget, devices, under};
use crate::extent::DevNum;

pub(super) fn uses(root: &Path, devices: &[BlockDevice]) -> Result<Vec<Dom0Use>, ObserveError> {
    let mut uses = Vec::new();
    for (table, namespace) in mount_tables(root) {
        let mounts = match read_table(root, &table) {
            Ok(mounts) => mounts,
            // A process that ended while it was being read.
            Err(_) if namespace.is_some() => continue,
            Err(error) => return Err(error),
        };
        for mount in mounts {
            let [source, mountpoint, _fstype, options, ..] = mount.as_slice() else {
                continue;
            };
            let Some(device) = resolve(root, source, devices) else {
                continue; // not a block device: tmpfs, proc, overlay, network filesystems
            };
            let writable = options.split(',').any(|o| o == "rw");
            let how = if writable { "rw" } else { "ro" };
            let place = namespace
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let description =
                format!("mounted {how} at {mountpoint}{place} in Domain-0 ({source})");
            let how = (UseKind::Mount, device);
            push_sectors(&mut uses, device, devices, writable, &description, how);
        }
    }
    for swap in read_table(root, "/proc/swaps")?.into_iter().skip(1) {
        let Some(filename) = swap.first() else {
            continue;
        };
        let description = format!("swap on {filename} in Domain-0");
        match resolve(root, filename, devices) {
            Some(device) => {
                let how = (UseKind::Swap, device);
                push_sectors(&mut uses, device, devices, true, &description, how)
            }
            None => {
                if let Some(target) = file_identity(root, filename) {
                    uses.push(Dom0Use {
                        target,
                        writable: true,
                        description,
                        kind: UseKind::Swap,
                        via: None,
                    });
                }
            }
        }
    }
    // One use per holder, so that the planner can tell a vdisk's own
    // device-mapper device (xendisk's) from anyone else's.
    for device in devices.iter().filter(|d| !d.holders.is_empty()) {
        for holder_name in &device.holders {
            let holder = devices.iter().find(|d| &d.name == holder_name);
            let by = match holder.and_then(|d| d.dm_name.as_ref()) {
                Some(dm) => format!("{holder_name} ({dm})"),
                None => holder_name.clone(),
            };
            let description = format!("held by {by} in Domain-0 ({})", device.name);
            // A holder (LVM, md, device-mapper) may write anywhere on it.
            let how = (UseKind::Holder, holder.unwrap_or(device));
            push_sectors(&mut uses, device, devices, true, &description, how);
        }
    }
    uses.sort();
    uses.dedup();
    Ok(uses)
}

/// Adds the sectors a block device occupies: its range on its whole disk,
/// or, for a device built on others (dm, md), all of each underlying device;
/// for a loop device, its window on the backing device or the backing file.
fn push_sectors(
    uses: &mut Vec<Dom0Use>,
    device: &BlockDevice,
    devices: &[BlockDevice],
    writable: bool,
    description: &str,
    (kind, via): (UseKind, &BlockDevice),
) {
    for target in devices::sectors_of(device, devices) {
        uses.push(Dom0Use {
            target,
            writable,
            description: description.to_owned(),
            kind,
            via: Some(via.device),
        });
    }
}

/// The mount tables to read: this process's (`/proc/mounts`), and one for
/// each other mount namespace a process is in, named for a person: a
/// filesystem mounted only in a container's namespace is mounted all the
/// same.
fn mount_tables(root: &Path) -> Vec<(String, Option<String>)> {
    let namespaces = mount_namespaces(root);
    let mut tables = vec![("/proc/mounts".to_owned(), None)];
    let mut seen: std::collections::BTreeSet<&PathBuf> = namespaces.own.iter().collect();
    for (pid, namespace) in &namespaces.processes {
        if seen.insert(namespace) {
            tables.push((
                format!("/proc/{pid}/mounts"),
                Some(format!("mount namespace of pid {pid}")),
            ));
        }
    }
    tables
}

/// Which mount namespace this process and every other is in, by their
/// `/proc/PID/ns/mnt` links under `root`.
pub struct MountNamespaces {
    pub own: Option<PathBuf>,
    /// Every process whose link could be read, by pid.
    pub processes: Vec<(u64, PathBuf)>,
}

pub fn mount_namespaces(root: &Path) -> MountNamespaces {
    let namespace_of = |pid: &str| fs::read_link(under(root, &format!("/proc/{pid}/ns/mnt"))).ok();
    let mut pids: Vec<u64> = fs::read_dir(under(root, "/proc"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    MountNamespaces {
        own: namespace_of("self"),
        processes: pids
            .into_iter()
            .filter_map(|pid| Some((pid, namespace_of(&pid.to_string())?)))
            .collect(),
    }
}

/// The block device a `/dev` path names, by the node's device number when
/// the node exists under the root, else by kernel or device-mapper name.
fn resolve<'a>(root: &Path, path: &str, devices: &'a [BlockDevice]) -> Option<&'a BlockDevice> {
    if let Ok(metadata) = fs::metadata(under(root, path))
        && metadata.file_type().is_block_device()
    {
        let number = DevNum::from_rdev(metadata.rdev());
        return devices.iter().find(|d| d.device == number);
    }
    devices::by_path(path, devices)
}

fn file_identity(root: &Path, path: &str) -> Option<UseTarget> {
    let metadata = fs::metadata(under(root, path)).ok()?;
    Some(UseTarget::File {
        dev: metadata.dev(),
        ino: metadata.ino(),
        path: path.to_owned(),
    })
}

/// A whitespace-separated table with the kernel's octal escapes undone.
fn read_table(root: &Path, path: &str) -> Result<Vec<Vec<String>>, ObserveError> {
    let file = under(root, path);
    let text = fs::read_to_string(&file).map_err(|source| ObserveError::Read {
        path: file.display().to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .map(|line| line.split_whitespace().map(unescape_octal).collect())
        .collect())
}

/// `\040` is a space, `\011` a tab, `\012` a newline, `\134` a backslash.
pub(super) fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\'
            && let Some(digits) = digits.filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
        {
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_are_undone() {
        assert_eq!(unescape_octal("/mnt/my\\040disk"), "/mnt/my disk");
        assert_eq!(unescape_octal("a\\134b\\011c"), "a\\b\tc");
        assert_eq!(unescape_octal("odd\\9"), "odd\\9");
    }
}
