//! `server.toml`: read, typed and validated at load, every error naming its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_host::config_file::{self, invalid};
use lanyard_host::logging::{LogConfig, RawLog};
use lanyard_host::rate_limit::RateLimit;
use lanyard_proto::attestation::MAX_CHALLENGE_TTL_SECONDS;
use lanyard_proto::{Selector, SpiffeId, TrustDomain};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::Deserialize;
use ssh_key::known_hosts::{KnownHosts, Marker};
use ssh_key::public::KeyData;

use crate::authority::entries::{self, EntrySpec};
use crate::authority::node_attestation::x509pop;
use crate::keys::{KeyType, PolicyError, RotationPolicy};

pub use crate::authority::Issuer;
pub use lanyard_host::config_file::ConfigError;
use lanyard_host::telemetry::RawTelemetry;
pub use lanyard_host::telemetry::TelemetryConfig;

const DEFAULT_OIDC_LISTEN: &str = "127.0.0.1:8443";
const DEFAULT_JWT_TTL_SECONDS: u32 = 300;
const DEFAULT_JWT_MAX_TTL_SECONDS: u32 = 3600;
/// GCP refuses tokens whose `exp - iat` exceeds 48 hours; no cloud wants more.
const JWT_TTL_CEILING_SECONDS: u32 = 48 * 3600;
const DEFAULT_CHALLENGE_TTL_SECONDS: u32 = 30;
const DEFAULT_MAX_PENDING_PER_PEER: u32 = 8;
/// A per-peer cap above the server-wide one would mean nothing.
const MAX_PENDING_PER_PEER_CEILING: u32 = 256;

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OidcConfig {
    pub listen: SocketAddr,
    /// Certificate and key to serve; a self-signed pair in the data dir when absent.
    pub tls: Option<TlsFiles>,
    /// Serve plain HTTP, for running behind a TLS-terminating proxy.
    pub plain_http: bool,
    /// Where to publish the self-signed certificate, mode 0644, for workload
    /// users to trust (the data dir, 0700, holds the server's copy).
    pub public_cert_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeApiConfig {
    /// Local Unix socket of the Node API; only this server's uid and root may connect.
    pub socket: PathBuf,
    /// TCP address of the mTLS Node API for remote agents; off when absent.
    pub listen: Option<SocketAddr>,
    /// Lifetime of the X.509 SVIDs issued to agents.
    pub agent_svid_ttl: Duration,
    /// The SPIFFE ID under which the local agent is known (the parent of its entries).
    pub agent_id: SpiffeId,
}

/// `[node_attestation]`: how nodes prove themselves besides join tokens.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeAttestationConfig {
    /// How long a challenge may wait for its answer.
    pub challenge_ttl: Duration,
    /// Most attestations waiting at once from one peer address.
    pub max_pending_per_peer: usize,
    /// x509pop, when `[node_attestation.x509pop]` is present.
    pub x509pop: Option<X509PopConfig>,
    /// sshpop, when `[node_attestation.sshpop]` is present.
    pub sshpop: Option<SshPopConfig>,
}

impl Default for NodeAttestationConfig {
    fn default() -> Self {
        Self {
            challenge_ttl: Duration::from_secs(DEFAULT_CHALLENGE_TTL_SECONDS.into()),
            max_pending_per_peer: DEFAULT_MAX_PENDING_PER_PEER as usize,
            x509pop: None,
            sshpop: None,
        }
    }
}

/// `[node_attestation.x509pop]`, its files read and parsed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct X509PopConfig {
    /// The trust anchors node chains must reach (`ca_bundle`).
    pub ca_bundle: Vec<CertificateDer<'static>>,
    /// Intermediate CAs nodes need not send (`intermediates`).
    pub intermediates: Vec<CertificateDer<'static>>,
    /// Revocation lists (`crl`); unknown status is allowed, expiry ignored.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

/// `[node_attestation.sshpop]`, its CA keys parsed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SshPopConfig {
    /// Keys whose host certificates are trusted.
    pub cert_authorities: Vec<KeyData>,
    /// Keys (CA or host) refused whatever signed them (`@revoked` lines).
    pub revoked: Vec<KeyData>,
}

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdminConfig {
    /// Local Unix socket of the Admin API.
    pub socket: PathBuf,
    /// A non-root uid that may administer the server besides its own uid.
    pub uid: Option<u32>,
}

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JwtConfig {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// The type of newly generated signing keys.
    pub key_type: KeyType,
    pub rotation: RotationPolicy,
}

