//! The apply journal: every run, and every step of it recorded before and
//! after it runs, so that an interrupted apply is visible (and finished by
//! the next one) and `xendisk state --runs` can show the history.

use rusqlite::params;
use serde::Serialize;

use super::{StateDb, StateError};

/// One run of `apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub started_at: jiff::Timestamp,
    pub finished_at: Option<jiff::Timestamp>,
    /// The desired-state file or saved plan applied.
    pub source: String,
    pub fingerprint: String,
    /// `running`, `done`, `failed` or `interrupted`.
    pub status: String,
    pub steps: Vec<StepRecord>,
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    pub step: i64,
    /// The operation, as in a saved plan.
    pub op: serde_json::Value,
    /// `pending`, `running`, `done` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: Option<jiff::Timestamp>,
    pub milliseconds: Option<i64>,
}

fn millis(time: jiff::Timestamp) -> i64 {
    time.as_millisecond()
}

fn from_millis(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::MAX)
}

impl StateDb {
    /// Starts a run with its steps pending. A run still marked running is
    /// one that was killed: it is marked interrupted, with its running step.
    pub fn begin_run(
        &mut self,
        source: &str,
        fingerprint: &str,
        steps: &[(usize, String)],
        now: jiff::Timestamp,
    ) -> Result<i64, StateError> {
        self.close_interrupted_runs(now)?;
        self.write(now, "starting an apply run", |w| {
            let error = w.error("starting an apply run");
            let at = millis(now);
            w.tx.execute(
                "INSERT INTO runs (started_at, source, fingerprint, status) VALUES (?1, ?2, ?3, 'running')",
                params![at, source, fingerprint],
            )
            .map_err(&error)?;
            let run = w.tx.last_insert_rowid();
            let mut insert = w
                .tx
                .prepare("INSERT INTO journal (run_id, step, op, status) VALUES (?1, ?2, ?3, 'pending')")
                .map_err(&error)?;
            for (step, op) in steps {
                insert.execute(params![run, *step as i64, op]).map_err(&error)?;
            }
            Ok(run)
        })
    }

    /// Marks a run still marked running (one that was killed, since only
    /// the holder of the apply lock writes runs) as interrupted, with the
    /// step it was in. Returns how many runs it closed.
    pub fn close_interrupted_runs(&mut self, now: jiff::Timestamp) -> Result<usize, StateError> {
        self.write(now, "closing interrupted runs", |w| {
            let error = w.error("closing interrupted runs");
            let at = millis(now);
            w.tx.execute(
                "UPDATE journal SET status = 'failed', error = 'interrupted: the apply was stopped while this step ran',
                 finished_at = ?1 WHERE status = 'running'",
                params![at],
            )
            .map_err(&error)?;
            w.tx.execute("UPDATE runs SET status = 'interrupted', finished_at = ?1 WHERE status = 'running'", params![at])
                .map_err(&error)
        })
    }

    pub fn step_started(
        &mut self,
        run: i64,
        step: usize,
        now: jiff::Timestamp,
    ) -> Result<(), StateError> {
        self.journal_entry(
            "UPDATE journal SET status = 'running', started_at = ?3 WHERE run_id = ?1 AND step = ?2",
            params![run, step as i64, millis(now)],
        )
    }

    pub fn step_finished(
        &mut self,
        run: i64,
        step: usize,
        outcome: Result<(), &str>,
        now: jiff::Timestamp,
    ) -> Result<(), StateError> {
        let (status, error) = match outcome {
            Ok(()) => ("done", None),
            Err(message) => ("failed", Some(message)),
        };
        self.journal_entry(
            "UPDATE journal SET status = ?3, error = ?4, finished_at = ?5 WHERE run_id = ?1 AND step = ?2",
            params![run, step as i64, status, error, millis(now)],
        )
    }

    /// A step's entry, in a transaction of its own that is not waited onto
    /// the disk: an apply writes two per step, and waiting for each was
    /// most of the time of a large apply. SQLite's write-ahead log keeps
    /// transactions in order, so the next change of state (every other
    /// write waits, `synchronous = FULL`) carries the entries before it to
    /// the disk. A process killed loses nothing; a power cut may lose the
    /// last entries, never a change of state, and the next plan starts
    /// from the state and the host either way.
    fn journal_entry(
        &mut self,
        sql: &str,
        values: impl rusqlite::Params,
    ) -> Result<(), StateError> {
        let label = self.label.clone();
        let error = |source| StateError::Sqlite {
            path: label.clone(),
            operation: "journaling a step",
            source,
        };
        let connection = &mut self.connection;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(error)?;
        let written = connection
            .prepare_cached(sql)
            .and_then(|mut statement| statement.execute(values));
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(error)?;
        written.map(|_| ()).map_err(error)
    }

    pub fn finish_run(
        &mut self,
        run: i64,
        succeeded: bool,
        now: jiff::Timestamp,
    ) -> Result<(), StateError> {
        self.write(now, "finishing an apply run", |w| {
            let status = if succeeded { "done" } else { "failed" };
            w.tx.execute(
                "UPDATE runs SET status = ?2, finished_at = ?3 WHERE id = ?1",
                params![run, status, millis(now)],
            )
            .map_err(w.error("finishing an apply run"))?;
            Ok(())
        })
    }

