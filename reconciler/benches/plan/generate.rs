//! The generated hosts: a desired-state TOML, a snapshot of the host and a
//! state DB, written to a directory for the measuring process to read.
//!
//! The state DB is written directly, in the layout the allocator would
//! choose (vdisks placed one after another, devices in order): placing a
//! million extents through the allocator would take hours.

use std::fmt::Write as _;
use std::path::Path;

use rusqlite::params;
use xendisk::extent::DevNum;
use xendisk::observe::{
    Attachment, BlockDevice, Dom0Use, Domain, HostState, UseKind, UseTarget, snapshot,
};
use xendisk::state::StateDb;

pub const EXTENT_SECTORS: u64 = 131_072; // 64 MiB
const VDEVS: [&str; 4] = ["xvda", "xvdb", "xvdc", "xvdd"];

/// What is planned: the scenarios of issue 13 (and issue 5's mixed host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// 1% of the guests not attached yet, 1% of the vdisks new, 0.5% grown.
    Mixed,
    /// No guest attached yet: every attachment is new.
    New,
    /// As mixed, on pools where every other extent is used, so that the
    /// new vdisks and the grown ones are given one-extent pieces.
    Fragmented,
    /// Every attachment changes mode (w to r): a detach and an attach each.
    Mode,
    /// Nothing declared but the pool and the domains: every attachment
    /// detached, every vdisk deleted (with the destroy option).
    Teardown,
    /// Memory at 200,000 holders with 1,000,000 areas: a mode change of
    /// 50,000 attachments, on 100,000 vdisks of five scattered extents.
    Holders,
}

pub const SCENARIOS: [Scenario; 6] = [
    Scenario::Mixed,
    Scenario::New,
    Scenario::Fragmented,
    Scenario::Mode,
    Scenario::Teardown,
    Scenario::Holders,
];

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Mixed => "mixed",
            Scenario::New => "new",
            Scenario::Fragmented => "fragmented",
            Scenario::Mode => "mode",
            Scenario::Teardown => "teardown",
            Scenario::Holders => "holders",
        }
    }

    pub fn by_name(name: &str) -> Option<Scenario> {
        SCENARIOS.into_iter().find(|s| s.name() == name)
    }

    pub fn allow_destroy(self) -> bool {
        self == Scenario::Teardown
    }

    fn fragmented(self) -> bool {
        matches!(self, Scenario::Fragmented | Scenario::Holders)
    }

    /// Whether the desired vdisks differ from the state DB's (new, grown).
    fn changes_vdisks(self) -> bool {
        matches!(self, Scenario::Mixed | Scenario::Fragmented)
    }

    fn attached(self, domain: u64) -> bool {
        match self {
            Scenario::Mixed | Scenario::Fragmented => !domain.is_multiple_of(100),
            Scenario::New => false,
            Scenario::Mode | Scenario::Teardown | Scenario::Holders => true,
        }
    }
}

/// The size of a generated host.
pub struct Scale {
    domains: u64,
    vdisks: u64,
    devices: u64,
    extents_per_vdisk: u64,
}

impl Scale {
    pub fn of(scenario: Scenario, fraction: f64) -> Scale {
        let at = |n: f64| ((n * fraction).round() as u64).max(1);
        match scenario {
            Scenario::Holders => Scale {
                domains: at(12_500.0),
                vdisks: at(100_000.0),
                devices: at(100.0),
                extents_per_vdisk: 5,
            },
            _ => Scale {
                domains: at(10_000.0),
                vdisks: at(100_000.0),
                devices: at(100.0),
                extents_per_vdisk: 10,
            },
        }
    }
}

fn device(p: u64) -> DevNum {
    DevNum::new(240 + (p / 256) as u32, (p % 256) as u32)
}

/// Where each vdisk's extents lie: `(device, first slot)`, with the vdisk's
/// extents at every slot (contiguous) or every other slot (fragmented);
/// and each device's length in extents.
struct Layout {
    starts: Vec<(u64, u64)>,
    stride: u64,
    device_extents: Vec<u64>,
}

