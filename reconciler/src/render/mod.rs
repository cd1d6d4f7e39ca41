//! Turning plain values into what a person or a program reads: tables of
//! text, and versioned JSON documents. Pure: it formats what it is given and
//! never looks anything up.

use std::io::{self, Write};

use serde::Serialize;
use tabwriter::TabWriter;

use crate::state::StateSnapshot;

/// Version of the JSON documents xendisk prints; bumped on incompatible change.
pub const FORMAT_VERSION: u32 = 1;

/// The state DB for a person: pools, their devices, and live vdisks.
pub fn state_text(snapshot: &StateSnapshot, out: &mut dyn Write) -> io::Result<()> {
    if snapshot.pools.is_empty() && snapshot.vdisks.is_empty() {
        return writeln!(out, "The state DB is empty: no pools, no vdisks.");
    }
    let mut table = TabWriter::new(&mut *out).padding(2);
    writeln!(
        table,
        "POOL\tEXTENT SIZE\tDEVICES\tEXTENTS\tFREE\tUSED\tDIRTY"
    )?;
    for pool in &snapshot.pools {
        let sum = |count: fn(&crate::state::PoolDeviceState) -> u64| {
            pool.devices.iter().map(count).sum::<u64>()
        };
        writeln!(
            table,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            pool.name,
            pool.extent_size,
            pool.devices.len(),
            sum(|d| d.extents),
            sum(|d| d.free),
            sum(|d| d.used),
            sum(|d| d.dirty),
        )?;
    }
    table.flush()?;
    drop(table);

    let mut table = TabWriter::new(&mut *out).padding(2);
    writeln!(
        table,
        "\nPOOL\tDEVICE\tNUMBER\tEXTENTS\tFREE\tUSED\tDIRTY\tON DISK"
    )?;
    for pool in &snapshot.pools {
        for device in &pool.devices {
            let place = device.on_disk.map_or_else(
                || "not yet observed".to_owned(),
                |p| format!("{} from sector {}", p.disk, p.start),
            );
            writeln!(
                table,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                pool.name,
                device.path,
                device.device,
                device.extents,
                device.free,
                device.used,
                device.dirty,
                place
            )?;
        }
    }
    table.flush()?;
    drop(table);

    if snapshot.vdisks.is_empty() {
        return writeln!(out, "\nNo vdisks.");
    }
    let mut table = TabWriter::new(&mut *out).padding(2);
    writeln!(table, "\nVDISK\tPOOL\tSIZE\tALLOCATED\tSEGMENTS\tEXPIRES")?;
    for vdisk in &snapshot.vdisks {
        let expires = match vdisk.expires_at {
            None => "never".to_owned(),
            Some(at) => at.to_string(),
        };
        writeln!(
            table,
            "{}\t{}\t{}\t{}\t{}\t{}",
            vdisk.name, vdisk.pool, vdisk.size, vdisk.allocated, vdisk.segments, expires
        )?;
    }
    table.flush()
}

/// The apply journal for a person: each run, newest first, with its steps.
pub fn runs_text(runs: &[crate::state::RunRecord], out: &mut dyn Write) -> io::Result<()> {
    if runs.is_empty() {
        return writeln!(out, "No apply has run against this state DB.");
    }
    for run in runs {
        let finished = run
            .finished_at
            .map_or_else(|| "not finished".to_owned(), |t| t.to_string());
        writeln!(
            out,
            "run {} of {}: {} (started {}, finished {})",
            run.id, run.source, run.status, run.started_at, finished
        )?;
        for step in &run.steps {
            let op = step.op.get("op").and_then(|o| o.as_str()).unwrap_or("?");
            let took = step
                .milliseconds
                .map_or_else(String::new, |ms| format!(" in {ms} ms"));
            writeln!(out, "  [{}] {op}: {}{took}", step.step, step.status)?;
            if let Some(error) = &step.error {
                writeln!(out, "      {error}")?;
            }
        }
    }
    Ok(())
}

/// The state DB as a JSON document.
pub fn state_json(snapshot: &StateSnapshot, out: &mut dyn Write) -> io::Result<()> {
    #[derive(Serialize)]
    struct Document<'a> {
        format_version: u32,
        #[serde(flatten)]
        state: &'a StateSnapshot,
    }
    serde_json::to_writer_pretty(
        &mut *out,
        &Document {
            format_version: FORMAT_VERSION,
            state: snapshot,
        },
    )?;
    writeln!(out)
}
pub mod plan;
