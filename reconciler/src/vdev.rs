//! Guest-side virtual block device names ("vdevs") and their xenstore ids.
//!
//! Owns the mapping between what an operator writes (`xvda`, `xvdb1`, `d0p1`,
//! `hdc`, `sda3`, `51712`) and the number Xen keys the device by under
//! `device/vbd/<id>` and `backend/vbd/<domid>/<id>`, as specified by Xen's
//! `xen-vbd-interface(7)` and computed by libxl (`libxl__device_disk_dev_number`,
//! `libxl__devid_to_vdev`). Pure functions only: no I/O.
//!
//! libxl accepts a few spellings by accident (its parser is `sscanf` and
//! `strtoul`); xendisk rejects those with a message instead, because a
//! desired-state file is reviewed by people and must mean one thing. Each such
//! decision is marked "Stricter than libxl" below.

use std::fmt;

use serde::Serialize;

/// Bit that marks the extended xvd encoding, for disks past 15 or partitions past 15.
const EXTENDED: u32 = 1 << 28;
/// Ids from `2 << 28` on are reserved for future use by the interface.
const RESERVED_FROM: u32 = 2 << 28;
/// The extended encoding has 20 bits of disk number.
const MAX_XVD_DISK: u32 = (1 << 20) - 1;
const MAX_XVD_PARTITION: u32 = 255;

const XVD_MAJOR: u32 = 202;
const SD_MAJOR: u32 = 8;
const HD_MAJOR_FIRST: u32 = 3;
const HD_MAJOR_SECOND: u32 = 22;

/// The nominal disk type of a vdev, which decides its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VdevKind {
    /// Xen virtual disk (`xvd*`, `dXpY`).
    Xvd,
    /// Emulated IDE disk (`hd*`), disks 0 to 3.
    Hd,
    /// Emulated SCSI disk (`sd*`), disks 0 to 15.
    Sd,
}

impl VdevKind {
    /// The name prefix of this kind: `xvd`, `hd` or `sd`.
    pub fn prefix(self) -> &'static str {
        match self {
            VdevKind::Xvd => "xvd",
            VdevKind::Hd => "hd",
            VdevKind::Sd => "sd",
        }
    }
}

/// A validated vdev: a disk type, a disk number and a partition (0 = whole disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vdev {
    pub kind: VdevKind,
    pub disk: u32,
    pub partition: u32,
}

/// Why a string or a number is not a vdev. The message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VdevError {
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> VdevError {
    VdevError::Invalid(message.into())
}

impl Vdev {
    /// Parses a vdev name or a plain device id.
    pub fn parse(text: &str) -> Result<Vdev, VdevError> {
        if text.is_empty() {
            // Stricter than libxl: strtoul("") "succeeds" there and yields id 0.
            return Err(invalid(
                "empty vdev name; expected a name such as xvda, xvdb1, d0p1, hda or sda3",
            ));
        }
        if let Some(rest) = text.strip_prefix("xvd") {
            return parse_lettered(text, rest, VdevKind::Xvd, MAX_XVD_DISK, MAX_XVD_PARTITION);
        }
        if let Some(rest) = text.strip_prefix("hd") {
            return parse_lettered(text, rest, VdevKind::Hd, 3, 63);
        }
        if let Some(rest) = text.strip_prefix("sd") {
            return parse_lettered(text, rest, VdevKind::Sd, 15, 15);
        }
        if let Some(rest) = text.strip_prefix('d')
            && rest.starts_with(|c: char| c.is_ascii_digit())
        {
            return parse_numbered(text, rest);
        }
        if text.starts_with(|c: char| c.is_ascii_digit()) {
            return parse_device_id(text);
        }
        Err(invalid(format!(
            "`{text}` is not a vdev; expected xvd<letters>[partition] (xvda, xvdb1), \
             d<disk>p<partition> (d0p1), hd<a-d>[partition], sd<a-p>[partition] or a device id"
        )))
    }

