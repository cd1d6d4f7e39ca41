//! The sharing check at scale against the ancestor's: xendisk's sweep
//! (`safety::clashes`) over a host of about a million areas, and, in the
//! same process, the ancestor's pairwise test (`vd_extents_validate` in
//! Xen 1.2's XenoUtil.py) checking a thousand new extents against a
//! thousand existing ones. Each is run several times, alternating; the
//! medians go to BENCHMARKS.md.
//!
//! cargo bench --bench sharing [-- AREAS PAIRWISE REPEATS]
//!   (default: 1000000 1000 9)
//!
//! Two hosts over 100 disks, holders in a shuffled order (the sweep sorts
//! them; a host's order tells it nothing):
//! - "disjoint": attachments of four areas each, no two sharing a sector:
//!   the sweep sorts and scans;
//! - "layered": 100 pool devices, vdisks of two extents each, every vdisk
//!   attached once (the attachment holds the same two areas) and one in a
//!   hundred attached a second time, read-write, to another guest, which
//!   the exclusive level refuses: every sector is held three or four ways,
//!   and each pair is judged.

use std::hint::black_box;
use std::time::Instant;

use xendisk::desired::Sharing;
use xendisk::extent::{DevNum, SectorRange};
use xendisk::safety::{Area, Holder, Layer, Owner, clashes};

const DEVICES: u32 = 100;
const EXTENT: u64 = 131_072; // 64 MiB in sectors

/// A small deterministic generator (xorshift64*), so every run checks the
/// same host.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn device(d: u32) -> DevNum {
    DevNum::new(8, 16 * d)
}

fn extent(d: u32, slot: u64) -> Area {
    Area::Sectors(SectorRange {
        device: device(d),
        start: slot * EXTENT,
        sectors: EXTENT,
    })
}

fn holder(name: String, owner: Owner, writable: bool, areas: Vec<Area>) -> Holder {
    Holder {
        name,
        owner,
        writable,
        accepts_sharing: false,
        areas,
        is: None,
        on: Vec::new(),
        added_by: None,
        removed_by: None,
    }
}

/// Guests' attachments of about `areas` areas in all, four each, no two
/// sharing a sector: the sweep only sorts and scans.
fn disjoint(areas: usize) -> Vec<Holder> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut slots: Vec<u64> = (0..areas as u64).collect();
    for i in (1..slots.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        slots.swap(i, j);
    }
    slots
        .chunks(4)
        .enumerate()
        .map(|(h, chunk)| {
            let areas = chunk
                .iter()
                .map(|s| extent((s % u64::from(DEVICES)) as u32, s / u64::from(DEVICES)))
                .collect();
            holder(
                format!("domain g{h} xvda (phy, w)"),
                Owner::Guest,
                true,
                areas,
            )
        })
        .collect()
}

/// Vdisks on pool devices and their attachments, about `areas` areas in
/// all: every sector is held three or four ways.
fn layered(areas: usize) -> Vec<Holder> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let vdisks = areas / 4;
    let per_device = (vdisks as u64 * 2).div_ceil(u64::from(DEVICES));
    let mut holders = Vec::with_capacity(vdisks * 2 + vdisks / 100 + DEVICES as usize);
    for d in 0..DEVICES {
        let mut pool = holder(
            format!("pool device {}", device(d)),
            Owner::Xendisk,
            true,
            vec![Area::Sectors(SectorRange {
                device: device(d),
                start: 0,
                sectors: per_device * EXTENT,
            })],
        );
        pool.is = Some(Layer::PoolDevice(device(d)));
        holders.push(pool);
    }
    for v in 0..vdisks {
        // Extents 2v and 2v + 1, dealt round the devices.
        let slots = [2 * v as u64, 2 * v as u64 + 1];
        let areas: Vec<Area> = slots
            .iter()
            .map(|s| extent((s % u64::from(DEVICES)) as u32, s / u64::from(DEVICES)))
            .collect();
        let name = format!("v{v}");
        let pools: Vec<Layer> = slots
            .iter()
            .map(|s| Layer::PoolDevice(device((s % u64::from(DEVICES)) as u32)))
            .collect();
        let mut vdisk = holder(format!("vdisk {name}"), Owner::Xendisk, true, areas.clone());
        vdisk.is = Some(Layer::Vdisk(name.clone()));
        vdisk.on = pools.clone();
        // An attachment of a vdisk is built on it and on its pool devices,
        // as the planner makes it.
        let on: Vec<Layer> = std::iter::once(Layer::Vdisk(name.clone()))
            .chain(pools)
            .collect();
        let mut attachment = holder(
            format!("domain g{} xvda (vdisk:{name}, w)", v % 1000),
            Owner::Guest,
            true,
            areas.clone(),
        );
        attachment.on = on.clone();
        if rng.below(100) == 0 {
            let mut second = holder(
                format!("domain h{} xvdb (vdisk:{name}, w)", v % 1000),
                Owner::Guest,
                true,
                areas,
            );
            second.on = on;
            holders.push(second);
        }
        holders.push(vdisk);
        holders.push(attachment);
    }
    // Fisher-Yates.
    for i in (1..holders.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        holders.swap(i, j);
    }
    holders
}

