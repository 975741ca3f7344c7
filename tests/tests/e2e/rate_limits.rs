//! Rate limits, from the outside. Who may be on the other side: any local
//! process may call the Workload API (a flood of cache misses from one uid
//! must not spend the server's time for other uids); any agent may mint (one
//! agent's workloads must not take a server from the others); anyone who
//! reaches the Node API port may start attestations.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::Context;
use lanyard_host::rate_limit::RETRY_PUSHBACK_HEADER;
use lanyard_host::transport::unix_channel;
use lanyard_proto::workload::JwtsvidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_tests::{EntrySpec, World, my_uid};
use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_workload-load");
const FLOODER: u32 = 4201;
const QUIET: u32 = 4202;

/// Runs `workload-load` as `uid` against `world` with `args`; its summary.
fn load_as(world: &World, uid: u32, args: &[&str]) -> anyhow::Result<Value> {
    let output = Command::new(LOAD)
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", world.endpoint())
        .uid(uid)
        .gid(uid)
        .output()?;
    anyhow::ensure!(output.status.success(), "{output:?}");
    let summary: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{}", String::from_utf8_lossy(&output.stdout)))?;
    Ok(summary)
}

fn count(summary: &Value, field: &str) -> u64 {
    summary[field].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_uid_spends_its_own_budget_only() -> anyhow::Result<()> {
    if my_uid() != 0 {
        eprintln!("skipped: running workloads as two other uids needs root (CI runs as root)");
        return Ok(());
    }
    let world = World::start_with_tables(
        "",
        &[
            EntrySpec::new("/flooder", &[&format!("unix:uid:{FLOODER}")]),
            EntrySpec::new("/quiet", &[&format!("unix:uid:{QUIET}")]),
        ],
        "",
        "cache_misses_per_second_per_uid = 5\ncache_miss_burst_per_uid = 10\n\
         [telemetry]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await?;
    let quiet = ["--audience", "quiet", "--callers", "4", "--seconds", "1.5"];
    let before = tokio::task::block_in_place(|| load_as(&world, QUIET, &quiet))?;

    // 16 loops of cache misses from one uid, and the quiet uid's cached
    // fetches during it.
    let flood = {
        let (load, endpoint) = (LOAD, world.endpoint());
        std::thread::spawn(move || {
            Command::new(load)
                .args([
                    "--distinct",
                    "--audience",
                    "flood",
                    "--callers",
                    "16",
                    "--seconds",
                    "3",
                ])
                .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
                .uid(FLOODER)
                .gid(FLOODER)
                .output()
        })
    };
    let during = tokio::task::block_in_place(|| load_as(&world, QUIET, &quiet))?;
    let flood = flood
        .join()
        .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
    let flood: Value = serde_json::from_slice(&flood.stdout)?;
    eprintln!("quiet before: {before}\nquiet during: {during}\nflood: {flood}");

    // The flooder got its burst and its rate, no more, each refusal with a wait.
    assert!(count(&flood, "exhausted") > 0, "{flood}");
    assert!(
        count(&flood, "ok") <= 10 + 5 * 4,
        "more mints than 3 s of budget: {flood}"
    );
    assert!(count(&flood, "min_pushback_ms") > 0, "{flood}");
    assert_eq!(flood["other_errors"], serde_json::json!([]), "{flood}");
    // Every refusal counted, and nothing else.
    let metrics = world.agent.telemetry_addr.context("agent telemetry")?;
    let (scrape, _) = crate::telemetry::scrape(metrics).await?;
    assert_eq!(
        crate::telemetry::count(&scrape, "lanyard_agent_rate_limited_total", &[]),
        count(&flood, "exhausted") as f64
    );
    // The quiet uid never noticed: every call answered from the cache, none refused.
    for summary in [&before, &during] {
        assert_eq!(count(summary, "ok"), count(summary, "calls"), "{summary}");
        assert!(count(summary, "calls") > 100, "{summary}");
    }
    // Within noise: the median, against the same uid's alone a moment
    // before, with room for what 16 busy loops of refused calls cost the
    // shared cores (the figures printed above are the measurement).
    let (alone, flooded) = (count(&before, "p50_us"), count(&during, "p50_us"));
    assert!(
        flooded <= 4 * alone + 10_000,
        "the quiet uid's cached fetches slowed from p50 {alone} us to {flooded} us"
    );
    world.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_mint_limit_reaches_the_workload_with_its_wait() -> anyhow::Result<()> {
    let world = World::start_with_tables(
        "",
        &[EntrySpec::mine("/minted")],
        "[rate_limits]\nmints_per_second_per_agent = 1\nmint_burst_per_agent = 3\n\
         [telemetry]\nlisten = \"127.0.0.1:0\"\n",
        "cache_misses_per_second_per_uid = 1\ncache_miss_burst_per_uid = 20\n\
         [telemetry]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await?;
    let mut client =
        SpiffeWorkloadApiClient::new(unix_channel(&world.dir.path().join("agent/api.sock")));
    let mut refused = None;
    for n in 0..10 {
        let mut request = tonic::Request::new(JwtsvidRequest {
            audience: vec![format!("limited-{n}")],
            spiffe_id: String::new(),
        });
        request
            .metadata_mut()
            .insert("workload.spiffe.io", "true".parse()?);
        match client.fetch_jwtsvid(request).await {
            Ok(_) => anyhow::ensure!(n < 4, "mint {n} got through a burst of 3"),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.context("no mint was refused")?;
    // Passed through as the server said it (not Unavailable), with the wait.
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("rate_limits.mints_per_second_per_agent"),
        "{status:?}"
    );
    let wait: u64 = status
        .metadata()
        .get(RETRY_PUSHBACK_HEADER)
        .context("a retry hint")?
        .to_str()?
        .parse()?;
    assert!((1..=1000).contains(&wait), "{wait} ms");
    // Counted at the server, by limit; the agent's own limit was not the one hit.
    let server_metrics = world.server.telemetry_addr.context("server telemetry")?;
    let (scrape, _) = crate::telemetry::scrape(server_metrics).await?;
    let limited = "lanyard_server_rate_limited_total";
    assert_eq!(
        crate::telemetry::count(&scrape, limited, &[("limit", "mint")]),
        1.0
    );
    assert_eq!(
        crate::telemetry::count(&scrape, limited, &[("limit", "attestation")]),
        0.0
    );
    let agent_metrics = world.agent.telemetry_addr.context("agent telemetry")?;
    let (scrape, _) = crate::telemetry::scrape(agent_metrics).await?;
    assert_eq!(
        crate::telemetry::count(&scrape, "lanyard_agent_rate_limited_total", &[]),
        0.0
    );
    // A cached token is still served while over the limit.
    let mut request = tonic::Request::new(JwtsvidRequest {
        audience: vec!["limited-0".to_owned()],
        spiffe_id: String::new(),
    });
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse()?);
    client.fetch_jwtsvid(request).await?;
    world.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestations_from_one_address_beyond_its_budget_are_refused_first() -> anyhow::Result<()> {
    use lanyard_agent::upstream::ServerEndpoint;
    use lanyard_proto::node::attest_start::Evidence;

    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let text = format!(
        "trust_domain = \"example.org\"\nissuer = \"https://127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
         [node_api]\nlisten = \"127.0.0.1:0\"\n\
         [rate_limits]\nattestations_per_second_per_address = 1\nattestation_burst_per_address = 2\n\
         [telemetry]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("server").display(),
    );
    let server = lanyard_server::start_with_listener(
        lanyard_server::config::ServerConfig::from_toml(&text, "test")?,
        listener,
    )
    .await?;
    let endpoint = ServerEndpoint::new(
        &server.node_addr.context("mTLS Node API")?.to_string(),
        &server.ca_bundle,
    )?;
    // Each attempt with a token nobody issued: the first two are judged on
    // their evidence, the third is refused before its evidence is read.
    let mut codes = Vec::new();
    for _ in 0..3 {
        let attempt =
            lanyard_tests::fleet::open(&endpoint, Evidence::JoinToken("not-a-token".to_owned()))
                .await;
        let status = match attempt {
            Ok(mut attempt) => attempt.next().await.err().context("a refusal")?,
            Err(error) => error
                .downcast::<tonic::Status>()
                .map_err(|e| anyhow::anyhow!("not a status: {e}"))?,
        };
        codes.push((status.code(), status));
    }
    assert!(
        codes[..2]
            .iter()
            .all(|(code, _)| *code != tonic::Code::ResourceExhausted),
        "{codes:?}"
    );
    let (code, status) = &codes[2];
    assert_eq!(*code, tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("rate_limits.attestations_per_second_per_address")
    );
    assert!(status.metadata().get(RETRY_PUSHBACK_HEADER).is_some());
    // Counted by limit: the one refusal, and no mint refusal.
    let (scrape, _) =
        crate::telemetry::scrape(server.telemetry_addr.context("server telemetry")?).await?;
    let limited = "lanyard_server_rate_limited_total";
    assert_eq!(
        crate::telemetry::count(&scrape, limited, &[("limit", "attestation")]),
        1.0
    );
    assert_eq!(
        crate::telemetry::count(&scrape, limited, &[("limit", "mint")]),
        0.0
    );
    server.shutdown().await;
    Ok(())
}
