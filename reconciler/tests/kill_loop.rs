//! `xendisk apply` killed from outside (SIGKILL, at random times) against
//! the simulated xenstored with slow replies and slow guests, over and
//! over; after each kill an apply must converge: exit 0, a fresh plan with
//! nothing to do, a clean `state --check`, no sector in two vdisks, and
//! xenstore with one backend per (domid, devid), each with its frontend.
//!
//! The desired states alternate between populating four guests, moving
//! their vdisks between them, replacing half of the vdisks, and emptying
//! the host (with a pool device removed), at `--parallelism` 1 and 4, so
//! that kills land in every kind of step. The choices come from a seeded
//! generator: the seed is printed with any failure, and
//! `XENDISK_KILL_SEED=<seed>` runs the same choices again (where the kills
//! land still depends on timing). `XENDISK_KILL_COUNT` asks for more kills.

mod host;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use host::{Host, text};
use serde_json::Value;
use xendisk::sim::{Faults, GuestPolicy};

const DEFAULT_SEED: u64 = 0x5EED_D15C;
const DEFAULT_KILLS: usize = 24;

/// xorshift64*: small, seeded, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

const GUESTS: [&str; 4] = ["guest1", "guest2", "guest3", "guest4"];
const FIRST_DOMID: u32 = 4;

/// A disk of a guest in a desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Disk {
    Vdisk(String, &'static str),
    Iso,
}

