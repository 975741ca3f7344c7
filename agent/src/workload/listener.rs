//! The Workload API's listener: each accepted Unix stream is identified at
//! accept time (see [`crate::attestor::peer`]) and carries that to every
//! request on it through tonic's `Connected`.
//!
//! The socket is open to every local user and each connection holds two of
//! the agent's descriptors (the socket and the pidfd), so connections are
//! capped per uid and in total: without that, one user holding idle
//! connections could use up the agent's descriptors, after which it could
//! neither accept nor read /proc nor reach its server.

use std::convert::Infallible;
use std::future::Future;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use lanyard_host::transport::limits::{
    AcceptErrors, ConnectionLimiter, ConnectionLimits, Permitted,
};
use lanyard_host::transport::{Accepted, AuthorityBlind};
use lanyard_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::{UnixListener, UnixStream};

use super::metered::Metered;
use crate::attestor::peer::{Peer, PeerInfo};
use crate::attestor::writer::{HandedOver, WriterChecked};

/// Most Workload API connections one uid may hold at once. A workload needs
/// one per client it runs; a few hundred leaves room for busy hosts sharing
/// one uid, while no uid alone can take most of the total.
pub(crate) const MAX_CONNECTIONS_PER_UID: usize = 256;
/// Most Workload API connections in all (fewer when the descriptor limit is lower).
pub(crate) const MAX_CONNECTIONS: usize = 16_384;
/// Descriptors a connection holds: its socket and the caller's pidfd.
const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything else: the server channel, /proc reads, logs.
const RESERVED_FDS: u64 = 256;

/// The Workload API's caps: the defaults, lowered so that connections fit
/// in `open_files` (the soft RLIMIT_NOFILE) with room to spare.
pub(crate) fn limits_for_open_files(open_files: u64) -> ConnectionLimits {
    ConnectionLimits::within(
        MAX_CONNECTIONS_PER_UID,
        MAX_CONNECTIONS,
        open_files.saturating_sub(RESERVED_FDS),
        FDS_PER_CONNECTION,
    )
}

/// Workload API connections, counted per uid.
pub(crate) type WorkloadLimiter = ConnectionLimiter<u32>;

/// A Unix stream with its peer identified (the connect info of every
/// request on it) and its place among the open connections, given back when
/// the stream is dropped. Requests on it reach tonic without `:authority`,
/// which names nothing on a Unix socket and which h2 would refuse in the
/// forms many clients send.
pub(crate) type PeerStream = Permitted<Accepted<AuthorityBlind<WriterChecked>, PeerInfo>, u32>;

/// The accepted `stream` with its peer identified, or None (the stream
/// closed) when the limiter refuses it. `record_exe`: whether binary
/// selectors are on, so the caller's executable is recorded.
fn admit(
    stream: UnixStream,
    limiter: &Arc<WorkloadLimiter>,
    record_exe: bool,
) -> Option<PeerStream> {
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
    let info = PeerInfo(Arc::new(Peer::at_accept(
        &stream,
        cred,
        record_exe,
        handed_over.clone(),
    )));
    // With binary selectors on, every read is checked for its writer
    // (SO_PASSCRED on the listener labels them).
    let expected = record_exe.then_some((cred.pid(), handed_over));
    let stream = AuthorityBlind::new(WriterChecked::new(stream, expected));
    Some(Permitted::new(Accepted::new(stream, info), permit))
}

/// Accepted connections of `listener` within `limiter`'s caps, each
/// identified as it is accepted; refused ones are closed and skipped.
pub(crate) fn incoming(
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
                        if let Some(admitted) = admit(stream, &limiter, record_exe) {
                            return Some((Ok(admitted), listener));
                        }
                    }
                    Err(e) => errors.pause(&e).await,
                }
            }
        }
    })
}

/// HTTP/2 pings on Workload API connections: a peer that stopped answering
/// (hung, or frozen with the socket open; the kernel reports dead ones) is
/// dropped and its place among the capped connections given back.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `service` on `listener` until `shutdown`: connections capped by
/// `limiter`, each caller identified at accept (its executable recorded
/// when `record_exe`).
pub(crate) fn serve(
    service: Metered,
    listener: UnixListener,
    limiter: Arc<WorkloadLimiter>,
    record_exe: bool,
    shutdown: impl Future<Output = ()>,
) -> impl Future<Output = Result<(), tonic::transport::Error>> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(SpiffeWorkloadApiServer::new(service))
        .serve_with_incoming_shutdown(incoming(listener, limiter, record_exe), shutdown)
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
