//! Attaching and detaching by writing xenstore as libxl does
//! (tools/libs/light/libxl_disk.c `device_disk_add`, libxl_device.c
//! `libxl__device_generic_add`, `libxl__initiate_device_generic_remove`,
//! `libxl__device_destroy`), so that a disk attached here is one libxl
//! knows: `xl block-list` shows it, `xl block-detach` removes it, and the
//! hotplug script has run for it.
//!
//! An attach, on a real dom0:
//! 1. the three directories, empty, outside any transaction (so that
//!    attaches to one guest running at once do not conflict over its list
//!    of disks; an apply stopped right after leaves them empty, and the
//!    next one takes them away: `ops::apply`); then in one transaction
//!    their contents: libxl's record `/libxl/<domid>/device/vbd/<devid>`,
//!    the frontend (the guest's, dom0 may read) with its permissions set
//!    before its leaves, the backend (dom0's, the guest may read) likewise,
//!    so every leaf inherits them;
//! 2. wait for blkback to take the backend up (InitWait);
//! 3. run the hotplug script (`add`), which checks sharing, opens the
//!    device and writes `physical-device`; blkback then connects to the
//!    guest's frontend on its own.
//!
//! A refusal by the script is reported with its own `hotplug-error` and
//! undone: nothing of the attempt is left for the next plan to adopt.
//!
//! A detach asks the backend to close, waits for the guest, runs the
//! script's `remove` (which releases a loop device it made), and removes
//! the frontend, the backend and libxl's record (each removal atomic by
//! itself, outside a transaction, for the same reason), then the
//! directories that were left empty.
//!
//! On a simulated host whose simulator plays the drivers
//! ([`BackendHost::SimulatedHotplug`], a `--sim` host) the same waits
//! are made, and the simulator's hotplug step stands for the script: a
//! refusal is reported in its words and undone as on a real host. On a
//! bare simulated xenstored ([`BackendHost::Simulated`], `--no-hotplug`)
//! nothing takes a backend up: the nodes are written and left as they are.
//!
//! An attach is done once the script has connected the device, as libxl
//! decides; that it also wrote `physical-device` is required too (the
//! script writes `hotplug-status = "connected"` alone for a path that is
//! neither a block device nor a regular file, and blkback then never
//! opens anything). Whether the guest then connects is the guest's
//! business: one without blkfront never does, and neither libxl nor
//! xendisk waits for it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::hotplug::{self, Action, Outcome};
use super::{
    AttachRequest, CLOSED, CLOSING, DetachRequest, INITIALISING, Toolstack, ToolstackError,
    backend_path, detach_kind, existing_attachment, frontend_path, vanished,
};
use crate::desired::Mode;

mod remove;
use crate::xs_client::{Change, XsClient, XsError};

/// XenbusState InitWait: blkback has read the backend and waits for
/// `physical-device`.
const INIT_WAIT: u32 = 2;

/// libxl's `LIBXL_INIT_TIMEOUT`: how long blkback gets to take a new
/// backend up.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Debian's Xen keeps the hotplug scripts (libxl's XEN_SCRIPT_DIR).
pub const SCRIPT_DIR: &str = "/etc/xen/scripts";

/// What takes a backend up once its nodes are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendHost {
    /// A real dom0: blkback, and the hotplug scripts in this directory.
    Dom0 { scripts: PathBuf },
    /// A simulated xenstored with no drivers: nothing; the nodes are left
    /// as written.
    Simulated,
    /// A simulator that plays blkback and the hotplug step (a `--sim`
    /// host): wait for them as on a real dom0, run no script.
    SimulatedHotplug,
}

/// libxl's record of a device: what `xl block-list` lists and
/// `xl block-detach` looks up.
fn libxl_path(domid: u32, devid: u32) -> String {
    format!("/libxl/{domid}/device/vbd/{devid}")
}

/// Attaching by writing the nodes libxl writes.
pub struct XenstoreToolstack {
    client: XsClient,
    host: BackendHost,
    /// How long a guest gets to close its frontend.
    pub release_timeout: Duration,
    /// Remove the nodes without waiting for the guest.
    pub force_detach: bool,
    /// How long blkback gets to take a new backend up.
    pub init_timeout: Duration,
}

impl XenstoreToolstack {
    pub fn connect(
        host: BackendHost,
        release_timeout: Duration,
        force_detach: bool,
    ) -> Result<XenstoreToolstack, ToolstackError> {
        let client = XsClient::connect().map_err(ToolstackError::Connect)?;
        Ok(XenstoreToolstack::with_client(
            client,
            host,
            release_timeout,
            force_detach,
        ))
    }

