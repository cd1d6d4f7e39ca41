//! Pool devices: adding one to a pool (cut into extents), removing one that
//! no live vdisk uses, and recording scrubs. Each is one transaction, safe
//! to repeat.

use rusqlite::{OptionalExtension, params};

use super::read::LIVE;
use super::write::{Write, pool_name};
use super::{DeviceGeometry, StateDb, StateError};
use crate::desired::Size;
use crate::extent::DevNum;

impl StateDb {
    /// Adds a device to a pool (creating the pool), cut into
    /// `floor(sectors / extent)` extents, all marked dirty: nothing is known
    /// of what the device held before. Returns the number of extents; adding
    /// the same device to the same pool again changes nothing.
    pub fn add_pool_device(
        &mut self,
        pool: &str,
        extent_size: Size,
        device: &DeviceGeometry,
        now: jiff::Timestamp,
    ) -> Result<u64, StateError> {
        self.write(now, "adding a pool device", |w| {
            let extent_sectors = extent_size.sectors().max(1);
            let pool_id = ensure_pool(w, pool, extent_sectors)?;
            if let Some(extents) = existing_device(w, pool_id, device)? {
                return Ok(extents);
            }
            let extents = device.sectors / extent_sectors;
            if extents == 0 {
                return Err(StateError::DeviceTooSmall {
                    path: device.path.clone(),
                    pool: pool.to_owned(),
                    extent: extent_size,
                });
            }
            let error = w.error("adding a pool device");
            let (disk_major, disk_minor, disk_start) = match device.on_disk {
                Some(place) => (Some(place.disk.major), Some(place.disk.minor), Some(place.start as i64)),
                None => (None, None, None),
            };
            w.tx.execute(
                "INSERT INTO pool_devices (pool_id, path, major, minor, sectors, disk_major, disk_minor, disk_start, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    pool_id,
                    device.path,
                    device.device.major,
                    device.device.minor,
                    device.sectors as i64,
                    disk_major,
                    disk_minor,
                    disk_start,
                    w.now
                ],
            )
            .map_err(&error)?;
            let device_id = w.tx.last_insert_rowid();
            let mut insert = w.tx.prepare("INSERT INTO extents (device_id, idx, dirty) VALUES (?1, ?2, 1)").map_err(&error)?;
            for idx in 0..extents {
                insert.execute(params![device_id, idx as i64]).map_err(&error)?;
            }
            Ok(extents)
        })
    }

    /// Removes a device from its pool; refused while a live vdisk holds any
    /// of its extents. A pool left with no device and no vdisk goes too.
    pub fn remove_pool_device(
        &mut self,
        path: &str,
        now: jiff::Timestamp,
    ) -> Result<(), StateError> {
        self.write(now, "removing a pool device", |w| {
            let error = w.error("removing a pool device");
            let found: Option<(i64, i64)> =
                w.tx.query_row(
                    "SELECT id, pool_id FROM pool_devices WHERE path = ?1",
                    params![path],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(&error)?;
            let Some((device_id, pool_id)) = found else {
                return Err(StateError::UnknownDevice(path.to_owned()));
            };
            let holders: Option<String> =
                w.tx.query_row(
                    "SELECT group_concat(name, ', ') FROM (SELECT DISTINCT v.name FROM extents e
                     JOIN vdisks v ON v.id = e.vdisk_id WHERE e.device_id = ?1 ORDER BY v.name)",
                    params![device_id],
                    |row| row.get(0),
                )
                .map_err(&error)?;
            if let Some(vdisks) = holders {
                return Err(StateError::DeviceInUse {
                    path: path.to_owned(),
                    vdisks,
                });
            }
            w.tx.execute(
                "DELETE FROM extents WHERE device_id = ?1",
                params![device_id],
            )
            .map_err(&error)?;
            w.tx.execute("DELETE FROM pool_devices WHERE id = ?1", params![device_id])
                .map_err(&error)?;
            let pool_in_use: bool =
                w.tx.query_row(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM pool_devices WHERE pool_id = ?2)
                         OR EXISTS (SELECT 1 FROM vdisks v WHERE v.pool_id = ?2 AND {LIVE})"
                    ),
                    params![w.now, pool_id],
                    |row| row.get(0),
                )
                .map_err(&error)?;
            if !pool_in_use {
                w.tx.execute("DELETE FROM vdisks WHERE pool_id = ?1", params![pool_id])
                    .map_err(&error)?;
                w.tx.execute("DELETE FROM pools WHERE id = ?1", params![pool_id])
                    .map_err(&error)?;
            }
            Ok(())
        })
    }

    /// Records that the extents of a pool device from `first` on, `count` of
    /// them, were zeroed.
    pub fn mark_scrubbed(
        &mut self,
        device: DevNum,
        first: u64,
        count: u64,
        now: jiff::Timestamp,
    ) -> Result<(), StateError> {
        self.write(now, "recording a scrub", |w| {
            w.tx.execute(
                "UPDATE extents SET dirty = 0 WHERE idx >= ?3 AND idx < ?3 + ?4
                 AND device_id = (SELECT id FROM pool_devices WHERE major = ?1 AND minor = ?2)",
                params![device.major, device.minor, first as i64, count as i64],
            )
            .map_err(w.error("recording a scrub"))?;
            Ok(())
        })
    }
}

