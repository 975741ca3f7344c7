//! Attested agents: who they are, how they attested and what that proved
//! (their node selectors), their current SVID serial (and the one it was
//! renewed from, until the new one is used), when the evidence they proved
//! expires, and whether they have been evicted or banned.

use lanyard_proto::attestation::JOIN_TOKEN;
use lanyard_proto::{Selector, SpiffeId};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::entries::next_revision;
use super::{Datastore, StoreError};

const COLUMNS: &str = "spiffe_id, serial, prev_serial, attested_at, last_seen, evicted, banned, attestation_type, selectors, selectors_revision, evidence_expires_at";

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
    /// Refused at attestation until unbanned (and evicted meanwhile).
    pub banned: bool,
    /// `join_token`, `x509pop` or `sshpop`.
    pub attestation_type: String,
    /// The node selectors its last attestation proved, sorted.
    pub selectors: Vec<Selector>,
    /// The entry revision at which `selectors` last changed: an agent syncing
    /// from an older revision must get a full update.
    pub selectors_revision: u64,
    /// When the evidence its last attestation proved expires (the host
    /// certificate's end), Unix seconds; 0 when there is none (join tokens).
    /// Its SVIDs never outlive it, and from then on it must attest again.
    pub evidence_expires_at: i64,
}

impl AgentRecord {
    /// Whether the evidence this agent proved has expired at `now` (Unix
    /// seconds): never for an agent without one.
    pub fn evidence_expired(&self, now: i64) -> bool {
        self.evidence_expires_at > 0 && now >= self.evidence_expires_at
    }
}

fn decode(row: &AnyRow) -> Result<AgentRecord, StoreError> {
    let raw: String = row.try_get("spiffe_id")?;
    let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Corrupt {
        what: "agent",
        id: raw.clone(),
        source,
    };
    let spiffe_id = SpiffeId::parse(&raw).map_err(|e| corrupt(e.into()))?;
    let raw_selectors: Vec<String> = serde_json::from_str(&row.try_get::<String, _>("selectors")?)
        .map_err(|e| corrupt(e.into()))?;
    let selectors = raw_selectors
        .iter()
        .map(|s| Selector::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(e.into()))?;
    let selectors_revision: i64 = row.try_get("selectors_revision")?;
    Ok(AgentRecord {
        spiffe_id,
        serial: row.try_get("serial")?,
        prev_serial: row.try_get("prev_serial")?,
        attested_at: row.try_get("attested_at")?,
        last_seen: row.try_get("last_seen")?,
        evicted: row.try_get::<i64, _>("evicted")? != 0,
        banned: row.try_get::<i64, _>("banned")? != 0,
        attestation_type: row.try_get("attestation_type")?,
        selectors,
        selectors_revision: u64::try_from(selectors_revision).unwrap_or(0),
        evidence_expires_at: row.try_get("evidence_expires_at")?,
    })
}

/// Selectors as the `selectors` column holds them: a JSON array, sorted.
fn selectors_json(selectors: &[Selector]) -> String {
    let mut raw: Vec<String> = selectors.iter().map(ToString::to_string).collect();
    raw.sort();
    raw.dedup();
    serde_json::Value::from(raw).to_string()
}

async fn get_in(
    tx: &mut Transaction<'static, Any>,
    spiffe_id: &SpiffeId,
) -> Result<Option<AgentRecord>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM agents WHERE spiffe_id = $1"
    )))
    .bind(spiffe_id.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(decode).transpose()
}

impl Datastore {
    /// Records an agent attested with a join token and its SVID serial.
    /// Attesting again under an existing ID (a join token made for that ID)
    /// replaces the serial and forgets the previous one; an evicted agent
    /// stays evicted.
    pub async fn attest_agent(
        &self,
        spiffe_id: &SpiffeId,
        serial: &str,
        now: i64,
    ) -> Result<AgentRecord, StoreError> {
        self.attest_node(spiffe_id, serial, JOIN_TOKEN, &[], 0, now)
            .await
    }

