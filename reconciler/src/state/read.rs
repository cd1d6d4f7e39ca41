//! Reading the state DB into plain values. Nothing here writes: expired
//! vdisks are treated as free space without being reclaimed.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use super::{
    DiskPlace, PoolDeviceState, PoolState, StateDb, StateError, StateSnapshot, VdiskState,
    from_unix, to_unix,
};
use super::{alloc, overlap};
use crate::desired::{Expiry, Size};
use crate::extent::{DevNum, SectorRange};

/// SQL condition: the vdisk row `v` is live at `?1` (unix seconds).
pub(super) const LIVE: &str =
    "v.deleted_at IS NULL AND (v.expires_at IS NULL OR v.expires_at > ?1)";

/// SQL condition: the vdisk row `v` has expired by `?1` but the next write
/// has not reclaimed its extents yet.
const UNRECLAIMED: &str =
    "v.deleted_at IS NULL AND v.expires_at IS NOT NULL AND v.expires_at <= ?1";

impl StateDb {
    /// The whole state at `now`.
    pub fn snapshot(&self, now: jiff::Timestamp) -> Result<StateSnapshot, StateError> {
        let now = to_unix(now);
        let mut pools = self.pools()?;
        let mut devices = self.devices()?;
        self.count_extents(now, &mut devices)?;
        for (pool_id, device) in devices.into_values() {
            if let Some(pool) = pools.get_mut(&pool_id) {
                pool.devices.push(device);
            }
        }
        let mut pools: Vec<PoolState> = pools.into_values().collect();
        for pool in &mut pools {
            pool.devices.sort_by(|a, b| a.path.cmp(&b.path));
        }
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        let vdisks = self.vdisks(now, LIVE)?;
        let expired = self.vdisks(now, UNRECLAIMED)?;
        let unscrubbed_releases = self.unscrubbed_releases(&pools)?;
        Ok(StateSnapshot {
            pools,
            vdisks,
            expired,
            unscrubbed_releases,
        })
    }

    /// Pools by row id, without devices yet.
    fn pools(&self) -> Result<BTreeMap<i64, PoolState>, StateError> {
        let error = self.sqlite_error("reading pools");
        let mut statement = self
            .connection
            .prepare("SELECT id, name, extent_sectors FROM pools")
            .map_err(&error)?;
        let rows = statement
            .query_map([], |row| {
                let extent_sectors: i64 = row.get(2)?;
                Ok((
                    row.get::<_, i64>(0)?,
                    PoolState {
                        name: row.get(1)?,
                        extent_size: Size::from_sectors(extent_sectors as u64),
                        devices: Vec::new(),
                    },
                ))
            })
            .map_err(&error)?;
        rows.collect::<Result<_, _>>().map_err(&error)
    }

    /// Every pool device's path, by device number: what a step that writes
    /// a vdisk's sectors needs, without reading the whole state.
    pub fn pool_device_paths(&self) -> Result<BTreeMap<DevNum, String>, StateError> {
        let error = self.sqlite_error("reading pool device paths");
        let mut statement = self
            .connection
            .prepare_cached("SELECT major, minor, path FROM pool_devices")
            .map_err(&error)?;
        let rows = statement
            .query_map([], |row| {
                Ok((DevNum::new(row.get(0)?, row.get(1)?), row.get(2)?))
            })
            .map_err(&error)?;
        rows.collect::<Result<_, _>>().map_err(&error)
    }