/// The pool's id, creating it with this extent size if needed.
fn ensure_pool(w: &Write<'_>, pool: &str, extent_sectors: u64) -> Result<i64, StateError> {
    let error = w.error("creating a pool");
    match w.pool(pool)? {
        None => {
            w.tx.execute(
                "INSERT INTO pools (name, extent_sectors) VALUES (?1, ?2)",
                params![pool, extent_sectors as i64],
            )
            .map_err(&error)?;
            Ok(w.tx.last_insert_rowid())
        }
        Some((id, existing)) if existing == extent_sectors => Ok(id),
        Some((id, existing)) => {
            let has_devices: bool =
                w.tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM pool_devices WHERE pool_id = ?1)",
                    params![id],
                    |row| row.get(0),
                )
                .map_err(&error)?;
            if has_devices {
                return Err(StateError::ExtentSizeMismatch {
                    pool: pool.to_owned(),
                    existing: Size::from_sectors(existing),
                    requested: Size::from_sectors(extent_sectors),
                });
            }
            w.tx.execute(
                "UPDATE pools SET extent_sectors = ?1 WHERE id = ?2",
                params![extent_sectors as i64, id],
            )
            .map_err(&error)?;
            Ok(id)
        }
    }
}

/// If the device is already recorded: its extent count when it is the same
/// device in the same pool, an error when it is elsewhere or has changed.
fn existing_device(
    w: &Write<'_>,
    pool_id: i64,
    device: &DeviceGeometry,
) -> Result<Option<u64>, StateError> {
    let found: Option<(i64, String, u32, u32)> = w
        .tx
        .query_row(
            "SELECT pool_id, path, major, minor FROM pool_devices WHERE path = ?1 OR (major = ?2 AND minor = ?3)",
            params![device.path, device.device.major, device.device.minor],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()
        .map_err(w.error("reading pool devices"))?;
    let Some((found_pool, path, major, minor)) = found else {
        return Ok(None);
    };
    let recorded = DevNum::new(major, minor);
    if found_pool != pool_id {
        return Err(StateError::DeviceInOtherPool {
            path,
            device: recorded,
            pool: pool_name(w, found_pool)?,
        });
    }
    if path != device.path || recorded != device.device {
        return Err(StateError::DeviceChanged {
            path: device.path.clone(),
            recorded: format!("{path} ({recorded})"),
            given: format!("{} ({})", device.path, device.device),
        });
    }
    let extents: i64 = w
        .tx
        .query_row(
            "SELECT count(*) FROM extents e JOIN pool_devices d ON d.id = e.device_id WHERE d.path = ?1",
            params![device.path],
            |row| row.get(0),
        )
        .map_err(w.error("reading pool devices"))?;
    Ok(Some(extents as u64))
}
