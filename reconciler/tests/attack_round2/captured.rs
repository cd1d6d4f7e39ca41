//! A captured /sys tree (device-mapper and md, which this kernel lacks).

use std::path::{Path, PathBuf};

use crate::attack::*;

/// A captured dom0: `/sys/class/block` links to device directories,
/// `/proc/mounts` and `/proc/swaps`.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(root: &Path) -> Tree {
        std::fs::create_dir_all(root.join("sys/class/block")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(root.join("proc/mounts"), "").unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/machine-id"),
            "5a1e0d7c4a9b4f0e8d2c6b3a1f0e9d8c\n",
        )
        .unwrap();
        std::fs::write(
            root.join("proc/swaps"),
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
        )
        .unwrap();
        Tree {
            root: root.to_owned(),
        }
    }

    /// A device: `parent` is the whole disk's name for a partition.
    fn device(&self, name: &str, number: &str, sectors: u64, parent: Option<(&str, u64)>) {
        let dir = match parent {
            Some((disk, _)) => self
                .root
                .join(format!("sys/devices/virtual/block/{disk}/{name}")),
            None => self.root.join(format!("sys/devices/virtual/block/{name}")),
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dev"), format!("{number}\n")).unwrap();
        std::fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
        std::fs::create_dir_all(dir.join("holders")).unwrap();
        std::fs::create_dir_all(dir.join("slaves")).unwrap();
        if let Some((_, start)) = parent {
            std::fs::write(dir.join("start"), format!("{start}\n")).unwrap();
            std::fs::write(dir.join("partition"), "1\n").unwrap();
        }
        let relative = dir
            .strip_prefix(self.root.join("sys"))
            .unwrap()
            .to_path_buf();
        std::os::unix::fs::symlink(
            Path::new("../..").join(relative),
            self.root.join(format!("sys/class/block/{name}")),
        )
        .unwrap();
    }

    fn dir(&self, name: &str) -> PathBuf {
        std::fs::canonicalize(self.root.join(format!("sys/class/block/{name}"))).unwrap()
    }

    /// `holder` (dm or md) is built on `slave`.
    fn stack(&self, holder: &str, slave: &str) {
        std::fs::write(self.dir(holder).join("slaves").join(slave), "").unwrap();
        std::fs::write(self.dir(slave).join("holders").join(holder), "").unwrap();
    }

    fn dm_name(&self, device: &str, name: &str) {
        std::fs::create_dir_all(self.dir(device).join("dm")).unwrap();
        std::fs::write(self.dir(device).join("dm/name"), format!("{name}\n")).unwrap();
    }

    fn mounts(&self, text: &str) {
        std::fs::write(self.root.join("proc/mounts"), text).unwrap();
    }
}

/// A captured host: disk `sdb` (two partitions, sdb1 8MiB, sdb2 8MiB), disk
/// `sdc` 16MiB, and `dm-0` / `md0` as the test stacks them.
fn captured(host_dir: &Path) -> Tree {
    let tree = Tree::new(&host_dir.join("root"));
    tree.device("sdb", "8:16", 40960, None);
    tree.device("sdb1", "8:17", 16384, Some(("sdb", 2048)));
    tree.device("sdb2", "8:18", 16384, Some(("sdb", 18432)));
    tree.device("sdc", "8:32", 32768, None);
    tree
}

/// Claim 1/3 (md, LVM holders): an md array built on a pool device after
/// the pool was made (seen through `holders/` and `slaves/`): a new vdisk
/// on that pool is refused.
#[test]
fn an_md_holder_over_a_pool_device_refuses_new_vdisks() {
    let scratch = tempfile::tempdir().unwrap();
    let tree = captured(scratch.path());
    let host = Host::captured_at(&tree.root);
    let base = format!("{}{}", settings("exclusive"), pool("a", &["/dev/sdb1"]));
    host.applied(&host.file("pool.toml", &base), &["--no-devices"]);
    tree.device("md0", "9:0", 16000, None);
    tree.stack("md0", "sdb1");
    let attack = format!("{base}{}", vdisk("v", "a", "4MiB"));
    host.assert_refused(&host.file("attack.toml", &attack), &["--no-devices"], &[]);
    // And a dm linear device (LVM) over the whole disk under the pool.
    let tree = captured(&scratch.path().join("second"));
    let host = Host::captured_at(&tree.root);
    host.applied(&host.file("pool.toml", &base), &["--no-devices"]);
    tree.device("dm-3", "253:3", 40960, None);
    tree.dm_name("dm-3", "vg1-data");
    tree.stack("dm-3", "sdb");
    host.assert_refused(&host.file("attack.toml", &attack), &["--no-devices"], &[]);
}

