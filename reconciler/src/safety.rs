//! The sharing check: no disk area is shared unsafely, in the final state or
//! in any state on the way there.
//!
//! Each holder (an attachment, something dom0 uses) has areas and a lifetime
//! in plan steps: present from the start or from the step that attaches it,
//! until the step that detaches it or the end. Two holders conflict if their
//! areas overlap, their lifetimes overlap, and the sharing level forbids it.
//! One sweep per device over intervals sorted by start finds every
//! overlapping pair: O(n log n) plus the pairs found. Unlike the ancestor's
//! pairwise test, an area strictly containing another is an overlap too.
//! Pure: it only compares the values it is given.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::desired::Sharing;
use crate::plan::Area;

/// Someone using disk areas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// For a person: "domain web01 xvda (vdisk:data, w)".
    pub name: String,
    /// dom0's own uses are not checked against each other.
    pub dom0: bool,
    pub writable: bool,
    /// Mode `w!`: this holder accepts sharing.
    pub accepts_sharing: bool,
    pub areas: Vec<Area>,
    /// The operation (index into the plan's operations) that creates it;
    /// `None` when it exists before the plan.
    pub added_by: Option<usize>,
    /// The operation that removes it; `None` when it stays.
    pub removed_by: Option<usize>,
}

/// Two holders sharing an area in a way the level forbids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Conflict {
    pub first: String,
    pub second: String,
    /// The shared area: "8:16 sectors 2048..133120" or a file path.
    pub area: String,
    /// The first plan step after which both hold it; 0 when they already do.
    pub from_step: usize,
    pub level: Sharing,
    /// Why the level forbids it.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SafetyReport {
    pub level: Sharing,
    pub holders: usize,
    /// Conflicts the plan would create or keep through a step it makes:
    /// each refuses the plan.
    pub conflicts: Vec<Conflict>,
    /// Conflicts that exist now between holders the plan does not touch:
    /// reported, not refused (the plan neither causes nor can fix them).
    pub existing: Vec<Conflict>,
}

/// Where an interval lies: a device's sectors, or a whole file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    Disk(crate::extent::DevNum),
    File(&'a str),
}

