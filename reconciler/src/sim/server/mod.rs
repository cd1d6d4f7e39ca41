//! The simulator's server side: one thread per client connection reading
//! requests, one writing replies and watch events, and a shared state under
//! one lock (the store, open transactions, watches).
//!
//! Transactions copy the store when they start (cheap: it is persistent) and
//! fail their commit with `EAGAIN` only when a node they read, listed or
//! wrote was changed by a commit meanwhile, as xenstored decides
//! (xenstored_transaction.c: each node a transaction accesses is checked
//! for a newer generation). A node that gains or loses a child counts as
//! changed, so two transactions creating siblings conflict. The stricter
//! rule of docs/misc/xenstore.txt (any commit meanwhile) is kept as a
//! fault to inject. Watch events fire on commit.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

mod driven;
mod transactions;

use super::change::{Change, Op, Touched};
use super::drivers::{self, Drivers};
use super::perms::{self, Access};
use super::store::{Errno, Store, elements};
use super::{Faults, GuestPolicy};
use crate::xs_wire::{Message, MessageType, PAYLOAD_MAX, nul_terminated};
use transactions::{Transaction, record, trim_log};

/// XenbusState values the simulated guests and backends use.
const CLOSING: &[u8] = b"5";
const CLOSED: &[u8] = b"6";

pub(super) struct Shared {
    state: Mutex<State>,
    guests: GuestPolicy,
    faults: Faults,
    /// The drivers it plays around vbds, if any.
    drivers: Option<Drivers>,
    next_connection: AtomicU64,
    pub(super) stopping: AtomicBool,
}

/// The generation of a store no change has touched yet.
pub(super) const FIRST_GENERATION: u64 = 1;

struct State {
    store: Store,
    /// Bumped by every change.
    generation: u64,
    /// What each change since the oldest open transaction began touched,
    /// by the generation it made.
    log: std::collections::VecDeque<(u64, Vec<Touched>)>,
    next_transaction: u32,
    transactions: HashMap<u32, Transaction>,
    watches: Vec<Watch>,
    commits: u64,
    outboxes: HashMap<u64, Sender<Message>>,
    drivers: drivers::Memory,
}

struct Watch {
    connection: u64,
    path: String,
    token: Vec<u8>,
}

/// Who sent a request: its connection, and the domain it acts as.
#[derive(Debug, Clone, Copy)]
struct Client {
    connection: u64,
    domid: u32,
}

/// A reply payload, and the `(path, token)` of a watch the request added.
type Answer = (Vec<u8>, Option<(String, Vec<u8>)>);

