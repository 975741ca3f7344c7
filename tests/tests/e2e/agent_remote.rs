//! An agent on its own, as in production: the real binaries, a join token
//! from `lanyard-server token generate`, mTLS to the server, an SVID kept in
//! the agent's data dir across restarts, and eviction taking effect.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lanyard_tests::my_uid;
use lanyard_tests::process::{Daemon, free_port};
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_test-lanyard-server");
const AGENT: &str = env!("CARGO_BIN_EXE_test-lanyard-agent");
const PROBE: &str = env!("CARGO_BIN_EXE_workload-probe");
const AGENT_ID: &str = "spiffe://example.org/node/n1";

fn admin(dir: &Path, args: &[&str]) -> anyhow::Result<Value> {
    lanyard_tests::process::admin_json(SERVER, &dir.join("server/admin.sock"), args)
}

/// Runs the probe until it prints `want` (the agent syncs every second), or gives up.
fn probe_until(endpoint: &str, want: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = Command::new(PROBE)
            .arg("remote-aud")
            .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
            .output()?;
        let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if said.starts_with(want) {
            return Ok(said);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "probe never said {want:?}; last: {said}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn agent_attests_once_and_survives_restarts_until_evicted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (oidc_port, node_port) = (free_port()?, free_port()?);
    let server_toml = dir.path().join("server.toml");
    std::fs::write(
        &server_toml,
        format!(
            "trust_domain = \"example.org\"\nissuer = \"https://127.0.0.1:{oidc_port}\"\ndata_dir = \"{}\"\n\
             [oidc]\nlisten = \"127.0.0.1:{oidc_port}\"\n[node_api]\nlisten = \"127.0.0.1:{node_port}\"\n",
            dir.path().join("server").display()
        ),
    )?;
    let mut command = Command::new(SERVER);
    command
        .args(["run", "--config", server_toml.to_str().unwrap_or_default()])
        .env("RUST_LOG", "info");
    let server = Daemon::start(command, "lanyard-server", "lanyard-server is serving")?;

    let token = admin(dir.path(), &["token", "generate", "--spiffe-id", AGENT_ID])?;
    let token = token["token"].as_str().unwrap_or_default().to_owned();
    let agent_dir = dir.path().join("agent");
    let socket = dir.path().join("agent-socket/api.sock");
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "trust_domain = \"example.org\"\ndata_dir = \"{}\"\nsync_interval_seconds = 1\n\
             [server]\naddress = \"127.0.0.1:{node_port}\"\ntrust_bundle = \"{}\"\n[workload_api]\nsocket = \"{}\"\n",
            agent_dir.display(),
            dir.path().join("server/ca/bundle.pem").display(),
            socket.display()
        ),
    )?;
    let start_agent = |join_token: Option<&str>| {
        let mut command = Command::new(AGENT);
        command
            .args(["run", "--config", agent_toml.to_str().unwrap_or_default()])
            .env("RUST_LOG", "info");
        if let Some(token_file) = join_token {
            command.args(["--join-token-file", token_file]);
        }
        Daemon::start(command, "lanyard-agent", "Workload API listening")
    };

    // No SVID and no token: a clear refusal, not a hang.
    let refused = Command::new(AGENT)
        .args(["run", "--config", agent_toml.to_str().unwrap_or_default()])
        .output()?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("join token"));

    // On the command line a token is readable by every local user in
    // /proc/<pid>/cmdline: refused before anything is redeemed.
    let on_argv = Command::new(AGENT)
        .args(["run", "--config", agent_toml.to_str().unwrap_or_default()])
        .args(["--join-token", &token])
        .output()?;
    assert!(!on_argv.status.success());
    let said = String::from_utf8_lossy(&on_argv.stderr);
    assert!(
        said.contains("process list") && said.contains("--join-token-file"),
        "{said}"
    );
    // A token file others may read is refused too.
    let token_file = dir.path().join("join-token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644))?;
    let token_path = token_file.to_str().unwrap_or_default();
    let loose = Command::new(AGENT)
        .args(["run", "--config", agent_toml.to_str().unwrap_or_default()])
        .args(["--join-token-file", token_path])
        .output()?;
    assert!(!loose.status.success());
    let said = String::from_utf8_lossy(&loose.stderr);
    assert!(said.contains("--join-token-file"), "{said}");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;

    // The token survived both refusals: it attests now.
    let agent = start_agent(Some(token_path))?;
    let agents = admin(dir.path(), &["agent", "list"])?;
    assert_eq!(agents[0]["spiffe_id"], AGENT_ID);
    admin(
        dir.path(),
        &[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/remote",
            "--parent-id",
            AGENT_ID,
            "-s",
            &format!("unix:uid:{}", my_uid()),
        ],
    )?;
    let endpoint = format!("unix://{}", socket.display());
    assert_eq!(
        probe_until(&endpoint, "ok")?,
        "ok spiffe://example.org/remote"
    );
    let key = agent_dir.join(lanyard_agent::upstream::CREDENTIALS_FILE);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions()) & 0o777,
        0o600
    );
    assert!(agent.terminate()?);

    // A restart uses the stored SVID: no token (the used one would be refused anyway).
    let agent = start_agent(None)?;
    assert_eq!(
        probe_until(&endpoint, "ok")?,
        "ok spiffe://example.org/remote"
    );

    // A renewal whose answer never arrived: the server moved on to a
    // successor SVID that the agent never saved. Restarted with the old one,
    // the agent is told it may only renew, renews at once and serves again.
    assert!(agent.terminate()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = lanyard_agent::upstream::ServerEndpoint::new(
            &format!("127.0.0.1:{node_port}"),
            &dir.path().join("server/ca/bundle.pem"),
        )?;
        let stored = lanyard_agent::upstream::AgentCredentials::load(&agent_dir)?
            .ok_or_else(|| anyhow::anyhow!("no stored agent SVID"))?;
        let _lost = lanyard_agent::upstream::renew(&server, &stored).await?;
        anyhow::Ok(())
    })?;
    drop(runtime);
    let agent = start_agent(None)?;
    assert_eq!(
        probe_until(&endpoint, "ok")?,
        "ok spiffe://example.org/remote"
    );

    // Evicted: the server refuses the agent; a new identity cannot be minted.
    admin(dir.path(), &["agent", "evict", AGENT_ID])?;
    let denied = Command::new(PROBE)
        .arg("a-new-audience")
        .env("SPIFFE_ENDPOINT_SOCKET", &endpoint)
        .output()?;
    let said = String::from_utf8_lossy(&denied.stdout);
    assert!(
        !denied.status.success(),
        "evicted agent still minted: {said}"
    );
    assert!(agent.terminate()?);
    assert!(server.terminate()?);
    Ok(())
}
