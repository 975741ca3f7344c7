//! A fleet enrolled as production would: the real server and agent binaries,
//! agents that prove themselves with the host certificates they already have
//! (x509pop from an rcgen-made fleet CA, sshpop from `ssh-keygen -s`), node
//! aliases that place them in groups by what they proved, workloads that get
//! identities through those groups, and agents that come back by themselves
//! after an eviction but stay out while banned.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lanyard_tests::fleet::{LeafSpec, SshCa, SshHost, SshKeyType, X509Ca, sha256_hex};
use lanyard_tests::my_uid;
use lanyard_tests::process::{Daemon, free_port};
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_test-lanyard-server");
const AGENT: &str = env!("CARGO_BIN_EXE_test-lanyard-agent");
const PROBE: &str = env!("CARGO_BIN_EXE_workload-probe");

fn admin(dir: &Path, args: &[&str]) -> anyhow::Result<Value> {
    lanyard_tests::process::admin_json(SERVER, &dir.join("server/admin.sock"), args)
}

/// What the probe says for a JWT-SVID of `audience` (a new audience is a new
/// mint at the server; the agent syncs every second).
fn probe(endpoint: &str, audience: &str) -> anyhow::Result<String> {
    let output = Command::new(PROBE)
        .arg(audience)
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Probes with fresh audiences until the probe says `want`, or gives up.
fn probe_until(endpoint: &str, want: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut round = 0u32;
    loop {
        round += 1;
        let said = probe(endpoint, &format!("aud-{round}-{}", std::process::id()))?;
        if said.starts_with(want) {
            return Ok(said);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "probe never said {want:?}; last: {said}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Probes with fresh audiences until a mint is refused, or gives up.
fn probe_until_refused(endpoint: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut round = 0u32;
    loop {
        round += 1;
        let said = probe(endpoint, &format!("refused-{round}-{}", std::process::id()))?;
        if !said.starts_with("ok") {
            return Ok(said);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "mints never stopped; last: {said}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Node {
    _agent: Daemon,
    endpoint: String,
}

/// Starts an agent whose `[server.attestation.…]` table is `attestation`.
fn start_agent(dir: &Path, name: &str, node_port: u16, attestation: &str) -> anyhow::Result<Node> {
    let socket = dir.join(format!("{name}-socket/api.sock"));
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\ndata_dir = \"{}\"\nsync_interval_seconds = 1\n\
             [server]\naddress = \"127.0.0.1:{node_port}\"\ntrust_bundle = \"{}\"\n\
             {attestation}\n[workload_api]\nsocket = \"{}\"\n",
            dir.join(name).display(),
            dir.join("server/ca/bundle.pem").display(),
            socket.display()
        ),
    )?;
    let mut command = Command::new(AGENT);
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info");
    Ok(Node {
        _agent: Daemon::start(command, name, "Workload API listening")?,
        endpoint: format!("unix://{}", socket.display()),
    })
}

#[test]
fn a_fleet_enrols_by_host_certificates_and_groups_by_what_it_proved() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // The fleet's PKI: an X.509 CA and an SSH CA, as config management has them.
    let fleet_ca = X509Ca::root("fleet root")?;
    std::fs::write(d.join("fleet-ca.pem"), &fleet_ca.cert_pem)?;
    let web = fleet_ca.leaf(&LeafSpec::host("web-1.example.org", "web"))?;
    let (web_cert, web_key) = web.write(d, "web-1", "")?;
    let ssh_ca = SshCa::new(d, "ssh-ca", SshKeyType::Ed25519)?;
    let db = SshHost::new(
        d,
        "ssh_host_ed25519_key",
        SshKeyType::Ed25519,
        &ssh_ca,
        &["db-1", "db-1.example.org"],
        true,
        "-5m:+1h",
    )?;

    let (oidc_port, node_port) = (free_port()?, free_port()?);
    std::fs::write(
        d.join("server.toml"),
        format!(
            "trust_domain = \"example.org\"\nissuer = \"https://127.0.0.1:{oidc_port}\"\ndata_dir = \"{}\"\n\
             [oidc]\nlisten = \"127.0.0.1:{oidc_port}\"\n[node_api]\nlisten = \"127.0.0.1:{node_port}\"\n\
             [node_attestation.x509pop]\nca_bundle = \"{}\"\n\
             [node_attestation.sshpop]\ncert_authorities = [\"{}\"]\n",
            d.join("server").display(),
            d.join("fleet-ca.pem").display(),
            ssh_ca.public_line,
        ),
    )?;
    let mut command = Command::new(SERVER);
    command
        .args(["run", "--config"])
        .arg(d.join("server.toml"))
        .env("RUST_LOG", "info");
    let server = Daemon::start(command, "lanyard-server", "lanyard-server is serving")?;

    // Each node attests with what it has: no token was generated or carried.
    let web_node = start_agent(
        d,
        "web-agent",
        node_port,
        &format!(
            "[server.attestation.x509pop]\ncertificate = \"{}\"\nprivate_key = \"{}\"",
            web_cert.display(),
            web_key.display()
        ),
    )?;
    let db_node = start_agent(
        d,
        "db-agent",
        node_port,
        &format!(
            "[server.attestation.sshpop]\nhost_key = \"{}\"\nhost_certificate = \"{}\"",
            db.host_key.display(),
            db.host_certificate.display()
        ),
    )?;
    let web_id = format!(
        "spiffe://example.org/lanyard/agent/x509pop/{}",
        sha256_hex(&web.cert_der)
    );
    let db_id = db.agent_id("example.org")?;
    let shown = admin(d, &["agent", "show", &web_id])?;
    let selectors: Vec<&str> = shown["selectors"]
        .as_array()
        .map(|all| all.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(selectors.contains(&"x509pop:subject:ou:web"), "{shown}");
    let shown = admin(d, &["agent", "show", &db_id])?;
    assert!(
        shown.to_string().contains("sshpop:principal:db-1"),
        "{shown}"
    );

    // Node groups: an alias for the web tier, a workload under it.
    let uid = format!("unix:uid:{}", my_uid());
    admin(
        d,
        &[
            "entry",
            "create",
            "--node",
            "--spiffe-id",
            "spiffe://example.org/fleet/web",
            "-s",
            "x509pop:subject:ou:web",
        ],
    )?;
    admin(
        d,
        &[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/web-app",
            "--parent-id",
            "spiffe://example.org/fleet/web",
            "-s",
            &uid,
        ],
    )?;
    assert_eq!(
        probe_until(&web_node.endpoint, "ok")?,
        "ok spiffe://example.org/web-app"
    );
    // The db node is not in the web tier: it gets nothing…
    let said = probe(&db_node.endpoint, "db-before")?;
    assert!(!said.starts_with("ok"), "the db node got {said}");
    // …until its own group exists.
    admin(
        d,
        &[
            "entry",
            "create",
            "--node",
            "--spiffe-id",
            "spiffe://example.org/fleet/db",
            "-s",
            "sshpop:principal:db-1",
        ],
    )?;
    admin(
        d,
        &[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/db-app",
            "--parent-id",
            "spiffe://example.org/fleet/db",
            "-s",
            &uid,
        ],
    )?;
    assert_eq!(
        probe_until(&db_node.endpoint, "ok")?,
        "ok spiffe://example.org/db-app"
    );

    // Evicted: the node proves itself again, by itself, and serves again.
    admin(d, &["agent", "evict", &web_id])?;
    assert_eq!(
        probe_until(&web_node.endpoint, "ok")?,
        "ok spiffe://example.org/web-app"
    );
    assert_eq!(admin(d, &["agent", "show", &web_id])?["evicted"], false);

    // Banned: it stays out (new mints fail) until unbanned.
    admin(d, &["agent", "ban", &db_id])?;
    let shown = admin(d, &["agent", "show", &db_id])?;
    assert_eq!(shown["banned"], true, "{shown}");
    let refused = probe_until_refused(&db_node.endpoint)?;
    assert!(
        refused.starts_with("error") || refused.starts_with("denied"),
        "{refused}"
    );
    admin(d, &["agent", "unban", &db_id])?;
    assert_eq!(
        probe_until(&db_node.endpoint, "ok")?,
        "ok spiffe://example.org/db-app"
    );
    assert!(server.terminate()?);
    Ok(())
}
