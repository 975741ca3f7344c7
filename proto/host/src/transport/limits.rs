//! What keeps one peer from taking a listener down: caps on open connections
//! per peer (an IP address, or a uid on a Unix socket) and in total, sized to
//! the open-files limit; and accept errors (EMFILE above all) that pause the
//! accept loop instead of spinning, logged at most once a minute.
//!
//! Without them, a flood of idle connections on one face used up the daemon's
//! descriptors, after which no face (nor the datastore) could be reached.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// After a failed accept the listener stays readable: retrying at once spins.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Repeated warnings of one kind are logged at most this often.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(60);
/// The open-files limit assumed when it cannot be read (Linux's default soft limit).
const DEFAULT_OPEN_FILES: u64 = 1024;

/// Raises the soft limit on open files to the hard one and returns the soft
/// limit now in force: every connection holds descriptors.
pub fn raise_open_files_limit() -> u64 {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit");
            return DEFAULT_OPEN_FILES;
        }
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit");
            soft
        }
    }
}

/// How many connections a listener may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub per_peer: usize,
    pub total: usize,
}

impl ConnectionLimits {
    /// `per_peer` and `total`, with the total lowered so that its
    /// connections (`fds_per_connection` descriptors each) fit in `budget`
    /// descriptors, and one peer never given more than a quarter of the total
    /// (so that one peer alone cannot shut the others out); never below one.
    pub fn within(per_peer: usize, total: usize, budget: u64, fds_per_connection: u64) -> Self {
        let fit = budget / fds_per_connection.max(1);
        let total = usize::try_from(fit)
            .unwrap_or(usize::MAX)
            .clamp(1, total.max(1));
        Self {
            per_peer: per_peer.min(total / 4).max(1),
            total,
        }
    }
}

/// Counts open connections per peer and in total; a connection is admitted
/// with a [`ConnectionPermit`], which gives its place back when dropped.
#[derive(Debug)]
pub struct ConnectionLimiter<K> {
    /// Names the listener in logs.
    name: &'static str,
    limits: ConnectionLimits,
    open: Mutex<OpenConnections<K>>,
}

#[derive(Debug)]
struct OpenConnections<K> {
    total: usize,
    by_peer: HashMap<K, usize>,
    /// When a refusal of each peer was last logged as a warning.
    warned: HashMap<K, Instant>,
}

