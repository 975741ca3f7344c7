//! The Node API: what agents ask of the server.
//!
//! Two transports carry it. Remote agents speak mTLS: they attest (a join
//! token, or a proof of an X.509 or SSH host certificate, see [`attest`]),
//! then present their X.509 SVID, which is checked on every call
//! against the agent's record and the clock (see [`agent_check`]). The local
//! agent may instead use a Unix socket that trusts only this server's uid (or
//! root) and is known as `node_api.agent_id`. Either way a connection may
//! have at most [`MAX_CONCURRENT_STREAMS`] streams open at once.

mod agent_check;
pub(crate) mod attest;
pub(crate) mod rate_limits;

/// Most HTTP/2 streams one connection may have open on the Node API (both
/// transports): a connection cannot open attestations without bound.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 128;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_proto::SpiffeId;
use lanyard_proto::node::node_server::Node;
use lanyard_proto::node::{
    AgentSvidResponse, AttestAgentRequest, AttestRequest, GetBundleRequest, GetBundleResponse,
    MintJwtSvidRequest, MintJwtSvidResponse, MintJwtSvidResult, MintJwtSvidsRequest,
    MintJwtSvidsResponse, MintRefusal, MintX509SvidRequest, MintX509SvidResponse,
    RenewAgentRequest, SyncEntriesRequest, SyncEntriesResponse, mint_jwt_svid_result,
};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status, Streaming};

use lanyard_host::clock;

use crate::api::node_tls::NodeConnectInfo;
use crate::api::peer;
use crate::audit;
use crate::authority::bundle::TrustBundle;
use crate::authority::ca::{CaError, CertificateAuthority, IssuedCert};
use crate::authority::entries::RegistrationEntry;
use crate::authority::node_attestation::{self, NodeAttestors};
use crate::authority::{Authority, MintError, RegistryError};
use crate::telemetry::{AttestMethod, SvidKind};
use agent_check::{Call, Refusal};
use attest::Attestation;
use rate_limits::NodeRateLimits;

#[derive(Debug)]
pub(crate) struct NodeService {
    authority: Arc<Authority>,
    ca: Arc<CertificateAuthority>,
    bundle: Arc<TrustBundle>,
    attestors: Arc<NodeAttestors>,
    local_agent_id: SpiffeId,
    agent_svid_ttl: Duration,
    server_uid: u32,
    limits: NodeRateLimits,
}

impl NodeService {
    pub(crate) fn new(
        authority: Arc<Authority>,
        bundle: Arc<TrustBundle>,
        attestors: Arc<NodeAttestors>,
        local_agent_id: SpiffeId,
        agent_svid_ttl: Duration,
        limits: NodeRateLimits,
    ) -> Self {
        Self {
            limits,
            authority,
            ca: bundle.ca().clone(),
            bundle,
            attestors,
            local_agent_id,
            agent_svid_ttl,
            server_uid: nix::unistd::geteuid().as_raw(),
        }
    }

    fn attestation(&self) -> Attestation {
        Attestation {
            authority: self.authority.clone(),
            ca: self.ca.clone(),
            bundle: self.bundle.clone(),
            attestors: self.attestors.clone(),
            local_agent_id: self.local_agent_id.clone(),
            agent_svid_ttl: self.agent_svid_ttl,
        }
    }

    /// The agent calling: its verified SVID over mTLS, or the local agent over
    /// the Unix socket when the kernel says the peer is this server's uid.
    async fn caller<T>(&self, request: &Request<T>) -> Result<SpiffeId, Status> {
        if let Some(info) = request.extensions().get::<NodeConnectInfo>() {
            let peer = info.peer.as_ref().ok_or(Refusal::NoSvid)?;
            let agent =
                agent_check::admit(self.authority.registry(), peer, Call::Other, clock::now())
                    .await?;
            self.authority.metrics().agent_seen(&agent.spiffe_id);
            return Ok(agent.spiffe_id);
        }
        if request.extensions().get::<UdsConnectInfo>().is_some() {
            peer::require_uid(request, &[self.server_uid], "Node API")?;
            self.authority.metrics().agent_seen(&self.local_agent_id);
            return Ok(self.local_agent_id.clone());
        }
        Err(Status::unauthenticated("unknown transport"))
    }
}

/// An agent SVID as the Node API sends it, with the trust bundle (every
/// server's CAs).
fn svid_response(bundle: &TrustBundle, agent: &SpiffeId, issued: IssuedCert) -> AgentSvidResponse {
    AgentSvidResponse {
        spiffe_id: agent.to_string(),
        svid: issued.der.to_vec(),
        bundle: bundle.certificates().iter().map(|c| c.to_vec()).collect(),
        expires_at: issued.expires_at,
    }
}

fn unavailable(error: impl std::fmt::Display) -> Status {
    tracing::error!(error = %error, "datastore failure in the Node API");
    Status::unavailable("datastore unavailable")
}

fn csr_status(error: CaError) -> Status {
    match error {
        CaError::BadCsr(_) => Status::invalid_argument(error.to_string()),
        other => {
            tracing::error!(error = %other, "issuing an X509-SVID failed");
            Status::internal("issuing the SVID failed")
        }
    }
}

