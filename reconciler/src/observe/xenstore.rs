//! Reading domains and attachments from xenstore (`XENSTORED_PATH`, else
//! `/run/xenstored/socket`, else `/dev/xen/xenbus`): the list of domains
//! through the xenstore-rs client, the rest through xendisk's own client,
//! which sends many requests before reading the first answer.
//!
//! Per attachment it reads eight nodes of the backend directory (`params`,
//! `mode`, `type`, `physical-device`, `online`, `state`, `frontend-id`,
//! `hotplug-status`: what the safety check needs, including whether the
//! backend is being torn down or was refused by its hotplug script). Names,
//! listings and leaves go out in batches of [`BATCH`] requests, so a host
//! of 40,000 attachments is read in a few hundred round trips. The
//! frontend matters only to apply, which reads it when it detaches. Round
//! trips are counted and logged at debug level.

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
pub(super) const BLOCK_BACKENDS: [&str; 3] = ["vbd", "qdisk", "vbd3"];

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

/// How many requests go out before the first answer is read: enough that
/// round trips stop mattering, few enough that the answers fit in the
/// socket's buffer while the rest are still being sent.
const BATCH: usize = 512;

/// A backend directory, `/local/domain/0/backend/KIND/DOMID/DEVID`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct BackendDir {
    pub kind: &'static str,
    pub domid: String,
    pub devid: String,
}

impl BackendDir {
    pub fn path(&self) -> String {
        format!(
            "/local/domain/0/backend/{}/{}/{}",
            self.kind, self.domid, self.devid
        )
    }
}

/// Reads through one connection, counting round trips; requests for many
/// nodes go out in batches ([`BATCH`]).
pub(super) struct Reader {
    client: XsClient,
    round_trips: u64,
}

impl Reader {
    pub fn connect() -> Result<Reader, XenstoreError> {
        let client = XsClient::connect().map_err(|source| XenstoreError::Connect {
            socket: socket_path(),
            source,
        })?;
        Ok(Reader::over(client))
    }

    pub fn over(client: XsClient) -> Reader {
        Reader {
            client,
            round_trips: 0,
        }
    }

    pub fn client(&mut self) -> &mut XsClient {
        &mut self.client
    }

    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    /// The children of each path, `None` for one that does not exist.
    pub fn directories(
        &mut self,
        paths: &[String],
    ) -> Result<Vec<Option<Vec<String>>>, XenstoreError> {
        let mut lists = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(BATCH) {
            self.round_trips += 1;
            lists.extend(
                self.client
                    .directory_many(0, chunk)
                    .map_err(|source| request_error("DIRECTORY", chunk, source))?,
            );
        }
        Ok(lists)
    }

    /// The value of each path, `None` for one that does not exist.
    pub fn values(&mut self, paths: &[String]) -> Result<Vec<Option<String>>, XenstoreError> {
        let mut values = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(BATCH) {
            self.round_trips += 1;
            values.extend(
                self.client
                    .read_many(0, chunk)
                    .map_err(|source| request_error("READ", chunk, source))?,
            );
        }
        Ok(values)
    }

