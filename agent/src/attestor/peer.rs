//! The Workload API's connections: each accepted Unix stream carries what the
//! kernel said about its peer at accept time (SO_PEERCRED, a pin on the
//! process and, with binary selectors on, which file it runs), handed to
//! every request on it through tonic's `Connected`.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use nix::sys::socket::{getsockopt, sockopt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Connected;

use super::binary::ConnectedExe;
use super::pin::{PinError, ProcessPin};

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
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot read the caller's credentials: {0}")]
    Credentials(nix::Error),
    #[error("the caller's PID is not visible to the agent (another PID namespace?)")]
    NoPid,
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// The connection info every request on a connection gets; an error when the
/// peer could not be identified, so that calls fail rather than the accept loop.
#[derive(Debug, Clone)]
pub struct PeerInfo(pub Arc<Result<Peer, PeerError>>);

impl PeerInfo {
    fn of(stream: &UnixStream, record_exe: bool) -> Self {
        Self(Arc::new(identify(stream, record_exe)))
    }
}

/// The pin first, then the executable: a pin that still holds at call time
/// proves the executable was read from the pinned process.
fn identify(stream: &UnixStream, record_exe: bool) -> Result<Peer, PeerError> {
    let cred =
        getsockopt(&stream.as_fd(), sockopt::PeerCredentials).map_err(PeerError::Credentials)?;
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
    })
}

/// A Unix stream with its peer identified.
#[derive(Debug)]
pub struct PeerStream {
    stream: UnixStream,
    info: PeerInfo,
}

impl PeerStream {
    /// `record_exe`: whether binary selectors are on, so the caller's
    /// executable is recorded.
    pub fn new(stream: UnixStream, record_exe: bool) -> Self {
        let info = PeerInfo::of(&stream, record_exe);
        Self { stream, info }
    }

    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

/// Accepted connections of `listener`, each identified as it is accepted.
pub fn incoming(
    listener: UnixListener,
    record_exe: bool,
) -> impl Stream<Item = io::Result<PeerStream>> {
    UnixListenerStream::new(listener)
        .map(move |accepted| accepted.map(|stream| PeerStream::new(stream, record_exe)))
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
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
