//! Attacks on xendisk's safety guarantees, on real loop devices (root and
//! /dev/loop-control; skipped, and said so, elsewhere) with a simulated
//! xenstored seeded with the backends each attack needs.
//!
//! Every refused plan is checked three ways: `plan` and `apply` exit 3, the
//! state DB and xenstore are unchanged, and markers written into the victim
//! sectors beforehand are still there byte for byte. Each attack that
//! broke a guarantee when it was written says how it did, above its test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xendisk::sim::{Faults, GuestPolicy, Simulator, Store, dump};

use common::PartitionedLoop;

const DOMAINS: &str = r#"/local/domain/0/name = "Domain-0"
/local/domain/4/name = "guest1"
/local/domain/5/name = "guest2"
"#;

/// Fields drop in order: the simulator before the directory its socket is in.
struct Host {
    simulator: Simulator,
    dir: tempfile::TempDir,
}

impl Host {
    /// A host whose xenstore has the domains and `backends` (dump lines).
    fn new(backends: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let store: Store = dump::parse(&format!("{DOMAINS}{backends}")).unwrap();
        let simulator = Simulator::start(
            &dir.path().join("xenstored.socket"),
            store,
            GuestPolicy::default(),
            Faults::default(),
        )
        .unwrap();
        Host { simulator, dir }
    }