    pub fn with_client(
        client: XsClient,
        host: BackendHost,
        release_timeout: Duration,
        force_detach: bool,
    ) -> XenstoreToolstack {
        XenstoreToolstack {
            client,
            host,
            release_timeout,
            force_detach,
            init_timeout: INIT_TIMEOUT,
        }
    }

    /// Polls `path` until `done` says so of its value, or `timeout` passes;
    /// the last value read.
    fn poll(
        &mut self,
        path: &str,
        timeout: Duration,
        done: impl Fn(Option<&str>) -> bool,
    ) -> Result<(bool, Option<String>), XsError> {
        let deadline = Instant::now() + timeout;
        // Drivers usually answer within milliseconds: look again soon,
        // then less often (a read is one round trip to xenstored).
        let mut pause = Duration::from_millis(1);
        loop {
            let value = self.client.read(0, path)?;
            if done(value.as_deref()) {
                return Ok((true, value));
            }
            if Instant::now() >= deadline {
                return Ok((false, value));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }

    /// Steps 2 and 3 of an attach, running the script in `scripts` (a
    /// real dom0) or waiting for a simulator's hotplug step (`None`); an
    /// error leaves the nodes for the caller to undo.
    fn bring_up(
        &mut self,
        request: &AttachRequest,
        scripts: Option<&std::path::Path>,
    ) -> Result<(), ToolstackError> {
        let backend = backend_path("vbd", request.domid, request.devid);
        let status = self.client.read(0, &format!("{backend}/hotplug-status"))?;
        let device = self.client.read(0, &format!("{backend}/physical-device"))?;
        if status.as_deref() == Some("connected") && device.is_some() {
            return Ok(()); // an earlier run got this far
        }
        let init_timeout = self.init_timeout;
        let (taken_up, state) = self.poll(&format!("{backend}/state"), init_timeout, |state| {
            state
                .and_then(|s| s.trim().parse::<u32>().ok())
                .is_some_and(|s| s >= INIT_WAIT)
        })?;
        if !taken_up {
            return Err(ToolstackError::NotTakenUp {
                domain: request.domain.clone(),
                vdev: request.vdev.clone(),
                path: backend,
                seconds: init_timeout.as_secs(),
                state: state.unwrap_or_else(|| "gone".into()),
            });
        }
        let script = scripts
            .unwrap_or(std::path::Path::new(SCRIPT_DIR))
            .join("block");
        let outcome = match scripts {
            Some(_) => {
                let environment =
                    hotplug::environment("vbd", request.domid, request.devid, &script);
                hotplug::run(&script, Action::Add, &environment, hotplug::HOTPLUG_TIMEOUT)
                    .map_err(ToolstackError::HotplugSpawn)?
            }
            None => {
                let status = format!("{backend}/hotplug-status");
                let (ran, _) = self.poll(&status, hotplug::HOTPLUG_TIMEOUT, |s| s.is_some())?;
                match ran {
                    true => Outcome::Succeeded,
                    false => Outcome::TimedOut {
                        output: "the simulated host ran no hotplug step".into(),
                    },
                }
            }
        };
        let read = |client: &mut XsClient, leaf: &str| client.read(0, &format!("{backend}/{leaf}"));
        let status = read(&mut self.client, "hotplug-status")?;
        if matches!(outcome, Outcome::Succeeded) && status.as_deref() == Some("connected") {
            if read(&mut self.client, "physical-device")?.is_some() {
                return Ok(());
            }
            return Err(ToolstackError::Hotplug {
                domain: request.domain.clone(),
                vdev: request.vdev.clone(),
                script,
                error: format!(
                    "it reported success but wrote no physical-device, so blkback cannot open \
                     anything: {} is neither a block device nor a regular file on this host",
                    request.target
                ),
            });
        }
        // The script's own words first; what it printed if it wrote none.
        let said = read(&mut self.client, "hotplug-error")?;
        let why = match (said, outcome) {
            (Some(error), _) => error,
            (None, Outcome::Failed { status, output }) => format!("it exited {status}: {output}"),
            (None, Outcome::TimedOut { output }) => format!(
                "it did not finish within {}s and was killed: {output}",
                hotplug::HOTPLUG_TIMEOUT.as_secs()
            ),
            (None, Outcome::Succeeded) => format!(
                "it exited successfully but left hotplug-status {}",
                status.as_deref().unwrap_or("unwritten")
            ),
        };
        Err(ToolstackError::Hotplug {
            domain: request.domain.clone(),
            vdev: request.vdev.clone(),
            script,
            error: why,
        })
    }

    /// Takes away what an attach left after its hotplug step failed: the
    /// script's `remove` (a loop device it may have made), then every node.
    fn undo_attach(&mut self, request: &AttachRequest, scripts: Option<&std::path::Path>) {
        let backend = backend_path("vbd", request.domid, request.devid);
        let offline = self.client.transaction("undo attach", |client, tx| {
            client.write(tx, &format!("{backend}/online"), "0")?;
            client.write(tx, &format!("{backend}/state"), CLOSING)
        });
        if let Err(error) = offline {
            tracing::warn!(%error, %backend, "could not ask a refused backend to close");
        }
        if let Some(scripts) = scripts {
            self.run_remove(&backend, "vbd", request.domid, request.devid, scripts);
        }
        if let Err(error) = self.destroy("vbd", request.domid, request.devid) {
            tracing::warn!(%error, %backend, "could not remove a refused attachment's nodes");
        }
    }

    /// The script's `remove`, when the backend names one; its failure does
    /// not stop a detach (libxl goes on too), but is logged.
    fn run_remove(
        &mut self,
        backend: &str,
        kind: &str,
        domid: u32,
        devid: u32,
        scripts: &std::path::Path,
    ) {
        let named = match self.client.read(0, &format!("{backend}/script")) {
            Ok(Some(named)) => PathBuf::from(named),
            Ok(None) => return, // qdisk: QEMU needs no script
            Err(error) => {
                tracing::warn!(%error, %backend, "cannot read the backend's hotplug script");
                return;
            }
        };
        // A script outside the host's script directory is not run: the
        // node is writable by whoever wrote the backend.
        if named.parent() != Some(scripts) {
            tracing::warn!(script = %named.display(), "hotplug script outside {} not run", scripts.display());
            return;
        }
        let environment = hotplug::environment(kind, domid, devid, &named);
        match hotplug::run(
            &named,
            Action::Remove,
            &environment,
            hotplug::HOTPLUG_TIMEOUT,
        ) {
            Ok(Outcome::Succeeded) => {}
            Ok(outcome) => tracing::warn!(?outcome, %backend, "hotplug remove failed"),
            Err(error) => tracing::warn!(%error, "hotplug remove not run"),
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
        let timeout = self.release_timeout;
        let (released, _) = self.poll(&format!("{backend}/state"), timeout, |state| {
            state.is_none_or(|s| s.trim() == CLOSED)
        })?;
        if released {
            return Ok(());
        }
        let frontend_state = self
            .client
            .read(0, &format!("{frontend}/state"))?
            .unwrap_or_else(|| "gone".into());
        Err(ToolstackError::NotReleased {
            domain: request.domain.clone(),
            vdev: request.vdev.clone(),
            seconds: timeout.as_secs(),
            state: frontend_state,
        })
    }
}

/// The backend's nodes, in libxl's order. The mode is `w!` where sharing
/// was accepted: libxl never writes it, but blkback opens any mode with a
/// `w` read-write and the block script skips its sharing check for it
/// (xendisk has made that check itself, over every holder).
fn backend_nodes(
    request: &AttachRequest,
    script: &str,
    frontend: &str,
) -> Vec<(&'static str, String)> {
    let mode = match request.mode {
        Mode::Read => "r",
        Mode::Write => "w",
        Mode::WriteShared => "w!",
    };
    let writable = if request.mode.is_writable() { "1" } else { "0" };
    vec![
        ("frontend", frontend.to_owned()),
        ("params", request.target.clone()),
        ("script", script.to_owned()),
        ("frontend-id", request.domid.to_string()),
        ("online", "1".into()),
        ("removable", "0".into()),
        ("bootable", "1".into()),
        ("state", INITIALISING.into()),
        ("dev", request.vdev.clone()),
        // blkback's backend is `phy` for a device and an image file alike:
        // the script makes a loop device for a file.
        ("type", "phy".into()),
        ("mode", mode.into()),
        ("device-type", "disk".into()),
        // libxl's default: discard where the guest may write.
        ("discard-enable", writable.into()),
        ("specification", "xen".into()),
    ]
}

/// The frontend's nodes, in libxl's order (blkfront adds its own when it
/// connects: ring, event channel, protocol).
fn frontend_nodes(request: &AttachRequest, backend: &str) -> Vec<(&'static str, String)> {
    vec![
        ("backend", backend.to_owned()),
        ("backend-id", "0".into()),
        ("state", INITIALISING.into()),
        ("virtual-device", request.devid.to_string()),
        ("device-type", "disk".into()),
        ("trusted", "1".into()),
    ]
}

impl Toolstack for XenstoreToolstack {
    fn attach(&mut self, request: &AttachRequest) -> Result<(), ToolstackError> {
        let backend = backend_path("vbd", request.domid, request.devid);
        let frontend = frontend_path(request.domid, request.devid);
        let record = libxl_path(request.domid, request.devid);
        let scripts = match &self.host {
            BackendHost::Dom0 { scripts } => scripts.clone(),
            BackendHost::Simulated | BackendHost::SimulatedHotplug => PathBuf::from(SCRIPT_DIR),
        };
        let script = scripts.join("block").to_string_lossy().into_owned();
        let what = format!("attach {} {}", request.domain, request.vdev);
        let domid = request.domid;
        let directories = [record.clone(), frontend.clone(), backend.clone()];
        // The three directories first, outside any transaction. Made in
        // the transaction, each would add a child to its parent, the
        // guest's list of vbds (or, for its first disk, the list of
        // guests), which every attach to that guest changes too: at
        // commit, all but one of those running at once would fail with
        // EAGAIN and start again, over and over on a slow xenstored. An
        // empty directory is nothing to blkback or blkfront (they take up
        // a device whose state is Initialising), and the transaction
        // fills them in one commit.
        let made: Vec<Change> = directories.iter().cloned().map(Change::Mkdir).collect();
        self.client.change_many(0, &made)?;
        let existing = self.client.transaction(&what, |client, tx| {
            if let Some(existing) = existing_attachment(client, tx, domid, request.devid)? {
                return Ok(Some(existing));
            }
            let backend_perms = vec!["n0".to_owned(), format!("r{domid}")];
            let frontend_perms = vec![format!("n{domid}"), "r0".to_owned()];
            let write = |path: String, value: &str| Change::Write(path, value.to_owned());
            // What a detach that did not finish left is replaced: its
            // leaves go (the directories stay, and with them their
            // parents' lists of children).
            let mut changes = Vec::new();
            for directory in &directories {
                for child in client.directory(tx, directory)?.unwrap_or_default() {
                    changes.push(Change::Rm(format!("{directory}/{child}")));
                }
            }
            changes.extend([
                write(format!("{record}/frontend"), &frontend),
                write(format!("{record}/backend"), &backend),
            ]);
            // Each directory's permissions before its leaves: a leaf takes
            // its directory's when it is made, and the guest must be able
            // to read the backend and write its own frontend.
            changes.push(Change::SetPerms(frontend.clone(), frontend_perms.clone()));
            for (leaf, value) in frontend_nodes(request, &backend) {
                let path = format!("{frontend}/{leaf}");
                changes.push(write(path.clone(), &value));
                changes.push(Change::SetPerms(path, frontend_perms.clone()));
            }
            changes.push(Change::SetPerms(backend.clone(), backend_perms));
            let nodes = backend_nodes(request, &script, &frontend);
            for (leaf, value) in &nodes {
                changes.push(write(format!("{backend}/{leaf}"), value));
            }
            // libxl keeps a copy of what it asked of the backend.
            for (leaf, value) in nodes.iter().filter(|(leaf, _)| *leaf != "frontend") {
                changes.push(write(format!("{record}/{leaf}"), value));
            }
            // All in one round trip: the shorter a transaction, the fewer
            // others it collides with.
            client.change_many(tx, &changes)?;
            Ok(None)
        })?;
        if existing.is_some() {
            // Not this attach's to fill: what of the directories above is
            // empty goes, as if they had never been made.
            for directory in &directories {
                self.remove_empty_upwards(directory)?;
            }
        }
        match existing {
            None => {}
            // Made already, as this toolstack makes it (by an earlier run
            // stopped before it could record so): finished, not repeated.
            Some(existing)
                if existing.kind == "vbd"
                    && existing.params == request.target
                    && !existing.closing => {}
            Some(existing) => return Err(existing.occupies(request)),
        }
        let scripts = match self.host.clone() {
            BackendHost::Simulated => return Ok(()),
            BackendHost::SimulatedHotplug => None,
            BackendHost::Dom0 { scripts } => Some(scripts),
        };
        let brought_up = self.bring_up(request, scripts.as_deref());
        if brought_up.is_err() {
            self.undo_attach(request, scripts.as_deref());
        }
        brought_up
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
        if let BackendHost::Dom0 { scripts } = self.host.clone() {
            self.run_remove(&backend, kind, request.domid, request.devid, &scripts);
        }
        self.destroy(kind, request.domid, request.devid)?;
        Ok(())
    }
}
