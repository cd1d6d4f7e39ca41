//! Attacks that break a guarantee: each asserts the guarantee.

use std::path::Path;

use crate::attack::*;
use crate::common;

/// A loop device over an image still held by the image's inode after its
/// name is unlinked: sysfs's `backing_file` then reads "PATH (deleted)".
fn unlink_keeping_a_hard_link(image: &Path, link: &Path) {
    std::fs::hard_link(image, link).unwrap();
    std::fs::remove_file(image).unwrap();
}

/// `host` plans `base` (vdisk v alone on pool device `p2`) as done, and a
/// plan adding vdisk w after v, where the guest's window reaches, is
/// refused: the guest's data past v survives.
fn assert_no_vdisk_after_v(host: &Host, base: &str, p2: &str) {
    assert_exit(&host.run(&["plan", &host.file("v.toml", base)]), 0);
    let marker = Marker::write(p2, 4 << 20, "guest data past v");
    let desired = format!("{base}{}", vdisk("w", "a", "4MiB"));
    host.assert_refused(&host.file("attack.toml", &desired), &[], &[&marker]);
}

/// Claims 1, 2, 4: the image behind a pool's loop disk is reached through
/// another hard link, after the name losetup used was removed (or replaced:
/// `ln disk.img b.img && rm disk.img`, a common "rename"). The loop device
/// is not tied to the file any more, so `file:b.img` rw to a guest is
/// accepted, and a later scrub zeroes what the guest sees.
#[test]
fn an_image_behind_a_pool_disk_reached_through_a_hard_link_is_refused() {
    let Some(_devices) =
        loops_available("an_image_behind_a_pool_disk_reached_through_a_hard_link_is_refused")
    else {
        return;
    };
    let host = Host::new("");
    let disk = disk(&host);
    let p1 = disk.partition(1);
    host.applied(
        &host.file(
            "pool.toml",
            &format!("{}{}", settings("exclusive"), pool("a", &[&p1])),
        ),
        &[],
    );
    let link = host.path("b.img");
    unlink_keeping_a_hard_link(&host.path("disk.img"), &link);
    let marker = Marker::write(&p1, 0, "guest data in b.img");
    let desired = format!(
        "{}{}",
        pool_and_vdisk("exclusive", &p1, "4MiB"),
        disks(
            "guest1",
            &[&disk_line("xvda", &format!("file:{}", link.display()), "w")]
        )
    );
    host.assert_refused(&host.file("attack.toml", &desired), &[], &[&marker]);
}

/// Claim 2: dom0 loop-mounts an image rw; its name is then replaced by a
/// hard link (`ln a.img b.img && rm a.img`); `file:b.img` rw to a guest is
/// planned as safe.
#[test]
fn a_loop_mounted_image_renamed_by_hard_link_cannot_go_to_a_guest() {
    let Some(_devices) =
        loops_available("a_loop_mounted_image_renamed_by_hard_link_cannot_go_to_a_guest")
    else {
        return;
    };
    let host = Host::new("");
    let image = host.path("a.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    common::run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
    let looped = ExtraLoop::new(&[image.to_str().unwrap()]);
    let _mounted = Mounted::new(&looped.0, host.path("mnt"));
    let link = host.path("b.img");
    unlink_keeping_a_hard_link(&image, &link);
    let desired = format!(
        "{}{}",
        settings("exclusive"),
        disks(
            "guest1",
            &[&disk_line("xvda", &format!("file:{}", link.display()), "w")]
        )
    );
    host.assert_refused(&host.file("attack.toml", &desired), &[], &[]);
}

/// Claims 1, 4: a guest holds a pool-to-be partition rw through a qdisk
/// whose `params` names a link with `./` or `//` in its path (no
/// `physical-device`): the attachment's path is looked up normalised but
/// was observed as written, so it resolves to nothing, is taken for a file
/// that is not there (not "unresolved"), and the pool add and the scrub
/// that zeroes the guest's data are applied.
#[test]
fn a_guests_partition_behind_dot_or_double_slash_params_is_found() {
    let Some(_devices) =
        loops_available("a_guests_partition_behind_dot_or_double_slash_params_is_found")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    let dir = scratch.dir.path().to_str().unwrap().to_owned();
    std::os::unix::fs::symlink(&p1, scratch.path("lnk")).unwrap();
    let marker = Marker::write(&p1, 0, "guest data");
    for params in [format!("aio:{dir}/./lnk"), format!("aio:{dir}//lnk")] {
        assert_pool_add_refused(
            &backend("qdisk", 4, 51728, &params, "w", &[]),
            &p1,
            &[&marker],
        );
    }
}

/// Claim 1: QEMU's qdisk takes whatever precedes the first `:` of `params`
/// as the format (`vpc`, `host_device`, `vdi`...); xendisk only strips a
/// fixed list, so such a holder is taken for a missing file, neither
/// resolved nor reported unresolved.
#[test]
fn qemu_format_prefixes_are_resolved_or_reported() {
    let Some(_devices) = loops_available("qemu_format_prefixes_are_resolved_or_reported") else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    let marker = Marker::write(&p1, 0, "guest data");
    for prefix in ["vpc", "host_device", "vdi"] {
        let params = format!("{prefix}:{p1}");
        assert_pool_add_refused(
            &backend("qdisk", 4, 51728, &params, "w", &[]),
            &p1,
            &[&marker],
        );
    }
}

/// Claims 1, 4: a loop device over a pool device at a vdisk's offset but
/// with no size limit is taken for that vdisk's realisation, so a guest
/// holding it rw is thought to touch only that vdisk; the scrub and create
/// of the next vdisk, inside the guest's window, are applied.
#[test]
fn an_unbounded_loop_at_a_vdisks_offset_is_not_narrowed_to_the_vdisk() {
    let Some(_devices) =
        loops_available("an_unbounded_loop_at_a_vdisks_offset_is_not_narrowed_to_the_vdisk")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p2 = disk.partition(2);
    let base = pool_and_vdisk("exclusive", &p2, "4MiB");
    scratch.applied(&scratch.file("v.toml", &base), &[]);
    // v is extents 0..4 of p2; this loop starts there and never ends.
    let unbounded = ExtraLoop::new(&[&p2]);
    let host = Host::with_state_of(&scratch, &backend("vbd", 4, 51728, &unbounded.0, "w", &[]));
    assert_no_vdisk_after_v(&host, &base, &p2);
}

/// Claim 1 ("`physical-device` is used when present"): params naming a
/// vdisk's device-mapper path make xendisk ignore `physical-device`, which
/// here says the guest holds the whole pool partition.
#[test]
fn physical_device_widens_a_vdisk_attachment() {
    let Some(_devices) = loops_available("physical_device_widens_a_vdisk_attachment") else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p2 = disk.partition(2);
    let number = physical_device(&p2);
    let base = pool_and_vdisk("exclusive", &p2, "4MiB");
    scratch.applied(&scratch.file("v.toml", &base), &[]);
    let host = Host::with_state_of(
        &scratch,
        &backend(
            "vbd",
            4,
            51728,
            "/dev/mapper/xendisk-v",
            "w",
            &[("physical-device", &number)],
        ),
    );
    assert_no_vdisk_after_v(&host, &base, &p2);
}

/// Claim 4: a pool device recorded by a link's path (`/srv/pool` ->
/// partition 2). The link is later repointed at partition 1, which a guest
/// holds rw. The plan reasons about the recorded device number, but the
/// scrub opens the recorded path, and zeroes the guest's partition.
#[test]
fn a_scrub_never_writes_a_device_other_than_the_planned_one() {
    let Some(_devices) =
        loops_available("a_scrub_never_writes_a_device_other_than_the_planned_one")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let (p1, p2) = (disk.partition(1), disk.partition(2));
    let host = Host::new(&held_rw(4, &p1));
    let link = host.path("pool-device");
    std::os::unix::fs::symlink(&p2, &link).unwrap();
    let base = format!(
        "{}{}",
        settings("exclusive"),
        pool("a", &[link.to_str().unwrap()])
    );
    host.applied(&host.file("pool.toml", &base), &[]);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&p1, &link).unwrap();
    let marker = Marker::write(&p1, 0, "guest1's own partition");
    let desired = format!("{base}{}", vdisk("v", "a", "4MiB"));
    let file = host.file("attack.toml", &desired);
    let apply = host.run(&["apply", &file, "--yes"]);
    marker.assert_intact();
    assert_ne!(apply.status.code(), Some(0), "{}", text(&apply));
}

