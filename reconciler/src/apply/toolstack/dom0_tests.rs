//! The xenstore toolstack on a dom0 stand-in: an in-process simulator, a
//! thread playing blkback (it moves a new backend to InitWait, or never
//! does), and a `block` script written for the test that talks to the
//! simulator with Debian's xenstore tools, as the real script does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::sim::{Faults, GuestPolicy, Simulator, Store};

const XVDB: u32 = 51728;
const BACKEND: &str = "/local/domain/0/backend/vbd/4/51728";
const FRONTEND: &str = "/local/domain/4/device/vbd/51728";
const RECORD: &str = "/libxl/4/device/vbd/51728";

struct Dom0 {
    simulator: Simulator,
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
}

impl Drop for Dom0 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A host with guest `guest1` (domid 4), a blkback stand-in unless
/// `blkback` is false, and a `block` script that refuses `/dev/busy` as
/// Debian's does a device dom0 has mounted.
fn dom0(blkback: bool) -> Option<Dom0> {
    if std::process::Command::new("xenstore-write")
        .arg("--help")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: Debian's xenstore-utils are not installed");
        return None;
    }
    let mut store = Store::default();
    store.write("/local/domain/4/name", b"guest1").unwrap();
    store.write("/libxl/4/type", b"pv").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let simulator = Simulator::start(
        &dir.path().join("socket"),
        store,
        GuestPolicy::default(),
        Faults::default(),
    )
    .unwrap();
    let log = dir.path().join("script.log");
    let script = format!(
        "#!/bin/sh\n\
         export XENSTORED_PATH='{socket}'\n\
         echo \"$1 $XENBUS_PATH\" >> '{log}'\n\
         p=/local/domain/0/$XENBUS_PATH\n\
         [ \"$1\" = add ] || exit 0\n\
         if [ \"$(xenstore-read $p/params)\" = /dev/busy ]; then\n\
           xenstore-write $p/hotplug-error 'Device /dev/busy is mounted in the privileged domain, and so cannot be mounted by a guest.' $p/hotplug-status busy\n\
           exit 1\n\
         fi\n\
         if [ \"$(xenstore-read $p/params)\" = /dev/nothing ]; then\n\
           xenstore-write $p/hotplug-status connected\n\
           exit 0\n\
         fi\n\
         xenstore-write $p/physical-device 7:0 $p/hotplug-status connected\n",
        socket = simulator.socket().display(),
        log = log.display(),
    );
    let scripts = dir.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::write(scripts.join("block"), script).unwrap();
    std::fs::set_permissions(
        scripts.join("block"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    if blkback {
        let mut client = XsClient::connect_to(simulator.socket()).unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let state = client.read(0, &format!("{BACKEND}/state"));
                if matches!(state.ok().flatten().as_deref(), Some("1")) {
                    let _ = client.write(0, &format!("{BACKEND}/state"), "2");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }
    Some(Dom0 {
        simulator,
        dir,
        stop,
    })
}

impl Dom0 {
    fn scripts(&self) -> PathBuf {
        self.dir.path().join("scripts")
    }

    fn toolstack(&self) -> XenstoreToolstack {
        let client = XsClient::connect_to(self.simulator.socket()).unwrap();
        let host = BackendHost::Dom0 {
            scripts: self.scripts(),
        };
        XenstoreToolstack::with_client(client, host, Duration::from_secs(5), false)
    }

    fn store(&self) -> Store {
        self.simulator.store()
    }

    fn script_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("script.log")).unwrap_or_default()
    }
}

fn attach(target: &str, mode: Mode) -> AttachRequest {
    AttachRequest {
        domain: "guest1".into(),
        domid: 4,
        vdev: "xvdb".into(),
        devid: XVDB,
        target: target.into(),
        mode,
        format: Format::Raw,
    }
}

fn detach() -> DetachRequest {
    DetachRequest {
        domain: "guest1".into(),
        domid: 4,
        vdev: "xvdb".into(),
        devid: XVDB,
        backend: "vbd".into(),
        closing: false,
    }
}

