//! The Node API's TLS listener. Client certificates are optional at the TLS
//! layer (an agent attesting for the first time has none) but, when present,
//! must chain to a CA of the trust domain's bundle (every server's CAs, see
//! `authority::bundle`, so an agent attested through one server of a group
//! is admitted by all); the server's own certificate is signed by its own CA; the peer's SPIFFE ID, serial and
//! expiry ride along with each connection so handlers can check them against
//! the agent's record and the clock (rustls checks validity only at the
//! handshake, and an HTTP/2 connection can outlive the certificate).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use lanyard_host::transport::Accepted;
use lanyard_host::transport::limits::{ConnectionLimiter, Permitted};
use lanyard_proto::SpiffeId;
use rcgen::KeyPair;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::api::listener::{self, ReloadingCert};
use crate::authority::bundle::TrustBundle;
use crate::authority::ca::{CaError, CertificateAuthority, peer_identity};

/// The server certificate's lifetime; it is reissued at half of it.
const SERVER_CERT_TTL: Duration = Duration::from_secs(48 * 3600);
/// How often the CA schedule and the server certificate are looked at.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeTlsError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("Node API TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("Node API TLS client verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// The agent at the other end, from its verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerSvid {
    pub spiffe_id: SpiffeId,
    pub serial: String,
    /// The certificate's notAfter, in Unix seconds.
    pub not_after: i64,
}

impl PeerSvid {
    /// The identity in a verified client certificate; None if it holds none.
    pub(crate) fn from_certificate(cert: &[u8]) -> Option<Self> {
        let (spiffe_id, serial) = peer_identity(cert)?;
        // Parsed a second time (once per connection) so that the CA's
        // peer_identity keeps its shape.
        let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
        Some(Self {
            spiffe_id,
            serial,
            not_after: parsed.validity().not_after.timestamp(),
        })
    }
}

/// Per-connection facts handed to every request on it.
#[derive(Debug, Clone)]
pub(crate) struct NodeConnectInfo {
    /// None when the client presented no certificate (attestation only).
    pub peer: Option<PeerSvid>,
    /// The peer's address, as the TCP connection says (pending attestations
    /// are capped per address).
    pub remote: SocketAddr,
}

/// An accepted Node API connection: the TLS stream, what its client
/// certificate says, and its place among the connections (given back when it
/// closes).
pub(crate) type NodeTlsStream = Permitted<Accepted<TlsStream<TcpStream>, NodeConnectInfo>, IpAddr>;

fn server_certified_key(
    ca: &CertificateAuthority,
    now: SystemTime,
) -> Result<Arc<CertifiedKey>, NodeTlsError> {
    let key = KeyPair::generate().map_err(CaError::from)?;
    let (issued, ca_cert) = ca.issue_server_cert(&key, SERVER_CERT_TTL, now)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = provider.key_provider.load_private_key(private)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![issued.der, ca_cert],
        signing_key,
    )))
}

/// The TLS acceptor in force; rebuilt when the set of trusted CAs changes.
pub(crate) struct SharedAcceptor(ArcSwap<TlsAcceptor>);

impl std::fmt::Debug for SharedAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedAcceptor")
    }
}

impl SharedAcceptor {
    fn current(&self) -> TlsAcceptor {
        TlsAcceptor::clone(&self.0.load())
    }

    fn replace(&self, acceptor: TlsAcceptor) {
        self.0.store(Arc::new(acceptor));
    }
}

