//! Holders written into xenstore behind apply's back.

use super::*;

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
            point_guest2_at(scene, &scene.p2);
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
            point_guest2_at(scene, &scene.p2);
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