fn value(store: &Store, path: &str) -> String {
    String::from_utf8_lossy(store.read(path).unwrap()).into_owned()
}

fn perms(store: &Store, path: &str) -> Vec<String> {
    store.get_perms(path).unwrap().to_vec()
}

#[test]
fn an_attach_writes_what_libxl_writes_and_runs_the_script() {
    let Some(host) = dom0(true) else { return };
    host.toolstack()
        .attach(&attach("/dev/loop0", Mode::Write))
        .unwrap();
    let store = host.store();
    let script = host.scripts().join("block");
    for (leaf, expected) in [
        ("frontend", FRONTEND),
        ("params", "/dev/loop0"),
        ("script", &script.to_string_lossy()),
        ("frontend-id", "4"),
        ("online", "1"),
        ("removable", "0"),
        ("bootable", "1"),
        ("dev", "xvdb"),
        ("type", "phy"),
        ("mode", "w"),
        ("device-type", "disk"),
        ("discard-enable", "1"),
        ("specification", "xen"),
        ("physical-device", "7:0"),
        ("hotplug-status", "connected"),
    ] {
        let path = format!("{BACKEND}/{leaf}");
        assert_eq!(value(&store, &path), expected, "{path}");
        // The guest reads every leaf of its backend; only dom0 writes.
        assert_eq!(perms(&store, &path), ["n0", "r4"], "{path}");
    }
    assert_eq!(perms(&store, BACKEND), ["n0", "r4"]);
    for (leaf, expected) in [
        ("backend", BACKEND),
        ("backend-id", "0"),
        ("state", "1"),
        ("virtual-device", "51728"),
        ("device-type", "disk"),
        ("trusted", "1"),
    ] {
        let path = format!("{FRONTEND}/{leaf}");
        assert_eq!(value(&store, &path), expected, "{path}");
        // The guest owns its half (it writes its state there).
        assert_eq!(perms(&store, &path), ["n4", "r0"], "{path}");
    }
    // libxl's record, which `xl block-list` and `xl block-detach` read.
    assert_eq!(value(&store, &format!("{RECORD}/backend")), BACKEND);
    assert_eq!(value(&store, &format!("{RECORD}/frontend")), FRONTEND);
    assert_eq!(value(&store, &format!("{RECORD}/params")), "/dev/loop0");
    assert_eq!(value(&store, &format!("{RECORD}/state")), "1");
    assert_eq!(host.script_log(), "add backend/vbd/4/51728\n");
}

#[test]
fn a_read_only_disk_is_mode_r_without_discard() {
    let Some(host) = dom0(true) else { return };
    host.toolstack()
        .attach(&attach("/srv/a.img", Mode::Read))
        .unwrap();
    let store = host.store();
    assert_eq!(value(&store, &format!("{BACKEND}/mode")), "r");
    assert_eq!(value(&store, &format!("{BACKEND}/discard-enable")), "0");
}

#[test]
fn a_refusal_by_the_script_is_reported_in_its_words_and_undone() {
    let Some(host) = dom0(true) else { return };
    let error = host
        .toolstack()
        .attach(&attach("/dev/busy", Mode::Write))
        .unwrap_err();
    assert!(
        matches!(&error, ToolstackError::Hotplug { error, .. }
            if error.contains("mounted in the privileged domain")),
        "{error}"
    );
    assert!(error.to_string().contains("undone"), "{error}");
    let store = host.store();
    for path in [BACKEND, FRONTEND, RECORD, "/local/domain/0/backend/vbd/4"] {
        assert!(!store.exists(path), "{path} is left");
    }
    // The script was asked to release what it may have set up.
    assert_eq!(
        host.script_log(),
        "add backend/vbd/4/51728\nremove backend/vbd/4/51728\n"
    );
}

