//! Attaches and detaches at `--parallelism` 1 and 10 on a simulated host
//! whose every operation takes a guest's or a script's time: 100 read-only
//! image files attached to ten guests (ten each), then detached, with the
//! simulated hotplug script taking LATENCY ms to bring each disk up and
//! each guest LATENCY ms to close a disk, and xenstored answering every
//! request after 0, 1 or 5 ms. The apply runs in this process (the same
//! `ops::apply` as `xendisk apply`, told that the simulator plays the
//! hotplug step, as on a `--sim` host), against a simulator of its own.
//!
//! cargo bench --bench parallel_apply [-- LATENCY DELAY...]
//!   (default: 100 0 1 5)
//!
//! Prints a table for BENCHMARKS.md; a run that fails says so in its cell.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use xendisk::apply::toolstack::BackendHost;
use xendisk::desired::Toolstack;
use xendisk::ops::{self, ActualSource, ApplyOptions, Console, Exit, InitOptions};
use xendisk::sim::{Drivers, Faults, GuestPolicy, Simulator, dump};

const GUESTS: u32 = 10;
const DISKS: u32 = 10;
const PARALLELISM: [usize; 2] = [1, 10];

fn vdev(disk: u32) -> String {
    format!("xvd{}", char::from(b'b' + disk as u8))
}

fn image(guest: u32, disk: u32) -> String {
    format!("/srv/images/g{guest}-{}.img", vdev(disk))
}

/// The ten guests, running, with nothing attached.
fn domains() -> String {
    let mut dump = String::from("/local/domain/0/name = \"Domain-0\"\n");
    for g in 1..=GUESTS {
        let _ = writeln!(dump, "/local/domain/{g}/name = \"g{g}\"");
    }
    dump
}

/// Every guest with its ten disks, or (`attached` false) with none.
fn desired(attached: bool) -> String {
    let mut text = String::from("[settings]\ntoolstack = \"xenstore\"\n\n");
    for g in 1..=GUESTS {
        let _ = writeln!(text, "[domains.g{g}.disks]");
        for d in 0..DISKS * u32::from(attached) {
            let _ = writeln!(
                text,
                "{} = {{ source = \"file:{}\", mode = \"r\" }}",
                vdev(d),
                image(g, d)
            );
        }
        text.push('\n');
    }
    text
}

/// A dom0 to observe (a copy of the demo host's /proc, /sys and
/// machine id) with the guests' image files under it.
fn host_root(at: &Path) -> PathBuf {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hosts/demo");
    let root = at.join("host");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&demo)
        .arg(&root)
        .status()
        .expect("cp runs");
    assert!(status.success(), "cp -a {}", demo.display());
    let _ = std::fs::remove_dir_all(root.join(".sim"));
    for g in 1..=GUESTS {
        for d in 0..DISKS {
            let file = root.join(image(g, d).trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().expect("a directory")).expect("mkdir");
            let f = std::fs::File::create(&file).expect("an image file");
            f.set_len(1 << 20).expect("1 MiB");
        }
    }
    root
}

/// Seconds one apply took: the whole command (observing the host before
/// and after, planning), and the steps alone (as it reports them).
#[derive(Debug, Clone, Copy)]
struct Seconds {
    apply: f64,
    steps: f64,
}

/// The seconds of the last "Applied N operations in S s." in `text`.
fn steps_seconds(text: &str) -> Option<f64> {
    let line = text.lines().rev().find(|l| l.starts_with("Applied "))?;
    let (_, seconds) = line.rsplit_once(" in ")?;
    seconds.trim_end_matches("s.").parse().ok()
}