/// A refused or failed mint as the agent sees it; refusals are audited.
fn mint_status(agent: &SpiffeId, entry_id: &str, error: MintError) -> Status {
    match error {
        MintError::NotAuthorized(_) => {
            audit::svid_refused(agent, entry_id, "not the agent's entry");
            Status::permission_denied(error.to_string())
        }
        MintError::Unissuable { .. } => {
            audit::svid_refused(
                agent,
                entry_id,
                &format!("the entry breaks a rule it was stored before: {error}"),
            );
            Status::failed_precondition(error.to_string())
        }
        MintError::EmptyAudience | MintError::BadAudience(_) => {
            Status::invalid_argument(error.to_string())
        }
        MintError::Claims { .. } | MintError::TokenTooLarge { .. } => {
            audit::svid_refused(agent, entry_id, &error.to_string());
            Status::failed_precondition(error.to_string())
        }
        MintError::Key(_) | MintError::Keys(_) => {
            tracing::error!(error = %error, "signing a JWT-SVID failed");
            Status::internal("signing failed")
        }
        MintError::Store(e) => unavailable(e),
    }
}

/// Most mints one MintJwtSvids may carry.
const MAX_MINTS_PER_BATCH: usize = 64;

/// An entry as the Node API sends it to agents.
fn to_node(entry: &RegistrationEntry) -> lanyard_proto::node::Entry {
    lanyard_proto::node::Entry {
        id: entry.id.clone(),
        spiffe_id: entry.spiffe_id.to_string(),
        parent_id: entry.parent_id.to_string(),
        selectors: entry.selectors.iter().map(ToString::to_string).collect(),
        jwt_svid_ttl_seconds: u32::try_from(entry.jwt_svid_ttl.as_secs()).unwrap_or(u32::MAX),
        x509_svid_ttl_seconds: u32::try_from(entry.x509_svid_ttl.as_secs()).unwrap_or(u32::MAX),
        hint: entry.hint.clone(),
        claims: entry.claims.clone(),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn attest_agent(
        &self,
        request: Request<AttestAgentRequest>,
    ) -> Result<Response<AgentSvidResponse>, Status> {
        let remote = self.attesting_peer(&request)?;
        let body = request.into_inner();
        let svid = self
            .attestation()
            .attest_with_join_token(remote, &body.csr, &body.join_token)
            .await;
        self.authority
            .metrics()
            .attestation(AttestMethod::JoinToken, &svid);
        Ok(Response::new(svid?))
    }

    type AttestStream = attest::AttestStream;

    async fn attest(
        &self,
        request: Request<Streaming<AttestRequest>>,
    ) -> Result<Response<Self::AttestStream>, Status> {
        let remote = self.attesting_peer(&request)?;
        let stream = self.attestation().open(remote, request.into_inner())?;
        Ok(Response::new(stream))
    }

    async fn renew_agent(
        &self,
        request: Request<RenewAgentRequest>,
    ) -> Result<Response<AgentSvidResponse>, Status> {
        let Some(info) = request.extensions().get::<NodeConnectInfo>() else {
            self.caller(&request).await?;
            return Err(Status::failed_precondition(
                "the local agent has no SVID to renew",
            ));
        };
        let peer = info.peer.as_ref().ok_or(Refusal::NoSvid)?;
        let registry = self.authority.registry();
        let checked = agent_check::admit(registry, peer, Call::Renewal, clock::now()).await?;
        let agent = &checked.spiffe_id;
        self.authority.metrics().agent_seen(agent);
        let now = SystemTime::now();
        // Never past the host certificate the agent proved (admit refused
        // the renewal once it had expired).
        let ttl =
            node_attestation::agent_svid_ttl(self.agent_svid_ttl, checked.evidence_expires_at, now);
        let issued = self
            .ca
            .issue_agent_svid(&request.get_ref().csr, agent, ttl, now)
            .map_err(csr_status)?;
        // Compare-and-swap against what was checked: a concurrent renewal
        // with the same SVID (or an eviction) makes this one fail.
        registry
            .renew_agent(&checked, &peer.serial, &issued.serial)
            .await
            .map_err(|e| match e {
                RegistryError::Conflict(message) => {
                    audit::renewal_refused(agent, "lost a race with another renewal");
                    Status::permission_denied(message)
                }
                other => unavailable(other),
            })?;
        let from_previous = checked.serial != peer.serial;
        audit::agent_renewed(agent, &issued.serial, &peer.serial, from_previous);
        Ok(Response::new(svid_response(&self.bundle, agent, issued)))
    }

    async fn sync_entries(
        &self,
        request: Request<SyncEntriesRequest>,
    ) -> Result<Response<SyncEntriesResponse>, Status> {
        let agent = self.caller(&request).await?;
        if agent != self.local_agent_id {
            // Best effort: a failed write here must not fail the sync.
            let _ = self.authority.registry().touch_agent(&agent).await;
        }
        let update = self
            .authority
            .entry_update_for_agent(&agent, request.get_ref().since_revision)
            .await
            .map_err(unavailable)?;
        self.authority.metrics().entry_revision(update.revision);
        Ok(Response::new(SyncEntriesResponse {
            entries: update.upserts.iter().map(to_node).collect(),
            revision: update.revision,
            deleted_entry_ids: update.deleted_ids,
            full: update.full,
        }))
    }

    async fn mint_jwt_svid(
        &self,
        request: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        let minted = match self.caller(&request).await {
            Ok(agent) => self.mint_jwt(&agent, request.into_inner()).await,
            Err(refused) => Err(refused),
        };
        self.authority.metrics().mint(SvidKind::Jwt, &minted);
        minted.map(Response::new)
    }

    /// Each mint as MintJwtSvid answers it (the same checks, rate limit,
    /// audit and metrics), the caller checked once for all.
    async fn mint_jwt_svids(
        &self,
        request: Request<MintJwtSvidsRequest>,
    ) -> Result<Response<MintJwtSvidsResponse>, Status> {
        let agent = self.caller(&request).await?;
        let mints = request.into_inner().mints;
        if mints.len() > MAX_MINTS_PER_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} mints in one request; at most {MAX_MINTS_PER_BATCH}",
                mints.len()
            )));
        }
        // Concurrently: each waits on the datastore on its own.
        let minted = futures::future::join_all(mints.into_iter().map(|mint| {
            let agent = &agent;
            async move {
                let minted = self.mint_jwt(agent, mint).await;
                self.authority.metrics().mint(SvidKind::Jwt, &minted);
                MintJwtSvidResult {
                    result: Some(match minted {
                        Ok(svid) => mint_jwt_svid_result::Result::Svid(svid),
                        Err(refused) => mint_jwt_svid_result::Result::Refusal(MintRefusal {
                            code: refused.code() as i32,
                            message: refused.message().to_owned(),
                        }),
                    }),
                }
            }
        }))
        .await;
        Ok(Response::new(MintJwtSvidsResponse { results: minted }))
    }

    async fn mint_x509_svid(
        &self,
        request: Request<MintX509SvidRequest>,
    ) -> Result<Response<MintX509SvidResponse>, Status> {
        let minted = self.mint_x509(request).await;
        self.authority.metrics().mint(SvidKind::X509, &minted);
        minted
    }

    async fn get_bundle(
        &self,
        request: Request<GetBundleRequest>,
    ) -> Result<Response<GetBundleResponse>, Status> {
        self.caller(&request).await?;
        let jwks = super::jwks_reply(&self.authority, serde_json::to_vec)?;
        Ok(Response::new(GetBundleResponse {
            trust_domain: self.authority.trust_domain().to_string(),
            jwks,
            x509_authorities: self
                .bundle
                .certificates()
                .iter()
                .map(|c| c.to_vec())
                .collect(),
        }))
    }
}

