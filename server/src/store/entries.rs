//! Registration entries, with a monotonically increasing revision so that
//! agents can sync only what changed. Deletions leave a tombstone carrying the
//! revision of the delete, so incremental sync sees them too.

use std::collections::HashSet;
use std::time::Duration;

use aws_lc_rs::digest;
use lanyard_proto::{Selector, SpiffeId};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::entry::{EntrySpec, RegistrationEntry};
use super::{Datastore, Engine, StoreError};
use lanyard_host::encoding::hex;

const COLUMNS: &str = "id, spiffe_id, parent_id, selectors, jwt_svid_ttl_seconds, admin, created_at, updated_at, revision, deleted, x509_svid_ttl_seconds, hint, claims";

/// A change an agent must apply, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryChange {
    Upsert(RegistrationEntry),
    Deleted {
        id: String,
        spiffe_id: SpiffeId,
        revision: u64,
    },
}

/// Narrows `list_entries`; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    pub spiffe_id: Option<SpiffeId>,
    pub parent_id: Option<SpiffeId>,
    pub selector: Option<Selector>,
}

struct Row_ {
    entry: RegistrationEntry,
    deleted: bool,
}

fn decode(row: &AnyRow) -> Result<Row_, StoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Corrupt {
        what: "entry",
        id: id.clone(),
        source,
    };
    let spiffe_id =
        SpiffeId::parse(&row.try_get::<String, _>("spiffe_id")?).map_err(|e| corrupt(e.into()))?;
    let parent_id =
        SpiffeId::parse(&row.try_get::<String, _>("parent_id")?).map_err(|e| corrupt(e.into()))?;
    let raw_selectors: Vec<String> = serde_json::from_str(&row.try_get::<String, _>("selectors")?)
        .map_err(|e| corrupt(e.into()))?;
    let selectors = raw_selectors
        .iter()
        .map(|s| Selector::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(e.into()))?;
    let ttl: i64 = row.try_get("jwt_svid_ttl_seconds")?;
    let x509_ttl: i64 = row.try_get("x509_svid_ttl_seconds")?;
    let revision: i64 = row.try_get("revision")?;
    Ok(Row_ {
        entry: RegistrationEntry {
            spiffe_id,
            parent_id,
            selectors,
            jwt_svid_ttl: Duration::from_secs(u64::try_from(ttl).unwrap_or(0)),
            x509_svid_ttl: Duration::from_secs(u64::try_from(x509_ttl).unwrap_or(0)),
            hint: row.try_get("hint")?,
            claims: row.try_get("claims")?,
            admin: row.try_get::<i64, _>("admin")? != 0,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            revision: u64::try_from(revision).unwrap_or(0),
            id,
        },
        deleted: row.try_get::<i64, _>("deleted")? != 0,
    })
}

/// The key of the unique index on live entries (migration 4): a SHA-256 of
/// exactly what makes two entries identical, their SPIFFE ID, parent and
/// stored selectors. A hash, because PostgreSQL cannot index a row of long IDs
/// (2704 bytes at most) and SQLite has no hash function to index it with.
fn identity_key(spiffe_id: &str, parent_id: &str, selectors_json: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    // NUL separates: no SPIFFE ID holds one and JSON escapes it.
    for part in [spiffe_id, parent_id, selectors_json] {
        ctx.update(part.as_bytes());
        ctx.update(b"\0");
    }
    hex(ctx.finish().as_ref())
}

fn spec_identity_key(spec: &EntrySpec) -> String {
    identity_key(
        spec.spiffe_id.as_str(),
        spec.parent_id.as_str(),
        &selectors_json(spec),
    )
}

