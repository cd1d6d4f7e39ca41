//! The commands, as library functions: each takes an options struct and a
//! [`Console`], does its job through the other modules, and returns the exit
//! status. They know nothing of argument parsing (that is `main.rs`), so tests
//! and other programs can call them directly.

use std::io::{self, Write};
use std::path::PathBuf;

use serde::Serialize;

use crate::desired::{self, Capacities, LoadError, Size};
use crate::state;
use anyhow::Context;

use crate::observe;
use crate::render;

mod apply;
mod capture;
mod import;
mod init;
mod plan;
mod simulated;
mod state_db;
pub mod traces;

pub use apply::{ApplyOptions, apply};
pub use capture::{CaptureOptions, capture};
pub use import::{ImportOptions, import};
pub use init::{InitOptions, init};
pub use simulated::SimulatedHost;
pub use traces::traces;

use crate::sim;
use crate::state::StateDb;
use crate::vdev::{Vdev, VdevKind};
pub use plan::{
    ActualSource, DiffOptions, GenerateOptions, GraphOptions, PlanOptions, diff, generate, graph,
    plan,
};

/// What a command tells the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success; for `plan`, no changes.
    Success = 0,
    /// An error: bad input, an unreachable host, a failed operation.
    Error = 1,
    /// `plan` found changes to make.
    Changes = 2,
    /// Refused: unsafe sharing, destroy protection, a stale plan.
    Refused = 3,
}

/// Where a command writes, and whether its error stream may use colour.
pub struct Console<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub colour: bool,
}

/// `xendisk validate FILE...`
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    pub files: Vec<PathBuf>,
    /// The state DB, whose recorded pool devices give capacities to check
    /// vdisk sizes against; a missing DB knows none (validation needs no host).
    pub state: PathBuf,
    pub now: jiff::Timestamp,
}

/// The sizes of the pool devices the state DB records, by path: what
/// validation checks vdisk sizes against.
///
/// A pool holding a vdisk adopted from the ancestor with extents in other
/// pools too is left out: that vdisk may be larger than its own pool, so the
/// pool's size bounds nothing. (The planner still refuses a vdisk that its
/// pool's free extents cannot hold.)
pub(crate) fn capacities(state: &crate::state::StateSnapshot) -> Capacities {
    let pool_of_device: std::collections::BTreeMap<_, &str> = state
        .pools
        .iter()
        .flat_map(|pool| pool.devices.iter().map(|d| (d.device, pool.name.as_str())))
        .collect();
    let unbounded: std::collections::BTreeSet<&str> = state
        .vdisks
        .iter()
        .filter(|vdisk| {
            vdisk
                .extents
                .iter()
                .any(|e| pool_of_device.get(&e.device) != Some(&vdisk.pool.as_str()))
        })
        .map(|vdisk| vdisk.pool.as_str())
        .collect();
    state
        .pools
        .iter()
        .filter(|pool| !unbounded.contains(pool.name.as_str()))
        .flat_map(|pool| &pool.devices)
        .map(|device| (device.path.clone(), Size::from_sectors(device.sectors)))
        .collect()
}

/// Validates each file and reports every problem of every file.
pub fn validate(options: &ValidateOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    // Without a state DB (a CI job checking files) no pool's capacity is
    // known; sizes are then checked by `plan`, which needs the DB.
    let capacities = if state_db::exists(&options.state)? {
        capacities(&StateDb::open_read_only(&options.state)?.snapshot(options.now)?)
    } else {
        Capacities::default()
    };
    let mut exit = Exit::Success;
    for file in &options.files {
        match desired::load(file, &capacities) {
            Ok(desired) => {
                let attachments: usize = desired.domains.values().map(|d| d.disks.len()).sum();
                writeln!(
                    console.out,
                    "{}: valid ({}, {}, {}, {})",
                    file.display(),
                    count(desired.pools.len(), "pool"),
                    count(desired.vdisks.len(), "vdisk"),
                    count(desired.domains.len(), "domain"),
                    count(attachments, "attachment"),
                )?;
            }
            Err(LoadError::Invalid(problems)) => {
                console
                    .err
                    .write_all(problems.render(console.colour).as_bytes())?;
                exit = Exit::Error;
            }
            Err(error @ LoadError::Read { .. }) => {
                writeln!(console.err, "error: {error}")?;
                exit = Exit::Error;
            }
        }
    }
    Ok(exit)
}

