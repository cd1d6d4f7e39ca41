//! One apply per host at a time: an exclusive `flock` on a lock file beside
//! the state DB, held for the whole apply and released when the process
//! ends, however it ends. The same kind of lock keeps the commands on one
//! simulated host (`--sim DIR`) one at a time.
//!
//! xendisk runs as root, and the lock file sits in a directory an operator
//! chose: it is opened without following a symbolic link (a link planted
//! there must not make root create or open another file), must be a plain
//! file, and is created readable by its owner only.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{holder} holds {path} and did not finish within {seconds}s; nothing was changed: \
         try again later{hint}"
    )]
    TimedOut {
        path: String,
        holder: &'static str,
        seconds: u64,
        hint: &'static str,
    },
    #[error(
        "the lock file {path} is a symbolic link; xendisk does not follow links there (it runs \
         as root, and a link would make it create or open another file): nothing was changed: \
         remove the link, which xendisk did not make"
    )]
    Link { path: String },
    #[error(
        "the lock file {path} is not a regular file; nothing was changed: remove it, which \
         xendisk did not make"
    )]
    NotAFile { path: String },
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

/// Takes the apply lock of the state DB `state`, waiting up to `timeout`
/// and saying once that it waits.
pub fn acquire(
    state: &Path,
    timeout: Duration,
    messages: &mut dyn Write,
) -> Result<ApplyLock, LockError> {
    let waiting = Waiting {
        holder: "another apply",
        hint: ", or wait longer with --lock-timeout",
    };
    acquire_file(&lock_path(state), timeout, waiting, messages)
}

/// Who may hold a lock, for the messages while waiting for it.
#[derive(Debug, Clone, Copy)]
pub struct Waiting {
    /// "another apply".
    pub holder: &'static str,
    /// What else to do when the wait times out, after "try again later".
    pub hint: &'static str,
}

/// Takes an exclusive lock on the file `path` (created if missing; its
/// directory must exist), waiting up to `timeout`.
pub fn acquire_file(
    path: &Path,
    timeout: Duration,
    waiting: Waiting,
    messages: &mut dyn Write,
) -> Result<ApplyLock, LockError> {
    let name = path.display().to_string();
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // O_NONBLOCK: opening a FIFO planted there must fail, not hang
        // waiting for a reader; it changes nothing for a regular file.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => LockError::Link { path: name.clone() },
            Some(libc::ENXIO) => LockError::NotAFile { path: name.clone() },
            _ => LockError::Io {
                path: name.clone(),
                source,
            },
        })?;
    let metadata = file.metadata().map_err(|source| LockError::Io {
        path: name.clone(),
        source,
    })?;
    if !metadata.is_file() {
        return Err(LockError::NotAFile { path: name });
    }
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(ApplyLock { _file: file }),
            Err(TryLockError::WouldBlock) => {
                if Instant::now() >= deadline {
                    return Err(LockError::TimedOut {
                        path: name,
                        holder: waiting.holder,
                        seconds: timeout.as_secs(),
                        hint: waiting.hint,
                    });
                }
                if !said {
                    let _ = writeln!(
                        messages,
                        "Waiting for {} to finish (it holds {}) ...",
                        waiting.holder, name
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(TryLockError::Error(source)) => {
                return Err(LockError::Io { path: name, source });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn waiting() -> Waiting {
        Waiting {
            holder: "another test",
            hint: "",
        }
    }

    #[test]
    fn a_new_lock_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite.lock");
        let _lock = acquire_file(&path, Duration::ZERO, waiting(), &mut std::io::sink()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_link_at_the_lock_path_is_refused_and_its_target_not_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite.lock");
        let target = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let error = acquire_file(&path, Duration::ZERO, waiting(), &mut std::io::sink())
            .err()
            .unwrap();
        assert!(matches!(error, LockError::Link { .. }), "{error}");
        assert!(!target.exists(), "the link's target was created");
    }

    #[test]
    fn a_fifo_at_the_lock_path_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite.lock");
        let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let error = acquire_file(&path, Duration::ZERO, waiting(), &mut std::io::sink())
            .err()
            .unwrap();
        assert!(matches!(error, LockError::NotAFile { .. }), "{error}");
    }
}