    /// Devices by row id, with their pool's row id; counts still zero.
    fn devices(&self) -> Result<BTreeMap<i64, (i64, PoolDeviceState)>, StateError> {
        let error = self.sqlite_error("reading pool devices");
        let mut statement = self
            .connection
            .prepare(
                "SELECT d.id, d.pool_id, d.path, d.major, d.minor, d.sectors,
                        d.disk_major, d.disk_minor, d.disk_start,
                        (SELECT count(*) FROM extents e WHERE e.device_id = d.id)
                 FROM pool_devices d",
            )
            .map_err(&error)?;
        let rows = statement
            .query_map([], |row| {
                let disk: Option<(u32, u32, i64)> = match (row.get(6)?, row.get(7)?, row.get(8)?) {
                    (Some(major), Some(minor), Some(start)) => Some((major, minor, start)),
                    _ => None,
                };
                let device = PoolDeviceState {
                    id: row.get(0)?,
                    path: row.get(2)?,
                    device: DevNum::new(row.get(3)?, row.get(4)?),
                    sectors: row.get::<_, i64>(5)? as u64,
                    on_disk: disk.map(|(major, minor, start)| DiskPlace {
                        disk: DevNum::new(major, minor),
                        start: start as u64,
                    }),
                    extents: row.get::<_, i64>(9)? as u64,
                    free: 0,
                    used: 0,
                    dirty: 0,
                    free_runs: Vec::new(),
                    dirty_runs: Vec::new(),
                };
                Ok((row.get::<_, i64>(0)?, (row.get::<_, i64>(1)?, device)))
            })
            .map_err(&error)?;
        rows.collect::<Result<_, _>>().map_err(&error)
    }

