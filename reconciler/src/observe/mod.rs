//! Observing the host: what xenstore says is attached to which domain, and
//! what dom0 itself uses (mounts, swap, device-mapper/md/LVM holders, loop
//! devices), with the block device table needed to turn any of it into
//! sector ranges on whole disks, and which guests libxl is running a
//! bootloader for (whose temporary Domain-0 attaches are libxl's:
//! [`bootloader`]).
//!
//! Observation only reads: xenstore through the xenstore-rs client, and
//! `/proc`, `/sys` and libxl's run directories under a root prefix
//! (`--host-root`), so a captured tree can stand in for a live host. The
//! result, [`HostState`], is plain data and is exactly what a snapshot file
//! holds.

pub mod bootloader;
pub mod devices;
mod dom0;
mod loopdev;
pub mod params;
pub mod paths;
pub mod snapshot;
mod sysfs;
mod watch;
mod xenstore;

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::extent::DevNum;

pub use dom0::{MountNamespaces, mount_namespaces};
pub use paths::{PathTarget, ResolvedPath};
pub use watch::{BackendChanges, BackendWatch};
pub use xenstore::{XenstoreError, XenstoreView, read_xenstore, reads_value};

/// Everything observed on a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostState {
    /// Running domains, by domid.
    pub domains: Vec<Domain>,
    /// Every attachment in xenstore, by domid then device id.
    pub attachments: Vec<Attachment>,
    /// What dom0 itself uses.
    pub dom0_uses: Vec<Dom0Use>,
    /// Every block device in sysfs, by device number.
    pub block_devices: Vec<BlockDevice>,
    /// What the paths holders name resolve to (attachments' `params`, loop
    /// devices' backing files), by path.
    pub paths: Vec<ResolvedPath>,
    /// Domids whose bootloader (pygrub) libxl is running in dom0: those
    /// with a `bootloader.<domid>.out` in /var/lib/xen or /run/xen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootloader_runs: Vec<u32>,
}

impl HostState {
    /// Whether `attachment` is libxl's temporary Domain-0 attach for a
    /// bootloader: a holder, never adopted or planned for (see
    /// [`bootloader`]).
    pub fn is_bootloader_attach(&self, attachment: &Attachment) -> bool {
        if attachment.domid != 0 || self.bootloader_runs.is_empty() {
            return false;
        }
        let domains: Vec<u32> = self.domains.iter().map(|d| d.domid).collect();
        bootloader::is_bootloader_attach(attachment, &self.bootloader_runs, &domains)
    }

    /// What `path` resolved to when observed, if it was.
    pub fn path(&self, path: &str) -> Option<&PathTarget> {
        self.paths
            .binary_search_by(|p| p.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.paths[i].target)
    }
}

/// A running domain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub domid: u32,
    /// From `/local/domain/<domid>/name`; empty when the node is missing.
    pub name: String,
}

/// A virtual block device attached to a domain, from its backend directory
/// `/local/domain/0/backend/<backend>/<domid>/<devid>/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub domid: u32,
    /// The xenstore device id.
    pub devid: u32,
    /// Its canonical name (`xvda`), when the id is a valid encoding.
    pub vdev: Option<String>,
    /// `vbd` (blkback), `qdisk` (QEMU) or `vbd3` (tapdisk3).
    pub backend: String,
    /// The backend directory, when its domid or device id is not a number
    /// (`backend/vbd/4/xvdb`): a holder, never planned for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub odd_path: Option<String>,
    /// The backend's `params`: the device or file handed to the guest.
    pub params: String,
    /// The backend's `mode`: `r` or `w` (`w!` where a toolstack wrote it).
    pub mode: String,
    /// The backend's `type`: `phy`, `file`, `qdisk`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// `physical-device`, written by the hotplug script once it ran.
    pub physical_device: Option<DevNum>,
    /// The backend's `online`: `false` once a toolstack asked it to go away.
    pub online: bool,
    /// The backend's XenbusState (`state`), when it is a number.
    pub state: Option<u32>,
    /// The backend's `hotplug-status` when its hotplug script refused it
    /// (`busy`, `error`): the toolstack left it behind (xl does), blkback
    /// never opened the device, and it is no working disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_refused: Option<String>,
}

