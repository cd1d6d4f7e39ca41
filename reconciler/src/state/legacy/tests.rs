//! The legacy loader on its own: the dump scanner, the statement gate, and
//! arbitrary input (random bytes, mutated dumps), which must always give a
//! database or a clear error, never a panic.

use proptest::prelude::*;

use super::dump::{self, Piece, Problem};
use super::{LegacyError, load_dump, read_tables};

const DUMP: &str = include_str!("../../../../tests/golden/import-legacy/xen_vdisks.sql");

fn now() -> jiff::Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

#[test]
fn the_scanner_cuts_at_semicolons_outside_quotes_and_comments() {
    let text = "INSERT INTO a VALUES('x;y'); -- c;\n/* d; */ INSERT INTO \"b;\" VALUES(1);\n\n  ;;\nCOMMIT";
    let pieces = dump::statements(text);
    let lines: Vec<usize> = pieces.iter().map(|p| p.line).collect();
    assert_eq!(lines, [1, 2, 5]);
    assert_eq!(pieces[0].text, "INSERT INTO a VALUES('x;y')");
    assert!(pieces[1].text.ends_with("INSERT INTO \"b;\" VALUES(1)"));
    assert_eq!(
        pieces[2],
        Piece {
            line: 5,
            text: "\nCOMMIT"
        }
    );
}

#[test]
fn the_scanner_knows_doubled_quotes_brackets_and_unterminated_text() {
    let pieces = dump::statements("INSERT INTO t VALUES('it''s;'); SELECT [a;b]; 'open;");
    let texts: Vec<&str> = pieces.iter().map(|p| p.text.trim()).collect();
    assert_eq!(
        texts,
        ["INSERT INTO t VALUES('it''s;')", "SELECT [a;b]", "'open;"]
    );
}

#[test]
fn the_ancestors_dump_loads_and_reads() {
    let connection = load_dump("dump.sql", DUMP).unwrap();
    let (partitions, vdisks, extents) = read_tables(&connection, "dump.sql", now()).unwrap();
    assert_eq!((partitions.len(), vdisks.len(), extents.len()), (3, 6, 16));
}

/// The problem the loader reports for `text`, at which line.
fn problem(text: &str) -> (usize, Problem) {
    let Err(error) = dump::load(text) else {
        panic!("not refused: {text}");
    };
    (error.line, error.problem)
}

#[test]
fn only_the_ancestors_statements_pass_the_gate() {
    let schema =
        "CREATE TABLE vdisks (vdisk_id INT, size INT, expires BOOLEAN, expiry_time TIMESTAMP);\n";
    for (attack, why) in [
        ("ATTACH ':memory:' AS other", "opens another database"),
        ("PRAGMA writable_schema = 1", "PRAGMA"),
        ("VACUUM", "not CREATE TABLE, INSERT INTO"),
        ("CREATE INDEX i ON vdisks (size)", "creates an index"),
        ("CREATE TABLE main.other (a)", "`other`"),
        ("CREATE TABLE IF NOT EXISTS other (a)", "`other`"),
        ("CREATE TABLE v2 AS SELECT * FROM vdisks", "`v2`"),
        ("CREATE TABLE vdisk_part AS SELECT * FROM vdisks", "reads"),
        ("CREATE TABLE vdisk_part (a DEFAULT (random()))", "`random`"),
        (
            "CREATE TABLE vdisk_part (a CHECK (a > (SELECT 1)))",
            "subqueries",
        ),
        ("CREATE TABLE vdisk_part (a CHECK (abs(a) > 0))", "`abs`"),
        ("INSERT INTO vdisks SELECT * FROM vdisks", "SELECT"),
        ("INSERT INTO vdisks VALUES(abs(-1), 1, 0, NULL)", "`abs`"),
        (
            "INSERT INTO vdisks VALUES((SELECT 1), 1, 0, NULL)",
            "SELECT",
        ),
        (
            "INSERT INTO vdisks DEFAULT VALUES RETURNING (SELECT 1)",
            "SELECT",
        ),
        (
            "INSERT INTO temp.vdisks VALUES(1, 1, 0, NULL)",
            "no such table",
        ),
        (
            "WITH x AS (SELECT 1) INSERT INTO vdisks SELECT 1, 1, 0, NULL FROM x",
            "not CREATE TABLE, INSERT INTO",
        ),
        (
            "EXPLAIN INSERT INTO vdisks VALUES(1, 1, 0, NULL)",
            "not CREATE TABLE, INSERT INTO",
        ),
        ("BEGIN; DROP TABLE vdisks", "rewrites"),
        ("ROLLBACK", "not CREATE TABLE, INSERT INTO"),
        ("SAVEPOINT s", "not CREATE TABLE, INSERT INTO"),
        ("BEGIN TRANSACTION x y", "not CREATE TABLE, INSERT INTO"),
    ] {
        let text = format!("{schema}{attack};\n");
        let (line, problem) = problem(&text);
        assert_eq!(line, 2, "{attack}");
        let message = match problem {
            Problem::Refused(why) | Problem::Failed(why) => why,
        };
        assert!(message.contains(why), "{attack}: {message}");
    }
}

