//! `import --legacy` of `.sql` text, attacked: the dump is data, never code.
//!
//! Each dump here is the ancestor's own (its three tables, the `sqlite
//! .dump` form) with one hostile statement slipped in. Each must be refused
//! with the statement and its line named, no file created anywhere, and the
//! state DB left byte for byte as it was: whether it already held an import,
//! or did not exist (then it must still not exist).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The lines before the hostile one: the attack always sits on line 5.
const SCHEMA: &str = "BEGIN TRANSACTION;
CREATE TABLE vdisk_extents ( vdisk_extent_no INT, vdisk_id INT, part_id INT, part_extent_no INT );
CREATE TABLE vdisk_part ( part_id INT, partition VARCHAR, extent_size INT );
CREATE TABLE vdisks ( vdisk_id INT, size INT, expires BOOLEAN, expiry_time TIMESTAMP );
";
const ATTACK_LINE: usize = 5;

const DATA: &str = "INSERT INTO vdisk_part VALUES('2051','/dev/sda3','32768');
INSERT INTO vdisks VALUES('0','0','1','2004-03-01 10:00:00');
INSERT INTO vdisks VALUES('1','65536','0',NULL);
INSERT INTO vdisk_extents VALUES('0','1','2051','0');
INSERT INTO vdisk_extents VALUES('1','1','2051','1');
INSERT INTO vdisk_extents VALUES('0','0','2051','2');
INSERT INTO vdisk_extents VALUES('1','0','2051','3');
COMMIT;
";

/// The ancestor's database with a free, dirty extent: what an attacker
/// would mark clean. It goes into the state DB the attacks aim at.
const LEGITIMATE: &str = "BEGIN TRANSACTION;
CREATE TABLE vdisk_extents ( vdisk_extent_no INT, vdisk_id INT, part_id INT, part_extent_no INT );
CREATE TABLE vdisk_part ( part_id INT, partition VARCHAR, extent_size INT );
CREATE TABLE vdisks ( vdisk_id INT, size INT, expires BOOLEAN, expiry_time TIMESTAMP );
INSERT INTO vdisk_part VALUES('2065','/dev/sdb1','32768');
INSERT INTO vdisks VALUES('0','0','1','2004-03-01 10:00:00');
INSERT INTO vdisks VALUES('1','32768','0',NULL);
INSERT INTO vdisk_extents VALUES('0','1','2065','0');
INSERT INTO vdisk_extents VALUES('0','0','2065','1');
COMMIT;
";

struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        Scene {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn import(&self, dump: &str, state: &Path) -> Output {
        let legacy = self.path("xen_vdisks.sql");
        std::fs::write(&legacy, dump).unwrap();
        Command::new(env!("CARGO_BIN_EXE_xendisk"))
            .args(["import", "--legacy"])
            .arg(&legacy)
            .arg("--state")
            .arg(state)
            .current_dir(self.dir.path())
            .env("XENDISK_NOW", "2026-06-01T00:00:00Z")
            .output()
            .unwrap()
    }

    /// A state DB holding an import, closed (so all of it is in the file).
    fn populated_state(&self) -> (PathBuf, Vec<u8>) {
        let state = self.path("state.sqlite");
        let output = self.import(LEGITIMATE, &state);
        assert!(output.status.success(), "{}", text(&output));
        let bytes = std::fs::read(&state).unwrap();
        (state, bytes)
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The files in the scene's folder besides the dump and the state DB.
fn strays(scene: &Scene) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(scene.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "xen_vdisks.sql" && !n.starts_with("state.sqlite"))
        .collect();
    names.sort();
    names
}

/// Runs `attack` (a line that may name `$DIR` and `$STATE`) at line 5 of an
/// otherwise legitimate dump, against a populated state DB and a missing
/// one. Each run must exit 1 naming `xen_vdisks.sql:5` and `expected`, and
/// change nothing.
fn refused(attack: &str, expected: &str) {
    for populated in [true, false] {
        let scene = Scene::new();
        let (state, before) = if populated {
            scene.populated_state()
        } else {
            (scene.path("state.sqlite"), Vec::new())
        };
        let attack = attack
            .replace("$DIR", &scene.dir.path().to_string_lossy())
            .replace("$STATE", &state.to_string_lossy());
        let dump = format!("{SCHEMA}{attack}\n{DATA}");
        let output = scene.import(&dump, &state);
        let report = text(&output);
        // The harm first: what the attack did, whatever it said.
        if populated {
            assert!(
                std::fs::read(&state).unwrap() == before,
                "{attack}: the state DB changed\n{report}"
            );
        } else {
            assert!(!state.exists(), "{attack}: the state DB was created");
        }
        assert_eq!(strays(&scene), Vec::<String>::new(), "{attack}: files made");
        assert_eq!(output.status.code(), Some(1), "{attack}\n{report}");
        let place = format!("xen_vdisks.sql:{ATTACK_LINE}:");
        assert!(
            report.contains(&place) && report.contains(expected),
            "{attack}: the error must name {place} and `{expected}`:\n{report}"
        );
        assert!(
            report.contains("nothing was imported"),
            "{attack}:\n{report}"
        );
    }
}

#[test]
fn attach_to_a_new_path_is_refused_and_creates_no_file() {
    refused(
        "ATTACH DATABASE '$DIR/planted.db' AS planted; CREATE TABLE planted.t (a);",
        "ATTACH DATABASE",
    );
}

#[test]
fn attach_of_the_state_db_to_mark_extents_clean_is_refused() {
    refused(
        "ATTACH '$STATE' AS live; UPDATE live.extents SET dirty = 0;",
        "ATTACH '",
    );
}

#[test]
fn an_update_of_another_table_is_refused() {
    refused(
        "UPDATE sqlite_master SET sql = NULL WHERE name = 'vdisks';",
        "UPDATE sqlite_master",
    );
}

#[test]
fn an_update_of_the_ancestors_own_tables_is_refused() {
    // Data is inserted, never rewritten: a dump that moves the free pool
    // into a live vdisk is not what the ancestor's database held.
    refused(
        "UPDATE vdisk_extents SET vdisk_id = 1 WHERE vdisk_id = 0;",
        "UPDATE vdisk_extents",
    );
}

#[test]
fn a_trigger_is_refused() {
    refused(
        "CREATE TRIGGER grab AFTER INSERT ON vdisk_extents BEGIN UPDATE vdisk_extents SET vdisk_id = 1; END;",
        "CREATE TRIGGER grab",
    );
}

#[test]
fn a_temporary_trigger_is_refused() {
    refused(
        "CREATE TEMP TRIGGER grab AFTER INSERT ON vdisks BEGIN DELETE FROM vdisk_part; END;",
        "CREATE TEMP TRIGGER",
    );
}

#[test]
fn a_pragma_is_refused() {
    refused("PRAGMA writable_schema = 1;", "PRAGMA writable_schema");
}

#[test]
fn a_statement_hidden_after_a_legitimate_one_on_the_same_line_is_refused() {
    refused(
        "INSERT INTO vdisk_part VALUES('2065','/dev/sdb1','32768'); ATTACH '$DIR/hidden.db' AS h; CREATE TABLE h.t (a);",
        "ATTACH '",
    );
}

#[test]
fn a_statement_hidden_behind_a_quoted_semicolon_is_refused() {
    refused(
        "INSERT INTO vdisk_part VALUES('2065','/dev/sdb1;x','32768');DELETE FROM vdisk_extents;",
        "DELETE FROM vdisk_extents",
    );
}

#[test]
fn a_statement_hidden_behind_a_comment_is_refused() {
    refused(
        "INSERT INTO vdisk_part VALUES('2065','/dev/sdb1','32768') /* ; */ ; DROP TABLE vdisks; -- ;",
        "DROP TABLE vdisks",
    );
}

#[test]
fn a_create_table_of_a_different_table_is_refused() {
    refused("CREATE TABLE extents (a INT);", "CREATE TABLE extents");
}

#[test]
fn a_temporary_table_in_place_of_an_ancestor_table_is_refused() {
    refused("CREATE TEMP TABLE vdisk_part (a);", "CREATE TEMP TABLE");
}

#[test]
fn a_view_is_refused() {
    refused(
        "CREATE VIEW vdisk_view AS SELECT * FROM vdisks;",
        "CREATE VIEW",
    );
}

#[test]
fn vacuum_into_a_file_is_refused_and_creates_nothing() {
    refused("VACUUM INTO '$DIR/copy.db';", "VACUUM INTO");
}

#[test]
fn an_insert_into_another_table_is_refused() {
    refused(
        "INSERT INTO sqlite_master VALUES('table','x','x',0,'CREATE TABLE x(a)');",
        "INSERT INTO sqlite_master",
    );
}

#[test]
fn an_insert_that_calls_a_function_is_refused() {
    refused(
        "INSERT INTO vdisk_part VALUES(2065, load_extension('$DIR/evil.so'), 32768);",
        "load_extension",
    );
}

#[test]
fn an_insert_that_reads_with_a_select_is_refused() {
    refused(
        "INSERT INTO vdisk_part SELECT 2065, name, 32768 FROM sqlite_master;",
        "INSERT INTO vdisk_part SELECT",
    );
}

#[test]
fn a_create_table_as_select_is_refused() {
    refused(
        "CREATE TABLE vdisk_copy AS SELECT * FROM vdisks;",
        "CREATE TABLE vdisk_copy",
    );
}

#[test]
fn the_ancestors_dump_still_imports() {
    // The attacks' surroundings are a real dump: without the attack it
    // imports, so each refusal above is the attack's.
    let scene = Scene::new();
    let state = scene.path("state.sqlite");
    let output = scene.import(&format!("{SCHEMA}{DATA}"), &state);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("+ vdisk vd-1"), "{}", text(&output));
}
