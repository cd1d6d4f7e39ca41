//! xendisk's xenstore toolstack against what libxl really wrote: a tree
//! captured on a real Xen 4.17 host while `xl block-attach domu1
//! 'format=raw, vdev=xvdb, access=rw, target=/dev/loop0'` was connected
//! (tests/realxen/fixtures/). The same attach is made by xendisk on a
//! simulator seeded with that host minus the vbd; the backend, the frontend
//! and libxl's record must come out with the same nodes, values and
//! permissions, but for what blkback, blkfront and the hotplug script add
//! once the device connects (listed in one place, beside the fixture).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use xendisk::apply::toolstack::{AttachRequest, BackendHost, Toolstack, XenstoreToolstack};
use xendisk::desired::{Format, Mode};
use xendisk::sim::{Faults, GuestPolicy, Simulator, Store};
use xendisk::xs_client::XsClient;

const BACKEND: &str = "/local/domain/0/backend/vbd/1/51728";
const FRONTEND: &str = "/local/domain/1/device/vbd/51728";
const RECORD: &str = "/libxl/1/device/vbd/51728";

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/realxen/fixtures")
}

/// `(where, leaf)` pairs the toolstack does not write.
fn not_written() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(fixtures().join("not-written-by-the-toolstack.txt")).unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let mut words = line.split_whitespace();
            let place = words.next().unwrap().to_owned();
            let leaf = words.next().unwrap().to_owned();
            (place, leaf)
        })
        .collect()
}

/// Every node at or below `top`, by path: value and permissions.
fn subtree(store: &Store, top: &str) -> BTreeMap<String, (String, Vec<String>)> {
    store
        .entries()
        .into_iter()
        .filter(|(path, _)| path == top || path.starts_with(&format!("{top}/")))
        .map(|(path, value)| {
            let perms = store.get_perms(&path).unwrap().to_vec();
            (path, (String::from_utf8_lossy(&value).into_owned(), perms))
        })
        .collect()
}

#[test]
fn the_xenstore_toolstack_writes_the_nodes_libxl_wrote_on_a_real_host() {
    let text = std::fs::read_to_string(fixtures().join("xl-block-attach-loop0-rw.xs")).unwrap();
    let real = xendisk::sim::dump::parse(&text).unwrap();
    // The host before the attach: as the capture, without the vbd (libxl
    // made the guest's `device/vbd` directory when it built the domain).
    let mut before = real.clone();
    for gone in [
        FRONTEND,
        "/local/domain/0/backend/vbd",
        "/libxl/1/device/vbd",
    ] {
        before.rm(gone).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let simulator = Simulator::start(
        &dir.path().join("socket"),
        before,
        GuestPolicy::default(),
        Faults::default(),
    )
    .unwrap();
    let client = XsClient::connect_to(simulator.socket()).unwrap();
    let mut toolstack = XenstoreToolstack::with_client(
        client,
        BackendHost::Simulated,
        Duration::from_secs(5),
        false,
    );
    toolstack
        .attach(&AttachRequest {
            domain: "domu1".into(),
            domid: 1,
            vdev: "xvdb".into(),
            devid: 51728,
            target: "/dev/loop0".into(),
            kind: "phy",
            mode: Mode::Write,
            format: Format::Raw,
        })
        .unwrap();
    let ours = simulator.store();
    let skipped = not_written();
    let written_by_others = |place: &str, path: &str, top: &str| {
        path.strip_prefix(&format!("{top}/"))
            .is_some_and(|leaf| skipped.iter().any(|(p, l)| p == place && l == leaf))
    };
    for (place, top) in [
        ("backend", "/local/domain/0/backend/vbd"),
        ("frontend", FRONTEND),
        ("record", "/libxl/1/device/vbd"),
    ] {
        let leaf_top = match place {
            "backend" => BACKEND,
            "record" => RECORD,
            _ => FRONTEND,
        };
        let expected: BTreeMap<_, _> = subtree(&real, top)
            .into_iter()
            .filter(|(path, _)| !written_by_others(place, path, leaf_top))
            .collect();
        let mut made = subtree(&ours, top);
        // Nodes the toolstack writes with a value a driver moves on later:
        // present in both, compared for presence and permissions only.
        for (path, (value, _)) in made.iter_mut() {
            if written_by_others(place, path, leaf_top) {
                *value = expected
                    .get(path)
                    .map(|(v, _)| v.clone())
                    .unwrap_or_default();
            }
        }
        made.retain(|path, _| !written_by_others(place, path, leaf_top));
        let render = |tree: &BTreeMap<String, (String, Vec<String>)>| {
            tree.iter()
                .map(|(path, (value, perms))| {
                    format!("{path} = \"{value}\" ({})\n", perms.join(","))
                })
                .collect::<String>()
        };
        let (made, expected) = (render(&made), render(&expected));
        assert!(
            made == expected,
            "{place}: xendisk's nodes differ from libxl's (- libxl, + xendisk):\n{}",
            similar::TextDiff::from_lines(&expected, &made).unified_diff()
        );
    }
    // The two nodes the toolstack writes and a driver moves on: there, as
    // libxl leaves them before blkback and blkfront start.
    assert_eq!(ours.read(&format!("{BACKEND}/state")).unwrap(), b"1");
    assert_eq!(ours.read(&format!("{FRONTEND}/state")).unwrap(), b"1");
}
