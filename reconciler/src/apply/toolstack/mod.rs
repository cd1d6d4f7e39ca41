//! Attaching and detaching: through `xl block-attach`/`block-detach`
//! ([`XlToolstack`]), or directly in xenstore as a toolstack does
//! ([`XenstoreToolstack`]). Both behind one trait.
//!
//! An attachment is a backend directory
//! `/local/domain/0/backend/<kind>/<domid>/<devid>` of one of three kinds,
//! `vbd` (blkback), `qdisk` (QEMU) or `vbd3` (tapdisk3), and the guest's
//! frontend `/local/domain/<domid>/device/vbd/<devid>` whatever the kind.
//! A detach acts under the kind the plan observed. Finding nothing there
//! is an error, never "done": the plan was made for a host that has changed
//! since, and the steps after it (an attach of the same disk elsewhere)
//! must not run on its word. An apply that was interrupted is finished by
//! planning again, which no longer has the detaches already done, so this
//! error never stands in a resume's way.
//!
//! An attach leaves an identical attachment as it is, and refuses a device
//! id that any backend kind already holds: the frontend directory is the
//! same for every kind, so a second backend would take it over.

pub mod hotplug;
mod xenstore;
mod xl;

#[cfg(test)]
mod dom0_tests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use super::command::CommandError;
use crate::desired::{Format, Mode};
use crate::xs_client::{Tx, XsClient, XsError};

pub use xenstore::{BackendHost, SCRIPT_DIR, XenstoreToolstack};
pub use xl::{XlToolstack, xl_disk_spec};

/// XenbusState values (xen/include/public/io/xenbus.h).
const INITIALISING: &str = "1";
const CLOSING: &str = "5";
const CLOSED: &str = "6";

/// The backend kinds that serve block devices.
pub const BLOCK_BACKENDS: [&str; 3] = ["vbd", "qdisk", "vbd3"];

/// One attachment to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub domain: String,
    pub domid: u32,
    pub vdev: String,
    pub devid: u32,
    /// The block device or file the guest gets.
    pub target: String,
    pub mode: Mode,
    /// The image format of the target: raw but for an image file.
    pub format: Format,
}

/// One attachment to take away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachRequest {
    pub domain: String,
    pub domid: u32,
    pub vdev: String,
    pub devid: u32,
    /// The backend kind it was observed under: `vbd`, `qdisk` or `vbd3`.
    pub backend: String,
    /// It was already being torn down when observed (`online = 0`, or
    /// Closing or Closed).
    pub closing: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ToolstackError {
    #[error(transparent)]
    Xenstore(#[from] XsError),
    #[error("cannot reach xenstore: {0}")]
    Connect(std::io::Error),
    #[error(
        "domain {domain} did not release {vdev} within {seconds}s (its frontend is in state {state}); \
         the guest may still be using the disk: unmount it inside the guest and apply again, or use \
         --force-detach to take it away regardless"
    )]
    NotReleased {
        domain: String,
        vdev: String,
        seconds: u64,
        state: String,
    },
    #[error(
        "{vdev} of domain {domain} already has {existing} at {path}; nothing was attached: plan \
         again (a fresh plan detaches it first)"
    )]
    Occupied {
        domain: String,
        vdev: String,
        existing: String,
        /// The backend directory that holds the device id.
        path: String,
    },
    #[error(
        "cannot detach {vdev} of domain {domain}: the plan expected an attachment at {path}{was}, \
         but nothing is there; the host has changed since it was observed, and nothing was \
         detached: plan again"
    )]
    Vanished {
        domain: String,
        vdev: String,
        path: String,
        /// What the plan knew of it, said after the path.
        was: &'static str,
    },
    #[error(
        "cannot detach {vdev} of domain {domain}: the plan says it is under backend kind \
         `{backend}`, which is not one of vbd, qdisk or vbd3; plan again (was a saved plan edited?)"
    )]
    UnknownBackend {
        domain: String,
        vdev: String,
        backend: String,
    },
    #[error(
        "`xl block-detach` reported success for {vdev} of domain {domain}, but {path} is still \
         there and not closing ({seen}); see `xl block-list {domid}` and xl's log under \
         /var/log/xen, then apply again"
    )]
    StillAttached {
        domain: String,
        domid: u32,
        vdev: String,
        path: String,
        /// Its `online` and `state`, as read after xl returned.
        seen: String,
    },
    #[error(
        "blkback did not take up {path} within {seconds}s (its state is {state}), so {vdev} was not \
         attached to domain {domain}: is the xen-blkback module loaded (`modprobe xen-blkback`)? \
         Nothing was left behind; apply again once it is"
    )]
    NotTakenUp {
        domain: String,
        vdev: String,
        path: String,
        seconds: u64,
        state: String,
    },
    #[error(
        "the hotplug script {script} refused {vdev} of domain {domain}: {error}; the attempt was \
         undone and nothing is attached there"
    )]
    Hotplug {
        domain: String,
        vdev: String,
        script: PathBuf,
        /// The script's `hotplug-error`, else what it printed.
        error: String,
    },
    #[error("{0}; is Xen's hotplug package (xen-utils) installed?")]
    HotplugSpawn(hotplug::SpawnError),
    #[error(transparent)]
    Command(#[from] CommandError),
}