/// The real script's answer to a path that is neither a block device nor
/// a regular file: success, and no device for blkback to open.
#[test]
fn a_success_that_names_no_device_is_refused_and_undone() {
    let Some(host) = dom0(true) else { return };
    let error = host
        .toolstack()
        .attach(&attach("/dev/nothing", Mode::Write))
        .unwrap_err();
    assert!(
        matches!(&error, ToolstackError::Hotplug { error, .. }
            if error.contains("wrote no physical-device")),
        "{error}"
    );
    let store = host.store();
    for path in [BACKEND, FRONTEND, RECORD] {
        assert!(!store.exists(path), "{path} is left");
    }
}

#[test]
fn a_backend_no_driver_takes_up_is_reported_and_undone() {
    let Some(host) = dom0(false) else { return };
    let mut toolstack = host.toolstack();
    toolstack.init_timeout = Duration::from_millis(200);
    let error = toolstack
        .attach(&attach("/dev/loop0", Mode::Write))
        .unwrap_err();
    assert!(
        matches!(&error, ToolstackError::NotTakenUp { state, .. } if state == "1"),
        "{error}"
    );
    assert!(error.to_string().contains("xen-blkback"), "{error}");
    let store = host.store();
    for path in [BACKEND, FRONTEND, RECORD] {
        assert!(!store.exists(path), "{path} is left");
    }
    // The script never ran for it: the block script needs InitWait.
    assert!(!host.script_log().contains("add"), "{}", host.script_log());
}

#[test]
fn an_attach_interrupted_before_its_script_is_finished_by_the_next() {
    let Some(host) = dom0(true) else { return };
    // What a run killed between the transaction and the script leaves.
    let client = XsClient::connect_to(host.simulator.socket()).unwrap();
    let mut first = XenstoreToolstack::with_client(
        client,
        BackendHost::Simulated,
        Duration::from_secs(5),
        false,
    );
    first.attach(&attach("/dev/loop0", Mode::Write)).unwrap();
    assert!(!host.store().exists(&format!("{BACKEND}/hotplug-status")));
    host.toolstack()
        .attach(&attach("/dev/loop0", Mode::Write))
        .unwrap();
    assert_eq!(
        value(&host.store(), &format!("{BACKEND}/hotplug-status")),
        "connected"
    );
    // Once connected, a third attach has nothing to do.
    host.toolstack()
        .attach(&attach("/dev/loop0", Mode::Write))
        .unwrap();
    assert_eq!(host.script_log().matches("add").count(), 1);
}

#[test]
fn a_detach_runs_the_script_s_remove_and_leaves_no_empty_directory() {
    let Some(host) = dom0(true) else { return };
    let mut toolstack = host.toolstack();
    toolstack.force_detach = true; // no guest here to close its frontend
    toolstack
        .attach(&attach("/dev/loop0", Mode::Write))
        .unwrap();
    toolstack.detach(&detach()).unwrap();
    let store = host.store();
    for path in [
        BACKEND,
        FRONTEND,
        RECORD,
        "/local/domain/0/backend/vbd/4",
        "/local/domain/4/device",
        "/libxl/4/device",
    ] {
        assert!(!store.exists(path), "{path} is left");
    }
    // What is not empty stays.
    assert!(store.exists("/libxl/4/type"));
    assert!(store.exists("/local/domain/4/name"));
    assert!(host.script_log().ends_with("remove backend/vbd/4/51728\n"));
}

#[test]
fn a_script_named_outside_the_script_directory_is_not_run() {
    let Some(host) = dom0(true) else { return };
    let mut toolstack = host.toolstack();
    toolstack.force_detach = true;
    toolstack
        .attach(&attach("/dev/loop0", Mode::Write))
        .unwrap();
    let elsewhere = Path::new("/tmp/elsewhere/block").to_string_lossy();
    XsClient::connect_to(host.simulator.socket())
        .unwrap()
        .write(0, &format!("{BACKEND}/script"), &elsewhere)
        .unwrap();
    toolstack.detach(&detach()).unwrap();
    assert!(
        !host.script_log().contains("remove"),
        "{}",
        host.script_log()
    );
    assert!(!host.store().exists(BACKEND));
}
