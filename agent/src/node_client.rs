//! The agent's side of node attestation and of the mTLS Node API.
//!
//! First contact: a fresh key pair, a CSR and a single-use join token, sent
//! over TLS that authenticates the server against the configured trust bundle.
//! Afterwards every call presents the agent's X.509 SVID. Credentials are kept
//! in the agent's data dir (key mode 0600) so a restart needs no new token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use lanyard_proto::SpiffeId;
use lanyard_proto::fsutil::{self, FsError};
use lanyard_proto::node::node_client::NodeClient;
use lanyard_proto::node::{AgentSvidResponse, AttestAgentRequest, RenewAgentRequest};
use lanyard_proto::pem::encode as pem;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// The name the server's Node API certificate carries; only the trust
/// domain's CA issues it, and only to the server.
pub const SERVER_NAME: &str = "lanyard-server";

const SVID_FILE: &str = "agent-svid.pem";
const KEY_FILE: &str = "agent-key.pem";
const BUNDLE_FILE: &str = "bundle.pem";

#[derive(Debug, thiserror::Error)]
pub enum NodeClientError {
    #[error(transparent)]
    File(#[from] FsError),
    #[error("trust bundle {path}: {message}")]
    Bundle { path: PathBuf, message: String },
    #[error("stored agent credentials in {dir} are unusable: {message}")]
    Credentials { dir: PathBuf, message: String },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("generating the agent key: {0}")]
    Key(#[from] rcgen::Error),
    #[error("server address {0:?} is not host:port")]
    Address(String),
    #[error("the server refused: {} ({:?})", .0.message(), .0.code())]
    Refused(tonic::Status),
    #[error("the server answered with an unusable SVID: {0}")]
    BadResponse(String),
}

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
        let bundle_error = |message: String| NodeClientError::Bundle {
            path: trust_bundle_path.to_owned(),
            message,
        };
        let pem = std::fs::read(trust_bundle_path).map_err(|e| bundle_error(e.to_string()))?;
        let trust_bundle = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bundle_error(e.to_string()))?;
        if trust_bundle.is_empty() {
            return Err(bundle_error("no CERTIFICATE block".into()));
        }
        if address
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(NodeClientError::Address(address.to_owned()));
        }
        Ok(Self {
            address: address.to_owned(),
            trust_bundle,
        })
    }
}

/// What an attested agent holds: its SVID, its key and the CA bundle.
#[derive(Clone)]
pub struct AgentCredentials {
    pub spiffe_id: SpiffeId,
    pub svid: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
    pub bundle: Vec<CertificateDer<'static>>,
    pub expires_at: i64,
}

