//! Applying a plan: the only stage that changes the host.
//!
//! Steps run in the plan's order, each journaled in the state DB before and
//! after it runs, each idempotent (the state DB, the toolstack drivers and
//! the realisers all accept being asked twice). So an apply killed at any
//! instant is finished by the next one, which plans again from what the
//! host then is: what was done is no longer in the plan.

pub mod command;
pub mod lock;
mod look;
pub mod realise;
pub mod scrub;
pub mod toolstack;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::mpsc;
use std::time::Instant;

use crate::desired::Source;
use crate::observe::{HostChanges, HostState};
use crate::plan::{Op, Plan, Step, actual::ActualIndex};

use crate::state::{DeviceGeometry, DiskPlace, StateDb, StateError};
use look::Look;

use realise::{RealiseError, RealiseRequest, Realiser};
use toolstack::{AttachRequest, DetachRequest, Toolstack, ToolstackError};

/// What carries out the operations that touch more than the state DB.
pub struct Drivers {
    pub toolstack: Box<dyn Toolstack>,
    pub realiser: Box<dyn Realiser>,
    /// No device is behind a simulated host: scrubs zero nothing.
    pub simulated_devices: bool,
    /// Attaches and detaches may run on up to this many threads at once
    /// (the slow part of an apply is waiting for guests); 1 runs every
    /// step in turn on the caller's thread.
    pub parallelism: usize,
    /// Makes a toolstack for a worker thread.
    pub worker_toolstack: Box<WorkerToolstack>,
    /// Looks at the host again, right before each step that writes
    /// sectors; `None` trusts the plan's observation (tests of the
    /// executor alone).
    pub observe_again: Option<Box<dyn Observer>>,
}

/// What looks at the host again for [`Drivers::observe_again`].
pub trait Observer {
    /// The whole host, as it is now.
    fn whole(&mut self) -> Result<HostState, String>;
    /// What changed since the last look (either kind), and what `paths`
    /// name now; `None` when this observer cannot tell: then apply asks
    /// for the whole host.
    fn changes(&mut self, paths: &[String]) -> Result<Option<HostChanges>, String>;
}

/// What makes a toolstack for a worker thread.
pub type WorkerToolstack = dyn Fn() -> Result<Box<dyn Toolstack + Send>, ToolstackError> + Sync;

/// An attach or detach, prepared on the caller's thread for a worker.
enum ToolstackJob {
    Attach(AttachRequest),
    Detach(DetachRequest),
}

impl ToolstackJob {
    fn run(&self, toolstack: &mut dyn Toolstack) -> Result<(), ToolstackError> {
        match self {
            ToolstackJob::Attach(request) => toolstack.attach(request),
            ToolstackJob::Detach(request) => toolstack.detach(request),
        }
    }
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
    #[error(
        "{} appeared since the plan was made and use{} what this step writes; nothing was \
         written: plan again, and the plan will account for {}",
        holders.join(", "),
        if holders.len() == 1 { "s" } else { "" },
        if holders.len() == 1 { "it" } else { "them" }
    )]
    Unexpected { holders: Vec<String> },
    #[error(
        "cannot look at the host again before this step ({0}); nothing was written: check that \
         xenstore and /proc and /sys are readable, then apply again"
    )]
    ObserveAgain(String),
    #[error(
        "pool device {path} ({device}) is not on this host any more; reconnect it, or take it out \
         of the pool's devices and plan again"
    )]
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

