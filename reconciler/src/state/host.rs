//! Which host a state DB belongs to.
//!
//! A state DB read on the wrong host is wrong in the worst way: extents in
//! use there look free here. So `xendisk init` records the host's identity
//! in the DB, and the commands that plan compare it with the host they run
//! on.
//!
//! The identity is the machine id (machine-id(5)): 128 random bits that
//! systemd, or D-Bus on hosts without it, writes once per installation. It
//! survives reboots and changes of hostname, address or disks, and differs
//! between installations, which is what "this DB is this host's" means. It
//! is read from `/etc/machine-id`, else `/var/lib/dbus/machine-id` (an
//! older D-Bus's copy of the same id), under the host root, so a captured
//! tree or a simulated host (`--sim DIR`: `DIR/etc/machine-id`) carries its
//! own. Two cases change it: reinstalling dom0 (the disks stay: re-record
//! it with `xendisk init --replace-host`), and cloning an image without
//! resetting it (two hosts then look alike; systemd resets an empty
//! `/etc/machine-id` at first boot).

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{StateDb, StateError, from_unix};

/// Where the machine id is looked for, in order.
pub const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// A host's identity, as read from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostId {
    /// 32 lowercase hexadecimal digits.
    pub machine_id: String,
    /// The host path it was read from (`/etc/machine-id`).
    pub source: String,
}

/// The identity a state DB records, and when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRecord {
    pub machine_id: String,
    pub source: String,
    pub recorded_at: jiff::Timestamp,
}

/// Why the host's identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostIdError {
    #[error(
        "cannot tell which host this is: neither {first} nor {second} holds a machine id; \
         create one (`systemd-machine-id-setup`, or `dbus-uuidgen --ensure=/etc/machine-id`), \
         or point --host-root at the host's tree"
    )]
    Missing { first: String, second: String },
    #[error(
        "{path} holds {found:?}, not a machine id (32 lowercase hexadecimal digits, see \
         machine-id(5)); fix it (`systemd-machine-id-setup`) before xendisk can tell which host \
         this is"
    )]
    Invalid { path: String, found: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// `path` (absolute on the host) as it is found under `root`.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

impl HostId {
    /// Reads the machine id under `root`. A missing or empty file is passed
    /// over for the next (systemd leaves `/etc/machine-id` empty until the
    /// first boot fills it); a file holding something else is an error, not
    /// passed over: it is a broken id, and another file's id would be a
    /// different host.
    pub fn read(root: &Path) -> Result<HostId, HostIdError> {
        for source in MACHINE_ID_FILES {
            let path = under(root, source);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(HostIdError::Read {
                        path: path.display().to_string(),
                        source,
                    });
                }
            };
            let found = text.trim();
            if found.is_empty() {
                continue;
            }
            if !is_machine_id(found) {
                return Err(HostIdError::Invalid {
                    path: path.display().to_string(),
                    found: found.chars().take(64).collect(),
                });
            }
            return Ok(HostId {
                machine_id: found.to_owned(),
                source: source.to_owned(),
            });
        }
        let [first, second] = MACHINE_ID_FILES.map(|f| under(root, f).display().to_string());
        Err(HostIdError::Missing { first, second })
    }
}

/// 32 lowercase hexadecimal digits, not all zero (systemd refuses that one).
pub fn is_machine_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && text.bytes().any(|b| b != b'0')
}

/// What recording a host did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The DB recorded no host; now it records this one.
    New,
    /// It already recorded this host; nothing changed.
    Same,
    /// It recorded another host, which this one replaced (`--replace-host`).
    Replaced(HostRecord),
}

impl StateDb {
    /// The host this DB belongs to; `None` for a DB made before `init`
    /// existed (or by the library without one).
    pub fn host(&self) -> Result<Option<HostRecord>, StateError> {
        self.connection
            .query_row(
                "SELECT machine_id, source, recorded_at FROM host",
                [],
                |row| {
                    Ok(HostRecord {
                        machine_id: row.get(0)?,
                        source: row.get(1)?,
                        recorded_at: from_unix(row.get(2)?),
                    })
                },
            )
            .optional()
            .map_err(self.sqlite_error("reading the host it belongs to"))
    }

    /// Records that this DB belongs to `host`, in one transaction. A DB
    /// that belongs to another host is refused unless `replace` says this
    /// host takes it over.
    pub fn record_host(
        &mut self,
        host: &HostId,
        replace: bool,
        now: jiff::Timestamp,
    ) -> Result<Recorded, StateError> {
        let recorded = self.host()?;
        self.write(now, "recording the host", |write| {
            let error = write.error("recording the host");
            // Read again inside the transaction: another process may have
            // recorded a host since.
            let current: Option<String> = write
                .tx
                .query_row("SELECT machine_id FROM host", [], |row| row.get(0))
                .optional()
                .map_err(&error)?;
            let outcome = match (&current, &recorded) {
                (None, _) => Recorded::New,
                (Some(id), _) if *id == host.machine_id => return Ok(Recorded::Same),
                (Some(_), Some(old)) if replace => Recorded::Replaced(old.clone()),
                (Some(id), _) => {
                    return Err(StateError::OtherHost {
                        path: write.label().to_owned(),
                        recorded: id.clone(),
                        this: host.machine_id.clone(),
                    });
                }
            };
            write
                .tx
                .execute(
                    "INSERT INTO host (only, machine_id, source, recorded_at)
                     VALUES (1, ?1, ?2, ?3)
                     ON CONFLICT (only) DO UPDATE SET machine_id = ?1, source = ?2, recorded_at = ?3",
                    params![host.machine_id, host.source, write.now],
                )
                .map_err(&error)?;
            Ok(outcome)
        })
    }
}
