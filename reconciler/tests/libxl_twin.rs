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
use xendisk::desired::Mode;
use xendisk::sim::{Faults, GuestPolicy, Simulator, Store};
use xendisk::xs_client::XsClient;

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

/// xendisk's attach of `/dev/loop0` read-write at `vdev` of domain 1,
/// against the vbd `xl block-attach` made in `fixture`.
fn twin(fixture: &str, vdev: &str, devid: u32) {
    let backend = format!("/local/domain/0/backend/vbd/1/{devid}");
    let frontend = format!("/local/domain/1/device/vbd/{devid}");
    let record = format!("/libxl/1/device/vbd/{devid}");
    let text = std::fs::read_to_string(fixtures().join(fixture)).unwrap();
    let real = xendisk::sim::dump::parse(&text).unwrap();
    // The host before the attach: as captured, without the vbd.
    let mut before = real.clone();
    for gone in [&backend, &frontend, &record] {
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
            vdev: vdev.into(),
            devid,
            target: "/dev/loop0".into(),
            mode: Mode::Write,
            format: Default::default(),
        })
        .unwrap();
    let ours = simulator.store();
    let skipped = not_written();
    let written_by_others = |place: &str, path: &str, top: &str| {
        path.strip_prefix(&format!("{top}/"))
            .is_some_and(|leaf| skipped.iter().any(|(p, l)| p == place && l == leaf))
    };
    for (place, top) in [
        ("backend", backend.as_str()),
        ("frontend", frontend.as_str()),
        ("record", record.as_str()),
    ] {
        // A fixture of the vbd alone lists its leaves, not its directory.
        let listed = |path: &str| path != top || text.contains(&format!("\n{top} = "));
        let expected: BTreeMap<_, _> = subtree(&real, top)
            .into_iter()
            .filter(|(path, _)| !written_by_others(place, path, top) && listed(path))
            .collect();
        let mut made = subtree(&ours, top);
        made.retain(|path, _| !written_by_others(place, path, top) && listed(path));
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
            "{fixture}, {place}: xendisk's nodes differ from libxl's (- libxl, + xendisk):\n{}",
            similar::TextDiff::from_lines(&expected, &made).unified_diff()
        );
    }
    // The two nodes the toolstack writes and a driver moves on: there, as
    // libxl leaves them before blkback and blkfront start.
    assert_eq!(ours.read(&format!("{backend}/state")).unwrap(), b"1");
    assert_eq!(ours.read(&format!("{frontend}/state")).unwrap(), b"1");
}

#[test]
fn the_xenstore_toolstack_writes_the_nodes_libxl_wrote_on_a_real_host() {
    // From the recipe's run (xvdb), and from the project's test bed (xvdc).
    twin("xl-block-attach-loop0-rw.xs", "xvdb", 51728);
    twin("xl-block-attach.xenstore", "xvdc", 51744);
}

/// The test bed captured, in one run, what xl made and what xendisk's
/// xenstore toolstack made of the same disk once each was connected.
#[test]
fn on_the_real_host_xendisk_s_twin_is_libxl_s_vbd_node_for_node() {
    let read = |name: &str| {
        let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
        xendisk::sim::dump::parse(&text).unwrap()
    };
    let (xl, ours) = (
        read("xl-block-attach.xenstore"),
        read("xendisk-xenstore.xenstore"),
    );
    for top in [
        "/local/domain/0/backend/vbd/1/51744",
        "/local/domain/1/device/vbd/51744",
        "/libxl/1/device/vbd/51744",
    ] {
        assert_eq!(subtree(&ours, top), subtree(&xl, top), "{top}");
        assert!(!subtree(&xl, top).is_empty(), "{top}");
    }
}
