//! The `xendisk` command: parses arguments, calls the library, maps the
//! outcome to an exit code. Nothing else lives here.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xendisk::ops::{self, Console, Exit};

/// Declarative reconciler for the disk state of a Xen host (dom0).
#[derive(Debug, Parser)]
#[command(name = "xendisk", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Print the JSON Schema of desired-state files.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
    let mut console = Console {
        out: &mut stdout,
        err: &mut stderr,
        colour,
    };
    let result = match cli.command {
        Command::Validate { files } => ops::validate(&ops::ValidateOptions { files }, &mut console),
        Command::Vdev { names, json } => ops::vdev(&ops::VdevOptions { names, json }, &mut console),
        Command::Schema => ops::schema(&mut console),
    };
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(Exit::Error as u8)
        }
    }
}
