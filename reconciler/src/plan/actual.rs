//! Reading the actual state in the desired file's terms: what source an
//! attachment in xenstore hands its guest, in which mode, and whether a
//! vdisk already has its block device. Shared by the planner and by
//! `generate`, so that both read the host the same way; indexed once, so
//! that a host of tens of thousands of attachments is read in linear time.

use std::collections::{HashMap, HashSet};

use super::resolve::normalise;
use crate::desired::{Mode, Source};
use crate::extent::DevNum;
use crate::observe::{Attachment, BlockDevice, HostState, LoopTarget, params};
use crate::state::{StateSnapshot, VdiskState};

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

/// Whether a backend's recorded mode is what the file asks for. `w!` is
/// xendisk's acceptance of sharing, not a backend mode: xl records it as
/// `w`, the xenstore toolstack as `w!`; both satisfy a `w!` attachment.
pub fn modes_agree(recorded: &str, declared: Mode) -> bool {
    match (mode_of(recorded), declared) {
        (Mode::Write, Mode::WriteShared) => true,
        (recorded, declared) => recorded == declared,
    }
}

/// Look-ups into the actual state, built once.
pub struct ActualIndex<'a> {
    /// Live and expired vdisks, by name.
    vdisks: HashMap<&'a str, &'a VdiskState>,
    /// Expired vdisks, not yet reclaimed, by name.
    expired: HashMap<&'a str, &'a VdiskState>,
    domain_names: HashMap<u32, &'a str>,
    /// Vdisks with a device-mapper device (seen in sysfs or named by an attachment).
    mapped: HashSet<String>,
    /// Loop devices (`/dev/loopN`) that are exactly one vdisk's run, to that vdisk.
    loops: HashMap<String, &'a str>,
    /// Block devices that are a vdisk's own (its device-mapper device or
    /// its loop device), by number.
    realisations: HashMap<DevNum, &'a str>,
    /// The length, in sectors, of each vdisk's block device seen in sysfs.
    realised_sectors: HashMap<&'a str, u64>,
    /// Vdisk names a device-mapper device is named for (`xendisk-NAME`)
    /// that is not that vdisk's: it is what it maps, like any other device.
    impostors: HashSet<String>,
}