    /// Fills in free, used and dirty counts and the free and dirty runs, in
    /// one pass over the extents in device order. A free extent is dirty
    /// when flagged, or when a vdisk that expired still owns it (its data is
    /// there until the next write reclaims and flags it).
    fn count_extents(
        &self,
        now: i64,
        devices: &mut BTreeMap<i64, (i64, PoolDeviceState)>,
    ) -> Result<(), StateError> {
        let error = self.sqlite_error("reading extents");
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT e.device_id, e.idx, e.dirty OR e.vdisk_id IS NOT NULL, v.id IS NOT NULL
                 FROM extents e LEFT JOIN vdisks v ON v.id = e.vdisk_id AND {LIVE}
                 ORDER BY e.device_id, e.idx"
            ))
            .map_err(&error)?;
        let mut rows = statement.query(params![now]).map_err(&error)?;
        let (mut free, mut dirty_free) = (Vec::new(), Vec::new());
        while let Some(row) = rows.next().map_err(&error)? {
            let (device_id, idx, dirty, used): (i64, i64, bool, bool) = (
                row.get(0).map_err(&error)?,
                row.get(1).map_err(&error)?,
                row.get(2).map_err(&error)?,
                row.get(3).map_err(&error)?,
            );
            let Some((_, device)) = devices.get_mut(&device_id) else {
                continue;
            };
            if used {
                device.used += 1;
                continue;
            }
            device.free += 1;
            free.push((device_id, idx as u64));
            if dirty {
                device.dirty += 1;
                dirty_free.push((device_id, idx as u64));
            }
        }
        for run in alloc::runs_of(free) {
            if let Some((_, device)) = devices.get_mut(&run.device) {
                device.free_runs.push(run);
            }
        }
        for run in alloc::runs_of(dirty_free) {
            if let Some((_, device)) = devices.get_mut(&run.device) {
                device.dirty_runs.push(run);
            }
        }
        Ok(())
    }

    /// Vdisks matching `condition` (on `v`, with `?1` the time), with their
    /// extents in order. Each extent is of its own device's pool's size: an
    /// imported vdisk may span pools of different extent sizes.
    fn vdisks(&self, now: i64, condition: &str) -> Result<Vec<VdiskState>, StateError> {
        let error = self.sqlite_error("reading vdisks");
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT v.id, v.name, p.name, v.size_sectors, v.expiry, v.created_at, v.expires_at
                 FROM vdisks v JOIN pools p ON p.id = v.pool_id
                 WHERE {condition} ORDER BY v.name"
            ))
            .map_err(&error)?;
        let rows = statement
            .query_map(params![now], |row| {
                let expiry: String = row.get(4)?;
                Ok((
                    row.get::<_, i64>(0)?,
                    VdiskState {
                        name: row.get(1)?,
                        pool: row.get(2)?,
                        size: Size::from_sectors(row.get::<_, i64>(3)? as u64),
                        allocated: Size::from_sectors(0),
                        expiry: expiry.parse().unwrap_or(Expiry::Never),
                        created_at: from_unix(row.get(5)?),
                        expires_at: row.get::<_, Option<i64>>(6)?.map(from_unix),
                        segments: 0,
                        extents: Vec::new(),
                    },
                ))
            })
            .map_err(&error)?;
        let mut vdisks: Vec<(i64, VdiskState)> = rows.collect::<Result<_, _>>().map_err(&error)?;
        let mut index: BTreeMap<i64, usize> = BTreeMap::new();
        for (i, (id, _)) in vdisks.iter().enumerate() {
            index.insert(*id, i);
        }
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT e.vdisk_id, d.major, d.minor, e.idx, d.id, dp.extent_sectors
                 FROM extents e JOIN vdisks v ON v.id = e.vdisk_id
                 JOIN pool_devices d ON d.id = e.device_id JOIN pools dp ON dp.id = d.pool_id
                 WHERE {condition} ORDER BY e.vdisk_id, e.position"
            ))
            .map_err(&error)?;
        let mut rows = statement.query(params![now]).map_err(&error)?;
        let mut last: Option<(i64, i64, u64)> = None; // vdisk, device row, idx
        while let Some(row) = rows.next().map_err(&error)? {
            let vdisk_id: i64 = row.get(0).map_err(&error)?;
            let device = DevNum::new(row.get(1).map_err(&error)?, row.get(2).map_err(&error)?);
            let idx = row.get::<_, i64>(3).map_err(&error)? as u64;
            let device_row: i64 = row.get(4).map_err(&error)?;
            let extent_sectors = row.get::<_, i64>(5).map_err(&error)? as u64;
            let Some(&i) = index.get(&vdisk_id) else {
                continue;
            };
            let (_, vdisk) = &mut vdisks[i];
            let continues = last == Some((vdisk_id, device_row, idx.wrapping_sub(1)));
            if !continues {
                vdisk.segments += 1;
            }
            last = Some((vdisk_id, device_row, idx));
            vdisk.extents.push(SectorRange {
                device,
                start: idx.saturating_mul(extent_sectors),
                sectors: extent_sectors,
            });
            vdisk.allocated =
                Size::from_sectors(vdisk.allocated.sectors().saturating_add(extent_sectors));
        }
        Ok(vdisks.into_iter().map(|(_, vdisk)| vdisk).collect())
    }

    /// A live vdisk's extents in order, as the ancestor's `vd_lookup` gave
    /// them: `(pool device, start sector in it, sectors)`.
    pub fn lookup(&self, name: &str, now: jiff::Timestamp) -> Result<Vec<SectorRange>, StateError> {
        let error = self.sqlite_error("looking up a vdisk");
        let row: Option<i64> = self
            .connection
            .query_row(
                &format!("SELECT v.id FROM vdisks v WHERE v.name = ?2 AND {LIVE}"),
                params![to_unix(now), name],
                |row| row.get(0),
            )
            .optional()
            .map_err(&error)?;
        let Some(id) = row else {
            return Err(StateError::UnknownVdisk(name.to_owned()));
        };
        // Each extent of its own device's pool's size, as `vdisks` reads them.
        let mut statement = self
            .connection
            .prepare(
                "SELECT d.major, d.minor, e.idx, p.extent_sectors
                 FROM extents e JOIN pool_devices d ON d.id = e.device_id JOIN pools p ON p.id = d.pool_id
                 WHERE e.vdisk_id = ?1 ORDER BY e.position",
            )
            .map_err(&error)?;
        let rows = statement
            .query_map(params![id], |row| {
                let extent_sectors = row.get::<_, i64>(3)? as u64;
                Ok(SectorRange {
                    device: DevNum::new(row.get(0)?, row.get(1)?),
                    start: (row.get::<_, i64>(2)? as u64).saturating_mul(extent_sectors),
                    sectors: extent_sectors,
                })
            })
            .map_err(&error)?;
        rows.collect::<Result<_, _>>().map_err(&error)
    }

    /// Whether the DB records nothing at all (no pool, no vdisk, ever).
    pub fn is_empty(&self) -> Result<bool, StateError> {
        let error = self.sqlite_error("checking for contents");
        self.connection
            .query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM pools) AND NOT EXISTS (SELECT 1 FROM vdisks)",
                [],
                |row| row.get(0),
            )
            .map_err(error)
    }

    /// SQLite's integrity check and xendisk's own invariants (among them,
    /// that no two pool devices share a sector); the problems found, none
    /// when consistent.
    pub fn verify(&self, now: jiff::Timestamp) -> Result<Vec<String>, StateError> {
        let error = self.sqlite_error("verifying");
        let mut problems = Vec::new();
        let integrity: String = self
            .connection
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .map_err(&error)?;
        if integrity != "ok" {
            problems.push(format!("SQLite integrity check: {integrity}"));
        }
        let checks: &[(&str, &str)] = &[
            // Each extent holds its own device's pool's extent size: a vdisk
            // imported from the ancestor may span pools of different sizes.
            (
                "live vdisks whose extents do not cover their size",
                &format!(
                    "SELECT v.name FROM vdisks v WHERE {LIVE}
                     AND (SELECT coalesce(sum(p.extent_sectors), 0) FROM extents e
                          JOIN pool_devices d ON d.id = e.device_id JOIN pools p ON p.id = d.pool_id
                          WHERE e.vdisk_id = v.id) < v.size_sectors"
                ),
            ),
            // A vdisk's pool is where its first extent lies (and where new
            // extents come from; every write takes them from that pool only).
            (
                "vdisks whose first extent is not in their pool",
                "SELECT v.name FROM extents e JOIN vdisks v ON v.id = e.vdisk_id
                 JOIN pool_devices d ON d.id = e.device_id WHERE e.position = 0 AND d.pool_id != v.pool_id",
            ),
            (
                "vdisks whose extent positions have gaps",
                &format!(
                    "SELECT v.name FROM vdisks v WHERE {LIVE} AND
                     (SELECT coalesce(max(position) + 1, 0) - count(*) FROM extents e WHERE e.vdisk_id = v.id) != 0"
                ),
            ),
            (
                "deleted vdisks still owning extents",
                "SELECT DISTINCT v.name FROM extents e JOIN vdisks v ON v.id = e.vdisk_id WHERE v.deleted_at IS NOT NULL",
            ),
            (
                "extents beyond the end of their device",
                "SELECT d.path FROM extents e JOIN pool_devices d ON d.id = e.device_id
                 JOIN pools p ON p.id = d.pool_id WHERE (e.idx + 1) * p.extent_sectors > d.sectors",
            ),
        ];
        for (what, sql) in checks {
            let mut statement = self.connection.prepare(sql).map_err(&error)?;
            let now = to_unix(now);
            let arguments: &[&dyn rusqlite::ToSql] = if statement.parameter_count() == 0 {
                &[]
            } else {
                &[&now]
            };
            let rows = statement.query_map(arguments, |row| row.get(0));
            let names: Vec<String> = rows
                .map_err(&error)?
                .collect::<Result<_, _>>()
                .map_err(&error)?;
            if !names.is_empty() {
                problems.push(format!("{what}: {}", names.join(", ")));
            }
        }
        // Not an SQL query: the devices' places on their disks are compared
        // with a sweep, each overlapping pair a problem of its own.
        let pools = self.snapshot(now)?.pools;
        problems.extend(overlap::overlaps(&pools).iter().map(ToString::to_string));
        Ok(problems)
    }
}
