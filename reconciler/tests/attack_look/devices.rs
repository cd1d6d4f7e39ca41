//! Holders that move or appear on dom0's side: loop devices, mounts,
//! swaps, links and image files, with no change in xenstore or with one.

use super::*;

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
