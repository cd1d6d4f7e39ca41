//! The xenstored simulator, checked two ways: against Debian's real clients
//! (xenstore-utils, which CI installs), and request by request over the wire
//! for what those clients cannot show (transactions, watches, simulated
//! guests, injected faults).

use std::collections::{BTreeSet, VecDeque};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use xendisk::sim::{Faults, GuestPolicy, Simulator, Store, dump};
use xendisk::xs_wire::{Message, MessageType, nul_terminated};

fn demo() -> Store {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hosts/demo/xenstore.xs"),
    )
    .unwrap();
    dump::parse(&text).unwrap()
}

fn start(store: Store, guests: GuestPolicy, faults: Faults) -> (tempfile::TempDir, Simulator) {
    let dir = tempfile::tempdir().unwrap();
    let simulator =
        Simulator::start(&dir.path().join("xenstored.socket"), store, guests, faults).unwrap();
    (dir, simulator)
}

/// Runs one of Debian's clients against the simulator.
fn client(simulator: &Simulator, program: &str, args: &[&str]) -> Option<(bool, String)> {
    let output = match Command::new(program)
        .args(args)
        .env("XENSTORED_PATH", simulator.socket())
        .output()
    {
        Ok(output) => output,
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("{program} is missing: .ci/run installs xenstore-utils")
        }
        Err(_) => {
            use std::io::Write;
            let message = format!(
                "SKIPPED a check with Debian's clients: {program} is not installed (apt-get install xenstore-utils)"
            );
            let _ = writeln!(std::io::stderr(), "{message}");
            return None;
        }
    };
    Some((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

#[test]
fn debian_clients_see_what_the_simulator_holds() {
    let (_dir, simulator) = start(demo(), GuestPolicy::default(), Faults::default());
    let Some((ok, listing)) = client(&simulator, "xenstore-ls", &["-f"]) else {
        return;
    };
    assert!(ok);
    assert_eq!(
        dump::parse(&listing).unwrap(),
        simulator.store(),
        "xenstore-ls -f differs from the store"
    );
    assert_eq!(dump::write_full_paths(&simulator.store()), listing);

    let (ok, _) = client(
        &simulator,
        "xenstore-write",
        &["/local/domain/9/name", "new guest", "/tool/x", "a\tb"],
    )
    .unwrap();
    assert!(ok);
    assert_eq!(
        simulator.store().read("/local/domain/9/name").unwrap(),
        b"new guest"
    );
    assert_eq!(simulator.store().read("/tool/x").unwrap(), b"a\tb");
    let (ok, value) = client(&simulator, "xenstore-read", &["/local/domain/3/name"]).unwrap();
    assert!(ok);
    assert_eq!(value, "web01\n");
    let (ok, children) = client(&simulator, "xenstore-list", &["/local/domain"]).unwrap();
    assert!(ok);
    assert_eq!(children, "0\n3\n4\n5\n7\n9\n");
    let (ok, _) = client(&simulator, "xenstore-rm", &["/local/domain/9"]).unwrap();
    assert!(ok);
    assert!(!simulator.store().exists("/local/domain/9"));
    let (missing, _) = client(&simulator, "xenstore-read", &["/local/domain/9/name"]).unwrap();
    assert!(!missing, "reading a removed node must fail");
    let (ok, _) = client(
        &simulator,
        "xenstore-chmod",
        &["/local/domain/3", "n3", "r0"],
    )
    .unwrap();
    assert!(ok);
    assert_eq!(
        simulator.store().get_perms("/local/domain/3").unwrap(),
        ["n3", "r0"]
    );
}

#[test]
fn debian_clients_page_long_listings() {
    let mut store = Store::default();
    for domid in 0..1500 {
        store
            .write(&format!("/local/domain/{domid}/name"), b"g")
            .unwrap();
    }
    let (_dir, simulator) = start(store, GuestPolicy::default(), Faults::default());
    let Some((ok, children)) = client(&simulator, "xenstore-list", &["/local/domain"]) else {
        return;
    };
    assert!(ok);
    let listed: BTreeSet<u32> = children.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(listed, (0..1500).collect());
}

/// A client speaking the wire protocol directly, keeping watch events apart.
struct Wire {
    stream: UnixStream,
    next_id: u32,
    events: VecDeque<(String, String)>,
}

impl Wire {
    fn connect(simulator: &Simulator) -> Wire {
        let stream = UnixStream::connect(simulator.socket()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Wire {
            stream,
            next_id: 1,
            events: VecDeque::new(),
        }
    }

    fn call(&mut self, kind: MessageType, tx: u32, args: &[&[u8]]) -> Result<Vec<u8>, String> {
        let id = self.next_id;
        self.next_id += 1;
        let payload = if kind == MessageType::Write {
            let mut p = nul_terminated([args[0]]);
            p.extend_from_slice(args[1]);
            p
        } else {
            nul_terminated(args.iter().copied())
        };
        Message::new(kind, id, tx, payload)
            .write_to(&mut self.stream)
            .map_err(|e| e.to_string())?;
        loop {
            let message = Message::read_from(&mut self.stream)
                .map_err(|e| e.to_string())?
                .ok_or("closed")?;
            if message.message_type() == Some(MessageType::WatchEvent) {
                self.queue_event(&message);
                continue;
            }
            assert_eq!(message.request_id, id);
            if message.message_type() == Some(MessageType::Error) {
                return Err(
                    String::from_utf8_lossy(message.payload.strip_suffix(b"\0").unwrap())
                        .into_owned(),
                );
            }
            return Ok(message.payload);
        }
    }

    fn queue_event(&mut self, message: &Message) {
        let parts = message.strings();
        let text = |i: usize| String::from_utf8_lossy(parts[i]).into_owned();
        self.events.push_back((text(0), text(1)));
    }

    fn next_event(&mut self) -> (String, String) {
        if let Some(event) = self.events.pop_front() {
            return event;
        }
        let message = Message::read_from(&mut self.stream).unwrap().unwrap();
        assert_eq!(message.message_type(), Some(MessageType::WatchEvent));
        self.queue_event(&message);
        self.events.pop_front().unwrap()
    }

    fn write(&mut self, tx: u32, path: &str, value: &str) -> Result<(), String> {
        self.call(MessageType::Write, tx, &[path.as_bytes(), value.as_bytes()])
            .map(|_| ())
    }

    fn start_transaction(&mut self) -> u32 {
        let reply = self.call(MessageType::TransactionStart, 0, &[b""]).unwrap();
        String::from_utf8_lossy(reply.strip_suffix(b"\0").unwrap())
            .parse()
            .unwrap()
    }

    fn end_transaction(&mut self, tx: u32, commit: bool) -> Result<(), String> {
        self.call(
            MessageType::TransactionEnd,
            tx,
            &[if commit { b"T" } else { b"F" }],
        )
        .map(|_| ())
    }
}

#[test]
fn transactions_are_isolated_and_fail_after_an_intervening_commit() {
    let (_dir, simulator) = start(Store::default(), GuestPolicy::default(), Faults::default());
    let (mut a, mut b) = (Wire::connect(&simulator), Wire::connect(&simulator));
    let tx = a.start_transaction();
    a.write(tx, "/t/inside", "1").unwrap();
    assert_eq!(
        a.call(MessageType::Read, tx, &[b"/t/inside"]).unwrap(),
        b"1"
    );
    assert!(
        !simulator.store().exists("/t/inside"),
        "not visible before commit"
    );
    b.write(0, "/t/other", "x").unwrap();
    assert_eq!(a.end_transaction(tx, true), Err("EAGAIN".to_owned()));
    assert!(!simulator.store().exists("/t/inside"));
    let retry = a.start_transaction();
    a.write(retry, "/t/inside", "1").unwrap();
    a.end_transaction(retry, true).unwrap();
    assert_eq!(simulator.store().read("/t/inside").unwrap(), b"1");
    let aborted = a.start_transaction();
    a.write(aborted, "/t/aborted", "1").unwrap();
    a.end_transaction(aborted, false).unwrap();
    assert!(!simulator.store().exists("/t/aborted"));
    assert_eq!(
        b.end_transaction(retry, true),
        Err("ENOENT".to_owned()),
        "a finished transaction is gone"
    );
}

/// xenstored fails a commit only when a node the transaction accessed
/// (read, listed, wrote, or gave a child) changed meanwhile.
#[test]
fn transactions_conflict_only_over_the_nodes_they_accessed() {
    let mut store = Store::default();
    for path in ["/a/x", "/b/y", "/c/z/deep"] {
        store.write(path, b"0").unwrap();
    }
    let (_dir, simulator) = start(store, GuestPolicy::default(), Faults::default());
    let (mut a, mut b) = (Wire::connect(&simulator), Wire::connect(&simulator));
    // Unrelated nodes: both commit.
    let tx = a.start_transaction();
    a.call(MessageType::Read, tx, &[b"/a/x"]).unwrap();
    a.write(tx, "/a/x", "1").unwrap();
    b.write(0, "/b/y", "1").unwrap();
    a.end_transaction(tx, true).unwrap();
    // The commit kept what the other client wrote meanwhile.
    assert_eq!(simulator.store().read("/b/y").unwrap(), b"1");
    assert_eq!(simulator.store().read("/a/x").unwrap(), b"1");
    // A node it read changed: EAGAIN.
    let tx = a.start_transaction();
    a.call(MessageType::Read, tx, &[b"/b/y"]).unwrap();
    a.write(tx, "/a/x", "2").unwrap();
    b.write(0, "/b/y", "2").unwrap();
    assert_eq!(a.end_transaction(tx, true), Err("EAGAIN".to_owned()));
    // A node it found missing was made meanwhile: EAGAIN.
    let tx = a.start_transaction();
    assert!(a.call(MessageType::Read, tx, &[b"/b/new"]).is_err());
    b.write(0, "/b/new", "1").unwrap();
    a.write(tx, "/a/x", "3").unwrap();
    assert_eq!(a.end_transaction(tx, true), Err("EAGAIN".to_owned()));
    // Two new siblings: the parent's children changed under the second.
    let (ta, tb) = (a.start_transaction(), b.start_transaction());
    a.write(ta, "/a/one", "1").unwrap();
    b.write(tb, "/a/two", "1").unwrap();
    b.end_transaction(tb, true).unwrap();
    assert_eq!(a.end_transaction(ta, true), Err("EAGAIN".to_owned()));
    // A read node removed with its parent: EAGAIN.
    let tx = a.start_transaction();
    a.call(MessageType::Read, tx, &[b"/c/z/deep"]).unwrap();
    a.write(tx, "/a/x", "4").unwrap();
    b.call(MessageType::Rm, 0, &[b"/c/z"]).unwrap();
    assert_eq!(a.end_transaction(tx, true), Err("EAGAIN".to_owned()));
    // An aborted transaction's writes conflict with no one.
    let (ta, tb) = (a.start_transaction(), b.start_transaction());
    b.write(tb, "/a/x", "5").unwrap();
    b.end_transaction(tb, false).unwrap();
    a.call(MessageType::Read, ta, &[b"/a/x"]).unwrap();
    a.end_transaction(ta, true).unwrap();
    assert_eq!(simulator.store().read("/a/x").unwrap(), b"1");
}

#[test]
fn strict_transactions_fail_on_any_commit_meanwhile() {
    let faults = Faults {
        strict_transactions: true,
        ..Faults::default()
    };
    let mut store = Store::default();
    store.write("/a/x", b"0").unwrap();
    store.write("/b/y", b"0").unwrap();
    let (_dir, simulator) = start(store, GuestPolicy::default(), faults);
    let (mut a, mut b) = (Wire::connect(&simulator), Wire::connect(&simulator));
    let tx = a.start_transaction();
    a.write(tx, "/a/x", "1").unwrap();
    b.write(0, "/b/y", "1").unwrap();
    assert_eq!(a.end_transaction(tx, true), Err("EAGAIN".to_owned()));
}

#[test]
fn injected_eagain_fails_the_chosen_commits() {
    let faults = Faults {
        eagain_commits: BTreeSet::from([1, 2]),
        ..Faults::default()
    };
    let (_dir, simulator) = start(Store::default(), GuestPolicy::default(), faults);
    let mut a = Wire::connect(&simulator);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let tx = a.start_transaction();
        a.write(tx, "/x", "1").unwrap();
        match a.end_transaction(tx, true) {
            Ok(()) => break,
            Err(e) => assert_eq!(e, "EAGAIN"),
        }
    }
    assert_eq!(attempts, 3);
}

#[test]
fn watches_fire_at_once_on_changes_below_and_on_removal_above() {
    let (_dir, simulator) = start(demo(), GuestPolicy::default(), Faults::default());
    let (mut watcher, mut writer) = (Wire::connect(&simulator), Wire::connect(&simulator));
    watcher
        .call(MessageType::Watch, 0, &[b"/local/domain/3/device", b"tok"])
        .unwrap();
    assert_eq!(
        watcher.next_event(),
        ("/local/domain/3/device".into(), "tok".into())
    );
    writer
        .write(0, "/local/domain/3/device/vbd/51712/state", "5")
        .unwrap();
    assert_eq!(
        watcher.next_event(),
        (
            "/local/domain/3/device/vbd/51712/state".into(),
            "tok".into()
        )
    );
    writer
        .write(0, "/local/domain/5/name", "elsewhere")
        .unwrap();
    writer
        .call(MessageType::Rm, 0, &[b"/local/domain/3"])
        .unwrap();
    assert_eq!(
        watcher.next_event(),
        ("/local/domain/3/device".into(), "tok".into())
    );
    assert_eq!(
        watcher.call(MessageType::Watch, 0, &[b"/local/domain/3/device", b"tok"]),
        Err("EEXIST".into())
    );
}

fn wait_for(simulator: &Simulator, path: &str, value: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if simulator.store().read(path).ok() == Some(value) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn guests_close_their_frontends_unless_they_keep_the_disk() {
    let guests = GuestPolicy {
        close_delay: Duration::from_millis(20),
        never_close: BTreeSet::from([5]),
    };
    let (_dir, simulator) = start(demo(), guests, Faults::default());
    let mut toolstack = Wire::connect(&simulator);
    toolstack
        .write(0, "/local/domain/0/backend/vbd/3/51712/state", "5")
        .unwrap();
    assert!(
        wait_for(&simulator, "/local/domain/3/device/vbd/51712/state", b"6"),
        "the guest closes its frontend"
    );
    assert!(
        wait_for(
            &simulator,
            "/local/domain/0/backend/vbd/3/51712/state",
            b"6"
        ),
        "then the backend closes"
    );
    toolstack
        .write(0, "/local/domain/0/backend/qdisk/5/51712/state", "5")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let store = simulator.store();
    assert_eq!(
        store
            .read("/local/domain/5/device/vbd/51712/state")
            .unwrap(),
        b"4",
        "domain 5 keeps its disk"
    );
    assert_eq!(
        store
            .read("/local/domain/0/backend/qdisk/5/51712/state")
            .unwrap(),
        b"5"
    );
}

#[test]
fn a_connection_is_dropped_after_the_chosen_number_of_requests() {
    let faults = Faults {
        drop_after_requests: Some(2),
        ..Faults::default()
    };
    let (_dir, simulator) = start(demo(), GuestPolicy::default(), faults);
    let mut client = Wire::connect(&simulator);
    client
        .call(MessageType::Read, 0, &[b"/local/domain/0/name"])
        .unwrap();
    client
        .call(MessageType::Read, 0, &[b"/local/domain/3/name"])
        .unwrap();
    assert!(
        client
            .call(MessageType::Read, 0, &[b"/local/domain/5/name"])
            .is_err()
    );
    // A new connection is served again.
    assert_eq!(
        Wire::connect(&simulator)
            .call(MessageType::Read, 0, &[b"/local/domain/5/name"])
            .unwrap(),
        b"mirage-www"
    );
}

#[test]
fn errors_are_errno_names() {
    let (_dir, simulator) = start(demo(), GuestPolicy::default(), Faults::default());
    let mut client = Wire::connect(&simulator);
    assert_eq!(
        client.call(MessageType::Read, 0, &[b"/no/such"]),
        Err("ENOENT".into())
    );
    assert_eq!(
        client.call(MessageType::Read, 0, &[b"/bad//path"]),
        Err("EINVAL".into())
    );
    assert_eq!(
        client.call(MessageType::Read, 77, &[b"/local"]),
        Err("ENOENT".into()),
        "unknown transaction"
    );
    assert_eq!(
        client.call(MessageType::GetDomainPath, 0, &[b"3"]).unwrap(),
        b"/local/domain/3\0"
    );
    // Relative paths are dom0's.
    assert_eq!(
        client.call(MessageType::Read, 0, &[b"name"]).unwrap(),
        b"Domain-0"
    );
}

/// The project's own client (transactions, paged listings) against the simulator.
mod own_client {
    use super::*;
    use xendisk::xs_client::XsClient;

    /// The client finds xenstored through XENSTORED_PATH: the checks run in
    /// a child process, so that this test leaves the others' environment alone.
    #[test]
    fn transactions_retry_after_eagain_and_listings_page() {
        if std::env::var_os("XENDISK_OWN_CLIENT_CHILD").is_none() {
            let mut store = Store::default();
            for domid in 0..2000 {
                store
                    .write(&format!("/local/domain/{domid}/name"), b"g")
                    .unwrap();
            }
            let faults = Faults {
                eagain_commits: BTreeSet::from([1, 2, 3]),
                ..Faults::default()
            };
            let (_dir, simulator) = start(store, GuestPolicy::default(), faults);
            let child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "own_client::transactions_retry_after_eagain_and_listings_page",
                ])
                .env("XENDISK_OWN_CLIENT_CHILD", "1")
                .env("XENSTORED_PATH", simulator.socket())
                .output()
                .unwrap();
            assert!(
                child.status.success(),
                "{}",
                String::from_utf8_lossy(&child.stdout)
            );
            assert_eq!(
                simulator
                    .store()
                    .read("/local/domain/7/device/vbd/51712/state")
                    .unwrap(),
                b"1"
            );
            assert_eq!(
                simulator
                    .store()
                    .read("/local/domain/0/backend/vbd/7/51712/state")
                    .unwrap(),
                b"1"
            );
            return;
        }
        let simulator_socket = std::env::var("XENSTORED_PATH").unwrap();
        assert!(Path::new(&simulator_socket).exists());
        let mut client = XsClient::connect().unwrap();
        let names = client.directory(0, "/local/domain").unwrap().unwrap();
        assert_eq!(names.len(), 2000);
        let mut attempts = 0;
        client
            .transaction("attach", |client, tx| {
                attempts += 1;
                client.write(tx, "/local/domain/0/backend/vbd/7/51712/state", "1")?;
                client.write(tx, "/local/domain/7/device/vbd/51712/state", "1")
            })
            .unwrap();
        assert_eq!(attempts, 4, "three injected EAGAINs, then a commit");
        assert_eq!(
            client
                .read(0, "/local/domain/7/device/vbd/51712/state")
                .unwrap()
                .as_deref(),
            Some("1")
        );
        assert_eq!(client.read(0, "/nothing/here").unwrap(), None);
        client.rm(0, "/nothing/here").unwrap();
    }
}
