//! The drivers' turn after a commit: their reactions round after round,
//! each write a commit of its own, and the hotplug steps that take their
//! time, each on a thread of its own so that other clients go on.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::change::Op;
use super::super::drivers;
use super::transactions::record;
use super::{Shared, State};

impl Shared {
    /// The drivers' reactions to the changes at `changed`, round after
    /// round; then the delayed hotplug steps those rounds started, each on
    /// a thread of its own, so that other clients go on meanwhile.
    pub(super) fn drive(self: &Arc<Shared>, state: &mut State, mut changed: Vec<String>) {
        let Some(drivers) = &self.drivers else {
            return;
        };
        // Each round is a driver answering the last; a real one ends in a
        // handful (probe, script, ring, connect, connected).
        for _ in 0..32 {
            let actions = drivers::react(&state.store, drivers, &changed, &mut state.drivers);
            if actions.is_empty() {
                break;
            }
            changed = self.act(state, actions);
        }
        for backend in std::mem::take(&mut state.drivers.hotplug_started) {
            let shared = Arc::clone(self);
            let delay = drivers.hotplug_delay;
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                if shared.stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Some(drivers) = &shared.drivers else {
                    return;
                };
                let mut state = shared.lock();
                let state = &mut *state;
                let actions =
                    drivers::hotplug_now(&state.store, drivers, &backend, &mut state.drivers);
                if !actions.is_empty() {
                    let changed = shared.act(state, actions);
                    shared.drive(state, changed);
                }
            });
        }
    }

    /// Makes the drivers' writes, each a commit of its own; the paths changed.
    fn act(self: &Arc<Shared>, state: &mut State, actions: Vec<drivers::Action>) -> Vec<String> {
        let mut changed = Vec::new();
        for action in actions {
            let op = Op::Write(action.path, action.value.into_bytes());
            let Ok(ops) = op.as_done_by(&state.store, action.domid) else {
                continue;
            };
            for op in ops {
                let touched = op.touches(&state.store);
                if op.apply(&mut state.store).is_ok() {
                    record(state, touched);
                    let change = op.change();
                    self.notify(state, std::slice::from_ref(&change));
                    changed.push(change.path);
                }
            }
        }
        changed
    }
}
