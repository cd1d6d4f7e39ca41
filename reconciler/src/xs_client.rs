//! A small xenstore client for what the xenstore-rs 0.8 client does not do:
//! transactions (apply writes an attachment's nodes in one) and paged
//! listings (DIRECTORY_PART, for directories past the 4096-byte payload).
//! It speaks the same wire format through [`crate::xs_wire`], on its own
//! connection to the same place (`XENSTORED_PATH`, else
//! `/run/xenstored/socket`, else `/dev/xen/xenbus`).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::xs_wire::{Message, MessageType, nul_terminated};

mod listing;
mod watch;

pub use watch::WatchEvent;

pub const DEFAULT_SOCKET: &str = "/run/xenstored/socket";
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";

/// How often a transaction is tried again after EAGAIN before giving up.
const TRANSACTION_ATTEMPTS: usize = 50;

/// Where clients look for xenstored.
pub fn socket_path() -> String {
    std::env::var("XENSTORED_PATH").unwrap_or_else(|_| DEFAULT_SOCKET.to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum XsError {
    /// xenstored answered with an error (`ENOENT`, `EAGAIN`, ...).
    #[error("xenstored answered {errno} to {operation} {path}")]
    Errno {
        errno: String,
        operation: &'static str,
        path: String,
    },
    #[error("xenstore connection failed during {operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: String,
        source: io::Error,
    },
    #[error(
        "a xenstore transaction failed with EAGAIN {attempts} times in a row ({what}): another \
         client kept changing nodes it used{wrote}; see what else writes there (`xenstore-watch`), \
         then try again"
    )]
    Busy {
        attempts: usize,
        what: String,
        /// What the last attempt wrote, said after the sentence.
        wrote: String,
    },
}

impl XsError {
    pub fn is_errno(&self, name: &str) -> bool {
        matches!(self, XsError::Errno { errno, .. } if errno == name)
    }
}

enum Connection {
    Socket(UnixStream),
    Device(File),
}

pub struct XsClient {
    connection: Connection,
    next_request: u32,
    /// The nodes the current transaction attempt wrote, for the error
    /// when it never commits.
    written: Vec<String>,
    /// Watch events that arrived while answers were awaited, oldest first
    /// ([`XsClient::take_events`]).
    events: Vec<WatchEvent>,
}

/// A transaction id; 0 is "no transaction".
pub type Tx = u32;

/// One change among several sent at once ([`XsClient::change_many`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Write(String, String),
    Mkdir(String),
    Rm(String),
    SetPerms(String, Vec<String>),
}

impl Change {
    fn path(&self) -> &str {
        match self {
            Change::Write(path, _)
            | Change::Mkdir(path)
            | Change::Rm(path)
            | Change::SetPerms(path, _) => path,
        }
    }

    fn operation(&self) -> &'static str {
        let (kind, _) = self.request();
        operation_name(kind)
    }

    fn request(&self) -> (MessageType, Vec<u8>) {
        match self {
            Change::Write(path, value) => {
                let mut payload = nul_terminated([path.as_bytes()]);
                payload.extend_from_slice(value.as_bytes());
                (MessageType::Write, payload)
            }
            Change::Mkdir(path) => (MessageType::Mkdir, nul_terminated([path.as_bytes()])),
            Change::Rm(path) => (MessageType::Rm, nul_terminated([path.as_bytes()])),
            Change::SetPerms(path, perms) => {
                let parts =
                    std::iter::once(path.as_bytes()).chain(perms.iter().map(|p| p.as_bytes()));
                (MessageType::SetPerms, nul_terminated(parts))
            }
        }
    }
}

impl XsClient {
    pub fn connect() -> io::Result<XsClient> {
        let socket = socket_path();
        let connection = match UnixStream::connect(&socket) {
            Ok(stream) => Connection::Socket(stream),
            Err(socket_error) => match File::options().read(true).write(true).open(XENBUS_DEVICE) {
                Ok(device) => Connection::Device(device),
                Err(_) => {
                    return Err(io::Error::new(
                        socket_error.kind(),
                        format!(
                            "tried the socket {socket} ({socket_error}) and the device {XENBUS_DEVICE}"
                        ),
                    ));
                }
            },
        };
        Ok(XsClient {
            connection,
            next_request: 1,
            written: Vec::new(),
            events: Vec::new(),
        })
    }

