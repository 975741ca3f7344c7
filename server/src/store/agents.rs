//! Attested agents: who they are, their current SVID serial, and whether
//! they have been evicted.

use lanyard_proto::SpiffeId;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Datastore, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub spiffe_id: SpiffeId,
    pub serial: String,
    pub attested_at: i64,
    pub last_seen: i64,
    pub evicted: bool,
}

fn decode(row: &AnyRow) -> Result<AgentRecord, StoreError> {
    let raw: String = row.try_get("spiffe_id")?;
    let spiffe_id = SpiffeId::parse(&raw).map_err(|e| StoreError::Corrupt {
        what: "agent",
        id: raw.clone(),
        message: e.to_string(),
    })?;
    Ok(AgentRecord {
        spiffe_id,
        serial: row.try_get("serial")?,
        attested_at: row.try_get("attested_at")?,
        last_seen: row.try_get("last_seen")?,
        evicted: row.try_get::<i64, _>("evicted")? != 0,
    })
}

impl Datastore {
    /// Records an attested agent and its SVID serial. Attesting again under
    /// an existing ID (a join token made for that ID) replaces the serial; an
    /// evicted agent stays evicted.
    pub async fn attest_agent(
        &self,
        spiffe_id: &SpiffeId,
        serial: &str,
        now: i64,
    ) -> Result<AgentRecord, StoreError> {
        let updated = sqlx::query("UPDATE agents SET serial = $1, attested_at = $2, last_seen = $2 WHERE spiffe_id = $3 AND evicted = 0")
            .bind(serial)
            .bind(now)
            .bind(spiffe_id.as_str())
            .execute(self.pool())
            .await?;
        if updated.rows_affected() == 0 {
            sqlx::query("INSERT INTO agents (spiffe_id, serial, attested_at, last_seen, evicted) VALUES ($1, $2, $3, $3, 0)")
                .bind(spiffe_id.as_str())
                .bind(serial)
                .bind(now)
                .execute(self.pool())
                .await
                .map_err(|e| match e {
                    sqlx::Error::Database(db) if db.is_unique_violation() => {
                        StoreError::Conflict(format!("agent {spiffe_id} was evicted and cannot attest again"))
                    }
                    other => StoreError::Database(other),
                })?;
        }
        self.get_agent(spiffe_id).await
    }

    pub async fn get_agent(&self, spiffe_id: &SpiffeId) -> Result<AgentRecord, StoreError> {
        let row = sqlx::query("SELECT spiffe_id, serial, attested_at, last_seen, evicted FROM agents WHERE spiffe_id = $1")
            .bind(spiffe_id.as_str())
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::not_found("agent", spiffe_id))?;
        decode(&row)
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query("SELECT spiffe_id, serial, attested_at, last_seen, evicted FROM agents ORDER BY spiffe_id")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(decode).collect()
    }

    /// Records a renewed SVID's serial, unless the agent has been evicted.
    pub async fn renew_agent(
        &self,
        spiffe_id: &SpiffeId,
        serial: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE agents SET serial = $1, last_seen = $2 WHERE spiffe_id = $3 AND evicted = 0",
        )
        .bind(serial)
        .bind(now)
        .bind(spiffe_id.as_str())
        .execute(self.pool())
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::not_found("active agent", spiffe_id));
        }
        Ok(())
    }

    pub async fn touch_agent(&self, spiffe_id: &SpiffeId, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET last_seen = $1 WHERE spiffe_id = $2")
            .bind(now)
            .bind(spiffe_id.as_str())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Evicts an agent: every later call it makes is refused.
    pub async fn evict_agent(&self, spiffe_id: &SpiffeId) -> Result<(), StoreError> {
        let updated = sqlx::query("UPDATE agents SET evicted = 1 WHERE spiffe_id = $1")
            .bind(spiffe_id.as_str())
            .execute(self.pool())
            .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::not_found("agent", spiffe_id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::datastores;
    use super::*;

    #[tokio::test]
    async fn agents_attest_renew_and_get_evicted() {
        let id = SpiffeId::parse("spiffe://example.org/lanyard/agent/join_token/abc").unwrap();
        for (_dir, store) in datastores().await {
            store.attest_agent(&id, "01", 10).await.unwrap();
            let again = store.attest_agent(&id, "02", 11).await.unwrap();
            assert_eq!(again.serial, "02", "re-attestation replaces the serial");
            store.renew_agent(&id, "03", 12).await.unwrap();
            let agent = store.get_agent(&id).await.unwrap();
            assert_eq!(
                (agent.serial.as_str(), agent.last_seen, agent.evicted),
                ("03", 12, false)
            );
            store.evict_agent(&id).await.unwrap();
            assert!(store.get_agent(&id).await.unwrap().evicted);
            assert!(matches!(
                store.renew_agent(&id, "04", 13).await,
                Err(StoreError::NotFound { .. })
            ));
            let refused = store.attest_agent(&id, "05", 14).await;
            assert!(
                matches!(refused, Err(StoreError::Conflict(_))),
                "evicted stays evicted"
            );
            assert_eq!(store.list_agents().await.unwrap().len(), 1);
        }
    }
}