/// One cell's two applies on a fresh host: attach, then detach.
fn run(
    work: &Path,
    root: &Path,
    latency: Duration,
    delay: Duration,
    parallelism: usize,
) -> Result<[Seconds; 2], String> {
    let socket = work.join("xenstored.socket");
    let store = dump::parse(&domains()).map_err(|e| e.to_string())?;
    let drivers = Drivers {
        host: ops::host_view(root),
        hotplug_delay: latency,
        ..Drivers::default()
    };
    let guests = GuestPolicy {
        close_delay: latency,
        ..GuestPolicy::default()
    };
    let faults = Faults {
        reply_delay: delay,
        ..Faults::default()
    };
    let _simulator = Simulator::start_with_drivers(&socket, store, guests, faults, Some(drivers))
        .map_err(|e| e.to_string())?;
    let state = work.join(format!("state-{}-{parallelism}.sqlite", delay.as_millis()));
    let _ = std::fs::remove_file(&state);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let now = jiff::Timestamp::now();
    let init = InitOptions {
        state: state.clone(),
        host_root: root.to_owned(),
        replace_host: false,
        now,
    };
    let mut console = Console {
        out: &mut out,
        err: &mut err,
        colour: false,
    };
    ops::init(&init, &mut console).map_err(|e| e.to_string())?;
    let mut seconds = Vec::new();
    for (name, attached) in [("attach", true), ("detach", false)] {
        let file = work.join(format!("{name}.toml"));
        std::fs::write(&file, desired(attached)).map_err(|e| e.to_string())?;
        let options = ApplyOptions {
            file,
            actual: ActualSource {
                state: state.clone(),
                snapshot: None,
                host_root: root.to_owned(),
                new_host: false,
                now,
            },
            yes: true,
            allow_destroy: false,
            lock_timeout: Duration::from_secs(10),
            release_timeout: Duration::from_secs(30),
            force_detach: false,
            no_devices: true,
            pinned_time: None,
            parallelism,
            toolstack: Some(Toolstack::Xenstore),
            simulated: true,
            hotplug: BackendHost::SimulatedHotplug,
            colour: false,
        };
        let mut console = Console {
            out: &mut out,
            err: &mut err,
            colour: false,
        };
        let started = Instant::now();
        let exit = ops::apply(&options, &mut console).map_err(|e| e.to_string())?;
        let apply = started.elapsed().as_secs_f64();
        if !matches!(exit, Exit::Success) {
            let said = String::from_utf8_lossy(&err);
            let last = said.lines().rev().find(|l| !l.trim().is_empty());
            return Err(format!("{name}: {}", last.unwrap_or("failed")));
        }
        let steps = steps_seconds(&String::from_utf8_lossy(&out))
            .ok_or_else(|| format!("{name}: no step time reported"))?;
        seconds.push(Seconds { apply, steps });
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    let expected = (GUESTS * DISKS) as usize;
    let done = text.matches("... done").count();
    if done != 2 * expected {
        return Err(format!("{done} steps done, not {}", 2 * expected));
    }
    Ok([seconds[0], seconds[1]])
}

fn main() {
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let latency = Duration::from_millis(numbers.first().copied().unwrap_or(100));
    let delays: Vec<u64> = match numbers.get(1..) {
        Some(rest) if !rest.is_empty() => rest.to_vec(),
        _ => vec![0, 1, 5],
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    // Before any thread starts: every xenstore client of the apply reads it.
    // SAFETY: no other thread runs yet.
    unsafe { std::env::set_var("XENSTORED_PATH", work.path().join("xenstored.socket")) };
    let root = host_root(work.path());

    println!(
        "{} attaches, then {} detaches; {} ms per operation (hotplug step, guest close)\n",
        GUESTS * DISKS,
        GUESTS * DISKS,
        latency.as_millis()
    );
    println!(
        "| reply delay (ms) | operation | apply P1 (s) | apply P10 (s) | P1 / P10 | steps P1 (s) | steps P10 (s) | P1 / P10 |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for delay in delays {
        let delay = Duration::from_millis(delay);
        let cells: Vec<Result<[Seconds; 2], String>> = PARALLELISM
            .iter()
            .map(|&p| run(work.path(), &root, latency, delay, p))
            .collect();
        for (i, operation) in ["attach", "detach"].into_iter().enumerate() {
            let mut row = format!("| {} | {operation} |", delay.as_millis());
            let parts: [fn(&Seconds) -> f64; 2] = [|s| s.apply, |s| s.steps];
            for part in parts {
                let seconds: Vec<Result<f64, &str>> = cells
                    .iter()
                    .map(|c| c.as_ref().map(|s| part(&s[i])).map_err(String::as_str))
                    .collect();
                for s in &seconds {
                    match s {
                        Ok(s) => write!(row, " {s:.2} |"),
                        Err(e) => write!(row, " FAILED ({e}) |"),
                    }
                    .expect("a String takes any text");
                }
                match (&seconds[0], &seconds[1]) {
                    (Ok(one), Ok(ten)) => write!(row, " {:.1}x |", one / ten),
                    _ => write!(row, " - |"),
                }
                .expect("a String takes any text");
            }
            println!("{row}");
        }
    }
}
