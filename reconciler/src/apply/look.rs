//! The last look before a step writes sectors: the host observed again,
//! and the step refused if a holder the plan did not know of (nor this run
//! made) touches what it writes. What counts as unexpected is the
//! planner's to say ([`crate::plan::recheck`]); this keeps track of what
//! the run changed and asks.
//!
//! A look need not read the whole host each time: once a whole look found
//! no holder the plan did not know of, the next one asks the [`Observer`]
//! only what changed since (the backends xenstore's watch named, dom0's
//! side read again). When all of that is known or this run's own, the
//! step goes on; anything else, or an observer that cannot tell, and the
//! look reads the whole host and decides as before. So a large apply
//! costs in proportion to what changes, and a newcomer is never missed.

use std::collections::{BTreeMap, BTreeSet};

use super::{Observer, StepError};
use crate::extent::DevNum;
use crate::observe::{
    Attachment, BlockDevice, HostChanges, HostState, LoopBacking, PathTarget, paths::normalise,
};
use crate::plan::{Op, Step, recheck};
use crate::state::StateDb;

/// An attachment's place: `(domid, devid, backend kind)`.
type Place = (u32, u32, String);

/// What the looks of one run know.
pub(super) struct Look<'a> {
    before: &'a HostState,
    known: recheck::Known<'a>,
    /// Attachments `(domid, devid)` this run made and took away.
    attached: BTreeSet<(u32, u32)>,
    detached: BTreeSet<(u32, u32)>,
    /// Taken away since the last look: each must show in what changed.
    detached_since: BTreeSet<(u32, u32)>,
    /// The attachments on the host, at the last look, that the plan did
    /// not know of nor this run make (a backend still being taken away
    /// counts); `None` before the first whole look.
    suspects: Option<BTreeMap<Place, Attachment>>,
    /// The paths of the attachments the plan knew of that no backend has
    /// opened yet (no `physical-device`), and what each named then: a
    /// path that names something else now moves its holder without a
    /// change in xenstore.
    unpinned: Vec<(String, Option<PathTarget>)>,
    /// What every block device sat on at the last look: a loop device
    /// moved, or a device-mapper device rebuilt, moves its holders
    /// without a change in xenstore.
    footings: Vec<Footing>,
}

/// [`recheck::Footing`], owned.
type Footing = (DevNum, DevNum, u64, Option<LoopBacking>, Vec<String>);

fn footings(devices: &[BlockDevice]) -> Vec<Footing> {
    devices
        .iter()
        .map(|device| {
            let (number, disk, start, backing, slaves) = recheck::footing(device);
            (number, disk, start, backing.cloned(), slaves.to_vec())
        })
        .collect()
}

