//! Shared by the tests that run `xendisk` against the simulated xenstored:
//! a host (a simulator seeded from a dump, the captured dom0 of
//! `tests/golden/hosts/plan-host`, a state DB of its own), a plain wire
//! client to change the store behind xendisk's back, and a stand-in for
//! `xl` ([`fake_xl`]).

// Each test file uses part of this.
#![allow(dead_code)]

pub mod fake_xl;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use xendisk::sim::{Faults, GuestPolicy, Simulator, Store, dump};
use xendisk::xs_wire::{Message, MessageType, nul_terminated};

/// Fields drop in order: the simulator before the directory its socket is in.
pub struct Host {
    pub simulator: Simulator,
    pub dir: tempfile::TempDir,
    /// Where dom0's /proc and /sys are read.
    pub root: PathBuf,
}

pub const DOMAINS: &str = r#"/local/domain/0/name = "Domain-0"
/local/domain/4/name = "guest1"
/local/domain/5/name = "guest2"
/local/domain/6/name = "guest3"
/local/domain/7/name = "guest4"
"#;

/// A copy of the demo host (`examples/hosts/demo`) at `to`, its symbolic
/// links kept (a captured sysfs is made of them) and its `.sim` left out.
pub fn copy_demo_host(to: &Path) {
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hosts/demo"),
        to,
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name == ".sim" {
            continue;
        }
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        if metadata.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&path).unwrap(), to.join(name)).unwrap();
        } else if metadata.is_dir() {
            copy_tree(&path, &to.join(name));
        } else {
            std::fs::copy(&path, to.join(name)).unwrap();
        }
    }
}

pub fn host_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/hosts/plan-host")
}

impl Host {
    /// The four guests of [`DOMAINS`], no attachment.
    pub fn new(guests: GuestPolicy, faults: Faults) -> Host {
        Host::seeded(DOMAINS, guests, faults)
    }

    /// A simulator seeded from `dump` (a `xenstore-ls -f` dump).
    pub fn seeded(dump: &str, guests: GuestPolicy, faults: Faults) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let store: Store = dump::parse(dump).unwrap();
        let simulator =
            Simulator::start(&dir.path().join("xenstored.socket"), store, guests, faults).unwrap();
        Host {
            simulator,
            dir,
            root: host_root(),
        }
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A `xendisk` command on this host. The host's state DB is made by
    /// `xendisk init` before its first command (but `init` itself).
    pub fn command(&self, args: &[&str], env: &[(&str, String)]) -> Command {
        if args.first() != Some(&"init") && !self.dir.path().join("state.sqlite").exists() {
            assert_exit(&self.command(&["init"], &[]).output().unwrap(), 0);
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_xendisk"));
        command
            .args(args)
            .arg("--state")
            .arg(self.dir.path().join("state.sqlite"))
            .arg("--host-root")
            .arg(&self.root)
            .current_dir(self.dir.path())
            .env("XENSTORED_PATH", self.simulator.socket())
            // A simulated xenstored: no blkback takes a backend up.
            .env("XENDISK_NO_HOTPLUG", "1")
            .env("NO_COLOR", "1")
            .env_remove("XENDISK_NOW");
        for (key, value) in env {
            command.env(key, value);
        }
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args, &[]).output().unwrap()
    }

    pub fn apply(&self, file: &str, extra: &[&str]) -> Output {
        let mut args = vec!["apply", file, "--yes", "--no-devices"];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// The vdevs attached to a domain through blkback, as xenstore has them.
    pub fn attached(&self, domid: u32) -> Vec<String> {
        self.attached_under("vbd", domid)
    }

    /// The device ids under `backend/<kind>/<domid>`.
    pub fn attached_under(&self, kind: &str, domid: u32) -> Vec<String> {
        let store = self.simulator.store();
        store
            .directory(&format!("/local/domain/0/backend/{kind}/{domid}"))
            .map(|ids| ids.iter().map(|id| id.to_string()).collect())
            .unwrap_or_default()
    }

    /// A client of the simulator from this process, without touching the environment.
    pub fn wire(&self) -> Wire {
        Wire::connect(self.simulator.socket())
    }
}

/// The nodes of an attachment as libxl leaves them once connected: the
/// backend under `backend/<kind>/<domid>/<devid>` and the guest's frontend.
pub fn attachment_dump(kind: &str, domid: u32, devid: u32, params: &str, mode: &str) -> String {
    let backend = format!("/local/domain/0/backend/{kind}/{domid}/{devid}");
    let frontend = format!("/local/domain/{domid}/device/vbd/{devid}");
    format!(
        "{backend}/frontend = \"{frontend}\"\n\
         {backend}/frontend-id = \"{domid}\"\n\
         {backend}/online = \"1\"\n\
         {backend}/state = \"4\"\n\
         {backend}/type = \"{kind}\"\n\
         {backend}/mode = \"{mode}\"\n\
         {backend}/params = \"{params}\"\n\
         {frontend}/backend = \"{backend}\"\n\
         {frontend}/backend-id = \"0\"\n\
         {frontend}/state = \"4\"\n\
         {frontend}/virtual-device = \"{devid}\"\n"
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

/// Requests over the xenstore wire protocol, one at a time, no transaction.
pub struct Wire {
    stream: UnixStream,
    next_id: u32,
}

impl Wire {
    pub fn connect(socket: &Path) -> Wire {
        let stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Wire { stream, next_id: 1 }
    }

    fn call(&mut self, kind: MessageType, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let id = self.next_id;
        self.next_id += 1;
        Message::new(kind, id, 0, payload)
            .write_to(&mut self.stream)
            .map_err(|e| e.to_string())?;
        loop {
            let reply = Message::read_from(&mut self.stream)
                .map_err(|e| e.to_string())?
                .ok_or("closed")?;
            if reply.message_type() == Some(MessageType::WatchEvent) {
                continue;
            }
            if reply.message_type() == Some(MessageType::Error) {
                return Err(String::from_utf8_lossy(&reply.payload)
                    .trim_end_matches('\0')
                    .to_owned());
            }
            return Ok(reply.payload);
        }
    }

    pub fn write(&mut self, path: &str, value: &str) -> Result<(), String> {
        let mut payload = nul_terminated([path.as_bytes()]);
        payload.extend_from_slice(value.as_bytes());
        self.call(MessageType::Write, payload).map(|_| ())
    }

    pub fn read(&mut self, path: &str) -> Option<String> {
        self.call(MessageType::Read, nul_terminated([path.as_bytes()]))
            .ok()
            .map(|value| String::from_utf8_lossy(&value).into_owned())
    }

    /// A node's children; `None` when it does not exist.
    pub fn directory(&mut self, path: &str) -> Option<Vec<String>> {
        self.call(MessageType::Directory, nul_terminated([path.as_bytes()]))
            .ok()
            .map(|list| {
                list.split(|b| *b == 0)
                    .filter(|name| !name.is_empty())
                    .map(|name| String::from_utf8_lossy(name).into_owned())
                    .collect()
            })
    }

    pub fn rm(&mut self, path: &str) -> Result<(), String> {
        self.call(MessageType::Rm, nul_terminated([path.as_bytes()]))
            .map(|_| ())
    }

    /// Writes the lines of `dump` (`/path = "value"`, nothing escaped) into the store.
    pub fn write_dump(&mut self, dump: &str) {
        for line in dump.lines().filter(|l| !l.trim().is_empty()) {
            let (path, value) = line.split_once(" = ").unwrap();
            self.write(path, value.trim_matches('"')).unwrap();
        }
    }
}
