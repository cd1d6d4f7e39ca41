use proptest::prelude::*;

use super::*;

/// 1 MiB extents: 2048 sectors.
const MIB: u64 = 2048;

fn t0() -> jiff::Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn later(seconds: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t0().as_second() + seconds).unwrap()
}

/// The host a test's state DB file belongs to.
pub(super) fn test_host() -> HostId {
    HostId {
        machine_id: "0123456789abcdef0123456789abcdef".to_owned(),
        source: "/etc/machine-id".to_owned(),
    }
}

fn size(text: &str) -> Size {
    text.parse().unwrap()
}

fn device(path: &str, minor: u32, extents: u64) -> DeviceGeometry {
    DeviceGeometry {
        path: path.to_owned(),
        device: DevNum::new(8, minor),
        sectors: extents * MIB + 7,
        on_disk: None,
    }
}

/// A DB with pool `p` (1 MiB extents) on /dev/sdb1 (10 extents) and /dev/sdb2 (4 extents).
fn two_device_pool() -> StateDb {
    let mut db = StateDb::in_memory().unwrap();
    assert_eq!(
        db.add_pool_device("p", size("1MiB"), &device("/dev/sdb1", 17, 10), t0())
            .unwrap(),
        10
    );
    assert_eq!(
        db.add_pool_device("p", size("1MiB"), &device("/dev/sdb2", 18, 4), t0())
            .unwrap(),
        4
    );
    db
}

fn starts(db: &StateDb, name: &str) -> Vec<(u32, u64)> {
    db.lookup(name, t0())
        .unwrap()
        .iter()
        .map(|e| (e.device.minor, e.start / MIB))
        .collect()
}

fn assert_consistent(db: &StateDb, now: jiff::Timestamp) {
    let problems = db.verify(now).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    for pool in db.snapshot(now).unwrap().pools {
        for device in pool.devices {
            assert_eq!(device.free + device.used, device.extents, "{}", device.path);
        }
    }
}

#[test]
fn a_vdisk_gets_one_contiguous_run_when_one_fits() {
    let mut db = two_device_pool();
    // 3 extents: the 4-extent device is the smallest run that fits.
    db.create_vdisk("a", "p", size("3MiB"), &Expiry::Never, t0())
        .unwrap();
    assert_eq!(starts(&db, "a"), [(18, 0), (18, 1), (18, 2)]);
    // 2.5 MiB rounds up to 3 extents; the 1-extent rest of sdb2 is too small.
    db.create_vdisk("b", "p", size("2560KiB"), &Expiry::Never, t0())
        .unwrap();
    assert_eq!(starts(&db, "b"), [(17, 0), (17, 1), (17, 2)]);
    let snapshot = db.snapshot(t0()).unwrap();
    let b = snapshot.vdisks.iter().find(|v| v.name == "b").unwrap();
    assert_eq!(
        (b.size, b.allocated, b.segments),
        (size("2560KiB"), size("3MiB"), 1)
    );
    assert_consistent(&db, t0());
}

#[test]
fn a_vdisk_larger_than_any_run_takes_the_fewest_runs() {
    let mut db = two_device_pool();
    db.create_vdisk("big", "p", size("12MiB"), &Expiry::Never, t0())
        .unwrap();
    let extents = starts(&db, "big");
    assert_eq!(extents.len(), 12);
    assert_eq!(&extents[..10], (0..10).map(|i| (17, i)).collect::<Vec<_>>());
    assert_eq!(&extents[10..], [(18, 0), (18, 1)]);
    assert_eq!(db.snapshot(t0()).unwrap().vdisks[0].segments, 2);
}

#[test]
fn a_short_pool_fails_cleanly_and_says_how_much_is_free() {
    let mut db = two_device_pool();
    db.create_vdisk("a", "p", size("10MiB"), &Expiry::Never, t0())
        .unwrap();
    let before = db.snapshot(t0()).unwrap();
    let error = db
        .create_vdisk("b", "p", size("5MiB"), &Expiry::Never, t0())
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "pool `p` has 4MiB free but vdisk `b` needs 5MiB; nothing was allocated"
    );
    assert_eq!(db.snapshot(t0()).unwrap(), before);
    assert!(matches!(
        db.lookup("b", t0()),
        Err(StateError::UnknownVdisk(_))
    ));
}