    /// Decodes a xenstore device id. Only the encodings of `xen-vbd-interface(7)`
    /// are accepted, each in its canonical form, so that id and name map one to one.
    pub fn from_device_id(id: u32) -> Result<Vdev, VdevError> {
        if id >= RESERVED_FROM {
            return Err(invalid(format!(
                "device id {id} is in the range reserved by xen-vbd-interface(7) (2<<28 and above)"
            )));
        }
        if id & EXTENDED != 0 {
            let minor = id & !EXTENDED;
            let disk = minor >> 8;
            let partition = minor & 0xff;
            if disk <= 15 && partition <= 15 {
                // Stricter than libxl: it would name this id like the short
                // form (e.g. xvda), giving two ids one name.
                return Err(invalid(format!(
                    "device id {id} uses the extended encoding for disk {disk} partition \
                     {partition}, which the short form encodes as {}; use that id",
                    short_xvd_id(disk, partition)
                )));
            }
            return Ok(Vdev {
                kind: VdevKind::Xvd,
                disk,
                partition,
            });
        }
        let major = id >> 8;
        let minor = id & 0xff;
        let vdev = match major {
            XVD_MAJOR => Vdev {
                kind: VdevKind::Xvd,
                disk: minor >> 4,
                partition: minor & 0xf,
            },
            SD_MAJOR => Vdev {
                kind: VdevKind::Sd,
                disk: minor >> 4,
                partition: minor & 0xf,
            },
            // Major 3 holds only hda and hdb (minors 0-127): the interface puts
            // hdc and hdd on major 22. Minors 128-255 here would name hdc or
            // hdd, whose id is on major 22, so two ids would name one disk and
            // an attachment observed under this id could never be matched.
            HD_MAJOR_FIRST if minor >> 6 >= 2 => {
                let same = Vdev {
                    kind: VdevKind::Hd,
                    disk: minor >> 6,
                    partition: minor & 0x3f,
                };
                return Err(invalid(format!(
                    "device id {id} (major 3, minor {minor}) is not canonical: major 3 holds only \
                     hda and hdb (minors 0-127); it would be {same}, which xen-vbd-interface(7) \
                     puts on major 22 as id {}; use that id or the name {same}",
                    same.device_id()
                )));
            }
            HD_MAJOR_FIRST => Vdev {
                kind: VdevKind::Hd,
                disk: minor >> 6,
                partition: minor & 0x3f,
            },
            HD_MAJOR_SECOND => Vdev {
                kind: VdevKind::Hd,
                disk: 2 + (minor >> 6),
                partition: minor & 0x3f,
            },
            _ => {
                // Stricter than libxl: it writes any number through; the
                // interface calls other values "deprecated / reserved".
                return Err(invalid(format!(
                    "device id {id} (major {major}, minor {minor}) is not a xen-vbd-interface(7) \
                     encoding; expected major 202 (xvd), 8 (sd), 3 or 22 (hd), or the extended \
                     form (1<<28)|(disk<<8)|partition"
                )));
            }
        };
        if vdev.kind == VdevKind::Hd && vdev.disk > 3 {
            return Err(invalid(format!(
                "device id {id} names IDE disk {}, but only 0-3 exist",
                vdev.disk
            )));
        }
        // The cases above should leave only canonical ids; this guard keeps
        // "one id, one name" true even if a new encoding slips past them,
        // since a non-canonical id is an attachment no plan could ever match.
        let canonical = vdev.device_id();
        if canonical != id {
            return Err(invalid(format!(
                "device id {id} is not canonical: it would be {vdev}, whose id is {canonical}; \
                 use that id or the name {vdev}"
            )));
        }
        Ok(vdev)
    }

    /// The id Xen keys this device by in xenstore.
    pub fn device_id(&self) -> u32 {
        match self.kind {
            VdevKind::Xvd if self.disk <= 15 && self.partition <= 15 => {
                short_xvd_id(self.disk, self.partition)
            }
            VdevKind::Xvd => EXTENDED | (self.disk << 8) | self.partition,
            VdevKind::Sd => (SD_MAJOR << 8) | (self.disk << 4) | self.partition,
            VdevKind::Hd => {
                let major = if self.disk < 2 {
                    HD_MAJOR_FIRST
                } else {
                    HD_MAJOR_SECOND
                };
                (major << 8) | ((self.disk & 1) << 6) | self.partition
            }
        }
    }

    /// The conventional name: `xvd`/`hd`/`sd`, the disk as letters, then the
    /// partition unless it is 0 (the whole disk).
    pub fn canonical_name(&self) -> String {
        let mut name = format!("{}{}", self.kind.prefix(), disk_letters(self.disk));
        if self.partition != 0 {
            name.push_str(&self.partition.to_string());
        }
        name
    }
}

impl fmt::Display for Vdev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical_name())
    }
}

fn short_xvd_id(disk: u32, partition: u32) -> u32 {
    (XVD_MAJOR << 8) | (disk << 4) | partition
}

/// Disk number as bijective base-26 letters: 0 = a, 25 = z, 26 = aa, 701 = zz.
fn disk_letters(disk: u32) -> String {
    let mut letters = Vec::new();
    let mut rest = u64::from(disk) + 1;
    while rest > 0 {
        rest -= 1;
        letters.push(b'a' + (rest % 26) as u8);
        rest /= 26;
    }
    letters.reverse();
    String::from_utf8(letters).expect("ASCII letters")
}

