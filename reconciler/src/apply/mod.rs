//! Applying a plan: the only stage that changes the host.
//!
//! Steps run in the plan's order, each journaled in the state DB before and
//! after it runs, each idempotent (the state DB, the toolstack drivers and
//! the realisers all accept being asked twice). So an apply killed at any
//! instant is finished by the next one, which plans again from what the
//! host then is: what was done is no longer in the plan.

pub mod lock;
pub mod realise;
pub mod scrub;
pub mod toolstack;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use crate::desired::Source;
use crate::observe::HostState;
use crate::plan::{Op, Plan, Step, actual::ActualIndex};
use crate::state::{DeviceGeometry, DiskPlace, StateDb, StateError};

use realise::{RealiseError, RealiseRequest, Realiser};
use toolstack::{AttachRequest, DetachRequest, Toolstack, ToolstackError};

/// What carries out the operations that touch more than the state DB.
pub struct Drivers {
    pub toolstack: Box<dyn Toolstack>,
    pub realiser: Box<dyn Realiser>,
    /// No device is behind a simulated host: scrubs zero nothing.
    pub simulated_devices: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Toolstack(#[from] ToolstackError),
    #[error(transparent)]
    Realise(#[from] RealiseError),
    #[error(transparent)]
    Scrub(#[from] scrub::ScrubError),
    #[error("pool device {path} ({device}) is not on this host any more")]
    DeviceGone {
        path: String,
        device: crate::extent::DevNum,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "step {step} ({what}) failed: {source}; the steps after it were not run (see `xendisk state --runs`)"
    )]
    Step {
        step: usize,
        what: String,
        source: Box<StepError>,
    },
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub steps: usize,
    pub seconds: f64,
    /// For each kind of operation (`attach`, `create-vdisk`, ...): how many
    /// ran and the seconds they took together.
    pub phases: BTreeMap<String, (usize, f64)>,
}

/// Test hook: the process aborts, as a `kill -9` would stop it, before
/// (`XENDISK_TEST_KILL_AT_STEP=N`) or after (`..._AFTER_STEP=N`) running
/// step N, so that the tests can check the next apply finishes the work.
fn killed_here(variable: &str, step: usize) {
    if std::env::var(variable)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        == Some(step)
    {
        std::process::abort();
    }
}

/// Runs the plan's steps in order, journaling each; stops at the first
/// failure. `clock` gives the time (tests fix it).
pub fn execute(
    plan: &Plan,
    host: &HostState,
    db: &mut StateDb,
    drivers: &mut Drivers,
    journal: (&str, &str),
    progress: &mut dyn Write,
    clock: &dyn Fn() -> jiff::Timestamp,
) -> Result<Outcome, ApplyError> {
    let started = Instant::now();
    let (source, fingerprint) = journal;
    let steps: Vec<(usize, String)> = plan
        .steps
        .iter()
        .map(|s| {
            (
                s.id,
                serde_json::to_string(&s.op).expect("an operation serialises"),
            )
        })
        .collect();
    let run = db.begin_run(source, fingerprint, &steps, clock())?;
    let state = db.snapshot(clock())?;
    let index = ActualIndex::new(&state, host);
    // Block devices of vdisks realised by this run.
    let mut devices: BTreeMap<String, String> = BTreeMap::new();
    let total = plan.steps.len();
    let mut phases: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for step in &plan.steps {
        db.step_started(run, step.id, clock())?;
        killed_here("XENDISK_TEST_KILL_AT_STEP", step.id);
        let began = Instant::now();
        let result = run_step(step, host, db, drivers, &index, &mut devices, clock);
        killed_here("XENDISK_TEST_KILL_AFTER_STEP", step.id);
        let what = crate::render::plan::step_line(step);
        match result {
            Ok(()) => {
                db.step_finished(run, step.id, Ok(()), clock())?;
                let kind = serde_json::to_value(&step.op)
                    .ok()
                    .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                let phase = phases.entry(kind).or_default();
                phase.0 += 1;
                phase.1 += began.elapsed().as_secs_f64();
                let _ = writeln!(
                    progress,
                    "[{}/{total}] {what} ... done ({:.2}s)",
                    step.id,
                    began.elapsed().as_secs_f64()
                );
            }
            Err(error) => {
                let message = error.to_string();
                db.step_finished(run, step.id, Err(&message), clock())?;
                db.finish_run(run, false, clock())?;
                let _ = writeln!(progress, "[{}/{total}] {what} ... FAILED", step.id);
                return Err(ApplyError::Step {
                    step: step.id,
                    what,
                    source: Box::new(error),
                });
            }
        }
    }
    db.finish_run(run, true, clock())?;
    Ok(Outcome {
        steps: total,
        seconds: started.elapsed().as_secs_f64(),
        phases,
    })
}

fn run_step(
    step: &Step,
    host: &HostState,
    db: &mut StateDb,
    drivers: &mut Drivers,
    index: &ActualIndex<'_>,
    devices: &mut BTreeMap<String, String>,
    clock: &dyn Fn() -> jiff::Timestamp,
) -> Result<(), StepError> {
    match &step.op {
        Op::AddPoolDevice {
            pool,
            path,
            device,
            extent_size,
            ..
        } => {
            let Some(observed) = host.block_devices.iter().find(|d| d.device == *device) else {
                return Err(StepError::DeviceGone {
                    path: path.clone(),
                    device: *device,
                });
            };
            let geometry = DeviceGeometry {
                path: path.clone(),
                device: *device,
                sectors: observed.sectors,
                on_disk: Some(DiskPlace {
                    disk: observed.disk,
                    start: observed.start,
                }),
            };
            db.add_pool_device(pool, *extent_size, &geometry, clock())?;
        }
        Op::RemovePoolDevice { path, .. } => match db.remove_pool_device(path, clock()) {
            Err(StateError::UnknownDevice(_)) => {} // removed by an earlier, interrupted run
            other => other?,
        },
        Op::CreateVdisk {
            name,
            pool,
            size,
            expiry,
            extents,
        } => db.create_vdisk_on(name, pool, *size, expiry, extents, clock())?,
        Op::GrowVdisk {
            name, to, extents, ..
        } => db.grow_vdisk_on(name, *to, extents, clock())?,
        Op::SetExpiry { name, to, .. } => db.set_expiry(name, to, clock())?,
        Op::DeleteVdisk { name, .. } => match db.delete_vdisk(name, clock()) {
            Err(StateError::UnknownVdisk(_)) => {} // deleted by an earlier, interrupted run
            other => other.map(|_| ())?,
        },
        Op::Scrub { extents, .. } => {
            let paths = pool_device_paths(db, clock)?;
            let mut by_device: BTreeMap<crate::extent::DevNum, Vec<(u64, u64)>> = BTreeMap::new();
            for extent in extents {
                by_device
                    .entry(extent.device)
                    .or_default()
                    .push((extent.start, extent.sectors));
            }
            for (device, ranges) in by_device {
                let path = paths
                    .get(&device)
                    .cloned()
                    .unwrap_or_else(|| device.to_string());
                scrub::zero(&path, &ranges, drivers.simulated_devices)?;
                for (start, sectors) in ranges {
                    db.mark_scrubbed(device, start / sectors, 1, clock())?;
                }
            }
        }
        Op::Realise { vdisk } => {
            let request = realise_request(db, vdisk, clock)?;
            let device = drivers.realiser.realise(&request)?;
            devices.insert(vdisk.clone(), device);
        }
        Op::Unrealise { vdisk } => {
            let request = realise_request(db, vdisk, clock)?;
            drivers.realiser.unrealise(&request)?;
        }
        Op::Attach {
            domain,
            domid,
            vdev,
            devid,
            source,
            mode,
        } => {
            let (target, kind) = match source {
                Source::Vdisk(name) => {
                    let device = devices
                        .get(name)
                        .cloned()
                        .or_else(|| index.device_of(name))
                        .unwrap_or_else(|| realise::mapper_path(name));
                    (device, "phy")
                }
                Source::Phy(path) => (path.clone(), "phy"),
                Source::File(path) => (path.clone(), "file"),
            };
            let request = AttachRequest {
                domain: domain.clone(),
                domid: *domid,
                vdev: vdev.clone(),
                devid: *devid,
                target,
                kind,
                mode: *mode,
            };
            drivers.toolstack.attach(&request)?;
        }
        Op::Detach {
            domain,
            domid,
            vdev,
            devid,
            ..
        } => {
            let request = DetachRequest {
                domain: domain.clone(),
                domid: *domid,
                vdev: vdev.clone(),
                devid: *devid,
            };
            drivers.toolstack.detach(&request)?;
        }
    }
    Ok(())
}

fn pool_device_paths(
    db: &StateDb,
    clock: &dyn Fn() -> jiff::Timestamp,
) -> Result<BTreeMap<crate::extent::DevNum, String>, StepError> {
    let snapshot = db.snapshot(clock())?;
    Ok(snapshot
        .pools
        .into_iter()
        .flat_map(|p| p.devices)
        .map(|d| (d.device, d.path))
        .collect())
}

fn realise_request(
    db: &StateDb,
    vdisk: &str,
    clock: &dyn Fn() -> jiff::Timestamp,
) -> Result<RealiseRequest, StepError> {
    let extents = db.lookup(vdisk, clock())?;
    Ok(RealiseRequest {
        vdisk: vdisk.to_owned(),
        extents,
        pool_devices: pool_device_paths(db, clock)?,
    })
}
