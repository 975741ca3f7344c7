//! A Workload API caller as the kernel described it at accept time:
//! SO_PEERCRED, a pin on the process, its cgroups and, with binary
//! selectors on, which file it runs. Every request on the connection gets it.

use std::os::fd::AsFd;
use std::sync::Arc;

use nix::sys::socket::UnixCredentials;
use tokio::net::UnixStream;

use super::binary::ConnectedExe;
use super::cgroup::{CgroupError, CgroupFile};
use super::pin::{PinError, ProcessPin};
use super::writer::HandedOver;

/// What `SO_PEERCRED` told us about the process on the other end of the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCredentials {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// A caller as seen at accept time.
#[derive(Debug)]
pub(crate) struct Peer {
    pub credentials: PeerCredentials,
    pub pin: ProcessPin,
    /// The file it ran when accepted: binary selectors describe only that.
    pub exe: ConnectedExe,
    /// Set when another process wrote on the connection (binary selectors
    /// on): the file above then says nothing of who is asking.
    pub handed_over: HandedOver,
    /// Its cgroups when accepted: systemd and container selectors are
    /// given only while they are still the same.
    pub cgroups: Result<CgroupFile, CgroupError>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    #[error("the caller's PID is not visible to the agent (another PID namespace?)")]
    NoPid,
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// The connection info every request on a connection gets; an error when the
/// peer could not be identified, so that calls fail rather than the accept loop.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo(pub Arc<Result<Peer, PeerError>>);

impl Peer {
    /// The caller at the other end of `stream`, which SO_PEERCRED described
    /// as `cred`. The pin first, then the executable: a pin that still holds
    /// at call time proves the executable was read from the pinned process.
    pub(crate) fn at_accept(
        stream: &UnixStream,
        cred: UnixCredentials,
        record_exe: bool,
        handed_over: HandedOver,
    ) -> Result<Self, PeerError> {
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
        let cgroups = CgroupFile::read(pid);
        Ok(Self {
            credentials: PeerCredentials {
                uid: cred.uid(),
                gid: cred.gid(),
                pid,
            },
            pin,
            exe,
            handed_over,
            cgroups,
        })
    }
}
