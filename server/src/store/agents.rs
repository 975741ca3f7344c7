//! Attested agents: who they are, their current SVID serial (and the one it
//! was renewed from, until the new one is used), and whether they have been
//! evicted.

use lanyard_proto::SpiffeId;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Datastore, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub spiffe_id: SpiffeId,
    pub serial: String,
    /// The serial `serial` was renewed from, until an SVID with `serial` is
    /// first used: it may renew again in case the renewal's response was lost.
    pub prev_serial: Option<String>,
    pub attested_at: i64,
    pub last_seen: i64,
    pub evicted: bool,
}

fn decode(row: &AnyRow) -> Result<AgentRecord, StoreError> {
    let raw: String = row.try_get("spiffe_id")?;
    let spiffe_id = SpiffeId::parse(&raw).map_err(|e| StoreError::Corrupt {
        what: "agent",
        id: raw.clone(),
        source: e.into(),
    })?;
    Ok(AgentRecord {
        spiffe_id,
        serial: row.try_get("serial")?,
        prev_serial: row.try_get("prev_serial")?,
        attested_at: row.try_get("attested_at")?,
        last_seen: row.try_get("last_seen")?,
        evicted: row.try_get::<i64, _>("evicted")? != 0,
    })
}

impl Datastore {
    /// Records an attested agent and its SVID serial. Attesting again under
    /// an existing ID (a join token made for that ID) replaces the serial and
    /// forgets the previous one; an evicted agent stays evicted.
    pub async fn attest_agent(
        &self,
        spiffe_id: &SpiffeId,
        serial: &str,
        now: i64,
    ) -> Result<AgentRecord, StoreError> {
        let updated = sqlx::query("UPDATE agents SET serial = $1, prev_serial = NULL, attested_at = $2, last_seen = $2 WHERE spiffe_id = $3 AND evicted = 0")
            .bind(serial)
            .bind(now)
            .bind(spiffe_id.as_str())
            .execute(self.pool())
            .await?;
        if updated.rows_affected() == 0 {
            let inserted = sqlx::query("INSERT INTO agents (spiffe_id, serial, attested_at, last_seen, evicted) VALUES ($1, $2, $3, $3, 0)")
                .bind(spiffe_id.as_str())
                .bind(serial)
                .bind(now)
                .execute(self.pool())
                .await
                .map_err(|e| match e {
                    // The row exists: evicted, or written a moment ago by
                    // another attestation for the same ID (said below).
                    sqlx::Error::Database(db) if db.is_unique_violation() => {
                        StoreError::Conflict(String::new())
                    }
                    other => StoreError::Database(other),
                });
            if let Err(StoreError::Conflict(_)) = inserted {
                let existing = self.get_agent(spiffe_id).await?;
                return Err(StoreError::Conflict(if existing.evicted {
                    format!("agent {spiffe_id} was evicted and cannot attest again")
                } else {
                    format!(
                        "agent {spiffe_id} was attested by another join token at the same moment"
                    )
                }));
            }
            inserted?;
        }
        self.get_agent(spiffe_id).await
    }