#[test]
fn grow_appends_in_place_and_shrink_is_refused() {
    let mut db = two_device_pool();
    db.create_vdisk("a", "p", size("2MiB"), &Expiry::Never, t0())
        .unwrap();
    assert_eq!(starts(&db, "a"), [(18, 0), (18, 1)]);
    db.grow_vdisk("a", size("4MiB"), t0()).unwrap();
    assert_eq!(starts(&db, "a"), [(18, 0), (18, 1), (18, 2), (18, 3)]);
    db.grow_vdisk("a", size("5MiB"), t0()).unwrap();
    assert_eq!(starts(&db, "a").last(), Some(&(17, 0)));
    let error = db.grow_vdisk("a", size("1MiB"), t0()).unwrap_err();
    assert!(matches!(error, StateError::Shrink { .. }), "{error}");
    assert_eq!(db.lookup("a", t0()).unwrap().len(), 5);
    assert_consistent(&db, t0());
}

#[test]
fn expired_vdisks_are_free_space_and_cannot_be_refreshed() {
    let mut db = two_device_pool();
    db.create_vdisk("tmp", "p", size("4MiB"), &"1h".parse().unwrap(), t0())
        .unwrap();
    // Refreshed while alive: the duration still counts from creation.
    db.set_expiry("tmp", &"2h".parse().unwrap(), later(1800))
        .unwrap();
    let vdisk = db.snapshot(later(1800)).unwrap().vdisks.remove(0);
    assert_eq!(vdisk.expires_at, Some(later(7200)));
    // Past its expiry it is gone for readers, without any write.
    assert!(db.snapshot(later(7200)).unwrap().vdisks.is_empty());
    let device = &db.snapshot(later(7200)).unwrap().pools[0].devices[1];
    assert_eq!((device.free, device.dirty), (4, 4));
    let error = db
        .set_expiry("tmp", &Expiry::Never, later(7300))
        .unwrap_err();
    assert!(matches!(error, StateError::Expired { .. }), "{error}");
    // Its extents are reused.
    db.create_vdisk("next", "p", size("4MiB"), &Expiry::Never, later(7300))
        .unwrap();
    assert_eq!(starts(&db, "next"), [(18, 0), (18, 1), (18, 2), (18, 3)]);
    assert_consistent(&db, later(7300));
}

#[test]
fn an_expiry_already_past_is_refused() {
    let mut db = two_device_pool();
    let past: Expiry = "2025-06-01T00:00:00Z".parse().unwrap();
    let error = db
        .create_vdisk("a", "p", size("1MiB"), &past, t0())
        .unwrap_err();
    assert!(matches!(error, StateError::ExpiryPast { .. }), "{error}");
    assert!(db.snapshot(t0()).unwrap().vdisks.is_empty());
}

#[test]
fn delete_frees_extents_as_dirty_and_scrub_cleans_them() {
    let mut db = two_device_pool();
    db.create_vdisk("a", "p", size("3MiB"), &Expiry::Never, t0())
        .unwrap();
    db.mark_scrubbed(DevNum::new(8, 18), 0, 4, t0()).unwrap();
    // The one free extent of sdb2 is clean now.
    assert_eq!(db.snapshot(t0()).unwrap().pools[0].devices[1].dirty, 0);
    assert_eq!(db.delete_vdisk("a", t0()).unwrap(), 3);
    let device = &db.snapshot(t0()).unwrap().pools[0].devices[1];
    assert_eq!((device.free, device.used, device.dirty), (4, 0, 3));
    assert!(matches!(
        db.delete_vdisk("a", t0()),
        Err(StateError::UnknownVdisk(_))
    ));
}

