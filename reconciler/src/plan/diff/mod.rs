//! Desired against actual: which operations are needed, which must come
//! before which, who holds which disk areas (for the safety check), and
//! what is refused. One method per kind of resource, in the order they
//! depend on each other: pool devices, vdisks, attachments, realisation.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::actual::ActualIndex;

mod attachments;
mod holders;

use super::resolve::{Resolver, normalise};
use super::{Op, Pending, PlanError, PlanInput, PlanOptions, Refusal};
use crate::desired::{Expiry, Scrub, Size};
use crate::extent::{DevNum, SectorRange};
use crate::safety::Holder;
use crate::state::VdiskState;
use crate::state::alloc::{FreeSpace, Run};

pub(super) struct Diff {
    pub ops: Vec<Op>,
    /// `(a, b)`: operation `a` must be done before `b`.
    pub edges: Vec<(usize, usize)>,
    pub holders: Vec<Holder>,
    pub pending: Vec<Pending>,
    pub refusals: Vec<Refusal>,
    /// What a person should know that is no operation (see [`Plan::notes`](super::Plan)).
    pub notes: Vec<String>,
}

/// Free space of one pool as the plan goes, for allocating like the state DB.
struct PoolSpace {
    extent_sectors: u64,
    /// Allocation key (the state DB's row id) to device number.
    devices: BTreeMap<i64, DevNum>,
    free: FreeSpace,
    /// The operation adding each new device.
    added_by: BTreeMap<i64, usize>,
    /// Free extents still holding a former owner's data, sorted.
    dirty: Vec<Run>,
}

impl PoolSpace {
    fn is_dirty(&self, device: i64, index: u64) -> bool {
        let at = self
            .dirty
            .partition_point(|r| (r.device, r.first) <= (device, index));
        at > 0 && {
            let run = self.dirty[at - 1];
            run.device == device && index < run.first + run.len
        }
    }
}

/// What an allocation gives: the extents, the operations adding the
/// devices they are on, and those of them that must be zeroed first.
struct Allocation {
    extents: Vec<SectorRange>,
    sources: BTreeSet<usize>,
    dirty: Vec<SectorRange>,
}

struct Builder<'a> {
    input: &'a PlanInput<'a>,
    index: ActualIndex<'a>,
    /// Detach operations by the index of their attachment in the host state.
    detaches: HashMap<usize, usize>,
    options: PlanOptions,
    resolver: Resolver<'a>,
    diff: Diff,
    spaces: BTreeMap<String, PoolSpace>,
    /// Extents after the plan of the vdisks it creates or grows, relative
    /// to pool devices; the others keep theirs ([`Builder::extents_after`]).
    extents: BTreeMap<String, Vec<SectorRange>>,
    /// The state DB's live vdisks, by name.
    live: HashMap<&'a str, &'a VdiskState>,
    creates: BTreeMap<String, usize>,
    grows: BTreeMap<String, usize>,
    deletes: BTreeMap<String, usize>,
    removals: BTreeMap<String, usize>,
    /// The removal of each recorded pool device by number (the first
    /// recorded with that number, as the state DB lists them), `None` when
    /// it stays: looked up for every extent a deleted vdisk releases.
    removal_by_device: HashMap<DevNum, Option<usize>>,
}

pub(super) fn diff(input: &PlanInput<'_>, options: PlanOptions) -> Result<Diff, PlanError> {
    let mut builder = Builder {
        input,
        index: ActualIndex::new(input.state, input.host),
        detaches: HashMap::new(),
        options,
        resolver: Resolver::new(input.state, input.host, input.sources),
        diff: Diff {
            ops: Vec::new(),
            edges: Vec::new(),
            holders: Vec::new(),
            pending: Vec::new(),
            refusals: Vec::new(),
            notes: Vec::new(),
        },
        spaces: BTreeMap::new(),
        extents: BTreeMap::new(),
        live: input
            .state
            .vdisks
            .iter()
            .map(|v| (v.name.as_str(), v))
            .collect(),
        creates: BTreeMap::new(),
        grows: BTreeMap::new(),
        deletes: BTreeMap::new(),
        removals: BTreeMap::new(),
        removal_by_device: HashMap::new(),
    };
    builder.dom0_holders();
    builder.pool_devices()?;
    builder.vdisks()?;
    builder.unfinished_release_scrubs();
    builder.attachments()?;
    builder.realisation();
    builder.xendisk_holders();
    Ok(builder.diff)
}

