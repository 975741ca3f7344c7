//! What the agent knows from the server: its entries and the trust bundle,
//! kept fresh by a sync loop.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use lanyard_host::sync::lock;
use lanyard_proto::entry_claims::EntryClaims;
use lanyard_proto::selector::check_anchored;
use lanyard_proto::{Jwks, Selector, SpiffeId};
use tokio::sync::watch;

use super::entries::{AgentEntry, EntrySet};
use crate::backoff::Backoff;
use crate::telemetry::{AgentMetrics, SyncResult};
use crate::upstream::client::{ServerClient, ServerClientError};
use crate::upstream::reachability::Reachability;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SyncError {
    #[error(transparent)]
    Server(#[from] ServerClientError),
    #[error("the server did not finish the sync within {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// The first retry after a failed sync comes this soon (then up to the interval).
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// The trust domain's X.509 authorities, DER, as the server published them.
pub(crate) type X509Authorities = Arc<Vec<Vec<u8>>>;

#[derive(Debug)]
pub(crate) struct SyncedState {
    entries: ArcSwap<EntrySet>,
    /// The entry revision `entries` is as of; 0 before the first sync.
    revision: AtomicU64,
    bundle: watch::Sender<Option<Arc<Jwks>>>,
    x509_authorities: watch::Sender<Option<X509Authorities>>,
    /// Bumped whenever the entries in force change.
    entries_changed: watch::Sender<u64>,
    /// Ids of the entries the server sends that are not issued (see
    /// [`SyncedState::refuse_binary_without_uid`]), so that each is logged
    /// once and not on every sync.
    refused: Mutex<HashSet<String>>,
    /// When a sync last succeeded; None before the first.
    synced_at: Mutex<Option<Instant>>,
    metrics: Arc<AgentMetrics>,
}

impl Default for SyncedState {
    fn default() -> Self {
        Self {
            entries: ArcSwap::from_pointee(EntrySet::default()),
            revision: AtomicU64::new(0),
            bundle: watch::channel(None).0,
            x509_authorities: watch::channel(None).0,
            entries_changed: watch::channel(0).0,
            refused: Mutex::default(),
            synced_at: Mutex::default(),
            metrics: Arc::default(),
        }
    }
}

impl SyncedState {
    /// Nothing synced yet; syncs are counted in `metrics`.
    pub(crate) fn new(metrics: Arc<AgentMetrics>) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    /// The entry revision held; 0 before the first sync.
    pub(crate) fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// When a sync last succeeded; None before the first.
    pub(crate) fn last_synced(&self) -> Option<Instant> {
        *lock(&self.synced_at)
    }

    /// The entries in force now (attest against its `needs`, then match
    /// against the same snapshot).
    pub(crate) fn entries_snapshot(&self) -> Arc<EntrySet> {
        self.entries.load_full()
    }

    pub(crate) fn bundle(&self) -> watch::Receiver<Option<Arc<Jwks>>> {
        self.bundle.subscribe()
    }

    pub(crate) fn x509_authorities(&self) -> watch::Receiver<Option<X509Authorities>> {
        self.x509_authorities.subscribe()
    }

    /// Forgets the revision held, so that the next sync asks for everything
    /// (after a new attestation: the agent may now be someone else, with
    /// other node groups); the entries in force keep being served until then.
    pub(crate) fn reset_revision(&self) {
        self.revision.store(0, Ordering::Release);
    }

    /// Changes whenever the entries in force change.
    pub(crate) fn entries_changed(&self) -> watch::Receiver<u64> {
        self.entries_changed.subscribe()
    }

    fn replace_entries(&self, entries: Vec<AgentEntry>) {
        if self.entries_snapshot().entries() == entries.as_slice() {
            return;
        }
        self.entries.store(Arc::new(EntrySet::new(entries)));
        self.entries_changed.send_modify(|version| *version += 1);
    }

    fn replace_x509_authorities(&self, authorities: Vec<Vec<u8>>) {
        self.x509_authorities.send_if_modified(|current| {
            if current.as_deref() == Some(&authorities) {
                return false;
            }
            *current = Some(Arc::new(authorities));
            true
        });
    }

    fn replace_bundle(&self, jwks: Jwks) {
        self.bundle.send_if_modified(|current| {
            if current.as_deref() == Some(&jwks) {
                return false;
            }
            *current = Some(Arc::new(jwks));
            true
        });
    }

    /// Fetches entries and bundle from the server once, giving up after
    /// `deadline` (a server that accepts and never answers must not stall
    /// the sync loop).
    pub(crate) async fn sync_once(
        &self,
        server: &ServerClient,
        deadline: Duration,
    ) -> Result<usize, SyncError> {
        let synced = tokio::time::timeout(deadline, self.fetch_and_apply(server))
            .await
            .map_err(|_| SyncError::Timeout(deadline))
            .and_then(|fetched| fetched.map_err(SyncError::from));
        if synced.is_ok() {
            *lock(&self.synced_at) = Some(Instant::now());
            self.metrics.sync(SyncResult::Ok);
        } else {
            self.metrics.sync(SyncResult::Error);
        }
        synced
    }

    async fn fetch_and_apply(&self, server: &ServerClient) -> Result<usize, ServerClientError> {
        let since = self.revision.load(Ordering::Acquire);
        let mut response = server.sync_entries(since).await?;
        if !response.full && response.revision < since {
            // The server's history is older than ours (a restored datastore): start over.
            response = server.sync_entries(0).await?;
        }
        let mut upserts = Vec::with_capacity(response.entries.len());
        // Every entry sent replaces what the agent had under its id, even one
        // it cannot serve.
        let mut sent: Vec<String> = Vec::with_capacity(response.entries.len());
        for raw in response.entries {
            sent.push(raw.id.clone());
            let spiffe_id = SpiffeId::parse(&raw.spiffe_id);
            let selectors: Result<Vec<Selector>, _> =
                raw.selectors.iter().map(|s| Selector::parse(s)).collect();
            let claims = match raw.claims.as_str() {
                "" => Ok(None),
                text => EntryClaims::parse(text).map(|c| Some(Arc::new(c))),
            };
            match (spiffe_id, selectors, claims) {
                (Ok(spiffe_id), Ok(selectors), Ok(claims)) => upserts.push(AgentEntry {
                    id: raw.id,
                    spiffe_id,
                    selectors,
                    hint: raw.hint,
                    claims,
                }),
                (_, _, Err(error)) => tracing::warn!(
                    entry = raw.id,
                    %error,
                    "server sent claims this agent cannot fill in (a newer server?); not issuing the entry"
                ),
                _ => tracing::warn!(entry = raw.id, "server sent a malformed entry; ignoring it"),
            }
        }
        let (upserts, newly_refused) =
            self.refuse_binary_without_uid(response.full, upserts, &response.deleted_entry_ids);
        for entry in newly_refused {
            let reason = check_anchored(&entry.selectors).err();
            tracing::warn!(
                entry = entry.id,
                spiffe_id = %entry.spiffe_id,
                reason = reason.map(|r| r.to_string()).unwrap_or_default(),
                "not issuing this entry: update it to select the uid or gid its workload runs as"
            );
        }
        let entries = if response.full {
            upserts
        } else {
            let gone: HashSet<&str> = response
                .deleted_entry_ids
                .iter()
                .chain(&sent)
                .map(String::as_str)
                .collect();
            let mut entries: Vec<AgentEntry> = self.entries_snapshot().entries().to_vec();
            entries.retain(|e| !gone.contains(e.id.as_str()));
            entries.extend(upserts);
            entries
        };
        let count = entries.len();
        self.replace_entries(entries);
        self.revision.store(response.revision, Ordering::Release);
        let (jwks, x509_authorities) = server.bundle().await?;
        self.replace_bundle(jwks);
        self.replace_x509_authorities(x509_authorities);
        Ok(count)
    }

    /// Splits what the server sent into the entries to serve and those no
    /// caller may get: entries that select a binary without a uid or gid
    /// ([`check_anchored`]), stored before the server refused them
    /// (or by an older server). Of the latter, returns only those not refused
    /// before (in this agent's life, and not since served or deleted), to be
    /// logged once each.
    fn refuse_binary_without_uid(
        &self,
        full: bool,
        upserts: Vec<AgentEntry>,
        deleted: &[String],
    ) -> (Vec<AgentEntry>, Vec<AgentEntry>) {
        let (kept, refused): (Vec<AgentEntry>, Vec<AgentEntry>) = upserts
            .into_iter()
            .partition(|e| check_anchored(&e.selectors).is_ok());
        let mut known = lock(&self.refused);
        if full {
            let now: HashSet<&str> = refused.iter().map(|e| e.id.as_str()).collect();
            known.retain(|id| now.contains(id.as_str()));
        } else {
            for id in kept.iter().map(|e| &e.id).chain(deleted) {
                known.remove(id);
            }
        }
        let newly = refused
            .into_iter()
            .filter(|e| known.insert(e.id.clone()))
            .collect();
        (kept, newly)
    }

    /// Syncs every `interval` (each sync within `deadline`) until `shutdown`
    /// changes. After a failure it
    /// retries sooner, with jittered exponential backoff capped at `interval`
    /// (so that many agents do not hit a returning server in step); the
    /// outage is logged once through `reachability`, not on every attempt.
    pub(crate) async fn sync_forever(
        &self,
        server: ServerClient,
        interval: Duration,
        deadline: Duration,
        reachability: Arc<Reachability>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(MIN_BACKOFF, interval);
        let mut failing = false;
        loop {
            let delay = if failing { backoff.next() } else { interval };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            match self.sync_once(&server, deadline).await {
                Ok(_) => {
                    failing = false;
                    backoff.reset();
                    reachability.mark_up();
                }
                Err(e) => {
                    failing = true;
                    reachability.mark_down(&e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sync::entries::tests::entry;

    /// A server that accepts the connection and never answers: the sync
    /// ends with a timeout, not never.
    #[tokio::test]
    async fn a_sync_against_a_silent_server_times_out() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("node.sock");
        let listener = tokio::net::UnixListener::bind(&socket)?;
        let silent = tokio::spawn(async move {
            // Holds the connection open, reads nothing, writes nothing.
            let accepted = listener.accept().await;
            std::future::pending::<()>().await;
            drop(accepted);
        });
        let state = SyncedState::default();
        let deadline = Duration::from_millis(200);
        let result = state
            .sync_once(&ServerClient::local(&socket), deadline)
            .await;
        assert!(
            matches!(result, Err(SyncError::Timeout(d)) if d == deadline),
            "{result:?}"
        );
        assert!(state.entries_snapshot().entries().is_empty());
        silent.abort();
        Ok(())
    }

    /// Issue 11, finding 1: an entry selecting a binary without a uid or gid
    /// never reaches the entry set, and is reported once per id, not on every
    /// sync; again only after it was served or deleted in between.
    #[test]
    fn binary_entries_without_uid_are_refused_and_reported_once() {
        let state = SyncedState::default();
        let old = entry("old", "spiffe://td/old", &["unix:path:/usr/bin/sleep"]);
        let fixed = entry(
            "old",
            "spiffe://td/old",
            &["unix:path:/usr/bin/sleep", "unix:uid:1000"],
        );
        let good = entry("good", "spiffe://td/good", &["unix:path:/x", "unix:gid:5"]);
        let ids = |entries: &[AgentEntry]| -> Vec<String> {
            entries.iter().map(|e| e.id.clone()).collect()
        };
        let sync = |full: bool, sent: &[&AgentEntry], deleted: &[&str]| {
            let deleted: Vec<String> = deleted.iter().map(|d| (*d).to_owned()).collect();
            let (kept, newly) = state.refuse_binary_without_uid(
                full,
                sent.iter().map(|e| (*e).clone()).collect(),
                &deleted,
            );
            (ids(&kept), ids(&newly))
        };
        let none: Vec<String> = Vec::new();
        assert_eq!(
            sync(true, &[&old, &good], &[]),
            (vec!["good".into()], vec!["old".into()])
        );
        // Full syncs again and again: refused each time, reported no more.
        assert_eq!(
            sync(true, &[&old, &good], &[]),
            (vec!["good".into()], none.clone())
        );
        assert_eq!(sync(false, &[&old], &[]), (none.clone(), none.clone()));
        // Fixed, then broken again (by an old server): reported again.
        assert_eq!(
            sync(false, &[&fixed], &[]),
            (vec!["old".into()], none.clone())
        );
        assert_eq!(
            sync(false, &[&old], &[]),
            (none.clone(), vec!["old".into()])
        );
        // Deleted, then back.
        assert_eq!(sync(false, &[], &["old"]), (none.clone(), none.clone()));
        assert_eq!(
            sync(false, &[&old], &[]),
            (none.clone(), vec!["old".into()])
        );
        // Gone from a full sync, then back.
        assert_eq!(
            sync(true, &[&good], &[]),
            (vec!["good".into()], none.clone())
        );
        assert_eq!(sync(true, &[&old], &[]), (none, vec!["old".into()]));
    }
}
