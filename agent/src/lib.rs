//! lanyard-agent: serves the SPIFFE Workload API on one node.
#![cfg_attr(
    test,
    allow(
        unused_crate_dependencies,
        reason = "dev-dependencies serve the integration tests; the library build catches unused dependencies"
    )
)]

pub mod attestor;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod jwt_cache;
pub mod jwt_issuer;
pub mod jwt_validate;
pub mod lru;
pub mod node_client;
pub mod node_identity;
pub mod reachability;
pub mod server_client;
pub mod state;
pub mod workload_api;
pub mod workload_client;
pub mod x509_svids;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lanyard_host::transport::{self, SocketError};
use lanyard_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::attestor::peer::{self, WorkloadLimiter};
use crate::attestor::unix::UnixAttestor;
use crate::config::{AgentConfig, ServerConnection};
use crate::jwt_issuer::JwtSvidIssuer;
use crate::node_client::ServerEndpoint;
use crate::reachability::Reachability;
use crate::server_client::ServerClient;
use crate::state::SyncedState;
use crate::workload_api::WorkloadService;
use crate::x509_svids::X509SvidCache;
use futures::FutureExt;
use lanyard_host::transport::limits::{self, ConnectionLimiter};

/// Workload API socket mode: every local process may connect; who gets what is
/// decided per call from the caller's kernel credentials.
const WORKLOAD_SOCKET_MODE: u32 = 0o666;
const WORKLOAD_SOCKET_DIR_MODE: u32 = 0o755;
/// HTTP/2 pings on Workload API connections: a peer that stopped answering
/// (hung, or frozen with the socket open; the kernel reports dead ones) is
/// dropped and its place among the capped connections given back.
const WORKLOAD_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const WORKLOAD_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("Workload API stopped: {0}")]
    Serve(String),
    #[error(transparent)]
    Node(#[from] node_client::NodeClientError),
    #[error(transparent)]
    Identity(#[from] node_identity::NodeIdentityError),
}

#[derive(Debug)]
pub struct RunningAgent {
    pub socket: PathBuf,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<Result<(), AgentError>>,
}

impl RunningAgent {
    /// The socket in the form `SPIFFE_ENDPOINT_SOCKET` takes.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Waits until a task fails or every task has ended (after shutdown).
    pub async fn wait(&mut self) -> Result<(), AgentError> {
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(AgentError::Serve(e.to_string())),
            }
        }
        Ok(())
    }

    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        lanyard_host::daemon::drain(&mut self.tasks, "lanyard-agent").await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Serves `service` on `listener` until `shutdown`: connections capped by
/// `limiter`, each caller identified at accept (its executable recorded
/// when `record_exe`).
fn serve_workload_api(
    service: WorkloadService,
    listener: UnixListener,
    limiter: Arc<WorkloadLimiter>,
    record_exe: bool,
    shutdown: impl Future<Output = ()>,
) -> impl Future<Output = Result<(), AgentError>> {
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(WORKLOAD_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(WORKLOAD_KEEPALIVE_TIMEOUT))
        .add_service(SpiffeWorkloadApiServer::new(service));
    async move {
        server
            .serve_with_incoming_shutdown(peer::incoming(listener, limiter, record_exe), shutdown)
            .await
            .map_err(|e| AgentError::Serve(e.to_string()))
    }
}

