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

mod xl;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use super::command::CommandError;
use crate::desired::{Format, Mode};
use crate::xs_client::{Tx, XsClient, XsError};

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
    /// `phy` for a block device, `file` for an image file.
    pub kind: &'static str,
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

/// What holds `devid` of `domid`, under any block backend kind.
fn existing_attachment(
    client: &mut XsClient,
    tx: Tx,
    domid: u32,
    devid: u32,
) -> Result<Option<Existing>, XsError> {
    for kind in BLOCK_BACKENDS {
        let path = backend_path(kind, domid, devid);
        if client.directory(tx, &path)?.is_none() {
            continue;
        }
        let params = client
            .read(tx, &format!("{path}/params"))?
            .unwrap_or_default();
        let online = client.read(tx, &format!("{path}/online"))?;
        let state = client.read(tx, &format!("{path}/state"))?;
        return Ok(Some(Existing {
            kind,
            path,
            params,
            closing: is_closing(online.as_deref(), state.as_deref()),
        }));
    }
    Ok(None)
}

/// Attaching by writing the nodes a toolstack writes, in one transaction.
pub struct XenstoreToolstack {
    client: XsClient,
    /// How long a guest gets to close its frontend.
    pub release_timeout: Duration,
    /// Remove the nodes without waiting for the guest.
    pub force_detach: bool,
}

impl XenstoreToolstack {
    pub fn connect(
        release_timeout: Duration,
        force_detach: bool,
    ) -> Result<XenstoreToolstack, ToolstackError> {
        let client = XsClient::connect().map_err(ToolstackError::Connect)?;
        Ok(XenstoreToolstack::with_client(
            client,
            release_timeout,
            force_detach,
        ))
    }

    pub fn with_client(
        client: XsClient,
        release_timeout: Duration,
        force_detach: bool,
    ) -> XenstoreToolstack {
        XenstoreToolstack {
            client,
            release_timeout,
            force_detach,
        }
    }

