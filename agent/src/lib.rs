//! lanyard-agent: serves the SPIFFE Workload API on one node.
#![cfg_attr(
    test,
    allow(
        unused_crate_dependencies,
        reason = "dev-dependencies serve the integration tests; the library build catches unused dependencies"
    )
)]

pub mod attestor;
mod audit;
mod backoff;
pub mod client;
pub mod config;
mod lru;
mod svids;
mod sync;
pub mod telemetry;
pub mod upstream;
pub mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use lanyard_host::daemon::{Daemon, Tasks};
use lanyard_host::transport::limits::{self, ConnectionLimiter};
use lanyard_host::transport::{self, SocketError};

use crate::attestor::workload::WorkloadAttestor;
use crate::config::{AgentConfig, ServerConnection};
use crate::svids::jwt::JwtSvids;
use crate::svids::x509::X509SvidCache;
use crate::sync::state::SyncedState;
use crate::telemetry::{AgentMetrics, AgentParts};
use crate::upstream::client::ServerClient;
use crate::upstream::reachability::Reachability;
use crate::upstream::{IdentityError, NodeClientError, ServerGroup};
use crate::workload::api::WorkloadService;
use crate::workload::listener;
use crate::workload::metered::Metered;

/// Workload API socket mode: every local process may connect; who gets what is
/// decided per call from the caller's kernel credentials.
const WORKLOAD_SOCKET_MODE: u32 = 0o666;
const WORKLOAD_SOCKET_DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("Workload API stopped: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error("SO_PASSCRED on the Workload API socket: {0}")]
    PassCred(#[source] nix::errno::Errno),
    #[error("an agent task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Node(#[from] NodeClientError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("telemetry listener {addr}: {source}")]
    Telemetry {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct RunningAgent {
    pub socket: PathBuf,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, when enabled.
    pub telemetry_addr: Option<SocketAddr>,
    tasks: Tasks<AgentError>,
}

impl RunningAgent {
    /// The socket in the form `SPIFFE_ENDPOINT_SOCKET` takes.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Waits until a task fails or every task has ended (after shutdown).
    pub async fn wait(&mut self) -> Result<(), AgentError> {
        self.tasks.wait().await
    }

    /// Stops every task (within the grace period) and removes the socket.
    pub async fn shutdown(mut self) {
        self.tasks.stop().await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Daemon for RunningAgent {
    type Error = AgentError;

    async fn wait(&mut self) -> Result<(), AgentError> {
        RunningAgent::wait(self).await
    }

    async fn shutdown(self) {
        RunningAgent::shutdown(self).await
    }
}

/// Syncs once with the server (so a running agent can answer at once), then
/// serves the Workload API and keeps syncing.
pub async fn start(config: AgentConfig) -> Result<RunningAgent, AgentError> {
    let limits = listener::limits_for_open_files(limits::raise_open_files_limit());
    tracing::debug!(
        per_uid = limits.per_peer,
        total = limits.total,
        "Workload API connection limits"
    );
    let mut tasks = Tasks::new("lanyard-agent");
    let metrics = Arc::new(AgentMetrics::default());
    let state = Arc::new(SyncedState::new(metrics.clone()));
    let server = match &config.server {
        ServerConnection::Local { node_socket } => ServerClient::local(node_socket),
        ServerConnection::Remote {
            addresses,
            trust_bundle,
            attestation,
            ..
        } => {
            let servers = Arc::new(ServerGroup::new(addresses, trust_bundle)?);
            let creds = upstream::establish(
                &servers,
                &config.data_dir,
                &config.trust_domain,
                attestation.as_ref(),
                config.server_timeout,
            )
            .await?;
            let client =
                ServerClient::remote(servers.clone(), creds.clone(), config.server_timeout);
            let reattestation = attestation
                .as_ref()
                .filter(|a| a.reattests())
                .map(|attestation| {
                    let state = state.clone();
                    upstream::Reattestation {
                        trust_domain: config.trust_domain.clone(),
                        attestation: attestation.clone(),
                        on_reattested: Box::new(move || state.reset_revision()),
                    }
                });
            let renewal = upstream::renew_forever(
                servers,
                config.data_dir.clone(),
                creds,
                client.clone(),
                config.server_timeout,
                reattestation,
                tasks.stopping(),
            );
            tasks.spawn(async move {
                renewal.await;
                Ok(())
            });
            client
        }
    };
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
    let jwt_svids = JwtSvids::new(
        server.clone(),
        config.jwt_svid_cache_size,
        config.server_timeout,
        reachability.clone(),
        config.cache_misses_per_uid,
        metrics.clone(),
    );
    let attestor = Arc::new(WorkloadAttestor::new(
        config.workload_attestor.clone(),
        config.container_engine.as_ref(),
    ));
    let record_exe = config.workload_attestor.needs_connected_exe();
    if record_exe {
        // Every accepted connection inherits it: the kernel labels each read
        // with its writer's PID, even bytes sent before the accept.
        nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::PassCred, &true)
            .map_err(AgentError::PassCred)?;
    }
    let x509 = config.x509_svids.then(|| {
        Arc::new(X509SvidCache::new(
            server.clone(),
            config.server_timeout,
            reachability.clone(),
            metrics.clone(),
        ))
    });
    if let Some(x509) = x509.clone() {
        let renewal = x509.renew_forever(state.clone(), tasks.stopping());
        tasks.spawn(async move {
            renewal.await;
            Ok(())
        });
    }
    let telemetry_addr = match config.telemetry.listen {
        Some(addr) => {
            let endpoint = telemetry::endpoint(AgentParts {
                metrics: metrics.clone(),
                state: state.clone(),
                reachability: reachability.clone(),
                jwt_svids: jwt_svids.clone(),
                x509: x509.clone(),
            });
            Some(serve_telemetry(addr, endpoint, &mut tasks).await?)
        }
        None => None,
    };
    let service = Metered::new(
        WorkloadService::new(
            state.clone(),
            jwt_svids,
            attestor,
            config.trust_domain.clone(),
            x509,
        ),
        metrics,
    );

    let sync_shutdown = tasks.stopping();
    let (interval, deadline) = (config.sync_interval, config.server_timeout);
    tasks.spawn(async move {
        state
            .sync_forever(server, interval, deadline, reachability, sync_shutdown)
            .await;
        Ok(())
    });
    let serving = listener::serve(
        service,
        listener,
        ConnectionLimiter::new("Workload API", limits),
        record_exe,
        tasks.stopped(),
    );
    tasks.spawn(async move { serving.await.map_err(AgentError::Serve) });
    tracing::info!(
        "Workload API listening; SPIFFE_ENDPOINT_SOCKET=unix://{}",
        config.socket.display()
    );
    Ok(RunningAgent {
        socket: config.socket,
        telemetry_addr,
        tasks,
    })
}

/// `/metrics`, `/healthz` and `/readyz` at `addr`, in the agent's task set.
/// Returns where it listens.
async fn serve_telemetry(
    addr: SocketAddr,
    endpoint: lanyard_host::telemetry::Endpoint,
    tasks: &mut Tasks<AgentError>,
) -> Result<SocketAddr, AgentError> {
    let listener = lanyard_host::telemetry::bind(addr)
        .await
        .map_err(|source| AgentError::Telemetry { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AgentError::Telemetry { addr, source })?;
    let serving = lanyard_host::telemetry::serve(listener, endpoint, tasks.stopping());
    tasks.spawn(async move {
        serving.await;
        Ok(())
    });
    tracing::info!(%bound, "telemetry listening (/metrics, /healthz, /readyz)");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::WorkloadClient;
    use lanyard_host::transport::limits::ConnectionLimits;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;
    use tokio::net::UnixStream;
    use tokio::sync::watch;
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
        let jwt_svids = JwtSvids::new(
            ServerClient::local(&dir.path().join("no-server.sock")),
            10,
            Duration::from_secs(5),
            Arc::new(Reachability::default()),
            lanyard_host::rate_limit::RateLimit::fixed(100, 200),
            Arc::default(),
        );
        let service = Metered::new(
            WorkloadService::new(
                Arc::new(SyncedState::default()),
                jwt_svids,
                Arc::new(WorkloadAttestor::default()),
                lanyard_proto::TrustDomain::new("example.org")?,
                None,
            ),
            Arc::default(),
        );
        let limiter = ConnectionLimiter::new(
            "Workload API",
            ConnectionLimits {
                per_peer: CAP,
                total: 100,
            },
        );
        let (stop, mut stopped) = watch::channel(false);
        let serving = tokio::spawn(listener::serve(
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
