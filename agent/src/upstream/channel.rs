//! Channels to the server's Node API: over mTLS to a remote server (the
//! server authenticated by the trust bundle, the agent by its SVID once it
//! has one), or over the local Node API socket to a server on this machine.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use super::NodeClientError;
use super::identity::{AgentCredentials, tls_config};
use crate::config::is_host_port;

/// The name the server's Node API certificate carries; only the trust
/// domain's CA issues it, and only to the server.
pub const SERVER_NAME: &str = "lanyard-server";

/// How to reach the server and how to recognise it.
#[derive(Debug, Clone)]
pub struct ServerEndpoint {
    /// `host:port` of the mTLS Node API.
    pub address: String,
    /// The trust domain's CA certificates.
    pub trust_bundle: Vec<CertificateDer<'static>>,
}

impl ServerEndpoint {
    pub fn new(address: &str, trust_bundle_path: &Path) -> Result<Self, NodeClientError> {
        let unreadable = |source| NodeClientError::BundleUnreadable {
            path: trust_bundle_path.to_owned(),
            source,
        };
        let pem = std::fs::read(trust_bundle_path).map_err(unreadable)?;
        let trust_bundle = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(unreadable)?;
        if trust_bundle.is_empty() {
            return Err(NodeClientError::BundleEmpty(trust_bundle_path.to_owned()));
        }
        if !is_host_port(address) {
            return Err(NodeClientError::Address(address.to_owned()));
        }
        Ok(Self {
            address: address.to_owned(),
            trust_bundle,
        })
    }
}

/// Longest wait for a connection to the server (TCP and TLS handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings, idle connections included: a server host that vanished
/// without a reset is noticed within interval + timeout, not after TCP gives
/// up retransmitting (~15 min), and calls on the dead connection fail.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings of every channel to the server; the URI only satisfies
/// tonic, the connector decides where to dial.
fn endpoint() -> Endpoint {
    Endpoint::from_static("http://lanyard-server")
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}

/// A lazily connecting channel to a server on this machine, over its local
/// Node API socket.
pub(crate) fn local_channel(node_socket: &Path) -> Channel {
    let path = node_socket.to_owned();
    endpoint().connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { UnixStream::connect(path).await.map(TokioIo::new) }
    }))
}

/// A lazily connecting channel to the Node API at `addr` over TLS set up by
/// `tls`; the server's certificate must name [`SERVER_NAME`], as with
/// [`channel`].
pub(crate) fn tls_channel(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Channel, NodeClientError> {
    let connector = TlsConnector::from(tls);
    let name = ServerName::try_from(SERVER_NAME)?;
    Ok(
        endpoint().connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let (connector, name) = (connector.clone(), name.clone());
            async move {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        })),
    )
}

/// A lazily connecting channel to the Node API over TLS, presenting
/// `identity` when given.
pub fn channel(
    server: &ServerEndpoint,
    identity: Option<&AgentCredentials>,
) -> Result<Channel, NodeClientError> {
    let roots = identity.map_or(&server.trust_bundle, |c| &c.bundle);
    let connector = TlsConnector::from(Arc::new(tls_config(roots, identity)?));
    let address = server.address.clone();
    let name = ServerName::try_from(SERVER_NAME)?;
    // Every connection dials `address` with TLS.
    Ok(
        endpoint().connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let (connector, address, name) = (connector.clone(), address.clone(), name.clone());
            async move {
                let tcp = TcpStream::connect(&address).await?;
                // gRPC's small frames must not wait on Nagle's algorithm
                // (~40 ms per exchange against a delayed ACK).
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        })),
    )
}
