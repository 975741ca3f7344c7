//! An HA group as production runs it: several real server binaries on one
//! PostgreSQL, real agent processes that know every server, real workloads.
//! Servers start together on an empty database; one is killed with SIGKILL
//! in the middle of the load and comes back; the database crashes and
//! restarts under a stream of writes. PostgreSQL comes from `.ci/postgres.sh`
//! (skipped with a note on a machine without it, never in CI); the crash test
//! runs a cluster of its own.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lanyard_tests::blackhole::Blackhole;
use lanyard_tests::private_postgres::PrivatePostgres;
use lanyard_tests::process::{Daemon, admin_json, free_port};
use lanyard_tests::{https_client_trusting, my_uid, postgres_database};
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_test-lanyard-server");
const AGENT: &str = env!("CARGO_BIN_EXE_test-lanyard-agent");
const PROBE: &str = env!("CARGO_BIN_EXE_workload-probe");
/// The agent's budget per server call; uncached mints must work again within twice it.
const REQUEST_TIMEOUT_SECONDS: u64 = 2;

/// One server of the group: its data dir, ports and process.
struct GroupServer {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    node: SocketAddr,
    oidc_port: u16,
    process: Option<Daemon>,
}

impl GroupServer {
    fn configure(root: &Path, name: &str, datastore_url: &str) -> anyhow::Result<Self> {
        Self::configure_with(root, name, datastore_url, "")
    }

    /// As [`configure`](Self::configure), with `node_api` appended to the
    /// server's `[node_api]` table.
    fn configure_with(
        root: &Path,
        name: &str,
        datastore_url: &str,
        node_api: &str,
    ) -> anyhow::Result<Self> {
        let node = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        Self::configure_listening(root, name, datastore_url, node, node_api)
    }

    /// As [`configure_with`](Self::configure_with), its Node API on `node`.
    fn configure_listening(
        root: &Path,
        name: &str,
        datastore_url: &str,
        node: SocketAddr,
        node_api: &str,
    ) -> anyhow::Result<Self> {
        let oidc_port = free_port()?;
        let dir = root.join(name);
        let config = root.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"example.org\"\nserver_id = \"{name}\"\n\
                 issuer = \"https://127.0.0.1:{oidc_port}\"\ndata_dir = \"{}\"\n\
                 [oidc]\nlisten = \"127.0.0.1:{oidc_port}\"\n\
                 [node_api]\nlisten = \"{node}\"\n{node_api}\n\
                 [datastore]\nurl = \"{datastore_url}\"\n",
                dir.display()
            ),
        )?;
        Ok(Self {
            name: name.to_owned(),
            dir,
            config,
            node,
            oidc_port,
            process: None,
        })
    }

    fn command(&self) -> Command {
        let mut command = Command::new(SERVER);
        command
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info");
        command
    }

    fn start(&mut self) -> anyhow::Result<()> {
        self.process = Some(Daemon::start(
            self.command(),
            &self.name,
            "lanyard-server is serving",
        )?);
        Ok(())
    }

    fn admin(&self, args: &[&str]) -> anyhow::Result<Value> {
        admin_json(SERVER, &self.dir.join("admin.sock"), args)
    }

    fn address(&self) -> String {
        self.node.to_string()
    }
}

/// Three servers configured on `datastore_url` under `root` (not started).
fn group(root: &Path, datastore_url: &str) -> anyhow::Result<Vec<GroupServer>> {
    group_with(root, datastore_url, "")
}

/// As [`group`], with `node_api` appended to each server's `[node_api]` table.
fn group_with(
    root: &Path,
    datastore_url: &str,
    node_api: &str,
) -> anyhow::Result<Vec<GroupServer>> {
    ["lanyard-1", "lanyard-2", "lanyard-3"]
        .into_iter()
        .map(|name| GroupServer::configure_with(root, name, datastore_url, node_api))
        .collect()
}

/// After a newer release migrated the shared database, a server binary of
/// this release refuses to start and says what to do, rather than running
/// on a schema it does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_older_than_the_schema_refuses_to_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(url) = postgres_database(dir.path()).await? else {
        return Ok(());
    };
    let mut server = GroupServer::configure(dir.path(), "lanyard-1", &url)?;
    server.start()?;
    drop(server.process.take());
    // What a newer release's migration leaves behind.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await?;
    sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (1000, 0)")
        .execute(&pool)
        .await?;
    pool.close().await;

    let refused = match server.start() {
        Ok(()) => anyhow::bail!("a server older than the schema started"),
        Err(refused) => refused.to_string(),
    };
    assert!(
        refused.contains("schema is at version 1000")
            && refused.contains("upgrade this server to that release"),
        "{refused}"
    );
    Ok(())
}