/// Runs the plan's steps, each once all the steps it depends on are done,
/// journaling each; attaches and detaches may overlap (see
/// [`Drivers::parallelism`]). After a failure nothing new starts; the steps
/// already running finish. `clock` gives the time (tests fix it).
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
    let total = plan.steps.len();
    let by_id: BTreeMap<usize, &Step> = plan.steps.iter().map(|s| (s.id, s)).collect();
    let mut waiting: BTreeMap<usize, usize> = plan
        .steps
        .iter()
        .map(|s| (s.id, s.depends_on.len()))
        .collect();
    let mut dependents: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for step in &plan.steps {
        for dependency in &step.depends_on {
            dependents.entry(*dependency).or_default().push(step.id);
        }
    }
    let mut ready: BTreeSet<usize> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(id, _)| *id)
        .collect();
    // Block devices of vdisks realised by this run.
    let mut devices: BTreeMap<String, String> = BTreeMap::new();
    let mut execution = Execution {
        phases: BTreeMap::new(),
        failure: None,
    };
    let (sender, receiver) = mpsc::channel::<(usize, Result<(), StepError>, Instant)>();
    let limit = drivers.parallelism.max(1);
    let Drivers {
        toolstack,
        realiser,
        simulated_devices,
        worker_toolstack,
        observe_again,
        ..
    } = drivers;
    let mut observe_again = observe_again.as_deref_mut();
    // Attachments this run made and took away, for the look before a write.
    let mut look = Look::new(host);
    let worker_toolstack = &**worker_toolstack;
    std::thread::scope(|scope| -> Result<(), ApplyError> {
        let mut in_flight = 0;
        loop {
            // Start what can start, in plan order, workers permitting.
            while execution.failure.is_none() {
                let on_worker = |id: &usize| {
                    limit > 1 && matches!(by_id[id].op, Op::Attach { .. } | Op::Detach { .. })
                };
                let Some(id) = ready
                    .iter()
                    .copied()
                    .find(|id| !on_worker(id) || in_flight < limit)
                else {
                    break;
                };
                ready.remove(&id);
                let step = by_id[&id];
                db.step_started(run, id, clock())?;
                killed_here("XENDISK_TEST_KILL_AT_STEP", id);
                let began = Instant::now();
                if let Err(error) =
                    look.before(step, db, observe_again.as_deref_mut(), &devices, clock)
                {
                    execution.finished(
                        step,
                        Err(error),
                        began,
                        (db, run, clock),
                        (&mut *progress, total),
                    )?;
                    continue;
                }
                if on_worker(&id) {
                    // Its backend may show up while it runs: expected.
                    look.record(&step.op);
                    let job = toolstack_job(step, &index, &devices);
                    let sender = sender.clone();
                    in_flight += 1;
                    scope.spawn(move || {
                        let result =
                            worker_toolstack().and_then(|mut toolstack| job.run(&mut *toolstack));
                        let _ = sender.send((id, result.map_err(StepError::from), began));
                    });
                    continue;
                }
                let mut drivers = StepDrivers {
                    toolstack: &mut **toolstack,
                    realiser: &mut **realiser,
                    simulated: *simulated_devices,
                };
                let result = run_step(step, host, db, &mut drivers, &index, &mut devices, clock);
                if execution.finished(
                    step,
                    result,
                    began,
                    (db, run, clock),
                    (&mut *progress, total),
                )? {
                    look.record(&step.op);
                    release(id, &mut waiting, &dependents, &mut ready);
                }
            }
            if in_flight == 0 {
                return Ok(());
            }
            let (id, result, began) = receiver.recv().expect("a worker sends before it ends");
            in_flight -= 1;
            if execution.finished(
                by_id[&id],
                result,
                began,
                (db, run, clock),
                (&mut *progress, total),
            )? {
                look.record(&by_id[&id].op);
                release(id, &mut waiting, &dependents, &mut ready);
            }
        }
    })?;
    if let Some((step, what, error)) = execution.failure {
        db.finish_run(run, false, clock())?;
        return Err(ApplyError::Step {
            step,
            what,
            source: Box::new(error),
        });
    }
    db.finish_run(run, true, clock())?;
    Ok(Outcome {
        steps: total,
        seconds: started.elapsed().as_secs_f64(),
        phases: execution.phases,
    })
}

/// The drivers a step on the caller's thread uses.
struct StepDrivers<'a> {
    toolstack: &'a mut dyn Toolstack,
    realiser: &'a mut dyn Realiser,
    simulated: bool,
}

/// What an execution keeps as steps finish.
struct Execution {
    phases: BTreeMap<String, (usize, f64)>,
    /// The first step that failed: its id, its line, why.
    failure: Option<(usize, String, StepError)>,
}