impl<'a> Look<'a> {
    pub(super) fn new(before: &'a HostState) -> Look<'a> {
        Look {
            before,
            known: recheck::Known::new(before),
            attached: BTreeSet::new(),
            detached: BTreeSet::new(),
            detached_since: BTreeSet::new(),
            suspects: None,
            unpinned: before
                .attachments
                .iter()
                .filter(|a| a.physical_device.is_none())
                .map(|a| {
                    let path = normalise(a.path());
                    let target = before.path(&path).cloned();
                    (path, target)
                })
                .collect(),
            footings: footings(&before.block_devices),
        }
    }

    /// A step is under way (an attach's backend may show up while it runs)
    /// or done.
    pub(super) fn record(&mut self, op: &Op) {
        match op {
            Op::Attach { domid, devid, .. } => {
                self.detached.remove(&(*domid, *devid));
                self.attached.insert((*domid, *devid));
            }
            Op::Detach { domid, devid, .. } => {
                self.attached.remove(&(*domid, *devid));
                self.detached.insert((*domid, *devid));
                self.detached_since.insert((*domid, *devid));
            }
            _ => {}
        }
    }

    /// Right before a step that writes sectors: the host looked at again,
    /// and the step refused if anything the plan did not expect holds what
    /// it writes. The plan proved the holders it saw; this covers those
    /// that came since (a guest started, a disk mounted, a backend written
    /// by hand). `realised` maps the vdisks this run realised to their
    /// block devices.
    pub(super) fn before(
        &mut self,
        step: &Step,
        db: &StateDb,
        observer: Option<&mut (dyn Observer + 'static)>,
        realised: &BTreeMap<String, String>,
        clock: &dyn Fn() -> jiff::Timestamp,
    ) -> Result<(), StepError> {
        let Some(observer) = observer else {
            return Ok(());
        };
        if !recheck::writes_sectors(&step.op) {
            return Ok(());
        }
        let paths: Vec<String> = self.unpinned.iter().map(|(p, _)| p.clone()).collect();
        if self.suspects.is_some()
            && let Some(changes) = observer.changes(&paths).map_err(StepError::ObserveAgain)?
        {
            let changed = changes.backends.attachments.len() + changes.backends.gone.len();
            if self.nothing_new(&changes, realised) {
                tracing::debug!(
                    "step {}: looked at what changed since the last look ({changed} backends): \
                     nothing new",
                    step.id
                );
                return Ok(());
            }
            tracing::debug!(
                "step {}: a holder the plan did not know of may be there: looking at the whole \
                 host",
                step.id
            );
        }
        let now = observer.whole().map_err(StepError::ObserveAgain)?;
        tracing::debug!("step {}: looked at the whole host", step.id);
        self.detached_since.clear();
        self.footings = footings(&now.block_devices);
        let check = recheck::Recheck {
            before: self.before,
            now: &now,
            attached: &self.attached,
            detached: &self.detached,
        };
        let (attachments, uses) = recheck::newcomers(&check);
        self.suspects = Some(
            attachments
                .iter()
                .map(|a| ((a.domid, a.devid, a.backend.clone()), (*a).clone()))
                .collect(),
        );
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

    /// Brings the suspects up to date with what changed; true when there
    /// are none left, every detach of this run since the last look shows,
    /// and dom0 uses nothing but what the plan knew and this run's own
    /// devices. False leaves the suspects as they may be wrong: the whole
    /// look that follows sets them again.
    fn nothing_new(&mut self, changes: &HostChanges, realised: &BTreeMap<String, String>) -> bool {
        // What xenstore does not tell: devices that sit elsewhere, paths
        // that name something else.
        // A device new since (a vdisk this run realised, say) moves no
        // holder the last look saw; one it saw that sits elsewhere does.
        let footings_now = footings(&changes.block_devices);
        let sits_elsewhere = self.footings.iter().any(|then| {
            footings_now
                .binary_search_by_key(&then.0, |now| now.0)
                .is_ok_and(|i| footings_now[i] != *then)
        });
        if sits_elsewhere {
            return false;
        }
        self.footings = footings_now;
        let paths_moved = self
            .unpinned
            .iter()
            .zip(&changes.paths)
            .any(|((_, then), now)| then.as_ref() != Some(now));
        if paths_moved {
            return false;
        }
        let Look {
            known,
            attached,
            detached,
            detached_since,
            suspects,
            ..
        } = self;
        let Some(suspects) = suspects.as_mut() else {
            return false;
        };
        for (kind, domid, devid) in &changes.backends.gone {
            suspects.remove(&(*domid, *devid, kind.clone()));
        }
        for attachment in &changes.backends.attachments {
            let place = (
                attachment.domid,
                attachment.devid,
                attachment.backend.clone(),
            );
            if recheck::is_newcomer(known, attached, detached, attachment) {
                suspects.insert(place, attachment.clone());
            } else {
                suspects.remove(&place);
            }
        }
        // What this run did since may have made a suspect expected.
        suspects.retain(|_, a| recheck::is_newcomer(known, attached, detached, a));
        let seen: BTreeSet<(u32, u32)> = changes
            .backends
            .attachments
            .iter()
            .map(|a| (a.domid, a.devid))
            .chain(changes.backends.gone.iter().map(|(_, d, n)| (*d, *n)))
            .chain(suspects.keys().map(|(d, n, _)| (*d, *n)))
            .collect();
        // A detach that left no trace: its backend is as it was, and no
        // longer expected; only a whole look can say what it is.
        if !detached_since.is_subset(&seen) {
            return false;
        }
        detached_since.clear();
        let own_devices: BTreeSet<&str> = realised.values().map(String::as_str).collect();
        let by_number: BTreeMap<DevNum, &BlockDevice> = changes
            .block_devices
            .iter()
            .map(|device| (device.device, device))
            .collect();
        suspects.is_empty()
            && changes.dom0_uses.iter().all(|used| {
                known.has_use(used)
                    || used
                        .via
                        .and_then(|via| by_number.get(&via))
                        .is_some_and(|device| is_own_device(device, &own_devices))
            })
    }
}

/// Whether a block device is one this run realised (a use through it,
/// such as its device-mapper table holding the pool device, is this
/// run's): the device's name is this run's while the run holds it.
fn is_own_device(device: &BlockDevice, own: &BTreeSet<&str>) -> bool {
    own.contains(format!("/dev/{}", device.name).as_str())
        || device
            .dm_name
            .as_ref()
            .is_some_and(|name| own.contains(format!("/dev/mapper/{name}").as_str()))
}
