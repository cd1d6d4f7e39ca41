//! Seeds from real hosts: every real `xenstore-ls` dump kept in the
//! repository seeds the simulator, and `xendisk capture` makes a simulated
//! host that captures back to itself, byte for byte.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xendisk::sim::dump;
use xendisk::sim::{Faults, GuestPolicy, Simulator};
use xendisk::xs_client::XsClient;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn xendisk(args: &[&str], xenstored: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xendisk"));
    command
        .args(args)
        .env("XENDISK_NOW", "2026-06-01T00:00:00Z")
        .env("NO_COLOR", "1")
        .env_remove("XENDISK_STATE");
    match xenstored {
        Some(socket) => command.env("XENSTORED_PATH", socket),
        None => command.env_remove("XENSTORED_PATH"),
    };
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Real dumps: the real-Xen test bed's fixtures and the seeds printed by
/// Debian's xenstore-ls.
fn real_dumps() -> Vec<PathBuf> {
    let mut dumps = Vec::new();
    for dir in ["tests/realxen/fixtures", "tests/seeds"] {
        for entry in fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".xs") || (dir == "tests/seeds" && name.ends_with(".txt")) {
                dumps.push(path);
            }
        }
    }
    dumps.sort();
    dumps
}

#[test]
fn every_real_dump_seeds_the_simulator() {
    let dumps = real_dumps();
    assert!(
        dumps
            .iter()
            .any(|d| d.starts_with(repo().join("tests/realxen"))),
        "no dump in tests/realxen/fixtures"
    );
    for path in dumps {
        let seed = dump::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("xenstored.socket");
        let simulator = Simulator::start(
            &socket,
            seed.store.clone(),
            GuestPolicy::default(),
            Faults::default(),
        )
        .unwrap();
        let mut client = XsClient::connect_to(&socket).unwrap();
        for (node, value) in seed.store.entries() {
            assert_eq!(
                client.read_bytes(0, &node).unwrap().as_deref(),
                Some(&value[..]),
                "{}: {node}",
                path.display()
            );
            assert_eq!(
                client.get_perms(0, &node).unwrap().unwrap(),
                seed.store.get_perms(&node).unwrap(),
                "{}: {node}",
                path.display()
            );
        }
        drop(simulator);
        // A `-f -p` dump written again is the same dump (after the
        // parents of a subtree's dump).
        let original = fs::read_to_string(&path).unwrap();
        if original.starts_with('/') && original.contains("   (n") {
            let written = dump::write_seed(&seed.store, &seed.cuts);
            assert!(
                written.trim_end().ends_with(original.trim_end()),
                "{}:\n{written}",
                path.display()
            );
        }
    }
}

/// The demo host, with mount namespaces and a value its seed cut.
fn host_with_cuts(root: &Path) -> PathBuf {
    let host = root.join("host");
    copy_tree(&repo().join("examples/hosts/demo"), &host);
    let seed = dump::load(&host.join("xenstore.xs")).unwrap();
    let params = "/local/domain/0/backend/vbd/3/51728/params";
    let whole = dump::write_seed(&seed.store, &seed.cuts);
    let value = String::from_utf8(seed.store.read(params).unwrap().to_vec()).unwrap();
    let cut = whole.replace(
        &format!("{params} = \"{value}\"   "),
        &format!("{params} = \"{}\\...\"  ", &value[..4]),
    );
    assert_ne!(cut, whole);
    fs::write(host.join("xenstore.xs"), cut).unwrap();
    let link = |at: &str, target: &str| {
        let at = host.join(at);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, at).unwrap();
    };
    link("proc/self/ns/mnt", "mnt:[4026531840]");
    link("proc/7/ns/mnt", "mnt:[4026532200]");
    link("proc/9/ns/mnt", "mnt:[4026532200]");
    link("proc/12/ns/mnt", "mnt:[4026531840]");
    let mounts = "/dev/sdb3 /srv/container ext4 rw,relatime 0 0\n";
    fs::write(host.join("proc/7/mounts"), mounts).unwrap();
    fs::write(host.join("proc/9/mounts"), mounts).unwrap();
    host
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == ".sim" {
            continue;
        }
        let kind = entry.file_type().unwrap();
        let target = to.join(&name);
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file of a tree (but `.sim/`): its path, and its bytes or its
/// link's target.
fn listing(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap().to_owned();
            if relative == Path::new(".sim") {
                continue;
            }
            let kind = entry.file_type().unwrap();
            let what = if kind.is_symlink() {
                format!("-> {}", fs::read_link(&path).unwrap().display())
            } else if kind.is_dir() {
                pending.push(path);
                "dir".to_owned()
            } else {
                text(&fs::read(&path).unwrap())
            };
            out.push((relative, what));
        }
    }
    out.sort();
    out
}