impl Shared {
    pub(super) fn new(
        store: Store,
        guests: GuestPolicy,
        faults: Faults,
        drivers: Option<Drivers>,
    ) -> Shared {
        Shared {
            state: Mutex::new(State {
                drivers: drivers::Memory::of(&store),
                store,
                generation: FIRST_GENERATION,
                log: std::collections::VecDeque::new(),
                next_transaction: 1,
                transactions: HashMap::new(),
                watches: Vec::new(),
                commits: 0,
                outboxes: HashMap::new(),
            }),
            guests,
            faults,
            drivers,
            next_connection: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in another connection's thread must not stop the others.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn store(&self) -> Store {
        self.lock().store.clone()
    }

    pub(super) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Serves one client, acting as domain `domid`, until it disconnects
    /// (or a fault drops it).
    pub(super) fn serve(self: &Arc<Shared>, stream: UnixStream, domid: u32) {
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (outbox, replies) = mpsc::channel::<Message>();
        let Ok(write_half) = stream.try_clone() else {
            return;
        };
        let writer = std::thread::spawn(move || {
            let mut out = BufWriter::new(write_half);
            while let Ok(message) = replies.recv() {
                if message.write_to(&mut out).is_err() {
                    break;
                }
                // Flush once the queue is drained, so bursts go out together.
                if replies
                    .try_iter()
                    .try_for_each(|m| m.write_to(&mut out))
                    .is_err()
                    || out.flush().is_err()
                {
                    break;
                }
            }
        });
        self.lock().outboxes.insert(connection, outbox.clone());
        let mut reader = BufReader::new(&stream);
        let mut requests: u64 = 0;
        while let Ok(Some(request)) = Message::read_from(&mut reader) {
            requests += 1;
            if self
                .faults
                .drop_after_requests
                .is_some_and(|n| requests > n)
            {
                break;
            }
            if !self.faults.reply_delay.is_zero() {
                std::thread::sleep(self.faults.reply_delay);
            }
            let watch_added = self.handle(connection, domid, &request, &outbox);
            if let Some((path, token)) = watch_added {
                // A new watch fires once at once, after its reply.
                let _ = outbox.send(watch_event(&path, &token));
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
        self.disconnect(connection);
        drop(outbox);
        let _ = writer.join();
    }

    fn disconnect(&self, connection: u64) {
        let mut state = self.lock();
        state.outboxes.remove(&connection);
        state.watches.retain(|w| w.connection != connection);
        state.transactions.retain(|_, t| t.connection != connection);
        trim_log(&mut state);
    }

    /// Answers one request; returns a watch that was just added.
    fn handle(
        self: &Arc<Shared>,
        connection: u64,
        domid: u32,
        request: &Message,
        outbox: &Sender<Message>,
    ) -> Option<(String, Vec<u8>)> {
        let result = self.dispatch(Client { connection, domid }, request);
        let (reply, watch) = match result {
            Ok((payload, watch)) => (
                Message {
                    payload,
                    ..request.clone()
                },
                watch,
            ),
            Err(errno) => {
                let payload = nul_terminated([errno.name().as_bytes()]);
                (
                    Message::new(
                        MessageType::Error,
                        request.request_id,
                        request.transaction_id,
                        payload,
                    ),
                    None,
                )
            }
        };
        let reply = if reply.payload.len() > PAYLOAD_MAX {
            // xenstored refuses to send what a client could not read.
            let payload = nul_terminated([Errno::E2big.name().as_bytes()]);
            Message::new(
                MessageType::Error,
                request.request_id,
                request.transaction_id,
                payload,
            )
        } else {
            reply
        };
        let _ = outbox.send(reply);
        watch
    }

    fn dispatch(self: &Arc<Shared>, client: Client, request: &Message) -> Result<Answer, Errno> {
        let Client { connection, domid } = client;
        let Some(kind) = request.message_type() else {
            return Err(Errno::Einval);
        };
        let args = request.strings();
        let text = |i: usize| -> Result<&str, Errno> {
            let arg = args.get(i).ok_or(Errno::Einval)?;
            std::str::from_utf8(arg).map_err(|_| Errno::Einval)
        };
        let path = |i: usize| text(i).map(canonical);
        let ok = || Ok((b"OK\0".to_vec(), None));
        let tx = request.transaction_id;
        match kind {
            MessageType::Read => {
                let path = path(0)?;
                self.read_op(connection, tx, &path, |store| {
                    perms::check(store, &path, domid, Access::Read)?;
                    store.read(&path).map(<[u8]>::to_vec)
                })
                .map(|v| (v, None))
            }
            MessageType::Directory => {
                let path = path(0)?;
                self.read_op(connection, tx, &path, |store| {
                    perms::check(store, &path, domid, Access::Read)?;
                    store
                        .directory(&path)
                        .map(|names| nul_terminated(names.iter().map(|n| n.as_bytes())))
                })
                .map(|v| (v, None))
            }
            MessageType::DirectoryPart => {
                let (path, offset) = (
                    path(0)?,
                    text(1)?.parse::<usize>().map_err(|_| Errno::Einval)?,
                );
                let generation = self.lock().generation;
                self.read_op(connection, tx, &path, |store| {
                    perms::check(store, &path, domid, Access::Read)?;
                    let names = store.directory(&path)?;
                    Ok(directory_part(&names, offset, generation))
                })
                .map(|v| (v, None))
            }
            MessageType::GetPerms => {
                let path = path(0)?;
                self.read_op(connection, tx, &path, |store| {
                    perms::check(store, &path, domid, Access::Read)?;
                    store
                        .get_perms(&path)
                        .map(|perms| nul_terminated(perms.iter().map(|p| p.as_bytes())))
                })
                .map(|v| (v, None))
            }
            MessageType::Write => {
                let path = path(0)?;
                let split = request
                    .payload
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or(Errno::Einval)?;
                let value = request.payload[split + 1..].to_vec();
                self.write_op(client, tx, Op::Write(path, value))?;
                ok()
            }
            MessageType::Mkdir => {
                let path = path(0)?;
                self.write_op(client, tx, Op::Mkdir(path))?;
                ok()
            }
            MessageType::Rm => {
                let path = path(0)?;
                self.write_op(client, tx, Op::Rm(path))?;
                ok()
            }
            MessageType::SetPerms => {
                let path = path(0)?;
                let perms = args[1..]
                    .iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| String::from_utf8(p.to_vec()).map_err(|_| Errno::Einval))
                    .collect::<Result<Vec<_>, _>>()?;
                self.write_op(client, tx, Op::SetPerms(path, perms))?;
                ok()
            }
            MessageType::Watch => {
                let (path, token) = (path(0)?, args.get(1).ok_or(Errno::Einval)?.to_vec());
                if !path.starts_with('@') {
                    elements(&path)?;
                }
                let mut state = self.lock();
                if state
                    .watches
                    .iter()
                    .any(|w| w.connection == connection && w.path == path && w.token == token)
                {
                    return Err(Errno::Eexist);
                }
                state.watches.push(Watch {
                    connection,
                    path: path.clone(),
                    token: token.clone(),
                });
                Ok((b"OK\0".to_vec(), Some((path, token))))
            }
            MessageType::Unwatch => {
                let (path, token) = (path(0)?, args.get(1).ok_or(Errno::Einval)?.to_vec());
                let mut state = self.lock();
                let before = state.watches.len();
                state.watches.retain(|w| {
                    !(w.connection == connection && w.path == path && w.token == token)
                });
                if state.watches.len() == before {
                    return Err(Errno::Enoent);
                }
                ok()
            }
            MessageType::TransactionStart => {
                if tx != 0 {
                    return Err(Errno::Einval);
                }
                let mut state = self.lock();
                let id = state.next_transaction;
                state.next_transaction = state.next_transaction.wrapping_add(1).max(1);
                let transaction = Transaction {
                    connection,
                    store: state.store.clone(),
                    start_generation: state.generation,
                    ops: Vec::new(),
                    accessed: Vec::new(),
                };
                state.transactions.insert(id, transaction);
                Ok((nul_terminated([id.to_string().as_bytes()]), None))
            }
            MessageType::TransactionEnd => {
                let commit = match args.first().copied() {
                    Some(b"T") => true,
                    Some(b"F") => false,
                    _ => return Err(Errno::Einval),
                };
                self.end_transaction(connection, tx, commit)?;
                ok()
            }
            MessageType::GetDomainPath => {
                let domid: u32 = text(0)?.parse().map_err(|_| Errno::Einval)?;
                Ok((
                    nul_terminated([format!("/local/domain/{domid}").as_bytes()]),
                    None,
                ))
            }
            MessageType::IsDomainIntroduced => {
                let domid: u32 = text(0)?.parse().map_err(|_| Errno::Einval)?;
                let known =
                    domid == 0 || self.lock().store.exists(&format!("/local/domain/{domid}"));
                Ok((
                    nul_terminated([if known { &b"T"[..] } else { &b"F"[..] }]),
                    None,
                ))
            }
            MessageType::ResetWatches => {
                let mut state = self.lock();
                state.watches.retain(|w| w.connection != connection);
                state.transactions.retain(|_, t| t.connection != connection);
                ok()
            }
            // Domain management needs a hypervisor; accepted and ignored here.
            MessageType::Introduce
            | MessageType::Release
            | MessageType::Resume
            | MessageType::SetTarget => ok(),
            MessageType::Control => Err(Errno::Enosys),
            MessageType::WatchEvent | MessageType::Error => Err(Errno::Einval),
        }
    }

    /// After a commit: watch events, the simulated guests' reactions, and
    /// the drivers', each of their writes a commit of its own (a guest's
    /// made with its rights), until they have nothing more to do.
    fn committed(self: &Arc<Shared>, state: &mut State, changes: &[Change]) {
        self.notify(state, changes);
        self.drive(state, changes.iter().map(|c| c.path.clone()).collect());
    }

    /// Watch events, and the simulated guests' answer to Closing.
    fn notify(self: &Arc<Shared>, state: &mut State, changes: &[Change]) {
        for change in changes {
            if self.drivers.is_some() {
                state.drivers.changed(&state.store, &change.path);
            }
            for watch in &state.watches {
                let event_path = if is_under(&change.path, &watch.path) {
                    Some(change.path.as_str())
                } else if change.removed && is_under(&watch.path, &change.path) {
                    Some(watch.path.as_str())
                } else {
                    None
                };
                if let (Some(path), Some(outbox)) =
                    (event_path, state.outboxes.get(&watch.connection))
                {
                    let _ = outbox.send(watch_event(path, &watch.token));
                }
            }
            if !change.removed && state.store.read(&change.path) == Ok(CLOSING) {
                self.guest_sees_closing(&state.store, &change.path);
            }
        }
    }

    /// A backend went to Closing: the guest closes its frontend after its
    /// delay (unless it keeps the disk), then dom0's block backend closes.
    fn guest_sees_closing(self: &Arc<Shared>, store: &Store, state_path: &str) {
        let parts: Vec<&str> = state_path.split('/').collect();
        // /local/domain/<backend>/backend/<kind>/<domid>/<devid>/state
        let [
            "",
            "local",
            "domain",
            _,
            "backend",
            _,
            domid,
            devid,
            "state",
        ] = parts.as_slice()
        else {
            return;
        };
        let Ok(domid) = domid.parse::<u32>() else {
            return;
        };
        if self.guests.never_close.contains(&domid) {
            return;
        }
        let backend = state_path.trim_end_matches("/state").to_owned();
        let frontend = store
            .read(&format!("{backend}/frontend"))
            .ok()
            .and_then(|f| String::from_utf8(f.to_vec()).ok())
            .unwrap_or_else(|| format!("/local/domain/{domid}/device/vbd/{devid}"));
        // The guest acts with its own rights: it must be able to read the
        // backend's state to see the request, and write its own state to
        // answer; a frontend it does not own stays as it is, as blkfront's
        // would on a real host.
        // Without a frontend there is no guest to ask: blkback closes.
        let guest_may = !store.exists(&frontend)
            || (perms::check(store, state_path, domid, Access::Read).is_ok()
                && perms::check_write(store, &format!("{frontend}/state"), domid).is_ok());
        if !guest_may {
            return;
        }
        let shared = Arc::clone(self);
        let delay = self.guests.close_delay;
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            if shared.stopping.load(Ordering::Relaxed) {
                return;
            }
            // The guest closes its frontend, then blkback (dom0) follows;
            // unless the backend is no longer Closing: taken away (and
            // perhaps made again by a new attach) meanwhile, there is
            // nothing left to answer.
            let closing = format!("{backend}/state");
            for dir in [frontend, backend] {
                let mut state = shared.lock();
                if state.store.read(&closing) != Ok(CLOSING) {
                    return;
                }
                let path = format!("{dir}/state");
                if state.store.exists(&dir) && state.store.write(&path, CLOSED).is_ok() {
                    record(&mut state, vec![Touched::node(&path)]);
                    shared.committed(&mut state, &[Change::at(&path, false)]);
                }
            }
        });
    }
}

