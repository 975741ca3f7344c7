//! An HA group as production runs it: several real server binaries on one
//! PostgreSQL, real agent processes that know every server, real workloads.
//! Servers start together on an empty database; one is killed with SIGKILL
//! in the middle of the load and comes back; the database goes away and
//! returns. PostgreSQL comes from `.ci/postgres.sh` (skipped with a note on a
//! machine without it, never in CI).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
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
    node_port: u16,
    oidc_port: u16,
    process: Option<Daemon>,
}

impl GroupServer {
    fn configure(root: &Path, name: &str, datastore_url: &str) -> anyhow::Result<Self> {
        let (oidc_port, node_port) = (free_port()?, free_port()?);
        let dir = root.join(name);
        let config = root.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"example.org\"\nserver_id = \"{name}\"\n\
                 issuer = \"https://127.0.0.1:{oidc_port}\"\ndata_dir = \"{}\"\n\
                 [oidc]\nlisten = \"127.0.0.1:{oidc_port}\"\n\
                 [node_api]\nlisten = \"127.0.0.1:{node_port}\"\n\
                 [datastore]\nurl = \"{datastore_url}\"\n",
                dir.display()
            ),
        )?;
        Ok(Self {
            name: name.to_owned(),
            dir,
            config,
            node_port,
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
        format!("127.0.0.1:{}", self.node_port)
    }
}

