//! `xendisk import --legacy`: adopting a database written by the ancestor.
//!
//! The ancestor's schema: `vdisk_part(part_id, partition, extent_size)`,
//! `vdisks(vdisk_id, size, expires, expiry_time)` and
//! `vdisk_extents(vdisk_extent_no, vdisk_id, part_id, part_extent_no)`, sizes
//! in 512-byte sectors, `part_id` a device number, vdisk 0 the free pool, and
//! free space "the extents of expired vdisks". The whole legacy file is read
//! and checked before anything is written, and the import is one transaction.
//!
//! The file is data: a SQLite 3 database is opened read-only, the text of a
//! SQLite 2 `.dump` is loaded into a private scratch database by [`dump`],
//! which lets through only the ancestor's own statements, and either is read
//! under an authorizer that allows nothing but reading the three tables.
//!
//! The ancestor cut each partition into extents of that partition's size
//! and handed out extents from all of them, so one vdisk may span
//! partitions of different extent sizes. Partitions of one extent size form
//! one pool (`legacy`, `legacy-2`, ...); a vdisk keeps its exact extents, in
//! order, whichever pools they lie in, and its pool is its first extent's
//! (where a grow takes more). A pool's extent size governs new allocations
//! only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, params};

use super::{StateDb, StateError, to_unix};
use crate::desired::{Expiry, Size};
use crate::extent::DevNum;

mod dump;
#[cfg(test)]
mod tests;

const SQLITE2_HEADER: &[u8] = b"** This file contains an SQLite 2";
const SQLITE3_HEADER: &[u8] = b"SQLite format 3\0";

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is an SQLite 2 database, which SQLite 3 cannot open; convert it to SQL text \
         with the ancestor's own tool (`sqlite {path} .dump > legacy.sql`, Debian package \
         `sqlite`) and import that: xendisk import --legacy legacy.sql"
    )]
    Sqlite2 { path: String },
    #[error("{path} is neither an SQLite 3 database nor the text of `sqlite .dump`: {detail}")]
    NotADatabase { path: String, detail: String },
    #[error(
        "{path}:{line}: `{statement}` is refused, nothing was imported: {reason}. The \
         ancestor's dump holds only CREATE TABLE and INSERT INTO for its tables vdisks, \
         vdisk_extents and vdisk_part, between BEGIN TRANSACTION and COMMIT: dump its database \
         again (`sqlite xen_vdisks.sqlite .dump > xen_vdisks.sql`), or delete the statement from \
         a copy of this dump and import the copy"
    )]
    Refused {
        path: String,
        line: usize,
        statement: String,
        reason: String,
    },
    #[error(
        "{path}:{line}: `{statement}` does not run, nothing was imported: {detail}; repair it in \
         a copy of the dump and import the copy"
    )]
    BadStatement {
        path: String,
        line: usize,
        statement: String,
        detail: String,
    },
    #[error(
        "{path} does not have the ancestor's schema ({detail}); expected the tables \
         vdisks(vdisk_id, size, expires, expiry_time), \
         vdisk_extents(vdisk_extent_no, vdisk_id, part_id, part_extent_no) and \
         vdisk_part(part_id, partition, extent_size)"
    )]
    UnknownSchema { path: String, detail: String },
    #[error(
        "{path} is inconsistent, nothing was imported:\n  {}\nrepair these rows in a copy of the \
         legacy file and import the copy",
        problems.join("\n  ")
    )]
    Invalid { path: String, problems: Vec<String> },
    #[error(transparent)]
    State(#[from] StateError),
}

/// What an import did, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// `(pool name, extent size, device paths)`.
    pub pools: Vec<(String, Size, Vec<String>)>,
    /// Live vdisks imported, as `(vd-<id>, the pools its extents lie in)`:
    /// its own pool first, then any other, in order of first use.
    pub vdisks: Vec<(String, Vec<String>)>,
    /// Extents that became free space (free pool, expired and deleted vdisks).
    pub free_extents: u64,
}

struct Partition {
    path: String,
    extent_sectors: u64,
}

