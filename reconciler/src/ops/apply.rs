//! `xendisk apply`: plan (or take a saved plan), confirm, carry it out.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::plan::{ActualSource, actual, load_desired, plan_for};
use super::{Console, Exit};
use crate::apply::{self, Drivers, lock, realise, toolstack};
use crate::desired::{Realise, Toolstack};
use crate::plan::{Op, Plan};
use crate::render;
use crate::state::StateDb;

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// A desired-state file, or a plan saved with `plan -o`.
    pub file: PathBuf,
    pub actual: ActualSource,
    pub yes: bool,
    pub allow_destroy: bool,
    pub lock_timeout: Duration,
    /// How long a guest gets to release a disk being detached.
    pub release_timeout: Duration,
    pub force_detach: bool,
    /// Make no block devices (a simulated host): attach vdisks by path.
    pub no_devices: bool,
    /// A fixed time for the journal (tests pin the clock); the real time when `None`.
    pub pinned_time: Option<jiff::Timestamp>,
    /// How many attaches and detaches may run at once.
    pub parallelism: usize,
    /// Overrides `settings.toolstack` for this run.
    pub toolstack: Option<Toolstack>,
    /// A simulated host (`--sim`): attachments go straight to its xenstore,
    /// as the toolstack would write them, and no block device is made.
    pub simulated: bool,
    /// What takes a backend up after the xenstore toolstack wrote it.
    pub hotplug: toolstack::BackendHost,
    pub colour: bool,
}

