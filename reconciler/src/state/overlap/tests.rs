//! Overlaps found by the sweep, checked by hand on small layouts and
//! against a pairwise comparison on random ones.

use proptest::prelude::*;

use super::*;
use crate::desired::Size;
use crate::state::{DiskPlace, PoolDeviceState};

/// A pool device of `sectors` at `place` (`(disk minor, start)` on major
/// 8), or of unknown place when `None`.
fn device(path: &str, minor: u32, sectors: u64, place: Option<(u32, u64)>) -> PoolDeviceState {
    PoolDeviceState {
        id: 0,
        path: path.to_owned(),
        device: DevNum::new(8, minor),
        sectors,
        on_disk: place.map(|(disk, start)| DiskPlace {
            disk: DevNum::new(8, disk),
            start,
        }),
        extents: 0,
        free: 0,
        used: 0,
        dirty: 0,
        free_runs: Vec::new(),
        dirty_runs: Vec::new(),
    }
}

fn pool(name: &str, devices: Vec<PoolDeviceState>) -> PoolState {
    PoolState {
        name: name.to_owned(),
        extent_size: Size::from_sectors(2048),
        devices,
    }
}

/// `(first path, second path, disk minor, shared start, shared end)`.
fn summary(found: &[Overlap]) -> Vec<(String, String, u32, u64, u64)> {
    found
        .iter()
        .map(|o| {
            (
                o.first.path.clone(),
                o.second.path.clone(),
                o.shared.device.minor,
                o.shared.start,
                o.shared.end(),
            )
        })
        .collect()
}

fn pair(a: &str, b: &str, disk: u32, start: u64, end: u64) -> (String, String, u32, u64, u64) {
    (a.to_owned(), b.to_owned(), disk, start, end)
}

#[test]
fn a_disk_and_its_own_partition_overlap() {
    let pools = [pool(
        "p",
        vec![
            device("/dev/sdc", 32, 10_000, Some((32, 0))),
            device("/dev/sdc1", 33, 4_000, Some((32, 2048))),
        ],
    )];
    assert_eq!(
        summary(&overlaps(&pools)),
        [pair("/dev/sdc", "/dev/sdc1", 32, 2048, 6048)]
    );
}

#[test]
fn crossing_partitions_in_two_pools_overlap_on_the_shared_range() {
    let pools = [
        pool("a", vec![device("/dev/sdd1", 49, 3_000, Some((48, 2048)))]),
        pool("b", vec![device("/dev/sdd2", 50, 3_000, Some((48, 4000)))]),
    ];
    let found = overlaps(&pools);
    assert_eq!(
        summary(&found),
        [pair("/dev/sdd1", "/dev/sdd2", 48, 4000, 5048)]
    );
    let text = found[0].to_string();
    for part in [
        "/dev/sdd1 (pool `a`)",
        "/dev/sdd2 (pool `b`)",
        "8:48 sectors 4000..5048",
        "remove one of them from its pool",
    ] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
}

#[test]
fn neighbours_and_other_disks_do_not_overlap() {
    let pools = [pool(
        "p",
        vec![
            // Adjacent on 8:48: one ends where the next starts.
            device("/dev/sdd1", 49, 2048, Some((48, 2048))),
            device("/dev/sdd2", 50, 2048, Some((48, 4096))),
            // The same sectors, but of another disk.
            device("/dev/sde1", 65, 2048, Some((64, 2048))),
            // Nothing at all.
            device("/dev/sde2", 66, 0, Some((64, 2048))),
        ],
    )];
    assert_eq!(overlaps(&pools), []);
}

#[test]
fn a_device_of_unknown_place_is_a_whole_disk_of_its_own() {
    let pools = [
        pool("a", vec![device("/dev/sdf", 80, 10_000, None)]),
        pool("b", vec![device("/dev/sdf1", 81, 2048, Some((80, 2048)))]),
    ];
    let found = overlaps(&pools);
    assert_eq!(
        summary(&found),
        [pair("/dev/sdf", "/dev/sdf1", 80, 2048, 4096)]
    );
    assert!(found[0].first.place_unknown && !found[0].second.place_unknown);
    assert!(found[0].to_string().contains("taken as a whole disk"));
    // A partition of unknown place is its own disk: nothing to cross.
    let pools = [pool(
        "a",
        vec![
            device("/dev/sdf1", 81, 2048, None),
            device("/dev/sdf2", 82, 2048, None),
        ],
    )];
    assert_eq!(overlaps(&pools), []);
}