pub(crate) fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `xendisk vdev NAME|NUMBER...`
#[derive(Debug, Clone)]
pub struct VdevOptions {
    pub names: Vec<String>,
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct VdevRow<'a> {
    input: &'a str,
    device_id: u32,
    canonical: String,
    kind: VdevKind,
    disk: u32,
    partition: u32,
}

/// Prints each vdev's device id, canonical name, disk and partition.
pub fn vdev(options: &VdevOptions, console: &mut Console<'_>) -> io::Result<Exit> {
    let mut exit = Exit::Success;
    let mut rows = Vec::new();
    for name in &options.names {
        match Vdev::parse(name) {
            Ok(vdev) => rows.push(VdevRow {
                input: name,
                device_id: vdev.device_id(),
                canonical: vdev.canonical_name(),
                kind: vdev.kind,
                disk: vdev.disk,
                partition: vdev.partition,
            }),
            Err(error) => {
                writeln!(console.err, "error: {error}")?;
                exit = Exit::Error;
            }
        }
    }
    if options.json {
        serde_json::to_writer_pretty(&mut *console.out, &rows)?;
        writeln!(console.out)?;
    } else if !rows.is_empty() {
        let mut table = tabwriter::TabWriter::new(&mut *console.out).padding(2);
        writeln!(
            table,
            "VDEV\tDEVICE ID\tHEX\tCANONICAL\tKIND\tDISK\tPARTITION"
        )?;
        for row in &rows {
            writeln!(
                table,
                "{}\t{}\t{:#x}\t{}\t{}\t{}\t{}",
                row.input,
                row.device_id,
                row.device_id,
                row.canonical,
                row.kind.prefix(),
                row.disk,
                row.partition
            )?;
        }
        table.flush()?;
    }
    Ok(exit)
}

/// The file formats `xendisk schema` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaFormat {
    /// Desired-state TOML files.
    Desired,
    /// Host snapshots (`xendisk snapshot`).
    Snapshot,
    /// Saved plans (`xendisk plan --json`, `plan -o`).
    Plan,
}

/// `xendisk schema`: prints the JSON Schema of a file format.
pub fn schema(format: SchemaFormat, console: &mut Console<'_>) -> io::Result<Exit> {
    let text = match format {
        SchemaFormat::Desired => crate::schema::desired_state_schema(),
        SchemaFormat::Snapshot => crate::schema::snapshot_schema(),
        SchemaFormat::Plan => crate::schema::plan_schema(),
    };
    console.out.write_all(text.as_bytes())?;
    Ok(Exit::Success)
}

/// `xendisk snapshot`
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    pub host_root: PathBuf,
    pub output: Option<PathBuf>,
    pub now: jiff::Timestamp,
}

/// Observes the host and writes what it saw as a snapshot file.
pub fn snapshot(options: &SnapshotOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    let host = observe::observe(&observe::ObserveOptions {
        host_root: options.host_root.clone(),
    })?;
    // The machine id lets an offline plan check the state DB it is given.
    let machine_id = match state::HostId::read(&options.host_root) {
        Ok(id) => Some(id.machine_id),
        Err(error) => {
            writeln!(
                console.err,
                "warning: the snapshot will not say which host it is, so no state DB can be \
                 checked against it: {error}"
            )?;
            None
        }
    };
    let text = observe::snapshot::to_json(&host, machine_id.as_deref(), options.now);
    match &options.output {
        None => console.out.write_all(text.as_bytes())?,
        Some(path) => {
            write_whole(path, text.as_bytes())?;
            writeln!(
                console.err,
                "Wrote {}: {}, {}, {} used by Domain-0, {}.",
                path.display(),
                count(host.domains.len(), "domain"),
                count(host.attachments.len(), "attachment"),
                count(host.dom0_uses.len(), "area"),
                count(host.block_devices.len(), "block device"),
            )?;
        }
    }
    Ok(Exit::Success)
}

