//! JWT-SVIDs for workloads, in front of the server: from the cache when it
//! has a usable one, else from the server within a bounded wait. Only
//! `tonic::Status` leaves the front: these are the Workload API's answers.
//!
//! The cache is keyed by SPIFFE ID and audience set, bounded
//! (least recently used dropped first). A token is handed out again while
//! more than half of its lifetime remains; one that is asked for after a third
//! of its lifetime is due for a background refresh, so a hot workload gets a
//! new token before the old one goes stale and never waits on the server.
//!
//! Misses for the same key at the same time cost one mint (single flight):
//! the first starts it, the others wait on it, and all get its answer,
//! token or refusal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use lanyard_host::rate_limit::{self, KeyedRateLimit, RateLimit};
use lanyard_host::sync::lock;
use lanyard_proto::Selector;
use lanyard_proto::entry_claims::EntryClaims;
use lanyard_proto::node::MintJwtSvidRequest;
use tonic::{Code, Status};

use super::mint_batch::MintBatcher;
use crate::audit::{self, Caller, Trigger};
use crate::lru::Lru;
use crate::sync::entries::AgentEntry;
use crate::telemetry::{AgentMetrics, SvidKind, SvidSource};
use crate::upstream::client::ServerClient;
use crate::upstream::reachability::Reachability;

/// The cache front: what the Workload API asks for JWT-SVIDs.
#[derive(Debug, Clone)]
pub(crate) struct JwtSvids {
    cache: Arc<JwtSvidCache>,
    minter: MintBatcher,
    reachability: Arc<Reachability>,
    /// Calls that must wait for the server, per caller uid.
    misses: Arc<KeyedRateLimit<u32>>,
    metrics: Arc<AgentMetrics>,
    /// Mints under way for a cache miss, by key.
    in_flight: Arc<Mutex<HashMap<CacheKey, Flight>>>,
}

/// One mint for a cache miss, awaited by every caller that missed on its key
/// while it ran.
type Flight = Shared<BoxFuture<'static, Result<CachedSvid, Status>>>;

impl JwtSvids {
    pub(crate) fn new(
        server: ServerClient,
        cache_size: usize,
        timeout: Duration,
        reachability: Arc<Reachability>,
        misses_per_uid: RateLimit,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        Self {
            cache: Arc::new(JwtSvidCache::new(cache_size)),
            minter: MintBatcher::start(server, timeout, reachability.clone()),
            reachability,
            misses: Arc::new(KeyedRateLimit::new(misses_per_uid)),
            metrics,
            in_flight: Arc::default(),
        }
    }

    /// Whether a cached JWT-SVID is still valid at `now` (Unix seconds).
    pub(crate) fn holds_valid(&self, now: i64) -> bool {
        self.cache.lock().any(|slot| !slot.svid.expired(now))
    }

    /// A JWT-SVID for `entry` and `audience`, asked for by a process of
    /// `caller` (its uid spends the cache-miss budget) whose selectors that
    /// the entry's claims use are `inputs`, counted by where it came from.
    pub(crate) async fn fetch(
        &self,
        entry: &AgentEntry,
        audience: &[String],
        inputs: &[Selector],
        caller: Caller,
    ) -> Result<CachedSvid, Status> {
        let request = MintRequest::new(entry, audience, inputs);
        let (svid, source) = self.fetch_from(request, caller).await?;
        self.metrics.svid(SvidKind::Jwt, source);
        Ok(svid)
    }

    /// A JWT-SVID for `request`, and where it came from.
    async fn fetch_from(
        &self,
        request: MintRequest,
        caller: Caller,
    ) -> Result<(CachedSvid, SvidSource), Status> {
        match self.cache.lookup(&request.key, lanyard_host::clock::now()) {
            Lookup::Fresh { svid, refresh } => {
                if refresh {
                    self.refresh_in_background(request, Some(caller));
                }
                Ok((svid, SvidSource::Cache))
            }
            // The server is known to be away: do not make the caller wait for it.
            Lookup::Stale(svid) if self.reachability.is_down() => {
                if self.cache.claim_refresh(&request.key) {
                    self.refresh_in_background(request, Some(caller));
                }
                Ok((svid, SvidSource::Cache))
            }
            // Over its budget the caller keeps the token it has: still valid.
            Lookup::Stale(svid) if self.misses.check(&caller.uid).is_err() => {
                self.metrics.rate_limited();
                Ok((svid, SvidSource::Cache))
            }
            Lookup::Stale(svid) => {
                match self.mint(&request, Some(caller), Trigger::Request).await {
                    Ok(new) => {
                        self.cache.store(request.key, new.clone());
                        Ok((new, SvidSource::Minted))
                    }
                    Err(status) if status.code() == Code::Unavailable => {
                        Ok((svid, SvidSource::Cache))
                    }
                    Err(status) => Err(status),
                }
            }
            Lookup::Miss => {
                let (flight, source) = self.flight(request, caller)?;
                Ok((flight.await?, source))
            }
        }
    }

