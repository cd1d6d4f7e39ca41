//! dom0 usage on real block devices: a sparse image with a partition table
//! on a loop device, an ext4 filesystem mounted read-write on its second
//! partition, observed through the real /proc and /sys. Needs root and
//! /dev/loop-control; says plainly when it cannot run.

mod common;

use common::{PartitionedLoop, cannot_use_loop_devices, run};
use xendisk::extent::DevNum;
use xendisk::observe::{ObserveOptions, UseTarget, observe_dom0};

#[test]
fn a_mounted_partition_is_reported_as_its_sectors_on_the_loop_disk() {
    if let Some(reason) = cannot_use_loop_devices() {
        if std::env::var_os("CI").is_some() && reason != "/dev/loop-control is missing" {
            panic!("the loop-device test cannot run in CI: {reason}");
        }
        common::skipped("the loop-device test", &reason);
        return;
    }
    let _devices = common::real_devices();
    let dir = tempfile::tempdir().unwrap();
    let mut disk = PartitionedLoop::new(
        &dir.path().join("disk.img"),
        64 << 20,
        "label: dos\n,16MiB,L\n,,L\n",
        2,
    );
    let partition = disk.partition(2);
    run("mkfs.ext4", &["-q", &partition]);
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    run("mount", &[&partition, mountpoint.to_str().unwrap()]);
    disk.mounted = Some(mountpoint.clone());

    let name = disk.device.trim_start_matches("/dev/").to_owned();
    let (devices, uses) = observe_dom0(&ObserveOptions {
        host_root: "/".into(),
    })
    .unwrap();
    let loop_disk = devices
        .iter()
        .find(|d| d.name == name)
        .expect("the loop disk is in the table")
        .device;
    let mounted: Vec<_> = uses
        .iter()
        .filter(|u| u.description.contains(mountpoint.to_str().unwrap()))
        .collect();
    assert_eq!(mounted.len(), 1, "{uses:#?}");
    // The layout sfdisk made: partition 2 from sector 34816, 96256 sectors.
    assert_eq!(
        mounted[0].target,
        UseTarget::Sectors {
            disk: loop_disk,
            start: 34816,
            sectors: 96256
        }
    );
    assert!(mounted[0].writable);
    assert!(
        mounted[0].description.starts_with("mounted rw at "),
        "{}",
        mounted[0].description
    );
    assert_ne!(loop_disk, DevNum::new(0, 0));
}