    /// A host with `backends` whose state DB starts as `other`'s is now.
    fn with_state_of(other: &Host, backends: &str) -> Host {
        let host = Host::new(backends);
        for entry in std::fs::read_dir(other.dir.path()).unwrap() {
            let entry = entry.unwrap();
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("state.sqlite")
            {
                std::fs::copy(
                    entry.path(),
                    host.path(&entry.file_name().to_string_lossy()),
                )
                .unwrap();
            }
        }
        host
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// A `xendisk` command; the state DB is made by `init` before the first.
    fn run(&self, args: &[&str]) -> Output {
        if args.first() != Some(&"init") && !self.path("state.sqlite").exists() {
            assert_exit(&self.run(&["init"]), 0);
        }
        Command::new(env!("CARGO_BIN_EXE_xendisk"))
            .args(args)
            .arg("--state")
            .arg(self.path("state.sqlite"))
            .arg("--host-root")
            .arg("/")
            .current_dir(self.dir.path())
            .env("XENSTORED_PATH", self.simulator.socket())
            .env("NO_COLOR", "1")
            .env_remove("XENDISK_NOW")
            .output()
            .unwrap()
    }

    /// The state DB and the whole of xenstore, to compare before and after.
    fn everything(&self) -> (String, Vec<(String, Vec<u8>)>) {
        let state = self.run(&["state", "--json"]);
        (
            String::from_utf8_lossy(&state.stdout).into_owned(),
            self.simulator.store().entries(),
        )
    }

    /// `plan` and `apply` of `file` are refused (exit 3), nothing changes,
    /// and every marker survives.
    fn assert_refused(&self, file: &str, markers: &[&Marker]) {
        let before = self.everything();
        let plan = self.run(&["plan", file]);
        assert_exit(&plan, 3);
        let apply = self.run(&["apply", file, "--yes"]);
        assert_exit(&apply, 3);
        assert!(
            text(&apply).contains("Refused"),
            "refusal explained: {}",
            text(&apply)
        );
        assert_eq!(self.everything(), before, "a refused plan changed the host");
        for marker in markers {
            marker.assert_intact();
        }
    }

    fn applied(&self, file: &str, extra: &[&str]) {
        let mut args = vec!["apply", file, "--yes"];
        args.extend_from_slice(extra);
        assert_exit(&self.run(&args), 0);
    }
}

/// Dump lines for one backend of `kind` (`vbd`, `qdisk`, `vbd3`) of `domid`
/// at `devid` (xvdb = 51728), connected unless `extra` says otherwise.
fn backend(
    kind: &str,
    domid: u32,
    devid: u32,
    params: &str,
    mode: &str,
    extra: &[(&str, &str)],
) -> String {
    let base = format!("/local/domain/0/backend/{kind}/{domid}/{devid}");
    let mut nodes: Vec<(String, String)> = [
        (
            "frontend",
            format!("/local/domain/{domid}/device/vbd/{devid}"),
        ),
        ("frontend-id", domid.to_string()),
        ("params", params.to_owned()),
        ("mode", mode.to_owned()),
        ("type", if kind == "vbd" { "phy" } else { kind }.to_owned()),
        ("dev", "xvdb".to_owned()),
        ("online", "1".to_owned()),
        ("state", "4".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (key, value) in extra {
        match nodes.iter_mut().find(|(k, _)| k == key) {
            Some(node) => node.1 = (*value).to_owned(),
            None => nodes.push(((*key).to_owned(), (*value).to_owned())),
        }
    }
    let mut out = String::new();
    for (key, value) in nodes {
        out.push_str(&format!("{base}/{key} = \"{value}\"\n"));
    }
    out.push_str(&format!(
        "/local/domain/{domid}/device/vbd/{devid}/backend = \"{base}\"\n\
         /local/domain/{domid}/device/vbd/{devid}/state = \"4\"\n"
    ));
    out
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(output.status.code(), Some(code), "{}", text(output));
}

/// The host's block devices to this test alone, if it can use loop
/// devices: every test observes the whole host (`--host-root /`), so one
/// test's loop devices and mounts must not show up in another's plan.
fn loops_available(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    match common::cannot_use_loop_devices() {
        Some(reason) => {
            common::skipped(test, &reason);
            None
        }
        None => Some(common::real_devices()),
    }
}

/// A loop disk of 64MiB: p1 16MiB from sector 2048, p2 the rest.
fn disk(host: &Host) -> PartitionedLoop {
    PartitionedLoop::new(
        &host.path("disk.img"),
        64 << 20,
        "label: dos\n,16MiB,L\n,,L\n",
        2,
    )
}

/// The device number of a block device node, as xenstore's
/// `physical-device` writes it (hex `major:minor`).
fn physical_device(path: &str) -> String {
    let name = Path::new(path).file_name().unwrap().to_str().unwrap();
    let numbers = std::fs::read_to_string(format!("/sys/class/block/{name}/dev")).unwrap();
    let (major, minor) = numbers.trim().split_once(':').unwrap();
    format!(
        "{:x}:{:x}",
        major.parse::<u32>().unwrap(),
        minor.parse::<u32>().unwrap()
    )
}

/// Bytes written into a victim area, checked byte for byte afterwards.
struct Marker {
    path: String,
    offset: u64,
    bytes: Vec<u8>,
}

impl Marker {
    fn write(path: &str, offset: u64, tag: &str) -> Marker {
        use std::io::{Seek, SeekFrom, Write};
        let bytes = format!("VICTIM {tag} at {offset} of {path}").into_bytes();
        let mut file = std::fs::File::options().write(true).open(path).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(&bytes).unwrap();
        file.sync_all().unwrap();
        Marker {
            path: path.to_owned(),
            offset,
            bytes,
        }
    }

    fn read(&self) -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(&self.path).unwrap();
        file.seek(SeekFrom::Start(self.offset)).unwrap();
        let mut buffer = vec![0; self.bytes.len()];
        file.read_exact(&mut buffer).unwrap();
        buffer
    }

    fn assert_intact(&self) {
        assert_eq!(
            String::from_utf8_lossy(&self.read()),
            String::from_utf8_lossy(&self.bytes),
            "the marker at {} of {} was overwritten",
            self.offset,
            self.path
        );
    }
}

/// A loop device of this test's own, detached when dropped.
struct ExtraLoop(String);

impl ExtraLoop {
    fn new(args: &[&str]) -> ExtraLoop {
        let mut all = vec!["-f", "--show"];
        all.extend_from_slice(args);
        ExtraLoop(common::run("losetup", &all))
    }
}

impl Drop for ExtraLoop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mount of this test's own, undone when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn new(device: &str, at: PathBuf) -> Mounted {
        std::fs::create_dir_all(&at).unwrap();
        common::run("mount", &[device, at.to_str().unwrap()]);
        Mounted(at)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn settings(sharing: &str) -> String {
    format!("[settings]\ntoolstack = \"xenstore\"\nsharing = \"{sharing}\"\n\n")
}

fn pool(name: &str, devices: &[&str]) -> String {
    let list: Vec<String> = devices.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "[pools.{name}]\nextent_size = \"1MiB\"\ndevices = [{}]\n\n",
        list.join(", ")
    )
}

fn vdisk(name: &str, pool: &str, size: &str) -> String {
    format!("[vdisks.{name}]\npool = \"{pool}\"\nsize = \"{size}\"\n\n")
}

fn disks(domain: &str, lines: &[&str]) -> String {
    format!("[domains.{domain}.disks]\n{}\n\n", lines.join("\n"))
}

// ---------------------------------------------------------------------------
// Attacks xendisk holds.
// ---------------------------------------------------------------------------

/// Claim 1/2/3/4: a pool partition handed to a guest rw as `file:` (the
/// node itself, or a link to it), at every sharing level and with `w!`.
#[test]
fn a_pool_partition_given_to_a_guest_as_a_file_is_refused() {
    let Some(_devices) = loops_available("a_pool_partition_given_to_a_guest_as_a_file_is_refused")
    else {
        return;
    };
    let host = Host::new("");
    let disk = disk(&host);
    let p1 = disk.partition(1);
    let link = host.path("link-to-p1");
    std::os::unix::fs::symlink(&p1, &link).unwrap();
    let link = link.to_str().unwrap();
    let base = format!("{}{}", settings("exclusive"), pool("a", &[&p1]));
    host.applied(&host.file("pool.toml", &base), &[]);
    let markers = [
        Marker::write(&p1, 0, "p1 start"),
        Marker::write(&p1, 9 << 20, "p1 middle"),
    ];
    for sharing in ["exclusive", "single-writer", "unsafe"] {
        for (source, mode) in [
            (format!("file:{p1}"), "w"),
            (format!("file:{link}"), "w"),
            (format!("file:{link}"), "w!"),
            (format!("phy:{p1}"), "w!"),
        ] {
            let desired = format!(
                "{}{}{}",
                settings(sharing),
                pool("a", &[&p1]),
                disks(
                    "guest1",
                    &[&format!(
                        "xvda = {{ source = \"{source}\", mode = \"{mode}\" }}"
                    )]
                )
            );
            host.assert_refused(
                &host.file("attack.toml", &desired),
                &[&markers[0], &markers[1]],
            );
        }
    }
}

/// Claim 3: a whole disk in one pool and its partition in another (either
/// way round), or a loop device over a pool partition, then a vdisk there.
#[test]
fn a_disk_and_its_partition_never_sit_in_two_pools() {
    let Some(_devices) = loops_available("a_disk_and_its_partition_never_sit_in_two_pools") else {
        return;
    };
    let host = Host::new("");
    let disk = disk(&host);
    let (p1, p2) = (disk.partition(1), disk.partition(2));
    let over_p1 = ExtraLoop::new(&[&p1]);
    let markers = [
        Marker::write(&p1, 0, "p1"),
        Marker::write(&p2, 0, "p2"),
        Marker::write(&disk.device, 512, "disk"),
    ];
    let all: Vec<&Marker> = markers.iter().collect();
    // The partition first, then the disk (and a loop over the partition).
    host.applied(
        &host.file(
            "p1.toml",
            &format!("{}{}", settings("exclusive"), pool("a", &[&p1])),
        ),
        &[],
    );
    for second in [disk.device.as_str(), over_p1.0.as_str()] {
        for same_pool in [false, true] {
            let pools = if same_pool {
                pool("a", &[&p1, second])
            } else {
                format!("{}{}", pool("a", &[&p1]), pool("b", &[second]))
            };
            let target = if same_pool { "a" } else { "b" };
            let desired = format!(
                "{}{}{}",
                settings("unsafe"),
                pools,
                vdisk("v", target, "8MiB")
            );
            host.assert_refused(&host.file("attack.toml", &desired), &all);
        }
    }
    // The disk first, then its partition.
    let host = Host::new("");
    host.applied(
        &host.file(
            "whole.toml",
            &format!("{}{}", settings("exclusive"), pool("a", &[&disk.device])),
        ),
        &[],
    );
    let desired = format!(
        "{}{}{}{}",
        settings("exclusive"),
        pool("a", &[&disk.device]),
        pool("b", &[&p2]),
        vdisk("v", "b", "4MiB")
    );
    host.assert_refused(&host.file("attack.toml", &desired), &all);
}

/// Claim 1: a guest holds a partition rw through a qdisk, vbd3 or vbd
/// backend whose `params` is spelled with driver and format prefixes, or a
/// link, with no `physical-device`: adding that partition to a pool (and a
/// vdisk, whose scrub would zero it) is refused.
#[test]
fn a_guests_partition_is_found_whatever_the_params_spelling() {
    let Some(_devices) =
        loops_available("a_guests_partition_is_found_whatever_the_params_spelling")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    let link = scratch.path("srv-x");
    std::os::unix::fs::symlink(&p1, &link).unwrap();
    let link = link.to_str().unwrap().to_owned();
    let relative_dev = format!(
        "/dev/disk/../{}",
        Path::new(&p1).file_name().unwrap().to_str().unwrap()
    );
    let spellings = [
        ("qdisk", format!("aio:{p1}")),
        ("qdisk", format!("raw:{p1}")),
        ("qdisk", format!("qcow2:{link}")),
        ("qdisk", link.clone()),
        ("qdisk", format!("file:{link}")),
        ("qdisk", relative_dev),
        ("vbd3", format!("tap2:tapdisk:aio:{link}")),
        ("vbd3", format!("vhd:{p1}")),
        ("vbd", format!("tap:aio:{p1}")),
        ("vbd", format!("phy:{link}")),
    ];
    let marker = Marker::write(&p1, 0, "guest data");
    for (kind, params) in spellings {
        let host = Host::new(&backend(kind, 4, 51728, &params, "w", &[]));
        let desired = format!(
            "{}{}{}",
            settings("unsafe"),
            pool("a", &[&p1]),
            vdisk("v", "a", "4MiB")
        );
        let before = host.everything();
        let plan = host.run(&["plan", &host.file("attack.toml", &desired)]);
        assert_eq!(
            plan.status.code(),
            Some(3),
            "{kind} {params}: {}",
            text(&plan)
        );
        host.assert_refused(&host.path("attack.toml").to_string_lossy(), &[&marker]);
        assert_eq!(host.everything(), before);
    }
}

/// Claim 2: an image loop-mounted rw in dom0 cannot go to a guest, rw or
/// even ro (dom0 writes it), whatever the spelling of its path.
#[test]
fn a_loop_mounted_image_cannot_go_to_a_guest() {
    let Some(_devices) = loops_available("a_loop_mounted_image_cannot_go_to_a_guest") else {
        return;
    };
    let host = Host::new("");
    let image = host.path("img.ext4");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let image = image.to_str().unwrap().to_owned();
    common::run("mkfs.ext4", &["-q", "-F", &image]);
    let looped = ExtraLoop::new(&[&image]);
    let _mounted = Mounted::new(&looped.0, host.path("mnt"));
    let link = host.path("img-link");
    std::os::unix::fs::symlink(&image, &link).unwrap();
    let dir = host.dir.path().to_str().unwrap().to_owned();
    for source in [
        image.clone(),
        link.to_str().unwrap().to_owned(),
        format!("{dir}/./img.ext4"),
        format!("{dir}//img.ext4"),
        format!("{dir}/mnt/../img.ext4"),
    ] {
        for mode in ["w", "r"] {
            let desired = format!(
                "{}{}",
                settings("exclusive"),
                disks(
                    "guest1",
                    &[&format!(
                        "xvda = {{ source = \"file:{source}\", mode = \"{mode}\" }}"
                    )]
                )
            );
            host.assert_refused(&host.file("attack.toml", &desired), &[]);
        }
    }
}

/// Claim 6: a backend being torn down (online = 0, Closing, Closed) is not
/// attached (the same attachment is planned again, never "no changes") and
/// still holds its partition (a pool add is refused).
#[test]
fn backends_being_torn_down_hold_their_sectors_and_are_not_attached() {
    let Some(_devices) =
        loops_available("backends_being_torn_down_hold_their_sectors_and_are_not_attached")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p2 = disk.partition(2);
    let marker = Marker::write(&p2, 0, "closing guest");
    for (key, value) in [("online", "0"), ("state", "5"), ("state", "6")] {
        for physical in [true, false] {
            let number = physical_device(&p2);
            let mut extra = vec![(key, value)];
            if physical {
                extra.push(("physical-device", number.as_str()));
            }
            let host = Host::new(&backend("vbd", 4, 51728, &p2, "w", &extra));
            let same = format!(
                "{}{}",
                settings("exclusive"),
                disks(
                    "guest1",
                    &[&format!("xvdb = {{ source = \"phy:{p2}\", mode = \"w\" }}")]
                )
            );
            let plan = host.run(&["plan", &host.file("same.toml", &same)]);
            assert_exit(&plan, 2);
            assert!(
                text(&plan).contains("finish detaching xvdb")
                    && text(&plan).contains("attach xvdb"),
                "{key}={value}: {}",
                text(&plan)
            );
            let desired = format!(
                "{}{}{}",
                settings("unsafe"),
                pool("a", &[&p2]),
                vdisk("v", "a", "4MiB")
            );
            host.assert_refused(&host.file("attack.toml", &desired), &[&marker]);
        }
    }
}

/// Claim 5: the detach of a guest's partition and the pool add (and scrub)
/// of that partition run in that order at --parallelism 4: the plan says
/// so (`depends_on`, `waits_for_sharing`) and the journal shows it.
#[test]
fn a_detach_then_pool_add_of_the_same_partition_is_ordered_in_parallel() {
    let Some(_devices) =
        loops_available("a_detach_then_pool_add_of_the_same_partition_is_ordered_in_parallel")
    else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let (p1, p2) = (disk.partition(1), disk.partition(2));
    let mut backends = backend(
        "vbd",
        4,
        51728,
        &p2,
        "w",
        &[("physical-device", &physical_device(&p2))],
    );
    backends.push_str(&backend("vbd", 5, 51728, &format!("phy:{p1}"), "w", &[]));
    let host = Host::new(&backends);
    let desired = format!(
        "{}{}{}{}{}",
        settings("exclusive"),
        pool("a", &[&p2, &p1]),
        vdisk("v", "a", "40MiB"),
        disks("guest1", &[]),
        disks("guest2", &[]),
    );
    let file = host.file("desired.toml", &desired);
    let decimal = |path: &str| {
        let name = Path::new(path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        std::fs::read_to_string(format!("/sys/class/block/{name}/dev"))
            .unwrap()
            .trim()
            .to_owned()
    };
    // The guest holding each partition, by its device number.
    let holder_of = |device: &str| -> u64 {
        if device == decimal(&p2) {
            4
        } else {
            assert_eq!(device, decimal(&p1));
            5
        }
    };
    let devices_of = |op: &serde_json::Value| -> Vec<String> {
        match op["op"].as_str().unwrap() {
            "add-pool-device" => vec![op["device"].as_str().unwrap().to_owned()],
            _ => op["extents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["device"].as_str().unwrap().to_owned())
                .collect(),
        }
    };
    let plan: serde_json::Value =
        serde_json::from_slice(&host.run(&["plan", &file, "--json"]).stdout).unwrap();
    let steps = plan["steps"].as_array().unwrap();
    let by_id = |id: u64| steps.iter().find(|s| s["id"] == id).unwrap();
    let detach_of = |domid: u64| {
        steps
            .iter()
            .find(|s| s["op"] == "detach" && s["domid"] == domid)
            .unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    let ancestors = |step: &serde_json::Value| {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo: Vec<u64> = vec![step["id"].as_u64().unwrap()];
        while let Some(id) = todo.pop() {
            for d in by_id(id)["depends_on"].as_array().unwrap() {
                if seen.insert(d.as_u64().unwrap()) {
                    todo.push(d.as_u64().unwrap());
                }
            }
        }
        seen
    };
    let writers: Vec<&serde_json::Value> = steps
        .iter()
        .filter(|s| s["op"] == "add-pool-device" || s["op"] == "scrub")
        .collect();
    assert!(writers.len() >= 3, "{plan}");
    for step in &writers {
        let before = ancestors(step);
        for device in devices_of(step) {
            assert!(
                before.contains(&detach_of(holder_of(&device))),
                "{step} has no dependency path from the detach of {device}"
            );
        }
    }
    assert!(
        writers
            .iter()
            .any(|s| !s["waits_for_sharing"].as_array().is_none_or(Vec::is_empty)),
        "no step says it waits for sharing: {plan}"
    );
    host.applied(&file, &["--parallelism", "4"]);
    let runs: serde_json::Value =
        serde_json::from_slice(&host.run(&["state", "--runs", "--json"]).stdout).unwrap();
    let journal = runs[0]["steps"].as_array().unwrap();
    let time = |step: &serde_json::Value, key: &str| {
        step[key]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    let released = |domid: u64| {
        let step = journal
            .iter()
            .find(|s| s["op"]["op"] == "detach" && s["op"]["domid"] == domid)
            .unwrap();
        time(step, "finished_at")
    };
    for step in journal
        .iter()
        .filter(|s| s["op"]["op"] == "add-pool-device" || s["op"]["op"] == "scrub")
    {
        for device in devices_of(&step["op"]) {
            let free = released(holder_of(&device));
            assert!(
                time(step, "started_at") >= free,
                "{step} started before the guest let go of {device} ({free})"
            );
        }
    }
    assert_exit(&host.run(&["plan", &file]), 0);
}

/// Claim 7: `file:` paths with `:`, spaces, commas, `=`, quotes, newlines
/// and `..` converge.
#[test]
fn odd_file_paths_round_trip() {
    let _devices = common::real_devices();
    let host = Host::new("");
    let dir = host.path("im g");
    std::fs::create_dir(&dir).unwrap();
    let names = [
        "a:b.img",
        "c,d.img",
        "e=f.img",
        "g h.img",
        "q\"t.img",
        "n\nl.img",
        "aio:x.img",
        "phy:",
    ];
    let mut lines = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path = dir.join(name);
        std::fs::write(&path, b"image").unwrap();
        let toml_path = toml::Value::String(format!("file:{}", path.to_str().unwrap()));
        let vdev = format!("xvd{}", (b'a' + i as u8) as char);
        let mode = if i % 2 == 0 { "w" } else { "r" };
        lines.push(format!(
            "{vdev} = {{ source = {toml_path}, mode = \"{mode}\" }}"
        ));
    }
    let dotted = toml::Value::String(format!("file:{}/sub/../a:b.img", dir.to_str().unwrap()));
    lines.push(format!("xvdz = {{ source = {dotted}, mode = \"r\" }}"));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let file = host.file(
        "desired.toml",
        &format!("{}{}", settings("single-writer"), disks("guest1", &refs)),
    );
    assert_exit(&host.run(&["apply", &file, "--yes", "--no-devices"]), 0);
    assert_exit(&host.run(&["plan", &file]), 0);
}

/// Claim 1: a holder that cannot be resolved (a device that is not there,
/// no `physical-device` yet) makes a pool add a refusal, and is reported.
#[test]
fn an_unresolvable_device_holder_refuses_writes() {
    let Some(_devices) = loops_available("an_unresolvable_device_holder_refuses_writes") else {
        return;
    };
    let scratch = Host::new("");
    let disk = disk(&scratch);
    let p1 = disk.partition(1);
    let marker = Marker::write(&p1, 0, "maybe held");
    for (kind, params) in [
        ("vbd", "/dev/xendisk-attack-missing"),
        ("qdisk", "aio:/dev/xendisk-attack-missing"),
        ("vbd3", "tap2:tapdisk:aio:/dev/xendisk-attack-missing"),
    ] {
        let host = Host::new(&backend(kind, 4, 51728, params, "w", &[]));
        let desired = format!("{}{}", settings("exclusive"), pool("a", &[&p1]));
        let file = host.file("attack.toml", &desired);
        let plan = host.run(&["plan", &file]);
        assert!(
            text(&plan).contains("cannot tell which disk"),
            "{params}: {}",
            text(&plan)
        );
        host.assert_refused(&file, &[&marker]);
    }
}

// ---------------------------------------------------------------------------
// Attacks that break a guarantee: each asserts the guarantee.
// ---------------------------------------------------------------------------

/// A loop device over an image still held by the image's inode after its
/// name is unlinked: sysfs's `backing_file` then reads "PATH (deleted)".
fn unlink_keeping_a_hard_link(image: &Path, link: &Path) {
    std::fs::hard_link(image, link).unwrap();
    std::fs::remove_file(image).unwrap();
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
        "{}{}{}{}",
        settings("exclusive"),
        pool("a", &[&p1]),
        vdisk("v", "a", "4MiB"),
        disks(
            "guest1",
            &[&format!(
                "xvda = {{ source = \"file:{}\", mode = \"w\" }}",
                link.display()
            )]
        )
    );
    host.assert_refused(&host.file("attack.toml", &desired), &[&marker]);
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
            &[&format!(
                "xvda = {{ source = \"file:{}\", mode = \"w\" }}",
                link.display()
            )]
        )
    );
    host.assert_refused(&host.file("attack.toml", &desired), &[]);
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
        let host = Host::new(&backend("qdisk", 4, 51728, &params, "w", &[]));
        let desired = format!(
            "{}{}{}",
            settings("exclusive"),
            pool("a", &[&p1]),
            vdisk("v", "a", "4MiB")
        );
        host.assert_refused(&host.file("attack.toml", &desired), &[&marker]);
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
        let host = Host::new(&backend(
            "qdisk",
            4,
            51728,
            &format!("{prefix}:{p1}"),
            "w",
            &[],
        ));
        let desired = format!(
            "{}{}{}",
            settings("exclusive"),
            pool("a", &[&p1]),
            vdisk("v", "a", "4MiB")
        );
        host.assert_refused(&host.file("attack.toml", &desired), &[&marker]);
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
    let base = format!(
        "{}{}{}",
        settings("exclusive"),
        pool("a", &[&p2]),
        vdisk("v", "a", "4MiB")
    );
    scratch.applied(&scratch.file("v.toml", &base), &[]);
    // v is extents 0..4 of p2; this loop starts there and never ends.
    let unbounded = ExtraLoop::new(&[&p2]);
    let host = Host::with_state_of(&scratch, &backend("vbd", 4, 51728, &unbounded.0, "w", &[]));
    assert_exit(&host.run(&["plan", &host.file("v.toml", &base)]), 0);
    let marker = Marker::write(&p2, 4 << 20, "guest data past v");
    let desired = format!("{base}{}", vdisk("w", "a", "4MiB"));
    host.assert_refused(&host.file("attack.toml", &desired), &[&marker]);
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
    let base = format!(
        "{}{}{}",
        settings("exclusive"),
        pool("a", &[&p2]),
        vdisk("v", "a", "4MiB")
    );
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
    assert_exit(&host.run(&["plan", &host.file("v.toml", &base)]), 0);
    let marker = Marker::write(&p2, 4 << 20, "guest data past v");
    let desired = format!("{base}{}", vdisk("w", "a", "4MiB"));
    host.assert_refused(&host.file("attack.toml", &desired), &[&marker]);
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
    let host = Host::new(&backend(
        "vbd",
        4,
        51728,
        &p1,
        "w",
        &[("physical-device", &physical_device(&p1))],
    ));
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
    let superblock = Marker {
        path: p1.clone(),
        offset: 1080,
        bytes: vec![0x53, 0xef],
    };
    superblock.assert_intact();
    let desired = format!(
        "{}{}{}",
        settings("exclusive"),
        pool("a", &[&p1]),
        vdisk("v", "a", "4MiB")
    );
    host.assert_refused(&host.file("attack.toml", &desired), &[&superblock]);
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
            "{}{}{}{}",
            settings("exclusive"),
            pool("a", &[&p1]),
            vdisk("v", "a", "4MiB"),
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