    /// The mint for a miss on `key`: the one under way, which `caller`
    /// joins at no cost to its budget (served as from the cache), or a new
    /// one it starts, spending one cache miss of its uid's budget. The
    /// mint runs as a task of its own, so a caller that goes away takes no
    /// one else's answer with it; it stores the token before it leaves the
    /// table, so a later miss finds it cached.
    fn flight(&self, request: MintRequest, caller: Caller) -> Result<(Flight, SvidSource), Status> {
        let mut flights = lock(&self.in_flight);
        if let Some(flight) = flights.get(&request.key) {
            return Ok((flight.clone(), SvidSource::Cache));
        }
        self.misses.check(&caller.uid).map_err(|wait| {
            self.metrics.rate_limited();
            rate_limit::exhausted("workload_api.cache_misses_per_second_per_uid", wait)
        })?;
        let key = request.key.clone();
        let svids = self.clone();
        let task = tokio::spawn(async move {
            let minted = svids.mint(&request, Some(caller), Trigger::Request).await;
            if let Ok(new) = &minted {
                svids.cache.store(request.key.clone(), new.clone());
            }
            lock(&svids.in_flight).remove(&request.key);
            minted
        });
        let flight = async move {
            task.await.unwrap_or_else(|e| {
                Err(Status::internal(format!(
                    "the mint for this request failed: {e}"
                )))
            })
        }
        .boxed()
        .shared();
        flights.insert(key, flight.clone());
        Ok((flight, SvidSource::Minted))
    }

    fn refresh_in_background(&self, request: MintRequest, caller: Option<Caller>) {
        let svids = self.clone();
        tokio::spawn(async move {
            match svids.mint(&request, caller, Trigger::Refresh).await {
                Ok(new) => svids.cache.store(request.key, new),
                Err(_) => svids.cache.refresh_failed(&request.key),
            }
        });
    }

    /// Asks the server, waiting at most the configured timeout. Refusals
    /// (bad audience, entry gone) pass through; anything else is `Unavailable`.
    async fn mint(
        &self,
        request: &MintRequest,
        caller: Option<Caller>,
        trigger: Trigger,
    ) -> Result<CachedSvid, Status> {
        let minted = self
            .minter
            .mint(MintJwtSvidRequest {
                entry_id: request.entry_id.clone(),
                audience: request.audience.clone(),
                selectors: request.key.inputs.clone(),
            })
            .await?;
        audit::jwt_svid_minted(
            &minted.spiffe_id,
            request.audience.len(),
            caller,
            trigger,
            minted.expires_at,
        );
        Ok(CachedSvid {
            spiffe_id: minted.spiffe_id,
            token: minted.token,
            issued_at: minted.issued_at,
            expires_at: minted.expires_at,
        })
    }
}

/// What a mint asks the server for: an entry, its audience and the
/// selectors its claims use, and the cache key of the answer.
#[derive(Debug, Clone)]
struct MintRequest {
    entry_id: String,
    audience: Vec<String>,
    key: CacheKey,
}

impl MintRequest {
    fn new(entry: &AgentEntry, audience: &[String], inputs: &[Selector]) -> Self {
        Self {
            entry_id: entry.id.clone(),
            audience: audience.to_vec(),
            key: CacheKey::new(entry, audience, inputs),
        }
    }
}

/// (entry, its SPIFFE ID and claims, sorted and deduplicated audiences, the
/// caller's selectors that the entry's claims use): the same request in any
/// order hits, and no two callers share a token whose claims would differ —
/// not two callers of one entry with different values, nor callers of two
/// entries with one SPIFFE ID, nor a caller before and after an operator
/// changed the entry's claims.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    entry_id: String,
    spiffe_id: String,
    claims: Option<Arc<EntryClaims>>,
    audience: Vec<String>,
    inputs: Vec<String>,
}