/// Per-caller rate limits on the Node API. Over one, a call gets
/// `ResourceExhausted` with the wait (message and `grpc-retry-pushback-ms`).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RateLimitsConfig {
    /// JWT-SVID and X509-SVID mints, per agent (its SPIFFE ID).
    pub mints_per_agent: RateLimit,
    /// Node attestations (join token, x509pop, sshpop), per peer IP address.
    pub attestations_per_address: RateLimit,
}

/// Generous: an agent's workloads may mint 1,000 JWT-SVIDs a second between
/// them (cached ones cost nothing here); a fleet re-enrols from distinct
/// addresses, so 20 a second from one address is a host or NAT in a loop.
const DEFAULT_MINTS_PER_AGENT: RateLimit = RateLimit::fixed(1_000, 2_000);
const DEFAULT_ATTESTATIONS_PER_ADDRESS: RateLimit = RateLimit::fixed(20, 100);

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Names this server among those sharing a datastore; empty means "read
    /// or create `<data_dir>/server-id`".
    pub server_id: String,
    pub trust_domain: TrustDomain,
    pub issuer: Issuer,
    pub data_dir: PathBuf,
    pub oidc: OidcConfig,
    pub node_api: NodeApiConfig,
    pub admin: AdminConfig,
    pub jwt: JwtConfig,
    pub node_attestation: NodeAttestationConfig,
    pub rate_limits: RateLimitsConfig,
    /// Entries from the config file, seeded into the datastore at start.
    pub entries: Vec<EntrySpec>,
    /// `sqlite://…` or `postgres://…`.
    pub datastore_url: String,
    /// `[telemetry]`: where metrics and health endpoints are served, if anywhere.
    pub telemetry: TelemetryConfig,
    /// `[log]`: format, filter and audit file.
    pub log: LogConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server_id: Option<String>,
    trust_domain: String,
    issuer: String,
    data_dir: PathBuf,
    #[serde(default)]
    oidc: RawOidc,
    #[serde(default)]
    node_api: RawNodeApi,
    #[serde(default)]
    jwt: RawJwt,
    #[serde(default)]
    datastore: RawDatastore,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    node_attestation: RawNodeAttestation,
    #[serde(default)]
    rate_limits: RawRateLimits,
    #[serde(default)]
    entries: Vec<RawEntry>,
    #[serde(default)]
    telemetry: RawTelemetry,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    mints_per_second_per_agent: Option<u32>,
    mint_burst_per_agent: Option<u32>,
    attestations_per_second_per_address: Option<u32>,
    attestation_burst_per_address: Option<u32>,
}

