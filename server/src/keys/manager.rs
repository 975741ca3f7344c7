//! Runs the rotation schedule against the datastore and the key directory:
//! generates the next key when the schedule says so (file first, then its
//! public record), deletes keys whose tokens have all expired, and holds the
//! key that signs now and the JWKS to publish. In an HA group every server
//! rotates its own keys and publishes the union of everyone's records.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::ArcSwapOption;

use lanyard_proto::{Jwk, Jwks};

use super::schedule::{self, KeyRecord, RotationPolicy};
use super::{JwtSigningKey, KeyDir, KeyError, KeyType};
use crate::store::{self, Datastore, KeyRecordRow, StoreError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyManagerError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no signing key is active after rotation; check the server clock")]
    NoSigningKey,
}

/// The keys in force at one moment.
#[derive(Debug)]
pub struct KeySet {
    pub signer: Arc<JwtSigningKey>,
    pub jwks: Jwks,
}

#[derive(Debug)]
pub struct KeyManager {
    store: Datastore,
    dir: KeyDir,
    owner: String,
    policy: RotationPolicy,
    key_type: KeyType,
    current: ArcSwapOption<KeySet>,
    /// When this server's signing key next changes (Unix seconds; 0 before
    /// the first rotation): its next key's activation, else the current
    /// key's retirement.
    next_activation: AtomicI64,
}

fn to_record(row: &KeyRecordRow) -> Result<KeyRecord, StoreError> {
    let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Corrupt {
        what: "signing key record",
        id: row.kid.clone(),
        source,
    };
    Ok(KeyRecord {
        kid: row.kid.clone(),
        key_type: KeyType::from_str(&row.key_type).map_err(|e| corrupt(e.into()))?,
        public_jwk: serde_json::from_str::<Jwk>(&row.public_jwk).map_err(|e| corrupt(e.into()))?,
        created_at: row.created_at,
        activate_at: row.activate_at,
        retire_at: row.retire_at,
        remove_at: row.remove_at,
    })
}

fn to_row(record: &KeyRecord, owner: &str) -> Result<KeyRecordRow, serde_json::Error> {
    Ok(KeyRecordRow {
        kid: record.kid.clone(),
        owner: owner.to_owned(),
        key_type: record.key_type.as_str().to_owned(),
        public_jwk: serde_json::to_string(&record.public_jwk)?,
        created_at: record.created_at,
        activate_at: record.activate_at,
        retire_at: record.retire_at,
        remove_at: record.remove_at,
    })
}

impl KeyManager {
    /// Opens the key directory and brings the keys up to date at `now`.
    pub async fn open(
        store: Datastore,
        keys_dir: &Path,
        owner: &str,
        policy: RotationPolicy,
        key_type: KeyType,
        now: i64,
    ) -> Result<Self, KeyManagerError> {
        let manager = Self {
            store,
            dir: KeyDir::open(keys_dir)?,
            owner: owner.to_owned(),
            policy,
            key_type,
            current: ArcSwapOption::empty(),
            next_activation: AtomicI64::new(0),
        };
        manager.rotate(now).await?;
        Ok(manager)
    }

    /// The signing key and JWKS in force.
    pub fn current(&self) -> Result<Arc<KeySet>, KeyManagerError> {
        self.current
            .load_full()
            .ok_or(KeyManagerError::NoSigningKey)
    }

    /// When this server's signing key next changes, in Unix seconds: the
    /// activation of its next published key, else the current key's
    /// retirement (by which a successor must be active). None before the
    /// first rotation.
    pub fn next_activation(&self) -> Option<i64> {
        Some(self.next_activation.load(Ordering::Relaxed)).filter(|at| *at > 0)
    }

    /// Applies the schedule at `now`. Returns true when the signing key or the
    /// published set changed. Deciding again at the same instant changes nothing.
    pub async fn rotate(&self, now: i64) -> Result<bool, KeyManagerError> {
        let rows = store::bounded(self.store.list_keys()).await?;
        let mut everyone: Vec<(String, KeyRecord)> = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut record = to_record(row)?;
            if self.policy.extend_retention(&mut record, now) && row.owner == self.owner {
                // Kept, so that a later lower max TTL cannot shorten it again.
                store::bounded(self.store.set_key_remove_at(&record.kid, record.remove_at)).await?;
                tracing::info!(
                    kid = record.kid,
                    remove_at = record.remove_at,
                    "JWT signing key stays published longer: the max token TTL was raised"
                );
            }
            everyone.push((row.owner.clone(), record));
        }
        let mut own: Vec<KeyRecord> = everyone
            .iter()
            .filter(|(o, _)| *o == self.owner)
            .map(|(_, r)| r.clone())
            .collect();

