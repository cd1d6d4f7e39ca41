//! Planning: the operations that take the host from its actual state to the
//! desired one, in an order that never shares a disk unsafely.
//!
//! Pure: it gets the desired state, the state DB snapshot and the observed
//! host as values and returns a [`Plan`] value; it reads no file and asks no
//! daemon. The steps, each in its own module: `diff` finds the operations
//! (and the allocations new vdisks will get), `graph` orders them, and
//! [`crate::safety`] checks every intermediate state.

pub mod actual;
mod diff;
mod graph;
pub mod recheck;
mod resolve;

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::desired::{Desired, Expiry, Format, Mode, Size, Source};
use crate::extent::{DevNum, SectorRange};
use crate::observe::{HostState, ResolvedPath};
use crate::safety::{self, Dependencies, SafetyReport};
use crate::state::StateSnapshot;

pub use resolve::{Area, normalise};

/// What the planner is given.
pub struct PlanInput<'a> {
    pub desired: &'a Desired,
    pub state: &'a StateSnapshot,
    pub host: &'a HostState,
    /// The desired file's paths (`phy:` and `file:` sources, pool devices)
    /// resolved on the live host; empty when planning from a snapshot,
    /// where `/dev` names are looked up in the block device table and other
    /// paths are taken as files by their path.
    pub sources: &'a [ResolvedPath],
}

/// Choices the operator made on the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Allow operations that destroy data (deleting vdisks).
    pub allow_destroy: bool,
}

/// One operation of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Cut a device into extents of a pool.
    AddPoolDevice {
        pool: String,
        path: String,
        device: DevNum,
        extent_size: Size,
        extents: u64,
    },
    /// Take a device out of its pool.
    RemovePoolDevice {
        pool: String,
        path: String,
        device: DevNum,
    },
    /// Allocate a vdisk; `extents` are the ones it will get, in order.
    CreateVdisk {
        name: String,
        pool: String,
        size: Size,
        expiry: Expiry,
        extents: Vec<SectorRange>,
    },
    /// Add extents to a vdisk.
    GrowVdisk {
        name: String,
        from: Size,
        to: Size,
        extents: Vec<SectorRange>,
    },
    /// Change when a vdisk expires.
    SetExpiry {
        name: String,
        from: Expiry,
        to: Expiry,
    },
    /// Destroy a vdisk: its extents become free.
    DeleteVdisk {
        name: String,
        pool: String,
        size: Size,
    },
    /// Zero extents that hold a former owner's data: released by `vdisk`
    /// (`scrub = "on-release"`), or about to be given to it.
    Scrub {
        pool: String,
        vdisk: String,
        released: bool,
        extents: Vec<SectorRange>,
    },
    /// Make a vdisk's block device.
    Realise { vdisk: String },
    /// Remove a vdisk's block device.
    Unrealise { vdisk: String },
    /// Give a vdisk's block device its new length in place (after a grow,
    /// or when a grow's apply stopped before it): device-mapper loads the
    /// longer table, a loop device gets the new size limit.
    Resize { vdisk: String },
    /// Hand a source to a domain at a vdev.
    Attach {
        domain: String,
        domid: u32,
        vdev: String,
        devid: u32,
        source: Source,
        mode: Mode,
        /// The image format of a `file:` source; raw when absent.
        #[serde(default, skip_serializing_if = "Format::is_raw")]
        format: Format,
    },
    /// Take an attachment away from a domain.
    Detach {
        domain: String,
        domid: u32,
        vdev: String,
        devid: u32,
        source: String,
        /// The backend kind it is under: `vbd`, `qdisk` or `vbd3`.
        backend: String,
        /// The image format its backend reads (`qcow2`, ...); raw when absent.
        #[serde(default = "raw_name", skip_serializing_if = "is_raw_name")]
        format: String,
        /// Already being torn down: this finishes the detach.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        closing: bool,
    },
}

fn raw_name() -> String {
    Format::Raw.to_string()
}

fn is_raw_name(format: &str) -> bool {
    format == Format::Raw.name()
}

impl Op {
    /// `+` creates, `~` changes, `-` removes.
    pub fn symbol(&self) -> char {
        match self {
            Op::AddPoolDevice { .. }
            | Op::CreateVdisk { .. }
            | Op::Realise { .. }
            | Op::Attach { .. } => '+',
            Op::GrowVdisk { .. } | Op::SetExpiry { .. } | Op::Scrub { .. } | Op::Resize { .. } => {
                '~'
            }
            Op::RemovePoolDevice { .. }
            | Op::DeleteVdisk { .. }
            | Op::Unrealise { .. }
            | Op::Detach { .. } => '-',
        }
    }

