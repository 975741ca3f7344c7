//! Keeping the agent's SVID alive: renewed at half its remaining life, saved,
//! and the server client pointed at a channel that presents it, for as long
//! as the agent runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::attestation::{IdentityError, renew};
use super::channel::{ServerEndpoint, channel};
use super::client::ServerClient;
use super::identity::AgentCredentials;

/// After a failed renewal or save, try again this soon (the SVID is still valid).
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// Renews the SVID at half its remaining life, saves it, and points `client`
/// at a channel that presents it; until `shutdown` changes. Each renewal is
/// given up after `server_timeout` and retried: the server accepts the
/// previous SVID for a renewal until the new one is used, so a response lost
/// to the deadline costs a retry, not the agent's identity.
///
/// The new SVID is used even when saving it fails, and its first use kills
/// the old one; saving is retried until it succeeds, so that a restart does
/// not come back with the refused one.
pub(crate) async fn renew_forever(
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
        let renewed = match tokio::time::timeout(server_timeout, renew(&server, &creds)).await {
            Ok(Ok(new)) => channel(&server, Some(&new))
                .map(|channel| (new, channel))
                .map_err(IdentityError::from),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(IdentityError::Timeout(server_timeout)),
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
    let remaining = u64::try_from(creds.expires_at - lanyard_host::clock::now()).unwrap_or(0);
    Duration::from_secs(remaining / 2).max(Duration::from_secs(1))
}
