//! Golden tests: every folder under `tests/golden/` is one case.
//!
//! A case holds `cmd` (the arguments to `xendisk`, shell quoting, one command
//! a line), its input files, and the expected `stdout`, `stderr` and
//! `exit-code`. The commands run in order, in a scratch copy of the case
//! folder (so a state DB they write never lands in the tree), with no colour
//! and the clock at `GOLDEN_NOW`. `$REPO` in `cmd` stands for the repository
//! root, and the root is written back as `$REPO` in the outputs. A case with
//! a `xenstore.dump` (either `xenstore-ls` form; it may be a link to one of
//! `examples/hosts/`) gets a simulated xenstored seeded from it, reached
//! through `XENSTORED_PATH`; without one, `XENSTORED_PATH` names a socket
//! that does not exist. A case with a `state.ops` starts from a state DB
//! built by replaying those operations through the library (one a line:
//! `add-pool-device POOL EXTENT PATH MAJOR:MINOR SECTORS [DISK START]`
//! (with its place on its whole disk `DISK`, as MAJOR:MINOR, when given),
//! `create-vdisk NAME POOL SIZE EXPIRY [TIME]`, `delete-vdisk NAME [TIME]`);
//! every command gets it as `XENDISK_STATE`. That state DB is made as `xendisk init`
//! makes it, for the host whose tree the commands name with `--host-root`
//! (`tests/golden/hosts/plan-host` when none): it records the machine id
//! in that tree's `etc/machine-id` (plan-host's when the tree has none,
//! as a snapshot's captured tree), or the one a `state.host` file gives
//! (a DB of another host). Commands that name a `--state` of their own get
//! none (a missing DB is theirs to test). With several commands, each one's output is
//! headed by `$ xendisk ARGS` and `exit-code` has a line per command.
//! A mismatch prints a unified diff; `XENDISK_BLESS=1 cargo test --test golden`
//! rewrites the expected files after a deliberate change.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use similar::TextDiff;

const BLESS_VARIABLE: &str = "XENDISK_BLESS";
const GOLDEN_NOW: &str = "2026-06-01T00:00:00Z";

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
    let commands: Vec<&str> = cmd.lines().filter(|l| !l.trim().is_empty()).collect();
    run_commands(dir, &commands)
}

/// Runs commands in a scratch copy of a case, with its simulated xenstored
/// and state DB.
fn run_commands(dir: &Path, commands: &[&str]) -> Outcome {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    copy_dir(dir, scratch.path());
    let socket = scratch.path().join("xenstored.socket");
    let state = scratch.path().join("state.sqlite");
    let repo = fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).unwrap();
    let repo = repo.to_string_lossy();
    let words: Vec<Vec<String>> = commands
        .iter()
        .map(|line| shell_words::split(&line.replace("$REPO", &repo)).expect("cmd is shell-quoted"))
        .collect();
    if !words.iter().flatten().any(|word| word == "--state") {
        let host_root = words
            .iter()
            .flat_map(|args| args.windows(2))
            .find(|pair| pair[0] == "--host-root")
            .map(|pair| scratch.path().join(&pair[1]))
            .unwrap_or_else(|| golden_root().join("hosts/plan-host"));
        let host = match fs::read_to_string(dir.join("state.host")) {
            Ok(text) => xendisk::state::HostId {
                machine_id: text.trim().to_owned(),
                source: "/etc/machine-id".to_owned(),
            },
            Err(_) => xendisk::state::HostId::read(&host_root)
                .or_else(|_| xendisk::state::HostId::read(&golden_root().join("hosts/plan-host")))
                .expect("plan-host has a machine id"),
        };
        let ops = fs::read_to_string(dir.join("state.ops")).unwrap_or_default();
        build_state(&state, &host, &ops);
    }
    let _simulator = fs::read_to_string(dir.join("xenstore.dump"))
        .ok()
        .map(|dump| {
            let store = xendisk::sim::dump::parse(&dump).expect("xenstore.dump is a valid dump");
            xendisk::sim::Simulator::start(&socket, store, Default::default(), Default::default())
                .expect("the simulator starts")
        });
    let mut outcome = Outcome {
        stdout: String::new(),
        stderr: String::new(),
        exit_code: String::new(),
    };
    for (line, args) in commands.iter().zip(&words) {
        let output = Command::new(env!("CARGO_BIN_EXE_xendisk"))
            .args(args)
            .current_dir(scratch.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .env("TZ", "UTC")
            .env("XENDISK_NOW", GOLDEN_NOW)
            .env("XENSTORED_PATH", &socket)
            // A simulated xenstored: no blkback takes a backend up.
            .env("XENDISK_NO_HOTPLUG", "1")
            .env("XENDISK_STATE", &state)
            .output()
            .expect("xendisk runs");
        if commands.len() > 1 {
            outcome.stdout.push_str(&format!("$ xendisk {line}\n"));
            outcome.stderr.push_str(&format!("$ xendisk {line}\n"));
        }
        let scratch_path = scratch.path().to_string_lossy();
        let clean = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(bytes)
                .replace(&*repo, "$REPO")
                .replace(&*scratch_path, "$CASE");
            mask_seconds(&text)
        };
        outcome.stdout.push_str(&clean(&output.stdout));
        outcome.stderr.push_str(&clean(&output.stderr));
        outcome.exit_code.push_str(&match output.status.code() {
            Some(code) => format!("{code}\n"),
            None => "killed by a signal\n".to_owned(),
        });
    }
    outcome
}

