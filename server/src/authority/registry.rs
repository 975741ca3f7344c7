//! The registry: the registration entries, join tokens and attested agents the
//! APIs manage, kept in the datastore. The APIs reach them only through here,
//! and see the datastore's failures as [`RegistryError`].

use std::future::Future;
use std::sync::Arc;

use lanyard_host::clock;
use lanyard_proto::{Selector, SpiffeId, TrustDomain};

use crate::store::{self, Datastore, EntrySpec, RegistrationEntry, StoreError};
pub(crate) use crate::store::{AgentRecord, EntryFilter, JoinToken, RedeemError};
use crate::telemetry::{ServerMetrics, StoreOp};

/// Why the registry could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    /// The change contradicts what is stored (a duplicate entry, a renewal
    /// that lost a race).
    #[error("{0}")]
    Conflict(String),
    /// The datastore failed.
    #[error(transparent)]
    Unavailable(StoreError),
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { what, id } => Self::NotFound { what, id },
            StoreError::Conflict(message) => Self::Conflict(message),
            other => Self::Unavailable(other),
        }
    }
}

/// Entries, join tokens and agents, as operators and agents change them.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Datastore,
    /// Every datastore operation made through here is timed, and its
    /// failures counted, by kind.
    metrics: Arc<ServerMetrics>,
}

/// Whether `error` is the datastore failing, rather than its answer.
fn is_failure(error: &StoreError) -> bool {
    !matches!(error, StoreError::NotFound { .. } | StoreError::Conflict(_))
}

impl Registry {
    pub(crate) fn new(store: Datastore, metrics: Arc<ServerMetrics>) -> Self {
        Self { store, metrics }
    }

    /// Runs the datastore call `call`, timed as `operation`.
    async fn timed<T>(
        &self,
        operation: StoreOp,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.metrics
            .datastore(operation, store::bounded(call), is_failure)
            .await
    }

    /// The entry revision, after a round trip to the datastore (health checks).
    pub async fn health(&self) -> Result<u64, RegistryError> {
        self.timed(StoreOp::Ping, self.store.ping()).await?;
        Ok(self
            .timed(StoreOp::EntryRead, self.store.entry_revision())
            .await?)
    }

    pub async fn create_entry(
        &self,
        id: &str,
        spec: &EntrySpec,
    ) -> Result<RegistrationEntry, RegistryError> {
        Ok(self
            .timed(
                StoreOp::EntryWrite,
                self.store.create_entry(id, spec, clock::now()),
            )
            .await?)
    }

    pub async fn get_entry(&self, id: &str) -> Result<RegistrationEntry, RegistryError> {
        Ok(self
            .timed(StoreOp::EntryRead, self.store.get_entry(id))
            .await?)
    }

    pub async fn list_entries(
        &self,
        filter: &EntryFilter,
    ) -> Result<Vec<RegistrationEntry>, RegistryError> {
        Ok(self
            .timed(StoreOp::EntryRead, self.store.list_entries(filter))
            .await?)
    }

    pub async fn update_entry(
        &self,
        id: &str,
        spec: &EntrySpec,
    ) -> Result<RegistrationEntry, RegistryError> {
        Ok(self
            .timed(
                StoreOp::EntryWrite,
                self.store.update_entry(id, spec, clock::now()),
            )
            .await?)
    }

    pub async fn delete_entry(&self, id: &str) -> Result<(), RegistryError> {
        Ok(self
            .timed(
                StoreOp::EntryWrite,
                self.store.delete_entry(id, clock::now()),
            )
            .await?)
    }

