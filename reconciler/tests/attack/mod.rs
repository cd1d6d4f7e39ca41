//! Shared by the attack tests (`attack_safety`, `attack_round2`): a host
//! (a simulated xenstored seeded with the backends an attack needs, a
//! state DB of its own, dom0 read at `/` or in a captured tree), the dump
//! and desired-state builders, markers written into victim sectors, and
//! loop devices, mounts and processes undone when dropped.

// Each test target uses part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use xendisk::sim::{Faults, GuestPolicy, Simulator, Store, dump};
use xendisk::xs_client::XsClient;

use crate::common::{self, PartitionedLoop};

pub const DOMAINS: &str = r#"/local/domain/0/name = "Domain-0"
/local/domain/4/name = "guest1"
/local/domain/5/name = "guest2"
"#;

/// Fields drop in order: the simulator before the directory its socket is in.
pub struct Host {
    pub simulator: Simulator,
    pub dir: tempfile::TempDir,
    /// `--host-root`: `/`, or a captured tree.
    pub root: PathBuf,
}

impl Host {
    /// A host whose xenstore has the domains and `backends` (dump lines).
    pub fn new(backends: &str) -> Host {
        Host::with(backends, GuestPolicy::default(), PathBuf::from("/"))
    }

    pub fn with(backends: &str, guests: GuestPolicy, root: PathBuf) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let store: Store = dump::parse(&format!("{DOMAINS}{backends}")).unwrap();
        let simulator = Simulator::start(
            &dir.path().join("xenstored.socket"),
            store,
            guests,
            Faults::default(),
        )
        .unwrap();
        Host {
            simulator,
            dir,
            root,
        }
    }

    /// A host whose guests take `close_delay` to let go of a detached disk.
    pub fn with_close_delay(backends: &str, close_delay: Duration) -> Host {
        Host::with(
            backends,
            GuestPolicy {
                close_delay,
                never_close: Default::default(),
            },
            PathBuf::from("/"),
        )
    }

    /// A host with no backend whose dom0 is the captured tree at `root`.
    pub fn captured_at(root: &Path) -> Host {
        Host::with("", GuestPolicy::default(), root.to_owned())
    }

    /// A host with `backends` whose state DB starts as `other`'s is now.
    pub fn with_state_of(other: &Host, backends: &str) -> Host {
        let host = Host::with(backends, GuestPolicy::default(), other.root.clone());
        for entry in std::fs::read_dir(other.dir.path()).unwrap() {
            let entry = entry.unwrap();
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("state.sqlite")
            {
                std::fs::copy(
                    entry.path(),
                    host.path(&entry.file_name().to_string_lossy()),
                )
                .unwrap();
            }
        }
        host
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xendisk"));
        command
            .args(args)
            .arg("--state")
            .arg(self.path("state.sqlite"))
            .arg("--host-root")
            .arg(&self.root)
            .current_dir(self.dir.path())
            .env("XENSTORED_PATH", self.simulator.socket())
            // A simulated xenstored: no blkback takes a backend up.
            .env("XENDISK_NO_HOTPLUG", "1")
            .env("NO_COLOR", "1")
            .env_remove("XENDISK_NOW");
        command
    }

    /// A `xendisk` command; the state DB is made by `init` before the first.
    pub fn run(&self, args: &[&str]) -> Output {
        if args.first() != Some(&"init") && !self.path("state.sqlite").exists() {
            assert_exit(&self.run(&["init"]), 0);
        }
        self.command(args).output().unwrap()
    }

    /// What `xendisk` prints with `args` (`--json` among them), parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_slice(&self.run(args).stdout).unwrap()
    }

    /// The journal of every apply, newest first (`state --runs --json`).
    pub fn runs(&self) -> serde_json::Value {
        self.json(&["state", "--runs", "--json"])
    }

    /// A wire client of the simulator, to change xenstore behind xendisk's back.
    pub fn xenstore(&self) -> XsClient {
        XsClient::connect_to(self.simulator.socket()).unwrap()
    }

    /// The state DB and the whole of xenstore, to compare before and after.
    pub fn everything(&self) -> (String, Vec<(String, Vec<u8>)>) {
        let state = self.run(&["state", "--json"]);
        (
            String::from_utf8_lossy(&state.stdout).into_owned(),
            self.simulator.store().entries(),
        )
    }

    /// `plan` and `apply` of `file` (with `extra`) are refused (exit 3),
    /// nothing changes, and every marker survives.
    pub fn assert_refused(&self, file: &str, extra: &[&str], markers: &[&Marker]) {
        let before = self.everything();
        // `--no-devices` is apply's alone.
        let mut plan_args = vec!["plan", file];
        plan_args.extend(extra.iter().filter(|a| **a != "--no-devices"));
        let plan = self.run(&plan_args);
        let mut apply_args = vec!["apply", file, "--yes"];
        apply_args.extend_from_slice(extra);
        let apply = self.run(&apply_args);
        let after = self.everything();
        for marker in markers {
            marker.assert_intact();
        }
        assert_exit(&plan, 3);
        assert_exit(&apply, 3);
        assert!(
            text(&apply).contains("Refused"),
            "refusal explained: {}",
            text(&apply)
        );
        assert_eq!(after, before, "a refused plan changed the host");
    }

    pub fn applied(&self, file: &str, extra: &[&str]) {
        let mut args = vec!["apply", file, "--yes"];
        args.extend_from_slice(extra);
        assert_exit(&self.run(&args), 0);
    }

    /// `plan.json` (saved by `plan -o`), as `edit` leaves it, is written to
    /// `edited.json`.
    pub fn edit_saved_plan(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut plan: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.path("plan.json")).unwrap())
                .unwrap();
        edit(&mut plan);
        std::fs::write(self.path("edited.json"), plan.to_string()).unwrap();
    }

    /// `apply edited.json` (with `extra`) is refused (exit 3), nothing
    /// changes, and `marker` survives.
    pub fn assert_edited_plan_refused(&self, extra: &[&str], marker: &Marker) {
        let before = self.everything();
        let mut args = vec!["apply", "edited.json", "--yes"];
        args.extend_from_slice(extra);
        let apply = self.run(&args);
        let after = self.everything();
        marker.assert_intact();
        assert_exit(&apply, 3);
        assert_eq!(after, before);
    }
}