    /// The operations (as journaled, JSON) of the steps that interrupted
    /// runs were in when they were stopped: what may be half done. Kept
    /// however old, so that a run stopped again before it finished what
    /// an earlier one left is no loss.
    pub fn interrupted_steps(&self) -> Result<Vec<String>, StateError> {
        let error = self.sqlite_error("reading the journal");
        let mut statement = self
            .connection
            .prepare(
                "SELECT journal.op FROM journal JOIN runs ON runs.id = journal.run_id
                 WHERE runs.status = 'interrupted' AND journal.status = 'failed'
                   AND journal.error LIKE 'interrupted:%'
                 ORDER BY journal.run_id, journal.step",
            )
            .map_err(&error)?;
        let ops = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(&error)?
            .collect::<Result<_, _>>()
            .map_err(&error)?;
        Ok(ops)
    }

    /// The most recent runs, newest first, with their steps.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let error = self.sqlite_error("reading the journal");
        let mut statement = self
            .connection
            .prepare(
                "SELECT id, started_at, finished_at, source, fingerprint, status FROM runs ORDER BY id DESC LIMIT ?1",
            )
            .map_err(&error)?;
        let mut runs: Vec<RunRecord> = statement
            .query_map(params![limit as i64], |row| {
                Ok(RunRecord {
                    id: row.get(0)?,
                    started_at: from_millis(row.get(1)?),
                    finished_at: row.get::<_, Option<i64>>(2)?.map(from_millis),
                    source: row.get(3)?,
                    fingerprint: row.get(4)?,
                    status: row.get(5)?,
                    steps: Vec::new(),
                })
            })
            .map_err(&error)?
            .collect::<Result<_, _>>()
            .map_err(&error)?;
        let mut steps = self
            .connection
            .prepare(
                "SELECT step, op, status, error, started_at, finished_at, finished_at - started_at
                 FROM journal WHERE run_id = ?1 ORDER BY step",
            )
            .map_err(&error)?;
        for run in &mut runs {
            run.steps = steps
                .query_map(params![run.id], |row| {
                    let op: String = row.get(1)?;
                    Ok(StepRecord {
                        step: row.get(0)?,
                        op: serde_json::from_str(&op).unwrap_or(serde_json::Value::String(op)),
                        status: row.get(2)?,
                        error: row.get(3)?,
                        started_at: row.get::<_, Option<i64>>(4)?.map(from_millis),
                        finished_at: row.get::<_, Option<i64>>(5)?.map(from_millis),
                        milliseconds: row.get(6)?,
                    })
                })
                .map_err(&error)?
                .collect::<Result<_, _>>()
                .map_err(&error)?;
        }
        Ok(runs)
    }
}

impl StateDb {
    /// Extents of on-release scrubs that a run planned and never finished,
    /// which are still free and dirty in `pools`. Only runs since the last
    /// one that finished count: that run's plan had every such scrub still
    /// due, and did it (older entries stay unfinished in the journal for
    /// good, and would otherwise claim extents of a pool device taken out
    /// and put back since, dirty as any new device's).
    pub(super) fn unscrubbed_releases(
        &self,
        pools: &[super::PoolState],
    ) -> Result<Vec<crate::extent::SectorRange>, StateError> {
        let error = self.sqlite_error("reading unfinished scrubs");
        let mut statement = self
            .connection
            .prepare(
                "SELECT op FROM journal WHERE status != 'done' \
                 AND op LIKE '%\"op\":\"scrub\"%' AND op LIKE '%\"released\":true%' \
                 AND run_id > (SELECT COALESCE(MAX(id), 0) FROM runs WHERE status = 'done')",
            )
            .map_err(&error)?;
        let ops: Vec<String> = statement
            .query_map([], |row| row.get(0))
            .map_err(&error)?
            .collect::<Result<_, _>>()
            .map_err(&error)?;
        let mut extents = std::collections::BTreeSet::new();
        for op in ops {
            // The journal keeps each step as the plan wrote it; only its
            // extents matter here.
            let these = serde_json::from_str::<serde_json::Value>(&op)
                .ok()
                .and_then(|op| {
                    serde_json::from_value::<Vec<crate::extent::SectorRange>>(op["extents"].clone())
                        .ok()
                });
            extents.extend(these.into_iter().flatten());
        }
        // Still free and dirty: a later run may have scrubbed or reused them.
        let free_and_dirty = |extent: &crate::extent::SectorRange| {
            pools.iter().any(|pool| {
                let extent_sectors = pool.extent_size.sectors().max(1);
                let index = extent.start / extent_sectors;
                pool.devices
                    .iter()
                    .filter(|device| device.device == extent.device)
                    .flat_map(|device| &device.dirty_runs)
                    .any(|run| index >= run.first && index < run.first + run.len)
            })
        };
        Ok(extents.into_iter().filter(free_and_dirty).collect())
    }
}
