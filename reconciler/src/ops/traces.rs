//! xendisk's traces on a host: the marks its own work leaves, which a state
//! DB that records no vdisk cannot explain.
//!
//! A state DB that is missing, empty, or a stale copy makes every pool
//! device look free. Planned against it, a pool would be added again and
//! its extents scrubbed under a running guest. Such a host still shows
//! what xendisk made there, so [`traces`] looks for it, and `plan`, `apply`
//! and `init` refuse while the DB records no vdisk to account for it. Pure:
//! it reads the observed host and the state, nothing else.

use crate::observe::{HostState, LoopTarget, paths::normalise};
use crate::plan::actual::dm_name;
use crate::state::StateSnapshot;

/// What xendisk names its device-mapper devices, `xendisk-<vdisk>`.
fn is_xendisk_dm_name(name: &str) -> bool {
    name.starts_with(&dm_name(""))
}

/// The traces on `host` that `state` does not account for, each for a
/// person ("device-mapper device xendisk-web (dm-3)"); none when `state`
/// records a vdisk, live or expired (its devices are then the planner's to
/// reconcile) or when the host shows nothing of xendisk's.
///
/// Looked for: device-mapper devices named `xendisk-*`; loop devices over a
/// pool device the DB records with a window of whole extents (a vdisk of
/// one run realised as a loop);
/// attachments whose `params` name `/dev/mapper/xendisk-*` (also where
/// there is no device-mapper, as on a simulated host). A loop realisation
/// over a pool device the DB does not record is not recognisable as
/// xendisk's: nothing on the loop device names it.
pub fn traces(host: &HostState, state: &StateSnapshot) -> Vec<String> {
    if !state.vdisks.is_empty() || !state.expired.is_empty() {
        return Vec::new();
    }
    let pool_devices: Vec<_> = state
        .pools
        .iter()
        .flat_map(|pool| pool.devices.iter().map(move |device| (pool, device)))
        .collect();
    let mut found = Vec::new();
    for device in &host.block_devices {
        if let Some(name) = device.dm_name.as_deref().filter(|n| is_xendisk_dm_name(n)) {
            found.push(format!("device-mapper device {name} ({})", device.name));
        }
        let Some(backing) = &device.loop_backing else {
            continue;
        };
        // xendisk's loop is a window of whole extents; a loop over all of
        // a pool device (someone else's) is a holder the planner refuses.
        let extent = pool_extent_bytes(backing.offset, backing.sizelimit);
        let over = pool_devices.iter().find(|(pool, pool_device)| {
            let on_device = backing.behind
                == Some(LoopTarget::Block {
                    device: pool_device.device,
                })
                || normalise(&backing.file) == normalise(&pool_device.path);
            on_device && extent(pool.extent_size.bytes())
        });
        if let Some((_, pool_device)) = over {
            found.push(format!(
                "loop device /dev/{} over pool device {}",
                device.name, pool_device.path
            ));
        }
    }
    for attachment in &host.attachments {
        let path = normalise(attachment.path());
        let names_vdisk = path
            .strip_prefix("/dev/mapper/")
            .is_some_and(is_xendisk_dm_name);
        if names_vdisk {
            let vdev = attachment
                .vdev
                .clone()
                .unwrap_or_else(|| format!("device {}", attachment.devid));
            found.push(format!(
                "the {} backend of {vdev} of domain {} names {}",
                attachment.backend, attachment.domid, attachment.params
            ));
        }
    }
    found
}

