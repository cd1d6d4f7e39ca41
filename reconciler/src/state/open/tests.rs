//! Making, opening and owning state DB files.

use std::os::unix::fs::PermissionsExt;

use rusqlite::Connection;

use super::super::tests::test_host;
use super::*;
use crate::state::{CURRENT_VERSION, HostId, Recorded};

fn t0() -> jiff::Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn other_host() -> HostId {
    HostId {
        machine_id: "fedcba9876543210fedcba9876543210".to_owned(),
        source: "/etc/machine-id".to_owned(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn immutable_uris_escape_what_a_uri_would_read() {
    assert_eq!(
        immutable_uri(Path::new("/var/lib/x?y#z %.sqlite")),
        "file:/var/lib/x%3Fy%23z%20%25.sqlite?immutable=1"
    );
}

#[test]
fn a_missing_db_is_an_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/state.sqlite");
    for error in [
        StateDb::open(&path).err().unwrap(),
        StateDb::open_read_only(&path).err().unwrap(),
    ] {
        assert!(matches!(error, StateError::Missing { .. }), "{error}");
        assert!(error.to_string().contains("xendisk init"), "{error}");
    }
    assert!(!path.exists() && !path.parent().unwrap().exists());
}

#[test]
fn a_new_db_is_private_records_its_host_and_is_made_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lib/xendisk/state.sqlite");
    let db = StateDb::create(&path, &test_host(), t0()).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let host = db.host().unwrap().unwrap();
    assert_eq!(host.machine_id, test_host().machine_id);
    assert_eq!(host.recorded_at, t0());
    drop(db);
    let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["state.sqlite"], "temporary files left behind");
    let error = StateDb::create(&path, &other_host(), t0()).err().unwrap();
    assert!(matches!(error, StateError::Exists { .. }), "{error}");
    let db = StateDb::open_read_only(&path).unwrap();
    assert_eq!(
        db.host().unwrap().unwrap().machine_id,
        test_host().machine_id
    );
}

#[test]
fn another_hosts_db_is_refused_unless_replaced() {
    let mut db = StateDb::in_memory().unwrap();
    assert_eq!(db.host().unwrap(), None);
    assert_eq!(
        db.record_host(&test_host(), false, t0()).unwrap(),
        Recorded::New
    );
    assert_eq!(
        db.record_host(&test_host(), false, t0()).unwrap(),
        Recorded::Same
    );
    let error = db.record_host(&other_host(), false, t0()).err().unwrap();
    assert!(matches!(error, StateError::OtherHost { .. }), "{error}");
    assert!(error.to_string().contains("--replace-host"), "{error}");
    let replaced = db.record_host(&other_host(), true, t0()).unwrap();
    assert!(
        matches!(replaced, Recorded::Replaced(old) if old.machine_id == test_host().machine_id)
    );
    assert_eq!(
        db.host().unwrap().unwrap().machine_id,
        other_host().machine_id
    );
}

/// A DB from a newer xendisk, in rollback-journal mode as an older SQLite
/// setup might leave it: switching it to WAL before the version check
/// rewrote its header.
#[test]
fn a_newer_schema_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    {
        let connection = Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "CREATE TABLE from_the_future (x); INSERT INTO from_the_future VALUES (1);",
            )
            .unwrap();
        connection
            .pragma_update(None, "user_version", CURRENT_VERSION + 1)
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    for error in [
        StateDb::open(&path).err().unwrap(),
        StateDb::open_read_only(&path).err().unwrap(),
    ] {
        assert!(
            error
                .to_string()
                .contains("newer than this xendisk understands"),
            "{error}"
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the refused DB changed"
    );
    assert!(!dir.path().join("state.sqlite-wal").exists());
}

/// A DB made before `init` existed (schema 2) is read through a migrated
/// copy, records no host, and is brought up to date when opened to write.
#[test]
fn an_older_db_records_no_host_until_init() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    {
        let mut connection = Connection::open(&path).unwrap();
        let tx = connection.transaction().unwrap();
        for (index, migration) in schema::MIGRATIONS.iter().take(2).enumerate() {
            tx.execute_batch(migration).unwrap();
            tx.pragma_update(None, "user_version", index as i64 + 1)
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    assert_eq!(
        StateDb::open_read_only(&path).unwrap().host().unwrap(),
        None
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a reader migrated the file"
    );
    let mut db = StateDb::open(&path).unwrap();
    assert_eq!(schema::version(&db.connection).unwrap(), CURRENT_VERSION);
    assert_eq!(
        db.record_host(&test_host(), false, t0()).unwrap(),
        Recorded::New
    );
}
