//! Finding the pairs of holders that would conflict if they met: one sweep
//! per device (or file) over intervals sorted by start, comparing each
//! interval only with those still open. Unlike the ancestor's pairwise
//! test, an area strictly containing another is an overlap too.

use std::collections::HashSet;

use super::{Area, ConflictKind, Holder, forbidden, meets_unknown, writes_during_plan};
use crate::desired::Sharing;
use crate::extent::DevNum;

/// Two holders (indices, `first < second`) whose areas overlap and that
/// may not share them, whatever the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clash {
    pub first: usize,
    pub second: usize,
    /// The shared area, for a person.
    pub area: String,
    pub kind: ConflictKind,
    pub reason: String,
}

/// Where an interval lies: a disk's sectors, a file by identity, a file by
/// path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    Disk(DevNum),
    Inode(DevNum, u64),
    Path(&'a str),
}

/// Where an area lies and its interval `[start, stop)` there; `None` for
/// an empty area and for one that could not be resolved.
fn span(area: &Area) -> Option<(Key<'_>, u64, u64)> {
    match area {
        Area::Sectors(range) if range.sectors > 0 => {
            Some((Key::Disk(range.device), range.start, range.end()))
        }
        Area::Inode {
            dev,
            ino,
            start,
            sectors,
            ..
        } if *sectors > 0 => Some((
            Key::Inode(*dev, *ino),
            *start,
            start.saturating_add(*sectors),
        )),
        Area::Path(path) => Some((Key::Path(path), 0, u64::MAX)),
        Area::Sectors(_) | Area::Inode { .. } | Area::Unknown(_) => None,
    }
}

/// Whether two areas share a sector or a file, by the sweep's own rule;
/// one that could not be resolved shares everything.
pub fn meet(a: &Area, b: &Area) -> bool {
    if matches!(a, Area::Unknown(_)) || matches!(b, Area::Unknown(_)) {
        return true;
    }
    match (span(a), span(b)) {
        (Some((k1, s1, e1)), Some((k2, s2, e2))) => k1 == k2 && s1 < e2 && s2 < e1,
        _ => false,
    }
}

/// Every interval to sweep, sorted as `(place, start, stop, holder)` sorts
/// but on integer keys: the sort is most of the sweep's time, and tuples
/// holding a [`Key`] compare through its variants at every step. Disks come
/// first (by device number), then files by identity, then files by path,
/// which is [`Key`]'s order, so the sweep meets every pair in the same
/// order as over one list sorted by [`Key`].
#[derive(Default)]
struct Sorted<'a> {
    /// `(device << 64 | start, stop, holder)`.
    disks: Vec<(u128, u64, usize)>,
    /// `((device << 64 | inode), start, stop, holder)`.
    inodes: Vec<(u128, u64, u64, usize)>,
    /// Files known by path alone: few, so kept with their text.
    paths: Vec<(&'a str, u64, u64, usize)>,
    /// Holders with an area that could not be resolved.
    unknown: Vec<usize>,
}

/// A device number as one integer ordered as [`DevNum`] is.
fn pack(device: DevNum) -> u64 {
    (u64::from(device.major) << 32) | u64::from(device.minor)
}

fn unpack(packed: u64) -> DevNum {
    DevNum::new((packed >> 32) as u32, packed as u32)
}

