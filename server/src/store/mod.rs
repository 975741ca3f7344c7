//! The datastore: registration entries, join tokens, agents, public key
//! records and the CA certificates of every server. One code path (sqlx's `Any` driver) serves both backends: SQLite
//! embedded by default (WAL, fsync on every commit) and PostgreSQL for several
//! servers sharing a trust domain. Private keys are never stored here.
//!
//! Outages: the pool re-establishes connections by itself after the database
//! restarts or fails over, a call that finds no connection within a few
//! seconds fails (the APIs answer Unavailable), every operation the server
//! makes is bounded by `bounded` (the registry, the authority's sync and
//! mint lookups, key rotation and the CA union each wrap theirs), and every write is one
//! transaction that commits or fails. Creates a client could retry are
//! idempotent where it matters: a second identical live entry is refused by
//! a unique index (migration 4), whatever its ID.

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
    /// Holds the URL's scheme only: the rest may carry a password.
    #[error("datastore URL scheme {0:?} is neither sqlite:// nor postgres://")]
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
    /// The database did not answer in time: it may be away without having
    /// closed its connections (a partition, a failover that drops packets).
    #[error("datastore did not answer within {} s", .0.as_secs())]
    TimedOut(Duration),
}

impl StoreError {
    pub(crate) fn not_found(what: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            what,
            id: id.to_string(),
        }
    }
}

/// How long a call waits for a PostgreSQL connection before it fails.
const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one datastore operation (its connection wait included) may take.
/// A database that stops answering without closing its connections holds a
/// query that is already sent until TCP gives up, many minutes later (never,
/// behind a proxy that keeps the socket open); past this the call fails and
/// the API answers Unavailable. Generous beside the slowest query measured
/// (a 1,000-agent full sync, ~100 ms a query).
pub(crate) const OPERATION_DEADLINE: Duration = Duration::from_secs(10);

/// Runs one datastore operation, failing it with [`StoreError::TimedOut`]
/// past [`OPERATION_DEADLINE`]. Dropping the operation drops its connection
/// mid-query; the pool tests a connection before reuse, so a broken one is
/// replaced, and a write cut short either committed or did not (each is one
/// transaction), as with any lost answer.
pub(crate) async fn bounded<T, E: From<StoreError>>(
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(OPERATION_DEADLINE, operation)
        .await
        .unwrap_or_else(|_| Err(StoreError::TimedOut(OPERATION_DEADLINE).into()))
}

#[derive(Debug, Clone)]
pub struct Datastore {
    pool: AnyPool,
    engine: Engine,
}