impl RawRateLimits {
    fn validate(self) -> Result<RateLimitsConfig, ConfigError> {
        Ok(RateLimitsConfig {
            mints_per_agent: RateLimit::from_config(
                (
                    "rate_limits.mints_per_second_per_agent",
                    self.mints_per_second_per_agent,
                ),
                (
                    "rate_limits.mint_burst_per_agent",
                    self.mint_burst_per_agent,
                ),
                DEFAULT_MINTS_PER_AGENT,
            )?,
            attestations_per_address: RateLimit::from_config(
                (
                    "rate_limits.attestations_per_second_per_address",
                    self.attestations_per_second_per_address,
                ),
                (
                    "rate_limits.attestation_burst_per_address",
                    self.attestation_burst_per_address,
                ),
                DEFAULT_ATTESTATIONS_PER_ADDRESS,
            )?,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeAttestation {
    challenge_ttl_seconds: Option<u32>,
    max_pending_per_peer: Option<u32>,
    x509pop: Option<RawX509Pop>,
    sshpop: Option<RawSshPop>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawX509Pop {
    ca_bundle: PathBuf,
    intermediates: Option<PathBuf>,
    crl: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSshPop {
    #[serde(default)]
    cert_authorities: Vec<String>,
    cert_authorities_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Option<PathBuf>,
    uid: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatastore {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    plain_http: bool,
    public_cert_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeApi {
    socket: Option<PathBuf>,
    listen: Option<String>,
    agent_svid_ttl_seconds: Option<u32>,
    agent_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    default_ttl_seconds: Option<u32>,
    max_ttl_seconds: Option<u32>,
    key_type: Option<String>,
    key_lifetime_seconds: Option<u64>,
    publish_lead_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    spiffe_id: String,
    parent_id: Option<String>,
    selectors: Vec<String>,
    jwt_svid_ttl_seconds: Option<u32>,
    x509_svid_ttl_seconds: Option<u32>,
    hint: Option<String>,
    /// A TOML table, stored as the JSON object it is.
    claims: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = config_file::read(path)?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = config_file::parse(text, origin)?;
        raw.validate()
    }
}

impl RawConfig {
    /// Checks each section in turn (the first error found is the one
    /// reported, naming its key).
    fn validate(self) -> Result<ServerConfig, ConfigError> {
        let trust_domain =
            TrustDomain::new(&self.trust_domain).map_err(|e| invalid("trust_domain", e))?;
        let issuer = Issuer::parse(&self.issuer).map_err(|e| invalid("issuer", e))?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let oidc = self.oidc.validate()?;
        let node_api = self.node_api.validate(&trust_domain, &self.data_dir)?;
        let (default_ttl, max_ttl) = self.jwt.ttls()?;
        let entries = self
            .entries
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                raw.validate(i, &trust_domain, &node_api.agent_id, default_ttl, max_ttl)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let datastore_url = self.datastore.url(&self.data_dir)?;
        let (key_type, rotation) = self.jwt.keys(max_ttl)?;
        let server_id = validate_server_id(self.server_id.unwrap_or_default())?;
        let admin = self.admin.validate(&self.data_dir)?;
        let node_attestation = self.node_attestation.validate()?;
        let rate_limits = self.rate_limits.validate()?;
        let telemetry = self.telemetry.validate()?;
        let log = self.log.validate()?;
        Ok(ServerConfig {
            telemetry,
            log,
            node_attestation,
            rate_limits,
            server_id,
            admin,
            datastore_url,
            trust_domain,
            issuer,
            data_dir: self.data_dir,
            oidc,
            node_api,
            jwt: JwtConfig {
                default_ttl: Duration::from_secs(default_ttl.into()),
                max_ttl: Duration::from_secs(max_ttl.into()),
                key_type,
                rotation,
            },
            entries,
        })
    }
}

/// `raw` as a SPIFFE ID in `trust_domain`, for the config key `key`.
fn member(trust_domain: &TrustDomain, key: &str, raw: &str) -> Result<SpiffeId, ConfigError> {
    let id = SpiffeId::parse(raw).map_err(|e| invalid(key, format!("{raw:?}: {e}")))?;
    if !id.is_member_of(trust_domain) {
        return Err(invalid(
            key,
            format!("{raw:?} is not in trust domain {trust_domain}"),
        ));
    }
    Ok(id)
}

impl RawOidc {
    fn validate(self) -> Result<OidcConfig, ConfigError> {
        let listen = self.listen.as_deref().unwrap_or(DEFAULT_OIDC_LISTEN);
        let listen = listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("oidc.listen", format!("{listen:?} is not ip:port ({e})")))?;
        if self.plain_http && (self.tls_cert.is_some() || self.tls_key.is_some()) {
            return Err(invalid(
                "oidc.plain_http",
                "cannot be combined with oidc.tls_cert/tls_key",
            ));
        }
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid("oidc.tls_key", "is required with oidc.tls_cert"));
            }
            (None, Some(_)) => {
                return Err(invalid("oidc.tls_cert", "is required with oidc.tls_key"));
            }
        };
        if let Some(path) = &self.public_cert_file {
            if !path.is_absolute() {
                return Err(invalid("oidc.public_cert_file", "must be an absolute path"));
            }
            if tls.is_some() || self.plain_http {
                return Err(invalid(
                    "oidc.public_cert_file",
                    "publishes the self-signed certificate, which is not used with oidc.tls_cert or oidc.plain_http",
                ));
            }
        }
        Ok(OidcConfig {
            listen,
            tls,
            plain_http: self.plain_http,
            public_cert_file: self.public_cert_file,
        })
    }
}

impl RawNodeApi {
    fn validate(
        self,
        trust_domain: &TrustDomain,
        data_dir: &Path,
    ) -> Result<NodeApiConfig, ConfigError> {
        let agent_id = match &self.agent_id {
            Some(raw) => member(trust_domain, "node_api.agent_id", raw)?,
            None => trust_domain
                .id_with_path("/lanyard/agent/local")
                .map_err(|e| invalid("node_api.agent_id", e))?,
        };
        let listen = match &self.listen {
            Some(raw) => Some(raw.parse::<SocketAddr>().map_err(|e| {
                invalid("node_api.listen", format!("{raw:?} is not ip:port ({e})"))
            })?),
            None => None,
        };
        let agent_svid_ttl = self.agent_svid_ttl_seconds.unwrap_or(3600);
        if !(60..=30 * 86_400).contains(&agent_svid_ttl) {
            return Err(invalid(
                "node_api.agent_svid_ttl_seconds",
                "must be between 60 and 2592000 (30 days)",
            ));
        }
        Ok(NodeApiConfig {
            listen,
            agent_svid_ttl: Duration::from_secs(agent_svid_ttl.into()),
            socket: self.socket.unwrap_or_else(|| data_dir.join("node.sock")),
            agent_id,
        })
    }
}

impl RawNodeAttestation {
    fn validate(self) -> Result<NodeAttestationConfig, ConfigError> {
        let ttl = self
            .challenge_ttl_seconds
            .unwrap_or(DEFAULT_CHALLENGE_TTL_SECONDS);
        if !(1..=MAX_CHALLENGE_TTL_SECONDS).contains(&ttl) {
            return Err(invalid(
                "node_attestation.challenge_ttl_seconds",
                format!("must be between 1 and {MAX_CHALLENGE_TTL_SECONDS}"),
            ));
        }
        let max_pending = self
            .max_pending_per_peer
            .unwrap_or(DEFAULT_MAX_PENDING_PER_PEER);
        if !(1..=MAX_PENDING_PER_PEER_CEILING).contains(&max_pending) {
            return Err(invalid(
                "node_attestation.max_pending_per_peer",
                format!("must be between 1 and {MAX_PENDING_PER_PEER_CEILING}"),
            ));
        }
        Ok(NodeAttestationConfig {
            challenge_ttl: Duration::from_secs(ttl.into()),
            max_pending_per_peer: max_pending as usize,
            x509pop: self.x509pop.map(RawX509Pop::validate).transpose()?,
            sshpop: self.sshpop.map(RawSshPop::validate).transpose()?,
        })
    }
}

/// The bytes of the file at `path`, for the config key `key`.
fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(key, format!("{}: {e}", path.display())))
}

/// The PEM certificates in the file at `path`, for the config key `key`.
fn read_pem_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_file(key, path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{}: holds no PEM CERTIFICATE", path.display()),
        ));
    }
    Ok(certs)
}

