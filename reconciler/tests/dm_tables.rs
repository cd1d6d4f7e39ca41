//! Device-mapper tables as golden files: a vdisk whose extents are scattered
//! over two pool devices, in allocation order, and the table `dmsetup
//! create` is given for it. `XENDISK_BLESS=1` rewrites the file. Where the
//! kernel has device-mapper (`/dev/mapper/control`), the table is also
//! loaded for real and read back.

mod common;

use std::path::Path;
use std::process::Command;

use xendisk::apply::realise::{DeviceMapper, RealiseRequest, Realiser, dm_table};
use xendisk::desired::{Expiry, Size};
use xendisk::extent::DevNum;
use xendisk::state::{DeviceGeometry, StateDb};

fn now() -> jiff::Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

/// A vdisk grown twice, with another vdisk in the way: three runs on two devices.
fn fragmented(
    db: &mut StateDb,
    first: (&str, DevNum),
    second: (&str, DevNum),
) -> Vec<xendisk::extent::SectorRange> {
    let mib = |n: u64| Size::from_sectors(n * 2048);
    for (path, device) in [first, second] {
        let geometry = DeviceGeometry {
            path: path.into(),
            device,
            sectors: 8 * 2048,
            on_disk: None,
        };
        db.add_pool_device("p", mib(1), &geometry, now()).unwrap();
    }
    db.create_vdisk("a", "p", mib(6), &Expiry::Never, now())
        .unwrap();
    db.create_vdisk("b", "p", mib(3), &Expiry::Never, now())
        .unwrap();
    db.grow_vdisk("a", mib(12), now()).unwrap();
    db.lookup("a", now()).unwrap()
}

#[test]
fn the_table_of_a_scattered_vdisk_matches_its_golden_file() {
    let mut db = StateDb::in_memory().unwrap();
    let extents = fragmented(
        &mut db,
        ("/dev/sdb1", DevNum::new(8, 17)),
        ("/dev/sdc1", DevNum::new(8, 33)),
    );
    let table = dm_table(&extents);
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/dm-tables/scattered.table");
    if std::env::var_os("XENDISK_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &table).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert_eq!(
        table, expected,
        "re-bless with XENDISK_BLESS=1 after a deliberate change"
    );
    assert!(
        table.lines().count() >= 3,
        "the fixture is not scattered:\n{table}"
    );
}

#[test]
fn device_mapper_loads_the_table_where_the_kernel_has_it() {
    if let Some(reason) = device_mapper_unavailable() {
        common::skipped("the dmsetup test", &reason);
        return;
    }
    if let Some(reason) = common::cannot_use_loop_devices() {
        common::skipped("the dmsetup test", &reason);
        return;
    }
    let _devices = common::real_devices();
    let dir = tempfile::tempdir().unwrap();
    let disk = common::PartitionedLoop::new(
        &dir.path().join("disk.img"),
        64 << 20,
        "label: dos\n,24MiB,L\n,24MiB,L\n",
        2,
    );
    let number = |partition: String| {
        let name = partition.trim_start_matches("/dev/").to_owned();
        let text = std::fs::read_to_string(format!("/sys/class/block/{name}/dev")).unwrap();
        (partition, text.trim().parse::<DevNum>().unwrap())
    };
    let (first, second) = (number(disk.partition(1)), number(disk.partition(2)));
    let mut db = StateDb::in_memory().unwrap();
    let extents = fragmented(&mut db, (&first.0, first.1), (&second.0, second.1));
    let request = RealiseRequest {
        vdisk: format!("dmtest-{}", std::process::id()),
        extents: extents.clone(),
        pool_devices: Default::default(),
    };
    let path = DeviceMapper.realise(&request).unwrap();
    let loaded = common::run("dmsetup", &["table", &format!("xendisk-{}", request.vdisk)]);
    DeviceMapper.unrealise(&request).unwrap();
    assert_eq!(format!("{loaded}\n"), dm_table(&extents), "{path}");
    assert!(!Path::new(&path).exists());
}

/// Why device-mapper cannot be used here, if it cannot. The control node
/// is not enough: a container may have `/dev/mapper/control` from its
/// host while the kernel it runs on has no device-mapper driver, and only
/// the driver answering `dmsetup version` says it is there.
fn device_mapper_unavailable() -> Option<String> {
    if !Path::new("/dev/mapper/control").exists() {
        return Some("this kernel has no device-mapper (/dev/mapper/control is missing)".into());
    }
    match Command::new("dmsetup").arg("version").output() {
        Err(error) => Some(format!("dmsetup cannot be run ({error})")),
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout);
            if output.status.success() && text.contains("Driver version") {
                None
            } else {
                Some(format!(
                    "/dev/mapper/control exists but the device-mapper driver does not answer \
                     (`dmsetup version`: {})",
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
        }
    }
}
