//! Keeping the agent's SVID alive: renewed at half its remaining life, saved,
//! and the server client pointed at a channel that presents it, for as long
//! as the agent runs. An agent that attests with host material (x509pop,
//! sshpop) also attests again by itself when the server says only that
//! cures its refusal (evicted, unknown, banned) or its SVID has expired.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lanyard_proto::TrustDomain;
use tokio::sync::watch;

use std::sync::Arc;

use super::NodeClientError;
use super::attestation::{IdentityError, attest_within, renew_over};
use super::client::ServerClient;
use super::group::ServerGroup;
use super::identity::AgentCredentials;
use crate::backoff::Backoff;
use crate::config::NodeAttestation;

/// After a failed renewal or save, try again this soon (the SVID is still valid).
const RENEW_RETRY: Duration = Duration::from_secs(30);
/// Retries of a failed re-attestation: from about this soon…
const REATTEST_MIN_BACKOFF: Duration = Duration::from_secs(1);
/// …up to about this long apart.
const REATTEST_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What attesting again by itself takes: the host material (x509pop or
/// sshpop; join tokens are spent once) and what to do after it succeeded.
pub(crate) struct Reattestation {
    pub(crate) trust_domain: TrustDomain,
    pub(crate) attestation: NodeAttestation,
    /// Called after a new attestation is in use (the entry sync starts over:
    /// node groups may have changed).
    pub(crate) on_reattested: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Reattestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reattestation")
            .field("trust_domain", &self.trust_domain)
            .field("attestation", &self.attestation)
            .finish_non_exhaustive()
    }
}

/// Renews the SVID at half its remaining life (through any server of
/// `servers`), saves it, and makes `client` present it; until `shutdown`
/// changes. Each renewal is given up after `server_timeout` and retried: the server accepts the
/// previous SVID for a renewal until the new one is used, so a response lost
/// to the deadline costs a retry, not the agent's identity.
///
/// The new SVID is used even when saving it fails, and its first use kills
/// the old one; saving is retried until it succeeds, so that a restart does
/// not come back with the refused one.
///
/// With `reattestation`, a refusal that only a new attestation cures (on any
/// call, or on the renewal), or an SVID past its expiry, makes the agent
/// attest again with its host material, retried with jittered backoff
/// (1 s up to 5 min) until it succeeds; meanwhile the caches keep serving
/// what they hold. Without, such refusals are only logged, as before.
pub(crate) async fn renew_forever(
    servers: Arc<ServerGroup>,
    data_dir: PathBuf,
    mut creds: AgentCredentials,
    client: ServerClient,
    server_timeout: Duration,
    reattestation: Option<Reattestation>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut renew_at = Instant::now() + half_life(&creds);
    let mut saved = true;
    // When set, the agent must attest again, next at this instant.
    let mut reattest_at: Option<Instant> = None;
    let mut backoff = Backoff::new(REATTEST_MIN_BACKOFF, REATTEST_MAX_BACKOFF);
    let reattests = reattestation.is_some();
    loop {
        let wake = match reattest_at {
            Some(at) => at,
            None if saved => renew_at,
            None => renew_at.min(Instant::now() + RENEW_RETRY),
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            // The server issued a successor this agent never used (its answer
            // was lost, or the agent restarted before saving it): renew now.
            _ = client.renewal_requested() => renew_at = Instant::now(),
            _ = client.reattestation_requested(), if reattests && reattest_at.is_none() => {
                tracing::warn!(agent = %creds.spiffe_id, "the server refused this agent's SVID (evicted, unknown or banned); attesting again");
                reattest_at = Some(Instant::now());
            }
            _ = shutdown.changed() => return,
        }
        if !saved {
            saved = save_logged(&creds, &data_dir);
        }
        if reattests && reattest_at.is_none() && creds.expires_at <= lanyard_host::clock::now() {
            tracing::warn!(agent = %creds.spiffe_id, "the agent SVID has expired; attesting again");
            reattest_at = Some(Instant::now());
        }
        if let (Some(at), Some(reattestation)) = (reattest_at, &reattestation) {
            if Instant::now() < at {
                continue;
            }
            match attest_within(
                &servers,
                &reattestation.trust_domain,
                &reattestation.attestation,
                server_timeout,
            )
            .await
            {
                Ok(new) => {
                    client.replace_identity(new.clone());
                    creds = new;
                    saved = save_logged(&creds, &data_dir);
                    (reattestation.on_reattested)();
                    reattest_at = None;
                    backoff.reset();
                    renew_at = Instant::now() + half_life(&creds);
                    tracing::info!(agent = %creds.spiffe_id, method = reattestation.attestation.method(), expires_at = creds.expires_at, "attested again");
                }
                Err(e) => {
                    let delay = backoff.next();
                    log_failed_reattestation(&e, delay);
                    reattest_at = Some(Instant::now() + delay);
                }
            }
            continue;
        }
        if Instant::now() < renew_at {
            continue;
        }
        let renewal = renew_over(&servers, Some(server_timeout), &creds);
        let renewed = match tokio::time::timeout(server_timeout, renewal).await {
            Ok(Ok(new)) => Ok(new),
            Ok(Err(NodeClientError::NoAnswer(_))) | Err(_) => {
                Err(IdentityError::Timeout(server_timeout))
            }
            Ok(Err(e)) => Err(e.into()),
        };
        match renewed {
            Ok(new) => {
                client.replace_identity(new.clone());
                creds = new;
                saved = save_logged(&creds, &data_dir);
                renew_at = Instant::now() + half_life(&creds);
                tracing::info!(agent = %creds.spiffe_id, expires_at = creds.expires_at, "renewed the agent SVID");
            }
            Err(e) if reattests && needs_reattestation(&e) => {
                tracing::warn!(agent = %creds.spiffe_id, error = %e, "the server refused to renew this agent's SVID; attesting again");
                reattest_at = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the agent SVID failed; retrying");
                renew_at = Instant::now() + RENEW_RETRY;
            }
        }
    }
}

