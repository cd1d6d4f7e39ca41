//! Changing vdisks in the state DB, and the transaction every change runs
//! in: `BEGIN IMMEDIATE`, reclaim expired vdisks, check, change, commit, or
//! change nothing. Running an operation twice with the same arguments is
//! harmless, so an interrupted apply can simply run it again.

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

use super::alloc::{self, Run};
use super::read::LIVE;
use super::{StateDb, StateError, expiry_instant, from_unix, to_unix};
use crate::desired::{Expiry, Size};
use crate::extent::SectorRange;

/// A write transaction with what every step needs to report errors.
pub(super) struct Write<'a> {
    pub(super) tx: Transaction<'a>,
    label: &'a str,
    pub(super) now: i64,
}

impl Write<'_> {
    /// What the DB is called in messages.
    pub(super) fn label(&self) -> &str {
        self.label
    }

    pub(super) fn error(
        &self,
        operation: &'static str,
    ) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |source| StateError::Sqlite {
            path: self.label.to_owned(),
            operation,
            source,
        }
    }

    /// The extents of vdisks whose expiry has passed become free (and dirty);
    /// the vdisks are marked deleted at their expiry time.
    fn reclaim_expired(&self) -> Result<(), StateError> {
        const EXPIRED: &str = "deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?1";
        // Every write asks; almost always there is nothing to reclaim, and
        // the index on expiries answers that alone.
        let any: bool = self
            .tx
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM vdisks WHERE {EXPIRED})"
            ))
            .and_then(|mut query| query.query_row(params![self.now], |row| row.get(0)))
            .map_err(self.error("reclaiming expired vdisks"))?;
        if !any {
            return Ok(());
        }
        self.tx
            .execute(
                &format!(
                    "UPDATE extents SET vdisk_id = NULL, position = NULL, dirty = 1
                     WHERE vdisk_id IN (SELECT id FROM vdisks WHERE {EXPIRED})"
                ),
                params![self.now],
            )
            .map_err(self.error("reclaiming expired vdisks"))?;
        self.tx
            .execute(
                &format!("UPDATE vdisks SET deleted_at = expires_at WHERE {EXPIRED}"),
                params![self.now],
            )
            .map_err(self.error("reclaiming expired vdisks"))?;
        Ok(())
    }

    /// `(id, extent sectors)` of a pool.
    pub(super) fn pool(&self, name: &str) -> Result<Option<(i64, u64)>, StateError> {
        self.tx
            .query_row(
                "SELECT id, extent_sectors FROM pools WHERE name = ?1",
                params![name],
                |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .map_err(self.error("reading a pool"))
    }

    /// `(id, pool id, size in sectors, expiry)` of a live vdisk.
    pub(super) fn live_vdisk(
        &self,
        name: &str,
    ) -> Result<Option<(i64, i64, u64, String)>, StateError> {
        self.tx
            .query_row(
                &format!("SELECT v.id, v.pool_id, v.size_sectors, v.expiry FROM vdisks v WHERE v.name = ?2 AND {LIVE}"),
                params![self.now, name],
                |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64, row.get(3)?)),
            )
            .optional()
            .map_err(self.error("reading a vdisk"))
    }

    fn free_runs(&self, pool_id: i64) -> Result<Vec<Run>, StateError> {
        let error = self.error("reading free extents");
        let mut statement = self
            .tx
            .prepare(
                "SELECT e.device_id, e.idx FROM extents e JOIN pool_devices d ON d.id = e.device_id
                 WHERE d.pool_id = ?1 AND e.vdisk_id IS NULL ORDER BY e.device_id, e.idx",
            )
            .map_err(&error)?;
        let extents = statement
            .query_map(params![pool_id], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)? as u64))
            })
            .map_err(&error)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&error)?;
        Ok(alloc::runs_of(extents))
    }

    /// Gives the pieces to a vdisk, numbering them from `position`. Fails
    /// (and the transaction rolls back) if any extent is no longer free.
    fn assign(&self, vdisk_id: i64, pieces: &[Run], mut position: u64) -> Result<(), StateError> {
        let error = self.error("allocating extents");
        let mut statement = self
            .tx
            .prepare(
                "UPDATE extents SET vdisk_id = ?1, position = ?2 + (idx - ?3)
                 WHERE device_id = ?4 AND idx >= ?3 AND idx < ?3 + ?5 AND vdisk_id IS NULL",
            )
            .map_err(&error)?;
        for piece in pieces {
            let changed = statement
                .execute(params![
                    vdisk_id,
                    position as i64,
                    piece.first as i64,
                    piece.device,
                    piece.len as i64
                ])
                .map_err(&error)?;
            if changed as u64 != piece.len {
                return Err(StateError::Inconsistent {
                    path: self.label.to_owned(),
                    problems: format!(
                        "extents chosen as free on device row {} were taken",
                        piece.device
                    ),
                });
            }
            position += piece.len;
        }
        Ok(())
    }

    /// Allocates `needed` extents to a vdisk that already has `have`.
    fn allocate(
        &self,
        vdisk: (&str, i64),
        pool: (&str, i64, u64),
        have: u64,
        needed: u64,
    ) -> Result<(), StateError> {
        let (name, vdisk_id) = vdisk;
        let (pool_name, pool_id, extent_sectors) = pool;
        let free = self.free_runs(pool_id)?;
        let after = self.next_after_last(vdisk_id)?;
        let Some(pieces) = alloc::choose(&free, needed, after) else {
            let free_extents: u64 = free.iter().map(|r| r.len).sum();
            return Err(StateError::PoolShort {
                pool: pool_name.to_owned(),
                vdisk: name.to_owned(),
                needed: Size::from_sectors(needed * extent_sectors),
                free: Size::from_sectors(free_extents * extent_sectors),
            });
        };
        self.assign(vdisk_id, &pieces, have)
    }

    /// The extent right after a vdisk's last one, where a grow would
    /// continue it.
    fn next_after_last(&self, vdisk_id: i64) -> Result<Option<(i64, u64)>, StateError> {
        self.tx
            .query_row(
                "SELECT device_id, idx + 1 FROM extents WHERE vdisk_id = ?1 ORDER BY position DESC LIMIT 1",
                params![vdisk_id],
                |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .map_err(self.error("reading a vdisk's last extent"))
    }

    /// The sectors a vdisk's extents hold, each of its own device's pool's
    /// extent size.
    fn vdisk_held_sectors(&self, vdisk_id: i64) -> Result<u64, StateError> {
        self.tx
            .query_row(
                "SELECT coalesce(sum(p.extent_sectors), 0) FROM extents e
                 JOIN pool_devices d ON d.id = e.device_id JOIN pools p ON p.id = d.pool_id
                 WHERE e.vdisk_id = ?1",
                params![vdisk_id],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.error("reading a vdisk's extents"))
    }

    fn vdisk_count_extents(&self, vdisk_id: i64) -> Result<u64, StateError> {
        self.tx
            .query_row(
                "SELECT count(*) FROM extents WHERE vdisk_id = ?1",
                params![vdisk_id],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.error("counting a vdisk's extents"))
    }
}

