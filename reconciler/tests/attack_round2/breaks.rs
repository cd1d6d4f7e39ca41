//! Attacks that break a guarantee: each asserts the guarantee.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::attack::*;
use crate::common;

/// Claims 1, 3: blkback serves any directory under `backend/vbd/<dir>/`
/// (Linux's xenbus takes the domid from `frontend-id` and the handle from
/// the frontend path), but xendisk skips a domid or device id directory
/// that is not a number: the backend is neither resolved nor reported
/// unresolved, and a pool add and scrub of the guest's partition go ahead.
#[test]
fn a_backend_under_a_non_numeric_directory_is_a_holder() {
    let Some(_devices) = loops_available("a_backend_under_a_non_numeric_directory_is_a_holder")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    let number = physical_device(&p1);
    for (kind, dom_dir, dev_dir) in [
        ("vbd", "4", "xvdb"),
        ("vbd", "guest1", "51728"),
        ("qdisk", "4", "xvdb"),
        ("vbd", "4", "0xca10"),
    ] {
        let marker = Marker::write(&p1, 0, "guest1 data");
        let params = format!("phy:{p1}");
        let extra = [("physical-device", number.as_str())];
        assert_pool_add_refused(
            &backend_at(kind, dom_dir, dev_dir, 4, 51728, &params, "w", &extra),
            &p1,
            &[&marker],
        );
    }
}

