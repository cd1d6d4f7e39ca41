//! Turning sources into the disk areas they occupy: a vdisk's extents
//! placed on their whole disks, a `phy:` device through the block device
//! table, a file by its path.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::extent::{DevNum, SectorRange};
use crate::observe::{HostState, UseTarget, devices};
use crate::state::StateSnapshot;

/// A disk area: sectors of a whole disk, or a whole file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Area {
    Sectors(SectorRange),
    File(String),
}

impl From<&UseTarget> for Area {
    fn from(target: &UseTarget) -> Area {
        match target {
            UseTarget::Sectors {
                disk,
                start,
                sectors,
            } => Area::Sectors(SectorRange {
                device: *disk,
                start: *start,
                sectors: *sectors,
            }),
            UseTarget::File { path, .. } => Area::File(normalise(path)),
        }
    }
}

/// Lexically normalised, so that one file written two ways is one file.
pub fn normalise(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

pub(super) struct Resolver<'a> {
    host: &'a HostState,
    /// Pool device number to where it lies: (whole disk, first sector).
    places: BTreeMap<DevNum, (DevNum, u64)>,
}

impl<'a> Resolver<'a> {
    pub(super) fn new(state: &StateSnapshot, host: &'a HostState) -> Resolver<'a> {
        let mut places = BTreeMap::new();
        for device in state.pools.iter().flat_map(|p| &p.devices) {
            places.insert(
                device.device,
                Resolver::place(
                    host,
                    device.device,
                    device.on_disk.map(|p| (p.disk, p.start)),
                ),
            );
        }
        Resolver { host, places }
    }

    /// Where a pool device lies: as recorded, else as the host shows it,
    /// else taken as a whole disk of its own.
    fn place(host: &HostState, device: DevNum, recorded: Option<(DevNum, u64)>) -> (DevNum, u64) {
        recorded
            .or_else(|| {
                host.block_devices
                    .iter()
                    .find(|d| d.device == device)
                    .map(|d| (d.disk, d.start))
            })
            .unwrap_or((device, 0))
    }

    /// Records a pool device the plan adds.
    pub(super) fn add_pool_device(&mut self, device: DevNum) {
        let place = Resolver::place(self.host, device, None);
        self.places.insert(device, place);
    }

    /// Extents (relative to their pool devices) as areas of whole disks,
    /// neighbours merged.
    pub(super) fn extents(&self, extents: &[SectorRange]) -> Vec<Area> {
        let mut ranges: Vec<SectorRange> = extents
            .iter()
            .map(|e| {
                let (disk, offset) = self.places.get(&e.device).copied().unwrap_or((e.device, 0));
                SectorRange {
                    device: disk,
                    start: offset + e.start,
                    sectors: e.sectors,
                }
            })
            .collect();
        ranges.sort();
        let mut merged: Vec<SectorRange> = Vec::new();
        for range in ranges {
            match merged.last_mut() {
                Some(last) if last.device == range.device && last.end() == range.start => {
                    last.sectors += range.sectors
                }
                _ => merged.push(range),
            }
        }
        merged.into_iter().map(Area::Sectors).collect()
    }

    /// The areas of the block device at `path`, if the host has it.
    pub(super) fn device_path(&self, path: &str) -> Option<Vec<Area>> {
        let device = devices::by_path(path, &self.host.block_devices)?;
        Some(
            devices::sectors_of(device, &self.host.block_devices)
                .iter()
                .map(Area::from)
                .collect(),
        )
    }

    /// The areas of the block device numbered `number`, if the host has it.
    pub(super) fn device_number(&self, number: DevNum) -> Option<Vec<Area>> {
        let device = self
            .host
            .block_devices
            .iter()
            .find(|d| d.device == number)?;
        Some(
            devices::sectors_of(device, &self.host.block_devices)
                .iter()
                .map(Area::from)
                .collect(),
        )
    }
}

/// Whether two lists of areas share any sector or file.
pub(super) fn overlap(a: &[Area], b: &[Area]) -> bool {
    a.iter().any(|x| {
        b.iter().any(|y| match (x, y) {
            (Area::Sectors(p), Area::Sectors(q)) => {
                p.device == q.device && p.start < q.end() && q.start < p.end()
            }
            (Area::File(p), Area::File(q)) => p == q,
            _ => false,
        })
    })
}
