//! Snapshots round-trip: loading a snapshot file yields the host state it
//! was written from, and writing that state again gives the same bytes.

use std::path::Path;

use xendisk::observe::snapshot::{SnapshotError, from_json, parse, to_json};

#[test]
fn every_golden_snapshot_round_trips() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    let mut checked = 0;
    for case in ["snapshot-demo", "snapshot-flat-dump"] {
        let text = std::fs::read_to_string(golden.join(case).join("stdout")).unwrap();
        let snapshot = parse(case, &text).unwrap();
        assert!(snapshot.machine_id.is_some(), "{case} names no host");
        let host = snapshot.host;
        assert!(
            !host.attachments.is_empty() && !host.dom0_uses.is_empty(),
            "{case} is not a useful fixture"
        );
        let taken_at = "2026-06-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            to_json(&host, snapshot.machine_id.as_deref(), taken_at),
            text,
            "{case} does not round-trip"
        );
        checked += 1;
    }
    assert_eq!(checked, 2);
}

#[test]
fn other_versions_and_broken_files_are_refused_with_a_reason() {
    let error = from_json(
        "old.json",
        r#"{"format_version": 99, "taken_at": "x", "host": {}}"#,
    )
    .unwrap_err();
    assert!(
        matches!(error, SnapshotError::Version { found: 99, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("take it again"));
    let error = from_json(
        "bad.json",
        r#"{"format_version": 3, "taken_at": "x", "host": {"domains": 3}}"#,
    )
    .unwrap_err();
    assert!(matches!(error, SnapshotError::Invalid { .. }), "{error}");
}

#[test]
fn a_version_2_snapshot_is_read_and_names_no_host() {
    let snapshot = parse(
        "old.json",
        r#"{"format_version": 2, "taken_at": "x", "host": {"domains": [], "attachments": [], "dom0_uses": [], "block_devices": [], "paths": []}}"#,
    )
    .unwrap();
    assert_eq!(snapshot.machine_id, None);
}
