//! Turning a vdisk into a block device dom0 can hand to a guest: a
//! device-mapper linear device listing its extents in order, or, for a vdisk
//! that is one contiguous run, a loop device over the pool device with an
//! offset and a size limit (which works where device-mapper is absent).

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::command::{CommandError, run};
use crate::extent::{DevNum, SectorRange};

/// A vdisk to realise: its extents in order, relative to their pool devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealiseRequest {
    pub vdisk: String,
    pub extents: Vec<SectorRange>,
    /// Pool device paths, by device number.
    pub pool_devices: BTreeMap<DevNum, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RealiseError {
    #[error(
        "vdisk `{vdisk}` is {segments} runs of extents; a loop device can map only one: set realise = \"dm\" or \"auto\""
    )]
    NotContiguous { vdisk: String, segments: usize },
    #[error(
        "vdisk `{vdisk}` has no extents in the state DB; run `xendisk state --check` to see what \
         else is wrong"
    )]
    Empty { vdisk: String },
    #[error(
        "pool device {path} is now {found}, not the device {expected} the state DB records; \
         no loop device was made: point {path} back at {expected}, or take it out of its pool"
    )]
    WrongDevice {
        path: String,
        expected: DevNum,
        found: String,
    },
    #[error("cannot give {device} (vdisk `{vdisk}`) its new size: {source}")]
    Resize {
        vdisk: String,
        device: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
}

pub trait Realiser {
    /// Makes the device (or finds it made) and returns its path.
    fn realise(&mut self, request: &RealiseRequest) -> Result<String, RealiseError>;
    /// Removes the vdisk's device, if there is one.
    fn unrealise(&mut self, request: &RealiseRequest) -> Result<(), RealiseError>;
    /// Makes the vdisk's device, if there is one, as long as its extents
    /// (after a grow), in place: whoever has it open (blkback, a guest)
    /// keeps it and sees the new size.
    fn resize(&mut self, request: &RealiseRequest) -> Result<(), RealiseError>;
}

/// The device-mapper name, and the path dom0 sees it at.
pub fn mapper_path(vdisk: &str) -> String {
    format!("/dev/mapper/xendisk-{vdisk}")
}

/// Contiguous extents merged into runs.
fn runs(extents: &[SectorRange]) -> Vec<SectorRange> {
    let mut runs: Vec<SectorRange> = Vec::new();
    for extent in extents {
        match runs.last_mut() {
            Some(last) if last.device == extent.device && last.end() == extent.start => {
                last.sectors += extent.sectors
            }
            _ => runs.push(*extent),
        }
    }
    runs
}

/// The `dmsetup` table: one `linear` line per run, in the vdisk's order.
pub fn dm_table(extents: &[SectorRange]) -> String {
    let mut table = String::new();
    let mut logical = 0;
    for run in runs(extents) {
        table.push_str(&format!(
            "{logical} {} linear {} {}\n",
            run.sectors, run.device, run.start
        ));
        logical += run.sectors;
    }
    table
}

/// Device-mapper linear devices, through `dmsetup`.
pub struct DeviceMapper;

impl Realiser for DeviceMapper {
    fn realise(&mut self, request: &RealiseRequest) -> Result<String, RealiseError> {
        let path = mapper_path(&request.vdisk);
        if Path::new(&path).exists() {
            return Ok(path);
        }
        if request.extents.is_empty() {
            return Err(RealiseError::Empty {
                vdisk: request.vdisk.clone(),
            });
        }
        let name = format!("xendisk-{}", request.vdisk);
        run(
            "dmsetup",
            &["create".into(), name],
            Some(&dm_table(&request.extents)),
        )?;
        Ok(path)
    }

    fn unrealise(&mut self, request: &RealiseRequest) -> Result<(), RealiseError> {
        if !Path::new(&mapper_path(&request.vdisk)).exists() {
            return Ok(());
        }
        run(
            "dmsetup",
            &["remove".into(), format!("xendisk-{}", request.vdisk)],
            None,
        )
        .map(|_| ())
        .map_err(RealiseError::from)
    }

    fn resize(&mut self, request: &RealiseRequest) -> Result<(), RealiseError> {
        if !Path::new(&mapper_path(&request.vdisk)).exists() {
            return Ok(());
        }
        // The longer table is loaded while I/O waits, then made live.
        let name = format!("xendisk-{}", request.vdisk);
        run("dmsetup", &["suspend".into(), name.clone()], None)?;
        let loaded = run(
            "dmsetup",
            &["load".into(), name.clone()],
            Some(&dm_table(&request.extents)),
        );
        // Resumed whatever happened: a device left suspended hangs its guest.
        let resumed = run("dmsetup", &["resume".into(), name], None);
        loaded?;
        resumed?;
        Ok(())
    }
}

/// Loop devices over the pool device, for a vdisk of one run.
pub struct LoopDevice;

impl LoopDevice {
    /// The loop device already mapping exactly this window, if any (any
    /// length when `sizelimit` is `None`).
    fn existing(file: &str, offset: u64, sizelimit: Option<u64>) -> Option<String> {
        // sysfs names the backing file by its real path, links resolved.
        let real = std::fs::canonicalize(file).ok();
        let file = real.as_deref().and_then(Path::to_str).unwrap_or(file);
        let entries = std::fs::read_dir("/sys/class/block").ok()?;
        entries.filter_map(Result::ok).find_map(|entry| {
            let loop_dir = entry.path().join("loop");
            let read = |leaf: &str| {
                std::fs::read_to_string(loop_dir.join(leaf))
                    .ok()
                    .map(|t| t.trim().to_owned())
            };
            let matches = read("backing_file").as_deref() == Some(file)
                && read("offset").and_then(|t| t.parse::<u64>().ok()) == Some(offset)
                && (sizelimit.is_none()
                    || read("sizelimit").and_then(|t| t.parse::<u64>().ok()) == sizelimit);
            matches.then(|| format!("/dev/{}", entry.file_name().to_string_lossy()))
        })
    }

