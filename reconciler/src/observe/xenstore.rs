//! Reading domains and attachments from xenstore through the xenstore-rs
//! client (`XENSTORED_PATH`, else `/run/xenstored/socket`, else
//! `/dev/xen/xenbus`).
//!
//! Per attachment it reads four nodes of the backend directory, `params`,
//! `mode`, `type` and `physical-device`: what the safety check needs. The
//! frontend and the connection state matter only to apply, which reads them
//! when it detaches. Round trips are counted and logged at debug level.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;

use xenstore_rs::Xs;
use xenstore_rs::unix::XsUnix;

use super::{Attachment, Domain};
use crate::extent::DevNum;
use crate::vdev::Vdev;
use crate::xs_wire::{Message, MessageType};

const DEFAULT_SOCKET: &str = "/run/xenstored/socket";
const XENBUS_DEVICE: &str = "/dev/xen/xenbus";
/// Backend kinds that serve block devices.
const BLOCK_BACKENDS: [&str; 3] = ["vbd", "qdisk", "vbd3"];

#[derive(Debug, thiserror::Error)]
pub enum XenstoreError {
    #[error(
        "cannot reach xenstore: tried the socket {socket} and the device {XENBUS_DEVICE} ({source}); \
         set XENSTORED_PATH to a xenstored socket, or plan offline with --snapshot, or try \
         `xendisk sim`"
    )]
    Connect { socket: String, source: io::Error },
    #[error("xenstore: {operation} {path} failed: {source}")]
    Request {
        operation: &'static str,
        path: String,
        source: io::Error,
    },
}

/// Where the client will look for xenstored, for messages and DIRECTORY_PART.
fn socket_path() -> String {
    std::env::var("XENSTORED_PATH").unwrap_or_else(|_| DEFAULT_SOCKET.to_owned())
}

struct Reader {
    xs: XsUnix,
    round_trips: Cell<u64>,
}

