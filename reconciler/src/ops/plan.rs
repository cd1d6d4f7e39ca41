//! `plan`, `graph`, `diff` and `generate`: the commands that compare the
//! desired state with the actual one.

use std::path::PathBuf;

use super::state_db::{ThisHost, checked_state};
use super::{Console, Exit};
use crate::desired::{self, Desired, LoadError};
use crate::observe::{self, HostState};
use crate::render;
use crate::render::plan::Provenance;
use crate::state::StateSnapshot;

/// Where the actual state comes from.
#[derive(Debug, Clone)]
pub struct ActualSource {
    pub state: PathBuf,
    /// A snapshot instead of the live host.
    pub snapshot: Option<PathBuf>,
    pub host_root: PathBuf,
    /// The operator's word that xendisk has never managed the host: a
    /// missing state DB is then an empty state (`--new-host`).
    pub new_host: bool,
    pub now: jiff::Timestamp,
}

/// The state DB and the host, after the checks of [`super::state_db`];
/// `Err(exit)` once it has said why they cannot be planned from.
pub(super) fn actual(
    source: &ActualSource,
    console: &mut Console<'_>,
) -> anyhow::Result<Result<(StateSnapshot, HostState), Exit>> {
    let (host, this) = match &source.snapshot {
        Some(path) => {
            let snapshot = observe::snapshot::load_snapshot(path)?;
            let this = ThisHost::Snapshot {
                file: path.clone(),
                machine_id: snapshot.machine_id,
            };
            (snapshot.host, this)
        }
        None => {
            let host = observe::observe(&observe::ObserveOptions {
                host_root: source.host_root.clone(),
            })?;
            (host, ThisHost::Live(source.host_root.clone()))
        }
    };
    let state = checked_state(
        &source.state,
        source.new_host,
        &this,
        &host,
        source.now,
        console,
    )?;
    Ok(state.map(|state| (state, host)))
}

/// The desired file's paths resolved on the live host; none offline (a
/// snapshot is another machine: its `/dev` names are looked up in its block
/// device table, other paths taken as files).
pub(super) fn desired_sources(
    desired: &Desired,
    source: &ActualSource,
    host: &HostState,
) -> Vec<observe::ResolvedPath> {
    if source.snapshot.is_some() {
        return Vec::new();
    }
    let paths = desired
        .paths()
        .into_iter()
        .map(|p| crate::plan::normalise(&p));
    observe::resolve_paths(&source.host_root, paths, &host.block_devices)
}

