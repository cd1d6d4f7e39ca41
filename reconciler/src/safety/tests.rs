use super::*;
use crate::extent::{DevNum, SectorRange};
use proptest::prelude::*;

fn sectors(start: u64, count: u64) -> Area {
    Area::Sectors(SectorRange {
        device: DevNum::new(8, 16),
        start,
        sectors: count,
    })
}

fn holder(name: &str, writable: bool, start: u64, count: u64) -> Holder {
    Holder {
        name: name.into(),
        owner: Owner::Guest,
        writable,
        accepts_sharing: false,
        areas: vec![sectors(start, count)],
        is: None,
        on: vec![],
        added_by: Some(1),
        removed_by: None,
    }
}

/// Steps 1..=n with the given dependencies.
fn deps(n: usize, edges: &[(usize, usize)]) -> Dependencies {
    let mut waits_for = vec![Vec::new(); n];
    for &(first, then) in edges {
        waits_for[then - 1].push(first);
    }
    Dependencies::new(waits_for)
}

#[test]
fn containment_is_an_overlap() {
    // The ancestor's pairwise test missed an extent strictly containing another.
    let outer = holder("outer", true, 0, 1000);
    let inner = holder("inner", true, 100, 10);
    let report = check(&[outer, inner], &deps(1, &[]), Sharing::Exclusive);
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.conflicts[0].area, "8:16 sectors 100..110");
}

#[test]
fn levels_and_w_bang() {
    let (w1, w2, r) = (
        holder("w1", true, 0, 10),
        holder("w2", true, 5, 10),
        holder("r", false, 0, 10),
    );
    let conflicts = |hs: &[Holder], level| check(hs, &deps(1, &[]), level).conflicts.len();
    assert_eq!(conflicts(&[w1.clone(), r.clone()], Sharing::Exclusive), 1);
    assert_eq!(
        conflicts(&[w1.clone(), r.clone()], Sharing::SingleWriter),
        0
    );
    assert_eq!(
        conflicts(&[w1.clone(), w2.clone()], Sharing::SingleWriter),
        1
    );
    assert_eq!(conflicts(&[w1.clone(), w2.clone()], Sharing::Unsafe), 0);
    let shared = |h: &Holder| Holder {
        accepts_sharing: true,
        ..h.clone()
    };
    assert_eq!(
        conflicts(&[shared(&w1), w2.clone()], Sharing::Exclusive),
        1,
        "w! on one side only"
    );
    assert_eq!(
        conflicts(&[shared(&w1), shared(&w2)], Sharing::Exclusive),
        0
    );
    assert_eq!(
        conflicts(&[r.clone(), holder("r2", false, 0, 10)], Sharing::Exclusive),
        0
    );
}

#[test]
fn a_detach_keeps_an_attach_apart_only_through_a_dependency_path() {
    // Step 1 detaches `old`, step 2 attaches `new`.
    let old = Holder {
        added_by: None,
        removed_by: Some(1),
        ..holder("old", true, 0, 10)
    };
    let new = Holder {
        added_by: Some(2),
        ..holder("new", true, 0, 10)
    };
    let holders = [old, new];
    assert!(
        check(&holders, &deps(2, &[(1, 2)]), Sharing::Exclusive)
            .conflicts
            .is_empty()
    );
    // Numbered in that order but independent: apply may run them at once.
    let report = check(&holders, &deps(2, &[]), Sharing::Exclusive);
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.conflicts[0].must_wait, Some((2, 1)));
    // A path through another step is enough.
    let holders3 = [
        holders[0].clone(),
        Holder {
            added_by: Some(3),
            ..holders[1].clone()
        },
    ];
    assert!(
        check(&holders3, &deps(3, &[(1, 2), (2, 3)]), Sharing::Exclusive)
            .conflicts
            .is_empty()
    );
}

#[test]
fn the_planner_gets_the_edge_that_separates_a_pair() {
    let old = Holder {
        added_by: None,
        removed_by: Some(4),
        ..holder("old", true, 0, 10)
    };
    let new = Holder {
        added_by: Some(7),
        ..holder("new", true, 0, 10)
    };
    let stays = Holder {
        added_by: None,
        ..holder("stays", false, 100, 10)
    };
    assert_eq!(
        ordering_edges(&[old, new, stays], Sharing::Exclusive),
        [(4, 7)]
    );
}

