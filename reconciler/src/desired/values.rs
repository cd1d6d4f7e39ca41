//! The small value types of a desired-state file: sizes, expiries, sources,
//! modes and the closed enums of `[settings]` and `[pools]`.
//!
//! Each parses from the text an operator writes and prints back to the same
//! canonical text, so that `generate` and `diff` can round-trip a file. Their
//! JSON Schemas are written by hand here because they are strings with a
//! grammar, which the derive cannot express.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes in a sector: every size is kept in whole 512-byte sectors.
pub const SECTOR_BYTES: u64 = 512;

/// Implements `Serialize`/`Deserialize` through `Display`/`FromStr`, so the
/// file and the error messages always agree on one grammar.
macro_rules! string_serde {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = Cow::<str>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

// ---------------------------------------------------------------- sizes

/// A size in bytes, rounded up to whole 512-byte sectors.
///
/// Written as an integer (bytes) or a string: a number then a unit, binary
/// (`KiB`, `MiB`, `GiB`, `TiB`) or decimal (`kB`, `MB`, `GB`, `TB`), or `B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size {
    sectors: u64,
}

impl Size {
    pub const fn from_sectors(sectors: u64) -> Size {
        Size { sectors }
    }

    /// The size in bytes, rounded up to a whole sector; `None` on overflow.
    pub fn from_bytes(bytes: u64) -> Option<Size> {
        let sectors = bytes.div_ceil(SECTOR_BYTES);
        sectors.checked_mul(SECTOR_BYTES)?;
        Some(Size { sectors })
    }

    pub const fn sectors(self) -> u64 {
        self.sectors
    }

    pub const fn bytes(self) -> u64 {
        self.sectors * SECTOR_BYTES
    }
}

const SIZE_UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
    ("B", 1),
];

const SIZE_EXPECTED: &str = "expected a whole number of bytes, or a whole number and a unit: \
                             B, KiB, MiB, GiB, TiB (powers of 1024) or kB, MB, GB, TB (powers \
                             of 1000), such as \"8GiB\"";

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Size, String> {
        let trimmed = text.trim();
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(digits_end);
        let unit = unit.trim_start();
        let multiplier = if unit.is_empty() {
            Some(1)
        } else {
            SIZE_UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, m)| *m)
        };
        let (Ok(number), Some(multiplier)) = (digits.parse::<u64>(), multiplier) else {
            return Err(format!("invalid size \"{text}\"; {SIZE_EXPECTED}"));
        };
        number
            .checked_mul(multiplier)
            .and_then(Size::from_bytes)
            .ok_or_else(|| format!("size \"{text}\" is too large; the largest is 8EiB"))
    }
}

impl fmt::Display for Size {
    /// The largest binary unit that divides the size exactly, so that the text
    /// reads back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.bytes();
        let (name, multiplier) = SIZE_UNITS
            .iter()
            .filter(|(name, _)| name.ends_with("iB") || *name == "B")
            .find(|(_, m)| bytes.is_multiple_of(*m) && bytes >= *m)
            .unwrap_or(&("B", 1));
        write!(f, "{}{name}", bytes / multiplier)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written<'a> {
            Bytes(i64),
            Text(Cow<'a, str>),
        }
        let invalid = || serde::de::Error::custom(format!("invalid size; {SIZE_EXPECTED}"));
        match Written::deserialize(deserializer).map_err(|_: D::Error| invalid())? {
            Written::Bytes(bytes) => u64::try_from(bytes)
                .ok()
                .and_then(Size::from_bytes)
                .ok_or_else(|| serde::de::Error::custom(format!("size {bytes} is negative"))),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: bytes as an integer, or a number and a unit (B, KiB, MiB, GiB, TiB, kB, MB, GB, TB). Rounded up to whole 512-byte sectors.",
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+\\s*(B|KiB|MiB|GiB|TiB|kB|MB|GB|TB)?\\s*$" }
            ]
        })
    }
}

// ---------------------------------------------------------------- expiry

/// When a vdisk expires: its extents then count as free space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expiry {
    /// Kept until deleted.
    Never,
    /// At a fixed instant.
    At(jiff::Timestamp),
    /// This many seconds after the vdisk was created (kept in the state DB,
    /// so the instant does not move from one run to the next).
    AfterCreation { seconds: u64 },
}

const DURATION_UNITS: &[(char, u64)] = &[
    ('s', 1),
    ('m', 60),
    ('h', 3600),
    ('d', 86_400),
    ('w', 604_800),
];