#[test]
fn a_device_holding_a_vdisk_cannot_be_removed() {
    let mut db = two_device_pool();
    db.create_vdisk("a", "p", size("3MiB"), &Expiry::Never, t0())
        .unwrap();
    let error = db.remove_pool_device("/dev/sdb2", t0()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "pool device /dev/sdb2 still holds vdisks a; delete or move them before removing it"
    );
    db.remove_pool_device("/dev/sdb1", t0()).unwrap();
    db.delete_vdisk("a", t0()).unwrap();
    db.remove_pool_device("/dev/sdb2", t0()).unwrap();
    assert!(
        db.snapshot(t0()).unwrap().pools.is_empty(),
        "an empty, unused pool goes too"
    );
}

#[test]
fn repeated_operations_change_nothing() {
    let mut db = two_device_pool();
    assert_eq!(
        db.add_pool_device("p", size("1MiB"), &device("/dev/sdb1", 17, 10), t0())
            .unwrap(),
        10
    );
    db.create_vdisk("a", "p", size("3MiB"), &Expiry::Never, t0())
        .unwrap();
    let before = db.snapshot(t0()).unwrap();
    db.create_vdisk("a", "p", size("3MiB"), &Expiry::Never, t0())
        .unwrap();
    assert_eq!(db.snapshot(t0()).unwrap(), before);
    let error = db
        .create_vdisk("a", "p", size("4MiB"), &Expiry::Never, t0())
        .unwrap_err();
    assert!(matches!(error, StateError::VdiskExists { .. }), "{error}");
}

#[test]
fn devices_and_pools_are_checked_when_added() {
    let mut db = two_device_pool();
    let moved = db
        .add_pool_device("q", size("1MiB"), &device("/dev/sdb1", 17, 10), t0())
        .unwrap_err();
    assert_eq!(
        moved.to_string(),
        "device /dev/sdb1 (8:17) is already in pool `p`; a device serves one pool: take it out of \
         `p` first"
    );
    let renumbered = db
        .add_pool_device("p", size("1MiB"), &device("/dev/sdb1", 99, 10), t0())
        .unwrap_err();
    assert!(
        matches!(renumbered, StateError::DeviceChanged { .. }),
        "{renumbered}"
    );
    let resized = db
        .add_pool_device("p", size("2MiB"), &device("/dev/sdc1", 33, 10), t0())
        .unwrap_err();
    assert!(
        matches!(resized, StateError::ExtentSizeMismatch { .. }),
        "{resized}"
    );
    let tiny = DeviceGeometry {
        sectors: MIB - 1,
        ..device("/dev/sdc1", 33, 0)
    };
    let small = db
        .add_pool_device("p", size("1MiB"), &tiny, t0())
        .unwrap_err();
    assert!(
        matches!(small, StateError::DeviceTooSmall { .. }),
        "{small}"
    );
    assert_consistent(&db, t0());
}