/// Dump lines for one backend of `kind` at `/local/domain/0/backend/KIND/DOMID/DEVID`,
/// with the directory names written exactly as given (`dom_dir`, `dev_dir`)
/// and the frontend of domid `domid` at device id `devid`, connected unless
/// `extra` says otherwise.
#[allow(clippy::too_many_arguments)]
pub fn backend_at(
    kind: &str,
    dom_dir: &str,
    dev_dir: &str,
    domid: u32,
    devid: u32,
    params: &str,
    mode: &str,
    extra: &[(&str, &str)],
) -> String {
    let base = format!("/local/domain/0/backend/{kind}/{dom_dir}/{dev_dir}");
    let mut nodes: Vec<(String, String)> = [
        (
            "frontend",
            format!("/local/domain/{domid}/device/vbd/{devid}"),
        ),
        ("frontend-id", domid.to_string()),
        ("params", params.to_owned()),
        ("mode", mode.to_owned()),
        ("type", if kind == "vbd" { "phy" } else { kind }.to_owned()),
        ("dev", "xvdb".to_owned()),
        ("online", "1".to_owned()),
        ("state", "4".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (key, value) in extra {
        match nodes.iter_mut().find(|(k, _)| k == key) {
            Some(node) => node.1 = (*value).to_owned(),
            None => nodes.push(((*key).to_owned(), (*value).to_owned())),
        }
    }
    let mut out = String::new();
    for (key, value) in nodes {
        out.push_str(&format!("{base}/{key} = \"{value}\"\n"));
    }
    out.push_str(&format!(
        "/local/domain/{domid}/device/vbd/{devid}/backend = \"{base}\"\n\
         /local/domain/{domid}/device/vbd/{devid}/state = \"4\"\n"
    ));
    out
}

/// Dump lines for one backend of `kind` (`vbd`, `qdisk`, `vbd3`) of `domid`
/// at `devid` (xvdb = 51728), connected unless `extra` says otherwise.
pub fn backend(
    kind: &str,
    domid: u32,
    devid: u32,
    params: &str,
    mode: &str,
    extra: &[(&str, &str)],
) -> String {
    backend_at(
        kind,
        &domid.to_string(),
        &devid.to_string(),
        domid,
        devid,
        params,
        mode,
        extra,
    )
}

/// Dump lines for a blkback backend giving `device` rw to `domid` as xvdb,
/// its `physical-device` written.
pub fn held_rw(domid: u32, device: &str) -> String {
    backend(
        "vbd",
        domid,
        51728,
        device,
        "w",
        &[("physical-device", &physical_device(device))],
    )
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn assert_exit(output: &Output, code: i32) {
    assert_eq!(output.status.code(), Some(code), "{}", text(output));
}

/// When a journaled step (`state --runs --json`) reached `key`
/// (`started_at`, `finished_at`).
pub fn time(step: &serde_json::Value, key: &str) -> jiff::Timestamp {
    step[key]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap()
}

/// The host's block devices to this test alone, if it can use loop
/// devices: every test observes the whole host (`--host-root /`), so one
/// test's loop devices and mounts must not show up in another's plan.
pub fn loops_available(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    match common::cannot_use_loop_devices() {
        Some(reason) => {
            common::skipped(test, &reason);
            None
        }
        None => Some(common::real_devices()),
    }
}

/// A loop disk of 64MiB: p1 16MiB from sector 2048, p2 the rest (from
/// sector 34816).
pub fn disk(host: &Host) -> PartitionedLoop {
    PartitionedLoop::new(
        &host.path("disk.img"),
        64 << 20,
        "label: dos\n,16MiB,L\n,,L\n",
        2,
    )
}

/// The device number of a block device node, as xenstore's
/// `physical-device` writes it (hex `major:minor`).
pub fn physical_device(path: &str) -> String {
    let name = Path::new(path).file_name().unwrap().to_str().unwrap();
    let numbers = std::fs::read_to_string(format!("/sys/class/block/{name}/dev")).unwrap();
    let (major, minor) = numbers.trim().split_once(':').unwrap();
    format!(
        "{:x}:{:x}",
        major.parse::<u32>().unwrap(),
        minor.parse::<u32>().unwrap()
    )
}

/// Bytes written into a victim area, checked byte for byte afterwards.
pub struct Marker {
    pub path: String,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

impl Marker {
    pub fn write(path: &str, offset: u64, tag: &str) -> Marker {
        Marker::write_bytes(
            path,
            offset,
            format!("VICTIM {tag} at {offset} of {path}").into_bytes(),
        )
    }

    pub fn write_bytes(path: &str, offset: u64, bytes: Vec<u8>) -> Marker {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::File::options().write(true).open(path).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(&bytes).unwrap();
        file.sync_all().unwrap();
        Marker {
            path: path.to_owned(),
            offset,
            bytes,
        }
    }

    /// The ext4 magic of a filesystem at the start of `path`, as `path`
    /// shows it (not written: checked).
    pub fn ext4_magic(path: &str) -> Marker {
        Marker {
            path: path.to_owned(),
            offset: 1080,
            bytes: vec![0x53, 0xef],
        }
    }

    pub fn read(&self) -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(&self.path).unwrap();
        file.seek(SeekFrom::Start(self.offset)).unwrap();
        let mut buffer = vec![0; self.bytes.len()];
        file.read_exact(&mut buffer).unwrap();
        buffer
    }

    pub fn assert_intact(&self) {
        assert_eq!(
            String::from_utf8_lossy(&self.read()),
            String::from_utf8_lossy(&self.bytes),
            "the marker at {} of {} was overwritten",
            self.offset,
            self.path
        );
    }
}

/// A loop device of this test's own, detached when dropped.
pub struct ExtraLoop(pub String);

impl ExtraLoop {
    pub fn new(args: &[&str]) -> ExtraLoop {
        let mut all = vec!["-f", "--show"];
        all.extend_from_slice(args);
        ExtraLoop(common::run("losetup", &all))
    }
}

impl Drop for ExtraLoop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mount of this test's own, undone when dropped.
pub struct Mounted(pub PathBuf);

impl Mounted {
    pub fn new(device: &str, at: PathBuf) -> Mounted {
        std::fs::create_dir_all(&at).unwrap();
        common::run("mount", &[device, at.to_str().unwrap()]);
        Mounted(at)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A child process of this test's own, killed (by its id) when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn settings(sharing: &str) -> String {
    format!("[settings]\ntoolstack = \"xenstore\"\nsharing = \"{sharing}\"\n\n")
}

pub fn pool(name: &str, devices: &[&str]) -> String {
    let list: Vec<String> = devices.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "[pools.{name}]\nextent_size = \"1MiB\"\ndevices = [{}]\n\n",
        list.join(", ")
    )
}

pub fn vdisk(name: &str, pool: &str, size: &str) -> String {
    format!("[vdisks.{name}]\npool = \"{pool}\"\nsize = \"{size}\"\n\n")
}

/// Settings at `sharing`, pool `a` of `device` alone, and vdisk `v` of
/// `size` on it: the add (and scrub) of a device and a new vdisk there.
pub fn pool_and_vdisk(sharing: &str, device: &str, size: &str) -> String {
    format!(
        "{}{}{}",
        settings(sharing),
        pool("a", &[device]),
        vdisk("v", "a", size)
    )
}

pub fn disks(domain: &str, lines: &[&str]) -> String {
    format!("[domains.\"{domain}\".disks]\n{}\n\n", lines.join("\n"))
}

pub fn disk_line(vdev: &str, source: &str, mode: &str) -> String {
    format!("{vdev} = {{ source = \"{source}\", mode = \"{mode}\" }}")
}

/// With `backends` (dump lines) holding `device`, adding `device` to a pool
/// and a 4MiB vdisk there (sharing `exclusive`) is refused and every marker
/// survives.
pub fn assert_pool_add_refused(backends: &str, device: &str, markers: &[&Marker]) {
    let host = Host::new(backends);
    let attack = pool_and_vdisk("exclusive", device, "4MiB");
    host.assert_refused(&host.file("attack.toml", &attack), &[], markers);
}
