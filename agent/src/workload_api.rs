//! The SPIFFE Workload API, served to local processes on a Unix socket.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use futures::{Stream, StreamExt};
use lanyard_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use lanyard_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svidRequest, X509svidResponse,
};
use lanyard_proto::{Jwks, SpiffeId, TrustDomain, WORKLOAD_API_HEADER};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::attestor::peer::PeerInfo;
use crate::attestor::unix::UnixAttestor;
use crate::jwt_issuer::JwtSvidIssuer;
use crate::jwt_validate::{self, VerifyingKeys};
use crate::state::{AgentEntry, SyncedState};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug)]
pub struct WorkloadService {
    state: Arc<SyncedState>,
    issuer: JwtSvidIssuer,
    attestor: Arc<UnixAttestor>,
    trust_domain: TrustDomain,
    /// The current bundle's keys, parsed once: rebuilt only when the bundle
    /// (an `Arc` replaced on every change) is a different one.
    verifying_keys: Mutex<Option<(Arc<Jwks>, Arc<VerifyingKeys>)>>,
}

impl WorkloadService {
    pub fn new(
        state: Arc<SyncedState>,
        issuer: JwtSvidIssuer,
        attestor: Arc<UnixAttestor>,
        trust_domain: TrustDomain,
    ) -> Self {
        Self {
            state,
            issuer,
            attestor,
            trust_domain,
            verifying_keys: Mutex::new(None),
        }
    }

    /// The parsed keys of `bundle`, from the last call when it is the same bundle.
    fn verifying_keys(&self, bundle: &Arc<Jwks>) -> Arc<VerifyingKeys> {
        let mut cached = self
            .verifying_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match cached.as_ref() {
            Some((for_bundle, keys)) if Arc::ptr_eq(for_bundle, bundle) => keys.clone(),
            _ => {
                let keys = Arc::new(VerifyingKeys::new(bundle));
                *cached = Some((bundle.clone(), keys.clone()));
                keys
            }
        }
    }

    /// The identities of the calling process, from what the kernel says about it.
    async fn identities<T>(&self, request: &Request<T>) -> Result<Vec<AgentEntry>, Status> {
        require_header(request)?;
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::internal("caller credentials unavailable"))?;
        // Selectors are found out once per call, and only of the kinds the
        // entries in force use; they are matched against the same snapshot.
        let entries = self.state.entries_snapshot();
        let needs = entries.needs();
        let attestor = self.attestor.clone();
        let attest = move || match peer.0.as_ref() {
            Ok(peer) => attestor
                .attest_for(peer, needs)
                .map(|selectors| (peer.credentials, selectors))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let attested = if needs.may_block() {
            // NSS may ask a network directory; a large binary takes a while to hash.
            tokio::task::spawn_blocking(attest)
                .await
                .map_err(|e| Status::internal(format!("attestation task failed: {e}")))?
        } else {
            // A pin check and procfs reads: cheaper than a trip to the blocking pool.
            attest()
        };
        let (caller, selectors) = attested.map_err(|reason| {
            tracing::debug!(%reason, "caller could not be attested");
            Status::permission_denied(format!("caller could not be attested: {reason}"))
        })?;
        let identities = entries.identities_for(&selectors);
        if identities.is_empty() {
            tracing::debug!(
                uid = caller.uid,
                gid = caller.gid,
                pid = caller.pid,
                "caller has no identity"
            );
            return Err(Status::permission_denied("no identity issued"));
        }
        Ok(identities)
    }

    fn bundles_response(&self, jwks: &Jwks) -> Result<JwtBundlesResponse, Status> {
        let bytes = serde_json::to_vec(jwks).map_err(|e| Status::internal(e.to_string()))?;
        Ok(JwtBundlesResponse {
            bundles: HashMap::from([(self.trust_domain.id_string(), bytes)]),
        })
    }
}

/// Every call must carry `workload.spiffe.io: true`, so that a browser or an
/// SSRF-prone proxy cannot be tricked into calling the socket.
fn require_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request
        .metadata()
        .get(WORKLOAD_API_HEADER)
        .map(|v| v.to_str())
    {
        Some(Ok("true")) => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadService {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        require_header(&request)?;
        Err(Status::unimplemented(
            "X509-SVIDs are not issued by this agent yet",
        ))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        require_header(&request)?;
        Err(Status::unimplemented(
            "X.509 bundles are not served by this agent yet",
        ))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        require_header(&request)?;
        if request.get_ref().audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let mut identities = self.identities(&request).await?;
        let body = request.into_inner();
        if !body.spiffe_id.is_empty() {
            let wanted = SpiffeId::parse(&body.spiffe_id).map_err(|e| {
                Status::invalid_argument(format!("spiffe_id {:?}: {e}", body.spiffe_id))
            })?;
            identities.retain(|entry| entry.spiffe_id == wanted);
            if identities.is_empty() {
                return Err(Status::permission_denied(format!(
                    "no identity issued for {wanted}"
                )));
            }
        }
        let audience = &body.audience;
        let minted = futures::future::try_join_all(
            identities
                .iter()
                .map(|entry| self.issuer.fetch(entry, audience)),
        )
        .await?;
        let svids = minted
            .into_iter()
            .map(|svid| Jwtsvid {
                spiffe_id: svid.spiffe_id,
                svid: svid.token,
                hint: String::new(),
            })
            .collect();
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.identities(&request).await?;
        let mut bundle = self.state.bundle();
        let first = bundle
            .borrow_and_update()
            .clone()
            .ok_or_else(|| Status::unavailable("trust bundle not yet fetched from the server"))?;
        let first = self.bundles_response(&first)?;
        let trust_domain = self.trust_domain.clone();
        let updates =
            futures::stream::unfold(bundle, move |mut rx: watch::Receiver<Option<Arc<Jwks>>>| {
                let key = trust_domain.id_string();
                async move {
                    loop {
                        rx.changed().await.ok()?;
                        let latest = rx.borrow_and_update().clone();
                        if let Some(jwks) = latest {
                            let item = serde_json::to_vec(jwks.as_ref())
                                .map(|bytes| JwtBundlesResponse {
                                    bundles: HashMap::from([(key.clone(), bytes)]),
                                })
                                .map_err(|e| Status::internal(e.to_string()));
                            return Some((item, rx));
                        }
                    }
                }
            });
        let stream = futures::stream::once(async move { Ok(first) }).chain(updates);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        require_header(&request)?;
        let body = request.into_inner();
        if body.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if body.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let bundle =
            self.state.bundle().borrow().clone().ok_or_else(|| {
                Status::unavailable("trust bundle not yet fetched from the server")
            })?;
        let keys = self.verifying_keys(&bundle);
        let validated =
            jwt_validate::validate_with(&body.svid, &body.audience, &keys, SystemTime::now())
                .map_err(|e| Status::invalid_argument(format!("invalid JWT-SVID: {e}")))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id.to_string(),
            claims: Some(jwt_validate::to_struct(validated.claims)),
        }))
    }
}
