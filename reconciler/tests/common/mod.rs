//! Shared by the tests that use real block devices: a sparse image with a
//! partition table on a loop device, and everything undone afterwards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Says, where the CI log shows it, that a test did not run and why. (The
/// test harness keeps what `eprintln!` prints of a passing test to itself;
/// a direct write to standard error is not captured.)
pub fn skipped(test: &str, reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Serialises the tests of one test binary that use the host's real block
/// devices: each observes the whole host, where another test's loop
/// devices and mounts would be holders it did not expect.
pub fn real_devices() -> std::sync::MutexGuard<'static, ()> {
    static DEVICES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding it left nothing half done that
    // the next one cares about: its guards have cleaned up.
    DEVICES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why this machine cannot run real block device tests, if it cannot.
pub fn cannot_use_loop_devices() -> Option<String> {
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

pub fn run(program: &str, args: &[&str]) -> String {
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

/// A loop device over a sparse image with a partition table, its partition
/// nodes made (no udev makes them here); detached when dropped.
pub struct PartitionedLoop {
    pub device: String,
    pub partitions: usize,
    nodes: Vec<PathBuf>,
    pub mounted: Option<PathBuf>,
}

impl PartitionedLoop {
    /// `layout` is sfdisk's input, e.g. "label: dos\n,16MiB,L\n,,L\n".
    pub fn new(image: &Path, size: u64, layout: &str, partitions: usize) -> PartitionedLoop {
        std::fs::File::create(image).unwrap().set_len(size).unwrap();
        let image = image.to_str().unwrap();
        let mut sfdisk = Command::new("sfdisk")
            .args(["-q", image])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        sfdisk
            .stdin
            .take()
            .unwrap()
            .write_all(layout.as_bytes())
            .unwrap();
        assert!(sfdisk.wait().unwrap().success());
        let device = run("losetup", &["-f", "--show", "-P", image]);
        let mut made = PartitionedLoop {
            device: device.clone(),
            partitions,
            nodes: Vec::new(),
            mounted: None,
        };
        // The kernel may learn the partitions only from partx here.
        let _ = Command::new("partx").args(["-a", &device]).output();
        let name = device.trim_start_matches("/dev/");
        for partition in 1..=partitions {
            let node = PathBuf::from(format!("{device}p{partition}"));
            let numbers =
                std::fs::read_to_string(format!("/sys/class/block/{name}p{partition}/dev"))
                    .unwrap();
            if !node.exists() {
                let (major, minor) = numbers.trim().split_once(':').unwrap();
                run("mknod", &[node.to_str().unwrap(), "b", major, minor]);
                made.nodes.push(node);
            }
        }
        made
    }

    pub fn partition(&self, number: usize) -> String {
        format!("{}p{number}", self.device)
    }
}

impl Drop for PartitionedLoop {
    fn drop(&mut self) {
        if let Some(mount) = &self.mounted {
            let _ = Command::new("umount").arg(mount).status();
        }
        // Loop devices a test left over its partitions (vdisks realised as
        // loop devices) would keep it busy.
        for partition in 1..=self.partitions {
            let Ok(over) = Command::new("losetup")
                .args(["-j", &self.partition(partition)])
                .output()
            else {
                continue;
            };
            for line in String::from_utf8_lossy(&over.stdout).lines() {
                if let Some(device) = line.split(':').next() {
                    let _ = Command::new("losetup").args(["-d", device]).status();
                }
            }
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}