struct LegacyVdisk {
    size: u64,
    expiry: Expiry,
    live: bool,
}

/// One row of `vdisk_extents`.
struct LegacyExtent {
    order: i64,
    vdisk: i64,
    part: i64,
    index: u64,
}

/// The ancestor's database, read and checked, ready to import.
pub struct LegacyDb {
    partitions: BTreeMap<i64, Partition>,
    vdisks: BTreeMap<i64, LegacyVdisk>,
    extents: Vec<LegacyExtent>,
}

/// Reads and checks the ancestor's database at `path`; which vdisks are
/// live is decided at `now`, as its `vd_lookup` would.
pub fn read_legacy(path: &Path, now: jiff::Timestamp) -> Result<LegacyDb, LegacyError> {
    let name = path.display().to_string();
    let legacy = open_legacy(path, &name)?;
    let (partitions, vdisks, extents) = read_tables(&legacy, &name, now)?;
    check(&name, &partitions, &vdisks, &extents)?;
    Ok(LegacyDb {
        partitions,
        vdisks,
        extents,
    })
}

/// Imports a legacy database into an empty state DB, in one transaction.
pub fn import_legacy(
    target: &mut StateDb,
    legacy: &LegacyDb,
    now: jiff::Timestamp,
) -> Result<ImportReport, LegacyError> {
    if !target.is_empty()? {
        let path = target.label().to_owned();
        return Err(StateError::NotEmpty { path }.into());
    }
    write(
        target,
        &legacy.partitions,
        &legacy.vdisks,
        &legacy.extents,
        now,
    )
}

fn open_legacy(path: &Path, name: &str) -> Result<Connection, LegacyError> {
    let bytes = std::fs::read(path).map_err(|source| LegacyError::Read {
        path: name.to_owned(),
        source,
    })?;
    if bytes.starts_with(SQLITE2_HEADER) {
        return Err(LegacyError::Sqlite2 {
            path: name.to_owned(),
        });
    }
    let not_a_database = |detail: String| LegacyError::NotADatabase {
        path: name.to_owned(),
        detail,
    };
    if bytes.starts_with(SQLITE3_HEADER) {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut connection =
            Connection::open_with_flags(path, flags).map_err(|e| not_a_database(e.to_string()))?;
        dump::restrict_to_reading(&mut connection).map_err(|e| not_a_database(e.to_string()))?;
        return Ok(connection);
    }
    let text =
        String::from_utf8(bytes).map_err(|_| not_a_database("the file is not text".to_owned()))?;
    load_dump(name, &text)
}

/// Loads `.dump` text into a scratch database; `name` is the file, for messages.
fn load_dump(name: &str, text: &str) -> Result<Connection, LegacyError> {
    dump::load(text).map_err(|error| {
        let path = name.to_owned();
        let (line, statement) = (error.line, error.statement);
        match error.problem {
            dump::Problem::Refused(reason) => LegacyError::Refused {
                path,
                line,
                statement,
                reason,
            },
            dump::Problem::Failed(detail) => LegacyError::BadStatement {
                path,
                line,
                statement,
                detail,
            },
        }
    })
}

type Tables = (
    BTreeMap<i64, Partition>,
    BTreeMap<i64, LegacyVdisk>,
    Vec<LegacyExtent>,
);

