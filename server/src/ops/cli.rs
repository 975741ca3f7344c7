//! Command line of `lanyard-server`.

use std::path::PathBuf;

use crate::config::{ConfigError, ServerConfig};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Where `lanyard-server` verbs find the Admin API when not told.
pub const DEFAULT_ADMIN_SOCKET: &str = "/var/lib/lanyard/server/admin.sock";

#[derive(Debug, Parser)]
#[command(
    name = "lanyard-server",
    version,
    about = "The authority of a Lanyard trust domain"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: Node and Admin APIs, JWT-SVID signing and the OIDC discovery endpoint.
    Run {
        /// Path of server.toml.
        #[arg(long, short, env = "LANYARD_SERVER_CONFIG")]
        config: PathBuf,
    },
    /// Load and validate a config file, then exit.
    CheckConfig {
        #[arg(long, short, env = "LANYARD_SERVER_CONFIG")]
        config: PathBuf,
    },
    /// Manage registration entries.
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Manage join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage attested agents.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Show the trust bundle.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// The issuer as static files, and its certificate thumbprint.
    #[command(subcommand)]
    Oidc(OidcCommand),
    /// Print what to apply on a cloud (or Vault) so that one workload's JWT-SVIDs are trusted there.
    Federation(FederationArgs),
    /// Check that the server answers on its Admin socket and its datastore is reachable.
    Healthcheck {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Args)]
pub struct FederationArgs {
    #[arg(value_enum)]
    pub target: crate::ops::federation::Target,
    /// The workload's SPIFFE ID (the token's `sub`).
    #[arg(long)]
    pub spiffe_id: String,
    /// The token audience the cloud expects; each target has a sensible default.
    #[arg(long)]
    pub audience: Option<String>,
    /// Allow a subject pattern ending in "/*" (AWS, Vault).
    #[arg(long)]
    pub allow_wildcard: bool,
    /// The cloud-side name: AWS role, GCP pool, Azure identity, Vault role.
    #[arg(long)]
    pub name: Option<String>,
    /// The cloud-side container: AWS account ID, GCP project number, Azure resource group, Vault policy.
    #[arg(long)]
    pub account: Option<String>,
    /// Read the issuer and signing algorithm from this server.toml…
    #[arg(long, short, env = "LANYARD_SERVER_CONFIG", conflicts_with = "issuer")]
    pub config: Option<PathBuf>,
    /// …or name the issuer URL directly (with the key type it signs with).
    #[arg(long)]
    pub issuer: Option<String>,
    #[arg(long, default_value = "ec-p256", conflicts_with = "config")]
    pub key_type: crate::keys::KeyType,
    /// AWS: a session tag KEY=TEMPLATE (repeat for several), e.g.
    /// 'unit={{ systemd:unit }}': prints the entry's claims that carry it and
    /// a trust policy that also allows sts:TagSession.
    #[arg(long = "session-tag", visible_alias = "session-tags", value_parser = crate::ops::federation::parse_pair)]
    pub session_tags: Vec<(String, String)>,
    /// GCP: a mapped attribute NAME=TEMPLATE (repeat for several), e.g.
    /// 'unit={{ systemd:unit }}': prints the entry's claims that carry it and
    /// the provider's attribute mapping attribute.NAME=assertion.NAME.
    #[arg(long = "attribute-mapping", value_parser = crate::ops::federation::parse_pair)]
    pub attribute_mapping: Vec<(String, String)>,
}

/// How verbs reach a running server, and how they print.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The server's Admin API socket [default: the one `--config` names, else
    /// $LANYARD_ADMIN_SOCKET, else /var/lib/lanyard/server/admin.sock].
    #[arg(long, conflicts_with = "config")]
    pub socket: Option<PathBuf>,
    /// The server's config file, to reach the Admin socket it configures.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

impl AdminArgs {
    /// The Admin socket to dial: `--socket`, else the one the `--config`
    /// file configures, else `$LANYARD_ADMIN_SOCKET`, else the default.
    pub fn socket_path(&self) -> Result<PathBuf, ConfigError> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        if let Some(config) = &self.config {
            return Ok(ServerConfig::load(config)?.admin.socket);
        }
        Ok(std::env::var_os(ADMIN_SOCKET_ENV)
            .filter(|socket| !socket.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET), PathBuf::from))
    }
}

