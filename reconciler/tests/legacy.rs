//! `import --legacy` against a database built the ancestor's way: its
//! `vd_format`, `vd_create`, `vd_refresh` and `vd_delete` replayed as the SQL
//! they ran, then every live vdisk's extents from `xendisk state --json`
//! compared with what the ancestor's `vd_lookup` query returns for it.

use std::path::Path;
use std::process::Command;

use rusqlite::{Connection, params};

/// vd_init_db, with the free pool (vdisk 0) born expired long ago.
fn init(db: &Connection) {
    db.execute_batch(
        "CREATE TABLE vdisk_extents (vdisk_extent_no INT, vdisk_id INT, part_id INT, part_extent_no INT);
         CREATE TABLE vdisk_part (part_id INT, partition VARCHAR, extent_size INT);
         CREATE TABLE vdisks (vdisk_id INT, size INT, expires BOOLEAN, expiry_time TIMESTAMP);
         INSERT INTO vdisks (vdisk_id, size, expires, expiry_time) VALUES (0, 0, 1, '2004-01-01 00:00:00');",
    )
    .unwrap();
}

/// vd_format: the partition joins the free pool, cut into extents.
fn format(db: &Connection, partition: &str, part_id: i64, nr_sectors: i64, extent_size_mb: i64) {
    let extent_size = extent_size_mb * 2048;
    db.execute(
        "INSERT INTO vdisk_part (partition, part_id, extent_size) VALUES (?1, ?2, ?3)",
        params![partition, part_id, extent_size],
    )
    .unwrap();
    let max: Option<i64> = db
        .query_row(
            "SELECT max(vdisk_extent_no) FROM vdisk_extents WHERE vdisk_id = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let first = max.map_or(0, |m| m + 1);
    for i in 0..nr_sectors / extent_size {
        db.execute(
            "INSERT INTO vdisk_extents (vdisk_extent_no, vdisk_id, part_id, part_extent_no) VALUES (?1, 0, ?2, ?3)",
            params![first + i, part_id, i],
        )
        .unwrap();
    }
}

/// vd_create: extents of expired vdisks, longest expired first and from the
/// end, renumbered 0.. in the new vdisk.
fn create(db: &Connection, size_mb: i64, expiry_seconds: i64) -> i64 {
    let size = size_mb * 2048;
    let new_id: i64 = db
        .query_row("SELECT max(vdisk_id) + 1 FROM vdisks", [], |r| r.get(0))
        .unwrap();
    let mut statement = db
        .prepare(
            "SELECT vdisks.vdisk_id, vdisk_extent_no, extent_size
             FROM vdisk_extents NATURAL JOIN vdisks NATURAL JOIN vdisk_part
             WHERE expires AND expiry_time < datetime('now')
             ORDER BY expiry_time ASC, vdisk_extent_no DESC",
        )
        .unwrap();
    let candidates: Vec<(i64, i64, i64)> = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let (mut allocated, mut counter) = (0, 0);
    let mut updates = Vec::new();
    for (vdisk_id, extent_no, extent_size) in candidates {
        if allocated >= size {
            break;
        }
        allocated += extent_size;
        updates.push((vdisk_id, extent_no, counter));
        counter += 1;
    }
    assert!(
        allocated >= size,
        "the legacy pool is too small for the test"
    );
    if expiry_seconds > 0 {
        let offset = format!("{expiry_seconds} seconds");
        db.execute(
            "INSERT INTO vdisks (vdisk_id, size, expires, expiry_time) VALUES (?1, ?2, 1, datetime('now', ?3))",
            params![new_id, size, offset],
        )
        .unwrap();
    } else {
        db.execute(
            "INSERT INTO vdisks (vdisk_id, size, expires, expiry_time) VALUES (?1, ?2, 0, NULL)",
            params![new_id, size],
        )
        .unwrap();
    }
    for (vdisk_id, extent_no, counter) in updates {
        db.execute(
            "UPDATE vdisk_extents SET vdisk_id = ?1, vdisk_extent_no = ?2 WHERE vdisk_extent_no = ?3 AND vdisk_id = ?4",
            params![new_id, counter, extent_no, vdisk_id],
        )
        .unwrap();
    }
    new_id
}

/// vd_delete, dated a minute ago so that "now" is unambiguous.
fn delete(db: &Connection, id: i64) {
    db.execute("UPDATE vdisks SET expires = 1, expiry_time = datetime('now', '-60 seconds') WHERE vdisk_id = ?1", params![id])
        .unwrap();
}

/// The ancestor's vd_lookup (with its later ORDER BY fix), device numbers as major:minor.
fn vd_lookup(db: &Connection, id: i64) -> Vec<(String, u64, u64)> {
    let mut statement = db
        .prepare(
            "SELECT vdisk_extents.part_id, round(part_extent_no * extent_size) AS start, extent_size
             FROM vdisk_extents NATURAL JOIN vdisks NATURAL JOIN vdisk_part
             WHERE (expiry_time > datetime('now') OR NOT expires) AND vdisk_extents.vdisk_id = ?1
             ORDER BY vdisk_extents.vdisk_extent_no ASC",
        )
        .unwrap();
    statement
        .query_map(params![id], |r| {
            let part: i64 = r.get(0)?;
            let start: f64 = r.get(1)?;
            Ok((
                format!("{}:{}", part >> 8, part & 0xff),
                start as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn xendisk(args: &[&str], state: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xendisk"))
        .args(args)
        .arg("--state")
        .arg(state)
        .env_remove("XENDISK_NOW")
        .output()
        .unwrap()
}

#[test]
fn imported_extents_are_exactly_what_vd_lookup_returns() {
    let dir = tempfile::tempdir().unwrap();
    let legacy_path = dir.path().join("xen_vdisks.sqlite");
    let db = Connection::open(&legacy_path).unwrap();
    init(&db);
    format(&db, "/dev/sda3", 0x0803, 40 * 2048, 4); // 10 extents of 4 MB
    format(&db, "/dev/sdb1", 0x0811, 24 * 2048, 4); // 6 extents
    let kept = create(&db, 12, 0);
    let deleted = create(&db, 8, 0);
    let expiring = create(&db, 20, 86_400);
    let refreshed = create(&db, 4, 3600);
    db.execute(
        "UPDATE vdisks SET expires = 0, expiry_time = NULL WHERE vdisk_id = ?1",
        params![refreshed],
    )
    .unwrap();
    delete(&db, deleted);
    let reused = create(&db, 8, 0); // takes the deleted vdisk's extents
    let live = [kept, expiring, refreshed, reused];
    let expected: Vec<Vec<(String, u64, u64)>> =
        live.iter().map(|id| vd_lookup(&db, *id)).collect();
    assert!(expected.iter().all(|e| !e.is_empty()));
    drop(db);

    let state = dir.path().join("state.sqlite");
    let import = xendisk(
        &["import", "--legacy", legacy_path.to_str().unwrap()],
        &state,
    );
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let output = xendisk(&["state", "--json", "--check"], &state);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let vdisks = json["vdisks"].as_array().unwrap();
    assert_eq!(vdisks.len(), live.len());
    for (id, expected) in live.iter().zip(&expected) {
        let vdisk = vdisks
            .iter()
            .find(|v| v["name"] == format!("vd-{id}"))
            .unwrap_or_else(|| panic!("vd-{id} missing"));
        let actual: Vec<(String, u64, u64)> = vdisk["extents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["device"].as_str().unwrap().to_owned(),
                    e["start"].as_u64().unwrap(),
                    e["sectors"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(&actual, expected, "vd-{id}");
    }
    // Free space: 16 extents in all, less the live ones.
    let used: usize = expected.iter().map(Vec::len).sum();
    let free: u64 = json["pools"][0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["free"].as_u64().unwrap())
        .sum();
    assert_eq!(free as usize, 16 - used);
}

#[test]
fn a_sqlite2_file_is_recognised_and_the_conversion_explained() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("old.sqlite");
    let mut bytes = b"** This file contains an SQLite 2.1 database **".to_vec();
    bytes.resize(1024, 0);
    std::fs::write(&legacy, bytes).unwrap();
    let state = dir.path().join("state.sqlite");
    let output = xendisk(&["import", "--legacy", legacy.to_str().unwrap()], &state);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SQLite 2 database") && stderr.contains(".dump"),
        "{stderr}"
    );
    assert!(
        !state.exists(),
        "a refused import must not create the state DB"
    );
}
