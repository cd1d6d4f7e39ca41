//! The last look before a step writes sectors: the host observed again,
//! and the step refused if a holder the plan did not know of (nor this run
//! made) touches what it writes. What counts as unexpected is the
//! planner's to say ([`crate::plan::recheck`]); this only keeps track of
//! what the run changed and asks.

use std::collections::BTreeSet;

use super::{ObserveAgain, StepError};
use crate::observe::HostState;
use crate::plan::{Op, Step, recheck};
use crate::state::StateDb;

/// Attachments `(domid, devid)` this run made and took away.
#[derive(Default)]
pub(super) struct Changed {
    attached: BTreeSet<(u32, u32)>,
    detached: BTreeSet<(u32, u32)>,
}

impl Changed {
    pub(super) fn record(&mut self, op: &Op) {
        match op {
            Op::Attach { domid, devid, .. } => {
                self.detached.remove(&(*domid, *devid));
                self.attached.insert((*domid, *devid));
            }
            Op::Detach { domid, devid, .. } => {
                self.attached.remove(&(*domid, *devid));
                self.detached.insert((*domid, *devid));
            }
            _ => {}
        }
    }
}

/// Right before a step that writes sectors: the host observed again, and
/// the step refused if anything the plan did not expect holds what it
/// writes. The plan proved the holders it saw; this covers those that
/// came since (a guest started, a disk mounted, a backend written by hand).
pub(super) fn look_again(
    step: &Step,
    before: &HostState,
    db: &StateDb,
    observe_again: Option<&ObserveAgain>,
    changed: &Changed,
    clock: &dyn Fn() -> jiff::Timestamp,
) -> Result<(), StepError> {
    let Some(observe_again) = observe_again else {
        return Ok(());
    };
    if !recheck::writes_sectors(&step.op) {
        return Ok(());
    }
    let now = observe_again().map_err(StepError::ObserveAgain)?;
    let check = recheck::Recheck {
        before,
        now: &now,
        attached: &changed.attached,
        detached: &changed.detached,
    };
    let (attachments, uses) = recheck::newcomers(&check);
    if attachments.is_empty() && uses.is_empty() {
        return Ok(());
    }
    let state = db.snapshot(clock())?;
    let holders = recheck::unexpected_holders(&check, &state, &step.op);
    if holders.is_empty() {
        Ok(())
    } else {
        Err(StepError::Unexpected { holders })
    }
}
