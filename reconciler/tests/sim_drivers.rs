//! The simulator's drivers (blkback, the block hotplug script, blkfront)
//! against what a real host does: xendisk's attach of /dev/loop0 ends as
//! libxl's did on a real Xen 4.17 host (tests/realxen/fixtures), but for
//! the values that belong to the run; a device dom0 mounts or another
//! guest writes is refused in the script's words and undone; a disk
//! written without libxl's permissions never connects.

mod host;

use std::path::Path;
use std::time::Duration;

use xendisk::apply::toolstack::{
    AttachRequest, BackendHost, DetachRequest, Toolstack, ToolstackError, XenstoreToolstack,
};
use xendisk::desired::{Format, Mode};
use xendisk::extent::DevNum;
use xendisk::sim::hotplug::HostDevice;
use xendisk::sim::{Drivers, Faults, GuestPolicy, HostView, Simulator, Store};
use xendisk::xs_client::XsClient;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/realxen/fixtures")
}

/// `(where, leaf)` pairs listed in a fixture list file.
fn listed(file: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(fixtures().join(file)).unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let mut words = line.split_whitespace();
            (
                words.next().unwrap().to_owned(),
                words.next().unwrap().to_owned(),
            )
        })
        .collect()
}

fn device(number: DevNum, sectors: u64, canonical: &str) -> HostDevice {
    HostDevice {
        number,
        sectors,
        canonical: canonical.to_owned(),
    }
}

/// A dom0 with /dev/loop0 (64 MiB, as on the real host), /dev/sdb1 and
/// /dev/sdb2 (which dom0 mounts read-write), and image files under `files`.
fn host_view(files: &Path) -> HostView {
    let mut view = HostView {
        files_under: Some(files.to_owned()),
        ..HostView::default()
    };
    view.devices.insert(
        "/dev/loop0".into(),
        device(DevNum::new(7, 0), 131072, "/dev/loop0"),
    );
    view.devices.insert(
        "/dev/sdb1".into(),
        device(DevNum::new(8, 17), 2048, "/dev/sdb1"),
    );
    view.devices.insert(
        "/dev/sdb2".into(),
        device(DevNum::new(8, 18), 2048, "/dev/sdb2"),
    );
    view.mounted_rw.insert(DevNum::new(8, 18));
    view
}

struct Host {
    simulator: Simulator,
    dir: tempfile::TempDir,
}

impl Host {
    fn start(store: Store, without_blkfront: &[u32]) -> Host {
        Host::start_with(store, without_blkfront, Duration::ZERO)
    }

