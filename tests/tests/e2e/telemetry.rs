//! The telemetry listener of both daemons over real TCP: `/metrics` scraped
//! and parsed with a third-party Prometheus text-format parser
//! (`prometheus-parse`) after each counted event, and `/readyz` following
//! what it checks: the server's datastore (a PostgreSQL cluster of the
//! test's own, crashed and restarted) and the agent's first sync.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use lanyard_agent::client::WorkloadClient;
use lanyard_agent::config::AgentConfig;
use lanyard_agent::upstream::{self as node_client, ServerEndpoint};
use lanyard_host::transport::unix_channel;
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{CreateEntryRequest, GenerateJoinTokenRequest};
use lanyard_proto::node::MintJwtSvidRequest;
use lanyard_proto::node::node_client::NodeClient;
use lanyard_server::RunningServer;
use lanyard_server::config::ServerConfig;
use lanyard_tests::private_postgres::PrivatePostgres;
use lanyard_tests::{EntrySpec, World};
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::Code;

const TELEMETRY: &str = "[telemetry]\nlisten = \"127.0.0.1:0\"\n";
/// Only a bound for a broken test: every wait polls a condition.
const PATIENCE: Duration = Duration::from_secs(30);

/// `GET path` on `addr`: the status and the body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let response = reqwest::get(format!("http://{addr}{path}")).await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// `/metrics` of `addr`, as the parser reads it, and its text.
pub(crate) async fn scrape(addr: SocketAddr) -> anyhow::Result<(Scrape, String)> {
    let (status, text) = get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {text}");
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))?;
    Ok((scrape, text))
}

/// The value of the sample `name` whose labels include every one of
/// `labels`; None when there is no such sample.
pub(crate) fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// As [`sample`], 0 when absent (a counter not yet touched).
pub(crate) fn count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(scrape, name, labels).unwrap_or(0.0)
}

