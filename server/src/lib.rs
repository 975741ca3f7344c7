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

pub mod admin_api;
pub mod admin_client;
pub mod authority;
pub mod ca;
pub mod cli;
pub mod config;
pub mod entries;
pub mod federation;
pub mod keys;
pub mod listener;
pub mod node_api;
pub mod node_tls;
pub mod oidc;
pub mod oidc_tools;
pub mod peer;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use lanyard_host::private_files;
use lanyard_host::transport::{self, SocketError};
use lanyard_proto::admin::admin_server::AdminServer;
use lanyard_proto::node::node_server::NodeServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::authority::Authority;
use crate::config::ServerConfig;
use crate::keys::{KeyError, KeyManager, KeyManagerError};
use crate::oidc::{OidcDocuments, SharedDocuments};
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
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
    #[error("rendering OIDC documents: {0}")]
    Documents(#[from] serde_json::Error),
    #[error("{0} stopped: {1}")]
    Task(&'static str, String),
}

/// A started server; dropping it does not stop it, `shutdown` does.
#[derive(Debug)]
pub struct RunningServer {
    pub oidc_addr: SocketAddr,
    pub node_socket: PathBuf,
    pub admin_socket: PathBuf,
    /// Where the mTLS Node API listens, when enabled.
    pub node_addr: Option<SocketAddr>,
    /// PEM of the trust domain's CA: the trust bundle agents are given.
    pub ca_bundle: PathBuf,
    /// PEM of the certificate the OIDC endpoint presents when self-signed.
    pub oidc_self_signed_cert: Option<PathBuf>,
    /// The trust domain's X.509 CA (rotated by the server's own clock).
    pub ca: Arc<ca::CertificateAuthority>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<Result<(), ServerError>>,
}

impl RunningServer {
    /// Waits until a task fails or every task has ended (after shutdown).
    /// Tasks with nothing to do (e.g. no certificate files to watch) end early
    /// and quietly; that does not stop the server.
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(ServerError::Task("server task", e.to_string())),
            }
        }
        Ok(())
    }

    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        lanyard_host::daemon::drain(&mut self.tasks, "lanyard-server").await;
    }
}

/// Starts the server with its OIDC listener bound from the config.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    let addr = config.oidc.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })?;
    start_with_listener(config, listener).await
}