impl CacheKey {
    pub(crate) fn new(entry: &AgentEntry, audience: &[String], inputs: &[Selector]) -> Self {
        let mut audience = audience.to_vec();
        audience.sort();
        audience.dedup();
        let mut inputs: Vec<String> = inputs.iter().map(ToString::to_string).collect();
        inputs.sort();
        inputs.dedup();
        Self {
            entry_id: entry.id.clone(),
            spiffe_id: entry.spiffe_id.to_string(),
            claims: entry.claims.clone(),
            audience,
            inputs,
        }
    }
}

/// A minted token and its lifetime in Unix seconds, as the server stated it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct CachedSvid {
    pub spiffe_id: String,
    pub token: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for CachedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("CachedSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl CachedSvid {
    fn lifetime(&self) -> i64 {
        self.expires_at - self.issued_at
    }

    /// More than half of the lifetime remains.
    fn fresh(&self, now: i64) -> bool {
        2 * (self.expires_at - now) > self.lifetime()
    }

    /// A third of the lifetime has passed: time to fetch the next one.
    fn due_for_refresh(&self, now: i64) -> bool {
        3 * (now - self.issued_at) >= self.lifetime()
    }

    fn expired(&self, now: i64) -> bool {
        now >= self.expires_at
    }

    /// Worth caching at all: a positive lifetime.
    pub(crate) fn cacheable(&self) -> bool {
        self.lifetime() > 0
    }
}

/// What the cache holds for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Serve it. When `refresh`, the caller was chosen to fetch its successor
    /// in the background (only one caller is chosen until it reports back).
    Fresh {
        svid: CachedSvid,
        refresh: bool,
    },
    /// Still valid but past half-life: get a new one, or serve this if the
    /// server cannot be reached.
    Stale(CachedSvid),
    Miss,
}

#[derive(Debug)]
struct Slot {
    svid: CachedSvid,
    refreshing: bool,
}

#[derive(Debug)]
pub(crate) struct JwtSvidCache {
    slots: Mutex<Lru<CacheKey, Slot>>,
}

