//! The last look before a step writes sectors: which holders the host has
//! now that the plan did not know of, and which of them touch what the
//! step writes. Apply observes the host again right before such a step and
//! asks this; the plan's proof covered only the holders it saw.
//!
//! Pure, like the rest of planning: it compares the values it is given.

use std::collections::BTreeSet;

use super::Op;
use super::actual::ActualIndex;
use super::resolve::{Area, Resolver, normalise};
use crate::desired::Source;
use crate::extent::DevNum;
use crate::observe::{Attachment, BlockDevice, Dom0Use, HostState, LoopBacking, PathTarget};
use crate::state::StateSnapshot;

/// What the apply knows of the host while it runs.
pub struct Recheck<'a> {
    /// The host as the plan saw it.
    pub before: &'a HostState,
    /// The host as it is now.
    pub now: &'a HostState,
    /// Attachments `(domid, devid)` this run made: expected holders.
    pub attached: &'a BTreeSet<(u32, u32)>,
    /// Attachments `(domid, devid)` this run took away: must be gone.
    pub detached: &'a BTreeSet<(u32, u32)>,
}

/// The holders the plan knew of, indexed: whether one is still there is a
/// search, not a scan (apply asks it of every attachment that changed).
pub struct Known<'a> {
    attachments: BTreeSet<AttachmentKey<'a>>,
    uses: BTreeSet<&'a Dom0Use>,
}

type AttachmentKey<'a> = (u32, u32, &'a str, &'a str, Option<crate::extent::DevNum>);

fn key(a: &Attachment) -> AttachmentKey<'_> {
    (a.domid, a.devid, &a.backend, &a.params, a.physical_device)
}

impl<'a> Known<'a> {
    pub fn new(before: &'a HostState) -> Known<'a> {
        Known {
            attachments: before.attachments.iter().map(key).collect(),
            uses: before.dom0_uses.iter().collect(),
        }
    }

    /// Whether `attachment` is one the plan saw, as it saw it.
    pub fn has_attachment(&self, attachment: &Attachment) -> bool {
        self.attachments.contains(&key(attachment))
    }

    pub fn has_use(&self, used: &Dom0Use) -> bool {
        self.uses.contains(used)
    }
}

/// Whether an attachment on the host now is a holder the plan did not
/// know of, nor this run make (one this run took away counts: it should
/// be gone).
pub fn is_newcomer(
    known: &Known<'_>,
    attached: &BTreeSet<(u32, u32)>,
    detached: &BTreeSet<(u32, u32)>,
    attachment: &Attachment,
) -> bool {
    let key = (attachment.domid, attachment.devid);
    !(known.has_attachment(attachment) || attached.contains(&key)) || detached.contains(&key)
}

/// Whether an attachment the plan knew of reaches other sectors now, with
/// the same nodes in xenstore: the path of one not opened yet (no
/// `physical-device`) names something else (a link repointed, a file
/// replaced), or the device it goes through sits elsewhere (a loop device
/// moved to other sectors, a device-mapper device rebuilt on others).
pub fn moved(before: &HostState, now: &HostState, attachment: &Attachment) -> bool {
    let path = normalise(attachment.path());
    if attachment.physical_device.is_none() && before.path(&path) != now.path(&path) {
        return true;
    }
    let device = attachment.physical_device.or(match now.path(&path) {
        Some(PathTarget::Block { device }) => Some(*device),
        _ => None,
    });
    device.is_some_and(|device| footing_of(before, device) != footing_of(now, device))
}

/// What a block device sits on: its disk and first sector, its loop
/// device's backing, the devices under it. A change of any moves every
/// holder through it.
pub type Footing<'a> = (DevNum, DevNum, u64, Option<&'a LoopBacking>, &'a [String]);

pub fn footing(device: &BlockDevice) -> Footing<'_> {
    (
        device.device,
        device.disk,
        device.start,
        device.loop_backing.as_ref(),
        &device.slaves,
    )
}

fn footing_of(host: &HostState, device: DevNum) -> Option<Footing<'_>> {
    // Observed (and loaded) in device order.
    host.block_devices
        .binary_search_by_key(&device, |d| d.device)
        .ok()
        .map(|i| footing(&host.block_devices[i]))
}