    pub async fn get_agent(&self, spiffe_id: &SpiffeId) -> Result<AgentRecord, StoreError> {
        let row = sqlx::query("SELECT spiffe_id, serial, prev_serial, attested_at, last_seen, evicted FROM agents WHERE spiffe_id = $1")
            .bind(spiffe_id.as_str())
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::not_found("agent", spiffe_id))?;
        decode(&row)
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query("SELECT spiffe_id, serial, prev_serial, attested_at, last_seen, evicted FROM agents ORDER BY spiffe_id")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(decode).collect()
    }

    /// Records the serial of an SVID renewed by a caller that presented
    /// `presented` (the current serial or the previous one), which becomes the
    /// previous serial. Compare-and-swap against `observed`, the record the
    /// caller was checked against: of renewals from the same state exactly one
    /// wins; the others, and any renewal of an evicted agent, get `Conflict`.
    pub async fn renew_agent(
        &self,
        observed: &AgentRecord,
        presented: &str,
        new_serial: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE agents SET serial = $1, prev_serial = $2, last_seen = $3 \
             WHERE spiffe_id = $4 AND evicted = 0 AND serial = $5 \
             AND (serial = $2 OR prev_serial = $2)",
        )
        .bind(new_serial)
        .bind(presented)
        .bind(now)
        .bind(observed.spiffe_id.as_str())
        .bind(&observed.serial)
        .execute(self.pool())
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "agent {} was renewed or evicted meanwhile; this SVID can no longer renew",
                observed.spiffe_id
            )));
        }
        Ok(())
    }

    /// Forgets the previous serial once an SVID with the current `serial` is
    /// used, so the SVID it replaced is refused from then on. False when
    /// `serial` is no longer current (renewed or evicted meanwhile).
    pub async fn forget_previous_serial(
        &self,
        spiffe_id: &SpiffeId,
        serial: &str,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE agents SET prev_serial = NULL WHERE spiffe_id = $1 AND serial = $2 AND evicted = 0",
        )
        .bind(spiffe_id.as_str())
        .bind(serial)
        .execute(self.pool())
        .await?;
        Ok(updated.rows_affected() > 0)
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

    fn agent_id() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/lanyard/agent/join_token/abc").unwrap()
    }

    #[tokio::test]
    async fn agents_attest_renew_and_get_evicted() {
        let id = agent_id();
        for (_dir, store) in datastores().await {
            store.attest_agent(&id, "01", 10).await.unwrap();
            let again = store.attest_agent(&id, "02", 11).await.unwrap();
            assert_eq!(again.serial, "02", "re-attestation replaces the serial");
            store.renew_agent(&again, "02", "03", 12).await.unwrap();
            let agent = store.get_agent(&id).await.unwrap();
            assert_eq!(
                (
                    agent.serial.as_str(),
                    agent.prev_serial.as_deref(),
                    agent.last_seen,
                    agent.evicted
                ),
                ("03", Some("02"), 12, false)
            );
            let reattested = store.attest_agent(&id, "04", 13).await.unwrap();
            assert_eq!(
                reattested.prev_serial, None,
                "re-attestation forgets the previous serial"
            );
            store
                .renew_agent(&reattested, "04", "05", 14)
                .await
                .unwrap();
            let renewed = store.get_agent(&id).await.unwrap();
            store.evict_agent(&id).await.unwrap();
            assert!(store.get_agent(&id).await.unwrap().evicted);
            for presented in ["05", "04"] {
                assert!(
                    matches!(
                        store.renew_agent(&renewed, presented, "06", 15).await,
                        Err(StoreError::Conflict(_))
                    ),
                    "an evicted agent renews with neither serial"
                );
            }
            assert!(!store.forget_previous_serial(&id, "05").await.unwrap());
            let refused = store.attest_agent(&id, "07", 16).await;
            assert!(
                matches!(refused, Err(StoreError::Conflict(_))),
                "evicted stays evicted"
            );
            assert_eq!(store.list_agents().await.unwrap().len(), 1);
        }
    }

    /// Two renewals presenting the same serial (say a stolen copy racing the
    /// agent): exactly one wins, from the current and from the previous serial.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_renewals_from_one_serial_have_one_winner() {
        let id = agent_id();
        for (_dir, store) in datastores().await {
            let mut observed = store.attest_agent(&id, "01", 10).await.unwrap();
            // Round 1 presents the current serial; round 2 the previous one.
            for (round, presented) in [(1, "01"), (2, "01")] {
                let (a, b) = (format!("{round}a"), format!("{round}b"));
                let (ra, rb) = tokio::join!(
                    store.renew_agent(&observed, presented, &a, 11),
                    store.renew_agent(&observed, presented, &b, 11),
                );
                let winner = match (&ra, &rb) {
                    (Ok(()), Err(StoreError::Conflict(_))) => a,
                    (Err(StoreError::Conflict(_)), Ok(())) => b,
                    other => panic!("round {round}: want one winner, got {other:?}"),
                };
                observed = store.get_agent(&id).await.unwrap();
                assert_eq!(observed.serial, winner);
                assert_eq!(observed.prev_serial.as_deref(), Some("01"));
            }
        }
    }

    #[tokio::test]
    async fn the_previous_serial_renews_until_the_current_one_is_used() {
        let id = agent_id();
        for (_dir, store) in datastores().await {
            let first = store.attest_agent(&id, "01", 10).await.unwrap();
            store.renew_agent(&first, "01", "02", 11).await.unwrap();
            // "02" never arrived: "01" renews again, and "02" is dead.
            let lost = store.get_agent(&id).await.unwrap();
            store.renew_agent(&lost, "01", "03", 12).await.unwrap();
            let current = store.get_agent(&id).await.unwrap();
            assert_eq!(
                (current.serial.as_str(), current.prev_serial.as_deref()),
                ("03", Some("01"))
            );
            assert!(
                matches!(
                    store.renew_agent(&current, "02", "04", 13).await,
                    Err(StoreError::Conflict(_))
                ),
                "the SVID whose response was lost is dead"
            );
            assert!(
                matches!(
                    store.renew_agent(&first, "01", "04", 13).await,
                    Err(StoreError::Conflict(_))
                ),
                "a stale observation loses"
            );
            assert!(!store.forget_previous_serial(&id, "02").await.unwrap());
            assert!(store.forget_previous_serial(&id, "03").await.unwrap());
            let used = store.get_agent(&id).await.unwrap();
            assert_eq!(used.prev_serial, None);
            assert!(
                matches!(
                    store.renew_agent(&used, "01", "04", 14).await,
                    Err(StoreError::Conflict(_))
                ),
                "once the new SVID is used, the old one cannot renew"
            );
        }
    }
}