/// Three servers configured on `datastore_url` under `root` (not started).
fn group(root: &Path, datastore_url: &str) -> anyhow::Result<Vec<GroupServer>> {
    ["lanyard-1", "lanyard-2", "lanyard-3"]
        .into_iter()
        .map(|name| GroupServer::configure(root, name, datastore_url))
        .collect()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_load_goes_unnoticed_and_rejoins() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(url) = postgres_database(dir.path()).await? else {
        return Ok(());
    };
    let d = dir.path();
    let mut servers = group(d, &url)?;
    start_together(&mut servers)?;

    // One agent that knows the whole group, attested with a token from the first.
    let token = servers[0].admin(&[
        "token",
        "generate",
        "--spiffe-id",
        "spiffe://example.org/node/n1",
    ])?;
    let token_file = d.join("join-token");
    lanyard_tests::fleet::write_private(
        &token_file,
        token["token"].as_str().context("a token")?.as_bytes(),
    )?;
    let addresses: Vec<String> = servers
        .iter()
        .map(|s| format!("\"{}\"", s.address()))
        .collect();
    let socket = d.join("agent-socket/api.sock");
    let agent_toml = d.join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "trust_domain = \"example.org\"\ndata_dir = \"{}\"\nsync_interval_seconds = 1\n\
             [server]\naddresses = [{}]\ntrust_bundle = \"{}\"\njoin_token_file = \"{}\"\n\
             request_timeout_seconds = {REQUEST_TIMEOUT_SECONDS}\n\
             [workload_api]\nsocket = \"{}\"\n",
            d.join("agent").display(),
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
    let _agent = Daemon::start(command, "lanyard-agent", "Workload API listening")?;
    servers[1].admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/ha-app",
        "--parent-id",
        "spiffe://example.org/node/n1",
        "-s",
        &format!("unix:uid:{}", my_uid()),
    ])?;
    let endpoint = format!("unix://{}", socket.display());
    let deadline = Instant::now() + Duration::from_secs(30);
    let cached = loop {
        let said = probe(&endpoint, "ha-cached")?;
        if said.starts_with("ok") {
            break said;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the workload never got its SVID: {said}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tokens: Vec<String> = token_of(&cached).map(str::to_owned).into_iter().collect();
    wait_for_one_bundle(&servers, &endpoint).await?;
    for i in 0..6 {
        let said = probe(&endpoint, &format!("ha-before-{i}"))?;
        tokens.push(
            token_of(&said)
                .with_context(|| format!("mint before: {said}"))?
                .to_owned(),
        );
    }

    // SIGKILL of one server, in the middle of the load.
    let killed = servers[0].process.take().context("the first server runs")?;
    drop(killed);

    // Cached fetches never notice.
    for _ in 0..20 {
        let said = probe(&endpoint, "ha-cached")?;
        assert!(
            said.starts_with("ok"),
            "a cached fetch failed after the kill: {said}"
        );
    }
    // Uncached mints work again within twice the request timeout.
    let killed_at = Instant::now();
    let budget = Duration::from_secs(2 * REQUEST_TIMEOUT_SECONDS);
    let mut round = 0;
    let minted = loop {
        round += 1;
        let said = probe(&endpoint, &format!("ha-after-{round}"))?;
        if let Some(token) = token_of(&said) {
            break token.to_owned();
        }
        anyhow::ensure!(
            killed_at.elapsed() < budget,
            "no mint within {budget:?} of the kill; last: {said}"
        );
    };
    tokens.push(minted);

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
    let said = probe(&endpoint, "ha-rejoined")?;
    assert!(said.starts_with("ok"), "{said}");
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

/// Runs `sql` on the PostgreSQL server of `LANYARD_TEST_POSTGRES_URL` (its
/// own database, not the one under test).
async fn on_postgres(sql: String) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let base = std::env::var("LANYARD_TEST_POSTGRES_URL")?;
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&base)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Takes database `name` away from its clients (no new connections, every
/// open one cut), as a failover or restart looks from the server, or gives
/// it back.
async fn database_away(name: &str, away: bool) -> anyhow::Result<()> {
    on_postgres(format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {}",
        !away
    ))
    .await?;
    if away {
        on_postgres(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .await?;
    }
    Ok(())
}

/// Creates entry `path` through the server's Admin CLI: Ok(true) when
/// acknowledged, Ok(false) when refused as unavailable, else an error.
fn create_entry(server: &GroupServer, path: &str) -> anyhow::Result<bool> {
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
        .arg(server.dir.join("admin.sock"))
        .output()?;
    if output.status.success() {
        return Ok(true);
    }
    let said = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(said.contains("Unavailable"), "{path}: {said}");
    Ok(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_ride_out_a_database_outage_by_themselves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(url) = postgres_database(dir.path()).await? else {
        return Ok(());
    };
    let name = url
        .rsplit('/')
        .next()
        .context("a database name")?
        .to_owned();
    let mut servers = group(dir.path(), &url)?;
    servers.truncate(2);
    start_together(&mut servers)?;
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let path = format!("/before/{i}");
        if create_entry(&servers[i % 2], &path)? {
            acknowledged.push(path);
        }
    }
    assert_eq!(
        acknowledged.len(),
        10,
        "every write before the outage is acknowledged"
    );

    database_away(&name, true).await?;
    // While it is away: discovery and JWKS are served from memory, writes are
    // refused as unavailable at once rather than hanging.
    for server in &servers {
        let client = https_client_trusting(&server.dir.join("oidc-tls-cert.pem"))?;
        let jwks = client
            .get(format!("https://127.0.0.1:{}/keys", server.oidc_port))
            .send()
            .await?;
        assert!(
            jwks.status().is_success(),
            "{}: {}",
            server.name,
            jwks.status()
        );
    }
    let mut unacknowledged = Vec::new();
    for i in 0..4 {
        let path = format!("/during/{i}");
        let started = Instant::now();
        match create_entry(&servers[i % 2], &path)? {
            true => acknowledged.push(path),
            false => unacknowledged.push(path),
        }
        // A hang guard, not a timing figure: the pool gives up within seconds.
        assert!(started.elapsed() < Duration::from_secs(30), "a write hung");
    }
    assert!(!unacknowledged.is_empty(), "the outage was not seen");

    database_away(&name, false).await?;
    // Each server reconnects by itself: writes are acknowledged again.
    for server in &servers {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut i = 0;
        loop {
            i += 1;
            let path = format!("/after/{}/{i}", server.name);
            if create_entry(server, &path)? {
                acknowledged.push(path);
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{} never recovered", server.name);
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    // No acknowledged write is lost, and none appears twice.
    let listed = servers[0].admin(&["entry", "list"])?;
    let ids: Vec<&str> = listed
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|entry| entry["spiffe_id"].as_str())
        .collect();
    for path in &acknowledged {
        let id = format!("spiffe://example.org{path}");
        assert_eq!(
            ids.iter().filter(|listed| **listed == id).count(),
            1,
            "{id} once: {ids:?}"
        );
    }
    for path in &unacknowledged {
        let id = format!("spiffe://example.org{path}");
        assert!(
            ids.iter().filter(|listed| **listed == id).count() <= 1,
            "{id} twice"
        );
    }
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
