//! A real trust domain on this machine for end-to-end tests: a server and an
//! agent in-process, on real sockets, with real TLS and a real data dir.
#![allow(
    unused_crate_dependencies,
    reason = "this package also builds the daemons, the examples, the probes and the bench as binaries (so the e2e tests can run them), and they share one dependency list with this support library"
)]

pub mod blackhole;
pub mod cgroups;
pub mod emulators;
pub mod fleet;
pub mod private_postgres;
pub mod probe;
pub mod process;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use lanyard_agent::RunningAgent;
use lanyard_agent::config::AgentConfig;
use lanyard_server::RunningServer;
use lanyard_server::config::ServerConfig;
use tokio::net::TcpListener;

use crate::emulators::IssuerTrust;

pub const TRUST_DOMAIN: &str = "example.org";

/// A registration entry to put in the server's config.
#[derive(Debug, Clone)]
pub struct EntrySpec {
    pub spiffe_id: String,
    pub selectors: Vec<String>,
    /// The entry's X509-SVID lifetime; the server's default when None.
    pub x509_svid_ttl_seconds: Option<u32>,
    /// The entry's claims (a JSON object).
    pub claims: Option<serde_json::Value>,
}

impl EntrySpec {
    /// An entry at `path` for every process of this test's uid.
    pub fn mine(path: &str) -> Self {
        Self::new(path, &[&format!("unix:uid:{}", my_uid())])
    }

    pub fn new(path: &str, selectors: &[&str]) -> Self {
        Self {
            spiffe_id: format!("spiffe://{TRUST_DOMAIN}{path}"),
            selectors: selectors.iter().map(|s| s.to_string()).collect(),
            x509_svid_ttl_seconds: None,
            claims: None,
        }
    }

    /// The same entry with `claims` in its JWT-SVIDs.
    pub fn with_claims(mut self, claims: serde_json::Value) -> Self {
        self.claims = Some(claims);
        self
    }

    /// The same entry with X509-SVIDs of `seconds`.
    pub fn with_x509_ttl(mut self, seconds: u32) -> Self {
        self.x509_svid_ttl_seconds = Some(seconds);
        self
    }
}

#[derive(Debug)]
pub struct World {
    pub dir: tempfile::TempDir,
    pub issuer: String,
    pub server: RunningServer,
    pub agent: RunningAgent,
    server_toml: String,
}

impl World {
    /// Starts a server whose issuer lives under `issuer_path` (e.g. "/tenant")
    /// with `entries` parented to the local agent, then the agent.
    pub async fn start(issuer_path: &str, entries: &[EntrySpec]) -> anyhow::Result<Self> {
        Self::start_with_agent_tables(issuer_path, entries, "").await
    }

    /// As `start`, with `agent_tables` (whole TOML tables, e.g.
    /// `[workload_attestor]…`) appended to the agent's config.
    pub async fn start_with_agent_tables(
        issuer_path: &str,
        entries: &[EntrySpec],
        agent_tables: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with_agent_config(issuer_path, entries, "", agent_tables).await
    }

    /// As `start`, with `agent_top` (top-level keys, e.g. `sync_interval_seconds = 1`)
    /// and `agent_tables` added to the agent's config.
    pub async fn start_with_agent_config(
        issuer_path: &str,
        entries: &[EntrySpec],
        agent_top: &str,
        agent_tables: &str,
    ) -> anyhow::Result<Self> {
        Self::start_configured(issuer_path, entries, "", agent_top, agent_tables).await
    }

    /// As `start`, with `server_tables` (whole TOML tables, e.g.
    /// `[jwt]\nkey_type = "rsa-2048"`) appended to the server's config.
    pub async fn start_with_server_tables(
        issuer_path: &str,
        entries: &[EntrySpec],
        server_tables: &str,
    ) -> anyhow::Result<Self> {
        Self::start_configured(issuer_path, entries, server_tables, "", "").await
    }

