//! The state DB a planning command works from, and the checks that keep it
//! from being silently wrong: it exists (or the operator says the host is
//! new to xendisk), it belongs to the host being planned, and it accounts
//! for the traces xendisk left on that host.
//!
//! Exit codes: a DB that is missing or records no host is a setup error
//! (1: run `xendisk init`, or fix `--state`); a DB that belongs to another
//! host, a snapshot that cannot be matched with it, and a host whose
//! traces the DB cannot explain are refusals (3), as a stale plan is: the
//! inputs are valid but planning from them could destroy data.

use std::path::{Path, PathBuf};

use super::traces::traces;
use super::{Console, Exit};
use crate::observe::HostState;
use crate::state::{HostId, HostRecord, StateDb, StateError, StateSnapshot};

/// Which host is being planned, to check the state DB's record against.
pub(super) enum ThisHost {
    /// The live host, whose machine id is read under this root.
    Live(PathBuf),
    /// A snapshot file, with the machine id it recorded, if any.
    Snapshot {
        file: PathBuf,
        machine_id: Option<String>,
    },
}

/// The state DB at `path` for planning `host`, or the exit status after
/// saying why it cannot be used. `new_host` is the operator's word that
/// xendisk has never managed the host, so a missing DB is an empty state.
pub(super) fn checked_state(
    path: &Path,
    new_host: bool,
    this: &ThisHost,
    host: &HostState,
    now: jiff::Timestamp,
    console: &mut Console<'_>,
) -> anyhow::Result<Result<StateSnapshot, Exit>> {
    let label = path.display().to_string();
    if !exists(path)? {
        let found = traces(host, &StateSnapshot::default());
        if !found.is_empty() {
            let what = format!("the state DB {label} does not exist");
            return refuse_traces(&what, &found, console).map(Err);
        }
        if new_host {
            return Ok(Ok(StateSnapshot::default()));
        }
        match this {
            ThisHost::Live(_) => writeln!(
                console.err,
                "error: {}",
                StateError::Missing { path: label }
            )?,
            ThisHost::Snapshot { file, .. } => writeln!(
                console.err,
                "error: the state DB {label} does not exist; a plan from the snapshot {} needs a \
                 copy of that host's state DB (--state COPY), or, if xendisk has never managed \
                 that host, --new-host",
                file.display()
            )?,
        }
        return Ok(Err(Exit::Error));
    }
    if new_host {
        writeln!(
            console.err,
            "error: --new-host says xendisk has never managed this host, but its state DB {label} \
             exists; nothing was planned: drop --new-host, or check --state"
        )?;
        return Ok(Err(Exit::Error));
    }
    let db = StateDb::open_read_only(path)?;
    let Some(record) = db.host()? else {
        writeln!(
            console.err,
            "error: the state DB {label} does not record which host it belongs to (it was made \
             before `xendisk init` existed); if it is this host's, record that with `xendisk \
             init`"
        )?;
        return Ok(Err(Exit::Error));
    };
    if let Some(mismatch) = host_mismatch(&label, &record, this)? {
        writeln!(console.err, "error: {mismatch}")?;
        return Ok(Err(Exit::Refused));
    }
    let state = db.snapshot(now)?;
    let found = traces(host, &state);
    if !found.is_empty() {
        let what = format!("the state DB {label} records no vdisk");
        return refuse_traces(&what, &found, console).map(Err);
    }
    Ok(Ok(state))
}

/// Whether a file is at `path` (a link to one counts).
pub(super) fn exists(path: &Path) -> anyhow::Result<bool> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StateError::Access {
            path: path.display().to_string(),
            source,
        }
        .into()),
    }
}

/// Why the DB's host is not the one planned, if it is not.
fn host_mismatch(
    label: &str,
    record: &HostRecord,
    this: &ThisHost,
) -> anyhow::Result<Option<String>> {
    let recorded = format!(
        "host {} (recorded from its {} at {})",
        record.machine_id, record.source, record.recorded_at
    );
    Ok(match this {
        ThisHost::Live(root) => {
            let here = HostId::read(root)?;
            (here.machine_id != record.machine_id).then(|| {
                format!(
                    "the state DB {label} belongs to {recorded}, not to this host, {} (its {}).\n\
                     Refused; nothing was changed: point --state at this host's DB, or, if this \
                     host's machine id changed (dom0 reinstalled on the same disks), record the \
                     new one with `xendisk init --replace-host`",
                    here.machine_id, here.source
                )
            })
        }
        ThisHost::Snapshot {
            file,
            machine_id: None,
        } => Some(format!(
            "the snapshot {} does not say which host it was taken on (an older xendisk took it), \
             so it cannot be checked against the state DB {label}, which belongs to {recorded}.\n\
             Refused: take the snapshot again with this xendisk",
            file.display()
        )),
        ThisHost::Snapshot {
            file,
            machine_id: Some(id),
        } => (*id != record.machine_id).then(|| {
            format!(
                "the snapshot {} was taken on host {id}, but the state DB {label} belongs to \
                 {recorded}.\nRefused: plan with a copy of that host's state DB",
                file.display()
            )
        }),
    })
}

/// Says that the DB cannot explain xendisk's traces on the host, and what
/// to do; the exit status of a refusal.
pub(super) fn refuse_traces(
    what: &str,
    found: &[String],
    console: &mut Console<'_>,
) -> anyhow::Result<Exit> {
    writeln!(
        console.err,
        "error: {what}, but this host carries xendisk's traces:"
    )?;
    for trace in found {
        writeln!(console.err, "  {trace}")?;
    }
    writeln!(
        console.err,
        "Planned without the vdisks that left them, their disks would look free: a pool would be \
         added again and its extents scrubbed under a running guest.\n\
         Refused; nothing was changed: restore this host's state DB from a backup (or point \
         --state at it). A host whose disks the ancestor's tools managed is adopted with \
         `xendisk import --legacy` into a new state DB."
    )?;
    Ok(Exit::Refused)
}
