//! Whether one step is done before another starts in every order apply may
//! run: a path of dependencies from the first to the second.

use std::collections::HashMap;

/// The plan's dependencies, by step id (1-based): the steps each waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dependencies {
    waits_for: Vec<Vec<usize>>,
    /// Every dependency has a smaller id than its step (as in the plans
    /// xendisk makes), which lets a search stop at the first step's id.
    numbered_in_order: bool,
}

impl Dependencies {
    /// `waits_for[k]` lists the steps step `k + 1` waits for.
    pub fn new(waits_for: Vec<Vec<usize>>) -> Dependencies {
        let numbered_in_order = waits_for
            .iter()
            .enumerate()
            .all(|(k, deps)| deps.iter().all(|d| *d >= 1 && *d < k + 1));
        Dependencies {
            waits_for,
            numbered_in_order,
        }
    }

    /// Makes `then` wait for `first` too.
    pub(super) fn add(&mut self, first: usize, then: usize) {
        if let Some(waits) = then.checked_sub(1).and_then(|k| self.waits_for.get_mut(k)) {
            waits.push(first);
            self.numbered_in_order &= first >= 1 && first < then;
        }
    }

    fn of(&self, step: usize) -> &[usize] {
        step.checked_sub(1)
            .and_then(|k| self.waits_for.get(k))
            .map_or(&[], Vec::as_slice)
    }
}

/// Reachability questions, answered by a search backwards from the later
/// step that visits only steps numbered between the two; answers are kept.
pub(super) struct Reach<'a> {
    dependencies: &'a Dependencies,
    visited: HashMap<usize, u32>,
    search: u32,
    known: HashMap<(usize, usize), bool>,
}

impl<'a> Reach<'a> {
    pub(super) fn new(dependencies: &'a Dependencies) -> Reach<'a> {
        Reach {
            dependencies,
            visited: HashMap::new(),
            search: 0,
            known: HashMap::new(),
        }
    }

    /// Whether step `first` is `later` or finishes before `later` starts.
    pub(super) fn before_or_same(&mut self, first: usize, later: usize) -> bool {
        if first == later {
            return true;
        }
        if self.dependencies.numbered_in_order && first > later {
            return false;
        }
        if let Some(answer) = self.known.get(&(first, later)) {
            return *answer;
        }
        self.search += 1;
        let mut stack = vec![later];
        let mut found = false;
        while let Some(step) = stack.pop() {
            for &dependency in self.dependencies.of(step) {
                if dependency == first {
                    found = true;
                    break;
                }
                let in_range = !self.dependencies.numbered_in_order || dependency > first;
                if in_range && self.visited.insert(dependency, self.search) != Some(self.search) {
                    stack.push(dependency);
                }
            }
            if found {
                break;
            }
        }
        self.known.insert((first, later), found);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_not_just_edges() {
        // 1 <- 2 <- 4, 3 alone.
        let dependencies = Dependencies::new(vec![vec![], vec![1], vec![], vec![2]]);
        let mut reach = Reach::new(&dependencies);
        assert!(reach.before_or_same(1, 4));
        assert!(reach.before_or_same(2, 4));
        assert!(reach.before_or_same(3, 3));
        assert!(!reach.before_or_same(3, 4));
        assert!(!reach.before_or_same(4, 1));
        assert!(!reach.before_or_same(1, 3));
    }

    #[test]
    fn steps_numbered_out_of_order_are_still_searched() {
        // Step 1 waits for step 3: a plan edited by hand.
        let dependencies = Dependencies::new(vec![vec![3], vec![], vec![]]);
        let mut reach = Reach::new(&dependencies);
        assert!(reach.before_or_same(3, 1));
        assert!(!reach.before_or_same(1, 3));
    }
}
