//! Pure look-ups in the block device table: which device a `/dev` path
//! names, and which sectors of which whole disks a device occupies. Used by
//! observation and by the planner alike, so both see a device the same way.

use super::{BlockDevice, LoopTarget, UseTarget};

/// The device `/dev/NAME` or `/dev/mapper/DM-NAME` names, if any.
pub fn by_path<'a>(path: &str, devices: &'a [BlockDevice]) -> Option<&'a BlockDevice> {
    let name = path.strip_prefix("/dev/")?;
    match name.strip_prefix("mapper/") {
        Some(dm) => devices.iter().find(|d| d.dm_name.as_deref() == Some(dm)),
        None => devices.iter().find(|d| d.name == name),
    }
}

/// The areas a device occupies: its range on its whole disk; for a device
/// built on others (dm, md), all of each underlying device (what a mapping
/// uses of them is not known here, so all of it counts); for a loop device
/// over a block device, its window on that device.
pub fn sectors_of(device: &BlockDevice, devices: &[BlockDevice]) -> Vec<UseTarget> {
    let mut out = Vec::new();
    expand(device, devices, &mut out, 0);
    out
}

fn expand(device: &BlockDevice, devices: &[BlockDevice], out: &mut Vec<UseTarget>, depth: usize) {
    // Stacks deeper than this are a loop in the data, not a real host.
    if depth > 16 {
        return;
    }
    if !device.slaves.is_empty() {
        for slave in devices.iter().filter(|d| device.slaves.contains(&d.name)) {
            expand(slave, devices, out, depth + 1);
        }
        return;
    }
    // What the kernel says is behind a loop device wins over the name in
    // sysfs, which may be stale or a node outside /dev.
    let over_device = device
        .loop_backing
        .as_ref()
        .and_then(|backing| match backing.behind {
            Some(LoopTarget::Block { device }) => devices.iter().find(|d| d.device == device),
            Some(LoopTarget::File { .. }) => None,
            None => {
                let name = backing.file.strip_prefix("/dev/")?;
                devices.iter().find(|d| d.name == name)
            }
        });
    if let (Some(backing), Some(under_device)) = (&device.loop_backing, over_device) {
        // Rounded outwards: the kernel takes any byte offset and limit, and
        // a window's partial first and last sectors are touched too.
        let offset = backing.offset / 512;
        let length = if backing.sizelimit == 0 {
            under_device.sectors.saturating_sub(offset)
        } else {
            backing
                .offset
                .saturating_add(backing.sizelimit)
                .div_ceil(512)
                .saturating_sub(offset)
        };
        out.push(UseTarget::Sectors {
            disk: under_device.disk,
            start: under_device.start.saturating_add(offset),
            sectors: length,
        });
        return;
    }
    out.push(UseTarget::Sectors {
        disk: device.disk,
        start: device.start,
        sectors: device.sectors,
    });
}