impl Execution {
    /// Journals a finished step; true when it succeeded.
    fn finished(
        &mut self,
        step: &Step,
        result: Result<(), StepError>,
        began: Instant,
        journal: (&mut StateDb, i64, &dyn Fn() -> jiff::Timestamp),
        progress: (&mut dyn Write, usize),
    ) -> Result<bool, ApplyError> {
        let (db, run, clock) = journal;
        let (progress, total) = progress;
        killed_here("XENDISK_TEST_KILL_AFTER_STEP", step.id);
        let what = crate::render::plan::step_line(step);
        let seconds = began.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                db.step_finished(run, step.id, Ok(()), clock())?;
                let kind = serde_json::to_value(&step.op)
                    .ok()
                    .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                let phase = self.phases.entry(kind).or_default();
                phase.0 += 1;
                phase.1 += seconds;
                let _ = writeln!(
                    progress,
                    "[{}/{total}] {what} ... done ({seconds:.2}s)",
                    step.id
                );
                Ok(true)
            }
            Err(error) => {
                db.step_finished(run, step.id, Err(&error.to_string()), clock())?;
                let _ = writeln!(progress, "[{}/{total}] {what} ... FAILED", step.id);
                if self.failure.is_none() {
                    self.failure = Some((step.id, what, error));
                }
                Ok(false)
            }
        }
    }
}

/// After step `id` succeeded, its dependents with nothing else to wait for
/// become ready.
fn release(
    id: usize,
    waiting: &mut BTreeMap<usize, usize>,
    dependents: &BTreeMap<usize, Vec<usize>>,
    ready: &mut BTreeSet<usize>,
) {
    for dependent in dependents.get(&id).into_iter().flatten() {
        if let Some(count) = waiting.get_mut(dependent) {
            *count -= 1;
            if *count == 0 {
                ready.insert(*dependent);
            }
        }
    }
}

/// The request an attach or detach step makes of the toolstack.
fn toolstack_job(
    step: &Step,
    index: &ActualIndex<'_>,
    devices: &BTreeMap<String, String>,
) -> ToolstackJob {
    match &step.op {
        Op::Attach {
            domain,
            domid,
            vdev,
            devid,
            source,
            mode,
            format,
        } => {
            let target = match source {
                Source::Vdisk(name) => devices
                    .get(name)
                    .cloned()
                    .or_else(|| index.device_of(name))
                    .unwrap_or_else(|| realise::mapper_path(name)),
                Source::Phy(path) | Source::File(path) => path.clone(),
            };
            ToolstackJob::Attach(AttachRequest {
                domain: domain.clone(),
                domid: *domid,
                vdev: vdev.clone(),
                devid: *devid,
                target,
                mode: *mode,
                format: *format,
            })
        }
        Op::Detach {
            domain,
            domid,
            vdev,
            devid,
            backend,
            closing,
            ..
        } => ToolstackJob::Detach(DetachRequest {
            domain: domain.clone(),
            domid: *domid,
            vdev: vdev.clone(),
            devid: *devid,
            backend: backend.clone(),
            closing: *closing,
        }),
        other => unreachable!("not an attach or a detach: {other:?}"),
    }
}

fn run_step(
    step: &Step,
    host: &HostState,
    db: &mut StateDb,
    drivers: &mut StepDrivers<'_>,
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
        } => {
            db.grow_vdisk_on(name, *to, extents, clock())?;
        }
        Op::SetExpiry { name, to, .. } => db.set_expiry(name, to, clock())?,
        Op::DeleteVdisk { name, .. } => match db.delete_vdisk(name, clock()) {
            Err(StateError::UnknownVdisk(_)) => {} // deleted by an earlier, interrupted run
            other => other.map(|_| ())?,
        },
        Op::Scrub { extents, .. } => {
            let paths = pool_device_paths(db)?;
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
                scrub::zero(&path, device, &ranges, drivers.simulated)?;
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
        Op::Resize { vdisk } => {
            let request = realise_request(db, vdisk, clock)?;
            drivers.realiser.resize(&request)?;
        }
        Op::Unrealise { vdisk } => {
            let request = realise_request(db, vdisk, clock)?;
            drivers.realiser.unrealise(&request)?;
            // Its name may be anybody's now (the look counts on it).
            devices.remove(vdisk);
        }
        Op::Attach { .. } | Op::Detach { .. } => {
            toolstack_job(step, index, devices).run(&mut *drivers.toolstack)?;
        }
    }
    Ok(())
}

fn pool_device_paths(db: &StateDb) -> Result<BTreeMap<crate::extent::DevNum, String>, StepError> {
    Ok(db.pool_device_paths()?)
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
        pool_devices: pool_device_paths(db)?,
    })
}