    /// As `start`, with `server_tables` appended to the server's config and
    /// `agent_tables` to the agent's (after its `[workload_api]` socket line).
    pub async fn start_with_tables(
        issuer_path: &str,
        entries: &[EntrySpec],
        server_tables: &str,
        agent_tables: &str,
    ) -> anyhow::Result<Self> {
        Self::start_configured(issuer_path, entries, server_tables, "", agent_tables).await
    }

    async fn start_configured(
        issuer_path: &str,
        entries: &[EntrySpec],
        server_tables: &str,
        agent_top: &str,
        agent_tables: &str,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        // Workload sockets must be reachable by any uid, so the tree is 0755.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let issuer = format!(
            "https://127.0.0.1:{}{issuer_path}",
            listener.local_addr()?.port()
        );
        let server_config = format!(
            "{}\n{server_tables}\n",
            server_toml(dir.path(), &issuer, entries)
        );
        let config = ServerConfig::from_toml(&server_config, "test server.toml")?;
        let server = lanyard_server::start_with_listener(config, listener).await?;
        let agent_config = format!(
            "trust_domain = \"{TRUST_DOMAIN}\"\n{agent_top}\n[server]\nnode_socket = \"{}\"\n[workload_api]\nsocket = \"{}\"\n{agent_tables}",
            server.node_socket.display(),
            dir.path().join("agent/api.sock").display(),
        );
        let agent =
            lanyard_agent::start(AgentConfig::from_toml(&agent_config, "test agent.toml")?).await?;
        Ok(Self {
            dir,
            issuer,
            server,
            agent,
            server_toml: server_config,
        })
    }

    /// Stops the server only; the agent keeps running and the server's data
    /// dir stays, so `ServerDown::restart_server` brings the same server back.
    pub async fn stop_server(self) -> ServerDown {
        self.server.shutdown().await;
        ServerDown {
            dir: self.dir,
            issuer: self.issuer,
            agent: self.agent,
            server_toml: self.server_toml,
        }
    }

    pub fn endpoint(&self) -> String {
        self.agent.endpoint()
    }

    /// An HTTPS client that trusts exactly the server's self-signed certificate.
    pub fn https_client(&self) -> anyhow::Result<reqwest::Client> {
        https_client_trusting(self.self_signed_cert()?)
    }

    /// How a cloud emulator reaches this world's issuer: its URL, and its
    /// self-signed certificate as the only CA.
    pub fn issuer_trust(&self) -> anyhow::Result<IssuerTrust> {
        Ok(IssuerTrust {
            issuer: self.issuer.clone(),
            ca_pem: std::fs::read(self.self_signed_cert()?)?,
        })
    }

    fn self_signed_cert(&self) -> anyhow::Result<&Path> {
        self.server
            .oidc_self_signed_cert
            .as_deref()
            .context("server has no self-signed certificate")
    }

    pub async fn stop(self) {
        self.agent.shutdown().await;
        self.server.shutdown().await;
    }
}

/// A `World` whose server is stopped.
#[derive(Debug)]
pub struct ServerDown {
    pub dir: tempfile::TempDir,
    pub issuer: String,
    pub agent: RunningAgent,
    server_toml: String,
}

impl ServerDown {
    pub fn endpoint(&self) -> String {
        self.agent.endpoint()
    }

    /// Starts the server again with the same config: same data dir, node
    /// socket and OIDC port.
    pub async fn restart_server(self) -> anyhow::Result<World> {
        let port = self
            .issuer
            .strip_prefix("https://127.0.0.1:")
            .and_then(|rest| rest.split('/').next())
            .context("issuer is not https://127.0.0.1:<port>")?
            .parse::<u16>()?;
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let config = ServerConfig::from_toml(&self.server_toml, "test server.toml")?;
        let server = lanyard_server::start_with_listener(config, listener).await?;
        Ok(World {
            dir: self.dir,
            issuer: self.issuer,
            server,
            agent: self.agent,
            server_toml: self.server_toml,
        })
    }