    /// The resource it acts on, which groups the text plan.
    pub fn resource(&self) -> Resource {
        let (kind, name) = self.resource_key();
        let name = name.to_owned();
        match kind {
            ResourceKind::Pool => Resource::Pool(name),
            ResourceKind::Vdisk => Resource::Vdisk(name),
            ResourceKind::Domain => Resource::Domain(name),
        }
    }

    /// [`Op::resource`] borrowed, ordered as [`Resource`] is: for grouping
    /// hundreds of thousands of steps without a string for each.
    pub fn resource_key(&self) -> (ResourceKind, &str) {
        match self {
            Op::AddPoolDevice { pool, .. }
            | Op::RemovePoolDevice { pool, .. }
            | Op::Scrub { pool, .. } => (ResourceKind::Pool, pool),
            Op::CreateVdisk { name, .. }
            | Op::GrowVdisk { name, .. }
            | Op::SetExpiry { name, .. }
            | Op::DeleteVdisk { name, .. }
            | Op::Realise { vdisk: name }
            | Op::Unrealise { vdisk: name }
            | Op::Resize { vdisk: name } => (ResourceKind::Vdisk, name),
            Op::Attach { domain, .. } | Op::Detach { domain, .. } => (ResourceKind::Domain, domain),
        }
    }
}

/// The kinds of [`Resource`], in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    Pool,
    Vdisk,
    Domain,
}

/// What the text plan groups operations by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Pool(String),
    Vdisk(String),
    Domain(String),
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Pool(name) => write!(f, "pool {name}"),
            Resource::Vdisk(name) => write!(f, "vdisk {name}"),
            Resource::Domain(name) => write!(f, "domain {name}"),
        }
    }
}

/// An operation with its place in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Step {
    /// 1-based, in execution order.
    pub id: usize,
    #[serde(flatten)]
    pub op: Op,
    /// Steps that must be done first.
    pub depends_on: Vec<usize>,
    /// Those of them that keep two holders of one disk apart: this step
    /// would share a disk unsafely with something they remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waits_for_sharing: Vec<usize>,
}

/// A declared domain that is not running: nothing is planned for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Pending {
    pub domain: String,
    pub disks: usize,
}

/// Why a plan cannot be applied as it stands (exit code 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Refusal {
    /// Short kind: `destroy`, `prevent-destroy`, `shrink`, `pool-device-in-use`, ...
    pub kind: String,
    pub message: String,
}

/// The plan: steps in order, what was left pending, and the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    /// The desired file's settings, which say how apply carries it out.
    pub settings: crate::desired::Settings,
    pub steps: Vec<Step>,
    pub pending: Vec<Pending>,
    pub refusals: Vec<Refusal>,
    /// What is left alone on purpose, said once: libxl's temporary
    /// Domain-0 attaches for bootloaders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub safety: SafetyReport,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether apply may carry it out.
    pub fn is_refused(&self) -> bool {
        !self.refusals.is_empty() || !self.safety.conflicts.is_empty()
    }
}

/// Why no plan could be made at all (exit code 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "pool device {path} of pool `{pool}` is not a block device on this host; check the path"
    )]
    UnknownPoolDevice { pool: String, path: String },
    #[error(
        "{source_text} of domain `{domain}` ({vdev}) is not a block device on this host; check the path"
    )]
    UnknownPhy {
        domain: String,
        vdev: String,
        source_text: String,
    },
    #[error(
        "pool `{pool}` has extents of {existing} in the state DB but the file says {declared}; \
         the extent size of a pool with devices cannot change"
    )]
    ExtentSizeChanged {
        pool: String,
        existing: Size,
        declared: Size,
    },
    #[error(
        "pool `{pool}` has {free} free but vdisk `{vdisk}` needs {needed} more; add devices to the pool"
    )]
    PoolShort {
        pool: String,
        vdisk: String,
        needed: Size,
        free: Size,
    },
    #[error("the operations depend on each other in a cycle: {0}")]
    Cycle(String),
}

/// How long each stage of planning took, for the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub diff: std::time::Duration,
    pub graph: std::time::Duration,
    pub safety: std::time::Duration,
}

/// Makes the plan.
pub fn plan(input: &PlanInput<'_>, options: PlanOptions) -> Result<Plan, PlanError> {
    plan_timed(input, options, &|| std::time::Duration::ZERO).map(|(plan, _)| plan)
}

