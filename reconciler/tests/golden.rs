//! Golden tests: every folder under `tests/golden/` is one case.
//!
//! A case holds `cmd` (the arguments to `xendisk`, one line, shell quoting),
//! its input files, and the expected `stdout`, `stderr` and `exit-code`. The
//! command runs with the case folder as working directory and no colour.
//! A mismatch prints a unified diff; `XENDISK_BLESS=1 cargo test --test golden`
//! rewrites the expected files after a deliberate change.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use similar::TextDiff;

const BLESS_VARIABLE: &str = "XENDISK_BLESS";

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden")
}

struct Outcome {
    stdout: String,
    stderr: String,
    exit_code: String,
}

fn run_case(dir: &Path) -> Outcome {
    let cmd = fs::read_to_string(dir.join("cmd")).expect("every case has a cmd file");
    let args = shell_words::split(cmd.trim()).expect("cmd is shell-quoted");
    let output = Command::new(env!("CARGO_BIN_EXE_xendisk"))
        .args(&args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .env("TZ", "UTC")
        .output()
        .expect("xendisk runs");
    Outcome {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        exit_code: match output.status.code() {
            Some(code) => format!("{code}\n"),
            None => "killed by a signal\n".to_owned(),
        },
    }
}

/// Compares one expected file, or rewrites it when blessing. Returns a
/// readable report of the difference, if any.
fn check(dir: &Path, file: &str, actual: &str, bless: bool) -> Option<String> {
    let path = dir.join(file);
    if bless {
        fs::write(&path, actual).expect("expected file is writable");
        return None;
    }
    let expected = fs::read_to_string(&path).unwrap_or_default();
    if expected == actual {
        return None;
    }
    let diff = TextDiff::from_lines(&expected, actual)
        .unified_diff()
        .header(&format!("{file} (expected)"), &format!("{file} (actual)"))
        .to_string();
    Some(diff)
}

#[test]
fn golden_cases() {
    let bless = std::env::var_os(BLESS_VARIABLE).is_some();
    let mut cases: Vec<PathBuf> = fs::read_dir(golden_root())
        .expect("tests/golden exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.join("cmd").is_file())
        .collect();
    cases.sort();
    assert!(
        !cases.is_empty(),
        "no golden cases found under {}",
        golden_root().display()
    );

    let mut failures = Vec::new();
    for dir in &cases {
        let outcome = run_case(dir);
        let diffs: Vec<String> = [
            ("stdout", &outcome.stdout),
            ("stderr", &outcome.stderr),
            ("exit-code", &outcome.exit_code),
        ]
        .into_iter()
        .filter_map(|(file, actual)| check(dir, file, actual, bless))
        .collect();
        if !diffs.is_empty() {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            failures.push(format!("--- case {name}\n{}", diffs.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases differ (re-bless with {BLESS_VARIABLE}=1 after a deliberate change):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
