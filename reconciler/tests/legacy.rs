//! `import --legacy` against a database built the ancestor's way: its
//! `vd_format`, `vd_create`, `vd_refresh` and `vd_delete` replayed as the SQL
//! they ran, then every live vdisk's extents from `xendisk state --json`
//! compared with what the ancestor's `vd_lookup` query returns for it. The
//! ancestor cut each partition into extents of its own size and handed out
//! extents from any of them, so a vdisk over partitions of two extent sizes
//! is an ordinary legacy layout: it imports as it is, from the SQLite file
//! or its `.dump` text, and then plans, grows, attaches and is deleted on
//! the simulated host like any other vdisk.

mod host;

use std::path::Path;
use std::process::Command;

use rusqlite::types::Value;
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

/// The `.dump` text of a legacy database as the ancestor's `sqlite` (2)
/// writes it: the tables' own CREATE statements, every value quoted as text.
fn dump(db: &Connection) -> String {
    let mut text = String::from("BEGIN TRANSACTION;\n");
    for table in ["vdisk_extents", "vdisk_part", "vdisks"] {
        let create: String = db
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        text.push_str(&format!("{create};\n"));
        let mut statement = db.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns = statement.column_count();
        let rows: Vec<Vec<Value>> = statement
            .query_map([], |r| (0..columns).map(|i| r.get(i)).collect())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for row in rows {
            let values: Vec<String> = row
                .iter()
                .map(|value| match value {
                    Value::Null => "NULL".to_owned(),
                    Value::Integer(n) => format!("'{n}'"),
                    Value::Real(r) => format!("'{r}'"),
                    Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
                    Value::Blob(_) => panic!("the ancestor stored no blobs"),
                })
                .collect();
            text.push_str(&format!(
                "INSERT INTO {table} VALUES({});\n",
                values.join(",")
            ));
        }
    }
    text.push_str("COMMIT;\n");
    text
}

/// Each vdisk's extents in `state --json`, as `(device, start, sectors)`.
fn json_extents(json: &serde_json::Value, name: &str) -> Vec<(String, u64, u64)> {
    let vdisk = json["vdisks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {json:#}"));
    vdisk["extents"]
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
        .collect()
}

/// The ancestor's database on the simulated host's two free devices:
/// `/dev/sdc` (8:32) cut into 32 MiB extents, then `/dev/sdb1` (8:17) into
/// 16 MiB ones. vd_create takes the highest free extent numbers first, so
/// vdisk 2 gets all of sdb1's extents but the one vdisk 1 holds, then two
/// of sdc's; deleting vdisk 1 leaves that extent free for a grow. Returns
/// the database and vdisk 2's `vd_lookup`.
fn mixed_sizes(path: &Path) -> (Connection, Vec<(String, u64, u64)>) {
    let db = Connection::open(path).unwrap();
    init(&db);
    format(&db, "/dev/sdc", 0x0820, 128 * 2048, 32); // extents 0..=3, 32 MiB
    format(&db, "/dev/sdb1", 0x0811, 128 * 2048, 16); // extents 4..=11, 16 MiB
    let small = create(&db, 16, 0);
    let spanning = create(&db, 160, 0);
    delete(&db, small);
    assert_eq!(spanning, 2);
    let lookup = vd_lookup(&db, spanning);
    // The premise: one vdisk, two partitions, two extent sizes, in the
    // ancestor's order (sdb1 from its end, then sdc from its end).
    let mut expected: Vec<(String, u64, u64)> = (0..7)
        .rev()
        .map(|i| ("8:17".to_owned(), i * 32768, 32768))
        .collect();
    expected.push(("8:32".to_owned(), 3 * 65536, 65536));
    expected.push(("8:32".to_owned(), 2 * 65536, 65536));
    assert_eq!(lookup, expected);
    (db, lookup)
}

#[test]
fn a_vdisk_over_partitions_of_two_extent_sizes_imports_as_vd_lookup_returns_it() {
    let dir = tempfile::tempdir().unwrap();
    let (db, lookup) = mixed_sizes(&dir.path().join("xen_vdisks.sqlite"));
    let text = dir.path().join("xen_vdisks.sql");
    std::fs::write(&text, dump(&db)).unwrap();
    drop(db);
    for legacy in ["xen_vdisks.sqlite", "xen_vdisks.sql"] {
        let state = dir.path().join(format!("{legacy}.state"));
        let legacy = dir.path().join(legacy);
        let import = xendisk(&["import", "--legacy", legacy.to_str().unwrap()], &state);
        assert!(
            import.status.success(),
            "{}: {}",
            legacy.display(),
            String::from_utf8_lossy(&import.stderr)
        );
        let output = xendisk(&["state", "--json", "--check"], &state);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json_extents(&json, "vd-2"), lookup, "{}", legacy.display());
        let vdisk = &json["vdisks"][0];
        // Its pool is its first extent's; its extents hold 7 x 16 + 2 x 32 MiB.
        assert_eq!(vdisk["pool"], "legacy", "{json:#}");
        assert_eq!(vdisk["size"], "160MiB");
        assert_eq!(vdisk["allocated"], "176MiB");
        // The ancestor took extents from the end: no two are in a row.
        assert_eq!(vdisk["segments"], 9);
        // Realised, each extent is a line of the device-mapper table, of its
        // own length, one after the other.
        let db = xendisk::state::StateDb::open_read_only(&state).unwrap();
        let extents = db.lookup("vd-2", jiff::Timestamp::now()).unwrap();
        let mut logical = 0;
        let mut table = String::new();
        for (device, start, sectors) in &lookup {
            table.push_str(&format!("{logical} {sectors} linear {device} {start}\n"));
            logical += sectors;
        }
        assert_eq!(xendisk::apply::realise::dm_table(&extents), table);
    }
}

