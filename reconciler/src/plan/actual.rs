//! Reading the actual state in the desired file's terms: what source an
//! attachment in xenstore hands its guest, in which mode, and whether a
//! vdisk already has its block device. Shared by the planner and by
//! `generate`, so that both read the host the same way.

use super::resolve::normalise;
use crate::desired::{Mode, Source};
use crate::observe::{Attachment, HostState};
use crate::state::StateSnapshot;

/// The device-mapper name of a vdisk's block device.
pub fn dm_name(vdisk: &str) -> String {
    format!("xendisk-{vdisk}")
}

/// The mode an attachment's backend records.
pub fn mode_of(text: &str) -> Mode {
    match text {
        "r" | "ro" => Mode::Read,
        "w!" => Mode::WriteShared,
        _ => Mode::Write,
    }
}

/// What an attachment hands its guest: a vdisk when `params` is its
/// device-mapper device or its loop device, else the device or the file.
pub fn attachment_source(
    attachment: &Attachment,
    state: &StateSnapshot,
    host: &HostState,
) -> Source {
    let params = attachment.params.as_str();
    if let Some(vdisk) = params
        .strip_prefix("/dev/mapper/")
        .and_then(|n| n.strip_prefix("xendisk-"))
    {
        return Source::Vdisk(vdisk.to_owned());
    }
    if params.starts_with("/dev/") {
        let vdisk = state
            .vdisks
            .iter()
            .find(|v| loop_realisation_of(&v.name, state, host).as_deref() == Some(params));
        return match vdisk {
            Some(v) => Source::Vdisk(v.name.clone()),
            None => Source::Phy(normalise(params)),
        };
    }
    // qdisk and tapdisk put a format before the path: aio:, raw:, vhd:, qcow2:.
    let path = params.rsplit_once(':').map_or(params, |(_, path)| path);
    Source::File(normalise(path))
}

/// Whether a vdisk has its block device: a device-mapper device (seen in
/// sysfs, or named by an attachment), or a loop device over its one run.
pub fn is_realised(vdisk: &str, state: &StateSnapshot, host: &HostState) -> bool {
    let name = dm_name(vdisk);
    let mapper = format!("/dev/mapper/{name}");
    host.block_devices
        .iter()
        .any(|d| d.dm_name.as_deref() == Some(name.as_str()))
        || host.attachments.iter().any(|a| a.params == mapper)
        || loop_realisation_of(vdisk, state, host).is_some()
}

/// A loop device whose window on the pool device is exactly the vdisk's
/// one run of extents.
pub fn loop_realisation_of(vdisk: &str, state: &StateSnapshot, host: &HostState) -> Option<String> {
    let extents = state
        .vdisks
        .iter()
        .find(|v| v.name == vdisk)?
        .extents
        .as_slice();
    let (first, last) = (extents.first()?, extents.last()?);
    let contiguous = extents
        .windows(2)
        .all(|w| w[0].device == w[1].device && w[0].end() == w[1].start);
    if !contiguous {
        return None;
    }
    let pool_device = state
        .pools
        .iter()
        .flat_map(|p| &p.devices)
        .find(|d| d.device == first.device)?;
    host.block_devices.iter().find_map(|d| {
        let backing = d.loop_backing.as_ref()?;
        let same_device = normalise(&backing.file) == normalise(&pool_device.path);
        let window = backing.offset == first.start * 512
            && (backing.sizelimit == 0 || backing.sizelimit == (last.end() - first.start) * 512);
        (same_device && window).then(|| format!("/dev/{}", d.name))
    })
}