/// Exit 0 when applied (or nothing to do), 1 on failure, 3 when refused.
pub fn apply(options: &ApplyOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    if options.actual.snapshot.is_some() {
        anyhow::bail!(
            "apply changes the live host; it cannot work from a snapshot (drop --snapshot)"
        );
    }
    // A missing DB: say why nothing can be applied (traces on the host, or
    // `xendisk init`) before anything is made beside it, even a lock file.
    if !super::state_db::exists(&options.actual.state)?
        && let Err(exit) = actual(&options.actual, console)?
    {
        return Ok(exit);
    }
    let _lock = lock::acquire(&options.actual.state, options.lock_timeout, console.err)?;
    let text = std::fs::read_to_string(&options.file)
        .with_context(|| format!("cannot read {}", options.file.display()))?;
    // The DB is checked (its host, the traces it must account for) before
    // anything writes to it.
    let (state, host) = match actual(&options.actual, console)? {
        Ok(actual) => actual,
        Err(exit) => return Ok(exit),
    };
    let closed =
        StateDb::open(&options.actual.state)?.close_interrupted_runs(options_now(options))?;
    if closed > 0 {
        writeln!(
            console.err,
            "An earlier apply was interrupted; this one finishes its work."
        )?;
    }
    tidy_interrupted_attaches(options)?;
    let fingerprint = crate::plan::fingerprint(&state, &host);
    // The desired state (the file's, or the one a saved plan carries): a
    // fresh plan against it after the apply must find nothing left to do.
    let desired;
    let plan = if text.trim_start().starts_with('{') {
        let saved = match render::plan::read_saved(&text) {
            Ok(saved) => saved,
            Err(why) => {
                writeln!(
                    console.err,
                    "error: {} is not a saved plan this xendisk can apply: {why}; nothing was \
                     applied: make it again with `xendisk plan -o`",
                    options.file.display()
                )?;
                return Ok(Exit::Error);
            }
        };
        let made_from = &saved.made_from;
        if made_from.fingerprint != fingerprint {
            writeln!(
                console.err,
                "error: {} was made for a host that has changed since (fingerprint {} there, {} now); \
                 nothing was applied: plan again",
                options.file.display(),
                made_from.fingerprint,
                fingerprint
            )?;
            return Ok(Exit::Refused);
        }
        let problems = crate::desired::check(&made_from.desired, &super::capacities(&state));
        if !problems.is_empty() {
            writeln!(
                console.err,
                "error: the desired state in {} is not valid: {}; nothing was applied",
                options.file.display(),
                problems.join("; ")
            )?;
            return Ok(Exit::Error);
        }
        // Trust nothing the file says it will do: make the plan again from
        // what it was made from, and apply it only if it is the same.
        let fresh = plan_for(
            &made_from.desired,
            (&state, &host),
            &options.actual,
            made_from.allow_destroy,
        )?;
        if let Some(difference) = render::plan::difference(&saved, &fresh) {
            writeln!(
                console.err,
                "error: {} is not the plan its desired state gives on this host: {difference}; \
                 nothing was applied: plan again",
                options.file.display()
            )?;
            return Ok(Exit::Refused);
        }
        desired = saved.made_from.desired;
        fresh
    } else {
        let Some(loaded) = load_desired(&options.file, &state, console)? else {
            return Ok(Exit::Error);
        };
        let plan = plan_for(
            &loaded,
            (&state, &host),
            &options.actual,
            options.allow_destroy,
        )?;
        desired = loaded;
        plan
    };
    let style = render::plan::TextStyle {
        colour: options.colour,
        extents: false,
    };
    render::plan::text(&plan, style, console.out)?;
    if plan.is_refused() {
        return Ok(Exit::Refused);
    }
    if plan.is_empty() {
        return Ok(Exit::Success);
    }
    if let Some(refusal) = beyond_the_xenstore_toolstack(&plan, options) {
        writeln!(console.err, "error: {refusal}; nothing was applied")?;
        return Ok(Exit::Refused);
    }
    if !confirmed(options, plan.steps.len(), console)? {
        writeln!(console.err, "Nothing was applied.")?;
        return Ok(Exit::Error);
    }
    let mut drivers = drivers(&plan.settings, options)?;
    let mut db = StateDb::open(&options.actual.state)?;
    let source = options.file.display().to_string();
    let clock = || options_now(options);
    writeln!(console.out)?;
    // A bar on a terminal; plain lines in a pipeline (and in logs).
    let mut bar_lines;
    let progress: &mut dyn std::io::Write = if std::io::stdout().is_terminal() {
        bar_lines = BarLines::new(plan.steps.len());
        &mut bar_lines
    } else {
        &mut *console.out
    };
    let outcome = apply::execute(
        &plan,
        &host,
        &mut db,
        &mut drivers,
        (&source, &fingerprint),
        progress,
        &clock,
    );

    match outcome {
        Ok(outcome) => {
            let applied = super::count(outcome.steps, "operation");
            writeln!(console.out, "Applied {applied} in {:.2}s.", outcome.seconds)?;
            let phases: Vec<String> = outcome
                .phases
                .iter()
                .map(|(kind, (count, seconds))| format!("{kind} {count} ({seconds:.2}s)"))
                .collect();
            writeln!(console.out, "By kind: {}.", phases.join(", "))?;
            // Observe again: what was applied must now be what is.
            let (state, host) = match actual(&options.actual, console)? {
                Ok(actual) => actual,
                Err(exit) => return Ok(exit),
            };
            let again = plan_for(
                &desired,
                (&state, &host),
                &options.actual,
                options.allow_destroy,
            )?;
            if again.is_empty() {
                writeln!(console.out, "A fresh plan finds no changes.")?;
                Ok(Exit::Success)
            } else {
                writeln!(
                    console.err,
                    "error: the host does not match the plan after the apply; a fresh plan still has:"
                )?;
                render::plan::text(&again, style, console.err)?;
                Ok(Exit::Error)
            }
        }
        Err(error) => {
            writeln!(console.err, "error: {error}")?;
            Ok(Exit::Error)
        }
    }
}

/// What attaches stopped by a kill may have left half made: the xenstore
/// toolstack makes a disk's directories before the transaction that fills
/// them, and empty ones are no disk a plan sees. Every time, not only
/// after the run that closed them: that one may have been stopped too.
fn tidy_interrupted_attaches(options: &ApplyOptions) -> anyhow::Result<()> {
    let attaches: Vec<(u32, u32)> = StateDb::open(&options.actual.state)?
        .interrupted_steps()?
        .iter()
        .filter_map(|op| match serde_json::from_str(op) {
            Ok(Op::Attach { domid, devid, .. }) => Some((domid, devid)),
            _ => None,
        })
        .collect();
    if attaches.is_empty() {
        return Ok(());
    }
    let mut toolstack = toolstack::XenstoreToolstack::connect(
        options.hotplug.clone(),
        options.release_timeout,
        options.force_detach,
    )?;
    for (domid, devid) in attaches {
        toolstack
            .tidy_interrupted_attach(domid, devid)
            .with_context(|| {
                format!("cannot take away what an interrupted attach left of domain {domid} device {devid}")
            })?;
    }
    Ok(())
}

