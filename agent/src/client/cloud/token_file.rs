//! `token-file`: keeps a JWT-SVID in a file for SDKs that read one
//! (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AZURE_FEDERATED_TOKEN_FILE`, GCP
//! file-sourced credentials). The file is owner-only and replaced atomically,
//! so a reader sees the old token or the new one, never half of either; and it
//! is rewritten before half of the token's lifetime has passed.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use lanyard_host::clock::now;
use lanyard_host::private_files;

use super::{CloudError, Svid, fetch_svid};

/// Where to write what.
#[derive(Debug, Clone)]
pub struct TokenFile {
    pub endpoint: String,
    pub audience: Vec<String>,
    pub spiffe_id: Option<String>,
    pub path: PathBuf,
}

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(30);
/// However long a token lives, look at it again within the hour.
const LONGEST_CHECK: Duration = Duration::from_secs(3600);

/// How long to wait before asking the agent again for the token now in the
/// file. The agent starts fetching a successor once a third of the lifetime
/// has passed, so asking at two fifths finds it; if the agent still hands out
/// the same token, ask again in small steps, well before half-life.
/// The times are the token's own claims, as the agent sent them: saturating
/// arithmetic and an upper bound keep absurd ones from overflowing or from
/// putting the next check off for years.
pub fn next_check(current: &Svid, now: i64) -> Duration {
    let lifetime = current.expires_at.saturating_sub(current.issued_at).max(1);
    let target = current.issued_at.saturating_add(lifetime / 5 * 2);
    let seconds = if now < target {
        target.saturating_sub(now)
    } else {
        (lifetime / 50).max(1)
    };
    Duration::from_secs(seconds.unsigned_abs()).min(LONGEST_CHECK)
}

impl TokenFile {
    /// Checks what can be checked before the first fetch.
    pub fn validate(&self) -> Result<(), CloudError> {
        if self.audience.iter().any(|a| a.trim().is_empty()) {
            return Err(CloudError::Invalid("--audience must not be empty".into()));
        }
        let parent = private_files::parent_dir(&self.path);
        if !parent.is_dir() {
            return Err(CloudError::Invalid(format!(
                "--path {}: directory {} does not exist",
                self.path.display(),
                parent.display()
            )));
        }
        if self.path.is_dir() {
            return Err(CloudError::Invalid(format!(
                "--path {} is a directory; name a file",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Fetches a token and writes it once (`--once`); returns it.
    pub async fn write_once(&self) -> Result<Svid, CloudError> {
        self.fetch_if_new(None).await
    }

    /// Keeps the file fresh until `stop` resolves. Failures are logged and
    /// retried with backoff; the file keeps its last good token meanwhile.
    pub async fn run(&self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut current: Option<Svid> = None;
        let mut retry = FIRST_RETRY;
        loop {
            let wait = match self.fetch_if_new(current.as_ref()).await {
                Ok(svid) => {
                    retry = FIRST_RETRY;
                    let wait = next_check(&svid, now());
                    current = Some(svid);
                    wait
                }
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), %error, "token file not refreshed; retrying in {} s", retry.as_secs());
                    let wait = retry;
                    retry = (retry * 2).min(LONGEST_RETRY);
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut stop => return,
            }
        }
    }

    /// Asks the agent; writes the file only when the token changed.
    async fn fetch_if_new(&self, current: Option<&Svid>) -> Result<Svid, CloudError> {
        let svid = fetch_svid(&self.endpoint, &self.audience, self.spiffe_id.as_deref()).await?;
        if current.is_none_or(|c| c.token != svid.token) {
            private_files::write_private_file(&self.path, svid.token.as_bytes())?;
            tracing::info!(
                path = %self.path.display(),
                spiffe_id = %svid.spiffe_id,
                expires_at = svid.expires_at,
                "wrote a new JWT-SVID"
            );
        }
        Ok(svid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svid(issued_at: i64, expires_at: i64) -> Svid {
        Svid {
            spiffe_id: "spiffe://td/w".into(),
            token: "t".into(),
            issued_at,
            expires_at,
        }
    }

    #[test]
    fn checks_after_the_agents_refresh_point_and_before_half_life() {
        let token = svid(1_000, 1_300);
        // Fresh token: come back at two fifths (120 s in), past the agent's third (100 s).
        assert_eq!(next_check(&token, 1_000), Duration::from_secs(120));
        assert_eq!(next_check(&token, 1_100), Duration::from_secs(20));
        // Still the same token at two fifths: small steps (6 s), half-life is at 150 s.
        assert_eq!(next_check(&token, 1_120), Duration::from_secs(6));
        // A very short token still waits at least a second between asks.
        assert_eq!(next_check(&svid(0, 2), 5), Duration::from_secs(1));
    }

    #[test]
    fn absurd_claim_times_neither_overflow_nor_postpone_the_next_check_for_long() {
        for (issued_at, expires_at, now) in [
            (0, i64::MAX, 0),
            (i64::MIN, i64::MAX, 0),
            (i64::MAX, i64::MIN, 0),
            (i64::MAX - 10, i64::MAX, i64::MIN),
        ] {
            let wait = next_check(&svid(issued_at, expires_at), now);
            assert!(
                wait >= Duration::from_secs(1),
                "{issued_at} {expires_at}: {wait:?}"
            );
            assert!(wait <= LONGEST_CHECK, "{issued_at} {expires_at}: {wait:?}");
        }
    }

    #[test]
    fn a_missing_directory_is_named() {
        let file = TokenFile {
            endpoint: "unix:///nowhere".into(),
            audience: vec!["a".into()],
            spiffe_id: None,
            path: "/nonexistent-dir/token".into(),
        };
        let error = file.validate().unwrap_err().to_string();
        assert!(error.contains("/nonexistent-dir"), "{error}");
    }
}