impl Reader {
    fn directory(&self, path: &str) -> Result<Option<Vec<String>>, XenstoreError> {
        self.round_trips.set(self.round_trips.get() + 1);
        match self.xs.directory(path) {
            Ok(names) => Ok(Some(names.into_iter().map(String::from).collect())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            // The client does not page long listings; do it here.
            Err(e) if e.to_string().contains("E2BIG") => self.directory_parts(path).map(Some),
            Err(source) => Err(XenstoreError::Request {
                operation: "DIRECTORY",
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn read(&self, path: &str) -> Result<Option<String>, XenstoreError> {
        self.round_trips.set(self.round_trips.get() + 1);
        match self.xs.read(path) {
            Ok(value) => Ok(Some(value.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(XenstoreError::Request {
                operation: "READ",
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// DIRECTORY_PART, as libxenstore does it: from offset 0, asking again
    /// from what was received until the reply ends the list with a double
    /// NUL, and starting over if the node's generation changed meanwhile.
    fn directory_parts(&self, path: &str) -> Result<Vec<String>, XenstoreError> {
        let error = |source| XenstoreError::Request {
            operation: "DIRECTORY_PART",
            path: path.to_owned(),
            source,
        };
        let mut connection = connect_raw().map_err(error)?;
        'again: loop {
            let mut list: Vec<u8> = Vec::new();
            let mut generation: Option<Vec<u8>> = None;
            loop {
                self.round_trips.set(self.round_trips.get() + 1);
                let offset = list.len().to_string();
                let mut payload = Vec::new();
                for part in [path.as_bytes(), offset.as_bytes()] {
                    payload.extend_from_slice(part);
                    payload.push(0);
                }
                let reply = request(
                    &mut connection,
                    Message::new(MessageType::DirectoryPart, 1, 0, payload),
                )
                .map_err(error)?;
                let split = reply.iter().position(|b| *b == 0).unwrap_or(reply.len());
                let (this_generation, part) = (
                    reply[..split].to_vec(),
                    reply.get(split + 1..).unwrap_or_default(),
                );
                if generation.as_ref().is_some_and(|g| *g != this_generation) {
                    continue 'again;
                }
                generation = Some(this_generation);
                list.extend_from_slice(part);
                // The list ends where a reply added an empty name.
                if list.len() <= 1 || list[list.len() - 2] == 0 {
                    let names = list.split(|b| *b == 0).filter(|n| !n.is_empty());
                    return Ok(names
                        .map(|n| String::from_utf8_lossy(n).into_owned())
                        .collect());
                }
            }
        }
    }
}

/// A connection of our own, for the one request the client lacks.
enum Raw {
    Socket(UnixStream),
    Device(File),
}

fn connect_raw() -> io::Result<Raw> {
    match UnixStream::connect(socket_path()) {
        Ok(stream) => Ok(Raw::Socket(stream)),
        Err(_) => File::options()
            .read(true)
            .write(true)
            .open(XENBUS_DEVICE)
            .map(Raw::Device),
    }
}

fn request(connection: &mut Raw, message: Message) -> io::Result<Vec<u8>> {
    let reply = match connection {
        Raw::Socket(stream) => {
            message.write_to(stream)?;
            Message::read_from(stream)?
        }
        Raw::Device(file) => {
            message.write_to(file)?;
            file.flush()?;
            Message::read_from(file)?
        }
    };
    let reply = reply.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "xenstored closed the connection",
        )
    })?;
    if reply.message_type() == Some(MessageType::Error) {
        let name =
            String::from_utf8_lossy(reply.payload.strip_suffix(b"\0").unwrap_or(&reply.payload))
                .into_owned();
        return Err(io::Error::other(format!("xenstored answered {name}")));
    }
    Ok(reply.payload)
}

/// What xenstore says, and what reading it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenstoreView {
    pub domains: Vec<Domain>,
    pub attachments: Vec<Attachment>,
    /// Requests sent, each answered before the next.
    pub round_trips: u64,
}

/// Reads the running domains and every block attachment.
pub fn read_xenstore() -> Result<XenstoreView, XenstoreError> {
    let xs = XsUnix::new().map_err(|source| XenstoreError::Connect {
        socket: socket_path(),
        source,
    })?;
    let reader = Reader {
        xs,
        round_trips: Cell::new(0),
    };
    let mut domains = Vec::new();
    for id in reader.directory("/local/domain")?.unwrap_or_default() {
        let Ok(domid) = id.parse::<u32>() else {
            continue;
        };
        let name = reader
            .read(&format!("/local/domain/{domid}/name"))?
            .unwrap_or_default();
        domains.push(Domain { domid, name });
    }
    let mut attachments = Vec::new();
    for backend in BLOCK_BACKENDS {
        let base = format!("/local/domain/0/backend/{backend}");
        for domid in reader.directory(&base)?.unwrap_or_default() {
            let Ok(domid_number) = domid.parse::<u32>() else {
                continue;
            };
            for devid in reader
                .directory(&format!("{base}/{domid}"))?
                .unwrap_or_default()
            {
                let Ok(devid_number) = devid.parse::<u32>() else {
                    continue;
                };
                let dir = format!("{base}/{domid}/{devid}");
                let node = |leaf: &str| reader.read(&format!("{dir}/{leaf}"));
                attachments.push(Attachment {
                    domid: domid_number,
                    devid: devid_number,
                    vdev: Vdev::from_device_id(devid_number)
                        .ok()
                        .map(|v| v.canonical_name()),
                    backend: backend.to_owned(),
                    params: node("params")?.unwrap_or_default(),
                    mode: node("mode")?.unwrap_or_default(),
                    kind: node("type")?.unwrap_or_default(),
                    physical_device: node("physical-device")?
                        .as_deref()
                        .and_then(parse_physical_device),
                });
            }
        }
    }
    domains.sort();
    attachments.sort();
    let trips = reader.round_trips.get();
    tracing::debug!(
        round_trips = trips,
        domains = domains.len(),
        attachments = attachments.len(),
        "read xenstore in {trips} round trips"
    );
    Ok(XenstoreView {
        domains,
        attachments,
        round_trips: trips,
    })
}

/// `physical-device` is `major:minor` in hexadecimal, as the hotplug script writes it.
fn parse_physical_device(text: &str) -> Option<DevNum> {
    let (major, minor) = text.trim().split_once(':')?;
    Some(DevNum::new(
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    ))
}