fn layout(scenario: Scenario, scale: &Scale) -> Layout {
    let per_vdisk = scale.extents_per_vdisk;
    let stride = if scenario.fragmented() { 2 } else { 1 };
    let vdisks_per_device = scale.vdisks.div_ceil(scale.devices);
    let mut starts = Vec::with_capacity(scale.vdisks as usize);
    let mut used = vec![0u64; scale.devices as usize];
    for v in 0..scale.vdisks {
        let p = v / vdisks_per_device;
        starts.push((p, used[p as usize] * stride));
        used[p as usize] += per_vdisk;
    }
    let device_extents = used
        .iter()
        .map(|&u| {
            if scenario.fragmented() {
                // Free space only between used extents: nothing longer
                // than one extent is free anywhere.
                (2 * u).max(2)
            } else {
                // Room for the new and grown vdisks the desired state asks for.
                u + u / 10 + per_vdisk
            }
        })
        .collect();
    Layout {
        starts,
        stride,
        device_extents,
    }
}

/// Writes `desired.toml`, `host.json` and `state.sqlite` into `dir`.
pub fn generate(scenario: Scenario, scale: &Scale, dir: &Path) {
    let layout = layout(scenario, scale);
    write_state(scale, &layout, &dir.join("state.sqlite"));
    let host = host(scenario, scale, &layout);
    std::fs::write(
        dir.join("host.json"),
        snapshot::to_json(&host, None, jiff::Timestamp::UNIX_EPOCH),
    )
    .unwrap();
    std::fs::write(dir.join("desired.toml"), desired(scenario, scale)).unwrap();
}

fn write_state(scale: &Scale, layout: &Layout, path: &Path) {
    let host = xendisk::state::HostId {
        machine_id: "0123456789abcdef0123456789abcdef".to_owned(),
        source: "/etc/machine-id".to_owned(),
    };
    drop(StateDb::create(path, &host, jiff::Timestamp::UNIX_EPOCH).unwrap());
    let mut db = rusqlite::Connection::open(path).unwrap();
    let tx = db.transaction().unwrap();
    tx.execute(
        "INSERT INTO pools (id, name, extent_sectors) VALUES (1, 'main', ?1)",
        params![EXTENT_SECTORS as i64],
    )
    .unwrap();
    for (p, extents) in layout.device_extents.iter().enumerate() {
        let p = p as u64;
        tx.execute(
            "INSERT INTO pool_devices (id, pool_id, path, major, minor, sectors, added_at) VALUES (?1, 1, ?2, ?3, ?4, ?5, 0)",
            params![p as i64 + 1, format!("/dev/xd{p}"), device(p).major, device(p).minor, (extents * EXTENT_SECTORS) as i64],
        )
        .unwrap();
    }
    {
        let mut vdisk = tx
            .prepare("INSERT INTO vdisks (id, name, pool_id, size_sectors, expiry, created_at) VALUES (?1, ?2, 1, ?3, 'never', 0)")
            .unwrap();
        let mut extent = tx
            .prepare("INSERT INTO extents (device_id, idx, vdisk_id, position, dirty) VALUES (?1, ?2, ?3, ?4, 0)")
            .unwrap();
        let mut free = tx
            .prepare("INSERT INTO extents (device_id, idx, dirty) VALUES (?1, ?2, 0)")
            .unwrap();
        let mut used: Vec<Vec<bool>> = layout
            .device_extents
            .iter()
            .map(|&n| vec![false; n as usize])
            .collect();
        for (v, &(p, first)) in layout.starts.iter().enumerate() {
            vdisk
                .execute(params![
                    v as i64 + 1,
                    format!("vd{v:06}"),
                    (scale.extents_per_vdisk * EXTENT_SECTORS) as i64
                ])
                .unwrap();
            for position in 0..scale.extents_per_vdisk {
                let index = first + position * layout.stride;
                used[p as usize][index as usize] = true;
                extent
                    .execute(params![
                        p as i64 + 1,
                        index as i64,
                        v as i64 + 1,
                        position as i64
                    ])
                    .unwrap();
            }
        }
        for (p, slots) in used.iter().enumerate() {
            for (index, _) in slots.iter().enumerate().filter(|(_, used)| !**used) {
                free.execute(params![p as i64 + 1, index as i64]).unwrap();
            }
        }
    }
    tx.commit().unwrap();
}

