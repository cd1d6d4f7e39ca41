//! Planning a large host from a snapshot: 10,000 domains, 40,000
//! attachments, 100,000 vdisks and 1,000,000 extents, and a tenth of that.
//! Each size is generated into files first (desired-state TOML, snapshot
//! JSON, state DB), then planned in a fresh process so that its peak memory
//! is the planner's own. Prints seconds per stage; figures go to BENCHMARKS.md.
//!
//! cargo bench --bench plan

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rusqlite::params;
use xendisk::desired::Capacities;
use xendisk::extent::DevNum;
use xendisk::observe::{
    Attachment, BlockDevice, Dom0Use, Domain, HostState, UseKind, UseTarget, snapshot,
};
use xendisk::plan::{PlanInput, PlanOptions, plan_timed};
use xendisk::state::StateDb;

const EXTENT_SECTORS: u64 = 131_072; // 64 MiB
const EXTENTS_PER_VDISK: u64 = 10;

struct Scale {
    domains: u64,
    vdisks: u64,
    devices: u64,
}

impl Scale {
    fn of(fraction: f64) -> Scale {
        let at = |n: f64| (n * fraction).round() as u64;
        Scale {
            domains: at(10_000.0),
            vdisks: at(100_000.0),
            devices: at(100.0).max(1),
        }
    }
}