    pub async fn stop(self) {
        self.agent.shutdown().await;
    }
}

fn server_toml(dir: &Path, issuer: &str, entries: &[EntrySpec]) -> String {
    let data_dir: PathBuf = dir.join("server");
    let mut text = format!(
        "trust_domain = \"{TRUST_DOMAIN}\"\nissuer = \"{issuer}\"\ndata_dir = \"{}\"\n",
        data_dir.display()
    );
    for entry in entries {
        let selectors: Vec<String> = entry.selectors.iter().map(|s| format!("\"{s}\"")).collect();
        text.push_str(&format!(
            "\n[[entries]]\nspiffe_id = \"{}\"\nselectors = [{}]\n",
            entry.spiffe_id,
            selectors.join(", ")
        ));
        if let Some(ttl) = entry.x509_svid_ttl_seconds {
            text.push_str(&format!("x509_svid_ttl_seconds = {ttl}\n"));
        }
        if let Some(claims) = &entry.claims {
            // An inline table, as an operator may write it.
            let table = toml::Value::try_from(claims)
                .unwrap_or_else(|e| toml::Value::String(format!("claims cannot be TOML: {e}")));
            text.push_str(&format!("claims = {table}\n"));
        }
    }
    text
}

/// An HTTPS client that trusts only the PEM certificate at `cert_path`.
pub fn https_client_trusting(cert_path: &Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(cert_path)?;
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .build()?)
}

/// Datastore URLs every server-level e2e test runs against: a SQLite file in
/// `dir`, and a fresh PostgreSQL database when `LANYARD_TEST_POSTGRES_URL`
/// names a server (CI always does; elsewhere it is skipped with a note).
pub async fn datastore_urls(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut urls = vec![format!(
        "sqlite://{}?mode=rwc",
        dir.join("e2e.sqlite3").display()
    )];
    urls.extend(postgres_database(dir).await?);
    Ok(urls)
}

/// A fresh PostgreSQL database (named after `dir`) on the server that
/// `LANYARD_TEST_POSTGRES_URL` names: None, with a note, when it is not set
/// outside CI; an error when `CI` is set without it.
pub async fn postgres_database(dir: &Path) -> anyhow::Result<Option<String>> {
    let base = match std::env::var("LANYARD_TEST_POSTGRES_URL") {
        Ok(base) => base,
        Err(_) if std::env::var_os("CI").is_some() => {
            anyhow::bail!(
                "CI is set but LANYARD_TEST_POSTGRES_URL is not: PostgreSQL tests must run in CI"
            )
        }
        Err(_) => {
            eprintln!("PostgreSQL e2e run skipped: LANYARD_TEST_POSTGRES_URL is not set");
            return Ok(None);
        }
    };
    sqlx::any::install_default_drivers();
    let admin = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&base)
        .await?;
    let name = format!(
        "lanyard_e2e_{}_{}",
        std::process::id(),
        dir.file_name()
            .map(|n| n
                .to_string_lossy()
                .to_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), ""))
            .unwrap_or_default()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    admin.close().await;
    let (prefix, _) = base
        .rsplit_once('/')
        .context("LANYARD_TEST_POSTGRES_URL has no database path")?;
    Ok(Some(format!("{prefix}/{name}")))
}

/// PEM text as DER blocks: certificates and PKCS#8 keys, in order.
pub fn pem_to_der(text: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    rustls_pemfile::read_all(&mut text.as_bytes())
        .map(|item| match item? {
            rustls_pemfile::Item::X509Certificate(der) => Ok(der.to_vec()),
            rustls_pemfile::Item::Pkcs8Key(der) => Ok(der.secret_pkcs8_der().to_vec()),
            other => anyhow::bail!("unexpected PEM item {other:?}"),
        })
        .collect()
}

/// The effective uid of this process.
pub fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}
