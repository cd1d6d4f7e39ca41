//! Attaching and detaching: through `xl block-attach`/`block-detach`, or
//! directly in xenstore as a toolstack does. Both behind one trait, and both
//! idempotent: an identical attachment is left as it is, a missing one is
//! already detached.

use std::time::{Duration, Instant};

use super::command::{CommandError, run};
use crate::desired::Mode;
use crate::xs_client::{Tx, XsClient, XsError};

/// XenbusState values (xen/include/public/io/xenbus.h).
const INITIALISING: &str = "1";
const CLOSING: &str = "5";
const CLOSED: &str = "6";

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
}

/// One attachment to take away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachRequest {
    pub domain: String,
    pub domid: u32,
    pub vdev: String,
    pub devid: u32,
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
    #[error("{vdev} of domain {domain} is already attached to {existing}; detach it first")]
    Occupied {
        domain: String,
        vdev: String,
        existing: String,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
}

pub trait Toolstack {
    fn attach(&mut self, request: &AttachRequest) -> Result<(), ToolstackError>;
    fn detach(&mut self, request: &DetachRequest) -> Result<(), ToolstackError>;
}

fn backend_path(domid: u32, devid: u32) -> String {
    format!("/local/domain/0/backend/vbd/{domid}/{devid}")
}

fn frontend_path(domid: u32, devid: u32) -> String {
    format!("/local/domain/{domid}/device/vbd/{devid}")
}

/// What xenstore says is at a vdev now: its `params`, if attached.
fn attached(
    client: &mut XsClient,
    tx: Tx,
    domid: u32,
    devid: u32,
) -> Result<Option<String>, XsError> {
    let backend = backend_path(domid, devid);
    if client.read(tx, &format!("{backend}/state"))?.is_none() {
        return Ok(None);
    }
    Ok(Some(
        client
            .read(tx, &format!("{backend}/params"))?
            .unwrap_or_default(),
    ))
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
        Ok(XenstoreToolstack {
            client,
            release_timeout,
            force_detach,
        })
    }
}

impl Toolstack for XenstoreToolstack {
    fn attach(&mut self, request: &AttachRequest) -> Result<(), ToolstackError> {
        let backend = backend_path(request.domid, request.devid);
        let frontend = frontend_path(request.domid, request.devid);
        let what = format!("attach {} {}", request.domain, request.vdev);
        let existing = self.client.transaction(&what, |client, tx| {
            if let Some(params) = attached(client, tx, request.domid, request.devid)? {
                return Ok(Some(params));
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
            Some(params) if params != request.target => Err(ToolstackError::Occupied {
                domain: request.domain.clone(),
                vdev: request.vdev.clone(),
                existing: params,
            }),
            _ => Ok(()),
        }
    }

    fn detach(&mut self, request: &DetachRequest) -> Result<(), ToolstackError> {
        let backend = backend_path(request.domid, request.devid);
        let frontend = frontend_path(request.domid, request.devid);
        let what = format!("detach {} {}", request.domain, request.vdev);
        let present = self.client.transaction(&what, |client, tx| {
            let Some(state) = client.read(tx, &format!("{backend}/state"))? else {
                return Ok(false);
            };
            client.write(tx, &format!("{backend}/online"), "0")?;
            if state != CLOSED {
                client.write(tx, &format!("{backend}/state"), CLOSING)?;
            }
            Ok(true)
        })?;
        if !present {
            return Ok(());
        }
        if !self.force_detach {
            let deadline = Instant::now() + self.release_timeout;
            loop {
                let state = self.client.read(0, &format!("{backend}/state"))?;
                if state.as_deref() == Some(CLOSED) || state.is_none() {
                    break;
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
        self.client.transaction(&what, |client, tx| {
            client.rm(tx, &backend)?;
            client.rm(tx, &frontend)?;
            // The guest's last disk takes its (empty) backend directory with it.
            let parent = format!("/local/domain/0/backend/vbd/{}", request.domid);
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

/// Attaching through `xl`. It reads xenstore first, so that an attachment
/// already made is not made twice.
pub struct XlToolstack {
    client: XsClient,
    /// The `xl` to run (a path, or looked up on PATH).
    pub program: String,
}

impl XlToolstack {
    pub fn connect(program: String) -> Result<XlToolstack, ToolstackError> {
        let client = XsClient::connect().map_err(ToolstackError::Connect)?;
        Ok(XlToolstack { client, program })
    }

    fn run(&self, args: &[String]) -> Result<(), ToolstackError> {
        run(&self.program, args, None)?;
        Ok(())
    }
}

/// The disk spec xl takes (xl-disk-configuration(5)); `target=` comes last
/// because it may hold commas.
pub fn xl_disk_spec(request: &AttachRequest) -> String {
    // xl knows only r/ro and w/rw: `w!` is xendisk's acceptance of sharing.
    let access = if request.mode.is_writable() {
        "rw"
    } else {
        "r"
    };
    format!(
        "format=raw, vdev={}, access={access}, target={}",
        request.vdev, request.target
    )
}

impl Toolstack for XlToolstack {
    fn attach(&mut self, request: &AttachRequest) -> Result<(), ToolstackError> {
        if let Some(params) = attached(&mut self.client, 0, request.domid, request.devid)? {
            if params == request.target {
                return Ok(());
            }
            return Err(ToolstackError::Occupied {
                domain: request.domain.clone(),
                vdev: request.vdev.clone(),
                existing: params,
            });
        }
        self.run(&[
            "block-attach".into(),
            request.domain.clone(),
            xl_disk_spec(request),
        ])
    }

    fn detach(&mut self, request: &DetachRequest) -> Result<(), ToolstackError> {
        if attached(&mut self.client, 0, request.domid, request.devid)?.is_none() {
            return Ok(());
        }
        self.run(&[
            "block-detach".into(),
            request.domain.clone(),
            request.vdev.clone(),
        ])
    }
}
