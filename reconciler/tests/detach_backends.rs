//! Detaching what is there, whatever backend serves it (`vbd`, `qdisk`,
//! `vbd3`) and through either toolstack, against the simulated xenstored:
//! attachments really leave xenstore, a move detaches before it attaches,
//! a detach that finds nothing fails instead of reporting done, an attach
//! onto a device id another backend holds is refused, and `xl` is given
//! domids, never names. `apply::execute`, driven with plans made by hand,
//! hands the toolstack the backend kind each detach was planned under.

mod host;

use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use host::fake_xl::{FakeXl, lines};
use host::{DOMAINS, Host, Wire, assert_exit, attachment_dump, text};
use xendisk::apply::realise::PathOnly;
use xendisk::apply::toolstack::{
    AttachRequest, BackendHost, DetachRequest, Toolstack, ToolstackError, XenstoreToolstack,
};
use xendisk::apply::{Drivers, execute};
use xendisk::desired::{Settings, Sharing};
use xendisk::observe::HostState;
use xendisk::plan::{Op, Plan, Step};
use xendisk::safety::SafetyReport;
use xendisk::sim::{Faults, GuestPolicy, Store};
use xendisk::state::StateDb;
use xendisk::vdev::Vdev;
use xendisk::xs_client::XsClient;
use xendisk::xs_wire::{Message, MessageType, nul_terminated};

const XVDA: u32 = 51712;
const XVDB: u32 = 51728;

const QDISK_GUEST1: &str = "/local/domain/0/backend/qdisk/4/51712";
const VBD3_GUEST1: &str = "/local/domain/0/backend/vbd3/4/51728";

/// guest1 (domid 4) has a disk through QEMU (`qdisk`) and one through
/// tapdisk3 (`vbd3`).
fn two_backends() -> String {
    format!(
        "{DOMAINS}{}{}",
        attachment_dump("qdisk", 4, XVDA, "aio:/dev/sdc", "w"),
        attachment_dump("vbd3", 4, XVDB, "aio:/dev/sdb1", "r"),
    )
}

fn settings(toolstack: &str) -> String {
    format!("[settings]\ntoolstack = \"{toolstack}\"\n\n")
}

/// No node of guest1's two disks is left: backends, their per-domain
/// directories, frontends.
fn assert_guest1_disks_gone(store: &Store, case: &str) {
    for path in [
        QDISK_GUEST1,
        "/local/domain/0/backend/qdisk/4",
        VBD3_GUEST1,
        "/local/domain/0/backend/vbd3/4",
        "/local/domain/4/device/vbd/51712",
        "/local/domain/4/device/vbd/51728",
    ] {
        assert!(!store.exists(path), "{case}: {path} is still there");
    }
}

#[test]
fn qdisk_and_vbd3_attachments_leave_xenstore_with_the_xenstore_toolstack() {
    let host = Host::seeded(&two_backends(), GuestPolicy::default(), Faults::default());
    host.file(
        "desired.toml",
        &format!("{}[domains.guest1.disks]\n", settings("xenstore")),
    );
    let applied = host.apply("desired.toml", &[]);
    assert_exit(&applied, 0);
    assert!(
        text(&applied).contains("A fresh plan finds no changes"),
        "{}",
        text(&applied)
    );
    assert_guest1_disks_gone(&host.simulator.store(), "xenstore");
}

#[test]
fn qdisk_and_vbd3_attachments_leave_xenstore_with_the_xl_toolstack() {
    let host = Host::seeded(&two_backends(), GuestPolicy::default(), Faults::default());
    let xl = FakeXl::new(&host);
    host.file(
        "desired.toml",
        &format!("{}[domains.guest1.disks]\n", settings("xl")),
    );
    let (applied, calls) = xl.serve(&host, || {
        xl.apply(&host, "desired.toml", &["--parallelism", "1"])
    });
    assert_exit(&applied, 0);
    assert_eq!(
        lines(&calls),
        ["block-detach|4|51712|", "block-detach|4|51728|"],
        "xl gets the domid and the device id"
    );
    assert_guest1_disks_gone(&host.simulator.store(), "xl");
}