/// Polls `/readyz` of `addr` until it answers `want`; the last body.
async fn readyz_becomes(addr: SocketAddr, want: u16) -> anyhow::Result<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = get(addr, "/readyz").await?;
        if status == want {
            return Ok(body);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "/readyz still {status} ({body:?}), never {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Workload API call, cached and uncached SVIDs of both kinds, a refusal
/// and the sync loop, each moving the counters it should on the agent and
/// on the server, with no SPIFFE ID or audience in any label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_each_counted_event() -> anyhow::Result<()> {
    let world =
        World::start_with_tables("", &[EntrySpec::mine("/web")], TELEMETRY, TELEMETRY).await?;
    let agent = world.agent.telemetry_addr.context("agent telemetry")?;
    let server = world.server.telemetry_addr.context("server telemetry")?;
    let (agent_before, _) = scrape(agent).await?;
    let (server_before, _) = scrape(server).await?;

    let mut client = WorkloadClient::new(&world.endpoint())?;
    let audience = "metrics-audience-e2e";
    let first = client.fetch_jwt(vec![audience.into()], None).await?;
    let second = client.fetch_jwt(vec![audience.into()], None).await?;
    assert_eq!(
        first[0].token, second[0].token,
        "the second came from the cache"
    );
    let refused = client.fetch_jwt(Vec::new(), None).await;
    assert_eq!(
        refused.err().and_then(|e| e.code()),
        Some(Code::InvalidArgument)
    );
    let x509 = client.fetch_x509().await?;
    assert_eq!(x509.len(), 1);
    let again = client.fetch_x509().await?;
    assert_eq!(
        again[0].chain, x509[0].chain,
        "the second X509-SVID came from the cache"
    );

    let (agent_after, agent_text) = scrape(agent).await?;
    let (server_after, server_text) = scrape(server).await?;
    let moved = |before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]| {
        count(after, name, labels) - count(before, name, labels)
    };

    // The agent: calls by method and code, their latency, where SVIDs came from.
    let requests = "lanyard_agent_workload_requests_total";
    let jwt_ok = [("method", "FetchJWTSVID"), ("code", "ok")];
    assert_eq!(moved(&agent_before, &agent_after, requests, &jwt_ok), 2.0);
    let jwt_invalid = [("method", "FetchJWTSVID"), ("code", "invalid_argument")];
    assert_eq!(
        moved(&agent_before, &agent_after, requests, &jwt_invalid),
        1.0
    );
    let x509_ok = [("method", "FetchX509SVID"), ("code", "ok")];
    assert_eq!(moved(&agent_before, &agent_after, requests, &x509_ok), 2.0);
    let latency = "lanyard_agent_workload_request_duration_seconds_count";
    assert_eq!(
        moved(
            &agent_before,
            &agent_after,
            latency,
            &[("method", "FetchJWTSVID")]
        ),
        3.0
    );
    let buckets = agent_after
        .samples
        .iter()
        .find(|s| {
            s.metric == "lanyard_agent_workload_request_duration_seconds"
                && s.labels.get("method") == Some("FetchJWTSVID")
        })
        .context("the latency histogram's buckets")?;
    assert!(
        matches!(&buckets.value, Value::Histogram(b) if b.last().is_some_and(|top| top.count == 3.0)),
        "{:?}",
        buckets.value
    );
    let served = "lanyard_agent_svids_served_total";
    for (kind, source, n) in [
        ("jwt", "minted", 1.0),
        ("jwt", "cache", 1.0),
        ("x509", "minted", 1.0),
    ] {
        assert_eq!(
            moved(
                &agent_before,
                &agent_after,
                served,
                &[("kind", kind), ("source", source)]
            ),
            n,
            "{kind} from {source}"
        );
    }
    // The second X509-SVID stream was served what the agent held (a stream
    // may look at what it holds more than once as it opens).
    assert!(
        moved(
            &agent_before,
            &agent_after,
            served,
            &[("kind", "x509"), ("source", "cache")]
        ) >= 1.0
    );
    assert_eq!(
        sample(&agent_after, "lanyard_agent_rate_limited_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&agent_after, "lanyard_agent_server_reachable", &[]),
        Some(1.0)
    );
    assert!(sample(&agent_after, "lanyard_agent_entry_revision", &[]).unwrap_or(0.0) >= 1.0);
    let age = sample(&agent_after, "lanyard_agent_seconds_since_last_sync", &[])
        .context("seconds since the last sync")?;
    assert!((0.0..60.0).contains(&age), "{age}");

    // The server: mints by kind and code, the datastore behind them, its deadlines.
    let mints = "lanyard_server_mints_total";
    for kind in ["jwt", "x509"] {
        assert_eq!(
            moved(
                &server_before,
                &server_after,
                mints,
                &[("kind", kind), ("code", "ok")]
            ),
            1.0,
            "{kind} mints"
        );
    }
    assert_eq!(
        moved(
            &server_before,
            &server_after,
            "lanyard_server_datastore_query_duration_seconds_count",
            &[("operation", "mint_lookup")]
        ),
        2.0
    );
    assert!(sample(&server_after, "lanyard_server_connected_agents", &[]).unwrap_or(0.0) >= 1.0);
    assert!(sample(&server_after, "lanyard_server_entry_revision", &[]).unwrap_or(0.0) >= 1.0);
    let key = sample(
        &server_after,
        "lanyard_server_key_next_activation_seconds",
        &[],
    )
    .context("key activation")?;
    let ca = sample(&server_after, "lanyard_server_ca_expiry_seconds", &[]).context("CA expiry")?;
    assert!(key > 0.0 && ca > 86_400.0, "key in {key} s, CA in {ca} s");
    for limit in ["mint", "attestation"] {
        assert_eq!(
            sample(
                &server_after,
                "lanyard_server_rate_limited_total",
                &[("limit", limit)]
            ),
            Some(0.0),
            "{limit}"
        );
    }
    for text in [&agent_text, &server_text] {
        assert!(
            !text.contains("spiffe://"),
            "a SPIFFE ID in a label:\n{text}"
        );
        assert!(!text.contains(audience), "an audience in a label:\n{text}");
    }

    // The sync loop: another successful sync is counted and the age drops.
    let syncs = |s: &Scrape| count(s, "lanyard_agent_syncs_total", &[("result", "ok")]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (now, _) = scrape(agent).await?;
        if syncs(&now) > syncs(&agent_after) {
            let age =
                sample(&now, "lanyard_agent_seconds_since_last_sync", &[]).unwrap_or(f64::MAX);
            assert!(age < 5.0, "{age}");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no sync counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An entry change: the agent is handed its revision at a later sync,
    // and both gauges show it.
    let revision = |s: &Scrape, name: &str| sample(s, name, &[]).unwrap_or(0.0);
    let mut admin = AdminClient::new(unix_channel(&world.server.admin_socket));
    let created = admin
        .create_entry(CreateEntryRequest {
            spiffe_id: "spiffe://example.org/metrics/changed".into(),
            selectors: vec!["unix:uid:4242".into()],
            ..CreateEntryRequest::default()
        })
        .await?
        .into_inner();
    let changed = created.revision as f64;
    assert!(changed > revision(&agent_after, "lanyard_agent_entry_revision"));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (agent_now, _) = scrape(agent).await?;
        let (server_now, _) = scrape(server).await?;
        if revision(&agent_now, "lanyard_agent_entry_revision") == changed
            && revision(&server_now, "lanyard_server_entry_revision") == changed
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the revision gauges never reached {changed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    world.stop().await;
    Ok(())
}

async fn start_server(dir: &std::path::Path, tables: &str) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let text = format!(
        "trust_domain = \"example.org\"\nissuer = \"https://127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{tables}\n{TELEMETRY}",
        dir.join("server").display()
    );
    Ok(
        lanyard_server::start_with_listener(ServerConfig::from_toml(&text, "test")?, listener)
            .await?,
    )
}

/// Attestations (one accepted, one refused with a spent token), mints (one
/// allowed, one of another agent's entry) and the datastore work behind
/// them, at the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestations_and_mints_are_counted_by_result() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), "[node_api]\nlisten = \"127.0.0.1:0\"\n").await?;
    let telemetry = server.telemetry_addr.context("telemetry")?;
    let endpoint = ServerEndpoint::new(
        &server.node_addr.context("mTLS Node API")?.to_string(),
        &server.ca_bundle,
    )?;
    let mut admin = AdminClient::new(unix_channel(&server.admin_socket));
    let (before, _) = scrape(telemetry).await?;

    let agent_id = "spiffe://example.org/node/a";
    let token = admin
        .generate_join_token(GenerateJoinTokenRequest {
            spiffe_id: agent_id.into(),
            ttl_seconds: 300,
        })
        .await?
        .into_inner()
        .token;
    let creds = node_client::attest(&endpoint, &token).await?;
    let spent = node_client::attest(&endpoint, &token).await;
    assert!(spent.is_err(), "a spent token attested");
    let mut entry_ids = Vec::new();
    for (id, parent) in [
        ("spiffe://example.org/web", agent_id),
        (
            "spiffe://example.org/db",
            "spiffe://example.org/lanyard/agent/local",
        ),
    ] {
        let request = CreateEntryRequest {
            spiffe_id: id.into(),
            parent_id: parent.into(),
            selectors: vec!["unix:uid:1000".into()],
            ..CreateEntryRequest::default()
        };
        entry_ids.push(admin.create_entry(request).await?.into_inner().id);
    }
    let mut node = NodeClient::new(node_client::channel(&endpoint, Some(&creds))?);
    let mint = |entry_id: String| {
        let request = MintJwtSvidRequest {
            entry_id,
            audience: vec!["aud".into()],
            selectors: Vec::new(),
        };
        let mut node = node.clone();
        async move { node.mint_jwt_svid(request).await.map(|_| ()) }
    };
    mint(entry_ids[0].clone()).await?;
    let foreign = mint(entry_ids[1].clone()).await;
    assert_eq!(
        foreign.err().map(|s| s.code()),
        Some(Code::PermissionDenied)
    );
    drop(
        node.sync_entries(lanyard_proto::node::SyncEntriesRequest { since_revision: 0 })
            .await?,
    );

    let (after, _) = scrape(telemetry).await?;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        count(&after, name, labels) - count(&before, name, labels)
    };
    let attestations = "lanyard_server_attestations_total";
    assert_eq!(
        moved(attestations, &[("method", "join_token"), ("result", "ok")]),
        1.0
    );
    assert_eq!(
        moved(
            attestations,
            &[("method", "join_token"), ("result", "refused")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "lanyard_server_attestation_refusals_total",
            &[("method", "join_token"), ("reason", "not_proven")]
        ),
        1.0
    );
    let mints = "lanyard_server_mints_total";
    assert_eq!(moved(mints, &[("kind", "jwt"), ("code", "ok")]), 1.0);
    assert_eq!(
        moved(mints, &[("kind", "jwt"), ("code", "permission_denied")]),
        1.0
    );
    let queries = "lanyard_server_datastore_query_duration_seconds_count";
    assert!(
        moved(queries, &[("operation", "join_token")]) >= 3.0,
        "generate, redeem twice"
    );
    assert_eq!(moved(queries, &[("operation", "entry_write")]), 2.0);
    assert_eq!(moved(queries, &[("operation", "sync")]), 1.0);
    assert_eq!(
        moved(
            "lanyard_server_datastore_errors_total",
            &[("operation", "sync")]
        ),
        0.0
    );
    assert!(sample(&after, "lanyard_server_connected_agents", &[]).unwrap_or(0.0) >= 1.0);
    server.shutdown().await;
    Ok(())
}

/// `/readyz` at the server: 200 with its PostgreSQL up, 503 naming the
/// datastore while it is down (crashed as a power cut would), 200 again
/// once it is back; `/healthz` stays 200 throughout, and so do the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_readyz_follows_the_datastore() -> anyhow::Result<()> {
    let Some(postgres) = PrivatePostgres::start_new()? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let tables = format!("[datastore]\nurl = \"{}\"\n", postgres.url("postgres"));
    let server = start_server(dir.path(), &tables).await?;
    let telemetry = server.telemetry_addr.context("telemetry")?;
    assert_eq!(get(telemetry, "/readyz").await?, (200, "ready\n".into()));

    postgres.crash()?;
    let body = readyz_becomes(telemetry, 503).await?;
    assert!(body.starts_with("not ready: datastore"), "{body:?}");
    assert_eq!(body.lines().count(), 1, "{body:?}");
    assert_eq!(get(telemetry, "/healthz").await?.0, 200);
    let (down, _) = scrape(telemetry).await?;
    assert!(
        count(
            &down,
            "lanyard_server_datastore_errors_total",
            &[("operation", "ping")]
        ) >= 1.0
    );

    postgres.start()?;
    assert_eq!(readyz_becomes(telemetry, 200).await?, "ready\n");
    server.shutdown().await;
    Ok(())
}

