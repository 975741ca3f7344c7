//! X509-SVIDs for workloads. The key is made here, on the node, and never
//! leaves it: the server signs a CSR for one of this agent's entries. An SVID
//! is made the first time a workload asks for its entry, then kept and
//! renewed before half its life for as long as the entry is in force, so a
//! stream never hands out one past half-life while the server answers; while
//! it does not, the agent keeps serving what it has until it expires.

use crate::audit::{self, Caller, Trigger};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use lanyard_host::clock::now as unix_now;
use lanyard_host::sync::lock;

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use tokio::sync::watch;
use tonic::Status;

use crate::sync::entries::AgentEntry;
use crate::sync::state::SyncedState;
use crate::telemetry::{AgentMetrics, SvidKind, SvidSource};
use crate::upstream::client::{ServerClient, on_behalf};
use crate::upstream::reachability::Reachability;

/// An SVID is renewed once this fraction of its life has passed: before
/// half-life, with room for a slow or failed first attempt.
const RENEW_AT_FRACTION: f64 = 0.4;
/// Retries of a failed renewal: from this…
const RETRY_MIN: Duration = Duration::from_secs(1);
/// …doubling up to this.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// The renewal loop looks again at least this often.
const IDLE_CHECK: Duration = Duration::from_secs(60);

/// One workload identity: certificate chain and the key it certifies.
pub(crate) struct X509Svid {
    pub spiffe_id: String,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER.
    pub key: Vec<u8>,
    /// Unix seconds.
    pub expires_at: i64,
    renew_at: Instant,
}

impl std::fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum X509SvidError {
    #[error("making a key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("the server signed something other than what was asked: {0}")]
    BadCertificate(String),
    #[error("the server signed something other than what was asked: {0}")]
    Unparsable(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
}

#[derive(Debug)]
pub(crate) struct X509SvidCache {
    server: ServerClient,
    timeout: Duration,
    reachability: Arc<Reachability>,
    /// By entry id.
    svids: RwLock<HashMap<String, Arc<X509Svid>>>,
    /// One mint at a time per entry: concurrent first requests share it.
    minting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Bumped whenever an SVID is added, replaced or dropped.
    changed: watch::Sender<u64>,
    metrics: Arc<AgentMetrics>,
}

impl X509SvidCache {
    pub(crate) fn new(
        server: ServerClient,
        timeout: Duration,
        reachability: Arc<Reachability>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        Self {
            server,
            timeout,
            reachability,
            metrics,
            svids: RwLock::new(HashMap::new()),
            minting: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        }
    }

    /// Changes whenever any SVID is added, replaced or dropped.
    pub(crate) fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn cached(&self, entry_id: &str) -> Option<Arc<X509Svid>> {
        let svids = self.svids.read().unwrap_or_else(PoisonError::into_inner);
        svids
            .get(entry_id)
            .filter(|svid| svid.expires_at > unix_now())
            .cloned()
    }

    fn store(&self, entry_id: &str, svid: Arc<X509Svid>) {
        self.svids
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(entry_id.to_owned(), svid);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether an SVID held is still valid at `now` (Unix seconds).
    pub(crate) fn holds_valid(&self, now: i64) -> bool {
        self.svids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|svid| svid.expires_at > now)
    }

    /// The SVID of `entry`: the one held, or a new one from the server.
    pub(crate) async fn get(
        &self,
        entry: &AgentEntry,
        caller: Option<Caller>,
    ) -> Result<Arc<X509Svid>, Status> {
        if let Some(svid) = self.cached(&entry.id) {
            self.metrics.svid(SvidKind::X509, SvidSource::Cache);
            return Ok(svid);
        }
        let gate = lock(&self.minting)
            .entry(entry.id.clone())
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        // Whoever held the gate before may have made it already.
        if let Some(svid) = self.cached(&entry.id) {
            self.metrics.svid(SvidKind::X509, SvidSource::Cache);
            return Ok(svid);
        }
        let svid = Arc::new(self.mint(entry, caller, Trigger::Request).await?);
        self.store(&entry.id, svid.clone());
        self.metrics.svid(SvidKind::X509, SvidSource::Minted);
        Ok(svid)
    }

    /// A new key, a CSR for it, and the server's signature, within the timeout.
    async fn mint(
        &self,
        entry: &AgentEntry,
        caller: Option<Caller>,
        trigger: Trigger,
    ) -> Result<X509Svid, Status> {
        let (key, csr) = new_key_and_csr().map_err(|e| {
            tracing::error!(error = %e, "cannot make a key for an X509-SVID");
            Status::internal("the agent could not make a key")
        })?;
        let minted = on_behalf(
            &self.reachability,
            self.timeout,
            "an X509-SVID",
            self.server.mint_x509_svid(&entry.id, csr),
        )
        .await?;
        check_signed(&minted.cert_chain, &key, entry).map_err(|e| {
            tracing::error!(error = %e, entry = entry.id, "refusing an X509-SVID from the server");
            Status::unavailable("the server's X509-SVID was not usable")
        })?;
        audit::x509_svid_minted(&minted.spiffe_id, caller, trigger, minted.expires_at);
        let lifetime = u64::try_from(minted.expires_at.saturating_sub(unix_now())).unwrap_or(0);
        Ok(X509Svid {
            spiffe_id: minted.spiffe_id,
            chain: minted.cert_chain,
            key: key.serialize_der(),
            expires_at: minted.expires_at,
            renew_at: Instant::now() + Duration::from_secs(lifetime).mul_f64(RENEW_AT_FRACTION),
        })
    }