/// Durations (`0.03s`) vary from run to run: written as `N.NNs`.
fn mask_seconds(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        let fraction = bytes.get(i + digits) == Some(&b'.')
            && bytes.get(i + digits + 1).is_some_and(u8::is_ascii_digit)
            && bytes.get(i + digits + 2).is_some_and(u8::is_ascii_digit)
            && bytes.get(i + digits + 3) == Some(&b's');
        let starts_word = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if digits > 0 && fraction && starts_word {
            out.push_str("N.NNs");
            i += digits + 4;
        } else {
            let c = text[i..].chars().next().expect("inside the text");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Replays `state.ops` into a new state DB at `path` belonging to `host`.
fn build_state(path: &Path, host: &xendisk::state::HostId, ops: &str) {
    use xendisk::desired::{Expiry, Size};
    use xendisk::state::{DeviceGeometry, DiskPlace, StateDb};
    let time = |text: Option<&&str>| {
        text.unwrap_or(&"2026-01-01T00:00:00Z")
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    let mut db = StateDb::create(path, host, time(None)).expect("a scratch state DB");
    for line in ops
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        let size = |w: &str| w.parse::<Size>().unwrap();
        let result = match words.as_slice() {
            [
                "add-pool-device",
                pool,
                extent,
                device_path,
                number,
                sectors,
                place @ ..,
            ] => db
                .add_pool_device(
                    pool,
                    size(extent),
                    &DeviceGeometry {
                        path: (*device_path).to_owned(),
                        device: number.parse().unwrap(),
                        sectors: sectors.parse().unwrap(),
                        on_disk: match place {
                            [] => None,
                            [disk, start] => Some(DiskPlace {
                                disk: disk.parse().unwrap(),
                                start: start.parse().unwrap(),
                            }),
                            _ => panic!("state.ops: `{line}`: a place is DISK_MAJOR:MINOR START"),
                        },
                    },
                    time(None),
                )
                .map(|_| ()),
            ["create-vdisk", name, pool, vdisk_size, expiry, rest @ ..] => db.create_vdisk(
                name,
                pool,
                size(vdisk_size),
                &expiry.parse::<Expiry>().unwrap(),
                time(rest.first()),
            ),
            ["delete-vdisk", name, rest @ ..] => {
                db.delete_vdisk(name, time(rest.first())).map(|_| ())
            }
            _ => panic!("state.ops: cannot read `{line}`"),
        };
        result.unwrap_or_else(|e| panic!("state.ops: `{line}`: {e}"));
    }
}

/// The case's inputs, without the expected outputs. Symbolic links are
/// copied as links (a captured sysfs is made of them).
fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).expect("case folder is readable") {
        let path = entry.expect("readable entry").path();
        let target = to.join(path.file_name().unwrap());
        let metadata = fs::symlink_metadata(&path).expect("readable entry");
        if metadata.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&path).unwrap(), &target)
                .expect("link is copyable");
        } else if metadata.is_dir() {
            fs::create_dir_all(&target).unwrap();
            copy_dir(&path, &target);
        } else if !["stdout", "stderr", "exit-code"]
            .iter()
            .any(|f| path.ends_with(f))
        {
            fs::copy(&path, &target).expect("input is copyable");
        }
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