    /// A host whose hotplug step takes `hotplug_delay`.
    fn start_with(store: Store, without_blkfront: &[u32], hotplug_delay: Duration) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let drivers = Drivers {
            host: host_view(dir.path()),
            without_blkfront: without_blkfront.iter().copied().collect(),
            hotplug_delay,
        };
        let guests = GuestPolicy {
            close_delay: Duration::from_millis(5),
            ..GuestPolicy::default()
        };
        let simulator = Simulator::start_with_drivers(
            &dir.path().join("socket"),
            store,
            guests,
            Faults::default(),
            Some(drivers),
        )
        .unwrap();
        Host { simulator, dir }
    }

    /// Guests 4 and 5, each its own VM, with libxl's permissions.
    fn two_guests(without_blkfront: &[u32]) -> Host {
        Host::two_guests_with(without_blkfront, Duration::ZERO)
    }

    fn two_guests_with(without_blkfront: &[u32], hotplug_delay: Duration) -> Host {
        let mut store = Store::default();
        for (path, value) in [
            ("/local/domain/0/name", "Domain-0"),
            ("/local/domain/4/name", "guest1"),
            ("/local/domain/4/vm", "/vm/4444"),
            ("/local/domain/5/name", "guest2"),
            ("/local/domain/5/vm", "/vm/5555"),
        ] {
            store.write(path, value.as_bytes()).unwrap();
        }
        xendisk::sim::perms::assume_as_on_a_xen_host(&mut store);
        Host::start_with(store, without_blkfront, hotplug_delay)
    }

    fn toolstack(&self) -> XenstoreToolstack {
        let client = XsClient::connect_to(self.simulator.socket()).unwrap();
        XenstoreToolstack::with_client(
            client,
            BackendHost::SimulatedHotplug,
            Duration::from_secs(5),
            false,
        )
    }

    fn read(&self, path: &str) -> Option<String> {
        let store = self.simulator.store();
        store
            .read(path)
            .ok()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

fn request(domid: u32, target: &str, mode: Mode) -> AttachRequest {
    AttachRequest {
        domain: format!("guest{domid}"),
        domid,
        vdev: "xvdb".into(),
        devid: 51728,
        target: target.into(),
        mode,
        format: Format::Raw,
    }
}

fn backend(domid: u32) -> String {
    format!("/local/domain/0/backend/vbd/{domid}/51728")
}

fn frontend(domid: u32) -> String {
    format!("/local/domain/{domid}/device/vbd/51728")
}

/// Every node at or below `top`: value and permissions, those listed as
/// the run's own left out.
fn subtree(store: &Store, top: &str, place: &str) -> String {
    let per_run = listed("per-run-values.txt");
    store
        .entries()
        .into_iter()
        .filter(|(path, _)| path == top || path.starts_with(&format!("{top}/")))
        .filter(|(path, _)| {
            let leaf = path.rsplit('/').next().unwrap();
            !per_run.iter().any(|(p, l)| p == place && l == leaf)
        })
        .map(|(path, value)| {
            let perms = store.get_perms(&path).unwrap().join(",");
            format!(
                "{path} = \"{}\" ({perms})\n",
                String::from_utf8_lossy(&value)
            )
        })
        .collect()
}

#[test]
fn an_attach_connects_to_the_tree_libxl_and_the_drivers_made_on_a_real_host() {
    let text = std::fs::read_to_string(fixtures().join("xl-block-attach-loop0-rw.xs")).unwrap();
    let real = xendisk::sim::dump::parse(&text).unwrap();
    let mut before = real.clone();
    for gone in [
        frontend(1).as_str(),
        "/local/domain/0/backend/vbd",
        "/libxl/1/device/vbd",
    ] {
        before.rm(gone).unwrap();
    }
    let host = Host::start(before, &[]);
    host.toolstack()
        .attach(&AttachRequest {
            domain: "domu1".into(),
            ..request(1, "/dev/loop0", Mode::Write)
        })
        .unwrap();
    let ours = host.simulator.store();
    for (place, top) in [
        ("backend", "/local/domain/0/backend/vbd"),
        ("frontend", frontend(1).as_str()),
        ("record", "/libxl/1/device/vbd"),
    ] {
        let (expected, made) = (subtree(&real, top, place), subtree(&ours, top, place));
        assert!(
            made == expected,
            "{place}: the simulated attach differs from the real one (- real, + simulated):\n{}",
            similar::TextDiff::from_lines(&expected, &made).unified_diff()
        );
    }
    // And the run's own values are there.
    for leaf in ["event-channel", "ring-ref"] {
        assert!(ours.exists(&format!("{}/{leaf}", frontend(1))), "{leaf}");
    }
    assert_eq!(
        ours.read(&format!("{}/sectors", backend(1))).unwrap(),
        b"131072"
    );
    assert!(!ours.exists("/local/domain/0/error"));
}

/// The script's refusal as a real host shows it: Debian's block script
/// refused guest2 a device guest1 writes (tests/realxen/fixtures/
/// xl-refused-shared-writer.xenstore, left as xl left it). The same nodes
/// written on the simulator by a toolstack that waits for nothing end the
/// same: blkback in InitWait with its probe's nodes, the script's `busy`
/// in its words, and guest2's blkfront Initialised, waiting for a backend
/// that never connects.
#[test]
fn a_refused_second_writer_ends_as_on_a_real_host() {
    let text =
        std::fs::read_to_string(fixtures().join("xl-refused-shared-writer.xenstore")).unwrap();
    let real = xendisk::sim::dump::parse(&text).unwrap();
    let mut before = real.clone();
    for gone in [
        backend(2).as_str(),
        frontend(2).as_str(),
        "/libxl/2/device/vbd",
    ] {
        before.rm(gone).unwrap();
    }
    let mut view = HostView::default();
    view.devices.insert(
        "/dev/loop1".into(),
        device(DevNum::new(7, 1), 16384, "/dev/loop1"),
    );
    let dir = tempfile::tempdir().unwrap();
    let simulator = Simulator::start_with_drivers(
        &dir.path().join("socket"),
        before,
        GuestPolicy::default(),
        Faults::default(),
        Some(Drivers {
            host: view,
            ..Drivers::default()
        }),
    )
    .unwrap();
    let client = XsClient::connect_to(simulator.socket()).unwrap();
    XenstoreToolstack::with_client(
        client,
        BackendHost::Simulated,
        Duration::from_secs(5),
        false,
    )
    .attach(&AttachRequest {
        domain: "guest2".into(),
        ..request(2, "/dev/loop1", Mode::Write)
    })
    .unwrap();
    let ours = simulator.store();
    for (place, top) in [
        ("backend", backend(2)),
        ("frontend", frontend(2)),
        ("record", "/libxl/2/device/vbd".to_owned()),
    ] {
        let (expected, made) = (subtree(&real, &top, place), subtree(&ours, &top, place));
        assert!(
            made == expected,
            "{place}: the simulated refusal differs from the real one (- real, + simulated):\n{}",
            similar::TextDiff::from_lines(&expected, &made).unified_diff()
        );
    }
    let value = |path: String| String::from_utf8(ours.read(&path).unwrap().to_vec()).unwrap();
    assert_eq!(value(format!("{}/hotplug-status", backend(2))), "busy");
    assert_eq!(value(format!("{}/state", frontend(2))), "3");
}

/// Nothing of a refused attach is left.
fn assert_undone(host: &Host, domid: u32) {
    let store = host.simulator.store();
    for path in [
        backend(domid),
        frontend(domid),
        format!("/libxl/{domid}/device/vbd/51728"),
    ] {
        assert!(!store.exists(&path), "{path} left behind");
    }
}

fn hotplug_error(error: ToolstackError) -> String {
    match error {
        ToolstackError::Hotplug { error, .. } => error,
        other => panic!("not a hotplug refusal: {other}"),
    }
}

#[test]
fn a_device_dom0_mounts_is_refused_in_the_script_s_words_and_undone() {
    let host = Host::two_guests(&[]);
    let error = host
        .toolstack()
        .attach(&request(4, "/dev/sdb2", Mode::Write))
        .unwrap_err();
    assert_eq!(
        hotplug_error(error),
        "Device /dev/sdb2 is mounted in the privileged domain,\n\
         and so cannot be mounted by a guest."
    );
    assert_undone(&host, 4);
    // Read-only conflicts with a read-write mount too, in other words.
    let error = host
        .toolstack()
        .attach(&request(4, "/dev/sdb2", Mode::Read))
        .unwrap_err();
    assert_eq!(
        hotplug_error(error),
        "Device /dev/sdb2 is mounted read-write in the privileged domain,\n\
         and so cannot be mounted read-only by a guest."
    );
    // `w!` skips the script's check (xendisk made its own).
    host.toolstack()
        .attach(&request(4, "/dev/sdb2", Mode::WriteShared))
        .unwrap();
}

#[test]
fn a_device_another_guest_writes_is_refused_even_read_only() {
    let host = Host::two_guests(&[]);
    host.toolstack()
        .attach(&request(5, "/dev/sdb1", Mode::Write))
        .unwrap();
    assert_eq!(host.read(&format!("{}/state", backend(5))).unwrap(), "4");
    let error = host
        .toolstack()
        .attach(&request(4, "/dev/sdb1", Mode::Read))
        .unwrap_err();
    assert_eq!(
        hotplug_error(error),
        "Device /dev/sdb1 is mounted read-write in a guest domain,\n\
         and so cannot be mounted read-only now."
    );
    assert_undone(&host, 4);
    // The other guest's disk is untouched.
    assert_eq!(host.read(&format!("{}/state", backend(5))).unwrap(), "4");
}

#[test]
fn a_device_guests_only_read_is_shared() {
    let host = Host::two_guests(&[]);
    for domid in [5, 4] {
        host.toolstack()
            .attach(&request(domid, "/dev/sdb1", Mode::Read))
            .unwrap();
        assert_eq!(
            host.read(&format!("{}/state", frontend(domid))).unwrap(),
            "4"
        );
        assert_eq!(host.read(&format!("{}/info", backend(domid))).unwrap(), "4");
    }
}

#[test]
fn a_path_that_is_no_device_is_refused_once_the_script_wrote_no_device() {
    let host = Host::two_guests(&[]);
    let error = host
        .toolstack()
        .attach(&request(4, "/dev/sdz", Mode::Write))
        .unwrap_err();
    let said = hotplug_error(error);
    assert!(said.contains("wrote no physical-device"), "{said}");
    assert!(said.contains("/dev/sdz"), "{said}");
    assert_undone(&host, 4);
}

#[test]
fn an_image_file_gets_a_loop_device_and_a_second_writer_is_refused() {
    let host = Host::two_guests(&[]);
    std::fs::write(host.dir.path().join("disk.img"), vec![0u8; 4096]).unwrap();
    host.toolstack()
        .attach(&request(4, "/disk.img", Mode::Write))
        .unwrap();
    let at = |leaf: &str| host.read(&format!("{}/{leaf}", backend(4)));
    assert_eq!(at("node").as_deref(), Some("/dev/loop1"));
    assert_eq!(at("physical-device").as_deref(), Some("7:1"));
    assert_eq!(at("physical-device-path").as_deref(), Some("/dev/loop1"));
    assert_eq!(at("sectors").as_deref(), Some("8"));
    assert_eq!(at("state").as_deref(), Some("4"));
    let error = host
        .toolstack()
        .attach(&request(5, "/disk.img", Mode::Write))
        .unwrap_err();
    assert_eq!(
        hotplug_error(error),
        "File /disk.img is loopback-mounted through 7:1,\nwhich is mounted in a guest domain,\n\
         and so cannot be mounted now."
    );
    assert_undone(&host, 5);
}

#[test]
fn a_guest_without_blkfront_is_attached_but_never_connected() {
    let host = Host::two_guests(&[4]);
    host.toolstack()
        .attach(&request(4, "/dev/sdb1", Mode::Write))
        .unwrap();
    assert_eq!(host.read(&format!("{}/state", backend(4))).unwrap(), "2");
    assert_eq!(host.read(&format!("{}/state", frontend(4))).unwrap(), "1");
    assert_eq!(
        host.read(&format!("{}/hotplug-status", backend(4)))
            .unwrap(),
        "connected"
    );
}

#[test]
fn a_connected_disk_is_detached_through_its_guest() {
    let host = Host::two_guests(&[]);
    host.toolstack()
        .attach(&request(4, "/dev/sdb1", Mode::Write))
        .unwrap();
    assert_eq!(host.read(&format!("{}/state", frontend(4))).unwrap(), "4");
    host.toolstack()
        .detach(&DetachRequest {
            domain: "guest1".into(),
            domid: 4,
            vdev: "xvdb".into(),
            devid: 51728,
            backend: "vbd".into(),
            closing: false,
        })
        .unwrap();
    assert_undone(&host, 4);
}

/// A hotplug script that takes its time (a real one takes from tens of
/// milliseconds to seconds): the attach waits for it and ends connected,
/// and two disks brought up at once each get their own loop device.
#[test]
fn a_slow_hotplug_step_is_waited_for() {
    let host = Host::two_guests_with(&[], Duration::from_millis(50));
    std::fs::write(host.dir.path().join("a.img"), vec![0; 4096]).unwrap();
    std::fs::write(host.dir.path().join("b.img"), vec![0; 4096]).unwrap();
    std::thread::scope(|scope| {
        for (domid, image) in [(4, "/a.img"), (5, "/b.img")] {
            let host = &host;
            scope.spawn(move || {
                host.toolstack()
                    .attach(&request(domid, image, Mode::Read))
                    .unwrap();
            });
        }
    });
    for domid in [4, 5] {
        assert_eq!(
            host.read(&format!("{}/state", frontend(domid))).unwrap(),
            "4"
        );
    }
    let devices: std::collections::BTreeSet<String> = [4, 5]
        .iter()
        .map(|domid| {
            host.read(&format!("{}/physical-device", backend(*domid)))
                .unwrap()
        })
        .collect();
    assert_eq!(devices.len(), 2, "{devices:?}");
}

/// The nodes as the xenstore toolstack wrote them before it followed
/// libxl: every leaf first, the directories' permissions after, so the
/// leaves kept dom0's alone.
fn attach_the_old_way(host: &Host, leaves: &[(&str, &str)]) {
    let mut client = XsClient::connect_to(host.simulator.socket()).unwrap();
    let (backend, frontend) = (backend(4), frontend(4));
    client
        .transaction("old attach", |client, tx| {
            for (leaf, value) in leaves {
                client.write(tx, &format!("{backend}/{leaf}"), value)?;
            }
            client.set_perms(tx, &backend, &["n0".into(), "r4".into()])?;
            for (leaf, value) in [("backend", backend.as_str()), ("state", "1")] {
                client.write(tx, &format!("{frontend}/{leaf}"), value)?;
            }
            client.set_perms(tx, &frontend, &["n4".into(), "r0".into()])
        })
        .unwrap();
}

#[test]
fn a_disk_attached_the_old_way_never_connects() {
    let host = Host::two_guests(&[]);
    let frontend4 = frontend(4);
    // All the nodes blkback and the script need, with the wrong rights:
    // dom0's drivers take it up, the guest cannot see or answer it.
    attach_the_old_way(
        &host,
        &[
            ("frontend", frontend4.as_str()),
            ("frontend-id", "4"),
            ("online", "1"),
            ("state", "1"),
            ("type", "phy"),
            ("mode", "w"),
            ("params", "/dev/sdb1"),
            ("script", "/etc/xen/scripts/block"),
        ],
    );
    let at = |leaf: &str| host.read(&format!("{}/{leaf}", backend(4)));
    assert_eq!(at("hotplug-status").as_deref(), Some("connected"));
    assert_eq!(at("state").as_deref(), Some("2"));
    assert_eq!(host.read(&format!("{frontend4}/state")).unwrap(), "1");
    assert!(host.read(&format!("{frontend4}/ring-ref")).is_none());
}

#[test]
fn a_backend_without_what_blkback_needs_fails_as_blkback_does() {
    let host = Host::two_guests(&[]);
    let frontend4 = frontend(4);
    // The old toolstack wrote no frontend-id: blkback cannot find the other end.
    attach_the_old_way(
        &host,
        &[
            ("frontend", frontend4.as_str()),
            ("state", "1"),
            ("mode", "w"),
            ("params", "/dev/sdb1"),
        ],
    );
    assert_eq!(host.read(&format!("{}/state", backend(4))).unwrap(), "5");
    assert_eq!(
        host.read("/local/domain/0/error/backend/vbd/4/51728/error")
            .unwrap(),
        "2 reading other end details from backend/vbd/4/51728"
    );
}

#[test]
fn a_backend_without_params_is_refused_by_the_script() {
    let host = Host::two_guests(&[]);
    let frontend4 = frontend(4);
    let mut client = XsClient::connect_to(host.simulator.socket()).unwrap();
    let backend4 = backend(4);
    client
        .transaction("attach", |client, tx| {
            client.write(tx, &format!("{frontend4}/state"), "1")?;
            for (leaf, value) in [
                ("frontend", frontend4.as_str()),
                ("frontend-id", "4"),
                ("mode", "w"),
                ("script", "/etc/xen/scripts/block"),
                ("state", "1"),
            ] {
                client.write(tx, &format!("{backend4}/{leaf}"), value)?;
            }
            Ok(())
        })
        .unwrap();
    let at = |leaf: &str| host.read(&format!("{backend4}/{leaf}"));
    assert_eq!(at("hotplug-status").as_deref(), Some("error"));
    assert_eq!(
        at("hotplug-error").as_deref(),
        Some("xenstore-read backend/vbd/4/51728/params failed.")
    );
    assert_eq!(at("state").as_deref(), Some("2"));
}

/// On a `--sim` host the simulated hotplug step is waited for as the
/// script is on a real one: a device dom0 mounts read-write, which the
/// `unsafe` sharing level lets xendisk hand a guest, is refused by the
/// script, and the apply says so and leaves nothing behind.
#[test]
fn apply_on_a_simulated_host_reports_the_script_s_refusal() {
    let scratch = tempfile::tempdir().unwrap();
    let demo = scratch.path().join("demo");
    host::copy_demo_host(&demo);
    let desired = scratch.path().join("busy.toml");
    std::fs::write(
        &desired,
        "[settings]\nsharing = \"unsafe\"\ntoolstack = \"xenstore\"\n\n\
         [domains.web01.disks]\n\
         xvda = { source = \"phy:/dev/mapper/vg0-web01\", mode = \"w\" }\n\
         xvdb = { source = \"phy:/dev/sdb1\", mode = \"r\" }\n\
         xvdc = { source = \"phy:/dev/sda1\", mode = \"r\" }\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_xendisk"))
        .arg("--sim")
        .arg(&demo)
        .args(["apply", "--yes"])
        .arg(&desired)
        .env_remove("XENSTORED_PATH")
        .env_remove("XENDISK_STATE")
        .env_remove("XENDISK_NO_HOTPLUG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "Device /dev/sda1 is mounted read-write in the privileged domain,\n\
             and so cannot be mounted read-only by a guest."
        ),
        "{text}"
    );
    let kept = std::fs::read_to_string(demo.join(".sim/xenstore.xs")).unwrap();
    assert!(!kept.contains("/dev/sda1"), "{kept}");
}
