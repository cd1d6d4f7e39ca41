//! One apply per host at a time: an exclusive `flock` on a lock file beside
//! the state DB, held for the whole apply and released when the process
//! ends, however it ends.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another apply holds {path} and did not finish within {seconds}s; nothing was changed: \
         try again later, or wait longer with --lock-timeout"
    )]
    TimedOut { path: String, seconds: u64 },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Held while it lives.
pub struct ApplyLock {
    _file: File,
}

/// The lock file for a state DB: beside it, same name plus `.lock`.
pub fn lock_path(state: &Path) -> PathBuf {
    let mut name = state
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    state.with_file_name(name)
}

/// Takes the lock, waiting up to `timeout` and saying once that it waits.
pub fn acquire(
    state: &Path,
    timeout: Duration,
    messages: &mut dyn Write,
) -> Result<ApplyLock, LockError> {
    let path = lock_path(state);
    let io = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(ApplyLock { _file: file }),
            Err(TryLockError::WouldBlock) => {
                if Instant::now() >= deadline {
                    return Err(LockError::TimedOut {
                        path: path.display().to_string(),
                        seconds: timeout.as_secs(),
                    });
                }
                if !said {
                    let _ = writeln!(
                        messages,
                        "Waiting for another apply to finish (it holds {}) ...",
                        path.display()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
    }
}