    /// Waits until the backend is Closed (its guest closed the frontend and
    /// the backend driver followed) or gone.
    fn wait_for_release(
        &mut self,
        request: &DetachRequest,
        backend: &str,
        frontend: &str,
    ) -> Result<(), ToolstackError> {
        let deadline = Instant::now() + self.release_timeout;
        loop {
            let state = self.client.read(0, &format!("{backend}/state"))?;
            if state.as_deref().map(str::trim) == Some(CLOSED) || state.is_none() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let frontend_state = self
                    .client
                    .read(0, &format!("{frontend}/state"))?
                    .unwrap_or_else(|| "gone".into());
                return Err(ToolstackError::NotReleased {
                    domain: request.domain.clone(),
                    vdev: request.vdev.clone(),
                    seconds: self.release_timeout.as_secs(),
                    state: frontend_state,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Toolstack for XenstoreToolstack {
    fn attach(&mut self, request: &AttachRequest) -> Result<(), ToolstackError> {
        let backend = backend_path("vbd", request.domid, request.devid);
        let frontend = frontend_path(request.domid, request.devid);
        let what = format!("attach {} {}", request.domain, request.vdev);
        let existing = self.client.transaction(&what, |client, tx| {
            if let Some(existing) = existing_attachment(client, tx, request.domid, request.devid)? {
                return Ok(Some(existing));
            }
            let domid = request.domid.to_string();
            // Backend, owned by dom0, readable by the guest
            // (xen's docs/misc/xenstore-paths, "Backend device paths").
            // `w!` as xm wrote it: blkback opens any mode containing `w`
            // read-write, and the block hotplug script skips its sharing
            // check for it; xendisk has made that check itself.
            let mode = match request.mode {
                Mode::Read => "r",
                Mode::Write => "w",
                Mode::WriteShared => "w!",
            };
            let backend_nodes = [
                ("frontend", frontend.as_str()),     // where the guest's half is
                ("frontend-id", domid.as_str()),     // the guest's domid
                ("online", "1"),                     // 0 asks the backend to go away
                ("removable", "0"),                  // not a CD-ROM tray
                ("bootable", "1"),                   // may be booted from
                ("state", INITIALISING),             // XenbusState; blkback moves it on
                ("dev", request.vdev.as_str()),      // the guest-side name
                ("type", request.kind),              // phy or file: what the hotplug script opens
                ("mode", mode),                      // r, w, or w! (sharing accepted)
                ("device-type", "disk"),             // not a cdrom
                ("params", request.target.as_str()), // the device or file itself
            ];
            for (leaf, value) in backend_nodes {
                client.write(tx, &format!("{backend}/{leaf}"), value)?;
            }
            client.set_perms(tx, &backend, &["n0".to_owned(), format!("r{domid}")])?;
            // Frontend, owned by the guest, readable by dom0.
            let devid = request.devid.to_string();
            let frontend_nodes = [
                ("backend", backend.as_str()),      // where dom0's half is
                ("backend-id", "0"),                // the backend's domid
                ("state", INITIALISING),            // the guest's driver moves it on
                ("virtual-device", devid.as_str()), // the device id (xen-vbd-interface(7))
                ("device-type", "disk"),
            ];
            for (leaf, value) in frontend_nodes {
                client.write(tx, &format!("{frontend}/{leaf}"), value)?;
            }
            client.set_perms(tx, &frontend, &[format!("n{domid}"), "r0".to_owned()])?;
            Ok(None)
        })?;
        match existing {
            None => Ok(()),
            // Made already, as this toolstack makes it (by an earlier run
            // stopped before it could record so): left as it is.
            Some(existing)
                if existing.kind == "vbd"
                    && existing.params == request.target
                    && !existing.closing =>
            {
                Ok(())
            }
            Some(existing) => Err(existing.occupies(request)),
        }
    }

    fn detach(&mut self, request: &DetachRequest) -> Result<(), ToolstackError> {
        let kind = detach_kind(request)?;
        let backend = backend_path(kind, request.domid, request.devid);
        let frontend = frontend_path(request.domid, request.devid);
        let what = format!("detach {} {}", request.domain, request.vdev);
        // Ask the backend to go: offline, and Closing unless already Closed.
        // `None`: nothing there; `Some(false)`: a backend without a state,
        // which no driver has taken up (the toolstack writes the state with
        // the other nodes and the driver moves it on), so no one to wait for.
        let found = self.client.transaction(&what, |client, tx| {
            if client.directory(tx, &backend)?.is_none() {
                return Ok(None);
            }
            let Some(state) = client.read(tx, &format!("{backend}/state"))? else {
                return Ok(Some(false));
            };
            client.write(tx, &format!("{backend}/online"), "0")?;
            if state.trim() != CLOSED {
                client.write(tx, &format!("{backend}/state"), CLOSING)?;
            }
            Ok(Some(true))
        })?;
        let Some(driven) = found else {
            return Err(vanished(request, backend));
        };
        if driven && !self.force_detach {
            self.wait_for_release(request, &backend, &frontend)?;
        }
        self.client.transaction(&what, |client, tx| {
            client.rm(tx, &backend)?;
            // The frontend is this attachment's unless it names another
            // backend: then it belongs to one made since, which stays.
            let owner = client.read(tx, &format!("{frontend}/backend"))?;
            if owner.is_none_or(|owner| owner == backend) {
                client.rm(tx, &frontend)?;
            }
            // The guest's last disk of this kind takes its (empty) backend
            // directory with it.
            let parent = format!("/local/domain/0/backend/{kind}/{}", request.domid);
            if client
                .directory(tx, &parent)?
                .is_some_and(|children| children.is_empty())
            {
                client.rm(tx, &parent)?;
            }
            Ok(())
        })?;
        Ok(())
    }
}