/// A group of three servers on a fresh PostgreSQL database under `root`,
/// each with `node_api` in its `[node_api]` table, started together; None
/// (the test skips with a note) where PostgreSQL is not configured.
async fn running_group(
    root: &Path,
    node_api: &str,
) -> anyhow::Result<Option<(String, Vec<GroupServer>)>> {
    let Some(url) = postgres_database(root).await? else {
        return Ok(None);
    };
    let mut servers = group_with(root, &url, node_api)?;
    start_together(&mut servers)?;
    Ok(Some((url, servers)))
}

/// Starts every server at the same instant and waits until all say they serve.
fn start_together(servers: &mut [GroupServer]) -> anyhow::Result<()> {
    let handles: Vec<_> = servers
        .iter()
        .map(|server| {
            let (command, name) = (server.command(), server.name.clone());
            std::thread::spawn(move || Daemon::start(command, &name, "lanyard-server is serving"))
        })
        .collect();
    for (server, handle) in servers.iter_mut().zip(handles) {
        let daemon = handle
            .join()
            .map_err(|_| anyhow::anyhow!("{} start thread panicked", server.name))??;
        server.process = Some(daemon);
    }
    Ok(())
}

async fn migration_versions(datastore_url: &str) -> anyhow::Result<Vec<(i64, i64)>> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(datastore_url).await?;
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT version, COUNT(*) FROM schema_migrations GROUP BY version ORDER BY version",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_started_at_once_on_an_empty_database_all_serve() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(url) = postgres_database(dir.path()).await? else {
        return Ok(());
    };
    let mut servers = group(dir.path(), &url)?;
    start_together(&mut servers)?;
    let versions = migration_versions(&url).await?;
    anyhow::ensure!(!versions.is_empty(), "no migration recorded");
    for (i, (version, count)) in versions.iter().enumerate() {
        assert_eq!(
            *version,
            i64::try_from(i)? + 1,
            "versions in order: {versions:?}"
        );
        assert_eq!(*count, 1, "migration {version} applied once: {versions:?}");
    }
    for server in &servers {
        let health = server.admin(&["healthcheck"])?;
        assert_eq!(health["healthy"], true, "{}: {health}", server.name);
    }
    Ok(())
}

