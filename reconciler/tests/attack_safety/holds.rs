//! Attacks xendisk holds.

use std::path::Path;

use crate::attack::*;
use crate::common;

/// Claim 1/2/3/4: a pool partition handed to a guest rw as `file:` (the
/// node itself, or a link to it), at every sharing level and with `w!`.
#[test]
fn a_pool_partition_given_to_a_guest_as_a_file_is_refused() {
    let Some(_devices) = loops_available("a_pool_partition_given_to_a_guest_as_a_file_is_refused")
    else {
        return;
    };
    let host = Host::new("");
    let disk = disk(&host);
    let p1 = disk.partition(1);
    let link = host.path("link-to-p1");
    std::os::unix::fs::symlink(&p1, &link).unwrap();
    let link = link.to_str().unwrap();
    let base = format!("{}{}", settings("exclusive"), pool("a", &[&p1]));
    host.applied(&host.file("pool.toml", &base), &[]);
    let markers = [
        Marker::write(&p1, 0, "p1 start"),
        Marker::write(&p1, 9 << 20, "p1 middle"),
    ];
    for sharing in ["exclusive", "single-writer", "unsafe"] {
        for (source, mode) in [
            (format!("file:{p1}"), "w"),
            (format!("file:{link}"), "w"),
            (format!("file:{link}"), "w!"),
            (format!("phy:{p1}"), "w!"),
        ] {
            let desired = format!(
                "{}{}{}",
                settings(sharing),
                pool("a", &[&p1]),
                disks("guest1", &[&disk_line("xvda", &source, mode)])
            );
            host.assert_refused(
                &host.file("attack.toml", &desired),
                &[],
                &[&markers[0], &markers[1]],
            );
        }
    }
}

/// Claim 3: a whole disk in one pool and its partition in another (either
/// way round), or a loop device over a pool partition, then a vdisk there.
#[test]
fn a_disk_and_its_partition_never_sit_in_two_pools() {
    let Some(_devices) = loops_available("a_disk_and_its_partition_never_sit_in_two_pools") else {
        return;
    };
    let host = Host::new("");
    let disk = disk(&host);
    let (p1, p2) = (disk.partition(1), disk.partition(2));
    let over_p1 = ExtraLoop::new(&[&p1]);
    let markers = [
        Marker::write(&p1, 0, "p1"),
        Marker::write(&p2, 0, "p2"),
        Marker::write(&disk.device, 512, "disk"),
    ];
    let all: Vec<&Marker> = markers.iter().collect();
    // The partition first, then the disk (and a loop over the partition).
    host.applied(
        &host.file(
            "p1.toml",
            &format!("{}{}", settings("exclusive"), pool("a", &[&p1])),
        ),
        &[],
    );
    for second in [disk.device.as_str(), over_p1.0.as_str()] {
        for same_pool in [false, true] {
            let pools = if same_pool {
                pool("a", &[&p1, second])
            } else {
                format!("{}{}", pool("a", &[&p1]), pool("b", &[second]))
            };
            let target = if same_pool { "a" } else { "b" };
            let desired = format!(
                "{}{}{}",
                settings("unsafe"),
                pools,
                vdisk("v", target, "8MiB")
            );
            host.assert_refused(&host.file("attack.toml", &desired), &[], &all);
        }
    }
    // The disk first, then its partition.
    let host = Host::new("");
    host.applied(
        &host.file(
            "whole.toml",
            &format!("{}{}", settings("exclusive"), pool("a", &[&disk.device])),
        ),
        &[],
    );
    let desired = format!(
        "{}{}{}{}",
        settings("exclusive"),
        pool("a", &[&disk.device]),
        pool("b", &[&p2]),
        vdisk("v", "b", "4MiB")
    );
    host.assert_refused(&host.file("attack.toml", &desired), &[], &all);
}

/// Claim 1: a guest holds a partition rw through a qdisk, vbd3 or vbd
/// backend whose `params` is spelled with driver and format prefixes, or a
/// link, with no `physical-device`: adding that partition to a pool (and a
/// vdisk, whose scrub would zero it) is refused.
#[test]
fn a_guests_partition_is_found_whatever_the_params_spelling() {
    let Some(_devices) =
        loops_available("a_guests_partition_is_found_whatever_the_params_spelling")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    let link = scratch.path("srv-x");
    std::os::unix::fs::symlink(&p1, &link).unwrap();
    let link = link.to_str().unwrap().to_owned();
    let relative_dev = format!(
        "/dev/disk/../{}",
        Path::new(&p1).file_name().unwrap().to_str().unwrap()
    );
    let spellings = [
        ("qdisk", format!("aio:{p1}")),
        ("qdisk", format!("raw:{p1}")),
        ("qdisk", format!("qcow2:{link}")),
        ("qdisk", link.clone()),
        ("qdisk", format!("file:{link}")),
        ("qdisk", relative_dev),
        ("vbd3", format!("tap2:tapdisk:aio:{link}")),
        ("vbd3", format!("vhd:{p1}")),
        ("vbd", format!("tap:aio:{p1}")),
        ("vbd", format!("phy:{link}")),
    ];
    let marker = Marker::write(&p1, 0, "guest data");
    for (kind, params) in spellings {
        let host = Host::new(&backend(kind, 4, 51728, &params, "w", &[]));
        let desired = pool_and_vdisk("unsafe", &p1, "4MiB");
        let before = host.everything();
        let plan = host.run(&["plan", &host.file("attack.toml", &desired)]);
        assert_eq!(
            plan.status.code(),
            Some(3),
            "{kind} {params}: {}",
            text(&plan)
        );
        host.assert_refused(&host.path("attack.toml").to_string_lossy(), &[], &[&marker]);
        assert_eq!(host.everything(), before);
    }
}