fn generate(scale: &Scale, dir: &Path) {
    let extents = scale.vdisks * EXTENTS_PER_VDISK;
    // Room for the new and grown vdisks the desired state asks for.
    let per_device = (extents + extents / 10) / scale.devices + 1;
    let device = |p: u64| DevNum::new(240 + (p / 256) as u32, (p % 256) as u32);

    // The state DB, written directly: the allocator would take hours to
    // place a million extents one vdisk at a time, and the layout is the
    // one it would choose anyway (one run per vdisk, devices in order).
    let path = dir.join("state.sqlite");
    let host = xendisk::state::HostId {
        machine_id: "0123456789abcdef0123456789abcdef".to_owned(),
        source: "/etc/machine-id".to_owned(),
    };
    drop(StateDb::create(&path, &host, jiff::Timestamp::UNIX_EPOCH).unwrap());
    let mut db = rusqlite::Connection::open(&path).unwrap();
    let tx = db.transaction().unwrap();
    tx.execute(
        "INSERT INTO pools (id, name, extent_sectors) VALUES (1, 'main', ?1)",
        params![EXTENT_SECTORS as i64],
    )
    .unwrap();
    for p in 0..scale.devices {
        tx.execute(
            "INSERT INTO pool_devices (id, pool_id, path, major, minor, sectors, added_at) VALUES (?1, 1, ?2, ?3, ?4, ?5, 0)",
            params![p as i64 + 1, format!("/dev/xd{p}"), device(p).major, device(p).minor, (per_device * EXTENT_SECTORS) as i64],
        )
        .unwrap();
    }
    {
        let mut vdisk = tx
            .prepare("INSERT INTO vdisks (id, name, pool_id, size_sectors, expiry, created_at) VALUES (?1, ?2, 1, ?3, 'never', 0)")
            .unwrap();
        let mut extent = tx.prepare("INSERT INTO extents (device_id, idx, vdisk_id, position, dirty) VALUES (?1, ?2, ?3, ?4, 0)").unwrap();
        let mut free = tx
            .prepare("INSERT INTO extents (device_id, idx, dirty) VALUES (?1, ?2, 0)")
            .unwrap();
        let mut next = (0u64, 0u64); // device, index
        for v in 0..scale.vdisks {
            vdisk
                .execute(params![
                    v as i64 + 1,
                    format!("vd{v:06}"),
                    (EXTENTS_PER_VDISK * EXTENT_SECTORS) as i64
                ])
                .unwrap();
            if next.1 + EXTENTS_PER_VDISK > per_device {
                next = (next.0 + 1, 0);
            }
            for position in 0..EXTENTS_PER_VDISK {
                extent
                    .execute(params![
                        next.0 as i64 + 1,
                        (next.1 + position) as i64,
                        v as i64 + 1,
                        position as i64
                    ])
                    .unwrap();
            }
            next.1 += EXTENTS_PER_VDISK;
        }
        for p in 0..scale.devices {
            let used = if p < next.0 {
                (per_device / EXTENTS_PER_VDISK) * EXTENTS_PER_VDISK
            } else if p == next.0 {
                next.1
            } else {
                0
            };
            for index in used..per_device {
                free.execute(params![p as i64 + 1, index as i64]).unwrap();
            }
        }
    }
    tx.commit().unwrap();

    // The host: one disk per pool device, a system disk, and guests with
    // four vdisks each, 1% of them not attached yet.
    let mut host = HostState::default();
    for p in 0..scale.devices {
        host.block_devices.push(BlockDevice {
            name: format!("xd{p}"),
            device: device(p),
            disk: device(p),
            start: 0,
            sectors: per_device * EXTENT_SECTORS,
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
    let mut desired = String::from("[pools.main]\nextent_size = \"64MiB\"\ndevices = [");
    for p in 0..scale.devices {
        write!(desired, "\"/dev/xd{p}\", ").unwrap();
    }
    desired.push_str("]\n\n");
    let new_vdisks = scale.vdisks / 100;
    for v in 0..scale.vdisks + new_vdisks {
        // 0.5% grow by an extent; 1% are new.
        let extents = if v % 200 == 0 {
            EXTENTS_PER_VDISK + 1
        } else {
            EXTENTS_PER_VDISK
        };
        write!(
            desired,
            "[vdisks.vd{v:06}]\npool = \"main\"\nsize = \"{}MiB\"\n\n",
            extents * 64
        )
        .unwrap();
    }
    for d in 0..scale.domains {
        let domid = d as u32 + 1;
        let name = format!("guest{d:05}");
        host.domains.push(Domain {
            domid,
            name: name.clone(),
        });
        writeln!(desired, "[domains.{name}.disks]").unwrap();
        for disk in 0..4u32 {
            let v = d * 4 + u64::from(disk);
            let vdev = ["xvda", "xvdb", "xvdc", "xvdd"][disk as usize];
            writeln!(
                desired,
                "{vdev} = {{ source = \"vdisk:vd{v:06}\", mode = \"w\" }}"
            )
            .unwrap();
            if d % 100 != 0 {
                host.attachments.push(Attachment {
                    domid,
                    devid: (202 << 8) | (disk << 4),
                    vdev: Some(vdev.into()),
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
        desired.push('\n');
    }
    std::fs::write(dir.join("desired.toml"), desired).unwrap();
    std::fs::write(
        dir.join("host.json"),
        snapshot::to_json(&host, None, jiff::Timestamp::UNIX_EPOCH),
    )
    .unwrap();
}

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// Reads the inputs and plans, timing each stage; prints one table row.
fn measure(dir: &Path) {
    let now = jiff::Timestamp::from_second(1_000_000).unwrap();
    let t = Instant::now();
    let text = std::fs::read_to_string(dir.join("desired.toml")).unwrap();
    let desired = xendisk::desired::from_str("desired.toml", &text, &Capacities::new()).unwrap();
    let parse = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let host = snapshot::load(&dir.join("host.json")).unwrap();
    let observe = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let state = StateDb::open_read_only(&dir.join("state.sqlite"))
        .unwrap()
        .snapshot(now)
        .unwrap();
    let read_state = t.elapsed().as_secs_f64();
    let input = PlanInput {
        desired: &desired,
        state: &state,
        host: &host,
        sources: &[],
    };
    let (plan, timings) = plan_timed(&input, PlanOptions::default()).unwrap();
    let t = Instant::now();
    let mut sink = Vec::new();
    xendisk::render::plan::text(&plan, Default::default(), &mut sink).unwrap();
    let render = t.elapsed().as_secs_f64();
    let reading = parse + observe + read_state;
    let planning = timings.diff.as_secs_f64()
        + timings.graph.as_secs_f64()
        + timings.safety.as_secs_f64()
        + render;
    assert!(
        plan.safety.conflicts.is_empty() && plan.refusals.is_empty(),
        "the generated host plans cleanly"
    );
    println!(
        "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2}x | {} |",
        host.domains.len() - 1,
        host.attachments.len(),
        state.vdisks.len(),
        state
            .pools
            .iter()
            .flat_map(|p| &p.devices)
            .map(|d| d.extents)
            .sum::<u64>(),
        parse,
        observe,
        read_state,
        timings.diff.as_secs_f64(),
        timings.graph.as_secs_f64(),
        timings.safety.as_secs_f64(),
        render,
        reading + planning,
        (reading + planning) / reading,
        peak_rss_mib(),
    );
    eprintln!(
        "  {} steps, {} holders",
        plan.steps.len(),
        plan.safety.holders
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--measure") {
        measure(Path::new(&args[i + 1]));
        return;
    }
    println!(
        "| domains | attachments | vdisks | extents | parse | observe | state DB | diff | graph | safety | render | total (s) | total / reading | peak RSS (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for fraction in [0.1, 1.0] {
        let dir = tempfile::tempdir().unwrap();
        generate(&Scale::of(fraction), dir.path());
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--measure", dir.path().to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}
