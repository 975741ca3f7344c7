//! Quickstart: a whole trust domain on this machine with embedded defaults.
//!
//! Starts lanyard-server (entries from its config file, self-signed TLS)
//! and lanyard-agent in this process, registers the current user, prints a
//! JWT-SVID fetched through the Workload API, and keeps serving until Ctrl-C.
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_agent::config::AgentConfig;
use lanyard_server::config::ServerConfig;
use spiffe::WorkloadApiClient;
use tokio::net::TcpListener;

const TRUST_DOMAIN: &str = "lanyard.local";
const PREFERRED_OIDC_ADDR: &str = "127.0.0.1:8443";
const AUDIENCE: &str = "quickstart";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let state_dir = state_dir();
    lanyard_host::private_files::ensure_private_dir(&state_dir)?;
    let listener = bind_oidc().await?;
    let oidc_addr = listener.local_addr()?;
    let issuer = format!("https://{oidc_addr}");
    let uid = nix::unistd::geteuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .filter(|name| {
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .unwrap_or_else(|| format!("uid-{uid}"));
    let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/user/{user}");

    let server_toml = state_dir.join("server.toml");
    let agent_toml = state_dir.join("agent.toml");
    let socket = state_dir.join("agent/api.sock");
    write_configs(
        &state_dir,
        &issuer,
        oidc_addr,
        &spiffe_id,
        uid.as_raw(),
        &socket,
    )?;

    // Both configs load before anything starts: a state directory the agent's
    // socket cannot live in is refused up front, naming where it came from.
    let in_state_dir = || {
        format!(
            "the quickstart's state directory {} (set LANYARD_QUICKSTART_DIR to choose another)",
            state_dir.display()
        )
    };
    let server_config = ServerConfig::load(&server_toml).with_context(in_state_dir)?;
    let agent_config = AgentConfig::load(&agent_toml).with_context(in_state_dir)?;
    let server = lanyard_server::start_with_listener(server_config, listener).await?;
    let agent = lanyard_agent::start(agent_config).await?;

    let client = WorkloadApiClient::connect_to(agent.endpoint()).await?;
    let svid = client
        .fetch_jwt_svid([AUDIENCE], None)
        .await
        .context("fetching a JWT-SVID for this user")?;
    let token = svid.token();
    let cert = server
        .oidc_self_signed_cert
        .clone()
        .unwrap_or_else(|| state_dir.join("server/oidc-tls-cert.pem"));

    println!("Lanyard is running: trust domain {TRUST_DOMAIN}, issuer {issuer}\n");
    println!(
        "JWT-SVID for {} (audience {AUDIENCE:?}):\n\n{token}\n",
        svid.spiffe_id()
    );
    if let Some(claims) = token
        .split('.')
        .nth(1)
        .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
    {
        println!("Claims: {}\n", String::from_utf8_lossy(&claims));
    }
    println!("Fetch more (from another terminal, as this user):");
    println!(
        "  SPIFFE_ENDPOINT_SOCKET={} cargo run -q -p lanyard-agent -- api fetch jwt --audience my-audience",
        agent.endpoint()
    );
    println!("Verify as a cloud STS would:");
    println!(
        "  curl --cacert {} {issuer}/.well-known/openid-configuration",
        cert.display()
    );
    println!("  curl --cacert {} {issuer}/keys", cert.display());
    println!("Run the same setup as separate processes:");
    println!(
        "  cargo run -p lanyard-server -- run --config {}",
        server_toml.display()
    );
    println!(
        "  cargo run -p lanyard-agent -- run --config {}",
        agent_toml.display()
    );
    println!(
        "\nServing until Ctrl-C. State is kept in {}",
        state_dir.display()
    );

    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    agent.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// `$LANYARD_QUICKSTART_DIR`, else `$XDG_STATE_HOME/lanyard/quickstart`, else
/// `~/.local/state/lanyard/quickstart`.
fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LANYARD_QUICKSTART_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("lanyard/quickstart")
}

/// The usual port when it is free (so the issuer stays the same across runs), else any.
async fn bind_oidc() -> anyhow::Result<TcpListener> {
    match TcpListener::bind(PREFERRED_OIDC_ADDR).await {
        Ok(listener) => Ok(listener),
        Err(_) => Ok(TcpListener::bind("127.0.0.1:0").await?),
    }
}

/// `path` as a TOML string, quoted and escaped; a path that is not UTF-8
/// cannot be written into the config faithfully, so it is refused.
fn toml_path(path: &Path) -> anyhow::Result<String> {
    let text = path.to_str().with_context(|| {
        format!(
            "{} is not UTF-8; set LANYARD_QUICKSTART_DIR to a UTF-8 path",
            path.display()
        )
    })?;
    Ok(toml::Value::String(text.to_owned()).to_string())
}

fn write_configs(
    state_dir: &Path,
    issuer: &str,
    oidc_addr: SocketAddr,
    spiffe_id: &str,
    uid: u32,
    socket: &Path,
) -> anyhow::Result<()> {
    let server = format!(
        r#"# Written by the Lanyard quickstart.
trust_domain = "{TRUST_DOMAIN}"
issuer = "{issuer}"
data_dir = {data_dir}

[oidc]
listen = "{oidc_addr}"

[[entries]]
spiffe_id = "{spiffe_id}"
selectors = ["unix:uid:{uid}"]
"#,
        data_dir = toml_path(&state_dir.join("server"))?,
    );
    let agent = format!(
        r#"# Written by the Lanyard quickstart.
trust_domain = "{TRUST_DOMAIN}"

[server]
node_socket = {node_socket}

[workload_api]
socket = {socket}
"#,
        node_socket = toml_path(&state_dir.join("server/node.sock"))?,
        socket = toml_path(socket)?,
    );
    std::fs::write(state_dir.join("server.toml"), server)?;
    std::fs::write(state_dir.join("agent.toml"), agent)?;
    Ok(())
}
