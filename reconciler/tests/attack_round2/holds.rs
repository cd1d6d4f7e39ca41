//! Attacks xendisk holds.

use std::process::Command;
use std::time::Duration;

use crate::attack::*;
use crate::common;

/// Claims 1, 6: backends whose domid or device id directory is a number
/// spelled with leading zeros or a `+` (`backend/vbd/04/051728`): the
/// guest's partition is still held (a pool add is refused), and a plan that
/// detaches it first either removes it or fails without writing the disk.
#[test]
fn zero_padded_domids_and_devids_are_held_and_detached_or_fail() {
    let Some(_devices) =
        loops_available("zero_padded_domids_and_devids_are_held_and_detached_or_fail")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    let marker = Marker::write(&p1, 0, "guest1 data");
    for (dom_dir, dev_dir) in [("04", "51728"), ("4", "051728"), ("004", "0051728")] {
        let backends = backend_at("vbd", dom_dir, dev_dir, 4, 51728, &p1, "w", &[]);
        // Held: a pool add while guest1 keeps it is refused.
        assert_pool_add_refused(&backends, &p1, &[&marker]);
        // Detached first, at parallelism 4: it goes, or the apply fails
        // before anything writes the partition.
        let host = Host::new(&backends);
        let desired = format!(
            "{}{}",
            pool_and_vdisk("exclusive", &p1, "4MiB"),
            disks("guest1", &[])
        );
        let file = host.file("desired.toml", &desired);
        let apply = host.run(&["apply", &file, "--yes", "--parallelism", "4"]);
        let path = format!("/local/domain/0/backend/vbd/{dom_dir}/{dev_dir}");
        let still_there = host.simulator.store().exists(&path);
        if still_there {
            marker.assert_intact();
            assert_ne!(apply.status.code(), Some(0), "{}", text(&apply));
        } else {
            assert_exit(&apply, 0);
        }
    }
}

/// Claim 1/4: `w!` on one side only does not accept sharing: a guest that
/// another (unmanaged) guest holds rw with plain `w` cannot be given the
/// same partition with `w!`, at exclusive or single-writer; and a `w!`
/// pretending to be accepted against a *managed* writer whose attachment
/// is `w` is refused as well.
#[test]
fn w_bang_on_one_side_only_does_not_share() {
    let Some(_devices) = loops_available("w_bang_on_one_side_only_does_not_share") else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    let host = Host::new(&backend("vbd", 5, 51728, &p1, "w", &[]));
    for sharing in ["exclusive", "single-writer"] {
        for mode in ["w!", "w"] {
            let desired = format!(
                "{}{}",
                settings(sharing),
                disks("guest1", &[&disk_line("xvda", &format!("phy:{p1}"), mode)])
            );
            host.assert_refused(&host.file("attack.toml", &desired), &[], &[]);
        }
    }
}

/// Claim 4: a vdisk moved from one guest to another in one plan, at
/// --parallelism 4: the attach to guest2 starts only after the detach
/// from guest1 has finished (the journal says so), over several rounds.
#[test]
fn a_vdisk_moved_between_guests_in_parallel_never_has_two_writers() {
    let _devices = common::real_devices();
    let host = Host::with_close_delay("", Duration::from_millis(400));
    // The same move with file: sources, which need no block device.
    let (a, b) = (host.path("a.img"), host.path("b.img"));
    std::fs::write(&a, b"a").unwrap();
    std::fs::write(&b, b"b").unwrap();
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let first = format!(
        "{}{}{}",
        settings("exclusive"),
        disks(
            "guest1",
            &[
                &disk_line("xvda", &format!("file:{a}"), "w"),
                &disk_line("xvdb", &format!("file:{b}"), "w")
            ]
        ),
        disks("guest2", &[])
    );
    let swapped = format!(
        "{}{}{}",
        settings("exclusive"),
        disks("guest1", &[]),
        disks(
            "guest2",
            &[
                &disk_line("xvda", &format!("file:{a}"), "w"),
                &disk_line("xvdb", &format!("file:{b}"), "w")
            ]
        )
    );
    for round in 0..3 {
        let desired = if round % 2 == 0 { &first } else { &swapped };
        let file = host.file("desired.toml", desired);
        host.applied(&file, &["--no-devices", "--parallelism", "4"]);
    }
    let runs = host.runs();
    let mut checked = 0;
    for run in runs.as_array().unwrap() {
        let steps = run["steps"].as_array().unwrap();
        for attach in steps.iter().filter(|s| s["op"]["op"] == "attach") {
            let source = &attach["op"]["source"];
            for detach in steps.iter().filter(|s| {
                s["op"]["op"] == "detach"
                    && s["op"]["source"]
                        .as_str()
                        .map(|t| t.trim_start_matches("file:"))
                        == source.as_str().map(|t| t.trim_start_matches("file:"))
            }) {
                checked += 1;
                assert!(
                    time(attach, "started_at") >= time(detach, "finished_at"),
                    "{attach} started before {detach} finished"
                );
            }
        }
    }
    assert!(checked >= 2, "no move was journaled: {runs}");
}

