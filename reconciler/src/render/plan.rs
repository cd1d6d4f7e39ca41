//! The plan for a person (grouped by resource, `+ ~ -`, step numbers, the
//! verdict) and for a program (a versioned JSON document).

use std::io::{self, Write};

use anstyle::{AnsiColor, Style};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::desired::Desired;
use crate::plan::{Op, Plan, Step};
use crate::safety::{Conflict, ConflictKind};

/// How to print a text plan.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextStyle {
    pub colour: bool,
    /// Show the extents new and grown vdisks will get.
    pub extents: bool,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub remove: usize,
}

pub fn summary(plan: &Plan) -> Summary {
    let mut summary = Summary::default();
    for step in &plan.steps {
        match step.op.symbol() {
            '+' => summary.add += 1,
            '~' => summary.change += 1,
            _ => summary.remove += 1,
        }
    }
    summary
}

pub fn text(plan: &Plan, style: TextStyle, out: &mut dyn Write) -> io::Result<()> {
    let paint = |symbol: char, text: String| -> String {
        if !style.colour {
            return text;
        }
        let colour = match symbol {
            '+' => AnsiColor::Green,
            '~' => AnsiColor::Yellow,
            _ => AnsiColor::Red,
        };
        let style = Style::new().fg_color(Some(colour.into()));
        format!("{style}{text}{style:#}")
    };
    // Grouped by resource, each group's steps in plan order (a stable sort).
    let mut grouped: Vec<&Step> = plan.steps.iter().collect();
    grouped.sort_by(|a, b| a.op.resource_key().cmp(&b.op.resource_key()));
    if plan.steps.is_empty() {
        writeln!(out, "No changes: the host matches the desired state.")?;
    }
    for steps in grouped.chunk_by(|a, b| a.op.resource_key() == b.op.resource_key()) {
        if let Some(first) = steps.first() {
            writeln!(out, "{}", first.op.resource())?;
        }
        for step in steps {
            let line = format!(
                "  [{}] {} {}",
                step.id,
                step.op.symbol(),
                describe(&step.op)
            );
            writeln!(out, "{}", paint(step.op.symbol(), line))?;
            if style.extents {
                extents(&step.op, out)?;
            }
        }
        writeln!(out)?;
    }
    for pending in &plan.pending {
        let disks = if pending.disks == 1 {
            "1 disk".to_owned()
        } else {
            format!("{} disks", pending.disks)
        };
        writeln!(
            out,
            "Pending: domain {} is not running ({disks} declared); nothing is planned for it.",
            pending.domain
        )?;
    }
    if !plan.pending.is_empty() {
        writeln!(out)?;
    }
    for note in &plan.notes {
        writeln!(out, "Note: {note}.")?;
    }
    if !plan.notes.is_empty() {
        writeln!(out)?;
    }
    let counts = summary(plan);
    writeln!(
        out,
        "Plan: {} to add, {} to change, {} to remove.",
        counts.add, counts.change, counts.remove
    )?;
    let level = plan.safety.level;
    if plan.safety.conflicts.is_empty() {
        writeln!(
            out,
            "Safety ({level}): no disk area is shared unsafely at any step ({} holders checked).",
            plan.safety.holders
        )?;
    }
    for holder in &plan.safety.unresolved {
        writeln!(
            out,
            "Warning: cannot tell which disk {holder} uses; no step may write a disk while it is there."
        )?;
    }
    for conflict in &plan.safety.existing {
        writeln!(
            out,
            "Warning: already shared now, and not changed by this plan: {}",
            conflict_text(conflict)
        )?;
    }
    if plan.is_refused() {
        writeln!(out, "\nRefused; nothing will be applied:")?;
        for refusal in &plan.refusals {
            writeln!(out, "  - {}", refusal.message)?;
        }
        for conflict in &plan.safety.conflicts {
            let kind = match conflict.kind {
                ConflictKind::Sharing => format!("unsafe sharing ({level})"),
                ConflictKind::Xendisk => "xendisk's own sectors".to_owned(),
                ConflictKind::Unresolved => "unresolved holder".to_owned(),
            };
            writeln!(out, "  - {kind}: {}", conflict_text(conflict))?;
        }
    }
    Ok(())
}