const EXPIRY_EXPECTED: &str = "expected \"never\", an RFC 3339 time such as \
                               \"2027-01-31T00:00:00Z\", or a duration after creation: a whole \
                               number and one of s, m, h, d, w, such as \"30d\"";

impl FromStr for Expiry {
    type Err = String;

    fn from_str(text: &str) -> Result<Expiry, String> {
        if text == "never" {
            return Ok(Expiry::Never);
        }
        if let Some((digits, unit)) = text.char_indices().last().map(|(i, c)| (&text[..i], c))
            && let Some((_, unit_seconds)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit)
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
        {
            let seconds = digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(*unit_seconds))
                .filter(|s| *s <= i64::MAX as u64 / 2)
                .ok_or_else(|| format!("duration \"{text}\" is too long"))?;
            if seconds == 0 {
                return Err(format!(
                    "expiry \"{text}\" would expire the vdisk at once; write a positive duration \
                     or delete the vdisk instead"
                ));
            }
            return Ok(Expiry::AfterCreation { seconds });
        }
        text.parse::<jiff::Timestamp>()
            .map(Expiry::At)
            .map_err(|_| format!("invalid expiry \"{text}\"; {EXPIRY_EXPECTED}"))
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expiry::Never => f.write_str("never"),
            Expiry::At(time) => write!(f, "{time}"),
            Expiry::AfterCreation { seconds } => {
                let (unit, unit_seconds) = DURATION_UNITS
                    .iter()
                    .rev()
                    .find(|(_, s)| seconds.is_multiple_of(*s))
                    .unwrap_or(&('s', 1));
                write!(f, "{}{unit}", seconds / unit_seconds)
            }
        }
    }
}

string_serde!(Expiry);

impl JsonSchema for Expiry {
    fn schema_name() -> Cow<'static, str> {
        "Expiry".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "\"never\", an RFC 3339 time, or a duration counted from the vdisk's creation (a whole number and s, m, h, d or w).",
            "type": "string",
            "anyOf": [
                { "const": "never" },
                { "pattern": "^[0-9]+[smhdw]$" },
                {
                    "format": "date-time",
                    "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
                }
            ]
        })
    }
}

// ---------------------------------------------------------------- sources

/// What an attachment hands to a guest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A vdisk declared in this file: `vdisk:NAME`.
    Vdisk(String),
    /// A dom0 block device: `phy:/dev/...`.
    Phy(String),
    /// An image file in dom0: `file:/path`.
    File(String),
}

impl FromStr for Source {
    type Err = String;

    fn from_str(text: &str) -> Result<Source, String> {
        let expected = "expected vdisk:NAME, phy:/dev/DEVICE or file:/ABSOLUTE/PATH";
        let Some((kind, target)) = text.split_once(':') else {
            return Err(format!("source \"{text}\" has no kind; {expected}"));
        };
        if target.is_empty() {
            return Err(format!(
                "source \"{text}\" names nothing after `{kind}:`; {expected}"
            ));
        }
        match kind {
            "vdisk" => Ok(Source::Vdisk(target.to_owned())),
            "phy" if target.starts_with("/dev/") => Ok(Source::Phy(target.to_owned())),
            "phy" => Err(format!(
                "source \"{text}\": phy: takes a block device under /dev/; for an image file \
                 write file:{target}"
            )),
            "file" if target.starts_with('/') => Ok(Source::File(target.to_owned())),
            "file" => Err(format!(
                "source \"{text}\": file: takes an absolute path (dom0 resolves it, not the \
                 directory xendisk runs in)"
            )),
            _ => Err(format!(
                "source \"{text}\" has unknown kind `{kind}`; {expected}"
            )),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Vdisk(name) => write!(f, "vdisk:{name}"),
            Source::Phy(path) => write!(f, "phy:{path}"),
            Source::File(path) => write!(f, "file:{path}"),
        }
    }
}

string_serde!(Source);

impl JsonSchema for Source {
    fn schema_name() -> Cow<'static, str> {
        "Source".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "What the guest sees: vdisk:NAME (a vdisk of this file), phy:/dev/DEVICE (a dom0 block device) or file:/PATH (an image file).",
            "type": "string",
            "pattern": "^(vdisk:.+|phy:/dev/.+|file:/.*)$"
        })
    }
}

// ---------------------------------------------------------------- modes