impl std::fmt::Debug for AgentCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCredentials")
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl AgentCredentials {
    fn from_response(response: AgentSvidResponse, key: &KeyPair) -> Result<Self, NodeClientError> {
        let spiffe_id = SpiffeId::parse(&response.spiffe_id)
            .map_err(|e| NodeClientError::BadResponse(e.to_string()))?;
        if response.bundle.is_empty() {
            return Err(NodeClientError::BadResponse("no CA bundle".into()));
        }
        Ok(Self {
            spiffe_id,
            svid: CertificateDer::from(response.svid),
            key_pkcs8: key.serialize_der(),
            bundle: response
                .bundle
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            expires_at: response.expires_at,
        })
    }

    /// Persists the credentials in `dir`: the key 0600, all replaced atomically.
    pub fn save(&self, dir: &Path) -> Result<(), NodeClientError> {
        fsutil::ensure_private_dir(dir)?;
        let mut svid_pem = pem("CERTIFICATE", &self.svid);
        svid_pem.push_str(&format!(
            "# spiffe_id {}\n# expires_at {}\n",
            self.spiffe_id, self.expires_at
        ));
        let bundle_pem: String = self.bundle.iter().map(|c| pem("CERTIFICATE", c)).collect();
        // Key first: an SVID on disk without its key would be useless.
        fsutil::write_private_file(
            &dir.join(KEY_FILE),
            pem("PRIVATE KEY", &self.key_pkcs8).as_bytes(),
        )?;
        fsutil::write_private_file(&dir.join(SVID_FILE), svid_pem.as_bytes())?;
        fsutil::write_private_file(&dir.join(BUNDLE_FILE), bundle_pem.as_bytes())?;
        Ok(())
    }

    /// Loads credentials saved by [`save`](Self::save); `Ok(None)` if there are none.
    pub fn load(dir: &Path) -> Result<Option<Self>, NodeClientError> {
        let Some(key_pem) = fsutil::read_private_file(&dir.join(KEY_FILE))? else {
            return Ok(None);
        };
        let broken = |message: &str| NodeClientError::Credentials {
            dir: dir.to_owned(),
            message: message.to_owned(),
        };
        let svid_pem = fsutil::read_private_file(&dir.join(SVID_FILE))?
            .ok_or_else(|| broken("SVID missing"))?;
        let bundle_pem = fsutil::read_private_file(&dir.join(BUNDLE_FILE))?
            .ok_or_else(|| broken("bundle missing"))?;
        let key = match rustls_pemfile::private_key(&mut key_pem.as_slice()) {
            Ok(Some(PrivateKeyDer::Pkcs8(key))) => key.secret_pkcs8_der().to_vec(),
            _ => return Err(broken("key is not PKCS#8 PEM")),
        };
        let svid = rustls_pemfile::certs(&mut svid_pem.as_slice())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| broken("SVID is not PEM"))?;
        let bundle = rustls_pemfile::certs(&mut bundle_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| broken("bundle is not PEM"))?;
        let text = String::from_utf8_lossy(&svid_pem);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {name} ")))
                .map(str::to_owned)
        };
        let spiffe_id = field("spiffe_id")
            .and_then(|s| SpiffeId::parse(&s).ok())
            .ok_or_else(|| broken("SPIFFE ID note missing"))?;
        let expires_at = field("expires_at")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| broken("expiry note missing"))?;
        Ok(Some(Self {
            spiffe_id,
            svid,
            key_pkcs8: key,
            bundle,
            expires_at,
        }))
    }
}

fn tls_config(
    roots: &[CertificateDer<'static>],
    identity: Option<&AgentCredentials>,
) -> Result<ClientConfig, NodeClientError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store);
    let mut config = match identity {
        Some(creds) => builder.with_client_auth_cert(
            vec![creds.svid.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(creds.key_pkcs8.clone())),
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
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
    let name =
        ServerName::try_from(SERVER_NAME).map_err(|e| NodeClientError::Address(e.to_string()))?;
    // The URI only satisfies tonic; every connection dials `address` with TLS.
    Ok(
        Endpoint::from_static("http://lanyard-server").connect_with_connector_lazy(
            tower::service_fn(move |_: Uri| {
                let (connector, address, name) = (connector.clone(), address.clone(), name.clone());
                async move {
                    let tcp = TcpStream::connect(&address).await?;
                    // gRPC's small frames must not wait on Nagle's algorithm
                    // (~40 ms per exchange against a delayed ACK).
                    tcp.set_nodelay(true)?;
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }),
        ),
    )
}

fn csr() -> Result<(KeyPair, Vec<u8>), NodeClientError> {
    let key = KeyPair::generate()?;
    let request = CertificateParams::default().serialize_request(&key)?;
    Ok((key, request.der().to_vec()))
}

/// Attests with a single-use join token and returns the agent's first SVID.
pub async fn attest(
    server: &ServerEndpoint,
    join_token: &str,
) -> Result<AgentCredentials, NodeClientError> {
    let (key, csr) = csr()?;
    let response = NodeClient::new(channel(server, None)?)
        .attest_agent(AttestAgentRequest {
            join_token: join_token.to_owned(),
            csr,
        })
        .await
        .map_err(NodeClientError::Refused)?
        .into_inner();
    AgentCredentials::from_response(response, &key)
}

/// Trades the current SVID for a new one over a new key.
pub async fn renew(
    server: &ServerEndpoint,
    current: &AgentCredentials,
) -> Result<AgentCredentials, NodeClientError> {
    let (key, csr) = csr()?;
    let response = NodeClient::new(channel(server, Some(current))?)
        .renew_agent(RenewAgentRequest { csr })
        .await
        .map_err(NodeClientError::Refused)?
        .into_inner();
    AgentCredentials::from_response(response, &key)
}
