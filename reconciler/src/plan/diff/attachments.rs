//! Attachments: what each managed domain should have against what it has,
//! the holders the safety check needs, vdisks deleted or expired while still
//! attached, and the realisation of vdisks that get attached.

use std::collections::{BTreeMap, BTreeSet};

use super::super::actual;
use super::super::resolve::{Area, normalise};
use super::{Builder, overlap};
use crate::desired::{Mode, Source};
use crate::observe::Attachment;
use crate::plan::{Op, Pending, PlanError};
use crate::safety::Holder;
use crate::vdev::Vdev;

impl Builder<'_> {
    pub(super) fn attachments(&mut self) -> Result<(), PlanError> {
        let host = self.input.host;
        let domid_of: BTreeMap<&str, u32> = host
            .domains
            .iter()
            .map(|d| (d.name.as_str(), d.domid))
            .collect();
        let managed: BTreeMap<u32, &str> = self
            .input
            .desired
            .domains
            .keys()
            .filter_map(|name| domid_of.get(name.as_str()).map(|id| (*id, name.as_str())))
            .collect();
        // Every attachment now is a holder until the plan detaches it.
        let mut holder_of: BTreeMap<(u32, u32), usize> = BTreeMap::new();
        for attachment in &host.attachments {
            let holder = self.actual_holder(attachment);
            self.diff.holders.push(holder);
            holder_of.insert(
                (attachment.domid, attachment.devid),
                self.diff.holders.len() - 1,
            );
        }
        let mut by_domain: BTreeMap<u32, BTreeMap<u32, &Attachment>> = BTreeMap::new();
        for attachment in &host.attachments {
            by_domain
                .entry(attachment.domid)
                .or_default()
                .insert(attachment.devid, attachment);
        }
        for (name, domain) in &self.input.desired.domains {
            let Some(&domid) = domid_of.get(name.as_str()) else {
                self.diff.pending.push(Pending {
                    domain: name.clone(),
                    disks: domain.disks.len(),
                });
                continue;
            };
            let actual: BTreeMap<u32, &Attachment> = by_domain.remove(&domid).unwrap_or_default();
            let mut wanted = BTreeSet::new();
            for (vdev_text, disk) in &domain.disks {
                // Validation has checked every vdev already.
                let Ok(vdev) = Vdev::parse(vdev_text) else {
                    continue;
                };
                let devid = vdev.device_id();
                wanted.insert(devid);
                let current = actual.get(&devid).copied();
                if let Some(attachment) = current
                    && self.actual_source(attachment) == disk.source
                    && actual::modes_agree(&attachment.mode, disk.mode)
                {
                    // Kept: its acceptance of sharing is the file's to say
                    // (xl records `w!` as plain `w`).
                    let holder = holder_of[&(domid, devid)];
                    self.diff.holders[holder].accepts_sharing = disk.mode == Mode::WriteShared;
                    continue;
                }
                let detach = current
                    .map(|attachment| self.detach(name, attachment, holder_of[&(domid, devid)]));
                let attach = self.push(Op::Attach {
                    domain: name.clone(),
                    domid,
                    vdev: vdev.canonical_name(),
                    devid,
                    source: disk.source.clone(),
                    mode: disk.mode,
                });
                self.diff.edges.extend(detach.map(|d| (d, attach)));
                let areas = self.desired_areas(name, &vdev, &disk.source)?;
                self.diff.holders.push(Holder {
                    name: format!("domain {name} {vdev} ({}, {})", disk.source, disk.mode),
                    dom0: domid == 0,
                    writable: disk.mode.is_writable(),
                    accepts_sharing: disk.mode == Mode::WriteShared,
                    areas,
                    added_by: Some(attach),
                    removed_by: None,
                });
            }
            for (devid, attachment) in &actual {
                if !wanted.contains(devid) {
                    self.detach(name, attachment, holder_of[&(domid, *devid)]);
                }
            }
        }
        self.order_detaches_before_conflicting_attaches();
        self.check_attached_vdisks(&managed);
        Ok(())
    }

    fn detach(&mut self, domain: &str, attachment: &Attachment, holder: usize) -> usize {
        let op = self.push(Op::Detach {
            domain: domain.to_owned(),
            domid: attachment.domid,
            vdev: attachment
                .vdev
                .clone()
                .unwrap_or_else(|| attachment.devid.to_string()),
            devid: attachment.devid,
            source: self.actual_source(attachment).to_string(),
        });
        self.diff.holders[holder].removed_by = Some(op);
        self.detaches
            .insert((attachment.domid, attachment.devid), op);
        op
    }

    /// A detach that frees an area an attach needs comes first.
    fn order_detaches_before_conflicting_attaches(&mut self) {
        let leaving: Vec<&Holder> = self
            .diff
            .holders
            .iter()
            .filter(|h| h.removed_by.is_some())
            .collect();
        let arriving: Vec<&Holder> = self
            .diff
            .holders
            .iter()
            .filter(|h| h.added_by.is_some())
            .collect();
        let mut edges = Vec::new();
        for old in &leaving {
            for new in &arriving {
                let writes = old.writable || new.writable;
                if writes && overlap(&old.areas, &new.areas) {
                    edges.push((
                        old.removed_by.unwrap_or_default(),
                        new.added_by.unwrap_or_default(),
                    ));
                }
            }
        }
        self.diff.edges.extend(edges);
    }

    /// Vdisks that are deleted, or expired, while a domain still has them.
    fn check_attached_vdisks(&mut self, managed: &BTreeMap<u32, &str>) {
        let host = self.input.host;
        for attachment in &host.attachments {
            let Source::Vdisk(vdisk) = self.actual_source(attachment) else {
                continue;
            };
            let detach = self
                .detaches
                .get(&(attachment.domid, attachment.devid))
                .copied();
            let detached = detach.is_some();
            if let Some(&delete) = self.deletes.get(&vdisk) {
                if let Some(detach) = detach {
                    self.diff.edges.push((detach, delete));
                } else {
                    let who = self.attachment_name(attachment);
                    let hint = if managed.contains_key(&attachment.domid) {
                        ""
                    } else {
                        " (a domain this file does not manage)"
                    };
                    self.refuse(
                        "delete-attached",
                        format!("vdisk `{vdisk}` would be deleted while attached to {who}{hint}; detach it first"),
                    );
                }
            }
            if let Some(expired) = self.index.expired(&vdisk)
                && !detached
            {
                let who = self.attachment_name(attachment);
                let at = expired
                    .expires_at
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                self.refuse(
                    "expired-attached",
                    format!(
                        "vdisk `{vdisk}` expired at {at} but is still attached to {who}: its extents are free \
                         space that a new vdisk may be given; detach it, or declare it again to copy its data first"
                    ),
                );
            }
        }
    }

    /// Realise what is attached and not realised; unrealise what is deleted.
    pub(super) fn realisation(&mut self) {
        let attaches: Vec<(usize, String)> = self
            .diff
            .ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| match op {
                Op::Attach {
                    source: Source::Vdisk(v),
                    ..
                } => Some((i, v.clone())),
                _ => None,
            })
            .collect();
        let mut realised: BTreeMap<String, usize> = BTreeMap::new();
        for (attach, vdisk) in attaches {
            if self.is_realised(&vdisk) && !self.creates.contains_key(&vdisk) {
                continue;
            }
            let realise = match realised.get(&vdisk) {
                Some(op) => *op,
                None => {
                    let op = self.push(Op::Realise {
                        vdisk: vdisk.clone(),
                    });
                    if let Some(create) = self.creates.get(&vdisk) {
                        self.diff.edges.push((*create, op));
                    }
                    if let Some(grow) = self.grows.get(&vdisk) {
                        self.diff.edges.push((*grow, op));
                    }
                    realised.insert(vdisk.clone(), op);
                    op
                }
            };
            self.diff.edges.push((realise, attach));
        }
        let deleted: Vec<(String, usize)> = self
            .deletes
            .iter()
            .map(|(v, op)| (v.clone(), *op))
            .collect();
        for (vdisk, delete) in deleted {
            if !self.is_realised(&vdisk) {
                continue;
            }
            let unrealise = self.push(Op::Unrealise {
                vdisk: vdisk.clone(),
            });
            self.diff.edges.push((unrealise, delete));
            let detaches: Vec<usize> = self
                .diff
                .ops
                .iter()
                .enumerate()
                .filter(|(_, op)| matches!(op, Op::Detach { source, .. } if *source == format!("vdisk:{vdisk}")))
                .map(|(i, _)| i)
                .collect();
            self.diff
                .edges
                .extend(detaches.into_iter().map(|d| (d, unrealise)));
        }
    }

    fn is_realised(&self, vdisk: &str) -> bool {
        self.index.is_realised(vdisk)
    }

    fn actual_source(&self, attachment: &Attachment) -> Source {
        self.index.source(attachment)
    }

    fn actual_holder(&self, attachment: &Attachment) -> Holder {
        let source = self.actual_source(attachment);
        let areas = match &source {
            Source::Vdisk(name) => {
                let extents = self
                    .index
                    .vdisk(name)
                    .map_or(&[][..], |v| v.extents.as_slice());
                self.resolver.extents(extents)
            }
            Source::Phy(path) => attachment
                .physical_device
                .and_then(|d| self.resolver.device_number(d))
                .or_else(|| self.resolver.device_path(path))
                .unwrap_or_default(),
            Source::File(path) => vec![Area::File(path.clone())],
        };
        let mode = actual::mode_of(&attachment.mode);
        Holder {
            name: format!("{} ({source}, {mode})", self.attachment_name(attachment)),
            dom0: attachment.domid == 0,
            writable: mode.is_writable(),
            accepts_sharing: mode == Mode::WriteShared,
            areas,
            added_by: None,
            removed_by: None,
        }
    }

    pub(super) fn attachment_name(&self, attachment: &Attachment) -> String {
        let domain = self
            .index
            .domain_name(attachment.domid)
            .map_or_else(|| format!("domid {}", attachment.domid), str::to_owned);
        let vdev = attachment
            .vdev
            .clone()
            .unwrap_or_else(|| attachment.devid.to_string());
        format!("domain {domain} {vdev}")
    }

    fn desired_areas(
        &self,
        domain: &str,
        vdev: &Vdev,
        source: &Source,
    ) -> Result<Vec<Area>, PlanError> {
        Ok(match source {
            Source::Vdisk(name) => self
                .resolver
                .extents(self.extents.get(name).map_or(&[][..], Vec::as_slice)),
            Source::Phy(path) => {
                self.resolver
                    .device_path(path)
                    .ok_or_else(|| PlanError::UnknownPhy {
                        domain: domain.to_owned(),
                        vdev: vdev.canonical_name(),
                        source_text: source.to_string(),
                    })?
            }
            Source::File(path) => vec![Area::File(normalise(path))],
        })
    }
}
