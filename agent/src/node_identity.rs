//! The agent's own identity towards a remote server: the stored X.509 SVID,
//! or a fresh attestation with a join token when there is none; then renewal
//! at half-life for as long as the agent runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::config::JoinToken;
use crate::node_client::{self, AgentCredentials, NodeClientError, ServerEndpoint};
use crate::server_client::ServerClient;

/// After a failed renewal or save, try again this soon (the SVID is still valid).
const RENEW_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NodeIdentityError {
    #[error(transparent)]
    Node(#[from] NodeClientError),
    #[error(
        "no agent SVID in {0} and no join token: give server.join_token_file, --join-token-file or LANYARD_JOIN_TOKEN"
    )]
    NotAttested(PathBuf),
    #[error("join token: {0}")]
    JoinToken(String),
    #[error("the agent SVID in {0} has expired and no join token was given to attest again")]
    Expired(PathBuf),
    #[error("the server did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The stored credentials when still valid, else a new attestation with
/// `join_token` (saved before it is used). A stored SVID wins over a token,
/// so restarting with the same config never burns a token twice.
pub async fn establish(
    server: &ServerEndpoint,
    data_dir: &Path,
    join_token: Option<&JoinToken>,
) -> Result<AgentCredentials, NodeIdentityError> {
    let stored = AgentCredentials::load(data_dir)?;
    match (stored, join_token) {
        (Some(creds), _) if creds.expires_at > now() => {
            tracing::info!(agent = %creds.spiffe_id, "using the stored agent SVID");
            Ok(creds)
        }
        (stored, Some(token)) => {
            let token = token.read().map_err(NodeIdentityError::JoinToken)?;
            let creds = node_client::attest(server, &token).await?;
            creds.save(data_dir)?;
            let action = if stored.is_some() {
                "re-attested"
            } else {
                "attested"
            };
            tracing::info!(agent = %creds.spiffe_id, "{action} with a join token");
            Ok(creds)
        }
        (Some(_), None) => Err(NodeIdentityError::Expired(data_dir.to_owned())),
        (None, None) => Err(NodeIdentityError::NotAttested(data_dir.to_owned())),
    }
}

/// Renews the SVID at half its remaining life, saves it, and points `client`
/// at a channel that presents it; until `shutdown` changes. Each renewal is
/// given up after `server_timeout` and retried: the server accepts the
/// previous SVID for a renewal until the new one is used, so a response lost
/// to the deadline costs a retry, not the agent's identity.
///
/// The new SVID is used even when saving it fails, and its first use kills
/// the old one; saving is retried until it succeeds, so that a restart does
/// not come back with the refused one.
pub async fn renew_forever(
    server: ServerEndpoint,
    data_dir: PathBuf,
    mut creds: AgentCredentials,
    client: ServerClient,
    server_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut renew_at = Instant::now() + half_life(&creds);
    let mut saved = true;
    loop {
        let wake = if saved {
            renew_at
        } else {
            renew_at.min(Instant::now() + RENEW_RETRY)
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            // The server issued a successor this agent never used (its answer
            // was lost, or the agent restarted before saving it): renew now.
            _ = client.renewal_requested() => renew_at = Instant::now(),
            _ = shutdown.changed() => return,
        }
        if !saved {
            saved = save_logged(&creds, &data_dir);
        }
        if Instant::now() < renew_at {
            continue;
        }
        let renewed =
            match tokio::time::timeout(server_timeout, node_client::renew(&server, &creds)).await {
                Ok(Ok(new)) => node_client::channel(&server, Some(&new))
                    .map(|channel| (new, channel))
                    .map_err(NodeIdentityError::from),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(NodeIdentityError::Timeout(server_timeout)),
            };
        match renewed {
            Ok((new, channel)) => {
                client.replace_channel(channel);
                creds = new;
                saved = save_logged(&creds, &data_dir);
                renew_at = Instant::now() + half_life(&creds);
                tracing::info!(agent = %creds.spiffe_id, expires_at = creds.expires_at, "renewed the agent SVID");
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the agent SVID failed; retrying");
                renew_at = Instant::now() + RENEW_RETRY;
            }
        }
    }
}

/// Saves `creds`; false (and an error logged) when that failed.
fn save_logged(creds: &AgentCredentials, data_dir: &Path) -> bool {
    match creds.save(data_dir) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, dir = %data_dir.display(), "saving the renewed agent SVID failed; it is in use, saving is retried");
            false
        }
    }
}

fn half_life(creds: &AgentCredentials) -> Duration {
    let remaining = u64::try_from(creds.expires_at - now()).unwrap_or(0);
    Duration::from_secs(remaining / 2).max(Duration::from_secs(1))
}