/// The environment variable that names the Admin socket when neither
/// `--socket` nor `--config` does.
pub const ADMIN_SOCKET_ENV: &str = "LANYARD_ADMIN_SOCKET";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Register a workload: SPIFFE ID ← selectors, under a parent agent.
    Create {
        #[arg(long)]
        spiffe_id: String,
        /// The agent (or node entry) that may serve it; default: the local agent.
        #[arg(long, default_value = "")]
        parent_id: String,
        /// A selector the caller must have, e.g. unix:uid:1000 (repeat for several; all must match).
        #[arg(long = "selector", short = 's', required = true)]
        selectors: Vec<String>,
        /// JWT-SVID lifetime in seconds; default: the server's.
        #[arg(long, default_value_t = 0)]
        jwt_svid_ttl: u32,
        /// X509-SVID lifetime in seconds; default: 3600.
        #[arg(long, default_value_t = 0)]
        x509_svid_ttl: u32,
        /// Handed to workloads with the SVID, to tell identities apart.
        #[arg(long, default_value = "")]
        hint: String,
        /// Claims for its JWT-SVIDs, a JSON object; string values may use
        /// templates over the caller's selectors, e.g.
        /// '{"team": "{{ container:label:team }}", "unit": "{{ systemd:unit }}"}'.
        #[arg(long, default_value = "")]
        claims: String,
        #[arg(long)]
        admin: bool,
        /// A node alias: selects agents by node selectors (e.g.
        /// x509pop:subject:ou:web); entries parented to its SPIFFE ID reach
        /// every agent whose node selectors include all of them.
        #[arg(long, conflicts_with = "parent_id")]
        node: bool,
        #[command(flatten)]
        admin_args: AdminArgs,
    },
    /// Show one entry.
    Show {
        id: String,
        #[command(flatten)]
        admin_args: AdminArgs,
    },
    /// List entries, optionally filtered.
    List {
        #[arg(long, default_value = "")]
        spiffe_id: String,
        #[arg(long, default_value = "")]
        parent_id: String,
        #[arg(long, default_value = "")]
        selector: String,
        #[command(flatten)]
        admin_args: AdminArgs,
    },
    /// Change an entry; fields not given keep their value.
    Update {
        id: String,
        #[arg(long)]
        spiffe_id: Option<String>,
        #[arg(long)]
        parent_id: Option<String>,
        /// Replaces all selectors when given (repeat for several).
        #[arg(long = "selector", short = 's')]
        selectors: Vec<String>,
        #[arg(long)]
        jwt_svid_ttl: Option<u32>,
        #[arg(long)]
        x509_svid_ttl: Option<u32>,
        #[arg(long)]
        hint: Option<String>,
        /// Replaces its claims ('' removes them).
        #[arg(long)]
        claims: Option<String>,
        #[arg(long)]
        admin: Option<bool>,
        #[command(flatten)]
        admin_args: AdminArgs,
    },
    /// Delete an entry; agents stop serving it at their next sync.
    Delete {
        id: String,
        #[command(flatten)]
        admin_args: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a single-use join token for attesting an agent.
    Generate {
        /// The agent ID it grants; default: spiffe://TRUST_DOMAIN/lanyard/agent/join_token/HASH.
        #[arg(long, default_value = "")]
        spiffe_id: String,
        /// Seconds until it expires (default 600, at most 86400).
        #[arg(long, default_value_t = 0)]
        ttl: u32,
        #[command(flatten)]
        admin_args: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List attested agents.
    List {
        #[command(flatten)]
        admin_args: AdminArgs,
    },
    /// Refuse an agent from now on (an x509pop or sshpop node may attest again).
    Evict {
        spiffe_id: String,
        #[command(flatten)]
        admin_args: AdminArgs,
    },
    /// Show one agent: how it attested, its state and its node selectors.
    Show {
        spiffe_id: String,
        #[command(flatten)]
        admin_args: AdminArgs,
    },
    /// Evict an agent and refuse its attestations until `agent unban`.
    Ban {
        spiffe_id: String,
        #[command(flatten)]
        admin_args: AdminArgs,
    },
    /// Let a banned agent attest again (it stays evicted until it does).
    Unban {
        spiffe_id: String,
        #[command(flatten)]
        admin_args: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum OidcCommand {
    /// Write the discovery document and JWKS (and GCP's jwks.json) for a static host.
    Publish {
        /// Directory that maps to the issuer host's root.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        admin_args: AdminArgs,
    },
    /// Print the SHA-1 thumbprint of the top certificate the issuer's host presents (for AWS IAM).
    Thumbprint {
        #[arg(long)]
        issuer: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Print the trust domain's JWKS.
    Show {
        #[command(flatten)]
        admin_args: AdminArgs,
    },
}