fn conflict_text(conflict: &Conflict) -> String {
    let when = match conflict.must_wait {
        Some((waiting, first)) => format!(
            "if step {waiting} runs before step {first} is done (apply may run them at once): \
             step {waiting} must wait for step {first}"
        ),
        None if conflict.from_step == 0 => "now".to_owned(),
        None => format!("from step {} on", conflict.from_step),
    };
    format!(
        "{} and {} both use {} {when}; {}",
        conflict.first, conflict.second, conflict.area, conflict.reason
    )
}

fn describe(op: &Op) -> String {
    let segments = |extents: &[crate::extent::SectorRange]| {
        let mut count = 0;
        let mut previous: Option<&crate::extent::SectorRange> = None;
        for extent in extents {
            if !previous.is_some_and(|p| p.device == extent.device && p.end() == extent.start) {
                count += 1;
            }
            previous = Some(extent);
        }
        count
    };
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("1 {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    match op {
        Op::AddPoolDevice {
            path,
            device,
            extent_size,
            extents,
            ..
        } => {
            format!(
                "add {path} ({device}): {} of {extent_size}",
                plural(*extents as usize, "extent")
            )
        }
        Op::RemovePoolDevice { path, device, .. } => {
            format!("remove {path} ({device}) from the pool")
        }
        Op::CreateVdisk {
            pool,
            size,
            expiry,
            extents,
            ..
        } => format!(
            "create in pool {pool}: {size} ({} in {}), expires {expiry}",
            plural(extents.len(), "extent"),
            plural(segments(extents), "segment")
        ),
        Op::GrowVdisk {
            from, to, extents, ..
        } => {
            format!("grow {from} -> {to} (+{})", plural(extents.len(), "extent"))
        }
        Op::SetExpiry { from, to, .. } => format!("set expiry {from} -> {to}"),
        Op::DeleteVdisk { pool, size, .. } => {
            format!("delete ({size} in pool {pool}; destroys its data)")
        }
        Op::Scrub {
            vdisk,
            released,
            extents,
            ..
        } => {
            let why = if *released && vdisk.is_empty() {
                "released by a run that stopped before scrubbing them".to_owned()
            } else if *released {
                format!("released by {vdisk}")
            } else {
                format!("before they go to {vdisk}")
            };
            format!("scrub {} ({why})", plural(extents.len(), "extent"))
        }
        Op::Realise { .. } => "realise as a block device".to_owned(),
        Op::Unrealise { .. } => "remove its block device".to_owned(),
        Op::Resize { .. } => "give its block device the new size, in place".to_owned(),
        Op::Attach {
            domid,
            vdev,
            source,
            mode,
            format,
            ..
        } => format!(
            "attach {vdev}: {source}{}, {mode} (domid {domid})",
            read_as(format.name())
        ),
        Op::Detach {
            domid,
            vdev,
            source,
            backend,
            closing,
            format,
            ..
        } => {
            let what = if *closing {
                "finish detaching"
            } else {
                "detach"
            };
            let under = if backend == "vbd" {
                String::new()
            } else {
                format!(", {backend} backend")
            };
            format!(
                "{what} {vdev}: {source}{} (domid {domid}{under})",
                read_as(format)
            )
        }
    }
}

/// ` as qcow2` after a source read in a format other than raw.
fn read_as(format: &str) -> String {
    if format == crate::desired::Format::Raw.name() {
        String::new()
    } else {
        format!(" as {format}")
    }
}

fn extents(op: &Op, out: &mut dyn Write) -> io::Result<()> {
    if let Op::CreateVdisk { extents, .. }
    | Op::GrowVdisk { extents, .. }
    | Op::Scrub { extents, .. } = op
    {
        for extent in extents {
            writeln!(out, "        extent {extent}")?;
        }
    }
    Ok(())
}

/// Version of the saved-plan document: 2 carries the desired state.
pub const PLAN_FORMAT_VERSION: u32 = 2;

/// What a plan was made from, which a saved plan carries so that apply can
/// make it again and refuse it unless it comes out the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Digest of the actual state (state DB and host) the plan was made from.
    pub fingerprint: String,
    /// The desired state it was planned for.
    pub desired: Desired,
    /// Whether it was made with `--allow-destroy`.
    pub allow_destroy: bool,
}

/// A saved plan: what `plan --json` prints and `plan -o` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "xendisk plan")]
pub struct SavedPlan {
    /// Version of this format.
    pub format_version: u32,
    #[serde(flatten)]
    pub made_from: Provenance,
    pub summary: Summary,
    /// Whether apply must refuse it.
    pub refused: bool,
    #[serde(flatten)]
    pub plan: Plan,
}

