//! The SPIFFE Workload API handlers: each call identified (see
//! [`crate::attestor::identify`]), then answered from the SVID caches and the
//! synced bundle.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use lanyard_host::sync::lock;
use lanyard_proto::audience::{Audience, AudienceError};
use lanyard_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use lanyard_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use lanyard_proto::{Jwks, SpiffeId, TrustDomain, WORKLOAD_API_HEADER};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::identify::{self, Identified, IdentifyError};
use super::jwt_validate::{self, VerifyingKeys};
use crate::attestor::peer::PeerInfo;
use crate::attestor::workload::WorkloadAttestor;
use crate::audit::Caller;
use crate::svids::jwt::JwtSvids;
use crate::svids::x509::{X509Svid, X509SvidCache};
use crate::sync::entries::AgentEntry;
use crate::sync::state::{SyncedState, X509Authorities};

/// How soon a FetchX509SVID stream tries again to send an update it could
/// not make (a new entry's SVID while the server is away).
const X509_UPDATE_RETRY: Duration = Duration::from_secs(5);

/// A JWT bundle and its keys, parsed once.
type ParsedBundle = (Arc<Jwks>, Arc<VerifyingKeys>);

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a FetchX509SVID message showed: the very SVIDs, hints and bundle
/// (held, so that a freed SVID's address cannot pass for a new one's).
#[derive(Debug)]
struct Shown {
    svids: Vec<Arc<X509Svid>>,
    hints: Vec<String>,
    authorities: X509Authorities,
}

impl PartialEq for Shown {
    fn eq(&self, other: &Self) -> bool {
        self.svids.len() == other.svids.len()
            && self
                .svids
                .iter()
                .zip(&other.svids)
                .all(|(a, b)| Arc::ptr_eq(a, b))
            && self.hints == other.hints
            && Arc::ptr_eq(&self.authorities, &other.authorities)
    }
}

/// What a FetchX509SVID stream waits on.
struct X509Watch {
    entries: watch::Receiver<u64>,
    svids: watch::Receiver<u64>,
    authorities: watch::Receiver<Option<X509Authorities>>,
}

impl X509Watch {
    fn mark_seen(&mut self) {
        self.entries.borrow_and_update();
        self.svids.borrow_and_update();
        self.authorities.borrow_and_update();
    }

