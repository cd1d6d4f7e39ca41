//! libxl's temporary Domain-0 attaches for bootloaders: telling them from
//! an operator's Domain-0 disks.
//!
//! When a PV or PVH guest boots through a bootloader (pygrub) from a disk
//! that dom0 cannot open by its path, libxl attaches that disk to Domain-0
//! for the bootloader's run and detaches it when the bootloader ends
//! (Xen's tools/libs/light/libxl_bootloader.c, `libxl__bootloader_run`,
//! calling `libxl__device_disk_local_initiate_attach` in libxl_disk.c).
//! Such an attach is libxl's business for a few seconds: a desired file
//! must not adopt it (`generate`) and a plan must not detach it, but while
//! it exists it holds its image like any attachment, so the sharing check
//! still counts it.
//!
//! What marks it, in the Xen source:
//! - In xenstore, nothing of its own. It is written by the same
//!   `device_disk_add` as `xl block-attach 0`, with the same nodes. Its
//!   vdev comes from `libxl__alloc_vdev`: the first whole disk (`d<N>p0`,
//!   partition 0) from the guest's `blkdev_start` (default `xvda`) that
//!   Domain-0 has no device at. libxl keeps it out of Domain-0's saved
//!   configuration ("We don't care about local attach state because it's
//!   only intermediate state", `device_disk_add`); but disks xendisk's own
//!   xenstore toolstack attaches are not in that configuration either, so
//!   that absence proves nothing.
//! - It is made only for a disk in a format other than raw, or one with a
//!   hotplug script: `libxl__device_disk_find_local_path` hands a raw disk
//!   without a script to the bootloader by its path.
//! - In dom0, the run it serves has an output file,
//!   `bootloader.<domid>.out` (and a directory `bootloader.<domid>.d`),
//!   made before the attach and removed by `bootloader_cleanup` just
//!   before the detach starts (`bootloader_setpaths`). They are in
//!   XEN_LIB_DIR (`/var/lib/xen`) since Xen 4.18 (commit ad89640ad7), in
//!   XEN_RUN_DIR (`/var/run/xen`, `/run/xen` on most distributions) before.
//!
//! The rule: an attachment is libxl's bootloader attach when it is a
//! Domain-0 device (domid 0) at a whole disk, read in a format other than
//! raw, while dom0 shows a bootloader run for a domain that exists. Left
//! out, knowingly: a raw disk with a hotplug script (`block-iscsi`,
//! `block-drbd`) booted through pygrub is taken for an operator's disk; and
//! with several guests booting at once, every such Domain-0 attach counts,
//! as their runs cannot be paired with them. The detach libxl starts once
//! the run file is gone marks the backend closing, which plans already
//! leave to finish.

use std::fs;
use std::io;
use std::path::Path;

use super::{Attachment, ObserveError, under};

/// Where libxl keeps a bootloader run's files: XEN_LIB_DIR since Xen 4.18,
/// XEN_RUN_DIR before (`/var/run/xen`, a link into `/run` on most systems).
const RUN_DIRS: [&str; 3] = ["/var/lib/xen", "/var/run/xen", "/run/xen"];

/// Domids whose bootloader libxl is running now: those with a
/// `bootloader.<domid>.out` in one of [`RUN_DIRS`] under `root`, sorted.
pub(super) fn runs(root: &Path) -> Result<Vec<u32>, ObserveError> {
    let mut domids = Vec::new();
    for dir in RUN_DIRS {
        let entries = match fs::read_dir(under(root, dir)) {
            Ok(entries) => entries,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue;
            }
            Err(source) => {
                return Err(ObserveError::Read {
                    path: dir.to_owned(),
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(domid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("bootloader."))
                .and_then(|n| n.strip_suffix(".out"))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u32>().ok())
            {
                domids.push(domid);
            }
        }
    }
    domids.sort_unstable();
    domids.dedup();
    Ok(domids)
}

/// Whether `attachment` is libxl's temporary attach for a bootloader (the
/// rule in this module's documentation), given the domids whose
/// bootloader runs and those of the domains that exist.
pub fn is_bootloader_attach(attachment: &Attachment, runs: &[u32], domains: &[u32]) -> bool {
    let whole_disk = attachment
        .vdev
        .as_deref()
        .and_then(|name| crate::vdev::Vdev::parse(name).ok())
        .is_some_and(|vdev| vdev.partition == 0);
    attachment.domid == 0
        && attachment.odd_path.is_none()
        && whole_disk
        && attachment.format().is_ok_and(|format| !format.is_raw())
        && runs
            .iter()
            .any(|domid| *domid != 0 && domains.contains(domid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(domid: u32, vdev: &str, backend: &str, params: &str) -> Attachment {
        let parsed = crate::vdev::Vdev::parse(vdev).unwrap();
        Attachment {
            domid,
            devid: parsed.device_id(),
            vdev: Some(parsed.canonical_name()),
            backend: backend.into(),
            odd_path: None,
            params: params.into(),
            mode: "r".into(),
            kind: backend.into(),
            physical_device: None,
            online: true,
            state: Some(4),
            hotplug_refused: None,
        }
    }

    #[test]
    fn runs_are_read_from_every_run_directory() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("var/lib/xen");
        let run = root.path().join("run/xen");
        fs::create_dir_all(&lib).unwrap();
        fs::create_dir_all(&run).unwrap();
        for name in [
            "bootloader.7.out",
            "bootloader.7.d",
            "bootloader.x.out",
            "bootloader..out",
            "userdata-d.0.libxl-json",
        ] {
            fs::write(lib.join(name), "").unwrap();
        }
        fs::write(run.join("bootloader.12.out"), "").unwrap();
        fs::write(run.join("bootloader.7.out"), "").unwrap();
        assert_eq!(runs(root.path()).unwrap(), vec![7, 12]);
        assert_eq!(
            runs(&root.path().join("nothing")).unwrap(),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn only_a_whole_non_raw_domain_0_disk_during_a_run_is_the_bootloaders() {
        let qcow2 = attachment(0, "xvda", "qdisk", "qcow2:/srv/guest.qcow2");
        assert!(is_bootloader_attach(&qcow2, &[5], &[0, 5]));
        // No run, or a run for a domain that is gone: an operator's disk.
        assert!(!is_bootloader_attach(&qcow2, &[], &[0, 5]));
        assert!(!is_bootloader_attach(&qcow2, &[5], &[0]));
        // A guest's own disk, a partition, a raw image.
        let guest = attachment(5, "xvda", "qdisk", "qcow2:/srv/guest.qcow2");
        assert!(!is_bootloader_attach(&guest, &[5], &[0, 5]));
        let partition = attachment(0, "xvda1", "qdisk", "qcow2:/srv/guest.qcow2");
        assert!(!is_bootloader_attach(&partition, &[5], &[0, 5]));
        let raw = attachment(0, "xvdb", "qdisk", "aio:/srv/guest.img");
        assert!(!is_bootloader_attach(&raw, &[5], &[0, 5]));
        let blkback = attachment(0, "xvdb", "vbd", "/dev/sdb1");
        assert!(!is_bootloader_attach(&blkback, &[5], &[0, 5]));
        let vhd = attachment(0, "xvdc", "vbd3", "vhd:/srv/guest.vhd");
        assert!(is_bootloader_attach(&vhd, &[5], &[0, 5]));
    }
}
