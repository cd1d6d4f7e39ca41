//! The extent allocator, as a pure function over free runs.
//!
//! The state DB calls [`choose`] inside its write transaction, once per
//! allocation. The planner allocates for every new and grown vdisk of a
//! plan from one free space that shrinks as it goes, so it keeps the runs
//! indexed ([`FreeSpace`]: by place and by length) and asks the same
//! policy there, in logarithmic time per run looked at instead of a sort
//! of every free run per vdisk; a property test holds the two to the same
//! answers.
//!
//! Policy, in order: one contiguous run if any is long enough (the smallest
//! such run, so large runs stay whole for large vdisks); otherwise the fewest
//! runs (the largest first, then the smallest run that completes the rest).
//! Ties go to the lower device key, then the lower extent index, so the
//! result never depends on anything but the input.

use std::collections::{BTreeMap, BTreeSet};

/// A contiguous run of free extents on one pool device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Run {
    /// Orders devices; the state DB uses its row id.
    pub device: i64,
    /// Index of the first extent in the device.
    pub first: u64,
    /// Number of extents.
    pub len: u64,
}

/// Chooses `needed` extents from `free`, returned as pieces in allocation
/// order; `None` when the runs hold fewer than `needed` extents.
///
/// `after`, when set, is the extent following a vdisk's last one: a grow that
/// can continue the vdisk's last run there does so, keeping it contiguous.
pub fn choose(free: &[Run], needed: u64, after: Option<(i64, u64)>) -> Option<Vec<Run>> {
    if needed == 0 {
        return Some(Vec::new());
    }
    let total: u64 = free.iter().map(|r| r.len).sum();
    if total < needed {
        return None;
    }
    if let Some((device, first)) = after
        && let Some(run) = free
            .iter()
            .find(|r| r.device == device && r.first == first && r.len >= needed)
    {
        return Some(vec![Run {
            len: needed,
            ..*run
        }]);
    }
    let best_fit = |runs: &mut dyn Iterator<Item = &Run>, len: u64| -> Option<Run> {
        runs.filter(|r| r.len >= len)
            .min_by_key(|r| (r.len, r.device, r.first))
            .copied()
    };
    if let Some(run) = best_fit(&mut free.iter(), needed) {
        return Some(vec![Run { len: needed, ..run }]);
    }
    // No single run suffices: the k largest runs are the fewest that can.
    let mut by_size: Vec<Run> = free.to_vec();
    by_size.sort_by_key(|r| (std::cmp::Reverse(r.len), r.device, r.first));
    let mut chosen = Vec::new();
    let mut remaining = needed;
    for (taken, run) in by_size.iter().enumerate() {
        if run.len >= remaining {
            // The last piece: the smallest run not yet taken that completes
            // the vdisk, which may be smaller than this one.
            let last = best_fit(&mut by_size[taken..].iter(), remaining).unwrap_or(*run);
            chosen.push(Run {
                len: remaining,
                ..last
            });
            return Some(chosen);
        }
        chosen.push(*run);
        remaining -= run.len;
    }
    None
}

/// Free runs indexed for one allocation after another (see the module's
/// doc): [`FreeSpace::choose`] answers as [`choose`] does over the same runs.
#[derive(Debug, Clone, Default)]
pub struct FreeSpace {
    /// `(device, first)` to length: a piece's run, a grow's next extents.
    by_place: BTreeMap<(i64, u64), u64>,
    /// `(length, device, first)`: the policy's orders.
    by_len: BTreeSet<(u64, i64, u64)>,
    total: u64,
}

impl FromIterator<Run> for FreeSpace {
    /// Indexes disjoint runs all at once (sorted and built in bulk, much
    /// faster than one insertion after another).
    fn from_iter<I: IntoIterator<Item = Run>>(runs: I) -> FreeSpace {
        let runs: Vec<Run> = runs.into_iter().filter(|run| run.len > 0).collect();
        FreeSpace {
            by_place: runs.iter().map(|r| ((r.device, r.first), r.len)).collect(),
            by_len: runs.iter().map(|r| (r.len, r.device, r.first)).collect(),
            total: runs.iter().map(|r| r.len).sum(),
        }
    }
}

impl FreeSpace {
    /// Adds a run, which must not overlap those already there.
    pub fn insert(&mut self, run: Run) {
        if run.len == 0 {
            return;
        }
        self.by_place.insert((run.device, run.first), run.len);
        self.by_len.insert((run.len, run.device, run.first));
        self.total += run.len;
    }