    /// Whether entries may hang under `parent`: an attested agent that is not
    /// evicted, or the SPIFFE ID of an entry (a node entry).
    pub async fn is_known_parent(&self, parent: &SpiffeId) -> Result<bool, RegistryError> {
        match self
            .timed(StoreOp::AgentRead, self.store.get_agent(parent))
            .await
        {
            Ok(agent) => return Ok(!agent.evicted),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let filter = EntryFilter {
            spiffe_id: Some(parent.clone()),
            ..EntryFilter::default()
        };
        Ok(!self
            .timed(StoreOp::EntryRead, self.store.list_entries(&filter))
            .await?
            .is_empty())
    }

    /// Whether `spiffe_id` is an agent's: any agent recorded, attested,
    /// evicted or banned.
    pub async fn is_agent_id(&self, spiffe_id: &SpiffeId) -> Result<bool, RegistryError> {
        match self
            .timed(StoreOp::AgentRead, self.store.get_agent(spiffe_id))
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `spiffe_id` is a node alias's: the SPIFFE ID of an entry
    /// under `server_id` (the server's own ID, which node aliases hang under).
    pub async fn is_node_alias_id(
        &self,
        spiffe_id: &SpiffeId,
        server_id: &SpiffeId,
    ) -> Result<bool, RegistryError> {
        let filter = EntryFilter {
            spiffe_id: Some(spiffe_id.clone()),
            parent_id: Some(server_id.clone()),
            ..EntryFilter::default()
        };
        Ok(!self
            .timed(StoreOp::EntryRead, self.store.list_entries(&filter))
            .await?
            .is_empty())
    }

    /// A new join token for `spiffe_id` (or a generated agent ID), valid for
    /// `ttl_seconds`.
    pub async fn create_join_token(
        &self,
        trust_domain: &TrustDomain,
        spiffe_id: Option<SpiffeId>,
        ttl_seconds: i64,
    ) -> Result<JoinToken, RegistryError> {
        Ok(self
            .timed(
                StoreOp::JoinToken,
                self.store
                    .create_join_token(trust_domain, spiffe_id, ttl_seconds, clock::now()),
            )
            .await?)
    }

    /// Spends `token`: the agent ID it grants, or why it grants none.
    pub async fn redeem_join_token(
        &self,
        token: &str,
    ) -> Result<Result<SpiffeId, RedeemError>, RegistryError> {
        Ok(self
            .timed(
                StoreOp::JoinToken,
                self.store.redeem_join_token(token, clock::now()),
            )
            .await?)
    }

    /// Records `spiffe_id` as attested with the SVID `serial`.
    pub async fn attest_agent(
        &self,
        spiffe_id: &SpiffeId,
        serial: &str,
    ) -> Result<AgentRecord, RegistryError> {
        Ok(self
            .timed(
                StoreOp::AgentWrite,
                self.store.attest_agent(spiffe_id, serial, clock::now()),
            )
            .await?)
    }

    /// Records `spiffe_id` as attested by `method` with the node selectors
    /// `selectors`, evidence that expires at `evidence_expires_at` (Unix
    /// seconds) and the SVID `serial`: `Conflict` when it is banned, or
    /// evicted and attesting with a join token.
    pub async fn attest_node(
        &self,
        spiffe_id: &SpiffeId,
        serial: &str,
        method: &str,
        selectors: &[Selector],
        evidence_expires_at: i64,
    ) -> Result<AgentRecord, RegistryError> {
        Ok(self
            .timed(
                StoreOp::AgentWrite,
                self.store.attest_node(
                    spiffe_id,
                    serial,
                    method,
                    selectors,
                    evidence_expires_at,
                    clock::now(),
                ),
            )
            .await?)
    }

    /// Bans `spiffe_id` (known or not) from attesting, and evicts it.
    pub async fn ban_agent(&self, spiffe_id: &SpiffeId) -> Result<(), RegistryError> {
        Ok(self
            .timed(
                StoreOp::AgentWrite,
                self.store.ban_agent(spiffe_id, clock::now()),
            )
            .await?)
    }

    /// Lifts a ban (the agent must attest again).
    pub async fn unban_agent(&self, spiffe_id: &SpiffeId) -> Result<(), RegistryError> {
        Ok(self
            .timed(StoreOp::AgentWrite, self.store.unban_agent(spiffe_id))
            .await?)
    }

    pub async fn get_agent(&self, spiffe_id: &SpiffeId) -> Result<AgentRecord, RegistryError> {
        Ok(self
            .timed(StoreOp::AgentRead, self.store.get_agent(spiffe_id))
            .await?)
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, RegistryError> {
        Ok(self
            .timed(StoreOp::AgentRead, self.store.list_agents())
            .await?)
    }

    pub async fn evict_agent(&self, spiffe_id: &SpiffeId) -> Result<(), RegistryError> {
        Ok(self
            .timed(StoreOp::AgentWrite, self.store.evict_agent(spiffe_id))
            .await?)
    }

    /// Records a renewal from `presented` to `new_serial`, if the agent is
    /// still as `observed` (else `Conflict`).
    pub async fn renew_agent(
        &self,
        observed: &AgentRecord,
        presented: &str,
        new_serial: &str,
    ) -> Result<(), RegistryError> {
        Ok(self
            .timed(
                StoreOp::AgentWrite,
                self.store
                    .renew_agent(observed, presented, new_serial, clock::now()),
            )
            .await?)
    }

    /// Forgets the serial `serial` was renewed from; false when `serial` is
    /// no longer current.
    pub async fn forget_previous_serial(
        &self,
        spiffe_id: &SpiffeId,
        serial: &str,
    ) -> Result<bool, RegistryError> {
        Ok(self
            .timed(
                StoreOp::AgentWrite,
                self.store.forget_previous_serial(spiffe_id, serial),
            )
            .await?)
    }

    /// Notes that `spiffe_id` was seen now.
    pub async fn touch_agent(&self, spiffe_id: &SpiffeId) -> Result<(), RegistryError> {
        Ok(self
            .timed(
                StoreOp::AgentWrite,
                self.store.touch_agent(spiffe_id, clock::now()),
            )
            .await?)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Registry;

    /// Registries over fresh datastores (see `store::test_support`).
    pub(crate) async fn registries() -> Vec<(tempfile::TempDir, Registry)> {
        crate::store::test_support::datastores()
            .await
            .into_iter()
            .map(|(dir, store)| (dir, Registry::new(store, Default::default())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::registries;
    use super::*;

    /// Review of issue 13: what tells an agent's ID from a node alias's.
    #[tokio::test]
    async fn agent_and_node_alias_ids_are_told_apart() {
        use std::time::Duration;

        use crate::store::EntrySpec;
        use lanyard_proto::Selector;

        let id = |raw: &str| SpiffeId::parse(raw).unwrap();
        let server = id("spiffe://example.org/lanyard/server");
        for (_dir, registry) in registries().await {
            let agent = id("spiffe://example.org/node/a");
            assert!(!registry.is_agent_id(&agent).await.unwrap());
            registry.attest_agent(&agent, "01").await.unwrap();
            assert!(registry.is_agent_id(&agent).await.unwrap());
            let banned = id("spiffe://example.org/node/never-seen");
            registry.ban_agent(&banned).await.unwrap();
            assert!(
                registry.is_agent_id(&banned).await.unwrap(),
                "a ban's placeholder counts"
            );

            let alias = id("spiffe://example.org/fleet/web");
            let spec = |parent: &SpiffeId| {
                EntrySpec::new(
                    alias.clone(),
                    parent.clone(),
                    vec![Selector::parse("x509pop:subject:ou:web").unwrap()],
                    Duration::from_secs(60),
                )
            };
            assert!(!registry.is_node_alias_id(&alias, &server).await.unwrap());
            // The same ID under an agent is a workload entry, not an alias.
            registry.create_entry("w", &spec(&agent)).await.unwrap();
            assert!(!registry.is_node_alias_id(&alias, &server).await.unwrap());
            registry.create_entry("n", &spec(&server)).await.unwrap();
            assert!(registry.is_node_alias_id(&alias, &server).await.unwrap());
            registry.delete_entry("n").await.unwrap();
            assert!(!registry.is_node_alias_id(&alias, &server).await.unwrap());
        }
    }
}
