//! Turning what holders name into the disk areas they really touch: a
//! vdisk's extents placed on their whole disks; a block device (or a link
//! to one, or a `file:` that is one) through the block device table; a
//! regular file by its identity and the windows of the loop devices over it.

use std::collections::{BTreeMap, HashMap};

use super::actual::ActualIndex;
use crate::desired::Source;
use crate::extent::{DevNum, SectorRange};
use crate::observe::{
    Attachment, BlockDevice, HostState, LoopTarget, PathTarget, ResolvedPath, UseTarget, devices,
};
use crate::state::StateSnapshot;

pub use crate::safety::Area;

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
            UseTarget::File { dev, ino, path } => Area::Inode {
                dev: DevNum::from_rdev(*dev),
                ino: *ino,
                start: 0,
                sectors: u64::MAX,
                path: path.clone(),
            },
        }
    }
}

pub use crate::observe::paths::normalise;

pub(super) struct Resolver<'a> {
    host: &'a HostState,
    /// The desired file's paths, resolved on the live host (empty offline).
    sources: &'a [ResolvedPath],
    /// Pool device number to where it lies: (whole disk, first sector).
    places: BTreeMap<DevNum, (DevNum, u64)>,
    by_number: HashMap<DevNum, &'a BlockDevice>,
    /// Loop devices over a regular file: the file's identity and path, and
    /// the loop's first sector in it.
    loops_over_files: HashMap<DevNum, LoopWindow<'a>>,
}

/// Where a loop device's sectors lie in the regular file behind it.
#[derive(Debug, Clone, Copy)]
struct LoopWindow<'a> {
    dev: DevNum,
    ino: u64,
    path: &'a str,
    first: u64,
    /// The window starts inside a sector: each run of the loop's sectors
    /// touches one more of the file's.
    misaligned: bool,
}

