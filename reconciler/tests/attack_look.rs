//! Attacks on the look apply takes right before each step that writes
//! sectors: a holder that appears mid-apply (after the plan, after a clean
//! look, between steps of a parallel run) must stop the step (exit 1,
//! "appeared since the plan was made"), and the victim's data must survive
//! byte for byte.
//!
//! Each attack runs an apply that adds partitions 1 and 2 of a loop disk
//! to a pool, partition 2 only once guest1 (which holds it at plan time)
//! has let go of it, which takes the guest 3 s: the first steps look at a
//! clean host, and the holder comes 1.5 s in, before partition 2's add and
//! scrub. An attack that breaks the claim is `#[ignore]`d and asserts it:
//! `cargo test --test attack_look -- --ignored`.

#[path = "attack/mod.rs"]
mod attack;
#[path = "common/mod.rs"]
mod common;

use std::any::Any;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use attack::*;
use xendisk::xs_client::Change;

const GUEST2: &str = "/local/domain/0/backend/vbd/5/51712";

/// Dump lines of a file image `image`, held rw by guest2 (domid 5) as
/// xvda through `kind`: a holder harmless to the pool.
fn harmless(kind: &str, image: &str) -> String {
    backend(kind, 5, 51712, image, "w", &[])
}

/// The nodes of a backend giving `device` rw to guest2 as xvda.
fn nodes(device: &str, kind: &str) -> Vec<(&'static str, String)> {
    let mut nodes = vec![
        ("frontend", "/local/domain/5/device/vbd/51712".to_owned()),
        ("frontend-id", "5".to_owned()),
        ("params", device.to_owned()),
        ("mode", "w".to_owned()),
        ("type", if kind == "vbd" { "phy" } else { kind }.to_owned()),
        ("online", "1".to_owned()),
        ("state", "4".to_owned()),
    ];
    if kind == "vbd" {
        nodes.push(("physical-device", physical_device(device)));
    }
    nodes
}

struct Scene {
    host: Host,
    _scratch: Host,
    _disk: common::PartitionedLoop,
    p1: String,
    p2: String,
    image: String,
}