        if let Some(plan) = self.policy.next_key(&own, now, self.key_type) {
            let key = match (own.is_empty(), plan.key_type) {
                // A key from before rotation existed keeps signing: it may already be registered with clouds.
                (true, KeyType::EcP256) => match self.dir.adopt_legacy_key()? {
                    Some(key) => key,
                    None => self.dir.generate(plan.key_type)?,
                },
                _ => self.dir.generate(plan.key_type)?,
            };
            let record = plan.record(&key, now);
            let row = to_row(&record, &self.owner).map_err(KeyError::Encode)?;
            store::bounded(self.store.insert_key(&row)).await?;
            tracing::info!(
                kid = record.kid,
                activate_at = record.activate_at,
                alg = key.alg(),
                "new JWT signing key published"
            );
            everyone.push((self.owner.clone(), record.clone()));
            own.push(record);
        }
        for expired in schedule::expired(&own, now) {
            // Record first, then file: a file without a record is harmless, the reverse is not.
            store::bounded(self.store.delete_key(&expired.kid)).await?;
            self.dir.delete(&expired.kid)?;
            tracing::info!(kid = expired.kid, "retired JWT signing key removed");
        }
        everyone.retain(|(_, r)| r.remove_at > now);
        own.retain(|r| r.remove_at > now);

