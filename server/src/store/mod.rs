//! The datastore: registration entries, join tokens, agents, public key
//! records and the CA certificates of every server. One code path (sqlx's `Any` driver) serves both backends: SQLite
//! embedded by default (WAL, fsync on every commit) and PostgreSQL for several
//! servers sharing a trust domain. Private keys are never stored here.

mod agents;
mod ca_certificates;
mod entries;
mod entry;
mod join_tokens;
mod keys;
mod migrations;

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use agents::AgentRecord;
pub(crate) use ca_certificates::CaCertificateRow;
pub use entries::{EntryChange, EntryFilter};
pub use entry::{DEFAULT_X509_SVID_TTL, EntrySpec, RegistrationEntry};
pub use join_tokens::{JoinToken, RedeemError};
pub use keys::KeyRecordRow;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("datastore: {0}")]
    Database(#[from] sqlx::Error),
    #[error("datastore URL {0:?} is neither sqlite:// nor postgres://")]
    UnsupportedUrl(String),
    #[error("datastore holds a malformed {what} ({id}): {source}")]
    Corrupt {
        what: &'static str,
        id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "datastore schema is at version {found} but this server binary knows versions up to {known}: a newer server release has migrated the datastore; upgrade this server to that release (or newer) before starting it"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
}

impl StoreError {
    pub(crate) fn not_found(what: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            what,
            id: id.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Datastore {
    pool: AnyPool,
}

impl Datastore {
    /// Opens the SQLite database at `path`, creating it when missing.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        Self::open(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Opens `sqlite://…` or `postgres://…` and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        if !is_sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        let options: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            // SQLite allows one writer at a time; more connections only add lock contention.
            .max_connections(if is_sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if is_sqlite {
                        // WAL for concurrent readers; FULL so an acknowledged commit survives a crash.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        migrations::apply(&pool, !is_sqlite).await?;
        Ok(Self { pool })
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Every store test runs against SQLite and, when `LANYARD_TEST_POSTGRES_URL`
    //! is set (CI sets it), PostgreSQL too.

    use super::*;

    /// Fresh, empty datastores: SQLite always, PostgreSQL when configured.
    pub(crate) async fn datastores() -> Vec<(tempfile::TempDir, Datastore)> {
        let mut stores = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Datastore::open_sqlite(&dir.path().join("test.db"))
            .await
            .unwrap();
        stores.push((dir, sqlite));
        match std::env::var("LANYARD_TEST_POSTGRES_URL") {
            Ok(base) => {
                let dir = tempfile::tempdir().unwrap();
                let url = fresh_postgres_url(&base).await;
                stores.push((dir, Datastore::open(&url).await.unwrap()));
            }
            Err(_) if std::env::var_os("CI").is_some() => {
                panic!(
                    "CI is set but LANYARD_TEST_POSTGRES_URL is not: PostgreSQL tests must run in CI"
                )
            }
            Err(_) => {
                eprintln!("PostgreSQL store tests skipped: LANYARD_TEST_POSTGRES_URL is not set")
            }
        }
        stores
    }

    /// The URL of a new, empty database on the server at `base` (a
    /// postgres:// URL), so tests never share state.
    pub(crate) async fn fresh_postgres_url(base: &str) -> String {
        sqlx::any::install_default_drivers();
        let admin = AnyPoolOptions::new()
            .max_connections(1)
            .connect(base)
            .await
            .unwrap();
        let name = format!(
            "lanyard_test_{}",
            lanyard_host::random::identifier::<8>().unwrap()
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let (prefix, _) = base.rsplit_once('/').unwrap();
        format!("{prefix}/{name}")
    }
}
