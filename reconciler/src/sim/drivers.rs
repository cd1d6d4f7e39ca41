//! The drivers the simulator can play around a vbd, so that a disk that
//! would not connect on a real host does not connect here either: dom0's
//! blkback (Linux drivers/block/xen-blkback/xenbus.c), the hotplug step
//! ([`super::hotplug`]), and each guest's blkfront
//! (drivers/block/xen-blkfront.c), acting through the guest's own rights.
//!
//! After every commit the simulator asks [`react`] what the drivers do
//! about the vbds it touched, applies those writes (a guest's as that
//! guest: checked against its permissions, owning what it makes), and
//! asks again about what they touched, until nothing more happens:
//!
//! 1. blkback probes a backend whose `state` is Initialising (1): it needs
//!    `frontend-id` and a `frontend` that exists, else it fails as
//!    `xenbus_dev_fatal` does (`/local/domain/0/error/backend/vbd/D/N/error
//!    = "ERRNO message"`, state Closing); it writes its feature nodes and
//!    goes to InitWait (2).
//! 2. the hotplug step runs for a backend in InitWait that names a `block`
//!    script and has no `hotplug-status` yet: at once, or, given a
//!    [`Drivers::hotplug_delay`], that long after (a real script takes from
//!    tens of milliseconds to seconds), while other commits go on.
//! 3. blkfront, in a guest with the driver, sees its frontend Initialising
//!    and its backend in InitWait: it writes its ring, event channel,
//!    protocol and `feature-persistent`, and goes to Initialised (3). It
//!    must be able to read the backend and write its frontend.
//! 4. blkback, once `physical-device` is there, reads `mode` and opens the
//!    device (fatal if either fails); when the frontend is Initialised or
//!    Connected it writes what the guest needs (`sectors`, `info`, ...)
//!    and goes to Connected (4).
//! 5. blkfront reads those and goes to Connected.
//!
//! Closing stays with the simulated guests (`GuestPolicy`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::hotplug::{self, HostView};
use super::perms::{self, Access};
use super::store::Store;
use super::vbds::VbdIndex;

/// The drivers the simulator plays, and the host they run on.
#[derive(Debug, Clone, Default)]
pub struct Drivers {
    /// The simulated dom0's devices and mounts, for the hotplug step.
    pub host: HostView,
    /// Guests without a blkfront driver: their frontends never connect.
    pub without_blkfront: BTreeSet<u32>,
    /// How long the hotplug step takes; zero runs it within the commit
    /// that brought the backend to InitWait.
    pub hotplug_delay: Duration,
}

/// One write a driver makes, as the domain it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub domid: u32,
    pub path: String,
    pub value: String,
}

/// What the drivers remember between commits: the next event channel and
/// grant reference a guest hands out, and the hotplug steps under way.
#[derive(Debug, Clone)]
pub struct Memory {
    next_port: u32,
    /// What the block script reads of every backend, kept as the store
    /// changes ([`Memory::changed`]).
    vbds: VbdIndex,
    /// Backends whose delayed hotplug step has started and not yet run.
    hotplug_running: BTreeSet<String>,
    /// Of those, the ones started by the last [`react`]: the simulator
    /// runs each after [`Drivers::hotplug_delay`] ([`hotplug_now`]).
    pub hotplug_started: Vec<String>,
}

impl Memory {
    /// The drivers' memory of a store they have not seen change yet.
    pub fn of(store: &Store) -> Memory {
        Memory {
            next_port: 8,
            vbds: VbdIndex::of(store),
            hotplug_running: BTreeSet::new(),
            hotplug_started: Vec::new(),
        }
    }

    /// `path` changed in `store`.
    pub fn changed(&mut self, store: &Store, path: &str) {
        self.vbds.refresh(store, path);
    }
}

/// XenbusState values.
const INITIALISING: &str = "1";
const INIT_WAIT: &str = "2";
const INITIALISED: &str = "3";
const CONNECTED: &str = "4";
const CLOSING: &str = "5";

/// Linux errno values `xenbus_dev_fatal` writes.
const ENOENT: i32 = 2;
const EINVAL: i32 = 22;

const VBD_BACKENDS: &str = "/local/domain/0/backend/vbd/";

fn read(store: &Store, path: &str) -> Option<String> {
    store
        .read(path)
        .ok()
        .map(|v| String::from_utf8_lossy(v).trim().to_owned())
}

/// The vbd backend directory a changed path concerns: the backend's own
/// nodes, or a frontend's (through its `backend`).
fn backend_of(store: &Store, path: &str) -> Option<String> {
    if let Some(rest) = path.strip_prefix(VBD_BACKENDS) {
        let mut parts = rest.split('/');
        let (domid, devid) = (parts.next()?, parts.next()?);
        return Some(format!("{VBD_BACKENDS}{domid}/{devid}"));
    }
    let parts: Vec<&str> = path.split('/').collect();
    let ["", "local", "domain", domid, "device", "vbd", devid, ..] = parts.as_slice() else {
        return None;
    };
    let backend = read(
        store,
        &format!("/local/domain/{domid}/device/vbd/{devid}/backend"),
    )?;
    backend.starts_with(VBD_BACKENDS).then_some(backend)
}