#[test]
fn xendisk_holders_meet_nobody_at_any_level_but_what_is_built_on_them() {
    let pool = Holder {
        name: "pool device".into(),
        owner: Owner::Xendisk,
        is: Some(Layer::PoolDevice(DevNum::new(8, 16))),
        added_by: None,
        ..holder("", true, 0, 1000)
    };
    let vdisk = Holder {
        name: "vdisk".into(),
        owner: Owner::Xendisk,
        is: Some(Layer::Vdisk("v".into())),
        on: vec![Layer::PoolDevice(DevNum::new(8, 16))],
        added_by: None,
        ..holder("", true, 0, 100)
    };
    let attached = Holder {
        on: vec![
            Layer::Vdisk("v".into()),
            Layer::PoolDevice(DevNum::new(8, 16)),
        ],
        ..holder("guest of v", true, 0, 100)
    };
    let stranger = Holder {
        accepts_sharing: true,
        ..holder("reader", false, 500, 10)
    };
    let d = deps(1, &[]);
    assert!(
        check(
            &[pool.clone(), vdisk.clone(), attached.clone()],
            &d,
            Sharing::Exclusive
        )
        .conflicts
        .is_empty()
    );
    // A read-only w! holder of pool sectors, even with unsafe sharing.
    let report = check(&[pool, stranger], &d, Sharing::Unsafe);
    assert_eq!(report.conflicts.len(), 1, "{report:?}");
    // A scrub of a live vdisk's sectors.
    let scrub = Holder {
        name: "scrub".into(),
        owner: Owner::Xendisk,
        on: vec![Layer::PoolDevice(DevNum::new(8, 16))],
        added_by: Some(1),
        removed_by: Some(1),
        ..holder("", true, 50, 10)
    };
    assert_eq!(
        check(&[vdisk, scrub], &d, Sharing::Unsafe).conflicts.len(),
        1
    );
}

#[test]
fn files_meet_by_identity_and_unresolved_holders_refuse_writes() {
    let file = |name: &str, path: &str| Holder {
        areas: vec![Area::Inode {
            dev: DevNum::new(8, 1),
            ino: 42,
            start: 0,
            sectors: u64::MAX,
            path: path.into(),
        }],
        ..holder(name, true, 0, 0)
    };
    let report = check(
        &[file("a", "/srv/a.img"), file("b", "/srv/link-to-a")],
        &deps(1, &[]),
        Sharing::Exclusive,
    );
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(
        report.conflicts[0].area,
        "file /srv/a.img = /srv/link-to-a (inode 42 on 8:1)"
    );

    let unknown = Holder {
        added_by: None,
        areas: vec![Area::Unknown("/dev/gone".into())],
        ..holder("mystery", true, 0, 0)
    };
    let reader = holder("new reader", false, 500, 10);
    let writer = holder("new writer", true, 0, 10);
    let report = check(
        &[unknown.clone(), reader, writer],
        &deps(1, &[]),
        Sharing::Exclusive,
    );
    assert_eq!(report.unresolved, ["mystery"]);
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.conflicts[0].second, "new writer");
    // Once the plan has detached it first, writing is fine.
    let leaving = Holder {
        removed_by: Some(1),
        ..unknown
    };
    let later_writer = Holder {
        added_by: Some(2),
        ..holder("new writer", true, 0, 10)
    };
    assert!(
        check(
            &[leaving, later_writer],
            &deps(2, &[(1, 2)]),
            Sharing::Exclusive
        )
        .conflicts
        .is_empty()
    );
}

#[test]
fn existing_conflicts_the_plan_does_not_cause_are_only_reported() {
    let a = Holder {
        added_by: None,
        ..holder("a", true, 0, 10)
    };
    let b = Holder {
        added_by: None,
        removed_by: Some(1),
        ..holder("b", true, 0, 10)
    };
    let report = check(&[a, b], &deps(1, &[]), Sharing::Exclusive);
    assert!(report.conflicts.is_empty());
    assert_eq!(report.existing.len(), 1);
}

