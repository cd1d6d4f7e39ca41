//! A xenstored simulator, so that xendisk can be tried and tested without a
//! Xen host: a server speaking the real xenstore wire protocol on a unix
//! socket, seeded from a `xenstore-ls` dump.
//!
//! It plays the guests too (a backend set to Closing is answered by the
//! frontend going Closed, after a delay, unless that guest keeps its disks),
//! and can inject faults (dropped connections, EAGAIN on commit, slow
//! replies). It owns only its own store; it never touches the host.

pub mod dump;
mod server;
pub mod store;

use std::collections::BTreeSet;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

pub use store::Store;

/// How the simulated guests answer a backend that is closing.
#[derive(Debug, Clone)]
pub struct GuestPolicy {
    /// How long a guest takes to close its frontend.
    pub close_delay: Duration,
    /// Domains whose guests never close (they keep the disk).
    pub never_close: BTreeSet<u32>,
}

impl Default for GuestPolicy {
    fn default() -> GuestPolicy {
        GuestPolicy {
            close_delay: Duration::from_millis(10),
            never_close: BTreeSet::new(),
        }
    }
}

/// Faults to inject.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Close each connection after it has sent this many requests (the next
    /// request gets no answer).
    pub drop_after_requests: Option<u64>,
    /// Fail these transaction commits (counted from 1 over all clients) with EAGAIN.
    pub eagain_commits: BTreeSet<u64>,
    /// Wait this long before answering each request.
    pub reply_delay: Duration,
}

/// A running simulator. Stops, and removes its socket, when dropped.
pub struct Simulator {
    socket: PathBuf,
    shared: Arc<server::Shared>,
    acceptor: Option<JoinHandle<io::Result<()>>>,
}

impl Simulator {
    /// Starts serving `store` on a new unix socket at `socket`.
    pub fn start(
        socket: &Path,
        store: Store,
        guests: GuestPolicy,
        faults: Faults,
    ) -> io::Result<Simulator> {
        let listener = UnixListener::bind(socket).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", socket.display()),
            )
        })?;
        let shared = Arc::new(server::Shared::new(store, guests, faults));
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || server::accept_loop(shared, listener))
        };
        Ok(Simulator {
            socket: socket.to_owned(),
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A copy of the whole store as it is now.
    pub fn store(&self) -> Store {
        self.shared.store()
    }

    /// Serves until the process is killed (for `xendisk sim`).
    pub fn wait(mut self) -> io::Result<()> {
        match self.acceptor.take() {
            Some(acceptor) => acceptor
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the simulator failed"))),
            None => Ok(()),
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        // Wake the acceptor so it sees the flag; if the socket is gone
        // already (its directory removed), the thread is left to the exit.
        let woken = std::os::unix::net::UnixStream::connect(&self.socket).is_ok();
        if let Some(acceptor) = self.acceptor.take()
            && woken
        {
            let _ = acceptor.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