/// `xendisk state`
#[derive(Debug, Clone)]
pub struct StateOptions {
    pub state: PathBuf,
    pub json: bool,
    /// Also run the integrity check and the invariants.
    pub check: bool,
    /// Show the apply journal instead.
    pub runs: bool,
    pub now: jiff::Timestamp,
}

/// Prints the state DB; with `check`, verifies it and fails on any problem.
pub fn state(options: &StateOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    let db = StateDb::open_read_only(&options.state)?;
    if options.runs {
        let runs = db.runs(20)?;
        if options.json {
            serde_json::to_writer_pretty(&mut *console.out, &runs)?;
            writeln!(console.out)?;
        } else {
            render::runs_text(&runs, console.out)?;
        }
        return Ok(Exit::Success);
    }
    let snapshot = db.snapshot(options.now)?;
    if options.json {
        render::state_json(&snapshot, console.out)?;
    } else {
        match db.host()? {
            Some(host) => writeln!(
                console.out,
                "Host {} (from its {}, recorded at {}).\n",
                host.machine_id, host.source, host.recorded_at
            )?,
            None => writeln!(
                console.out,
                "Host not recorded: record it with `xendisk init` on the host this DB is for.\n"
            )?,
        }
        render::state_text(&snapshot, console.out)?;
    }
    if options.check {
        let problems = db.verify(options.now)?;
        for problem in &problems {
            writeln!(console.err, "error: {}: {problem}", db.label())?;
        }
        if !problems.is_empty() {
            return Ok(Exit::Error);
        }
        writeln!(console.err, "{}: consistent", db.label())?;
    }
    Ok(Exit::Success)
}

/// Writes an output file whole: to a temporary name, then renamed over the
/// target, so that nobody reads half of it. A target that is not a regular
/// file (`/dev/null`, a pipe, `/dev/stdout`) is written into as it is:
/// renaming over it would replace the device node with a file.
pub(crate) fn write_whole(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
    if special {
        return std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut file| file.write_all(bytes))
            .with_context(|| format!("cannot write {}", path.display()));
    }
    let temporary = path.with_extension("partial");
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `xendisk sim`
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub socket: PathBuf,
    pub seed: Option<PathBuf>,
    pub guests: sim::GuestPolicy,
    pub faults: sim::Faults,
    /// The drivers it plays, if any.
    pub drivers: Option<sim::Drivers>,
}

/// The simulated dom0's view for the hotplug step, read under `root`; an
/// empty one (no device, no mount) when that cannot be read, said once.
pub fn host_view(root: &std::path::Path) -> sim::HostView {
    sim::HostView::of_host_root(root).unwrap_or_else(|error| {
        tracing::warn!(%error, "the simulated hotplug step sees no block device");
        sim::HostView::default()
    })
}

/// Serves a simulated xenstored until killed.
pub fn sim(options: &SimOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    let store = match &options.seed {
        None => sim::Store::default(),
        Some(path) => {
            let seed = sim::dump::load(path)?;
            // Any client may read any of them.
            for (node, cut) in &seed.cuts {
                writeln!(
                    console.err,
                    "warning: {}",
                    cut.describe(node, &path.display().to_string())
                )?;
            }
            seed.store
        }
    };
    let simulator = sim::Simulator::start_with_drivers(
        &options.socket,
        store,
        options.guests.clone(),
        options.faults.clone(),
        options.drivers.clone(),
    )?;
    writeln!(
        console.err,
        "Simulated xenstored listening on {0}; point clients at it with XENSTORED_PATH={0}",
        options.socket.display()
    )?;
    simulator.wait()?;
    Ok(Exit::Success)
}
