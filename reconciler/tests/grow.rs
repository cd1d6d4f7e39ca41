//! Growing a vdisk that is realised and attached, in place: the guest keeps
//! its device and its data and sees the new size. On a real loop device
//! (realise = "loop"); skipped, and said so, where loop devices cannot be
//! used.

mod common;
mod host;

use std::path::PathBuf;

use host::{Host, assert_exit, text};
use xendisk::sim::{Faults, GuestPolicy};

fn desired(pool_device: &str, size: &str) -> String {
    format!(
        "[settings]\ntoolstack = \"xenstore\"\nrealise = \"loop\"\n\n\
         [pools.p]\nextent_size = \"1MiB\"\ndevices = [\"{pool_device}\"]\n\n\
         [vdisks.data]\npool = \"p\"\nsize = \"{size}\"\n\n\
         [domains.guest1.disks]\nxvda = {{ source = \"vdisk:data\", mode = \"w\" }}\n"
    )
}

fn sysfs(device: &str, leaf: &str) -> String {
    let name = device.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/class/block/{name}/{leaf}"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn an_attached_loop_realised_vdisk_grows_in_place() {
    if let Some(reason) = common::cannot_use_loop_devices() {
        common::skipped("the grow-in-place test", &reason);
        return;
    }
    let _devices = common::real_devices();
    let mut host = Host::new(GuestPolicy::default(), Faults::default());
    host.root = PathBuf::from("/");
    let disk = common::PartitionedLoop::new(
        &host.dir.path().join("disk.img"),
        64 << 20,
        "label: dos\n,16MiB,L\n,,L\n",
        2,
    );
    let pool_device = disk.partition(2);
    host.file("small.toml", &desired(&pool_device, "4MiB"));
    host.file("large.toml", &desired(&pool_device, "8MiB"));
    assert_exit(&host.run(&["apply", "small.toml", "--yes"]), 0);
    let attached = host
        .simulator
        .store()
        .read("/local/domain/0/backend/vbd/4/51712/params")
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
        .unwrap();
    assert!(attached.starts_with("/dev/loop"), "{attached}");
    assert_eq!(sysfs(&attached, "size"), (8u64 << 10).to_string());
    // The guest's data, at the end of what it has now.
    let marker = b"written by guest1 before the grow";
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut device = std::fs::OpenOptions::new()
            .write(true)
            .open(&attached)
            .unwrap();
        device.seek(SeekFrom::Start((4 << 20) - 512)).unwrap();
        device.write_all(marker).unwrap();
        device.sync_all().unwrap();
    }

    let plan = host.run(&["plan", "large.toml"]);
    assert_exit(&plan, 2);
    assert!(
        text(&plan).contains("give its block device the new size, in place")
            && !text(&plan).contains("detach"),
        "{}",
        text(&plan)
    );
    // Killed right before the device follows the grow: the next plan still
    // knows the device as the vdisk's (shorter) one, and only resizes it.
    let steps: serde_json::Value =
        serde_json::from_slice(&host.run(&["plan", "large.toml", "--json"]).stdout).unwrap();
    let resize = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["op"] == "resize")
        .unwrap()["id"]
        .to_string();
    let killed = host
        .command(
            &["apply", "large.toml", "--yes"],
            &[("XENDISK_TEST_KILL_AT_STEP", resize)],
        )
        .output()
        .unwrap();
    assert_ne!(killed.status.code(), Some(0), "{}", text(&killed));
    let resumed = host.run(&["plan", "large.toml"]);
    assert_exit(&resumed, 2);
    assert!(
        text(&resumed).contains("give its block device the new size, in place")
            && !text(&resumed).contains("detach")
            && !text(&resumed).contains("grow"),
        "{}",
        text(&resumed)
    );
    assert_exit(&host.run(&["apply", "large.toml", "--yes"]), 0);

    // The same device, attached all along, now 8 MiB, the data in place.
    let after = host
        .simulator
        .store()
        .read("/local/domain/0/backend/vbd/4/51712/params")
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
        .unwrap();
    assert_eq!(after, attached);
    assert_eq!(sysfs(&attached, "size"), (16u64 << 10).to_string());
    assert_eq!(sysfs(&attached, "loop/sizelimit"), (8u64 << 20).to_string());
    let mut read = vec![0u8; marker.len()];
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut device = std::fs::File::open(&attached).unwrap();
        device.seek(SeekFrom::Start((4 << 20) - 512)).unwrap();
        device.read_exact(&mut read).unwrap();
    }
    assert_eq!(read, marker);
    assert_exit(&host.run(&["plan", "large.toml"]), 0);
    // Nothing left behind: one loop device over the pool device.
    let loops = common::run("losetup", &["-j", &pool_device]);
    assert_eq!(loops.lines().count(), 1, "{loops}");
    assert_exit(
        &host.run(&[
            "apply",
            &host.file("gone.toml", "[settings]\ntoolstack = \"xenstore\"\nrealise = \"loop\"\n\n[domains.guest1.disks]\n").to_string_lossy(),
            "--yes",
            "--allow-destroy",
        ]),
        0,
    );
}
