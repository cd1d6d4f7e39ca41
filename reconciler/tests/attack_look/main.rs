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

#[path = "../attack/mod.rs"]
mod attack;
#[path = "../common/mod.rs"]
mod common;

use std::any::Any;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use attack::*;
use xendisk::xs_client::Change;

mod devices;
mod xenstore;

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

/// Another toolstack re-writes guest2's backend to give it `device`:
/// `params`, then `physical-device`.
fn point_guest2_at(scene: &Scene, device: &str) {
    let mut xs = scene.host.xenstore();
    xs.write(0, &format!("{GUEST2}/params"), device).unwrap();
    xs.write(
        0,
        &format!("{GUEST2}/physical-device"),
        &physical_device(device),
    )
    .unwrap();
}
