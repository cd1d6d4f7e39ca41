//! An apply killed at the worst moment is finished by the next one.

mod host;

use host::{Host, assert_exit, text};
use serde_json::Value;
use xendisk::sim::{Faults, GuestPolicy};

const POPULATED: &str = r#"
[settings]
toolstack = "xenstore"

[pools.fast]
extent_size = "64MiB"
devices = ["/dev/sdb1"]

[vdisks.old]
pool = "fast"
size = "1GiB"
"#;

const DELETED: &str = r#"
[settings]
toolstack = "xenstore"

[pools.fast]
extent_size = "64MiB"
devices = ["/dev/sdb1"]
"#;

fn dirty(host: &Host) -> u64 {
    let state: Value = serde_json::from_slice(&host.run(&["state", "--json"]).stdout).unwrap();
    state["pools"][0]["devices"][0]["dirty"].as_u64().unwrap()
}

/// Applies `deleted.toml`, killed (as `kill -9` would) right before the
/// on-release scrub of the deleted vdisk's extents.
fn kill_before_the_release_scrub(host: &Host) {
    let plan: Value = serde_json::from_slice(
        &host
            .run(&["plan", "deleted.toml", "--allow-destroy", "--json"])
            .stdout,
    )
    .unwrap();
    let scrub = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["op"] == "scrub")
        .unwrap()["id"]
        .to_string();
    let args = [
        "apply",
        "deleted.toml",
        "--yes",
        "--no-devices",
        "--allow-destroy",
    ];
    let killed = host
        .command(&args, &[("XENDISK_TEST_KILL_AT_STEP", scrub)])
        .output()
        .unwrap();
    assert_ne!(killed.status.code(), Some(0), "{}", text(&killed));
}

/// Killed between a vdisk's release and the on-release scrub of its
/// extents: the next plan scrubs them (before, they stayed dirty for good
/// and the next apply said it had finished).
#[test]
fn a_release_killed_before_its_scrub_is_scrubbed_by_the_next_apply() {
    let host = Host::new(GuestPolicy::default(), Faults::default());
    host.file("populated.toml", POPULATED);
    host.file("deleted.toml", DELETED);
    assert_exit(&host.apply("populated.toml", &[]), 0);
    let clean_before = dirty(&host);

    kill_before_the_release_scrub(&host);
    assert_eq!(dirty(&host), clean_before + 16, "the release happened");

    let again = host.run(&["plan", "deleted.toml", "--allow-destroy"]);
    assert_exit(&again, 2);
    assert!(
        text(&again)
            .contains("scrub 16 extents (released by a run that stopped before scrubbing them)"),
        "{}",
        text(&again)
    );
    assert_exit(&host.apply("deleted.toml", &["--allow-destroy"]), 0);
    assert_eq!(dirty(&host), clean_before, "the released extents are clean");
    assert_exit(&host.run(&["plan", "deleted.toml", "--allow-destroy"]), 0);
}

/// The journal of a run killed before its on-release scrub keeps that
/// scrub unfinished for good. Once a later run has scrubbed the extents,
/// the pool device taken out and put back (all its extents dirty again, as
/// any new device's) must not have them scrubbed "for the killed run": the
/// apply that puts it back said the host did not match its plan (exit 1).
/// Found by the kill loop (`tests/kill_loop.rs`).
#[test]
fn a_pool_device_put_back_is_not_scrubbed_for_a_run_killed_long_ago() {
    let host = Host::new(GuestPolicy::default(), Faults::default());
    host.file("populated.toml", POPULATED);
    host.file("deleted.toml", DELETED);
    assert_exit(&host.apply("populated.toml", &[]), 0);
    let clean_before = dirty(&host);
    kill_before_the_release_scrub(&host);
    assert_exit(&host.apply("deleted.toml", &["--allow-destroy"]), 0);
    assert_eq!(dirty(&host), clean_before, "the released extents are clean");

    // The pool goes, and comes back with a vdisk on the same device.
    let gone = "[settings]\ntoolstack = \"xenstore\"\n";
    host.file("gone.toml", gone);
    assert_exit(&host.apply("gone.toml", &["--allow-destroy"]), 0);
    host.file(
        "back.toml",
        &format!("{DELETED}\n[vdisks.new]\npool = \"fast\"\nsize = \"64MiB\"\n"),
    );
    let back = host.apply("back.toml", &[]);
    assert_exit(&back, 0);
    assert_exit(&host.run(&["plan", "back.toml"]), 0);
}
