//! `--sim DIR`: a simulated host kept in a directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::init::{InitOptions, initialise};
use super::{Console, Exit};
use crate::apply::lock::{self, ApplyLock};
use crate::sim;

/// How long a command waits for the others on the same simulated host.
const TURN_TIMEOUT: Duration = Duration::from_secs(600);

/// A simulated host kept in a directory, for `--sim DIR`: DIR holds the
/// host's xenstore (`xenstore.xs`, a seed: either `xenstore-ls` form, see
/// [`sim::dump`]; values the dump cut are served as printed, and commands
/// that read them warn), its machine
/// id (`etc/machine-id`) and captured dom0 (`proc/`, `sys/`); what commands
/// change is kept in `DIR/.sim/` (the xenstore, written back after each
/// command, and the state DB), so that an apply is followed by a plan that
/// sees it.
///
/// Commands on one simulated host take turns (a lock in `DIR/.sim/`): each
/// runs its own simulated xenstored from the kept xenstore and writes it
/// back, so two at once would each see, and keep, only their own changes.
pub struct SimulatedHost {
    simulator: Option<sim::Simulator>,
    /// What the seed dump could not give whole and no command has
    /// written since: the simulator serves what was printed.
    cuts: BTreeMap<String, sim::dump::Cut>,
    kept: PathBuf,
    dir: PathBuf,
    /// Held until the xenstore is written back.
    _turn: ApplyLock,
}

impl SimulatedHost {
    /// Where the simulated host's own files go.
    pub fn workspace(dir: &Path) -> PathBuf {
        dir.join(".sim")
    }

    /// The socket its xenstored listens on (set XENSTORED_PATH to it first).
    pub fn socket(dir: &Path) -> PathBuf {
        SimulatedHost::workspace(dir).join("xenstored.socket")
    }

    /// The state DB it uses unless told otherwise.
    pub fn state(dir: &Path) -> PathBuf {
        SimulatedHost::workspace(dir).join("state.sqlite")
    }

    /// Waits for the other commands on this host, then starts its xenstored.
    pub fn start(dir: &Path, messages: &mut dyn Write) -> anyhow::Result<SimulatedHost> {
        let workspace = SimulatedHost::workspace(dir);
        std::fs::create_dir_all(&workspace)
            .with_context(|| format!("cannot create {}", workspace.display()))?;
        let waiting = lock::Waiting {
            holder: "another command on this simulated host",
            hint: "",
        };
        let turn = lock::acquire_file(&workspace.join("lock"), TURN_TIMEOUT, waiting, messages)?;
        let kept = workspace.join("xenstore.xs");
        // The seed says what was cut; what a command wrote since is whole.
        let seed_file = dir.join("xenstore.xs");
        if !seed_file.exists() {
            anyhow::bail!(
                "cannot read {}: a --sim directory holds the host's xenstore.xs (as \
                 `xenstore-ls -f -p` prints it, or as `xendisk capture` makes it)",
                seed_file.display()
            );
        }
        let seed = sim::dump::load(&seed_file)?;
        let (store, cuts) = if kept.exists() {
            let store = sim::dump::load(&kept)?.store;
            let cuts = seed.cuts_still_in(&store);
            (store, cuts)
        } else {
            (seed.store, seed.cuts)
        };
        let socket = SimulatedHost::socket(dir);
        // Only a killed command's: the live ones wait for their turn.
        let _ = std::fs::remove_file(&socket);
        // Its dom0's drivers play along: a disk that would not connect on
        // the host it was captured from does not connect here.
        let drivers = sim::Drivers {
            host: super::host_view(dir),
            ..sim::Drivers::default()
        };
        let simulator = sim::Simulator::start_with_drivers(
            &socket,
            store,
            sim::GuestPolicy::default(),
            sim::Faults::default(),
            Some(drivers),
        )?;
        Ok(SimulatedHost {
            simulator: Some(simulator),
            cuts,
            kept,
            dir: dir.to_owned(),
            _turn: turn,
        })
    }

    /// Makes the simulated host's own state DB on its first command: a
    /// simulated host is the one place where a state DB is expected to come
    /// by itself. It is checked like `xendisk init` (a host whose kept
    /// xenstore names vdisks is refused an empty DB). `Err(exit)` once it
    /// has said why not.
    pub fn initialise_state(
        &self,
        now: jiff::Timestamp,
        console: &mut Console<'_>,
    ) -> anyhow::Result<Result<(), Exit>> {
        let state = SimulatedHost::state(&self.dir);
        if state.exists() {
            return Ok(Ok(()));
        }
        let options = InitOptions {
            state,
            host_root: self.dir.clone(),
            replace_host: false,
            now,
        };
        let done = initialise(&options, console)?;
        Ok(match done {
            Ok(sentence) => {
                writeln!(console.err, "Simulated host: {sentence}")?;
                Ok(())
            }
            Err(exit) => Err(exit),
        })
    }

    /// The cuts of the seed, by path, that still hold.
    pub fn cuts(&self) -> &BTreeMap<String, sim::dump::Cut> {
        &self.cuts
    }

    /// Warns about each cut value observation reads (and each cut name):
    /// a plan made from it may be wrong, so it says which, and how to dump
    /// the host whole.
    pub fn warn_cuts(&self, messages: &mut dyn Write) -> std::io::Result<()> {
        let seed = self.dir.join("xenstore.xs");
        let seed = seed.display().to_string();
        for (path, cut) in sim::dump::Seed::cuts_read_by_observation(&self.cuts) {
            writeln!(messages, "warning: {}", cut.describe(path, &seed))?;
        }
        Ok(())
    }

    fn seed_cuts_still_in(&self, store: &sim::Store) -> BTreeMap<String, sim::dump::Cut> {
        sim::dump::Seed {
            store: sim::Store::default(),
            cuts: self.cuts.clone(),
        }
        .cuts_still_in(store)
    }

    /// Stops the simulator and keeps its xenstore for the next command.
    pub fn finish(mut self) -> anyhow::Result<()> {
        if let Some(simulator) = self.simulator.take() {
            let store = simulator.store();
            let changed = simulator.changed();
            // The simulator's store now shares every node with `store`:
            // stopping it frees none of them.
            drop(simulator);
            if changed || !self.kept.exists() {
                let cuts = self.seed_cuts_still_in(&store);
                let text = sim::dump::write_seed(&store, &cuts);
                let temporary = self.kept.with_extension("partial");
                std::fs::write(&temporary, text)
                    .with_context(|| format!("cannot write {}", temporary.display()))?;
                std::fs::rename(&temporary, &self.kept)
                    .with_context(|| format!("cannot write {}", self.kept.display()))?;
            }
            // The command ends here: freeing a large host's half a million
            // nodes one by one took longer than planning it.
            std::mem::forget(store);
        }
        Ok(())
    }
}