/// Which database a [`Datastore`] talks to: the SQL is portable, except
/// where one planner needs a query shaped for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Sqlite,
    Postgres,
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
            let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
            return Err(StoreError::UnsupportedUrl(scheme.to_owned()));
        }
        let options: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            // SQLite allows one writer at a time; more connections only add lock contention.
            .max_connections(if is_sqlite { 4 } else { 16 })
            // A PostgreSQL restart or failover: every call waits at most this
            // long for a connection (sqlx retries refused connects until
            // then) and fails, so the API answers Unavailable, never hangs.
            .acquire_timeout(if is_sqlite {
                Duration::from_secs(10)
            } else {
                POSTGRES_ACQUIRE_TIMEOUT
            })
            // Each idle connection is checked before use: one the database
            // closed (a restart, pg_terminate_backend, a failover) is dropped
            // and replaced, so the pool recovers by itself.
            .test_before_acquire(true)
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
        let engine = if is_sqlite {
            Engine::Sqlite
        } else {
            Engine::Postgres
        };
        Ok(Self { pool, engine })
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) fn engine(&self) -> Engine {
        self.engine
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
        if let Some(base) = postgres_base() {
            let dir = tempfile::tempdir().unwrap();
            let url = fresh_postgres_url(&base).await;
            stores.push((dir, Datastore::open(&url).await.unwrap()));
        }
        stores
    }

    /// `LANYARD_TEST_POSTGRES_URL`; without it a PostgreSQL test is skipped
    /// with a note, except in CI, where it fails.
    pub(crate) fn postgres_base() -> Option<String> {
        match std::env::var("LANYARD_TEST_POSTGRES_URL") {
            Ok(base) => Some(base),
            Err(_) if std::env::var_os("CI").is_some() => {
                panic!(
                    "CI is set but LANYARD_TEST_POSTGRES_URL is not: PostgreSQL tests must run in CI"
                )
            }
            Err(_) => {
                eprintln!("PostgreSQL test skipped: LANYARD_TEST_POSTGRES_URL is not set");
                None
            }
        }
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

#[cfg(test)]
mod outage_tests {
    //! The datastore going away and coming back, on PostgreSQL.

    use std::time::Instant;

    use super::*;

    /// An admin connection to the server at `base`, and a fresh database on
    /// it with a `Datastore` open, when PostgreSQL is configured.
    async fn postgres() -> Option<(AnyPool, String, Datastore)> {
        let base = test_support::postgres_base()?;
        let url = test_support::fresh_postgres_url(&base).await;
        let store = Datastore::open(&url).await.unwrap();
        let admin = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&base)
            .await
            .unwrap();
        let (_, name) = url.rsplit_once('/').unwrap();
        Some((admin, name.to_owned(), store))
    }

    /// Ends every session on database `name` but the admin's own.
    async fn terminate_sessions(admin: &AnyPool, name: &str) -> i64 {
        sqlx::query("SELECT COUNT(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(name)
            .fetch_one(admin)
            .await
            .map(|row| sqlx::Row::get(&row, "n"))
            .unwrap()
    }

    fn spec(path: &str) -> EntrySpec {
        EntrySpec::new(
            lanyard_proto::SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap(),
            lanyard_proto::SpiffeId::parse("spiffe://example.org/lanyard/agent/local").unwrap(),
            vec![lanyard_proto::Selector::parse("unix:uid:1000").unwrap()],
            Duration::from_secs(300),
        )
    }

    /// Every connection of the pool killed under it (as a PostgreSQL restart
    /// or failover does): the next calls open new ones by themselves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_recovers_from_killed_connections() {
        let Some((admin, name, store)) = postgres().await else {
            return;
        };
        store.create_entry("a", &spec("/a"), 1).await.unwrap();
        for _ in 0..3 {
            // Several connections in the pool, all idle.
            let (x, y, z) = tokio::join!(store.ping(), store.ping(), store.ping());
            x.unwrap();
            y.unwrap();
            z.unwrap();
            assert!(terminate_sessions(&admin, &name).await >= 1);
            store.ping().await.unwrap();
            assert_eq!(
                store
                    .list_entries(&EntryFilter::default())
                    .await
                    .unwrap()
                    .len(),
                1
            );
        }
        // A create the client retries (its first answer lost) makes no
        // second entry: the identical one is refused (AlreadyExists).
        store.create_entry("b", &spec("/b"), 2).await.unwrap();
        terminate_sessions(&admin, &name).await;
        let retried = store.create_entry("b-retry", &spec("/b"), 3).await;
        assert!(
            matches!(retried, Err(StoreError::Conflict(_))),
            "{retried:?}"
        );
        assert_eq!(
            store
                .list_entries(&EntryFilter::default())
                .await
                .unwrap()
                .len(),
            2
        );
        store.close().await;
        admin.close().await;
    }

    /// While the database refuses connections, calls fail promptly (the APIs
    /// answer Unavailable) instead of hanging, and work again once it is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_fail_promptly_while_the_database_is_away_and_recover() {
        let Some((admin, name, store)) = postgres().await else {
            return;
        };
        store.create_entry("a", &spec("/a"), 1).await.unwrap();
        let set = |allow: bool| {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}"
            )))
        };
        set(false).execute(&admin).await.unwrap();
        terminate_sessions(&admin, &name).await;
        let started = Instant::now();
        let away = store.list_entries(&EntryFilter::default()).await;
        assert!(matches!(away, Err(StoreError::Database(_))), "{away:?}");
        assert!(
            started.elapsed() <= POSTGRES_ACQUIRE_TIMEOUT + Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        let refused = store.create_entry("b", &spec("/b"), 2).await;
        assert!(
            matches!(refused, Err(StoreError::Database(_))),
            "{refused:?}"
        );

        set(true).execute(&admin).await.unwrap();
        assert_eq!(
            store
                .list_entries(&EntryFilter::default())
                .await
                .unwrap()
                .len(),
            1
        );
        store.create_entry("b", &spec("/b"), 2).await.unwrap();
        assert_eq!(
            store
                .list_entries(&EntryFilter::default())
                .await
                .unwrap()
                .len(),
            2
        );
        store.close().await;
        admin.close().await;
    }
}