/// Claims 3/5: a plan that deletes a vdisk an unmanaged domain still has
/// (through its device-mapper path) and creates another on the same
/// extents is refused, even with --allow-destroy.
#[test]
fn deleting_a_vdisk_an_unmanaged_domain_holds_and_reusing_its_extents_is_refused() {
    let Some(_devices) = loops_available(
        "deleting_a_vdisk_an_unmanaged_domain_holds_and_reusing_its_extents_is_refused",
    ) else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p2 = disk.partition(2);
    let base = pool_and_vdisk("exclusive", &p2, "4MiB");
    scratch.applied(&scratch.file("v.toml", &base), &[]);
    let marker = Marker::write(&p2, 1 << 20, "guest2 data in v");
    // guest2 (not in the file) has v through its mapper path, or through
    // a loop device realising exactly v.
    let exact = ExtraLoop::new(&["-o", "0", "--sizelimit", &(4u64 << 20).to_string(), &p2]);
    for params in ["/dev/mapper/xendisk-v".to_owned(), exact.0.clone()] {
        let host = Host::with_state_of(&scratch, &backend("vbd", 5, 51728, &params, "w", &[]));
        let attack = format!(
            "{}{}{}",
            settings("exclusive"),
            pool("a", &[&p2]),
            vdisk("w", "a", "4MiB")
        );
        host.assert_refused(
            &host.file("attack.toml", &attack),
            &["--allow-destroy"],
            &[&marker],
        );
    }
}

/// Claim 1: a guest's `params` reached through a chain of links with `..`
/// after a link to a directory (where the lexical path and the real one
/// differ): the real partition is found, and a pool add of it refused.
#[test]
fn a_symlink_chain_with_dotdot_is_resolved_as_the_kernel_does() {
    let Some(_devices) =
        loops_available("a_symlink_chain_with_dotdot_is_resolved_as_the_kernel_does")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    // dir/deep -> ../elsewhere/a/b ; elsewhere/lnk -> p1 ; lexically
    // dir/deep/../../lnk is <tmp>/lnk (a harmless file), really
    // elsewhere/a/b/../../lnk = elsewhere/lnk = p1.
    let d = scratch.dir.path();
    std::fs::create_dir_all(d.join("dir")).unwrap();
    std::fs::create_dir_all(d.join("elsewhere/a/b")).unwrap();
    std::os::unix::fs::symlink("../elsewhere/a/b", d.join("dir/deep")).unwrap();
    std::os::unix::fs::symlink(&p1, d.join("elsewhere/lnk")).unwrap();
    std::fs::write(d.join("lnk"), b"decoy").unwrap();
    let chain = format!("{}/dir/deep/../../lnk", d.display());
    let marker = Marker::write(&p1, 0, "guest data");
    for (kind, params) in [
        ("vbd", chain.clone()),
        ("qdisk", format!("aio:{chain}")),
        ("vbd3", format!("tap2:tapdisk:aio:{chain}")),
    ] {
        assert_pool_add_refused(&backend(kind, 5, 51728, &params, "w", &[]), &p1, &[&marker]);
    }
}

/// Claims 2/3: a loop device over an image that backs a pool's loop disk
/// is swapped on by dom0: a new vdisk (and its scrub) on that pool is
/// refused; so is adding to a pool a partition of a disk whose other
/// partition dom0 swaps on, when the new vdisk would reach it.
#[test]
fn swap_on_a_loop_over_a_pool_image_or_a_pool_disk_partition_is_held() {
    let Some(_devices) =
        loops_available("swap_on_a_loop_over_a_pool_image_or_a_pool_disk_partition_is_held")
    else {
        return;
    };
    let host = Host::new("");
    let disk = disk(&host);
    let p1 = disk.partition(1);
    // Swap on a second loop over the pool disk's own image, at p1's place.
    let image = host.path("disk.img");
    let swap = ExtraLoop::new(&[
        "-o",
        &(2048u64 * 512).to_string(),
        "--sizelimit",
        &(16u64 << 20).to_string(),
        image.to_str().unwrap(),
    ]);
    common::run("mkswap", &[&swap.0]);
    if Command::new("swapon")
        .arg(&swap.0)
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        common::skipped(
            "swap_on_a_loop_over_a_pool_image_or_a_pool_disk_partition_is_held",
            "swapon is not allowed here",
        );
        return;
    }
    struct SwapOff(String);
    impl Drop for SwapOff {
        fn drop(&mut self) {
            let _ = Command::new("swapoff").arg(&self.0).status();
        }
    }
    let _off = SwapOff(swap.0.clone());
    let signature = Marker {
        path: p1.clone(),
        offset: 4086,
        bytes: b"SWAPSPACE2".to_vec(),
    };
    signature.assert_intact();
    let attack = pool_and_vdisk("unsafe", &p1, "4MiB");
    host.assert_refused(&host.file("attack.toml", &attack), &[], &[&signature]);
    let attack = pool_and_vdisk("unsafe", &disk.device, "8MiB");
    host.assert_refused(&host.file("whole.toml", &attack), &[], &[&signature]);
}
