//! The Admin API: operators manage entries, join tokens and agents over a
//! local Unix socket. Only root, the server's own uid and the configured admin
//! uid may call it; every change is audited with the caller's uid. A node
//! alias never takes an agent's ID (nor one under `/lanyard/`), and a join
//! token never names a node alias's ID: an agent and a group of nodes stay
//! apart.

use std::sync::Arc;
use std::time::Duration;

use lanyard_host::random;
use lanyard_proto::admin::admin_server::Admin;
use lanyard_proto::admin::{
    Agent, BanAgentRequest, BanAgentResponse, CreateEntryRequest, DeleteEntryRequest,
    DeleteEntryResponse, Entry, EvictAgentRequest, EvictAgentResponse, GenerateJoinTokenRequest,
    GenerateJoinTokenResponse, GetAgentRequest, GetBundleRequest, GetBundleResponse,
    GetEntryRequest, HealthRequest, HealthResponse, ListAgentsRequest, ListAgentsResponse,
    ListEntriesRequest, ListEntriesResponse, UnbanAgentRequest, UnbanAgentResponse,
    UpdateEntryRequest,
};
use lanyard_proto::{Selector, SpiffeId};
use tonic::{Request, Response, Status};

use crate::api::peer;
use crate::audit;
use crate::authority::entries::{self, EntrySpec, RegistrationEntry};
use crate::authority::registry::{AgentRecord, EntryFilter};
use crate::authority::{Authority, RegistryError};

/// Join tokens live ten minutes unless asked otherwise, a day at most.
const DEFAULT_JOIN_TOKEN_TTL: u32 = 600;
const MAX_JOIN_TOKEN_TTL: u32 = 86_400;