    /// Records an attested agent, how it attested (`method`), the node
    /// selectors that proved, when that evidence expires (`evidence_expires_at`,
    /// Unix seconds, 0 for none) and its SVID serial, in one transaction. A banned
    /// agent is refused (`Conflict`). An evicted one may come back by a
    /// proof of possession (x509pop, sshpop: eviction forces a new proof),
    /// never with a join token. When the selectors change, they take a new
    /// entry revision, so the agent's next sync is full.
    pub async fn attest_node(
        &self,
        spiffe_id: &SpiffeId,
        serial: &str,
        method: &str,
        selectors: &[Selector],
        evidence_expires_at: i64,
        now: i64,
    ) -> Result<AgentRecord, StoreError> {
        let selectors = selectors_json(selectors);
        let mut tx = self.pool().begin().await?;
        // A write first: it takes the row (PostgreSQL) or the database
        // (SQLite) for this transaction, so the checks below cannot go stale.
        sqlx::query("UPDATE agents SET banned = banned WHERE spiffe_id = $1")
            .bind(spiffe_id.as_str())
            .execute(&mut *tx)
            .await?;
        match get_in(&mut tx, spiffe_id).await? {
            Some(existing) => {
                if existing.banned {
                    return Err(StoreError::Conflict(format!("agent {spiffe_id} is banned")));
                }
                if existing.evicted && method == JOIN_TOKEN {
                    return Err(StoreError::Conflict(format!(
                        "agent {spiffe_id} was evicted and cannot attest again"
                    )));
                }
                let unchanged = selectors_json(&existing.selectors) == selectors;
                let revision = if unchanged {
                    i64::try_from(existing.selectors_revision).unwrap_or(i64::MAX)
                } else {
                    next_revision(&mut tx).await?
                };
                sqlx::query(
                    "UPDATE agents SET serial = $1, prev_serial = NULL, attested_at = $2, last_seen = $2, \
                     evicted = 0, attestation_type = $3, selectors = $4, selectors_revision = $5, \
                     evidence_expires_at = $6 WHERE spiffe_id = $7",
                )
                .bind(serial)
                .bind(now)
                .bind(method)
                .bind(&selectors)
                .bind(revision)
                .bind(evidence_expires_at)
                .bind(spiffe_id.as_str())
                .execute(&mut *tx)
                .await?;
            }
            None => {
                let revision = if selectors == "[]" {
                    0
                } else {
                    next_revision(&mut tx).await?
                };
                sqlx::query(
                    "INSERT INTO agents (spiffe_id, serial, attested_at, last_seen, evicted, banned, attestation_type, selectors, selectors_revision, evidence_expires_at) \
                     VALUES ($1, $2, $3, $3, 0, 0, $4, $5, $6, $7)",
                )
                .bind(spiffe_id.as_str())
                .bind(serial)
                .bind(now)
                .bind(method)
                .bind(&selectors)
                .bind(revision)
                .bind(evidence_expires_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| match e {
                    // Written a moment ago by another attestation for the same ID.
                    sqlx::Error::Database(db) if db.is_unique_violation() => {
                        StoreError::Conflict(format!(
                            "agent {spiffe_id} was attested by another attestation at the same moment"
                        ))
                    }
                    other => StoreError::Database(other),
                })?;
            }
        }
        tx.commit().await?;
        self.get_agent(spiffe_id).await
    }

