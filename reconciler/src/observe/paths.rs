//! What a path names on the host: a block device (directly or through
//! links), a regular file (by device and inode, so that one file reached by
//! two names is one file), or nothing. Symbolic links are followed inside
//! the host root, so a captured tree never resolves through the machine
//! reading it.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BlockDevice, devices, under};
use crate::extent::DevNum;

/// Links followed before a path is taken as unresolvable (Linux's own limit).
const MAX_LINKS: usize = 40;

/// Lexically normalised (`//` and `/./` dropped; `..` kept, since only
/// the host can say where it leads through a link), so that one path
/// written two ways is looked up as one.
pub fn normalise(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// What a path resolved to when it was observed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathTarget {
    /// A block device node, or a link to one.
    Block { device: DevNum },
    /// A regular file: the device its filesystem is on and its inode.
    File { dev: DevNum, ino: u64 },
    /// Nothing is there (or a link loop, or a relative path).
    Missing,
    /// Something else: a directory, a character device, a socket.
    Other,
}

/// A path and what it names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolvedPath {
    pub path: String,
    pub target: PathTarget,
}

/// Resolves `path` as the host at `root` sees it. A `/dev` path that is
/// not a node under the root (a captured tree has no `/dev`) is looked up
/// by name in the block device table.
pub fn resolve(root: &Path, path: &str, devices: &[BlockDevice]) -> PathTarget {
    let target = match follow(root, path) {
        Some(real) => match fs::metadata(&real) {
            Ok(metadata) if metadata.file_type().is_block_device() => PathTarget::Block {
                device: DevNum::from_rdev(metadata.rdev()),
            },
            Ok(metadata) if metadata.is_file() => PathTarget::File {
                dev: DevNum::from_rdev(metadata.dev()),
                ino: metadata.ino(),
            },
            Ok(_) => PathTarget::Other,
            Err(_) => PathTarget::Missing,
        },
        None => PathTarget::Missing,
    };
    if target == PathTarget::Missing
        && let Some(device) = devices::by_path(path, devices)
    {
        return PathTarget::Block {
            device: device.device,
        };
    }
    target
}

/// The real location of `path` under `root`, every link followed within
/// the root; `None` for a relative path or a link loop.
fn follow(root: &Path, path: &str) -> Option<PathBuf> {
    if !path.starts_with('/') {
        return None;
    }
    // Components still to walk, last first; the host path walked so far.
    let mut pending: Vec<String> = components(path).into_iter().rev().collect();
    let mut walked: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                walked.pop();
                continue;
            }
            _ => {}
        }
        walked.push(part);
        let here = under(root, &format!("/{}", walked.join("/")));
        let Ok(link) = fs::read_link(&here) else {
            continue; // not a link (or not there: metadata will say)
        };
        links += 1;
        if links > MAX_LINKS {
            return None;
        }
        walked.pop();
        let link = link.to_string_lossy().into_owned();
        if link.starts_with('/') {
            walked.clear();
        }
        pending.extend(components(&link).into_iter().rev());
    }
    Some(under(root, &format!("/{}", walked.join("/"))))
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_owned()),
            Component::CurDir => Some(".".to_owned()),
            Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_followed_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("srv/images")).unwrap();
        fs::write(r.join("srv/images/a:b.img"), b"x").unwrap();
        symlink("/srv/images/a:b.img", r.join("srv/absolute")).unwrap();
        symlink("images/../images/a:b.img", r.join("srv/relative")).unwrap();
        symlink("/srv/loop1", r.join("srv/loop2")).unwrap();
        symlink("/srv/loop2", r.join("srv/loop1")).unwrap();
        // An absolute link out of the root must not reach this machine's /etc.
        symlink("/etc/hostname", r.join("srv/escape")).unwrap();
        let direct = resolve(r, "/srv/images/a:b.img", &[]);
        assert!(matches!(direct, PathTarget::File { .. }), "{direct:?}");
        assert_eq!(resolve(r, "/srv/absolute", &[]), direct);
        assert_eq!(resolve(r, "/srv/relative", &[]), direct);
        assert_eq!(resolve(r, "/srv/../srv/./images/a:b.img", &[]), direct);
        assert_eq!(resolve(r, "/srv/loop1", &[]), PathTarget::Missing);
        assert_eq!(resolve(r, "/srv/escape", &[]), PathTarget::Missing);
        assert_eq!(resolve(r, "relative.img", &[]), PathTarget::Missing);
        assert_eq!(resolve(r, "/srv", &[]), PathTarget::Other);
    }

    #[test]
    fn a_dev_path_missing_from_a_captured_tree_is_found_by_name() {
        let root = tempfile::tempdir().unwrap();
        let sdb3 = BlockDevice {
            name: "sdb3".into(),
            device: DevNum::new(8, 19),
            disk: DevNum::new(8, 16),
            start: 2048,
            sectors: 1000,
            dm_name: None,
            holders: vec![],
            slaves: vec![],
            loop_backing: None,
        };
        assert_eq!(
            resolve(root.path(), "/dev/sdb3", &[sdb3]),
            PathTarget::Block {
                device: DevNum::new(8, 19)
            }
        );
    }
}