/// Claims 1, 3: a device-mapper device is taken for a vdisk's own
/// realisation by its name alone (`xendisk-<vdisk>`), whatever it maps. A
/// leftover `xendisk-v` (made by hand, or by an earlier state DB) that maps
/// all of disk `sdc` and is mounted rw in dom0 is narrowed to v's extents
/// on the pool: `sdc` is then added to a pool, and zeroed, under the mount.
#[test]
fn a_dm_device_named_like_a_vdisk_is_what_it_maps() {
    let scratch = tempfile::tempdir().unwrap();
    let tree = captured(scratch.path());
    let host = Host::captured_at(&tree.root);
    let base = pool_and_vdisk("exclusive", "/dev/sdb1", "4MiB");
    host.applied(&host.file("v.toml", &base), &["--no-devices"]);
    tree.device("dm-0", "253:0", 32768, None);
    tree.dm_name("dm-0", "vg1-data");
    tree.stack("dm-0", "sdc");
    tree.mounts("/dev/mapper/vg1-data /srv/data ext4 rw,relatime 0 0\n");
    let attack = format!(
        "{base}{}{}",
        pool("b", &["/dev/sdc"]),
        vdisk("w", "b", "4MiB")
    );
    let file = host.file("attack.toml", &attack);
    // Control: through a dm device of another name, sdc is held.
    host.assert_refused(&file, &["--no-devices"], &[]);
    // The same device and mount, named like v's realisation.
    tree.dm_name("dm-0", "xendisk-v");
    tree.mounts("/dev/mapper/xendisk-v /srv/data ext4 rw,relatime 0 0\n");
    host.assert_refused(&file, &["--no-devices"], &[]);
}

/// Extremely large sector numbers (a captured tree, or a snapshot, whose
/// partition starts near 2^64): planning a pool on it and a vdisk there
/// ends in a plan, a refusal or an error, never a crash, and changes
/// nothing it should not (no integer overflow on the way). The planner's
/// `offset + extent.start` (plan/resolve.rs) overflows: a panic in a debug
/// build, a silent wrap in a release build (a vdisk's sectors placed near
/// sector 0 of the disk).
#[test]
fn sector_numbers_near_two_to_the_64_do_not_crash_the_planner() {
    let scratch = tempfile::tempdir().unwrap();
    let tree = Tree::new(&scratch.path().join("root"));
    let huge = u64::MAX - 100;
    tree.device("sdb", "8:16", u64::MAX, None);
    tree.device("sdb1", "8:17", 16384, Some(("sdb", huge)));
    tree.device("sdb2", "8:18", 16384, Some(("sdb", 2048)));
    tree.mounts("/dev/sdb2 /srv ext4 rw,relatime 0 0\n");
    let host = Host::captured_at(&tree.root);
    let desired = pool_and_vdisk("exclusive", "/dev/sdb1", "4MiB");
    let file = host.file("desired.toml", &desired);
    let before = host.everything();
    let plan = host.run(&["plan", &file]);
    assert!(
        matches!(plan.status.code(), Some(1..=3)),
        "plan: {}",
        text(&plan)
    );
    let apply = host.run(&["apply", &file, "--yes", "--no-devices"]);
    assert!(
        matches!(apply.status.code(), Some(0 | 1 | 3)),
        "apply: {}",
        text(&apply)
    );
    if apply.status.code() != Some(0) {
        assert_eq!(host.everything(), before);
    }
}
