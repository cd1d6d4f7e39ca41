//! `xendisk apply` end to end against the simulated xenstored, with the
//! captured dom0 of `tests/golden/hosts/plan-host` and a state DB of its
//! own: the walkthrough, a kill at every step, a guest that keeps its disk,
//! a stale saved plan, EAGAIN storms, two applies racing, and xl's command
//! lines.

mod common;
mod host;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use host::{Host, assert_exit, text};
use xendisk::sim::{Faults, GuestPolicy};

const POPULATE: &str = r#"
[settings]
toolstack = "xenstore"

[pools.fast]
extent_size = "64MiB"
devices = ["/dev/sdb1"]

[vdisks.guest1-root]
pool = "fast"
size = "4GiB"

[domains.Domain-0.disks]
xvda = { source = "vdisk:guest1-root", mode = "w" }
"#;

const BOOT: &str = r#"
[settings]
toolstack = "xenstore"

[pools.fast]
extent_size = "64MiB"
devices = ["/dev/sdb1"]

[vdisks.guest1-root]
pool = "fast"
size = "4GiB"

[domains.Domain-0.disks]

[domains.guest1.disks]
xvda = { source = "vdisk:guest1-root", mode = "w" }
"#;

#[test]
fn the_walkthrough_end_to_end_and_a_second_apply_changes_nothing() {
    let host = Host::new(GuestPolicy::default(), Faults::default());
    host.file("populate.toml", POPULATE);
    host.file("boot.toml", BOOT);
    assert_exit(&host.apply("populate.toml", &[]), 0);
    assert_eq!(host.attached(0), ["51712"]);
    assert_eq!(
        host.simulator
            .store()
            .read("/local/domain/0/backend/vbd/0/51712/params")
            .unwrap(),
        b"/dev/mapper/xendisk-guest1-root"
    );
    let again = host.apply("populate.toml", &[]);
    assert_exit(&again, 0);
    assert!(text(&again).contains("No changes"), "{}", text(&again));

    assert_exit(&host.apply("boot.toml", &[]), 0);
    assert!(host.attached(0).is_empty(), "Domain-0 gave the disk up");
    assert_eq!(host.attached(4), ["51712"]);
    assert!(
        !host
            .simulator
            .store()
            .exists("/local/domain/0/device/vbd/51712")
    );
    assert_exit(&host.run(&["plan", "boot.toml"]), 0);
    let runs = host.run(&["state", "--runs"]);
    assert!(
        text(&runs).contains("run 2 of boot.toml: done"),
        "{}",
        text(&runs)
    );
    assert_exit(&host.run(&["state", "--check"]), 0);
}

/// Eight vdisks in two pools, each attached to one of four guests, with a
/// read-only ISO each: 2 devices added, 8 scrubs (new devices hold unknown
/// data) and 8 creates, 8 realisations, 12 attaches: 38 operations.
fn many_operations() -> String {
    let mut text = String::from(
        "[settings]\ntoolstack = \"xenstore\"\n\n[pools.fast]\nextent_size = \"64MiB\"\ndevices = [\"/dev/sdb1\"]\n\n\
         [pools.big]\nextent_size = \"64MiB\"\ndevices = [\"/dev/sdc\"]\n\n",
    );
    for v in 0..8 {
        let pool = if v % 2 == 0 { "fast" } else { "big" };
        text.push_str(&format!(
            "[vdisks.v{v}]\npool = \"{pool}\"\nsize = \"{}MiB\"\n\n",
            64 * (v + 1)
        ));
    }
    for (g, name) in ["guest1", "guest2", "guest3", "guest4"].iter().enumerate() {
        text.push_str(&format!(
            "[domains.{name}.disks]\nxvda = {{ source = \"vdisk:v{}\", mode = \"w\" }}\n\
             xvdb = {{ source = \"vdisk:v{}\", mode = \"w\" }}\nxvdd = {{ source = \"file:/srv/iso/tools.iso\", mode = \"r\" }}\n\n",
            2 * g,
            2 * g + 1
        ));
    }
    text
}

#[test]
fn the_large_plan_has_the_expected_steps() {
    let host = Host::new(GuestPolicy::default(), Faults::default());
    host.file("desired.toml", &many_operations());
    let plan: serde_json::Value =
        serde_json::from_slice(&host.run(&["plan", "desired.toml", "--json"]).stdout).unwrap();
    assert_eq!(plan["steps"].as_array().unwrap().len(), 38);
}

