//! Ordering operations: a petgraph graph of "must happen before" edges,
//! walked in topological order with a fixed tie-break (phase, then the
//! resource's name), so the same input always gives the same plan.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use super::{Op, PlanError};

/// Phases, in the order they naturally run: what frees disks first, then
/// what builds, then what hands disks out.
fn phase(op: &Op) -> u8 {
    match op {
        Op::Detach { .. } => 0,
        Op::Unrealise { .. } => 1,
        Op::DeleteVdisk { .. } => 2,
        Op::Scrub { .. } => 3,
        Op::RemovePoolDevice { .. } => 3,
        Op::AddPoolDevice { .. } => 4,
        Op::CreateVdisk { .. } => 5,
        Op::GrowVdisk { .. } => 6,
        Op::SetExpiry { .. } => 7,
        Op::Resize { .. } => 8,
        Op::Realise { .. } => 8,
        Op::Attach { .. } => 9,
    }
}

type TieKey<'a> = (&'a str, &'a str, u32);

/// The order among operations of one phase: by pool, vdisk or domain name,
/// then by path or vdisk (pool operations) or device id (attachments).
/// Borrowed, not formatted, since a plan may have hundreds of thousands.
fn tie_key(op: &Op) -> TieKey<'_> {
    match op {
        Op::AddPoolDevice { pool, path, .. } | Op::RemovePoolDevice { pool, path, .. } => {
            (pool, path, 0)
        }
        Op::Scrub { pool, vdisk, .. } => (pool, vdisk, 0),
        Op::CreateVdisk { name, .. }
        | Op::GrowVdisk { name, .. }
        | Op::SetExpiry { name, .. }
        | Op::DeleteVdisk { name, .. }
        | Op::Realise { vdisk: name }
        | Op::Unrealise { vdisk: name }
        | Op::Resize { vdisk: name } => (name, "", 0),
        Op::Attach { domain, devid, .. } | Op::Detach { domain, devid, .. } => (domain, "", *devid),
    }
}

/// The operation as a cycle error names it.
fn tie_break(op: &Op) -> String {
    match op {
        Op::AddPoolDevice { pool, path, .. } | Op::RemovePoolDevice { pool, path, .. } => {
            format!("{pool}\0{path}")
        }
        Op::Scrub { pool, vdisk, .. } => format!("{pool}\0{vdisk}"),
        Op::CreateVdisk { name, .. }
        | Op::GrowVdisk { name, .. }
        | Op::SetExpiry { name, .. }
        | Op::DeleteVdisk { name, .. }
        | Op::Realise { vdisk: name }
        | Op::Unrealise { vdisk: name }
        | Op::Resize { vdisk: name } => name.clone(),
        Op::Attach { domain, devid, .. } | Op::Detach { domain, devid, .. } => {
            format!("{domain}\0{devid:010}")
        }
    }
}

/// The operations' indices in execution order; an error naming the
/// operations of a cycle if there is one.
pub(super) fn order(ops: &[Op], edges: &[(usize, usize)]) -> Result<Vec<usize>, PlanError> {
    let mut graph: DiGraph<usize, ()> = DiGraph::with_capacity(ops.len(), edges.len());
    let nodes: Vec<NodeIndex> = (0..ops.len()).map(|i| graph.add_node(i)).collect();
    for &(from, to) in edges {
        graph.update_edge(nodes[from], nodes[to], ());
    }
    // Each operation's rank in (phase, tie key, index) order, sorted once:
    // the ready set then compares numbers, not names, at every step.
    let keys: Vec<(u8, TieKey<'_>)> = ops.iter().map(|op| (phase(op), tie_key(op))).collect();
    let mut by_key: Vec<usize> = (0..ops.len()).collect();
    by_key.sort_by_key(|&i| (&keys[i], i));
    let mut rank = vec![0; ops.len()];
    for (position, &index) in by_key.iter().enumerate() {
        rank[index] = position;
    }
    let mut waiting: Vec<usize> = nodes
        .iter()
        .map(|n| {
            graph
                .neighbors_directed(*n, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> = (0..ops.len())
        .filter(|i| waiting[*i] == 0)
        .map(|i| Reverse(rank[i]))
        .collect();
    let mut order = Vec::with_capacity(ops.len());
    while let Some(Reverse(ranked)) = ready.pop() {
        let index = by_key[ranked];
        order.push(index);
        for next in graph.neighbors_directed(nodes[index], petgraph::Direction::Outgoing) {
            let next = graph[next];
            waiting[next] -= 1;
            if waiting[next] == 0 {
                ready.push(Reverse(rank[next]));
            }
        }
    }
    if order.len() == ops.len() {
        return Ok(order);
    }
    let cycle = tarjan_scc(&graph)
        .into_iter()
        .find(|component| component.len() > 1)
        .unwrap_or_default()
        .into_iter()
        .map(|node| describe(&ops[graph[node]]))
        .collect::<Vec<_>>();
    Err(PlanError::Cycle(cycle.join(" -> ")))
}

fn describe(op: &Op) -> String {
    format!("{} {}", op.symbol(), tie_break(op).replace('\0', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realise(name: &str) -> Op {
        Op::Realise { vdisk: name.into() }
    }

    #[test]
    fn edges_win_over_phases_and_names_break_ties() {
        let ops = [
            realise("b"),
            realise("a"),
            Op::Unrealise { vdisk: "c".into() },
        ];
        assert_eq!(order(&ops, &[]).unwrap(), [2, 1, 0]);
        assert_eq!(order(&ops, &[(0, 2)]).unwrap(), [1, 0, 2]);
    }

    #[test]
    fn a_cycle_names_its_members() {
        let ops = [realise("a"), realise("b"), realise("c")];
        let error = order(&ops, &[(0, 1), (1, 0)]).unwrap_err();
        let PlanError::Cycle(members) = error else {
            panic!()
        };
        assert!(
            members.contains("+ a") && members.contains("+ b") && !members.contains("+ c"),
            "{members}"
        );
    }
}