/// How a guest may use an attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Read-only (`r`, or xl's `ro`).
    Read,
    /// Read-write (`w`, or xl's `rw`).
    Write,
    /// Read-write, and this holder accepts sharing the disk (`w!`).
    WriteShared,
}

impl Mode {
    pub fn is_writable(self) -> bool {
        !matches!(self, Mode::Read)
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Mode, String> {
        match text {
            "r" | "ro" => Ok(Mode::Read),
            "w" | "rw" => Ok(Mode::Write),
            "w!" => Ok(Mode::WriteShared),
            _ => Err(format!(
                "invalid mode \"{text}\"; expected \"r\" (read-only), \"w\" (read-write) or \
                 \"w!\" (read-write, sharing accepted); \"ro\" and \"rw\" are read as r and w"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Read => "r",
            Mode::Write => "w",
            Mode::WriteShared => "w!",
        })
    }
}

string_serde!(Mode);

impl JsonSchema for Mode {
    fn schema_name() -> Cow<'static, str> {
        "Mode".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "r: read-only; w: read-write; w!: read-write with sharing explicitly accepted. ro and rw are accepted as r and w.",
            "type": "string",
            "enum": ["r", "w", "w!", "ro", "rw"]
        })
    }
}

// ---------------------------------------------------------------- formats

/// The format of the image an attachment hands its guest (xl's `format=`,
/// xl-disk-configuration(5)). Only a file holds anything but raw: a vdisk
/// is raw extents, and a block device is read as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    /// The bytes as they are.
    #[default]
    Raw,
    /// QEMU copy-on-write, version 1.
    Qcow,
    /// QEMU copy-on-write, version 2.
    Qcow2,
    /// Virtual Hard Disk (qemu calls it `vpc`).
    Vhd,
    /// QEMU enhanced disk.
    Qed,
}

impl Format {
    pub fn is_raw(&self) -> bool {
        *self == Format::Raw
    }

    /// The name xl and libxl write (`raw`, `qcow2`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow => "qcow",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vhd",
            Format::Qed => "qed",
        }
    }
}

const FORMATS: [Format; 5] = [
    Format::Raw,
    Format::Qcow,
    Format::Qcow2,
    Format::Vhd,
    Format::Qed,
];

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Format, String> {
        FORMATS
            .into_iter()
            .find(|format| format.name() == text)
            .ok_or_else(|| {
                format!(
                    "invalid format \"{text}\"; expected \"raw\" (the default), \"qcow\", \
                     \"qcow2\", \"vhd\" or \"qed\": the image formats xl takes \
                     (xl-disk-configuration(5))"
                )
            })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

string_serde!(Format);

impl JsonSchema for Format {
    fn schema_name() -> Cow<'static, str> {
        "Format".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The image format of a file source, as xl takes it: raw (the default), qcow, qcow2, vhd or qed. A vdisk or a block device is raw.",
            "type": "string",
            "enum": ["raw", "qcow", "qcow2", "vhd", "qed"]
        })
    }
}

// ---------------------------------------------------------------- closed enums

/// How much sharing of one extent between holders is tolerated (the
/// ancestor's "VBD expertise level").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    /// An extent may be shared only if every holder is read-only.
    #[default]
    Exclusive,
    /// One writer plus any number of readers.
    SingleWriter,
    /// Anything goes.
    Unsafe,
}

impl fmt::Display for Sharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sharing::Exclusive => "exclusive",
            Sharing::SingleWriter => "single-writer",
            Sharing::Unsafe => "unsafe",
        })
    }
}

/// How attachments are made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Toolstack {
    /// Through `xl block-attach` and `xl block-detach`.
    #[default]
    Xl,
    /// Directly in xenstore, as a toolstack does.
    Xenstore,
}

/// How a vdisk is turned into a block device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Realise {
    /// A loop device for a vdisk that is one contiguous run, device-mapper otherwise.
    #[default]
    Auto,
    /// Always a device-mapper linear device.
    Dm,
    /// Always a loop device (refused for a vdisk of several runs).
    Loop,
}

/// When a pool's released extents are zeroed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Scrub {
    /// When a vdisk is deleted, before its extents return to the free pool.
    #[default]
    OnRelease,
    /// When dirty extents are allocated to a new vdisk.
    OnAllocate,
    /// Never: a new vdisk may show what an old one held.
    Never,
}

#[cfg(test)]
mod tests;
