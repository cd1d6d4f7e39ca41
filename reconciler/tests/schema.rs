//! The committed JSON Schemas must equal what the types generate.
//! `XENDISK_BLESS=1 cargo test --test schema` rewrites them.

use std::fs;
use std::path::Path;

/// Compares (or, when blessing, rewrites) one committed schema.
fn check_committed(file: &str, generated: &str, command: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas")
        .join(file);
    if std::env::var_os("XENDISK_BLESS").is_some() {
        fs::write(&path, generated).expect("schemas/ is writable");
        return;
    }
    let committed = fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let diff = similar::TextDiff::from_lines(&committed, generated)
            .unified_diff()
            .header(&format!("schemas/{file} (committed)"), "generated")
            .to_string();
        panic!(
            "schemas/{file} is stale; run `{command} > schemas/{file}` or \
             XENDISK_BLESS=1 cargo test --test schema:\n{diff}"
        );
    }
}

#[test]
fn committed_desired_state_schema_is_current() {
    check_committed(
        "xendisk.schema.json",
        &xendisk::schema::desired_state_schema(),
        "xendisk schema desired",
    );
}

#[test]
fn committed_snapshot_schema_is_current() {
    check_committed(
        "snapshot.schema.json",
        &xendisk::schema::snapshot_schema(),
        "xendisk schema snapshot",
    );
}

/// The schema accepts every example, as an editor would check it, so that its
/// hand-written parts (sizes, sources, modes, expiries) agree with the parser.
#[test]
fn the_schema_accepts_every_example() {
    let schema: serde_json::Value =
        serde_json::from_str(&xendisk::schema::desired_state_schema()).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for entry in fs::read_dir(dir).expect("examples/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let document: serde_json::Value =
            toml::from_str(&fs::read_to_string(&path).unwrap()).expect("example is TOML");
        let errors: Vec<String> = validator
            .iter_errors(&document)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    }
}

/// And refuses what the parser refuses in the same place.
#[test]
fn the_schema_refuses_bad_values() {
    let schema: serde_json::Value =
        serde_json::from_str(&xendisk::schema::desired_state_schema()).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for bad in [
        r#"[vdisks.v]
pool = "p"
size = "1.5GiB""#,
        r#"[domains.g.disks]
xvda = { source = "phy:sda3", mode = "r" }"#,
        r#"[domains.g.disks]
xvda = { source = "vdisk:v", mode = "rw!" }"#,
        r#"[vdisks.v]
pool = "p"
size = "1GiB"
expires = "forever""#,
        r#"[vdisks."web.root"]
pool = "p"
size = "1GiB""#,
        r#"[pools.p]
devices = []
colour = "blue""#,
    ] {
        let document: serde_json::Value = toml::from_str(bad).unwrap();
        assert!(!validator.is_valid(&document), "schema accepts:\n{bad}");
    }
}

#[test]
fn committed_plan_schema_is_current() {
    check_committed(
        "plan.schema.json",
        &xendisk::schema::plan_schema(),
        "xendisk schema plan",
    );
}

/// Every saved plan among the golden outputs is valid by the plan schema,
/// and reads back into the same value.
#[test]
fn golden_plans_match_the_plan_schema() {
    let schema: serde_json::Value = serde_json::from_str(&xendisk::schema::plan_schema()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    let mut checked = 0;
    for entry in fs::read_dir(golden).unwrap() {
        let stdout = fs::read_to_string(entry.unwrap().path().join("stdout")).unwrap_or_default();
        // Plans printed with --json start a JSON document on their own line.
        for document in stdout
            .split("\n$ ")
            .filter_map(|part| part.find("{\n  \"format_version\"").map(|i| &part[i..]))
        {
            let value: serde_json::Value = serde_json::from_str(document).unwrap();
            if value.get("steps").is_none() {
                continue; // a state or snapshot document
            }
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{errors:#?}");
            let plan: xendisk::render::plan::SavedPlan =
                serde_json::from_value(value.clone()).unwrap();
            assert_eq!(serde_json::to_value(&plan).unwrap(), value);
            checked += 1;
        }
    }
    assert!(checked >= 1, "no saved plan found among the golden outputs");
}
