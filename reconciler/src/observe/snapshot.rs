//! Snapshot files: a [`HostState`] saved as versioned JSON, so that a host
//! can be planned against offline, on any machine.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HostState;

/// The snapshot format this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;

/// A snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "xendisk host snapshot")]
pub struct Snapshot {
    /// Version of this format.
    pub format_version: u32,
    /// When it was taken.
    pub taken_at: String,
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
        "snapshot {path} has format version {found}; this xendisk reads version {FORMAT_VERSION}: \
         take it again with this xendisk"
    )]
    Version { path: String, found: u32 },
}

/// The snapshot as JSON text, ending with a newline.
pub fn to_json(host: &HostState, taken_at: jiff::Timestamp) -> String {
    let snapshot = Snapshot {
        format_version: FORMAT_VERSION,
        taken_at: taken_at.to_string(),
        host: host.clone(),
    };
    let mut text = serde_json::to_string_pretty(&snapshot).expect("a snapshot always serialises");
    text.push('\n');
    text
}

/// Reads a snapshot file back into the host state it captured.
pub fn load(path: &Path) -> Result<HostState, SnapshotError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SnapshotError::Read {
        path: name.clone(),
        source,
    })?;
    from_json(&name, &text)
}

pub fn from_json(name: &str, text: &str) -> Result<HostState, SnapshotError> {
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let version: Version = serde_json::from_str(text).map_err(|source| SnapshotError::Invalid {
        path: name.to_owned(),
        source,
    })?;
    if version.format_version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            path: name.to_owned(),
            found: version.format_version,
        });
    }
    let snapshot: Snapshot =
        serde_json::from_str(text).map_err(|source| SnapshotError::Invalid {
            path: name.to_owned(),
            source,
        })?;
    Ok(snapshot.host)
}