impl<'a> Sorted<'a> {
    fn of(holders: &'a [Holder]) -> Sorted<'a> {
        let mut sorted = Sorted {
            disks: Vec::with_capacity(holders.iter().map(|h| h.areas.len()).sum()),
            ..Sorted::default()
        };
        for (index, holder) in holders.iter().enumerate() {
            for area in &holder.areas {
                match span(area) {
                    Some((Key::Disk(device), start, stop)) => sorted.disks.push((
                        (u128::from(pack(device)) << 64) | u128::from(start),
                        stop,
                        index,
                    )),
                    Some((Key::Inode(dev, ino), start, stop)) => sorted.inodes.push((
                        (u128::from(pack(dev)) << 64) | u128::from(ino),
                        start,
                        stop,
                        index,
                    )),
                    Some((Key::Path(path), start, stop)) => {
                        sorted.paths.push((path, start, stop, index))
                    }
                    None if matches!(area, Area::Unknown(_)) => sorted.unknown.push(index),
                    None => {} // empty
                }
            }
        }
        sorted.disks.sort_unstable();
        sorted.inodes.sort_unstable();
        sorted.paths.sort_unstable();
        sorted
    }

    /// The intervals in sweep order, each with its place.
    fn intervals(&self) -> impl Iterator<Item = (Key<'a>, u64, u64, usize)> + '_ {
        let disks = self.disks.iter().map(|&(key, stop, index)| {
            (
                Key::Disk(unpack((key >> 64) as u64)),
                key as u64,
                stop,
                index,
            )
        });
        let inodes = self.inodes.iter().map(|&(key, start, stop, index)| {
            (
                Key::Inode(unpack((key >> 64) as u64), key as u64),
                start,
                stop,
                index,
            )
        });
        let paths = self
            .paths
            .iter()
            .map(|&(path, start, stop, index)| (Key::Path(path), start, stop, index));
        disks.chain(inodes).chain(paths)
    }
}

/// Every pair of holders that would conflict if present together.
pub fn clashes(holders: &[Holder], level: Sharing) -> Vec<Clash> {
    let sorted = Sorted::of(holders);
    let unknown = &sorted.unknown;

    let mut found: Vec<Clash> = Vec::new();
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    // Intervals still open at the sweep position, on the current key.
    let mut active: Vec<(u64, u64, usize)> = Vec::new();
    let mut current: Option<Key<'_>> = None;
    for (key, start, stop, index) in sorted.intervals() {
        if current != Some(key) {
            active.clear();
            current = Some(key);
        }
        active.retain(|&(_, other_stop, _)| other_stop > start);
        for &(other_start, other_stop, other) in &active {
            if other == index {
                continue;
            }
            let pair = (other.min(index), other.max(index));
            // Whether they may share first: most overlaps are allowed (a
            // vdisk on its pool device), and the rule is cheaper than a
            // lookup among the pairs found.
            let Some((kind, reason)) = forbidden(level, &holders[pair.0], &holders[pair.1]) else {
                continue;
            };
            if !seen.insert(pair) {
                continue;
            }
            let area = match key {
                Key::Disk(device) => format!(
                    "{device} sectors {}..{}",
                    other_start.max(start),
                    other_stop.min(stop)
                ),
                Key::Inode(dev, ino) => {
                    let (a, b) = (
                        file_path(&holders[other], dev, ino),
                        file_path(&holders[index], dev, ino),
                    );
                    let names = if a == b { a } else { format!("{a} = {b}") };
                    let (from, to) = (other_start.max(start), other_stop.min(stop));
                    let window = if from == 0 && to == u64::MAX {
                        String::new()
                    } else {
                        format!(" sectors {from}..{to}")
                    };
                    format!("file {names}{window} (inode {ino} on {dev})")
                }
                Key::Path(path) => format!("file {path}"),
            };
            found.push(Clash {
                first: pair.0,
                second: pair.1,
                area,
                kind,
                reason: reason.to_owned(),
            });
        }
        active.push((start, stop, index));
    }

    if !unknown.is_empty() {
        let writers: Vec<usize> = (0..holders.len())
            .filter(|i| writes_during_plan(&holders[*i]))
            .collect();
        for &u in unknown {
            for &w in &writers {
                let pair = (u.min(w), u.max(w));
                if u == w || seen.contains(&pair) {
                    continue;
                }
                if let Some((kind, reason)) = meets_unknown(&holders[u], &holders[w]) {
                    seen.insert(pair);
                    let area = holders[u]
                        .areas
                        .iter()
                        .find_map(|a| match a {
                            Area::Unknown(what) => Some(format!("unresolved {what}")),
                            _ => None,
                        })
                        .unwrap_or_default();
                    found.push(Clash {
                        first: pair.0,
                        second: pair.1,
                        area,
                        kind,
                        reason,
                    });
                }
            }
        }
    }
    found
}

fn file_path(holder: &Holder, dev: DevNum, ino: u64) -> String {
    holder
        .areas
        .iter()
        .find_map(|a| match a {
            Area::Inode {
                dev: d,
                ino: i,
                path,
                ..
            } if *d == dev && *i == ino => Some(path.clone()),
            _ => None,
        })
        .unwrap_or_default()
}
