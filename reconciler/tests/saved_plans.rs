//! A saved plan is re-proved at apply: it is made again from the desired
//! state it carries and applied only if it comes out the same. Each test
//! forges a plan file as an attacker (or a careless editor) would, and
//! checks that apply refuses it and that nothing on the host changed: the
//! state DB and the simulated xenstore are compared whole, before and after.

mod host;

use host::{Host, assert_exit, text};
use proptest::prelude::*;
use serde_json::Value;
use xendisk::sim::{Faults, GuestPolicy};

const POPULATE: &str = r#"
[settings]
toolstack = "xenstore"

[pools.fast]
extent_size = "64MiB"
devices = ["/dev/sdb1"]

[vdisks.keep]
pool = "fast"
size = "1GiB"
prevent_destroy = true

[domains.guest1.disks]
xvda = { source = "vdisk:keep", mode = "w" }
"#;

/// What a forgery may have changed: the state DB and xenstore, whole.
fn host_now(host: &Host) -> (String, String) {
    let state = String::from_utf8(host.run(&["state", "--json"]).stdout).unwrap();
    let store = host.simulator.store();
    (state, xendisk::sim::dump::write_full_paths(&store))
}

/// Saves the plan for `desired` as `plan.json` and returns it as JSON.
fn saved(host: &Host, desired: &str, extra: &[&str]) -> Value {
    host.file("next.toml", desired);
    let mut args = vec!["plan", "next.toml", "-o", "plan.json"];
    args.extend_from_slice(extra);
    let made = host.run(&args);
    assert!(matches!(made.status.code(), Some(2 | 3)), "{}", text(&made));
    serde_json::from_slice(&std::fs::read(host.dir.path().join("plan.json")).unwrap()).unwrap()
}

/// Applies a forged plan: refused with `code`, and nothing changed.
fn assert_forgery_refused(host: &Host, forged: &Value, code: i32, says: &str) {
    host.file("forged.json", &forged.to_string());
    let before = host_now(host);
    let applied = host.apply("forged.json", &[]);
    assert_exit(&applied, code);
    assert!(text(&applied).contains(says), "{}", text(&applied));
    assert!(
        text(&applied).contains("nothing was applied"),
        "{}",
        text(&applied)
    );
    assert_eq!(host_now(host), before, "a refused plan changed the host");
}

fn populated() -> Host {
    let host = Host::new(GuestPolicy::default(), Faults::default());
    host.file("populate.toml", POPULATE);
    assert_exit(&host.apply("populate.toml", &[]), 0);
    host
}

#[test]
fn a_refused_plan_with_its_conflicts_deleted_is_refused() {
    let host = populated();
    // guest2 wants keep read-write too: refused for sharing.
    let desired = format!(
        "{POPULATE}\n[domains.guest2.disks]\nxvda = {{ source = \"vdisk:keep\", mode = \"w\" }}\n"
    );
    let mut plan = saved(&host, &desired, &[]);
    assert_eq!(plan["refused"], true);
    plan["refused"] = Value::Bool(false);
    plan["safety"]["conflicts"] = Value::Array(vec![]);
    assert_forgery_refused(&host, &plan, 3, "is not the plan its desired state gives");
}

#[test]
fn a_delete_of_a_protected_vdisk_with_its_refusals_deleted_is_refused() {
    let host = populated();
    // Moving `keep` to another pool deletes it and makes it anew:
    // prevent_destroy refuses that, --allow-destroy or not.
    let desired = POPULATE
        .replace("pool = \"fast\"", "pool = \"slow\"")
        .replace(
            "[vdisks.keep]",
            "[pools.slow]\ndevices = [\"/dev/sdc\"]\n\n[vdisks.keep]",
        );
    let mut plan = saved(&host, &desired, &["--allow-destroy"]);
    assert_eq!(plan["refused"], true, "{plan}");
    plan["refused"] = Value::Bool(false);
    plan["refusals"] = Value::Array(vec![]);
    assert_forgery_refused(&host, &plan, 3, "is not the plan its desired state gives");
}

