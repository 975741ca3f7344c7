//! How the agent becomes someone to the server: the SVID stored in its data
//! dir while it is valid, else node attestation with a single-use join token
//! (a fresh key pair and a CSR, over TLS that authenticates the server against
//! the configured trust bundle); and the trade of a current SVID for a new one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_proto::node::node_client::NodeClient;
use lanyard_proto::node::{AttestAgentRequest, RenewAgentRequest};
use rcgen::{CertificateParams, KeyPair};

use super::NodeClientError;
use super::channel::{ServerEndpoint, channel};
use super::identity::AgentCredentials;
use crate::config::{JoinToken, JoinTokenError};

/// Why the agent has no identity towards its server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error(transparent)]
    Node(#[from] NodeClientError),
    #[error(
        "no agent SVID in {0} and no join token: give server.join_token_file, --join-token-file or LANYARD_JOIN_TOKEN"
    )]
    NotAttested(PathBuf),
    #[error("join token: {0}")]
    JoinToken(#[source] JoinTokenError),
    #[error("the agent SVID in {0} has expired and no join token was given to attest again")]
    Expired(PathBuf),
    #[error("the server did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// The stored credentials when still valid, else a new attestation with
/// `join_token` (saved before it is used). A stored SVID wins over a token,
/// so restarting with the same config never burns a token twice.
pub(crate) async fn establish(
    server: &ServerEndpoint,
    data_dir: &Path,
    join_token: Option<&JoinToken>,
) -> Result<AgentCredentials, IdentityError> {
    let stored = AgentCredentials::load(data_dir)?;
    match (stored, join_token) {
        (Some(creds), _) if creds.expires_at > lanyard_host::clock::now() => {
            tracing::info!(agent = %creds.spiffe_id, "using the stored agent SVID");
            Ok(creds)
        }
        (stored, Some(token)) => {
            let token = token.read().map_err(IdentityError::JoinToken)?;
            let creds = attest(server, &token).await?;
            creds.save(data_dir)?;
            let action = if stored.is_some() {
                "re-attested"
            } else {
                "attested"
            };
            tracing::info!(agent = %creds.spiffe_id, "{action} with a join token");
            Ok(creds)
        }
        (Some(_), None) => Err(IdentityError::Expired(data_dir.to_owned())),
        (None, None) => Err(IdentityError::NotAttested(data_dir.to_owned())),
    }
}

/// A new key pair and a CSR (DER) over it.
fn csr() -> Result<(KeyPair, Vec<u8>), NodeClientError> {
    let key = KeyPair::generate()?;
    let request = CertificateParams::default().serialize_request(&key)?;
    Ok((key, request.der().to_vec()))
}

/// Attests with a single-use join token and returns the agent's first SVID.
pub async fn attest(
    server: &ServerEndpoint,
    join_token: &str,
) -> Result<AgentCredentials, NodeClientError> {
    let (key, csr) = csr()?;
    let response = NodeClient::new(channel(server, None)?)
        .attest_agent(AttestAgentRequest {
            join_token: join_token.to_owned(),
            csr,
        })
        .await
        .map_err(NodeClientError::Refused)?
        .into_inner();
    AgentCredentials::from_response(response, &key)
}

/// Trades the current SVID for a new one over a new key.
pub async fn renew(
    server: &ServerEndpoint,
    current: &AgentCredentials,
) -> Result<AgentCredentials, NodeClientError> {
    let (key, csr) = csr()?;
    let response = NodeClient::new(channel(server, Some(current))?)
        .renew_agent(RenewAgentRequest { csr })
        .await
        .map_err(NodeClientError::Refused)?
        .into_inner();
    AgentCredentials::from_response(response, &key)
}
