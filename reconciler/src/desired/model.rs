//! The desired state as plain data: what the operator declared, nothing
//! observed. Every struct is closed (`deny_unknown_fields`) and every field is
//! documented, which also writes the JSON Schema's descriptions.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::values::{Expiry, Format, Mode, Realise, Scrub, Sharing, Size, Source, Toolstack};

/// Pool and vdisk names: xenstore path elements that fit in a device-mapper
/// name (checked again, with a message, by validation).
const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_-]{0,118}$";

/// A desired-state file: the pools, vdisks and attachments a host should have.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "xendisk desired state")]
pub struct Desired {
    /// Host-wide settings.
    #[serde(default)]
    pub settings: Settings,
    /// Free-space pools, by name: devices cut into extents.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub pools: BTreeMap<String, Pool>,
    /// Virtual disks, by name, each allocated from a pool. A vdisk no longer
    /// listed is planned for deletion.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub vdisks: BTreeMap<String, Vdisk>,
    /// Managed domains, by name: each one's disks are exactly those listed.
    /// Domains not listed here are left alone.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": "^[^/\\u0000-\\u001f]+$" }))]
    pub domains: BTreeMap<String, Domain>,
}

impl Desired {
    /// Every host path the file names: pool devices and `phy:`/`file:`
    /// sources, as written.
    pub fn paths(&self) -> Vec<String> {
        let devices = self.pools.values().flat_map(|p| p.devices.iter().cloned());
        let sources = self
            .domains
            .values()
            .flat_map(|d| d.disks.values())
            .filter_map(|disk| match &disk.source {
                super::Source::Phy(path) | super::Source::File(path) => Some(path.clone()),
                super::Source::Vdisk(_) => None,
            });
        devices.chain(sources).collect()
    }
}

/// Host-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How much sharing of a disk area between holders is tolerated:
    /// `exclusive` (only readers may share), `single-writer` (one writer and
    /// readers) or `unsafe` (anything).
    #[serde(default)]
    pub sharing: Sharing,
    /// How attachments are made: `xl` (xl block-attach) or `xenstore`
    /// (directly, as a toolstack does).
    #[serde(default)]
    pub toolstack: Toolstack,
    /// How vdisks become block devices: `auto`, `dm` (device-mapper) or `loop`.
    #[serde(default)]
    pub realise: Realise,
}

/// A free-space pool: devices cut into extents of one size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Size of the extents the devices are cut into: a whole number of MiB,
    /// at least 1MiB.
    #[serde(default = "default_extent_size")]
    pub extent_size: Size,
    /// The pool's devices (whole disks, partitions or loop devices), by
    /// absolute path. Never a device that dom0 mounts, swaps on or holds.
    pub devices: Vec<String>,
    /// When released extents are zeroed: `on-release`, `on-allocate` or `never`.
    #[serde(default)]
    pub scrub: Scrub,
}

/// The default extent size, 64MiB.
pub fn default_extent_size() -> Size {
    Size::from_sectors(64 * 2048)
}

/// A virtual disk allocated from a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vdisk {
    /// The pool it is allocated from.
    pub pool: String,
    /// Its size, rounded up to whole extents of the pool. Growing is allowed;
    /// shrinking is refused.
    pub size: Size,
    /// When it expires and its extents return to the pool.
    #[serde(default = "never")]
    pub expires: Expiry,
    /// Refuse any plan that would delete this vdisk, even with `--allow-destroy`.
    #[serde(default)]
    pub prevent_destroy: bool,
}

fn never() -> Expiry {
    Expiry::Never
}

/// A managed domain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    /// Its attachments, by vdev (`xvda`, `xvdb1`, `d0p1`, `hdc`, `sda3` or a
    /// device id). Attachments not listed are planned for detach.
    #[serde(default)]
    pub disks: BTreeMap<String, Disk>,
}

/// One attachment: what the guest sees at a vdev, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// What the guest sees.
    pub source: Source,
    /// `r` (read-only), `w` (read-write) or `w!` (read-write, sharing accepted).
    pub mode: Mode,
    /// The image format of a `file:` source: `raw` (the default), `qcow`,
    /// `qcow2`, `vhd` or `qed`. A vdisk or a block device is always raw.
    #[serde(default, skip_serializing_if = "Format::is_raw")]
    pub format: Format,
}