impl Write<'_> {
    /// Records a new vdisk with no extents yet: `(vdisk, pool, extent
    /// sectors)`, or `None` when the same vdisk (same pool and size) exists.
    fn new_vdisk(
        &self,
        name: &str,
        pool: &str,
        size: Size,
        expiry: &Expiry,
    ) -> Result<Option<(i64, i64, u64)>, StateError> {
        let Some((pool_id, extent_sectors)) = self.pool(pool)? else {
            return Err(StateError::UnknownPool(pool.to_owned()));
        };
        if let Some((_, existing_pool, existing_size, _)) = self.live_vdisk(name)? {
            if existing_pool == pool_id && existing_size == size.sectors() {
                return Ok(None);
            }
            return Err(StateError::VdiskExists {
                name: name.to_owned(),
                pool: pool_name(self, existing_pool)?,
                size: Size::from_sectors(existing_size),
            });
        }
        let expires_at = expiry_instant(expiry, from_unix(self.now));
        if let Some(at) = expires_at.filter(|at| to_unix(*at) <= self.now) {
            return Err(StateError::ExpiryPast {
                name: name.to_owned(),
                expiry: *expiry,
                at,
            });
        }
        self.tx
            .execute(
                "INSERT INTO vdisks (name, pool_id, size_sectors, expiry, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    name,
                    pool_id,
                    size.sectors() as i64,
                    expiry.to_string(),
                    self.now,
                    expires_at.map(to_unix)
                ],
            )
            .map_err(self.error("creating a vdisk"))?;
        Ok(Some((self.tx.last_insert_rowid(), pool_id, extent_sectors)))
    }

    /// Gives a vdisk exactly these extents (relative to their pool devices),
    /// numbering them from `position`.
    fn assign_exact(
        &self,
        vdisk: (&str, i64),
        pool: (i64, u64),
        extents: &[SectorRange],
        mut position: u64,
    ) -> Result<(), StateError> {
        let error = self.error("allocating planned extents");
        let (name, vdisk_id) = vdisk;
        let (pool_id, extent_sectors) = pool;
        let mut statement = self
            .tx
            .prepare(
                "UPDATE extents SET vdisk_id = ?1, position = ?2
                 WHERE idx = ?3 AND vdisk_id IS NULL AND device_id =
                   (SELECT id FROM pool_devices WHERE pool_id = ?4 AND major = ?5 AND minor = ?6)",
            )
            .map_err(&error)?;
        for extent in extents {
            let taken = || StateError::ExtentTaken {
                vdisk: name.to_owned(),
                extent: *extent,
            };
            if extent.start % extent_sectors != 0 || extent.sectors != extent_sectors {
                return Err(taken());
            }
            let changed = statement
                .execute(params![
                    vdisk_id,
                    position as i64,
                    (extent.start / extent_sectors) as i64,
                    pool_id,
                    extent.device.major,
                    extent.device.minor
                ])
                .map_err(&error)?;
            if changed != 1 {
                return Err(taken());
            }
            position += 1;
        }
        Ok(())
    }
}

