//! The state DB: xendisk's record of pools, pool devices, extents and vdisks.
//!
//! This module alone owns the SQLite file. Every change runs in one
//! `BEGIN IMMEDIATE` transaction (all of it or none of it, one writer at a
//! time across processes), every value is a bound parameter, and the schema
//! is versioned with forward migrations. It never touches a block device,
//! xenstore or the desired-state file: callers hand it device geometry and
//! names as values, and get plain values back.
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
mod journal;
mod legacy;
mod overlap;
mod read;
mod schema;
#[cfg(test)]
mod tests;
mod write;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::desired::{Expiry, Size};
use crate::extent::{DevNum, SectorRange};

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
    /// Opens (creating if needed) the state DB at `path` for writing, and
    /// brings its schema up to date.
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        let label = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
                path: label.clone(),
                source,
            })?;
        }
        let connection = Connection::open(path).map_err(|source| StateError::Open {
            path: label.clone(),
            source,
        })?;
        StateDb::prepare(connection, label, true)
    }

    /// Opens the state DB at `path` for reading only; a missing file is an
    /// empty state (read-only commands never create it).
    pub fn open_read_only(path: &Path) -> Result<StateDb, StateError> {
        if !path.exists() {
            return StateDb::in_memory();
        }
        let label = path.display().to_string();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection =
            Connection::open_with_flags(path, flags).map_err(|source| StateError::Open {
                path: label.clone(),
                source,
            })?;
        StateDb::prepare(connection, label, false)
    }

    /// A private, empty state DB in memory (tests, offline plans).
    pub fn in_memory() -> Result<StateDb, StateError> {
        let label = "(in-memory state)".to_owned();
        let connection = Connection::open_in_memory().map_err(|source| StateError::Open {
            path: label.clone(),
            source,
        })?;
        StateDb::prepare(connection, label, true)
    }

    fn prepare(
        mut connection: Connection,
        label: String,
        writable: bool,
    ) -> Result<StateDb, StateError> {
        let sqlite = |operation| {
            let path = label.clone();
            move |source| StateError::Sqlite {
                path,
                operation,
                source,
            }
        };
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(sqlite("setting the busy timeout"))?;
        connection
            .pragma_update(None, "foreign_keys", true)
            .map_err(sqlite("enabling foreign keys"))?;
        if writable {
            // WAL lets readers go on while one writer commits; FULL makes a
            // commit survive power loss, which a record of disk ownership must.
            connection
                .pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
                .map_err(sqlite("enabling WAL"))?;
            connection
                .pragma_update(None, "synchronous", "FULL")
                .map_err(sqlite("setting synchronous"))?;
            schema::migrate(&mut connection).map_err(|source| StateError::Migrate {
                path: label.clone(),
                source,
            })?;
        } else {
            let version =
                schema::version(&connection).map_err(sqlite("reading the schema version"))?;
            if version > schema::CURRENT_VERSION {
                let source = schema::MigrateError::TooNew {
                    found: version,
                    supported: CURRENT_VERSION,
                };
                return Err(StateError::Migrate {
                    path: label,
                    source,
                });
            }
            if version < schema::CURRENT_VERSION {
                // An older file read without writing: migrate a private copy
                // in memory so the queries see the current schema.
                let mut copy = Connection::open_in_memory().map_err(sqlite("opening a copy"))?;
                copy.restore(
                    rusqlite::MAIN_DB,
                    label.as_str(),
                    None::<fn(rusqlite::backup::Progress)>,
                )
                .map_err(sqlite("copying an older state DB"))?;
                schema::migrate(&mut copy).map_err(|source| StateError::Migrate {
                    path: label.clone(),
                    source,
                })?;
                return Ok(StateDb {
                    connection: copy,
                    label,
                });
            }
        }
        Ok(StateDb { connection, label })
    }

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
