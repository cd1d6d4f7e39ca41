//! The sharing check: no disk area is shared unsafely, in any state apply
//! may pass through.
//!
//! Each holder (an attachment, something dom0 uses, a pool device, a vdisk,
//! a scrub) has areas and a lifetime in plan steps: present from the start
//! or from the step that adds it, until the step that removes it or the
//! end. Apply runs steps as soon as their dependencies are done, so two
//! holders that must not meet are kept apart only by a dependency path from
//! the step removing one to the step adding the other; the check looks for
//! that path, never at one linear order.
//!
//! [`clashes`] finds the pairs that would conflict if they met (one sweep
//! per device over intervals sorted by start: O(n log n) plus the pairs
//! found); the planner orders each such pair ([`ordering_edges`]); [`check`]
//! verifies every pair against the plan's dependencies. Pure: it only
//! compares the values it is given.

mod order;
mod sweep;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::desired::Sharing;
use crate::extent::{DevNum, SectorRange};

pub use order::Dependencies;
pub use sweep::{Clash, clashes, meet};

/// A disk area: sectors of a whole disk, a file, or something that could
/// not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Area {
    Sectors(SectorRange),
    /// Sectors `start..start + sectors` of a regular file, by identity
    /// (the whole file: `0..u64::MAX`); the path is for people.
    Inode {
        dev: DevNum,
        ino: u64,
        start: u64,
        sectors: u64,
        path: String,
    },
    /// A file known only by its path: it is not on the host (yet).
    Path(String),
    /// What a holder uses could not be resolved (the text says what it
    /// named): it might be any disk.
    Unknown(String),
}

/// Who a holder is, which decides what it may share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// dom0 itself (a mount, swap, a holder): dom0's own uses are not
    /// checked against each other (a filesystem on an LVM volume is both).
    Domain0,
    /// An attachment, to a guest or to dom0.
    Guest,
    /// xendisk's own: a pool device or a vdisk (it claims its sectors as
    /// long as it exists), or a scrub (it writes them during its step).
    /// Nothing but what is built on it may use them, at any sharing level.
    Xendisk,
}

/// Something other holders are built on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    PoolDevice(DevNum),
    Vdisk(String),
    /// A block device built on others (an LVM volume, a device-mapper or
    /// md device): dom0 holds what is under it, and whoever uses the
    /// device itself goes through that hold.
    Device(DevNum),
}

/// Someone using disk areas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// For a person: "domain web01 xvda (vdisk:data, w)".
    pub name: String,
    pub owner: Owner,
    pub writable: bool,
    /// Mode `w!`: this holder accepts sharing.
    pub accepts_sharing: bool,
    pub areas: Vec<Area>,
    /// The xendisk object this holder is, if it is one.
    pub is: Option<Layer>,
    /// The xendisk objects it is built on: it shares their sectors by
    /// design (a vdisk on its pool device, an attachment of a vdisk).
    pub on: Vec<Layer>,
    /// The step that adds it (an operation index while planning, a step id
    /// in [`check`]); `None` when it exists before the plan.
    pub added_by: Option<usize>,
    /// The step that removes it; `None` when it stays. A scrub is added and
    /// removed by its own step.
    pub removed_by: Option<usize>,
}

impl Holder {
    fn there_before_the_plan(&self) -> bool {
        self.added_by.is_none()
    }
}

/// What rule two holders break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictKind {
    /// The sharing level forbids it.
    Sharing,
    /// One of them is xendisk's own (a pool device, a vdisk, a scrub).
    Xendisk,
    /// One of them could not be resolved, the other writes a disk.
    Unresolved,
}