/// Whether `error` is the server saying only a new attestation helps.
fn needs_reattestation(error: &IdentityError) -> bool {
    matches!(
        error,
        IdentityError::Node(NodeClientError::Refused(status))
            if status.metadata().contains_key(lanyard_proto::REATTEST_REQUIRED_METADATA)
    )
}

/// One line per failed attempt; a refusal by the server (a ban, a
/// certificate it does not accept) at error level, with its reason.
fn log_failed_reattestation(error: &IdentityError, retry_in: Duration) {
    let retry_in_s = retry_in.as_secs_f32().round();
    match error {
        IdentityError::Node(NodeClientError::Refused(status))
            if matches!(
                status.code(),
                tonic::Code::PermissionDenied
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::InvalidArgument
            ) =>
        {
            tracing::error!(
                code = ?status.code(),
                reason = status.message(),
                retry_in_s,
                "the server refused this node's attestation; an operator must act (a banned agent: `lanyard-server agent unban`; else the host certificate or the server's node_attestation config); retrying"
            );
        }
        other => {
            tracing::warn!(error = %other, retry_in_s, "attesting again failed; retrying");
        }
    }
}

/// Saves `creds`; false (and an error logged) when that failed.
fn save_logged(creds: &AgentCredentials, data_dir: &Path) -> bool {
    match creds.save(data_dir) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, dir = %data_dir.display(), "saving the new agent SVID failed; it is in use, saving is retried");
            false
        }
    }
}

fn half_life(creds: &AgentCredentials) -> Duration {
    let remaining = u64::try_from(creds.expires_at - lanyard_host::clock::now()).unwrap_or(0);
    Duration::from_secs(remaining / 2).max(Duration::from_secs(1))
}
