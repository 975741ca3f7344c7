//! The authority: decides which agent may have which identity, and signs it.
//! It owns the registry of entries, agents and join tokens the APIs manage,
//! the trust domain's X.509 CA and the issuer name its tokens carry.

pub mod bundle;
pub mod ca;
pub mod entries;
mod issuer;
pub mod node_attestation;
pub(crate) mod registry;

pub use issuer::{Issuer, IssuerError};
pub(crate) use registry::{Registry, RegistryError};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_host::clock::unix_seconds;
use lanyard_host::random;
use lanyard_proto::audience::{Audience, AudienceError};
use lanyard_proto::entry_claims::{self, EntryClaims};
use lanyard_proto::{Jwks, JwtSvidClaims, Selector, SpiffeId, TrustDomain};

use crate::audit;
use crate::keys::{KeyError, KeyManager, KeyManagerError};
use crate::store::RegistrationEntry;
use crate::store::{self, Datastore, EntryChange, StoreError};
use crate::telemetry::{ServerMetrics, StoreOp};

/// How deep entries may nest under an agent through node entries.
const MAX_NESTING: usize = 8;

/// The path of the server's own SPIFFE ID (the one in its Node API
/// certificate), under which node aliases hang.
pub const SERVER_ID_PATH: &str = "/lanyard/server";

/// Whether a node alias selecting `alias` covers an agent that proved
/// `node`: every one of the alias's selectors is among the node's.
pub(crate) fn alias_matches(alias: &[Selector], node: &[Selector]) -> bool {
    !alias.is_empty() && alias.iter().all(|s| node.contains(s))
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// Deliberately the same for "no such entry" and "not yours", so an agent
    /// cannot probe which entries exist elsewhere.
    #[error("entry {0:?} is not registered for this agent")]
    NotAuthorized(String),
    #[error("audience is required")]
    EmptyAudience,
    #[error(transparent)]
    BadAudience(AudienceError),
    /// Stored before the rule it breaks (a binary selector without a uid or
    /// gid): never signed for, whoever asks.
    #[error("entry {entry:?} is not issued: {reason}")]
    Unissuable {
        entry: String,
        reason: lanyard_proto::SelectorError,
    },
    /// The entry's claims cannot be rendered for this caller (a selector
    /// they use is missing or was not asked for), or are stored broken.
    #[error("entry {entry:?}: {reason}")]
    Claims { entry: String, reason: String },
    /// The signed token would be too long for the clouds' STS endpoints.
    #[error(
        "the JWT-SVID of entry {entry:?} would be {bytes} bytes, over the {limit}-byte limit: shorten its claims or audience",
        limit = entry_claims::MAX_TOKEN_BYTES
    )]
    TokenTooLarge { entry: String, bytes: usize },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyManagerError),
}

/// What an agent must change to hold exactly its entries.
#[derive(Debug, Clone, Default)]
pub struct AgentEntryUpdate {
    pub upserts: Vec<RegistrationEntry>,
    pub deleted_ids: Vec<String>,
    /// True when `upserts` is the complete set (a first or too old sync).
    pub full: bool,
    pub revision: u64,
}

#[derive(Clone)]
pub struct MintedJwtSvid {
    pub spiffe_id: SpiffeId,
    pub token: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for MintedJwtSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("MintedJwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Authority {
    trust_domain: TrustDomain,
    issuer: Issuer,
    keys: Arc<KeyManager>,
    store: Datastore,
    registry: Registry,
    max_ttl: Duration,
    /// The parent of node aliases.
    server_id: Option<SpiffeId>,
    metrics: Arc<ServerMetrics>,
}

impl Authority {
    pub fn new(
        trust_domain: TrustDomain,
        issuer: Issuer,
        keys: Arc<KeyManager>,
        store: Datastore,
        max_ttl: Duration,
    ) -> Self {
        let server_id = trust_domain.id_with_path(SERVER_ID_PATH).ok();
        let metrics = Arc::<ServerMetrics>::default();
        Self {
            trust_domain,
            issuer,
            keys,
            registry: Registry::new(store.clone(), metrics.clone()),
            store,
            max_ttl,
            server_id,
            metrics,
        }
    }

    /// What the server counts.
    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.metrics
    }