/// A desired state: its vdisks (name, pool, MiB), its pools, and each
/// guest's disks by vdev.
struct Desired {
    name: &'static str,
    big_pool: bool,
    vdisks: Vec<(String, &'static str, u64)>,
    disks: [Vec<(&'static str, Disk)>; 4],
}

impl Desired {
    fn toml(&self) -> String {
        let mut text = String::from(
            "[settings]\ntoolstack = \"xenstore\"\n\n\
             [pools.fast]\nextent_size = \"64MiB\"\ndevices = [\"/dev/sdb1\"]\n\n",
        );
        if self.big_pool {
            text.push_str("[pools.big]\nextent_size = \"64MiB\"\ndevices = [\"/dev/sdc\"]\n\n");
        }
        for (name, pool, mib) in &self.vdisks {
            writeln!(
                text,
                "[vdisks.{name}]\npool = \"{pool}\"\nsize = \"{mib}MiB\"\n"
            )
            .unwrap();
        }
        for (guest, disks) in GUESTS.iter().zip(&self.disks) {
            writeln!(text, "[domains.{guest}.disks]").unwrap();
            for (vdev, disk) in disks {
                let (source, mode) = match disk {
                    Disk::Vdisk(name, mode) => (format!("vdisk:{name}"), *mode),
                    Disk::Iso => ("file:/srv/iso/tools.iso".to_owned(), "r"),
                };
                writeln!(
                    text,
                    "{vdev} = {{ source = \"{source}\", mode = \"{mode}\" }}"
                )
                .unwrap();
            }
            text.push('\n');
        }
        text
    }
}

fn pool_of(v: usize) -> &'static str {
    if v.is_multiple_of(2) { "fast" } else { "big" }
}

/// Eight vdisks, two read-write on each guest, and an ISO each.
fn spread() -> Desired {
    Desired {
        name: "spread",
        big_pool: true,
        vdisks: (0..8)
            .map(|v| (format!("v{v}"), pool_of(v), 64 * (v as u64 + 1)))
            .collect(),
        disks: std::array::from_fn(|g| {
            vec![
                ("xvda", Disk::Vdisk(format!("v{}", 2 * g), "w")),
                ("xvdb", Disk::Vdisk(format!("v{}", 2 * g + 1), "w")),
                ("xvdd", Disk::Iso),
            ]
        }),
    }
}

/// The same vdisks, each moved to the next guest and the vdevs swapped.
fn rotated() -> Desired {
    Desired {
        name: "rotated",
        disks: std::array::from_fn(|g| {
            vec![
                ("xvda", Disk::Vdisk(format!("v{}", (2 * g + 3) % 8), "w")),
                ("xvdb", Disk::Vdisk(format!("v{}", (2 * g + 2) % 8), "w")),
                ("xvdd", Disk::Iso),
            ]
        }),
        ..spread()
    }
}

/// Half of the vdisks replaced by new ones of other sizes (on the extents
/// the deleted ones release), one kept vdisk shared read-only by two guests.
fn replaced() -> Desired {
    let mut vdisks: Vec<_> = (0..4)
        .map(|v| (format!("v{v}"), pool_of(v), 64 * (v as u64 + 1)))
        .collect();
    vdisks.extend((0..4).map(|n| (format!("n{n}"), pool_of(n + 1), 128 + 64 * n as u64)));
    Desired {
        name: "replaced",
        big_pool: true,
        vdisks,
        disks: [
            vec![
                ("xvda", Disk::Vdisk("n0".into(), "w")),
                ("xvdb", Disk::Vdisk("v0".into(), "w")),
            ],
            vec![
                ("xvda", Disk::Vdisk("v1".into(), "w")),
                ("xvdb", Disk::Vdisk("n1".into(), "w")),
                ("xvdd", Disk::Iso),
            ],
            vec![
                ("xvda", Disk::Vdisk("n2".into(), "w")),
                ("xvdc", Disk::Vdisk("v3".into(), "r")),
            ],
            vec![
                ("xvda", Disk::Vdisk("v2".into(), "w")),
                ("xvdb", Disk::Vdisk("n3".into(), "w")),
                ("xvdc", Disk::Vdisk("v3".into(), "r")),
            ],
        ],
    }
}

/// No vdisk, no attachment, and the big pool's device taken out.
fn emptied() -> Desired {
    Desired {
        name: "emptied",
        big_pool: false,
        vdisks: Vec::new(),
        disks: Default::default(),
    }
}

fn devid(vdev: &str) -> u32 {
    match vdev {
        "xvda" => 51712,
        "xvdb" => 51728,
        "xvdc" => 51744,
        "xvdd" => 51760,
        _ => unreachable!("{vdev}"),
    }
}

/// The journal's latest runs, newest first.
fn runs(host: &Host) -> Vec<Value> {
    let runs: Value =
        serde_json::from_slice(&host.run(&["state", "--runs", "--json"]).stdout).unwrap();
    runs.as_array().cloned().unwrap_or_default()
}

/// The id of the newest run, 0 before any.
fn last_run(host: &Host) -> i64 {
    runs(host)
        .first()
        .map_or(0, |run| run["id"].as_i64().unwrap())
}

/// The newest run if it is newer than `before`.
fn run_since(host: &Host, before: i64) -> Option<Value> {
    runs(host)
        .into_iter()
        .next()
        .filter(|run| run["id"].as_i64().unwrap() > before)
}

/// Where a kill landed, from the journal: the kinds of the steps running
/// then, or between two steps, or outside any run (observing, planning).
fn landed(host: &Host, runs_before: i64) -> String {
    let Some(last) = run_since(host, runs_before) else {
        return "before its run".into();
    };
    if last["status"] != "running" {
        return format!("after its run ({})", last["status"].as_str().unwrap_or("?"));
    }
    let running: BTreeSet<String> = last["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "running")
        .map(|s| s["op"]["op"].as_str().unwrap_or("?").to_owned())
        .collect();
    if running.is_empty() {
        "between steps".into()
    } else {
        running.into_iter().collect::<Vec<_>>().join("+")
    }
}

fn timestamp(value: &Value) -> Option<SystemTime> {
    let time: jiff::Timestamp = value.as_str()?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(time.as_millisecond().try_into().ok()?))
}

/// How long the newest run, if it is newer than `runs_before` and done,
/// took to begin (observing, planning) after `spawned`, and then to run its
/// steps.
fn phases(host: &Host, runs_before: i64, spawned: SystemTime) -> Option<(Duration, Duration)> {
    let last = run_since(host, runs_before)?;
    let (started, finished) = (
        timestamp(&last["started_at"])?,
        timestamp(&last["finished_at"])?,
    );
    Some((
        started.duration_since(spawned).unwrap_or_default(),
        finished.duration_since(started).unwrap_or_default(),
    ))
}

/// Everything that must hold once an apply of `desired` has converged.
fn check_converged(host: &Host, desired: &Desired, file: &str, context: &str) {
    let plan = host.run(&["plan", file]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{context}: a fresh plan still has changes\n{}",
        text(&plan)
    );
    let check = host.run(&["state", "--check"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{context}: state --check\n{}",
        text(&check)
    );

    // No sector in two vdisks, and every vdisk the desired state names.
    let state: Value = serde_json::from_slice(&host.run(&["state", "--json"]).stdout).unwrap();
    let mut ranges: Vec<(String, u64, u64, String)> = Vec::new();
    let mut names = BTreeSet::new();
    for vdisk in state["vdisks"].as_array().unwrap() {
        let name = vdisk["name"].as_str().unwrap().to_owned();
        for extent in vdisk["extents"].as_array().unwrap() {
            let start = extent["start"].as_u64().unwrap();
            ranges.push((
                extent["device"].to_string(),
                start,
                start + extent["sectors"].as_u64().unwrap(),
                name.clone(),
            ));
        }
        names.insert(name);
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        let ((device, _, end, a), (next_device, next_start, _, b)) = (&pair[0], &pair[1]);
        assert!(
            device != next_device || end <= next_start,
            "{context}: {a} and {b} both own sectors of device {device} from {next_start}"
        );
    }
    let expected: BTreeSet<String> = desired.vdisks.iter().map(|v| v.0.clone()).collect();
    assert_eq!(names, expected, "{context}: the vdisks in the state DB");
    let used: u64 = state["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["devices"].as_array().unwrap())
        .map(|d| d["used"].as_u64().unwrap())
        .sum();
    assert_eq!(
        used,
        ranges.len() as u64,
        "{context}: the pools' used extents are not the vdisks' extents\n{state:#}"
    );

    // xenstore: one backend per (domid, devid) whatever its kind, each live,
    // with its frontend pointing back; no frontend without its backend.
    let store = host.simulator.store();
    let read = |path: &str| {
        store
            .read(path)
            .ok()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let mut backends: BTreeMap<(u32, u32), Vec<String>> = BTreeMap::new();
    for kind in ["vbd", "qdisk", "vbd3"] {
        let base = format!("/local/domain/0/backend/{kind}");
        for domid in store.directory(&base).unwrap_or_default() {
            for devid in store
                .directory(&format!("{base}/{domid}"))
                .unwrap_or_default()
            {
                let backend = format!("{base}/{domid}/{devid}");
                let key = (domid.parse().unwrap(), devid.parse().unwrap());
                backends.entry(key).or_default().push(backend.clone());
                let frontend = read(&format!("{backend}/frontend"))
                    .unwrap_or_else(|| panic!("{context}: {backend} names no frontend"));
                assert_eq!(
                    read(&format!("{frontend}/backend")).as_deref(),
                    Some(backend.as_str()),
                    "{context}: the frontend of {backend}"
                );
                assert_eq!(
                    read(&format!("{backend}/online")).as_deref(),
                    Some("1"),
                    "{context}: {backend} is being torn down"
                );
            }
        }
    }
    for ((domid, devid), kinds) in &backends {
        assert_eq!(
            kinds.len(),
            1,
            "{context}: domid {domid} device {devid} is attached twice: {kinds:?}"
        );
    }
    for domid in store.directory("/local/domain").unwrap_or_default() {
        let base = format!("/local/domain/{domid}/device/vbd");
        for devid in store.directory(&base).unwrap_or_default() {
            let frontend = format!("{base}/{devid}");
            let backend = read(&format!("{frontend}/backend")).unwrap_or_default();
            assert!(
                store.exists(&backend),
                "{context}: {frontend} has no backend ({backend:?})"
            );
        }
    }

    // And each guest has exactly its desired disks, each from its source.
    for (g, disks) in desired.disks.iter().enumerate() {
        let domid = FIRST_DOMID + g as u32;
        let mut want = BTreeMap::new();
        for (vdev, disk) in disks {
            let params = match disk {
                Disk::Vdisk(name, _) => format!("/dev/mapper/xendisk-{name}"),
                Disk::Iso => "/srv/iso/tools.iso".to_owned(),
            };
            want.insert(devid(vdev), params);
        }
        let have: BTreeMap<u32, String> = backends
            .keys()
            .filter(|(d, _)| *d == domid)
            .map(|(_, devid)| {
                let path = &backends[&(domid, *devid)][0];
                (*devid, read(&format!("{path}/params")).unwrap_or_default())
            })
            .collect();
        assert_eq!(have, want, "{context}: the disks of {}", GUESTS[g]);
    }
}

fn spawn_apply(host: &Host, file: &str, parallelism: &str) -> Child {
    host.command(
        &[
            "apply",
            file,
            "--yes",
            "--no-devices",
            "--allow-destroy",
            "--parallelism",
            parallelism,
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// How an apply that was to be killed ended.
enum Ending {
    Killed,
    /// It ended first, with this output.
    On(Output),
}

/// Runs an apply and kills it (SIGKILL) after `delay`, unless it ends first.
fn apply_and_kill(host: &Host, file: &str, parallelism: &str, delay: Duration) -> Ending {
    let deadline = Instant::now() + delay;
    let mut child = spawn_apply(host, file, parallelism);
    loop {
        if child.try_wait().unwrap().is_some() {
            return Ending::On(child.wait_with_output().unwrap());
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
    }
    // No destructor runs, no journal entry is written, the lock goes with
    // the process.
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.signal() == Some(libc::SIGKILL) {
        Ending::Killed
    } else {
        // It ended between the last look and the kill.
        Ending::On(output)
    }
}

/// The loop's timings: how long an apply takes to begin its run (the
/// same for any desired state, near enough), and the longest run of steps
/// seen towards each desired state. Kills are drawn over those.
struct Timings {
    startup: Duration,
    steps: Vec<Duration>,
}

impl Timings {
    fn learn(&mut self, target: usize, phases: Option<(Duration, Duration)>) {
        if let Some((startup, steps)) = phases {
            self.startup = (self.startup * 3 + startup) / 4;
            self.steps[target] = self.steps[target].max(steps);
        }
    }

    /// Mostly while steps run; now and then while the apply observes and plans.
    fn kill_delay(&self, rng: &mut Rng, target: usize) -> Duration {
        let micros = |d: Duration| d.as_micros() as u64;
        if rng.chance(5) {
            Duration::from_micros(rng.below(micros(self.startup)))
        } else {
            self.startup + Duration::from_micros(rng.below(micros(self.steps[target]) + 20_000))
        }
    }
}

#[test]
fn applies_killed_at_random_times_always_converge() {
    let seed = std::env::var("XENDISK_KILL_SEED")
        .ok()
        .and_then(|s| {
            s.strip_prefix("0x")
                .map_or_else(|| s.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .unwrap_or(DEFAULT_SEED);
    let target_kills = std::env::var("XENDISK_KILL_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let mut rng = Rng::new(seed);
    let guests = GuestPolicy {
        close_delay: Duration::from_millis(40),
        never_close: Default::default(),
    };
    let faults = Faults {
        reply_delay: Duration::from_micros(300),
        ..Faults::default()
    };
    let host = Host::new(guests, faults);
    let states = [spread(), rotated(), replaced(), emptied()];
    for state in &states {
        host.file(&format!("{}.toml", state.name), &state.toml());
    }
    let started = Instant::now();
    let mut history = String::new();
    let context = |round: usize, what: &str, history: &str| {
        format!(
            "seed {seed:#x} (XENDISK_KILL_SEED={seed:#x} repeats the choices; where kills land \
             depends on timing), round {round}, {what}\nhistory:\n{history}"
        )
    };

    // One apply into each desired state, left alone, to learn how long they take.
    let mut timings = Timings {
        startup: Duration::ZERO,
        steps: vec![Duration::ZERO; states.len()],
    };
    for (target, state) in states.iter().enumerate() {
        let file = format!("{}.toml", state.name);
        let runs_before = last_run(&host);
        let spawned = SystemTime::now();
        let output = spawn_apply(&host, &file, "4").wait_with_output().unwrap();
        let phases = phases(&host, runs_before, spawned);
        writeln!(history, "  -> {} -p4: left alone, {phases:?}", state.name).unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}\n{}",
            context(0, "an apply left alone failed", &history),
            text(&output)
        );
        check_converged(&host, state, &file, &context(0, state.name, &history));
        timings.startup = timings.startup.max(phases.map_or(Duration::ZERO, |p| p.0));
        timings.learn(target, phases);
    }

    let mut current = states.len() - 1;
    let mut kills = 0;
    let mut missed = 0;
    let mut round = 0;
    let mut sites: BTreeMap<String, usize> = BTreeMap::new();
    while kills < target_kills {
        round += 1;
        assert!(
            round <= 3 * target_kills,
            "{}",
            context(
                round,
                &format!("only {kills} kills so far (the applies end too soon)"),
                &history
            )
        );
        // Up to two applies killed, the second heading for the same
        // desired state or another, then one left to converge.
        let mut target = current;
        for attempt in 0..2 {
            if attempt == 1 && (!rng.chance(3) || kills >= target_kills) {
                break;
            }
            if attempt == 0 || rng.chance(3) {
                target = (target + 1 + rng.below(3) as usize) % states.len();
            }
            let parallelism = if rng.chance(2) { "1" } else { "4" };
            let file = format!("{}.toml", states[target].name);
            let delay = timings.kill_delay(&mut rng, target);
            let runs_before = last_run(&host);
            let spawned = SystemTime::now();
            let what = format!(
                "{} -p{parallelism}, kill after {delay:?}",
                states[target].name
            );
            match apply_and_kill(&host, &file, parallelism, delay) {
                Ending::Killed => {
                    kills += 1;
                    let site = landed(&host, runs_before);
                    writeln!(history, "  -> {what}: killed {site}").unwrap();
                    *sites.entry(site).or_default() += 1;
                }
                Ending::On(output) => {
                    missed += 1;
                    let phases = phases(&host, runs_before, spawned);
                    writeln!(history, "  -> {what}: ended first, {phases:?}").unwrap();
                    assert_eq!(
                        output.status.code(),
                        Some(0),
                        "{}\n{}",
                        context(round, "an apply not killed failed", &history),
                        text(&output)
                    );
                    timings.learn(target, phases);
                }
            }
        }
        let parallelism = if rng.chance(2) { "1" } else { "4" };
        let file = format!("{}.toml", states[target].name);
        let runs_before = last_run(&host);
        let spawned = SystemTime::now();
        let converged = spawn_apply(&host, &file, parallelism)
            .wait_with_output()
            .unwrap();
        let phases = phases(&host, runs_before, spawned);
        writeln!(
            history,
            "  -> {} -p{parallelism}: converging, {phases:?}",
            states[target].name
        )
        .unwrap();
        assert_eq!(
            converged.status.code(),
            Some(0),
            "{}\n{}",
            context(round, "the apply after a kill failed", &history),
            text(&converged)
        );
        check_converged(
            &host,
            &states[target],
            &file,
            &context(
                round,
                &format!("converged on {}", states[target].name),
                &history,
            ),
        );
        timings.learn(target, phases);
        current = target;
    }
    let _ = writeln!(
        std::io::stderr(),
        "kill loop: seed {seed:#x}, {kills} kills and {missed} applies that ended first in {round} rounds, \
         {:.1}s; an apply begins its run after {:?}, steps took up to {:?}; kills landed: {sites:?}",
        started.elapsed().as_secs_f64(),
        timings.startup,
        timings.steps,
    );
}