        let signing = schedule::signing_record(&own, now).ok_or(KeyManagerError::NoSigningKey)?;
        let next_activation = own
            .iter()
            .map(|r| r.activate_at)
            .filter(|at| *at > now)
            .min()
            .unwrap_or(signing.retire_at);
        self.next_activation
            .store(next_activation, Ordering::Relaxed);
        let jwks = self.published(&everyone, now);
        let previous = self.current().ok();
        let signer = match &previous {
            Some(set) if set.signer.kid() == signing.kid => set.signer.clone(),
            _ => Arc::new(self.dir.load(&signing.kid)?),
        };
        let changed = previous
            .as_ref()
            .is_none_or(|set| set.signer.kid() != signer.kid() || set.jwks != jwks);
        if changed {
            let set = Arc::new(KeySet { signer, jwks });
            self.current.store(Some(set));
        }
        Ok(changed)
    }

    /// Each server's published keys (the cap applies per server), newest first.
    fn published(&self, everyone: &[(String, KeyRecord)], now: i64) -> Jwks {
        let mut owners: Vec<&str> = everyone.iter().map(|(o, _)| o.as_str()).collect();
        owners.sort_unstable();
        owners.dedup();
        let mut keys: Vec<&KeyRecord> = Vec::new();
        for owner in owners {
            let records: Vec<KeyRecord> = everyone
                .iter()
                .filter(|(o, _)| o == owner)
                .map(|(_, r)| r.clone())
                .collect();
            for published in self.policy.published(&records, now) {
                if let Some((_, record)) = everyone
                    .iter()
                    .find(|(o, r)| o == owner && r.kid == published.kid)
                {
                    keys.push(record);
                }
            }
        }
        keys.sort_by(|a, b| {
            b.activate_at
                .cmp(&a.activate_at)
                .then_with(|| a.kid.cmp(&b.kid))
        });
        Jwks {
            keys: keys.into_iter().map(|r| r.public_jwk.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::test_support::datastores;

    const HOUR: i64 = 3600;
    const DAY: i64 = 24 * HOUR;

    fn policy() -> RotationPolicy {
        RotationPolicy::with_max_token_ttl(Duration::from_secs(HOUR as u64))
    }

    fn kids(jwks: &Jwks) -> Vec<String> {
        jwks.keys.iter().map(|k| k.kid.clone()).collect()
    }

    /// With the datastore gone (closed here; a PostgreSQL outage looks the
    /// same to the manager) a rotation fails and the keys in memory, which
    /// the JWKS and discovery documents are rendered from, stay as they were.
    #[tokio::test]
    async fn the_published_keys_survive_a_datastore_outage() {
        for (dir, store) in datastores().await {
            let t0 = 1_800_000_000;
            let manager = KeyManager::open(
                store.clone(),
                &dir.path().join("keys"),
                "server-a",
                RotationPolicy::with_max_token_ttl(Duration::from_secs(3600)),
                KeyType::EcP256,
                t0,
            )
            .await
            .unwrap();
            let before = kids(&manager.current().unwrap().jwks);
            assert!(!before.is_empty());
            store.close().await;
            assert!(manager.rotate(t0 + 60).await.is_err());
            assert_eq!(kids(&manager.current().unwrap().jwks), before);
        }
    }

    #[tokio::test]
    async fn a_raised_max_ttl_keeps_the_signing_key_published_for_the_longer_tokens() {
        for (dir, store) in datastores().await {
            let keys_dir = dir.path().join("keys");
            let t0 = 1_800_000_000;
            let open = |ttl_hours: u64, now: i64| {
                KeyManager::open(
                    store.clone(),
                    &keys_dir,
                    "server-a",
                    RotationPolicy::with_max_token_ttl(Duration::from_secs(ttl_hours * 3600)),
                    KeyType::EcP256,
                    now,
                )
            };
            let first = open(1, t0).await.unwrap();
            let kid = first.current().unwrap().signer.kid().to_owned();
            let stored = |kid: String| {
                let store = store.clone();
                async move {
                    store
                        .list_keys()
                        .await
                        .unwrap()
                        .into_iter()
                        .find(|r| r.kid == kid)
                }
            };
            let retire_at = stored(kid.clone()).await.unwrap().retire_at;

            // Restarted with 48 h tokens while the key still signs: it may sign
            // one just before it retires, valid 48 h after.
            let raised = open(48, t0 + DAY).await.unwrap();
            assert_eq!(raised.current().unwrap().signer.kid(), kid);
            let last_exp = retire_at + 48 * HOUR;
            assert!(stored(kid.clone()).await.unwrap().remove_at > last_exp);

            // Lowered again later: the key keeps its extended publication.
            let lowered = open(1, retire_at + 2 * HOUR).await.unwrap();
            assert!(kids(&lowered.current().unwrap().jwks).contains(&kid));
            lowered.rotate(last_exp).await.unwrap();
            assert!(
                kids(&lowered.current().unwrap().jwks).contains(&kid),
                "published until the last 48 h token has expired"
            );
        }
    }

    #[tokio::test]
    async fn publishes_before_use_and_retires_after_the_last_token_expires() {
        for (dir, store) in datastores().await {
            let keys_dir = dir.path().join("keys");
            let t0 = 1_800_000_000;
            let manager = KeyManager::open(
                store.clone(),
                &keys_dir,
                "server-a",
                policy(),
                KeyType::EcP256,
                t0,
            )
            .await
            .unwrap();
            let first = manager.current().unwrap().signer.kid().to_owned();
            assert_eq!(kids(&manager.current().unwrap().jwks), vec![first.clone()]);

            // A restart at the same moment adds no key.
            let restarted = KeyManager::open(
                store.clone(),
                &keys_dir,
                "server-a",
                policy(),
                KeyType::EcP256,
                t0,
            )
            .await
            .unwrap();
            assert_eq!(restarted.current().unwrap().signer.kid(), first);
            assert_eq!(store.list_keys().await.unwrap().len(), 1);

            // A day before the first key retires, its successor is published but does not sign.
            let lifetime = policy().key_lifetime.as_secs() as i64;
            let lead = policy().publish_lead.as_secs() as i64;
            assert!(manager.rotate(t0 + lifetime - lead).await.unwrap());
            let set = manager.current().unwrap();
            assert_eq!(set.signer.kid(), first, "the new key waits");
            assert_eq!(set.jwks.keys.len(), 2);
            let second = set.jwks.keys[0].kid.clone();
            assert_ne!(second, first);
            assert!(
                !manager.rotate(t0 + lifetime - lead).await.unwrap(),
                "deciding twice changes nothing"
            );

            // At retirement the successor signs; the old key stays published for its tokens.
            manager.rotate(t0 + lifetime).await.unwrap();
            let set = manager.current().unwrap();
            assert_eq!(set.signer.kid(), second);
            assert!(
                kids(&set.jwks).contains(&first),
                "tokens signed by the old key are still valid"
            );

            // Once every token it signed has expired (ttl + margin), it is gone: record and file.
            let gone = t0 + lifetime + HOUR + policy().safety_margin.as_secs() as i64;
            manager.rotate(gone).await.unwrap();
            let set = manager.current().unwrap();
            assert!(!kids(&set.jwks).contains(&first));
            assert!(!keys_dir.join(format!("{first}.pem")).exists());

            // Long simulation: never more than the bound, always a signer.
            for day in 0..120 {
                manager.rotate(gone + day * DAY).await.unwrap();
                assert!(
                    manager.current().unwrap().jwks.keys.len() <= policy().needed_published_keys()
                );
            }
        }
    }

    #[tokio::test]
    async fn servers_publish_the_union_and_sign_with_their_own() {
        for (dir, store) in datastores().await {
            let now = 1_800_000_000;
            let a = KeyManager::open(
                store.clone(),
                &dir.path().join("a"),
                "a",
                policy(),
                KeyType::EcP256,
                now,
            )
            .await
            .unwrap();
            let b = KeyManager::open(
                store.clone(),
                &dir.path().join("b"),
                "b",
                policy(),
                KeyType::Rsa2048,
                now,
            )
            .await
            .unwrap();
            a.rotate(now).await.unwrap();
            let (set_a, set_b) = (a.current().unwrap(), b.current().unwrap());
            assert_ne!(set_a.signer.kid(), set_b.signer.kid());
            assert_eq!(set_b.signer.alg(), "RS256");
            assert_eq!(set_a.jwks.keys.len(), 2, "A publishes B's key too");
            assert_eq!(set_a.jwks.algorithms().len(), 2);
        }
    }
}