#[test]
fn an_apply_killed_at_any_step_is_finished_by_the_next() {
    let desired = many_operations();
    for hook in ["XENDISK_TEST_KILL_AT_STEP", "XENDISK_TEST_KILL_AFTER_STEP"] {
        for step in 1..=38 {
            let host = Host::new(GuestPolicy::default(), Faults::default());
            host.file("desired.toml", &desired);
            let killed = host
                .command(
                    &["apply", "desired.toml", "--yes", "--no-devices"],
                    &[(hook, step.to_string())],
                )
                .output()
                .unwrap();
            assert!(
                !killed.status.success(),
                "{hook}={step}: the apply was not killed\n{}",
                text(&killed)
            );
            assert_exit(&host.apply("desired.toml", &[]), 0);
            let plan = host.run(&["plan", "desired.toml"]);
            assert_exit(&plan, 0);
            assert_exit(&host.run(&["state", "--check"]), 0);
            for domid in 4..=7 {
                assert_eq!(
                    host.attached(domid),
                    ["51712", "51728", "51760"],
                    "{hook}={step}: domid {domid}"
                );
            }
            let state: serde_json::Value =
                serde_json::from_slice(&host.run(&["state", "--json"]).stdout).unwrap();
            let vdisks = state["vdisks"].as_array().unwrap();
            assert_eq!(vdisks.len(), 8, "{hook}={step}");
            let mut extents = std::collections::BTreeSet::new();
            for vdisk in vdisks {
                for extent in vdisk["extents"].as_array().unwrap() {
                    assert!(
                        extents.insert((extent["device"].to_string(), extent["start"].as_u64())),
                        "{hook}={step}: an extent is given twice"
                    );
                }
            }
            let runs = text(&host.run(&["state", "--runs"]));
            assert!(
                runs.contains(": interrupted"),
                "{hook}={step}: the killed run is not marked\n{runs}"
            );
        }
    }
}

#[test]
fn a_guest_that_keeps_its_disk_fails_the_detach_and_nothing_after_it() {
    let guests = GuestPolicy {
        close_delay: Duration::from_millis(10),
        never_close: [0].into(),
    };
    let host = Host::new(guests, Faults::default());
    host.file("populate.toml", POPULATE);
    host.file("boot.toml", BOOT);
    assert_exit(&host.apply("populate.toml", &[]), 0);
    let failed = host.apply("boot.toml", &["--release-timeout", "1"]);
    assert_exit(&failed, 1);
    assert!(
        text(&failed).contains("did not release xvda within 1s"),
        "{}",
        text(&failed)
    );
    assert!(
        host.attached(4).is_empty(),
        "the attach after the failed detach did not run"
    );
    let runs = text(&host.run(&["state", "--runs"]));
    assert!(
        runs.contains("[1] detach: failed") && runs.contains("[2] attach: pending"),
        "{runs}"
    );
    // The plan still says what remains, and the state DB is whole.
    assert_exit(&host.run(&["plan", "boot.toml"]), 2);
    assert_exit(&host.run(&["state", "--check"]), 0);
    // Forced, it goes.
    assert_exit(&host.apply("boot.toml", &["--force-detach"]), 0);
    assert_eq!(host.attached(4), ["51712"]);
}

#[test]
fn a_saved_plan_is_refused_once_the_host_has_changed() {
    let host = Host::new(GuestPolicy::default(), Faults::default());
    host.file("populate.toml", POPULATE);
    assert_exit(&host.run(&["plan", "populate.toml", "-o", "plan.json"]), 2);
    host.wire()
        .write("/local/domain/9/name", "newcomer")
        .unwrap();
    let stale = host.apply("plan.json", &[]);
    assert_exit(&stale, 3);
    assert!(
        text(&stale).contains("made for a host that has changed since"),
        "{}",
        text(&stale)
    );
    assert!(host.attached(0).is_empty(), "nothing was applied");
    assert_exit(&host.run(&["plan", "populate.toml", "-o", "plan.json"]), 2);
    assert_exit(&host.apply("plan.json", &[]), 0);
    assert_eq!(host.attached(0), ["51712"]);
}

#[test]
fn attaches_are_retried_through_eagain_storms() {
    let faults = Faults {
        eagain_commits: (1..=25).collect(),
        ..Faults::default()
    };
    let host = Host::new(GuestPolicy::default(), faults);
    host.file("desired.toml", &many_operations());
    assert_exit(&host.apply("desired.toml", &[]), 0);
    for domid in 4..=7 {
        assert_eq!(host.attached(domid), ["51712", "51728", "51760"]);
    }
}