impl StateDb {
    /// Creates a vdisk on exactly the extents a plan chose. Creating it
    /// again (same pool and size) changes nothing; an extent no longer free
    /// fails the whole operation, changing nothing.
    pub fn create_vdisk_on(
        &mut self,
        name: &str,
        pool: &str,
        size: Size,
        expiry: &Expiry,
        extents: &[SectorRange],
        now: jiff::Timestamp,
    ) -> Result<(), StateError> {
        self.write(now, "creating a vdisk", |w| {
            match w.new_vdisk(name, pool, size, expiry)? {
                None => Ok(()),
                Some((vdisk_id, pool_id, extent_sectors)) => {
                    w.assign_exact((name, vdisk_id), (pool_id, extent_sectors), extents, 0)
                }
            }
        })
    }

    /// Grows a vdisk onto exactly the extents a plan chose; nothing to do
    /// if it is that size already.
    pub fn grow_vdisk_on(
        &mut self,
        name: &str,
        size: Size,
        extents: &[SectorRange],
        now: jiff::Timestamp,
    ) -> Result<(), StateError> {
        self.write(now, "growing a vdisk", |w| {
            let Some((vdisk_id, pool_id, current, _)) = w.live_vdisk(name)? else {
                return Err(StateError::UnknownVdisk(name.to_owned()));
            };
            if current >= size.sectors() {
                return Ok(());
            }
            let pool = pool_name(w, pool_id)?;
            let Some((_, extent_sectors)) = w.pool(&pool)? else {
                return Err(StateError::UnknownPool(pool));
            };
            let have = w.vdisk_count_extents(vdisk_id)?;
            w.assign_exact((name, vdisk_id), (pool_id, extent_sectors), extents, have)?;
            w.tx.execute(
                "UPDATE vdisks SET size_sectors = ?1 WHERE id = ?2",
                params![size.sectors() as i64, vdisk_id],
            )
            .map_err(w.error("growing a vdisk"))?;
            Ok(())
        })
    }

    pub(super) fn write<T>(
        &mut self,
        now: jiff::Timestamp,
        operation: &'static str,
        body: impl FnOnce(&Write<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let StateDb { connection, label } = self;
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| StateError::Sqlite {
                path: label.clone(),
                operation,
                source,
            })?;
        let write = Write {
            tx,
            label,
            now: to_unix(now),
        };
        write.reclaim_expired()?;
        let value = body(&write)?;
        write.tx.commit().map_err(|source| StateError::Sqlite {
            path: label.clone(),
            operation,
            source,
        })?;
        Ok(value)
    }

    /// Creates a vdisk of `size` (rounded up to whole extents) from the
    /// pool's free extents, fewest segments first. Creating the same vdisk
    /// again (same pool and size) changes nothing.
    pub fn create_vdisk(
        &mut self,
        name: &str,
        pool: &str,
        size: Size,
        expiry: &Expiry,
        now: jiff::Timestamp,
    ) -> Result<(), StateError> {
        self.write(now, "creating a vdisk", |w| {
            match w.new_vdisk(name, pool, size, expiry)? {
                None => Ok(()),
                Some((vdisk_id, pool_id, extent_sectors)) => {
                    let needed = size.sectors().div_ceil(extent_sectors);
                    w.allocate((name, vdisk_id), (pool, pool_id, extent_sectors), 0, needed)
                }
            }
        })
    }