fn read_tables(
    legacy: &Connection,
    name: &str,
    now: jiff::Timestamp,
) -> Result<Tables, LegacyError> {
    let schema_error = |detail: String| LegacyError::UnknownSchema {
        path: name.to_owned(),
        detail,
    };
    let mut problems = Vec::new();
    let rows = |sql: &str, table: &str| -> Result<Vec<Vec<Value>>, LegacyError> {
        let mut statement = legacy
            .prepare(sql)
            .map_err(|e| schema_error(format!("table {table}: {e}")))?;
        let columns = statement.column_count();
        let collected: rusqlite::Result<Vec<Vec<Value>>> = statement
            .query_map([], |row| {
                (0..columns)
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .and_then(Iterator::collect);
        collected.map_err(|e| schema_error(format!("table {table}: {e}")))
    };

    let mut partitions = BTreeMap::new();
    for row in rows(
        "SELECT part_id, partition, extent_size FROM vdisk_part",
        "vdisk_part",
    )? {
        let (Some(part), Some(extent_sectors)) = (integer(&row[0]), integer(&row[2])) else {
            problems.push(format!(
                "vdisk_part row {row:?} has a non-numeric part_id or extent_size"
            ));
            continue;
        };
        let path = text(&row[1]).unwrap_or_default();
        if extent_sectors <= 0 {
            problems.push(format!(
                "partition {path} (part_id {part}) has extent size {extent_sectors}"
            ));
            continue;
        }
        if partitions
            .insert(
                part,
                Partition {
                    path: path.clone(),
                    extent_sectors: extent_sectors as u64,
                },
            )
            .is_some()
        {
            problems.push(format!("part_id {part} is listed twice in vdisk_part"));
        }
    }

    let mut vdisks = BTreeMap::new();
    for row in rows(
        "SELECT vdisk_id, size, expires, expiry_time FROM vdisks",
        "vdisks",
    )? {
        let (Some(id), Some(size)) = (integer(&row[0]), integer(&row[1])) else {
            problems.push(format!(
                "vdisks row {row:?} has a non-numeric vdisk_id or size"
            ));
            continue;
        };
        let expires = integer(&row[2]).unwrap_or(0) != 0;
        let expiry = if expires {
            match text(&row[3]).as_deref().and_then(parse_legacy_time) {
                Some(at) => Expiry::At(at),
                None => {
                    problems.push(format!(
                        "vdisk {id} expires but its expiry_time {:?} is not a time",
                        row[3]
                    ));
                    continue;
                }
            }
        } else {
            Expiry::Never
        };
        // As the ancestor's vd_lookup: live when it never expires or its time is still ahead.
        let live = id != 0
            && match expiry {
                Expiry::At(at) => at > now,
                _ => true,
            };
        if vdisks
            .insert(
                id,
                LegacyVdisk {
                    size: size.max(0) as u64,
                    expiry,
                    live,
                },
            )
            .is_some()
        {
            problems.push(format!("vdisk_id {id} is listed twice in vdisks"));
        }
    }

    let mut extents = Vec::new();
    for row in rows(
        "SELECT vdisk_extent_no, vdisk_id, part_id, part_extent_no FROM vdisk_extents",
        "vdisk_extents",
    )? {
        match (
            integer(&row[0]),
            integer(&row[1]),
            integer(&row[2]),
            integer(&row[3]),
        ) {
            (Some(order), Some(vdisk), Some(part), Some(index)) if index >= 0 => {
                extents.push(LegacyExtent {
                    order,
                    vdisk,
                    part,
                    index: index as u64,
                })
            }
            _ => problems.push(format!(
                "vdisk_extents row {row:?} has a missing or negative number"
            )),
        }
    }
    if problems.is_empty() {
        Ok((partitions, vdisks, extents))
    } else {
        Err(LegacyError::Invalid {
            path: name.to_owned(),
            problems,
        })
    }
}

/// SQLite 2 stored everything as text; SQLite 3 dumps keep integers.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Integer(n) => Some(*n),
        Value::Real(r) if r.fract() == 0.0 => Some(*r as i64),
        Value::Text(t) => t.trim().parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Text(t) => Some(t.clone()),
        Value::Integer(n) => Some(n.to_string()),
        _ => None,
    }
}

/// SQLite's `datetime('now')` form, `YYYY-MM-DD HH:MM:SS`, in UTC.
fn parse_legacy_time(text: &str) -> Option<jiff::Timestamp> {
    let civil: jiff::civil::DateTime = text.trim().replacen(' ', "T", 1).parse().ok()?;
    jiff::tz::TimeZone::UTC.to_timestamp(civil).ok()
}