/// Claim 2: an image loop-mounted rw in dom0 cannot go to a guest, rw or
/// even ro (dom0 writes it), whatever the spelling of its path.
#[test]
fn a_loop_mounted_image_cannot_go_to_a_guest() {
    let Some(_devices) = loops_available("a_loop_mounted_image_cannot_go_to_a_guest") else {
        return;
    };
    let host = Host::new("");
    let image = host.path("img.ext4");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let image = image.to_str().unwrap().to_owned();
    common::run("mkfs.ext4", &["-q", "-F", &image]);
    let looped = ExtraLoop::new(&[&image]);
    let _mounted = Mounted::new(&looped.0, host.path("mnt"));
    let link = host.path("img-link");
    std::os::unix::fs::symlink(&image, &link).unwrap();
    let dir = host.dir.path().to_str().unwrap().to_owned();
    for source in [
        image.clone(),
        link.to_str().unwrap().to_owned(),
        format!("{dir}/./img.ext4"),
        format!("{dir}//img.ext4"),
        format!("{dir}/mnt/../img.ext4"),
    ] {
        for mode in ["w", "r"] {
            let desired = format!(
                "{}{}",
                settings("exclusive"),
                disks(
                    "guest1",
                    &[&disk_line("xvda", &format!("file:{source}"), mode)]
                )
            );
            host.assert_refused(&host.file("attack.toml", &desired), &[], &[]);
        }
    }
}

/// Claim 6: a backend being torn down (online = 0, Closing, Closed) is not
/// attached (the same attachment is planned again, never "no changes") and
/// still holds its partition (a pool add is refused).
#[test]
fn backends_being_torn_down_hold_their_sectors_and_are_not_attached() {
    let Some(_devices) =
        loops_available("backends_being_torn_down_hold_their_sectors_and_are_not_attached")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p2 = disk.partition(2);
    let marker = Marker::write(&p2, 0, "closing guest");
    for (key, value) in [("online", "0"), ("state", "5"), ("state", "6")] {
        for physical in [true, false] {
            let number = physical_device(&p2);
            let mut extra = vec![(key, value)];
            if physical {
                extra.push(("physical-device", number.as_str()));
            }
            let host = Host::new(&backend("vbd", 4, 51728, &p2, "w", &extra));
            let same = format!(
                "{}{}",
                settings("exclusive"),
                disks("guest1", &[&disk_line("xvdb", &format!("phy:{p2}"), "w")])
            );
            let plan = host.run(&["plan", &host.file("same.toml", &same)]);
            assert_exit(&plan, 2);
            assert!(
                text(&plan).contains("finish detaching xvdb")
                    && text(&plan).contains("attach xvdb"),
                "{key}={value}: {}",
                text(&plan)
            );
            let desired = pool_and_vdisk("unsafe", &p2, "4MiB");
            host.assert_refused(&host.file("attack.toml", &desired), &[], &[&marker]);
        }
    }
}