#[test]
fn two_applies_racing_apply_once() {
    let host = Host::new(GuestPolicy::default(), Faults::default());
    host.file("desired.toml", &many_operations());
    let spawn = || {
        host.command(&["apply", "desired.toml", "--yes", "--no-devices"], &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let (first, second) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    assert_exit(&first, 0);
    assert_exit(&second, 0);
    let both = format!("{}{}", text(&first), text(&second));
    assert_eq!(both.matches("Applied 38 operations").count(), 1, "{both}");
    assert_exit(&host.run(&["state", "--check"]), 0);
    for domid in 4..=7 {
        assert_eq!(host.attached(domid), ["51712", "51728", "51760"]);
    }
}

#[test]
fn a_second_apply_gives_up_after_the_lock_timeout() {
    // The first apply waits on a guest that takes 4 s to release its disk;
    // the second comes 1.5 s later, when the first surely holds the lock.
    let guests = GuestPolicy {
        close_delay: Duration::from_secs(4),
        never_close: Default::default(),
    };
    let host = Host::new(guests, Faults::default());
    host.file("populate.toml", POPULATE);
    host.file("boot.toml", BOOT);
    assert_exit(&host.apply("populate.toml", &[]), 0);
    let slow = host
        .command(&["apply", "boot.toml", "--yes", "--no-devices"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let impatient = host.apply("boot.toml", &["--lock-timeout", "0"]);
    assert_exit(&impatient, 1);
    assert!(
        text(&impatient).contains("another apply holds"),
        "{}",
        text(&impatient)
    );
    assert_exit(&slow.wait_with_output().unwrap(), 0);
}

#[test]
fn the_xl_toolstack_runs_exactly_these_command_lines() {
    let host = Host::new(GuestPolicy::default(), Faults::default());
    let bin = host.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = host.dir.path().join("xl.log");
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s|' \"$a\"; done >> {}\necho >> {}\n",
        log.display(),
        log.display()
    );
    let xl = bin.join("xl");
    std::fs::write(&xl, script).unwrap();
    std::fs::set_permissions(&xl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    host.file(
        "desired.toml",
        r#"
[domains.guest1.disks]
xvdb = { source = "file:/srv/images/a, b.img", mode = "w!" }
xvdc = { source = "phy:/dev/sdc", mode = "r" }
"#,
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // One step at a time, so that the lines come in the plan's order.
    let output = host
        .command(
            &[
                "apply",
                "desired.toml",
                "--yes",
                "--no-devices",
                "--parallelism",
                "1",
            ],
            &[("PATH", path)],
        )
        .output()
        .unwrap();
    // The stand-in only records: xenstore shows no attachment afterwards,
    // which the check after the apply reports.
    assert_exit(&output, 1);
    assert!(
        text(&output).contains("a fresh plan still has"),
        "{}",
        text(&output)
    );
    let recorded = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        recorded,
        "block-attach|4|format=raw, vdev=xvdb, access=rw, target=/srv/images/a, b.img|\n\
         block-attach|4|format=raw, vdev=xvdc, access=r, target=/dev/sdc|\n"
    );
}

/// Runs a command, failing the test with its output if it fails.
fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Reads `len` bytes of a device at `offset`.
fn read_at(path: &str, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut buffer = vec![0; len];
    file.read_exact(&mut buffer).unwrap();
    buffer
}

fn write_at(path: &str, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::File::options().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

/// A vdisk's data does not reach the next vdisk on its extents: released
/// extents are zeroed (`on-release`), or dirty ones before they are given
/// out (`on-allocate`). On a real loop device; skipped, and said so, where
/// the machine has none.
#[test]
fn a_new_vdisk_reads_zeros_where_a_deleted_one_wrote() {
    // SAFETY: geteuid has no preconditions.
    if !Path::new("/dev/loop-control").exists() || unsafe { libc::geteuid() } != 0 {
        common::skipped("the scrub test", "it needs root and /dev/loop-control");
        return;
    }
    let _devices = common::real_devices();
    for policy in ["on-release", "on-allocate"] {
        let mut host = Host::new(GuestPolicy::default(), Faults::default());
        host.root = PathBuf::from("/");
        let image = host.dir.path().join("pool.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let device = sh("losetup", &["--find", "--show", image.to_str().unwrap()]);
        struct Detach(String);
        impl Drop for Detach {
            fn drop(&mut self) {
                let _ = Command::new("losetup").args(["--detach", &self.0]).status();
            }
        }
        let _detach = Detach(device.clone());
        let pool = format!(
            "[settings]\ntoolstack = \"xenstore\"\n\n[pools.p]\nextent_size = \"1MiB\"\ndevices = [\"{device}\"]\nscrub = \"{policy}\"\n"
        );
        host.file(
            "a.toml",
            &format!("{pool}\n[vdisks.a]\npool = \"p\"\nsize = \"8MiB\"\n"),
        );
        host.file("none.toml", &pool);
        host.file(
            "b.toml",
            &format!("{pool}\n[vdisks.b]\npool = \"p\"\nsize = \"8MiB\"\n"),
        );
        assert_exit(&host.run(&["apply", "a.toml", "--yes"]), 0);
        write_at(&device, 0, b"MARKER from vdisk a");
        write_at(&device, 5 << 20, b"MARKER from vdisk a");
        assert_exit(
            &host.run(&["apply", "none.toml", "--yes", "--allow-destroy"]),
            0,
        );
        assert_exit(&host.run(&["apply", "b.toml", "--yes"]), 0);
        let state: serde_json::Value =
            serde_json::from_slice(&host.run(&["state", "--json"]).stdout).unwrap();
        assert_eq!(
            state["vdisks"][0]["extents"].as_array().unwrap().len(),
            8,
            "{policy}: b is on a's extents"
        );
        assert_eq!(
            state["pools"][0]["devices"][0]["dirty"], 0,
            "{policy}: the scrubs are recorded"
        );
        for offset in [0, 5 << 20] {
            assert_eq!(
                read_at(&device, offset, 19),
                vec![0; 19],
                "{policy}: the marker at {offset} survived"
            );
        }
    }
}

/// The walkthrough on a real partition of a loop device, with the vdisk
/// realised as a loop device over it (`realise = "loop"`): populate in
/// Domain-0, move to the guest, then delete, which removes the device.
#[test]
fn the_walkthrough_on_real_partitions_with_loop_realisation() {
    if let Some(reason) = common::cannot_use_loop_devices() {
        common::skipped("the loop walkthrough", &reason);
        return;
    }
    let _devices = common::real_devices();
    let mut host = Host::new(GuestPolicy::default(), Faults::default());
    host.root = PathBuf::from("/");
    let disk = common::PartitionedLoop::new(
        &host.dir.path().join("disk.img"),
        64 << 20,
        "label: dos\n,16MiB,L\n,,L\n",
        2,
    );
    let pool_device = disk.partition(2);
    let settings = format!(
        "[settings]\ntoolstack = \"xenstore\"\nrealise = \"loop\"\n\n[pools.p]\nextent_size = \"1MiB\"\ndevices = [\"{pool_device}\"]\n"
    );
    let vdisk = "\n[vdisks.guest1-root]\npool = \"p\"\nsize = \"8MiB\"\n";
    host.file("populate.toml", &format!("{settings}{vdisk}\n[domains.Domain-0.disks]\nxvda = {{ source = \"vdisk:guest1-root\", mode = \"w\" }}\n"));
    host.file(
        "boot.toml",
        &format!("{settings}{vdisk}\n[domains.Domain-0.disks]\n\n[domains.guest1.disks]\nxvda = {{ source = \"vdisk:guest1-root\", mode = \"w\" }}\n"),
    );
    host.file(
        "gone.toml",
        &format!("{settings}\n[domains.guest1.disks]\n"),
    );

    assert_exit(&host.run(&["apply", "populate.toml", "--yes"]), 0);
    let params = String::from_utf8(
        host.simulator
            .store()
            .read("/local/domain/0/backend/vbd/0/51712/params")
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(params.starts_with("/dev/loop"), "attached to {params}");
    let name = params.trim_start_matches("/dev/");
    let backing =
        std::fs::read_to_string(format!("/sys/class/block/{name}/loop/backing_file")).unwrap();
    assert_eq!(backing.trim(), pool_device);
    let sizelimit =
        std::fs::read_to_string(format!("/sys/class/block/{name}/loop/sizelimit")).unwrap();
    assert_eq!(sizelimit.trim(), (8u64 << 20).to_string());
    assert_exit(&host.run(&["plan", "populate.toml"]), 0);

    assert_exit(&host.run(&["apply", "boot.toml", "--yes"]), 0);
    assert_eq!(host.attached(4), ["51712"]);
    assert_eq!(
        host.simulator
            .store()
            .read("/local/domain/0/backend/vbd/4/51712/params")
            .unwrap(),
        params.as_bytes()
    );
    assert_exit(&host.run(&["plan", "boot.toml"]), 0);

    let deleted = host.run(&["apply", "gone.toml", "--yes", "--allow-destroy"]);
    assert_exit(&deleted, 0);
    assert!(
        text(&deleted).contains("remove its block device"),
        "{}",
        text(&deleted)
    );
    assert!(
        !Path::new(&format!("/sys/class/block/{name}/loop")).exists(),
        "{params} was detached"
    );
}

/// Four guests give their disks back, each after 300 ms: with
/// `--parallelism 4` the detaches overlap (the journal shows a detach
/// starting before another finished); with `--parallelism 1` they never do.
#[test]
fn detaches_overlap_with_parallelism_and_never_without() {
    for (parallelism, overlap) in [("4", true), ("1", false)] {
        let guests = GuestPolicy {
            close_delay: Duration::from_millis(300),
            never_close: Default::default(),
        };
        let host = Host::new(guests, Faults::default());
        host.file("desired.toml", &many_operations());
        let detached = many_operations()
            .split("[domains.")
            .next()
            .map(|head| format!("{head}[domains.guest1.disks]\n[domains.guest2.disks]\n[domains.guest3.disks]\n[domains.guest4.disks]\n"))
            .unwrap();
        host.file("detached.toml", &detached);
        assert_exit(
            &host.apply("desired.toml", &["--parallelism", parallelism]),
            0,
        );
        assert_exit(
            &host.apply("detached.toml", &["--parallelism", parallelism]),
            0,
        );
        for domid in 4..=7 {
            assert!(
                host.attached(domid).is_empty(),
                "parallelism {parallelism}: domid {domid} still has disks"
            );
        }
        let runs: serde_json::Value =
            serde_json::from_slice(&host.run(&["state", "--runs", "--json"]).stdout).unwrap();
        let steps = runs[0]["steps"].as_array().unwrap();
        let span = |step: &serde_json::Value| {
            let time = |key: &str| {
                step[key]
                    .as_str()
                    .unwrap()
                    .parse::<jiff::Timestamp>()
                    .unwrap()
            };
            (time("started_at"), time("finished_at"))
        };
        let detaches: Vec<_> = steps
            .iter()
            .filter(|s| s["op"]["op"] == "detach")
            .map(span)
            .collect();
        assert_eq!(detaches.len(), 12);
        let overlapping = detaches
            .iter()
            .enumerate()
            .any(|(i, a)| detaches[i + 1..].iter().any(|b| a.0 < b.1 && b.0 < a.1));
        assert_eq!(
            overlapping, overlap,
            "parallelism {parallelism}: {detaches:?}"
        );
    }
}

/// A guest gives back a partition that becomes a pool device. With
/// `--parallelism 4` apply runs steps as soon as their dependencies are
/// done: the pool add and the scrub of the new vdisk's extents must still
/// start only after the guest has let go (its close takes 300 ms), because
/// the plan makes them wait for the detach.
#[test]
fn a_partition_joins_a_pool_only_after_the_guest_let_go_at_any_parallelism() {
    let guests = GuestPolicy {
        close_delay: Duration::from_millis(300),
        never_close: Default::default(),
    };
    let host = Host::new(guests, Faults::default());
    host.file(
        "attached.toml",
        "[settings]\ntoolstack = \"xenstore\"\n\n[domains.guest1.disks]\nxvdb = { source = \"phy:/dev/sdb1\", mode = \"w\" }\n",
    );
    host.file(
        "pooled.toml",
        "[settings]\ntoolstack = \"xenstore\"\n\n[pools.fast]\ndevices = [\"/dev/sdb1\"]\n\n\
         [vdisks.data]\npool = \"fast\"\nsize = \"1GiB\"\n\n[domains.guest1.disks]\n",
    );
    assert_exit(&host.apply("attached.toml", &[]), 0);
    assert_eq!(host.attached(4), ["51728"]);
    assert_exit(&host.apply("pooled.toml", &["--parallelism", "4"]), 0);
    assert!(host.attached(4).is_empty());

    let runs: serde_json::Value =
        serde_json::from_slice(&host.run(&["state", "--runs", "--json"]).stdout).unwrap();
    let steps = runs[0]["steps"].as_array().unwrap();
    let time = |op: &str, key: &str| {
        let step = steps
            .iter()
            .find(|s| s["op"]["op"] == op)
            .unwrap_or_else(|| panic!("no {op} step in {steps:?}"));
        step[key]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    let released = time("detach", "finished_at");
    for op in ["add-pool-device", "scrub", "create-vdisk"] {
        assert!(
            time(op, "started_at") >= released,
            "{op} started before the guest let go of the partition: {steps:#?}"
        );
    }
}