/// Holders in `check.now` the plan did not know of (nor this run make):
/// cheap, so that apply looks closer only when there are some.
pub fn newcomers<'a>(check: &Recheck<'a>) -> (Vec<&'a Attachment>, Vec<&'a Dom0Use>) {
    let known = Known::new(check.before);
    let attachments = check
        .now
        .attachments
        .iter()
        .filter(|a| {
            is_newcomer(&known, check.attached, check.detached, a)
                || (known.has_attachment(a) && moved(check.before, check.now, a))
        })
        .collect();
    let uses = check
        .now
        .dom0_uses
        .iter()
        .filter(|used| !known.has_use(used))
        .collect();
    (attachments, uses)
}

/// Of the [`newcomers`], those that touch what `op` writes, for a person;
/// empty when the step may go on. `state` is the state DB as it is now
/// (pool devices this run added included). A holder that cannot be
/// resolved touches everything.
pub fn unexpected_holders(check: &Recheck<'_>, state: &StateSnapshot, op: &Op) -> Vec<String> {
    let (attachments, uses) = newcomers(check);
    if attachments.is_empty() && uses.is_empty() {
        return Vec::new();
    }
    let resolver = Resolver::new(state, check.now, &[]);
    let index = ActualIndex::new(state, check.now);
    let Some(writes) = writes_of(op, state, &resolver) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for attachment in attachments {
        let areas = resolver.attachment(attachment, &index.source(attachment), &index);
        if touches(&areas, &writes) {
            found.push(format!(
                "the {} backend of domid {} device {} ({})",
                attachment.backend, attachment.domid, attachment.devid, attachment.params
            ));
        }
    }
    for used in uses {
        if is_own(used, &index) {
            continue;
        }
        let areas = resolver.widen(vec![Area::from(&used.target)]);
        if touches(&areas, &writes) {
            found.push(used.description.clone());
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Whether `op` writes sectors, so that apply must look again first.
pub fn writes_sectors(op: &Op) -> bool {
    match op {
        Op::AddPoolDevice { .. }
        | Op::Scrub { .. }
        | Op::CreateVdisk { .. }
        | Op::GrowVdisk { .. }
        | Op::Realise { .. }
        | Op::Resize { .. } => true,
        Op::Attach { mode, .. } => mode.is_writable(),
        _ => false,
    }
}

/// A use through a vdisk's own block device is xendisk's (a realisation
/// this run made shows up as a device-mapper holder of its pool device).
fn is_own(used: &Dom0Use, index: &ActualIndex<'_>) -> bool {
    used.via
        .is_some_and(|device| index.realisation_of(device).is_some())
}

/// The areas a step writes (or hands out to be written); `None` for a
/// step that writes no sectors.
fn writes_of(op: &Op, state: &StateSnapshot, resolver: &Resolver<'_>) -> Option<Vec<Area>> {
    let vdisk_extents = |name: &str| {
        state
            .vdisks
            .iter()
            .find(|v| v.name == name)
            .map(|v| resolver.extents(&v.extents))
            .unwrap_or_default()
    };
    Some(match op {
        Op::AddPoolDevice { device, .. } => resolver.device_number(*device).unwrap_or_default(),
        Op::Scrub { extents, .. }
        | Op::CreateVdisk { extents, .. }
        | Op::GrowVdisk { extents, .. } => resolver.extents(extents),
        Op::Realise { vdisk } | Op::Resize { vdisk } => vdisk_extents(vdisk),
        Op::Attach { source, mode, .. } if mode.is_writable() => match source {
            Source::Vdisk(name) => vdisk_extents(name),
            Source::Phy(path) | Source::File(path) => resolver
                .path(&normalise(path))
                .unwrap_or_else(|| vec![Area::Path(normalise(path))]),
        },
        _ => return None,
    })
}

/// Whether a holder's areas and a step's share a sector or a file.
fn touches(holder: &[Area], writes: &[Area]) -> bool {
    holder
        .iter()
        .any(|h| writes.iter().any(|w| crate::safety::meet(h, w)))
}