#[test]
fn verify_reports_every_pair_of_overlapping_pool_devices() {
    let placed = |path: &str, minor: u32, extents: u64, disk: u32, start: u64| DeviceGeometry {
        on_disk: Some(DiskPlace {
            disk: DevNum::new(8, disk),
            start,
        }),
        ..device(path, minor, extents)
    };
    let mut db = StateDb::in_memory().unwrap();
    // Apart: two partitions of 8:16 side by side.
    for geometry in [
        placed("/dev/sdb1", 17, 4, 16, 2048),
        placed("/dev/sdb2", 18, 4, 16, 2048 + 4 * MIB + 7),
    ] {
        db.add_pool_device("a", size("1MiB"), &geometry, t0())
            .unwrap();
    }
    assert_consistent(&db, t0());
    // The whole disk 8:32 (place unknown: a disk of its own) in one pool,
    // its partition in another, and a partition crossing sdb2.
    db.add_pool_device("a", size("1MiB"), &device("/dev/sdc", 32, 10), t0())
        .unwrap();
    db.add_pool_device(
        "b",
        size("1MiB"),
        &placed("/dev/sdc1", 33, 2, 32, 2048),
        t0(),
    )
    .unwrap();
    db.add_pool_device(
        "b",
        size("1MiB"),
        &placed("/dev/sdb3", 19, 2, 16, 2048 + 6 * MIB),
        t0(),
    )
    .unwrap();
    let problems = db.verify(t0()).unwrap();
    // sdb3 lies inside sdb2 (which ends at 2048 + 8 MiB + 14): all of it is shared.
    let sdb3 = (2048 + 6 * MIB, 2048 + 8 * MIB + 7);
    let advice = "a sector may serve only one pool device: remove one of them from its pool \
                  in the desired file, then apply";
    assert_eq!(
        problems,
        [
            format!(
                "pool devices /dev/sdb2 (pool `a`) and /dev/sdb3 (pool `b`) overlap: both hold \
                 8:16 sectors {}..{}; {advice}",
                sdb3.0, sdb3.1
            ),
            format!(
                "pool devices /dev/sdc (pool `a`, place on its disk not recorded: taken as a \
                 whole disk) and /dev/sdc1 (pool `b`) overlap: both hold 8:32 sectors \
                 2048..{}; {advice}",
                2048 + 2 * MIB + 7
            ),
        ]
    );
}

#[test]
fn names_are_stored_and_found_literally() {
    let mut db = two_device_pool();
    let name = "x'); DROP TABLE vdisks; --";
    db.create_vdisk(name, "p", size("1MiB"), &Expiry::Never, t0())
        .unwrap();
    db.create_vdisk("plain", "p", size("1MiB"), &Expiry::Never, t0())
        .unwrap();
    assert_eq!(db.lookup(name, t0()).unwrap().len(), 1);
    let names: Vec<String> = db
        .snapshot(t0())
        .unwrap()
        .vdisks
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["plain", name]);
    db.delete_vdisk(name, t0()).unwrap();
    assert_eq!(db.snapshot(t0()).unwrap().vdisks.len(), 1);
}

#[test]
fn concurrent_writers_never_share_an_extent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let mut db = StateDb::create(&path, &test_host(), t0()).unwrap();
    db.add_pool_device("p", size("1MiB"), &device("/dev/sdb1", 17, 400), t0())
        .unwrap();
    drop(db);
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut db = StateDb::open(&path).unwrap();
                for i in 0..10 {
                    let name = format!("w{writer}-{i}");
                    db.create_vdisk(
                        &name,
                        "p",
                        size(&format!("{}MiB", 1 + (writer + i) % 4)),
                        &Expiry::Never,
                        t0(),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let db = StateDb::open_read_only(&path).unwrap();
    let snapshot = db.snapshot(t0()).unwrap();
    assert_eq!(snapshot.vdisks.len(), 80);
    let mut seen = std::collections::BTreeSet::new();
    let mut used = 0;
    for vdisk in &snapshot.vdisks {
        for extent in &vdisk.extents {
            assert!(
                seen.insert((extent.device, extent.start)),
                "{extent} given twice"
            );
            used += 1;
        }
    }
    let device = &snapshot.pools[0].devices[0];
    assert_eq!((device.used, device.free), (used, 400 - used));
    assert_consistent(&db, t0());
}

/// Child side of the kill test: allocates and deletes until killed.
#[test]
fn kill_child_allocator() {
    let Some(path) = std::env::var_os("XENDISK_KILL_TEST_DB") else {
        return;
    };
    let mut db = StateDb::open(std::path::Path::new(&path)).unwrap();
    for i in 0u64.. {
        let name = format!("v{i}");
        let _ = db.create_vdisk(
            &name,
            "p",
            size(&format!("{}MiB", 1 + i % 7)),
            &Expiry::Never,
            t0(),
        );
        if i % 3 == 0 {
            let _ = db.delete_vdisk(&format!("v{}", i / 2), t0());
        }
    }
}

#[test]
fn killing_a_writer_mid_allocation_leaves_the_db_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let mut db = StateDb::create(&path, &test_host(), t0()).unwrap();
    db.add_pool_device("p", size("1MiB"), &device("/dev/sdb1", 17, 3000), t0())
        .unwrap();
    drop(db);
    for round in 0..5u64 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "state::tests::kill_child_allocator",
                "--nocapture",
            ])
            .env("XENDISK_KILL_TEST_DB", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150 + 70 * round));
        child.kill().unwrap(); // SIGKILL: no destructor, no rollback by the child
        child.wait().unwrap();
        let db = StateDb::open(&path).unwrap();
        assert_consistent(&db, t0());
    }
    let snapshot = StateDb::open_read_only(&path)
        .unwrap()
        .snapshot(t0())
        .unwrap();
    assert!(
        !snapshot.vdisks.is_empty(),
        "the child never got to allocate"
    );
}

