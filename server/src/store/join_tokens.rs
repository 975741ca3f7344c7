//! Join tokens: single-use secrets with which an agent proves itself once.
//! Only a SHA-256 of each token is stored, so a copy of the datastore cannot
//! be used to attest.

use aws_lc_rs::digest;
use lanyard_host::random;
use lanyard_proto::{SpiffeId, TrustDomain};
use sqlx::Row;

use super::{Datastore, StoreError};
use lanyard_host::encoding::hex;

/// A freshly generated token; the plaintext exists only in this value.
#[derive(Clone)]
pub struct JoinToken {
    pub token: String,
    pub spiffe_id: SpiffeId,
    pub expires_at: i64,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token: its fingerprint at most.
        f.debug_struct("JoinToken")
            .field(
                "token_sha256",
                &lanyard_host::logging::secret_fingerprint(&self.token),
            )
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a token was refused; callers audit the reason but tell the agent less.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedeemError {
    #[error("join token is unknown")]
    Unknown,
    #[error("join token was already used")]
    AlreadyUsed,
    #[error("join token expired")]
    Expired,
}

fn token_hash(token: &str) -> String {
    hex(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

impl Datastore {
    /// Generates a token for `spiffe_id`, or for
    /// `spiffe://<td>/lanyard/agent/join_token/<hash prefix>` when none is given.
    pub async fn create_join_token(
        &self,
        trust_domain: &TrustDomain,
        spiffe_id: Option<SpiffeId>,
        ttl_seconds: i64,
        now: i64,
    ) -> Result<JoinToken, StoreError> {
        let token = random::identifier::<20>()
            .map_err(|_| StoreError::Conflict("no randomness available".into()))?;
        let hash = token_hash(&token);
        let spiffe_id = match spiffe_id {
            Some(id) => id,
            None => trust_domain
                .id_with_path(&format!("/lanyard/agent/join_token/{}", &hash[..16]))
                .map_err(|e| StoreError::Conflict(e.to_string()))?,
        };
        let expires_at = now.saturating_add(ttl_seconds);
        sqlx::query("INSERT INTO join_tokens (token_hash, spiffe_id, created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, NULL)")
            .bind(&hash)
            .bind(spiffe_id.as_str())
            .bind(now)
            .bind(expires_at)
            .execute(self.pool())
            .await?;
        Ok(JoinToken {
            token,
            spiffe_id,
            expires_at,
        })
    }

    /// Marks the token used and returns the agent ID it grants. The check and
    /// the mark are one statement, so two agents racing with one token cannot
    /// both win.
    pub async fn redeem_join_token(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Result<SpiffeId, RedeemError>, StoreError> {
        let hash = token_hash(token);
        let claimed = sqlx::query(
            "UPDATE join_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING spiffe_id",
        )
        .bind(now)
        .bind(&hash)
        .fetch_optional(self.pool())
        .await?;
        if let Some(row) = claimed {
            let raw: String = row.try_get("spiffe_id")?;
            return SpiffeId::parse(&raw)
                .map(Ok)
                .map_err(|e| StoreError::Corrupt {
                    what: "join token",
                    id: hash[..16].to_owned(),
                    source: e.into(),
                });
        }
        let row = sqlx::query("SELECT used_at, expires_at FROM join_tokens WHERE token_hash = $1")
            .bind(&hash)
            .fetch_optional(self.pool())
            .await?;
        Ok(Err(match row {
            None => RedeemError::Unknown,
            Some(row) if row.try_get::<Option<i64>, _>("used_at")?.is_some() => {
                RedeemError::AlreadyUsed
            }
            Some(_) => RedeemError::Expired,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::datastores;
    use super::*;

    #[tokio::test]
    async fn tokens_are_single_use_and_expire() {
        let td = TrustDomain::new("example.org").unwrap();
        for (_dir, store) in datastores().await {
            let token = store.create_join_token(&td, None, 600, 100).await.unwrap();
            assert!(
                token
                    .spiffe_id
                    .as_str()
                    .starts_with("spiffe://example.org/lanyard/agent/join_token/")
            );
            assert!(
                !token.spiffe_id.as_str().contains(&token.token),
                "the ID must not reveal the token"
            );
            assert_eq!(
                store.redeem_join_token(&token.token, 101).await.unwrap(),
                Ok(token.spiffe_id.clone())
            );
            assert_eq!(
                store.redeem_join_token(&token.token, 102).await.unwrap(),
                Err(RedeemError::AlreadyUsed)
            );
            assert_eq!(
                store.redeem_join_token("nope", 102).await.unwrap(),
                Err(RedeemError::Unknown)
            );

            let named = td.id_with_path("/node/db-1").unwrap();
            let short = store
                .create_join_token(&td, Some(named), 10, 100)
                .await
                .unwrap();
            assert_eq!(
                store.redeem_join_token(&short.token, 110).await.unwrap(),
                Err(RedeemError::Expired)
            );
        }
    }
}