    fn window(request: &RealiseRequest) -> Result<(String, u64, u64), RealiseError> {
        let runs = runs(&request.extents);
        let [run] = runs.as_slice() else {
            if runs.is_empty() {
                return Err(RealiseError::Empty {
                    vdisk: request.vdisk.clone(),
                });
            }
            return Err(RealiseError::NotContiguous {
                vdisk: request.vdisk.clone(),
                segments: runs.len(),
            });
        };
        let file = request
            .pool_devices
            .get(&run.device)
            .cloned()
            .unwrap_or_else(|| run.device.to_string());
        // A link repointed since the plan must not map another device.
        let found = std::fs::metadata(&file)
            .ok()
            .filter(|m| m.file_type().is_block_device())
            .map(|m| DevNum::from_rdev(m.rdev()));
        if found != Some(run.device) {
            return Err(RealiseError::WrongDevice {
                path: file,
                expected: run.device,
                found: found.map_or_else(
                    || "not a block device".to_owned(),
                    |d| format!("device {d}"),
                ),
            });
        }
        Ok((file, run.start * 512, run.sectors * 512))
    }
}

impl Realiser for LoopDevice {
    fn realise(&mut self, request: &RealiseRequest) -> Result<String, RealiseError> {
        let (file, offset, sizelimit) = LoopDevice::window(request)?;
        if let Some(device) = LoopDevice::existing(&file, offset, Some(sizelimit)) {
            return Ok(device);
        }
        let args = [
            "--find",
            "--show",
            "--offset",
            &offset.to_string(),
            "--sizelimit",
            &sizelimit.to_string(),
            &file,
        ];
        Ok(run("losetup", &args.map(str::to_owned), None)?)
    }

    fn unrealise(&mut self, request: &RealiseRequest) -> Result<(), RealiseError> {
        let (file, offset, sizelimit) = LoopDevice::window(request)?;
        match LoopDevice::existing(&file, offset, Some(sizelimit)) {
            Some(device) => Ok(run("losetup", &["--detach".into(), device], None).map(|_| ())?),
            None => Ok(()),
        }
    }

    fn resize(&mut self, request: &RealiseRequest) -> Result<(), RealiseError> {
        let (file, offset, sizelimit) = LoopDevice::window(request)?;
        // Only the vdisk's own device: at its start, no longer than it.
        let Some(device) = LoopDevice::existing(&file, offset, None).filter(|device| {
            loop_size_limit(device).is_some_and(|limit| limit > 0 && limit <= sizelimit)
        }) else {
            return Ok(());
        };
        let error = |source| RealiseError::Resize {
            vdisk: request.vdisk.clone(),
            device: device.clone(),
            source,
        };
        let opened = std::fs::File::open(&device).map_err(error)?;
        crate::loop_ioctl::set_size_limit(&opened, sizelimit).map_err(error)
    }
}

/// A loop device's size limit in bytes, from sysfs.
fn loop_size_limit(device: &str) -> Option<u64> {
    let name = device.strip_prefix("/dev/")?;
    std::fs::read_to_string(format!("/sys/class/block/{name}/loop/sizelimit"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `settings.realise = "auto"`: a loop device for a vdisk of one run,
/// device-mapper otherwise.
pub struct Auto;

impl Realiser for Auto {
    fn realise(&mut self, request: &RealiseRequest) -> Result<String, RealiseError> {
        match runs(&request.extents).len() {
            1 => LoopDevice.realise(request),
            _ => DeviceMapper.realise(request),
        }
    }

    fn unrealise(&mut self, request: &RealiseRequest) -> Result<(), RealiseError> {
        match runs(&request.extents).len() {
            1 => LoopDevice.unrealise(request),
            _ => DeviceMapper.unrealise(request),
        }
    }

    fn resize(&mut self, request: &RealiseRequest) -> Result<(), RealiseError> {
        // Whichever it was made as: the plan refuses a grow that a loop
        // device could not follow.
        if Path::new(&mapper_path(&request.vdisk)).exists() {
            DeviceMapper.resize(request)
        } else {
            LoopDevice.resize(request)
        }
    }
}

/// For simulated hosts: no device is made; a vdisk is attached by its
/// device-mapper path, which is what a real host would show.
pub struct PathOnly;

impl Realiser for PathOnly {
    fn realise(&mut self, request: &RealiseRequest) -> Result<String, RealiseError> {
        Ok(mapper_path(&request.vdisk))
    }

    fn unrealise(&mut self, _request: &RealiseRequest) -> Result<(), RealiseError> {
        Ok(())
    }

    fn resize(&mut self, _request: &RealiseRequest) -> Result<(), RealiseError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dm_table_lists_runs_in_the_vdisk_order() {
        let d = |minor, start| SectorRange {
            device: DevNum::new(8, minor),
            start,
            sectors: 2048,
        };
        let table = dm_table(&[d(17, 4096), d(17, 6144), d(33, 0), d(17, 0)]);
        assert_eq!(
            table,
            "0 4096 linear 8:17 4096\n4096 2048 linear 8:33 0\n6144 2048 linear 8:17 0\n"
        );
    }
}