/// What the probe says for a JWT-SVID of `audience`.
fn probe(endpoint: &str, audience: &str) -> anyhow::Result<String> {
    let output = Command::new(PROBE)
        .arg(audience)
        .arg("--token")
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn token_of(said: &str) -> Option<&str> {
    said.strip_prefix("ok ")?.split_whitespace().nth(1)
}

/// Certificates in a PEM text.
fn certificates_in(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// Waits until the group has converged on one trust bundle and one JWKS:
/// every server's `bundle.pem` holds every server's CA, and so does the
/// agent's X.509 bundle (its channel to the servers trusts the same union);
/// every server's JWKS holds every server's key. Each server re-reads the
/// group's CAs and keys every 10 s; the agent syncs every second.
async fn wait_for_one_bundle(servers: &[GroupServer], endpoint: &str) -> anyhow::Result<()> {
    let want = servers.len();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let mut converged = true;
        for server in servers {
            let pem = std::fs::read_to_string(server.dir.join("ca/bundle.pem"))?;
            converged &= certificates_in(&pem) >= want;
        }
        let agent = Command::new(AGENT)
            .args(["api", "fetch", "x509-bundle", "--socket", endpoint])
            .output()?;
        converged &= certificates_in(&String::from_utf8_lossy(&agent.stdout)) >= want;
        for server in servers {
            converged &= jwks_of(server).await?.keys.len() >= want;
        }
        if converged {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the group never shared one bundle"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The JWKS a server publishes.
async fn jwks_of(server: &GroupServer) -> anyhow::Result<jsonwebtoken::jwk::JwkSet> {
    let client = https_client_trusting(&server.dir.join("oidc-tls-cert.pem"))?;
    Ok(client
        .get(format!("https://127.0.0.1:{}/keys", server.oidc_port))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Starts agent `node` (attested with a join token from the first server),
/// which knows every server of the group, and registers a workload entry of
/// this test's uid under it; returns the agent and its Workload API endpoint.
fn start_agent(
    root: &Path,
    node: &str,
    servers: &[GroupServer],
) -> anyhow::Result<(Daemon, String)> {
    let addresses: Vec<String> = servers.iter().map(GroupServer::address).collect();
    start_agent_at(root, node, servers, &addresses)
}

/// As [`start_agent`], the agent knowing the group as `addresses`.
fn start_agent_at(
    root: &Path,
    node: &str,
    servers: &[GroupServer],
    addresses: &[String],
) -> anyhow::Result<(Daemon, String)> {
    let node_id = format!("spiffe://example.org/node/{node}");
    let token = servers[0].admin(&["token", "generate", "--spiffe-id", &node_id])?;
    let token_file = root.join(format!("{node}-join-token"));
    lanyard_tests::fleet::write_private(
        &token_file,
        token["token"].as_str().context("a token")?.as_bytes(),
    )?;
    let addresses: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    let socket = root.join(format!("{node}-socket/api.sock"));
    let agent_toml = root.join(format!("{node}.toml"));
    std::fs::write(
        &agent_toml,
        format!(
            "trust_domain = \"example.org\"\ndata_dir = \"{}\"\nsync_interval_seconds = 1\n\
             [server]\naddresses = [{}]\ntrust_bundle = \"{}\"\njoin_token_file = \"{}\"\n\
             request_timeout_seconds = {REQUEST_TIMEOUT_SECONDS}\n\
             [workload_api]\nsocket = \"{}\"\n",
            root.join(node).display(),
            addresses.join(", "),
            servers[0].dir.join("ca/bundle.pem").display(),
            token_file.display(),
            socket.display()
        ),
    )?;
    let mut command = Command::new(AGENT);
    command
        .args(["run", "--config"])
        .arg(&agent_toml)
        .env("RUST_LOG", "info");
    let agent = Daemon::start(command, node, "Workload API listening")?;
    servers[1].admin(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://example.org/ha-app/{node}"),
        "--parent-id",
        &node_id,
        "-s",
        &format!("unix:uid:{}", my_uid()),
    ])?;
    Ok((agent, format!("unix://{}", socket.display())))
}

/// Fetches the cached JWT-SVID of audience `cached` through `endpoint` one
/// call after another until `stop`, counting calls in `done`; returns what
/// every failed call said.
fn fetch_cached_until(
    endpoint: String,
    cached: String,
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let said = probe(&endpoint, &cached)?;
        if !said.starts_with("ok") {
            failures.push(said);
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(failures)
}

/// Mints JWT-SVIDs of new audiences (`prefix`-1, -2, …) through `endpoint` until one succeeds;
/// fails when none did within `budget` of `since`.
fn mint_again(
    endpoint: &str,
    prefix: &str,
    since: Instant,
    budget: Duration,
) -> anyhow::Result<String> {
    let mut round = 0;
    loop {
        round += 1;
        let said = probe(endpoint, &format!("{prefix}-{round}"))?;
        anyhow::ensure!(
            since.elapsed() < budget,
            "{endpoint}: no mint within {budget:?} of the kill; last: {said}"
        );
        if let Some(token) = token_of(&said) {
            return Ok(token.to_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_load_goes_unnoticed_and_rejoins() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let Some((url, mut servers)) = running_group(d, "").await? else {
        return Ok(());
    };

    // Three agent processes, each spreading its calls over the whole group,
    // so each is using the server that will be killed.
    let mut agents = Vec::new();
    for node in ["n1", "n2", "n3"] {
        agents.push(start_agent(d, node, &servers)?);
    }
    let endpoints: Vec<String> = agents.iter().map(|(_, e)| e.clone()).collect();
    let mut tokens = Vec::new();
    for endpoint in &endpoints {
        let deadline = Instant::now() + Duration::from_secs(30);
        let cached = loop {
            let said = probe(endpoint, "ha-cached")?;
            if said.starts_with("ok") {
                break said;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the workload never got its SVID: {said}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        tokens.extend(token_of(&cached).map(str::to_owned));
        wait_for_one_bundle(&servers, endpoint).await?;
        for i in 0..3 {
            let said = probe(endpoint, &format!("ha-before-{i}"))?;
            tokens.push(
                token_of(&said)
                    .with_context(|| format!("mint before: {said}"))?
                    .to_owned(),
            );
        }
    }

    // The load: every workload fetching its cached SVID, call after call.
    let stop = Arc::new(AtomicBool::new(false));
    let fetched: Vec<Arc<AtomicUsize>> = endpoints.iter().map(|_| Arc::default()).collect();
    let load: Vec<_> = endpoints
        .iter()
        .zip(&fetched)
        .map(|(endpoint, done)| {
            let (endpoint, done, stop) = (endpoint.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                fetch_cached_until(endpoint, "ha-cached".to_owned(), done, stop)
            })
        })
        .collect();
    let count = |done: &AtomicUsize| done.load(Ordering::Relaxed);
    let long = Duration::from_secs(60);
    wait_until("the load running on every agent", long, || {
        fetched.iter().all(|done| count(done) >= 3)
    })?;

    // The server to be killed was in use: it signed some of the tokens so far.
    let killed_kids = kids_of(&url, "lanyard-1").await?;
    let signed_by_killed = |token: &str| {
        jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|header| header.kid)
            .is_some_and(|kid| killed_kids.contains(&kid))
    };
    assert!(
        tokens.iter().any(|token| signed_by_killed(token)),
        "no token before the kill came from lanyard-1"
    );

    // SIGKILL of one server, in the middle of the load.
    let killed = servers[0].process.take().context("the first server runs")?;
    drop(killed);
    let killed_at = Instant::now();
    let fetched_at_kill: Vec<usize> = fetched.iter().map(|done| count(done)).collect();

    // Uncached mints work again on every agent within twice the request
    // timeout, while the cached fetches go on.
    let budget = Duration::from_secs(2 * REQUEST_TIMEOUT_SECONDS);
    let minters: Vec<_> = endpoints
        .iter()
        .map(|endpoint| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || mint_again(&endpoint, "ha-after", killed_at, budget))
        })
        .collect();
    for minter in minters {
        tokens.push(
            minter
                .join()
                .map_err(|_| anyhow::anyhow!("a minter panicked"))??,
        );
    }
    wait_until(
        "more cached fetches on every agent after the kill",
        long,
        || {
            fetched
                .iter()
                .zip(&fetched_at_kill)
                .all(|(done, before)| count(done) >= before + 3)
        },
    )?;
    stop.store(true, Ordering::Relaxed);
    for (endpoint, thread) in endpoints.iter().zip(load) {
        let failures = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        assert!(
            failures.is_empty(),
            "{endpoint}: cached fetches failed around the kill: {failures:?}"
        );
    }

    // The survivors' JWKS verify every token, those from before included.
    for survivor in &servers[1..] {
        let jwks = jwks_of(survivor).await?;
        for token in &tokens {
            let header = jsonwebtoken::decode_header(token)?;
            let kid = header.kid.context("a kid")?;
            let jwk = jwks
                .find(&kid)
                .with_context(|| format!("{}: kid {kid} unknown", survivor.name))?;
            let mut validation = jsonwebtoken::Validation::new(header.alg);
            validation.validate_aud = false;
            jsonwebtoken::decode::<Value>(
                token,
                &jsonwebtoken::DecodingKey::from_jwk(jwk)?,
                &validation,
            )?;
        }
    }

    // The killed server comes back and rejoins: no second key, no second CA.
    let keys_before = key_and_ca_counts(&url, "lanyard-1").await?;
    servers[0].start()?;
    let keys_after = key_and_ca_counts(&url, "lanyard-1").await?;
    assert_eq!(
        keys_before, keys_after,
        "the restarted server made new keys or CAs"
    );
    for endpoint in &endpoints {
        let said = probe(endpoint, "ha-rejoined")?;
        assert!(said.starts_with("ok"), "{said}");
    }
    // And it serves again: the agents stop avoiding it once its pause
    // (a minute at most) is over, and it signs with the key it had.
    let mut round = 0;
    wait_until(
        "a mint signed by the rejoined server",
        Duration::from_secs(90),
        || {
            round += 1;
            endpoints.iter().any(|endpoint| {
                probe(endpoint, &format!("ha-rejoined-{round}"))
                    .ok()
                    .as_deref()
                    .and_then(token_of)
                    .is_some_and(signed_by_killed)
            })
        },
    )?;
    Ok(())
}

/// The key IDs of server `owner`'s JWT signing keys.
async fn kids_of(
    datastore_url: &str,
    owner: &str,
) -> anyhow::Result<std::collections::HashSet<String>> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(datastore_url).await?;
    let kids: Vec<(String,)> = sqlx::query_as("SELECT kid FROM signing_keys WHERE owner = $1")
        .bind(owner)
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    Ok(kids.into_iter().map(|(kid,)| kid).collect())
}

/// Waits until the workload behind `endpoint` holds a JWT-SVID.
fn wait_for_identity(endpoint: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("an SVID through {endpoint}"),
        Duration::from_secs(30),
        || probe(endpoint, "ha-first").is_ok_and(|said| said.starts_with("ok")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_or_a_ban_on_one_server_holds_on_every_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let Some((_, servers)) = running_group(d, "").await? else {
        return Ok(());
    };
    let (_kept, kept) = start_agent(d, "kept", &servers)?;
    let (_evicted, evicted) = start_agent(d, "gone", &servers)?;
    let (_banned, banned) = start_agent(d, "banned", &servers)?;
    for endpoint in [&kept, &evicted, &banned] {
        wait_for_identity(endpoint)?;
    }

    // Evicted through one server, banned through another (the agents
    // spread over all three). Every server reads the agent's record at each
    // call, so from the next call on every server refuses their mints (six
    // mints in a row go round the whole group twice); the join tokens are
    // spent, so they cannot attest again.
    servers[2].admin(&["agent", "evict", "spiffe://example.org/node/gone"])?;
    servers[1].admin(&["agent", "ban", "spiffe://example.org/node/banned"])?;
    for n in 0..6 {
        let said = probe(&evicted, &format!("gone-after-{n}"))?;
        assert!(
            said.starts_with("denied") && said.contains("has been evicted"),
            "an evicted agent's mint: {said}"
        );
        let said = probe(&banned, &format!("banned-after-{n}"))?;
        assert!(
            said.starts_with("denied") && said.contains("is banned"),
            "a banned agent's mint: {said}"
        );
    }
    // The other agent goes on minting through every server.
    for n in 0..6 {
        let said = probe(&kept, &format!("kept-{n}"))?;
        assert!(said.starts_with("ok"), "the kept agent was refused: {said}");
    }
    Ok(())
}

/// An agent attested through one server of the group renews its SVID
/// through another once that one is gone, and goes on minting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_through_another_server_than_it_attested_through() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // The shortest agent SVID the config allows: renewed after 30 s.
    let Some((_, mut servers)) = running_group(d, "agent_svid_ttl_seconds = 60").await? else {
        return Ok(());
    };
    let (agent, endpoint) = start_agent(d, "renewing", &servers)?;
    wait_for_identity(&endpoint)?;
    // The agent trusts a server only once it knows that server's CA: it
    // must have learned the group's union (at a sync) before the one it
    // knows goes away. Until then the others are refused as impostors.
    wait_for_one_bundle(&servers, &endpoint).await?;

    let logged = |server: &GroupServer, what: &str| {
        server.process.as_ref().is_some_and(|process| {
            process
                .log_lines()
                .iter()
                .any(|line| line.contains(what) && line.contains("node/renewing"))
        })
    };
    let attested_by = servers
        .iter()
        .position(|server| logged(server, "agent attested"))
        .context("no server logged the attestation")?;
    drop(servers[attested_by].process.take());

    wait_until(
        "the agent's SVID renewed by another server",
        Duration::from_secs(90),
        || {
            servers
                .iter()
                .any(|server| logged(server, "agent SVID renewed"))
        },
    )
    .with_context(|| format!("the agent said:\n{}", agent.log_lines().join("\n")))?;
    let said = probe(&endpoint, "renewed-elsewhere")?;
    assert!(
        token_of(&said).is_some(),
        "a mint after the renewal: {said}"
    );
    Ok(())
}

/// A name `.ci/hosts.sh` lists twice in /etc/hosts (127.0.0.2 and 127.0.0.3),
/// as a DNS name with two A records looks to the resolver.
const GROUP_NAME: &str = "lanyard-group.test";

/// An agent given one name that resolves to two addresses reaches a server
/// at each: with either server killed, the other, found through the same
/// name, signs its mints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_with_two_addresses_is_two_servers() -> anyhow::Result<()> {
    let mut ips: Vec<IpAddr> = (GROUP_NAME, 0)
        .to_socket_addrs()
        .map(|found| found.map(|addr| addr.ip()).collect())
        .unwrap_or_default();
    ips.sort_unstable();
    ips.dedup();
    if ips.len() < 2 {
        eprintln!(
            "skipped: {GROUP_NAME} resolves to {ips:?}, not two addresses (.ci/hosts.sh lists it twice in /etc/hosts)"
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let Some(url) = postgres_database(d).await? else {
        return Ok(());
    };
    // One port, free on the first address (and, in practice, on the second).
    let port = free_port()?;
    let mut servers = ["lanyard-1", "lanyard-2"]
        .iter()
        .zip(&ips)
        .map(|(name, ip)| {
            GroupServer::configure_listening(d, name, &url, SocketAddr::new(*ip, port), "")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    start_together(&mut servers)?;
    let (_agent, endpoint) =
        start_agent_at(d, "named", &servers, &[format!("{GROUP_NAME}:{port}")])?;
    wait_for_identity(&endpoint)?;
    wait_for_one_bundle(&servers, &endpoint).await?;

    let budget = Duration::from_secs(2 * REQUEST_TIMEOUT_SECONDS);
    for (down, up) in [(0, 1), (1, 0)] {
        let kids = kids_of(&url, &servers[up].name).await?;
        drop(servers[down].process.take());
        let prefix = format!("named-without-{}", servers[down].name);
        let token = mint_again(&endpoint, &prefix, Instant::now(), budget)?;
        let kid = jsonwebtoken::decode_header(&token)?.kid.context("a kid")?;
        assert!(
            kids.contains(&kid),
            "with {} down, the mint was not signed by {}",
            servers[down].name,
            servers[up].name
        );
        servers[down].start()?;
    }
    Ok(())
}

/// (signing keys, CA certificates) the datastore holds for `server_id`.
async fn key_and_ca_counts(datastore_url: &str, server_id: &str) -> anyhow::Result<(i64, i64)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(datastore_url).await?;
    let (keys,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM signing_keys WHERE owner = $1")
        .bind(server_id)
        .fetch_one(&pool)
        .await?;
    let (cas,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM ca_certificates WHERE server_id = $1")
            .bind(server_id)
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    Ok((keys, cas))
}

/// Creates entry `path` through the Admin CLI on socket `admin`: Ok(true)
/// when acknowledged, Ok(false) when refused as unavailable, else an error.
fn create_entry(admin: &Path, path: &str) -> anyhow::Result<bool> {
    let output = Command::new(SERVER)
        .args([
            "entry",
            "create",
            "--spiffe-id",
            &format!("spiffe://example.org{path}"),
            "-s",
            "unix:uid:4242",
            "--socket",
        ])
        .arg(admin)
        .output()?;
    if output.status.success() {
        return Ok(true);
    }
    let said = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(said.contains("Unavailable"), "{path}: {said}");
    Ok(false)
}

/// What one writer saw: every write's path and whether it was acknowledged,
/// and the longest any write took.
#[derive(Default)]
struct Writes {
    outcomes: Vec<(String, bool)>,
    longest: Duration,
}

/// Counts shared with a writer thread while it runs.
#[derive(Default)]
struct WriterProgress {
    acknowledged: AtomicUsize,
    refused: AtomicUsize,
}

/// Writes entries `/load/<writer>/<n>` through `admin` one after another
/// until `stop`, counting outcomes in `progress` as it goes.
fn write_until(
    admin: PathBuf,
    writer: usize,
    progress: Arc<WriterProgress>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Writes> {
    let mut writes = Writes::default();
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let path = format!("/load/{writer}/{n}");
        let started = Instant::now();
        let acknowledged = create_entry(&admin, &path)?;
        writes.longest = writes.longest.max(started.elapsed());
        let counter = match acknowledged {
            true => &progress.acknowledged,
            false => &progress.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        writes.outcomes.push((path, acknowledged));
    }
    Ok(writes)
}

/// Polls `done` (every 50 ms) until it holds, or fails naming `what` after `within`.
fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// PostgreSQL crashes (immediate stop: every connection cut, no checkpoint)
/// and restarts while two servers take a stream of writes, one writer each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_ride_out_a_database_crash_and_restart_under_load() -> anyhow::Result<()> {
    let Some(postgres) = PrivatePostgres::start_new()? else {
        return Ok(());
    };
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&postgres.url("postgres")).await?;
    sqlx::query("CREATE DATABASE lanyard")
        .execute(&admin)
        .await?;
    admin.close().await;
    let dir = tempfile::tempdir()?;
    let mut servers = group(dir.path(), &postgres.url("lanyard"))?;
    servers.truncate(2);
    start_together(&mut servers)?;

    let stop = Arc::new(AtomicBool::new(false));
    let progress: Vec<Arc<WriterProgress>> = servers.iter().map(|_| Arc::default()).collect();
    let writers: Vec<_> = servers
        .iter()
        .zip(&progress)
        .enumerate()
        .map(|(writer, (server, progress))| {
            let (admin, progress, stop) = (
                server.dir.join("admin.sock"),
                progress.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || write_until(admin, writer, progress, stop))
        })
        .collect();
    let acknowledged = |p: &WriterProgress| p.acknowledged.load(Ordering::Relaxed);
    let refused = |p: &WriterProgress| p.refused.load(Ordering::Relaxed);
    let long = Duration::from_secs(60);
    wait_until("three writes acknowledged by each server", long, || {
        progress.iter().all(|p| acknowledged(p) >= 3)
    })?;

    postgres.crash()?;
    // While it is down: each server refuses writes as unavailable (never
    // hangs: see `longest` below) and serves JWKS from memory.
    wait_until("a write refused by each server", long, || {
        progress.iter().all(|p| refused(p) >= 1)
    })?;
    for server in &servers {
        let jwks = jwks_of(server).await?;
        assert!(!jwks.keys.is_empty(), "{}: an empty JWKS", server.name);
    }

    let acknowledged_before: Vec<usize> = progress.iter().map(|p| acknowledged(p)).collect();
    postgres.start()?;
    // Each server reconnects by itself: writes are acknowledged again.
    wait_until("each server acknowledging writes again", long, || {
        progress
            .iter()
            .zip(&acknowledged_before)
            .all(|(p, before)| acknowledged(p) >= before + 3)
    })?;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for writer in writers {
        let writes = writer
            .join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        // A hang guard, not a timing figure: the pool gives up within seconds.
        assert!(
            writes.longest < Duration::from_secs(30),
            "a write hung for {:?}",
            writes.longest
        );
        outcomes.extend(writes.outcomes);
    }

    // No acknowledged write is lost, none appears twice; a refused one (its
    // answer may have been lost in the crash) is there at most once.
    let listed = servers[0].admin(&["entry", "list"])?;
    let ids: Vec<&str> = listed
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|entry| entry["spiffe_id"].as_str())
        .collect();
    for (path, acknowledged) in &outcomes {
        let id = format!("spiffe://example.org{path}");
        let copies = ids.iter().filter(|listed| **listed == id).count();
        match acknowledged {
            true => assert_eq!(copies, 1, "{id} once: {ids:?}"),
            false => assert!(copies <= 1, "{id} twice"),
        }
    }
    Ok(())
}

/// The address `url` (postgres://user:password@host:port/database) names,
/// and the same URL through `port` on 127.0.0.1.
fn through_local_port(url: &str, port: u16) -> anyhow::Result<(std::net::SocketAddr, String)> {
    let (head, rest) = url
        .split_once('@')
        .context("a postgres URL with credentials")?;
    let (authority, database) = rest
        .split_once('/')
        .context("a postgres URL with a database")?;
    let target = std::net::ToSocketAddrs::to_socket_addrs(authority)?
        .next()
        .context("the database's address")?;
    Ok((target, format!("{head}@127.0.0.1:{port}/{database}")))
}

/// The database stops answering in the middle of a write without closing
/// anything (a partition; a failover that drops packets): the write fails
/// as Unavailable within the server's deadline instead of hanging, as does
/// the next one, while JWKS and discovery are still served; once the dead
/// connections are cut and the database answers again, the server writes
/// again by itself, and the write cut short was not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_mid_write_is_unavailable_not_a_hang() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let Some(url) = postgres_database(dir.path()).await? else {
        return Ok(());
    };
    let marker = "spiffe://example.org/blackholed";
    let (target, _) = through_local_port(&url, 0)?;
    let hole = Blackhole::start(target, marker.as_bytes()).await?;
    let (_, relayed) = through_local_port(&url, hole.port())?;
    // In clear, so the black hole sees the marker (Debian's PostgreSQL offers TLS).
    let relayed = format!("{relayed}?sslmode=disable");
    let mut server = GroupServer::configure(dir.path(), "lanyard-1", &relayed)?;
    server.start()?;
    let admin = server.dir.join("admin.sock");
    assert!(
        create_entry(&admin, "/before")?,
        "a write before the outage"
    );

    // Bounded by the test, not by the server: before the deadline a write
    // whose query was sent into the black hole never came back.
    let write = |path: &'static str| {
        let admin = admin.clone();
        let (sent, answer) = std::sync::mpsc::channel();
        std::thread::spawn(move || sent.send(create_entry(&admin, path)));
        answer
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow::anyhow!("the write of {path} hung for 60 s"))
    };
    let acknowledged = write("/blackholed")??;
    assert!(hole.frozen(), "the write's query reached the black hole");
    assert!(
        !acknowledged,
        "a write whose query was lost is not acknowledged"
    );
    // Every connection is held silent now: the next write fails too, at
    // its connection check.
    assert!(!write("/during")??, "a write during the outage");
    let jwks = jwks_of(&server).await?;
    assert!(
        !jwks.keys.is_empty(),
        "JWKS served from memory during the outage"
    );

    hole.reopen();
    let mut round = 0;
    wait_until(
        "a write acknowledged after the outage",
        Duration::from_secs(60),
        || {
            round += 1;
            matches!(create_entry(&admin, &format!("/after/{round}")), Ok(true))
        },
    )?;

    let listed = server.admin(&["entry", "list"])?;
    let ids: Vec<&str> = listed
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|entry| entry["spiffe_id"].as_str())
        .collect();
    let copies = |id: &str| ids.iter().filter(|listed| **listed == id).count();
    assert_eq!(copies("spiffe://example.org/before"), 1, "{ids:?}");
    // Its INSERT never reached PostgreSQL, and the cut rolled its transaction back.
    assert_eq!(copies(marker), 0, "{ids:?}");
    assert_eq!(copies("spiffe://example.org/during"), 0, "{ids:?}");
    Ok(())
}

/// A server of the group in this process, so the test controls its CA's clock.
async fn in_process_server(
    root: &Path,
    name: &str,
    datastore_url: &str,
) -> anyhow::Result<lanyard_server::RunningServer> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let text = format!(
        "trust_domain = \"example.org\"\nserver_id = \"{name}\"\n\
         issuer = \"https://127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
         [node_api]\nlisten = \"127.0.0.1:0\"\n[datastore]\nurl = \"{datastore_url}\"\n",
        root.join(name).display()
    );
    Ok(lanyard_server::start_with_listener(
        lanyard_server::config::ServerConfig::from_toml(&text, name)?,
        listener,
    )
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_on_one_server_reaches_an_agent_of_another() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(url) = postgres_database(dir.path()).await? else {
        return Ok(());
    };
    let d = dir.path();
    let a = in_process_server(d, "server-a", &url).await?;
    let b = in_process_server(d, "server-b", &url).await?;
    // The agent knows only B.
    let token = admin_json(
        SERVER,
        &b.admin_socket,
        &[
            "token",
            "generate",
            "--spiffe-id",
            "spiffe://example.org/node/b1",
        ],
    )?;
    let token_file = d.join("join-token");
    lanyard_tests::fleet::write_private(
        &token_file,
        token["token"].as_str().context("a token")?.as_bytes(),
    )?;
    let socket = d.join("agent-socket/api.sock");
    let agent_toml = d.join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "trust_domain = \"example.org\"\ndata_dir = \"{}\"\nsync_interval_seconds = 1\n\
             [server]\naddress = \"{}\"\ntrust_bundle = \"{}\"\njoin_token_file = \"{}\"\n\
             [workload_api]\nsocket = \"{}\"\n",
            d.join("agent").display(),
            b.node_addr.context("B's Node API")?,
            b.ca_bundle.display(),
            token_file.display(),
            socket.display()
        ),
    )?;
    let mut command = Command::new(AGENT);
    command
        .args(["run", "--config"])
        .arg(&agent_toml)
        .env("RUST_LOG", "info");
    let _agent = Daemon::start(command, "lanyard-agent", "Workload API listening")?;
    let endpoint = format!("unix://{}", socket.display());
    // A workload on the node, so it may ask for the X.509 bundle.
    admin_json(
        SERVER,
        &b.admin_socket,
        &[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/ha-bundle",
            "--parent-id",
            "spiffe://example.org/node/b1",
            "-s",
            &format!("unix:uid:{}", my_uid()),
        ],
    )?;

    // A's clock jumps eleven months ahead: its CA is due, and a successor is made.
    let before: Vec<Vec<u8>> = a.ca.bundle().iter().map(|c| c.to_vec()).collect();
    let later = std::time::SystemTime::now() + Duration::from_secs(335 * 86_400);
    assert!(a.ca.rotate(later)?, "A's CA did not rotate");
    let successor =
        a.ca.bundle()
            .into_iter()
            .map(|c| c.to_vec())
            .find(|c| !before.contains(c))
            .context("A has a successor CA")?;
    // A publishes it, B takes it in (each also does so on its own every 10 s).
    a.trust_bundle.refresh().await?;
    b.trust_bundle.refresh().await?;
    assert!(
        b.trust_bundle
            .certificates()
            .iter()
            .any(|c| c.as_ref() == successor.as_slice()),
        "B's union lacks A's successor CA"
    );
    // The agent, attached to B only, gets it within its sync interval.
    let successor_pem = lanyard_host::pem::encode("CERTIFICATE", &successor);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bundle = Command::new(AGENT)
            .args(["api", "fetch", "x509-bundle", "--socket", &endpoint])
            .output()?;
        if String::from_utf8_lossy(&bundle.stdout).contains(successor_pem.trim()) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent never got A's successor CA: {}",
            String::from_utf8_lossy(&bundle.stderr)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
