//! `agent.toml`: read, typed and validated at load, every error naming its key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_host::config_file::{self, ConfigError, invalid};
use lanyard_host::logging::{LogConfig, RawLog};
use lanyard_host::private_files::FsError;
use lanyard_host::rate_limit::RateLimit;
use lanyard_host::telemetry::RawTelemetry;
pub use lanyard_host::telemetry::TelemetryConfig;
use lanyard_proto::TrustDomain;
use serde::Deserialize;

pub const DEFAULT_SOCKET: &str = "/run/lanyard/agent/api.sock";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/lanyard/agent";
const DEFAULT_SYNC_INTERVAL_SECONDS: u32 = 5;
const DEFAULT_REQUEST_TIMEOUT_SECONDS: u32 = 5;
const DEFAULT_JWT_SVID_CACHE_SIZE: usize = 1000;

/// Default largest executable hashed for `unix:sha256` (bigger ones get no such selector).
pub const DEFAULT_MAX_BINARY_BYTES: u64 = 256 * 1024 * 1024;

/// The `[workload_attestor]` table of agent.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnixAttestorConfig {
    /// Emit `unix:path:<executable>`.
    pub path_selectors: bool,
    /// Emit `unix:sha256:<hex digest of the executable>`.
    pub sha256_selectors: bool,
    pub max_binary_bytes: u64,
}

impl UnixAttestorConfig {
    /// Whether callers' executables are looked at, so must be recorded when
    /// they connect (a stat each; skipped when binary selectors are off).
    pub fn needs_connected_exe(&self) -> bool {
        self.path_selectors || self.sha256_selectors
    }
}

/// Default longest wait for the container engine's answer about one container.
pub const DEFAULT_CONTAINER_ENGINE_TIMEOUT_SECONDS: u32 = 2;

/// `[workload_attestor.containers]`: the container engine whose Docker
/// Engine API (served by Docker and by Podman) names a caller's container:
/// `container:image`, `image_id`, `name` and `label` selectors come from it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContainerEngineConfig {
    /// The engine's Unix socket, e.g. `/run/podman/podman.sock`.
    pub api_socket: PathBuf,
    /// Longest wait for one answer (connect, request and body).
    pub timeout: Duration,
}

impl ContainerEngineConfig {
    pub fn new(api_socket: PathBuf, timeout: Duration) -> Self {
        Self {
            api_socket,
            timeout,
        }
    }
}

impl Default for UnixAttestorConfig {
    fn default() -> Self {
        Self {
            path_selectors: false,
            sha256_selectors: false,
            max_binary_bytes: DEFAULT_MAX_BINARY_BYTES,
        }
    }
}

/// Why a join token could not be read from its file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinTokenError {
    #[error(transparent)]
    File(#[from] FsError),
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is not UTF-8 text")]
    NotText(PathBuf),
    #[error("{0} is empty")]
    Empty(PathBuf),
}

