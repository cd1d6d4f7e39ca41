//! Running a backend's hotplug script the way libxl runs it
//! (tools/libs/light/libxl_linux.c, libxl_device.c): the script named in
//! the backend's `script` node, with the action (`add` or `remove`) as its
//! only argument, four variables telling it which backend it serves, no
//! standard input, and 40 seconds to finish.
//!
//! Debian's `block` script reads `params`, `mode` and `type` from the
//! backend, checks that no one else uses the device in a way the mode
//! forbids, sets up a loop device for an image file, and writes
//! `physical-device` (which blkback waits for) and `hotplug-status`; when it
//! refuses, it writes `hotplug-error` and `hotplug-status = "busy"` or
//! `"error"` and exits non-zero.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// libxl's `LIBXL_HOTPLUG_TIMEOUT`.
pub const HOTPLUG_TIMEOUT: Duration = Duration::from_secs(40);

/// What a script was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Add,
    Remove,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
        }
    }
}

/// How a script run ended, short of being started.
#[derive(Debug)]
pub enum Outcome {
    Succeeded,
    /// It exited with a failure; what it printed.
    Failed {
        status: String,
        output: String,
    },
    /// It ran past the timeout and was killed; what it printed.
    TimedOut {
        output: String,
    },
}

/// The script could not be started at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot run the hotplug script {script}: {source}")]
pub struct SpawnError {
    pub script: PathBuf,
    pub source: std::io::Error,
}

/// The environment libxl gives a block backend's script: which backend,
/// relative to the backend domain's home (`/local/domain/0`).
pub fn environment(kind: &str, domid: u32, devid: u32, script: &Path) -> Vec<(String, String)> {
    vec![
        ("script".into(), script.to_string_lossy().into_owned()),
        ("XENBUS_TYPE".into(), kind.into()),
        (
            "XENBUS_PATH".into(),
            format!("backend/{kind}/{domid}/{devid}"),
        ),
        ("XENBUS_BASE_PATH".into(), "backend".into()),
    ]
}

/// Runs `script action` with `environment` added to xendisk's own (the
/// xenstore tools it calls find xenstored as xendisk did), and waits for it
/// up to `timeout`.
pub fn run(
    script: &Path,
    action: Action,
    environment: &[(String, String)],
    timeout: Duration,
) -> Result<Outcome, SpawnError> {
    let spawn_error = |source| SpawnError {
        script: script.to_owned(),
        source,
    };
    // Its output goes to a file, not a pipe: a process it leaves behind
    // would hold a pipe open and stall the read long after it exited.
    let log = tempfile::tempfile().map_err(spawn_error)?;
    let mut child = Command::new(script)
        .arg(action.as_str())
        .envs(environment.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(spawn_error)?)
        .stderr(log.try_clone().map_err(spawn_error)?)
        .spawn()
        .map_err(spawn_error)?;
    tracing::debug!(script = %script.display(), action = action.as_str(), ?environment, "hotplug script started");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(spawn_error)? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = read_all(log);
    tracing::debug!(script = %script.display(), action = action.as_str(), ?status, %output, "hotplug script ended");
    Ok(match status {
        Some(status) if status.success() => Outcome::Succeeded,
        Some(status) => Outcome::Failed {
            status: status.to_string(),
            output,
        },
        None => Outcome::TimedOut { output },
    })
}

fn read_all(mut file: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    if file.rewind().is_ok() {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).trim().to_owned();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("block");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn the_script_gets_libxl_s_argument_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let path = script(
            dir.path(),
            &format!(
                "echo \"$# $1 $XENBUS_TYPE $XENBUS_PATH $XENBUS_BASE_PATH $script\" > '{}'",
                seen.display()
            ),
        );
        let env = environment("vbd", 3, 51728, &path);
        let outcome = run(&path, Action::Add, &env, HOTPLUG_TIMEOUT).unwrap();
        assert!(matches!(outcome, Outcome::Succeeded), "{outcome:?}");
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap().trim(),
            format!("1 add vbd backend/vbd/3/51728 backend {}", path.display())
        );
    }

    #[test]
    fn a_failing_script_s_output_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(dir.path(), "echo 'no such device' >&2; exit 1");
        match run(&path, Action::Remove, &[], HOTPLUG_TIMEOUT).unwrap() {
            Outcome::Failed { output, .. } => assert_eq!(output, "no such device"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_script_past_its_time_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(dir.path(), "echo started; exec sleep 30");
        let started = Instant::now();
        let outcome = run(&path, Action::Add, &[], Duration::from_millis(300)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        match outcome {
            Outcome::TimedOut { output } => assert_eq!(output, "started"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_script_is_a_spawn_error_naming_it() {
        let error = run(
            Path::new("/nonexistent/block"),
            Action::Add,
            &[],
            HOTPLUG_TIMEOUT,
        )
        .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/block"), "{error}");
    }
}