#[test]
fn a_scrub_moved_onto_a_live_vdisk_is_refused() {
    let host = populated();
    let desired = format!("{POPULATE}\n[vdisks.new]\npool = \"fast\"\nsize = \"1GiB\"\n");
    let mut plan = saved(&host, &desired, &[]);
    assert_eq!(plan["refused"], false, "{plan}");
    let live: Value = serde_json::from_slice(&host.run(&["state", "--json"]).stdout).unwrap();
    let keep_extents = live["vdisks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "keep")
        .unwrap()["extents"]
        .clone();
    let steps = plan["steps"].as_array_mut().unwrap();
    let scrub = steps.iter_mut().find(|s| s["op"] == "scrub").unwrap();
    scrub["extents"] = keep_extents;
    assert_forgery_refused(&host, &plan, 3, "is not the plan its desired state gives");
}

#[test]
fn a_step_waiting_for_a_step_that_is_not_there_is_refused() {
    let host = populated();
    let desired = format!("{POPULATE}\n[vdisks.new]\npool = \"fast\"\nsize = \"1GiB\"\n");
    let mut plan = saved(&host, &desired, &[]);
    let steps = plan["steps"].as_array_mut().unwrap();
    steps.last_mut().unwrap()["depends_on"] = serde_json::json!([99]);
    assert_forgery_refused(&host, &plan, 3, "is not the plan its desired state gives");
}

#[test]
fn a_zero_sector_scrub_is_refused_without_a_panic() {
    let host = populated();
    let desired = format!("{POPULATE}\n[vdisks.new]\npool = \"fast\"\nsize = \"1GiB\"\n");
    let mut plan = saved(&host, &desired, &[]);
    let steps = plan["steps"].as_array_mut().unwrap();
    let scrub = steps.iter_mut().find(|s| s["op"] == "scrub").unwrap();
    scrub["extents"][0]["sectors"] = Value::from(0);
    assert_forgery_refused(&host, &plan, 3, "is not the plan its desired state gives");
}

#[test]
fn an_edited_desired_state_must_plan_to_the_same_steps() {
    let host = populated();
    let desired = format!("{POPULATE}\n[vdisks.new]\npool = \"fast\"\nsize = \"1GiB\"\n");
    let mut plan = saved(&host, &desired, &[]);
    // The steps say 1GiB, the desired state it carries now says 2GiB.
    plan["desired"]["vdisks"]["new"]["size"] = Value::from("2GiB");
    assert_forgery_refused(&host, &plan, 3, "is not the plan its desired state gives");
    // An invalid desired state is an error, not a plan.
    plan["desired"]["vdisks"]["new"]["pool"] = Value::from("nowhere");
    assert_forgery_refused(&host, &plan, 1, "is not valid");
}

#[test]
fn malformed_and_old_plans_are_errors() {
    let host = populated();
    let desired = format!("{POPULATE}\n[vdisks.new]\npool = \"fast\"\nsize = \"1GiB\"\n");
    let plan = saved(&host, &desired, &[]);
    let whole = plan.to_string();
    for broken in [
        whole[..whole.len() / 2].to_owned(),
        "{".to_owned(),
        "{\"format_version\": 1}".to_owned(),
        whole.replace("\"format_version\":2", "\"format_version\":1"),
    ] {
        host.file("broken.json", &broken);
        let before = host_now(&host);
        let applied = host.apply("broken.json", &[]);
        assert_exit(&applied, 1);
        assert!(
            text(&applied).contains("is not a saved plan this xendisk can apply"),
            "{}",
            text(&applied)
        );
        assert_eq!(host_now(&host), before);
    }
    // The plan as saved applies.
    host.file("plan-as-saved.json", &whole);
    assert_exit(&host.apply("plan-as-saved.json", &[]), 0);
}

fn a_saved_plan() -> String {
    let host = populated();
    let desired = format!("{POPULATE}\n[vdisks.new]\npool = \"fast\"\nsize = \"1GiB\"\n");
    saved(&host, &desired, &[]).to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever bytes a plan file holds, reading it gives a plan or a
    /// reason, and comparing what it gives with a real plan never panics.
    #[test]
    fn the_loader_never_panics(
        cut in 0usize..4096,
        flips in proptest::collection::vec((0usize..4096, any::<u8>()), 0..8),
    ) {
        static PLAN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let whole = PLAN.get_or_init(a_saved_plan).clone().into_bytes();
        let mut bytes = whole.clone();
        for (at, byte) in flips {
            if !bytes.is_empty() {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
        }
        bytes.truncate(bytes.len().min(cut.max(bytes.len() / 2)));
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(saved) = xendisk::render::plan::read_saved(&text) {
            let original = xendisk::render::plan::read_saved(&String::from_utf8(whole).unwrap()).unwrap();
            let _ = xendisk::render::plan::difference(&saved, &original.plan);
        }
    }
}
