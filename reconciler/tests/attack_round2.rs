//! Second round of attacks on xendisk's safety guarantees (the first is
//! `attack_safety.rs`). Real loop devices where a marker must be checked
//! (root and /dev/loop-control; skipped, and said so, elsewhere), a
//! simulated xenstored seeded with the backends each attack needs, and for
//! what this kernel cannot make (device-mapper, md) a captured /sys tree.
//!
//! A refused plan is checked three ways: `plan` and `apply` exit 3, the
//! state DB and xenstore are unchanged, and markers written into the victim
//! sectors beforehand are still there byte for byte. An attack that still
//! breaks a guarantee is `#[ignore]`d with a one-line reason, and asserts
//! the guarantee: run it with `cargo test --test attack_round2 -- --ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use xendisk::sim::{Faults, GuestPolicy, Simulator, Store, dump};
use xendisk::xs_client::XsClient;

use common::PartitionedLoop;

const DOMAINS: &str = r#"/local/domain/0/name = "Domain-0"
/local/domain/4/name = "guest1"
/local/domain/5/name = "guest2"
"#;

/// Fields drop in order: the simulator before the directory its socket is in.
struct Host {
    simulator: Simulator,
    dir: tempfile::TempDir,
    /// `--host-root`: `/`, or a captured tree.
    root: PathBuf,
}

impl Host {
    fn new(backends: &str) -> Host {
        Host::with(backends, GuestPolicy::default(), PathBuf::from("/"))
    }

    fn with(backends: &str, guests: GuestPolicy, root: PathBuf) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let store: Store = dump::parse(&format!("{DOMAINS}{backends}")).unwrap();
        let simulator = Simulator::start(
            &dir.path().join("xenstored.socket"),
            store,
            guests,
            Faults::default(),
        )
        .unwrap();
        Host {
            simulator,
            dir,
            root,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xendisk"));
        command
            .args(args)
            .arg("--state")
            .arg(self.path("state.sqlite"))
            .arg("--host-root")
            .arg(&self.root)
            .current_dir(self.dir.path())
            .env("XENSTORED_PATH", self.simulator.socket())
            .env("NO_COLOR", "1")
            .env_remove("XENDISK_NOW");
        command
    }

    /// A `xendisk` command; the state DB is made by `init` before the first.
    fn run(&self, args: &[&str]) -> Output {
        if args.first() != Some(&"init") && !self.path("state.sqlite").exists() {
            assert_exit(&self.run(&["init"]), 0);
        }
        self.command(args).output().unwrap()
    }