    /// Connects to the xenstored socket at `socket` and nowhere else: for
    /// callers that know where their xenstored is (tests with a simulator
    /// of their own), without going through the environment.
    pub fn connect_to(socket: &Path) -> io::Result<XsClient> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot connect to the socket {}: {e}", socket.display()),
            )
        })?;
        Ok(XsClient {
            connection: Connection::Socket(stream),
            next_request: 1,
            written: Vec::new(),
            events: Vec::new(),
        })
    }

    fn request(
        &mut self,
        kind: MessageType,
        tx: Tx,
        payload: Vec<u8>,
        path: &str,
    ) -> Result<Vec<u8>, XsError> {
        let operation = operation_name(kind);
        let io_error = |source| XsError::Io {
            operation,
            path: path.to_owned(),
            source,
        };
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        let message = Message::new(kind, id, tx, payload);
        let reply = match &mut self.connection {
            Connection::Socket(stream) => {
                message.write_to(stream).map_err(io_error)?;
                next_answer(stream, &mut self.events).map_err(io_error)?
            }
            Connection::Device(file) => {
                message.write_to(file).map_err(io_error)?;
                file.flush().map_err(io_error)?;
                next_answer(file, &mut self.events).map_err(io_error)?
            }
        };
        if reply.message_type() == Some(MessageType::Error) {
            let errno = String::from_utf8_lossy(
                reply.payload.strip_suffix(b"\0").unwrap_or(&reply.payload),
            )
            .into_owned();
            return Err(XsError::Errno {
                errno,
                operation,
                path: path.to_owned(),
            });
        }
        Ok(reply.payload)
    }

    /// A node's value, `None` if it does not exist.
    pub fn read(&mut self, tx: Tx, path: &str) -> Result<Option<String>, XsError> {
        match self.request(
            MessageType::Read,
            tx,
            nul_terminated([path.as_bytes()]),
            path,
        ) {
            Ok(value) => Ok(Some(String::from_utf8_lossy(&value).into_owned())),
            Err(e) if e.is_errno("ENOENT") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A node's value as bytes (values need not be text), `None` if it
    /// does not exist.
    pub fn read_bytes(&mut self, tx: Tx, path: &str) -> Result<Option<Vec<u8>>, XsError> {
        match self.request(
            MessageType::Read,
            tx,
            nul_terminated([path.as_bytes()]),
            path,
        ) {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_errno("ENOENT") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A node's permissions (`n0`, `r1`, ... the first naming the owner),
    /// `None` if it does not exist.
    pub fn get_perms(&mut self, tx: Tx, path: &str) -> Result<Option<Vec<String>>, XsError> {
        match self.request(
            MessageType::GetPerms,
            tx,
            nul_terminated([path.as_bytes()]),
            path,
        ) {
            Ok(list) => Ok(Some(split_names(&list))),
            Err(e) if e.is_errno("ENOENT") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Several nodes' values in one round trip: every request is sent
    /// before the first answer is read (xenstored answers a connection's
    /// requests in order, each answer carrying its request's id).
    pub fn read_many(&mut self, tx: Tx, paths: &[String]) -> Result<Vec<Option<String>>, XsError> {
        let requests: Vec<(MessageType, Vec<u8>)> = paths
            .iter()
            .map(|path| (MessageType::Read, nul_terminated([path.as_bytes()])))
            .collect();
        let answers = self.pipeline(tx, requests, paths)?;
        answers
            .into_iter()
            .zip(paths)
            .map(|(answer, path)| match answer {
                Ok(value) => Ok(Some(String::from_utf8_lossy(&value).into_owned())),
                Err(errno) if errno == "ENOENT" => Ok(None),
                Err(errno) => Err(XsError::Errno {
                    errno,
                    operation: "READ",
                    path: path.clone(),
                }),
            })
            .collect()
    }

    /// Several changes in one round trip, applied in order; the first
    /// error (a removal of what is already gone is none) after all are
    /// answered.
    pub fn change_many(&mut self, tx: Tx, changes: &[Change]) -> Result<(), XsError> {
        let paths: Vec<String> = changes.iter().map(|c| c.path().to_owned()).collect();
        for path in &paths {
            self.note_written(tx, path);
        }
        let requests = changes.iter().map(Change::request).collect();
        let answers = self.pipeline(tx, requests, &paths)?;
        for ((answer, change), path) in answers.into_iter().zip(changes).zip(&paths) {
            match answer {
                Err(errno) if errno == "ENOENT" && matches!(change, Change::Rm(_)) => {}
                Err(errno) => {
                    return Err(XsError::Errno {
                        errno,
                        operation: change.operation(),
                        path: path.clone(),
                    });
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Sends every request before reading the first answer.
    fn pipeline(
        &mut self,
        tx: Tx,
        requests: Vec<(MessageType, Vec<u8>)>,
        paths: &[String],
    ) -> Result<Vec<Result<Vec<u8>, String>>, XsError> {
        let first_path = paths.first().map(String::as_str).unwrap_or_default();
        let operation = requests
            .first()
            .map_or("READ", |(kind, _)| operation_name(*kind));
        if let Connection::Device(_) = self.connection {
            // The xenbus device takes one message a write: ask in turn.
            let mut answers = Vec::with_capacity(requests.len());
            for ((kind, payload), path) in requests.into_iter().zip(paths) {
                answers.push(match self.request(kind, tx, payload, path) {
                    Ok(value) => Ok(value),
                    Err(XsError::Errno { errno, .. }) => Err(errno),
                    // The connection failed: that is no answer.
                    Err(other) => return Err(other),
                });
            }
            return Ok(answers);
        }
        let first = self.next_request;
        let count = requests.len();
        let mut batch = Vec::new();
        for (kind, payload) in requests {
            let message = Message::new(kind, self.next_request, tx, payload);
            self.next_request = self.next_request.wrapping_add(1);
            message.write_to(&mut batch).map_err(|source| XsError::Io {
                operation,
                path: first_path.to_owned(),
                source,
            })?;
        }
        let Connection::Socket(stream) = &self.connection else {
            unreachable!("the device was handled above");
        };
        exchange(
            stream,
            &mut self.events,
            &batch,
            (first, count),
            operation,
            first_path,
        )
    }

    pub fn write(&mut self, tx: Tx, path: &str, value: &str) -> Result<(), XsError> {
        self.note_written(tx, path);
        let mut payload = nul_terminated([path.as_bytes()]);
        payload.extend_from_slice(value.as_bytes());
        self.request(MessageType::Write, tx, payload, path)
            .map(|_| ())
    }

    /// Makes a node with an empty value, and the directories above it;
    /// leaves an existing node as it is.
    pub fn mkdir(&mut self, tx: Tx, path: &str) -> Result<(), XsError> {
        self.note_written(tx, path);
        self.request(
            MessageType::Mkdir,
            tx,
            nul_terminated([path.as_bytes()]),
            path,
        )
        .map(|_| ())
    }

    /// Sets a node's permissions: the first names the owner (`n0`, `b3`, ...).
    pub fn set_perms(&mut self, tx: Tx, path: &str, perms: &[String]) -> Result<(), XsError> {
        self.note_written(tx, path);
        let parts = std::iter::once(path.as_bytes()).chain(perms.iter().map(|p| p.as_bytes()));
        self.request(MessageType::SetPerms, tx, nul_terminated(parts), path)
            .map(|_| ())
    }

    /// Removes a node and its children; fine if it is already gone.
    pub fn rm(&mut self, tx: Tx, path: &str) -> Result<(), XsError> {
        self.note_written(tx, path);
        match self.request(MessageType::Rm, tx, nul_terminated([path.as_bytes()]), path) {
            Err(e) if e.is_errno("ENOENT") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    fn note_written(&mut self, tx: Tx, path: &str) {
        if tx != 0 && !self.written.iter().any(|p| p == path) {
            self.written.push(path.to_owned());
        }
    }

    /// Runs `body` in a transaction and commits it, starting again on
    /// EAGAIN after a pause that grows and is jittered, so that clients
    /// that collided do not collide again in step.
    pub fn transaction<T>(
        &mut self,
        what: &str,
        mut body: impl FnMut(&mut XsClient, Tx) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        let mut backoff = Backoff::new();
        for attempt in 0..TRANSACTION_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(backoff.next());
            }
            self.written.clear();
            let reply = self.request(MessageType::TransactionStart, 0, vec![0], what)?;
            let tx: Tx = String::from_utf8_lossy(reply.strip_suffix(b"\0").unwrap_or(&reply))
                .parse()
                .unwrap_or(0);
            let value = match body(self, tx) {
                Ok(value) => value,
                Err(error) => {
                    let _ = self.request(
                        MessageType::TransactionEnd,
                        tx,
                        nul_terminated([&b"F"[..]]),
                        what,
                    );
                    return Err(error);
                }
            };
            match self.request(
                MessageType::TransactionEnd,
                tx,
                nul_terminated([&b"T"[..]]),
                what,
            ) {
                Ok(_) => return Ok(value),
                Err(e) if e.is_errno("EAGAIN") => continue,
                Err(e) => return Err(e),
            }
        }
        let wrote = match self.written.as_slice() {
            [] => String::new(),
            [one] => format!(" (it writes {one})"),
            [first, rest @ ..] => format!(" (it writes {first} and {} more)", rest.len()),
        };
        Err(XsError::Busy {
            attempts: TRANSACTION_ATTEMPTS,
            what: what.to_owned(),
            wrote,
        })
    }
}

/// Pauses between transaction attempts: up to 1 ms, doubling to 200 ms,
/// each a random part of that (full jitter).
struct Backoff {
    ceiling: std::time::Duration,
    seed: u64,
}

impl Backoff {
    fn new() -> Backoff {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = now ^ u64::from(std::process::id()).rotate_left(32) ^ thread_salt();
        Backoff {
            ceiling: std::time::Duration::from_millis(1),
            seed: seed | 1,
        }
    }

    fn next(&mut self) -> std::time::Duration {
        // xorshift64: uniform enough to spread retries apart.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(std::time::Duration::from_millis(200));
        ceiling.mul_f64((self.seed % 1000) as f64 / 1000.0)
    }
}

/// Differs between threads of one process started at the same instant.
fn thread_salt() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::thread::current().id())
}

/// Sends a batch of requests and collects every answer by id: the payload,
/// or the errno xenstored answered. All answers are read before returning,
/// so the connection is left with none pending.
fn exchange<S>(
    mut stream: S,
    events: &mut Vec<WatchEvent>,
    batch: &[u8],
    (first, count): (u32, usize),
    operation: &'static str,
    first_path: &str,
) -> Result<Vec<Result<Vec<u8>, String>>, XsError>
where
    S: io::Read + Write,
{
    let io_error = |source| XsError::Io {
        operation,
        path: first_path.to_owned(),
        source,
    };
    stream
        .write_all(batch)
        .and_then(|()| stream.flush())
        .map_err(io_error)?;
    let mut answers: Vec<Option<Result<Vec<u8>, String>>> = vec![None; count];
    let mut missing = count;
    while missing > 0 {
        let reply = next_answer(&mut stream, events).map_err(io_error)?;
        let index = reply.request_id.wrapping_sub(first) as usize;
        let Some(slot) = answers.get_mut(index).filter(|slot| slot.is_none()) else {
            return Err(io_error(io::Error::other(format!(
                "an answer to request {} that was not asked",
                reply.request_id
            ))));
        };
        *slot = Some(if reply.message_type() == Some(MessageType::Error) {
            Err(String::from_utf8_lossy(
                reply.payload.strip_suffix(b"\0").unwrap_or(&reply.payload),
            )
            .into_owned())
        } else {
            Ok(reply.payload)
        });
        missing -= 1;
    }
    Ok(answers
        .into_iter()
        .map(|a| a.expect("all answered"))
        .collect())
}

/// The next message on the connection that answers a request; watch
/// events read on the way are kept in `events`, in order.
fn next_answer<S: io::Read>(stream: &mut S, events: &mut Vec<WatchEvent>) -> io::Result<Message> {
    loop {
        let message = Message::read_from(&mut *stream)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "xenstored closed the connection",
            )
        })?;
        if message.message_type() != Some(MessageType::WatchEvent) {
            return Ok(message);
        }
        events.extend(WatchEvent::parse(&message.payload));
    }
}

fn split_names(list: &[u8]) -> Vec<String> {
    list.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

fn operation_name(kind: MessageType) -> &'static str {
    match kind {
        MessageType::Read => "READ",
        MessageType::Write => "WRITE",
        MessageType::Rm => "RM",
        MessageType::Directory => "DIRECTORY",
        MessageType::DirectoryPart => "DIRECTORY_PART",
        MessageType::TransactionStart => "TRANSACTION_START",
        MessageType::TransactionEnd => "TRANSACTION_END",
        MessageType::SetPerms => "SET_PERMS",
        MessageType::GetPerms => "GET_PERMS",
        _ => "request",
    }
}
