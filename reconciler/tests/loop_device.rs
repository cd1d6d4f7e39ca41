//! dom0 usage on real block devices: a sparse image with a partition table
//! on a loop device, an ext4 filesystem mounted read-write on its second
//! partition, observed through the real /proc and /sys. Needs root and
//! /dev/loop-control; says plainly when it cannot run.

use std::path::{Path, PathBuf};
use std::process::Command;

use xendisk::extent::DevNum;
use xendisk::observe::{ObserveOptions, UseTarget, observe_dom0};

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Undoes everything the test set up, whatever happened.
struct Cleanup {
    mount: Option<PathBuf>,
    loop_device: Option<String>,
    nodes: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mount) = &self.mount {
            let _ = Command::new("umount").arg(mount).status();
        }
        for node in &self.nodes {
            let _ = std::fs::remove_file(node);
        }
        if let Some(device) = &self.loop_device {
            let _ = Command::new("losetup").args(["-d", device]).status();
        }
    }
}

fn cannot_run() -> Option<String> {
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control is missing".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("it needs root".into());
    }
    for tool in ["sfdisk", "losetup", "partx", "mkfs.ext4", "mount"] {
        if Command::new("which")
            .arg(tool)
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

#[test]
fn a_mounted_partition_is_reported_as_its_sectors_on_the_loop_disk() {
    if let Some(reason) = cannot_run() {
        if std::env::var_os("CI").is_some() && reason != "/dev/loop-control is missing" {
            panic!("the loop-device test cannot run in CI: {reason}");
        }
        eprintln!("SKIPPED the loop-device test: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let image = image.to_str().unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", image])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\n,16MiB,L\n,,L\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());

    let mut cleanup = Cleanup {
        mount: None,
        loop_device: None,
        nodes: Vec::new(),
    };
    let device = run("losetup", &["-f", "--show", "-P", image]);
    cleanup.loop_device = Some(device.clone());
    // On these machines the kernel may learn the partitions only from partx,
    // and no udev makes their nodes.
    let _ = Command::new("partx").args(["-a", &device]).output();
    let name = device.trim_start_matches("/dev/");
    for partition in 1..=2 {
        let node = PathBuf::from(format!("{device}p{partition}"));
        let numbers =
            std::fs::read_to_string(format!("/sys/class/block/{name}p{partition}/dev")).unwrap();
        if !node.exists() {
            let (major, minor) = numbers.trim().split_once(':').unwrap();
            run("mknod", &[node.to_str().unwrap(), "b", major, minor]);
            cleanup.nodes.push(node);
        }
    }
    let partition = format!("{device}p2");
    run("mkfs.ext4", &["-q", &partition]);
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    run("mount", &[&partition, mountpoint.to_str().unwrap()]);
    cleanup.mount = Some(mountpoint.clone());

    let (devices, uses) = observe_dom0(&ObserveOptions {
        host_root: "/".into(),
    })
    .unwrap();
    let disk = devices
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
            disk,
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
    assert_ne!(disk, DevNum::new(0, 0));
}