pub trait Toolstack {
    fn attach(&mut self, request: &AttachRequest) -> Result<(), ToolstackError>;
    fn detach(&mut self, request: &DetachRequest) -> Result<(), ToolstackError>;
}

fn backend_path(kind: &str, domid: u32, devid: u32) -> String {
    format!("/local/domain/0/backend/{kind}/{domid}/{devid}")
}

/// The guest's half, at the same place for every backend kind (libxl
/// gives qdisk and vbd3 backends a `vbd` frontend too).
fn frontend_path(domid: u32, devid: u32) -> String {
    format!("/local/domain/{domid}/device/vbd/{devid}")
}

/// The kind a detach names, if it is one of [`BLOCK_BACKENDS`]: it goes
/// into a path, and a saved plan is a file anyone can edit.
fn detach_kind(request: &DetachRequest) -> Result<&'static str, ToolstackError> {
    BLOCK_BACKENDS
        .into_iter()
        .find(|kind| *kind == request.backend)
        .ok_or_else(|| ToolstackError::UnknownBackend {
            domain: request.domain.clone(),
            vdev: request.vdev.clone(),
            backend: request.backend.clone(),
        })
}

fn vanished(request: &DetachRequest, path: String) -> ToolstackError {
    ToolstackError::Vanished {
        domain: request.domain.clone(),
        vdev: request.vdev.clone(),
        path,
        was: if request.closing {
            " (already being torn down then: it may have finished going since)"
        } else {
            ""
        },
    }
}

/// An attachment xenstore has at a device id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Existing {
    kind: &'static str,
    path: String,
    params: String,
    closing: bool,
}

impl Existing {
    fn occupies(self, request: &AttachRequest) -> ToolstackError {
        ToolstackError::Occupied {
            domain: request.domain.clone(),
            vdev: request.vdev.clone(),
            existing: if self.params.is_empty() {
                "an attachment".to_owned()
            } else {
                self.params
            },
            path: self.path,
        }
    }
}

/// Being torn down, as observation reads it: asked to go offline, or
/// Closing or Closed. A missing `online` is not a request to go.
fn is_closing(online: Option<&str>, state: Option<&str>) -> bool {
    online.is_some_and(|o| o.trim() == "0")
        || matches!(state.map(str::trim), Some(CLOSING | CLOSED))
}

/// What holds `devid` of `domid`, under any block backend kind: two round
/// trips at most, each asking all it needs at once. A backend directory
/// with none of `params`, `online` and `state` is nothing yet: the
/// xenstore toolstack makes its directories empty before the transaction
/// that fills them.
fn existing_attachment(
    client: &mut XsClient,
    tx: Tx,
    domid: u32,
    devid: u32,
) -> Result<Option<Existing>, XsError> {
    let paths: Vec<String> = BLOCK_BACKENDS
        .iter()
        .map(|kind| backend_path(kind, domid, devid))
        .collect();
    let found = client.read_many(tx, &paths)?;
    let present: Vec<(&'static str, String)> = BLOCK_BACKENDS
        .into_iter()
        .zip(paths)
        .zip(found)
        .filter_map(|(at, value)| value.map(|_| at))
        .collect();
    if present.is_empty() {
        return Ok(None);
    }
    const LEAVES: [&str; 3] = ["params", "online", "state"];
    let leaves: Vec<String> = present
        .iter()
        .flat_map(|(_, path)| LEAVES.map(|leaf| format!("{path}/{leaf}")))
        .collect();
    let values = client.read_many(tx, &leaves)?;
    for ((kind, path), values) in present.into_iter().zip(values.chunks(LEAVES.len())) {
        let [params, online, state] = [0, 1, 2].map(|i| values.get(i).cloned().flatten());
        if params.is_none() && online.is_none() && state.is_none() {
            continue;
        }
        return Ok(Some(Existing {
            kind,
            path,
            params: params.unwrap_or_default(),
            closing: is_closing(online.as_deref(), state.as_deref()),
        }));
    }
    Ok(None)
}