/// guest1's qdisk goes to guest2: guest2's backend appears only once
/// guest1's is gone.
#[test]
fn a_disk_moved_off_a_qdisk_attachment_is_detached_before_it_is_attached() {
    let dump = format!(
        "{DOMAINS}{}",
        attachment_dump("qdisk", 4, XVDA, "aio:/dev/sdc", "w")
    );
    let moved = "[domains.guest1.disks]\n\n[domains.guest2.disks]\n\
                 xvda = { source = \"phy:/dev/sdc\", mode = \"w\" }\n";
    for toolstack in ["xenstore", "xl"] {
        let guests = GuestPolicy {
            close_delay: Duration::from_millis(100),
            never_close: Default::default(),
        };
        let host = Host::seeded(&dump, guests, Faults::default());
        host.file("desired.toml", &format!("{}{moved}", settings(toolstack)));
        let plan: serde_json::Value =
            serde_json::from_slice(&host.run(&["plan", "desired.toml", "--json"]).stdout).unwrap();
        let steps = plan["steps"].as_array().unwrap();
        let step = |op: &str| steps.iter().find(|s| s["op"] == op).unwrap();
        assert_eq!(step("detach")["backend"], "qdisk");
        assert!(
            step("attach")["depends_on"]
                .as_array()
                .unwrap()
                .contains(&step("detach")["id"]),
            "{toolstack}: the attach waits for the detach\n{plan:#}"
        );
        let watch = Watcher::start(host.simulator.socket(), "/local/domain/0/backend");
        if toolstack == "xl" {
            let xl = FakeXl::new(&host);
            let (applied, calls) = xl.serve(&host, || xl.apply(&host, "desired.toml", &[]));
            assert_exit(&applied, 0);
            assert_eq!(calls.len(), 2, "{:?}", lines(&calls));
            assert!(calls[0].argv.starts_with(&["block-detach".to_owned()]));
            assert_eq!(calls[1].argv[..2], ["block-attach", "5"]);
            assert!(
                !calls[1].store.exists(QDISK_GUEST1),
                "xl block-attach ran while guest1's qdisk was still there"
            );
        } else {
            assert_exit(&host.apply("desired.toml", &[]), 0);
        }
        let guest2 = "/local/domain/0/backend/vbd/5/";
        let events = watch.stop_after(|path| path.starts_with(guest2));
        let removed = events.iter().position(|path| path == QDISK_GUEST1);
        let attached = events.iter().position(|path| path.starts_with(guest2));
        assert!(
            matches!((removed, attached), (Some(r), Some(a)) if r < a),
            "{toolstack}: guest1's backend must go before guest2's appears: {events:#?}"
        );
        assert_eq!(host.attached(5), ["51712"], "{toolstack}");
        assert!(!host.simulator.store().exists(QDISK_GUEST1), "{toolstack}");
    }
}

/// A saved plan made while `prepare` had not yet run, its fingerprint
/// forged to the host's new one: only re-planning can tell it is stale.
/// (What the toolstacks do when the host changes between apply's
/// observation and the step is tested on `apply::execute` and the
/// toolstacks themselves.)
fn saved_plan_outlived_by(host: &Host, prepare: impl FnOnce(&mut Wire)) -> PathBuf {
    assert_exit(&host.run(&["plan", "desired.toml", "-o", "old.json"]), 2);
    prepare(&mut host.wire());
    let fresh = host.run(&["plan", "desired.toml", "-o", "fresh.json"]);
    assert!(fresh.status.code().is_some(), "{}", text(&fresh));
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(host.dir.path().join(name)).unwrap()).unwrap()
    };
    let mut old = read("old.json");
    old["fingerprint"] = read("fresh.json")["fingerprint"].clone();
    host.file("stale.json", &old.to_string())
}

#[test]
fn a_saved_detach_whose_attachment_vanished_is_refused_by_planning_again() {
    for toolstack in ["xenstore", "xl"] {
        let dump = format!(
            "{DOMAINS}{}",
            attachment_dump("qdisk", 4, XVDA, "aio:/dev/sdc", "w")
        );
        let host = Host::seeded(&dump, GuestPolicy::default(), Faults::default());
        host.file(
            "desired.toml",
            &format!("{}[domains.guest1.disks]\n", settings(toolstack)),
        );
        saved_plan_outlived_by(&host, |wire| {
            wire.rm("/local/domain/0/backend/qdisk/4").unwrap();
            wire.rm("/local/domain/4/device/vbd/51712").unwrap();
        });
        let xl = FakeXl::new(&host);
        let (refused, calls) = xl.serve(&host, || xl.apply(&host, "stale.json", &[]));
        assert_exit(&refused, 3);
        let said = text(&refused);
        assert!(
            said.contains("is not the plan its desired state gives on this host")
                && said.contains("step 1 is [1] - domain guest1: detach xvda")
                && said.contains("but nothing now")
                && said.contains("nothing was applied"),
            "{toolstack}: {said}"
        );
        assert!(calls.is_empty(), "{toolstack}: {:?}", lines(&calls));
        // Planning again is all it takes.
        assert_exit(&host.run(&["plan", "desired.toml"]), 0);
    }
}

