//! `agent.toml`: read, typed and validated at load, every error naming its key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_proto::TrustDomain;
use serde::Deserialize;

pub const DEFAULT_SOCKET: &str = "/run/lanyard/agent/api.sock";
const DEFAULT_SYNC_INTERVAL_SECONDS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}, line {line}: {message}")]
    Parse {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub trust_domain: TrustDomain,
    /// The server's Node API socket.
    pub server_socket: PathBuf,
    /// Where the Workload API listens.
    pub socket: PathBuf,
    /// How often entries and bundles are fetched from the server.
    pub sync_interval: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: String,
    server: RawServer,
    #[serde(default)]
    workload_api: RawWorkloadApi,
    sync_interval_seconds: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    node_socket: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkloadApi {
    socket: Option<PathBuf>,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            line: e
                .span()
                .map_or(1, |span| text[..span.start].matches('\n').count() + 1),
            message: e.message().trim().replace('\n', "; "),
        })?;
        let trust_domain =
            TrustDomain::new(&raw.trust_domain).map_err(|e| invalid("trust_domain", e))?;
        let socket = raw
            .workload_api
            .socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        if !socket.is_absolute() {
            return Err(invalid("workload_api.socket", "must be an absolute path"));
        }
        if !raw.server.node_socket.is_absolute() {
            return Err(invalid("server.node_socket", "must be an absolute path"));
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
        Ok(Self {
            trust_domain,
            server_socket: raw.server.node_socket,
            socket,
            sync_interval: Duration::from_secs(interval.into()),
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
                format!("sync_interval_seconds = 0\n{GOOD}"),
                "config key `sync_interval_seconds`",
            ),
            (format!("colour = 1\n{GOOD}"), "unknown field `colour`"),
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
