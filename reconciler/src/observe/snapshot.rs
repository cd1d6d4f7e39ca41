//! Snapshot files: a [`HostState`] saved as versioned JSON, so that a host
//! can be planned against offline, on any machine.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HostState;

/// The snapshot format this build writes. Version 3 added `machine_id`,
/// version 4 the host's `bootloader_runs`.
pub const FORMAT_VERSION: u32 = 4;

/// The oldest format this build still reads (it lacks only `machine_id`
/// and `bootloader_runs`).
const OLDEST_READ: u32 = 2;

/// A snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "xendisk host snapshot")]
pub struct Snapshot {
    /// Version of this format.
    pub format_version: u32,
    /// When it was taken.
    pub taken_at: String,
    /// The host's machine id (machine-id(5)), which an offline plan checks
    /// against the host its state DB belongs to; absent where the host had
    /// none, and in version 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// What was observed.
    pub host: HostState,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read snapshot {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("snapshot {path} is not a valid snapshot: {source}")]
    Invalid {
        path: String,
        source: serde_json::Error,
    },
    #[error(
        "snapshot {path} has format version {found}; this xendisk reads versions {OLDEST_READ} \
         to {FORMAT_VERSION}: take it again with this xendisk"
    )]
    Version { path: String, found: u32 },
}

/// The snapshot as JSON text, ending with a newline.
pub fn to_json(host: &HostState, machine_id: Option<&str>, taken_at: jiff::Timestamp) -> String {
    let snapshot = Snapshot {
        format_version: FORMAT_VERSION,
        taken_at: taken_at.to_string(),
        machine_id: machine_id.map(str::to_owned),
        host: host.clone(),
    };
    let mut text = serde_json::to_string_pretty(&snapshot).expect("a snapshot always serialises");
    text.push('\n');
    text
}

/// Reads a snapshot file back into the host state it captured.
pub fn load(path: &Path) -> Result<HostState, SnapshotError> {
    load_snapshot(path).map(|snapshot| snapshot.host)
}

/// Reads a whole snapshot file.
pub fn load_snapshot(path: &Path) -> Result<Snapshot, SnapshotError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SnapshotError::Read {
        path: name.clone(),
        source,
    })?;
    parse(&name, &text)
}

/// The host state a snapshot's text captured; `name` is for messages.
pub fn from_json(name: &str, text: &str) -> Result<HostState, SnapshotError> {
    parse(name, text).map(|snapshot| snapshot.host)
}

/// A snapshot's text; `name` is for messages.
pub fn parse(name: &str, text: &str) -> Result<Snapshot, SnapshotError> {
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let version: Version = serde_json::from_str(text).map_err(|source| SnapshotError::Invalid {
        path: name.to_owned(),
        source,
    })?;
    if !(OLDEST_READ..=FORMAT_VERSION).contains(&version.format_version) {
        return Err(SnapshotError::Version {
            path: name.to_owned(),
            found: version.format_version,
        });
    }
    let mut snapshot: Snapshot =
        serde_json::from_str(text).map_err(|source| SnapshotError::Invalid {
            path: name.to_owned(),
            source,
        })?;
    // Lookups search these lists; a file edited by hand need not keep the
    // order observation writes them in.
    let host = &mut snapshot.host;
    host.domains.sort();
    host.attachments.sort();
    host.block_devices.sort_by_key(|device| device.device);
    host.paths.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(snapshot)
}
