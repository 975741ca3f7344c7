//! lanyard-server: the authority of a trust domain.
#![cfg_attr(
    test,
    allow(
        unused_crate_dependencies,
        reason = "dev-dependencies serve the integration tests; the library build catches unused dependencies"
    )
)]

// The binary reports errors with anyhow at its edge (main.rs); Cargo lists
// dependencies per package, not per target.
use anyhow as _;

mod api;
mod audit;
pub mod authority;
pub mod config;
pub mod keys;
mod oidc;
pub mod ops;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use lanyard_host::daemon::{Daemon, Tasks};
use lanyard_host::private_files;
use lanyard_host::random::{self, NoRandomness};
use lanyard_host::transport::{self, SocketError};
use lanyard_proto::admin::admin_server::AdminServer;
use lanyard_proto::node::node_server::NodeServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::api::admin::{AdminPolicy, AdminService};
use crate::api::listener::{self, Limiters};
use crate::api::node::NodeService;
use crate::api::node::rate_limits::NodeRateLimits;
use crate::api::node_tls;
use crate::authority::bundle::{self, TrustBundle};
use crate::authority::ca::{self, CertificateAuthority};
use crate::authority::node_attestation::{NodeAttestors, X509PopConfigError};
use crate::authority::{Authority, Issuer};
use crate::config::ServerConfig;
use crate::keys::{KeyError, KeyManager, KeyManagerError};
use crate::oidc::certificate::{self as tls, TlsError};
use crate::oidc::endpoint::{self, OidcDocuments, SharedDocuments};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    DataDir(#[from] private_files::FsError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Keys(#[from] KeyManagerError),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error("node_attestation.x509pop: {0}")]
    NodeAttestation(#[source] X509PopConfigError),
    #[error(transparent)]
    NodeTls(#[from] node_tls::NodeTlsError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("OIDC listener {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("telemetry listener {addr}: {source}")]
    Telemetry {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("rendering OIDC documents: {0}")]
    Documents(#[from] serde_json::Error),
    #[error("server id: {0}")]
    ServerId(#[from] NoRandomness),
    #[error("{api} stopped: {source}")]
    Serve {
        api: &'static str,
        source: tonic::transport::Error,
    },
    #[error("server task stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A started server; dropping it does not stop it, `shutdown` does.
#[derive(Debug)]
pub struct RunningServer {
    pub oidc_addr: SocketAddr,
    pub node_socket: PathBuf,
    pub admin_socket: PathBuf,
    /// Where the mTLS Node API listens, when enabled.
    pub node_addr: Option<SocketAddr>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, when enabled.
    pub telemetry_addr: Option<SocketAddr>,
    /// PEM of the trust domain's CAs (every server's, when several share the
    /// datastore): the trust bundle agents are given.
    pub ca_bundle: PathBuf,
    /// PEM of the certificate the OIDC endpoint presents when self-signed.
    pub oidc_self_signed_cert: Option<PathBuf>,
    /// The trust domain's X.509 CA (rotated by the server's own clock).
    pub ca: Arc<CertificateAuthority>,
    /// The trust domain's X.509 bundle: this server's CAs and the group's.
    pub trust_bundle: Arc<TrustBundle>,
    tasks: Tasks<ServerError>,
}

impl RunningServer {
    /// Waits until a task fails or every task has ended (after shutdown).
    /// Tasks with nothing to do (e.g. no certificate files to watch) end early
    /// and quietly; that does not stop the server.
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        self.tasks.wait().await
    }

    pub async fn shutdown(mut self) {
        self.tasks.stop().await;
    }
}

impl Daemon for RunningServer {
    type Error = ServerError;

    fn wait(&mut self) -> impl Future<Output = Result<(), ServerError>> {
        RunningServer::wait(self)
    }

    fn shutdown(self) -> impl Future<Output = ()> {
        RunningServer::shutdown(self)
    }
}

/// Starts the server with its OIDC listener bound from the config.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    let listener = bind_tcp(config.oidc.listen).await?;
    start_with_listener(config, listener).await
}

/// Starts the server on an already bound OIDC listener (tests bind port 0).
pub async fn start_with_listener(
    config: ServerConfig,
    oidc_listener: TcpListener,
) -> Result<RunningServer, ServerError> {
    private_files::ensure_private_dir(&config.data_dir)?;
    let server_id = server_identity(&config)?;
    let (authority, keys, store) = open_authority(&config, &server_id).await?;
    let ca = Arc::new(CertificateAuthority::load_or_generate(
        &config.data_dir.join("ca"),
        &config.trust_domain,
        std::time::SystemTime::now(),
    )?);
    let telemetry_endpoint = telemetry::endpoint(
        authority.metrics().clone(),
        keys.clone(),
        ca.clone(),
        store.clone(),
    );
    let trust_bundle = Arc::new(TrustBundle::new(ca.clone(), store, server_id));
    // Publishes this server's CAs and learns the group's before trusting anyone.
    trust_bundle.refresh().await?;
    let limiters = Limiters::for_open_files(
        transport::limits::raise_open_files_limit(),
        config.oidc.plain_http,
    );
    tracing::debug!(?limiters, "connection caps");
    let mut tasks = Tasks::new("lanyard-server");
    tasks.spawn(bundle::maintain(trust_bundle.clone(), tasks.stopping()).then_ok());
    let telemetry_addr = match config.telemetry.listen {
        Some(addr) => Some(serve_telemetry(addr, telemetry_endpoint, &mut tasks).await?),
        None => None,
    };

    let oidc_addr = serve_oidc(
        &config,
        oidc_listener,
        &authority,
        keys,
        &limiters,
        &mut tasks,
    )?;
    let attestors = Arc::new(
        NodeAttestors::new(config.trust_domain.clone(), &config.node_attestation)
            .map_err(ServerError::NodeAttestation)?,
    );
    let node_service = Arc::new(NodeService::new(
        authority.clone(),
        trust_bundle.clone(),
        attestors,
        config.node_api.agent_id.clone(),
        config.node_api.agent_svid_ttl,
        NodeRateLimits::new(&config.rate_limits, authority.metrics().clone()),
    ));
    serve_node_socket(&config, node_service.clone(), &limiters, &mut tasks).await?;
    let node_addr = match config.node_api.listen {
        Some(addr) => {
            Some(serve_node_tls(addr, node_service, &trust_bundle, &limiters, &mut tasks).await?)
        }
        None => None,
    };
    serve_admin(&config, authority, &limiters, &mut tasks).await?;

    tracing::info!(
        admin_socket = %config.admin.socket.display(),
        trust_domain = %config.trust_domain,
        issuer = config.issuer.as_str(),
        oidc = %oidc_addr,
        node_socket = %config.node_api.socket.display(),
        "lanyard-server is serving"
    );
    Ok(RunningServer {
        oidc_addr,
        node_socket: config.node_api.socket.clone(),
        admin_socket: config.admin.socket.clone(),
        node_addr,
        telemetry_addr,
        ca_bundle: config.data_dir.join("ca").join(ca::BUNDLE_FILE),
        ca,
        trust_bundle,
        oidc_self_signed_cert: (config.oidc.tls.is_none() && !config.oidc.plain_http)
            .then(|| config.data_dir.join(tls::SELF_SIGNED_CERT_FILE)),
        tasks,
    })
}

/// `/metrics`, `/healthz` and `/readyz` at `addr`, in the server's task set.
/// Returns where it listens.
async fn serve_telemetry(
    addr: SocketAddr,
    endpoint: lanyard_host::telemetry::Endpoint,
    tasks: &mut Tasks<ServerError>,
) -> Result<SocketAddr, ServerError> {
    let listener = lanyard_host::telemetry::bind(addr)
        .await
        .map_err(|source| ServerError::Telemetry { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Telemetry { addr, source })?;
    tasks.spawn(lanyard_host::telemetry::serve(listener, endpoint, tasks.stopping()).then_ok());
    tracing::info!(%bound, "telemetry listening (/metrics, /healthz, /readyz)");
    Ok(bound)
}

async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })
}

/// The datastore (with the config file's entries), the signing keys and the
/// authority over them.
async fn open_authority(
    config: &ServerConfig,
    server_id: &str,
) -> Result<(Arc<Authority>, Arc<KeyManager>, store::Datastore), ServerError> {
    let store = store::Datastore::open(&config.datastore_url).await?;
    let now = lanyard_host::clock::now();
    for spec in &config.entries {
        if store::bounded(store.seed_entry(spec, now)).await? {
            tracing::info!(spiffe_id = %spec.spiffe_id, "registered entry from the config file");
        }
    }
    let keys = Arc::new(
        KeyManager::open(
            store.clone(),
            &config.data_dir.join("keys"),
            server_id,
            config.jwt.rotation.clone(),
            config.jwt.key_type,
            now,
        )
        .await?,
    );
    let authority = Arc::new(Authority::new(
        config.trust_domain.clone(),
        config.issuer.clone(),
        keys.clone(),
        store.clone(),
        config.jwt.max_ttl,
    ));
    Ok((authority, keys, store))
}

/// The OIDC discovery/JWKS endpoint, its certificate reloads, and the key
/// rotation that republishes its documents. Returns where it listens.
fn serve_oidc(
    config: &ServerConfig,
    listener: TcpListener,
    authority: &Authority,
    keys: Arc<KeyManager>,
    limiters: &Limiters,
    tasks: &mut Tasks<ServerError>,
) -> Result<SocketAddr, ServerError> {
    let tls = if config.oidc.plain_http {
        None
    } else {
        Some(tls::server_config(
            config.oidc.tls.as_ref(),
            &config.issuer,
            &config.data_dir,
            config.oidc.public_cert_file.as_deref(),
        )?)
    };
    let documents = Arc::new(SharedDocuments::new(OidcDocuments::new(
        &config.issuer,
        &authority.jwks()?,
    )?));
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.oidc.listen,
            source,
        })?;
    let acceptor = tls
        .as_ref()
        .map(|(config, _, _)| TlsAcceptor::from(config.clone()));
    tasks.spawn(
        endpoint::serve(
            listener,
            acceptor,
            documents.clone(),
            limiters.oidc.clone(),
            tasks.stopping(),
        )
        .then_ok(),
    );
    tasks.spawn(rotate_keys(keys, documents, config.issuer.clone(), tasks.stopping()).then_ok());
    if let Some((_, resolver, files)) = tls {
        tasks.spawn(tls::watch_and_reload(resolver, files, tasks.stopping()).then_ok());
    }
    Ok(addr)
}