    /// Grows a vdisk to `size`, appending extents (continuing its last run
    /// where the next extents are free). Shrinking is refused: it would
    /// destroy data.
    pub fn grow_vdisk(
        &mut self,
        name: &str,
        size: Size,
        now: jiff::Timestamp,
    ) -> Result<(), StateError> {
        self.write(now, "growing a vdisk", |w| {
            let Some((vdisk_id, pool_id, current, _)) = w.live_vdisk(name)? else {
                return Err(StateError::UnknownVdisk(name.to_owned()));
            };
            if size.sectors() < current {
                return Err(StateError::Shrink {
                    name: name.to_owned(),
                    current: Size::from_sectors(current),
                    requested: size,
                });
            }
            let pool = pool_name(w, pool_id)?;
            let Some((_, extent_sectors)) = w.pool(&pool)? else {
                return Err(StateError::UnknownPool(pool));
            };
            let have = w.vdisk_count_extents(vdisk_id)?;
            // What it holds, counted in sectors: an imported vdisk's extents
            // may be of other pools' sizes than the one it grows from.
            let held = w.vdisk_held_sectors(vdisk_id)?;
            let needed = size.sectors().saturating_sub(held).div_ceil(extent_sectors);
            if needed > 0 {
                w.allocate(
                    (name, vdisk_id),
                    (&pool, pool_id, extent_sectors),
                    have,
                    needed,
                )?;
            }
            w.tx.execute(
                "UPDATE vdisks SET size_sectors = ?1 WHERE id = ?2",
                params![size.sectors() as i64, vdisk_id],
            )
            .map_err(w.error("growing a vdisk"))?;
            Ok(())
        })
    }

    /// Sets a live vdisk's expiry; a duration counts from its creation.
    /// Refused once it has expired, as the ancestor documented.
    pub fn set_expiry(
        &mut self,
        name: &str,
        expiry: &Expiry,
        now: jiff::Timestamp,
    ) -> Result<(), StateError> {
        self.write(now, "setting an expiry", |w| {
            let Some((vdisk_id, _, _, _)) = w.live_vdisk(name)? else {
                return Err(expired_or_unknown(w, name)?);
            };
            let created: i64 =
                w.tx.query_row(
                    "SELECT created_at FROM vdisks WHERE id = ?1",
                    params![vdisk_id],
                    |row| row.get(0),
                )
                .map_err(w.error("setting an expiry"))?;
            let expires_at = expiry_instant(expiry, from_unix(created));
            if let Some(at) = expires_at.filter(|at| to_unix(*at) <= w.now) {
                return Err(StateError::ExpiryPast {
                    name: name.to_owned(),
                    expiry: *expiry,
                    at,
                });
            }
            w.tx.execute(
                "UPDATE vdisks SET expiry = ?1, expires_at = ?2 WHERE id = ?3",
                params![expiry.to_string(), expires_at.map(to_unix), vdisk_id],
            )
            .map_err(w.error("setting an expiry"))?;
            Ok(())
        })
    }

    /// Deletes a vdisk: its extents become free and dirty. Returns how many
    /// extents were released.
    pub fn delete_vdisk(&mut self, name: &str, now: jiff::Timestamp) -> Result<u64, StateError> {
        self.write(now, "deleting a vdisk", |w| {
            let Some((vdisk_id, _, _, _)) = w.live_vdisk(name)? else {
                return Err(StateError::UnknownVdisk(name.to_owned()));
            };
            let error = w.error("deleting a vdisk");
            let released = w
                .tx
                .execute("UPDATE extents SET vdisk_id = NULL, position = NULL, dirty = 1 WHERE vdisk_id = ?1", params![vdisk_id])
                .map_err(&error)?;
            w.tx.execute("UPDATE vdisks SET deleted_at = ?1 WHERE id = ?2", params![w.now, vdisk_id]).map_err(&error)?;
            Ok(released as u64)
        })
    }
}

pub(super) fn pool_name(w: &Write<'_>, pool_id: i64) -> Result<String, StateError> {
    w.tx.query_row(
        "SELECT name FROM pools WHERE id = ?1",
        params![pool_id],
        |row| row.get(0),
    )
    .map_err(w.error("reading a pool"))
}

/// The error for a vdisk that is not live: expired (when it was), or unknown.
fn expired_or_unknown(w: &Write<'_>, name: &str) -> Result<StateError, StateError> {
    let expired_at: Option<i64> = w
        .tx
        .query_row(
            "SELECT expires_at FROM vdisks WHERE name = ?1 AND deleted_at IS NOT NULL AND deleted_at = expires_at
             ORDER BY id DESC LIMIT 1",
            params![name],
            |row| row.get(0),
        )
        .optional()
        .map_err(w.error("reading a vdisk"))?;
    Ok(match expired_at {
        Some(at) => StateError::Expired {
            name: name.to_owned(),
            at: from_unix(at),
        },
        None => StateError::UnknownVdisk(name.to_owned()),
    })
}
