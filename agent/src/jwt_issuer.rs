//! JWT-SVIDs for workloads: from the cache when it has a usable one, else
//! from the server within a bounded wait. Only `tonic::Status` leaves here:
//! these are the Workload API's answers.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Code, Status};

use crate::jwt_cache::{CacheKey, CachedSvid, JwtSvidCache, Lookup};
use crate::reachability::Reachability;
use crate::server_client::{ServerClient, on_behalf};
use crate::state::AgentEntry;

#[derive(Debug, Clone)]
pub struct JwtSvidIssuer {
    cache: Arc<JwtSvidCache>,
    server: ServerClient,
    timeout: Duration,
    reachability: Arc<Reachability>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl JwtSvidIssuer {
    pub fn new(
        server: ServerClient,
        cache_size: usize,
        timeout: Duration,
        reachability: Arc<Reachability>,
    ) -> Self {
        Self {
            cache: Arc::new(JwtSvidCache::new(cache_size)),
            server,
            timeout,
            reachability,
        }
    }

    /// A JWT-SVID for `entry` and `audience`.
    pub async fn fetch(
        &self,
        entry: &AgentEntry,
        audience: &[String],
    ) -> Result<CachedSvid, Status> {
        let key = CacheKey::new(&entry.spiffe_id, audience);
        match self.cache.lookup(&key, now()) {
            Lookup::Fresh { svid, refresh } => {
                if refresh {
                    self.refresh_in_background(key, entry.id.clone(), audience.to_vec());
                }
                Ok(svid)
            }
            // The server is known to be away: do not make the caller wait for it.
            Lookup::Stale(svid) if self.reachability.is_down() => {
                if self.cache.claim_refresh(&key) {
                    self.refresh_in_background(key, entry.id.clone(), audience.to_vec());
                }
                Ok(svid)
            }
            Lookup::Stale(svid) => match self.mint(&entry.id, audience).await {
                Ok(new) => {
                    self.cache.store(key, new.clone());
                    Ok(new)
                }
                Err(status) if status.code() == Code::Unavailable => Ok(svid),
                Err(status) => Err(status),
            },
            Lookup::Miss => {
                let new = self.mint(&entry.id, audience).await?;
                self.cache.store(key, new.clone());
                Ok(new)
            }
        }
    }

    fn refresh_in_background(&self, key: CacheKey, entry_id: String, audience: Vec<String>) {
        let issuer = self.clone();
        tokio::spawn(async move {
            match issuer.mint(&entry_id, &audience).await {
                Ok(new) => issuer.cache.store(key, new),
                Err(_) => issuer.cache.refresh_failed(&key),
            }
        });
    }

    /// Asks the server, waiting at most the configured timeout. Refusals
    /// (bad audience, entry gone) pass through; anything else is `Unavailable`.
    async fn mint(&self, entry_id: &str, audience: &[String]) -> Result<CachedSvid, Status> {
        let minted = on_behalf(
            &self.reachability,
            self.timeout,
            "a JWT-SVID",
            self.server.mint_jwt_svid(entry_id, audience),
        )
        .await?;
        Ok(CachedSvid {
            spiffe_id: minted.spiffe_id,
            token: minted.token,
            issued_at: minted.issued_at,
            expires_at: minted.expires_at,
        })
    }
}
