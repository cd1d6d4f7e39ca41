//! The shared vocabulary of disk areas: device numbers and sector ranges.
//!
//! Plain values used by every stage (state, observe, plan, safety), so that
//! none of them has to reach into another for a type. No I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A block device number, `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    pub const fn new(major: u32, minor: u32) -> DevNum {
        DevNum { major, minor }
    }

    /// Decodes a `st_rdev` as glibc's `major()`/`minor()` do. This also reads
    /// the 16-bit numbers of Linux 2.4 (major in the high byte), which is what
    /// the ancestor's database holds.
    pub const fn from_rdev(rdev: u64) -> DevNum {
        let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
        let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
        DevNum {
            major: major as u32,
            minor: minor as u32,
        }
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for DevNum {
    type Err = String;

    fn from_str(text: &str) -> Result<DevNum, String> {
        let parsed = text
            .split_once(':')
            .and_then(|(major, minor)| Some(DevNum::new(major.parse().ok()?, minor.parse().ok()?)));
        parsed.ok_or_else(|| {
            format!("\"{text}\" is not a device number; expected MAJOR:MINOR such as 8:3")
        })
    }
}

impl Serialize for DevNum {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl schemars::JsonSchema for DevNum {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DevNum".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A block device number, MAJOR:MINOR in decimal.",
            "type": "string",
            "pattern": "^[0-9]+:[0-9]+$"
        })
    }
}

impl<'de> Deserialize<'de> for DevNum {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<DevNum, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A run of sectors on one device: `(device, start sector, sector count)`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub struct SectorRange {
    pub device: DevNum,
    pub start: u64,
    pub sectors: u64,
}

impl SectorRange {
    /// One past the last sector.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.sectors)
    }
}

impl fmt::Display for SectorRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sectors {}..{}", self.device, self.start, self.end())
    }
}