#[test]
fn a_saved_attach_onto_a_device_id_another_backend_took_is_refused() {
    for toolstack in ["xenstore", "xl"] {
        let host = Host::new(GuestPolicy::default(), Faults::default());
        host.file(
            "desired.toml",
            &format!(
                "{}[domains.guest1.disks]\nxvda = {{ source = \"phy:/dev/sdc\", mode = \"w\" }}\n",
                settings(toolstack)
            ),
        );
        saved_plan_outlived_by(&host, |wire| {
            wire.write_dump(&attachment_dump("qdisk", 4, XVDA, "aio:/dev/sdb1", "w"));
        });
        let xl = FakeXl::new(&host);
        let (refused, calls) = xl.serve(&host, || xl.apply(&host, "stale.json", &[]));
        assert_exit(&refused, 3);
        let said = text(&refused);
        assert!(
            said.contains("is not the plan its desired state gives on this host")
                && said.contains("nothing was applied"),
            "{toolstack}: {said}"
        );
        assert!(calls.is_empty(), "{toolstack}: {:?}", lines(&calls));
        let store = host.simulator.store();
        assert!(
            !store.exists("/local/domain/0/backend/vbd/4"),
            "{toolstack}"
        );
        assert_eq!(
            store
                .read("/local/domain/4/device/vbd/51712/backend")
                .unwrap(),
            QDISK_GUEST1.as_bytes(),
            "{toolstack}: the guest's frontend is left to its backend"
        );
    }
}

/// Domains named `3` and `-x`: xl would take the first for domid 3 and the
/// second for an option.
#[test]
fn xl_is_given_domids_not_names() {
    let dump = format!(
        "/local/domain/0/name = \"Domain-0\"\n\
         /local/domain/6/name = \"3\"\n\
         /local/domain/7/name = \"-x\"\n{}",
        attachment_dump("qdisk", 7, XVDA, "aio:/dev/sdb1", "w")
    );
    let host = Host::seeded(&dump, GuestPolicy::default(), Faults::default());
    host.file(
        "desired.toml",
        &format!(
            "{}[domains.3.disks]\nxvda = {{ source = \"phy:/dev/sdc\", mode = \"w\" }}\n\n\
             [domains.-x.disks]\n",
            settings("xl")
        ),
    );
    let xl = FakeXl::new(&host);
    let (applied, calls) = xl.serve(&host, || {
        xl.apply(&host, "desired.toml", &["--parallelism", "1"])
    });
    assert_exit(&applied, 0);
    let recorded: BTreeSet<String> = lines(&calls).into_iter().collect();
    assert_eq!(
        recorded,
        BTreeSet::from([
            "block-attach|6|format=raw, vdev=xvda, access=rw, target=/dev/sdc|".to_owned(),
            "block-detach|7|51712|".to_owned(),
        ])
    );
}

/// The simulated guests close their frontends for backends of every kind.
#[test]
fn simulated_guests_close_for_qdisk_and_vbd3_backends() {
    let host = Host::seeded(&two_backends(), GuestPolicy::default(), Faults::default());
    let mut wire = host.wire();
    for backend in [QDISK_GUEST1, VBD3_GUEST1] {
        wire.write(&format!("{backend}/state"), "5").unwrap();
        let frontend = wire.read(&format!("{backend}/frontend")).unwrap();
        let closed = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            wire.read(&format!("{frontend}/state")).as_deref() == Some("6")
                && wire.read(&format!("{backend}/state")).as_deref() == Some("6")
        });
        assert!(closed, "{backend}: the guest did not close");
    }
}

/// Detach steps of a plan made by hand, run by `apply::execute` with
/// `toolstack` (on the caller's thread, one step at a time).
fn execute_detaches(
    detaches: &[(&str, bool)],
    toolstack: Box<dyn Toolstack>,
) -> Result<(), xendisk::apply::ApplyError> {
    let steps = detaches
        .iter()
        .enumerate()
        .map(|(i, (backend, closing))| Step {
            id: i + 1,
            op: Op::Detach {
                domain: "guest1".into(),
                domid: 4,
                vdev: Vdev::from_device_id(XVDA + 16 * i as u32)
                    .unwrap()
                    .canonical_name(),
                devid: XVDA + 16 * i as u32,
                source: "phy:/dev/sdc".into(),
                backend: (*backend).into(),
                closing: *closing,
                format: "raw".into(),
            },
            depends_on: (1..=i).collect(),
            waits_for_sharing: Vec::new(),
        })
        .collect();
    let plan = Plan {
        settings: Settings::default(),
        steps,
        pending: Vec::new(),
        refusals: Vec::new(),
        notes: Vec::new(),
        safety: SafetyReport {
            level: Sharing::default(),
            holders: 0,
            conflicts: Vec::new(),
            existing: Vec::new(),
            unresolved: Vec::new(),
        },
    };
    let mut drivers = Drivers {
        toolstack,
        realiser: Box::new(PathOnly),
        simulated_devices: true,
        parallelism: 1,
        worker_toolstack: Box::new(|| unreachable!("one step at a time runs no worker")),
        observe_again: None,
    };
    let mut db = StateDb::in_memory().unwrap();
    let clock = || "2025-01-01T00:00:00Z".parse::<jiff::Timestamp>().unwrap();
    execute(
        &plan,
        &HostState::default(),
        &mut db,
        &mut drivers,
        ("hand-made plan", "sha256:none"),
        &mut Vec::new(),
        &clock,
    )
    .map(|_| ())
}