    /// Waits for a change; true when the entries changed. An error when the
    /// agent is shutting down.
    async fn changed(&mut self) -> Result<bool, watch::error::RecvError> {
        tokio::select! {
            changed = self.entries.changed() => changed.map(|()| true),
            changed = self.svids.changed() => changed.map(|()| false),
            changed = self.authorities.changed() => changed.map(|()| false),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct WorkloadService {
    state: Arc<SyncedState>,
    jwt_svids: JwtSvids,
    attestor: Arc<WorkloadAttestor>,
    trust_domain: TrustDomain,
    /// The current bundle's keys, parsed once: rebuilt only when the bundle
    /// (an `Arc` replaced on every change) is a different one.
    verifying_keys: Arc<Mutex<Option<ParsedBundle>>>,
    /// None when the X509-SVID profile is switched off.
    x509: Option<Arc<X509SvidCache>>,
}

impl WorkloadService {
    pub(crate) fn new(
        state: Arc<SyncedState>,
        jwt_svids: JwtSvids,
        attestor: Arc<WorkloadAttestor>,
        trust_domain: TrustDomain,
        x509: Option<Arc<X509SvidCache>>,
    ) -> Self {
        Self {
            state,
            jwt_svids,
            attestor,
            trust_domain,
            verifying_keys: Arc::new(Mutex::new(None)),
            x509,
        }
    }

    /// The parsed keys of `bundle`, from the last call when it is the same bundle.
    fn verifying_keys(&self, bundle: &Arc<Jwks>) -> Arc<VerifyingKeys> {
        let mut cached = lock(&self.verifying_keys);
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
        Ok(self.identified(request).await?.identities)
    }

    /// The identities of the calling process and the selectors they were
    /// matched on (which entries' claim templates are filled from).
    async fn identified<T>(&self, request: &Request<T>) -> Result<Identified, Status> {
        require_header(request)?;
        let peer = peer_of(request)?;
        // Selectors are found out once per call, and only of the kinds the
        // entries in force use; they are matched against the same snapshot.
        let entries = self.state.entries_snapshot();
        Ok(identify::identify(&self.attestor, &peer, &entries).await?)
    }

    /// The X509-SVID cache, or Unimplemented when the operator switched the profile off.
    fn x509_svids(&self) -> Result<&Arc<X509SvidCache>, Status> {
        self.x509.as_ref().ok_or_else(|| {
            Status::unimplemented("X509-SVIDs are switched off on this agent (workload_api.x509)")
        })
    }

    /// One FetchX509SVID message for `identities`, and what it shows (to
    /// send a message only when something in it changed).
    async fn x509_response(
        &self,
        x509: &X509SvidCache,
        identities: &[AgentEntry],
        caller: Option<Caller>,
    ) -> Result<(X509svidResponse, Shown), Status> {
        let authorities = self
            .state
            .x509_authorities()
            .borrow()
            .clone()
            .ok_or_else(|| Status::unavailable("trust bundle not yet fetched from the server"))?;
        let svids =
            futures::future::try_join_all(identities.iter().map(|entry| x509.get(entry, caller)))
                .await?;
        let bundle = authorities.concat();
        let response = X509svidResponse {
            svids: svids
                .iter()
                .zip(identities)
                .map(|(svid, entry)| X509svid {
                    spiffe_id: svid.spiffe_id.clone(),
                    x509_svid: svid.chain.concat(),
                    x509_svid_key: svid.key.clone(),
                    bundle: bundle.clone(),
                    hint: entry.hint.clone(),
                })
                .collect(),
            crl: Vec::new(),
            federated_bundles: HashMap::new(),
        };
        let shown = Shown {
            svids,
            hints: identities.iter().map(|e| e.hint.clone()).collect(),
            authorities,
        };
        Ok((response, shown))
    }
}

/// Who a mint is for, in audit records.
fn caller_of(peer: &PeerInfo) -> Option<Caller> {
    peer.0.as_ref().as_ref().ok().map(|peer| Caller {
        uid: peer.credentials.uid,
        pid: peer.credentials.pid,
    })
}

fn peer_of<T>(request: &Request<T>) -> Result<PeerInfo, Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| Status::internal("caller credentials unavailable"))
}

/// The Workload API's answer when a caller gets no identity: the same codes
/// and messages whatever room the refusal came from.
impl From<IdentifyError> for Status {
    fn from(error: IdentifyError) -> Self {
        match error {
            IdentifyError::Task(_) => Status::internal(error.to_string()),
            _ => Status::permission_denied(error.to_string()),
        }
    }
}

/// The JWT bundle message for `jwks`, the bundle of trust domain `key`.
fn jwt_bundles_response(key: &str, jwks: &Jwks) -> Result<JwtBundlesResponse, Status> {
    let bytes = serde_json::to_vec(jwks).map_err(|e| Status::internal(e.to_string()))?;
    Ok(JwtBundlesResponse {
        bundles: HashMap::from([(key.to_owned(), bytes)]),
    })
}

/// A bundle stream: `respond` to the bundle held now (Unavailable before the
/// first sync fetched one), then to each bundle the syncs bring after it.
fn bundle_stream<T, R>(
    mut bundle: watch::Receiver<Option<T>>,
    respond: impl Fn(&T) -> Result<R, Status> + Clone + Send + Sync + 'static,
) -> Result<ResponseStream<R>, Status>
where
    T: Clone + Send + Sync + 'static,
    R: Send + 'static,
{
    let first = bundle
        .borrow_and_update()
        .clone()
        .ok_or_else(|| Status::unavailable("trust bundle not yet fetched from the server"))?;
    let first = respond(&first)?;
    let updates = futures::stream::unfold(bundle, move |mut rx| {
        let respond = respond.clone();
        async move {
            loop {
                rx.changed().await.ok()?;
                let latest = rx.borrow_and_update().clone();
                if let Some(value) = latest {
                    return Some((respond(&value), rx));
                }
            }
        }
    });
    Ok(Box::pin(
        futures::stream::once(async move { Ok(first) }).chain(updates),
    ))
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
        let x509 = self.x509_svids()?.clone();
        let peer = peer_of(&request)?;
        let entries = self.state.entries_snapshot();
        let Identified {
            selectors,
            identities,
        } = identify::identify(&self.attestor, &peer, &entries).await?;
        let mut watch = X509Watch {
            entries: self.state.entries_changed(),
            svids: x509.changed(),
            authorities: self.state.x509_authorities(),
        };
        watch.mark_seen();
        let caller = caller_of(&peer);
        let (first, sent) = self.x509_response(&x509, &identities, caller).await?;
        let service = self.clone();
        let updates = futures::stream::unfold(Some((watch, peer, selectors, sent)), move |next| {
            let service = service.clone();
            let x509 = x509.clone();
            async move {
                let (mut watch, peer, mut selectors, mut sent) = next?;
                // After a failed update, look again this soon even if nothing changes.
                let mut retry: Option<Duration> = None;
                loop {
                    let entries_changed = match retry.take() {
                        Some(delay) => match tokio::time::timeout(delay, watch.changed()).await {
                            Ok(changed) => changed.ok()?,
                            Err(_) => false,
                        },
                        None => watch.changed().await.ok()?,
                    };
                    let entries = service.state.entries_snapshot();
                    if entries_changed {
                        // Entries may use other selector kinds now; this
                        // also checks that the caller is still the same process.
                        selectors =
                            match identify::selectors(&service.attestor, &peer, &entries).await {
                                Ok(selectors) => selectors,
                                Err(e) => return Some((Err(e.into()), None)),
                            };
                    }
                    let identities = match identify::identities_in(&entries, &selectors) {
                        Ok(identities) => identities,
                        Err(e) => return Some((Err(e.into()), None)),
                    };
                    match service.x509_response(&x509, &identities, caller).await {
                        Ok((response, shown)) if shown != sent => {
                            sent = shown;
                            return Some((Ok(response), Some((watch, peer, selectors, sent))));
                        }
                        Ok(_) => {}
                        Err(status) => {
                            // The caller keeps what it has until this works.
                            tracing::debug!(error = %status.message(), "X509-SVID update not sent; retrying");
                            retry = Some(X509_UPDATE_RETRY);
                        }
                    }
                }
            }
        });
        let stream = futures::stream::once(async move { Ok(first) }).chain(updates);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        require_header(&request)?;
        self.x509_svids()?;
        self.identities(&request).await?;
        let key = self.trust_domain.id_string();
        let stream = bundle_stream(
            self.state.x509_authorities(),
            move |authorities: &X509Authorities| {
                Ok(X509BundlesResponse {
                    crl: Vec::new(),
                    bundles: HashMap::from([(key.clone(), authorities.concat())]),
                })
            },
        )?;
        Ok(Response::new(stream))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        require_header(&request)?;
        // The server's own audience rules, before anything is looked up or minted.
        let audience = Audience::new(request.get_ref().audience.clone()).map_err(|e| match e {
            AudienceError::Empty => Status::invalid_argument("audience must be specified"),
            other => Status::invalid_argument(other.to_string()),
        })?;
        let Identified {
            selectors,
            mut identities,
        } = self.identified(&request).await?;
        let caller = peer_of(&request)
            .ok()
            .and_then(|peer| caller_of(&peer))
            .ok_or_else(|| Status::internal("caller credentials unavailable"))?;
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
        // What each entry's claim templates take from this caller. An entry
        // whose templates need a value the caller lacks gives it no token
        // (never one with an empty claim): the call fails when that entry was
        // asked for by name, or when no other identity is left.
        let mut inputs = Vec::with_capacity(identities.len());
        let mut refusal = None;
        identities.retain(|entry| match entry.claim_inputs(&selectors) {
            Ok(found) => {
                inputs.push(found);
                true
            }
            Err(e) => {
                refusal.get_or_insert_with(|| format!("{}: {e}", entry.spiffe_id));
                false
            }
        });
        if let Some(refusal) = refusal
            && (identities.is_empty() || !body.spiffe_id.is_empty())
        {
            return Err(Status::permission_denied(refusal));
        }
        let minted =
            futures::future::try_join_all(identities.iter().zip(&inputs).map(|(entry, inputs)| {
                self.jwt_svids
                    .fetch(entry, audience.values(), inputs, caller)
            }))
            .await?;
        let svids = minted
            .into_iter()
            .zip(&identities)
            .map(|(svid, entry)| Jwtsvid {
                spiffe_id: svid.spiffe_id,
                svid: svid.token,
                hint: entry.hint.clone(),
            })
            .collect();
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.identities(&request).await?;
        let key = self.trust_domain.id_string();
        let stream = bundle_stream(self.state.bundle(), move |jwks: &Arc<Jwks>| {
            jwt_bundles_response(&key, jwks)
        })?;
        Ok(Response::new(stream))
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
        // The agent holds only its own trust domain's bundle: a token whose
        // `sub` is in any other trust domain is refused.
        let validated = jwt_validate::validate_with(
            &body.svid,
            &body.audience,
            &self.trust_domain,
            &keys,
            SystemTime::now(),
        )
        .map_err(|e| Status::invalid_argument(format!("invalid JWT-SVID: {e}")))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id.to_string(),
            claims: Some(jwt_validate::to_struct(validated.claims)),
        }))
    }
}