    fn remove(&mut self, run: Run) {
        self.by_place.remove(&(run.device, run.first));
        self.by_len.remove(&(run.len, run.device, run.first));
        self.total -= run.len;
    }

    /// Free extents in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The free run holding extent `index` of `device`, if it is free.
    fn run_at(&self, device: i64, index: u64) -> Option<Run> {
        let (&(run_device, first), &len) = self.by_place.range(..=(device, index)).next_back()?;
        (run_device == device && index < first + len).then_some(Run { device, first, len })
    }

    /// Whether extent `index` of `device` is free.
    pub fn contains(&self, device: i64, index: u64) -> bool {
        self.run_at(device, index).is_some()
    }

    /// The smallest run of at least `len` extents not in `taken`, ties to
    /// the lower device then index.
    fn best_fit(&self, len: u64, taken: &BTreeSet<(i64, u64)>) -> Option<Run> {
        self.by_len
            .range((len, i64::MIN, 0)..)
            .map(|&(len, device, first)| Run { device, first, len })
            .find(|run| !taken.contains(&(run.device, run.first)))
    }

    /// [`choose`] over these runs.
    pub fn choose(&self, needed: u64, after: Option<(i64, u64)>) -> Option<Vec<Run>> {
        if needed == 0 {
            return Some(Vec::new());
        }
        if self.total < needed {
            return None;
        }
        if let Some((device, first)) = after
            && let Some(&len) = self.by_place.get(&(device, first))
            && len >= needed
        {
            return Some(vec![Run {
                device,
                first,
                len: needed,
            }]);
        }
        let none = BTreeSet::new();
        if let Some(run) = self.best_fit(needed, &none) {
            return Some(vec![Run { len: needed, ..run }]);
        }
        // The largest runs first, ties to the lower device then index: one
        // length at a time, from the longest down.
        let mut chosen = Vec::new();
        let mut taken = BTreeSet::new();
        let mut remaining = needed;
        let mut longest = u64::MAX;
        loop {
            let &(len, _, _) = self
                .by_len
                .range(..=(longest, i64::MAX, u64::MAX))
                .next_back()?;
            for &(len, device, first) in self
                .by_len
                .range((len, i64::MIN, 0)..=(len, i64::MAX, u64::MAX))
            {
                let run = Run { device, first, len };
                if len >= remaining {
                    let last = self.best_fit(remaining, &taken).unwrap_or(run);
                    chosen.push(Run {
                        len: remaining,
                        ..last
                    });
                    return Some(chosen);
                }
                chosen.push(run);
                taken.insert((device, first));
                remaining -= len;
            }
            longest = len.checked_sub(1)?;
        }
    }

    /// Takes `piece` out of the free run holding it, leaving what is left
    /// of that run on either side; a piece not wholly free is ignored.
    pub fn take(&mut self, piece: &Run) {
        let Some(run) = self.run_at(piece.device, piece.first) else {
            return;
        };
        if piece.first + piece.len > run.first + run.len {
            return;
        }
        self.remove(run);
        self.insert(Run {
            device: run.device,
            first: run.first,
            len: piece.first - run.first,
        });
        self.insert(Run {
            device: run.device,
            first: piece.first + piece.len,
            len: run.first + run.len - (piece.first + piece.len),
        });
    }
}