    /// A wire client of the simulator, to change xenstore behind xendisk's back.
    fn xenstore(&self) -> XsClient {
        XsClient::connect_to(self.simulator.socket()).unwrap()
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
    fn assert_refused(&self, file: &str, extra: &[&str], markers: &[&Marker]) {
        let before = self.everything();
        // `--no-devices` is apply's alone.
        let mut plan_args = vec!["plan", file];
        plan_args.extend(extra.iter().filter(|a| **a != "--no-devices"));
        let plan = self.run(&plan_args);
        let mut apply_args = vec!["apply", file, "--yes"];
        apply_args.extend_from_slice(extra);
        let apply = self.run(&apply_args);
        let after = self.everything();
        for marker in markers {
            marker.assert_intact();
        }
        assert_exit(&plan, 3);
        assert_exit(&apply, 3);
        assert!(
            text(&apply).contains("Refused"),
            "refusal explained: {}",
            text(&apply)
        );
        assert_eq!(after, before, "a refused plan changed the host");
    }

    fn applied(&self, file: &str, extra: &[&str]) {
        let mut args = vec!["apply", file, "--yes"];
        args.extend_from_slice(extra);
        assert_exit(&self.run(&args), 0);
    }
}

/// Dump lines for one backend of `kind` at `/local/domain/0/backend/KIND/DOMID/DEVID`,
/// with the directory names written exactly as given (`dom_dir`, `dev_dir`)
/// and the frontend of domid `domid` at device id `devid`.
#[allow(clippy::too_many_arguments)]
fn backend_at(
    kind: &str,
    dom_dir: &str,
    dev_dir: &str,
    domid: u32,
    devid: u32,
    params: &str,
    mode: &str,
    extra: &[(&str, &str)],
) -> String {
    let base = format!("/local/domain/0/backend/{kind}/{dom_dir}/{dev_dir}");
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

fn backend(kind: &str, domid: u32, devid: u32, params: &str, mode: &str) -> String {
    backend_at(
        kind,
        &domid.to_string(),
        &devid.to_string(),
        domid,
        devid,
        params,
        mode,
        &[],
    )
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

/// The host's block devices to this test alone, if it can use loop devices.
fn loops_available(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    match common::cannot_use_loop_devices() {
        Some(reason) => {
            common::skipped(test, &reason);
            None
        }
        None => Some(common::real_devices()),
    }
}

/// A loop disk of 64MiB: p1 16MiB from sector 2048, p2 from sector 34816.
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
        Marker::write_bytes(
            path,
            offset,
            format!("VICTIM {tag} at {offset} of {path}").into_bytes(),
        )
    }

    fn write_bytes(path: &str, offset: u64, bytes: Vec<u8>) -> Marker {
        use std::io::{Seek, SeekFrom, Write};
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

/// A child process of this test's own, killed (by its id) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    format!("[domains.\"{domain}\".disks]\n{}\n\n", lines.join("\n"))
}

fn disk_line(vdev: &str, source: &str, mode: &str) -> String {
    format!("{vdev} = {{ source = \"{source}\", mode = \"{mode}\" }}")
}

// ---------------------------------------------------------------------------
// Attacks xendisk holds.
// ---------------------------------------------------------------------------

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
        let host = Host::new(&backends);
        let attack = format!(
            "{}{}{}",
            settings("exclusive"),
            pool("a", &[&p1]),
            vdisk("v", "a", "4MiB")
        );
        host.assert_refused(&host.file("attack.toml", &attack), &[], &[&marker]);
        // Detached first, at parallelism 4: it goes, or the apply fails
        // before anything writes the partition.
        let host = Host::new(&backends);
        let desired = format!("{attack}{}", disks("guest1", &[]));
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
    let host = Host::new(&backend("vbd", 5, 51728, &p1, "w"));
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
    let host = Host::with(
        "",
        GuestPolicy {
            close_delay: Duration::from_millis(400),
            never_close: Default::default(),
        },
        PathBuf::from("/"),
    );
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
    let runs: serde_json::Value =
        serde_json::from_slice(&host.run(&["state", "--runs", "--json"]).stdout).unwrap();
    let time = |step: &serde_json::Value, key: &str| {
        step[key]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
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
    let base = format!(
        "{}{}{}",
        settings("exclusive"),
        pool("a", &[&p2]),
        vdisk("v", "a", "4MiB")
    );
    scratch.applied(&scratch.file("v.toml", &base), &[]);
    let marker = Marker::write(&p2, 1 << 20, "guest2 data in v");
    // guest2 (not in the file) has v through its mapper path, or through
    // a loop device realising exactly v.
    let exact = ExtraLoop::new(&["-o", "0", "--sizelimit", &(4u64 << 20).to_string(), &p2]);
    for params in ["/dev/mapper/xendisk-v".to_owned(), exact.0.clone()] {
        let host = with_state_of(&scratch, &backend("vbd", 5, 51728, &params, "w"));
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

/// A host with `backends` whose state DB starts as `other`'s is now.
fn with_state_of(other: &Host, backends: &str) -> Host {
    let host = Host::with(backends, GuestPolicy::default(), other.root.clone());
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
        let host = Host::new(&backend(kind, 5, 51728, &params, "w"));
        let attack = format!(
            "{}{}{}",
            settings("exclusive"),
            pool("a", &[&p1]),
            vdisk("v", "a", "4MiB")
        );
        host.assert_refused(&host.file("attack.toml", &attack), &[], &[&marker]);
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
    let attack = format!(
        "{}{}{}",
        settings("unsafe"),
        pool("a", &[&p1]),
        vdisk("v", "a", "4MiB")
    );
    host.assert_refused(&host.file("attack.toml", &attack), &[], &[&signature]);
    let attack = format!(
        "{}{}{}",
        settings("unsafe"),
        pool("a", &[&disk.device]),
        vdisk("v", "a", "8MiB")
    );
    host.assert_refused(&host.file("whole.toml", &attack), &[], &[&signature]);
}

// ---------------------------------------------------------------------------
// Attacks that break a guarantee: each asserts the guarantee.
// ---------------------------------------------------------------------------

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
        let host = Host::new(&backend_at(
            kind,
            dom_dir,
            dev_dir,
            4,
            51728,
            &format!("phy:{p1}"),
            "w",
            &[("physical-device", &number)],
        ));
        let attack = format!(
            "{}{}{}",
            settings("exclusive"),
            pool("a", &[&p1]),
            vdisk("v", "a", "4MiB")
        );
        host.assert_refused(&host.file("attack.toml", &attack), &[], &[&marker]);
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
    let host = Host::with(
        &backend_at(
            "vbd",
            "5",
            "51728",
            5,
            51728,
            &p1,
            "w",
            &[("physical-device", &physical_device(&p1))],
        ),
        GuestPolicy {
            close_delay: Duration::from_secs(2),
            never_close: Default::default(),
        },
        PathBuf::from("/"),
    );
    let desired = format!(
        "{}{}{}{}",
        settings("exclusive"),
        pool("a", &[&p1]),
        vdisk("v", "a", "4MiB"),
        disks("guest2", &[])
    );
    let file = host.file("desired.toml", &desired);
    assert_exit(&host.run(&["plan", &file, "-o", "plan.json"]), 2);
    let mut plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(host.path("plan.json")).unwrap()).unwrap();
    for step in plan["steps"].as_array_mut().unwrap() {
        step["depends_on"] = serde_json::json!([]);
        step["waits_for_sharing"] = serde_json::json!([]);
    }
    std::fs::write(host.path("edited.json"), plan.to_string()).unwrap();
    let before = host.everything();
    let apply = host.run(&["apply", "edited.json", "--yes", "--parallelism", "4"]);
    let after = host.everything();
    marker.assert_intact();
    assert_exit(&apply, 3);
    assert_eq!(after, before);
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
    let attack = format!(
        "{}{}{}",
        settings("exclusive"),
        pool("a", &[&p1]),
        vdisk("v", "a", "4MiB")
    );
    let file = host.file("attack.toml", &attack);
    assert_exit(&host.run(&["plan", &file, "-o", "plan.json"]), 3);
    let mut plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(host.path("plan.json")).unwrap()).unwrap();
    plan["refused"] = serde_json::json!(false);
    plan["safety"]["conflicts"] = serde_json::json!([]);
    std::fs::write(host.path("edited.json"), plan.to_string()).unwrap();
    let before = host.everything();
    let apply = host.run(&["apply", "edited.json", "--yes"]);
    let after = host.everything();
    marker.assert_intact();
    assert_exit(&apply, 3);
    assert_eq!(after, before);
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
    let host = Host::new(&backend("vbd", 4, 51728, &guests.0, "w"));
    let attack = format!(
        "{}{}{}",
        settings("exclusive"),
        pool("a", &[&p2]),
        vdisk("v", "a", "4MiB")
    );
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
    let superblock = Marker {
        path: p1.clone(),
        offset: 1080,
        bytes: vec![0x53, 0xef],
    };
    superblock.assert_intact();
    let attack = format!(
        "{}{}{}",
        settings("exclusive"),
        pool("a", &[&p1]),
        vdisk("v", "a", "4MiB")
    );
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
    let host = Host::with(
        &backend("vbd", 4, 51728, &p1, "w"),
        GuestPolicy {
            close_delay: Duration::from_secs(3),
            never_close: Default::default(),
        },
        PathBuf::from("/"),
    );
    let desired = format!(
        "{}{}{}{}",
        settings("exclusive"),
        pool("a", &[&p1]),
        vdisk("v", "a", "4MiB"),
        disks("guest1", &[])
    );
    let file = host.file("desired.toml", &desired);
    let apply = host
        .command(&["apply", &file, "--yes", "--parallelism", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    // guest2 gets partition 1 from another toolstack, and writes to it.
    let mut xs = host.xenstore();
    let base = "/local/domain/0/backend/vbd/5/51712";
    for (key, value) in [
        ("frontend", "/local/domain/5/device/vbd/51712"),
        ("frontend-id", "5"),
        ("params", p1.as_str()),
        ("mode", "w"),
        ("type", "phy"),
        ("online", "1"),
        ("state", "4"),
        ("physical-device", &physical_device(&p1)),
    ] {
        xs.write(0, &format!("{base}/{key}"), value).unwrap();
    }
    let marker = Marker::write(&p1, 0, "guest2 data written mid-apply");
    let output = apply.wait_with_output().unwrap();
    let guest2_still_there = host.simulator.store().exists(base);
    assert!(guest2_still_there);
    marker.assert_intact();
    assert_ne!(output.status.code(), Some(0), "{}", text(&output));
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

// ---------------------------------------------------------------------------
// A captured /sys tree (device-mapper and md, which this kernel lacks).
// ---------------------------------------------------------------------------

/// A captured dom0: `/sys/class/block` links to device directories,
/// `/proc/mounts` and `/proc/swaps`.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(root: &Path) -> Tree {
        std::fs::create_dir_all(root.join("sys/class/block")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(root.join("proc/mounts"), "").unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/machine-id"),
            "5a1e0d7c4a9b4f0e8d2c6b3a1f0e9d8c\n",
        )
        .unwrap();
        std::fs::write(
            root.join("proc/swaps"),
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
        )
        .unwrap();
        Tree {
            root: root.to_owned(),
        }
    }

    /// A device: `parent` is the whole disk's name for a partition.
    fn device(&self, name: &str, number: &str, sectors: u64, parent: Option<(&str, u64)>) {
        let dir = match parent {
            Some((disk, _)) => self
                .root
                .join(format!("sys/devices/virtual/block/{disk}/{name}")),
            None => self.root.join(format!("sys/devices/virtual/block/{name}")),
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dev"), format!("{number}\n")).unwrap();
        std::fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
        std::fs::create_dir_all(dir.join("holders")).unwrap();
        std::fs::create_dir_all(dir.join("slaves")).unwrap();
        if let Some((_, start)) = parent {
            std::fs::write(dir.join("start"), format!("{start}\n")).unwrap();
            std::fs::write(dir.join("partition"), "1\n").unwrap();
        }
        let relative = dir
            .strip_prefix(self.root.join("sys"))
            .unwrap()
            .to_path_buf();
        std::os::unix::fs::symlink(
            Path::new("../..").join(relative),
            self.root.join(format!("sys/class/block/{name}")),
        )
        .unwrap();
    }

    fn dir(&self, name: &str) -> PathBuf {
        std::fs::canonicalize(self.root.join(format!("sys/class/block/{name}"))).unwrap()
    }

    /// `holder` (dm or md) is built on `slave`.
    fn stack(&self, holder: &str, slave: &str) {
        std::fs::write(self.dir(holder).join("slaves").join(slave), "").unwrap();
        std::fs::write(self.dir(slave).join("holders").join(holder), "").unwrap();
    }

    fn dm_name(&self, device: &str, name: &str) {
        std::fs::create_dir_all(self.dir(device).join("dm")).unwrap();
        std::fs::write(self.dir(device).join("dm/name"), format!("{name}\n")).unwrap();
    }

    fn mounts(&self, text: &str) {
        std::fs::write(self.root.join("proc/mounts"), text).unwrap();
    }
}

/// A captured host: disk `sdb` (two partitions, sdb1 8MiB, sdb2 8MiB), disk
/// `sdc` 16MiB, and `dm-0` / `md0` as the test stacks them.
fn captured(host_dir: &Path) -> Tree {
    let tree = Tree::new(&host_dir.join("root"));
    tree.device("sdb", "8:16", 40960, None);
    tree.device("sdb1", "8:17", 16384, Some(("sdb", 2048)));
    tree.device("sdb2", "8:18", 16384, Some(("sdb", 18432)));
    tree.device("sdc", "8:32", 32768, None);
    tree
}

/// Claim 1/3 (md, LVM holders): an md array built on a pool device after
/// the pool was made (seen through `holders/` and `slaves/`): a new vdisk
/// on that pool is refused.
#[test]
fn an_md_holder_over_a_pool_device_refuses_new_vdisks() {
    let scratch = tempfile::tempdir().unwrap();
    let tree = captured(scratch.path());
    let host = Host::with("", GuestPolicy::default(), tree.root.clone());
    let base = format!("{}{}", settings("exclusive"), pool("a", &["/dev/sdb1"]));
    host.applied(&host.file("pool.toml", &base), &["--no-devices"]);
    tree.device("md0", "9:0", 16000, None);
    tree.stack("md0", "sdb1");
    let attack = format!("{base}{}", vdisk("v", "a", "4MiB"));
    host.assert_refused(&host.file("attack.toml", &attack), &["--no-devices"], &[]);
    // And a dm linear device (LVM) over the whole disk under the pool.
    let tree = captured(&scratch.path().join("second"));
    let host = Host::with("", GuestPolicy::default(), tree.root.clone());
    host.applied(&host.file("pool.toml", &base), &["--no-devices"]);
    tree.device("dm-3", "253:3", 40960, None);
    tree.dm_name("dm-3", "vg1-data");
    tree.stack("dm-3", "sdb");
    host.assert_refused(&host.file("attack.toml", &attack), &["--no-devices"], &[]);
}

/// Claims 1, 3: a device-mapper device is taken for a vdisk's own
/// realisation by its name alone (`xendisk-<vdisk>`), whatever it maps. A
/// leftover `xendisk-v` (made by hand, or by an earlier state DB) that maps
/// all of disk `sdc` and is mounted rw in dom0 is narrowed to v's extents
/// on the pool: `sdc` is then added to a pool, and zeroed, under the mount.
#[test]
fn a_dm_device_named_like_a_vdisk_is_what_it_maps() {
    let scratch = tempfile::tempdir().unwrap();
    let tree = captured(scratch.path());
    let host = Host::with("", GuestPolicy::default(), tree.root.clone());
    let base = format!(
        "{}{}{}",
        settings("exclusive"),
        pool("a", &["/dev/sdb1"]),
        vdisk("v", "a", "4MiB")
    );
    host.applied(&host.file("v.toml", &base), &["--no-devices"]);
    tree.device("dm-0", "253:0", 32768, None);
    tree.dm_name("dm-0", "vg1-data");
    tree.stack("dm-0", "sdc");
    tree.mounts("/dev/mapper/vg1-data /srv/data ext4 rw,relatime 0 0\n");
    let attack = format!(
        "{base}{}{}",
        pool("b", &["/dev/sdc"]),
        vdisk("w", "b", "4MiB")
    );
    let file = host.file("attack.toml", &attack);
    // Control: through a dm device of another name, sdc is held.
    host.assert_refused(&file, &["--no-devices"], &[]);
    // The same device and mount, named like v's realisation.
    tree.dm_name("dm-0", "xendisk-v");
    tree.mounts("/dev/mapper/xendisk-v /srv/data ext4 rw,relatime 0 0\n");
    host.assert_refused(&file, &["--no-devices"], &[]);
}

/// Extremely large sector numbers (a captured tree, or a snapshot, whose
/// partition starts near 2^64): planning a pool on it and a vdisk there
/// ends in a plan, a refusal or an error, never a crash, and changes
/// nothing it should not (no integer overflow on the way). The planner's
/// `offset + extent.start` (plan/resolve.rs) overflows: a panic in a debug
/// build, a silent wrap in a release build (a vdisk's sectors placed near
/// sector 0 of the disk).
#[test]
fn sector_numbers_near_two_to_the_64_do_not_crash_the_planner() {
    let scratch = tempfile::tempdir().unwrap();
    let tree = Tree::new(&scratch.path().join("root"));
    let huge = u64::MAX - 100;
    tree.device("sdb", "8:16", u64::MAX, None);
    tree.device("sdb1", "8:17", 16384, Some(("sdb", huge)));
    tree.device("sdb2", "8:18", 16384, Some(("sdb", 2048)));
    tree.mounts("/dev/sdb2 /srv ext4 rw,relatime 0 0\n");
    let host = Host::with("", GuestPolicy::default(), tree.root.clone());
    let desired = format!(
        "{}{}{}",
        settings("exclusive"),
        pool("a", &["/dev/sdb1"]),
        vdisk("v", "a", "4MiB")
    );
    let file = host.file("desired.toml", &desired);
    let before = host.everything();
    let plan = host.run(&["plan", &file]);
    assert!(
        matches!(plan.status.code(), Some(1..=3)),
        "plan: {}",
        text(&plan)
    );
    let apply = host.run(&["apply", &file, "--yes", "--no-devices"]);
    assert!(
        matches!(apply.status.code(), Some(0 | 1 | 3)),
        "apply: {}",
        text(&apply)
    );
    if apply.status.code() != Some(0) {
        assert_eq!(host.everything(), before);
    }
}