/// Claims 1, 4, and "a saved plan is re-proved at apply": the desired
/// `phy:` source is a link, free when `plan -o` ran; it is then repointed at
/// a partition guest2 holds rw. The fingerprint covers xenstore, the state
/// DB and dom0's devices, not what the desired paths resolve to, so
/// `apply plan.json` attaches the link, and guest1 gets guest2's partition rw.
#[test]
fn a_saved_plan_is_reproved_when_a_source_link_is_repointed() {
    let Some(_devices) =
        loops_available("a_saved_plan_is_reproved_when_a_source_link_is_repointed")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let (p1, p2) = (disk.partition(1), disk.partition(2));
    let image = scratch.path("free.img");
    std::fs::write(&image, b"free").unwrap();
    let mut broken = Vec::new();
    for (source_kind, innocent) in [("phy", p2.clone()), ("file", image.display().to_string())] {
        // phy: takes a path under /dev.
        let link = match source_kind {
            "phy" => PathBuf::from(format!("/dev/xendisk-attack2-{}", std::process::id())),
            _ => scratch.path("disk-link"),
        };
        struct Unlink(PathBuf);
        impl Drop for Unlink {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _unlink = Unlink(link.clone());
        let host = Host::new(&held_rw(5, &p1));
        std::os::unix::fs::symlink(&innocent, &link).unwrap();
        let desired = format!(
            "{}{}",
            settings("exclusive"),
            disks(
                "guest1",
                &[&disk_line(
                    "xvda",
                    &format!("{source_kind}:{}", link.display()),
                    "w"
                )]
            )
        );
        let file = host.file("desired.toml", &desired);
        assert_exit(&host.run(&["plan", &file, "-o", "plan.json"]), 2);
        // Repointed at guest2's partition after the plan was saved.
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&p1, &link).unwrap();
        let before = host.everything();
        let apply = host.run(&["apply", "plan.json", "--yes"]);
        let after = host.everything();
        if apply.status.code() != Some(3) || after != before {
            broken.push(format!(
                "{source_kind}: exit {:?}, host changed: {}\n{}",
                apply.status.code(),
                after != before,
                text(&apply)
            ));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// "The check verifies [the dependency paths]" and "a saved plan ... is
/// re-proved at apply": a saved plan edited to drop the dependency that
/// keeps a pool add and its scrub after the detach of the guest holding
/// the partition is applied as it stands; at --parallelism 4 the scrub
/// zeroes the partition while the guest is still attached.
#[test]
fn an_edited_saved_plan_is_reproved_at_apply() {
    let Some(_devices) = loops_available("an_edited_saved_plan_is_reproved_at_apply") else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    let marker = Marker::write(&p1, 0, "guest2 data");
    let host = Host::with_close_delay(&held_rw(5, &p1), Duration::from_secs(2));
    let desired = format!(
        "{}{}",
        pool_and_vdisk("exclusive", &p1, "4MiB"),
        disks("guest2", &[])
    );
    let file = host.file("desired.toml", &desired);
    assert_exit(&host.run(&["plan", &file, "-o", "plan.json"]), 2);
    host.edit_saved_plan(|plan| {
        for step in plan["steps"].as_array_mut().unwrap() {
            step["depends_on"] = serde_json::json!([]);
            step["waits_for_sharing"] = serde_json::json!([]);
        }
    });
    host.assert_edited_plan_refused(&["--parallelism", "4"], &marker);
}

/// "A saved plan ... is re-proved at apply": a refused plan saved with
/// `plan -o` (a pool add and scrub of a partition a guest holds rw) whose
/// `refused` flag and conflicts are cleared by hand is applied, and the
/// scrub zeroes the guest's partition.
#[test]
fn a_refused_saved_plan_edited_to_pass_is_still_refused() {
    let Some(_devices) = loops_available("a_refused_saved_plan_edited_to_pass_is_still_refused")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    let marker = Marker::write(&p1, 0, "guest2 data");
    let host = Host::new(&backend_at(
        "vbd",
        "5",
        "51728",
        5,
        51728,
        &p1,
        "w",
        &[("physical-device", &physical_device(&p1))],
    ));
    let attack = pool_and_vdisk("exclusive", &p1, "4MiB");
    let file = host.file("attack.toml", &attack);
    assert_exit(&host.run(&["plan", &file, "-o", "plan.json"]), 3);
    host.edit_saved_plan(|plan| {
        plan["refused"] = serde_json::json!(false);
        plan["safety"]["conflicts"] = serde_json::json!([]);
    });
    host.assert_edited_plan_refused(&[], &marker);
}

/// Claims 1, 3: a loop device over a disk with an offset that is not a
/// multiple of 512 (the kernel accepts any byte offset) reaches into one
/// more sector than `offset / 512 + sizelimit / 512`. A guest holding such
/// a loop, which ends (in xendisk's arithmetic) exactly where partition 2
/// starts, really has the first 511 bytes of partition 2: adding it to a
/// pool and scrubbing it zeroes the guest's last sector.
#[test]
fn a_loop_with_an_unaligned_offset_is_held_to_its_last_byte() {
    let Some(_devices) =
        loops_available("a_loop_with_an_unaligned_offset_is_held_to_its_last_byte")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p2 = disk.partition(2);
    // Partition 1 is sectors 2048..34816; p2 starts at 34816.
    let offset = 2048u64 * 512 + 511;
    let size = 16u64 << 20;
    let guests = ExtraLoop::new(&[
        "-o",
        &offset.to_string(),
        "--sizelimit",
        &size.to_string(),
        &disk.device,
    ]);
    // The guest's very last byte is byte 510 of p2's first sector.
    let marker = Marker::write_bytes(&guests.0, size - 1, vec![0xA5]);
    let on_p2 = Marker {
        path: p2.clone(),
        offset: 510,
        bytes: vec![0xA5],
    };
    on_p2.assert_intact();
    let host = Host::new(&backend("vbd", 4, 51728, &guests.0, "w", &[]));
    let attack = pool_and_vdisk("exclusive", &p2, "4MiB");
    host.assert_refused(&host.file("attack.toml", &attack), &[], &[&marker, &on_p2]);
}

/// Claims 1, 3: dom0 mounts a filesystem in another mount namespace (a
/// service with private mounts, a container): /proc/mounts, which xendisk
/// reads, is its own namespace's, so the mount is not a holder. Here the
/// filesystem sits on a loop device over partition 1 (so the kernel does
/// not refuse writes to partition 1 itself): the pool add and the scrub
/// zero the mounted filesystem's superblock.
#[test]
fn a_mount_in_another_mount_namespace_is_a_holder() {
    let Some(_devices) = loops_available("a_mount_in_another_mount_namespace_is_a_holder") else {
        return;
    };
    let host = Host::new("");
    let disk = disk(&host);
    let p1 = disk.partition(1);
    let over = ExtraLoop::new(&[&p1]);
    common::run("mkfs.ext4", &["-q", "-F", &over.0]);
    let mountpoint = host.path("private");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let ready = host.path("mounted");
    let _service = Child(
        Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &format!(
                    "mount {} {} && touch {} && exec sleep 120",
                    over.0,
                    mountpoint.display(),
                    ready.display()
                ),
            ])
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready.exists(), "the private mount was not made");
    let superblock = Marker::ext4_magic(&p1);
    superblock.assert_intact();
    let attack = pool_and_vdisk("exclusive", &p1, "4MiB");
    host.assert_refused(&host.file("attack.toml", &attack), &[], &[&superblock]);
}

/// "Right before each step that writes sectors, apply re-reads the live
/// holders of those sectors" (DESIGN.md): while the apply waits for guest1
/// to release partition 1 (detach, then pool add and scrub of it), another
/// toolstack attaches partition 1 to guest2, which writes its data there.
/// The scrub runs on the plan's word and zeroes guest2's data.
#[test]
fn a_holder_appearing_during_apply_is_seen_before_the_scrub() {
    let Some(_devices) =
        loops_available("a_holder_appearing_during_apply_is_seen_before_the_scrub")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    let host = Host::with_close_delay(
        &backend("vbd", 4, 51728, &p1, "w", &[]),
        Duration::from_secs(3),
    );
    let desired = format!(
        "{}{}",
        pool_and_vdisk("exclusive", &p1, "4MiB"),
        disks("guest1", &[])
    );
    let file = host.file("desired.toml", &desired);
    assert_exit(&host.run(&["init"]), 0);
    let apply = host
        .command(&["apply", &file, "--yes", "--parallelism", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    // guest2 gets partition 1 from another toolstack, and writes to it.
    let base = attach_behind_its_back(&host, &p1);
    let marker = Marker::write(&p1, 0, "guest2 data written mid-apply");
    let output = apply.wait_with_output().unwrap();
    let guest2_still_there = host.simulator.store().exists(&base);
    assert!(guest2_still_there);
    marker.assert_intact();
    assert_exit(&output, 1);
    assert!(
        text(&output).contains("appeared since the plan was made"),
        "{}",
        text(&output)
    );
}

/// Another toolstack gives `device` rw to guest2 (domid 5) as xvda, one
/// node at a time; returns the backend's directory.
fn attach_behind_its_back(host: &Host, device: &str) -> String {
    let mut xs = host.xenstore();
    let base = "/local/domain/0/backend/vbd/5/51712";
    for (key, value) in [
        ("frontend", "/local/domain/5/device/vbd/51712"),
        ("frontend-id", "5"),
        ("params", device),
        ("mode", "w"),
        ("type", "phy"),
        ("online", "1"),
        ("state", "4"),
        ("physical-device", &physical_device(device)),
    ] {
        xs.write(0, &format!("{base}/{key}"), value).unwrap();
    }
    base.to_owned()
}

/// The look before a write reads only what changed since the last one
/// (a xenstore watch): a holder that comes after a look found the host
/// clean must still stop the next write. Partition 1 is added at once
/// (a whole look, clean); partition 2 is added once guest1 lets go of it
/// (3 s). Meanwhile another toolstack attaches partition 2 to guest2,
/// which writes its data there: the add of partition 2 (and its scrub)
/// must see it through the watch and stop.
#[test]
fn a_holder_appearing_after_a_clean_look_is_seen_by_the_next() {
    let Some(_devices) =
        loops_available("a_holder_appearing_after_a_clean_look_is_seen_by_the_next")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let (p1, p2) = (disk.partition(1), disk.partition(2));
    let host = Host::with_close_delay(
        &backend("vbd", 4, 51728, &p2, "w", &[]),
        Duration::from_secs(3),
    );
    let desired = format!(
        "{}{}{}{}",
        settings("exclusive"),
        pool("a", &[&p1, &p2]),
        vdisk("v", "a", "1MiB"),
        disks("guest1", &[])
    );
    let file = host.file("desired.toml", &desired);
    assert_exit(&host.run(&["init"]), 0);
    let apply = host
        .command(&["apply", &file, "--yes", "--parallelism", "4", "-v"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    attach_behind_its_back(&host, &p2);
    let marker = Marker::write(&p2, 0, "guest2 data written after a clean look");
    let output = apply.wait_with_output().unwrap();
    let log = text(&output);
    marker.assert_intact();
    assert_exit(&output, 1);
    assert!(log.contains("appeared since the plan was made"), "{log}");
    // The clean look came first, and the newcomer was found by a look at
    // what changed (else this test proves nothing about the watch).
    assert!(log.contains("looked at the whole host"), "{log}");
    assert!(
        log.contains("may be there: looking at the whole host"),
        "{log}"
    );
}

/// Claim 2 ("two holders sharing sectors where the sharing level forbids
/// it"): a partition dom0 has mounted rw is attached rw to Domain-0 itself
/// (the walkthrough attaches vdisks to Domain-0 this way). The check skips
/// every pair of dom0's own holders, so the plan is accepted, and dom0 gets
/// a second writable path (an xvd device) to a filesystem it has mounted.
#[test]
fn a_partition_dom0_mounts_is_not_attached_to_dom0_rw() {
    let Some(_devices) = loops_available("a_partition_dom0_mounts_is_not_attached_to_dom0_rw")
    else {
        return;
    };
    let host = Host::new("");
    let disk = disk(&host);
    let p1 = disk.partition(1);
    common::run("mkfs.ext4", &["-q", "-F", &p1]);
    let _mounted = Mounted::new(&p1, host.path("mnt"));
    // Control: the same attachment to a guest is refused.
    let guest = format!(
        "{}{}",
        settings("exclusive"),
        disks("guest1", &[&disk_line("xvda", &format!("phy:{p1}"), "w")])
    );
    host.assert_refused(&host.file("guest.toml", &guest), &[], &[]);
    let desired = format!(
        "{}{}",
        settings("exclusive"),
        disks("Domain-0", &[&disk_line("xvda", &format!("phy:{p1}"), "w")])
    );
    host.assert_refused(&host.file("attack.toml", &desired), &[], &[]);
}
