//! The simulator checks permissions as xenstored does: a connection acting
//! as a guest reads and writes only what its permissions allow, owns what
//! it creates, and cannot give a node away; and a simulated guest uses its
//! disks only through its own rights, so an attachment written with the
//! wrong permissions cannot be closed by its guest, as on a real host.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use xendisk::apply::toolstack::{
    AttachRequest, BackendHost, DetachRequest, Toolstack, ToolstackError, XenstoreToolstack,
};
use xendisk::desired::Mode;
use xendisk::sim::{Faults, GuestPolicy, Simulator, Store};
use xendisk::xs_client::XsClient;
use xendisk::xs_wire::{Message, MessageType, nul_terminated};

/// Requests over one connection, answered in turn.
struct Guest {
    stream: UnixStream,
    next: u32,
}

impl Guest {
    /// One request with `payload`; its answer, or the errno's name.
    fn request(&mut self, kind: MessageType, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        self.next += 1;
        Message::new(kind, self.next, 0, payload)
            .write_to(&mut self.stream)
            .unwrap();
        let reply = Message::read_from(&mut self.stream).unwrap().unwrap();
        if reply.message_type() == Some(MessageType::Error) {
            return Err(String::from_utf8_lossy(&reply.payload)
                .trim_end_matches('\0')
                .to_owned());
        }
        Ok(reply.payload)
    }

    fn call(&mut self, kind: MessageType, parts: &[&[u8]]) -> Result<Vec<u8>, String> {
        self.request(kind, nul_terminated(parts.iter().copied()))
    }

    fn read(&mut self, path: &str) -> Result<Vec<u8>, String> {
        self.call(MessageType::Read, &[path.as_bytes()])
    }

    /// A WRITE: the path NUL-terminated, then the value as it is.
    fn write(&mut self, path: &str, value: &str) -> Result<(), String> {
        let mut payload = nul_terminated([path.as_bytes()]);
        payload.extend_from_slice(value.as_bytes());
        self.request(MessageType::Write, payload).map(|_| ())
    }
}

fn host() -> (tempfile::TempDir, Simulator) {
    let mut store = Store::default();
    for (path, value) in [
        ("/local/domain/0/name", "Domain-0"),
        ("/local/domain/4/name", "guest1"),
        ("/local/domain/5/name", "guest2"),
        ("/local/domain/4/data", ""),
    ] {
        store.write(path, value.as_bytes()).unwrap();
    }
    xendisk::sim::perms::assume_as_on_a_xen_host(&mut store);
    let dir = tempfile::tempdir().unwrap();
    let guests = GuestPolicy {
        close_delay: Duration::from_millis(5),
        ..GuestPolicy::default()
    };
    let simulator =
        Simulator::start(&dir.path().join("socket"), store, guests, Faults::default()).unwrap();
    (dir, simulator)
}

fn guest(simulator: &Simulator, domid: u32) -> Guest {
    Guest {
        stream: simulator.connect_as(domid).unwrap(),
        next: 0,
    }
}

fn toolstack(simulator: &Simulator) -> XenstoreToolstack {
    let client = XsClient::connect_to(simulator.socket()).unwrap();
    XenstoreToolstack::with_client(
        client,
        BackendHost::Simulated,
        Duration::from_millis(500),
        false,
    )
}

fn request() -> AttachRequest {
    AttachRequest {
        domain: "guest1".into(),
        domid: 4,
        vdev: "xvdb".into(),
        devid: 51728,
        target: "/dev/loop0".into(),
        mode: Mode::Write,
        format: Default::default(),
    }
}

fn detach() -> DetachRequest {
    DetachRequest {
        domain: "guest1".into(),
        domid: 4,
        vdev: "xvdb".into(),
        devid: 51728,
        backend: "vbd".into(),
        closing: false,
    }
}

const BACKEND: &str = "/local/domain/0/backend/vbd/4/51728";
const FRONTEND: &str = "/local/domain/4/device/vbd/51728";