/// Limits the Admin API applies to what operators register.
#[derive(Debug, Clone)]
pub(crate) struct AdminPolicy {
    pub allowed_uids: Vec<u32>,
    pub local_agent_id: SpiffeId,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

#[derive(Debug)]
pub(crate) struct AdminService {
    authority: Arc<Authority>,
    policy: AdminPolicy,
}

impl AdminService {
    pub(crate) fn new(authority: Arc<Authority>, policy: AdminPolicy) -> Self {
        Self { authority, policy }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<u32, Status> {
        peer::require_uid(request, &self.policy.allowed_uids, "Admin API")
    }

    /// Validates an operator's entry, naming the field at fault. A node
    /// alias (`wanted.node`) is parented to the server and selects node
    /// selectors only; a workload entry selects workload selectors only.
    async fn entry_spec(&self, wanted: &Entry) -> Result<EntrySpec, Status> {
        let node = wanted.node;
        let Entry {
            spiffe_id,
            parent_id,
            selectors,
            jwt_svid_ttl_seconds: ttl_seconds,
            admin,
            ..
        } = wanted;
        let ttl_seconds = *ttl_seconds;
        let trust_domain = self.authority.trust_domain();
        let member = |field: &str, raw: &str| -> Result<SpiffeId, Status> {
            let id = SpiffeId::parse(raw)
                .map_err(|e| Status::invalid_argument(format!("{field} {raw:?}: {e}")))?;
            if !id.is_member_of(trust_domain) {
                return Err(Status::invalid_argument(format!(
                    "{field} {raw:?} is not in trust domain {trust_domain}"
                )));
            }
            Ok(id)
        };
        let spiffe_id = member("spiffe_id", spiffe_id)?;
        self.check_assignable("spiffe_id", &spiffe_id)?;
        let server_id = self.server_id()?;
        // An alias under an agent's own ID would give that agent's workloads
        // to every node the alias selects, and the alias's to the agent.
        if node
            && self
                .authority
                .registry()
                .is_agent_id(&spiffe_id)
                .await
                .map_err(registry_status)?
        {
            return Err(Status::already_exists(format!(
                "spiffe_id {spiffe_id} is an agent's ID: a node alias names a group of nodes and may not take the ID of one"
            )));
        }
        // The parent may well be a system ID: the local agent or an attested one.
        let parent_id = if node {
            if !parent_id.is_empty() && parent_id != server_id.as_str() {
                return Err(Status::invalid_argument(format!(
                    "parent_id: a node alias hangs under the server ({server_id}); leave parent_id empty"
                )));
            }
            server_id
        } else if parent_id.is_empty() {
            self.policy.local_agent_id.clone()
        } else {
            member("parent_id", parent_id)?
        };
        if !node && !self.parent_is_known(&parent_id).await? {
            return Err(Status::invalid_argument(format!(
                "parent_id {parent_id} is unknown: it is neither an attested agent, the local agent nor an entry's SPIFFE ID"
            )));
        }
        if selectors.is_empty() {
            return Err(Status::invalid_argument(
                "selectors: at least one is required",
            ));
        }
        let parse = if node {
            Selector::parse_known_node
        } else {
            Selector::parse_known
        };
        let selectors = selectors
            .iter()
            .map(|s| parse(s).map_err(|e| Status::invalid_argument(format!("selectors: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        lanyard_proto::selector::check_anchored(&selectors)
            .map_err(|e| Status::invalid_argument(format!("selectors: {e}")))?;
        let ttl = if ttl_seconds == 0 {
            self.policy.default_ttl
        } else {
            Duration::from_secs(ttl_seconds.into())
        };
        if ttl > self.policy.max_ttl {
            return Err(Status::invalid_argument(format!(
                "jwt_svid_ttl_seconds {ttl_seconds} exceeds the server's maximum of {}",
                self.policy.max_ttl.as_secs()
            )));
        }
        let mut spec = EntrySpec::new(spiffe_id, parent_id, selectors, ttl);
        spec.admin = *admin;
        spec.x509_svid_ttl = entries::x509_svid_ttl(wanted.x509_svid_ttl_seconds)
            .map_err(|e| Status::invalid_argument(format!("x509_svid_ttl_seconds: {e}")))?;
        entries::check_hint(&wanted.hint)
            .map_err(|e| Status::invalid_argument(format!("hint: {e}")))?;
        spec.hint = wanted.hint.clone();
        if node && !wanted.claims.is_empty() {
            return Err(Status::invalid_argument(
                "claims: a node alias is given no SVIDs, so it takes no claims",
            ));
        }
        spec.claims = entries::checked_claims(&wanted.claims)
            .map_err(|e| Status::invalid_argument(format!("claims: {e}")))?;
        Ok(spec)
    }

    /// An ID an operator may give an entry or a join token: not the bare
    /// trust domain, not under `/lanyard/`, and not the local agent's ID
    /// (which `node_api.agent_id` may have put elsewhere): an entry or a node
    /// holding it would reach every entry registered on the server's host.
    fn check_assignable(&self, field: &str, id: &SpiffeId) -> Result<(), Status> {
        id.check_assignable()
            .map_err(|e| Status::invalid_argument(format!("{field} {:?} {e}", id.as_str())))?;
        if id == &self.policy.local_agent_id {
            return Err(Status::invalid_argument(format!(
                "{field} {:?} is the local agent's ID (node_api.agent_id), which is reserved for the system",
                id.as_str()
            )));
        }
        Ok(())
    }

    /// The server's own ID, the parent of node aliases.
    fn server_id(&self) -> Result<SpiffeId, Status> {
        self.authority
            .server_id()
            .cloned()
            .ok_or_else(|| Status::internal("the server's own SPIFFE ID is not valid"))
    }

    fn to_admin(&self, entry: RegistrationEntry) -> Entry {
        let node = self.authority.server_id() == Some(&entry.parent_id);
        to_admin(entry, node)
    }

    /// A SPIFFE ID of this trust domain from `raw`, for the field `field`.
    fn agent_id(&self, raw: &str) -> Result<SpiffeId, Status> {
        let id = SpiffeId::parse(raw)
            .map_err(|e| Status::invalid_argument(format!("spiffe_id {raw:?}: {e}")))?;
        let trust_domain = self.authority.trust_domain();
        if !id.is_member_of(trust_domain) {
            return Err(Status::invalid_argument(format!(
                "spiffe_id {raw:?} is not in trust domain {trust_domain}"
            )));
        }
        Ok(id)
    }

    async fn parent_is_known(&self, parent: &SpiffeId) -> Result<bool, Status> {
        if parent == &self.policy.local_agent_id {
            return Ok(true);
        }
        self.authority
            .registry()
            .is_known_parent(parent)
            .await
            .map_err(registry_status)
    }
}

fn registry_status(error: RegistryError) -> Status {
    match error {
        RegistryError::NotFound { .. } => Status::not_found(error.to_string()),
        RegistryError::Conflict(_) => Status::already_exists(error.to_string()),
        other => {
            tracing::error!(error = %other, "datastore failure in the Admin API");
            Status::unavailable(format!("datastore unavailable: {other}"))
        }
    }
}

fn to_admin(entry: RegistrationEntry, node: bool) -> Entry {
    Entry {
        node,
        id: entry.id,
        spiffe_id: entry.spiffe_id.to_string(),
        parent_id: entry.parent_id.to_string(),
        selectors: entry.selectors.iter().map(ToString::to_string).collect(),
        jwt_svid_ttl_seconds: u32::try_from(entry.jwt_svid_ttl.as_secs()).unwrap_or(u32::MAX),
        admin: entry.admin,
        created_at: entry.created_at,
        updated_at: entry.updated_at,
        revision: entry.revision,
        x509_svid_ttl_seconds: u32::try_from(entry.x509_svid_ttl.as_secs()).unwrap_or(u32::MAX),
        hint: entry.hint,
        claims: entry.claims,
    }
}

fn to_agent(agent: AgentRecord) -> Agent {
    Agent {
        spiffe_id: agent.spiffe_id.to_string(),
        serial: agent.serial,
        last_seen: agent.last_seen,
        evicted: agent.evicted,
        attestation_type: agent.attestation_type,
        selectors: agent.selectors.iter().map(ToString::to_string).collect(),
        banned: agent.banned,
        attested_at: agent.attested_at,
    }
}

fn new_entry_id() -> Result<String, Status> {
    random::identifier::<16>().map_err(|_| Status::internal("no randomness available"))
}

fn optional_id(field: &str, raw: &str) -> Result<Option<SpiffeId>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    SpiffeId::parse(raw)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("{field} {raw:?}: {e}")))
}

/// The calls themselves; [`Admin`] wraps each to audit it.
impl AdminService {
    async fn health_call(
        &self,
        request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        self.caller(&request)?;
        let entry_revision = self
            .authority
            .registry()
            .health()
            .await
            .map_err(registry_status)?;
        Ok(Response::new(HealthResponse {
            trust_domain: self.authority.trust_domain().to_string(),
            entry_revision,
        }))
    }

    async fn create_entry_call(
        &self,
        request: Request<CreateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        let uid = self.caller(&request)?;
        let body = request.into_inner();
        let spec = self
            .entry_spec(&Entry {
                spiffe_id: body.spiffe_id,
                parent_id: body.parent_id,
                selectors: body.selectors,
                jwt_svid_ttl_seconds: body.jwt_svid_ttl_seconds,
                admin: body.admin,
                x509_svid_ttl_seconds: body.x509_svid_ttl_seconds,
                hint: body.hint,
                node: body.node,
                claims: body.claims,
                ..Entry::default()
            })
            .await?;
        let entry = self
            .authority
            .registry()
            .create_entry(&new_entry_id()?, &spec)
            .await
            .map_err(registry_status)?;
        audit::entry_created(uid, &entry.id, &entry.spiffe_id);
        Ok(Response::new(self.to_admin(entry)))
    }

    async fn get_entry_call(
        &self,
        request: Request<GetEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        self.caller(&request)?;
        let entry = self
            .authority
            .registry()
            .get_entry(&request.get_ref().id)
            .await
            .map_err(registry_status)?;
        Ok(Response::new(self.to_admin(entry)))
    }

    async fn list_entries_call(
        &self,
        request: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        self.caller(&request)?;
        let body = request.into_inner();
        let filter = EntryFilter {
            spiffe_id: optional_id("spiffe_id", &body.spiffe_id)?,
            parent_id: optional_id("parent_id", &body.parent_id)?,
            selector: if body.selector.is_empty() {
                None
            } else {
                Some(
                    Selector::parse(&body.selector)
                        .map_err(|e| Status::invalid_argument(format!("selector: {e}")))?,
                )
            },
        };
        let entries = self
            .authority
            .registry()
            .list_entries(&filter)
            .await
            .map_err(registry_status)?;
        Ok(Response::new(ListEntriesResponse {
            entries: entries.into_iter().map(|e| self.to_admin(e)).collect(),
        }))
    }

    async fn update_entry_call(
        &self,
        request: Request<UpdateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        let uid = self.caller(&request)?;
        let body = request.into_inner();
        let wanted = body
            .entry
            .ok_or_else(|| Status::invalid_argument("entry is required"))?;
        let spec = self.entry_spec(&wanted).await?;
        let entry = self
            .authority
            .registry()
            .update_entry(&body.id, &spec)
            .await
            .map_err(registry_status)?;
        audit::entry_updated(uid, &entry.id, &entry.spiffe_id);
        Ok(Response::new(self.to_admin(entry)))
    }

    async fn delete_entry_call(
        &self,
        request: Request<DeleteEntryRequest>,
    ) -> Result<Response<DeleteEntryResponse>, Status> {
        let uid = self.caller(&request)?;
        let id = request.into_inner().id;
        self.authority
            .registry()
            .delete_entry(&id)
            .await
            .map_err(registry_status)?;
        audit::entry_deleted(uid, &id);
        Ok(Response::new(DeleteEntryResponse {}))
    }

    async fn generate_join_token_call(
        &self,
        request: Request<GenerateJoinTokenRequest>,
    ) -> Result<Response<GenerateJoinTokenResponse>, Status> {
        let uid = self.caller(&request)?;
        let body = request.into_inner();
        let ttl = if body.ttl_seconds == 0 {
            DEFAULT_JOIN_TOKEN_TTL
        } else {
            body.ttl_seconds
        };
        if ttl > MAX_JOIN_TOKEN_TTL {
            return Err(Status::invalid_argument(format!(
                "ttl_seconds may be at most {MAX_JOIN_TOKEN_TTL}"
            )));
        }
        let trust_domain = self.authority.trust_domain();
        // None: the store names the agent under /lanyard/agent/join_token/.
        let spiffe_id = optional_id("spiffe_id", &body.spiffe_id)?;
        if let Some(id) = &spiffe_id {
            if !id.is_member_of(trust_domain) {
                return Err(Status::invalid_argument(format!(
                    "spiffe_id {id} is not in trust domain {trust_domain}"
                )));
            }
            self.check_assignable("spiffe_id", id)?;
            // The agent would get every entry under the alias, whatever it proved.
            if self
                .authority
                .registry()
                .is_node_alias_id(id, &self.server_id()?)
                .await
                .map_err(registry_status)?
            {
                return Err(Status::failed_precondition(format!(
                    "spiffe_id {id} is a node alias's ID: a join token names one agent, not a group of nodes; choose another ID"
                )));
            }
        }
        let token = self
            .authority
            .registry()
            .create_join_token(trust_domain, spiffe_id, i64::from(ttl))
            .await
            .map_err(registry_status)?;
        audit::join_token_created(uid, &token.spiffe_id, token.expires_at, &token.token);
        Ok(Response::new(GenerateJoinTokenResponse {
            token: token.token,
            expires_at: token.expires_at,
            spiffe_id: token.spiffe_id.to_string(),
        }))
    }

    async fn list_agents_call(
        &self,
        request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        self.caller(&request)?;
        let agents = self
            .authority
            .registry()
            .list_agents()
            .await
            .map_err(registry_status)?;
        Ok(Response::new(ListAgentsResponse {
            agents: agents.into_iter().map(to_agent).collect(),
        }))
    }

    async fn evict_agent_call(
        &self,
        request: Request<EvictAgentRequest>,
    ) -> Result<Response<EvictAgentResponse>, Status> {
        let uid = self.caller(&request)?;
        let raw = request.into_inner().spiffe_id;
        let id = SpiffeId::parse(&raw)
            .map_err(|e| Status::invalid_argument(format!("spiffe_id {raw:?}: {e}")))?;
        self.authority
            .registry()
            .evict_agent(&id)
            .await
            .map_err(registry_status)?;
        audit::agent_evicted(uid, &id);
        Ok(Response::new(EvictAgentResponse {}))
    }

    async fn get_agent_call(
        &self,
        request: Request<GetAgentRequest>,
    ) -> Result<Response<Agent>, Status> {
        self.caller(&request)?;
        let id = self.agent_id(&request.get_ref().spiffe_id)?;
        let agent = self
            .authority
            .registry()
            .get_agent(&id)
            .await
            .map_err(registry_status)?;
        Ok(Response::new(to_agent(agent)))
    }

    async fn ban_agent_call(
        &self,
        request: Request<BanAgentRequest>,
    ) -> Result<Response<BanAgentResponse>, Status> {
        let uid = self.caller(&request)?;
        let id = self.agent_id(&request.get_ref().spiffe_id)?;
        self.authority
            .registry()
            .ban_agent(&id)
            .await
            .map_err(registry_status)?;
        audit::agent_banned(uid, &id);
        Ok(Response::new(BanAgentResponse {}))
    }

    async fn unban_agent_call(
        &self,
        request: Request<UnbanAgentRequest>,
    ) -> Result<Response<UnbanAgentResponse>, Status> {
        let uid = self.caller(&request)?;
        let id = self.agent_id(&request.get_ref().spiffe_id)?;
        self.authority
            .registry()
            .unban_agent(&id)
            .await
            .map_err(registry_status)?;
        audit::agent_unbanned(uid, &id);
        Ok(Response::new(UnbanAgentResponse {}))
    }

    async fn get_bundle_call(
        &self,
        request: Request<GetBundleRequest>,
    ) -> Result<Response<GetBundleResponse>, Status> {
        self.caller(&request)?;
        let jwks = super::jwks_reply(&self.authority, serde_json::to_vec_pretty)?;
        Ok(Response::new(GetBundleResponse {
            trust_domain: self.authority.trust_domain().to_string(),
            jwks,
            issuer: self.authority.issuer().as_str().to_owned(),
        }))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn health(
        &self,
        request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        let uid = peer::uid(&request);
        audited(uid, "Health", self.health_call(request).await)
    }

    async fn create_entry(
        &self,
        request: Request<CreateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        let uid = peer::uid(&request);
        audited(uid, "CreateEntry", self.create_entry_call(request).await)
    }

    async fn get_entry(
        &self,
        request: Request<GetEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        let uid = peer::uid(&request);
        audited(uid, "GetEntry", self.get_entry_call(request).await)
    }

    async fn list_entries(
        &self,
        request: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        let uid = peer::uid(&request);
        audited(uid, "ListEntries", self.list_entries_call(request).await)
    }

    async fn update_entry(
        &self,
        request: Request<UpdateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        let uid = peer::uid(&request);
        audited(uid, "UpdateEntry", self.update_entry_call(request).await)
    }

    async fn delete_entry(
        &self,
        request: Request<DeleteEntryRequest>,
    ) -> Result<Response<DeleteEntryResponse>, Status> {
        let uid = peer::uid(&request);
        audited(uid, "DeleteEntry", self.delete_entry_call(request).await)
    }

    async fn generate_join_token(
        &self,
        request: Request<GenerateJoinTokenRequest>,
    ) -> Result<Response<GenerateJoinTokenResponse>, Status> {
        let uid = peer::uid(&request);
        audited(
            uid,
            "GenerateJoinToken",
            self.generate_join_token_call(request).await,
        )
    }

    async fn list_agents(
        &self,
        request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let uid = peer::uid(&request);
        audited(uid, "ListAgents", self.list_agents_call(request).await)
    }

    async fn evict_agent(
        &self,
        request: Request<EvictAgentRequest>,
    ) -> Result<Response<EvictAgentResponse>, Status> {
        let uid = peer::uid(&request);
        audited(uid, "EvictAgent", self.evict_agent_call(request).await)
    }

    async fn get_agent(
        &self,
        request: Request<GetAgentRequest>,
    ) -> Result<Response<Agent>, Status> {
        let uid = peer::uid(&request);
        audited(uid, "GetAgent", self.get_agent_call(request).await)
    }

    async fn ban_agent(
        &self,
        request: Request<BanAgentRequest>,
    ) -> Result<Response<BanAgentResponse>, Status> {
        let uid = peer::uid(&request);
        audited(uid, "BanAgent", self.ban_agent_call(request).await)
    }

    async fn unban_agent(
        &self,
        request: Request<UnbanAgentRequest>,
    ) -> Result<Response<UnbanAgentResponse>, Status> {
        let uid = peer::uid(&request);
        audited(uid, "UnbanAgent", self.unban_agent_call(request).await)
    }

    async fn get_bundle(
        &self,
        request: Request<GetBundleRequest>,
    ) -> Result<Response<GetBundleResponse>, Status> {
        let uid = peer::uid(&request);
        audited(uid, "GetBundle", self.get_bundle_call(request).await)
    }
}

/// Records `admin.call` for `method` with the code it is answered with,
/// and passes the answer on.
fn audited<T>(uid: Option<u32>, method: &str, answer: Result<T, Status>) -> Result<T, Status> {
    let code = answer
        .as_ref()
        .map_or_else(Status::code, |_| tonic::Code::Ok);
    audit::admin_call(uid, method, code);
    answer
}

#[cfg(test)]
mod tests {
    //! The handlers over a real registry, called as a local uid would.

    use std::time::SystemTime;

    use lanyard_host::clock::unix_seconds;
    use lanyard_proto::TrustDomain;
    use tonic::Code;
    use tonic::transport::server::UdsConnectInfo;

    use super::*;
    use crate::authority::Issuer;
    use crate::keys::{KeyManager, KeyType, RotationPolicy};
    use crate::store::Datastore;

    async fn service(dir: &std::path::Path) -> Result<AdminService, Box<dyn std::error::Error>> {
        let td = TrustDomain::new("example.org")?;
        let store = Datastore::open_sqlite(&dir.join("db.sqlite")).await?;
        let policy = RotationPolicy::with_max_token_ttl(Duration::from_secs(3600));
        let keys = KeyManager::open(
            store.clone(),
            &dir.join("keys"),
            "test",
            policy,
            KeyType::EcP256,
            unix_seconds(SystemTime::now()),
        )
        .await?;
        let authority = Authority::new(
            td.clone(),
            Issuer::parse("https://issuer.example.org")?,
            Arc::new(keys),
            store,
            Duration::from_secs(3600),
        );
        Ok(AdminService::new(
            Arc::new(authority),
            AdminPolicy {
                allowed_uids: vec![nix::unistd::geteuid().as_raw()],
                local_agent_id: td.id_with_path("/lanyard/agent/local")?,
                default_ttl: Duration::from_secs(300),
                max_ttl: Duration::from_secs(3600),
            },
        ))
    }

    /// A request as this process would make it over the Admin socket.
    fn request<T>(body: T) -> Request<T> {
        let (ours, _theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut request = Request::new(body);
        request.extensions_mut().insert(UdsConnectInfo {
            peer_addr: None,
            peer_cred: Some(ours.peer_cred().unwrap()),
        });
        request
    }

    use crate::audit::capture::Audit;

    /// Every call is one `admin.call` record with the caller's uid and the
    /// answer's code, refused and failed calls too.
    #[tokio::test]
    async fn every_call_is_audited_with_its_uid_and_code() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let admin = service(dir.path()).await?;
        let (audit, _guard) = Audit::start();
        let me = nix::unistd::geteuid().as_raw();

        admin
            .list_entries(request(ListEntriesRequest::default()))
            .await?;
        let missing = admin
            .get_entry(request(GetEntryRequest {
                id: "no-such-entry".to_owned(),
            }))
            .await;
        assert_eq!(missing.map(|_| ()).unwrap_err().code(), Code::NotFound);
        // No peer credentials: refused, and still audited (without a uid).
        let anonymous = admin
            .list_agents(Request::new(ListAgentsRequest::default()))
            .await;
        assert_eq!(
            anonymous.map(|_| ()).unwrap_err().code(),
            Code::Unauthenticated
        );

        let lines = audit.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 3, "{lines:?}");
        for (line, method, code) in [
            (&lines[0], "ListEntries", "ok"),
            (&lines[1], "GetEntry", "not_found"),
            (&lines[2], "ListAgents", "unauthenticated"),
        ] {
            assert!(line.contains("event=\"admin.call\""), "{line}");
            assert!(line.contains(&format!("method=\"{method}\"")), "{line}");
            assert!(line.contains(&format!("code=\"{code}\"")), "{line}");
        }
        for line in &lines[..2] {
            assert!(line.contains(&format!(" uid={me} ")), "{line}");
        }
        assert!(!lines[2].contains("uid="), "{}", lines[2]);
        Ok(())
    }

    fn alias(spiffe_id: &str) -> CreateEntryRequest {
        CreateEntryRequest {
            spiffe_id: spiffe_id.to_owned(),
            selectors: vec!["x509pop:subject:ou:web".to_owned()],
            node: true,
            ..CreateEntryRequest::default()
        }
    }

    /// Review of issue 13: a node alias may not take an agent's ID (nor one
    /// under /lanyard/), and a join token may not name a node alias's ID.
    #[tokio::test]
    async fn node_aliases_and_agents_never_share_an_id() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let admin = service(dir.path()).await?;
        let agent = SpiffeId::parse("spiffe://example.org/node/a")?;
        admin
            .authority
            .registry()
            .attest_agent(&agent, "01")
            .await?;

        let taken = admin
            .create_entry(request(alias(agent.as_str())))
            .await
            .unwrap_err();
        assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
        assert!(taken.message().contains("is an agent's ID"), "{taken:?}");
        let reserved = admin
            .create_entry(request(alias(
                "spiffe://example.org/lanyard/agent/x509pop/ab",
            )))
            .await
            .unwrap_err();
        assert_eq!(reserved.code(), Code::InvalidArgument, "{reserved:?}");

        let created = admin
            .create_entry(request(alias("spiffe://example.org/fleet/web")))
            .await?
            .into_inner();
        assert!(created.node);
        // Updating an alias onto an agent's ID is refused as creating one is.
        let moved = admin
            .update_entry(request(UpdateEntryRequest {
                id: created.id.clone(),
                entry: Some(Entry {
                    spiffe_id: agent.to_string(),
                    ..created.clone()
                }),
            }))
            .await
            .unwrap_err();
        assert_eq!(moved.code(), Code::AlreadyExists, "{moved:?}");

        let token = |spiffe_id: &str| GenerateJoinTokenRequest {
            spiffe_id: spiffe_id.to_owned(),
            ..GenerateJoinTokenRequest::default()
        };
        let refused = admin
            .generate_join_token(request(token("spiffe://example.org/fleet/web")))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("node alias's ID"), "{refused:?}");
        admin
            .generate_join_token(request(token("spiffe://example.org/node/b")))
            .await?;
        // A workload entry may still share an agent's ID, as before.
        let workload = admin
            .create_entry(request(CreateEntryRequest {
                spiffe_id: agent.to_string(),
                selectors: vec!["unix:uid:1000".to_owned()],
                ..CreateEntryRequest::default()
            }))
            .await;
        assert!(workload.is_ok(), "{workload:?}");
        Ok(())
    }