impl RawX509Pop {
    fn validate(self) -> Result<X509PopConfig, ConfigError> {
        const BUNDLE: &str = "node_attestation.x509pop.ca_bundle";
        const INTERMEDIATES: &str = "node_attestation.x509pop.intermediates";
        const CRL: &str = "node_attestation.x509pop.crl";
        let ca_bundle = read_pem_certs(BUNDLE, &self.ca_bundle)?;
        x509pop::check_anchors(&ca_bundle)
            .map_err(|e| invalid(BUNDLE, format!("{}: {e}", self.ca_bundle.display())))?;
        let intermediates = match &self.intermediates {
            Some(path) => read_pem_certs(INTERMEDIATES, path)?,
            None => Vec::new(),
        };
        let crls = match &self.crl {
            Some(path) => {
                let pem = read_file(CRL, path)?;
                let crls = rustls_pemfile::crls(&mut pem.as_slice())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(CRL, format!("{}: {e}", path.display())))?;
                if crls.is_empty() {
                    return Err(invalid(
                        CRL,
                        format!("{}: holds no PEM X509 CRL", path.display()),
                    ));
                }
                x509pop::check_crls(&crls)
                    .map_err(|e| invalid(CRL, format!("{}: {e}", path.display())))?;
                crls
            }
            None => Vec::new(),
        };
        Ok(X509PopConfig {
            ca_bundle,
            intermediates,
            crls,
        })
    }
}

impl RawSshPop {
    fn validate(self) -> Result<SshPopConfig, ConfigError> {
        const INLINE: &str = "node_attestation.sshpop.cert_authorities";
        const FILE: &str = "node_attestation.sshpop.cert_authorities_file";
        let mut cert_authorities = Vec::new();
        for (i, line) in self.cert_authorities.iter().enumerate() {
            let key = ssh_key::PublicKey::from_openssh(line.trim())
                .map_err(|e| invalid(format!("{INLINE}[{i}]"), e))?;
            cert_authorities.push(key.key_data().clone());
        }
        let mut revoked = Vec::new();
        if let Some(path) = &self.cert_authorities_file {
            let bytes = read_file(FILE, path)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| invalid(FILE, format!("{}: is not UTF-8", path.display())))?;
            for (i, entry) in KnownHosts::new(&text).enumerate() {
                let entry = entry.map_err(|e| {
                    invalid(FILE, format!("{}: entry {}: {e}", path.display(), i + 1))
                })?;
                match entry.marker() {
                    Some(Marker::CertAuthority) => {
                        cert_authorities.push(entry.public_key().key_data().clone())
                    }
                    Some(Marker::Revoked) => revoked.push(entry.public_key().key_data().clone()),
                    None => {
                        return Err(invalid(
                            FILE,
                            format!(
                                "{}: entry {} is neither @cert-authority nor @revoked",
                                path.display(),
                                i + 1
                            ),
                        ));
                    }
                }
            }
        }
        if cert_authorities.is_empty() {
            return Err(invalid(
                INLINE,
                "name at least one CA key (here or as @cert-authority in cert_authorities_file)",
            ));
        }
        Ok(SshPopConfig {
            cert_authorities,
            revoked,
        })
    }
}