/// What the drivers do after the changes at `changed`.
pub fn react(
    store: &Store,
    drivers: &Drivers,
    changed: &[String],
    memory: &mut Memory,
) -> Vec<Action> {
    let vbds: BTreeSet<String> = changed
        .iter()
        .filter_map(|path| backend_of(store, path))
        .collect();
    // Each vbd sees what the ones before it did: two scripts take turns
    // (the real one holds a lock), so they never pick one loop device.
    let mut scratch = store.clone();
    let mut actions = Vec::new();
    for backend in &vbds {
        if !scratch.exists(backend) {
            continue;
        }
        let done = step(&scratch, drivers, backend, memory);
        for action in &done {
            let _ = scratch.write(&action.path, action.value.as_bytes());
            memory.changed(&scratch, &action.path);
        }
        actions.extend(done);
    }
    // The writes are yet to be made (one may be refused): until they are,
    // the index says what the store says.
    for backend in &vbds {
        memory.changed(store, backend);
    }
    actions
}

/// What each driver of one vbd does now.
fn step(store: &Store, drivers: &Drivers, backend: &str, memory: &mut Memory) -> Vec<Action> {
    let at = |leaf: &str| format!("{backend}/{leaf}");
    let state = read(store, &at("state")).unwrap_or_default();
    let mut actions = Vec::new();
    match state.as_str() {
        INITIALISING => return dom0(probe(store, backend)),
        INIT_WAIT => {
            if hotplug_due(store, backend) {
                if drivers.hotplug_delay.is_zero() {
                    actions.extend(dom0(hotplug::add(
                        store,
                        &memory.vbds,
                        &drivers.host,
                        backend,
                    )));
                } else if memory.hotplug_running.insert(backend.to_owned()) {
                    memory.hotplug_started.push(backend.to_owned());
                }
            }
            if store.exists(&at("physical-device")) {
                actions.extend(dom0(connect(store, &drivers.host, backend)));
            }
        }
        _ => {}
    }
    actions.extend(blkfront(store, drivers, backend, memory));
    actions
}

/// Whether the hotplug step is to run for `backend`: in InitWait, naming
/// the `block` script, not run yet.
fn hotplug_due(store: &Store, backend: &str) -> bool {
    let at = |leaf: &str| format!("{backend}/{leaf}");
    read(store, &at("state")).as_deref() == Some(INIT_WAIT)
        && read(store, &at("script")).is_some_and(|s| s.rsplit('/').next() == Some("block"))
        && !store.exists(&at("hotplug-status"))
}

/// A delayed hotplug step, once its time has come: its writes, if the
/// backend still waits for it (it may have gone meanwhile).
pub fn hotplug_now(
    store: &Store,
    drivers: &Drivers,
    backend: &str,
    memory: &mut Memory,
) -> Vec<Action> {
    memory.hotplug_running.remove(backend);
    if !hotplug_due(store, backend) {
        return Vec::new();
    }
    dom0(hotplug::add(store, &memory.vbds, &drivers.host, backend))
}

/// Writes dom0 makes (blkback's, the hotplug script's).
fn dom0(writes: Vec<(String, String)>) -> Vec<Action> {
    writes
        .into_iter()
        .map(|(path, value)| Action {
            domid: 0,
            path,
            value,
        })
        .collect()
}

/// `xenbus_dev_fatal`: the error under dom0's `error/`, then Closing.
fn fatal(backend: &str, errno: i32, message: &str) -> Vec<(String, String)> {
    let relative = backend.trim_start_matches("/local/domain/0/");
    vec![
        (
            format!("/local/domain/0/error/{relative}/error"),
            format!("{errno} {message}"),
        ),
        (format!("{backend}/state"), CLOSING.to_owned()),
    ]
}

/// blkback's probe (xenbus `read_otherend_details`, `xen_blkbk_probe`).
fn probe(store: &Store, backend: &str) -> Vec<(String, String)> {
    let relative = backend.trim_start_matches("/local/domain/0/");
    let id = read(store, &format!("{backend}/frontend-id"));
    let frontend = read(store, &format!("{backend}/frontend"));
    let (Some(_), Some(frontend)) = (id.filter(|i| i.parse::<u32>().is_ok()), frontend) else {
        let message = format!("reading other end details from {relative}");
        return fatal(backend, ENOENT, &message);
    };
    if frontend.is_empty() || !store.exists(&frontend) {
        let message =
            format!("unable to read other end from {relative}.  missing or inaccessible.");
        return fatal(backend, ENOENT, &message);
    }
    [
        ("feature-max-indirect-segments", "256"),
        ("multi-queue-max-queues", "2"),
        ("max-ring-page-order", "4"),
        ("state", INIT_WAIT),
    ]
    .into_iter()
    .map(|(leaf, value)| (format!("{backend}/{leaf}"), value.to_owned()))
    .collect()
}