    /// Drops SVIDs whose entries left, renews those due, and sleeps until
    /// the next is due, until `shutdown` changes.
    pub(crate) async fn renew_forever(
        self: Arc<Self>,
        state: Arc<SyncedState>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut entries_changed = state.entries_changed();
        let mut svids_changed = self.changed();
        // Entry id → (failed attempts, next try).
        let mut retries: HashMap<String, (u32, Instant)> = HashMap::new();
        loop {
            let entries = state.entries_snapshot();
            let in_force: HashMap<&str, &AgentEntry> = entries
                .entries()
                .iter()
                .map(|e| (e.id.as_str(), e))
                .collect();
            let held: Vec<(String, Arc<X509Svid>)> = self
                .svids
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(id, svid)| (id.clone(), svid.clone()))
                .collect();
            let now = Instant::now();
            let mut next = now + IDLE_CHECK;
            let mut gone = Vec::new();
            for (id, svid) in held {
                let Some(entry) = in_force.get(id.as_str()).copied() else {
                    gone.push(id);
                    continue;
                };
                if entry.spiffe_id.as_str() != svid.spiffe_id {
                    gone.push(id);
                    continue;
                }
                let due = retries.get(&id).map_or(svid.renew_at, |(_, at)| *at);
                if due > now {
                    next = next.min(due);
                    continue;
                }
                match self.mint(entry, None, Trigger::Renewal).await {
                    Ok(renewed) => {
                        retries.remove(&id);
                        next = next.min(renewed.renew_at);
                        self.store(&id, Arc::new(renewed));
                        tracing::debug!(entry = id, "X509-SVID renewed");
                    }
                    Err(status) => {
                        let attempts = retries.get(&id).map_or(0, |(n, _)| *n) + 1;
                        let wait = RETRY_MIN
                            .saturating_mul(1 << attempts.min(5))
                            .min(RETRY_MAX);
                        tracing::debug!(entry = id, attempts, error = %status.message(), "X509-SVID renewal failed; keeping the current one");
                        retries.insert(id, (attempts, Instant::now() + wait));
                        next = next.min(Instant::now() + wait);
                    }
                }
            }
            if !gone.is_empty() {
                let mut svids = self.svids.write().unwrap_or_else(PoisonError::into_inner);
                let mut minting = lock(&self.minting);
                for id in &gone {
                    svids.remove(id);
                    minting.remove(id);
                    retries.remove(id);
                }
                drop((svids, minting));
                self.changed.send_modify(|v| *v += 1);
            }
            // Our own changes wake us too; looking again is cheap.
            svids_changed.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = entries_changed.changed() => {}
                _ = svids_changed.changed() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// A P-256 key made here and a CSR (DER) for it. The CSR names nothing: the
/// server decides the SVID's contents from the entry.
fn new_key_and_csr() -> Result<(KeyPair, Vec<u8>), rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// The leaf certifies our key and names the entry's SPIFFE ID.
fn check_signed(chain: &[Vec<u8>], key: &KeyPair, entry: &AgentEntry) -> Result<(), X509SvidError> {
    let leaf = chain
        .first()
        .ok_or_else(|| X509SvidError::BadCertificate("empty chain".to_owned()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(X509SvidError::Unparsable)?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(X509SvidError::BadCertificate(
            "the leaf certifies another key".to_owned(),
        ));
    }
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if uris != [entry.spiffe_id.as_str()] {
        return Err(X509SvidError::BadCertificate(format!(
            "the leaf names {uris:?}, not {}",
            entry.spiffe_id
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_proto::SpiffeId;

    fn entry(id: &str) -> AgentEntry {
        AgentEntry {
            id: "e1".to_owned(),
            spiffe_id: SpiffeId::parse(id).unwrap(),
            selectors: Vec::new(),
            hint: String::new(),
            claims: None,
        }
    }

    fn signed(key: &KeyPair, uri: &str) -> Vec<u8> {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::default();
        leaf.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        leaf.signed_by(key, &issuer).unwrap().der().to_vec()
    }

    #[test]
    fn only_a_leaf_for_our_key_and_our_id_is_taken() {
        let (key, _) = new_key_and_csr().unwrap();
        let other = KeyPair::generate().unwrap();
        let wanted = entry("spiffe://example.org/web");
        assert!(check_signed(&[signed(&key, "spiffe://example.org/web")], &key, &wanted).is_ok());
        assert!(
            check_signed(&[signed(&other, "spiffe://example.org/web")], &key, &wanted).is_err()
        );
        assert!(check_signed(&[signed(&key, "spiffe://example.org/db")], &key, &wanted).is_err());
        assert!(check_signed(&[], &key, &wanted).is_err());
        assert!(check_signed(&[b"junk".to_vec()], &key, &wanted).is_err());
    }
}