impl RawJwt {
    /// The default and maximum JWT-SVID lifetimes, in seconds.
    fn ttls(&self) -> Result<(u32, u32), ConfigError> {
        let max_ttl = self.max_ttl_seconds.unwrap_or(DEFAULT_JWT_MAX_TTL_SECONDS);
        if max_ttl == 0 || max_ttl > JWT_TTL_CEILING_SECONDS {
            return Err(invalid(
                "jwt.max_ttl_seconds",
                "must be between 1 and 172800 (48 h)",
            ));
        }
        let default_ttl = self
            .default_ttl_seconds
            .unwrap_or(DEFAULT_JWT_TTL_SECONDS.min(max_ttl));
        if default_ttl == 0 || default_ttl > max_ttl {
            return Err(invalid(
                "jwt.default_ttl_seconds",
                format!("must be between 1 and jwt.max_ttl_seconds ({max_ttl})"),
            ));
        }
        Ok((default_ttl, max_ttl))
    }

    /// The signing key type and the rotation schedule.
    fn keys(&self, max_ttl: u32) -> Result<(KeyType, RotationPolicy), ConfigError> {
        let key_type = match &self.key_type {
            Some(raw) => raw
                .parse::<KeyType>()
                .map_err(|e| invalid("jwt.key_type", e))?,
            None => KeyType::EcP256,
        };
        let mut rotation = RotationPolicy::with_max_token_ttl(Duration::from_secs(max_ttl.into()));
        if let Some(seconds) = self.key_lifetime_seconds {
            rotation.key_lifetime = Duration::from_secs(seconds);
        }
        if let Some(seconds) = self.publish_lead_seconds {
            rotation.publish_lead = Duration::from_secs(seconds);
        }
        rotation.validate().map_err(|e| {
            let key = match e {
                PolicyError::LeadNotShorterThanLifetime { .. } => "jwt.publish_lead_seconds",
                _ => "jwt.key_lifetime_seconds",
            };
            invalid(key, e)
        })?;
        Ok((key_type, rotation))
    }
}