impl NodeService {
    /// The address of a node about to attest, within its address's rate
    /// limit; attestation happens over the TLS Node API only.
    fn attesting_peer<T>(&self, request: &Request<T>) -> Result<std::net::SocketAddr, Status> {
        let remote = request
            .extensions()
            .get::<NodeConnectInfo>()
            .map(|info| info.remote)
            .ok_or_else(|| Status::failed_precondition("attest over the TLS Node API"))?;
        self.limits.attestation(remote.ip())?;
        Ok(remote)
    }

    /// A JWT-SVID for `agent` (already checked), within its mint rate.
    async fn mint_jwt(
        &self,
        agent: &SpiffeId,
        body: MintJwtSvidRequest,
    ) -> Result<MintJwtSvidResponse, Status> {
        self.limits.mint(agent)?;
        let minted = self
            .authority
            .mint_jwt_svid(
                agent,
                &body.entry_id,
                &body.audience,
                &body.selectors,
                SystemTime::now(),
            )
            .await
            .map_err(|e| mint_status(agent, &body.entry_id, e))?;
        Ok(MintJwtSvidResponse {
            spiffe_id: minted.spiffe_id.to_string(),
            token: minted.token,
            issued_at: minted.issued_at,
            expires_at: minted.expires_at,
        })
    }

    async fn mint_x509(
        &self,
        request: Request<MintX509SvidRequest>,
    ) -> Result<Response<MintX509SvidResponse>, Status> {
        let agent = self.caller(&request).await?;
        self.limits.mint(&agent)?;
        let body = request.into_inner();
        let entry = self
            .authority
            .entry_of_agent(&agent, &body.entry_id)
            .await
            .map_err(|e| mint_status(&agent, &body.entry_id, e))?;
        let issued = self
            .ca
            .issue_workload_svid(
                &body.csr,
                &entry.spiffe_id,
                entry.x509_svid_ttl,
                SystemTime::now(),
            )
            .map_err(csr_status)?;
        audit::x509_svid_minted(&agent, &entry.spiffe_id, &issued.serial, issued.expires_at);
        Ok(Response::new(MintX509SvidResponse {
            spiffe_id: entry.spiffe_id.to_string(),
            cert_chain: vec![issued.der.to_vec()],
            expires_at: issued.expires_at,
        }))
    }
}