    /// Bans an agent: it is evicted and may not attest again until
    /// unbanned. An ID never seen gets a placeholder record, so that it
    /// cannot attest later either.
    pub async fn ban_agent(&self, spiffe_id: &SpiffeId, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agents (spiffe_id, serial, attested_at, last_seen, evicted, banned) VALUES ($1, '', $2, $2, 1, 1) \
             ON CONFLICT (spiffe_id) DO UPDATE SET banned = 1, evicted = 1",
        )
        .bind(spiffe_id.as_str())
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Lifts a ban; the agent stays evicted until it attests again.
    pub async fn unban_agent(&self, spiffe_id: &SpiffeId) -> Result<(), StoreError> {
        let updated = sqlx::query("UPDATE agents SET banned = 0 WHERE spiffe_id = $1")
            .bind(spiffe_id.as_str())
            .execute(self.pool())
            .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::not_found("agent", spiffe_id));
        }
        Ok(())
    }

    pub async fn get_agent(&self, spiffe_id: &SpiffeId) -> Result<AgentRecord, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM agents WHERE spiffe_id = $1"
        )))
        .bind(spiffe_id.as_str())
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::not_found("agent", spiffe_id))?;
        decode(&row)
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM agents ORDER BY spiffe_id"
        )))
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

    fn node_id() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/lanyard/agent/x509pop/ab").unwrap()
    }

    fn selectors(raw: &[&str]) -> Vec<Selector> {
        raw.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    /// Issue 13: a proof of possession re-attests after an eviction (a join
    /// token does not); a ban refuses both, known ID or not, until unbanned;
    /// new node selectors take a new entry revision.
    #[tokio::test]
    async fn nodes_reattest_after_eviction_but_not_when_banned() {
        let id = node_id();
        for (_dir, store) in datastores().await {
            let web = selectors(&["x509pop:subject:ou:web"]);
            let first = store
                .attest_node(&id, "01", "x509pop", &web, 0, 10)
                .await
                .unwrap();
            assert_eq!(
                (
                    first.attestation_type.as_str(),
                    &first.selectors,
                    first.banned
                ),
                ("x509pop", &web, false)
            );
            assert!(first.selectors_revision > 0);
            let again = store
                .attest_node(&id, "02", "x509pop", &web, 0, 11)
                .await
                .unwrap();
            assert_eq!(
                again.selectors_revision, first.selectors_revision,
                "same selectors, same revision"
            );
            store.evict_agent(&id).await.unwrap();
            let db = selectors(&["x509pop:subject:ou:db"]);
            let back = store
                .attest_node(&id, "03", "x509pop", &db, 0, 12)
                .await
                .unwrap();
            assert!(!back.evicted, "eviction forces a new proof, not a human");
            assert!(back.selectors_revision > first.selectors_revision);
            assert_eq!(back.selectors, db);

            store.ban_agent(&id, 13).await.unwrap();
            let banned = store.get_agent(&id).await.unwrap();
            assert!(banned.banned && banned.evicted);
            let refused = store.attest_node(&id, "04", "x509pop", &db, 0, 14).await;
            assert!(
                matches!(&refused, Err(StoreError::Conflict(m)) if m.contains("banned")),
                "{refused:?}"
            );
            store.unban_agent(&id).await.unwrap();
            assert!(store.get_agent(&id).await.unwrap().evicted, "stays evicted");
            store
                .attest_node(&id, "05", "x509pop", &db, 0, 15)
                .await
                .unwrap();

            // An ID never seen is banned ahead of its first attestation.
            let unknown = SpiffeId::parse("spiffe://example.org/lanyard/agent/sshpop/cd").unwrap();
            store.ban_agent(&unknown, 16).await.unwrap();
            assert!(matches!(
                store
                    .attest_node(&unknown, "01", "sshpop", &[], 0, 17)
                    .await,
                Err(StoreError::Conflict(_))
            ));
            assert!(matches!(
                store.unban_agent(&agent_id()).await,
                Err(StoreError::NotFound { .. })
            ));

            // A join token agent that was evicted stays out.
            let token_agent = agent_id();
            store.attest_agent(&token_agent, "01", 10).await.unwrap();
            store.evict_agent(&token_agent).await.unwrap();
            assert!(matches!(
                store.attest_agent(&token_agent, "02", 11).await,
                Err(StoreError::Conflict(_))
            ));
            let listed = store.list_agents().await.unwrap();
            assert_eq!(listed.len(), 3);
            assert_eq!(listed[0].attestation_type, "join_token");
        }
    }

    /// Review of issue 13: the evidence's expiry is recorded at each
    /// attestation, survives renewals, and a join token records none.
    #[tokio::test]
    async fn the_evidence_expiry_is_recorded_per_attestation() {
        let id = node_id();
        for (_dir, store) in datastores().await {
            let first = store
                .attest_node(&id, "01", "sshpop", &[], 100, 10)
                .await
                .unwrap();
            assert_eq!(first.evidence_expires_at, 100);
            assert!(!first.evidence_expired(99) && first.evidence_expired(100));
            store.renew_agent(&first, "01", "02", 11).await.unwrap();
            assert_eq!(store.get_agent(&id).await.unwrap().evidence_expires_at, 100);
            let again = store
                .attest_node(&id, "03", "sshpop", &[], 200, 12)
                .await
                .unwrap();
            assert_eq!(again.evidence_expires_at, 200);
            let token = store.attest_agent(&agent_id(), "01", 10).await.unwrap();
            assert_eq!(token.evidence_expires_at, 0);
            assert!(!token.evidence_expired(i64::MAX));
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