/// `/readyz` at an agent: 503 while it has never synced (its server not yet
/// there), 200 once it has; and the listener's other answers: `/healthz`,
/// 404 for any other path, 405 for any other method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_readyz_waits_for_the_first_sync() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node_socket = dir.path().join("server-node.sock");
    let agent_config = format!(
        "trust_domain = \"example.org\"\nsync_interval_seconds = 1\n[server]\nnode_socket = \"{}\"\n\
         [workload_api]\nsocket = \"{}\"\n{TELEMETRY}",
        node_socket.display(),
        dir.path().join("agent/api.sock").display(),
    );
    let agent = lanyard_agent::start(AgentConfig::from_toml(&agent_config, "test")?).await?;
    let telemetry = agent.telemetry_addr.context("telemetry")?;
    let (status, body) = get(telemetry, "/readyz").await?;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: entries not yet synced with the server\n")
    );
    assert_eq!(get(telemetry, "/healthz").await?, (200, "alive\n".into()));
    let (before, _) = scrape(telemetry).await?;
    assert!(count(&before, "lanyard_agent_syncs_total", &[("result", "error")]) >= 1.0);
    assert_eq!(
        sample(&before, "lanyard_agent_server_reachable", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&before, "lanyard_agent_seconds_since_last_sync", &[]),
        None
    );

    let server = start_server(
        dir.path(),
        &format!("[node_api]\nsocket = \"{}\"\n", node_socket.display()),
    )
    .await?;
    assert_eq!(readyz_becomes(telemetry, 200).await?, "ready\n");

    // Raw HTTP/1.1: whatever else is asked is refused by path, then by method.
    for (request, want) in [
        ("GET /metrics/ HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 404"),
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 404"),
        (
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 405",
        ),
        ("DELETE /readyz HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 405"),
        ("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(telemetry).await?;
        tcp.write_all(request.as_bytes()).await?;
        let mut head = vec![0u8; 12];
        tokio::time::timeout(PATIENCE, tcp.read_exact(&mut head)).await??;
        assert_eq!(String::from_utf8_lossy(&head), want, "{request:?}");
    }
    agent.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// `/readyz` at an agent whose server goes away: still ready while it holds
/// a valid cached SVID to serve, not ready when it holds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_readyz_rides_out_an_outage_only_with_valid_cached_svids() -> anyhow::Result<()> {
    for holds_svid in [true, false] {
        let world = World::start_with_agent_config(
            "",
            &[EntrySpec::mine("/web")],
            "sync_interval_seconds = 1",
            TELEMETRY,
        )
        .await?;
        let telemetry = world.agent.telemetry_addr.context("telemetry")?;
        assert_eq!(readyz_becomes(telemetry, 200).await?, "ready\n");
        if holds_svid {
            let mut client = WorkloadClient::new(&world.endpoint())?;
            client.fetch_jwt(vec!["outage".into()], None).await?;
        }
        let down = world.stop_server().await;
        // The agent notices at its next sync (every second here).
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (now, _) = scrape(telemetry).await?;
            if sample(&now, "lanyard_agent_server_reachable", &[]) == Some(0.0) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the outage was never noticed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, body) = get(telemetry, "/readyz").await?;
        if holds_svid {
            assert_eq!((status, body.as_str()), (200, "ready\n"));
        } else {
            assert_eq!(
                (status, body.as_str()),
                (
                    503,
                    "not ready: the server is unreachable and no cached SVID is still valid\n"
                )
            );
        }
        down.stop().await;
    }
    Ok(())
}