#[test]
fn a_capture_of_a_simulated_host_captures_back_to_itself() {
    let scratch = tempfile::tempdir().unwrap();
    let host = host_with_cuts(scratch.path());
    let first = scratch.path().join("first");
    let second = scratch.path().join("second");
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    let out = xendisk(&["--sim", &s(&host), "capture", &s(&first)], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = xendisk(&["--sim", &s(&first), "capture", &s(&second)], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("1 other mount namespaces"));
    let captured = listing(&first);
    assert_eq!(captured, listing(&second));

    // Only what observation reads, links kept as links.
    let names: Vec<String> = captured
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(names.contains(&"proc/7/mounts".to_owned()));
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("proc/9") || n.starts_with("proc/12"))
    );
    assert!(!names.iter().any(|n| n.ends_with("README.md")));
    let link = |path: &str| {
        captured
            .iter()
            .find(|(p, _)| p == Path::new(path))
            .map(|(_, what)| what.clone())
    };
    assert_eq!(
        link("sys/class/block/dm-0").as_deref(),
        Some("-> ../../devices/virtual/block/dm-0")
    );
    assert_eq!(
        link("proc/self/ns/mnt").as_deref(),
        Some("-> mnt:[4026531840]")
    );
    // The cut value stays cut.
    let seed = link("xenstore.xs").unwrap();
    assert!(
        seed.contains("/local/domain/0/backend/vbd/3/51728/params = \"/dev\\...\"  (n0,r3)"),
        "{seed}"
    );

    // The capture observes as the host does; both warn about the cut.
    let host_view = xendisk(&["--sim", &s(&host), "snapshot"], None);
    let captured_view = xendisk(&["--sim", &s(&first), "snapshot"], None);
    assert!(host_view.status.success(), "{}", text(&host_view.stderr));
    assert_eq!(text(&host_view.stdout), text(&captured_view.stdout));
    assert!(text(&host_view.stdout).contains("/srv/container"));
    for view in [&host_view, &captured_view] {
        let stderr = text(&view.stderr);
        assert!(
            stderr.contains(
                "warning: xenstore value /local/domain/0/backend/vbd/3/51728/params was truncated \
                 in the seed dump"
            ) && stderr.contains("xenstore-ls -f -p > xenstore.xs"),
            "{stderr}"
        );
    }
    // A plan says which value it read cut.
    let plan = xendisk(
        &[
            "--sim",
            &s(&host),
            "plan",
            &s(&repo().join("examples/walkthrough.toml")),
        ],
        None,
    );
    let stderr = text(&plan.stderr);
    assert!(
        stderr.contains("xenstore value /local/domain/0/backend/vbd/3/51728/params was truncated"),
        "{stderr}"
    );
    // Commands that do not read xenstore do not warn.
    let validate = xendisk(
        &[
            "--sim",
            &s(&host),
            "validate",
            &s(&repo().join("examples/walkthrough.toml")),
        ],
        None,
    );
    assert!(
        !text(&validate.stderr).contains("warning"),
        "{}",
        text(&validate.stderr)
    );
}

#[test]
fn a_value_written_since_the_seed_is_no_longer_cut() {
    let scratch = tempfile::tempdir().unwrap();
    let host = host_with_cuts(scratch.path());
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    // Written by hand into the kept xenstore, as a command would.
    let first = xendisk(&["--sim", &s(&host), "snapshot"], None);
    assert!(text(&first.stderr).contains("was truncated"));
    let kept = host.join(".sim/xenstore.xs");
    let text_kept = fs::read_to_string(&kept).unwrap();
    assert!(
        text_kept.contains("params = \"/dev\\...\"  (n0,r3)"),
        "{text_kept}"
    );
    fs::write(
        &kept,
        text_kept.replace(
            "params = \"/dev\\...\"  (n0,r3)",
            "params = \"/dev/sdb1\"   (n0,r3)",
        ),
    )
    .unwrap();
    let again = xendisk(&["--sim", &s(&host), "snapshot"], None);
    assert!(
        !text(&again.stderr).contains("truncated"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn capture_reads_a_live_host_through_its_root_and_xenstored() {
    let scratch = tempfile::tempdir().unwrap();
    let demo = repo().join("examples/hosts/demo");
    let seed = dump::load(&demo.join("xenstore.xs")).unwrap();
    let socket = scratch.path().join("xenstored.socket");
    let simulator = Simulator::start(
        &socket,
        seed.store.clone(),
        GuestPolicy::default(),
        Faults::default(),
    )
    .unwrap();
    let out_dir = scratch.path().join("captured");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let out = xendisk(
        &["--host-root", &s(&demo), "capture", &s(&out_dir)],
        Some(&socket),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let captured = fs::read_to_string(out_dir.join("xenstore.xs")).unwrap();
    assert_eq!(
        dump::load(&out_dir.join("xenstore.xs")).unwrap().store,
        seed.store
    );
    // Byte for byte what Debian's xenstore-ls -f -p prints into a file.
    match Command::new("xenstore-ls")
        .args(["-f", "-p"])
        .env("XENSTORED_PATH", &socket)
        .output()
    {
        Ok(listing) => assert_eq!(text(&listing.stdout), captured),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("xenstore-ls is missing: .ci/run installs xenstore-utils")
        }
        Err(_) => eprintln!("SKIPPED comparing with xenstore-ls: it is not installed"),
    }
    drop(simulator);
    // A directory with something in it is not overwritten.
    let out = xendisk(
        &["--host-root", &s(&demo), "capture", &s(&out_dir)],
        Some(&socket),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not empty"),
        "{}",
        text(&out.stderr)
    );
}