/// Claim 3: dom0 mounts partition 1 of an image the classic way (a second
/// loop device with an offset over the image), while the image's own loop
/// device gives partition 1 to a pool. The two loop devices are not tied
/// together, so the pool add and the scrub (which zeroes the mounted
/// filesystem's superblock) are applied.
#[test]
fn a_partition_mounted_through_another_loop_over_the_same_image_is_held() {
    let Some(_devices) =
        loops_available("a_partition_mounted_through_another_loop_over_the_same_image_is_held")
    else {
        return;
    };
    let host = Host::new("");
    let disk = disk(&host);
    let p1 = disk.partition(1);
    let image = host.path("disk.img");
    let offset = (2048 * 512).to_string();
    let size = (16u64 << 20).to_string();
    let second = ExtraLoop::new(&["-o", &offset, "--sizelimit", &size, image.to_str().unwrap()]);
    common::run("mkfs.ext4", &["-q", "-F", &second.0]);
    let _mounted = Mounted::new(&second.0, host.path("mnt"));
    // The ext4 magic, as the pool partition shows it.
    let superblock = Marker::ext4_magic(&p1);
    superblock.assert_intact();
    let desired = pool_and_vdisk("exclusive", &p1, "4MiB");
    host.assert_refused(&host.file("attack.toml", &desired), &[], &[&superblock]);
}

/// Claims 4, 5, 6: a guest holds a partition through a qdisk (or vbd3)
/// backend; the plan detaches it, then adds the partition to a pool and
/// scrubs it. The xenstore toolstack's detach only looks under
/// backend/vbd, finds nothing, reports "done" at once, and the pool add and
/// the scrub run while the qdisk backend is still there, rw.
#[test]
fn a_qdisk_detach_really_detaches_before_the_scrub() {
    let Some(_devices) = loops_available("a_qdisk_detach_really_detaches_before_the_scrub") else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    for kind in ["qdisk", "vbd3"] {
        let host = Host::new(&backend(kind, 5, 51728, &format!("aio:{p1}"), "w", &[]));
        let marker = Marker::write(&p1, 0, "guest2 data");
        let desired = format!(
            "{}{}",
            pool_and_vdisk("exclusive", &p1, "4MiB"),
            disks("guest2", &[])
        );
        let apply = host.run(&["apply", &host.file("desired.toml", &desired), "--yes"]);
        let still_held = host
            .simulator
            .store()
            .exists(&format!("/local/domain/0/backend/{kind}/5/51728"));
        if still_held {
            marker.assert_intact();
        }
        assert_exit(&apply, 0);
        assert!(
            !still_held,
            "{kind}: the detach left the backend: {}",
            text(&apply)
        );
    }
}