/// Makes the plan and says how long each stage took by `clock` (the
/// benchmark's: the thread's CPU time, which other work on the machine
/// does not inflate).
pub fn plan_timed(
    input: &PlanInput<'_>,
    options: PlanOptions,
    clock: &dyn Fn() -> std::time::Duration,
) -> Result<(Plan, Timings), PlanError> {
    let started = clock();
    let mut diff = diff::diff(input, options)?;
    let level = input.desired.settings.sharing;
    let diffed = clock();
    // Every pair of holders that must not meet gets a dependency path: an
    // edge, unless the operations' own dependencies make one already.
    let clashes = safety::clashes(&diff.holders, level);
    let candidates = safety::ordering_edges_of(&diff.holders, &clashes);
    let order = graph::order(&diff.ops, &diff.edges)?;
    let step_of = positions(&order);
    let as_steps: Vec<(usize, usize)> = candidates
        .iter()
        .map(|&(from, to)| (step_of[from], step_of[to]))
        .collect();
    let sharing_edges: Vec<(usize, usize)> =
        safety::not_implied(&as_steps, &dependencies(&diff.edges, &step_of))
            .into_iter()
            .map(|i| candidates[i])
            .collect();
    diff.edges.extend(sharing_edges.iter().copied());
    let order = if sharing_edges.is_empty() {
        order
    } else {
        graph::order(&diff.ops, &diff.edges)?
    };
    let step_of = positions(&order);
    let mut depends_on: Vec<Vec<usize>> = vec![Vec::new(); diff.ops.len()];
    for &(from, to) in &diff.edges {
        depends_on[to].push(step_of[from]);
    }
    let mut for_sharing: Vec<Vec<usize>> = vec![Vec::new(); diff.ops.len()];
    for &(from, to) in &sharing_edges {
        for_sharing[to].push(step_of[from]);
    }
    // Moved, not cloned, into the steps: a teardown has hundreds of
    // thousands, some with every extent of a vdisk.
    let mut ops: Vec<Option<Op>> = diff.ops.into_iter().map(Some).collect();
    let steps: Vec<Step> = order
        .iter()
        .enumerate()
        .filter_map(|(position, &index)| {
            let mut depends_on = std::mem::take(&mut depends_on[index]);
            depends_on.sort_unstable();
            depends_on.dedup();
            let mut waits_for_sharing = std::mem::take(&mut for_sharing[index]);
            waits_for_sharing.sort_unstable();
            waits_for_sharing.dedup();
            Some(Step {
                id: position + 1,
                op: ops[index].take()?,
                depends_on,
                waits_for_sharing,
            })
        })
        .collect();
    let ordered = clock();
    // The check sees steps as apply does: ids and their dependencies only.
    let holders: Vec<safety::Holder> = diff
        .holders
        .into_iter()
        .map(|holder| safety::Holder {
            added_by: holder.added_by.map(|op| step_of[op]),
            removed_by: holder.removed_by.map(|op| step_of[op]),
            ..holder
        })
        .collect();
    let dependencies = Dependencies::new(steps.iter().map(|s| s.depends_on.clone()).collect());
    let safety = safety::check_clashes(&holders, clashes, &dependencies, level);
    let checked = clock();
    let timings = Timings {
        diff: diffed - started,
        graph: ordered - diffed,
        safety: checked - ordered,
    };
    Ok((
        Plan {
            settings: input.desired.settings.clone(),
            steps,
            pending: diff.pending,
            refusals: diff.refusals,
            notes: diff.notes,
            safety,
        },
        timings,
    ))
}

/// Each operation's step id (1-based) in `order`.
fn positions(order: &[usize]) -> Vec<usize> {
    let mut step_of = vec![0; order.len()];
    for (position, &index) in order.iter().enumerate() {
        step_of[index] = position + 1;
    }
    step_of
}

/// The dependencies of the steps numbered by `step_of`.
fn dependencies(edges: &[(usize, usize)], step_of: &[usize]) -> Dependencies {
    let mut waits_for = vec![Vec::new(); step_of.len()];
    for &(from, to) in edges {
        waits_for[step_of[to] - 1].push(step_of[from]);
    }
    Dependencies::new(waits_for)
}

/// A digest of the actual state a plan starts from: apply compares it with
/// the host's, to refuse a plan made for a host that has changed since.
pub fn fingerprint(state: &StateSnapshot, host: &HostState) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(state).expect("the state serialises"));
    hasher.update(serde_json::to_vec(host).expect("the host serialises"));
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_keys_order_as_resources_do() {
        let ops = [
            Op::Realise { vdisk: "b".into() },
            Op::Scrub {
                pool: "z".into(),
                vdisk: "a".into(),
                released: true,
                extents: Vec::new(),
            },
            Op::Realise { vdisk: "a".into() },
            Op::Realise { vdisk: "ab".into() },
            Op::Detach {
                domain: "a".into(),
                domid: 1,
                vdev: "xvda".into(),
                devid: 51712,
                source: "phy:/dev/sdb".into(),
                backend: "vbd".into(),
                format: "raw".into(),
                closing: false,
            },
        ];
        for x in &ops {
            for y in &ops {
                assert_eq!(
                    x.resource_key().cmp(&y.resource_key()),
                    x.resource().cmp(&y.resource()),
                    "{x:?} {y:?}"
                );
            }
        }
    }
}