/// A random area: sectors of one of two disks, a window of one of two
/// files by identity, a file by path, an unresolved one, or an empty one;
/// ranges small enough to meet often, and some reaching the end of the
/// number range.
fn any_area() -> impl Strategy<Value = Area> {
    let range = (0u64..60, 0u64..30).prop_map(|(start, sectors)| (start, sectors));
    prop_oneof![
        4 => (0u32..2, range.clone()).prop_map(|(minor, (start, sectors))| {
            Area::Sectors(SectorRange {
                device: DevNum::new(8, minor),
                start,
                sectors,
            })
        }),
        1 => Just(Area::Sectors(SectorRange {
            device: DevNum::new(8, 1),
            start: u64::MAX - 10,
            sectors: 10,
        })),
        2 => (0u64..2, range).prop_map(|(ino, (start, sectors))| Area::Inode {
            dev: DevNum::new(254, 0),
            ino,
            start,
            sectors,
            path: format!("/srv/{ino}.img"),
        }),
        1 => (0u8..2).prop_map(|n| Area::Path(format!("/srv/new{n}.img"))),
        1 => Just(Area::Unknown("/dev/gone".into())),
    ]
}

fn any_layer() -> impl Strategy<Value = Layer> {
    prop_oneof![
        (0u32..2).prop_map(|minor| Layer::PoolDevice(DevNum::new(8, minor))),
        (0u8..3).prop_map(|n| Layer::Vdisk(format!("v{n}"))),
        (0u32..2).prop_map(|minor| Layer::Device(DevNum::new(253, minor))),
    ]
}

fn any_holder() -> impl Strategy<Value = Holder> {
    let owner = prop_oneof![
        Just(Owner::Domain0),
        Just(Owner::Guest),
        Just(Owner::Xendisk)
    ];
    (
        owner,
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(any_area(), 0..4),
        proptest::option::of(any_layer()),
        proptest::collection::vec(any_layer(), 0..3),
        proptest::option::of(1usize..4),
    )
        .prop_map(
            |(owner, writable, accepts_sharing, areas, is, on, added_by)| Holder {
                name: String::new(),
                owner,
                writable,
                accepts_sharing,
                areas,
                is,
                on,
                added_by,
                removed_by: None,
            },
        )
}

/// Every pair compared with every other, by the sweep's rules: the
/// reference. `(first, second, kind, reason)`, sorted.
fn pairwise(holders: &[Holder], level: Sharing) -> Vec<(usize, usize, ConflictKind, String)> {
    let unknown = |h: &Holder| h.areas.iter().any(|a| matches!(a, Area::Unknown(_)));
    let resolved = |h: &Holder| {
        h.areas
            .iter()
            .filter(|a| !matches!(a, Area::Unknown(_)))
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut found = Vec::new();
    for i in 0..holders.len() {
        for j in i + 1..holders.len() {
            let (a, b) = (&holders[i], &holders[j]);
            let overlap = resolved(a)
                .iter()
                .any(|x| resolved(b).iter().any(|y| meet(x, y)));
            let clash = overlap
                .then(|| forbidden(level, a, b))
                .flatten()
                .map(|(kind, reason)| (kind, reason.to_owned()))
                .or_else(|| {
                    (unknown(a) && writes_during_plan(b))
                        .then(|| meets_unknown(a, b))
                        .flatten()
                })
                .or_else(|| {
                    (unknown(b) && writes_during_plan(a))
                        .then(|| meets_unknown(b, a))
                        .flatten()
                });
            if let Some((kind, reason)) = clash {
                found.push((i, j, kind, reason));
            }
        }
    }
    found.sort_by_key(|x| (x.0, x.1));
    found
}

proptest! {
    /// On random holders (few disks and files, areas that often meet,
    /// every kind of owner and layer), the sweep finds exactly the pairs
    /// that comparing every pair finds, each once.
    #[test]
    fn the_sweep_finds_what_pairwise_comparison_finds(
        holders in proptest::collection::vec(any_holder(), 0..12),
        level in prop_oneof![
            Just(Sharing::Exclusive),
            Just(Sharing::SingleWriter),
            Just(Sharing::Unsafe)
        ],
    ) {
        let mut swept: Vec<(usize, usize, ConflictKind, String)> = clashes(&holders, level)
            .into_iter()
            .map(|c| (c.first, c.second, c.kind, c.reason))
            .collect();
        swept.sort_by_key(|x| (x.0, x.1));
        prop_assert_eq!(swept, pairwise(&holders, level));
    }
}