/// Whether `address` is `host:port`.
pub(crate) fn is_host_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// Where the join token comes from. A file is read only when the agent has
/// no SVID to use, so it may be removed after the first attestation.
#[derive(Clone, PartialEq, Eq)]
pub enum JoinToken {
    Value(String),
    File(PathBuf),
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never the token: its fingerprint at most.
            Self::Value(token) => f
                .debug_tuple("Value")
                .field(&format_args!(
                    "sha256:{}…",
                    lanyard_host::logging::secret_fingerprint(token)
                ))
                .finish(),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl JoinToken {
    pub fn read(&self) -> Result<String, JoinTokenError> {
        match self {
            Self::Value(token) => Ok(token.clone()),
            Self::File(path) => read_join_token_file(path),
        }
    }
}

/// The join token in `path`: a file only its owner may read (0600 or
/// stricter), since whoever reads the token first can attest as this node.
pub fn read_join_token_file(path: &Path) -> Result<String, JoinTokenError> {
    let bytes = lanyard_host::private_files::read_private_file(path)?
        .ok_or_else(|| JoinTokenError::Missing(path.to_owned()))?;
    let token = String::from_utf8(bytes)
        .map_err(|_| JoinTokenError::NotText(path.to_owned()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(JoinTokenError::Empty(path.to_owned()));
    }
    Ok(token)
}

/// How the node proves who it is to a remote server when it has no usable
/// agent SVID (`[server]` join token keys, or one `[server.attestation.*]`
/// table). Every file is read at each attestation, not at load: host
/// certificates rotate on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeAttestation {
    /// A single-use token from `lanyard-server token generate`.
    JoinToken(JoinToken),
    /// `[server.attestation.x509pop]`: an X.509 host certificate and its key.
    X509Pop {
        /// PEM chain, leaf first (intermediates may follow).
        certificate: PathBuf,
        /// PEM private key of the leaf (PKCS#8, SEC1 or PKCS#1), owner-only.
        private_key: PathBuf,
    },
    /// `[server.attestation.sshpop]`: an OpenSSH host key and its host certificate.
    SshPop {
        /// OpenSSH private key, unencrypted, owner-only.
        host_key: PathBuf,
        /// `ssh-keygen -s -h` certificate of that key (`…-cert.pub`).
        host_certificate: PathBuf,
    },
}

impl NodeAttestation {
    /// The method's name, as in agent IDs and selectors.
    pub fn method(&self) -> &'static str {
        use lanyard_proto::attestation::{JOIN_TOKEN, SSHPOP, X509POP};
        match self {
            Self::JoinToken(_) => JOIN_TOKEN,
            Self::X509Pop { .. } => X509POP,
            Self::SshPop { .. } => SSHPOP,
        }
    }

    /// Whether the node can prove itself again without a human: with what
    /// the host holds (x509pop, sshpop), not with a token spent once.
    pub fn reattests(&self) -> bool {
        !matches!(self, Self::JoinToken(_))
    }
}

/// How the agent reaches its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerConnection {
    /// A server on this machine, over its local Node API socket.
    Local { node_socket: PathBuf },
    /// Servers anywhere (one, or an HA group), over mTLS, after node
    /// attestation.
    Remote {
        /// `host:port` of the first server's mTLS Node API (`server.address`,
        /// or the first of `server.addresses`).
        address: String,
        /// `host:port` of every server of the group, `address` first; a
        /// name that resolves to several IP addresses counts as several
        /// servers.
        addresses: Vec<String>,
        /// PEM of the trust domain's CA, which authenticates the server.
        trust_bundle: PathBuf,
        /// Used when no usable agent SVID is stored in `data_dir`; x509pop
        /// and sshpop also when the server asks for a new attestation.
        attestation: Option<NodeAttestation>,
    },
}

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentConfig {
    pub trust_domain: TrustDomain,
    pub server: ServerConnection,
    /// Where the agent keeps its SVID and key (mode 0700).
    pub data_dir: PathBuf,
    /// Where the Workload API listens.
    pub socket: PathBuf,
    /// How often entries and bundles are fetched from the server.
    pub sync_interval: Duration,
    /// Longest wait for the server on a workload's behalf before `Unavailable`.
    pub server_timeout: Duration,
    /// Most JWT-SVIDs kept (least recently used ones are dropped).
    pub jwt_svid_cache_size: usize,
    /// Whether the X509-SVID profile is served (the SPIFFE Workload API
    /// standard requires it; an operator may switch it off).
    pub x509_svids: bool,
    /// Workload API calls that must wait for the server (a JWT-SVID not in
    /// the cache), per caller uid: one uid's flood spends only its own
    /// budget, never the server's time for the others.
    pub cache_misses_per_uid: RateLimit,
    pub workload_attestor: UnixAttestorConfig,
    /// `[workload_attestor.containers]`: the container engine to ask, if any.
    pub container_engine: Option<ContainerEngineConfig>,
    /// `[telemetry]`: where metrics and health endpoints are served, if anywhere.
    pub telemetry: TelemetryConfig,
    /// `[log]`: format, filter and audit file.
    pub log: LogConfig,
}