/// The time the journal records: pinned when the caller pinned it.
fn options_now(options: &ApplyOptions) -> jiff::Timestamp {
    options.pinned_time.unwrap_or_else(jiff::Timestamp::now)
}

/// `--yes`, or a person who typed yes at the prompt.
fn confirmed(
    options: &ApplyOptions,
    steps: usize,
    console: &mut Console<'_>,
) -> anyhow::Result<bool> {
    if options.yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "apply asks for confirmation on a terminal; in a pipeline pass --yes to apply the plan above"
        );
    }
    write!(
        console.err,
        "Apply these {steps} operations? Only 'yes' is accepted: "
    )?;
    console.err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

/// Whether attachments go straight into xenstore rather than through xl.
/// A simulated host has no xl: the toolstack's writes go to its xenstore.
fn direct(settings: &crate::desired::Settings, options: &ApplyOptions) -> bool {
    options.simulated || options.toolstack.unwrap_or(settings.toolstack) == Toolstack::Xenstore
}

/// The first attach of an image in a format other than raw, when the
/// xenstore toolstack would make it: it writes blkback (`vbd`) backends,
/// which would hand the guest the image's raw bytes. Such an attach goes
/// through xl (which picks a qdisk backend, `params = "<format>:<path>"`)
/// until that toolstack writes qdisk backends itself.
fn beyond_the_xenstore_toolstack(plan: &Plan, options: &ApplyOptions) -> Option<String> {
    if !direct(&plan.settings, options) {
        return None;
    }
    plan.steps.iter().find_map(|step| match &step.op {
        Op::Attach { source, format, .. } if !format.is_raw() => Some(format!(
            "step {} attaches {source} as {format}, and the xenstore toolstack makes blkback \
             backends, which read a file as raw: apply it with toolstack = \"xl\"",
            step.id
        )),
        _ => None,
    })
}

fn drivers(settings: &crate::desired::Settings, options: &ApplyOptions) -> anyhow::Result<Drivers> {
    let direct = direct(settings, options);
    let (release_timeout, force_detach) = (options.release_timeout, options.force_detach);
    let host_root = options.actual.host_root.clone();
    let hotplug = options.hotplug.clone();
    let make =
        move || -> Result<Box<dyn toolstack::Toolstack + Send>, toolstack::ToolstackError> {
            Ok(if direct {
                Box::new(toolstack::XenstoreToolstack::connect(
                    hotplug.clone(),
                    release_timeout,
                    force_detach,
                )?)
            } else {
                let mut xl = toolstack::XlToolstack::connect("xl".to_owned())?;
                xl.force_detach = force_detach;
                Box::new(xl)
            })
        };
    let realiser: Box<dyn realise::Realiser> = if options.no_devices || options.simulated {
        Box::new(realise::PathOnly)
    } else {
        match settings.realise {
            Realise::Auto => Box::new(realise::Auto),
            Realise::Dm => Box::new(realise::DeviceMapper),
            Realise::Loop => Box::new(realise::LoopDevice),
        }
    };
    Ok(Drivers {
        toolstack: make()?,
        realiser,
        simulated_devices: options.no_devices || options.simulated,
        parallelism: options.parallelism,
        worker_toolstack: Box::new(make),
        observe_again: Some(Box::new(Watched(crate::observe::HostWatch::new(
            crate::observe::ObserveOptions { host_root },
        )))),
    })
}

/// Apply's looks at the host, through a xenstore watch.
struct Watched(crate::observe::HostWatch);

impl crate::apply::Observer for Watched {
    fn whole(&mut self) -> Result<crate::observe::HostState, String> {
        self.0.whole().map_err(|error| error.to_string())
    }

    fn changes(&mut self, paths: &[String]) -> Result<Option<crate::observe::HostChanges>, String> {
        self.0.changes(paths).map_err(|error| error.to_string())
    }
}

/// Progress on a terminal: each line the executor writes becomes a line
/// above an indicatif bar, which advances by one step.
struct BarLines {
    bar: indicatif::ProgressBar,
    pending: Vec<u8>,
}

impl BarLines {
    fn new(steps: usize) -> BarLines {
        let bar = indicatif::ProgressBar::new(steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps, {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        BarLines {
            bar,
            pending: Vec::new(),
        }
    }
}

impl std::io::Write for BarLines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.bar.println(String::from_utf8_lossy(&line).trim_end());
            self.bar.inc(1);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BarLines {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
