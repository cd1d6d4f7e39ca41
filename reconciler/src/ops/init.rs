//! `xendisk init`: the one way a state DB comes to be (besides `import`,
//! and a simulated host's first command), recording the host it belongs to.

use std::path::PathBuf;

use anyhow::Context;

use super::state_db::{exists, refuse_traces};
use super::traces::traces;
use super::{Console, Exit, count};
use crate::observe;
use crate::state::{HostId, Recorded, StateDb, StateError, StateSnapshot};

/// `xendisk init`
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub state: PathBuf,
    /// Where the host's machine id and its /sys are read.
    pub host_root: PathBuf,
    /// Record this host in a DB that belongs to another (`--replace-host`):
    /// for a dom0 reinstalled on the same disks, whose machine id changed.
    pub replace_host: bool,
    pub now: jiff::Timestamp,
}

/// Creates the state DB for this host, or records this host in an existing
/// DB that records none; an existing DB of this host is left as it is.
/// Refused (3) for a DB of another host without `replace_host`, and for a
/// host that carries xendisk's traces (an empty DB would hide them).
pub fn init(options: &InitOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    match initialise(options, console)? {
        Ok(done) => {
            writeln!(console.out, "{done}")?;
            Ok(Exit::Success)
        }
        Err(exit) => Ok(exit),
    }
}

/// What [`init`] does, with what it did as a sentence, or the exit status
/// once it has said why not.
pub(super) fn initialise(
    options: &InitOptions,
    console: &mut Console<'_>,
) -> anyhow::Result<Result<String, Exit>> {
    let label = options.state.display().to_string();
    let host = HostId::read(&options.host_root)?;
    let this = format!("host {} (from its {})", host.machine_id, host.source);
    if exists(&options.state)? {
        // Read first: the DB of another host is not even migrated.
        let db = StateDb::open_read_only(&options.state)?;
        let recorded = db.host()?;
        let contents = db.snapshot(options.now)?;
        drop(db);
        match &recorded {
            Some(record) if record.machine_id == host.machine_id => {
                return Ok(Ok(format!(
                    "The state DB {label} is already initialised for this {this}; nothing was \
                     changed."
                )));
            }
            Some(record) if !options.replace_host => {
                let refusal = StateError::OtherHost {
                    path: label,
                    recorded: record.machine_id.clone(),
                    this: host.machine_id.clone(),
                };
                writeln!(console.err, "error: {refusal}")?;
                return Ok(Err(Exit::Refused));
            }
            _ => {}
        }
        let mut db = StateDb::open(&options.state)?;
        let holds = format!(
            "it holds {} and {}",
            count(contents.pools.len(), "pool"),
            count(contents.vdisks.len(), "live vdisk")
        );
        return Ok(Ok(
            match db.record_host(&host, options.replace_host, options.now)? {
                Recorded::Same => format!(
                    "The state DB {label} is already initialised for this {this}; nothing was \
                     changed."
                ),
                Recorded::New => format!("Recorded {this} in the state DB {label}; {holds}."),
                Recorded::Replaced(old) => format!(
                    "Replaced host {} (recorded at {}) by this {this} in the state DB {label}; \
                     {holds}.",
                    old.machine_id, old.recorded_at
                ),
            },
        ));
    }
    // An empty DB on a host where xendisk has worked would make its disks
    // look free: look for its traces first.
    let observed = observe::observe(&observe::ObserveOptions {
        host_root: options.host_root.clone(),
    })
    .context("init looks for xendisk's traces on the host before it makes an empty state DB")?;
    let found = traces(&observed, &StateSnapshot::default());
    if !found.is_empty() {
        let what = format!("an empty state DB {label} would record nothing");
        return refuse_traces(&what, &found, console).map(Err);
    }
    match StateDb::create(&options.state, &host, options.now) {
        Ok(_) => Ok(Ok(format!(
            "Initialised the state DB {label} for this {this}."
        ))),
        // Another `init` made it meanwhile: it is checked as any existing DB.
        Err(StateError::Exists { .. }) => initialise(options, console),
        Err(error) => Err(error.into()),
    }
}