#[test]
fn every_pair_is_reported_once() {
    // A disk holding two partitions, and a third device inside both the
    // disk and the first partition.
    let pools = [pool(
        "p",
        vec![
            device("/dev/sdg", 96, 100_000, Some((96, 0))),
            device("/dev/sdg1", 97, 10_000, Some((96, 2048))),
            device("/dev/sdg2", 98, 10_000, Some((96, 20_000))),
            device("/dev/loop-ish", 99, 100, Some((96, 5000))),
        ],
    )];
    assert_eq!(
        summary(&overlaps(&pools)),
        [
            pair("/dev/sdg", "/dev/sdg1", 96, 2048, 12_048),
            pair("/dev/sdg", "/dev/loop-ish", 96, 5000, 5100),
            pair("/dev/sdg1", "/dev/loop-ish", 96, 5000, 5100),
            pair("/dev/sdg", "/dev/sdg2", 96, 20_000, 30_000),
        ]
    );
}

#[test]
fn sizes_past_the_end_of_the_number_range_do_not_panic() {
    let pools = [pool(
        "p",
        vec![
            device("/dev/a", 1, u64::MAX, Some((0, u64::MAX - 5))),
            device("/dev/b", 2, u64::MAX, Some((0, u64::MAX - 3))),
        ],
    )];
    assert_eq!(
        summary(&overlaps(&pools)),
        [pair("/dev/a", "/dev/b", 0, u64::MAX - 3, u64::MAX)]
    );
}

/// What every pair compared with every other finds: the reference.
fn pairwise(pools: &[PoolState]) -> Vec<(String, String, u32, u64, u64)> {
    let devices: Vec<(DevNum, u64, u64, &str)> = pools
        .iter()
        .flat_map(|p| &p.devices)
        .map(|d| {
            let (disk, start) = d.on_disk.map_or((d.device, 0), |p| (p.disk, p.start));
            (
                disk,
                start,
                start.saturating_add(d.sectors),
                d.path.as_str(),
            )
        })
        .collect();
    let mut found = Vec::new();
    for (i, a) in devices.iter().enumerate() {
        for b in &devices[i + 1..] {
            let (start, end) = (a.1.max(b.1), a.2.min(b.2));
            if a.0 == b.0 && start < end {
                let (first, second) = if (a.1, a.2, a.3) <= (b.1, b.2, b.3) {
                    (a.3, b.3)
                } else {
                    (b.3, a.3)
                };
                found.push(pair(first, second, a.0.minor, start, end));
            }
        }
    }
    found.sort_by(|x, y| (x.2, x.3, &x.0, &x.1).cmp(&(y.2, y.3, &y.0, &y.1)));
    found
}

proptest! {
    /// On random layouts (three disks, ranges that often meet), the sweep
    /// finds exactly the pairs the pairwise comparison finds.
    #[test]
    fn the_sweep_finds_what_pairwise_comparison_finds(
        layout in proptest::collection::vec(
            (0usize..2, proptest::option::weighted(0.8, (0u32..3, 0u64..100)), 0u64..40),
            0..24,
        )
    ) {
        let mut pools = vec![pool("a", Vec::new()), pool("b", Vec::new())];
        for (i, (which, place, sectors)) in layout.into_iter().enumerate() {
            let minor = i as u32 + 100;
            pools[which].devices.push(device(&format!("/dev/d{i}"), minor, sectors, place));
        }
        // An unknown place may also name one of the three disks.
        pools[0].devices.push(device("/dev/whole", 1, 50, None));
        prop_assert_eq!(summary(&overlaps(&pools)), pairwise(&pools));
    }
}