impl JwtSvidCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            slots: Mutex::new(Lru::new(capacity)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru<CacheKey, Slot>> {
        lock(&self.slots)
    }

    pub(crate) fn lookup(&self, key: &CacheKey, now: i64) -> Lookup {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(key) else {
            return Lookup::Miss;
        };
        if slot.svid.expired(now) {
            slots.remove(key);
            return Lookup::Miss;
        }
        if !slot.svid.fresh(now) {
            return Lookup::Stale(slot.svid.clone());
        }
        let refresh = !slot.refreshing && slot.svid.due_for_refresh(now);
        slot.refreshing |= refresh;
        Lookup::Fresh {
            svid: slot.svid.clone(),
            refresh,
        }
    }

    /// Claims the background refresh of a stale entry; false when one is running.
    pub(crate) fn claim_refresh(&self, key: &CacheKey) -> bool {
        match self.lock().get_mut(key) {
            Some(slot) if !slot.refreshing => {
                slot.refreshing = true;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn store(&self, key: CacheKey, svid: CachedSvid) {
        if svid.cacheable() {
            self.lock().insert(
                key,
                Slot {
                    svid,
                    refreshing: false,
                },
            );
        }
    }

    /// A background refresh failed: the next request may try again.
    pub(crate) fn refresh_failed(&self, key: &CacheKey) {
        if let Some(slot) = self.lock().get_mut(key) {
            slot.refreshing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_proto::SpiffeId;

    fn entry(id: &str, claims: Option<&str>) -> Result<AgentEntry, Box<dyn std::error::Error>> {
        Ok(AgentEntry {
            id: id.to_owned(),
            spiffe_id: SpiffeId::parse("spiffe://example.org/w")?,
            selectors: Vec::new(),
            hint: String::new(),
            claims: claims.map(EntryClaims::parse).transpose()?.map(Arc::new),
        })
    }

    fn key(audience: &[&str]) -> Result<CacheKey, Box<dyn std::error::Error>> {
        let audience: Vec<String> = audience.iter().map(|a| a.to_string()).collect();
        Ok(CacheKey::new(&entry("e", None)?, &audience, &[]))
    }

    fn svid(token: &str, issued_at: i64, expires_at: i64) -> CachedSvid {
        CachedSvid {
            spiffe_id: "spiffe://example.org/w".to_owned(),
            token: token.to_owned(),
            issued_at,
            expires_at,
        }
    }

    #[test]
    fn audience_order_and_duplicates_do_not_matter() -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(key(&["b", "a", "a"])?, key(&["a", "b"])?);
        assert_ne!(key(&["a"])?, key(&["a", "b"])?);
        // Two callers whose claims would differ never share a token.
        let aud = vec!["a".to_owned()];
        let team = |value: &str| -> Result<Vec<Selector>, lanyard_proto::SelectorError> {
            Ok(vec![Selector::parse(&format!(
                "container:label:team:{value}"
            ))?])
        };
        let templated = entry("e", Some(r#"{"team": "{{ container:label:team }}"}"#))?;
        assert_ne!(
            CacheKey::new(&templated, &aud, &team("billing")?),
            CacheKey::new(&templated, &aud, &team("search")?)
        );
        assert_eq!(
            CacheKey::new(&templated, &aud, &team("billing")?),
            CacheKey::new(&templated, &aud, &team("billing")?)
        );
        // Nor do two entries with one SPIFFE ID, nor one entry before and
        // after its claims changed (review of issue 16, finding 1).
        let prod = entry("a", Some(r#"{"tier": "prod"}"#))?;
        let dev = entry("b", Some(r#"{"tier": "dev"}"#))?;
        let plain = entry("b", None)?;
        let changed = entry("a", Some(r#"{"tier": "staging"}"#))?;
        let keys = [&prod, &dev, &plain, &changed].map(|e| CacheKey::new(e, &aud, &[]));
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            CacheKey::new(&prod, &aud, &[]),
            CacheKey::new(&entry("a", Some(r#"{ "tier" : "prod" }"#))?, &aud, &[])
        );
        Ok(())
    }

    #[test]
    fn lifecycle_fresh_refresh_stale_expired() -> Result<(), Box<dyn std::error::Error>> {
        let cache = JwtSvidCache::new(10);
        let k = key(&["a"])?;
        assert_eq!(cache.lookup(&k, 1000), Lookup::Miss);
        let t = svid("t1", 1000, 1300);
        cache.store(k.clone(), t.clone());
        let fresh = |refresh| Lookup::Fresh {
            svid: t.clone(),
            refresh,
        };
        assert_eq!(cache.lookup(&k, 1050), fresh(false));
        // A third of the way: exactly one caller is chosen to refresh.
        assert_eq!(cache.lookup(&k, 1100), fresh(true));
        assert_eq!(cache.lookup(&k, 1101), fresh(false));
        cache.refresh_failed(&k);
        assert_eq!(cache.lookup(&k, 1102), fresh(true));
        // At half-life it is stale: still valid, but not handed out without trying for a new one.
        assert_eq!(cache.lookup(&k, 1150), Lookup::Stale(t.clone()));
        assert!(
            !cache.claim_refresh(&k),
            "the refresh chosen at 1102 still runs"
        );
        cache.refresh_failed(&k);
        assert!(cache.claim_refresh(&k));
        assert!(!cache.claim_refresh(&k));
        assert_eq!(cache.lookup(&k, 1299), Lookup::Stale(t.clone()));
        assert_eq!(cache.lookup(&k, 1300), Lookup::Miss);
        // A successor resets the cycle.
        let t2 = svid("t2", 1100, 1400);
        cache.store(k.clone(), t2.clone());
        assert_eq!(
            cache.lookup(&k, 1150),
            Lookup::Fresh {
                svid: t2,
                refresh: false
            }
        );
        Ok(())
    }

    #[test]
    fn bounded_and_refuses_lifeless_tokens() -> Result<(), Box<dyn std::error::Error>> {
        let cache = JwtSvidCache::new(1);
        cache.store(key(&["a"])?, svid("a", 0, 100));
        cache.store(key(&["b"])?, svid("b", 0, 100));
        assert_eq!(cache.lookup(&key(&["a"])?, 1), Lookup::Miss);
        assert!(matches!(
            cache.lookup(&key(&["b"])?, 1),
            Lookup::Fresh { .. }
        ));
        cache.store(key(&["c"])?, svid("c", 100, 100));
        assert_eq!(cache.lookup(&key(&["c"])?, 100), Lookup::Miss);
        Ok(())
    }

    mod single_flight {
        //! Concurrent misses on one key against a Node API that answers
        //! MintJwtSvid only when the test lets it.

        use super::*;
        use crate::upstream::test_node::{NodeScript, Scripted};
        use lanyard_proto::node::node_server::NodeServer;
        use lanyard_proto::node::{
            MintJwtSvidRequest, MintJwtSvidResponse, MintJwtSvidResult, MintJwtSvidsRequest,
            MintJwtSvidsResponse, MintRefusal, mint_jwt_svid_result,
        };
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::sync::{Notify, watch};
        use tonic::{Request, Response};

        type TestResult = Result<(), Box<dyn std::error::Error>>;

        /// Counts MintJwtSvid calls, says when one arrives, and answers it
        /// (a token, or a refusal with `refuse`) once `open` turns true.
        /// MintJwtSvids is answered the same way per mint (entry "refused"
        /// refused), its batch sizes recorded.
        #[derive(Clone)]
        struct Gated {
            calls: Arc<AtomicUsize>,
            called: Arc<Notify>,
            open: watch::Receiver<bool>,
            refuse: bool,
            batches: Arc<Mutex<Vec<usize>>>,
        }

        #[tonic::async_trait]
        impl NodeScript for Gated {
            async fn mint_jwt_svid(
                &self,
                _: Request<MintJwtSvidRequest>,
            ) -> Result<Response<MintJwtSvidResponse>, Status> {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.called.notify_one();
                let mut open = self.open.clone();
                open.wait_for(|open| *open)
                    .await
                    .map_err(|_| Status::aborted("test over"))?;
                if self.refuse {
                    return Err(Status::permission_denied("not this agent's entry"));
                }
                let now = lanyard_host::clock::now();
                Ok(Response::new(MintJwtSvidResponse {
                    spiffe_id: "spiffe://example.org/w".to_owned(),
                    token: "the-one-token".to_owned(),
                    issued_at: now,
                    expires_at: now + 300,
                }))
            }

            async fn mint_jwt_svids(
                &self,
                request: Request<MintJwtSvidsRequest>,
            ) -> Result<Response<MintJwtSvidsResponse>, Status> {
                let mints = request.into_inner().mints;
                lock(&self.batches).push(mints.len());
                self.called.notify_one();
                let mut open = self.open.clone();
                open.wait_for(|open| *open)
                    .await
                    .map_err(|_| Status::aborted("test over"))?;
                let now = lanyard_host::clock::now();
                let results = mints
                    .into_iter()
                    .map(|mint| MintJwtSvidResult {
                        result: Some(if mint.entry_id == "refused" {
                            mint_jwt_svid_result::Result::Refusal(MintRefusal {
                                code: Code::PermissionDenied as i32,
                                message: "not this agent's entry".to_owned(),
                            })
                        } else {
                            mint_jwt_svid_result::Result::Svid(MintJwtSvidResponse {
                                spiffe_id: format!("spiffe://example.org/{}", mint.entry_id),
                                token: format!("token-for-{}", mint.audience.join(",")),
                                issued_at: now,
                                expires_at: now + 300,
                            })
                        }),
                    })
                    .collect();
                Ok(Response::new(MintJwtSvidsResponse { results }))
            }
        }

        /// A gated Node API on a Unix socket in `dir`, and JwtSvids in front of it.
        fn gated(
            dir: &std::path::Path,
            refuse: bool,
        ) -> Result<(Gated, watch::Sender<bool>, JwtSvids), Box<dyn std::error::Error>> {
            let socket = dir.join("node.sock");
            let listener = tokio::net::UnixListener::bind(&socket)?;
            let (open_tx, open) = watch::channel(false);
            let node = Gated {
                calls: Arc::default(),
                called: Arc::default(),
                open,
                refuse,
                batches: Arc::default(),
            };
            let incoming = futures::stream::unfold(listener, |listener| async move {
                let accepted = listener
                    .accept()
                    .await
                    .map(|(unix, _)| lanyard_host::transport::Accepted::new(unix, ()));
                Some((accepted, listener))
            });
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(NodeServer::new(Scripted(node.clone())))
                    .serve_with_incoming(incoming),
            );
            let svids = JwtSvids::new(
                ServerClient::local(&socket),
                100,
                Duration::from_secs(30),
                Arc::new(Reachability::default()),
                RateLimit::fixed(1_000, 1_000),
                Arc::default(),
            );
            Ok((node, open_tx, svids))
        }

        /// `callers` concurrent misses on one key; returns every answer and
        /// how many mints reached the Node API.
        async fn misses(
            callers: usize,
            refuse: bool,
        ) -> Result<(Vec<Result<CachedSvid, Status>>, usize), Box<dyn std::error::Error>> {
            let dir = tempfile::tempdir()?;
            let (node, open_tx, svids) = gated(dir.path(), refuse)?;
            let entry = AgentEntry {
                id: "w".to_owned(),
                spiffe_id: SpiffeId::parse("spiffe://example.org/w")?,
                selectors: Vec::new(),
                hint: String::new(),
                claims: None,
            };
            let audience = vec!["one-key".to_owned()];
            let caller = Caller { uid: 1000, pid: 1 };
            let mut all = Box::pin(futures::future::join_all(
                (0..callers).map(|_| svids.fetch(&entry, &audience, &[], caller)),
            ));
            // One poll runs every caller up to its wait: each has started the
            // mint or joined it by now.
            assert!(futures::poll!(&mut all).is_pending());
            // The one mint reaches the Node API; only then is it answered.
            node.called.notified().await;
            open_tx.send(true)?;
            let answers = all.await;
            Ok((answers, node.calls.load(Ordering::SeqCst)))
        }

        fn entry(id: &str) -> Result<AgentEntry, lanyard_proto::SpiffeIdError> {
            Ok(AgentEntry {
                id: id.to_owned(),
                spiffe_id: SpiffeId::parse(&format!("spiffe://example.org/{id}"))?,
                selectors: Vec::new(),
                hint: String::new(),
                claims: None,
            })
        }

        /// Issue 17: misses on different keys that arrive together reach
        /// the server as one MintJwtSvids exchange, and each caller gets its
        /// own answer — a token for its audience, or its entry's refusal.
        #[tokio::test]
        async fn concurrent_misses_on_different_keys_share_one_exchange() -> TestResult {
            let dir = tempfile::tempdir()?;
            let (node, open_tx, svids) = gated(dir.path(), false)?;
            let (ok, refused) = (entry("w")?, entry("refused")?);
            let caller = Caller { uid: 1000, pid: 1 };
            let audiences: Vec<Vec<String>> = (0..20).map(|n| vec![format!("aud-{n}")]).collect();
            let mut all = Box::pin(futures::future::join_all(audiences.iter().enumerate().map(
                |(n, aud)| {
                    let entry = if n == 7 { &refused } else { &ok };
                    svids.fetch(entry, aud, &[], caller)
                },
            )));
            assert!(futures::poll!(&mut all).is_pending());
            node.called.notified().await;
            open_tx.send(true)?;
            let answers = all.await;
            assert_eq!(*lock(&node.batches), vec![20], "one exchange of all 20");
            assert_eq!(node.calls.load(Ordering::SeqCst), 0, "no single mints");
            for (n, answer) in answers.into_iter().enumerate() {
                if n == 7 {
                    let status = answer.err().ok_or("the refused entry got a token")?;
                    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
                } else {
                    assert_eq!(answer?.token, format!("token-for-aud-{n}"));
                }
            }
            Ok(())
        }

        #[tokio::test]
        async fn concurrent_misses_on_one_key_cost_one_mint() -> TestResult {
            let (answers, mints) = misses(8, false).await?;
            assert_eq!(mints, 1);
            assert_eq!(answers.len(), 8);
            for answer in answers {
                assert_eq!(answer?.token, "the-one-token");
            }
            Ok(())
        }

        #[tokio::test]
        async fn the_one_mints_refusal_reaches_every_caller() -> TestResult {
            let (answers, mints) = misses(8, true).await?;
            assert_eq!(mints, 1);
            for answer in answers {
                let status = answer.err().ok_or("a caller got a token")?;
                assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            }
            Ok(())
        }
    }
}