#[test]
fn a_statement_that_does_not_run_is_named_with_its_line() {
    let text = "BEGIN TRANSACTION;\nCREATE TABLE vdisks (a);\nINSERT INTO vdisks VALUES(1, 2);\n";
    assert_eq!(
        dump::load(text).err().map(|e| (e.line, e.statement)),
        Some((3, "INSERT INTO vdisks VALUES(1, 2)".to_owned()))
    );
    let text = "CREATE TABLE vdisks (a);\nINSERT INTO vdisks VALUES('unterminated);\n";
    assert!(matches!(problem(text), (2, Problem::Failed(_))));
}

#[test]
fn the_loaded_database_is_only_read() {
    let connection = load_dump("dump.sql", DUMP).unwrap();
    for sql in ["SELECT * FROM vdisks", "SELECT count(*) FROM vdisk_part"] {
        let allowed = sql == "SELECT * FROM vdisks";
        assert_eq!(connection.prepare(sql).is_ok(), allowed, "{sql}");
    }
    for sql in [
        "UPDATE vdisks SET size = 0",
        "DELETE FROM vdisk_part",
        "INSERT INTO vdisks VALUES(9, 9, 0, NULL)",
        "ATTACH ':memory:' AS other",
        "SELECT name FROM sqlite_master",
        "PRAGMA journal_mode",
    ] {
        assert!(connection.prepare(sql).is_err(), "{sql}");
    }
}

/// Every way the loader may answer: a database, or an error that says
/// what, where and what to do.
fn loads_or_explains(name: &str, text: &str) -> Result<(), TestCaseError> {
    match load_dump(name, text) {
        Ok(connection) => {
            if let Err(error) = read_tables(&connection, name, now()) {
                let message = error.to_string();
                prop_assert!(message.contains(name), "{message}");
            }
        }
        Err(error @ (LegacyError::Refused { .. } | LegacyError::BadStatement { .. })) => {
            let message = error.to_string();
            prop_assert!(message.starts_with(&format!("{name}:")), "{message}");
            prop_assert!(message.contains("nothing was imported"), "{message}");
        }
        Err(other) => prop_assert!(false, "unexpected error {other}"),
    }
    Ok(())
}