/// One extent as the ancestor's `vd_extents_validate` saw it: a dict of
/// device, start sector, sector count and whether it is writable.
#[derive(Clone, Copy)]
struct Extent {
    device: DevNum,
    start_sector: u64,
    nr_sectors: u64,
    writeable: bool,
}

/// The ancestor's check, from its published algorithm: every new extent
/// against every existing one; on the same device, an overlap is "either
/// end of the new extent within the old one" (which misses a new extent
/// strictly containing an old one; kept, it is the reference); the level
/// is 1 for a writer meeting a reader, 2 for two writers, and the mapping
/// is refused (-1) when it exceeds the expertise level.
fn ancestor_validate(
    new_extents: &[Extent],
    new_writeable: bool,
    old_extents: &[Extent],
    expert_mode: i32,
) -> i32 {
    let mut level = 0;
    for new_ext in new_extents {
        for old_ext in old_extents {
            if new_ext.device == old_ext.device {
                let new_ext_start = new_ext.start_sector;
                let new_ext_end = new_ext_start + new_ext.nr_sectors - 1;
                let old_ext_start = old_ext.start_sector;
                let old_ext_end = old_ext_start + old_ext.nr_sectors - 1;
                if (old_ext_start <= new_ext_start && new_ext_start <= old_ext_end)
                    || (old_ext_start <= new_ext_end && new_ext_end <= old_ext_end)
                {
                    // One writer and one reader: 1; two writers: 2.
                    if old_ext.writeable != new_writeable {
                        level = level.max(1);
                    } else if old_ext.writeable && new_writeable {
                        level = level.max(2);
                    }
                }
            }
        }
    }
    if level > expert_mode { -1 } else { level }
}

/// `count` existing extents (attachments' and dom0's, some writable) and
/// `count` new ones, on the same devices, with a few overlaps.
fn ancestor_input(count: usize) -> (Vec<Extent>, Vec<Extent>) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut make = |count: usize, writeable_one_in: u64| -> Vec<Extent> {
        (0..count)
            .map(|_| Extent {
                device: device(rng.below(u64::from(DEVICES)) as u32),
                start_sector: rng.below(1000) * EXTENT,
                nr_sectors: EXTENT,
                writeable: rng.below(writeable_one_in) == 0,
            })
            .collect()
    };
    let old = make(count, 2);
    let new = make(count, 1);
    (new, old)
}

fn median(mut seconds: Vec<f64>) -> f64 {
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}

fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let areas = numbers.first().copied().unwrap_or(1_000_000);
    let pairwise = numbers.get(1).copied().unwrap_or(1000);
    let repeats = numbers.get(2).copied().unwrap_or(9).max(1);

    let hosts = [("disjoint", disjoint(areas)), ("layered", layered(areas))];
    let (new, old) = ancestor_input(pairwise);

    // Alternating, so that a slow moment of a shared machine falls on all.
    let mut sweeps = vec![Vec::new(); hosts.len()];
    let mut found = vec![0; hosts.len()];
    let (mut ancestor, mut level) = (Vec::new(), 0);
    for _ in 0..repeats {
        for (i, (_, holders)) in hosts.iter().enumerate() {
            let started = Instant::now();
            found[i] = black_box(clashes(black_box(holders), Sharing::Exclusive)).len();
            sweeps[i].push(started.elapsed().as_secs_f64());
        }
        let started = Instant::now();
        level = black_box(ancestor_validate(black_box(&new), true, black_box(&old), 0));
        ancestor.push(started.elapsed().as_secs_f64());
    }
    let ancestor = median(ancestor);
    println!("| check | input | median of {repeats} (s) | result | / ancestor |");
    println!("|---|---|---:|---|---:|");
    for (i, (shape, holders)) in hosts.iter().enumerate() {
        let area_count: usize = holders.iter().map(|h| h.areas.len()).sum();
        let sweep = median(std::mem::take(&mut sweeps[i]));
        println!(
            "| xendisk sweep, {shape} | {} holders, {area_count} areas | {sweep:.4} | {} clashes | {:.1}x |",
            holders.len(),
            found[i],
            sweep / ancestor
        );
    }
    println!(
        "| ancestor pairwise | {} new x {} existing extents | {ancestor:.5} | level {level} | 1x |",
        new.len(),
        old.len()
    );
}
