//! The state DB: xendisk's record of pools, pool devices, extents and vdisks.
//!
//! This module alone owns the SQLite file. Every change runs in one
//! `BEGIN IMMEDIATE` transaction (all of it or none of it, one writer at a
//! time across processes), every value is a bound parameter, and the schema
//! is versioned with forward migrations. It never touches a block device,
//! xenstore or the desired-state file: callers hand it device geometry and
//! names as values, and get plain values back.
//!
//! A state DB is made only on purpose ([`StateDb::create`], for `xendisk
//! init`) and records the host it belongs to ([`host`]); opening one that
//! is missing is an error, never an empty state.
//!
//! The model is the ancestor's (Xen 1.2's virtual-disk manager): devices are
//! cut into extents; a vdisk owns extents in a fixed order; the extents of an
//! expired or deleted vdisk are free space, reclaimed lazily by the next
//! write. Its defects are not kept: sizes are exact, extent order is explicit,
//! names are data, and failures are errors instead of `-1`.
//!
//! A vdisk is an ordered list of extents, each `(pool device, start, length)`
//! of its device's pool's extent size. A pool's extent size governs new
//! allocations only: create and grow take extents from the vdisk's pool
//! alone, but a vdisk adopted from the ancestor (which cut each partition
//! with its own extent size and allocated from all of them) keeps extents
//! in several pools. Its pool is its first extent's.

pub mod alloc;
mod devices;
mod host;
mod journal;
mod legacy;
mod open;
mod overlap;
mod read;
mod schema;
#[cfg(test)]
mod tests;
mod write;

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::Connection;
use serde::Serialize;

use crate::desired::{Expiry, Size};
use crate::extent::{DevNum, SectorRange};

pub use host::{HostId, HostIdError, HostRecord, MACHINE_ID_FILES, Recorded, is_machine_id};
pub use journal::{RunRecord, StepRecord};
pub use legacy::{ImportReport, LegacyDb, LegacyError, import_legacy, read_legacy};
pub use schema::CURRENT_VERSION;

/// Where the state DB lives unless `--state` or `XENDISK_STATE` says otherwise.
pub const DEFAULT_PATH: &str = "/var/lib/xendisk/state.sqlite";

/// How long a writer waits for another process's transaction to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// An open state DB.
pub struct StateDb {
    connection: Connection,
    /// What to call it in messages.
    label: String,
}

/// Where a pool device lies on its whole disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiskPlace {
    /// The whole disk's device number.
    pub disk: DevNum,
    /// First sector of the pool device on that disk.
    pub start: u64,
}

/// What the caller knows of a device given to a pool (observed from sysfs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceGeometry {
    pub path: String,
    pub device: DevNum,
    pub sectors: u64,
    pub on_disk: Option<DiskPlace>,
}

