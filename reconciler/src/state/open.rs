//! Creating and opening the state DB file.
//!
//! Only `create` (for `xendisk init`, `import` and a simulated host's first
//! command) makes a file; opening one that is missing is an error, never an
//! empty state: a mistyped `--state` must not look like a host with nothing
//! on it. A new file is built whole under a temporary name and linked into
//! place, so nobody ever opens a half-made DB, and it is readable by its
//! owner only (it says which disks hold whose data). The schema version is
//! checked before anything that writes, so a DB from a newer xendisk is
//! refused unchanged. A reader on a read-only filesystem (a backup mount, a
//! rescue system) can still read a WAL database.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::host::HostId;
use super::{BUSY_TIMEOUT, StateDb, StateError, schema};

impl StateDb {
    /// Creates a new state DB at `path` belonging to `host`, with the
    /// directories it needs (mode 0700); fails if a file is there already.
    /// The file is mode 0600, and SQLite gives its side files the same mode.
    pub fn create(path: &Path, host: &HostId, now: jiff::Timestamp) -> Result<StateDb, StateError> {
        let label = path.display().to_string();
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => dir.to_owned(),
            None => PathBuf::from("."),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StateError::CreateDir {
                path: label.clone(),
                source,
            })?;
        if path.exists() {
            return Err(StateError::Exists { path: label });
        }
        let temporary = Temporary(temporary_name(path));
        let io = |source| StateError::Create {
            path: label.clone(),
            source,
        };
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary.0)
            .map_err(io)?;
        {
            let connection =
                Connection::open_with_flags(&temporary.0, writable_flags()).map_err(|source| {
                    StateError::Open {
                        path: label.clone(),
                        source,
                    }
                })?;
            let mut db = StateDb::prepare(connection, label.clone(), true)?;
            db.record_host(host, false, now)?;
            // Dropped here: SQLite checkpoints the WAL into the file and
            // removes it, so the file linked into place is complete.
        }
        // A link, not a rename: it fails rather than replace a DB that
        // another `init` put there meanwhile.
        std::fs::hard_link(&temporary.0, path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                StateError::Exists {
                    path: label.clone(),
                }
            } else {
                io(source)
            }
        })?;
        drop(temporary);
        // The new name must survive a power loss as the file's data does.
        if let Ok(dir) = std::fs::File::open(&dir) {
            let _ = dir.sync_all();
        }
        StateDb::open(path)
    }

    /// Opens the existing state DB at `path` for writing, and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        let label = path.display().to_string();
        must_exist(path, &label)?;
        // Without SQLITE_OPEN_CREATE: a file removed since the check above
        // is an error, not a new empty DB.
        let connection = Connection::open_with_flags(path, writable_flags()).map_err(|source| {
            StateError::Open {
                path: label.clone(),
                source,
            }
        })?;
        StateDb::prepare(connection, label, true)
    }

    /// Opens the existing state DB at `path` for reading only.
    ///
    /// A WAL database needs its `-shm` side file, which SQLite cannot make
    /// where the directory is read-only; such a DB is then opened as
    /// immutable, which needs no side file, provided nothing is waiting in
    /// a `-wal` or hot `-journal` file (immutable mode would not see it).
    pub fn open_read_only(path: &Path) -> Result<StateDb, StateError> {
        let label = path.display().to_string();
        must_exist(path, &label)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let opened = Connection::open_with_flags(path, flags)
            .map_err(|source| StateError::Open {
                path: label.clone(),
                source,
            })
            .and_then(|connection| StateDb::prepare(connection, label.clone(), false));
        match opened {
            Err(error) if cannot_make_side_files(&error) && nothing_pending(path) => {
                tracing::debug!("{label}: {error}; opening it as immutable");
                let connection = Connection::open_with_flags(
                    immutable_uri(path),
                    flags | OpenFlags::SQLITE_OPEN_URI,
                )
                .map_err(|source| StateError::Open {
                    path: label.clone(),
                    source,
                })?;
                StateDb::prepare(connection, label, false)
            }
            other => other,
        }
    }

    /// A private, empty state DB in memory (tests, offline plans of a new
    /// host). It records no host.
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
        let migrate_error = |source| StateError::Migrate {
            path: label.clone(),
            source,
        };
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(sqlite("setting the busy timeout"))?;
        connection
            .pragma_update(None, "foreign_keys", true)
            .map_err(sqlite("enabling foreign keys"))?;
        // Before anything that writes: a DB from a newer xendisk is
        // refused exactly as it was found.
        let version = schema::check_version(&connection).map_err(migrate_error)?;
        if writable {
            // WAL lets readers go on while one writer commits; FULL makes a
            // commit survive power loss, which a record of disk ownership must.
            connection
                .pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
                .map_err(sqlite("enabling WAL"))?;
            connection
                .pragma_update(None, "synchronous", "FULL")
                .map_err(sqlite("setting synchronous"))?;
            schema::migrate(&mut connection).map_err(migrate_error)?;
        } else if version < schema::CURRENT_VERSION {
            // An older file read without writing: migrate a private copy
            // in memory so the queries see the current schema.
            let mut copy = Connection::open_in_memory().map_err(sqlite("opening a copy"))?;
            rusqlite::backup::Backup::new(&connection, &mut copy)
                .and_then(|backup| backup.run_to_completion(256, std::time::Duration::ZERO, None))
                .map_err(sqlite("copying an older state DB"))?;
            schema::migrate(&mut copy).map_err(migrate_error)?;
            return Ok(StateDb {
                connection: copy,
                label,
            });
        }
        Ok(StateDb { connection, label })
    }
}

fn writable_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

fn must_exist(path: &Path, label: &str) -> Result<(), StateError> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(StateError::Missing {
            path: label.to_owned(),
        }),
        Err(source) => Err(StateError::Access {
            path: label.to_owned(),
            source,
        }),
    }
}

/// A file removed when dropped: the half-made DB of a failed `create`.
struct Temporary(PathBuf);

impl Drop for Temporary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        for side in ["-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(side_file(&self.0, side));
        }
    }
}

/// A name beside `path` that no other process uses.
fn temporary_name(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    name.push(format!(".init-{}-{nanos}", std::process::id()));
    path.with_file_name(name)
}

/// `path` with `suffix` appended to its name (`state.sqlite-wal`).
fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Whether opening failed because SQLite could not make the side files a
/// WAL database needs (a read-only directory or filesystem).
fn cannot_make_side_files(error: &StateError) -> bool {
    let source = match error {
        StateError::Open { source, .. } | StateError::Sqlite { source, .. } => source,
        StateError::Migrate {
            source: schema::MigrateError::Sqlite(source),
            ..
        } => source,
        _ => return false,
    };
    matches!(
        source.sqlite_error_code(),
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly)
    )
}

/// No committed data waits outside the main file: no non-empty `-wal`, no
/// `-journal` (a hot journal of an interrupted rollback-mode write).
fn nothing_pending(path: &Path) -> bool {
    let empty_or_missing = |suffix| {
        std::fs::metadata(side_file(path, suffix)).map_or_else(
            |error| error.kind() == std::io::ErrorKind::NotFound,
            |m| m.len() == 0,
        )
    };
    empty_or_missing("-wal") && empty_or_missing("-journal")
}

/// `file:PATH?immutable=1`, the path percent-encoded (SQLite's URI rules).
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for byte in path.as_os_str().as_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                uri.push(char::from(*byte))
            }
            _ => uri.push_str(&format!("%{byte:02X}")),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

#[cfg(test)]
mod tests;