/// The id of a live entry other than `except` that is identical to `spec`, if any.
async fn identical_entry(
    tx: &mut Transaction<'static, Any>,
    spec: &EntrySpec,
    except: &str,
) -> Result<Option<String>, StoreError> {
    // By the columns, not the key: a server from before migration 4 (an HA
    // peer mid-upgrade) writes entries without one.
    let row = sqlx::query(
        "SELECT id FROM registration_entries WHERE spiffe_id = $1 AND parent_id = $2 AND selectors = $3 AND deleted = 0 AND id <> $4",
    )
    .bind(spec.spiffe_id.as_str())
    .bind(spec.parent_id.as_str())
    .bind(selectors_json(spec))
    .bind(except)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|row| row.try_get("id")).transpose()?)
}

fn duplicate_of(existing: &str) -> StoreError {
    StoreError::Conflict(format!(
        "an entry with this SPIFFE ID, parent and selectors already exists: {existing}"
    ))
}

/// Migration 4, in its transaction: every live entry gets its identity key.
/// Identical live entries (an update could make them before) keep the oldest;
/// the others become tombstones of a new revision, so agents drop them.
pub(super) async fn backfill_identity_keys(
    tx: &mut Transaction<'_, Any>,
) -> Result<(), StoreError> {
    let rows = sqlx::query(
        "SELECT id, spiffe_id, parent_id, selectors FROM registration_entries WHERE deleted = 0 ORDER BY created_at, id",
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut seen = HashSet::new();
    let mut tombstone_revision = None;
    for row in &rows {
        let id: String = row.try_get("id")?;
        let key = identity_key(
            &row.try_get::<String, _>("spiffe_id")?,
            &row.try_get::<String, _>("parent_id")?,
            &row.try_get::<String, _>("selectors")?,
        );
        if seen.insert(key.clone()) {
            sqlx::query("UPDATE registration_entries SET identity_key = $1 WHERE id = $2")
                .bind(&key)
                .bind(&id)
                .execute(&mut **tx)
                .await?;
            continue;
        }
        let revision = match tombstone_revision {
            Some(revision) => revision,
            None => *tombstone_revision.insert(next_revision(tx).await?),
        };
        sqlx::query(
            "UPDATE registration_entries SET deleted = 1, updated_at = $1, revision = $2 WHERE id = $3",
        )
        .bind(lanyard_host::clock::now())
        .bind(revision)
        .bind(&id)
        .execute(&mut **tx)
        .await?;
        tracing::warn!(
            id,
            "deleted an entry identical to an older one (migration 4)"
        );
    }
    Ok(())
}

fn selectors_json(spec: &EntrySpec) -> String {
    let raw: Vec<String> = spec.selectors.iter().map(ToString::to_string).collect();
    serde_json::Value::from(raw).to_string()
}

fn ttl_seconds(spec: &EntrySpec) -> i64 {
    seconds(spec.jwt_svid_ttl)
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// `reach(id, depth)`: the roots `$1`…`$roots` at depth 0, and the SPIFFE ID
/// of every live entry whose parent is in `reach` one level further down, up
/// to `max_depth - 1`. Entries whose parent is in `reach` are those at most
/// `max_depth` deep. The seed is one plain SELECT over a union of the roots,
/// which SQLite and PostgreSQL both accept as the anchor of a recursive CTE.
fn reach_cte(roots: usize, max_depth: usize) -> String {
    let seeds = (1..=roots.max(1))
        .map(|n| format!("SELECT CAST(${n} AS TEXT) AS id"))
        .collect::<Vec<_>>()
        .join(" UNION ");
    format!(
        "WITH RECURSIVE reach(id, depth) AS ( \
           SELECT seeds.id, CAST(0 AS BIGINT) FROM ({seeds}) seeds \
           UNION \
           SELECT e.spiffe_id, r.depth + 1 FROM registration_entries e JOIN reach r ON e.parent_id = r.id \
           WHERE e.deleted = 0 AND r.depth + 1 < {max_depth} \
         )"
    )
}

/// Takes the next entry revision inside `tx`; concurrent writers serialise on this row.
pub(super) async fn next_revision(tx: &mut Transaction<'_, Any>) -> Result<i64, StoreError> {
    let row =
        sqlx::query("UPDATE entry_revision SET value = value + 1 WHERE id = 1 RETURNING value")
            .fetch_one(&mut **tx)
            .await?;
    Ok(row.try_get("value")?)
}

impl Datastore {
    /// Stores a new entry under `id`. An identical live entry (same SPIFFE ID,
    /// parent and selectors) is a conflict.
    pub async fn create_entry(
        &self,
        id: &str,
        spec: &EntrySpec,
        now: i64,
    ) -> Result<RegistrationEntry, StoreError> {
        let mut tx = self.pool().begin().await?;
        // The revision row first: it takes the write lock before the duplicate
        // check reads, so two concurrent creates cannot both pass the check
        // (PostgreSQL), nor fail on a stale read snapshot (SQLite).
        let revision = next_revision(&mut tx).await?;
        let selectors = selectors_json(spec);
        if let Some(existing) = identical_entry(&mut tx, spec, id).await? {
            return Err(duplicate_of(&existing));
        }
        // A tombstone with the same id (a re-created config entry) is replaced.
        sqlx::query("DELETE FROM registration_entries WHERE id = $1 AND deleted = 1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO registration_entries ({COLUMNS}, identity_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11, $12, $13)"
        )))
        .bind(id)
        .bind(spec.spiffe_id.as_str())
        .bind(spec.parent_id.as_str())
        .bind(&selectors)
        .bind(ttl_seconds(spec))
        .bind(i64::from(spec.admin))
        .bind(now)
        .bind(now)
        .bind(revision)
        .bind(seconds(spec.x509_svid_ttl))
        .bind(&spec.hint)
        .bind(&spec.claims)
        .bind(spec_identity_key(spec))
        .execute(&mut *tx)
        .await
        .map_err(|e| match e {
            // The check above found no identical entry, so it is the id.
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(format!("entry id {id:?} is already taken"))
            }
            other => StoreError::Database(other),
        })?;
        tx.commit().await?;
        self.get_entry(id).await
    }

    /// Makes sure an entry from the config file exists (by its content id).
    /// Returns true when it had to be created.
    pub async fn seed_entry(&self, spec: &EntrySpec, now: i64) -> Result<bool, StoreError> {
        let id = spec.content_id();
        match self.get_entry(&id).await {
            Ok(_) => Ok(false),
            Err(StoreError::NotFound { .. }) => {
                self.create_entry(&id, spec, now).await.map(|_| true)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn get_entry(&self, id: &str) -> Result<RegistrationEntry, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM registration_entries WHERE id = $1 AND deleted = 0"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::not_found("entry", id))?;
        Ok(decode(&row)?.entry)
    }

    pub async fn list_entries(
        &self,
        filter: &EntryFilter,
    ) -> Result<Vec<RegistrationEntry>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM registration_entries WHERE deleted = 0 \
             AND ($1 = '' OR spiffe_id = $1) AND ($2 = '' OR parent_id = $2) ORDER BY spiffe_id, id"
        )))
        .bind(filter.spiffe_id.as_ref().map_or("", |s| s.as_str()))
        .bind(filter.parent_id.as_ref().map_or("", |s| s.as_str()))
        .fetch_all(self.pool())
        .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let entry = decode(row)?.entry;
            if filter
                .selector
                .as_ref()
                .is_none_or(|s| entry.selectors.contains(s))
            {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// Entries whose parent is `parent` (through the parent index).
    pub async fn entries_by_parent(
        &self,
        parent: &SpiffeId,
    ) -> Result<Vec<RegistrationEntry>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM registration_entries WHERE parent_id = $1 AND deleted = 0 ORDER BY spiffe_id, id"
        )))
        .bind(parent.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|row| Ok(decode(row)?.entry)).collect()
    }

    /// True when some live entry has `parent` as its parent.
    pub async fn has_children(&self, parent: &SpiffeId) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT id FROM registration_entries WHERE parent_id = $1 AND deleted = 0 LIMIT 1",
        )
        .bind(parent.as_str())
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Every live entry under `root`: parented to it, or to the SPIFFE ID of
    /// an entry under it, at most `max_depth` parents deep. One query (a
    /// recursive walk down the parent index), however many entries.
    pub async fn entries_under(
        &self,
        root: &SpiffeId,
        max_depth: usize,
    ) -> Result<Vec<RegistrationEntry>, StoreError> {
        self.entries_under_roots(std::slice::from_ref(root), max_depth)
            .await
    }

    /// Every live entry under any of `roots` (see [`entries_under`](Self::entries_under)).
    pub async fn entries_under_roots(
        &self,
        roots: &[SpiffeId],
        max_depth: usize,
    ) -> Result<Vec<RegistrationEntry>, StoreError> {
        if roots.is_empty() {
            return Ok(Vec::new());
        }
        let reach = reach_cte(roots.len(), max_depth);
        let sql = match self.engine() {
            Engine::Sqlite => format!(
                "{reach} SELECT {COLUMNS} FROM registration_entries \
                 WHERE deleted = 0 AND parent_id IN (SELECT id FROM reach)"
            ),
            // PostgreSQL cannot estimate how few IDs the walk reaches, and
            // plans the IN above as a sequential scan of the whole table
            // (34 ms a sync at 100,000 entries). The lateral subquery, kept
            // apart by OFFSET 0, makes it one probe of the parent index per
            // reached ID (1-3 ms).
            Engine::Postgres => format!(
                "{reach} SELECT found.* FROM (SELECT DISTINCT id FROM reach) reached \
                 CROSS JOIN LATERAL (SELECT {COLUMNS} FROM registration_entries \
                 WHERE deleted = 0 AND parent_id = reached.id OFFSET 0) found"
            ),
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for root in roots {
            query = query.bind(root.as_str());
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter().map(|row| Ok(decode(row)?.entry)).collect()
    }

    /// The SPIFFE IDs that entries under `root` may hang from (see
    /// [`entries_under`](Self::entries_under)): `root` and the IDs of the
    /// entries under it, except at the deepest level.
    pub async fn parents_under(
        &self,
        root: &SpiffeId,
        max_depth: usize,
    ) -> Result<HashSet<String>, StoreError> {
        self.parents_under_roots(std::slice::from_ref(root), max_depth)
            .await
    }

    /// The SPIFFE IDs entries under any of `roots` may hang from.
    pub async fn parents_under_roots(
        &self,
        roots: &[SpiffeId],
        max_depth: usize,
    ) -> Result<HashSet<String>, StoreError> {
        if roots.is_empty() {
            return Ok(HashSet::new());
        }
        let sql = format!(
            "{} SELECT DISTINCT id FROM reach",
            reach_cte(roots.len(), max_depth)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for root in roots {
            query = query.bind(root.as_str());
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<String, _>("id")?))
            .collect()
    }

    pub async fn update_entry(
        &self,
        id: &str,
        spec: &EntrySpec,
        now: i64,
    ) -> Result<RegistrationEntry, StoreError> {
        let mut tx = self.pool().begin().await?;
        // The revision row first, as in create_entry: it serialises the check.
        let revision = next_revision(&mut tx).await?;
        let previous_id: String =
            sqlx::query("SELECT spiffe_id FROM registration_entries WHERE id = $1 AND deleted = 0")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::not_found("entry", id))?
                .try_get("spiffe_id")?;
        // As create_entry refuses it: two identical entries are one too many.
        if let Some(existing) = identical_entry(&mut tx, spec, id).await? {
            return Err(duplicate_of(&existing));
        }
        let updated = sqlx::query(
            "UPDATE registration_entries SET spiffe_id = $1, parent_id = $2, selectors = $3, jwt_svid_ttl_seconds = $4, \
             admin = $5, updated_at = $6, revision = $7, x509_svid_ttl_seconds = $9, hint = $10, identity_key = $11, claims = $12 \
             WHERE id = $8 AND deleted = 0",
        )
        .bind(spec.spiffe_id.as_str())
        .bind(spec.parent_id.as_str())
        .bind(selectors_json(spec))
        .bind(ttl_seconds(spec))
        .bind(i64::from(spec.admin))
        .bind(now)
        .bind(revision)
        .bind(id)
        .bind(seconds(spec.x509_svid_ttl))
        .bind(&spec.hint)
        .bind(spec_identity_key(spec))
        .bind(&spec.claims)
        .execute(&mut *tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(format!("an identical live entry exists (update of {id:?})"))
            }
            other => StoreError::Database(other),
        })?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::not_found("entry", id));
        }
        if previous_id != spec.spiffe_id.as_str() {
            // Entries under the old SPIFFE ID now hang from nothing of this
            // entry's: marking them changed lets an incremental sync take them
            // away from the agent that held them through it.
            sqlx::query(
                "UPDATE registration_entries SET revision = $1 WHERE parent_id = $2 AND deleted = 0",
            )
            .bind(revision)
            .bind(&previous_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.get_entry(id).await
    }

    pub async fn delete_entry(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let revision = next_revision(&mut tx).await?;
        let deleted = sqlx::query(
            "UPDATE registration_entries SET deleted = 1, updated_at = $1, revision = $2 WHERE id = $3 AND deleted = 0",
        )
        .bind(now)
        .bind(revision)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::not_found("entry", id));
        }
        tx.commit().await?;
        Ok(())
    }

    /// The current entry revision.
    pub async fn entry_revision(&self) -> Result<u64, StoreError> {
        let value: i64 = sqlx::query("SELECT value FROM entry_revision WHERE id = 1")
            .fetch_one(self.pool())
            .await?
            .try_get("value")?;
        Ok(u64::try_from(value).unwrap_or(0))
    }

    /// Every change with a revision above `since`, oldest first, and the revision they bring the caller to.
    pub async fn entry_changes_since(
        &self,
        since: u64,
    ) -> Result<(Vec<EntryChange>, u64), StoreError> {
        let mut tx = self.pool().begin().await?;
        let current: i64 = sqlx::query("SELECT value FROM entry_revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get("value")?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM registration_entries WHERE revision > $1 AND revision <= $2 ORDER BY revision"
        )))
        .bind(i64::try_from(since).unwrap_or(i64::MAX))
        .bind(current)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            let decoded = decode(row)?;
            changes.push(if decoded.deleted {
                EntryChange::Deleted {
                    revision: decoded.entry.revision,
                    spiffe_id: decoded.entry.spiffe_id,
                    id: decoded.entry.id,
                }
            } else {
                EntryChange::Upsert(decoded.entry)
            });
        }
        Ok((changes, u64::try_from(current).unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::datastores;
    use super::*;

    fn spec(path: &str, uid: u32) -> EntrySpec {
        EntrySpec::new(
            SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap(),
            SpiffeId::parse("spiffe://example.org/agent/a").unwrap(),
            vec![Selector::parse(&format!("unix:uid:{uid}")).unwrap()],
            Duration::from_secs(300),
        )
    }

    #[tokio::test]
    async fn concurrent_identical_creates_make_one_entry() {
        for (_dir, store) in datastores().await {
            let attempts: Vec<_> = (0..8)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        store
                            .create_entry(&format!("e{i}"), &spec("/web", 1000), 10)
                            .await
                    })
                })
                .collect();
            let mut created = 0;
            for attempt in attempts {
                match attempt.await.unwrap() {
                    Ok(_) => created += 1,
                    Err(StoreError::Conflict(_)) => {}
                    Err(other) => panic!("neither created nor a conflict: {other}"),
                }
            }
            assert_eq!(created, 1);
            assert_eq!(
                store
                    .list_entries(&EntryFilter::default())
                    .await
                    .unwrap()
                    .len(),
                1
            );
        }
    }

    #[tokio::test]
    async fn crud_round_trips_and_bumps_the_revision() {
        for (_dir, store) in datastores().await {
            let created = store
                .create_entry("e1", &spec("/web", 1000), 10)
                .await
                .unwrap();
            assert_eq!(created.spiffe_id.as_str(), "spiffe://example.org/web");
            assert_eq!(created.revision, 1);
            assert!(matches!(
                store.create_entry("e2", &spec("/web", 1000), 11).await,
                Err(StoreError::Conflict(_))
            ));
            assert!(matches!(
                store.create_entry("e1", &spec("/db", 1), 11).await,
                Err(StoreError::Conflict(_))
            ));
            let updated = store
                .update_entry("e1", &spec("/web", 1001), 12)
                .await
                .unwrap();
            assert_eq!(updated.selectors[0].to_string(), "unix:uid:1001");
            assert_eq!((updated.created_at, updated.updated_at), (10, 12));
            assert!(updated.revision > created.revision);
            let filter = EntryFilter {
                selector: Some(Selector::parse("unix:uid:1001").unwrap()),
                ..EntryFilter::default()
            };
            assert_eq!(store.list_entries(&filter).await.unwrap().len(), 1);
            store.delete_entry("e1", 13).await.unwrap();
            assert!(matches!(
                store.get_entry("e1").await,
                Err(StoreError::NotFound { .. })
            ));
            assert!(matches!(
                store.delete_entry("e1", 14).await,
                Err(StoreError::NotFound { .. })
            ));
            assert!(matches!(
                store.update_entry("nope", &spec("/x", 1), 14).await,
                Err(StoreError::NotFound { .. })
            ));
        }
    }

    /// Issue 11: an update may not make an entry identical to another live
    /// one (create_entry already refused that), and the unique index backs it.
    #[tokio::test]
    async fn updates_cannot_make_two_identical_entries() {
        for (_dir, store) in datastores().await {
            store
                .create_entry("a", &spec("/web", 1000), 1)
                .await
                .unwrap();
            store
                .create_entry("b", &spec("/web", 1001), 2)
                .await
                .unwrap();
            let revision = store.entry_revision().await.unwrap();
            let refused = store.update_entry("b", &spec("/web", 1000), 3).await;
            assert!(
                matches!(&refused, Err(StoreError::Conflict(m)) if m.contains("already exists: a")),
                "{refused:?}"
            );
            assert_eq!(
                store.get_entry("b").await.unwrap().selectors[0].to_string(),
                "unix:uid:1001",
                "nothing changed"
            );
            assert_eq!(store.entry_revision().await.unwrap(), revision);
            // Updating an entry to what it already is stays fine.
            store
                .update_entry("a", &spec("/web", 1000), 4)
                .await
                .unwrap();
            // Once the other is deleted, the update may go through.
            store.delete_entry("a", 5).await.unwrap();
            store
                .update_entry("b", &spec("/web", 1000), 6)
                .await
                .unwrap();

            // Below the checks: the index refuses a second live row with b's key.
            let key: String =
                sqlx::query("SELECT identity_key FROM registration_entries WHERE id = 'b'")
                    .fetch_one(store.pool())
                    .await
                    .unwrap()
                    .try_get("identity_key")
                    .unwrap();
            let insert = |id: &'static str, deleted: i64| {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO registration_entries ({COLUMNS}, identity_key) \
                     SELECT '{id}', spiffe_id, parent_id, selectors, jwt_svid_ttl_seconds, admin, created_at, updated_at, revision, {deleted}, \
                     x509_svid_ttl_seconds, hint, claims, identity_key FROM registration_entries WHERE id = 'b'"
                )))
                .execute(store.pool())
            };
            assert!(!key.is_empty());
            match insert("c", 0).await {
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {}
                other => panic!("a second identical live entry was stored: {other:?}"),
            }
            insert("d", 1)
                .await
                .expect("tombstones are not in the index");
        }
    }

    #[tokio::test]
    async fn changes_since_a_revision_include_deletes_and_nothing_more() {
        for (_dir, store) in datastores().await {
            store.create_entry("a", &spec("/a", 1), 1).await.unwrap();
            let (all, rev_after_a) = store.entry_changes_since(0).await.unwrap();
            assert_eq!(all.len(), 1);
            store.create_entry("b", &spec("/b", 2), 2).await.unwrap();
            store.delete_entry("a", 3).await.unwrap();
            let (changes, current) = store.entry_changes_since(rev_after_a).await.unwrap();
            assert_eq!(changes.len(), 2, "{changes:?}");
            assert!(matches!(&changes[0], EntryChange::Upsert(e) if e.id == "b"));
            assert!(matches!(&changes[1], EntryChange::Deleted { id, .. } if id == "a"));
            let (none, same) = store.entry_changes_since(current).await.unwrap();
            assert!(none.is_empty());
            assert_eq!(same, current);
        }
    }

    #[tokio::test]
    async fn seeding_is_idempotent_across_restarts() {
        for (_dir, store) in datastores().await {
            assert!(store.seed_entry(&spec("/cfg", 5), 1).await.unwrap());
            assert!(!store.seed_entry(&spec("/cfg", 5), 2).await.unwrap());
            assert_eq!(store.entry_revision().await.unwrap(), 1);
        }
    }

    fn child(path: &str, parent: &str) -> EntrySpec {
        EntrySpec::new(
            SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap(),
            SpiffeId::parse(&format!("spiffe://example.org{parent}")).unwrap(),
            vec![Selector::parse("unix:uid:1").unwrap()],
            Duration::from_secs(300),
        )
    }

    /// The walk below a set of roots, on each engine (PostgreSQL runs its
    /// own query shape): nested levels down to the depth limit, each entry
    /// once however many paths reach it (two entries share `/mid`), cycles
    /// end, and deleted entries and other roots' entries stay out.
    #[tokio::test]
    async fn the_walk_under_roots_finds_each_reachable_entry_once() {
        let roots = [
            SpiffeId::parse("spiffe://example.org/agent/a").unwrap(),
            SpiffeId::parse("spiffe://example.org/alias/x").unwrap(),
        ];
        for (_dir, store) in datastores().await {
            let entries = [
                ("top", child("/mid", "/agent/a")),
                (
                    "top-twin",
                    EntrySpec {
                        selectors: vec![Selector::parse("unix:uid:2").unwrap()],
                        ..child("/mid", "/agent/a")
                    },
                ),
                ("via-alias", child("/mid", "/alias/x")),
                ("low", child("/low", "/mid")),
                ("lower", child("/lower", "/low")),
                ("loop", child("/mid", "/lower")),
                ("gone", child("/gone", "/mid")),
                ("other", child("/other", "/agent/b")),
                ("other-low", child("/other-low", "/other")),
            ];
            for (n, (id, spec)) in entries.iter().enumerate() {
                store.create_entry(id, spec, n as i64).await.unwrap();
            }
            store.delete_entry("gone", 20).await.unwrap();

            let ids = |found: Vec<RegistrationEntry>| {
                let mut ids: Vec<String> = found.into_iter().map(|e| e.id).collect();
                ids.sort();
                ids
            };
            assert_eq!(
                ids(store.entries_under_roots(&roots, 8).await.unwrap()),
                ["loop", "low", "lower", "top", "top-twin", "via-alias"]
            );
            // Depth 2: entries on the roots and one level under them.
            assert_eq!(
                ids(store.entries_under_roots(&roots, 2).await.unwrap()),
                ["low", "top", "top-twin", "via-alias"]
            );
            assert_eq!(
                ids(store.entries_under_roots(&roots[1..], 1).await.unwrap()),
                ["via-alias"]
            );
            assert!(store.entries_under_roots(&[], 8).await.unwrap().is_empty());
        }
    }
}