impl<K> Default for OpenConnections<K> {
    fn default() -> Self {
        Self {
            total: 0,
            by_peer: HashMap::new(),
            warned: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone + Display> ConnectionLimiter<K> {
    pub fn new(name: &'static str, limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            name,
            limits,
            open: Mutex::new(OpenConnections::default()),
        })
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, OpenConnections<K>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more connection of `peer`, or None (logged, at most
    /// once a minute per peer) when `peer` or everyone together already holds
    /// the most allowed.
    pub fn try_acquire(self: &Arc<Self>, peer: K) -> Option<ConnectionPermit<K>> {
        let (limit, scope, warn) = {
            let mut open = self.lock();
            let of_peer = open.by_peer.get(&peer).copied().unwrap_or(0);
            let (limit, scope) = if of_peer >= self.limits.per_peer {
                (self.limits.per_peer, "this peer")
            } else if open.total >= self.limits.total {
                (self.limits.total, "all peers together")
            } else {
                open.total += 1;
                *open.by_peer.entry(peer.clone()).or_default() += 1;
                return Some(ConnectionPermit {
                    limiter: self.clone(),
                    peer,
                });
            };
            let now = Instant::now();
            open.warned
                .retain(|_, at| now.duration_since(*at) < WARNING_INTERVAL);
            let warn = !open.warned.contains_key(&peer);
            if warn {
                open.warned.insert(peer.clone(), now);
            }
            (limit, scope, warn)
        };
        // Logged outside the lock; rate-limited so that a peer retrying in a
        // loop cannot flood the log.
        if warn {
            tracing::warn!(
                listener = self.name,
                %peer,
                limit,
                "connection refused: {scope} already hold the most connections allowed"
            );
        } else {
            tracing::debug!(listener = self.name, %peer, "connection refused");
        }
        None
    }

    /// Connections `peer` holds now.
    pub fn open_of(&self, peer: &K) -> usize {
        self.lock().by_peer.get(peer).copied().unwrap_or(0)
    }

    /// Connections held now, by everyone.
    pub fn open_total(&self) -> usize {
        self.lock().total
    }
}

/// One admitted connection's place.
#[derive(Debug)]
pub struct ConnectionPermit<K: Hash + Eq> {
    limiter: Arc<ConnectionLimiter<K>>,
    peer: K,
}

impl<K: Hash + Eq> Drop for ConnectionPermit<K> {
    fn drop(&mut self) {
        let mut open = self
            .limiter
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_peer.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.by_peer.remove(&self.peer);
            }
        }
    }
}

/// A stream that holds its place among a listener's connections until dropped.
#[derive(Debug)]
pub struct Permitted<S, K: Hash + Eq> {
    inner: S,
    _permit: ConnectionPermit<K>,
}

impl<S, K: Hash + Eq> Permitted<S, K> {
    pub fn new(inner: S, permit: ConnectionPermit<K>) -> Self {
        Self {
            inner,
            _permit: permit,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Connected, K: Hash + Eq> Connected for Permitted<S, K> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin, K: Hash + Eq + Unpin> AsyncRead for Permitted<S, K> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, K: Hash + Eq + Unpin> AsyncWrite for Permitted<S, K> {
    crate::write_through!(inner);
}

/// Failed accepts of one listener: each pauses the loop, and they are
/// logged at most once a minute, with how many there were.
#[derive(Debug)]
pub struct AcceptErrors {
    name: &'static str,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// Notes `error` and waits [`ACCEPT_ERROR_PAUSE`].
    pub async fn pause(&mut self, error: &io::Error) {
        let now = Instant::now();
        let due = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= WARNING_INTERVAL);
        if due {
            tracing::warn!(
                listener = self.name,
                %error,
                since_last = self.unlogged,
                "accepting a connection failed; pausing (logged at most once a minute)"
            );
            self.last_logged = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each peer has its own share; all of them together share the total;
    /// dropped permits give their places back.
    #[test]
    fn caps_per_peer_and_in_total() {
        let limiter = ConnectionLimiter::new(
            "test",
            ConnectionLimits {
                per_peer: 2,
                total: 3,
            },
        );
        let a1 = limiter.try_acquire(1000u32);
        let a2 = limiter.try_acquire(1000);
        assert!(a1.is_some() && a2.is_some());
        assert!(limiter.try_acquire(1000).is_none(), "over 1000's share");
        let b1 = limiter.try_acquire(1001);
        assert!(b1.is_some(), "another peer has its own share");
        assert!(limiter.try_acquire(1002).is_none(), "over the total");
        drop(a1);
        assert_eq!(limiter.open_of(&1000), 1);
        let again = limiter.try_acquire(1000);
        assert!(again.is_some());
        drop((a2, again, b1));
        assert_eq!(limiter.open_of(&1000), 0);
        assert_eq!(limiter.open_total(), 0);
        assert!(limiter.lock().by_peer.is_empty());
    }

    #[test]
    fn limits_fit_the_descriptor_budget() {
        let small = ConnectionLimits::within(256, 16_384, 1024 - 256, 2);
        assert_eq!(
            (small.per_peer, small.total),
            (96, 384),
            "a quarter each at most"
        );
        let large = ConnectionLimits::within(256, 16_384, 1 << 20, 2);
        assert_eq!(large.total, 16_384);
        let tiny = ConnectionLimits::within(256, 16_384, 1, 2);
        assert_eq!((tiny.total, tiny.per_peer), (1, 1));
    }
}