/// blkback once `physical-device` is there (`backend_changed`), and its
/// `connect` when the frontend is ready.
fn connect(store: &Store, host: &HostView, backend: &str) -> Vec<(String, String)> {
    let at = |leaf: &str| format!("{backend}/{leaf}");
    if read(store, &at("physical-device"))
        .and_then(|d| hotplug::parse_hex(&d))
        .is_none()
    {
        return fatal(backend, EINVAL, "reading physical-device");
    }
    let Some(mode) = read(store, &at("mode")) else {
        return fatal(backend, ENOENT, "reading mode");
    };
    let Some((_, sectors)) = hotplug::opened(store, host, backend) else {
        return fatal(backend, ENOENT, "creating vbd structure");
    };
    let Some(frontend) = read(store, &at("frontend")) else {
        return Vec::new();
    };
    let frontend_state = read(store, &format!("{frontend}/state")).unwrap_or_default();
    if !matches!(frontend_state.as_str(), INITIALISED | CONNECTED) {
        return Vec::new();
    }
    for leaf in ["ring-ref", "event-channel"] {
        if read(store, &format!("{frontend}/{leaf}")).is_none_or(|v| v.parse::<u32>().is_err()) {
            return fatal(backend, EINVAL, &format!("reading {frontend}/{leaf}"));
        }
    }
    let readonly = !mode.contains('w');
    let cdrom = read(store, &at("device-type")).as_deref() == Some("cdrom");
    let info = u32::from(cdrom) | if readonly { 4 } else { 0 };
    let mut nodes: BTreeMap<&str, String> = BTreeMap::new();
    nodes.insert("feature-flush-cache", "1".into());
    if read(store, &at("discard-enable")).as_deref() != Some("0") {
        nodes.insert("feature-discard", "1".into());
        nodes.insert("discard-granularity", "4096".into());
        nodes.insert("discard-alignment", "0".into());
        nodes.insert("discard-secure", "0".into());
    }
    nodes.insert("feature-barrier", "1".into());
    nodes.insert("feature-persistent", "1".into());
    nodes.insert("sectors", sectors.to_string());
    nodes.insert("info", info.to_string());
    nodes.insert("sector-size", "512".into());
    nodes.insert("physical-sector-size", "512".into());
    let mut writes: Vec<(String, String)> = nodes
        .into_iter()
        .map(|(leaf, value)| (at(leaf), value))
        .collect();
    writes.push((at("state"), CONNECTED.to_owned()));
    writes
}

/// The guest's blkfront, with the guest's rights.
fn blkfront(store: &Store, drivers: &Drivers, backend: &str, memory: &mut Memory) -> Vec<Action> {
    let Some(frontend) = read(store, &format!("{backend}/frontend")) else {
        return Vec::new();
    };
    let parts: Vec<&str> = frontend.split('/').collect();
    let ["", "local", "domain", domid, "device", "vbd", _] = parts.as_slice() else {
        return Vec::new();
    };
    let Ok(domid) = domid.parse::<u32>() else {
        return Vec::new();
    };
    if drivers.without_blkfront.contains(&domid) || !store.exists(&frontend) {
        return Vec::new();
    }
    let may_read = |path: &str| perms::check(store, path, domid, Access::Read).is_ok();
    let guest_read = |path: String| may_read(&path).then(|| read(store, &path)).flatten();
    // Its own frontend must name this backend, and the backend's state be
    // readable to it.
    if guest_read(format!("{frontend}/backend")).as_deref() != Some(backend) {
        return Vec::new();
    }
    let ours = guest_read(format!("{frontend}/state")).unwrap_or_default();
    let theirs = guest_read(format!("{backend}/state")).unwrap_or_default();
    let writes: Vec<(&str, String)> = match (ours.as_str(), theirs.as_str()) {
        (INITIALISING, INIT_WAIT) => {
            let port = memory.next_port;
            memory.next_port += 1;
            vec![
                ("ring-ref", port.to_string()),
                ("event-channel", port.to_string()),
                ("protocol", "x86_64-abi".into()),
                ("feature-persistent", "1".into()),
                ("state", INITIALISED.into()),
            ]
        }
        (INITIALISED, CONNECTED) => {
            let needed = ["sectors", "info", "sector-size"];
            if needed
                .iter()
                .any(|leaf| guest_read(format!("{backend}/{leaf}")).is_none())
            {
                return Vec::new();
            }
            vec![("state", CONNECTED.into())]
        }
        _ => return Vec::new(),
    };
    // All or nothing: a frontend the guest cannot write stays as it is.
    if writes
        .iter()
        .any(|(leaf, _)| perms::check_write(store, &format!("{frontend}/{leaf}"), domid).is_err())
    {
        return Vec::new();
    }
    writes
        .into_iter()
        .map(|(leaf, value)| Action {
            domid,
            path: format!("{frontend}/{leaf}"),
            value,
        })
        .collect()
}