#[test]
fn execute_gives_the_toolstack_the_backend_kind_and_whether_it_was_closing() {
    struct Recording(Arc<Mutex<Vec<DetachRequest>>>);
    impl Toolstack for Recording {
        fn attach(&mut self, _: &AttachRequest) -> Result<(), ToolstackError> {
            Ok(())
        }
        fn detach(&mut self, request: &DetachRequest) -> Result<(), ToolstackError> {
            self.0.lock().unwrap().push(request.clone());
            Ok(())
        }
    }
    let requests = Arc::new(Mutex::new(Vec::new()));
    execute_detaches(
        &[("qdisk", true), ("vbd3", false)],
        Box::new(Recording(Arc::clone(&requests))),
    )
    .unwrap();
    let requests = requests.lock().unwrap();
    let seen: Vec<(&str, u32, bool)> = requests
        .iter()
        .map(|r| (r.backend.as_str(), r.devid, r.closing))
        .collect();
    assert_eq!(seen, [("qdisk", XVDA, true), ("vbd3", XVDB, false)]);
}

#[test]
fn execute_fails_a_detach_whose_attachment_is_not_where_the_plan_saw_it() {
    // The plan saw a qdisk at xvda; the host has a vbd there.
    let dump = format!(
        "{DOMAINS}{}",
        attachment_dump("vbd", 4, XVDA, "/dev/sdc", "w")
    );
    let host = Host::seeded(&dump, GuestPolicy::default(), Faults::default());
    let client = XsClient::connect_to(host.simulator.socket()).unwrap();
    let toolstack = XenstoreToolstack::with_client(
        client,
        BackendHost::Simulated,
        Duration::from_secs(5),
        false,
    );
    let error = execute_detaches(&[("qdisk", false)], Box::new(toolstack)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "step 1 (- domain guest1: detach xvda: phy:/dev/sdc (domid 4, qdisk backend)) failed: cannot detach xvda \
         of domain guest1: the plan expected an attachment at \
         /local/domain/0/backend/qdisk/4/51712, but nothing is there; the host has changed since \
         it was observed, and nothing was detached: plan again; the steps after it were not run \
         (see `xendisk state --runs`)"
    );
    assert_eq!(host.attached(4), ["51712"], "the vbd is not touched");
}

/// Records the paths of the watch events under a path, in order.
struct Watcher {
    stream: UnixStream,
    events: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Watcher {
    /// Returns once the watch is set.
    fn start(socket: &Path, path: &str) -> Watcher {
        let mut stream = UnixStream::connect(socket).unwrap();
        Message::new(
            MessageType::Watch,
            1,
            0,
            nul_terminated([path.as_bytes(), b"test"]),
        )
        .write_to(&mut stream)
        .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let record = |events: &Mutex<Vec<String>>, message: &Message| {
            let path = String::from_utf8_lossy(message.strings()[0]).into_owned();
            events.lock().unwrap().push(path);
        };
        loop {
            let message = Message::read_from(&mut stream).unwrap().unwrap();
            match message.message_type() {
                Some(MessageType::WatchEvent) => record(&events, &message),
                Some(MessageType::Watch) => break,
                other => panic!("WATCH answered {other:?}"),
            }
        }
        let mut reading = stream.try_clone().unwrap();
        let recorded = Arc::clone(&events);
        let reader = std::thread::spawn(move || {
            while let Ok(Some(message)) = Message::read_from(&mut reading) {
                if message.message_type() == Some(MessageType::WatchEvent) {
                    record(&recorded, &message);
                }
            }
        });
        Watcher {
            stream,
            events,
            reader,
        }
    }

    /// The events, once one satisfies `last` (or after 5 s: the events
    /// sent are on their way when the change is committed).
    fn stop_after(self, last: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !self.events.lock().unwrap().iter().any(|e| last(e))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stream.shutdown(std::net::Shutdown::Both).unwrap();
        self.reader.join().unwrap();
        let events = self.events.lock().unwrap();
        events.clone()
    }
}