    /// The server's own SPIFFE ID: the parent of node aliases.
    pub fn server_id(&self) -> Option<&SpiffeId> {
        self.server_id.as_ref()
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// The entries, join tokens and agents the APIs manage.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Where `agent`'s entries hang from: the agent itself and every node
    /// alias its node selectors cover; and the entry revision at which those
    /// selectors last changed.
    async fn agent_roots(&self, agent: &SpiffeId) -> Result<(Vec<SpiffeId>, u64), StoreError> {
        let mut roots = vec![agent.clone()];
        let record = match self.store.get_agent(agent).await {
            Ok(record) => record,
            // The local agent, which has no record and no node selectors.
            Err(StoreError::NotFound { .. }) => return Ok((roots, 0)),
            Err(e) => return Err(e),
        };
        if let (false, Some(server_id)) = (record.selectors.is_empty(), &self.server_id) {
            for alias in self.store.entries_by_parent(server_id).await? {
                if alias_matches(&alias.selectors, &record.selectors)
                    && !roots.contains(&alias.spiffe_id)
                {
                    roots.push(alias.spiffe_id);
                }
            }
        }
        Ok((roots, record.selectors_revision))
    }

    /// Every entry `agent` may serve: those parented to it or to a node alias
    /// it is under, and those parented to the SPIFFE ID of an entry it may
    /// serve (node entries), to a bounded depth. Aliases themselves are not
    /// among them.
    pub async fn entries_for_agent(
        &self,
        agent: &SpiffeId,
    ) -> Result<Vec<RegistrationEntry>, StoreError> {
        let (roots, _) = self.agent_roots(agent).await?;
        self.store.entries_under_roots(&roots, MAX_NESTING).await
    }

    /// What `agent` must change since revision `since` (everything when 0),
    /// timed as one datastore operation.
    pub async fn entry_update_for_agent(
        &self,
        agent: &SpiffeId,
        since: u64,
    ) -> Result<AgentEntryUpdate, StoreError> {
        self.metrics
            .datastore(
                StoreOp::Sync,
                store::bounded(self.read_entry_update(agent, since)),
                |_| true,
            )
            .await
    }

    async fn read_entry_update(
        &self,
        agent: &SpiffeId,
        since: u64,
    ) -> Result<AgentEntryUpdate, StoreError> {
        // The revision is read before the entries: a change racing with the
        // reads below has a higher revision, so the next sync sees it again.
        let revision = self.store.entry_revision().await?;
        let (roots, selectors_revision) = self.agent_roots(agent).await?;
        // A first sync, or node selectors that changed since (a new
        // attestation): the whole set.
        if since == 0 || selectors_revision > since {
            let upserts = self.store.entries_under_roots(&roots, MAX_NESTING).await?;
            return Ok(AgentEntryUpdate {
                upserts,
                deleted_ids: Vec::new(),
                full: true,
                revision,
            });
        }
        let (changes, revision) = self.store.entry_changes_since(since).await?;
        let mut update = AgentEntryUpdate {
            revision,
            ..AgentEntryUpdate::default()
        };
        if changes.is_empty() {
            return Ok(update);
        }
        if self.changes_move_subtrees(&changes).await? {
            update.upserts = self.store.entries_under_roots(&roots, MAX_NESTING).await?;
            update.full = true;
            return Ok(update);
        }
        // No change moved a subtree, so an entry is the agent's exactly when
        // its parent is one of the IDs the agent's entries hang from: the
        // work is per change, not per entry the agent holds.
        let parents = self.store.parents_under_roots(&roots, MAX_NESTING).await?;
        for change in changes {
            match change {
                EntryChange::Upsert(entry) if parents.contains(entry.parent_id.as_str()) => {
                    update.upserts.push(entry)
                }
                // Moved to another parent: gone as far as this agent is concerned.
                EntryChange::Upsert(entry) => update.deleted_ids.push(entry.id),
                EntryChange::Deleted { id, .. } => update.deleted_ids.push(id),
            }
        }
        Ok(update)
    }

    /// True when a change may have moved entries that did not change
    /// themselves: one that other entries hang under (a node entry).
    async fn changes_move_subtrees(&self, changes: &[EntryChange]) -> Result<bool, StoreError> {
        for change in changes {
            let spiffe_id = match change {
                EntryChange::Deleted { spiffe_id, .. } => spiffe_id,
                EntryChange::Upsert(entry) => &entry.spiffe_id,
            };
            if self.store.has_children(spiffe_id).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The public keys of the trust domain.
    pub fn jwks(&self) -> Result<Jwks, KeyManagerError> {
        Ok(self.keys.current()?.jwks.clone())
    }

    pub fn keys(&self) -> &KeyManager {
        &self.keys
    }

    /// Signs a JWT-SVID for `entry_id` on behalf of `agent`, if the entry is
    /// the agent's; `inputs` are the caller's selectors its claims use.
    pub async fn mint_jwt_svid(
        &self,
        agent: &SpiffeId,
        entry_id: &str,
        audience: &[String],
        inputs: &[String],
        now: SystemTime,
    ) -> Result<MintedJwtSvid, MintError> {
        let audience = checked_audience(audience)?;
        let entry = self.entry_of_agent(agent, entry_id).await?;
        let extra = rendered_claims(&entry, inputs)?;
        // Claims alone past the limit: refused before anything is signed.
        let claims_bytes = serde_json::Value::Object(extra.clone()).to_string().len();
        if claims_bytes > entry_claims::MAX_TOKEN_BYTES {
            return Err(MintError::TokenTooLarge {
                entry: entry.id,
                bytes: claims_bytes,
            });
        }
        let issued_at = unix_seconds(now);
        let ttl = entry.jwt_svid_ttl.min(self.max_ttl);
        let expires_at = issued_at.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        let jti = self.new_jti()?;
        let claims = JwtSvidClaims {
            iss: self.issuer.as_str().to_owned(),
            sub: entry.spiffe_id.to_string(),
            aud: audience.into_values(),
            exp: expires_at,
            iat: issued_at,
            jti: Some(jti.clone()),
            extra,
        };
        let signer = self.keys.current()?.signer.clone();
        let token = signer.sign(&claims)?;
        if token.len() > entry_claims::MAX_TOKEN_BYTES {
            return Err(MintError::TokenTooLarge {
                entry: entry.id,
                bytes: token.len(),
            });
        }
        audit::jwt_svid_minted(
            agent,
            &entry.spiffe_id,
            &claims.aud,
            signer.kid(),
            &jti,
            expires_at,
        );
        Ok(MintedJwtSvid {
            spiffe_id: entry.spiffe_id,
            token,
            issued_at,
            expires_at,
        })
    }

    /// The entry `entry_id` if `agent` holds it (as its parent, or through
    /// one of its node entries): the one check before anything is signed.
    pub async fn entry_of_agent(
        &self,
        agent: &SpiffeId,
        entry_id: &str,
    ) -> Result<RegistrationEntry, MintError> {
        let entry = self
            .metrics
            .datastore(
                StoreOp::MintLookup,
                store::bounded(self.owned_entry(agent, entry_id)),
                |e| matches!(e, MintError::Store(_)),
            )
            .await?;
        lanyard_proto::selector::check_anchored(&entry.selectors).map_err(|reason| {
            MintError::Unissuable {
                entry: entry.id.clone(),
                reason,
            }
        })?;
        Ok(entry)
    }

    async fn owned_entry(
        &self,
        agent: &SpiffeId,
        entry_id: &str,
    ) -> Result<RegistrationEntry, MintError> {
        match self.store.get_entry(entry_id).await {
            Ok(entry) if &entry.parent_id == agent => Ok(entry),
            Ok(entry) => {
                // Perhaps under one of the agent's node entries.
                let reachable = self.entries_for_agent(agent).await?;
                if !reachable.iter().any(|e| e.id == entry.id) {
                    return Err(MintError::NotAuthorized(entry_id.to_owned()));
                }
                Ok(entry)
            }
            Err(StoreError::NotFound { .. }) => Err(MintError::NotAuthorized(entry_id.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    fn new_jti(&self) -> Result<String, KeyError> {
        let bytes = random::bytes::<16>().map_err(|_| KeyError::Sign)?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// Most selectors an agent may send with one mint (an entry's claims use
/// at most 32), and the longest it may send.
const MAX_CLAIM_INPUTS: usize = 32;
const MAX_CLAIM_INPUT_BYTES: usize = 1024;

/// The entry's claims rendered for a caller whose selectors the claims use
/// are `inputs`; nothing for an entry without claims (which takes no inputs).
fn rendered_claims(
    entry: &RegistrationEntry,
    inputs: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, MintError> {
    let refused = |reason: String| MintError::Claims {
        entry: entry.id.clone(),
        reason,
    };
    if entry.claims.is_empty() {
        return match inputs.first() {
            Some(first) => Err(refused(format!(
                "selector {first:?} was sent, but the entry has no claims"
            ))),
            None => Ok(serde_json::Map::new()),
        };
    }
    if inputs.len() > MAX_CLAIM_INPUTS {
        return Err(refused(format!(
            "{} selectors were sent, at most {MAX_CLAIM_INPUTS} are taken",
            inputs.len()
        )));
    }
    if let Some(long) = inputs.iter().find(|s| s.len() > MAX_CLAIM_INPUT_BYTES) {
        return Err(refused(format!(
            "a selector of {} bytes was sent, at most {MAX_CLAIM_INPUT_BYTES} are taken",
            long.len()
        )));
    }
    let claims = EntryClaims::parse(&entry.claims)
        .map_err(|e| refused(format!("its stored claims are invalid: {e}")))?;
    let inputs = inputs
        .iter()
        .map(|s| Selector::parse_known(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(e.to_string()))?;
    // The agent matched the caller against the entry, so where the entry
    // pins a value the claims use, the value sent must be that one.
    for prefix in claims
        .references()
        .iter()
        .filter_map(|r| r.selector_prefix())
    {
        let has_prefix = |s: &&Selector| s.to_string().starts_with(&prefix);
        let pinned: Vec<&Selector> = entry.selectors.iter().filter(has_prefix).collect();
        if let Some(sent) = inputs
            .iter()
            .filter(has_prefix)
            .find(|s| !pinned.is_empty() && !pinned.contains(s))
        {
            return Err(refused(format!(
                "selector {sent} was sent, but the entry selects {}",
                pinned[0]
            )));
        }
    }
    claims
        .render(&entry.spiffe_id, &inputs)
        .map_err(|e| refused(e.to_string()))
}

/// The audience by the rules the agent applies too (`lanyard_proto::audience`).
fn checked_audience(audience: &[String]) -> Result<Audience, MintError> {
    Audience::new(audience.to_vec()).map_err(|e| match e {
        AudienceError::Empty => MintError::EmptyAudience,
        other => MintError::BadAudience(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EntrySpec;
    use lanyard_proto::Selector;

    async fn authority(
        dir: &std::path::Path,
    ) -> Result<(Authority, SpiffeId, String), Box<dyn std::error::Error>> {
        let td = TrustDomain::new("example.org")?;
        let agent = td.id_with_path("/agent/a")?;
        let spec = EntrySpec::new(
            td.id_with_path("/web")?,
            agent.clone(),
            vec![Selector::parse("unix:uid:1000")?],
            Duration::from_secs(7200),
        );
        let store = Datastore::open_sqlite(&dir.join("db.sqlite")).await?;
        store.seed_entry(&spec, 0).await?;
        let policy = crate::keys::RotationPolicy::with_max_token_ttl(Duration::from_secs(3600));
        let now = unix_seconds(SystemTime::now());
        let keys = KeyManager::open(
            store.clone(),
            &dir.join("keys"),
            "test",
            policy,
            crate::keys::KeyType::EcP256,
            now,
        )
        .await?;
        let issuer = Issuer::parse("https://issuer.example.org")?;
        let authority =
            Authority::new(td, issuer, Arc::new(keys), store, Duration::from_secs(3600));
        Ok((authority, agent, spec.content_id()))
    }

    /// An entry for `unix:uid:1` at `path` under `parent`.
    fn uid1_entry(
        td: &TrustDomain,
        path: &str,
        parent: &SpiffeId,
    ) -> Result<EntrySpec, Box<dyn std::error::Error>> {
        Ok(EntrySpec::new(
            td.id_with_path(path)?,
            parent.clone(),
            vec![Selector::parse("unix:uid:1")?],
            Duration::from_secs(60),
        ))
    }

    #[tokio::test]
    async fn node_entries_extend_an_agent_transitively() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (authority, agent, direct) = authority(dir.path()).await?;
        let td = authority.trust_domain().clone();
        let spec = |path: &str, parent: &SpiffeId| uid1_entry(&td, path, parent);
        let node = td.id_with_path("/node/group")?;
        let store = &authority.store;
        store
            .create_entry("node", &spec("/node/group", &agent)?, 1)
            .await?;
        store
            .create_entry("nested", &spec("/nested", &node)?, 2)
            .await?;
        let stranger = td.id_with_path("/agent/other")?;
        store
            .create_entry("other", &spec("/other", &stranger)?, 3)
            .await?;

        let mut ids: Vec<String> = authority
            .entries_for_agent(&agent)
            .await?
            .into_iter()
            .map(|e| e.id)
            .collect();
        ids.sort();
        let mut expected = vec![direct.clone(), "nested".to_owned(), "node".to_owned()];
        expected.sort();
        assert_eq!(ids, expected);
        let aud = vec!["a".to_owned()];
        assert!(
            authority
                .mint_jwt_svid(&agent, "nested", &aud, &[], SystemTime::now())
                .await
                .is_ok()
        );
        assert!(matches!(
            authority
                .mint_jwt_svid(&agent, "other", &aud, &[], SystemTime::now())
                .await,
            Err(MintError::NotAuthorized(_))
        ));

        // Moving the node entry away takes its subtree with it, in one sync.
        let full = authority.entry_update_for_agent(&agent, 0).await?;
        store
            .update_entry("node", &spec("/node/group", &stranger)?, 4)
            .await?;
        let update = authority
            .entry_update_for_agent(&agent, full.revision)
            .await?;
        assert!(update.full, "a moved node entry forces a full resync");
        let ids: Vec<&str> = update.upserts.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, vec![direct.as_str()]);
        assert!(matches!(
            authority
                .mint_jwt_svid(&agent, "nested", &aud, &[], SystemTime::now())
                .await,
            Err(MintError::NotAuthorized(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn renaming_a_node_entry_takes_its_old_subtree_away_incrementally()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (authority, agent, direct) = authority(dir.path()).await?;
        let td = authority.trust_domain().clone();
        let spec = |path: &str, parent: &SpiffeId| uid1_entry(&td, path, parent);
        let store = &authority.store;
        store
            .create_entry("node", &spec("/node/x", &agent)?, 1)
            .await?;
        store
            .create_entry("child", &spec("/child", &td.id_with_path("/node/x")?)?, 2)
            .await?;
        let full = authority.entry_update_for_agent(&agent, 0).await?;
        assert_eq!(full.upserts.len(), 3, "direct, node and child");

        // The node entry now names /node/y: nothing hangs under that, and
        // the child still names /node/x, which no entry of this agent is.
        store
            .update_entry("node", &spec("/node/y", &agent)?, 3)
            .await?;
        let update = authority
            .entry_update_for_agent(&agent, full.revision)
            .await?;
        let held: Vec<String> = if update.full {
            update.upserts.iter().map(|e| e.id.clone()).collect()
        } else {
            assert!(
                update.deleted_ids.contains(&"child".to_owned()),
                "{update:?}"
            );
            vec![direct.clone(), "node".to_owned()]
        };
        assert!(!held.contains(&"child".to_owned()), "{update:?}");
        assert!(
            update.upserts.iter().any(|e| e.id == "node"),
            "the renamed entry itself is sent: {update:?}"
        );
        Ok(())
    }

    /// Issue 13: an agent whose node selectors include all of an alias's is
    /// under it (entries, sync, minting); an agent that proves other node
    /// selectors later leaves it in one full sync; the alias itself is never
    /// sent.
    #[tokio::test]
    async fn node_aliases_reach_the_agents_they_select() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (authority, _, _) = authority(dir.path()).await?;
        let td = authority.trust_domain().clone();
        let store = &authority.store;
        let web = td.id_with_path("/lanyard/agent/x509pop/aa")?;
        let db = td.id_with_path("/lanyard/agent/x509pop/bb")?;
        let ou = |v: &str| Selector::parse(&format!("x509pop:subject:ou:{v}"));
        let cn = Selector::parse("x509pop:subject:cn:web-1")?;
        store
            .attest_node(&web, "01", "x509pop", &[ou("web")?, cn.clone()], 0, 1)
            .await?;
        store
            .attest_node(&db, "01", "x509pop", &[ou("db")?], 0, 1)
            .await?;
        let server = authority.server_id().ok_or("no server ID")?.clone();
        let alias = EntrySpec::new(
            td.id_with_path("/fleet/web")?,
            server,
            vec![ou("web")?],
            Duration::from_secs(60),
        );
        store.create_entry("alias", &alias, 2).await?;
        store
            .create_entry("app", &uid1_entry(&td, "/app", &alias.spiffe_id)?, 3)
            .await?;

        let ids = |entries: Vec<RegistrationEntry>| -> Vec<String> {
            entries.into_iter().map(|e| e.id).collect()
        };
        assert_eq!(ids(authority.entries_for_agent(&web).await?), ["app"]);
        assert!(authority.entries_for_agent(&db).await?.is_empty());
        let aud = vec!["a".to_owned()];
        assert!(
            authority
                .mint_jwt_svid(&web, "app", &aud, &[], SystemTime::now())
                .await
                .is_ok()
        );
        assert!(matches!(
            authority
                .mint_jwt_svid(&db, "app", &aud, &[], SystemTime::now())
                .await,
            Err(MintError::NotAuthorized(_))
        ));
        for agent in [&web, &db] {
            assert!(matches!(
                authority
                    .mint_jwt_svid(agent, "alias", &aud, &[], SystemTime::now())
                    .await,
                Err(MintError::NotAuthorized(_))
            ));
        }

        // An incremental change under the alias arrives incrementally.
        let full = authority.entry_update_for_agent(&web, 0).await?;
        assert_eq!(ids(full.upserts), ["app"]);
        store
            .create_entry("app2", &uid1_entry(&td, "/app2", &alias.spiffe_id)?, 4)
            .await?;
        let update = authority
            .entry_update_for_agent(&web, full.revision)
            .await?;
        assert!(!update.full);
        assert_eq!(ids(update.upserts), ["app2"]);

        // Re-attested with other node selectors: out, in one full sync.
        store
            .attest_node(&web, "02", "x509pop", &[ou("db")?], 0, 5)
            .await?;
        let moved = authority
            .entry_update_for_agent(&web, update.revision)
            .await?;
        assert!(moved.full, "new node selectors force a full sync");
        assert!(moved.upserts.is_empty(), "{:?}", moved.upserts);
        Ok(())
    }

    /// An entry stored before binary selectors needed a uid or gid (as an
    /// older server wrote it) is never signed for, even by its own agent.
    #[tokio::test]
    async fn an_entry_stored_before_the_binary_rule_is_never_signed()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (authority, agent, _) = authority(dir.path()).await?;
        let old = EntrySpec::new(
            authority.trust_domain().id_with_path("/old")?,
            agent.clone(),
            vec![Selector::parse("unix:path:/usr/bin/sleep")?],
            Duration::from_secs(600),
        );
        authority.store.seed_entry(&old, 0).await?;
        let refused = authority
            .mint_jwt_svid(
                &agent,
                &old.content_id(),
                &["aud".to_owned()],
                &[],
                SystemTime::now(),
            )
            .await;
        assert!(
            matches!(&refused, Err(MintError::Unissuable { .. })),
            "{refused:?}"
        );
        assert!(matches!(
            authority.entry_of_agent(&agent, &old.content_id()).await,
            Err(MintError::Unissuable { .. })
        ));
        Ok(())
    }

    /// The payload of a compact JWS, as JSON.
    fn payload(token: &str) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let body = token.split('.').nth(1).ok_or("not a JWS")?;
        Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body)?)?)
    }

    /// An entry's claims are rendered from the selectors the agent sends,
    /// which must be exactly those the templates use and agree with what
    /// the entry pins; an oversize token is refused, not signed.
    #[tokio::test]
    async fn entry_claims_are_rendered_checked_and_bounded()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (authority, agent, plain) = authority(dir.path()).await?;
        let td = authority.trust_domain().clone();
        let mut spec = EntrySpec::new(
            td.id_with_path("/claims")?,
            agent.clone(),
            vec![Selector::parse("unix:uid:1000")?],
            Duration::from_secs(600),
        );
        spec.claims = entries::checked_claims(
            r#"{"unit": "{{ systemd:unit }}", "uid": "{{ unix:uid }}", "at": "{{ spiffe_id.path }}"}"#,
        )?;
        authority.store.seed_entry(&spec, 0).await?;
        let id = spec.content_id();
        let aud = vec!["sts.amazonaws.com".to_owned()];
        let inputs = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let now = SystemTime::now();

        let minted = authority
            .mint_jwt_svid(
                &agent,
                &id,
                &aud,
                &inputs(&["systemd:unit:web.service", "unix:uid:1000"]),
                now,
            )
            .await?;
        let claims = payload(&minted.token)?;
        assert_eq!(claims["unit"], "web.service");
        assert_eq!(claims["uid"], "1000");
        assert_eq!(claims["at"], "/claims");
        assert_eq!(claims["sub"], "spiffe://example.org/claims");

        for (sent, reason) in [
            (inputs(&["unix:uid:1000"]), "no systemd:unit selector"),
            (
                inputs(&["systemd:unit:web.service", "unix:uid:1000", "unix:gid:1"]),
                "was sent, but the entry's claims use no",
            ),
            // The entry pins unix:uid:1000: another uid cannot be its caller.
            (
                inputs(&["systemd:unit:web.service", "unix:uid:0"]),
                "but the entry selects unix:uid:1000",
            ),
            (
                inputs(&["systemd:unit:no spaces.service", "unix:uid:1000"]),
                "can never match",
            ),
            (
                vec![
                    format!("systemd:unit:{}.service", "a".repeat(1100)),
                    "unix:uid:1000".to_owned(),
                ],
                "at most 1024 are taken",
            ),
        ] {
            let refused = authority.mint_jwt_svid(&agent, &id, &aud, &sent, now).await;
            assert!(
                matches!(&refused, Err(e @ MintError::Claims { .. }) if e.to_string().contains(reason)),
                "{sent:?}: {refused:?}"
            );
        }
        // An entry without claims takes no selectors.
        let refused = authority
            .mint_jwt_svid(&agent, &plain, &aud, &inputs(&["unix:uid:1000"]), now)
            .await;
        assert!(
            matches!(refused, Err(MintError::Claims { .. })),
            "{refused:?}"
        );

        // Long values through templates: the token would pass 8 KiB.
        let mut long = EntrySpec::new(
            td.id_with_path("/long")?,
            agent.clone(),
            vec![Selector::parse("unix:uid:1000")?],
            Duration::from_secs(600),
        );
        long.claims = entries::checked_claims(&format!(
            r#"{{"users": "{}"}}"#,
            "{{ unix:user }}".repeat(12)
        ))?;
        authority.store.seed_entry(&long, 0).await?;
        let user = format!("unix:user:{}", "u".repeat(1000));
        let refused = authority
            .mint_jwt_svid(&agent, &long.content_id(), &aud, &[user], now)
            .await;
        assert!(
            matches!(&refused, Err(e @ MintError::TokenTooLarge { .. }) if e.to_string().contains("over the 8192-byte limit")),
            "{refused:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn only_the_parent_agent_may_mint() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (authority, agent, entry_id) = authority(dir.path()).await?;
        let aud = vec!["sts.amazonaws.com".to_owned()];
        let now = SystemTime::now();
        let minted = authority
            .mint_jwt_svid(&agent, &entry_id, &aud, &[], now)
            .await?;
        assert_eq!(minted.spiffe_id.as_str(), "spiffe://example.org/web");
        assert_eq!(
            minted.expires_at - minted.issued_at,
            3600,
            "TTL capped at max"
        );
        let other = authority.trust_domain().id_with_path("/agent/b")?;
        assert!(matches!(
            authority
                .mint_jwt_svid(&other, &entry_id, &aud, &[], now)
                .await,
            Err(MintError::NotAuthorized(_))
        ));
        assert!(matches!(
            authority
                .mint_jwt_svid(&agent, "nope", &aud, &[], now)
                .await,
            Err(MintError::NotAuthorized(_))
        ));
        assert!(matches!(
            authority
                .mint_jwt_svid(&agent, &entry_id, &[], &[], now)
                .await,
            Err(MintError::EmptyAudience)
        ));
        assert!(matches!(
            authority
                .mint_jwt_svid(&agent, &entry_id, &[String::new()], &[], now)
                .await,
            Err(MintError::BadAudience(_))
        ));
        // Control characters are never signed into `aud` (issue 11, finding 7).
        for bad in ["aud\r\nx", "a\0b"] {
            let refused = authority
                .mint_jwt_svid(&agent, &entry_id, &[bad.to_owned()], &[], now)
                .await;
            assert!(
                matches!(&refused, Err(MintError::BadAudience(e)) if e.to_string().contains("control character")),
                "{bad:?}: {refused:?}"
            );
        }
        Ok(())
    }
}