/// Syncs once with the server (so a running agent can answer at once), then
/// serves the Workload API and keeps syncing.
pub async fn start(config: AgentConfig) -> Result<RunningAgent, AgentError> {
    let limits = peer::limits_for_open_files(limits::raise_open_files_limit());
    tracing::debug!(
        per_uid = limits.per_peer,
        total = limits.total,
        "Workload API connection limits"
    );
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let server = match &config.server {
        ServerConnection::Local { node_socket } => ServerClient::local(node_socket),
        ServerConnection::Remote {
            address,
            trust_bundle,
            join_token,
        } => {
            let endpoint = ServerEndpoint::new(address, trust_bundle)?;
            let creds =
                node_identity::establish(&endpoint, &config.data_dir, join_token.as_ref()).await?;
            let client = ServerClient::over(node_client::channel(&endpoint, Some(&creds))?);
            let renewal = node_identity::renew_forever(
                endpoint,
                config.data_dir.clone(),
                creds,
                client.clone(),
                config.server_timeout,
                shutdown_rx.clone(),
            );
            tasks.spawn(async move {
                renewal.await;
                Ok(())
            });
            client
        }
    };
    let state = Arc::new(SyncedState::default());
    let reachability = Arc::new(Reachability::default());
    match state.sync_once(&server, config.server_timeout).await {
        Ok(count) => tracing::info!(entries = count, "synced with the server"),
        Err(e) => reachability.mark_down(&e),
    }
    let listener = transport::bind_unix_socket(
        &config.socket,
        WORKLOAD_SOCKET_MODE,
        WORKLOAD_SOCKET_DIR_MODE,
    )
    .await?;
    let issuer = JwtSvidIssuer::new(
        server.clone(),
        config.jwt_svid_cache_size,
        config.server_timeout,
        reachability.clone(),
    );
    let attestor = Arc::new(UnixAttestor::new(config.workload_attestor.clone()));
    let record_exe = config.workload_attestor.needs_connected_exe();
    if record_exe {
        // Every accepted connection inherits it: the kernel labels each read
        // with its writer's PID, even bytes sent before the accept.
        nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::PassCred, &true)
            .map_err(|e| {
                AgentError::Serve(format!("SO_PASSCRED on the Workload API socket: {e}"))
            })?;
    }
    let x509 = config.x509_svids.then(|| {
        Arc::new(X509SvidCache::new(
            server.clone(),
            config.server_timeout,
            reachability.clone(),
        ))
    });
    if let Some(x509) = x509.clone() {
        tasks.spawn(
            x509.renew_forever(state.clone(), shutdown_rx.clone())
                .map(Ok),
        );
    }
    let service = WorkloadService::new(
        state.clone(),
        issuer,
        attestor,
        config.trust_domain.clone(),
        x509,
    );

    let sync_shutdown = shutdown_rx.clone();
    let (interval, deadline) = (config.sync_interval, config.server_timeout);
    tasks.spawn(async move {
        state
            .sync_forever(server, interval, deadline, reachability, sync_shutdown)
            .await;
        Ok(())
    });
    let mut serve_shutdown = shutdown_rx;
    tasks.spawn(serve_workload_api(
        service,
        listener,
        ConnectionLimiter::new("Workload API", limits),
        record_exe,
        async move {
            let _ = serve_shutdown.changed().await;
        },
    ));
    tracing::info!(
        "Workload API listening; SPIFFE_ENDPOINT_SOCKET=unix://{}",
        config.socket.display()
    );
    Ok(RunningAgent {
        socket: config.socket,
        shutdown,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload_client::WorkloadClient;
    use lanyard_host::transport::limits::ConnectionLimits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    use tonic::Code;

    /// The client preface and an empty SETTINGS frame: enough for the server
    /// to answer with its own SETTINGS.
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    /// Only a bound for a broken test; nothing here waits on time otherwise.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// A raw connection the server has accepted and is serving: it answers
    /// the HTTP/2 preface.
    async fn served_raw(
        socket: &std::path::Path,
    ) -> Result<UnixStream, Box<dyn std::error::Error>> {
        let mut stream = UnixStream::connect(socket).await?;
        stream.write_all(H2_PREFACE).await?;
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await??;
        assert_eq!(n, 1, "the server closed a connection under the cap");
        Ok(stream)
    }

    /// Whether the server closed `stream` without a word.
    async fn closed_unanswered(mut stream: UnixStream) -> Result<bool, Box<dyn std::error::Error>> {
        let mut byte = [0u8; 1];
        Ok(
            match tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await? {
                Ok(n) => n == 0,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            },
        )
    }

    async fn served_call(client: &mut WorkloadClient) -> Result<(), Box<dyn std::error::Error>> {
        // No entries: the caller is attested and found to have no identity,
        // which only a served call can say.
        let denied = client.fetch_jwt(vec!["a".to_owned()], None).await;
        assert_eq!(
            denied.as_ref().err().and_then(|e| e.code()),
            Some(Code::PermissionDenied)
        );
        assert!(
            format!("{denied:?}").contains("no identity issued"),
            "{denied:?}"
        );
        Ok(())
    }

    /// One uid holding its whole share of connections: the next one is
    /// closed at once, while those it holds are still served; a connection
    /// closed gives its place back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_per_uid_cap_are_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        const CAP: usize = 3;
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("api.sock");
        // No server behind it: nothing here gets as far as minting.
        let issuer = JwtSvidIssuer::new(
            ServerClient::local(&dir.path().join("no-server.sock")),
            10,
            Duration::from_secs(5),
            Arc::new(Reachability::default()),
        );
        let service = WorkloadService::new(
            Arc::new(SyncedState::default()),
            issuer,
            Arc::new(UnixAttestor::default()),
            lanyard_proto::TrustDomain::new("example.org")?,
            None,
        );
        let limiter = ConnectionLimiter::new(
            "Workload API",
            ConnectionLimits {
                per_peer: CAP,
                total: 100,
            },
        );
        let (stop, mut stopped) = watch::channel(false);
        let serving = tokio::spawn(serve_workload_api(
            service,
            UnixListener::bind(&socket)?,
            limiter.clone(),
            false,
            async move {
                let _ = stopped.changed().await;
            },
        ));
        let uid = nix::unistd::getuid().as_raw();

        let mut client = WorkloadClient::new(&socket.display().to_string())?;
        served_call(&mut client).await?;
        let mut idle = Vec::new();
        for _ in 1..CAP {
            idle.push(served_raw(&socket).await?);
        }
        assert_eq!(limiter.open_of(&uid), CAP);

        let excess = UnixStream::connect(&socket).await?;
        assert!(
            closed_unanswered(excess).await?,
            "a connection over the cap was served"
        );
        assert_eq!(limiter.open_of(&uid), CAP);
        served_call(&mut client).await?;

        // Closing one frees its place once the server has noticed.
        drop(idle.pop());
        let freed = tokio::time::timeout(PATIENCE, async {
            while limiter.open_of(&uid) >= CAP {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(freed.is_ok(), "a closed connection kept its place");
        idle.push(served_raw(&socket).await?);
        served_call(&mut client).await?;

        let _ = stop.send(true);
        drop((idle, client));
        serving.await??;
        Ok(())
    }
}
