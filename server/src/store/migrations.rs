//! Versioned schema migrations, applied in order at start, each in its own
//! transaction. The SQL is portable between SQLite and PostgreSQL.

use sqlx::{AnyConnection, AnyPool, Connection, Row};

use super::StoreError;

/// Migration N (1-based) is `MIGRATIONS[N - 1]`. Never edit a released one: append.
const MIGRATIONS: &[&str] = &[
    // 1: entries with a change revision, join tokens, agents, public key records.
    r#"
    CREATE TABLE registration_entries (
        id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        selectors TEXT NOT NULL,
        jwt_svid_ttl_seconds BIGINT NOT NULL,
        admin BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        revision BIGINT NOT NULL,
        deleted BIGINT NOT NULL
    );
    CREATE INDEX registration_entries_parent ON registration_entries (parent_id);
    CREATE INDEX registration_entries_revision ON registration_entries (revision);
    CREATE TABLE entry_revision (id BIGINT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO entry_revision (id, value) VALUES (1, 0);
    CREATE TABLE join_tokens (
        token_hash TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT
    );
    CREATE TABLE agents (
        spiffe_id TEXT PRIMARY KEY,
        serial TEXT NOT NULL,
        attested_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        evicted BIGINT NOT NULL
    );
    CREATE TABLE signing_keys (
        kid TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        key_type TEXT NOT NULL,
        public_jwk TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        activate_at BIGINT NOT NULL,
        retire_at BIGINT NOT NULL,
        remove_at BIGINT NOT NULL
    );
    "#,
    // 2: the serial an agent renewed from, accepted for one more renewal until
    // the new SVID is first used (a lost renewal response must not lock the
    // agent out). NULL when there is none.
    r#"
    ALTER TABLE agents ADD COLUMN prev_serial TEXT
    "#,
    // 3: X509-SVIDs for workloads: their lifetime per entry, and the hint
    // handed out with every SVID of the entry.
    r#"
    ALTER TABLE registration_entries ADD COLUMN x509_svid_ttl_seconds BIGINT NOT NULL DEFAULT 3600;
    ALTER TABLE registration_entries ADD COLUMN hint TEXT NOT NULL DEFAULT ''
    "#,
    // 4: no two identical live entries (same SPIFFE ID, parent and selectors),
    // whatever the code path: a unique index over a hash of the three (see
    // `entries::identity_key`), which `backfill_identity_keys` then fills in,
    // in this transaction. NULL (rows of a server from before) is not indexed.
    r#"
    ALTER TABLE registration_entries ADD COLUMN identity_key TEXT;
    CREATE UNIQUE INDEX registration_entries_identity ON registration_entries (identity_key) WHERE deleted = 0
    "#,
    // 5: fleet enrolment. How an agent attested (join_token, x509pop,
    // sshpop), the node selectors it proved (a JSON array), the entry
    // revision at which they last changed (its next sync is then full), and
    // whether it is banned (a ban also sets evicted, which servers of the
    // previous release honour), and when the evidence it proved expires
    // (Unix seconds; 0 for none, as with join tokens): its SVIDs never
    // outlive it, and it must attest again to renew past it.
    r#"
    ALTER TABLE agents ADD COLUMN banned BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN attestation_type TEXT NOT NULL DEFAULT 'join_token';
    ALTER TABLE agents ADD COLUMN selectors TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE agents ADD COLUMN selectors_revision BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN evidence_expires_at BIGINT NOT NULL DEFAULT 0
    "#,
    // 6: one trust bundle per trust domain. Every server publishes the CA
    // certificates it holds (PEM, one row each; a server's rows are replaced
    // whenever its set changes), and every server trusts and hands out the
    // union of the unexpired ones. Expired rows are pruned by any server.
    r#"
    CREATE TABLE ca_certificates (
        server_id TEXT NOT NULL,
        serial TEXT NOT NULL,
        cert_pem TEXT NOT NULL,
        not_before BIGINT NOT NULL,
        not_after BIGINT NOT NULL,
        published_at BIGINT NOT NULL,
        PRIMARY KEY (server_id, serial)
    );
    CREATE INDEX ca_certificates_not_after ON ca_certificates (not_after)
    "#,
    // 7: an entry's own JWT claims (a JSON object, '' for none), checked
    // when written; servers of the previous release ignore the column.
    r#"
    ALTER TABLE registration_entries ADD COLUMN claims TEXT NOT NULL DEFAULT ''
    "#,
];

/// The migration after whose SQL `entries::backfill_identity_keys` runs.
const IDENTITY_KEY_MIGRATION: i64 = 4;

/// The PostgreSQL advisory lock (database-scoped) held around a migration
/// run, so that servers starting together on one database apply each
/// migration once: "LANYARD\0" as a big-endian 64-bit integer.
const MIGRATION_LOCK_KEY: i64 = 0x4c41_4e59_4152_4400;

/// Brings the schema to the newest version this server knows.
///
/// On PostgreSQL the whole run (reading the version, applying, recording)
/// happens on one dedicated connection holding [`MIGRATION_LOCK_KEY`]: a
/// second server waits for the first and then finds nothing left to do. On
/// SQLite the database file belongs to one server (it sits in that server's
/// data directory) and SQLite admits one writer at a time, so no lock is
/// taken: several servers on one SQLite file are not supported.
pub(super) async fn apply(pool: &AnyPool, postgres: bool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    if !postgres {
        return apply_on(&mut conn).await;
    }
    let locked: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind(MIGRATION_LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?
        .try_get("locked")?;
    if !locked {
        tracing::info!("another server is migrating the datastore; waiting for it");
        // pg_advisory_lock returns void, which the Any driver cannot decode: ask for a constant.
        sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_lock($1)) AS l")
            .bind(MIGRATION_LOCK_KEY)
            .fetch_one(&mut *conn)
            .await?;
    }
    let applied = apply_on(&mut conn).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1) AS unlocked")
        .bind(MIGRATION_LOCK_KEY)
        .fetch_one(&mut *conn)
        .await;
    if applied.is_err() || unlocked.is_err() {
        // Ending the session is what surely releases a session-level lock.
        let _ = conn.close().await;
    }
    applied?;
    unlocked?;
    Ok(())
}