/// Client certificates must chain to one of the trust bundle's CAs.
fn build_acceptor(
    bundle: &TrustBundle,
    resolver: Arc<ReloadingCert>,
) -> Result<TlsAcceptor, NodeTlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in bundle.certificates() {
        roots.add(cert)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(NodeTlsError::Verifier)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The acceptor, and the resolver whose certificate `maintain` keeps fresh.
pub(crate) fn acceptor(
    bundle: &TrustBundle,
) -> Result<(Arc<SharedAcceptor>, Arc<ReloadingCert>), NodeTlsError> {
    let resolver = Arc::new(ReloadingCert::new(server_certified_key(
        bundle.ca(),
        SystemTime::now(),
    )?));
    let acceptor = build_acceptor(bundle, resolver.clone())?;
    Ok((
        Arc::new(SharedAcceptor(ArcSwap::from_pointee(acceptor))),
        resolver,
    ))
}

/// Rotates the CA when due (then publishes the new set and reissues the
/// server certificate from the signing CA), reissues the server certificate
/// at half its lifetime, and trusts the bundle anew whenever it changes (a
/// rotation here or on another server of the group), until shutdown.
pub(crate) async fn maintain(
    bundle: Arc<TrustBundle>,
    acceptor: Arc<SharedAcceptor>,
    resolver: Arc<ReloadingCert>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ca = bundle.ca().clone();
    let mut changes = bundle.subscribe();
    changes.borrow_and_update();
    let rebuild = |why: &str| match build_acceptor(&bundle, resolver.clone()) {
        Ok(new) => acceptor.replace(new),
        Err(e) => {
            tracing::error!(error = %e, why, "trusting the new CA set failed; retrying later")
        }
    };
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + MAINTENANCE_INTERVAL,
        MAINTENANCE_INTERVAL,
    );
    let mut issued_at = SystemTime::now();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            Ok(()) = changes.changed() => {
                rebuild("the trust bundle changed");
                continue;
            }
            _ = shutdown.changed() => return,
        }
        let now = SystemTime::now();
        let rotated = match ca.rotate(now) {
            Ok(rotated) => rotated,
            Err(e) => {
                tracing::error!(error = %e, "CA rotation failed; retrying later");
                false
            }
        };
        if rotated {
            // Trusted here at once; the group learns of it from the datastore.
            if let Err(e) = bundle.refresh().await {
                tracing::warn!(error = %e, "publishing the rotated CAs failed; retrying with the next refresh");
            }
            changes.borrow_and_update();
            rebuild("the CA rotated");
        }
        let due = now.duration_since(issued_at).unwrap_or_default() >= SERVER_CERT_TTL / 2;
        if rotated || due {
            match server_certified_key(&ca, now) {
                Ok(key) => {
                    resolver.replace(key);
                    issued_at = now;
                }
                Err(e) => {
                    tracing::error!(error = %e, "renewing the Node API certificate failed; retrying later")
                }
            }
        }
    }
}

/// Accepts TCP connections, completes TLS handshakes concurrently, and hands
/// finished connections to the gRPC server through `connections`.
pub(crate) async fn accept(
    listener: TcpListener,
    acceptor: Arc<SharedAcceptor>,
    limiter: Arc<ConnectionLimiter<IpAddr>>,
    connections: mpsc::Sender<io::Result<NodeTlsStream>>,
    shutdown: watch::Receiver<bool>,
) {
    listener::accept_loop(
        listener,
        "Node API",
        limiter,
        shutdown,
        |tcp, peer, permit| {
            let (acceptor, connections) = (acceptor.clone(), connections.clone());
            async move {
                let Some(tls) =
                    listener::handshake(&acceptor.current(), tcp, peer, "Node API").await
                else {
                    return;
                };
                let leaf: Option<&CertificateDer<'_>> =
                    tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                let peer_svid = leaf.and_then(|cert| PeerSvid::from_certificate(cert));
                let stream = Permitted::new(
                    Accepted::new(
                        tls,
                        NodeConnectInfo {
                            peer: peer_svid,
                            remote: peer,
                        },
                    ),
                    permit,
                );
                let _ = connections.send(Ok(stream)).await;
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_svid_carries_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let td = lanyard_proto::TrustDomain::new("example.org").unwrap();
        let now = SystemTime::now();
        let ca = CertificateAuthority::load_or_generate(dir.path(), &td, now).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let id = td.id_with_path("/node/a").unwrap();
        let issued = ca
            .issue_agent_svid(csr.der(), &id, Duration::from_secs(600), now)
            .unwrap();
        let peer = PeerSvid::from_certificate(&issued.der).unwrap();
        assert_eq!(
            peer,
            PeerSvid {
                spiffe_id: id,
                serial: issued.serial,
                not_after: issued.expires_at,
            }
        );
        assert_eq!(PeerSvid::from_certificate(b"not a certificate"), None);
    }
}