/// Relative paths are taken from dom0's home, as xenstored does for socket clients.
fn canonical(path: &str) -> String {
    if path.starts_with('/') || path.starts_with('@') {
        path.to_owned()
    } else {
        format!("/local/domain/0/{path}")
    }
}

/// Whether `path` is `base` or below it.
pub(super) fn is_under(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn watch_event(path: &str, token: &[u8]) -> Message {
    Message::new(
        MessageType::WatchEvent,
        0,
        0,
        nul_terminated([path.as_bytes(), token]),
    )
}

/// The reply to DIRECTORY_PART, as xenstored builds it: the generation, then
/// as many whole names from byte `offset` of the name list as fit, then one
/// more NUL if that reaches the end of the list. A client asks again from
/// the offset it has read up to, until it sees that double NUL.
fn directory_part(names: &[&str], offset: usize, generation: u64) -> Vec<u8> {
    let generation = generation.to_string();
    let list = nul_terminated(names.iter().map(|n| n.as_bytes()));
    let mut payload = nul_terminated([generation.as_bytes()]);
    if offset >= list.len() {
        payload.push(0);
        return payload;
    }
    let room = PAYLOAD_MAX - payload.len() - 1;
    let mut end = offset;
    for name in list[offset..].split_inclusive(|b| *b == 0) {
        if end - offset + name.len() > room {
            break;
        }
        end += name.len();
    }
    payload.extend_from_slice(&list[offset..end]);
    if end == list.len() {
        payload.push(0);
    }
    payload
}

/// Waits for clients on the listener until told to stop.
pub(super) fn accept_loop(
    shared: Arc<Shared>,
    listener: std::os::unix::net::UnixListener,
) -> io::Result<()> {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::Relaxed) {
            break;
        }
        let stream = stream?;
        let shared = Arc::clone(&shared);
        // The socket is dom0's, as xenstored's is.
        std::thread::spawn(move || shared.serve(stream, 0));
    }
    Ok(())
}
