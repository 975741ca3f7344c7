//! The server's side of entry sync at scale: 1,000 attested agents on the
//! mTLS Node API, each with its own connection and SVID, 100 entries each
//! (99 workloads and one node alias shared by all, under which one shared
//! entry hangs), so 100,001 entries in the datastore.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use lanyard_agent::upstream::{self as node_client, ServerEndpoint};
use lanyard_host::transport::unix_channel;
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{Entry, GenerateJoinTokenRequest, UpdateEntryRequest};
use lanyard_proto::node::node_client::NodeClient;
use lanyard_proto::node::{GetBundleRequest, SyncEntriesRequest, SyncEntriesResponse};
use lanyard_server::RunningServer;
use lanyard_tests::{TRUST_DOMAIN, World};
use sqlx::Row;
use tonic::transport::Channel;

const SHARED_ID: &str = "bench-shared";

#[derive(Debug, Clone)]
pub(crate) struct SyncFigures {
    pub agents: usize,
    pub entries_per_agent: usize,
    pub entries_total: usize,
    pub setup: Duration,
    /// Per-agent latency of a full sync, all agents at once; sorted.
    pub full: Vec<Duration>,
    pub full_wall: Duration,
    /// Per-agent latency of a sync with nothing new; sorted.
    pub idle: Vec<Duration>,
    /// Per-agent latency of the sync that brings the one changed entry; sorted.
    pub incremental: Vec<Duration>,
    pub incremental_wall: Duration,
    /// Entries (upserts + deletions) in each incremental answer: min and max.
    pub incremental_entries: (usize, usize),
}

fn node(i: usize) -> String {
    format!("spiffe://{TRUST_DOMAIN}/bench/node/{i}")
}

/// Attested agents with their connections, and the store they sync from.
pub(crate) struct Fleet {
    pub agents: usize,
    pub entries_per_agent: usize,
    pub entries_total: usize,
    /// Tokens, attestations, entries and connections.
    pub setup: Duration,
    /// Agent `i`'s mTLS connection to the server it attested through.
    pub clients: Vec<NodeClient<Channel>>,
    /// The Admin API of the first server (where the one change is made).
    admin: AdminClient<Channel>,
}

impl Fleet {
    /// The entry `bench-{i}-1`, a workload of agent `i` it may mint for.
    pub(crate) fn workload_entry(i: usize) -> String {
        format!("bench-{i}-1")
    }
}

/// One server's sync figures (row 8): the world's server on its SQLite datastore.
pub(crate) async fn run(
    world: &World,
    agents: usize,
    entries_per_agent: usize,
) -> anyhow::Result<SyncFigures> {
    let url = format!(
        "sqlite://{}",
        world.dir.path().join("server/datastore.sqlite3").display()
    );
    let fleet = setup(&[&world.server], &url, agents, entries_per_agent).await?;
    measure(&fleet).await
}