/// guest1 holds partition 2 (and takes 3 s to let go of it); `backends`
/// (given partition 2 and a harmless image) are there too.
fn scene(backends: impl FnOnce(&str, &str) -> String) -> Scene {
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let (p1, p2) = (disk.partition(1), disk.partition(2));
    let image = scratch.path("harmless.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let image = image.display().to_string();
    let seeded = format!(
        "{}{}",
        backend("vbd", 4, 51728, &p2, "w", &[]),
        backends(&p2, &image)
    );
    let host = Host::with_close_delay(&seeded, Duration::from_secs(3));
    assert_exit(&host.run(&["init"]), 0);
    Scene {
        host,
        _scratch: scratch,
        _disk: disk,
        p1,
        p2,
        image,
    }
}

impl Scene {
    /// Pool `a` of partitions 1 and 2, a 20MiB vdisk (4MiB of it on
    /// partition 2, scrubbed before it is handed over), guest1 managed with
    /// no disk (its hold on partition 2 is detached).
    fn desired(&self) -> String {
        format!(
            "{}{}{}{}",
            settings("exclusive"),
            pool("a", &[&self.p1, &self.p2]),
            vdisk("v", "a", "20MiB"),
            disks("guest1", &[])
        )
    }

    /// Applies `desired` at `parallelism`; `inject` runs 1.5 s in, and
    /// what it returns lives until the apply is over.
    fn apply_with(
        &self,
        desired: &str,
        parallelism: &str,
        inject: impl FnOnce(&Scene) -> Box<dyn Any>,
    ) -> (Output, Box<dyn Any>) {
        let file = self.host.file("desired.toml", desired);
        let apply = self
            .host
            .command(&["apply", &file, "--yes", "--parallelism", parallelism, "-v"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let guard = inject(self);
        let output = apply.wait_with_output().unwrap();
        (output, guard)
    }
}

/// guest2's data, written into partition 2 once it holds it.
fn victim(p2: &str) -> Vec<Marker> {
    vec![
        Marker::write(p2, 0, "guest2 data"),
        Marker::write(p2, 8 << 20, "guest2 data further in"),
    ]
}

fn assert_refused_mid_apply(output: &Output, markers: &[Marker]) {
    // The apply's log, to see which look ran before which step.
    eprintln!("exit {:?}\n{}", output.status.code(), text(output));
    for marker in markers {
        marker.assert_intact();
    }
    assert_exit(output, 1);
    assert!(
        text(output).contains("appeared since the plan was made"),
        "{}",
        text(output)
    );
}

/// Runs the scene with the injection, then writes guest2's data, checks it.
fn attack_xenstore(
    backends: impl FnOnce(&str, &str) -> String,
    parallelism: &str,
    inject: impl FnOnce(&Scene),
) {
    let scene = scene(backends);
    let desired = scene.desired();
    let mut markers = Vec::new();
    let (output, _guard) = scene.apply_with(&desired, parallelism, |scene| {
        inject(scene);
        markers = victim(&scene.p2);
        Box::new(())
    });
    assert_refused_mid_apply(&output, &markers);
}

/// A new backend, written node by node, for each kind, at parallelism 1
/// and 4 (the baseline the others build on).
#[test]
fn a_new_backend_node_by_node_of_each_kind() {
    let Some(_devices) = loops_available("a_new_backend_node_by_node_of_each_kind") else {
        return;
    };
    for kind in ["vbd", "qdisk", "vbd3"] {
        for parallelism in ["1", "4"] {
            attack_xenstore(
                |_, _| String::new(),
                parallelism,
                |scene| {
                    let mut xs = scene.host.xenstore();
                    let base = format!("/local/domain/0/backend/{kind}/5/51712");
                    for (key, value) in nodes(&scene.p2, kind) {
                        xs.write(0, &format!("{base}/{key}"), &value).unwrap();
                    }
                },
            );
        }
    }
}

/// A whole backend directory made in one transaction (mkdir, then its
/// nodes), as libxl does.
#[test]
fn a_new_backend_made_in_one_transaction() {
    let Some(_devices) = loops_available("a_new_backend_made_in_one_transaction") else {
        return;
    };
    for kind in ["vbd", "qdisk"] {
        attack_xenstore(
            |_, _| String::new(),
            "4",
            |scene| {
                let mut xs = scene.host.xenstore();
                let base = format!("/local/domain/0/backend/{kind}/5/51712");
                let mut changes = vec![Change::Mkdir(base.clone())];
                for (key, value) in nodes(&scene.p2, kind) {
                    changes.push(Change::Write(format!("{base}/{key}"), value));
                }
                xs.transaction("attach", |xs, tx| xs.change_many(tx, &changes))
                    .unwrap();
            },
        );
    }
}

/// guest2 holds a harmless image at plan time (a clean look for every
/// step before partition 2's); another toolstack re-writes that backend's
/// `params` (and `physical-device`) to partition 2.
#[test]
fn an_existing_backend_whose_params_are_rewritten() {
    let Some(_devices) = loops_available("an_existing_backend_whose_params_are_rewritten") else {
        return;
    };
    attack_xenstore(
        |_, image| harmless("vbd", image),
        "4",
        |scene| {
            let mut xs = scene.host.xenstore();
            xs.write(0, &format!("{GUEST2}/params"), &scene.p2).unwrap();
            xs.write(
                0,
                &format!("{GUEST2}/physical-device"),
                &physical_device(&scene.p2),
            )
            .unwrap();
        },
    );
}

/// Only `physical-device` of guest2's harmless backend is re-written (to
/// partition 2's number): blkback opens what `physical-device` names.
#[test]
fn an_existing_backend_whose_physical_device_alone_is_rewritten() {
    let Some(_devices) =
        loops_available("an_existing_backend_whose_physical_device_alone_is_rewritten")
    else {
        return;
    };
    // A harmless blkback backend over a loop device of its own.
    let scratch = Host::new("");
    let spare_image = scratch.path("spare.img");
    std::fs::write(&spare_image, vec![0u8; 1 << 20]).unwrap();
    let spare = ExtraLoop::new(&[spare_image.to_str().unwrap()]);
    let spare_device = spare.0.clone();
    attack_xenstore(
        |_, _| {
            backend(
                "vbd",
                5,
                51712,
                &spare_device,
                "w",
                &[("physical-device", &physical_device(&spare_device))],
            )
        },
        "4",
        |scene| {
            let mut xs = scene.host.xenstore();
            xs.write(
                0,
                &format!("{GUEST2}/physical-device"),
                &physical_device(&scene.p2),
            )
            .unwrap();
        },
    );
}

/// guest2's harmless backend is removed and re-created at the same path
/// over partition 2, in one transaction and in two.
#[test]
fn an_existing_backend_removed_and_recreated() {
    let Some(_devices) = loops_available("an_existing_backend_removed_and_recreated") else {
        return;
    };
    for in_one in [true, false] {
        attack_xenstore(
            |_, image| harmless("vbd", image),
            "4",
            |scene| {
                let mut xs = scene.host.xenstore();
                let mut changes = vec![Change::Rm(GUEST2.to_owned())];
                let mut again = Vec::new();
                for (key, value) in nodes(&scene.p2, "vbd") {
                    again.push(Change::Write(format!("{GUEST2}/{key}"), value));
                }
                if in_one {
                    changes.extend(again);
                    xs.transaction("move", |xs, tx| xs.change_many(tx, &changes))
                        .unwrap();
                } else {
                    xs.change_many(0, &changes).unwrap();
                    xs.change_many(0, &again).unwrap();
                }
            },
        );
    }
}

/// An incomplete backend (no `params` yet: a toolstack writing node by
/// node, paused) is there at plan time and through the clean looks; its
/// `params` and `physical-device` come mid-apply, naming partition 2.
#[test]
fn an_incomplete_backend_completed_mid_apply() {
    let Some(_devices) = loops_available("an_incomplete_backend_completed_mid_apply") else {
        return;
    };
    attack_xenstore(
        |_, _| {
            let mut lines = String::new();
            for (key, value) in [
                ("frontend", "/local/domain/5/device/vbd/51712"),
                ("frontend-id", "5"),
                ("mode", "w"),
                ("type", "phy"),
                ("online", "1"),
                ("state", "1"),
            ] {
                lines.push_str(&format!("{GUEST2}/{key} = \"{value}\"\n"));
            }
            lines
        },
        "4",
        |scene| {
            let mut xs = scene.host.xenstore();
            xs.write(0, &format!("{GUEST2}/params"), &scene.p2).unwrap();
            xs.write(
                0,
                &format!("{GUEST2}/physical-device"),
                &physical_device(&scene.p2),
            )
            .unwrap();
        },
    );
}

/// The detach that frees partition 2 "did not really happen": the moment
/// xendisk removes guest1's backend, another toolstack puts it back (same
/// path, same partition), and guest1 writes its data.
#[test]
fn a_detached_backend_put_back_at_once() {
    let Some(_devices) = loops_available("a_detached_backend_put_back_at_once") else {
        return;
    };
    let scene = scene(|_, _| String::new());
    let desired = scene.desired();
    let base = "/local/domain/0/backend/vbd/4/51728";
    let mut markers = Vec::new();
    let (output, _guard) = scene.apply_with(&desired, "4", |scene| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while scene.host.simulator.store().exists(base) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut xs = scene.host.xenstore();
        let mut changes = Vec::new();
        for (key, value) in [
            ("frontend", "/local/domain/4/device/vbd/51728".to_owned()),
            ("frontend-id", "4".to_owned()),
            ("params", scene.p2.clone()),
            ("mode", "w".to_owned()),
            ("type", "phy".to_owned()),
            ("online", "1".to_owned()),
            ("state", "4".to_owned()),
            ("physical-device", physical_device(&scene.p2)),
        ] {
            changes.push(Change::Write(format!("{base}/{key}"), value));
        }
        xs.transaction("again", |xs, tx| xs.change_many(tx, &changes))
            .unwrap();
        markers = victim(&scene.p2);
        Box::new(())
    });
    assert_refused_mid_apply(&output, &markers);
}

/// A loop device over partition 2 is made mid-apply (a dom0 holder no
/// xenstore watch sees), and its user writes through it.
#[test]
#[ignore = "broken: a loop device made mid-apply is not looked for (nor is one there at plan time); the scrub zeroes data written through it"]
fn a_loop_over_the_partition_made_mid_apply() {
    let Some(_devices) = loops_available("a_loop_over_the_partition_made_mid_apply") else {
        return;
    };
    let scene = scene(|_, _| String::new());
    let desired = scene.desired();
    let mut markers = Vec::new();
    let (output, _guard) = scene.apply_with(&desired, "4", |scene| {
        let over = ExtraLoop::new(&[&scene.p2]);
        markers = vec![Marker::write(&over.0, 0, "data through a loop")];
        markers.push(Marker::write(&over.0, 8 << 20, "more through a loop"));
        Box::new(over)
    });
    assert_refused_mid_apply(&output, &markers);
}

/// dom0 mounts partition 2 mid-apply (its filesystem made beforehand).
#[test]
fn a_mount_of_the_partition_made_mid_apply() {
    let Some(_devices) = loops_available("a_mount_of_the_partition_made_mid_apply") else {
        return;
    };
    let scene = scene(|_, _| String::new());
    common::run("mkfs.ext4", &["-q", "-F", &scene.p2]);
    let desired = scene.desired();
    let superblock = Marker::ext4_magic(&scene.p2);
    superblock.assert_intact();
    let (output, guard) = scene.apply_with(&desired, "4", |scene| {
        Box::new(Mounted::new(&scene.p2, scene.host.path("mnt")))
    });
    drop(guard);
    assert_refused_mid_apply(&output, &[superblock]);
}

/// dom0 swaps on a loop over partition 2 made mid-apply.
#[test]
fn swap_on_a_loop_over_the_partition_made_mid_apply() {
    let Some(_devices) = loops_available("swap_on_a_loop_over_the_partition_made_mid_apply") else {
        return;
    };
    let scene = scene(|_, _| String::new());
    let desired = scene.desired();
    let mut markers = Vec::new();
    struct Swap(ExtraLoop);
    impl Drop for Swap {
        fn drop(&mut self) {
            let _ = std::process::Command::new("swapoff")
                .arg(&self.0.0)
                .status();
        }
    }
    let (output, guard) = scene.apply_with(&desired, "4", |scene| {
        let over = ExtraLoop::new(&[&scene.p2]);
        common::run("mkswap", &[&over.0]);
        common::run("swapon", &[&over.0]);
        // mkswap's signature is in the last bytes of its first page.
        markers = vec![Marker {
            path: scene.p2.clone(),
            offset: 4096 - 10,
            bytes: b"SWAPSPACE2".to_vec(),
        }];
        Box::new(Swap(over))
    });
    drop(guard);
    assert_refused_mid_apply(&output, &markers);
}

/// A writable attach: guest2 is to get partition 2 once guest1 lets go of
/// it; meanwhile another toolstack gives partition 2 rw to guest2 at
/// another device id. The attach must be refused, and not be made.
#[test]
fn a_writable_attach_after_a_holder_appeared() {
    let Some(_devices) = loops_available("a_writable_attach_after_a_holder_appeared") else {
        return;
    };
    let scene = scene(|_, _| String::new());
    let desired = format!(
        "{}{}{}",
        settings("exclusive"),
        disks("guest1", &[]),
        disks(
            "guest2",
            &[&disk_line("xvdb", &format!("phy:{}", scene.p2), "w")]
        )
    );
    let (output, _guard) = scene.apply_with(&desired, "4", |scene| {
        let mut xs = scene.host.xenstore();
        for (key, value) in nodes(&scene.p2, "vbd") {
            xs.write(0, &format!("{GUEST2}/{key}"), &value).unwrap();
        }
        Box::new(())
    });
    let attached = scene
        .host
        .simulator
        .store()
        .exists("/local/domain/0/backend/vbd/5/51728");
    assert_refused_mid_apply(&output, &[]);
    assert!(!attached, "the attach was made");
    let _ = &scene.image;
}

/// A backend over partition 2 appears, is removed, and appears again
/// (changed, changed back, changed again) before the next look.
#[test]
fn a_backend_that_comes_goes_and_comes_back() {
    let Some(_devices) = loops_available("a_backend_that_comes_goes_and_comes_back") else {
        return;
    };
    attack_xenstore(
        |_, _| String::new(),
        "4",
        |scene| {
            let mut xs = scene.host.xenstore();
            for round in 0..3 {
                for (key, value) in nodes(&scene.p2, "vbd") {
                    xs.write(0, &format!("{GUEST2}/{key}"), &value).unwrap();
                }
                if round < 2 {
                    xs.rm(0, GUEST2).unwrap();
                }
            }
        },
    );
}

/// A new backend at directories blkback serves but that are not plain
/// numbers (a device id spelt as a name or in hex, a domid as a name).
#[test]
fn a_new_backend_at_an_unusual_path() {
    let Some(_devices) = loops_available("a_new_backend_at_an_unusual_path") else {
        return;
    };
    for (kind, dom_dir, dev_dir) in [
        ("vbd", "5", "xvda"),
        ("vbd", "guest2", "51712"),
        ("vbd", "5", "0xca00"),
        ("qdisk", "05", "51712"),
    ] {
        attack_xenstore(
            |_, _| String::new(),
            "4",
            |scene| {
                let mut xs = scene.host.xenstore();
                let base = format!("/local/domain/0/backend/{kind}/{dom_dir}/{dev_dir}");
                for (key, value) in nodes(&scene.p2, kind) {
                    xs.write(0, &format!("{base}/{key}"), &value).unwrap();
                }
            },
        );
    }
}

/// Moves loop device `device` to `offset` (bytes) of its backing device
/// while it is bound (LOOP_SET_STATUS64, as the kernel allows).
fn move_loop(device: &str, offset: u64) {
    use std::os::fd::AsRawFd;
    const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
    const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(device)
        .unwrap();
    // struct loop_info64: lo_offset at byte 24.
    let mut info = [0u8; 232];
    let fd = file.as_raw_fd();
    assert_eq!(
        unsafe { libc::ioctl(fd, LOOP_GET_STATUS64 as _, info.as_mut_ptr()) },
        0
    );
    info[24..32].copy_from_slice(&offset.to_ne_bytes());
    assert_eq!(
        unsafe { libc::ioctl(fd, LOOP_SET_STATUS64 as _, info.as_ptr()) },
        0,
        "{}",
        std::io::Error::last_os_error()
    );
}

/// guest2 holds (rw, through blkback) a loop device over the disk's first
/// 512KiB, before any partition: harmless to the pool, at plan time and
/// for the clean looks. Mid-apply the loop is moved onto partition 2
/// (same device, same xenstore nodes), and guest2 writes through it.
/// (Read back through partition 2: the loop device's own page cache still
/// shows what was written through it.)
#[test]
fn a_held_loop_moved_onto_the_partition_mid_apply() {
    let Some(_devices) = loops_available("a_held_loop_moved_onto_the_partition_mid_apply") else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let (p1, p2) = (disk.partition(1), disk.partition(2));
    let held = ExtraLoop::new(&["-o", "0", "--sizelimit", "524288", &disk.device]);
    let seeded = format!(
        "{}{}",
        backend("vbd", 4, 51728, &p2, "w", &[]),
        backend(
            "vbd",
            5,
            51712,
            &held.0,
            "w",
            &[("physical-device", &physical_device(&held.0))]
        )
    );
    let host = Host::with_close_delay(&seeded, Duration::from_secs(3));
    assert_exit(&host.run(&["init"]), 0);
    let desired = format!(
        "{}{}{}{}",
        settings("exclusive"),
        pool("a", &[&p1, &p2]),
        vdisk("v", "a", "20MiB"),
        disks("guest1", &[])
    );
    let file = host.file("desired.toml", &desired);
    let apply = host
        .command(&["apply", &file, "--yes", "--parallelism", "4", "-v"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    move_loop(&held.0, 34816 * 512);
    let marker = Marker::write(&held.0, 0, "guest2 data through its moved loop");
    let on_p2 = Marker {
        path: p2.clone(),
        offset: 0,
        bytes: marker.bytes.clone(),
    };
    on_p2.assert_intact();
    let output = apply.wait_with_output().unwrap();
    assert_refused_mid_apply(&output, &[marker, on_p2]);
}

/// Two looks after one change: guest1 holds partition 2 and guest2
/// partition 1, both let go after 3 s, then both partitions are added (in
/// parallel, or one after the other). A backend of guest3 over one of
/// them comes 1.5 s in: the first look after it, for the other partition,
/// must not take the news as dealt with.
#[test]
fn one_change_seen_by_the_look_of_another_step_first() {
    let Some(_devices) = loops_available("one_change_seen_by_the_look_of_another_step_first")
    else {
        return;
    };
    for parallelism in ["1", "4"] {
        for victim_number in [1, 2] {
            let scratch = Host::new("");
            let disk = disk(&scratch);
            let (p1, p2) = (disk.partition(1), disk.partition(2));
            let seeded = format!(
                "/local/domain/6/name = \"guest3\"\n{}{}",
                backend("vbd", 4, 51728, &p2, "w", &[]),
                backend("vbd", 5, 51728, &p1, "w", &[])
            );
            let host = Host::with_close_delay(&seeded, Duration::from_secs(3));
            assert_exit(&host.run(&["init"]), 0);
            let desired = format!(
                "{}{}{}{}{}",
                settings("exclusive"),
                pool("a", &[&p1, &p2]),
                vdisk("v", "a", "20MiB"),
                disks("guest1", &[]),
                disks("guest2", &[])
            );
            let file = host.file("desired.toml", &desired);
            let apply = host
                .command(&["apply", &file, "--yes", "--parallelism", parallelism, "-v"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            let victim_device = if victim_number == 1 { &p1 } else { &p2 };
            let mut xs = host.xenstore();
            let base = "/local/domain/0/backend/vbd/6/51712";
            for (key, value) in nodes(victim_device, "vbd") {
                let value = match key {
                    "frontend" => "/local/domain/6/device/vbd/51712".to_owned(),
                    "frontend-id" => "6".to_owned(),
                    _ => value,
                };
                xs.write(0, &format!("{base}/{key}"), &value).unwrap();
            }
            let markers = victim(victim_device);
            let output = apply.wait_with_output().unwrap();
            assert_refused_mid_apply(&output, &markers);
        }
    }
}

/// A loop device over partition 2 made mid-apply, then used: mounted by
/// dom0, or given to guest2 by another toolstack. (Made and left alone,
/// it is not seen: `a_loop_over_the_partition_made_mid_apply`.)
#[test]
fn a_loop_over_the_partition_made_and_used_mid_apply() {
    let Some(_devices) = loops_available("a_loop_over_the_partition_made_and_used_mid_apply")
    else {
        return;
    };
    for mounted in [true, false] {
        let scene = scene(|_, _| String::new());
        let desired = scene.desired();
        let mut markers = Vec::new();
        let (output, guard) = scene.apply_with(&desired, "4", |scene| {
            let over = ExtraLoop::new(&[&scene.p2]);
            if mounted {
                common::run("mkfs.ext4", &["-q", "-F", &over.0]);
                let mount = Mounted::new(&over.0, scene.host.path("mnt"));
                markers = vec![Marker::ext4_magic(&scene.p2)];
                Box::new((mount, over))
            } else {
                let mut xs = scene.host.xenstore();
                for (key, value) in nodes(&over.0, "vbd") {
                    xs.write(0, &format!("{GUEST2}/{key}"), &value).unwrap();
                }
                let through = Marker::write(&over.0, 0, "guest2 data through a loop");
                // Checked on the partition: the loop is gone by then.
                markers = vec![Marker {
                    path: scene.p2.clone(),
                    offset: 0,
                    bytes: through.bytes,
                }];
                Box::new(((), over))
            }
        });
        drop(guard);
        assert_refused_mid_apply(&output, &markers);
    }
}

/// Another toolstack writes the backend with paths relative to its own
/// domain's home (`backend/vbd/5/51712/params`, as xenstore allows: dom0's
/// home is /local/domain/0).
#[test]
fn a_new_backend_written_with_relative_paths() {
    let Some(_devices) = loops_available("a_new_backend_written_with_relative_paths") else {
        return;
    };
    attack_xenstore(
        |_, _| String::new(),
        "4",
        |scene| {
            let mut xs = scene.host.xenstore();
            for (key, value) in nodes(&scene.p2, "vbd") {
                xs.write(0, &format!("backend/vbd/5/51712/{key}"), &value)
                    .unwrap();
            }
            assert!(scene.host.simulator.store().exists(GUEST2));
        },
    );
}

/// The pool device is a loop over an image file that guest1 holds at plan
/// time (let go of after 3 s); mid-apply, another toolstack hands the image
/// file itself to guest2 (qdisk `params = "aio:<file>"`, and blkback with
/// `file:`), and guest2 writes into it.
#[test]
fn an_image_file_under_a_pool_loop_attached_mid_apply() {
    let Some(_devices) = loops_available("an_image_file_under_a_pool_loop_attached_mid_apply")
    else {
        return;
    };
    for (kind, prefix) in [("qdisk", "aio:"), ("vbd", "file:")] {
        let scratch = Host::new("");
        let image = scratch.path("pool.img");
        std::fs::write(&image, vec![0u8; 32 << 20]).unwrap();
        let image = image.display().to_string();
        let pool_loop = ExtraLoop::new(&[&image]);
        let host = Host::with_close_delay(
            &backend("vbd", 4, 51728, &pool_loop.0, "w", &[]),
            Duration::from_secs(3),
        );
        assert_exit(&host.run(&["init"]), 0);
        let desired = format!(
            "{}{}",
            pool_and_vdisk("exclusive", &pool_loop.0, "8MiB"),
            disks("guest1", &[])
        );
        let file = host.file("desired.toml", &desired);
        let apply = host
            .command(&["apply", &file, "--yes", "--parallelism", "4", "-v"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let mut xs = host.xenstore();
        let base = format!("/local/domain/0/backend/{kind}/5/51712");
        for (key, value) in [
            ("frontend", "/local/domain/5/device/vbd/51712"),
            ("frontend-id", "5"),
            ("params", &format!("{prefix}{image}")),
            ("mode", "w"),
            ("type", kind),
            ("online", "1"),
            ("state", "4"),
        ] {
            xs.write(0, &format!("{base}/{key}"), value).unwrap();
        }
        let markers = vec![
            Marker::write(&image, 0, "guest2 data in the image"),
            Marker::write(&image, 4 << 20, "more guest2 data in the image"),
        ];
        let output = apply.wait_with_output().unwrap();
        drop(pool_loop);
        assert_refused_mid_apply(&output, &markers);
    }
}

/// A new backend whose `params` names a path that does not exist yet (a
/// udev link still to come): a holder that cannot be resolved, which must
/// stop any write it might touch. The link then appears, to partition 2.
#[test]
fn a_new_backend_over_a_link_still_to_come() {
    let Some(_devices) = loops_available("a_new_backend_over_a_link_still_to_come") else {
        return;
    };
    let link = std::path::PathBuf::from(format!("/dev/xendisk-look-{}", std::process::id()));
    struct Unlink(std::path::PathBuf);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unlink = Unlink(link.clone());
    let scene = scene(|_, _| String::new());
    let desired = scene.desired();
    let mut markers = Vec::new();
    let (output, _guard) = scene.apply_with(&desired, "4", |scene| {
        let mut xs = scene.host.xenstore();
        for (key, value) in nodes(&scene.p2, "qdisk") {
            let value = if key == "params" {
                format!("aio:{}", link.display())
            } else {
                value
            };
            xs.write(
                0,
                &format!("/local/domain/0/backend/qdisk/5/51712/{key}"),
                &value,
            )
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
        std::os::unix::fs::symlink(&scene.p2, &link).unwrap();
        markers = victim(&scene.p2);
        Box::new(())
    });
    assert_refused_mid_apply(&output, &markers);
}

/// A qdisk backend not yet connected (state 1: qemu opens `params` when
/// it connects) names a link to a harmless image at plan time; mid-apply
/// the link is repointed at partition 2 (no xenstore change at all), and
/// qemu, connecting, writes there.
#[test]
fn a_link_under_an_unconnected_qdisk_repointed_mid_apply() {
    let Some(_devices) = loops_available("a_link_under_an_unconnected_qdisk_repointed_mid_apply")
    else {
        return;
    };
    let link = std::path::PathBuf::from(format!("/dev/xendisk-look-q-{}", std::process::id()));
    struct Unlink(std::path::PathBuf);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unlink = Unlink(link.clone());
    let link_text = link.display().to_string();
    let scene = scene(|_, image| {
        std::os::unix::fs::symlink(image, &link).unwrap();
        backend(
            "qdisk",
            5,
            51712,
            &format!("aio:{link_text}"),
            "w",
            &[("state", "1")],
        )
    });
    let desired = scene.desired();
    let mut markers = Vec::new();
    let (output, _guard) = scene.apply_with(&desired, "4", |scene| {
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&scene.p2, &link).unwrap();
        markers = victim(&scene.p2);
        Box::new(())
    });
    assert_refused_mid_apply(&output, &markers);
}

/// Control for `a_loop_over_the_partition_made_mid_apply`: a loop device
/// over partition 2 there at plan time stops the plan that adds it.
/// (It does not: a loop device nobody mounts, swaps on or attaches is no
/// holder even to the whole look, so the break above is not the
/// incremental look's alone. An attach of `phy:` partition 2 rw beside
/// such a loop is planned too, exit 2.)
#[test]
#[ignore = "broken: a bare loop device over a partition is no holder even at plan time; the scrub zeroes data written through it"]
fn a_loop_over_the_partition_at_plan_time_is_refused() {
    let Some(_devices) = loops_available("a_loop_over_the_partition_at_plan_time_is_refused")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p2 = disk.partition(2);
    let _over = ExtraLoop::new(&[&p2]);
    let marker = Marker::write(&p2, 0, "data of the loop's user");
    let host = Host::new("");
    let attack = pool_and_vdisk("exclusive", &p2, "20MiB");
    host.assert_refused(&host.file("attack.toml", &attack), &[], &[&marker]);
}
