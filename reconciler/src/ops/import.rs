//! `xendisk import --legacy`: adopting the ancestor's database into a new
//! state DB. The legacy file is read and checked whole (and a dump loaded
//! as data, never run) before the state DB is opened, so a refused import
//! leaves it as it was, or absent.

use std::path::PathBuf;

use super::{Console, Exit, count};
use crate::state::{self, StateDb};

/// `xendisk import --legacy PATH`
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub state: PathBuf,
    pub legacy: PathBuf,
    pub now: jiff::Timestamp,
}

/// Adopts the ancestor's database into a new, empty state DB.
pub fn import(options: &ImportOptions, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    // The legacy file is read and checked before the state DB is touched.
    let legacy = state::read_legacy(&options.legacy, options.now)?;
    let mut db = StateDb::open(&options.state)?;
    let report = state::import_legacy(&mut db, &legacy, options.now)?;
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
