//! `xendisk import --legacy`: adopting the ancestor's database into a new
//! state DB. The legacy file is read and checked whole (and a dump loaded
//! as data, never run) before the state DB is opened, so a refused import
//! leaves it as it was, or absent.

use std::path::PathBuf;

use super::{Console, Exit, count, state_db};
use crate::state::{self, StateDb};

/// `xendisk import --legacy PATH`
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub state: PathBuf,
    pub legacy: PathBuf,
    /// Where the host's machine id is read, for the DB to record.
    pub host_root: PathBuf,
    pub now: jiff::Timestamp,
}

/// Adopts the ancestor's database into a new state DB for this host (made
/// here: importing is as deliberate as `init`), or into an empty one that
/// `init` made for it.
pub fn import(options: &ImportOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    // The legacy file is read and checked before the state DB is touched.
    let legacy = state::read_legacy(&options.legacy, options.now)?;
    let host = state::HostId::read(&options.host_root)?;
    let mut db = if state_db::exists(&options.state)? {
        let recorded = StateDb::open_read_only(&options.state)?.host()?;
        if let Some(record) = recorded.filter(|r| r.machine_id != host.machine_id) {
            let refusal = state::StateError::OtherHost {
                path: options.state.display().to_string(),
                recorded: record.machine_id,
                this: host.machine_id,
            };
            writeln!(console.err, "error: {refusal}")?;
            return Ok(Exit::Refused);
        }
        StateDb::open(&options.state)?
    } else {
        StateDb::create(&options.state, &host, options.now)?
    };
    let report = state::import_legacy(&mut db, &legacy, options.now)?;
    // A DB made before `init` existed: it is this host's now.
    db.record_host(&host, false, options.now)?;
    for (name, extent_size, devices) in &report.pools {
        writeln!(
            console.out,
            "+ pool {name} (extents of {extent_size}): {}",
            devices.join(", ")
        )?;
    }
    for (vdisk, pools) in &report.vdisks {
        if pools.len() > 1 {
            // Extents of several sizes, as the ancestor handed them out.
            writeln!(
                console.out,
                "+ vdisk {vdisk} (extents in pools {})",
                pools.join(", ")
            )?;
        } else {
            writeln!(console.out, "+ vdisk {vdisk}")?;
        }
    }
    writeln!(
        console.out,
        "Imported {} into {}: {}, {}, {} free (to be scrubbed before reuse).",
        options.legacy.display(),
        db.label(),
        count(report.pools.len(), "pool"),
        count(report.vdisks.len(), "live vdisk"),
        count(report.free_extents as usize, "extent"),
    )?;
    Ok(Exit::Success)
}