fn check(
    name: &str,
    partitions: &BTreeMap<i64, Partition>,
    vdisks: &BTreeMap<i64, LegacyVdisk>,
    extents: &[LegacyExtent],
) -> Result<(), LegacyError> {
    let mut problems = Vec::new();
    let mut places: BTreeMap<(i64, u64), i64> = BTreeMap::new();
    let mut orders: BTreeSet<(i64, i64)> = BTreeSet::new();
    let mut held: BTreeMap<i64, u64> = BTreeMap::new();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for extent in extents {
        let Some(partition) = partitions.get(&extent.part) else {
            problems.push(format!(
                "extent {} of vdisk {} is on part_id {}, which vdisk_part does not list (a dangling partition)",
                extent.order, extent.vdisk, extent.part
            ));
            continue;
        };
        if !vdisks.contains_key(&extent.vdisk) {
            problems.push(format!(
                "extent {} names vdisk {}, which vdisks does not list",
                extent.order, extent.vdisk
            ));
        }
        if let Some(other) = places.insert((extent.part, extent.index), extent.vdisk) {
            problems.push(format!(
                "extent {} of {} (part_id {}) is referenced twice, by vdisks {other} and {}",
                extent.index, partition.path, extent.part, extent.vdisk
            ));
        }
        let end =
            (extent.index.checked_add(1)).and_then(|n| n.checked_mul(partition.extent_sectors));
        if end.is_none_or(|end| end > i64::MAX as u64) {
            problems.push(format!(
                "extent {} of {} (part_id {}) ends past the last sector a disk can have",
                extent.index, partition.path, extent.part
            ));
        }
        // Order matters only where a vdisk keeps its extents.
        let live = vdisks.get(&extent.vdisk).is_some_and(|v| v.live);
        if live && !orders.insert((extent.vdisk, extent.order)) {
            problems.push(format!(
                "vdisk {} has two extents numbered {}",
                extent.vdisk, extent.order
            ));
        }
        // Saturating: a corrupt extent size must be reported, not overflow.
        let sum = held.entry(extent.vdisk).or_default();
        *sum = sum.saturating_add(partition.extent_sectors);
        *counts.entry(extent.vdisk).or_default() += 1;
    }
    for (id, vdisk) in vdisks.iter().filter(|(_, v)| v.live) {
        // Its extents may be of different sizes (partitions formatted
        // with different extent sizes): only their sum must hold it.
        if !counts.contains_key(id) {
            problems.push(format!("live vdisk {id} has no extents"));
        }
        let covered = held.get(id).copied().unwrap_or(0);
        if covered < vdisk.size {
            problems.push(format!(
                "live vdisk {id} has {covered} sectors of extents but a size of {} sectors",
                vdisk.size
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LegacyError::Invalid {
            path: name.to_owned(),
            problems,
        })
    }
}

fn write(
    target: &mut StateDb,
    partitions: &BTreeMap<i64, Partition>,
    vdisks: &BTreeMap<i64, LegacyVdisk>,
    extents: &[LegacyExtent],
    now: jiff::Timestamp,
) -> Result<ImportReport, LegacyError> {
    // One pool per extent size, the one holding the lowest part_id first.
    let mut sizes: Vec<u64> = Vec::new();
    for partition in partitions.values() {
        if !sizes.contains(&partition.extent_sectors) {
            sizes.push(partition.extent_sectors);
        }
    }
    let pool_of = |part: i64| {
        let extent_sectors = partitions.get(&part).map(|p| p.extent_sectors);
        sizes.iter().position(|s| Some(*s) == extent_sectors)
    };
    let mut ordered: Vec<&LegacyExtent> = extents.iter().collect();
    ordered.sort_by_key(|e| (e.vdisk, e.order));
    // The pools each live vdisk's extents lie in, in order of first use: its
    // own is its first extent's.
    let mut spans: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for extent in ordered
        .iter()
        .filter(|e| vdisks.get(&e.vdisk).is_some_and(|v| v.live))
    {
        let pools = spans.entry(extent.vdisk).or_default();
        if let Some(pool) = pool_of(extent.part).filter(|p| !pools.contains(p)) {
            pools.push(pool);
        }
    }
    let pool_names: Vec<String> = (0..sizes.len())
        .map(|n| {
            if n == 0 {
                "legacy".to_owned()
            } else {
                format!("legacy-{}", n + 1)
            }
        })
        .collect();
    // `check` made sure every extent's partition and vdisk are listed; an
    // inconsistency here is refused, not a panic.
    let label = target.label().to_owned();
    let unlisted = |what: String| StateError::Inconsistent {
        path: label.clone(),
        problems: format!("the legacy file's rows do not match up: {what}"),
    };
    let report = target.write(now, "importing a legacy database", |w| {
        let error = w.error("importing a legacy database");
        let mut report = ImportReport { pools: Vec::new(), vdisks: Vec::new(), free_extents: 0 };
        let mut pool_ids = Vec::new();
        for (name, &extent_sectors) in pool_names.iter().zip(&sizes) {
            w.tx.execute("INSERT INTO pools (name, extent_sectors) VALUES (?1, ?2)", params![name, extent_sectors as i64])
                .map_err(&error)?;
            pool_ids.push(w.tx.last_insert_rowid());
            report.pools.push((name.clone(), Size::from_sectors(extent_sectors), Vec::new()));
        }
        let mut device_ids = BTreeMap::new();
        for (part, partition) in partitions {
            let pool = pool_of(*part).ok_or_else(|| unlisted(format!("part_id {part}")))?;
            let highest = extents.iter().filter(|e| e.part == *part).map(|e| e.index + 1).max().unwrap_or(0);
            let device = DevNum::from_rdev(*part as u64);
            // The partition's real size and place on its disk are not in
            // the legacy file; observation of the host fills them in.
            w.tx.execute(
                "INSERT INTO pool_devices (pool_id, path, major, minor, sectors, added_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    pool_ids[pool],
                    partition.path,
                    device.major,
                    device.minor,
                    // `check` bounded every extent's end by i64::MAX.
                    highest.saturating_mul(partition.extent_sectors) as i64,
                    w.now
                ],
            )
            .map_err(&error)?;
            device_ids.insert(*part, w.tx.last_insert_rowid());
            report.pools[pool].2.push(partition.path.clone());
        }
        let mut vdisk_ids = BTreeMap::new();
        for (id, vdisk) in vdisks.iter().filter(|(_, v)| v.live) {
            let Some(pools) = spans.get(id).filter(|p| !p.is_empty()) else {
                return Err(unlisted(format!("vdisk {id} has no extents")));
            };
            let name = format!("vd-{id}");
            let expires_at = match vdisk.expiry {
                Expiry::At(at) => Some(to_unix(at)),
                _ => None,
            };
            w.tx.execute(
                "INSERT INTO vdisks (name, pool_id, size_sectors, expiry, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![name, pool_ids[pools[0]], vdisk.size.clamp(1, i64::MAX as u64) as i64, vdisk.expiry.to_string(), w.now, expires_at],
            )
            .map_err(&error)?;
            vdisk_ids.insert(*id, w.tx.last_insert_rowid());
            report.vdisks.push((name, pools.iter().map(|p| pool_names[*p].clone()).collect()));
        }
        let mut position: BTreeMap<i64, i64> = BTreeMap::new();
        let mut insert = w
            .tx
            .prepare("INSERT INTO extents (device_id, idx, vdisk_id, position, dirty) VALUES (?1, ?2, ?3, ?4, ?5)")
            .map_err(&error)?;
        for extent in ordered {
            let device_id = device_ids.get(&extent.part).ok_or_else(|| unlisted(format!("part_id {}", extent.part)))?;
            match vdisk_ids.get(&extent.vdisk) {
                Some(vdisk_id) => {
                    let next = position.entry(*vdisk_id).or_insert(0);
                    insert.execute(params![device_id, extent.index as i64, vdisk_id, *next, 0]).map_err(&error)?;
                    *next += 1;
                }
                None => {
                    // Free pool, expired or deleted: free, and dirty, since
                    // the ancestor never zeroed anything.
                    insert.execute(params![device_id, extent.index as i64, None::<i64>, None::<i64>, 1]).map_err(&error)?;
                    report.free_extents += 1;
                }
            }
        }
        Ok(report)
    })?;
    Ok(report)
}