impl<'a> Resolver<'a> {
    pub(super) fn new(
        state: &StateSnapshot,
        host: &'a HostState,
        sources: &'a [ResolvedPath],
    ) -> Resolver<'a> {
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
        let mut loops_over_files = HashMap::new();
        for device in &host.block_devices {
            let Some(backing) = &device.loop_backing else {
                continue;
            };
            // The kernel's answer holds after a rename or an unlink; the
            // name in sysfs is the fallback (a captured tree).
            let file = match backing.behind {
                Some(LoopTarget::File { dev, ino }) => Some((dev, ino)),
                Some(LoopTarget::Block { .. }) => None,
                None => match host.path(&normalise(&backing.file)) {
                    Some(PathTarget::File { dev, ino }) => Some((*dev, *ino)),
                    _ => None,
                },
            };
            if let Some((dev, ino)) = file {
                let window = LoopWindow {
                    dev,
                    ino,
                    path: &backing.file,
                    first: backing.offset / 512,
                    misaligned: backing.offset % 512 != 0,
                };
                loops_over_files.insert(device.device, window);
            }
        }
        Resolver {
            host,
            sources,
            places,
            by_number: host.block_devices.iter().map(|d| (d.device, d)).collect(),
            loops_over_files,
        }
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
                    start: offset.saturating_add(e.start),
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
        self.widen(merged.into_iter().map(Area::Sectors).collect())
    }

    /// Adds, for sectors of a loop device over a regular file, the same
    /// sectors of that file: whatever else reaches the file (another loop
    /// device, a guest given the file) meets them there.
    pub(super) fn widen(&self, mut areas: Vec<Area>) -> Vec<Area> {
        if self.loops_over_files.is_empty() {
            return areas;
        }
        let mut extra = Vec::new();
        for area in &areas {
            if let Area::Sectors(range) = area
                && let Some(window) = self.loops_over_files.get(&range.device)
            {
                extra.push(Area::Inode {
                    dev: window.dev,
                    ino: window.ino,
                    start: window.first.saturating_add(range.start),
                    sectors: range.sectors.saturating_add(u64::from(window.misaligned)),
                    path: window.path.to_owned(),
                });
            }
        }
        areas.extend(extra);
        areas
    }

    /// What `path` resolved to: observed with the host, or with the
    /// desired file; `None` when neither looked.
    fn target(&self, path: &str) -> Option<&'a PathTarget> {
        self.host.path(path).or_else(|| {
            self.sources
                .binary_search_by(|p| p.path.as_str().cmp(path))
                .ok()
                .map(|i| &self.sources[i].target)
        })
    }

    /// What an observed attachment handing `source` really touches: a
    /// vdisk's extents; else what its `params` path resolves to on the
    /// host. What `physical-device` (written by the hotplug script) names
    /// is joined, so that a disagreement widens, never narrows, it (a
    /// number no device has now names nothing that can be written). Never
    /// empty: what cannot be resolved is [`Area::Unknown`].
    pub(super) fn attachment(
        &self,
        attachment: &Attachment,
        source: &Source,
        index: &ActualIndex<'_>,
    ) -> Vec<Area> {
        let physical = || {
            attachment
                .physical_device
                .and_then(|d| self.device_number(d))
                .unwrap_or_default()
        };
        let mut areas = match source {
            Source::Vdisk(name) => {
                let extents = index.vdisk(name).map_or(&[][..], |v| v.extents.as_slice());
                let mut areas = self.extents(extents);
                // Not the vdisk's own block device: the backend opened
                // something else.
                if attachment
                    .physical_device
                    .is_some_and(|d| index.realisation_of(d) != Some(name.as_str()))
                {
                    areas.extend(physical());
                }
                areas
            }
            Source::Phy(path) | Source::File(path) => {
                let mut areas = self.path(path).unwrap_or_default();
                let unknown_prefix = attachment.path_after_unknown_prefix();
                if let Some(tail) = unknown_prefix {
                    areas.extend(self.path(&normalise(tail)).unwrap_or_default());
                }
                areas.extend(physical());
                // Nothing on the host is at that path now. A file may have
                // been renamed or deleted (it is then no disk xendisk
                // writes); a device, or a path behind a driver xendisk does
                // not know, may be anything. The backend's `type` says
                // nothing here: libxl writes `phy` for image files too, and
                // the hotplug script looks at what the path is.
                let file = matches!(source, Source::File(_)) && unknown_prefix.is_none();
                if areas.is_empty() && file {
                    areas.push(Area::Path(path.clone()));
                }
                areas
            }
        };
        if areas.is_empty() {
            areas.push(Area::Unknown(attachment.params.clone()));
        }
        areas.sort();
        areas.dedup();
        areas
    }

    /// The block device at `path` (through links), if there is one.
    pub(super) fn block_device_at(&self, path: &str) -> Option<&'a BlockDevice> {
        match self.target(path) {
            Some(PathTarget::Block { device }) => self.by_number.get(device).copied(),
            Some(_) => None,
            None => devices::by_path(path, &self.host.block_devices),
        }
    }

    /// The areas `path` touches: a block device's sectors, or a file's
    /// identity and the windows of loop devices over it; `None` when the
    /// host has nothing there (or nobody looked and it is no `/dev` name).
    pub(super) fn path(&self, path: &str) -> Option<Vec<Area>> {
        match self.target(path) {
            Some(PathTarget::Block { device }) => self.device_number(*device),
            Some(PathTarget::File { dev, ino }) => Some(self.file(*dev, *ino, path)),
            Some(PathTarget::Missing | PathTarget::Other) => None,
            None => {
                let device = devices::by_path(path, &self.host.block_devices)?;
                Some(self.block_device(device))
            }
        }
    }

    /// All of a regular file. Loop devices over it, and what is built on
    /// them, reach it through [`Resolver::widen`].
    fn file(&self, dev: DevNum, ino: u64, path: &str) -> Vec<Area> {
        vec![Area::Inode {
            dev,
            ino,
            start: 0,
            sectors: u64::MAX,
            path: path.to_owned(),
        }]
    }

    fn block_device(&self, device: &BlockDevice) -> Vec<Area> {
        let areas: Vec<Area> = devices::sectors_of(device, &self.host.block_devices)
            .iter()
            .map(Area::from)
            .collect();
        let mut areas = self.widen(areas);
        areas.sort();
        areas.dedup();
        areas
    }

    /// The areas of the block device numbered `number`, if the host has it.
    pub(super) fn device_number(&self, number: DevNum) -> Option<Vec<Area>> {
        let device = self.by_number.get(&number)?;
        Some(self.block_device(device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 image under a qdisk backend (`qcow2:/path`, as libxl writes
    /// it) is held by its file identity, as the same file given raw is.
    #[test]
    fn an_image_behind_a_format_prefix_is_its_file() {
        let (dev, ino) = (DevNum::new(8, 2), 4242);
        let path = "/var/lib/xen/images/a.qcow2";
        let host = HostState {
            paths: vec![ResolvedPath {
                path: path.to_owned(),
                target: PathTarget::File { dev, ino },
            }],
            ..HostState::default()
        };
        let state = StateSnapshot::default();
        let index = ActualIndex::new(&state, &host);
        let resolver = Resolver::new(&state, &host, &[]);
        let whole_file = vec![Area::Inode {
            dev,
            ino,
            start: 0,
            sectors: u64::MAX,
            path: path.to_owned(),
        }];
        // Backend kind, `type` as libxl writes it, `params`.
        for (backend, kind, params) in [
            ("qdisk", "qdisk", format!("qcow2:{path}")),
            ("vbd3", "tap", format!("vhd:{path}")),
            ("qdisk", "qdisk", format!("aio:{path}")),
            ("vbd", "file", path.to_owned()),
        ] {
            let attachment = Attachment {
                domid: 3,
                devid: 51712,
                vdev: Some("xvda".to_owned()),
                backend: backend.to_owned(),
                odd_path: None,
                params: params.clone(),
                mode: "w".to_owned(),
                kind: kind.to_owned(),
                physical_device: None,
                online: true,
                state: Some(4),
                hotplug_refused: None,
            };
            let source = index.source(&attachment);
            assert_eq!(source, Source::File(path.to_owned()), "{params}");
            assert_eq!(
                resolver.attachment(&attachment, &source, &index),
                whole_file,
                "{params}"
            );
        }
    }
}