    /// Every backend directory under each of `bases`
    /// (`/local/domain/0/backend/KIND`, or one guest's directory in it).
    pub fn backend_dirs(
        &mut self,
        bases: &[(&'static str, Option<String>)],
    ) -> Result<Vec<BackendDir>, XenstoreError> {
        let mut guests: Vec<(&'static str, String)> = Vec::new();
        let kind_paths: Vec<String> = bases
            .iter()
            .filter(|(_, domid)| domid.is_none())
            .map(|(kind, _)| format!("/local/domain/0/backend/{kind}"))
            .collect();
        let kinds = bases.iter().filter(|(_, domid)| domid.is_none());
        for ((kind, _), list) in kinds.zip(self.directories(&kind_paths)?) {
            guests.extend(
                list.unwrap_or_default()
                    .into_iter()
                    .map(|domid| (*kind, domid)),
            );
        }
        guests.extend(
            bases
                .iter()
                .filter_map(|(kind, domid)| domid.clone().map(|domid| (*kind, domid))),
        );
        let guest_paths: Vec<String> = guests
            .iter()
            .map(|(kind, domid)| format!("/local/domain/0/backend/{kind}/{domid}"))
            .collect();
        let mut dirs = Vec::new();
        for ((kind, domid), list) in guests.into_iter().zip(self.directories(&guest_paths)?) {
            dirs.extend(
                list.unwrap_or_default()
                    .into_iter()
                    .map(|devid| BackendDir {
                        kind,
                        domid: domid.clone(),
                        devid,
                    }),
            );
        }
        Ok(dirs)
    }

    /// The attachment in each backend directory, `None` where there is
    /// none (gone, or naming nothing to open).
    pub fn attachments(
        &mut self,
        dirs: &[BackendDir],
    ) -> Result<Vec<Option<Attachment>>, XenstoreError> {
        let mut attachments = Vec::with_capacity(dirs.len());
        // A batch's worth of directories at a time: the paths and answers
        // of a whole host need not be held at once.
        for chunk in dirs.chunks(BATCH / ATTACHMENT_LEAVES.len()) {
            let paths: Vec<String> = chunk
                .iter()
                .flat_map(|dir| {
                    let dir = dir.path();
                    ATTACHMENT_LEAVES
                        .iter()
                        .map(move |leaf| format!("{dir}/{leaf}"))
                })
                .collect();
            let values = self.values(&paths)?;
            attachments.extend(
                chunk
                    .iter()
                    .zip(values.chunks(ATTACHMENT_LEAVES.len()))
                    .map(|(dir, leaves)| attachment(dir, leaves)),
            );
        }
        Ok(attachments)
    }
}

fn request_error(operation: &'static str, paths: &[String], source: XsError) -> XenstoreError {
    XenstoreError::Request {
        operation,
        path: paths.first().cloned().unwrap_or_default(),
        source: io::Error::other(source.to_string()),
    }
}

/// The attachment a backend directory's [`ATTACHMENT_LEAVES`] describe.
fn attachment(dir: &BackendDir, leaves: &[Option<String>]) -> Option<Attachment> {
    let [
        params,
        mode,
        kind,
        physical,
        online,
        state,
        frontend_id,
        hotplug,
    ] = <[Option<String>; 8]>::try_from(leaves.to_vec()).ok()?;
    if params.is_none() && physical.is_none() && state.is_none() {
        return None; // names nothing to open: no disk behind it
    }
    // blkback serves a backend whatever its directory is called (it takes
    // the guest from `frontend-id`): one named otherwise than by numbers
    // is a holder all the same.
    let numbers = (dir.domid.parse::<u32>(), dir.devid.parse::<u32>());
    let odd_path = match numbers {
        (Ok(_), Ok(_)) => None,
        _ => Some(dir.path()),
    };
    let domid_number = numbers
        .0
        .ok()
        .or_else(|| frontend_id.as_deref().and_then(|id| id.trim().parse().ok()));
    let devid_number = numbers.1.unwrap_or(0);
    Some(Attachment {
        domid: domid_number.unwrap_or(u32::MAX),
        devid: devid_number,
        odd_path,
        vdev: Vdev::from_device_id(devid_number)
            .ok()
            .map(|v| v.canonical_name()),
        backend: dir.kind.to_owned(),
        params: params.unwrap_or_default(),
        mode: mode.unwrap_or_default(),
        kind: kind.unwrap_or_default(),
        physical_device: physical.as_deref().and_then(|text| {
            let parsed = parse_physical_device(text);
            if parsed.is_none() {
                tracing::warn!(
                    "{}/physical-device is {text:?}, not major:minor in hexadecimal; ignored",
                    dir.path()
                );
            }
            parsed
        }),
        // libxl writes `online = 1`; a missing node is not a request to go.
        online: online.is_none_or(|text| text.trim() != "0"),
        state: state.and_then(|text| text.trim().parse().ok()),
        // The block script's verdicts on failure (block-common.sh).
        hotplug_refused: hotplug.filter(|status| matches!(status.trim(), "busy" | "error")),
    })
}

/// What xenstore says, and what reading it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenstoreView {
    pub domains: Vec<Domain>,
    pub attachments: Vec<Attachment>,
    /// Batches of requests sent, each answered before the next.
    pub round_trips: u64,
}

/// Reads the running domains and every block attachment.
pub fn read_xenstore() -> Result<XenstoreView, XenstoreError> {
    // The list of domains through the xenstore-rs client, as any tool
    // would; the rest in batches through our own, which pipelines.
    let xs = XsUnix::new().map_err(|source| XenstoreError::Connect {
        socket: socket_path(),
        source,
    })?;
    let mut reader = Reader::connect()?;
    reader.round_trips += 1;
    let ids = match xs.directory("/local/domain") {
        Ok(names) => names.into_iter().map(String::from).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        // xenstore-rs does not page long listings; ours does.
        Err(e) if e.to_string().contains("E2BIG") => reader
            .directories(&["/local/domain".to_owned()])?
            .pop()
            .flatten()
            .unwrap_or_default(),
        Err(source) => {
            return Err(XenstoreError::Request {
                operation: "DIRECTORY",
                path: "/local/domain".to_owned(),
                source,
            });
        }
    };
    let domids: Vec<u32> = ids.iter().filter_map(|id| id.parse().ok()).collect();
    let name_paths: Vec<String> = domids
        .iter()
        .map(|domid| format!("/local/domain/{domid}/name"))
        .collect();
    let names = reader.values(&name_paths)?;
    let mut domains: Vec<Domain> = domids
        .into_iter()
        .zip(names)
        .map(|(domid, name)| Domain {
            domid,
            name: name.unwrap_or_default(),
        })
        .collect();
    let every_kind: Vec<(&'static str, Option<String>)> =
        BLOCK_BACKENDS.iter().map(|kind| (*kind, None)).collect();
    let dirs = reader.backend_dirs(&every_kind)?;
    let mut attachments: Vec<Attachment> =
        reader.attachments(&dirs)?.into_iter().flatten().collect();
    domains.sort();
    attachments.sort();
    let trips = reader.round_trips();
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