/// One disk per pool device, a system disk, and guests with four vdisks
/// each, attached read-write as the scenario says.
fn host(scenario: Scenario, scale: &Scale, layout: &Layout) -> HostState {
    let mut host = HostState::default();
    for (p, extents) in layout.device_extents.iter().enumerate() {
        let p = p as u64;
        host.block_devices.push(BlockDevice {
            name: format!("xd{p}"),
            device: device(p),
            disk: device(p),
            start: 0,
            sectors: extents * EXTENT_SECTORS,
            dm_name: None,
            holders: Vec::new(),
            slaves: Vec::new(),
            loop_backing: None,
        });
    }
    host.dom0_uses.push(Dom0Use {
        target: UseTarget::Sectors {
            disk: DevNum::new(8, 0),
            start: 2048,
            sectors: 100_000_000,
        },
        writable: true,
        description: "mounted rw at / in Domain-0 (/dev/sda1)".into(),
        kind: UseKind::Mount,
        via: None,
    });
    host.domains.push(Domain {
        domid: 0,
        name: "Domain-0".into(),
    });
    for d in 0..scale.domains {
        let domid = d as u32 + 1;
        host.domains.push(Domain {
            domid,
            name: format!("guest{d:05}"),
        });
        if !scenario.attached(d) {
            continue;
        }
        for (disk, vdev) in VDEVS.iter().enumerate() {
            let disk = disk as u32;
            let v = d * 4 + u64::from(disk);
            host.attachments.push(Attachment {
                domid,
                devid: (202 << 8) | (disk << 4),
                vdev: Some((*vdev).into()),
                backend: "vbd".into(),
                odd_path: None,
                params: format!("/dev/mapper/xendisk-vd{v:06}"),
                mode: "w".into(),
                kind: "phy".into(),
                physical_device: Some(DevNum::new(253, v as u32)),
                online: true,
                state: Some(4),
                hotplug_refused: None,
            });
        }
    }
    host
}

fn desired(scenario: Scenario, scale: &Scale) -> String {
    let mut desired = String::from("[pools.main]\nextent_size = \"64MiB\"\ndevices = [");
    for p in 0..scale.devices {
        write!(desired, "\"/dev/xd{p}\", ").unwrap();
    }
    desired.push_str("]\n\n");
    let vdisks = match scenario {
        Scenario::Teardown => 0,
        _ if scenario.changes_vdisks() => scale.vdisks + scale.vdisks / 100,
        _ => scale.vdisks,
    };
    for v in 0..vdisks {
        // 0.5% grow by an extent; past the state DB's, new.
        let grows = scenario.changes_vdisks() && v.is_multiple_of(200);
        let extents = scale.extents_per_vdisk + u64::from(grows);
        write!(
            desired,
            "[vdisks.vd{v:06}]\npool = \"main\"\nsize = \"{}MiB\"\n\n",
            extents * 64
        )
        .unwrap();
    }
    let mode = match scenario {
        Scenario::Mode | Scenario::Holders => "r",
        _ => "w",
    };
    for d in 0..scale.domains {
        writeln!(desired, "[domains.guest{d:05}.disks]").unwrap();
        if scenario != Scenario::Teardown {
            for (disk, vdev) in VDEVS.iter().enumerate() {
                let v = d * 4 + disk as u64;
                writeln!(
                    desired,
                    "{vdev} = {{ source = \"vdisk:vd{v:06}\", mode = \"{mode}\" }}"
                )
                .unwrap();
            }
        }
        desired.push('\n');
    }
    desired
}