/// The whole state as plain values, for `plan` and `xendisk state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StateSnapshot {
    /// By name.
    pub pools: Vec<PoolState>,
    /// Live vdisks, by name.
    pub vdisks: Vec<VdiskState>,
    /// Vdisks that expired and whose extents, free space now, still hold
    /// their data until the next write reclaims them.
    pub expired: Vec<VdiskState>,
    /// Extents a run released for an on-release scrub that never finished
    /// (the run was killed or failed first), still free and dirty: the
    /// next plan scrubs them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unscrubbed_releases: Vec<SectorRange>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolState {
    pub name: String,
    pub extent_size: Size,
    /// By path.
    pub devices: Vec<PoolDeviceState>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolDeviceState {
    /// The DB's row id: the allocator's device order.
    #[serde(skip)]
    pub id: i64,
    pub path: String,
    pub device: DevNum,
    pub sectors: u64,
    /// Where it lies on its whole disk, once observed.
    pub on_disk: Option<DiskPlace>,
    pub extents: u64,
    pub free: u64,
    pub used: u64,
    /// Free extents that still hold a former vdisk's data.
    pub dirty: u64,
    /// Free extents as runs, for the allocator.
    #[serde(skip)]
    pub free_runs: Vec<alloc::Run>,
    /// Free extents that are dirty, as runs, for planning scrubs.
    #[serde(skip)]
    pub dirty_runs: Vec<alloc::Run>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VdiskState {
    pub name: String,
    /// Its first extent's pool, where a grow takes new extents from. A vdisk
    /// imported from the ancestor may have further extents in other pools.
    pub pool: String,
    /// The size asked for.
    pub size: Size,
    /// What its extents hold (each of its own pool's extent size): the size
    /// rounded up to whole extents.
    pub allocated: Size,
    /// The expiry as declared.
    pub expiry: Expiry,
    pub created_at: jiff::Timestamp,
    pub expires_at: Option<jiff::Timestamp>,
    /// Contiguous runs among its extents; 1 means it can be a loop device.
    pub segments: usize,
    /// Its extents in order (the device-mapper table order), each relative
    /// to its pool device and of that device's pool's extent size, as the
    /// ancestor's `vd_lookup` gave them.
    pub extents: Vec<SectorRange>,
}

/// Why a state DB operation failed. Each variant names the object and says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "the state DB {path} does not exist, and xendisk never takes a missing state DB for an \
         empty one: if xendisk has never managed this host, create it with `xendisk init`; \
         otherwise check --state and XENDISK_STATE, or restore the DB from a backup"
    )]
    Missing { path: String },
    #[error("the state DB {path} exists already; nothing was changed")]
    Exists { path: String },
    #[error("cannot create the state DB {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read the state DB {path}: {source}")]
    Access {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the state DB {path} belongs to host {recorded}, not to this host ({this}); nothing was \
         changed: point --state at this host's DB, or, if this host's machine id changed \
         (dom0 reinstalled on the same disks), record the new one with `xendisk init \
         --replace-host`"
    )]
    OtherHost {
        path: String,
        recorded: String,
        this: String,
    },
    #[error("cannot open the state DB {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot create the directory for the state DB {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot bring the state DB {path} up to date: {source}")]
    Migrate {
        path: String,
        source: schema::MigrateError,
    },
    #[error("state DB {path}: {operation} failed: {source}")]
    Sqlite {
        path: String,
        operation: &'static str,
        source: rusqlite::Error,
    },
    #[error(
        "pool `{pool}` has {free} free but vdisk `{vdisk}` needs {needed}; nothing was allocated"
    )]
    PoolShort {
        pool: String,
        vdisk: String,
        needed: Size,
        free: Size,
    },
    #[error("pool `{0}` does not exist in the state DB; add a device to it first")]
    UnknownPool(String),
    #[error(
        "vdisk `{0}` does not exist (or has expired) in the state DB; the host changed since the \
         plan was made: plan again"
    )]
    UnknownVdisk(String),
    #[error(
        "vdisk `{name}` already exists in pool `{pool}` with size {size}; choose another name or \
         delete it first"
    )]
    VdiskExists {
        name: String,
        pool: String,
        size: Size,
    },
    #[error(
        "vdisk `{name}` is {current}; shrinking it to {requested} would destroy data and is refused"
    )]
    Shrink {
        name: String,
        current: Size,
        requested: Size,
    },
    #[error(
        "vdisk `{name}` expired at {at}; its expiry can no longer be changed (its extents are free space)"
    )]
    Expired { name: String, at: jiff::Timestamp },
    #[error(
        "expiry {expiry} of vdisk `{name}` falls at {at}, which is already past; delete the vdisk instead"
    )]
    ExpiryPast {
        name: String,
        expiry: Expiry,
        at: jiff::Timestamp,
    },
    #[error(
        "pool `{pool}` has extents of {existing}, not {requested}; the extent size of a pool \
         cannot change while it has devices"
    )]
    ExtentSizeMismatch {
        pool: String,
        existing: Size,
        requested: Size,
    },
    #[error(
        "device {path} ({device}) is already in pool `{pool}`; a device serves one pool: take it \
         out of `{pool}` first"
    )]
    DeviceInOtherPool {
        path: String,
        device: DevNum,
        pool: String,
    },
    #[error("device {path} is in the state DB as {recorded}, but is now {given}; check the path")]
    DeviceChanged {
        path: String,
        recorded: String,
        given: String,
    },
    #[error(
        "device {path} is smaller than one extent of pool `{pool}` ({extent}); it cannot hold any"
    )]
    DeviceTooSmall {
        path: String,
        pool: String,
        extent: Size,
    },
    #[error(
        "extent {extent} planned for vdisk `{vdisk}` is not free any more; the host changed since \
         the plan was made: plan again"
    )]
    ExtentTaken { vdisk: String, extent: SectorRange },
    #[error(
        "pool device {0} is not in the state DB; the host changed since the plan was made: plan \
         again"
    )]
    UnknownDevice(String),
    #[error(
        "pool device {path} still holds vdisks {vdisks}; delete or move them before removing it"
    )]
    DeviceInUse { path: String, vdisks: String },
    #[error("the state DB {path} is not empty; import into a new state DB (--state PATH)")]
    NotEmpty { path: String },
    #[error(
        "the state DB {path} is inconsistent: {problems}; nothing was changed: run `xendisk state \
         --check` for the details"
    )]
    Inconsistent { path: String, problems: String },
}

impl StateDb {
    /// What this DB is called in messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn sqlite_error(&self, operation: &'static str) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |source| StateError::Sqlite {
            path: self.label.clone(),
            operation,
            source,
        }
    }
}

/// The state DB path: `--state`, else `XENDISK_STATE`, else the default.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("XENDISK_STATE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

fn to_unix(time: jiff::Timestamp) -> i64 {
    time.as_second()
}

fn from_unix(seconds: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(seconds).unwrap_or(jiff::Timestamp::MAX)
}

/// When a vdisk created at `created` with this expiry expires; `None` for never.
pub fn expiry_instant(expiry: &Expiry, created: jiff::Timestamp) -> Option<jiff::Timestamp> {
    match expiry {
        Expiry::Never => None,
        Expiry::At(at) => Some(*at),
        Expiry::AfterCreation { seconds } => Some(from_unix(
            to_unix(created).saturating_add(i64::try_from(*seconds).unwrap_or(i64::MAX)),
        )),
    }
}
