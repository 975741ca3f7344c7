//! A Workload API client for the agent's own CLI (`api …`, `healthcheck`):
//! it calls a running agent as the current process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use lanyard_host::transport::{SocketError, socket_path_from_endpoint, unix_channel};
use lanyard_proto::WORKLOAD_API_HEADER;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long a CLI call waits for the agent.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(transparent)]
    Endpoint(#[from] SocketError),
    #[error("{socket}: {message} ({code})")]
    Rpc {
        socket: PathBuf,
        code: Code,
        message: String,
    },
    #[error("{0}: the agent did not answer within {1} s")]
    Timeout(PathBuf, u64),
    #[error("{0}: the agent closed the stream without sending anything")]
    NoMessage(PathBuf),
    #[error("{socket}: the agent sent certificates that do not parse: {source}")]
    BadCertificates {
        socket: PathBuf,
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    #[error("{socket}: bundle of {trust_domain} is not JSON: {source}")]
    BadBundle {
        socket: PathBuf,
        trust_domain: String,
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The gRPC code the agent answered with, if it answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedJwt {
    pub spiffe_id: String,
    pub token: String,
}

/// One X509-SVID as the agent handed it out.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchedX509 {
    pub spiffe_id: String,
    pub hint: String,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER.
    pub key: Vec<u8>,
    /// DER certificates of the trust domain's authorities.
    pub bundle: Vec<Vec<u8>>,
}

impl std::fmt::Debug for FetchedX509 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedX509")
            .field("spiffe_id", &self.spiffe_id)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwt {
    pub spiffe_id: String,
    pub claims: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct WorkloadClient {
    socket: PathBuf,
    client: SpiffeWorkloadApiClient<Channel>,
}

impl WorkloadClient {
    /// A client for `unix:///path` (or a bare path); connects on first call.
    pub fn new(endpoint: &str) -> Result<Self, ClientError> {
        let socket = socket_path_from_endpoint(endpoint)?;
        let client = SpiffeWorkloadApiClient::new(unix_channel(&socket));
        Ok(Self { socket, client })
    }

    /// A client over a socket connected by someone else (inherited or passed
    /// in), used for exactly one connection.
    pub fn over_connected(stream: std::os::unix::net::UnixStream) -> Result<Self, ClientError> {
        let socket = PathBuf::from("(inherited socket)");
        stream
            .set_nonblocking(true)
            .map_err(|source| SocketError::Io {
                path: socket.clone(),
                source,
            })?;
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(stream)));
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
                let taken = lanyard_host::sync::lock(&slot).take();
                async move {
                    let stream = taken.ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::NotConnected,
                            "the inherited connection is gone",
                        )
                    })?;
                    tokio::net::UnixStream::from_std(stream).map(hyper_util::rt::TokioIo::new)
                }
            }));
        Ok(Self {
            socket,
            client: SpiffeWorkloadApiClient::new(channel),
        })
    }

    fn request<T>(body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        request.metadata_mut().insert(
            WORKLOAD_API_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        request.set_timeout(CALL_TIMEOUT);
        request
    }

    fn rpc_error(&self, status: Status) -> ClientError {
        ClientError::Rpc {
            socket: self.socket.clone(),
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(result) => result.map_err(|s| self.rpc_error(s)),
            Err(_) => Err(ClientError::Timeout(
                self.socket.clone(),
                CALL_TIMEOUT.as_secs(),
            )),
        }
    }

    pub async fn fetch_jwt(
        &mut self,
        audience: Vec<String>,
        spiffe_id: Option<String>,
    ) -> Result<Vec<FetchedJwt>, ClientError> {
        let mut client = self.client.clone();
        let request = Self::request(JwtsvidRequest {
            audience,
            spiffe_id: spiffe_id.unwrap_or_default(),
        });
        let response = self.bounded(client.fetch_jwtsvid(request)).await?;
        Ok(response
            .into_inner()
            .svids
            .into_iter()
            .map(|s| FetchedJwt {
                spiffe_id: s.spiffe_id,
                token: s.svid,
            })
            .collect())
    }

    /// The first message of the server stream that `opened` opens (the
    /// stream is dropped after it).
    async fn first_message<M>(
        &self,
        opened: impl Future<Output = Result<tonic::Response<tonic::Streaming<M>>, Status>>,
    ) -> Result<M, ClientError> {
        let mut stream = self.bounded(opened).await?.into_inner();
        self.bounded(stream.message())
            .await?
            .ok_or_else(|| ClientError::NoMessage(self.socket.clone()))
    }

    /// The caller's X509-SVIDs: the first message of the stream.
    pub async fn fetch_x509(&mut self) -> Result<Vec<FetchedX509>, ClientError> {
        let mut client = self.client.clone();
        let request = Self::request(X509svidRequest {});
        let first = self.first_message(client.fetch_x509svid(request)).await?;
        first
            .svids
            .into_iter()
            .map(|svid| {
                Ok(FetchedX509 {
                    chain: self.certificates(&svid.x509_svid)?,
                    bundle: self.certificates(&svid.bundle)?,
                    spiffe_id: svid.spiffe_id,
                    hint: svid.hint,
                    key: svid.x509_svid_key,
                })
            })
            .collect()
    }

    /// The first set of X.509 bundles: trust domain ID → DER certificates.
    pub async fn fetch_x509_bundles(
        &mut self,
    ) -> Result<BTreeMap<String, Vec<Vec<u8>>>, ClientError> {
        let mut client = self.client.clone();
        let request = Self::request(X509BundlesRequest {});
        let first = self
            .first_message(client.fetch_x509_bundles(request))
            .await?;
        first
            .bundles
            .into_iter()
            .map(|(trust_domain, der)| Ok((trust_domain, self.certificates(&der)?)))
            .collect()
    }

    /// Concatenated DER certificates, one by one.
    fn certificates(&self, mut der: &[u8]) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut certificates = Vec::new();
        while !der.is_empty() {
            let (rest, _) = x509_parser::parse_x509_certificate(der).map_err(|source| {
                ClientError::BadCertificates {
                    socket: self.socket.clone(),
                    source,
                }
            })?;
            let (one, _) = der.split_at(der.len() - rest.len());
            certificates.push(one.to_vec());
            der = rest;
        }
        Ok(certificates)
    }

    /// The first (full) set of JWT bundles: trust domain ID → JWKS.
    pub async fn fetch_jwt_bundles(
        &mut self,
    ) -> Result<BTreeMap<String, serde_json::Value>, ClientError> {
        let mut client = self.client.clone();
        let request = Self::request(JwtBundlesRequest {});
        let first = self
            .first_message(client.fetch_jwt_bundles(request))
            .await?;
        let mut bundles = BTreeMap::new();
        for (trust_domain, bytes) in first.bundles {
            let jwks = serde_json::from_slice(&bytes).map_err(|source| ClientError::BadBundle {
                socket: self.socket.clone(),
                trust_domain: trust_domain.clone(),
                source,
            })?;
            bundles.insert(trust_domain, jwks);
        }
        Ok(bundles)
    }

    pub async fn validate_jwt(
        &mut self,
        audience: String,
        token: String,
    ) -> Result<ValidatedJwt, ClientError> {
        let mut client = self.client.clone();
        let request = Self::request(ValidateJwtsvidRequest {
            audience,
            svid: token,
        });
        let response = self
            .bounded(client.validate_jwtsvid(request))
            .await?
            .into_inner();
        Ok(ValidatedJwt {
            spiffe_id: response.spiffe_id,
            claims: response
                .claims
                .map_or(serde_json::Value::Null, struct_to_json),
        })
    }

    /// Whether the agent answers: it serves its trust bundle (to a caller with
    /// an identity) or refuses this caller by policy — either way it is up and
    /// has synced. `Unavailable`, any other error or silence is unhealthy.
    pub async fn health(&mut self) -> Result<Health, ClientError> {
        match self.fetch_jwt_bundles().await {
            Ok(_) => Ok(Health::ServingBundle),
            Err(e) if e.code() == Some(Code::PermissionDenied) => Ok(Health::AnsweringNoIdentity),
            Err(e) => Err(e),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The agent served this caller its trust bundle.
    ServingBundle,
    /// The agent answered and refused this caller, which has no identity.
    AnsweringNoIdentity,
}

fn struct_to_json(value: prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        // Claims are mostly integer timestamps: print them as integers.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => (n as i64).into(),
        Some(Kind::NumberValue(n)) => n.into(),
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::ListValue(list)) => list.values.into_iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}