/// Two holders sharing an area in a way the level forbids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Conflict {
    pub kind: ConflictKind,
    pub first: String,
    pub second: String,
    /// The shared area: "8:16 sectors 2048..133120" or a file.
    pub area: String,
    /// The step from which both may hold it (the later of the steps adding
    /// them); 0 when both hold it now.
    pub from_step: usize,
    /// When ordering would avoid it: `(waiting, first)`, step `waiting`
    /// must wait for step `first`, and the plan does not make it.
    pub must_wait: Option<(usize, usize)>,
    pub level: Sharing,
    /// Why it is forbidden.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SafetyReport {
    pub level: Sharing,
    pub holders: usize,
    /// Conflicts a step of the plan could create: each refuses the plan.
    pub conflicts: Vec<Conflict>,
    /// Conflicts that exist now, between holders that were there before
    /// the plan: reported, not refused (the plan does not cause them).
    pub existing: Vec<Conflict>,
    /// Holders whose disk could not be resolved: any plan step that writes
    /// a disk while they are there is refused.
    pub unresolved: Vec<String>,
}

/// For each pair of holders that must not meet, the edge that keeps them
/// apart: the step removing one before the step adding the other. Pairs
/// that no order can separate are left to [`check`] to report.
pub fn ordering_edges(holders: &[Holder], level: Sharing) -> Vec<(usize, usize)> {
    ordering_edges_of(holders, &clashes(holders, level))
}

/// [`ordering_edges`] for the clashes [`clashes`] found among `holders`.
pub fn ordering_edges_of(holders: &[Holder], clashes: &[Clash]) -> Vec<(usize, usize)> {
    let mut edges: Vec<(usize, usize)> = clashes
        .iter()
        .filter_map(|clash| {
            let (a, b) = (&holders[clash.first], &holders[clash.second]);
            separating_edge(a, b).or_else(|| separating_edge(b, a))
        })
        .filter(|(from, to)| from != to)
        .collect();
    edges.sort_unstable();
    edges.dedup();
    edges
}

/// Those of `edges` (`(first, then)`, step ids) that neither the
/// dependencies nor the edges kept before them imply: nearest pairs first,
/// so that a long edge a chain of short ones already makes is dropped.
pub fn not_implied(edges: &[(usize, usize)], dependencies: &Dependencies) -> Vec<usize> {
    let mut by_length: Vec<usize> = (0..edges.len()).collect();
    by_length.sort_by_key(|&i| (edges[i].1.abs_diff(edges[i].0), edges[i]));
    let mut dependencies = dependencies.clone();
    let mut kept = Vec::new();
    for i in by_length {
        let (first, then) = edges[i];
        if !order::Reach::new(&dependencies).before_or_same(first, then) {
            dependencies.add(first, then);
            kept.push(i);
        }
    }
    kept.sort_unstable();
    kept
}

/// `gone` removed by a step before `comes` is added by one.
fn separating_edge(gone: &Holder, comes: &Holder) -> Option<(usize, usize)> {
    Some((gone.removed_by?, comes.added_by?))
}

/// Checks every pair that would conflict against the plan's dependencies
/// (holders' steps are step ids here).
pub fn check(holders: &[Holder], dependencies: &Dependencies, level: Sharing) -> SafetyReport {
    check_clashes(holders, clashes(holders, level), dependencies, level)
}

