//! A xenstored simulator, so that xendisk can be tried and tested without a
//! Xen host: a server speaking the real xenstore wire protocol on a unix
//! socket, seeded from a `xenstore-ls` dump as a real host's tool prints it
//! ([`dump`]: both forms, permissions, the tool's escapes; values it cut are
//! served as printed and recorded, so that commands can warn). `xendisk
//! capture` writes such a seed from a live host (`ops::capture`).
//!
//! It plays the guests too (a backend set to Closing is answered by the
//! frontend going Closed, after a delay, unless that guest keeps its disks),
//! and, when given [`Drivers`], dom0's blkback, the `block` hotplug script
//! over a [`HostView`] of the simulated dom0 ([`hotplug`]) and the guests'
//! blkfront ([`drivers`]), so that a disk connects only as it would on a
//! real host. It can inject faults (dropped connections, EAGAIN on commit,
//! slow replies). It owns only its own store; it never touches the host.

mod change;
pub mod drivers;
pub mod dump;
pub mod hotplug;
pub mod perms;
mod server;
pub mod store;
mod vbds;

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

pub use drivers::Drivers;
pub use hotplug::HostView;
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
    /// Fail a commit when any change at all happened since its transaction
    /// began (docs/misc/xenstore.txt's rule), not only one to a node it
    /// accessed (xenstored's).
    pub strict_transactions: bool,
}

/// A running simulator. Stops, and removes its socket, when dropped.
///
/// Another simulator may have taken the same socket path since this one
/// bound it (a command started while this one ran removes what it takes
/// for a dead run's socket): this one then stops without touching it. It
/// wakes its own acceptor through its own listener, never by connecting to
/// the path, and removes the path only while it still names its socket.
pub struct Simulator {
    socket: PathBuf,
    /// The socket file this simulator made: its device and inode.
    made: Option<(u64, u64)>,
    /// The listening socket the acceptor waits on, to wake it.
    listener: UnixListener,
    shared: Arc<server::Shared>,
    acceptor: Option<JoinHandle<io::Result<()>>>,
}

impl Simulator {
    /// Starts serving `store` on a new unix socket at `socket`, playing no
    /// drivers: backends and frontends stay as their writers leave them
    /// (but for closing, which the guests answer).
    pub fn start(
        socket: &Path,
        store: Store,
        guests: GuestPolicy,
        faults: Faults,
    ) -> io::Result<Simulator> {
        Simulator::start_with_drivers(socket, store, guests, faults, None)
    }

    /// Starts serving `store`, playing `drivers` (blkback, the hotplug
    /// step, the guests' blkfront) when given: a vbd connects only as it
    /// would on a real host.
    pub fn start_with_drivers(
        socket: &Path,
        store: Store,
        guests: GuestPolicy,
        faults: Faults,
        drivers: Option<Drivers>,
    ) -> io::Result<Simulator> {
        let listener = UnixListener::bind(socket).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", socket.display()),
            )
        })?;
        let made = std::fs::symlink_metadata(socket)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let waker = listener.try_clone()?;
        let shared = Arc::new(server::Shared::new(store, guests, faults, drivers));
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || server::accept_loop(shared, listener))
        };
        Ok(Simulator {
            socket: socket.to_owned(),
            made,
            listener: waker,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A connection that acts as domain `domid`, its requests checked
    /// against each node's permissions as xenstored checks a guest's (a
    /// connection to the socket is dom0's, which may do anything).
    pub fn connect_as(&self, domid: u32) -> io::Result<std::os::unix::net::UnixStream> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let shared = Arc::clone(&self.shared);
        std::thread::spawn(move || shared.serve(theirs, domid));
        Ok(ours)
    }

    /// A copy of the whole store as it is now.
    pub fn store(&self) -> Store {
        self.shared.store()
    }

    /// Whether the store changed since the simulator started (a write,
    /// a removal, new permissions; from a client or a simulated driver).
    pub fn changed(&self) -> bool {
        self.shared.generation() != server::FIRST_GENERATION
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
        // On Linux, shutting a listening socket down makes a blocked
        // accept() return (EINVAL); the acceptor then sees the flag. This
        // reaches this simulator's own socket whatever the path names now.
        // SAFETY: the descriptor is the listener's, open while `self` lives.
        let woken = unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) } == 0;
        if let Some(acceptor) = self.acceptor.take()
            && woken
        {
            let _ = acceptor.join();
        }
        // Between this check and the removal another simulator could bind
        // the path; commands on one simulated host take turns (a lock in
        // `ops`), so only a test that starts two at one path could see it.
        let still_ours = std::fs::symlink_metadata(&self.socket)
            .is_ok_and(|m| Some((m.dev(), m.ino())) == self.made);
        if still_ours {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}
