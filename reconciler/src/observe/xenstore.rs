//! Reading domains and attachments from xenstore through the xenstore-rs
//! client (`XENSTORED_PATH`, else `/run/xenstored/socket`, else
//! `/dev/xen/xenbus`).
//!
//! Per attachment it reads six nodes of the backend directory, `params`,
//! `mode`, `type`, `physical-device`, `online` and `state` (what the safety
//! check needs, including whether the backend is being torn down), sent
//! together in one round trip. The frontend matters only to apply, which
//! reads it when it detaches. Round trips are counted and logged at debug
//! level.

use std::cell::{Cell, RefCell};
use std::io;

use xenstore_rs::Xs;
use xenstore_rs::unix::XsUnix;

use super::{Attachment, Domain};
use crate::extent::DevNum;
use crate::vdev::Vdev;
use crate::xs_client::{XENBUS_DEVICE, XsClient, XsError, socket_path};

/// What is read of each attachment's backend directory, in one round trip.
const ATTACHMENT_LEAVES: [&str; 8] = [
    "params",
    "mode",
    "type",
    "physical-device",
    "online",
    "state",
    "frontend-id",
    "hotplug-status",
];

/// Backend kinds that serve block devices.
const BLOCK_BACKENDS: [&str; 3] = ["vbd", "qdisk", "vbd3"];

/// Whether [`read_xenstore`] reads this node's value: a domain's `name`,
/// or one of `ATTACHMENT_LEAVES` of a block backend. (A simulated host
/// seeded from a cut dump warns about the cut values read here.)
pub fn reads_value(path: &str) -> bool {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["", "local", "domain", domid, "name"] => numeric(domid),
        ["", "local", "domain", "0", "backend", kind, _, _, leaf] => {
            BLOCK_BACKENDS.contains(kind) && ATTACHMENT_LEAVES.contains(leaf)
        }
        _ => false,
    }
}

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

struct Reader {
    xs: XsUnix,
    /// Our own client, for what xenstore-rs does not do: paged listings and
    /// several reads sent at once.
    client: RefCell<XsClient>,
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

    /// The client does not page long listings: our own client does, as
    /// libxenstore would.
    fn directory_parts(&self, path: &str) -> Result<Vec<String>, XenstoreError> {
        let request_error = |source: XsError| XenstoreError::Request {
            operation: "DIRECTORY_PART",
            path: path.to_owned(),
            source: io::Error::other(source.to_string()),
        };
        self.round_trips.set(self.round_trips.get() + 1);
        let names = self
            .client
            .borrow_mut()
            .directory(0, path)
            .map_err(request_error)?;
        Ok(names.unwrap_or_default())
    }

    /// The nodes of one directory, asked for at once: one round trip.
    fn leaves(&self, dir: &str, names: &[&str]) -> Result<Vec<Option<String>>, XenstoreError> {
        self.round_trips.set(self.round_trips.get() + 1);
        let paths: Vec<String> = names.iter().map(|name| format!("{dir}/{name}")).collect();
        self.client
            .borrow_mut()
            .read_many(0, &paths)
            .map_err(|source| XenstoreError::Request {
                operation: "READ",
                path: dir.to_owned(),
                source: io::Error::other(source.to_string()),
            })
    }
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
    let client = XsClient::connect().map_err(|source| XenstoreError::Connect {
        socket: socket_path(),
        source,
    })?;
    let reader = Reader {
        xs,
        client: RefCell::new(client),
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
            for devid in reader
                .directory(&format!("{base}/{domid}"))?
                .unwrap_or_default()
            {
                let dir = format!("{base}/{domid}/{devid}");
                let [
                    params,
                    mode,
                    kind,
                    physical,
                    online,
                    state,
                    frontend_id,
                    hotplug,
                ] = reader
                    .leaves(&dir, &ATTACHMENT_LEAVES)?
                    .try_into()
                    .unwrap_or_default();
                if params.is_none() && physical.is_none() && state.is_none() {
                    continue; // names nothing to open: no disk behind it
                }
                // blkback serves a backend whatever its directory is called
                // (it takes the guest from `frontend-id`): one named
                // otherwise than by numbers is a holder all the same.
                let numbers = (domid.parse::<u32>(), devid.parse::<u32>());
                let odd_path = match numbers {
                    (Ok(_), Ok(_)) => None,
                    _ => Some(dir.clone()),
                };
                let domid_number = numbers
                    .0
                    .ok()
                    .or_else(|| frontend_id.as_deref().and_then(|id| id.trim().parse().ok()));
                let devid_number = numbers.1.unwrap_or(0);
                attachments.push(Attachment {
                    domid: domid_number.unwrap_or(u32::MAX),
                    devid: devid_number,
                    odd_path,
                    vdev: Vdev::from_device_id(devid_number)
                        .ok()
                        .map(|v| v.canonical_name()),
                    backend: backend.to_owned(),
                    params: params.unwrap_or_default(),
                    mode: mode.unwrap_or_default(),
                    kind: kind.unwrap_or_default(),
                    physical_device: physical.as_deref().and_then(|text| {
                        let parsed = parse_physical_device(text);
                        if parsed.is_none() {
                            tracing::warn!("{dir}/physical-device is {text:?}, not major:minor in hexadecimal; ignored");
                        }
                        parsed
                    }),
                    // libxl writes `online = 1`; a missing node is not a request to go.
                    online: online.is_none_or(|text| text.trim() != "0"),
                    state: state.and_then(|text| text.trim().parse().ok()),
                    // The block script's verdicts on failure (block-common.sh).
                    hotplug_refused: hotplug.filter(|status| {
                        matches!(status.trim(), "busy" | "error")
                    }),
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
