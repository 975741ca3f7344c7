//! lanyard-agent: serves the SPIFFE Workload API on one node.

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

use std::path::PathBuf;
use std::sync::Arc;

use lanyard_proto::transport::{self, SocketError};
use lanyard_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::attestor::peer;
use crate::attestor::unix::UnixAttestor;
use crate::config::{AgentConfig, ServerConnection};
use crate::jwt_issuer::JwtSvidIssuer;
use crate::node_client::ServerEndpoint;
use crate::reachability::Reachability;
use crate::server_client::ServerClient;
use crate::state::SyncedState;
use crate::workload_api::WorkloadService;

/// Workload API socket mode: every local process may connect; who gets what is
/// decided per call from the caller's kernel credentials.
const WORKLOAD_SOCKET_MODE: u32 = 0o666;
const WORKLOAD_SOCKET_DIR_MODE: u32 = 0o755;

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
        while self.tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Syncs once with the server (so a running agent can answer at once), then
/// serves the Workload API and keeps syncing.
pub async fn start(config: AgentConfig) -> Result<RunningAgent, AgentError> {
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
                node_identity::establish(&endpoint, &config.data_dir, join_token.as_deref())
                    .await?;
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
    let service =
        WorkloadService::new(state.clone(), issuer, attestor, config.trust_domain.clone());

    let sync_shutdown = shutdown_rx.clone();
    let (interval, deadline) = (config.sync_interval, config.server_timeout);
    tasks.spawn(async move {
        state
            .sync_forever(server, interval, deadline, reachability, sync_shutdown)
            .await;
        Ok(())
    });
    let mut serve_shutdown = shutdown_rx;
    tasks.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(service))
            .serve_with_incoming_shutdown(peer::incoming(listener, record_exe), async move {
                let _ = serve_shutdown.changed().await;
            })
            .await
            .map_err(|e| AgentError::Serve(e.to_string()))
    });
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