/// Generous: 100 new (SPIFFE ID, audience) tokens a second for one uid;
/// cached fetches are not counted.
const DEFAULT_CACHE_MISSES_PER_UID: RateLimit = RateLimit::fixed(100, 200);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: String,
    data_dir: Option<PathBuf>,
    server: RawServer,
    #[serde(default)]
    workload_api: RawWorkloadApi,
    #[serde(default)]
    workload_attestor: RawWorkloadAttestor,
    sync_interval_seconds: Option<u32>,
    #[serde(default)]
    telemetry: RawTelemetry,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    node_socket: Option<PathBuf>,
    address: Option<String>,
    addresses: Option<Vec<String>>,
    trust_bundle: Option<PathBuf>,
    join_token: Option<TokenText>,
    join_token_file: Option<PathBuf>,
    request_timeout_seconds: Option<u32>,
    attestation: Option<RawAttestation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttestation {
    x509pop: Option<RawX509Pop>,
    sshpop: Option<RawSshPop>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawX509Pop {
    certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSshPop {
    host_key: Option<PathBuf>,
    host_certificate: Option<PathBuf>,
}

/// A join token as written in the config; its `Debug` never shows it.
#[derive(Deserialize)]
#[serde(transparent)]
struct TokenText(String);

impl std::fmt::Debug for TokenText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<join token>")
    }
}

/// Most servers `server.addresses` may list.
pub const MAX_SERVER_ADDRESSES: usize = 16;

/// The remote servers of `[server]`: `address` or `addresses`, exactly one
/// of them, each entry `host:port`, 1 to [`MAX_SERVER_ADDRESSES`] distinct
/// entries. `None` when neither is given.
fn server_addresses(
    address: Option<String>,
    addresses: Option<Vec<String>>,
) -> Result<Option<Vec<String>>, ConfigError> {
    match (address, addresses) {
        (Some(_), Some(_)) => Err(invalid(
            "server.addresses",
            "give either server.address or server.addresses, not both",
        )),
        (None, None) => Ok(None),
        (Some(address), None) => {
            if !is_host_port(&address) {
                return Err(invalid(
                    "server.address",
                    format!("{address:?} is not host:port"),
                ));
            }
            Ok(Some(vec![address]))
        }
        (None, Some(addresses)) => {
            if !(1..=MAX_SERVER_ADDRESSES).contains(&addresses.len()) {
                return Err(invalid(
                    "server.addresses",
                    format!("must list 1 to {MAX_SERVER_ADDRESSES} servers (host:port)"),
                ));
            }
            for (i, address) in addresses.iter().enumerate() {
                if !is_host_port(address) {
                    return Err(invalid(
                        "server.addresses",
                        format!("{address:?} is not host:port"),
                    ));
                }
                if addresses[..i].contains(address) {
                    return Err(invalid(
                        "server.addresses",
                        format!("lists {address:?} twice"),
                    ));
                }
            }
            Ok(Some(addresses))
        }
    }
}

/// The config keys that name a node attestation method; at most one is given.
const ATTESTATION_KEYS: &str = "server.join_token, server.join_token_file, server.attestation.x509pop, server.attestation.sshpop";

/// `path` under `key`, which must be given and absolute.
fn required_path(key: &str, path: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    let path = path.ok_or_else(|| invalid(key, "is required"))?;
    if !path.is_absolute() {
        return Err(invalid(key, "must be an absolute path"));
    }
    Ok(path)
}