#[derive(Debug, Clone)]
enum Step {
    Create(u8, u8),
    Grow(u8, u8),
    Expire(u8, u8),
    Delete(u8),
    Remove(u8),
    Tick(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..6, 1u8..9).prop_map(|(v, s)| Step::Create(v, s)),
        (0u8..6, 1u8..12).prop_map(|(v, s)| Step::Grow(v, s)),
        (0u8..6, 1u8..5).prop_map(|(v, h)| Step::Expire(v, h)),
        (0u8..6).prop_map(Step::Delete),
        (0u8..3).prop_map(Step::Remove),
        (0u16..7200).prop_map(Step::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the sequence, every extent has at most one live owner, every
    /// vdisk's extents cover its size, free + used = total, and a device in
    /// use is never removed.
    #[test]
    fn random_sequences_keep_the_invariants(steps in proptest::collection::vec(step(), 1..40)) {
        let mut db = StateDb::in_memory().unwrap();
        let devices = [device("/dev/sdb1", 17, 8), device("/dev/sdb2", 18, 5), device("/dev/sdb3", 19, 3)];
        for d in &devices {
            db.add_pool_device("p", size("1MiB"), d, t0()).unwrap();
        }
        let mut now = t0();
        for step in steps {
            let name = |v: u8| format!("v{v}");
            match step {
                Step::Create(v, s) => { let _ = db.create_vdisk(&name(v), "p", Size::from_sectors(u64::from(s) * MIB), &Expiry::Never, now); }
                Step::Grow(v, s) => { let _ = db.grow_vdisk(&name(v), Size::from_sectors(u64::from(s) * MIB), now); }
                Step::Expire(v, h) => { let _ = db.set_expiry(&name(v), &Expiry::AfterCreation { seconds: u64::from(h) * 3600 }, now); }
                Step::Delete(v) => { let _ = db.delete_vdisk(&name(v), now); }
                Step::Remove(d) => {
                    let path = &devices[d as usize].path;
                    let in_use = db.snapshot(now).unwrap().vdisks.iter()
                        .any(|v| v.extents.iter().any(|e| e.device == devices[d as usize].device));
                    let removed = db.remove_pool_device(path, now);
                    prop_assert!(!(in_use && removed.is_ok()), "removed {path} while in use");
                    if removed.is_ok() {
                        db.add_pool_device("p", size("1MiB"), &devices[d as usize], now).unwrap();
                    }
                }
                Step::Tick(seconds) => now = jiff::Timestamp::from_second(now.as_second() + i64::from(seconds)).unwrap(),
            }
            prop_assert!(db.verify(now).unwrap().is_empty(), "{:?}", db.verify(now).unwrap());
            let snapshot = db.snapshot(now).unwrap();
            let mut owners = std::collections::BTreeSet::new();
            for vdisk in &snapshot.vdisks {
                prop_assert!(vdisk.allocated >= vdisk.size);
                for extent in &vdisk.extents {
                    prop_assert!(owners.insert((extent.device, extent.start)), "{} has two owners", extent);
                }
            }
            for pool in &snapshot.pools {
                for d in &pool.devices {
                    prop_assert_eq!(d.free + d.used, d.extents);
                }
            }
        }
    }
}