impl<'a> ActualIndex<'a> {
    pub fn new(state: &'a StateSnapshot, host: &'a HostState) -> ActualIndex<'a> {
        let vdisks: HashMap<&str, &VdiskState> = state
            .vdisks
            .iter()
            .chain(&state.expired)
            .map(|v| (v.name.as_str(), v))
            .collect();
        let by_name: HashMap<&str, DevNum> = host
            .block_devices
            .iter()
            .map(|d| (d.name.as_str(), d.device))
            .collect();
        // A device-mapper device is a vdisk's own only if it is named for
        // it and built on nothing but the vdisk's pool devices: the name
        // alone is anybody's to take.
        let own_dm = |device: &BlockDevice| -> Option<&'a str> {
            let vdisk = device.dm_name.as_deref()?.strip_prefix("xendisk-")?;
            let (name, state) = vdisks.get_key_value(vdisk)?;
            let pool_devices: HashSet<DevNum> = state.extents.iter().map(|e| e.device).collect();
            let built_on_them = !device.slaves.is_empty()
                && device.slaves.iter().all(|s| {
                    by_name
                        .get(s.as_str())
                        .is_some_and(|d| pool_devices.contains(d))
                });
            built_on_them.then_some(*name)
        };
        let mut mapped: HashSet<String> = HashSet::new();
        let mut impostors: HashSet<String> = HashSet::new();
        for device in &host.block_devices {
            if let Some(vdisk) = device
                .dm_name
                .as_deref()
                .and_then(|n| n.strip_prefix("xendisk-"))
            {
                match own_dm(device) {
                    Some(vdisk) => mapped.insert(vdisk.to_owned()),
                    None => impostors.insert(vdisk.to_owned()),
                };
            }
        }
        for attachment in &host.attachments {
            if let Some(vdisk) = mapper_vdisk(attachment.path())
                && !impostors.contains(vdisk)
            {
                mapped.insert(vdisk.to_owned());
            }
        }
        let loops = loop_realisations(state, host);
        let mut realisations = HashMap::new();
        let mut realised_sectors = HashMap::new();
        for device in &host.block_devices {
            let by_loop = loops.get(&format!("/dev/{}", device.name)).copied();
            if let Some(vdisk) = own_dm(device).or(by_loop) {
                realisations.insert(device.device, vdisk);
                realised_sectors.insert(vdisk, device.sectors);
            }
        }
        ActualIndex {
            realisations,
            realised_sectors,
            vdisks,
            expired: state.expired.iter().map(|v| (v.name.as_str(), v)).collect(),
            domain_names: host
                .domains
                .iter()
                .map(|d| (d.domid, d.name.as_str()))
                .collect(),
            mapped,
            impostors,
            loops,
        }
    }

    /// How long a vdisk's block device is now, in sectors, if sysfs shows it.
    pub fn realised_sectors(&self, vdisk: &str) -> Option<u64> {
        self.realised_sectors.get(vdisk).copied()
    }

    /// Whether a vdisk's block device is a loop device.
    pub fn realised_as_loop(&self, vdisk: &str) -> bool {
        self.loops.values().any(|v| *v == vdisk)
    }

    /// The vdisk whose own block device `device` is, if it is one.
    pub fn realisation_of(&self, device: DevNum) -> Option<&'a str> {
        self.realisations.get(&device).copied()
    }

    /// A live or expired vdisk.
    pub fn vdisk(&self, name: &str) -> Option<&'a VdiskState> {
        self.vdisks.get(name).copied()
    }

    /// An expired vdisk whose extents are not reclaimed yet.
    pub fn expired(&self, name: &str) -> Option<&'a VdiskState> {
        self.expired.get(name).copied()
    }

    pub fn domain_name(&self, domid: u32) -> Option<&'a str> {
        self.domain_names.get(&domid).copied()
    }

    /// What an attachment hands its guest: a vdisk when `params` is its
    /// device-mapper device or its loop device, else the device or the file.
    /// Driver and format prefixes (`phy:`, `aio:`, `qcow2:`...) are not part
    /// of the path, which may itself hold `:`.
    pub fn source(&self, attachment: &Attachment) -> Source {
        let path = params::parse(&attachment.params).path;
        if let Some(vdisk) = mapper_vdisk(path)
            && !self.impostors.contains(vdisk)
        {
            return Source::Vdisk(vdisk.to_owned());
        }
        if path.starts_with("/dev/") {
            return match self.loops.get(path) {
                Some(vdisk) => Source::Vdisk((*vdisk).to_owned()),
                None => Source::Phy(normalise(path)),
            };
        }
        Source::File(normalise(path))
    }

    /// The block device a realised vdisk has now, if any.
    pub fn device_of(&self, vdisk: &str) -> Option<String> {
        if self.mapped.contains(vdisk) {
            return Some(format!("/dev/mapper/{}", dm_name(vdisk)));
        }
        self.loops
            .iter()
            .find(|(_, v)| **v == vdisk)
            .map(|(device, _)| device.clone())
    }

    /// Whether a vdisk has its block device already.
    pub fn is_realised(&self, vdisk: &str) -> bool {
        self.mapped.contains(vdisk) || self.loops.values().any(|v| *v == vdisk)
    }
}

fn mapper_vdisk(params: &str) -> Option<&str> {
    params
        .strip_prefix("/dev/mapper/")
        .and_then(|n| n.strip_prefix("xendisk-"))
}

/// Loop devices whose window on a pool device is exactly one live vdisk's
/// single run of extents.
fn loop_realisations<'a>(state: &'a StateSnapshot, host: &HostState) -> HashMap<String, &'a str> {
    let pool_devices: HashMap<String, DevNum> = state
        .pools
        .iter()
        .flat_map(|p| &p.devices)
        .map(|d| (normalise(&d.path), d.device))
        .collect();
    // (pool device, byte offset) to (vdisk, byte length).
    let mut runs: HashMap<(DevNum, u64), (&str, u64)> = HashMap::new();
    for vdisk in &state.vdisks {
        let extents = vdisk.extents.as_slice();
        let (Some(first), Some(last)) = (extents.first(), extents.last()) else {
            continue;
        };
        let contiguous = extents
            .windows(2)
            .all(|w| w[0].device == w[1].device && w[0].end() == w[1].start);
        if contiguous {
            runs.insert(
                (first.device, first.start * 512),
                (&vdisk.name, (last.end() - first.start) * 512),
            );
        }
    }
    let mut loops = HashMap::new();
    for device in &host.block_devices {
        let Some(backing) = &device.loop_backing else {
            continue;
        };
        // The device it is over: as the kernel says, else by its name.
        let over = match backing.behind {
            Some(LoopTarget::Block { device }) => Some(device),
            Some(LoopTarget::File { .. }) => None,
            None => pool_devices.get(&normalise(&backing.file)).copied(),
        };
        // Within the run: a window that reaches past it (or has no limit)
        // is not the vdisk's own device, and whoever uses it may write past
        // the vdisk. A shorter one is the vdisk's device before a grow
        // finished; the plan gives it its new size.
        if let Some(over) = over
            && let Some((vdisk, length)) = runs.get(&(over, backing.offset))
            && backing.sizelimit > 0
            && backing.sizelimit <= *length
        {
            loops.insert(format!("/dev/{}", device.name), *vdisk);
        }
    }
    loops
}