impl RawEntry {
    /// The `i`th `[[entries]]` table as an entry to seed.
    fn validate(
        self,
        i: usize,
        trust_domain: &TrustDomain,
        local_agent_id: &SpiffeId,
        default_ttl: u32,
        max_ttl: u32,
    ) -> Result<EntrySpec, ConfigError> {
        let key = |field: &str| format!("entries[{i}].{field}");
        let spiffe_id = member(trust_domain, &key("spiffe_id"), &self.spiffe_id)?;
        spiffe_id
            .check_assignable()
            .map_err(|e| invalid(key("spiffe_id"), format!("{:?} {e}", self.spiffe_id)))?;
        // A custom node_api.agent_id is the system's too (see the Admin API).
        if &spiffe_id == local_agent_id {
            return Err(invalid(
                key("spiffe_id"),
                format!(
                    "{:?} is the local agent's ID (node_api.agent_id), which is reserved for the system",
                    self.spiffe_id
                ),
            ));
        }
        let parent_id = match &self.parent_id {
            Some(p) => member(trust_domain, &key("parent_id"), p)?,
            None => local_agent_id.clone(),
        };
        if self.selectors.is_empty() {
            return Err(invalid(key("selectors"), "must name at least one selector"));
        }
        let selectors = self
            .selectors
            .iter()
            .map(|s| Selector::parse_known(s).map_err(|e| invalid(key("selectors"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        lanyard_proto::selector::check_anchored(&selectors)
            .map_err(|e| invalid(key("selectors"), e))?;
        let ttl = self.jwt_svid_ttl_seconds.unwrap_or(default_ttl);
        if ttl == 0 || ttl > max_ttl {
            return Err(invalid(
                key("jwt_svid_ttl_seconds"),
                format!("must be between 1 and jwt.max_ttl_seconds ({max_ttl})"),
            ));
        }
        let mut spec = EntrySpec::new(
            spiffe_id,
            parent_id,
            selectors,
            Duration::from_secs(ttl.into()),
        );
        spec.x509_svid_ttl = entries::x509_svid_ttl(self.x509_svid_ttl_seconds.unwrap_or(0))
            .map_err(|e| invalid(key("x509_svid_ttl_seconds"), e))?;
        if let Some(hint) = self.hint {
            entries::check_hint(&hint).map_err(|e| invalid(key("hint"), e))?;
            spec.hint = hint;
        }
        if let Some(claims) = self.claims {
            let json = serde_json::to_string(&claims).map_err(|e| invalid(key("claims"), e))?;
            // TOML dates arrive as serde's private wrapper objects: JSON has no dates.
            if json.contains("$__toml_private_datetime") {
                return Err(invalid(
                    key("claims"),
                    "TOML dates and times have no JSON form: quote them as strings",
                ));
            }
            spec.claims = entries::checked_claims(&json).map_err(|e| invalid(key("claims"), e))?;
        }
        Ok(spec)
    }
}

impl RawDatastore {
    /// The datastore URL: as configured, or SQLite in the data dir.
    fn url(self, data_dir: &Path) -> Result<String, ConfigError> {
        match self.url {
            Some(url)
                if url.starts_with("sqlite://")
                    || url.starts_with("postgres://")
                    || url.starts_with("postgresql://") =>
            {
                Ok(url)
            }
            Some(url) => {
                let scheme = url.split("://").next().unwrap_or_default();
                Err(invalid(
                    "datastore.url",
                    format!("scheme {scheme:?} is neither sqlite nor postgres"),
                ))
            }
            None => Ok(format!(
                "sqlite://{}?mode=rwc",
                data_dir.join("datastore.sqlite3").display()
            )),
        }
    }
}

fn validate_server_id(server_id: String) -> Result<String, ConfigError> {
    if !server_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(invalid(
            "server_id",
            "may only contain letters, digits, '.', '-' and '_'",
        ));
    }
    Ok(server_id)
}

impl RawAdmin {
    fn validate(self, data_dir: &Path) -> Result<AdminConfig, ConfigError> {
        let admin = AdminConfig {
            socket: self.socket.unwrap_or_else(|| data_dir.join("admin.sock")),
            uid: self.uid,
        };
        if !admin.socket.is_absolute() {
            return Err(invalid("admin.socket", "must be an absolute path"));
        }
        if admin.uid.is_some() && admin.socket.starts_with(data_dir) {
            // data_dir is kept 0700: the other uid could not reach the socket.
            return Err(invalid(
                "admin.socket",
                "with admin.uid set, must be outside data_dir (which only the server's uid may enter), \
                 e.g. /run/lanyard-admin/admin.sock",
            ));
        }
        Ok(admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
trust_domain = "example.org"
issuer = "https://oidc.example.org/lanyard"
data_dir = "/var/lib/lanyard"

[[entries]]
spiffe_id = "spiffe://example.org/web"
selectors = ["unix:uid:1000"]
"#;

    fn error_of(text: &str) -> String {
        match ServerConfig::from_toml(text, "test.toml") {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn good_config_gets_defaults() -> Result<(), ConfigError> {
        let config = ServerConfig::from_toml(GOOD, "test.toml")?;
        assert_eq!(config.issuer.path(), "/lanyard");
        assert_eq!(config.issuer.host(), "oidc.example.org");
        assert_eq!(config.oidc.listen.to_string(), DEFAULT_OIDC_LISTEN);
        assert_eq!(
            config.node_api.socket,
            PathBuf::from("/var/lib/lanyard/node.sock")
        );
        assert_eq!(config.entries[0].parent_id, config.node_api.agent_id);
        assert_eq!(config.entries[0].jwt_svid_ttl, Duration::from_secs(300));
        Ok(())
    }

    #[test]
    fn each_bad_key_is_named() {
        let cases = [
            (
                GOOD.replace("data_dir", "data_directory"),
                "unknown field `data_directory`",
            ),
            (
                GOOD.replace("example.org\"\nissuer", "Example.org\"\nissuer"),
                "config key `trust_domain`",
            ),
            (
                GOOD.replace("https://oidc.example.org/lanyard", "ftp://x"),
                "config key `issuer`",
            ),
            (
                GOOD.replace("https://oidc.example.org/lanyard", "https://x/"),
                "config key `issuer`",
            ),
            (
                GOOD.replace("unix:uid:1000", "unix:shoe:1"),
                "config key `entries[0].selectors`",
            ),
            (
                GOOD.replace("spiffe://example.org/web", "spiffe://other.org/web"),
                "config key `entries[0].spiffe_id`",
            ),
            (
                GOOD.replace("spiffe://example.org/web", "spiffe://example.org/web/"),
                "config key `entries[0].spiffe_id`",
            ),
            (
                format!("{GOOD}jwt_svid_ttl_seconds = 999999\n"),
                "config key `entries[0].jwt_svid_ttl_seconds`",
            ),
            (
                format!("{GOOD}[admin]\nuid = 1001\n"),
                "config key `admin.socket`",
            ),
            (
                format!("{GOOD}[oidc]\nlisten = \"nowhere\"\n"),
                "config key `oidc.listen`",
            ),
            (
                format!("{GOOD}[oidc]\ntls_cert = \"/c.pem\"\n"),
                "config key `oidc.tls_key`",
            ),
            (
                "trust_domain = \"example.org\"\n".to_owned(),
                "missing field `issuer`",
            ),
        ];
        for (text, expected) in cases {
            let message = error_of(&text);
            assert!(
                message.contains(expected),
                "{message:?} should contain {expected:?}"
            );
            assert!(!message.contains('\n'), "one line: {message:?}");
        }
    }

    /// Issue 11, findings 4 and 6: entries that could never match, or that
    /// would take a system ID, stop the server at start with one line.
    /// An entry's claims are a TOML table, stored as compact JSON; bad ones
    /// are refused naming the key.
    #[test]
    fn entry_claims_are_a_checked_table() -> Result<(), ConfigError> {
        let with = |claims: &str| format!("{GOOD}[entries.claims]\n{claims}\n");
        let config = ServerConfig::from_toml(
            &with(
                "unit = \"{{ systemd:unit }}\"\n\"https://aws.amazon.com/tags\" = { principal_tags = { unit = [\"{{ systemd:unit }}\"] } }",
            ),
            "test.toml",
        )?;
        assert_eq!(
            config.entries[0].claims,
            r#"{"https://aws.amazon.com/tags":{"principal_tags":{"unit":["{{ systemd:unit }}"]}},"unit":"{{ systemd:unit }}"}"#
        );
        for (claims, reason) in [
            ("sub = \"x\"", "claim \"sub\" is reserved"),
            ("team = \"{{ k8s:ns }}\"", "names nothing the agent knows"),
            ("since = 2026-01-01", "quote them as strings"),
        ] {
            let error = error_of(&with(claims));
            assert!(error.contains("entries[0].claims"), "{error}");
            assert!(error.contains(reason), "{error}");
        }
        Ok(())
    }

    #[test]
    fn entries_with_unmatchable_selectors_or_system_ids_are_refused() {
        let selector = |value: &str| GOOD.replace("unix:uid:1000", value);
        let id = |value: &str| GOOD.replace("spiffe://example.org/web", value);
        let cases = [
            (selector("unix:uid:-1"), "entries[0].selectors", "decimal"),
            (
                selector("unix:uid:01000"),
                "entries[0].selectors",
                "leading zeros",
            ),
            (selector("unix:uid: 1000"), "entries[0].selectors", "spaces"),
            (
                selector("unix:uid:1000\\n"),
                "entries[0].selectors",
                "decimal",
            ),
            (selector("unix:gid:xyz"), "entries[0].selectors", "decimal"),
            (
                selector("unix:sha256:not-hex"),
                "entries[0].selectors",
                "64 lowercase hex",
            ),
            (
                selector("unix:path:relative/bin"),
                "entries[0].selectors",
                "absolute",
            ),
            (
                selector("unix:path:/a/../b"),
                "entries[0].selectors",
                "normalised",
            ),
            (
                selector("unix:user:root\\u0000admin"),
                "entries[0].selectors",
                "control characters",
            ),
            (
                selector("unix:path:/usr/bin/sleep"),
                "entries[0].selectors",
                "must also select unix:uid or unix:gid",
            ),
            (
                selector(&format!("unix:sha256:{}", "ab".repeat(32))),
                "entries[0].selectors",
                "must also select unix:uid or unix:gid",
            ),
            (
                selector("unix:path:/usr/bin/sleep\", \"unix:user:root"),
                "entries[0].selectors",
                "must also select unix:uid or unix:gid",
            ),
            (
                id("spiffe://example.org"),
                "entries[0].spiffe_id",
                "needs a path",
            ),
            (
                id("spiffe://example.org/lanyard/agent/local"),
                "entries[0].spiffe_id",
                "reserved for the system",
            ),
            (
                id("spiffe://example.org/lanyard/server"),
                "entries[0].spiffe_id",
                "reserved for the system",
            ),
            (
                format!(
                    "{}[node_api]\nagent_id = \"spiffe://example.org/web\"\n",
                    GOOD.replace(
                        "[[entries]]",
                        "[[entries]]\nparent_id = \"spiffe://example.org/web\""
                    )
                ),
                "entries[0].spiffe_id",
                "local agent's ID",
            ),
        ];
        for (text, key, rule) in cases {
            let message = error_of(&text);
            assert!(
                message.contains(&format!("config key `{key}`")) && message.contains(rule),
                "{message:?} should name {key} and {rule:?}"
            );
            assert!(!message.contains('\n'), "one line: {message:?}");
        }
        // A binary beside a uid or a gid is fine.
        for anchored in [
            selector("unix:path:/usr/bin/sleep\", \"unix:uid:1000"),
            selector(&format!("unix:sha256:{}\", \"unix:gid:0", "ab".repeat(32))),
        ] {
            assert!(
                ServerConfig::from_toml(&anchored, "test.toml").is_ok(),
                "{anchored}"
            );
        }
        // The parent may be a system ID, and /lanyardx is not /lanyard/.
        let fine = id("spiffe://example.org/lanyardx").replace(
            "[[entries]]",
            "[[entries]]\nparent_id = \"spiffe://example.org/lanyard/agent/join_token/ab\"",
        );
        assert!(
            ServerConfig::from_toml(&fine, "test.toml").is_ok(),
            "{fine}"
        );
    }

    /// Issue 13: `[node_attestation]` is typed at load, its files read and
    /// parsed, every error naming its key.
    #[test]
    fn node_attestation_is_read_and_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let bundle = dir.path().join("ca.pem");
        std::fs::write(&bundle, ca.pem()).unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem").unwrap();
        let ca_line =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrQIj1dkV6VH6mwkMqZC6WXvhJL9dqZiaqq66F30Upi ca";
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("# fleet CA\n@cert-authority * {ca_line}\n@revoked * {ca_line}\n"),
        )
        .unwrap();
        let good = format!(
            "{GOOD}[node_attestation]\nchallenge_ttl_seconds = 10\n[node_attestation.x509pop]\nca_bundle = {:?}\n[node_attestation.sshpop]\ncert_authorities = [{ca_line:?}]\ncert_authorities_file = {:?}\n",
            bundle.display().to_string(),
            known_hosts.display().to_string()
        );
        let config = ServerConfig::from_toml(&good, "test.toml").unwrap();
        let attestation = &config.node_attestation;
        assert_eq!(attestation.challenge_ttl, Duration::from_secs(10));
        assert_eq!(attestation.max_pending_per_peer, 8);
        assert_eq!(attestation.x509pop.as_ref().unwrap().ca_bundle.len(), 1);
        let sshpop = attestation.sshpop.as_ref().unwrap();
        assert_eq!(
            (sshpop.cert_authorities.len(), sshpop.revoked.len()),
            (2, 1)
        );
        let defaults = ServerConfig::from_toml(GOOD, "test.toml").unwrap();
        assert!(defaults.node_attestation.x509pop.is_none());
        assert_eq!(
            defaults.node_attestation.challenge_ttl,
            Duration::from_secs(30)
        );

        let section = |body: &str| format!("{GOOD}[node_attestation]\n{body}\n");
        let cases = [
            (
                section("challenge_ttl_seconds = 61"),
                "node_attestation.challenge_ttl_seconds",
            ),
            (
                section("challenge_ttl_seconds = 0"),
                "node_attestation.challenge_ttl_seconds",
            ),
            (
                section("max_pending_per_peer = 0"),
                "node_attestation.max_pending_per_peer",
            ),
            (
                section("[node_attestation.x509pop]\nca_bundle = \"/nonexistent.pem\""),
                "node_attestation.x509pop.ca_bundle",
            ),
            (
                section(&format!(
                    "[node_attestation.x509pop]\nca_bundle = {:?}",
                    garbage.display().to_string()
                )),
                "node_attestation.x509pop.ca_bundle",
            ),
            (
                section(&format!(
                    "[node_attestation.x509pop]\nca_bundle = {:?}\ncrl = {:?}",
                    bundle.display().to_string(),
                    garbage.display().to_string()
                )),
                "node_attestation.x509pop.crl",
            ),
            (
                section("[node_attestation.sshpop]\ncert_authorities = [\"ssh-ed25519 AAAA\"]"),
                "node_attestation.sshpop.cert_authorities[0]",
            ),
            (
                section("[node_attestation.sshpop]"),
                "node_attestation.sshpop.cert_authorities",
            ),
            (
                section(&format!(
                    "[node_attestation.sshpop]\ncert_authorities_file = {:?}",
                    garbage.display().to_string()
                )),
                "node_attestation.sshpop.cert_authorities_file",
            ),
        ];
        for (text, key) in cases {
            let message = error_of(&text);
            assert!(
                message.contains(&format!("config key `{key}`")),
                "{message:?} should name {key}"
            );
            assert!(!message.contains('\n'), "one line: {message:?}");
        }
        assert!(error_of(&section("bogus = 1")).contains("unknown field `bogus`"));
    }

    #[test]
    fn parse_errors_carry_the_line() {
        let message = error_of(&GOOD.replace("[[entries]]", "[[entries]]\nbogus = 1"));
        assert!(
            message.starts_with("config test.toml, line 7:"),
            "{message}"
        );
    }
}
