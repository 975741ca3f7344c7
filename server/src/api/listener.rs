//! The accept loops shared by the server's listeners: TCP (OIDC, Node API)
//! with a TLS handshake deadline, and Unix sockets (Admin, local Node API).
//! Every one caps connections per peer and in total (see
//! [`lanyard_host::transport::limits`]) and pauses after a failed accept.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::Stream;
use lanyard_host::transport::AuthorityBlind;
use lanyard_host::transport::limits::{
    AcceptErrors, ConnectionLimiter, ConnectionPermit, Permitted,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection accepted on a local API socket: its place held, and its
/// requests reaching tonic without `:authority`.
pub(crate) type LocalStream = AuthorityBlind<Permitted<UnixStream, u32>>;

/// Accepts connections until `shutdown` changes, handling each admitted one
/// in its own task with its place among `limiter`'s connections.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    limiter: Arc<ConnectionLimiter<IpAddr>>,
    mut shutdown: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, ConnectionPermit<IpAddr>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut errors = AcceptErrors::new(name);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Over the caps: closed at once (logged by the limiter).
                    let Some(permit) = limiter.try_acquire(peer.ip()) else {
                        continue;
                    };
                    // Small request/response exchanges: Nagle's algorithm
                    // against the peer's delayed ACK would add ~40 ms stalls.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(listener = name, %peer, error = %e, "TCP_NODELAY not set");
                    }
                    tokio::spawn(handle(tcp, peer, permit));
                }
                Err(e) => errors.pause(&e).await,
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Completes the TLS handshake, or logs why it did not and returns None.
pub(crate) async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    name: &str,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(listener = name, %peer, "TLS handshake timed out");
            None
        }
    }
}

/// The admitted connections of a local API socket, counted per uid
/// (SO_PEERCRED); refused ones are closed.
pub(crate) fn unix_incoming(
    listener: UnixListener,
    name: &'static str,
    limiter: Arc<ConnectionLimiter<u32>>,
) -> impl Stream<Item = std::io::Result<LocalStream>> {
    futures::stream::unfold(listener, move |listener| {
        let limiter = limiter.clone();
        async move {
            let mut errors = AcceptErrors::new(name);
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let uid = match stream.peer_cred() {
                            Ok(cred) => cred.uid(),
                            Err(e) => {
                                tracing::debug!(listener = name, error = %e, "no peer credentials; closing");
                                continue;
                            }
                        };
                        if let Some(permit) = limiter.try_acquire(uid) {
                            let admitted = AuthorityBlind::new(Permitted::new(stream, permit));
                            return Some((Ok(admitted), listener));
                        }
                    }
                    Err(e) => errors.pause(&e).await,
                }
            }
        }
    })
}

/// Descriptors kept for everything but connections: the datastore pool, key
/// and certificate files, logs.
const RESERVED_FDS: u64 = 256;
/// HTTP/2 pings on the gRPC listeners: a peer that stopped answering is
/// dropped and its place given back.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The caps of every listener of one server, sized together to its
/// open-files limit: OIDC a quarter, the mTLS Node API half, the two local
/// sockets an eighth each. A peer (an address; a uid on a Unix socket) never
/// holds more than a quarter of a listener's places.
#[derive(Debug, Clone)]
pub(crate) struct Limiters {
    pub oidc: Arc<ConnectionLimiter<IpAddr>>,
    pub node_tls: Arc<ConnectionLimiter<IpAddr>>,
    pub node_socket: Arc<ConnectionLimiter<u32>>,
    pub admin_socket: Arc<ConnectionLimiter<u32>>,
}

impl Limiters {
    /// `behind_proxy`: OIDC clients all arrive from the proxy's address, so
    /// OIDC has no per-address cap below its total.
    pub(crate) fn for_open_files(open_files: u64, behind_proxy: bool) -> Self {
        use lanyard_host::transport::limits::ConnectionLimits;
        let budget = open_files.saturating_sub(RESERVED_FDS);
        let mut oidc = ConnectionLimits::within(256, 4096, budget / 4, 1);
        if behind_proxy {
            oidc.per_peer = oidc.total;
        }
        Self {
            oidc: ConnectionLimiter::new("OIDC", oidc),
            node_tls: ConnectionLimiter::new(
                "Node API",
                ConnectionLimits::within(1024, 16_384, budget / 2, 1),
            ),
            node_socket: ConnectionLimiter::new(
                "Node API socket",
                ConnectionLimits::within(64, 256, budget / 8, 1),
            ),
            admin_socket: ConnectionLimiter::new(
                "Admin API",
                ConnectionLimits::within(64, 256, budget / 8, 1),
            ),
        }
    }
}

/// Hands rustls the current certificate; swapped in place on reload (the
/// OIDC endpoint's configured files, the Node API's CA-issued certificate).
#[derive(Debug)]
pub(crate) struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ReloadingCert {
    pub(crate) fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: ArcSwap::new(key),
        }
    }

    pub(crate) fn replace(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }
}
