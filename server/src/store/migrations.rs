//! Versioned schema migrations, applied in order at start, each in its own
//! transaction. The SQL is portable between SQLite and PostgreSQL.

use sqlx::{AnyPool, Row};

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
];

pub async fn apply(pool: &AnyPool) -> Result<(), StoreError> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .execute(pool)
        .await?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
        .fetch_one(pool)
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
        let mut tx = pool.begin().await?;
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        // Fails on the primary key if another server applied this version first.
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(crate::authority::unix_seconds(std::time::SystemTime::now()))
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
