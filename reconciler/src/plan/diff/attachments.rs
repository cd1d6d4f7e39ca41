//! Attachments: what each managed domain should have against what it has,
//! the holders the safety check needs, vdisks deleted or expired while still
//! attached, and the realisation of vdisks that get attached.

use std::collections::{BTreeMap, BTreeSet};

use super::super::actual;
use super::super::resolve::{Area, normalise};
use super::Builder;
use crate::desired::{Disk, Mode, Source};
use crate::extent::DevNum;
use crate::observe::Attachment;
use crate::plan::{Op, Pending, PlanError};
use crate::safety::{Holder, Layer, Owner};
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
        // Every attachment now is a holder until the plan detaches it; the
        // holder of host attachment `i` is `first_holder + i`.
        let first_holder = self.diff.holders.len();
        for attachment in &host.attachments {
            let holder = self.actual_holder(attachment);
            self.diff.holders.push(holder);
        }
        // By domain and device id; two backend kinds at one device id (a
        // broken host) are both there, and neither is kept.
        let mut by_domain: BTreeMap<u32, BTreeMap<u32, Vec<usize>>> = BTreeMap::new();
        // libxl's, for a bootloader's run: held, never matched or detached.
        let mut bootloader: BTreeSet<(u32, u32)> = BTreeSet::new();
        for (index, attachment) in host.attachments.iter().enumerate() {
            if attachment.odd_path.is_some() {
                continue; // held, never matched or detached
            }
            if host.is_bootloader_attach(attachment) {
                bootloader.insert((attachment.domid, attachment.devid));
                self.note_bootloader_attach(attachment);
                continue;
            }
            by_domain
                .entry(attachment.domid)
                .or_default()
                .entry(attachment.devid)
                .or_default()
                .push(index);
        }
        for (name, domain) in &self.input.desired.domains {
            let Some(&domid) = domid_of.get(name.as_str()) else {
                self.diff.pending.push(Pending {
                    domain: name.clone(),
                    disks: domain.disks.len(),
                });
                continue;
            };
            let actual: BTreeMap<u32, Vec<usize>> = by_domain.remove(&domid).unwrap_or_default();
            let mut wanted = BTreeSet::new();
            for (vdev_text, disk) in &domain.disks {
                // Validation has checked every vdev already.
                let Ok(vdev) = Vdev::parse(vdev_text) else {
                    continue;
                };
                let devid = vdev.device_id();
                wanted.insert(devid);
                if bootloader.contains(&(domid, devid)) {
                    self.refuse(
                        "bootloader-attach",
                        format!(
                            "{vdev_text} of domain `{name}` is libxl's temporary attach for a \
                             guest's bootloader (pygrub), which libxl removes once the guest has \
                             booted: plan again then"
                        ),
                    );
                    continue;
                }
                let current: &[usize] = actual.get(&devid).map_or(&[], Vec::as_slice);
                // One being torn down is not attached: finish, then attach again.
                if let [index] = current
                    && let attachment = &host.attachments[*index]
                    && !attachment.is_closing()
                    && sources_agree(&self.actual_source(attachment), &disk.source)
                    && actual::modes_agree(&attachment.mode, disk.mode)
                    && attachment.format() == Ok(disk.format)
                {
                    // Kept: its acceptance of sharing is the file's to say
                    // (xl records `w!` as plain `w`).
                    self.diff.holders[first_holder + index].accepts_sharing =
                        disk.mode == Mode::WriteShared;
                    continue;
                }
                let detaches: Vec<usize> = current
                    .iter()
                    .map(|&index| self.detach(name, index, first_holder + index))
                    .collect();
                let attach = self.push(Op::Attach {
                    domain: name.clone(),
                    domid,
                    vdev: vdev.canonical_name(),
                    devid,
                    source: disk.source.clone(),
                    mode: disk.mode,
                    format: disk.format,
                });
                self.check_format_target(name, &vdev, disk);
                self.diff
                    .edges
                    .extend(detaches.iter().map(|&d| (d, attach)));
                let areas = self.desired_areas(name, &vdev, &disk.source)?;
                let on = match &disk.source {
                    Source::Vdisk(vdisk) => self.vdisk_layers(vdisk, self.extents_after(vdisk)),
                    Source::Phy(path) | Source::File(path) => {
                        self.devices_used(&normalise(path), None)
                    }
                };
                self.diff.holders.push(Holder {
                    name: format!("domain {name} {vdev} ({}, {})", disk.source, disk.mode),
                    // Checked against everything, dom0's own uses included: a disk dom0
                    // mounts and also attaches to itself is mounted twice.
                    owner: Owner::Guest,
                    writable: disk.mode.is_writable(),
                    accepts_sharing: disk.mode == Mode::WriteShared,
                    areas,
                    is: None,
                    on,
                    added_by: Some(attach),
                    removed_by: None,
                });
            }
            for (devid, indices) in &actual {
                if !wanted.contains(devid) {
                    for &index in indices {
                        self.detach(name, index, first_holder + index);
                    }
                }
            }
        }
        self.check_attached_vdisks(&managed);
        Ok(())
    }

    /// Detaches host attachment `index`, whose holder is `holder`.
    fn detach(&mut self, domain: &str, index: usize, holder: usize) -> usize {
        let attachment = &self.input.host.attachments[index];
        let op = self.push(Op::Detach {
            domain: domain.to_owned(),
            domid: attachment.domid,
            vdev: attachment
                .vdev
                .clone()
                .unwrap_or_else(|| attachment.devid.to_string()),
            devid: attachment.devid,
            source: self.actual_source(attachment).to_string(),
            backend: attachment.backend.clone(),
            closing: attachment.is_closing(),
            format: attachment
                .format()
                .map_or_else(str::to_owned, |format| format.to_string()),
        });
        self.diff.holders[holder].removed_by = Some(op);
        self.detaches.insert(index, op);
        op
    }

    /// Says once that libxl's bootloader attach is left to libxl.
    fn note_bootloader_attach(&mut self, attachment: &Attachment) {
        let source = self.actual_source(attachment);
        let format = attachment
            .format()
            .map_or_else(str::to_owned, |format| format.to_string());
        let mode = actual::mode_of(&attachment.mode);
        self.diff.notes.push(format!(
            "{} ({source} as {format}, {mode}) is libxl's temporary attach for a guest's \
             bootloader (pygrub): left to libxl, and a holder of its image while it is there",
            self.attachment_name(attachment)
        ));
    }

    /// A format other than raw is for an image file: a `file:` that is a
    /// block device on this host (validation has refused `phy:` and
    /// `vdisk:` sources already) is refused.
    fn check_format_target(&mut self, domain: &str, vdev: &Vdev, disk: &Disk) {
        let Source::File(path) = &disk.source else {
            return;
        };
        if disk.format.is_raw() || self.resolver.block_device_at(&normalise(path)).is_none() {
            return;
        }
        self.refuse(
            "format-on-block-device",
            format!(
                "{vdev} of domain `{domain}` has format \"{}\" but {} is a block device on this \
                 host, which is handed to the guest as it is: write format = \"raw\" (or leave \
                 it out), or name an image file",
                disk.format, disk.source
            ),
        );
    }

    /// Vdisks that are deleted, or expired, while a domain still has them.
    fn check_attached_vdisks(&mut self, managed: &BTreeMap<u32, &str>) {
        let host = self.input.host;
        for (index, attachment) in host.attachments.iter().enumerate() {
            let Source::Vdisk(vdisk) = self.actual_source(attachment) else {
                continue;
            };
            let detach = self.detaches.get(&index).copied();
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
        self.resizes();
        let deleted: Vec<(String, usize)> = self
            .deletes
            .iter()
            .map(|(v, op)| (v.clone(), *op))
            .collect();
        let mut detaches_of: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, op) in self.diff.ops.iter().enumerate() {
            if let Op::Detach { source, .. } = op
                && let Some(vdisk) = source.strip_prefix("vdisk:")
            {
                detaches_of.entry(vdisk).or_default().push(index);
            }
        }
        let mut edges = Vec::new();
        let mut unrealises = Vec::new();
        for (vdisk, delete) in deleted {
            if !self.is_realised(&vdisk) {
                continue;
            }
            let unrealise = self.diff.ops.len() + unrealises.len();
            edges.push((unrealise, delete));
            for detach in detaches_of.get(vdisk.as_str()).into_iter().flatten() {
                edges.push((*detach, unrealise));
            }
            unrealises.push(Op::Unrealise { vdisk });
        }
        self.diff.ops.extend(unrealises);
        self.diff.edges.extend(edges);
    }

    /// A realised vdisk that grows, or whose block device is shorter than
    /// its extents (a grow whose apply stopped before the device followed),
    /// gets its device resized in place, attached or not.
    fn resizes(&mut self) {
        // Created vdisks get their device at its full length: the live ones.
        let state = self.input.state;
        for vdisk in &state.vdisks {
            let vdisk = vdisk.name.as_str();
            if !self.is_realised(vdisk)
                || self.creates.contains_key(vdisk)
                || self.deletes.contains_key(vdisk)
            {
                continue;
            }
            let extents = self.extents_after(vdisk);
            let sectors: u64 = extents.iter().map(|e| e.sectors).sum();
            let grow = self.grows.get(vdisk).copied();
            let short = self
                .index
                .realised_sectors(vdisk)
                .is_some_and(|now| now < sectors);
            if grow.is_none() && !short {
                continue;
            }
            let runs = extents
                .windows(2)
                .filter(|w| !(w[0].device == w[1].device && w[0].end() == w[1].start))
                .count()
                + 1;
            if self.index.realised_as_loop(vdisk) && runs > 1 {
                self.refuse(
                    "grow-loop",
                    format!(
                        "vdisk `{vdisk}` is realised as a loop device, which maps one run of \
                         extents, and growing it gives {runs} runs: detach it and let it be \
                         realised again with realise = \"dm\" (or \"auto\"), or grow it later"
                    ),
                );
                continue;
            }
            let resize = self.push(Op::Resize {
                vdisk: vdisk.to_owned(),
            });
            self.diff.edges.extend(grow.map(|grow| (grow, resize)));
        }
    }

    fn is_realised(&self, vdisk: &str) -> bool {
        self.index.is_realised(vdisk)
    }

    fn actual_source(&self, attachment: &Attachment) -> Source {
        self.index.source(attachment)
    }

    /// An attachment as a holder of what it really touches (see
    /// [`Resolver::attachment`](super::super::resolve::Resolver)).
    fn actual_holder(&self, attachment: &Attachment) -> Holder {
        let source = self.actual_source(attachment);
        let areas = self.resolver.attachment(attachment, &source, &self.index);
        let on = match &source {
            Source::Vdisk(name) => self.vdisk_layers(name, &self.extents_of(name)),
            Source::Phy(path) | Source::File(path) => {
                self.devices_used(path, attachment.physical_device)
            }
        };
        let mode = actual::mode_of(&attachment.mode);
        let closing = match &attachment.hotplug_refused {
            Some(status) => format!(", refused by its hotplug script: {status}"),
            None if attachment.is_closing() => ", being detached".to_owned(),
            None => String::new(),
        };
        Holder {
            name: format!(
                "{} ({source}, {mode}{closing})",
                self.attachment_name(attachment)
            ),
            owner: Owner::Guest,
            writable: mode.is_writable(),
            accepts_sharing: mode == Mode::WriteShared,
            areas,
            is: None,
            on,
            added_by: None,
            removed_by: None,
        }
    }

    /// The block devices an attachment of `path` goes through: it is
    /// built on them, as dom0's hold on what is under them is.
    fn devices_used(&self, path: &str, physical: Option<DevNum>) -> Vec<Layer> {
        let mut on: Vec<Layer> = self
            .resolver
            .block_device_at(path)
            .map(|d| d.device)
            .into_iter()
            .chain(physical)
            .map(Layer::Device)
            .collect();
        on.sort();
        on.dedup();
        on
    }

    pub(super) fn attachment_name(&self, attachment: &Attachment) -> String {
        if let Some(path) = &attachment.odd_path {
            return format!("the backend at {path}");
        }
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
            Source::Vdisk(name) => self.resolver.extents(self.extents_after(name)),
            Source::Phy(path) => {
                self.resolver
                    .path(&normalise(path))
                    .ok_or_else(|| PlanError::UnknownPhy {
                        domain: domain.to_owned(),
                        vdev: vdev.canonical_name(),
                        source_text: source.to_string(),
                    })?
            }
            // A file that is a block device (or a link to one) is that
            // device; one a loop device is over is that loop device too.
            Source::File(path) => {
                let path = normalise(path);
                self.resolver
                    .path(&path)
                    .unwrap_or_else(|| vec![Area::Path(path)])
            }
        })
    }
}

/// Whether what is attached is what the file asks for. A `file:` naming a
/// block device is attached as one (xl and the hotplug script see a block
/// device), and reads back as `phy:`.
fn sources_agree(actual: &Source, desired: &Source) -> bool {
    match (actual, desired) {
        (Source::Phy(attached), Source::File(wanted)) => *attached == normalise(wanted),
        (actual, desired) => actual == desired,
    }
}
