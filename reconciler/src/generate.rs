//! The actual state written as a desired-state file: every pool and vdisk
//! of the state DB, and every domain that has disks attached, with those
//! disks (and the format of an image read as other than raw). Planning the
//! result against the same host changes nothing, which is how a running
//! host is adopted. libxl's temporary Domain-0 attaches for bootloaders are
//! libxl's, never adopted (see [`crate::observe::bootloader`]). Pure: it
//! reads only its inputs.

use crate::desired::{Desired, Disk, Pool, Scrub, Settings, Source, Vdisk};
use crate::observe::HostState;
use crate::plan::actual;
use crate::state::StateSnapshot;

/// What `generate` produced, and what it had to leave out.
pub struct Generated {
    pub desired: Desired,
    /// Attachments with no name a desired-state file can hold.
    pub skipped: Vec<String>,
}

pub fn generate(state: &StateSnapshot, host: &HostState) -> Generated {
    let mut desired = Desired {
        settings: Settings::default(),
        ..Desired::default()
    };
    for pool in &state.pools {
        desired.pools.insert(
            pool.name.clone(),
            Pool {
                extent_size: pool.extent_size,
                devices: pool.devices.iter().map(|d| d.path.clone()).collect(),
                scrub: Scrub::default(),
            },
        );
    }
    for vdisk in &state.vdisks {
        desired.vdisks.insert(
            vdisk.name.clone(),
            Vdisk {
                pool: vdisk.pool.clone(),
                size: vdisk.size,
                expires: vdisk.expiry,
                prevent_destroy: false,
            },
        );
    }
    let index = actual::ActualIndex::new(state, host);
    let mut skipped = Vec::new();
    let mut unexpressible = Vec::new();
    for attachment in &host.attachments {
        if let Some(path) = &attachment.odd_path {
            skipped.push(format!(
                "the backend at {path}: its directory is not named by numbers, so no file can \
                 declare it (it is still a holder every plan checks)"
            ));
            continue;
        }
        if host.is_bootloader_attach(attachment) {
            skipped.push(format!(
                "Domain-0 {} ({}): libxl's temporary attach for a guest's bootloader \
                 (pygrub), which libxl removes once the guest has booted (it is still a holder \
                 every plan checks)",
                attachment.vdev.as_deref().unwrap_or_default(),
                attachment.params
            ));
            continue;
        }
        if let Some(status) = &attachment.hotplug_refused {
            skipped.push(format!(
                "domid {} device {} ({}): its hotplug script refused it (hotplug-status {status}), \
                 so it is no working disk; declare it to have it attached again, or leave its \
                 domain's disks declared to have it taken away",
                attachment.domid, attachment.devid, attachment.params
            ));
            continue;
        }
        let Some(domain) = index
            .domain_name(attachment.domid)
            .filter(|n| !n.is_empty())
        else {
            skipped.push(format!(
                "device {} of domid {}: the domain has no name",
                attachment.devid, attachment.domid
            ));
            continue;
        };
        let Some(vdev) = &attachment.vdev else {
            // Declaring the domain without this disk would plan its detach:
            // the whole domain stays undeclared, so left alone.
            skipped.push(format!(
                "domain {domain}: its device {} is not a xen-vbd-interface(7) encoding, so the domain \
                 is left undeclared (and untouched by plans)",
                attachment.devid
            ));
            unexpressible.push(domain);
            continue;
        };
        let source = index.source(attachment);
        let format = match attachment.format() {
            Ok(format) if format.is_raw() || matches!(source, Source::File(_)) => format,
            // A file cannot say it; declaring the domain without this disk
            // would plan its detach.
            Ok(format) => {
                skipped.push(format!(
                    "domain {domain}: its {vdev} is {source} read as {format}, which a file can \
                     declare only for an image file, so the domain is left undeclared (and \
                     untouched by plans)"
                ));
                unexpressible.push(domain);
                continue;
            }
            Err(name) => {
                skipped.push(format!(
                    "domain {domain}: its {vdev} ({source}) is in format `{name}`, which xendisk \
                     does not declare, so the domain is left undeclared (and untouched by plans)"
                ));
                unexpressible.push(domain);
                continue;
            }
        };
        let disk = Disk {
            source,
            mode: actual::mode_of(&attachment.mode),
            format,
        };
        desired
            .domains
            .entry(domain.to_owned())
            .or_default()
            .disks
            .insert(vdev.clone(), disk);
    }
    for domain in unexpressible {
        desired.domains.remove(domain);
    }
    Generated { desired, skipped }
}

/// The file's text, with the schema line editors use.
pub fn to_toml(desired: &Desired, header: &str) -> String {
    let body = toml::to_string_pretty(desired).expect("a desired state always serialises");
    format!("#:schema ../schemas/xendisk.schema.json\n# {header}\n\n{body}")
}