/// Loads a desired-state file, checking sizes against the pools the state
/// DB knows; `None` after printing its problems.
pub(super) fn load_desired(
    file: &std::path::Path,
    state: &StateSnapshot,
    console: &mut Console<'_>,
) -> anyhow::Result<Option<Desired>> {
    match desired::load(file, &super::capacities(state)) {
        Ok(desired) => Ok(Some(desired)),
        Err(LoadError::Invalid(problems)) => {
            console
                .err
                .write_all(problems.render(console.colour).as_bytes())?;
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// `xendisk plan FILE`
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub file: PathBuf,
    pub actual: ActualSource,
    pub allow_destroy: bool,
    pub json: bool,
    /// Also save the plan as JSON here.
    pub output: Option<PathBuf>,
    pub show_extents: bool,
    pub colour: bool,
}

/// Makes the plan, or prints why not; `Err(exit)` carries the exit code.
fn make_plan(
    file: &std::path::Path,
    actual_source: &ActualSource,
    allow_destroy: bool,
    console: &mut Console<'_>,
) -> anyhow::Result<Result<(crate::plan::Plan, Provenance), Exit>> {
    let (state, host) = match actual(actual_source, console)? {
        Ok(actual) => actual,
        Err(exit) => return Ok(Err(exit)),
    };
    warn_unconnected(&host, console)?;
    let Some(desired) = load_desired(file, &state, console)? else {
        return Ok(Err(Exit::Error));
    };
    let plan = plan_for(&desired, (&state, &host), actual_source, allow_destroy)?;
    let made_from = Provenance {
        fingerprint: crate::plan::fingerprint(&state, &host),
        desired,
        allow_destroy,
    };
    Ok(Ok((plan, made_from)))
}

/// Warns of each attachment that a backend driver took up but that never
/// connected (InitWait or Initialised): it is attached (and counts as a
/// holder) but its guest cannot use it. xendisk, like libxl, does not wait
/// for the guest's side at attach: a guest without blkfront never connects.
/// One still Initialising is left alone: no driver has looked at it (a
/// simulated host without drivers, or one being made right now).
fn warn_unconnected(host: &HostState, console: &mut Console<'_>) -> std::io::Result<()> {
    for attachment in &host.attachments {
        let meaning = match attachment.state {
            Some(2) => {
                "2, InitWait: the guest has not connected (no blkfront?), or the hotplug \
                        step gave blkback no device (see its hotplug-status and hotplug-error)"
            }
            Some(3) => "3, Initialised: blkback has not connected to the guest",
            _ => continue,
        };
        if attachment.is_closing() {
            continue;
        }
        // Domains are observed in domid order.
        let domain = host
            .domains
            .binary_search_by_key(&attachment.domid, |d| d.domid)
            .map_or(String::new(), |i| format!("{} ", host.domains[i].name));
        let vdev = attachment
            .vdev
            .clone()
            .unwrap_or_else(|| attachment.devid.to_string());
        writeln!(
            console.err,
            "warning: {vdev} of domain {domain}({}) ({}) is attached but not connected: its \
             backend is in state {meaning}",
            attachment.domid, attachment.params
        )?;
    }
    Ok(())
}

/// The plan for a desired state against the actual one.
pub(super) fn plan_for(
    desired: &Desired,
    (state, host): (&StateSnapshot, &HostState),
    actual_source: &ActualSource,
    allow_destroy: bool,
) -> anyhow::Result<crate::plan::Plan> {
    let sources = desired_sources(desired, actual_source, host);
    let input = crate::plan::PlanInput {
        desired,
        state,
        host,
        sources: &sources,
    };
    Ok(crate::plan::plan(
        &input,
        crate::plan::PlanOptions { allow_destroy },
    )?)
}

/// Plans and prints; exit 0 for no changes, 2 for changes, 3 when refused.
pub fn plan(options: &PlanOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    let (plan, made_from) = match make_plan(
        &options.file,
        &options.actual,
        options.allow_destroy,
        console,
    )? {
        Ok(made) => made,
        Err(exit) => return Ok(exit),
    };
    if options.json {
        render::plan::json(&plan, &made_from, console.out)?;
    } else {
        let style = render::plan::TextStyle {
            colour: options.colour,
            extents: options.show_extents,
        };
        render::plan::text(&plan, style, console.out)?;
    }
    if let Some(path) = &options.output {
        let mut text = Vec::new();
        render::plan::json(&plan, &made_from, &mut text)?;
        super::write_whole(path, &text)?;
    }
    Ok(verdict(&plan))
}

/// `xendisk graph FILE`
#[derive(Debug, Clone)]
pub struct GraphOptions {
    pub file: PathBuf,
    pub actual: ActualSource,
    pub allow_destroy: bool,
}

/// Prints the plan's operations and their order as Graphviz DOT, steps
/// from which the plan would share an area unsafely in red; exits as
/// `plan` does.
pub fn graph(options: &GraphOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    let (plan, _) = match make_plan(
        &options.file,
        &options.actual,
        options.allow_destroy,
        console,
    )? {
        Ok(made) => made,
        Err(exit) => return Ok(exit),
    };
    render::plan::dot(&plan, console.out)?;
    Ok(verdict(&plan))
}

/// How `plan` and `graph` exit: 3 refused, 0 nothing to do, 2 changes.
fn verdict(plan: &crate::plan::Plan) -> Exit {
    if plan.is_refused() {
        Exit::Refused
    } else if plan.is_empty() {
        Exit::Success
    } else {
        Exit::Changes
    }
}

/// `xendisk generate`
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub actual: ActualSource,
    pub output: Option<PathBuf>,
}

/// Writes the actual state as a desired-state file.
pub fn generate(options: &GenerateOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    let (state, host) = match actual(&options.actual, console)? {
        Ok(actual) => actual,
        Err(exit) => return Ok(exit),
    };
    let generated = crate::generate::generate(&state, &host);
    for skipped in &generated.skipped {
        writeln!(console.err, "warning: left out {skipped}")?;
    }
    let header = format!("Written by `xendisk generate` at {}.", options.actual.now);
    let text = crate::generate::to_toml(&generated.desired, &header);
    match &options.output {
        None => console.out.write_all(text.as_bytes())?,
        Some(path) => super::write_whole(path, text.as_bytes())?,
    }
    Ok(Exit::Success)
}

/// `xendisk diff FILE`
#[derive(Debug, Clone)]
pub struct DiffOptions {
    pub file: PathBuf,
    pub actual: ActualSource,
}

/// A unified diff from the actual state to the file, both written the way
/// `generate` writes them, and limited to the domains the file manages.
/// Exit 0 when they agree, 2 when they differ.
pub fn diff(options: &DiffOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    let (state, host) = match actual(&options.actual, console)? {
        Ok(actual) => actual,
        Err(exit) => return Ok(exit),
    };
    let Some(desired) = load_desired(&options.file, &state, console)? else {
        return Ok(Exit::Error);
    };
    let mut actual_desired = crate::generate::generate(&state, &host).desired;
    // Settings, scrub policies and destroy protection are configuration the
    // host does not record: take them from the file, so only state differs.
    actual_desired.settings = desired.settings.clone();
    for (name, pool) in &mut actual_desired.pools {
        if let Some(declared) = desired.pools.get(name) {
            pool.scrub = declared.scrub;
        }
    }
    for (name, vdisk) in &mut actual_desired.vdisks {
        if let Some(declared) = desired.vdisks.get(name) {
            vdisk.prevent_destroy = declared.prevent_destroy;
        }
    }
    actual_desired
        .domains
        .retain(|name, _| desired.domains.contains_key(name));
    let running: std::collections::HashSet<&str> =
        host.domains.iter().map(|d| d.name.as_str()).collect();
    for (name, domain) in &desired.domains {
        if running.contains(name.as_str()) {
            actual_desired.domains.entry(name.clone()).or_default();
        } else {
            // Not running: nothing to compare it with; show it unchanged.
            actual_desired.domains.insert(name.clone(), domain.clone());
        }
    }
    let header = "normalised";
    let before = crate::generate::to_toml(&actual_desired, header);
    let after = crate::generate::to_toml(&desired, header);
    if before == after {
        writeln!(
            console.out,
            "No differences: the host matches {}.",
            options.file.display()
        )?;
        return Ok(Exit::Success);
    }
    let diff = similar::TextDiff::from_lines(&before, &after);
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header("actual", &options.file.display().to_string())
        .to_string();
    console.out.write_all(text.as_bytes())?;
    Ok(Exit::Changes)
}