/// Whether a loop window (byte offset, byte limit) is whole extents of a
/// given size: what xendisk's loop realisations are.
fn pool_extent_bytes(offset: u64, limit: u64) -> impl Fn(u64) -> bool {
    move |extent| {
        extent > 0 && limit > 0 && offset.is_multiple_of(extent) && limit.is_multiple_of(extent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Expiry, Size};
    use crate::extent::DevNum;
    use crate::observe::{Attachment, BlockDevice, LoopBacking};
    use crate::state::{PoolDeviceState, PoolState, VdiskState};

    fn device(name: &str, minor: u32) -> BlockDevice {
        BlockDevice {
            name: name.to_owned(),
            device: DevNum::new(8, minor),
            disk: DevNum::new(8, 0),
            start: 0,
            sectors: 1 << 20,
            dm_name: None,
            holders: Vec::new(),
            slaves: Vec::new(),
            loop_backing: None,
        }
    }

    fn attachment(params: &str) -> Attachment {
        Attachment {
            domid: 4,
            devid: 51712,
            vdev: Some("xvda".to_owned()),
            backend: "vbd".to_owned(),
            odd_path: None,
            params: params.to_owned(),
            mode: "w".to_owned(),
            kind: "phy".to_owned(),
            physical_device: None,
            online: true,
            state: Some(4),
            hotplug_refused: None,
        }
    }

    fn pool_of(path: &str, number: DevNum) -> StateSnapshot {
        StateSnapshot {
            pools: vec![PoolState {
                name: "fast".to_owned(),
                extent_size: Size::from_sectors(2048),
                devices: vec![PoolDeviceState {
                    id: 1,
                    path: path.to_owned(),
                    device: number,
                    sectors: 1 << 20,
                    on_disk: None,
                    extents: 512,
                    free: 512,
                    used: 0,
                    dirty: 0,
                    free_runs: Vec::new(),
                    dirty_runs: Vec::new(),
                }],
            }],
            ..StateSnapshot::default()
        }
    }

    #[test]
    fn a_bare_host_has_no_traces() {
        let host = HostState {
            block_devices: vec![device("sda", 0)],
            attachments: vec![attachment("/dev/sdb1")],
            ..HostState::default()
        };
        assert!(traces(&host, &StateSnapshot::default()).is_empty());
    }

    #[test]
    fn xendisk_devices_and_attachments_are_traces_without_a_recorded_vdisk() {
        let mut mapped = device("dm-3", 3);
        mapped.dm_name = Some("xendisk-web".to_owned());
        let mut other = device("dm-4", 4);
        other.dm_name = Some("vg0-root".to_owned());
        let host = HostState {
            block_devices: vec![mapped, other],
            attachments: vec![
                attachment("phy:/dev//mapper/./xendisk-web"),
                attachment("/dev/mapper/vg0-root"),
            ],
            ..HostState::default()
        };
        assert_eq!(
            traces(&host, &StateSnapshot::default()),
            [
                "device-mapper device xendisk-web (dm-3)",
                "the vbd backend of xvda of domain 4 names phy:/dev//mapper/./xendisk-web",
            ]
        );
    }

    #[test]
    fn a_loop_over_a_recorded_pool_device_is_a_trace() {
        let sdb1 = DevNum::new(8, 17);
        let mut by_number = device("loop0", 100);
        by_number.loop_backing = Some(LoopBacking {
            file: "/dev/somewhere-else".to_owned(),
            behind: Some(LoopTarget::Block { device: sdb1 }),
            offset: 1 << 20,
            sizelimit: 1 << 26,
        });
        let mut by_name = device("loop1", 101);
        by_name.loop_backing = Some(LoopBacking {
            file: "/dev/sdb1".to_owned(),
            behind: None,
            offset: 0,
            sizelimit: 1 << 20,
        });
        // Not windows of whole extents: someone else's, for the planner.
        let mut whole = device("loop2", 102);
        whole.loop_backing = Some(LoopBacking {
            file: "/dev/sdb1".to_owned(),
            behind: Some(LoopTarget::Block { device: sdb1 }),
            offset: 0,
            sizelimit: 0,
        });
        let mut unaligned = device("loop3", 103);
        unaligned.loop_backing = Some(LoopBacking {
            file: "/dev/sdb1".to_owned(),
            behind: Some(LoopTarget::Block { device: sdb1 }),
            offset: 4096,
            sizelimit: 1 << 20,
        });
        let host = HostState {
            block_devices: vec![by_number, by_name, whole, unaligned],
            ..HostState::default()
        };
        assert_eq!(
            traces(&host, &pool_of("/dev/sdb1", sdb1)),
            [
                "loop device /dev/loop0 over pool device /dev/sdb1",
                "loop device /dev/loop1 over pool device /dev/sdb1",
            ]
        );
        assert!(traces(&host, &StateSnapshot::default()).is_empty());
    }

    #[test]
    fn a_recorded_vdisk_leaves_the_devices_to_the_planner() {
        let mut mapped = device("dm-3", 3);
        mapped.dm_name = Some("xendisk-gone".to_owned());
        let host = HostState {
            block_devices: vec![mapped],
            ..HostState::default()
        };
        let vdisk = VdiskState {
            name: "web".to_owned(),
            pool: "fast".to_owned(),
            size: Size::from_sectors(2048),
            allocated: Size::from_sectors(2048),
            expiry: Expiry::Never,
            created_at: jiff::Timestamp::UNIX_EPOCH,
            expires_at: None,
            segments: 1,
            extents: Vec::new(),
        };
        let live = StateSnapshot {
            vdisks: vec![vdisk.clone()],
            ..StateSnapshot::default()
        };
        assert!(traces(&host, &live).is_empty());
        let expired = StateSnapshot {
            expired: vec![vdisk],
            ..StateSnapshot::default()
        };
        assert!(traces(&host, &expired).is_empty());
    }
}
