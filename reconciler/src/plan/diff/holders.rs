//! The holders that are not attachments: what dom0 uses, and xendisk's own
//! (its pool devices and vdisks, which claim their sectors while they
//! exist, and its scrubs, which write them during their step).

use std::collections::BTreeSet;

use super::Builder;
use crate::extent::SectorRange;
use crate::observe::UseKind;
use crate::plan::Op;
use crate::plan::resolve::{Area, normalise};
use crate::safety::{Holder, Layer, Owner};

impl Builder<'_> {
    /// dom0's mounts, swaps and holders. One that goes through a vdisk's
    /// own block device uses that vdisk's extents, not the whole pool
    /// device under it.
    pub(super) fn dom0_holders(&mut self) {
        let mut through_vdisks: BTreeSet<(&str, &str)> = BTreeSet::new();
        for used in &self.input.host.dom0_uses {
            let vdisk = used
                .via
                .and_then(|device| self.index.realisation_of(device));
            let (areas, on) = match vdisk {
                Some(vdisk) => {
                    if !through_vdisks.insert((vdisk, used.description.as_str())) {
                        continue;
                    }
                    let extents = self.extents_of(vdisk);
                    (
                        self.resolver.extents(&extents),
                        self.vdisk_layers(vdisk, &extents),
                    )
                }
                None => (
                    self.resolver.widen(vec![Area::from(&used.target)]),
                    Vec::new(),
                ),
            };
            let is = match (used.kind, used.via) {
                (UseKind::Holder, Some(device)) if vdisk.is_none() => Some(Layer::Device(device)),
                _ => None,
            };
            self.diff.holders.push(Holder {
                name: used.description.clone(),
                owner: Owner::Domain0,
                writable: used.writable,
                accepts_sharing: false,
                areas,
                is,
                on,
                added_by: None,
                removed_by: None,
            });
        }
    }

    /// Pool devices, vdisks and scrubs, once every operation is known.
    pub(super) fn xendisk_holders(&mut self) {
        let state = self.input.state;
        for device in state.pools.iter().flat_map(|p| &p.devices) {
            let whole = SectorRange {
                device: device.device,
                start: 0,
                sectors: device.sectors,
            };
            let holder = Holder {
                name: format!("pool device {} ({})", device.path, device.device),
                removed_by: self.removals.get(&normalise(&device.path)).copied(),
                ..self.pool_device_holder(whole, None)
            };
            self.diff.holders.push(holder);
        }
        for vdisk in &state.vdisks {
            let holder = Holder {
                name: format!("vdisk {}", vdisk.name),
                removed_by: self.deletes.get(&vdisk.name).copied(),
                ..self.vdisk_holder(&vdisk.name, &vdisk.extents, None)
            };
            self.diff.holders.push(holder);
        }
        let mut added = Vec::new();
        for (op, operation) in self.diff.ops.iter().enumerate() {
            let holder = match operation {
                Op::AddPoolDevice {
                    pool, path, device, ..
                } => {
                    let sectors = self
                        .input
                        .host
                        .block_devices
                        .iter()
                        .find(|d| d.device == *device)
                        .map_or(0, |d| d.sectors);
                    let whole = SectorRange {
                        device: *device,
                        start: 0,
                        sectors,
                    };
                    Holder {
                        name: format!("pool device {path} ({device}) of pool `{pool}`"),
                        ..self.pool_device_holder(whole, Some(op))
                    }
                }
                Op::CreateVdisk { name, extents, .. } => Holder {
                    name: format!("vdisk {name}"),
                    ..self.vdisk_holder(name, extents, Some(op))
                },
                Op::GrowVdisk { name, extents, .. } => Holder {
                    name: format!("vdisk {name} (grown)"),
                    ..self.vdisk_holder(name, extents, Some(op))
                },
                Op::Scrub {
                    vdisk,
                    released,
                    extents,
                    ..
                } => {
                    let why = match (*released, vdisk.is_empty()) {
                        (true, true) => "released by an unfinished run".to_owned(),
                        (true, false) => format!("released by {vdisk}"),
                        (false, _) => format!("for {vdisk}"),
                    };
                    let mut holder = self.xendisk_holder(extents, None, Some(op));
                    holder.name = format!("scrub of {} extents {why}", extents.len());
                    holder.removed_by = Some(op);
                    holder
                }
                _ => continue,
            };
            added.push(holder);
        }
        self.diff.holders.extend(added);
    }

    /// A pool device claims its place on its whole disk, and all of what it
    /// is built on (a device-mapper or loop device's underlying devices).
    fn pool_device_holder(&self, whole: SectorRange, added_by: Option<usize>) -> Holder {
        let mut holder =
            self.xendisk_holder(&[whole], Some(Layer::PoolDevice(whole.device)), added_by);
        let below = self
            .resolver
            .device_number(whole.device)
            .unwrap_or_default();
        holder.areas.extend(below);
        holder.areas.sort();
        holder.areas.dedup();
        holder
    }

    fn vdisk_holder(
        &self,
        vdisk: &str,
        extents: &[SectorRange],
        added_by: Option<usize>,
    ) -> Holder {
        self.xendisk_holder(extents, Some(Layer::Vdisk(vdisk.to_owned())), added_by)
    }

    /// A holder of xendisk's: writable, on the pool devices of `extents`
    /// (each relative to its pool device).
    fn xendisk_holder(
        &self,
        extents: &[SectorRange],
        is: Option<Layer>,
        added_by: Option<usize>,
    ) -> Holder {
        let on = extents
            .iter()
            .map(|e| e.device)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(Layer::PoolDevice)
            .filter(|layer| Some(layer) != is.as_ref())
            .collect();
        Holder {
            name: String::new(),
            owner: Owner::Xendisk,
            writable: true,
            accepts_sharing: false,
            areas: self.resolver.extents(extents),
            is,
            on,
            added_by,
            removed_by: None,
        }
    }

    /// What a holder built on `vdisk` is built on: the vdisk and its pool devices.
    pub(super) fn vdisk_layers(&self, vdisk: &str, extents: &[SectorRange]) -> Vec<Layer> {
        let devices: BTreeSet<_> = extents.iter().map(|e| e.device).collect();
        std::iter::once(Layer::Vdisk(vdisk.to_owned()))
            .chain(devices.into_iter().map(Layer::PoolDevice))
            .collect()
    }

    /// A vdisk's extents as they are before the plan (for what holds it now).
    pub(super) fn extents_of(&self, vdisk: &str) -> Vec<SectorRange> {
        self.index
            .vdisk(vdisk)
            .map(|v| v.extents.clone())
            .unwrap_or_default()
    }
}
