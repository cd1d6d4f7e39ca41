//! A modification a client asks of the store (`Op`): who may make it, what
//! it touches (for transactions' conflicts) and the change it makes (for
//! watches, simulated guests and drivers).

use super::perms::{self, Access};
use super::server::is_under;
use super::store::{Errno, Store};

/// A modification a client asked for.
#[derive(Debug, Clone)]
pub(super) enum Op {
    Write(String, Vec<u8>),
    Mkdir(String),
    Rm(String),
    SetPerms(String, Vec<String>),
}

impl Op {
    /// What `domid` may do of it on `store`: refused as xenstored refuses
    /// it, else the operation and, for a guest, the ownership of the nodes
    /// it makes ("domains own what they create").
    pub(super) fn as_done_by(&self, store: &Store, domid: u32) -> Result<Vec<Op>, Errno> {
        match self {
            Op::Rm(path) => perms::check(store, path, domid, Access::Write)?,
            Op::SetPerms(path, new) => {
                let current = store.get_perms(path)?;
                if domid != 0 {
                    if perms::owner(current) != Some(domid) {
                        return Err(Errno::Eacces);
                    }
                    // A guest cannot give its node away.
                    if perms::owner(new) != Some(domid) {
                        return Err(Errno::Eperm);
                    }
                }
            }
            Op::Write(path, _) | Op::Mkdir(path) => perms::check_write(store, path, domid)?,
        }
        let mut ops = vec![self.clone()];
        if let (Op::Write(path, _) | Op::Mkdir(path), true) = (self, domid != 0) {
            let mut made = Vec::new();
            let mut at = path.as_str();
            while !store.exists(at) {
                made.push(at.to_owned());
                at = parent(at);
            }
            let inherited = store.get_perms(at)?.to_vec();
            for node in made.into_iter().rev() {
                let mut owned = inherited.clone();
                if let Some(first) = owned.first_mut() {
                    let letter = first.chars().next().unwrap_or('n');
                    *first = format!("{letter}{domid}");
                }
                ops.push(Op::SetPerms(node, owned));
            }
        }
        Ok(ops)
    }

    pub(super) fn apply(&self, store: &mut Store) -> Result<(), Errno> {
        match self {
            Op::Write(path, value) => store.write(path, value),
            Op::Mkdir(path) => store.mkdir(path).map(|_| ()),
            Op::Rm(path) => store.rm(path).map(|_| ()),
            Op::SetPerms(path, perms) => store.set_perms(path, perms.clone()),
        }
    }

    /// What it touches when applied to `store`.
    pub(super) fn touches(&self, store: &Store) -> Vec<Touched> {
        match self {
            Op::Rm(path) => touched_by_removal(path),
            Op::Write(path, _) | Op::Mkdir(path) | Op::SetPerms(path, _) => {
                touched_by_write(store, path)
            }
        }
    }

    pub(super) fn change(&self) -> Change {
        match self {
            Op::Rm(path) => Change::at(path, true),
            Op::Write(path, _) | Op::Mkdir(path) | Op::SetPerms(path, _) => Change::at(path, false),
        }
    }
}

/// A node a change touched or a transaction accessed; `subtree` when
/// everything below it counts too (a removal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Touched {
    pub(super) path: String,
    pub(super) subtree: bool,
}

impl Touched {
    pub(super) fn node(path: &str) -> Touched {
        Touched {
            path: path.to_owned(),
            subtree: false,
        }
    }

    pub(super) fn meets(&self, other: &Touched) -> bool {
        self.path == other.path
            || (self.subtree && is_under(&other.path, &self.path))
            || (other.subtree && is_under(&self.path, &other.path))
    }
}

/// The parent of a path (`/` for a top-level node).
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// What writing `path` in `store` touches: the node, the nodes it creates,
/// and the node that gains the first of them as a child.
fn touched_by_write(store: &Store, path: &str) -> Vec<Touched> {
    let mut touched = vec![Touched::node(path)];
    let mut above = path;
    while !store.exists(above) && above != "/" {
        above = parent(above);
        touched.push(Touched::node(above));
    }
    touched
}

/// What removing `path` touches: it, all below it, and its parent.
fn touched_by_removal(path: &str) -> Vec<Touched> {
    vec![
        Touched {
            path: path.to_owned(),
            subtree: true,
        },
        Touched::node(parent(path)),
    ]
}

/// A committed modification, for watches and simulated guests.
#[derive(Debug, Clone)]
pub(super) struct Change {
    pub(super) path: String,
    pub(super) removed: bool,
}

impl Change {
    pub(super) fn at(path: &str, removed: bool) -> Change {
        Change {
            path: path.to_owned(),
            removed,
        }
    }
}