/// The node attestation method of `[server]`: at most one of the join token
/// keys and the `[server.attestation.*]` tables.
fn node_attestation(
    join_token: Option<TokenText>,
    join_token_file: Option<PathBuf>,
    attestation: Option<RawAttestation>,
) -> Result<Option<NodeAttestation>, ConfigError> {
    let join_token = match (join_token, join_token_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "server.join_token_file",
                "give either server.join_token or server.join_token_file, not both",
            ));
        }
        (Some(TokenText(token)), None) => {
            Some(token).filter(|t| !t.is_empty()).map(JoinToken::Value)
        }
        (None, Some(path)) if path.is_absolute() => Some(JoinToken::File(path)),
        (None, Some(_)) => {
            return Err(invalid(
                "server.join_token_file",
                "must be an absolute path",
            ));
        }
        (None, None) => None,
    };
    let Some(attestation) = attestation else {
        return Ok(join_token.map(NodeAttestation::JoinToken));
    };
    let from_host = match (attestation.x509pop, attestation.sshpop) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "server.attestation.sshpop",
                format!("give only one of {ATTESTATION_KEYS}"),
            ));
        }
        (None, None) => {
            return Err(invalid(
                "server.attestation",
                "needs an x509pop or an sshpop table",
            ));
        }
        (Some(x509pop), None) => {
            if join_token.is_some() {
                return Err(invalid(
                    "server.attestation.x509pop",
                    format!("give only one of {ATTESTATION_KEYS}"),
                ));
            }
            NodeAttestation::X509Pop {
                certificate: required_path(
                    "server.attestation.x509pop.certificate",
                    x509pop.certificate,
                )?,
                private_key: required_path(
                    "server.attestation.x509pop.private_key",
                    x509pop.private_key,
                )?,
            }
        }
        (None, Some(sshpop)) => {
            if join_token.is_some() {
                return Err(invalid(
                    "server.attestation.sshpop",
                    format!("give only one of {ATTESTATION_KEYS}"),
                ));
            }
            NodeAttestation::SshPop {
                host_key: required_path("server.attestation.sshpop.host_key", sshpop.host_key)?,
                host_certificate: required_path(
                    "server.attestation.sshpop.host_certificate",
                    sshpop.host_certificate,
                )?,
            }
        }
    };
    Ok(Some(from_host))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkloadApi {
    socket: Option<PathBuf>,
    jwt_svid_cache_size: Option<usize>,
    x509: Option<bool>,
    cache_misses_per_second_per_uid: Option<u32>,
    cache_miss_burst_per_uid: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkloadAttestor {
    path_selectors: Option<bool>,
    sha256_selectors: Option<bool>,
    max_binary_bytes: Option<u64>,
    containers: Option<RawContainers>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainers {
    api_socket: Option<PathBuf>,
    timeout_seconds: Option<u32>,
}

impl RawContainers {
    fn validate(self) -> Result<ContainerEngineConfig, ConfigError> {
        const KEY: &str = "workload_attestor.containers";
        let api_socket = self.api_socket.ok_or_else(|| {
            invalid(
                format!("{KEY}.api_socket"),
                "is required in this table: the engine's Unix socket (Docker Engine API), e.g. /run/podman/podman.sock",
            )
        })?;
        if !api_socket.is_absolute() {
            return Err(invalid(
                format!("{KEY}.api_socket"),
                "must be an absolute path",
            ));
        }
        let timeout = self
            .timeout_seconds
            .unwrap_or(DEFAULT_CONTAINER_ENGINE_TIMEOUT_SECONDS);
        if !(1..=60).contains(&timeout) {
            return Err(invalid(
                format!("{KEY}.timeout_seconds"),
                "must be between 1 and 60",
            ));
        }
        Ok(ContainerEngineConfig {
            api_socket,
            timeout: Duration::from_secs(timeout.into()),
        })
    }
}

/// Whether `path` reads the same inside `unix://…` as on disk: RFC 3986
/// path characters that need no percent-encoding. Workloads find the socket
/// through `SPIFFE_ENDPOINT_SOCKET`, and client libraries take the URI's path
/// as it is written (the Rust `spiffe` crate does not decode it).
fn fits_endpoint_uri(path: &Path) -> bool {
    path.to_str().is_some_and(|text| {
        text.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c))
    })
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = config_file::read(path)?;
        Self::from_toml(&text, &path.display().to_string())
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = config_file::parse(text, origin)?;
        let trust_domain =
            TrustDomain::new(&raw.trust_domain).map_err(|e| invalid("trust_domain", e))?;
        let socket = raw
            .workload_api
            .socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        if !socket.is_absolute() {
            return Err(invalid("workload_api.socket", "must be an absolute path"));
        }
        if !fits_endpoint_uri(&socket) {
            return Err(invalid(
                "workload_api.socket",
                "must be writable as a SPIFFE endpoint URI (unix:///path) without percent-encoding: \
                 letters, digits and -._~!$&'()*+,;=:@/ only (SPIFFE clients do not decode the path)",
            ));
        }
        let addresses = server_addresses(raw.server.address, raw.server.addresses)?;
        let server = match (raw.server.node_socket, addresses) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "server.address",
                    "give either server.node_socket or server.address (or server.addresses), not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "server",
                    "needs node_socket (a local server) or address or addresses (remote ones)",
                ));
            }
            (Some(node_socket), None) => {
                if raw.server.attestation.is_some() {
                    return Err(invalid(
                        "server.attestation",
                        "is for a remote server (server.address); a local server needs no attestation",
                    ));
                }
                if !node_socket.is_absolute() {
                    return Err(invalid("server.node_socket", "must be an absolute path"));
                }
                ServerConnection::Local { node_socket }
            }
            (None, Some(addresses)) => {
                let trust_bundle = raw.server.trust_bundle.ok_or_else(|| {
                    invalid(
                        "server.trust_bundle",
                        "is required with server.address: the server is never trusted on first use",
                    )
                })?;
                let attestation = node_attestation(
                    raw.server.join_token,
                    raw.server.join_token_file,
                    raw.server.attestation,
                )?;
                let address = addresses
                    .first()
                    .cloned()
                    .ok_or_else(|| invalid("server.addresses", "must list a server"))?;
                ServerConnection::Remote {
                    address,
                    addresses,
                    trust_bundle,
                    attestation,
                }
            }
        };
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if !data_dir.is_absolute() {
            return Err(invalid("data_dir", "must be an absolute path"));
        }
        let interval = raw
            .sync_interval_seconds
            .unwrap_or(DEFAULT_SYNC_INTERVAL_SECONDS);
        if !(1..=3600).contains(&interval) {
            return Err(invalid(
                "sync_interval_seconds",
                "must be between 1 and 3600",
            ));
        }
        let timeout = raw
            .server
            .request_timeout_seconds
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECONDS);
        if !(1..=300).contains(&timeout) {
            return Err(invalid(
                "server.request_timeout_seconds",
                "must be between 1 and 300",
            ));
        }
        let cache_size = raw
            .workload_api
            .jwt_svid_cache_size
            .unwrap_or(DEFAULT_JWT_SVID_CACHE_SIZE);
        if !(1..=1_000_000).contains(&cache_size) {
            return Err(invalid(
                "workload_api.jwt_svid_cache_size",
                "must be between 1 and 1000000",
            ));
        }
        let attestor = raw.workload_attestor;
        let container_engine = attestor
            .containers
            .map(RawContainers::validate)
            .transpose()?;
        let max_binary_bytes = attestor
            .max_binary_bytes
            .unwrap_or(DEFAULT_MAX_BINARY_BYTES);
        if max_binary_bytes == 0 {
            return Err(invalid(
                "workload_attestor.max_binary_bytes",
                "must be greater than 0",
            ));
        }
        let cache_misses_per_uid = RateLimit::from_config(
            (
                "workload_api.cache_misses_per_second_per_uid",
                raw.workload_api.cache_misses_per_second_per_uid,
            ),
            (
                "workload_api.cache_miss_burst_per_uid",
                raw.workload_api.cache_miss_burst_per_uid,
            ),
            DEFAULT_CACHE_MISSES_PER_UID,
        )?;
        let telemetry = raw.telemetry.validate()?;
        Ok(Self {
            cache_misses_per_uid,
            telemetry,
            trust_domain,
            server,
            data_dir,
            socket,
            sync_interval: Duration::from_secs(interval.into()),
            server_timeout: Duration::from_secs(timeout.into()),
            jwt_svid_cache_size: cache_size,
            x509_svids: raw.workload_api.x509.unwrap_or(true),
            workload_attestor: UnixAttestorConfig {
                path_selectors: attestor.path_selectors.unwrap_or(false),
                sha256_selectors: attestor.sha256_selectors.unwrap_or(false),
                max_binary_bytes,
            },
            container_engine,
            log: raw.log.validate()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "trust_domain = \"example.org\"\n[server]\nnode_socket = \"/srv/node.sock\"\n";

    #[test]
    fn defaults_apply() -> Result<(), ConfigError> {
        let config = AgentConfig::from_toml(GOOD, "agent.toml")?;
        assert_eq!(config.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(config.sync_interval, Duration::from_secs(5));
        assert_eq!(config.server_timeout, Duration::from_secs(5));
        assert_eq!(config.workload_attestor, UnixAttestorConfig::default());
        Ok(())
    }

    #[test]
    fn remote_server_needs_a_trust_bundle() -> Result<(), ConfigError> {
        let text = "trust_domain = \"example.org\"\ndata_dir = \"/var/lib/a\"\n[server]\naddress = \"server:8081\"\ntrust_bundle = \"/etc/lanyard/ca.pem\"\njoin_token = \"abc\"\n";
        let config = AgentConfig::from_toml(text, "agent.toml")?;
        assert_eq!(
            config.server,
            ServerConnection::Remote {
                address: "server:8081".into(),
                addresses: vec!["server:8081".into()],
                trust_bundle: "/etc/lanyard/ca.pem".into(),
                attestation: Some(NodeAttestation::JoinToken(JoinToken::Value("abc".into()))),
            }
        );
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/a"));
        Ok(())
    }

    const REMOTE: &str = "trust_domain = \"example.org\"\n[server]\naddress = \"server:8081\"\ntrust_bundle = \"/etc/lanyard/ca.pem\"\n";

    fn attestation_of(text: &str) -> Result<Option<NodeAttestation>, ConfigError> {
        match AgentConfig::from_toml(text, "agent.toml")?.server {
            ServerConnection::Remote { attestation, .. } => Ok(attestation),
            ServerConnection::Local { .. } => Ok(None),
        }
    }

    #[test]
    fn node_attestation_tables_are_read() -> Result<(), ConfigError> {
        let x509pop = format!(
            "{REMOTE}[server.attestation.x509pop]\ncertificate = \"/etc/pki/host.pem\"\nprivate_key = \"/etc/pki/host.key\"\n"
        );
        assert_eq!(
            attestation_of(&x509pop)?,
            Some(NodeAttestation::X509Pop {
                certificate: "/etc/pki/host.pem".into(),
                private_key: "/etc/pki/host.key".into(),
            })
        );
        let sshpop = format!(
            "{REMOTE}[server.attestation.sshpop]\nhost_key = \"/etc/ssh/ssh_host_ed25519_key\"\nhost_certificate = \"/etc/ssh/ssh_host_ed25519_key-cert.pub\"\n"
        );
        let read = attestation_of(&sshpop)?;
        assert_eq!(
            read,
            Some(NodeAttestation::SshPop {
                host_key: "/etc/ssh/ssh_host_ed25519_key".into(),
                host_certificate: "/etc/ssh/ssh_host_ed25519_key-cert.pub".into(),
            })
        );
        assert!(read.as_ref().is_some_and(NodeAttestation::reattests));
        assert_eq!(read.map(|a| a.method()), Some("sshpop"));
        let file = format!("{REMOTE}join_token_file = \"/etc/lanyard/token\"\n");
        let read = attestation_of(&file)?;
        assert_eq!(
            read,
            Some(NodeAttestation::JoinToken(JoinToken::File(
                "/etc/lanyard/token".into()
            )))
        );
        assert!(!read.as_ref().is_some_and(NodeAttestation::reattests));
        assert_eq!(attestation_of(REMOTE)?, None);
        // An empty token is no token, as before.
        assert_eq!(
            attestation_of(&format!("{REMOTE}join_token = \"\"\n"))?,
            None
        );
        Ok(())
    }

    #[test]
    fn node_attestation_errors_name_the_key() {
        let x509pop =
            "[server.attestation.x509pop]\ncertificate = \"/c.pem\"\nprivate_key = \"/k.pem\"\n";
        let sshpop =
            "[server.attestation.sshpop]\nhost_key = \"/k\"\nhost_certificate = \"/k-cert.pub\"\n";
        let cases = [
            (
                format!("{REMOTE}join_token = \"abc\"\n{x509pop}"),
                "config key `server.attestation.x509pop`",
            ),
            (
                format!("{REMOTE}join_token_file = \"/t\"\n{sshpop}"),
                "config key `server.attestation.sshpop`",
            ),
            (
                format!("{REMOTE}{x509pop}{sshpop}"),
                "config key `server.attestation.sshpop`",
            ),
            (
                format!("{REMOTE}{x509pop}").replace("\"/c.pem\"", "\"c.pem\""),
                "config key `server.attestation.x509pop.certificate`",
            ),
            (
                format!("{REMOTE}[server.attestation.x509pop]\ncertificate = \"/c.pem\"\n"),
                "config key `server.attestation.x509pop.private_key`",
            ),
            (
                format!("{REMOTE}{sshpop}").replace("\"/k\"", "\"k\""),
                "config key `server.attestation.sshpop.host_key`",
            ),
            (
                format!("{REMOTE}[server.attestation.sshpop]\nhost_key = \"/k\"\n"),
                "config key `server.attestation.sshpop.host_certificate`",
            ),
            (
                format!("{REMOTE}[server.attestation]\n"),
                "config key `server.attestation`",
            ),
            (
                format!("{REMOTE}[server.attestation.tpm]\n"),
                "unknown field `tpm`",
            ),
            (
                format!("{REMOTE}{x509pop}key = \"/k.pem\"\n"),
                "unknown field `key`",
            ),
            (
                format!("{GOOD}{x509pop}"),
                "config key `server.attestation`",
            ),
            (
                format!("{REMOTE}join_token = \"abc\"\njoin_token_file = \"/t\"\n"),
                "config key `server.join_token_file`",
            ),
        ];
        for (text, expected) in cases {
            let message = AgentConfig::from_toml(&text, "agent.toml")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                message.contains(expected),
                "{text}: {message:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn several_servers_are_read_in_order() -> Result<(), ConfigError> {
        let text = REMOTE.replace(
            "address = \"server:8081\"",
            "addresses = [\"lanyard-1:8081\", \"10.0.0.2:8081\", \"[::1]:8081\"]",
        );
        match AgentConfig::from_toml(&text, "agent.toml")?.server {
            ServerConnection::Remote {
                address, addresses, ..
            } => {
                assert_eq!(address, "lanyard-1:8081");
                assert_eq!(addresses, ["lanyard-1:8081", "10.0.0.2:8081", "[::1]:8081"]);
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    #[test]
    fn server_address_errors_name_the_key() {
        let many: Vec<String> = (0..17).map(|i| format!("\"s{i}:8081\"")).collect();
        let with = |addresses: &str| {
            REMOTE.replace(
                "address = \"server:8081\"",
                &format!("addresses = {addresses}"),
            )
        };
        let cases = [
            (
                format!("{REMOTE}addresses = [\"other:8081\"]\n"),
                "config key `server.addresses`",
            ),
            (with("[]"), "config key `server.addresses`"),
            (with(&format!("[{}]", many.join(", "))), "must list 1 to 16"),
            (with("[\"a:8081\", \"b\"]"), "\"b\" is not host:port"),
            (
                with("[\"a:8081\", \":8081\"]"),
                "config key `server.addresses`",
            ),
            (with("[\"a:8081\", \"a:8081\"]"), "lists \"a:8081\" twice"),
            (with("\"a:8081\""), "expected a sequence"),
            (
                format!("{GOOD}addresses = [\"a:8081\"]\n"),
                "config key `server.address`",
            ),
            (
                "trust_domain = \"example.org\"\n[server]\naddresses = [\"a:8081\"]\n".to_owned(),
                "config key `server.trust_bundle`",
            ),
        ];
        for (text, expected) in cases {
            let message = AgentConfig::from_toml(&text, "agent.toml")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                message.contains(expected),
                "{text}: {message:?} should contain {expected:?}"
            );
        }
        // 16 is the most, and fine.
        let sixteen = with(&format!("[{}]", many[..16].join(", ")));
        assert!(AgentConfig::from_toml(&sixteen, "agent.toml").is_ok());
    }

    #[test]
    fn attestor_table_is_read() -> Result<(), ConfigError> {
        let text = format!(
            "{GOOD}[workload_attestor]\npath_selectors = true\nsha256_selectors = true\nmax_binary_bytes = 1024\n"
        );
        let config = AgentConfig::from_toml(&text, "agent.toml")?;
        assert_eq!(
            config.workload_attestor,
            UnixAttestorConfig {
                path_selectors: true,
                sha256_selectors: true,
                max_binary_bytes: 1024,
            }
        );
        Ok(())
    }

    #[test]
    fn container_engine_table_is_read() -> Result<(), ConfigError> {
        let config = AgentConfig::from_toml(GOOD, "agent.toml")?;
        assert_eq!(config.container_engine, None);
        let text = format!(
            "{GOOD}[workload_attestor.containers]\napi_socket = \"/run/podman/podman.sock\"\n"
        );
        let config = AgentConfig::from_toml(&text, "agent.toml")?;
        assert_eq!(
            config.container_engine,
            Some(ContainerEngineConfig {
                api_socket: PathBuf::from("/run/podman/podman.sock"),
                timeout: Duration::from_secs(2),
            })
        );
        let text = format!(
            "{GOOD}[workload_attestor]\npath_selectors = true\n[workload_attestor.containers]\napi_socket = \"/run/docker.sock\"\ntimeout_seconds = 10\n"
        );
        let config = AgentConfig::from_toml(&text, "agent.toml")?;
        assert!(config.workload_attestor.path_selectors);
        assert_eq!(
            config.container_engine.map(|e| e.timeout),
            Some(Duration::from_secs(10))
        );
        Ok(())
    }

    #[test]
    fn bad_keys_are_named() {
        let cases = [
            (
                GOOD.replace("example.org", "EXAMPLE"),
                "config key `trust_domain`",
            ),
            (
                format!("{GOOD}[workload_api]\nsocket = \"rel.sock\"\n"),
                "config key `workload_api.socket`",
            ),
            (
                format!("{GOOD}[workload_api]\nsocket = \"/run/my agent/api.sock\"\n"),
                "SPIFFE endpoint URI",
            ),
            (
                format!("{GOOD}[workload_api]\nsocket = \"/run/50%/api.sock\"\n"),
                "SPIFFE endpoint URI",
            ),
            (
                format!("sync_interval_seconds = 0\n{GOOD}"),
                "config key `sync_interval_seconds`",
            ),
            (format!("colour = 1\n{GOOD}"), "unknown field `colour`"),
            (
                format!("{GOOD}address = \"server:8081\"\n"),
                "config key `server.address`",
            ),
            (
                "trust_domain = \"example.org\"\n[server]\naddress = \"server:8081\"\n".to_owned(),
                "config key `server.trust_bundle`",
            ),
            (
                "trust_domain = \"example.org\"\n[server]\naddress = \"server\"\ntrust_bundle = \"/ca.pem\"\n".to_owned(),
                "config key `server.address`",
            ),
            (
                "trust_domain = \"example.org\"\n[server]\n".to_owned(),
                "config key `server`",
            ),
            (
                format!("{GOOD}request_timeout_seconds = 0\n"),
                "config key `server.request_timeout_seconds`",
            ),
            (
                format!("{GOOD}[workload_api]\njwt_svid_cache_size = 0\n"),
                "config key `workload_api.jwt_svid_cache_size`",
            ),
            (
                format!("{GOOD}[workload_attestor]\nmax_binary_bytes = 0\n"),
                "config key `workload_attestor.max_binary_bytes`",
            ),
            (
                format!("{GOOD}[workload_attestor]\nsha256 = true\n"),
                "unknown field `sha256`",
            ),
            (
                format!("{GOOD}[workload_attestor.containers]\ntimeout_seconds = 2\n"),
                "config key `workload_attestor.containers.api_socket`",
            ),
            (
                format!("{GOOD}[workload_attestor.containers]\napi_socket = \"podman.sock\"\n"),
                "config key `workload_attestor.containers.api_socket`",
            ),
            (
                format!(
                    "{GOOD}[workload_attestor.containers]\napi_socket = \"/p.sock\"\ntimeout_seconds = 0\n"
                ),
                "config key `workload_attestor.containers.timeout_seconds`",
            ),
            (
                format!(
                    "{GOOD}[workload_attestor.containers]\napi_socket = \"/p.sock\"\ntimeout_seconds = 61\n"
                ),
                "config key `workload_attestor.containers.timeout_seconds`",
            ),
            (
                format!("{GOOD}[workload_attestor.containers]\napi_sock = \"/p.sock\"\n"),
                "unknown field `api_sock`",
            ),
        ];
        for (text, expected) in cases {
            let message = AgentConfig::from_toml(&text, "agent.toml")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                message.contains(expected),
                "{message:?} should contain {expected:?}"
            );
        }
    }
}
