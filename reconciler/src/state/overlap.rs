//! Pool devices that share sectors of a whole disk: a disk and its own
//! partition, or two partitions whose recorded ranges cross, in one pool or
//! two. Each sector must belong to one pool device, or two vdisks could be
//! given the same data; `xendisk state --check` reports every such pair.
//!
//! Pure: it sees the pools as values. One sweep per disk over the devices
//! sorted by start, each compared only with the devices still open at its
//! start, so the cost is O(n log n) plus the pairs found.

use std::collections::BTreeSet;
use std::fmt;

use super::PoolState;
use crate::extent::{DevNum, SectorRange};

/// Two pool devices that share sectors of one disk. `first` starts no later
/// than `second` on that disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub first: Member,
    pub second: Member,
    /// The sectors both hold, on the whole disk.
    pub shared: SectorRange,
}

/// One side of an [`Overlap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub pool: String,
    pub path: String,
    /// Its place was not recorded: it was taken as a whole disk of its own.
    pub place_unknown: bool,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pool `{}`", self.path, self.pool)?;
        if self.place_unknown {
            f.write_str(", place on its disk not recorded: taken as a whole disk")?;
        }
        f.write_str(")")
    }
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pool devices {} and {} overlap: both hold {}; a sector may serve only one pool \
             device: remove one of them from its pool in the desired file, then apply",
            self.first, self.second, self.shared
        )
    }
}

/// A pool device as an interval of its whole disk.
struct Placed<'a> {
    disk: DevNum,
    start: u64,
    end: u64,
    pool: &'a str,
    path: &'a str,
    place_unknown: bool,
}

impl Placed<'_> {
    fn member(&self) -> Member {
        Member {
            pool: self.pool.to_owned(),
            path: self.path.to_owned(),
            place_unknown: self.place_unknown,
        }
    }
}

/// Every pair of pool devices, across all pools, that share a sector, in
/// order of disk, shared start, then paths.
pub fn overlaps(pools: &[PoolState]) -> Vec<Overlap> {
    let mut placed: Vec<Placed<'_>> = pools
        .iter()
        .flat_map(|pool| pool.devices.iter().map(move |device| (pool, device)))
        // A device of no sectors holds nothing that could be shared.
        .filter(|(_, device)| device.sectors > 0)
        .map(|(pool, device)| {
            // Unknown place: the device number is its own disk, as the
            // planner takes it when the host does not tell either.
            let (disk, start) = device
                .on_disk
                .map_or((device.device, 0), |place| (place.disk, place.start));
            Placed {
                disk,
                start,
                // Saturating: a corrupt size must be reported, not overflow.
                end: start.saturating_add(device.sectors),
                pool: &pool.name,
                path: &device.path,
                place_unknown: device.on_disk.is_none(),
            }
        })
        .collect();
    placed.sort_by(|a, b| (a.disk, a.start, a.end, a.path).cmp(&(b.disk, b.start, b.end, b.path)));

    let mut found = Vec::new();
    // Devices open at the sweep position on the current disk, by end.
    let mut open: BTreeSet<(u64, usize)> = BTreeSet::new();
    let mut disk = None;
    for (index, device) in placed.iter().enumerate() {
        if disk != Some(device.disk) {
            open.clear();
            disk = Some(device.disk);
        }
        // Those ending at or before this start share nothing with it, nor
        // with any later device (they start no earlier).
        while open.first().is_some_and(|&(end, _)| end <= device.start) {
            open.pop_first();
        }
        for &(end, other) in &open {
            found.push(Overlap {
                first: placed[other].member(),
                second: device.member(),
                shared: SectorRange {
                    device: device.disk,
                    start: device.start,
                    sectors: end.min(device.end) - device.start,
                },
            });
        }
        open.insert((device.end, index));
    }
    found.sort_by(|a, b| {
        (
            a.shared.device,
            a.shared.start,
            &a.first.path,
            &a.second.path,
        )
            .cmp(&(
                b.shared.device,
                b.shared.start,
                &b.first.path,
                &b.second.path,
            ))
    });
    found
}

#[cfg(test)]
mod tests;