/// Edits to the ancestor's dump, each at a byte offset.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, String),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let pieces = prop_oneof![
        Just(";".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("--".to_owned()),
        Just("/*".to_owned()),
        Just("*/".to_owned()),
        Just("[".to_owned()),
        Just("\n".to_owned()),
        Just("ATTACH 'x' AS y;".to_owned()),
        Just("PRAGMA writable_schema=1;".to_owned()),
        Just("CREATE TRIGGER t AFTER INSERT ON vdisks BEGIN DELETE FROM vdisks; END;".to_owned()),
        Just("INSERT INTO vdisks VALUES(".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("1e308".to_owned()),
        Just("NULL".to_owned()),
        Just("X'00ff'".to_owned()),
        "[ -~]{0,12}",
        any::<String>().prop_map(|s| s.chars().take(8).collect()),
    ];
    let edit = prop_oneof![
        (any::<usize>(), pieces).prop_map(|(at, text)| Edit::Insert(at, text)),
        (any::<usize>(), 0usize..40).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), 0usize..80).prop_map(|(at, n)| Edit::Duplicate(at, n)),
    ];
    proptest::collection::vec(edit, 1..6)
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut text = text.to_owned();
    // A char boundary at or before `at`, within the text.
    let boundary = |text: &str, at: usize| {
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    for edit in edits {
        match edit {
            Edit::Insert(at, piece) => {
                let at = boundary(&text, *at);
                text.insert_str(at, piece);
            }
            Edit::Delete(at, n) => {
                let start = boundary(&text, *at);
                let end = boundary(&text, start.saturating_add(*n).min(text.len()));
                text.replace_range(start..end, "");
            }
            Edit::Duplicate(at, n) => {
                let start = boundary(&text, *at);
                let end = boundary(&text, start.saturating_add(*n).min(text.len()));
                let copy = text[start..end].to_owned();
                text.insert_str(end, &copy);
            }
        }
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_loads_or_is_explained(text in any::<String>()) {
        loads_or_explains("random.sql", &text)?;
    }

    #[test]
    fn arbitrary_bytes_load_or_are_explained(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("random.sql");
        std::fs::write(&path, &bytes).unwrap();
        // Through the whole reader: the file's kind is found from its bytes.
        if let Err(error) = super::read_legacy(&path, now()) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn mutated_dumps_load_or_are_explained(edits in edits()) {
        let text = apply(DUMP, &edits);
        loads_or_explains("mutated.sql", &text)?;
        // And what loads is checked as any legacy file is.
        if let Ok(connection) = load_dump("mutated.sql", &text)
            && let Ok((partitions, vdisks, extents)) = read_tables(&connection, "mutated.sql", now())
        {
            let _ = super::check("mutated.sql", &partitions, &vdisks, &extents);
        }
    }
}

/// The golden case's database: vd-1 over /dev/sdb1 (32 MiB extents, its
/// pool `legacy-2`) and /dev/sda3 (16 MiB, pool `legacy`), imported.
fn mixed() -> crate::state::StateDb {
    let text = include_str!("../../../../tests/golden/import-legacy-mixed-sizes/xen_vdisks.sql");
    let connection = load_dump("mixed.sql", text).unwrap();
    let (partitions, vdisks, extents) = read_tables(&connection, "mixed.sql", now()).unwrap();
    super::check("mixed.sql", &partitions, &vdisks, &extents).unwrap();
    let legacy = super::LegacyDb {
        partitions,
        vdisks,
        extents,
    };
    let mut db = crate::state::StateDb::in_memory().unwrap();
    super::import_legacy(&mut db, &legacy, now()).unwrap();
    db
}

#[test]
fn a_vdisk_over_two_extent_sizes_is_consistent_and_grows_from_its_own_pool() {
    use crate::desired::Size;
    let mut db = mixed();
    assert_eq!(db.verify(now()).unwrap(), Vec::<String>::new());
    let vdisk = &db.snapshot(now()).unwrap().vdisks[0];
    assert_eq!(
        (vdisk.pool.as_str(), vdisk.allocated),
        ("legacy-2", Size::from_sectors(163840))
    );
    // 80 MiB held (32 + 16 + 32): 16 MiB more is one 32 MiB extent of
    // legacy-2 (not 96 MiB / 32 MiB - 3 extents held = none).
    db.grow_vdisk("vd-1", Size::from_sectors(196608), now())
        .unwrap();
    assert_eq!(db.verify(now()).unwrap(), Vec::<String>::new());
    let vdisk = &db.snapshot(now()).unwrap().vdisks[0];
    assert_eq!(vdisk.allocated, Size::from_sectors(229376));
    assert_eq!(vdisk.extents.last().unwrap().sectors, 65536);
}

#[test]
fn deleting_a_vdisk_over_two_extent_sizes_frees_each_extent_into_its_own_pool() {
    let mut db = mixed();
    assert_eq!(db.delete_vdisk("vd-1", now()).unwrap(), 3);
    let state = db.snapshot(now()).unwrap();
    let free: Vec<(&str, u64, u64)> = state
        .pools
        .iter()
        .map(|p| (p.name.as_str(), p.devices[0].free, p.devices[0].dirty))
        .collect();
    assert_eq!(free, [("legacy", 4, 4), ("legacy-2", 3, 3)]);
    assert_eq!(db.verify(now()).unwrap(), Vec::<String>::new());
}