impl Builder<'_> {
    /// A vdisk's extents after the plan; none for one that is not there.
    fn extents_after(&self, vdisk: &str) -> &[SectorRange] {
        match self.extents.get(vdisk) {
            Some(extents) => extents,
            None => self.live.get(vdisk).map_or(&[], |v| v.extents.as_slice()),
        }
    }

    fn push(&mut self, op: Op) -> usize {
        self.diff.ops.push(op);
        self.diff.ops.len() - 1
    }

    fn refuse(&mut self, kind: &'static str, message: String) {
        self.diff.refusals.push(Refusal {
            kind: kind.to_owned(),
            message,
        });
    }

    fn pool_devices(&mut self) -> Result<(), PlanError> {
        let desired = &self.input.desired;
        let state = self.input.state;
        for pool in &state.pools {
            let declared = desired.pools.get(&pool.name);
            if let Some(declared) = declared
                && declared.extent_size != pool.extent_size
                && !pool.devices.is_empty()
            {
                return Err(PlanError::ExtentSizeChanged {
                    pool: pool.name.clone(),
                    existing: pool.extent_size,
                    declared: declared.extent_size,
                });
            }
            let mut space = PoolSpace {
                extent_sectors: pool.extent_size.sectors(),
                devices: BTreeMap::new(),
                free: FreeSpace::default(),
                added_by: BTreeMap::new(),
                dirty: Vec::new(),
            };
            let mut free = Vec::new();
            for device in &pool.devices {
                let kept = declared.is_some_and(|d| {
                    d.devices
                        .iter()
                        .any(|p| normalise(p) == normalise(&device.path))
                });
                if kept {
                    space.devices.insert(device.id, device.device);
                    free.extend(device.free_runs.iter().copied());
                    space.dirty.extend(device.dirty_runs.iter().copied());
                } else {
                    let op = self.push(Op::RemovePoolDevice {
                        pool: pool.name.clone(),
                        path: device.path.clone(),
                        device: device.device,
                    });
                    self.removals.insert(normalise(&device.path), op);
                }
            }
            space.free = free.into_iter().collect();
            self.spaces.insert(pool.name.clone(), space);
        }
        let recorded: BTreeSet<String> = state
            .pools
            .iter()
            .flat_map(|p| &p.devices)
            .map(|d| normalise(&d.path))
            .collect();
        let mut next_id = state
            .pools
            .iter()
            .flat_map(|p| &p.devices)
            .map(|d| d.id)
            .max()
            .unwrap_or(0)
            + 1;
        for (pool_name, pool) in &desired.pools {
            let mut paths: Vec<String> = pool.devices.iter().map(|p| normalise(p)).collect();
            paths.sort();
            for path in paths {
                let moving = self.removals.get(&path).copied();
                if recorded.contains(&path) && moving.is_none() {
                    continue;
                }
                let Some(device) = self.resolver.block_device_at(&path) else {
                    return Err(PlanError::UnknownPoolDevice {
                        pool: pool_name.clone(),
                        path,
                    });
                };
                let extent_sectors = pool.extent_size.sectors().max(1);
                let extents = device.sectors / extent_sectors;
                let op = self.push(Op::AddPoolDevice {
                    pool: pool_name.clone(),
                    path: path.clone(),
                    device: device.device,
                    extent_size: pool.extent_size,
                    extents,
                });
                if let Some(removal) = moving {
                    self.diff.edges.push((removal, op));
                }
                // Whatever else holds it meets its holder in the sharing check.
                self.resolver.add_pool_device(device.device);
                let space = self
                    .spaces
                    .entry(pool_name.clone())
                    .or_insert_with(|| PoolSpace {
                        extent_sectors,
                        devices: BTreeMap::new(),
                        free: FreeSpace::default(),
                        added_by: BTreeMap::new(),
                        dirty: Vec::new(),
                    });
                space.devices.insert(next_id, device.device);
                space.added_by.insert(next_id, op);
                if extents > 0 {
                    // Nothing is known of what a new device held: all dirty.
                    let run = Run {
                        device: next_id,
                        first: 0,
                        len: extents,
                    };
                    space.free.insert(run);
                    space.dirty.push(run);
                }
                next_id += 1;
            }
        }
        for space in self.spaces.values_mut() {
            space.dirty.sort();
        }
        for device in state.pools.iter().flat_map(|p| &p.devices) {
            let removal = self.removals.get(&normalise(&device.path)).copied();
            self.removal_by_device
                .entry(device.device)
                .or_insert(removal);
        }
        Ok(())
    }

    fn vdisks(&mut self) -> Result<(), PlanError> {
        let desired = &self.input.desired;
        let actual: BTreeMap<&str, &VdiskState> = self
            .input
            .state
            .vdisks
            .iter()
            .map(|v| (v.name.as_str(), v))
            .collect();
        for (name, vdisk) in &desired.vdisks {
            match actual.get(name.as_str()) {
                None => self.create(name, &vdisk.pool, vdisk.size, vdisk.expires)?,
                Some(existing) if existing.pool != vdisk.pool => {
                    let message = format!(
                        "vdisk `{name}` moves from pool `{}` to pool `{}`: it would be deleted and created anew",
                        existing.pool, vdisk.pool
                    );
                    self.delete(existing, vdisk.prevent_destroy, Some(message));
                    self.create(name, &vdisk.pool, vdisk.size, vdisk.expires)?;
                }
                Some(existing) => {
                    if vdisk.size < existing.size {
                        self.refuse(
                            "shrink",
                            format!(
                                "vdisk `{name}` is {} and the file asks for {}: shrinking destroys data and is \
                                 refused; keep its size or create a new, smaller vdisk",
                                existing.size, vdisk.size
                            ),
                        );
                    } else if vdisk.size > existing.size {
                        self.grow(existing, vdisk.size)?;
                    }
                    if vdisk.expires != existing.expiry {
                        self.push(Op::SetExpiry {
                            name: name.clone(),
                            from: existing.expiry,
                            to: vdisk.expires,
                        });
                    }
                }
            }
        }
        for existing in &self.input.state.vdisks {
            if !desired.vdisks.contains_key(&existing.name) {
                self.delete(existing, false, None);
            }
        }
        Ok(())
    }

    fn create(
        &mut self,
        name: &str,
        pool: &str,
        size: Size,
        expiry: Expiry,
    ) -> Result<(), PlanError> {
        let allocation = self.allocate(name, pool, size.sectors(), None)?;
        let scrub = self.scrub_before(name, pool, &allocation);
        let op = self.push(Op::CreateVdisk {
            name: name.to_owned(),
            pool: pool.to_owned(),
            size,
            expiry,
            extents: allocation.extents.clone(),
        });
        self.diff
            .edges
            .extend(allocation.sources.iter().map(|add| (*add, op)));
        self.diff.edges.extend(scrub.map(|scrub| (scrub, op)));
        self.extents.insert(name.to_owned(), allocation.extents);
        self.creates.insert(name.to_owned(), op);
        Ok(())
    }

    fn grow(&mut self, existing: &VdiskState, size: Size) -> Result<(), PlanError> {
        let space = &self.spaces[&existing.pool];
        // In sectors: an imported vdisk's extents may be of other pools' sizes.
        let have: u64 = existing.extents.iter().map(|e| e.sectors).sum();
        let after = existing.extents.last().and_then(|last| {
            let id = space
                .devices
                .iter()
                .find(|(_, d)| **d == last.device)
                .map(|(id, _)| *id)?;
            Some((id, last.start / space.extent_sectors + 1))
        });
        let sectors = size.sectors().saturating_sub(have);
        let allocation = self.allocate(&existing.name, &existing.pool, sectors, after)?;
        let scrub = self.scrub_before(&existing.name, &existing.pool, &allocation);
        let op = self.push(Op::GrowVdisk {
            name: existing.name.clone(),
            from: existing.size,
            to: size,
            extents: allocation.extents.clone(),
        });
        self.diff
            .edges
            .extend(allocation.sources.iter().map(|add| (*add, op)));
        self.diff.edges.extend(scrub.map(|scrub| (scrub, op)));
        self.extents
            .entry(existing.name.clone())
            .or_insert_with(|| existing.extents.clone())
            .extend(allocation.extents);
        self.grows.insert(existing.name.clone(), op);
        Ok(())
    }

    /// Zeroes the dirty extents of an allocation before the vdisk gets them,
    /// unless the pool says never: whatever the policy, data a former owner
    /// left (or a device held before it joined the pool) must not reach a
    /// new owner.
    fn scrub_before(&mut self, vdisk: &str, pool: &str, allocation: &Allocation) -> Option<usize> {
        let policy = self
            .input
            .desired
            .pools
            .get(pool)
            .map(|p| p.scrub)
            .unwrap_or_default();
        if policy == Scrub::Never || allocation.dirty.is_empty() {
            return None;
        }
        let op = self.push(Op::Scrub {
            pool: pool.to_owned(),
            vdisk: vdisk.to_owned(),
            released: false,
            extents: allocation.dirty.clone(),
        });
        self.diff
            .edges
            .extend(allocation.sources.iter().map(|add| (*add, op)));
        Some(op)
    }

    /// Chooses extents as the state DB will, takes them from the plan's free
    /// space, and returns them with the operations adding their devices.
    fn allocate(
        &mut self,
        vdisk: &str,
        pool: &str,
        sectors: u64,
        after: Option<(i64, u64)>,
    ) -> Result<Allocation, PlanError> {
        let Some(space) = self.spaces.get_mut(pool) else {
            let needed = Size::from_sectors(sectors);
            return Err(PlanError::PoolShort {
                pool: pool.to_owned(),
                vdisk: vdisk.to_owned(),
                needed,
                free: Size::from_sectors(0),
            });
        };
        let needed = sectors.div_ceil(space.extent_sectors);
        let Some(pieces) = space.free.choose(needed, after) else {
            let free = space.free.total();
            return Err(PlanError::PoolShort {
                pool: pool.to_owned(),
                vdisk: vdisk.to_owned(),
                needed: Size::from_sectors(needed * space.extent_sectors),
                free: Size::from_sectors(free * space.extent_sectors),
            });
        };
        let mut allocation = Allocation {
            extents: Vec::new(),
            sources: BTreeSet::new(),
            dirty: Vec::new(),
        };
        for piece in &pieces {
            space.free.take(piece);
            allocation
                .sources
                .extend(space.added_by.get(&piece.device).copied());
            let device = space.devices[&piece.device];
            for index in piece.first..piece.first + piece.len {
                let extent = SectorRange {
                    device,
                    start: index * space.extent_sectors,
                    sectors: space.extent_sectors,
                };
                if space.is_dirty(piece.device, index) {
                    allocation.dirty.push(extent);
                }
                allocation.extents.push(extent);
            }
        }
        Ok(allocation)
    }

    fn delete(&mut self, existing: &VdiskState, prevent_destroy: bool, why: Option<String>) {
        let name = &existing.name;
        let op = self.push(Op::DeleteVdisk {
            name: name.clone(),
            pool: existing.pool.clone(),
            size: existing.size,
        });
        self.deletes.insert(name.clone(), op);
        let removals: BTreeSet<usize> = existing
            .extents
            .iter()
            .filter_map(|e| self.removal_of_device(e.device))
            .collect();
        self.diff
            .edges
            .extend(removals.iter().map(|removal| (op, *removal)));
        if self
            .input
            .desired
            .pools
            .get(&existing.pool)
            .map(|p| p.scrub)
            .unwrap_or_default()
            == Scrub::OnRelease
        {
            let scrub = self.push(Op::Scrub {
                pool: existing.pool.clone(),
                vdisk: name.clone(),
                released: true,
                extents: existing.extents.clone(),
            });
            self.diff.edges.push((op, scrub));
            self.diff
                .edges
                .extend(removals.iter().map(|removal| (scrub, *removal)));
        }
        let context = why.map(|w| format!("{w}; ")).unwrap_or_default();
        if prevent_destroy {
            self.refuse(
                "prevent-destroy",
                format!("{context}vdisk `{name}` has prevent_destroy = true and is never deleted by a plan"),
            );
        } else if !self.options.allow_destroy {
            self.refuse(
                "destroy",
                format!(
                    "{context}deleting vdisk `{name}` ({} in pool `{}`) destroys its data; run again with \
                     --allow-destroy if that is intended",
                    existing.size, existing.pool
                ),
            );
        }
    }

    /// Extents an on-release scrub never got to (its run was killed or
    /// failed after the release) and that no allocation of this plan
    /// scrubs first: scrubbed now, as the pool promises.
    fn unfinished_release_scrubs(&mut self) {
        let mut by_pool: BTreeMap<String, Vec<SectorRange>> = BTreeMap::new();
        for extent in &self.input.state.unscrubbed_releases {
            for (pool, space) in &self.spaces {
                let Some((&id, _)) = space.devices.iter().find(|(_, d)| **d == extent.device)
                else {
                    continue;
                };
                let index = extent.start / space.extent_sectors.max(1);
                let still_free = space.free.contains(id, index);
                let on_release = self
                    .input
                    .desired
                    .pools
                    .get(pool)
                    .is_some_and(|p| p.scrub == Scrub::OnRelease);
                if still_free && on_release {
                    by_pool.entry(pool.clone()).or_default().push(*extent);
                }
            }
        }
        for (pool, extents) in by_pool {
            let removals: BTreeSet<usize> = extents
                .iter()
                .filter_map(|e| self.removal_of_device(e.device))
                .collect();
            let scrub = self.push(Op::Scrub {
                pool,
                vdisk: String::new(),
                released: true,
                extents,
            });
            self.diff
                .edges
                .extend(removals.into_iter().map(|removal| (scrub, removal)));
        }
    }

    fn removal_of_device(&self, device: DevNum) -> Option<usize> {
        self.removal_by_device.get(&device).copied().flatten()
    }
}
