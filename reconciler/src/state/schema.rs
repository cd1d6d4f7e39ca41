//! The state DB's tables, and the forward migrations that build them.
//!
//! `PRAGMA user_version` holds the number of migrations applied. A migration
//! is appended, never edited: a database written by an older xendisk is
//! brought forward by running the ones it lacks, in one transaction.

use rusqlite::Connection;

/// Each entry moves the schema from version `index` to `index + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: pools, their devices cut into extents, and vdisks.
    r#"
    CREATE TABLE pools (
        id             INTEGER PRIMARY KEY,
        name           TEXT    NOT NULL UNIQUE,
        extent_sectors INTEGER NOT NULL CHECK (extent_sectors > 0)
    ) STRICT;

    -- A pool device and, once observed, where it lies on its whole disk.
    CREATE TABLE pool_devices (
        id           INTEGER PRIMARY KEY,
        pool_id      INTEGER NOT NULL REFERENCES pools(id),
        path         TEXT    NOT NULL UNIQUE,
        major        INTEGER NOT NULL,
        minor        INTEGER NOT NULL,
        sectors      INTEGER NOT NULL CHECK (sectors >= 0),
        disk_major   INTEGER,
        disk_minor   INTEGER,
        disk_start   INTEGER,
        added_at     INTEGER NOT NULL,
        UNIQUE (major, minor)
    ) STRICT;

    -- A vdisk is live while deleted_at is NULL and expires_at is NULL or in
    -- the future. Deleted and expired rows are kept as history.
    CREATE TABLE vdisks (
        id           INTEGER PRIMARY KEY,
        name         TEXT    NOT NULL,
        pool_id      INTEGER NOT NULL REFERENCES pools(id),
        size_sectors INTEGER NOT NULL CHECK (size_sectors > 0),
        expiry       TEXT    NOT NULL,
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER,
        deleted_at   INTEGER
    ) STRICT;
    CREATE UNIQUE INDEX vdisks_one_live_name ON vdisks(name) WHERE deleted_at IS NULL;

    -- Extent `idx` of a device starts at sector idx * extent_sectors of that
    -- device. Free when vdisk_id is NULL (or its vdisk is no longer live);
    -- `position` is its place in the vdisk, the device-mapper table order.
    CREATE TABLE extents (
        device_id INTEGER NOT NULL REFERENCES pool_devices(id),
        idx       INTEGER NOT NULL CHECK (idx >= 0),
        vdisk_id  INTEGER REFERENCES vdisks(id),
        position  INTEGER,
        dirty     INTEGER NOT NULL DEFAULT 0 CHECK (dirty IN (0, 1)),
        PRIMARY KEY (device_id, idx),
        CHECK ((vdisk_id IS NULL) = (position IS NULL))
    ) STRICT, WITHOUT ROWID;
    CREATE UNIQUE INDEX extents_vdisk_order ON extents(vdisk_id, position)
        WHERE vdisk_id IS NOT NULL;
    "#,
    // 2: the apply journal: each run, and each step of it before and after
    // it ran. Times in milliseconds since the epoch.
    r#"
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER,
        source      TEXT    NOT NULL,
        fingerprint TEXT    NOT NULL,
        status      TEXT    NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted'))
    ) STRICT;

    CREATE TABLE journal (
        run_id      INTEGER NOT NULL REFERENCES runs(id),
        step        INTEGER NOT NULL,
        op          TEXT    NOT NULL,
        status      TEXT    NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
        error       TEXT,
        started_at  INTEGER,
        finished_at INTEGER,
        PRIMARY KEY (run_id, step)
    ) STRICT;
    "#,
    // 3: the host the DB belongs to (`xendisk init`), one row: a DB read on
    // another host would show that host's used extents as free.
    r#"
    CREATE TABLE host (
        only        INTEGER PRIMARY KEY CHECK (only = 1),
        machine_id  TEXT    NOT NULL,
        source      TEXT    NOT NULL,
        recorded_at INTEGER NOT NULL
    ) STRICT;
    "#,
    // 4: every write reclaims the vdisks that have expired; without an
    // index that is a scan of all vdisks, history included, per write.
    r#"
    CREATE INDEX vdisks_expiring ON vdisks(expires_at)
        WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
    "#,
];

/// The schema version this build writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// The version a database is at.
pub fn version(connection: &Connection) -> rusqlite::Result<i64> {
    connection.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Refuses a database from a newer xendisk. Callers run it before anything
/// that writes (even switching the journal mode changes the file), so a
/// refused file is left exactly as it was.
pub fn check_version(connection: &Connection) -> Result<i64, MigrateError> {
    let found = version(connection)?;
    if found > CURRENT_VERSION {
        return Err(MigrateError::TooNew {
            found,
            supported: CURRENT_VERSION,
        });
    }
    Ok(found)
}

/// Applies the missing migrations in one immediate transaction. Returns the
/// version found, or an error naming a database from a newer xendisk.
pub fn migrate(connection: &mut Connection) -> Result<i64, MigrateError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Again inside the transaction: another xendisk may have migrated it.
    let found = check_version(&transaction)?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", index as i64 + 1)?;
    }
    transaction.commit()?;
    Ok(found)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the state DB has schema version {found}, newer than this xendisk understands \
         ({supported}); use a newer xendisk"
    )]
    TooNew { found: i64, supported: i64 },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}