async fn apply_on(conn: &mut AnyConnection) -> Result<(), StoreError> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .execute(&mut *conn)
        .await?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
        .fetch_one(&mut *conn)
        .await?
        .try_get("v")?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let mut tx = conn.begin().await?;
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        if version == IDENTITY_KEY_MIGRATION {
            super::entries::backfill_identity_keys(&mut tx).await?;
        }
        // The primary key refuses a version applied twice, should the lock
        // ever not hold (SQLite shared by mistake).
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(lanyard_host::clock::now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "applied datastore migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Datastore;

    #[tokio::test]
    async fn reopening_applies_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        Datastore::open_sqlite(&path).await.unwrap().close().await;
        let store = Datastore::open_sqlite(&path).await.unwrap();
        let rows: i64 = sqlx::Row::get(
            &sqlx::query("SELECT COUNT(*) AS n FROM schema_migrations")
                .fetch_one(store.pool())
                .await
                .unwrap(),
            "n",
        );
        assert_eq!(rows, super::MIGRATIONS.len() as i64);
    }

    /// Servers starting at the same instant on one empty PostgreSQL database
    /// all come up, and each migration is applied (and recorded) once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers_starting_together_migrate_once() {
        let Some(base) = super::super::test_support::postgres_base() else {
            return;
        };
        let url = super::super::test_support::fresh_postgres_url(&base).await;
        let (a, b, c) = tokio::join!(
            Datastore::open(&url),
            Datastore::open(&url),
            Datastore::open(&url)
        );
        let stores = [a.unwrap(), b.unwrap(), c.unwrap()];
        let versions: Vec<i64> =
            sqlx::query("SELECT version FROM schema_migrations ORDER BY version")
                .fetch_all(stores[0].pool())
                .await
                .unwrap()
                .iter()
                .map(|row| sqlx::Row::get(row, "version"))
                .collect();
        let expected: Vec<i64> = (1..=super::MIGRATIONS.len() as i64).collect();
        assert_eq!(versions, expected);
        for store in &stores {
            store.ping().await.unwrap();
            store.close().await;
        }
    }

    /// A binary older than the schema refuses to start, saying so.
    #[tokio::test]
    async fn a_newer_schema_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        for url in empty_database_urls(dir.path()).await {
            let old = at_version(&url, super::MIGRATIONS.len()).await;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, 0)")
                .bind(super::MIGRATIONS.len() as i64 + 1)
                .execute(&old)
                .await
                .unwrap();
            old.close().await;
            let error = Datastore::open(&url).await.unwrap_err();
            assert!(
                matches!(error, super::super::StoreError::SchemaTooNew { .. }),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(message.contains("upgrade this server"), "{message}");
            // The refusal released the lock: an up-to-date open still works
            // once the extra version is gone.
            let fix = sqlx::AnyPool::connect(&url).await.unwrap();
            sqlx::query("DELETE FROM schema_migrations WHERE version > $1")
                .bind(super::MIGRATIONS.len() as i64)
                .execute(&fix)
                .await
                .unwrap();
            fix.close().await;
            Datastore::open(&url).await.unwrap().close().await;
        }
    }

    /// An empty database at `url` brought to schema version `version` by hand,
    /// as a server of that release would have left it.
    async fn at_version(url: &str, version: usize) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        let old = sqlx::AnyPool::connect(url).await.unwrap();
        sqlx::query("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&old)
            .await
            .unwrap();
        for (n, sql) in (1_i64..).zip(&super::MIGRATIONS[..version]) {
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(statement).execute(&old).await.unwrap();
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, 0)")
                .bind(n)
                .execute(&old)
                .await
                .unwrap();
        }
        old
    }

    /// SQLite in `dir`, and a fresh PostgreSQL database where one is configured.
    async fn empty_database_urls(dir: &std::path::Path) -> Vec<String> {
        let mut urls = vec![format!(
            "sqlite://{}?mode=rwc",
            dir.join("db.sqlite").display()
        )];
        if let Some(base) = super::super::test_support::postgres_base() {
            urls.push(super::super::test_support::fresh_postgres_url(&base).await);
        }
        urls
    }

    /// Identical live entries left by an older server (its update_entry did
    /// not check): migration 4 keeps the oldest, makes the others tombstones
    /// of a new revision (so agents drop them), and indexes the survivors.
    #[tokio::test]
    async fn migration_4_keeps_one_of_identical_entries() {
        let dir = tempfile::tempdir().unwrap();
        for url in empty_database_urls(dir.path()).await {
            let old = at_version(&url, 3).await;
            let insert = "INSERT INTO registration_entries (id, spiffe_id, parent_id, selectors, jwt_svid_ttl_seconds, admin, created_at, updated_at, revision, deleted) \
                          VALUES ($1, 'spiffe://example.org/web', 'spiffe://example.org/lanyard/agent/local', $2, 300, 0, $3, $3, $3, 0)";
            for (id, selectors, at) in [
                ("young", r#"["unix:uid:1000"]"#, 3_i64),
                ("old", r#"["unix:uid:1000"]"#, 1),
                ("other", r#"["unix:uid:1001"]"#, 2),
            ] {
                sqlx::query(insert)
                    .bind(id)
                    .bind(selectors)
                    .bind(at)
                    .execute(&old)
                    .await
                    .unwrap();
            }
            sqlx::query("UPDATE entry_revision SET value = 3 WHERE id = 1")
                .execute(&old)
                .await
                .unwrap();
            old.close().await;

            let store = Datastore::open(&url).await.unwrap();
            let live: Vec<String> = store
                .list_entries(&super::super::EntryFilter::default())
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect();
            assert_eq!(live, ["old", "other"], "{url}");
            let (changes, revision) = store.entry_changes_since(3).await.unwrap();
            assert_eq!(revision, 4);
            assert!(
                matches!(changes.as_slice(), [super::super::EntryChange::Deleted { id, revision: 4, .. }] if id == "young"),
                "{changes:?}"
            );
            // Every survivor carries its key, so the index now guards it.
            let unkeyed: i64 = sqlx::Row::get(
                &sqlx::query("SELECT COUNT(*) AS n FROM registration_entries WHERE deleted = 0 AND identity_key IS NULL")
                    .fetch_one(store.pool())
                    .await
                    .unwrap(),
                "n",
            );
            assert_eq!(unkeyed, 0);
            store.close().await;
        }
    }

    /// Agents of a schema-4 datastore come through migration 5 as join-token
    /// agents with no node selectors and no evidence expiry, not banned.
    #[tokio::test]
    async fn migration_5_keeps_agents_as_join_token_agents() {
        let dir = tempfile::tempdir().unwrap();
        for url in empty_database_urls(dir.path()).await {
            let old = at_version(&url, 4).await;
            sqlx::query("INSERT INTO agents (spiffe_id, serial, attested_at, last_seen, evicted, prev_serial) VALUES ('spiffe://example.org/node/a', '0a', 1, 2, 1, NULL)")
                .execute(&old)
                .await
                .unwrap();
            old.close().await;
            let store = Datastore::open(&url).await.unwrap();
            let id = lanyard_proto::SpiffeId::parse("spiffe://example.org/node/a").unwrap();
            let agent = store.get_agent(&id).await.unwrap();
            assert_eq!(
                (
                    agent.attestation_type.as_str(),
                    agent.selectors.len(),
                    agent.banned,
                    agent.evicted,
                    agent.selectors_revision,
                    agent.evidence_expires_at
                ),
                ("join_token", 0, false, true, 0, 0)
            );
            store.close().await;
        }
    }

    /// A datastore written by a server before migration 2 keeps its agents.
    #[tokio::test]
    async fn agents_survive_the_prev_serial_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let old = sqlx::AnyPool::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&old)
            .await
            .unwrap();
        for statement in super::MIGRATIONS[0]
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            sqlx::query(statement).execute(&old).await.unwrap();
        }
        for statement in [
            "INSERT INTO schema_migrations (version, applied_at) VALUES (1, 0)",
            "INSERT INTO agents (spiffe_id, serial, attested_at, last_seen, evicted) VALUES ('spiffe://example.org/node/a', '0a', 1, 2, 0)",
        ] {
            sqlx::query(statement).execute(&old).await.unwrap();
        }
        old.close().await;

        let store = Datastore::open_sqlite(&path).await.unwrap();
        let id = lanyard_proto::SpiffeId::parse("spiffe://example.org/node/a").unwrap();
        let agent = store.get_agent(&id).await.unwrap();
        assert_eq!((agent.serial.as_str(), agent.prev_serial), ("0a", None));
    }
}