/// XenbusState Closing and Closed (xen/include/public/io/xenbus.h).
const XENBUS_CLOSING: u32 = 5;
const XENBUS_CLOSED: u32 = 6;

impl Attachment {
    /// Not a working attachment: being torn down (asked to go offline, or
    /// closing or closed), or refused by its hotplug script. It is taken
    /// away before the disk is attached again, and holds its disk until
    /// its nodes are gone.
    pub fn is_closing(&self) -> bool {
        !self.online
            || matches!(self.state, Some(XENBUS_CLOSING | XENBUS_CLOSED))
            || self.hotplug_refused.is_some()
    }

    /// The path `params` names, its driver and format prefixes taken off.
    pub fn path(&self) -> &str {
        params::parse(&self.params).path
    }

    /// The image format its backend reads (see [`params::format`]); `Err`
    /// with the name of one xendisk does not declare.
    pub fn format(&self) -> Result<crate::desired::Format, &str> {
        params::format(&self.backend, &self.params)
    }

    /// The path after a prefix xendisk does not know (`newfmt:/dev/sdb1`
    /// gives `/dev/sdb1`), which may be what the backend opened.
    pub fn path_after_unknown_prefix(&self) -> Option<&str> {
        let path = self.path();
        params::has_unknown_prefix(path)
            .then(|| path.split_once(':').map(|(_, tail)| tail))
            .flatten()
    }
}

/// Something dom0 uses, as sectors of a whole disk or as a file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dom0Use {
    /// What is used.
    pub target: UseTarget,
    /// Whether dom0 may write it.
    pub writable: bool,
    /// For a person: "mounted rw at /srv in Domain-0".
    pub description: String,
    pub kind: UseKind,
    /// The block device it goes through (the mounted device, the swap
    /// device, the holder): a vdisk's own block device is xendisk's.
    pub via: Option<DevNum>,
}

/// How dom0 uses a device.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum UseKind {
    Mount,
    Swap,
    /// A device built on it (device-mapper, md, LVM): `via` is that device.
    Holder,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum UseTarget {
    /// Sectors `[start, start + sectors)` of the whole disk `disk`.
    Sectors {
        disk: DevNum,
        start: u64,
        sectors: u64,
    },
    /// A regular file, by identity.
    File { dev: u64, ino: u64, path: String },
}

/// A block device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockDevice {
    /// Kernel name: `sda3`, `dm-0`, `loop1`.
    pub name: String,
    pub device: DevNum,
    /// The whole disk it is part of (itself for a whole disk).
    pub disk: DevNum,
    /// First sector on that disk.
    pub start: u64,
    pub sectors: u64,
    /// Device-mapper name, for `/dev/mapper/<name>`.
    pub dm_name: Option<String>,
    /// Kernel names of the devices built on this one (`holders/`).
    pub holders: Vec<String>,
    /// Kernel names of the devices this one is built on (`slaves/`).
    pub slaves: Vec<String>,
    /// For a loop device: its backing file and window on it.
    pub loop_backing: Option<LoopBacking>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoopBacking {
    /// As sysfs shows it (`... (deleted)` once its name is gone).
    pub file: String,
    /// What the kernel says is behind it (`LOOP_GET_STATUS64`), which
    /// holds when the name does not: the block device, or the file's
    /// identity. `None` where the loop node could not be asked (a
    /// captured tree).
    #[serde(default)]
    pub behind: Option<LoopTarget>,
    /// Byte offset into the file.
    pub offset: u64,
    /// Byte limit, 0 for the rest of the file.
    pub sizelimit: u64,
}

/// What a loop device is over.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LoopTarget {
    Block { device: DevNum },
    File { dev: DevNum, ino: u64 },
}