    /// Claims are checked where an entry is written: reserved names,
    /// templates naming what no agent knows, and claims on a node alias are
    /// refused by name, and nothing is stored; good claims are stored as
    /// compact JSON and shown back.
    #[tokio::test]
    async fn entry_claims_are_checked_when_written() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let admin = service(dir.path()).await?;
        let with_claims = |claims: &str| CreateEntryRequest {
            spiffe_id: "spiffe://example.org/claims".to_owned(),
            selectors: vec!["unix:uid:1000".to_owned()],
            claims: claims.to_owned(),
            ..CreateEntryRequest::default()
        };
        for (claims, reason) in [
            (r#"{"aud": "x"}"#, r#"claims: claim "aud" is reserved"#),
            (r#"{"exp": 1}"#, r#"claim "exp" is reserved"#),
            (
                r#"{"team": "{{ k8s:ns }}"}"#,
                "template {{ k8s:ns }} names nothing the agent knows",
            ),
            (r#"{"team": "{{ unix:user "}"#, "without its '}}'"),
            ("not json", "claims are not JSON"),
        ] {
            let refused = admin
                .create_entry(request(with_claims(claims)))
                .await
                .map(|_| ())
                .unwrap_err();
            assert_eq!(
                refused.code(),
                Code::InvalidArgument,
                "{claims}: {refused:?}"
            );
            assert!(refused.message().contains(reason), "{claims}: {refused:?}");
        }
        let mut node = alias("spiffe://example.org/fleet/claims");
        node.claims = r#"{"a": "b"}"#.to_owned();
        let refused = admin
            .create_entry(request(node))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(refused.message().contains("node alias"), "{refused:?}");
        let listed = admin
            .list_entries(request(ListEntriesRequest::default()))
            .await?
            .into_inner();
        assert!(listed.entries.is_empty(), "nothing stored: {listed:?}");

        let created = admin
            .create_entry(request(with_claims(
                r#"{ "team" : "{{ container:label:team }}", "n": 1 }"#,
            )))
            .await?
            .into_inner();
        assert_eq!(
            created.claims,
            r#"{"n":1,"team":"{{ container:label:team }}"}"#
        );
        Ok(())
    }
}