/// Checks the holders over the plan's order (`order[k]` is the operation
/// done at step `k + 1`).
pub fn check(holders: &[Holder], order: &[usize], level: Sharing) -> SafetyReport {
    let step_of: BTreeMap<usize, usize> = order
        .iter()
        .enumerate()
        .map(|(position, op)| (*op, position + 1))
        .collect();
    let end = order.len() + 1;
    // A holder is present in states [from, to); state k follows step k.
    let lifetime = |h: &Holder| {
        let from = h
            .added_by
            .and_then(|op| step_of.get(&op).copied())
            .unwrap_or(0);
        let to = h
            .removed_by
            .and_then(|op| step_of.get(&op).copied())
            .unwrap_or(end);
        (from, to)
    };
    let mut intervals: Vec<(Key<'_>, u64, u64, usize)> = Vec::new();
    for (index, holder) in holders.iter().enumerate() {
        for area in &holder.areas {
            match area {
                Area::Sectors(range) if range.sectors > 0 => {
                    intervals.push((Key::Disk(range.device), range.start, range.end(), index))
                }
                Area::Sectors(_) => {}
                Area::File(path) => intervals.push((Key::File(path), 0, u64::MAX, index)),
            }
        }
    }
    intervals.sort_unstable();

    let mut report = SafetyReport {
        level,
        holders: holders.len(),
        conflicts: Vec::new(),
        existing: Vec::new(),
    };
    let mut reported: BTreeSet<(usize, usize)> = BTreeSet::new();
    // Intervals still open at the sweep position, on the current key.
    let mut active: Vec<(u64, u64, usize)> = Vec::new();
    let mut current_key: Option<&Key<'_>> = None;
    for (key, start, stop, index) in &intervals {
        if current_key != Some(key) {
            active.clear();
            current_key = Some(key);
        }
        active.retain(|(_, other_stop, _)| other_stop > start);
        for &(other_start, other_stop, other) in &active {
            let pair = (other.min(*index), other.max(*index));
            if other == *index || reported.contains(&pair) {
                continue;
            }
            let (a, b) = (&holders[other], &holders[*index]);
            if a.dom0 && b.dom0 {
                continue;
            }
            let ((from_a, to_a), (from_b, to_b)) = (lifetime(a), lifetime(b));
            let from = from_a.max(from_b);
            if from >= to_a.min(to_b) {
                continue; // never present together
            }
            if let Some(reason) = forbidden(level, a, b) {
                reported.insert(pair);
                let area = match key {
                    Key::Disk(device) => {
                        format!(
                            "{device} sectors {}..{}",
                            other_start.max(*start),
                            other_stop.min(*stop)
                        )
                    }
                    Key::File(path) => path.to_string(),
                };
                let conflict = Conflict {
                    first: a.name.clone(),
                    second: b.name.clone(),
                    area,
                    from_step: from,
                    level,
                    reason,
                };
                let untouched = [a, b]
                    .iter()
                    .all(|h| h.added_by.is_none() && h.removed_by.is_none());
                if untouched {
                    report.existing.push(conflict)
                } else {
                    report.conflicts.push(conflict)
                }
            }
        }
        active.push((*start, *stop, *index));
    }
    report.conflicts.sort_by(|x, y| {
        (x.from_step, &x.first, &x.second).cmp(&(y.from_step, &y.first, &y.second))
    });
    report
        .existing
        .sort_by(|x, y| (&x.first, &x.second).cmp(&(&y.first, &y.second)));
    report
}

/// Why `level` forbids these two sharing an area, if it does.
fn forbidden(level: Sharing, a: &Holder, b: &Holder) -> Option<String> {
    let writers: Vec<&Holder> = [a, b].into_iter().filter(|h| h.writable).collect();
    if writers.is_empty() || writers.iter().all(|h| h.accepts_sharing) {
        return None;
    }
    match level {
        Sharing::Unsafe => None,
        Sharing::SingleWriter if writers.len() == 1 => None,
        Sharing::SingleWriter => Some(
            "single-writer allows one writer at a time; use w! on both to accept sharing".into(),
        ),
        Sharing::Exclusive => Some(
            "exclusive allows sharing only between readers; use w! on the writer to accept it"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::{DevNum, SectorRange};

    fn holder(name: &str, writable: bool, start: u64, sectors: u64) -> Holder {
        Holder {
            name: name.into(),
            dom0: false,
            writable,
            accepts_sharing: false,
            areas: vec![Area::Sectors(SectorRange {
                device: DevNum::new(8, 16),
                start,
                sectors,
            })],
            added_by: Some(0),
            removed_by: None,
        }
    }

    #[test]
    fn containment_is_an_overlap() {
        // The ancestor's pairwise test missed an extent strictly containing another.
        let outer = holder("outer", true, 0, 1000);
        let inner = holder("inner", true, 100, 10);
        let report = check(&[outer, inner], &[0], Sharing::Exclusive);
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
        let conflicts = |hs: &[Holder], level| check(hs, &[0], level).conflicts.len();
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
    fn lifetimes_that_do_not_meet_do_not_conflict() {
        // Op 0 detaches `old`; op 1 attaches `new`; order: 0 then 1.
        let old = Holder {
            added_by: None,
            removed_by: Some(0),
            ..holder("old", true, 0, 10)
        };
        let new = Holder {
            added_by: Some(1),
            ..holder("new", true, 0, 10)
        };
        assert!(
            check(&[old.clone(), new.clone()], &[0, 1], Sharing::Exclusive)
                .conflicts
                .is_empty()
        );
        // Attaching first would pass through a shared state at step 1.
        let report = check(&[old, new], &[1, 0], Sharing::Exclusive);
        assert_eq!(report.conflicts.len(), 1);
        assert_eq!(report.conflicts[0].from_step, 1);
    }

    #[test]
    fn existing_conflicts_the_plan_does_not_touch_are_only_reported() {
        let a = Holder {
            added_by: None,
            ..holder("a", true, 0, 10)
        };
        let b = Holder {
            added_by: None,
            ..holder("b", true, 0, 10)
        };
        let report = check(&[a, b], &[], Sharing::Exclusive);
        assert!(report.conflicts.is_empty());
        assert_eq!(report.existing.len(), 1);
    }
}
