//! The Workload API's connections: each accepted Unix stream carries what the
//! kernel said about its peer at accept time (SO_PEERCRED, a pin on the
//! process and, with binary selectors on, which file it runs), handed to
//! every request on it through tonic's `Connected`.
//!
//! The socket is open to every local user and each connection holds two of
//! the agent's descriptors (the socket and the pidfd), so connections are
//! capped per uid and in total: without that, one user holding idle
//! connections could use up the agent's descriptors, after which it could
//! neither accept nor read /proc nor reach its server.

use std::convert::Infallible;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use lanyard_host::transport::AuthorityBlind;
use lanyard_host::transport::limits::{
    AcceptErrors, ConnectionLimiter, ConnectionLimits, ConnectionPermit,
};
use nix::sys::socket::{UnixCredentials, getsockopt, sockopt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;

use super::binary::ConnectedExe;
use super::pin::{PinError, ProcessPin};
use super::writer::{HandedOver, WriterChecked};

/// Most Workload API connections one uid may hold at once. A workload needs
/// one per client it runs; a few hundred leaves room for busy hosts sharing
/// one uid, while no uid alone can take most of the total.
pub const MAX_CONNECTIONS_PER_UID: usize = 256;
/// Most Workload API connections in all (fewer when the descriptor limit is lower).
pub const MAX_CONNECTIONS: usize = 16_384;
/// Descriptors a connection holds: its socket and the caller's pidfd.
const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything else: the server channel, /proc reads, logs.
const RESERVED_FDS: u64 = 256;

/// What `SO_PEERCRED` told us about the process on the other end of the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// A caller as seen at accept time.
#[derive(Debug)]
pub struct Peer {
    pub credentials: PeerCredentials,
    pub pin: ProcessPin,
    /// The file it ran when accepted: binary selectors describe only that.
    pub exe: ConnectedExe,
    /// Set when another process wrote on the connection (binary selectors
    /// on): the file above then says nothing of who is asking.
    pub handed_over: HandedOver,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the caller's PID is not visible to the agent (another PID namespace?)")]
    NoPid,
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// The connection info every request on a connection gets; an error when the
/// peer could not be identified, so that calls fail rather than the accept loop.
#[derive(Debug, Clone)]
pub struct PeerInfo(pub Arc<Result<Peer, PeerError>>);

/// The pin first, then the executable: a pin that still holds at call time
/// proves the executable was read from the pinned process.
fn identify(
    stream: &UnixStream,
    cred: UnixCredentials,
    record_exe: bool,
    handed_over: HandedOver,
) -> Result<Peer, PeerError> {
    let pid = cred.pid();
    if pid <= 0 {
        return Err(PeerError::NoPid);
    }
    let pin = ProcessPin::for_peer(stream.as_fd(), pid)?;
    let exe = if record_exe {
        ConnectedExe::record(pid)
    } else {
        ConnectedExe::Skipped
    };
    Ok(Peer {
        credentials: PeerCredentials {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
        },
        pin,
        exe,
        handed_over,
    })
}

/// The Workload API's caps: the defaults, lowered so that connections fit
/// in `open_files` (the soft RLIMIT_NOFILE) with room to spare.
pub fn limits_for_open_files(open_files: u64) -> ConnectionLimits {
    ConnectionLimits::within(
        MAX_CONNECTIONS_PER_UID,
        MAX_CONNECTIONS,
        open_files.saturating_sub(RESERVED_FDS),
        FDS_PER_CONNECTION,
    )
}

/// Workload API connections, counted per uid.
pub type WorkloadLimiter = ConnectionLimiter<u32>;

/// A Unix stream with its peer identified and its place among the open
/// connections; the place is given back when the stream is dropped.
#[derive(Debug)]
pub struct PeerStream {
    /// Requests on it reach tonic without `:authority`, which names nothing
    /// on a Unix socket and which h2 would refuse in the forms many clients send.
    stream: AuthorityBlind<WriterChecked>,
    info: PeerInfo,
    _permit: ConnectionPermit<u32>,
}

impl PeerStream {
    /// The accepted `stream` with its peer identified, or None (the stream
    /// closed) when the limiter refuses it. `record_exe`: whether binary
    /// selectors are on, so the caller's executable is recorded.
    pub fn admit(
        stream: UnixStream,
        limiter: &Arc<WorkloadLimiter>,
        record_exe: bool,
    ) -> Option<Self> {
        let cred = match getsockopt(&stream.as_fd(), sockopt::PeerCredentials) {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a Workload API caller's credentials; closing its connection");
                return None;
            }
        };
        // Counted before anything else is opened for it (the pidfd).
        let permit = limiter.try_acquire(cred.uid())?;
        let handed_over = HandedOver::default();
        let info = PeerInfo(Arc::new(identify(
            &stream,
            cred,
            record_exe,
            handed_over.clone(),
        )));
        // With binary selectors on, every read is checked for its writer
        // (SO_PASSCRED on the listener labels them).
        let expected = record_exe.then_some((cred.pid(), handed_over));
        Some(Self {
            stream: AuthorityBlind::new(WriterChecked::new(stream, expected)),
            info,
            _permit: permit,
        })
    }

    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

/// Accepted connections of `listener` within `limiter`'s caps, each
/// identified as it is accepted; refused ones are closed and skipped.
pub fn incoming(
    listener: UnixListener,
    limiter: Arc<WorkloadLimiter>,
    record_exe: bool,
) -> impl Stream<Item = Result<PeerStream, Infallible>> {
    futures::stream::unfold(listener, move |listener| {
        let limiter = limiter.clone();
        async move {
            let mut errors = AcceptErrors::new("Workload API");
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        if let Some(admitted) = PeerStream::admit(stream, &limiter, record_exe) {
                            return Some((Ok(admitted), listener));
                        }
                    }
                    Err(e) => errors.pause(&e).await,
                }
            }
        }
    })
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    lanyard_host::write_through!(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_fit_the_open_files_limit() {
        let small = limits_for_open_files(1024);
        assert_eq!(small.total, (1024 - 256) / 2);
        assert_eq!(small.per_peer, small.total / 4);
        let large = limits_for_open_files(1 << 20);
        assert_eq!(large.total, MAX_CONNECTIONS);
        let tiny = limits_for_open_files(100);
        assert_eq!((tiny.total, tiny.per_peer), (1, 1));
    }
}