/// Every host a case sets up (its xenstore and state DB, and the host root
/// its command names) can be adopted: `generate` writes a file that plans
/// to no changes against that same host.
#[test]
fn every_host_fixture_is_adopted_without_changes() {
    // Hosts that cannot be described as they stand, and why.
    let unadoptable = [
        (
            "plan-expired-vdisk-still-attached",
            "an attached vdisk has expired: no file can declare it as it is",
        ),
        (
            "plan-two-backends-at-one-device-id",
            "two backends at one device id: a file declares one disk per vdev",
        ),
        (
            "plan-state-db-missing-on-a-host-with-traces",
            "xendisk's traces and a state DB that records no vdisk: refused until the DB is restored",
        ),
        (
            "plan-state-db-empty-on-a-host-with-traces",
            "xendisk's traces and a state DB that records no vdisk: refused until the DB is restored",
        ),
        (
            "plan-state-db-of-another-host",
            "its state DB belongs to another host: refused",
        ),
        (
            "plan-backend-being-detached",
            "a backend half torn down is not attached: declared, it is attached again; left out, its detach is finished",
        ),
    ];
    let mut adopted = 0;
    for entry in fs::read_dir(golden_root()).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !dir.join("xenstore.dump").exists() || unadoptable.iter().any(|(case, _)| *case == name)
        {
            continue;
        }
        let cmd = fs::read_to_string(dir.join("cmd")).unwrap();
        let words = shell_words::split(cmd.lines().next().unwrap()).unwrap();
        let host_root = words
            .windows(2)
            .find(|w| w[0] == "--host-root")
            .map(|w| format!(" --host-root {}", w[1]))
            .unwrap_or_default();
        let generate = format!("generate -o generated.toml{host_root}");
        let plan = format!("plan generated.toml{host_root}");
        let outcome = run_commands(&dir, &[&generate, &plan]);
        assert_eq!(
            outcome.exit_code, "0\n0\n",
            "{name}:\n{}{}",
            outcome.stdout, outcome.stderr
        );
        assert!(
            outcome.stdout.contains("No changes"),
            "{name}:\n{}",
            outcome.stdout
        );
        adopted += 1;
    }
    assert!(adopted >= 20, "only {adopted} host fixtures were adopted");
}

/// Every plan case whose plan is clean (exit 2: changes, nothing refused)
/// applies on its simulated host, after which a fresh plan is empty.
#[test]
fn every_clean_plan_case_applies_and_converges() {
    // Cases the simulated host's toolstack (xenstore) cannot apply, and why.
    let beyond_the_xenstore_toolstack = [(
        "plan-format-change-is-detach-then-attach",
        "it attaches a qcow2 image: the xenstore toolstack makes blkback backends, which read \
         files raw, and apply refuses it (exit 3)",
    )];
    let mut applied = 0;
    for entry in fs::read_dir(golden_root()).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if beyond_the_xenstore_toolstack
            .iter()
            .any(|(case, _)| *case == name)
        {
            continue;
        }
        let cmd = fs::read_to_string(dir.join("cmd")).unwrap_or_default();
        let Some(first) = cmd.lines().next() else {
            continue;
        };
        let exit = fs::read_to_string(dir.join("exit-code")).unwrap_or_default();
        if !first.starts_with("plan desired.toml")
            || first.contains("--snapshot")
            || first.contains(" -o ")
            || exit.lines().next() != Some("2")
        {
            continue;
        }
        let rest = first.trim_start_matches("plan desired.toml");
        let apply = format!(
            "apply desired.toml --yes --no-devices --toolstack xenstore --release-timeout 5{rest}"
        );
        let plan = format!("plan desired.toml{rest}");
        let outcome = run_commands(&dir, &[&apply, &plan]);
        assert_eq!(
            outcome.exit_code, "0\n0\n",
            "{name}:\n{}{}",
            outcome.stdout, outcome.stderr
        );
        assert!(
            outcome.stdout.contains("A fresh plan finds no changes."),
            "{name}:\n{}",
            outcome.stdout
        );
        applied += 1;
    }
    assert!(applied >= 8, "only {applied} plan cases were applied");
}