#[test]
fn a_guest_reads_its_backend_and_writes_only_its_frontend() {
    let (_dir, simulator) = host();
    toolstack(&simulator).attach(&request()).unwrap();
    let mut guest1 = guest(&simulator, 4);
    assert_eq!(guest1.read(&format!("{BACKEND}/mode")).unwrap(), b"w");
    assert_eq!(
        guest1.write(&format!("{BACKEND}/mode"), "r"),
        Err("EACCES".into())
    );
    guest1.write(&format!("{FRONTEND}/state"), "3").unwrap();
    // Another guest sees neither half.
    let mut guest2 = guest(&simulator, 5);
    assert_eq!(
        guest2.read(&format!("{BACKEND}/mode")),
        Err("EACCES".into())
    );
    assert_eq!(
        guest2.read(&format!("{FRONTEND}/state")),
        Err("EACCES".into())
    );
    assert_eq!(
        guest2.write(&format!("{FRONTEND}/state"), "6"),
        Err("EACCES".into())
    );
    assert_eq!(
        guest2.call(MessageType::Rm, &[FRONTEND.as_bytes()]),
        Err("EACCES".into())
    );
    // dom0's home is no guest's to write.
    assert_eq!(
        guest1.write("/local/domain/0/name", "mine"),
        Err("EACCES".into())
    );
}

#[test]
fn a_guest_owns_what_it_creates_and_cannot_give_it_away() {
    let (_dir, simulator) = host();
    let mut guest1 = guest(&simulator, 4);
    guest1.write("/local/domain/4/data/made/here", "1").unwrap();
    let store = simulator.store();
    assert_eq!(
        store.get_perms("/local/domain/4/data/made/here").unwrap(),
        ["n4"]
    );
    assert_eq!(
        guest1.call(
            MessageType::SetPerms,
            &[b"/local/domain/4/data/made", b"n5"]
        ),
        Err("EPERM".into())
    );
    guest1
        .call(
            MessageType::SetPerms,
            &[b"/local/domain/4/data/made", b"n4", b"r5"],
        )
        .unwrap();
    assert_eq!(
        guest(&simulator, 5)
            .read("/local/domain/4/data/made")
            .unwrap(),
        b""
    );
    // Creating needs write access to the parent it is made under.
    assert_eq!(
        guest1.write("/local/domain/4/elsewhere", "1"),
        Err("EACCES".into())
    );
}

/// The nodes as the xenstore toolstack wrote them before it followed
/// libxl: every leaf first, the directories' permissions after, so the
/// leaves kept the permissions they inherited.
fn attach_the_old_way(simulator: &Simulator) {
    let mut client = XsClient::connect_to(simulator.socket()).unwrap();
    client
        .transaction("old attach", |client, tx| {
            for (leaf, value) in [
                ("frontend", FRONTEND),
                ("online", "1"),
                ("state", "1"),
                ("type", "file"),
                ("mode", "w"),
                ("params", "/dev/loop0"),
            ] {
                client.write(tx, &format!("{BACKEND}/{leaf}"), value)?;
            }
            client.set_perms(tx, BACKEND, &["n0".into(), "r4".into()])?;
            for (leaf, value) in [("backend", BACKEND), ("state", "1")] {
                client.write(tx, &format!("{FRONTEND}/{leaf}"), value)?;
            }
            client.set_perms(tx, FRONTEND, &["n4".into(), "r0".into()])
        })
        .unwrap();
}

#[test]
fn a_disk_attached_without_libxl_s_permissions_cannot_be_used_by_its_guest() {
    let (_dir, simulator) = host();
    attach_the_old_way(&simulator);
    let mut guest1 = guest(&simulator, 4);
    // The guest can read neither the backend's state nor its mode ...
    assert_eq!(
        guest1.read(&format!("{BACKEND}/state")),
        Err("EACCES".into())
    );
    // ... nor write its own frontend's state ...
    assert_eq!(
        guest1.write(&format!("{FRONTEND}/state"), "3"),
        Err("EACCES".into())
    );
    // ... so it never answers a request to close.
    let error = toolstack(&simulator).detach(&detach()).unwrap_err();
    assert!(
        matches!(error, ToolstackError::NotReleased { .. }),
        "{error}"
    );
}

#[test]
fn a_disk_attached_as_libxl_does_is_closed_by_its_guest() {
    let (_dir, simulator) = host();
    toolstack(&simulator).attach(&request()).unwrap();
    toolstack(&simulator).detach(&detach()).unwrap();
    let store = simulator.store();
    assert!(!store.exists(BACKEND) && !store.exists(FRONTEND));
}