const ADOPTED: &str = r#"
[settings]
toolstack = "xenstore"

[pools.legacy]
extent_size = "16MiB"
devices = ["/dev/sdb1"]
scrub = "on-release"

[pools.legacy-2]
extent_size = "32MiB"
devices = ["/dev/sdc"]

[vdisks.vd-2]
pool = "legacy"
size = "SIZE"

[domains.guest1.disks]
DISKS
"#;

fn adopted(size: &str, disks: &str) -> String {
    ADOPTED.replace("SIZE", size).replace("DISKS", disks)
}

fn state_json(host: &host::Host) -> serde_json::Value {
    let output = host.run(&["state", "--json", "--check"]);
    host::assert_exit(&output, 0);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `(free, dirty)` extents of the one device of a pool.
fn pool_counts(json: &serde_json::Value, pool: &str) -> (u64, u64) {
    let pool = json["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .unwrap_or_else(|| panic!("pool {pool} missing from {json:#}"));
    let device = &pool["devices"][0];
    (
        device["free"].as_u64().unwrap(),
        device["dirty"].as_u64().unwrap(),
    )
}

#[test]
fn a_vdisk_over_two_extent_sizes_grows_attaches_and_is_deleted_on_the_simulated_host() {
    use xendisk::sim::{Faults, GuestPolicy};
    let host = host::Host::new(GuestPolicy::default(), Faults::default());
    let legacy = host.dir.path().join("xen_vdisks.sql");
    let (db, lookup) = mixed_sizes(&host.dir.path().join("xen_vdisks.sqlite"));
    std::fs::write(&legacy, dump(&db)).unwrap();
    drop(db);
    host::assert_exit(
        &host.run(&["import", "--legacy", legacy.to_str().unwrap()]),
        0,
    );

    // Adopted as it is: nothing to do.
    host.file("same.toml", &adopted("160MiB", ""));
    host::assert_exit(&host.run(&["plan", "same.toml"]), 0);

    // A grow counts the sectors the vdisk holds (176 MiB), not its extents
    // times its pool's extent size (9 x 16 MiB): 16 MiB more is one extent
    // of its own pool, the one vdisk 1 left free.
    host.file("grow.toml", &adopted("192MiB", ""));
    let planned = host.run(&["plan", "grow.toml", "--json"]);
    host::assert_exit(&planned, 2);
    let plan: serde_json::Value = serde_json::from_slice(&planned.stdout).unwrap();
    let grows: Vec<&serde_json::Value> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["op"] == "grow-vdisk")
        .collect();
    assert_eq!(grows.len(), 1, "{plan:#}");
    assert_eq!(
        grows[0]["extents"],
        serde_json::json!([{"device": "8:17", "start": 7 * 32768, "sectors": 32768}]),
        "{plan:#}"
    );
    host::assert_exit(&host.apply("grow.toml", &[]), 0);
    let json = state_json(&host);
    let mut grown = lookup.clone();
    grown.push(("8:17".to_owned(), 7 * 32768, 32768));
    assert_eq!(json_extents(&json, "vd-2"), grown);
    assert_eq!(json["vdisks"][0]["allocated"], "192MiB");
    assert_eq!(pool_counts(&json, "legacy").0, 0);

    // Attached to a guest: realised over both partitions, in order.
    let disks = r#"xvda = { source = "vdisk:vd-2", mode = "w" }"#;
    host.file("attach.toml", &adopted("192MiB", disks));
    let applied = host.apply("attach.toml", &[]);
    host::assert_exit(&applied, 0);
    assert_eq!(host.attached(4), ["51712"]);
    assert_eq!(
        host.simulator
            .store()
            .read("/local/domain/0/backend/vbd/4/51712/params")
            .unwrap(),
        b"/dev/mapper/xendisk-vd-2"
    );
    host::assert_exit(&host.run(&["plan", "attach.toml"]), 0);

    // Deleted: each extent goes back to its own pool.
    host.file(
        "delete.toml",
        &adopted("192MiB", "").replace("[vdisks.vd-2]\npool = \"legacy\"\nsize = \"192MiB\"\n", ""),
    );
    host::assert_exit(&host.apply("delete.toml", &["--allow-destroy"]), 0);
    let json = state_json(&host);
    assert_eq!(json["vdisks"].as_array().unwrap().len(), 0, "{json:#}");
    assert_eq!(pool_counts(&json, "legacy").0, 8, "{json:#}");
    assert_eq!(pool_counts(&json, "legacy-2").0, 4, "{json:#}");
    host::assert_exit(&host.run(&["plan", "delete.toml"]), 0);
}