/// The plan as a saved-plan document.
pub fn json(plan: &Plan, made_from: &Provenance, out: &mut dyn Write) -> io::Result<()> {
    let document = SavedPlan {
        format_version: PLAN_FORMAT_VERSION,
        made_from: made_from.clone(),
        summary: summary(plan),
        refused: plan.is_refused(),
        plan: plan.clone(),
    };
    serde_json::to_writer_pretty(&mut *out, &document)?;
    writeln!(out)
}

/// A saved plan, read whole; why not, in one line.
pub fn read_saved(text: &str) -> Result<SavedPlan, String> {
    #[derive(serde::Deserialize)]
    struct Version {
        format_version: u32,
    }
    let version: Version = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if version.format_version != PLAN_FORMAT_VERSION {
        return Err(format!(
            "it has format version {}, and this xendisk applies version {}",
            version.format_version, PLAN_FORMAT_VERSION
        ));
    }
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// How a saved plan differs from the plan made again, if it does.
pub fn difference(saved: &SavedPlan, fresh: &Plan) -> Option<String> {
    if saved.plan == *fresh
        && saved.refused == fresh.is_refused()
        && saved.summary == summary(fresh)
    {
        return None;
    }
    let line = |step: Option<&Step>| {
        step.map_or_else(
            || "nothing".to_owned(),
            |s| format!("[{}] {} (after {:?})", s.id, step_line(s), s.depends_on),
        )
    };
    let count = saved.plan.steps.len().max(fresh.steps.len());
    for index in 0..count {
        let (old, new) = (saved.plan.steps.get(index), fresh.steps.get(index));
        if old != new {
            return Some(format!(
                "step {} is {} in the file but {} now",
                index + 1,
                line(old),
                line(new)
            ));
        }
    }
    if saved.plan.settings != fresh.settings {
        return Some("its settings differ from its desired state's".to_owned());
    }
    if saved.refused != fresh.is_refused() || saved.plan.refusals != fresh.refusals {
        return Some(format!(
            "the file says {}, and the plan now is {}",
            if saved.refused {
                "refused"
            } else {
                "not refused"
            },
            if fresh.is_refused() {
                "refused"
            } else {
                "not refused"
            }
        ));
    }
    Some("its safety report, pending domains or summary differ from the plan's now".to_owned())
}

/// The operations and their order as a Graphviz graph: one node a step,
/// an edge from each step to the steps that wait for it.
pub fn dot(plan: &Plan, out: &mut dyn Write) -> io::Result<()> {
    use petgraph::dot::{Config, Dot};
    use petgraph::graph::DiGraph;
    // Steps from which two holders would share an area unsafely: drawn red.
    let refused: std::collections::BTreeSet<usize> = plan
        .safety
        .conflicts
        .iter()
        .map(|conflict| conflict.from_step)
        .collect();
    let mut graph: DiGraph<(String, bool), ()> = DiGraph::new();
    let nodes: Vec<_> = plan
        .steps
        .iter()
        .map(|step| {
            let refused = refused.contains(&step.id);
            let label = format!(
                "[{}] {} {}: {}{}",
                step.id,
                step.op.symbol(),
                step.op.resource(),
                describe(&step.op),
                if refused {
                    " (refused: unsafe sharing)"
                } else {
                    ""
                }
            );
            graph.add_node((label, refused))
        })
        .collect();
    for step in &plan.steps {
        for dependency in &step.depends_on {
            graph.add_edge(nodes[dependency - 1], nodes[step.id - 1], ());
        }
    }
    let labelled = graph.map(|_, (label, _)| label.clone(), |_, ()| String::new());
    let node_style = |_, (index, _): (petgraph::graph::NodeIndex, &String)| {
        if graph[index].1 {
            "color = red, fontcolor = red".to_owned()
        } else {
            String::new()
        }
    };
    // Display, not Debug: a label is the step's text, not a quoted string.
    writeln!(
        out,
        "{}",
        Dot::with_attr_getters(
            &labelled,
            &[Config::EdgeNoLabel],
            &|_, _| String::new(),
            &node_style
        )
    )
}

/// One step on one line, for progress and the journal.
pub fn step_line(step: &Step) -> String {
    format!(
        "{} {}: {}",
        step.op.symbol(),
        step.op.resource(),
        describe(&step.op)
    )
}