/// Where and how to observe.
#[derive(Debug, Clone)]
pub struct ObserveOptions {
    /// Prefix for `/proc`, `/sys` and `/dev` paths.
    pub host_root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Xenstore(#[from] XenstoreError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

/// Observes the host: xenstore, then dom0's usage under the host root.
pub fn observe(options: &ObserveOptions) -> Result<HostState, ObserveError> {
    let XenstoreView {
        domains,
        attachments,
        ..
    } = read_xenstore()?;
    let (block_devices, dom0_uses) = observe_dom0(options)?;
    let wanted = attachments
        .iter()
        .flat_map(|a| std::iter::once(a.path()).chain(a.path_after_unknown_prefix()))
        .map(paths::normalise)
        .chain(
            block_devices
                .iter()
                .filter_map(|d| d.loop_backing.as_ref().map(|b| paths::normalise(&b.file))),
        );
    let paths = resolve_paths(&options.host_root, wanted, &block_devices);
    Ok(HostState {
        domains,
        attachments,
        dom0_uses,
        block_devices,
        paths,
        bootloader_runs: bootloader::runs(&options.host_root)?,
    })
}

/// The host watched between looks: the whole host read once, then only
/// what changed. Apply looks at the host before every step that writes
/// sectors; this keeps each look proportional to what changed in xenstore
/// (dom0's side, mounts, swaps and holders, is read again each time).
pub struct HostWatch {
    options: ObserveOptions,
    /// `None` until the first whole look, and after a watch failed (each
    /// look is then a whole one).
    backends: Option<BackendWatch>,
}

/// What [`HostWatch::changes`] found: the block backends changed since
/// the last look, and dom0's side as it is now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostChanges {
    pub backends: BackendChanges,
    pub dom0_uses: Vec<Dom0Use>,
    pub block_devices: Vec<BlockDevice>,
    /// What each of the paths asked about names now, in the order asked.
    pub paths: Vec<PathTarget>,
}

impl HostWatch {
    pub fn new(options: ObserveOptions) -> HostWatch {
        HostWatch {
            options,
            backends: None,
        }
    }

    /// The whole host; changes count from before it was read.
    pub fn whole(&mut self) -> Result<HostState, ObserveError> {
        let watching = match self.backends.as_mut() {
            Some(watch) => watch.forget().is_ok(),
            None => false,
        };
        if !watching {
            // Without a watch every look is whole: slower, never wrong.
            self.backends = BackendWatch::start()
                .inspect_err(|e| tracing::debug!("no xenstore watch ({e}): each look reads all"))
                .ok();
        }
        observe(&self.options)
    }

    /// What changed since the last look, and what `paths` name now;
    /// `None` when it cannot be told (no watch): then look at the whole
    /// host.
    pub fn changes(&mut self, paths: &[String]) -> Result<Option<HostChanges>, ObserveError> {
        let Some(watch) = self.backends.as_mut() else {
            return Ok(None);
        };
        let backends = match watch.changed() {
            Ok(backends) => backends,
            Err(error) => {
                tracing::debug!("the xenstore watch failed ({error}): the next look reads all");
                self.backends = None;
                return Ok(None);
            }
        };
        let (block_devices, dom0_uses) = observe_dom0(&self.options)?;
        let paths = paths
            .iter()
            .map(|path| paths::resolve(&self.options.host_root, path, &block_devices))
            .collect();
        Ok(Some(HostChanges {
            backends,
            dom0_uses,
            block_devices,
            paths,
        }))
    }
}

/// Resolves each path on the host (see [`paths::resolve`]), sorted by path.
pub fn resolve_paths(
    root: &Path,
    wanted: impl IntoIterator<Item = String>,
    block_devices: &[BlockDevice],
) -> Vec<ResolvedPath> {
    let mut wanted: Vec<String> = wanted.into_iter().collect();
    wanted.sort();
    wanted.dedup();
    wanted
        .into_iter()
        .map(|path| ResolvedPath {
            target: paths::resolve(root, &path, block_devices),
            path,
        })
        .collect()
}

/// Only dom0's side: the block device table and what dom0 uses.
pub fn observe_dom0(
    options: &ObserveOptions,
) -> Result<(Vec<BlockDevice>, Vec<Dom0Use>), ObserveError> {
    let block_devices = sysfs::block_devices(&options.host_root)?;
    let dom0_uses = dom0::uses(&options.host_root, &block_devices)?;
    Ok((block_devices, dom0_uses))
}

/// `root` joined with an absolute host path.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}