/// `agents` agents spread round-robin over `servers` (which share the
/// datastore at `datastore_url`): agent `i` gets its join token from, attests
/// through and then talks to server `i % servers.len()`, as an agent does
/// with its healthy server. `entries_per_agent` entries each are written
/// straight into the datastore.
pub(crate) async fn setup(
    servers: &[&RunningServer],
    datastore_url: &str,
    agents: usize,
    entries_per_agent: usize,
) -> anyhow::Result<Fleet> {
    anyhow::ensure!(!servers.is_empty(), "no server");
    anyhow::ensure!(entries_per_agent >= 2, "an agent needs a workload entry");
    let setup_started = Instant::now();
    let mut endpoints = Vec::with_capacity(servers.len());
    let mut admins = Vec::with_capacity(servers.len());
    for server in servers {
        let node_addr = server
            .node_addr
            .context("the server has no mTLS Node API listener")?;
        endpoints.push(ServerEndpoint::new(
            &node_addr.to_string(),
            &server.ca_bundle,
        )?);
        admins.push(AdminClient::new(unix_channel(&server.admin_socket)));
    }
    let of = |i: usize| i % servers.len();

    // 1,000 join tokens through the Admin API, and 1,000 attestations.
    let tokens: Vec<String> = futures::stream::iter(0..agents)
        .map(|i| {
            let mut admin = admins[of(i)].clone();
            async move {
                let response = admin
                    .generate_join_token(GenerateJoinTokenRequest {
                        spiffe_id: node(i),
                        ttl_seconds: 600,
                    })
                    .await?;
                anyhow::Ok(response.into_inner().token)
            }
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let credentials: Vec<_> = futures::stream::iter(tokens.into_iter().enumerate())
        .map(|(i, token)| {
            let endpoint = endpoints[of(i)].clone();
            async move { node_client::attest(&endpoint, &token).await }
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut clients = Vec::with_capacity(agents);
    for (i, creds) in credentials.iter().enumerate() {
        clients.push(NodeClient::new(node_client::channel(
            &endpoints[of(i)],
            Some(creds),
        )?));
    }

    let entries_total = insert_entries(datastore_url, agents, entries_per_agent).await?;
    // Every agent connects (mTLS handshake) before anything is timed.
    futures::future::try_join_all(clients.iter().map(|c| {
        let mut c = c.clone();
        async move { c.get_bundle(GetBundleRequest {}).await }
    }))
    .await?;
    Ok(Fleet {
        agents,
        entries_per_agent,
        entries_total,
        setup: setup_started.elapsed(),
        clients,
        admin: admins.swap_remove(0),
    })
}

/// Full sync of every agent at once, a sync with nothing new, then one
/// changed entry (changed through the first server) reaching every agent.
pub(crate) async fn measure(fleet: &Fleet) -> anyhow::Result<SyncFigures> {
    let (clients, agents, entries_per_agent) =
        (&fleet.clients, fleet.agents, fleet.entries_per_agent);
    // Full sync, all agents at once.
    let started = Instant::now();
    let answers = sync_all(clients, &vec![0; agents]).await?;
    let full_wall = started.elapsed();
    for (i, (_, answer)) in answers.iter().enumerate() {
        // Its own entries plus the shared one under the alias.
        if !answer.full || answer.entries.len() != entries_per_agent + 1 {
            bail!(
                "agent {i} got {} entries (full: {}), expected {}",
                answer.entries.len(),
                answer.full,
                entries_per_agent + 1
            );
        }
    }
    let revisions: Vec<u64> = answers.iter().map(|(_, a)| a.revision).collect();
    let full = sorted(answers.iter().map(|(d, _)| *d));

    // Nothing changed: what a sync costs by itself.
    let answers = sync_all(clients, &revisions).await?;
    if answers.iter().any(|(_, a)| !a.entries.is_empty() || a.full) {
        bail!("a sync with nothing changed returned entries");
    }
    let idle = sorted(answers.iter().map(|(d, _)| *d));

    // One entry changes; every agent's next sync must bring it, and only it.
    let mut admin = fleet.admin.clone();
    admin
        .update_entry(UpdateEntryRequest {
            id: SHARED_ID.to_owned(),
            entry: Some(Entry {
                spiffe_id: format!("spiffe://{TRUST_DOMAIN}/bench/fleet/shared"),
                parent_id: format!("spiffe://{TRUST_DOMAIN}/bench/fleet"),
                selectors: vec!["unix:uid:4242".to_owned()],
                jwt_svid_ttl_seconds: 600,
                ..Entry::default()
            }),
        })
        .await?;
    let started = Instant::now();
    let answers = sync_all(clients, &revisions).await?;
    let incremental_wall = started.elapsed();
    let mut sizes = (usize::MAX, 0);
    for (i, (_, answer)) in answers.iter().enumerate() {
        let size = answer.entries.len() + answer.deleted_entry_ids.len();
        sizes = (sizes.0.min(size), sizes.1.max(size));
        if answer.full || !answer.entries.iter().any(|e| e.id == SHARED_ID) {
            bail!("agent {i} did not get the changed entry incrementally");
        }
    }
    let incremental = sorted(answers.iter().map(|(d, _)| *d));
    Ok(SyncFigures {
        agents,
        entries_per_agent,
        entries_total: fleet.entries_total,
        setup: fleet.setup,
        full,
        full_wall,
        idle,
        incremental,
        incremental_wall,
        incremental_entries: sizes,
    })
}

fn sorted(durations: impl Iterator<Item = Duration>) -> Vec<Duration> {
    let mut v: Vec<Duration> = durations.collect();
    v.sort_unstable();
    v
}

/// Every agent syncs from its revision at the same moment.
async fn sync_all(
    clients: &[NodeClient<Channel>],
    since: &[u64],
) -> anyhow::Result<Vec<(Duration, SyncEntriesResponse)>> {
    futures::future::try_join_all(clients.iter().zip(since).map(|(client, since)| {
        let mut client = client.clone();
        let since_revision = *since;
        async move {
            let started = Instant::now();
            let answer = client
                .sync_entries(SyncEntriesRequest { since_revision })
                .await?
                .into_inner();
            anyhow::Ok((started.elapsed(), answer))
        }
    }))
    .await
}

/// Writes the entries straight into the servers' datastore (SQLite or
/// PostgreSQL) in one transaction, many rows a statement (through the Admin
/// API each would be its own commit: minutes of setup that measure nothing
/// asked for here). Servers read entries from the datastore on every sync
/// and mint, so they serve them at once.
async fn insert_entries(url: &str, agents: usize, per_agent: usize) -> anyhow::Result<usize> {
    /// Rows a statement: 7 binds each, under SQLite's (32,766) and PostgreSQL's (65,535) limits.
    const BATCH: usize = 1000;
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    sqlx::Executor::execute(conn, "PRAGMA busy_timeout = 10000").await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .with_context(|| format!("opening {url}"))?;
    let mut tx = pool.begin().await?;
    let mut revision: i64 = sqlx::query("SELECT value FROM entry_revision WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?
        .try_get("value")?;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?;
    let fleet = format!("spiffe://{TRUST_DOMAIN}/bench/fleet");
    let mut rows: Vec<(String, String, String, String)> =
        Vec::with_capacity(agents * per_agent + 1);
    for i in 0..agents {
        let parent = node(i);
        // The node alias: every agent serves /bench/fleet, so what hangs under it reaches them all.
        rows.push((
            format!("bench-alias-{i}"),
            fleet.clone(),
            parent.clone(),
            r#"["unix:uid:4242"]"#.to_owned(),
        ));
        for j in 1..per_agent {
            rows.push((
                format!("bench-{i}-{j}"),
                format!("{parent}/workload/{j}"),
                parent.clone(),
                format!(r#"["unix:uid:{}"]"#, 10_000 + j),
            ));
        }
    }
    rows.push((
        SHARED_ID.to_owned(),
        format!("{fleet}/shared"),
        fleet.clone(),
        r#"["unix:uid:4242"]"#.to_owned(),
    ));
    for batch in rows.chunks(BATCH) {
        let values: Vec<String> = (0..batch.len())
            .map(|k| {
                let b = k * 7;
                format!(
                    "(${}, ${}, ${}, ${}, 300, 0, ${}, ${}, ${}, 0)",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO registration_entries (id, spiffe_id, parent_id, selectors, jwt_svid_ttl_seconds, admin, created_at, updated_at, revision, deleted) VALUES {}",
            values.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, spiffe_id, parent_id, selectors) in batch {
            revision += 1;
            query = query
                .bind(id.as_str())
                .bind(spiffe_id.as_str())
                .bind(parent_id.as_str())
                .bind(selectors.as_str())
                .bind(now)
                .bind(now)
                .bind(revision);
        }
        query.execute(&mut *tx).await?;
    }
    sqlx::query("UPDATE entry_revision SET value = $1 WHERE id = 1")
        .bind(revision)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if !sqlite {
        // Rows loaded in one go have no planner statistics until autovacuum's
        // next round (up to a minute on); a table that grew through the Admin
        // API has them. Analyse now, as after any bulk load.
        sqlx::query("ANALYZE registration_entries")
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    Ok(rows.len())
}