/// Coalesces sorted `(device, extent index)` pairs into runs.
pub fn runs_of(extents: impl IntoIterator<Item = (i64, u64)>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (device, index) in extents {
        match runs.last_mut() {
            Some(run) if run.device == device && run.first + run.len == index => run.len += 1,
            _ => runs.push(Run {
                device,
                first: index,
                len: 1,
            }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn run(device: i64, first: u64, len: u64) -> Run {
        Run { device, first, len }
    }

    #[test]
    fn prefers_the_smallest_run_that_fits() {
        let free = [run(1, 0, 10), run(1, 20, 4), run(2, 0, 5)];
        assert_eq!(choose(&free, 4, None), Some(vec![run(1, 20, 4)]));
        assert_eq!(choose(&free, 5, None), Some(vec![run(2, 0, 5)]));
        assert_eq!(choose(&free, 6, None), Some(vec![run(1, 0, 6)]));
    }

    #[test]
    fn ties_go_to_the_lower_device_then_index() {
        let free = [run(2, 0, 3), run(1, 9, 3), run(1, 4, 3)];
        assert_eq!(choose(&free, 2, None), Some(vec![run(1, 4, 2)]));
    }

    #[test]
    fn uses_the_fewest_runs_when_none_fits() {
        let free = [run(1, 0, 2), run(1, 10, 5), run(2, 0, 4), run(3, 0, 1)];
        // 8 extents: the 5-run, then the smallest run covering 3 (the 4-run).
        assert_eq!(
            choose(&free, 8, None),
            Some(vec![run(1, 10, 5), run(2, 0, 3)])
        );
        // 7 extents: 5 + 2, and the 2-run is the best fit for the rest.
        assert_eq!(
            choose(&free, 7, None),
            Some(vec![run(1, 10, 5), run(1, 0, 2)])
        );
        assert_eq!(
            choose(&free, 12, None),
            Some(vec![
                run(1, 10, 5),
                run(2, 0, 4),
                run(1, 0, 2),
                run(3, 0, 1)
            ])
        );
        assert_eq!(choose(&free, 13, None), None);
    }

    #[test]
    fn grows_in_place_when_the_next_extents_are_free() {
        let free = [run(1, 0, 2), run(1, 8, 6)];
        assert_eq!(choose(&free, 3, Some((1, 8))), Some(vec![run(1, 8, 3)]));
        // Not free right after: the ordinary policy applies.
        assert_eq!(choose(&free, 2, Some((1, 7))), Some(vec![run(1, 0, 2)]));
    }

    #[test]
    fn coalesces_runs() {
        let runs = runs_of([(1, 0), (1, 1), (1, 3), (2, 4), (2, 5)]);
        assert_eq!(runs, vec![run(1, 0, 2), run(1, 3, 1), run(2, 4, 2)]);
    }

    fn free_runs() -> impl Strategy<Value = Vec<Run>> {
        // Disjoint runs: gaps of at least one extent between them.
        proptest::collection::vec((1i64..4, 1u64..6, 1u64..12), 0..12).prop_map(|parts| {
            let mut next = [0u64; 4];
            parts
                .into_iter()
                .map(|(device, gap, len)| {
                    let first = next[device as usize] + gap;
                    next[device as usize] = first + len;
                    run(device, first, len)
                })
                .collect()
        })
    }

    proptest! {
        /// One allocation after another, as the planner makes them: the
        /// index answers as the function does over the runs left.
        #[test]
        fn the_index_chooses_as_the_function_does(
            free in free_runs(),
            asks in proptest::collection::vec((0u64..20, any::<bool>()), 1..12),
        ) {
            let mut runs = free.clone();
            let mut space: FreeSpace = free.iter().copied().collect();
            for (needed, grow) in asks {
                // A grow continues the first run's start when there is one.
                let after = grow.then(|| runs.first().map(|r| (r.device, r.first))).flatten();
                let expected = choose(&runs, needed, after);
                prop_assert_eq!(&space.choose(needed, after), &expected);
                for piece in expected.into_iter().flatten() {
                    space.take(&piece);
                    runs = runs
                        .into_iter()
                        .flat_map(|r| {
                            if r.device != piece.device || piece.first < r.first || piece.first >= r.first + r.len {
                                return vec![r];
                            }
                            let before = run(r.device, r.first, piece.first - r.first);
                            let after = run(r.device, piece.first + piece.len, r.first + r.len - piece.first - piece.len);
                            vec![before, after].into_iter().filter(|p| p.len > 0).collect()
                        })
                        .collect();
                }
                prop_assert_eq!(space.total(), runs.iter().map(|r| r.len).sum::<u64>());
            }
        }

        #[test]
        fn a_choice_is_exact_disjoint_and_within_the_free_runs(free in free_runs(), needed in 0u64..80) {
            let total: u64 = free.iter().map(|r| r.len).sum();
            match choose(&free, needed, None) {
                None => prop_assert!(needed > total),
                Some(pieces) => {
                    prop_assert_eq!(pieces.iter().map(|p| p.len).sum::<u64>(), needed);
                    for piece in &pieces {
                        prop_assert!(free.iter().any(|r| r.device == piece.device
                            && r.first <= piece.first && piece.first + piece.len <= r.first + r.len));
                    }
                    for (i, a) in pieces.iter().enumerate() {
                        for b in &pieces[i + 1..] {
                            prop_assert!(a.device != b.device
                                || a.first + a.len <= b.first || b.first + b.len <= a.first);
                        }
                    }
                    // Fewest segments: no choice of fewer runs holds `needed`.
                    let mut lens: Vec<u64> = free.iter().map(|r| r.len).collect();
                    lens.sort_unstable_by(|a, b| b.cmp(a));
                    let fewer: u64 = lens.iter().take(pieces.len().saturating_sub(1)).sum();
                    prop_assert!(pieces.is_empty() || fewer < needed);
                }
            }
        }
    }
}
