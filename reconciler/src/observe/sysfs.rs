//! The block device table from sysfs: every entry of `/sys/class/block`,
//! with its device number, the whole disk it lies on and where, its size,
//! device-mapper name, holders, slaves and loop backing.

use std::fs;
use std::path::Path;

use super::{BlockDevice, LoopBacking, ObserveError, under};
use crate::extent::DevNum;

pub(super) fn block_devices(root: &Path) -> Result<Vec<BlockDevice>, ObserveError> {
    let class = under(root, "/sys/class/block");
    let entries = fs::read_dir(&class).map_err(|source| read_error(&class, source))?;
    let mut devices = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| read_error(&class, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Follow the class link to the device's own directory, whose parent
        // is the whole disk when this is a partition.
        let dir =
            fs::canonicalize(entry.path()).map_err(|source| read_error(&entry.path(), source))?;
        let device = read_devnum(&dir.join("dev"))?;
        let sectors = read_number(&dir.join("size"))?;
        let (disk, start) = if dir.join("partition").exists() {
            (
                read_devnum(&dir.parent().unwrap_or(&dir).join("dev"))?,
                read_number(&dir.join("start"))?,
            )
        } else {
            (device, 0)
        };
        let loop_backing = loop_backing(&dir).map(|backing| LoopBacking {
            behind: super::loopdev::behind(root, &name, device),
            ..backing
        });
        devices.push(BlockDevice {
            name,
            device,
            disk,
            start,
            sectors,
            dm_name: read_optional(&dir.join("dm/name")),
            holders: list(&dir.join("holders")),
            slaves: list(&dir.join("slaves")),
            loop_backing,
        });
    }
    devices.sort_by_key(|d| d.device);
    Ok(devices)
}

fn loop_backing(dir: &Path) -> Option<LoopBacking> {
    let file = read_optional(&dir.join("loop/backing_file"))?;
    Some(LoopBacking {
        file,
        behind: None,
        offset: read_optional(&dir.join("loop/offset"))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        sizelimit: read_optional(&dir.join("loop/sizelimit"))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
    })
}

fn read_error(path: &Path, source: std::io::Error) -> ObserveError {
    ObserveError::Read {
        path: path.display().to_string(),
        source,
    }
}

fn read_text(path: &Path) -> Result<String, ObserveError> {
    fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| read_error(path, source))
}

fn read_optional(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

fn read_number(path: &Path) -> Result<u64, ObserveError> {
    let text = read_text(path)?;
    text.parse().map_err(|_| ObserveError::Parse {
        path: path.display().to_string(),
        message: format!("expected a number, found {text:?}"),
    })
}

fn read_devnum(path: &Path) -> Result<DevNum, ObserveError> {
    let text = read_text(path)?;
    text.parse().map_err(|message| ObserveError::Parse {
        path: path.display().to_string(),
        message,
    })
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
