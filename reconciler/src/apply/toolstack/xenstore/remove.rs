//! Taking a disk's nodes away: libxl's `libxl__device_destroy` and
//! `libxl__xs_path_cleanup`, each removal a request of its own, and the
//! directories an attach stopped halfway left empty.

use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

use super::{XenstoreToolstack, libxl_path};
use crate::apply::toolstack::{backend_path, frontend_path};
use crate::xs_client::{Change, XsError};

/// Taken while a detach removes a directory it left empty: one lock for
/// the paths that hash alike, so that detaches emptying different guests'
/// directories do not wait for each other.
static CLEANUP: [Mutex<()>; 16] = [const { Mutex::new(()) }; 16];

/// This process's turn to remove `path`.
fn turn(path: &str) -> MutexGuard<'static, ()> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    let stripe = (hasher.finish() % CLEANUP.len() as u64) as usize;
    CLEANUP[stripe]
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl XenstoreToolstack {
    /// libxl's `libxl__device_destroy`: the frontend (unless it now names
    /// another backend), libxl's record and the backend, each with the
    /// directories above it that are left empty.
    ///
    /// libxl removes them in one transaction; here each removal is a
    /// request of its own (atomic by itself), because removing a directory
    /// changes its parent's list of children: in a transaction, every
    /// detach from the same guest running at once would conflict with the
    /// others at commit (EAGAIN) and start again. Only a parent that looks
    /// empty is then removed in a transaction, which an attach adding a
    /// child meanwhile makes fail and look again.
    pub(super) fn destroy(&mut self, kind: &str, domid: u32, devid: u32) -> Result<(), XsError> {
        let backend = backend_path(kind, domid, devid);
        let frontend = frontend_path(domid, devid);
        let record = libxl_path(domid, devid);
        let owners = [format!("{frontend}/backend"), format!("{record}/backend")];
        let [owner, recorded]: [Option<String>; 2] = self
            .client
            .read_many(0, &owners)?
            .try_into()
            .unwrap_or_default();
        let mut gone = Vec::new();
        if owner.is_none_or(|owner| owner == backend) {
            gone.push(frontend);
        }
        if recorded.is_none_or(|recorded| recorded == backend) {
            gone.push(record);
        }
        gone.push(backend);
        let removals: Vec<Change> = gone.iter().cloned().map(Change::Rm).collect();
        self.client.change_many(0, &removals)?;
        for path in &gone {
            if let Some((parent, _)) = path.rsplit_once('/') {
                self.remove_empty_upwards(parent)?;
            }
        }
        Ok(())
    }

    /// libxl's `libxl__xs_path_cleanup` from `path` up: it and each parent
    /// that is left an empty directory with an empty value go.
    pub(super) fn remove_empty_upwards(&mut self, path: &str) -> Result<(), XsError> {
        let mut at = path;
        while !at.is_empty() && at != "/" {
            // A look outside a transaction first: the parent of a guest's
            // disk usually has other children, and a transaction here
            // would conflict with every other detach from that guest.
            if !self.looks_empty(at)? {
                break;
            }
            // One at a time in this process for this path, and a second
            // look once it is this one's turn: the detaches that empty a
            // directory together would otherwise each find it empty and
            // try to remove it, and all but one would fail at commit and
            // try again.
            let _turn = turn(at);
            if !self.looks_empty(at)? {
                break;
            }
            let removed = self
                .client
                .transaction("remove empty directory", |client, tx| {
                    let empty_value = client.read(tx, at)?.is_some_and(|v| v.is_empty());
                    let no_children = client.directory(tx, at)?.is_some_and(|c| c.is_empty());
                    if empty_value && no_children {
                        client.rm(tx, at)?;
                    }
                    Ok(empty_value && no_children)
                })?;
            if !removed {
                break;
            }
            at = at.rsplit_once('/').map_or("", |(above, _)| above);
        }
        Ok(())
    }

    /// Takes away the empty directories an attach of `devid` of `domid`
    /// left when it was stopped between making them and filling them (see
    /// the attach in `xenstore.rs`): nothing else makes an empty device
    /// directory, no plan sees one, and `xl block-list` would list the
    /// empty record as a disk. What was filled is left alone.
    pub fn tidy_interrupted_attach(&mut self, domid: u32, devid: u32) -> Result<(), XsError> {
        for directory in [
            libxl_path(domid, devid),
            frontend_path(domid, devid),
            backend_path("vbd", domid, devid),
        ] {
            self.remove_empty_upwards(&directory)?;
        }
        Ok(())
    }

    /// Whether `path` is there without children, as seen now.
    fn looks_empty(&mut self, path: &str) -> Result<bool, XsError> {
        Ok(self
            .client
            .directory(0, path)?
            .is_some_and(|children| children.is_empty()))
    }
}
