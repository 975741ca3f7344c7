//! The one room that talks to the server: the Node API channel and its
//! TLS, the agent's own credentials (attested, stored, renewed), and the
//! client every other room calls the server through.

mod attestation;
mod channel;
pub(crate) mod client;
mod group;
mod identity;
pub(crate) mod reachability;
mod renewal;
mod selection;
#[cfg(test)]
pub(crate) mod test_node;

use std::path::PathBuf;

use lanyard_host::private_files::FsError;

pub(crate) use attestation::establish;
pub use attestation::{
    EvidenceError, HostEvidence, IdentityError, attest, attest_node, csr_key_sha256, renew,
};
pub use channel::{SERVER_NAME, ServerEndpoint, channel};
pub(crate) use group::ServerGroup;
pub use identity::{AgentCredentials, CREDENTIALS_FILE};
pub(crate) use renewal::{Reattestation, renew_forever};

/// Why a call to the Node API, or the credentials it needs, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeClientError {
    #[error(transparent)]
    File(#[from] FsError),
    #[error("trust bundle {path}: {source}")]
    BundleUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trust bundle {0}: no CERTIFICATE block")]
    BundleEmpty(PathBuf),
    #[error("stored agent credentials in {dir} are unusable: {problem}")]
    Credentials { dir: PathBuf, problem: &'static str },
    #[error(
        "stored agent credentials in {dir} are unusable: the key does not fit the SVID ({source})"
    )]
    KeyMismatch { dir: PathBuf, source: rustls::Error },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("server name {SERVER_NAME:?}: {0}")]
    ServerName(#[from] rustls::pki_types::InvalidDnsNameError),
    #[error("generating the agent key: {0}")]
    Key(#[from] rcgen::Error),
    #[error("server address {0:?} is not host:port")]
    Address(String),
    #[error("the server refused: {} ({:?})", .0.message(), .0.code())]
    Refused(tonic::Status),
    #[error("the server answered with an unusable SVID: {0}")]
    BadSpiffeId(#[source] lanyard_proto::SpiffeIdError),
    #[error("the server answered with an unusable SVID: no CA bundle")]
    NoBundle,
    #[error("node attestation: {0}")]
    Evidence(#[from] EvidenceError),
    #[error("node attestation: {0}")]
    Protocol(&'static str),
    #[error("no server address resolved ({0})")]
    Unresolved(String),
    #[error("no server answered within {} s", .0.as_secs_f32())]
    NoAnswer(std::time::Duration),
}

impl From<group::GroupError<NodeClientError>> for NodeClientError {
    fn from(error: group::GroupError<NodeClientError>) -> Self {
        match error {
            group::GroupError::Call(e) => e,
            group::GroupError::Timeout(budget) => Self::NoAnswer(budget),
            group::GroupError::NoAddress(names) => Self::Unresolved(names),
        }
    }
}