/// `<prefix><letters>[<partition>]`, the form shared by xvd, hd and sd.
fn parse_lettered(
    text: &str,
    rest: &str,
    kind: VdevKind,
    max_disk: u32,
    max_partition: u32,
) -> Result<Vdev, VdevError> {
    let prefix = &text[..text.len() - rest.len()];
    let letters_end = rest
        .find(|c: char| !c.is_ascii_lowercase())
        .unwrap_or(rest.len());
    let (letters, digits) = rest.split_at(letters_end);
    let last_disk_letter = disk_letters(max_disk);
    if letters.is_empty() {
        // Stricter than libxl: `xvd` or `hd` alone decode there to disk -1.
        return Err(invalid(format!(
            "`{text}` has no disk letter after `{prefix}`; expected {prefix}a to {prefix}{last_disk_letter}"
        )));
    }
    let disk = bijective_to_index(letters).filter(|d| *d <= u64::from(max_disk));
    let Some(disk) = disk else {
        return Err(invalid(format!(
            "`{text}`: disk `{letters}` is out of range; {prefix} disks go from {prefix}a to \
             {prefix}{last_disk_letter}"
        )));
    };
    let partition = parse_partition(text, digits, max_partition)?;
    Ok(Vdev {
        kind,
        disk: disk as u32,
        partition,
    })
}

/// Reads letters as a bijective base-26 number, `None` on overflow.
fn bijective_to_index(letters: &str) -> Option<u64> {
    let mut value: u64 = 0;
    for letter in letters.bytes() {
        value = value
            .checked_mul(26)?
            .checked_add(u64::from(letter - b'a') + 1)?;
        if value > u64::from(u32::MAX) {
            return None;
        }
    }
    value.checked_sub(1)
}

fn parse_partition(text: &str, digits: &str, max_partition: u32) -> Result<u32, VdevError> {
    if digits.is_empty() {
        return Ok(0);
    }
    let partition = parse_decimal(digits).ok_or_else(|| {
        // Stricter than libxl for `xvda+1` (strtoul accepts the sign); the
        // same as libxl for a leading zero, which it refuses too.
        invalid(format!(
            "`{text}`: `{digits}` is not a partition number; expected 1 to {max_partition} in \
             decimal without a leading zero, or nothing for the whole disk"
        ))
    })?;
    if partition == 0 || partition > max_partition {
        return Err(invalid(format!(
            "`{text}`: partition {partition} is out of range; expected 1 to {max_partition}, or \
             no number for the whole disk"
        )));
    }
    Ok(partition)
}

/// `d<disk>p<partition>`, the numeric xvd form.
fn parse_numbered(text: &str, rest: &str) -> Result<Vdev, VdevError> {
    let expected = "expected d<disk>p<partition> with decimal numbers and no leading zeros, \
                    disk 0 to 1048575 and partition 0 to 255 (e.g. d0p0, d1p2)";
    // Stricter than libxl: it reads both numbers with `%i`, so `d010p0` is
    // octal disk 8 and `d0x1p0` hex; and `d0` alone is refused there too.
    let Some((disk, partition)) = rest.split_once('p') else {
        return Err(invalid(format!("`{text}` has no partition; {expected}")));
    };
    let (Some(disk), Some(partition)) = (parse_decimal(disk), parse_decimal(partition)) else {
        return Err(invalid(format!(
            "`{text}` is not a d<disk>p<partition> name; {expected}"
        )));
    };
    if disk > MAX_XVD_DISK || partition > MAX_XVD_PARTITION {
        return Err(invalid(format!("`{text}` is out of range; {expected}")));
    }
    Ok(Vdev {
        kind: VdevKind::Xvd,
        disk,
        partition,
    })
}

/// A plain device id, decimal or `0x` hexadecimal.
fn parse_device_id(text: &str) -> Result<Vdev, VdevError> {
    let id = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
            .ok()
            .filter(|_| !hex.starts_with('+'))
    } else {
        // Stricter than libxl: a leading zero means octal to strtoul; a
        // reviewer would read it as decimal, so it is refused.
        parse_decimal(text)
    };
    let Some(id) = id else {
        return Err(invalid(format!(
            "`{text}` is not a device id; expected a decimal number without leading zeros \
             (51712) or hexadecimal with 0x (0xca00)"
        )));
    };
    Vdev::from_device_id(id)
}

/// Decimal digits only, no sign, no leading zero (except "0" itself).
fn parse_decimal(digits: &str) -> Option<u32> {
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if well_formed {
        digits.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