/// Starts the server on an already bound OIDC listener (tests bind port 0).
pub async fn start_with_listener(
    config: ServerConfig,
    oidc_listener: TcpListener,
) -> Result<RunningServer, ServerError> {
    private_files::ensure_private_dir(&config.data_dir)?;
    let store = store::Datastore::open(&config.datastore_url).await?;
    let now = authority::unix_seconds(std::time::SystemTime::now());
    for spec in &config.entries {
        if store.seed_entry(spec, now).await? {
            tracing::info!(spiffe_id = %spec.spiffe_id, "registered entry from the config file");
        }
    }
    let server_id = server_identity(&config)?;
    let keys = Arc::new(
        KeyManager::open(
            store.clone(),
            &config.data_dir.join("keys"),
            &server_id,
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
        store,
        config.jwt.max_ttl,
    ));

    let tls = if config.oidc.plain_http {
        None
    } else {
        Some(tls::server_config(
            config.oidc.tls.as_ref(),
            &config.issuer,
            &config.data_dir,
        )?)
    };
    let documents = Arc::new(SharedDocuments::new(OidcDocuments::new(
        &config.issuer,
        &authority.jwks()?,
    )?));
    let oidc_addr = oidc_listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.oidc.listen,
            source,
        })?;

    let node_listener = transport::bind_unix_socket(&config.node_api.socket, 0o600, 0o700).await?;
    let ca = Arc::new(ca::CertificateAuthority::load_or_generate(
        &config.data_dir.join("ca"),
        &config.trust_domain,
        std::time::SystemTime::now(),
    )?);
    let node_service = Arc::new(node_api::NodeService::new(
        authority.clone(),
        ca.clone(),
        config.node_api.agent_id.clone(),
        config.node_api.agent_svid_ttl,
    ));
    let node_tcp = match config.node_api.listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Listen { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| ServerError::Listen { addr, source })?;
            Some((listener, bound))
        }
        None => None,
    };
    // With an admin uid other than ours the socket must be connectable by it;
    // the peer-uid check on every call is what keeps everyone else out.
    // Its directory, when created here, must then be enterable by that uid too.
    let (admin_mode, admin_dir_mode) = if config.admin.uid.is_some() {
        (0o666, 0o711)
    } else {
        (0o600, 0o700)
    };
    let admin_listener =
        transport::bind_unix_socket(&config.admin.socket, admin_mode, admin_dir_mode).await?;
    let server_uid = nix::unistd::geteuid().as_raw();
    let admin_service = admin_api::AdminService::new(
        authority.clone(),
        admin_api::AdminPolicy {
            allowed_uids: std::iter::once(server_uid)
                .chain(config.admin.uid)
                .collect(),
            local_agent_id: config.node_api.agent_id.clone(),
            default_ttl: config.jwt.default_ttl,
            max_ttl: config.jwt.max_ttl,
        },
    );

    let limiters = listener::Limiters::for_open_files(
        transport::limits::raise_open_files_limit(),
        config.oidc.plain_http,
    );
    tracing::debug!(?limiters, "connection caps");
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let acceptor = tls
        .as_ref()
        .map(|(config, _, _)| TlsAcceptor::from(config.clone()));
    tasks.spawn(
        oidc::serve(
            oidc_listener,
            acceptor,
            documents.clone(),
            limiters.oidc.clone(),
            shutdown_rx.clone(),
        )
        .then_ok(),
    );
    tasks.spawn(rotate_keys(keys, documents, config.issuer.clone(), shutdown_rx.clone()).then_ok());
    if let Some((_, resolver, files)) = tls {
        tasks.spawn(tls::watch_and_reload(resolver, files, shutdown_rx.clone()).then_ok());
    }
    let node_addr = node_tcp.as_ref().map(|(_, addr)| *addr);
    if let Some((listener, _)) = node_tcp {
        let (acceptor, resolver) = node_tls::acceptor(&ca)?;
        let (connections_tx, connections_rx) = tokio::sync::mpsc::channel(64);
        tasks.spawn(
            node_tls::accept(
                listener,
                acceptor.clone(),
                limiters.node_tls.clone(),
                connections_tx,
                shutdown_rx.clone(),
            )
            .then_ok(),
        );
        tasks.spawn(
            node_tls::maintain(ca.clone(), acceptor, resolver, shutdown_rx.clone()).then_ok(),
        );
        let service = node_service.clone();
        let mut tls_shutdown = shutdown_rx.clone();
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(listener::KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(listener::KEEPALIVE_TIMEOUT))
                .add_service(NodeServer::from_arc(service))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::ReceiverStream::new(connections_rx),
                    async move {
                        let _ = tls_shutdown.changed().await;
                    },
                )
                .await
                .map_err(|e| ServerError::Task("Node API (mTLS)", e.to_string()))
        });
    }
    let shutdown_rx_admin = shutdown_rx.clone();
    let mut node_shutdown = shutdown_rx;
    let node_limiter = limiters.node_socket.clone();
    tasks.spawn(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(listener::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(listener::KEEPALIVE_TIMEOUT))
            .add_service(NodeServer::from_arc(node_service.clone()))
            .serve_with_incoming_shutdown(
                listener::unix_incoming(node_listener, "Node API socket", node_limiter),
                async move {
                    let _ = node_shutdown.changed().await;
                },
            )
            .await
            .map_err(|e| ServerError::Task("Node API", e.to_string()))
    });
    let mut admin_shutdown = shutdown_rx_admin;
    let admin_limiter = limiters.admin_socket.clone();
    tasks.spawn(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(listener::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(listener::KEEPALIVE_TIMEOUT))
            .add_service(AdminServer::new(admin_service))
            .serve_with_incoming_shutdown(
                listener::unix_incoming(admin_listener, "Admin API", admin_limiter),
                async move {
                    let _ = admin_shutdown.changed().await;
                },
            )
            .await
            .map_err(|e| ServerError::Task("Admin API", e.to_string()))
    });
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
        ca_bundle: config.data_dir.join("ca").join(ca::BUNDLE_FILE),
        ca: ca.clone(),
        oidc_self_signed_cert: (config.oidc.tls.is_none() && !config.oidc.plain_http)
            .then(|| config.data_dir.join(tls::SELF_SIGNED_CERT_FILE)),
        shutdown,
        tasks,
    })
}

/// How often the key schedule is applied; rotation points are hours apart.
const ROTATION_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Applies the key schedule and republishes the OIDC documents when it changes them.
async fn rotate_keys(
    keys: Arc<KeyManager>,
    documents: Arc<SharedDocuments>,
    issuer: config::Issuer,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ROTATION_CHECK_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        let now = authority::unix_seconds(std::time::SystemTime::now());
        match keys.rotate(now).await {
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
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ServerError::Task("server id", "no randomness available".into()))?;
    let id = entries::hex(&bytes);
    private_files::write_private_file(&path, id.as_bytes())?;
    Ok(id)
}

/// Lets a task that cannot fail sit in the same `JoinSet` as those that can.
trait ThenOk: std::future::Future<Output = ()> + Sized {
    fn then_ok(self) -> impl std::future::Future<Output = Result<(), ServerError>> {
        async move {
            self.await;
            Ok(())
        }
    }
}

impl<F: std::future::Future<Output = ()>> ThenOk for F {}
