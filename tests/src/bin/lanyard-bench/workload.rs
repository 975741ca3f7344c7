//! Workload API callers (one connection each) and the bare echo baseline: a
//! tonic server of the same SpiffeWorkloadAPI service on the same kind of Unix
//! socket, answering FetchJWTSVID with a precomputed response of the same size,
//! with no header check, no attestation, no cache and no server behind it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lanyard_host::transport::unix_channel;
use lanyard_proto::WORKLOAD_API_HEADER;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use lanyard_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest,
    X509svidResponse,
};
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::stats::Worker;

pub(crate) type Client = SpiffeWorkloadApiClient<Channel>;

/// A client on its own connection to the socket at `path`.
pub(crate) fn client(path: &Path) -> Client {
    SpiffeWorkloadApiClient::new(unix_channel(path))
}

fn request<T>(body: T) -> Request<T> {
    let mut request = Request::new(body);
    request
        .metadata_mut()
        .insert(WORKLOAD_API_HEADER, MetadataValue::from_static("true"));
    request
}

/// One FetchJWTSVID; the token of the first SVID.
pub(crate) async fn fetch(client: &mut Client, audience: String) -> anyhow::Result<String> {
    let response = client
        .fetch_jwtsvid(request(JwtsvidRequest {
            audience: vec![audience],
            spiffe_id: String::new(),
        }))
        .await
        .context("FetchJWTSVID")?
        .into_inner();
    response
        .svids
        .into_iter()
        .next()
        .map(|s| s.svid)
        .context("FetchJWTSVID answered no SVID")
}

/// Asks for the same audience every call (the agent's cache answers).
pub(crate) struct CachedFetch {
    pub client: Client,
    pub audience: String,
}

impl Worker for CachedFetch {
    async fn call(&mut self, _n: u64) -> anyhow::Result<()> {
        fetch(&mut self.client, self.audience.clone())
            .await
            .map(drop)
    }
}

/// Asks for a new audience every call (every call is a cache miss).
pub(crate) struct DistinctFetch {
    pub client: Client,
    pub prefix: String,
}

impl Worker for DistinctFetch {
    async fn call(&mut self, n: u64) -> anyhow::Result<()> {
        fetch(&mut self.client, format!("{}-{n}", self.prefix))
            .await
            .map(drop)
    }
}

/// Each call: every client misses on the same new audience at once (issue
/// 17's single flight); fails unless all got one token, i.e. one mint.
pub(crate) struct SameKeyRound {
    pub clients: Vec<Client>,
    pub prefix: String,
    /// Rounds in which the callers got more than one token.
    pub split: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Worker for SameKeyRound {
    async fn call(&mut self, n: u64) -> anyhow::Result<()> {
        let audience = format!("{}-{n}", self.prefix);
        let tokens = futures::future::try_join_all(
            self.clients
                .iter_mut()
                .map(|client| fetch(client, audience.clone())),
        )
        .await?;
        if tokens.iter().any(|t| *t != tokens[0]) {
            self.split
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Validates the same token every call.
pub(crate) struct Validate {
    pub client: Client,
    pub token: String,
    pub audience: String,
}

impl Worker for Validate {
    async fn call(&mut self, _n: u64) -> anyhow::Result<()> {
        self.client
            .validate_jwtsvid(request(ValidateJwtsvidRequest {
                audience: self.audience.clone(),
                svid: self.token.clone(),
            }))
            .await
            .context("ValidateJWTSVID")?;
        Ok(())
    }
}

/// Opens a FetchX509SVID stream each call and reads its first message (the
/// agent holds the SVID: no mint).
pub(crate) struct X509First {
    pub client: Client,
}

impl Worker for X509First {
    async fn call(&mut self, _n: u64) -> anyhow::Result<()> {
        let mut stream = self
            .client
            .fetch_x509svid(request(X509svidRequest {}))
            .await
            .context("FetchX509SVID")?
            .into_inner();
        let first = stream
            .message()
            .await
            .context("FetchX509SVID message")?
            .context("FetchX509SVID stream ended without a message")?;
        anyhow::ensure!(!first.svids.is_empty(), "FetchX509SVID sent no SVID");
        Ok(())
    }
}

/// The first FetchX509SVID message the agent sends this process.
pub(crate) async fn first_x509(client: &mut Client) -> anyhow::Result<X509svidResponse> {
    client
        .fetch_x509svid(request(X509svidRequest {}))
        .await
        .context("FetchX509SVID")?
        .into_inner()
        .message()
        .await?
        .context("FetchX509SVID stream ended without a message")
}

/// The bare echo server: FetchJWTSVID returns `response` as it is, and
/// FetchX509SVID a stream of `x509` then nothing more (as an agent's stream
/// stays open until something changes).
#[derive(Debug)]
struct Echo {
    response: JwtsvidResponse,
    x509: X509svidResponse,
}

type Never<T> = futures::stream::Empty<Result<T, Status>>;
type OneThenOpen<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Echo {
    type FetchX509SVIDStream = OneThenOpen<X509svidResponse>;
    type FetchX509BundlesStream = Never<X509BundlesResponse>;
    type FetchJWTBundlesStream = Never<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        use futures::StreamExt;
        let first = futures::stream::once(futures::future::ready(Ok(self.x509.clone())));
        Ok(Response::new(Box::pin(
            first.chain(futures::stream::pending()),
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn fetch_jwtsvid(
        &self,
        _: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Ok(Response::new(self.response.clone()))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
}

/// A running echo server; stops when dropped.
#[derive(Debug)]
pub(crate) struct EchoServer {
    pub socket: PathBuf,
    _stop: watch::Sender<bool>,
}

/// Starts the echo server on `socket` (on the current runtime), answering
/// FetchJWTSVID with one SVID carrying `spiffe_id` and `token`, and
/// FetchX509SVID with `x509`.
pub(crate) async fn start_echo(
    socket: PathBuf,
    spiffe_id: &str,
    token: &str,
    x509: X509svidResponse,
) -> anyhow::Result<EchoServer> {
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    let echo = Echo {
        response: JwtsvidResponse {
            svids: vec![lanyard_proto::workload::Jwtsvid {
                spiffe_id: spiffe_id.to_owned(),
                svid: token.to_owned(),
                hint: String::new(),
            }],
        },
        x509,
    };
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(echo))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async move {
                    let _ = stopped.changed().await;
                },
            )
            .await;
    });
    Ok(EchoServer {
        socket,
        _stop: stop,
    })
}