/// [`check`] for the clashes [`clashes`] found among `holders`: the
/// planner has them from ordering the steps, and renumbering the holders'
/// steps does not change which pairs clash.
pub fn check_clashes(
    holders: &[Holder],
    clashes: Vec<Clash>,
    dependencies: &Dependencies,
    level: Sharing,
) -> SafetyReport {
    let mut report = SafetyReport {
        level,
        holders: holders.len(),
        conflicts: Vec::new(),
        existing: Vec::new(),
        unresolved: holders
            .iter()
            .filter(|h| h.areas.iter().any(|a| matches!(a, Area::Unknown(_))))
            .map(|h| h.name.clone())
            .collect(),
    };
    let mut reach = order::Reach::new(dependencies);
    for clash in clashes {
        let (a, b) = (&holders[clash.first], &holders[clash.second]);
        let mut apart = |gone: &Holder, comes: &Holder| match (gone.removed_by, comes.added_by) {
            (Some(removed), Some(added)) => reach.before_or_same(removed, added),
            _ => false,
        };
        if apart(a, b) || apart(b, a) {
            continue;
        }
        let must_wait = match (a.removed_by, b.added_by, b.removed_by, a.added_by) {
            (Some(removed), Some(added), _, _) if removed != added => Some((added, removed)),
            (_, _, Some(removed), Some(added)) if removed != added => Some((added, removed)),
            _ => None,
        };
        let conflict = Conflict {
            kind: clash.kind,
            first: a.name.clone(),
            second: b.name.clone(),
            area: clash.area,
            from_step: a.added_by.unwrap_or(0).max(b.added_by.unwrap_or(0)),
            must_wait,
            level,
            reason: clash.reason,
        };
        if a.there_before_the_plan() && b.there_before_the_plan() {
            report.existing.push(conflict);
        } else {
            report.conflicts.push(conflict);
        }
    }
    report.conflicts.sort_by(|x, y| {
        (x.from_step, &x.first, &x.second, &x.area).cmp(&(
            y.from_step,
            &y.first,
            &y.second,
            &y.area,
        ))
    });
    report.conflicts.dedup();
    report
        .existing
        .sort_by(|x, y| (&x.first, &x.second, &x.area).cmp(&(&y.first, &y.second, &y.area)));
    report.existing.dedup();
    report
}

/// Why these two may not share an area, if they may not.
fn forbidden(level: Sharing, a: &Holder, b: &Holder) -> Option<(ConflictKind, &'static str)> {
    // The rule on owners and modes first: it reads only the holders' own
    // fields, while whether one is built on the other walks their layers.
    let rule = forbidden_by_rule(level, a, b)?;
    (!built_on_each_other(a, b)).then_some(rule)
}

/// [`forbidden`], but for holders built on each other.
fn forbidden_by_rule(
    level: Sharing,
    a: &Holder,
    b: &Holder,
) -> Option<(ConflictKind, &'static str)> {
    if a.owner == Owner::Domain0 && b.owner == Owner::Domain0 {
        return None;
    }
    if a.owner == Owner::Xendisk || b.owner == Owner::Xendisk {
        return Some((
            ConflictKind::Xendisk,
            "xendisk writes these sectors: a pool device, its vdisks and its scrubs share them \
             with nothing else, at any sharing level",
        ));
    }
    let writers = usize::from(a.writable) + usize::from(b.writable);
    let all_accept = (!a.writable || a.accepts_sharing) && (!b.writable || b.accepts_sharing);
    if writers == 0 || all_accept {
        return None;
    }
    let reason = match level {
        Sharing::Unsafe => return None,
        Sharing::SingleWriter if writers == 1 => return None,
        Sharing::SingleWriter => {
            "single-writer allows one writer at a time; use w! on both to accept sharing"
        }
        Sharing::Exclusive => {
            "exclusive allows sharing only between readers; use w! on the writer to accept it"
        }
    };
    Some((ConflictKind::Sharing, reason))
}

fn built_on_each_other(a: &Holder, b: &Holder) -> bool {
    let on = |x: &Holder, y: &Holder| x.is.as_ref().is_some_and(|layer| y.on.contains(layer));
    on(a, b) || on(b, a) || (a.is.is_some() && a.is == b.is)
}

/// Whether an unresolved holder and `other` must be kept apart: anything
/// that writes a disk, or an attachment that may write it.
fn meets_unknown(unknown: &Holder, other: &Holder) -> Option<(ConflictKind, String)> {
    if !writes_during_plan(other)
        || (unknown.owner == Owner::Domain0 && other.owner == Owner::Domain0)
    {
        return None;
    }
    Some((
        ConflictKind::Unresolved,
        format!(
            "what {} uses cannot be resolved on this host, so it may be these sectors; \
             detach it (or let its hotplug script finish) and plan again",
            unknown.name
        ),
    ))
}

/// xendisk's own holders, and attachments the plan makes writable.
fn writes_during_plan(holder: &Holder) -> bool {
    holder.owner == Owner::Xendisk || (holder.writable && !holder.there_before_the_plan())
}

#[cfg(test)]
mod tests;
