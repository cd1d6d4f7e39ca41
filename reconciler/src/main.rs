//! The `xendisk` command: parses arguments, calls the library, maps the
//! outcome to an exit code. Nothing else lives here.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use xendisk::ops::{self, Console, Exit};
use xendisk::state;

/// Declarative reconciler for the disk state of a Xen host (dom0).
#[derive(Debug, Parser)]
#[command(name = "xendisk", version, about)]
struct Cli {
    /// The state DB [env: XENDISK_STATE] [default: /var/lib/xendisk/state.sqlite]
    #[arg(long, global = true, value_name = "PATH")]
    state: Option<PathBuf>,
    /// Work on a simulated host kept in DIR (its xenstore.xs, etc/machine-id, proc/ and sys/; see examples/hosts/demo)
    #[arg(long, global = true, value_name = "DIR")]
    sim: Option<PathBuf>,
    /// Use this snapshot (`xendisk snapshot`) instead of observing the live host
    #[arg(long, global = true, value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Read /proc, /sys, /dev and /etc/machine-id under this directory instead of /
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    host_root: PathBuf,
    /// Log what xendisk does (debug level), on standard error
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the state DB for this host (its machine id recorded), before the first plan or apply.
    Init {
        /// Record this host in a state DB that belongs to another: for a dom0 reinstalled on the same disks, whose machine id changed.
        #[arg(long)]
        replace_host: bool,
    },
    /// Check desired-state files and report every problem with its location.
    Validate {
        /// Desired-state TOML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show the xenstore device id, canonical name, disk and partition of vdevs.
    Vdev {
        /// Names (xvda, xvdb1, d0p1, hdc, sda3) or device ids (51712, 0xca00).
        #[arg(required = true)]
        names: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of a file format.
    Schema {
        /// Which format.
        #[arg(value_enum, default_value = "desired")]
        format: ops::SchemaFormat,
    },
    /// Capture the host (xenstore, dom0's mounts, swaps and block devices) in one file.
    Snapshot {
        /// Where to write it; standard output when absent.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show the pools, pool devices and vdisks recorded in the state DB.
    State {
        /// Print JSON, with every vdisk's extents in order.
        #[arg(long)]
        json: bool,
        /// Also verify the DB: SQLite's integrity check and xendisk's invariants (such as no two pool devices sharing a sector).
        #[arg(long)]
        check: bool,
        /// Show the apply history (the journal) instead.
        #[arg(long)]
        runs: bool,
    },
    /// Show what apply would change, in order, and whether it is safe.
    Plan {
        /// The desired-state file.
        file: PathBuf,
        /// The host is new to xendisk: plan without a state DB (refused if the host shows xendisk's traces).
        #[arg(long)]
        new_host: bool,
        /// Allow deleting vdisks, which destroys their data.
        #[arg(long)]
        allow_destroy: bool,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Also save the plan as JSON, for `apply`.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Carry out a plan: from a desired-state file (planned now) or a saved plan.
    Apply {
        /// A desired-state file, or a plan saved with `plan -o` (refused if the host changed since).
        file: PathBuf,
        /// Apply without asking (required when not on a terminal).
        #[arg(long)]
        yes: bool,
        /// Allow deleting vdisks, which destroys their data.
        #[arg(long)]
        allow_destroy: bool,
        /// Seconds to wait for another apply to finish.
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        lock_timeout: u64,
        /// Seconds a guest gets to release a disk being detached (xenstore toolstack).
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        release_timeout: u64,
        /// Detach without waiting for the guest to release the disk (xl: `block-detach --force`).
        #[arg(long)]
        force_detach: bool,
        /// Create no block devices: for a simulated host, where vdisks are attached by path.
        #[arg(long)]
        no_devices: bool,
        /// How many attaches and detaches may run at once (waiting for guests is the slow part).
        #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        parallelism: u16,
        /// Make attachments this way for this run, whatever settings.toolstack says.
        #[arg(long, value_enum)]
        toolstack: Option<ToolstackChoice>,
        /// Where the hotplug scripts are that the xenstore toolstack runs, as libxl does.
        #[arg(long, value_name = "DIR", default_value = xendisk::apply::toolstack::SCRIPT_DIR)]
        hotplug_scripts: PathBuf,
        /// Run no hotplug script and wait for no backend driver (xenstore toolstack): for a
        /// simulated xenstored, where nothing takes a backend up (with --sim, the simulated
        /// host's hotplug step stands for the script and is waited for, unless this is given).
        #[arg(long, env = "XENDISK_NO_HOTPLUG", value_parser = clap::builder::BoolishValueParser::new())]
        no_hotplug: bool,
    },
    /// Print the plan's operations and their order as a Graphviz graph
    /// (steps refused for unsafe sharing in red); exits as `plan` does.
    Graph {
        /// The desired-state file.
        file: PathBuf,
        /// The host is new to xendisk: plan without a state DB (refused if the host shows xendisk's traces).
        #[arg(long)]
        new_host: bool,
        /// Allow deleting vdisks, which destroys their data.
        #[arg(long)]
        allow_destroy: bool,
    },
    /// Show a unified diff from the actual state to the desired-state file.
    Diff {
        /// The desired-state file.
        file: PathBuf,
        /// The host is new to xendisk: plan without a state DB (refused if the host shows xendisk's traces).
        #[arg(long)]
        new_host: bool,
    },
    /// Write the actual state as a desired-state file, to adopt a running host.
    Generate {
        /// The host is new to xendisk: adopt it without a state DB (refused if the host shows xendisk's traces).
        #[arg(long)]
        new_host: bool,
        /// Where to write it; standard output when absent.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Make a simulated host (for --sim DIR) from this one: its xenstore with permissions, and what xendisk reads of /proc, /sys and /etc.
    Capture {
        /// A new or empty directory.
        dir: PathBuf,
    },
    /// Serve a simulated xenstored on a unix socket, for trying xendisk without Xen.
    Sim {
        /// Where to listen; clients find it through XENSTORED_PATH.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// A `xenstore-ls` or `xenstore-ls -f` dump to start from.
        #[arg(long, value_name = "DUMP")]
        seed: Option<PathBuf>,
        /// How long simulated guests take to close a frontend, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 100)]
        close_delay: u64,
        /// Domain ids whose guests never release their disks.
        #[arg(long, value_name = "DOMID")]
        never_close: Vec<u32>,
        /// Drop each connection after this many requests.
        #[arg(long, value_name = "N")]
        drop_after: Option<u64>,
        /// Fail the Nth transaction commit with EAGAIN (repeatable).
        #[arg(long, value_name = "N")]
        eagain_on_commit: Vec<u64>,
        /// Delay every reply by this many milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 0)]
        reply_delay: u64,
        /// How long the simulated hotplug script takes to bring a disk up, in milliseconds (a
        /// real one takes from tens of milliseconds to seconds).
        #[arg(long, value_name = "MS", default_value_t = 0)]
        hotplug_delay: u64,
        /// Fail a commit if anything at all changed since its transaction began (xenstored
        /// fails it only when a node it used changed).
        #[arg(long)]
        strict_transactions: bool,
        /// Play no drivers: backends and frontends stay as written (by default the simulator
        /// plays blkback, the block hotplug script over the devices under --host-root, and
        /// the guests' blkfront).
        #[arg(long)]
        no_drivers: bool,
        /// Domain ids whose guests have no blkfront driver: their disks never connect.
        #[arg(long, value_name = "DOMID")]
        no_blkfront: Vec<u32>,
    },
    /// Adopt the database of Xen 1.2's virtual-disk manager into a new state DB.
    Import {
        /// The ancestor's xen_vdisks.sqlite (SQLite 3) or the text of `sqlite OLD .dump`.
        #[arg(long, value_name = "PATH")]
        legacy: PathBuf,
    },
}

/// How attachments are made, on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ToolstackChoice {
    Xl,
    Xenstore,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.verbose { "debug" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("xendisk={level}"))),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let colour = colour_on(&std::io::stderr());
    let outcome = {
        let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
        let mut console = Console {
            out: &mut stdout,
            err: &mut stderr,
            colour,
        };
        run(cli, &mut console)
    };
    match outcome {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::from(Exit::Error as u8)
        }
    }
}

fn run(mut cli: Cli, console: &mut Console<'_>) -> anyhow::Result<Exit> {
    let simulated = match cli.sim.clone() {
        None => None,
        Some(dir) => {
            // Before any thread starts: the xenstore clients read it.
            unsafe { std::env::set_var("XENSTORED_PATH", ops::SimulatedHost::socket(&dir)) };
            // Its own state DB, unless one is named: that one is made only
            // by `init`, as on a real host.
            let own_state = cli.state.is_none() && std::env::var_os("XENDISK_STATE").is_none();
            if own_state {
                cli.state = Some(ops::SimulatedHost::state(&dir));
            }
            if cli.host_root == std::path::Path::new("/") {
                cli.host_root = dir.clone();
            }
            let host = ops::SimulatedHost::start(&dir, console.err)?;
            if own_state && !matches!(cli.command, Command::Init { .. }) {
                match host.initialise_state(now()?, console) {
                    Ok(Ok(())) => {}
                    Ok(Err(exit)) => {
                        host.finish()?;
                        return Ok(exit);
                    }
                    Err(error) => {
                        host.finish()?;
                        return Err(error);
                    }
                }
            }
            if observes_xenstore(&cli.command) {
                host.warn_cuts(console.err)?;
            }
            Some(host)
        }
    };
    let seed_cuts = simulated
        .as_ref()
        .map(|host| host.cuts().clone())
        .unwrap_or_default();
    let exit = run_command(cli, simulated.is_some(), seed_cuts, console);
    if let Some(host) = simulated {
        host.finish()?;
    }
    exit
}

/// Whether a command reads the host's xenstore (and so needs to hear of
/// values a simulated host's seed cut).
fn observes_xenstore(command: &Command) -> bool {
    !matches!(
        command,
        Command::Validate { .. }
            | Command::Vdev { .. }
            | Command::Schema { .. }
            | Command::State { .. }
            | Command::Sim { .. }
            | Command::Capture { .. }
    )
}

fn run_command(
    cli: Cli,
    simulated: bool,
    seed_cuts: std::collections::BTreeMap<String, xendisk::sim::dump::Cut>,
    console: &mut Console<'_>,
) -> anyhow::Result<Exit> {
    let state = state::resolve_path(cli.state);
    let actual = |new_host| -> anyhow::Result<ops::ActualSource> {
        Ok(ops::ActualSource {
            state: state.clone(),
            snapshot: cli.snapshot.clone(),
            host_root: cli.host_root.clone(),
            new_host,
            now: now()?,
        })
    };
    Ok(match cli.command {
        Command::Init { replace_host } => {
            if cli.snapshot.is_some() {
                anyhow::bail!(
                    "init records the host it runs on; it cannot work from a snapshot (drop --snapshot)"
                );
            }
            ops::init(
                &ops::InitOptions {
                    state,
                    host_root: cli.host_root,
                    replace_host,
                    now: now()?,
                },
                console,
            )?
        }
        Command::Validate { files } => ops::validate(
            &ops::ValidateOptions {
                files,
                state,
                now: now()?,
            },
            console,
        )?,
        Command::Vdev { names, json } => ops::vdev(&ops::VdevOptions { names, json }, console)?,
        Command::Schema { format } => ops::schema(format, console)?,
        Command::Snapshot { output } => {
            let options = ops::SnapshotOptions {
                host_root: cli.host_root,
                output,
                now: now()?,
            };
            ops::snapshot(&options, console)?
        }
        Command::State { json, check, runs } => ops::state(
            &ops::StateOptions {
                state,
                json,
                check,
                runs,
                now: now()?,
            },
            console,
        )?,
        Command::Plan {
            file,
            new_host,
            allow_destroy,
            json,
            output,
        } => {
            let colour = colour_on(&std::io::stdout());
            let options = ops::PlanOptions {
                file,
                actual: actual(new_host)?,
                allow_destroy,
                json,
                output,
                show_extents: cli.verbose,
                colour,
            };
            ops::plan(&options, console)?
        }
        Command::Apply {
            file,
            yes,
            allow_destroy,
            lock_timeout,
            release_timeout,
            force_detach,
            no_devices,
            toolstack,
            parallelism,
            hotplug_scripts,
            no_hotplug,
        } => {
            let colour = colour_on(&std::io::stdout());
            let options = ops::ApplyOptions {
                file,
                actual: actual(false)?,
                yes,
                allow_destroy,
                lock_timeout: Duration::from_secs(lock_timeout),
                release_timeout: Duration::from_secs(release_timeout),
                force_detach,
                no_devices,
                parallelism: usize::from(parallelism),
                toolstack: toolstack.map(|t| match t {
                    ToolstackChoice::Xl => xendisk::desired::Toolstack::Xl,
                    ToolstackChoice::Xenstore => xendisk::desired::Toolstack::Xenstore,
                }),
                simulated,
                hotplug: if no_hotplug {
                    xendisk::apply::toolstack::BackendHost::Simulated
                } else if simulated {
                    xendisk::apply::toolstack::BackendHost::SimulatedHotplug
                } else {
                    xendisk::apply::toolstack::BackendHost::Dom0 {
                        scripts: hotplug_scripts,
                    }
                },
                pinned_time: pinned_now()?,
                colour,
            };
            ops::apply(&options, console)?
        }
        Command::Graph {
            file,
            new_host,
            allow_destroy,
        } => ops::graph(
            &ops::GraphOptions {
                file,
                actual: actual(new_host)?,
                allow_destroy,
            },
            console,
        )?,
        Command::Diff { file, new_host } => ops::diff(
            &ops::DiffOptions {
                file,
                actual: actual(new_host)?,
            },
            console,
        )?,
        Command::Generate { new_host, output } => ops::generate(
            &ops::GenerateOptions {
                actual: actual(new_host)?,
                output,
            },
            console,
        )?,
        Command::Capture { dir } => ops::capture(
            &ops::CaptureOptions {
                dir,
                host_root: cli.host_root,
                cuts: seed_cuts,
            },
            console,
        )?,
        Command::Sim {
            socket,
            seed,
            close_delay,
            never_close,
            drop_after,
            eagain_on_commit,
            reply_delay,
            hotplug_delay,
            strict_transactions,
            no_drivers,
            no_blkfront,
        } => {
            let drivers = (!no_drivers).then(|| xendisk::sim::Drivers {
                host: ops::host_view(&cli.host_root),
                without_blkfront: no_blkfront.into_iter().collect(),
                hotplug_delay: Duration::from_millis(hotplug_delay),
            });
            let options = ops::SimOptions {
                socket,
                seed,
                drivers,
                guests: xendisk::sim::GuestPolicy {
                    close_delay: Duration::from_millis(close_delay),
                    never_close: never_close.into_iter().collect(),
                },
                faults: xendisk::sim::Faults {
                    drop_after_requests: drop_after,
                    eagain_commits: eagain_on_commit.into_iter().collect(),
                    reply_delay: Duration::from_millis(reply_delay),
                    strict_transactions,
                },
            };
            ops::sim(&options, console)?
        }
        Command::Import { legacy } => ops::import(
            &ops::ImportOptions {
                state,
                legacy,
                host_root: cli.host_root,
                now: now()?,
            },
            console,
        )?,
    })
}

/// The current time, or the one `XENDISK_NOW` pins.
fn now() -> anyhow::Result<jiff::Timestamp> {
    Ok(pinned_now()?.unwrap_or_else(jiff::Timestamp::now))
}

/// `XENDISK_NOW` (RFC 3339), so that tests and audits can evaluate expiries
/// at a chosen instant.
fn pinned_now() -> anyhow::Result<Option<jiff::Timestamp>> {
    match std::env::var("XENDISK_NOW") {
        Ok(text) => text
            .parse()
            .map(Some)
            .with_context(|| format!("XENDISK_NOW={text:?} is not an RFC 3339 time")),
        Err(_) => Ok(None),
    }
}

/// Colour for a terminal, unless `NO_COLOR` says otherwise.
fn colour_on(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The error and its causes, leaving out a cause that the message above it
/// already quotes (library errors name their cause in their own words).
fn describe(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message = format!("{message}: {cause}");
        }
    }
    message
}