/// A gRPC server with the keepalive every API uses.
fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(listener::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(listener::KEEPALIVE_TIMEOUT))
}

/// The gRPC server of the Node API (mTLS and socket): as [`grpc_server`],
/// with at most [`api::node::MAX_CONCURRENT_STREAMS`] streams per connection.
fn node_grpc_server() -> tonic::transport::Server {
    grpc_server().max_concurrent_streams(Some(api::node::MAX_CONCURRENT_STREAMS))
}

/// The Node API on its Unix socket, for the local agent.
async fn serve_node_socket(
    config: &ServerConfig,
    service: Arc<NodeService>,
    limiters: &Limiters,
    tasks: &mut Tasks<ServerError>,
) -> Result<(), ServerError> {
    let socket = transport::bind_unix_socket(&config.node_api.socket, 0o600, 0o700).await?;
    let incoming = listener::unix_incoming(socket, "Node API socket", limiters.node_socket.clone());
    let stopped = tasks.stopped();
    tasks.spawn(async move {
        node_grpc_server()
            .add_service(
                NodeServer::from_arc(service)
                    .max_decoding_message_size(api::node::attest::MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, stopped)
            .await
            .map_err(|source| ServerError::Serve {
                api: "Node API",
                source,
            })
    });
    Ok(())
}

/// The Node API over mTLS at `addr`, for remote agents, with the CA rotation
/// that keeps its certificate fresh. Returns where it listens.
async fn serve_node_tls(
    addr: SocketAddr,
    service: Arc<NodeService>,
    trust_bundle: &Arc<TrustBundle>,
    limiters: &Limiters,
    tasks: &mut Tasks<ServerError>,
) -> Result<SocketAddr, ServerError> {
    let tcp = bind_tcp(addr).await?;
    let bound = tcp
        .local_addr()
        .map_err(|source| ServerError::Listen { addr, source })?;
    let (acceptor, resolver) = node_tls::acceptor(trust_bundle)?;
    let (connections_tx, connections_rx) = tokio::sync::mpsc::channel(64);
    tasks.spawn(
        node_tls::accept(
            tcp,
            acceptor.clone(),
            limiters.node_tls.clone(),
            connections_tx,
            tasks.stopping(),
        )
        .then_ok(),
    );
    tasks.spawn(
        node_tls::maintain(trust_bundle.clone(), acceptor, resolver, tasks.stopping()).then_ok(),
    );
    let stopped = tasks.stopped();
    tasks.spawn(async move {
        node_grpc_server()
            .add_service(
                NodeServer::from_arc(service)
                    .max_decoding_message_size(api::node::attest::MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(connections_rx),
                stopped,
            )
            .await
            .map_err(|source| ServerError::Serve {
                api: "Node API (mTLS)",
                source,
            })
    });
    Ok(bound)
}

/// The Admin API on its Unix socket, for operators.
async fn serve_admin(
    config: &ServerConfig,
    authority: Arc<Authority>,
    limiters: &Limiters,
    tasks: &mut Tasks<ServerError>,
) -> Result<(), ServerError> {
    // With an admin uid other than ours the socket must be connectable by it;
    // the peer-uid check on every call is what keeps everyone else out.
    // Its directory, when created here, must then be enterable by that uid too.
    let (admin_mode, admin_dir_mode) = if config.admin.uid.is_some() {
        (0o666, 0o711)
    } else {
        (0o600, 0o700)
    };
    let socket =
        transport::bind_unix_socket(&config.admin.socket, admin_mode, admin_dir_mode).await?;
    let server_uid = nix::unistd::geteuid().as_raw();
    let service = AdminService::new(
        authority,
        AdminPolicy {
            allowed_uids: std::iter::once(server_uid)
                .chain(config.admin.uid)
                .collect(),
            local_agent_id: config.node_api.agent_id.clone(),
            default_ttl: config.jwt.default_ttl,
            max_ttl: config.jwt.max_ttl,
        },
    );
    let incoming = listener::unix_incoming(socket, "Admin API", limiters.admin_socket.clone());
    let stopped = tasks.stopped();
    tasks.spawn(async move {
        grpc_server()
            .add_service(AdminServer::new(service))
            .serve_with_incoming_shutdown(incoming, stopped)
            .await
            .map_err(|source| ServerError::Serve {
                api: "Admin API",
                source,
            })
    });
    Ok(())
}

/// How often the key schedule is applied and the group's published keys are
/// re-read. Rotation points are hours apart, but in an HA group a server that
/// has just started signs with its first key at once, and every other
/// server's JWKS must carry it soon: as often as the CA union is refreshed.
const ROTATION_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Applies the key schedule and republishes the OIDC documents when it changes them.
async fn rotate_keys(
    keys: Arc<KeyManager>,
    documents: Arc<SharedDocuments>,
    issuer: Issuer,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ROTATION_CHECK_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        match keys.rotate(lanyard_host::clock::now()).await {
            Ok(false) => {}
            Ok(true) => match keys
                .current()
                .map(|set| OidcDocuments::new(&issuer, &set.jwks))
            {
                Ok(Ok(rendered)) => documents.replace(rendered),
                Ok(Err(e)) => tracing::error!(error = %e, "rendering OIDC documents failed"),
                Err(e) => tracing::error!(error = %e, "no signing key after rotation"),
            },
            Err(e) => tracing::error!(error = %e, "key rotation failed; retrying"),
        }
    }
}

/// This server's name among those sharing the datastore: configured, or made
/// up once and kept in the data dir.
fn server_identity(config: &ServerConfig) -> Result<String, ServerError> {
    if !config.server_id.is_empty() {
        return Ok(config.server_id.clone());
    }
    let path = config.data_dir.join("server-id");
    if let Some(bytes) = private_files::read_private_file(&path)? {
        let id = String::from_utf8_lossy(&bytes).trim().to_owned();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = random::identifier::<8>()?;
    private_files::write_private_file(&path, id.as_bytes())?;
    Ok(id)
}

/// Lets a task that cannot fail sit in the same task set as those that can.
trait ThenOk: std::future::Future<Output = ()> + Sized {
    fn then_ok(self) -> impl std::future::Future<Output = Result<(), ServerError>> {
        async move {
            self.await;
            Ok(())
        }
    }
}

impl<F: std::future::Future<Output = ()>> ThenOk for F {}