/// Claim 5: the detach of a guest's partition and the pool add (and scrub)
/// of that partition run in that order at --parallelism 4: the plan says
/// so (`depends_on`, `waits_for_sharing`) and the journal shows it.
#[test]
fn a_detach_then_pool_add_of_the_same_partition_is_ordered_in_parallel() {
    let Some(_devices) =
        loops_available("a_detach_then_pool_add_of_the_same_partition_is_ordered_in_parallel")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let (p1, p2) = (disk.partition(1), disk.partition(2));
    let mut backends = held_rw(4, &p2);
    backends.push_str(&backend("vbd", 5, 51728, &format!("phy:{p1}"), "w", &[]));
    let host = Host::new(&backends);
    let desired = format!(
        "{}{}{}{}{}",
        settings("exclusive"),
        pool("a", &[&p2, &p1]),
        vdisk("v", "a", "40MiB"),
        disks("guest1", &[]),
        disks("guest2", &[]),
    );
    let file = host.file("desired.toml", &desired);
    let decimal = |path: &str| {
        let name = Path::new(path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        std::fs::read_to_string(format!("/sys/class/block/{name}/dev"))
            .unwrap()
            .trim()
            .to_owned()
    };
    // The guest holding each partition, by its device number.
    let holder_of = |device: &str| -> u64 {
        if device == decimal(&p2) {
            4
        } else {
            assert_eq!(device, decimal(&p1));
            5
        }
    };
    let devices_of = |op: &serde_json::Value| -> Vec<String> {
        match op["op"].as_str().unwrap() {
            "add-pool-device" => vec![op["device"].as_str().unwrap().to_owned()],
            _ => op["extents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["device"].as_str().unwrap().to_owned())
                .collect(),
        }
    };
    let plan = host.json(&["plan", &file, "--json"]);
    let steps = plan["steps"].as_array().unwrap();
    let by_id = |id: u64| steps.iter().find(|s| s["id"] == id).unwrap();
    let detach_of = |domid: u64| {
        steps
            .iter()
            .find(|s| s["op"] == "detach" && s["domid"] == domid)
            .unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    let ancestors = |step: &serde_json::Value| {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo: Vec<u64> = vec![step["id"].as_u64().unwrap()];
        while let Some(id) = todo.pop() {
            for d in by_id(id)["depends_on"].as_array().unwrap() {
                if seen.insert(d.as_u64().unwrap()) {
                    todo.push(d.as_u64().unwrap());
                }
            }
        }
        seen
    };
    let writers: Vec<&serde_json::Value> = steps
        .iter()
        .filter(|s| s["op"] == "add-pool-device" || s["op"] == "scrub")
        .collect();
    assert!(writers.len() >= 3, "{plan}");
    for step in &writers {
        let before = ancestors(step);
        for device in devices_of(step) {
            assert!(
                before.contains(&detach_of(holder_of(&device))),
                "{step} has no dependency path from the detach of {device}"
            );
        }
    }
    assert!(
        writers
            .iter()
            .any(|s| !s["waits_for_sharing"].as_array().is_none_or(Vec::is_empty)),
        "no step says it waits for sharing: {plan}"
    );
    host.applied(&file, &["--parallelism", "4"]);
    let runs = host.runs();
    let journal = runs[0]["steps"].as_array().unwrap();
    let released = |domid: u64| {
        let step = journal
            .iter()
            .find(|s| s["op"]["op"] == "detach" && s["op"]["domid"] == domid)
            .unwrap();
        time(step, "finished_at")
    };
    for step in journal
        .iter()
        .filter(|s| s["op"]["op"] == "add-pool-device" || s["op"]["op"] == "scrub")
    {
        for device in devices_of(&step["op"]) {
            let free = released(holder_of(&device));
            assert!(
                time(step, "started_at") >= free,
                "{step} started before the guest let go of {device} ({free})"
            );
        }
    }
    assert_exit(&host.run(&["plan", &file]), 0);
}

/// Claim 7: `file:` paths with `:`, spaces, commas, `=`, quotes, newlines
/// and `..` converge.
#[test]
fn odd_file_paths_round_trip() {
    let _devices = common::real_devices();
    let host = Host::new("");
    let dir = host.path("im g");
    std::fs::create_dir(&dir).unwrap();
    let names = [
        "a:b.img",
        "c,d.img",
        "e=f.img",
        "g h.img",
        "q\"t.img",
        "n\nl.img",
        "aio:x.img",
        "phy:",
    ];
    let mut lines = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path = dir.join(name);
        std::fs::write(&path, b"image").unwrap();
        let toml_path = toml::Value::String(format!("file:{}", path.to_str().unwrap()));
        let vdev = format!("xvd{}", (b'a' + i as u8) as char);
        let mode = if i % 2 == 0 { "w" } else { "r" };
        lines.push(format!(
            "{vdev} = {{ source = {toml_path}, mode = \"{mode}\" }}"
        ));
    }
    let dotted = toml::Value::String(format!("file:{}/sub/../a:b.img", dir.to_str().unwrap()));
    lines.push(format!("xvdz = {{ source = {dotted}, mode = \"r\" }}"));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let file = host.file(
        "desired.toml",
        &format!("{}{}", settings("single-writer"), disks("guest1", &refs)),
    );
    assert_exit(&host.run(&["apply", &file, "--yes", "--no-devices"]), 0);
    assert_exit(&host.run(&["plan", &file]), 0);
}

/// Claim 1: a holder that cannot be resolved (a device that is not there,
/// no `physical-device` yet) makes a pool add a refusal, and is reported.
#[test]
fn an_unresolvable_device_holder_refuses_writes() {
    let Some(_devices) = loops_available("an_unresolvable_device_holder_refuses_writes") else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    let marker = Marker::write(&p1, 0, "maybe held");
    for (kind, params) in [
        ("vbd", "/dev/xendisk-attack-missing"),
        ("qdisk", "aio:/dev/xendisk-attack-missing"),
        ("vbd3", "tap2:tapdisk:aio:/dev/xendisk-attack-missing"),
    ] {
        let host = Host::new(&backend(kind, 4, 51728, params, "w", &[]));
        let desired = format!("{}{}", settings("exclusive"), pool("a", &[&p1]));
        let file = host.file("attack.toml", &desired);
        let plan = host.run(&["plan", &file]);
        assert!(
            text(&plan).contains("cannot tell which disk"),
            "{params}: {}",
            text(&plan)
        );
        host.assert_refused(&file, &[], &[&marker]);
    }
}
