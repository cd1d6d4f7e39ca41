//! The extent allocator, as a pure function over free runs.
//!
//! The state DB calls it inside its write transaction; the planner calls it
//! on a copy of the free space to show which extents a new vdisk will get.
//! Both get the same answer because it is the same function.
//!
//! Policy, in order: one contiguous run if any is long enough (the smallest
//! such run, so large runs stay whole for large vdisks); otherwise the fewest
//! runs (the largest first, then the smallest run that completes the rest).
//! Ties go to the lower device key, then the lower extent index, so the
//! result never depends on anything but the input.

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
