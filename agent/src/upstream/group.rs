//! The servers the agent talks to, as one: their addresses (a name that
//! resolves to several IP addresses counts as several servers; names are
//! resolved when first needed, again every 30 s, and again after a failure),
//! the CA certificates that authenticate them (the union of what the agent
//! was configured with, what came with its SVID, and what the last bundle
//! sync said), and the retry of one call over them within a budget.
//!
//! A call that fails on one server with a transport error, `Unavailable` or
//! `DeadlineExceeded`, or gets no answer in time, is tried on the next one
//! while the budget lasts; any other answer (`PermissionDenied`,
//! `InvalidArgument`…) is the group's answer and is never asked elsewhere.
//! While untried servers remain, one attempt may take at most half of what
//! is left of the budget, so a server that accepts and hangs leaves time for
//! another. Which server comes first and which is avoided is
//! [`Selection`]'s policy.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tonic::transport::Channel;

use super::NodeClientError;
use super::channel::{ServerEndpoint, tls_channel};
use super::identity::{AgentCredentials, tls_config};
use super::selection::{Change, Selection};
use crate::config::is_host_port;

/// Names are resolved again this often…
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// …or, after a failed call, when the last resolution is older than this.
const RESOLVE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Whether an error is a failure of the server reached (try another) rather
/// than its answer.
pub(crate) trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for tonic::Status {
    /// `Unavailable` and `DeadlineExceeded`, and any status made on this side
    /// from a transport error (it carries that error as its source: a
    /// connection reset mid-call is `Unknown` or `Internal` in tonic; what a
    /// server answers carries none).
    fn is_transient(&self) -> bool {
        matches!(
            self.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ) || std::error::Error::source(self).is_some()
    }
}

impl Transient for NodeClientError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Refused(status) if status.is_transient())
    }
}

/// Why a call over the group has no answer.
#[derive(Debug)]
pub(crate) enum GroupError<E> {
    /// A server's answer, or the last server's failure.
    Call(E),
    /// The budget ran out with no answer.
    Timeout(Duration),
    /// No name resolved to any address.
    NoAddress(String),
}

impl GroupError<tonic::Status> {
    /// As a gRPC status: failures of the group are `Unavailable`.
    pub(crate) fn into_status(self) -> tonic::Status {
        match self {
            Self::Call(status) => status,
            Self::Timeout(budget) => tonic::Status::unavailable(format!(
                "no server answered within {} s",
                budget.as_secs_f32()
            )),
            Self::NoAddress(names) => {
                tonic::Status::unavailable(format!("no server address resolved ({names})"))
            }
        }
    }
}

/// One server of the group: an IP address and the name it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) name: Arc<str>,
}

#[derive(Debug, Default)]
struct Resolution {
    /// Per configured name, in order: the addresses it resolved to last.
    addrs: Vec<Vec<SocketAddr>>,
    targets: Vec<Target>,
    resolved_at: Option<Instant>,
}

/// The CA certificates that authenticate servers, from each source.
#[derive(Debug)]
struct Roots {
    configured: Vec<CertificateDer<'static>>,
    from_svid: Vec<CertificateDer<'static>>,
    from_sync: Vec<CertificateDer<'static>>,
    union: Arc<Vec<CertificateDer<'static>>>,
    /// Bumped whenever `union` changes.
    generation: u64,
}

impl Roots {
    fn update(&mut self) -> bool {
        let mut union: Vec<CertificateDer<'static>> = Vec::new();
        for cert in self
            .configured
            .iter()
            .chain(&self.from_svid)
            .chain(&self.from_sync)
        {
            if !union.contains(cert) {
                union.push(cert.clone());
            }
        }
        if *self.union == union {
            return false;
        }
        self.union = Arc::new(union);
        self.generation += 1;
        true
    }
}

/// The servers of the trust domain this agent knows, and what it knows of
/// their health. Shared by attestation, renewal and every call.
#[derive(Debug)]
pub(crate) struct ServerGroup {
    names: Vec<String>,
    roots: Mutex<Roots>,
    resolution: tokio::sync::Mutex<Resolution>,
    /// A call failed since the last resolution: resolve again soon.
    failed_since_resolved: AtomicBool,
    selection: Mutex<Selection<SocketAddr>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ServerGroup {
    /// The servers at `addresses` (`host:port`, checked at config load),
    /// authenticated first by the CA certificates in `trust_bundle_path`.
    pub(crate) fn new(
        addresses: &[String],
        trust_bundle_path: &Path,
    ) -> Result<Self, NodeClientError> {
        let first = addresses
            .first()
            .ok_or_else(|| NodeClientError::Address(String::new()))?;
        let endpoint = ServerEndpoint::new(first, trust_bundle_path)?;
        if let Some(bad) = addresses.iter().find(|a| !is_host_port(a)) {
            return Err(NodeClientError::Address(bad.clone()));
        }
        Ok(Self::with_roots(
            addresses.to_vec(),
            endpoint.trust_bundle,
            random_start(),
        ))
    }

    /// The one server of `endpoint`.
    pub(crate) fn single(endpoint: &ServerEndpoint) -> Self {
        Self::with_roots(
            vec![endpoint.address.clone()],
            endpoint.trust_bundle.clone(),
            0,
        )
    }

    /// The servers at `names`, trusted by `configured`, taken in turn from
    /// the `start`th.
    pub(crate) fn with_roots(
        names: Vec<String>,
        configured: Vec<CertificateDer<'static>>,
        start: usize,
    ) -> Self {
        let mut roots = Roots {
            configured,
            from_svid: Vec::new(),
            from_sync: Vec::new(),
            union: Arc::new(Vec::new()),
            generation: 0,
        };
        roots.update();
        Self {
            names,
            roots: Mutex::new(roots),
            resolution: tokio::sync::Mutex::new(Resolution::default()),
            failed_since_resolved: AtomicBool::new(false),
            selection: Mutex::new(Selection::new(start)),
        }
    }

    /// The CA certificates that authenticate servers now, and their
    /// generation (bumped at every change).
    pub(crate) fn roots(&self) -> (Arc<Vec<CertificateDer<'static>>>, u64) {
        let roots = lock(&self.roots);
        (roots.union.clone(), roots.generation)
    }

    /// The bundle that came with the agent's SVID (attestation, renewal).
    pub(crate) fn learn_svid_bundle(&self, bundle: &[CertificateDer<'static>]) {
        let mut roots = lock(&self.roots);
        roots.from_svid = bundle.to_vec();
        if roots.update() {
            tracing::debug!(
                certificates = roots.union.len(),
                "server CA certificates updated from the agent SVID's bundle"
            );
        }
    }

    /// The X.509 authorities of the last bundle sync (DER); ignored when
    /// empty (a server that does not send them).
    pub(crate) fn learn_synced_authorities(&self, authorities: &[Vec<u8>]) {
        if authorities.is_empty() {
            return;
        }
        let mut roots = lock(&self.roots);
        if roots.from_sync.len() == authorities.len()
            && roots
                .from_sync
                .iter()
                .zip(authorities)
                .all(|(known, new)| known.as_ref() == new.as_slice())
        {
            return;
        }
        roots.from_sync = authorities
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect();
        if roots.update() {
            tracing::info!(
                certificates = roots.union.len(),
                "the trust domain's CA certificates changed; new connections to servers trust them"
            );
        }
    }

    /// The servers now: every configured name resolved, resolved again when
    /// stale (on a resolution failure, a name keeps its previous addresses).
    /// Resolution waits at most until `deadline`.
    pub(crate) async fn targets(&self, deadline: Option<Instant>) -> Vec<Target> {
        let mut resolution = self.resolution.lock().await;
        let now = Instant::now();
        let stale = resolution.resolved_at.is_none_or(|at| {
            let age = now.saturating_duration_since(at);
            age >= RESOLVE_EVERY
                || (self.failed_since_resolved.load(Ordering::Relaxed)
                    && age >= RESOLVE_AFTER_FAILURE)
        });
        if !stale {
            return resolution.targets.clone();
        }
        let mut addrs = Vec::with_capacity(self.names.len());
        for (i, name) in self.names.iter().enumerate() {
            let previous = resolution.addrs.get(i).cloned().unwrap_or_default();
            let lookup = tokio::net::lookup_host(name.as_str());
            // With addresses to fall back on, a slow resolver may take only
            // half of what is left.
            let wait = deadline.map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                if previous.is_empty() { left } else { left / 2 }
            });
            let resolved = match wait {
                Some(wait) => tokio::time::timeout(wait, lookup)
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
                None => lookup.await,
            };
            match resolved {
                Ok(found) => {
                    let mut found: Vec<SocketAddr> = found.collect();
                    found.dedup();
                    if found != previous && !previous.is_empty() {
                        tracing::info!(server = %name, addresses = ?found, "server name resolves to other addresses");
                    }
                    addrs.push(found);
                }
                Err(e) => {
                    tracing::debug!(server = %name, error = %e, "resolving a server name failed; keeping its previous addresses");
                    addrs.push(previous);
                }
            }
        }
        let mut targets: Vec<Target> = Vec::new();
        for (name, found) in self.names.iter().zip(&addrs) {
            let name: Arc<str> = Arc::from(name.as_str());
            for addr in found {
                if !targets.iter().any(|t| t.addr == *addr) {
                    targets.push(Target {
                        addr: *addr,
                        name: name.clone(),
                    });
                }
            }
        }
        let present: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
        lock(&self.selection).retain(&present);
        *resolution = Resolution {
            addrs,
            targets: targets.clone(),
            resolved_at: Some(now),
        };
        self.failed_since_resolved.store(false, Ordering::Relaxed);
        targets
    }

    /// Runs `attempt` on one server after another until one answers (see
    /// the module docs), within `budget` when given.
    pub(crate) async fn call<T, E, F, Fut>(
        &self,
        budget: Option<Duration>,
        mut attempt: F,
    ) -> Result<T, GroupError<E>>
    where
        E: Transient + std::fmt::Display,
        F: FnMut(&Target) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let deadline = budget.map(|b| Instant::now() + b);
        let targets = self.targets(deadline).await;
        if targets.is_empty() {
            return Err(GroupError::NoAddress(self.names.join(", ")));
        }
        let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
        let order = lock(&self.selection).order(&addrs, Instant::now());
        let mut last = None;
        for (tried, addr) in order.iter().enumerate() {
            let Some(target) = targets.iter().find(|t| t.addr == *addr) else {
                continue;
            };
            let untried = order.len() - tried;
            let limit = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    Some(if untried > 1 { left / 2 } else { left })
                }
                None => None,
            };
            let outcome = match limit {
                Some(limit) => tokio::time::timeout(limit, attempt(target)).await.ok(),
                None => Some(attempt(target).await),
            };
            match outcome {
                Some(Ok(answer)) => {
                    self.answered(target);
                    return Ok(answer);
                }
                Some(Err(e)) if e.is_transient() => {
                    self.failed(target, &e, targets.len());
                    last = Some(e);
                }
                Some(Err(e)) => {
                    self.answered(target);
                    return Err(GroupError::Call(e));
                }
                None => {
                    let waited = limit.unwrap_or_default();
                    let why = format!("no answer within {:.1} s", waited.as_secs_f32());
                    self.failed(target, &why, targets.len());
                    last = None;
                }
            }
        }
        Err(match (last, budget) {
            (Some(e), _) => GroupError::Call(e),
            (None, budget) => GroupError::Timeout(budget.unwrap_or_default()),
        })
    }

    fn answered(&self, target: &Target) {
        if let Change::Recovered(failures) = lock(&self.selection).succeeded(&target.addr) {
            tracing::info!(server = %target.name, address = %target.addr, failures, "server answers again");
        }
    }

    fn failed(&self, target: &Target, error: &dyn std::fmt::Display, servers: usize) {
        let change = lock(&self.selection).failed(&target.addr, Instant::now());
        self.failed_since_resolved.store(true, Ordering::Relaxed);
        if let Change::StartedFailing(avoid) = change {
            if servers > 1 {
                tracing::warn!(
                    server = %target.name,
                    address = %target.addr,
                    error = %error,
                    avoid_s = avoid.as_secs(),
                    "server failed; calls go to the other servers, and to this one only when they fail, until it answers again"
                );
            } else {
                tracing::debug!(server = %target.name, error = %error, "server failed");
            }
        }
    }

    /// A new lazily connecting channel to `target`, trusting the group's CA
    /// certificates and presenting `identity` when given.
    pub(crate) fn channel(
        &self,
        target: &Target,
        identity: Option<&AgentCredentials>,
    ) -> Result<Channel, NodeClientError> {
        let (roots, _) = self.roots();
        let tls = tls_config(&roots, identity)?;
        tls_channel(target.addr, Arc::new(tls))
    }

    /// Whether the server at `addr` is avoided now.
    #[cfg(test)]
    pub(crate) fn is_avoided(&self, addr: &SocketAddr) -> bool {
        lock(&self.selection).is_avoided(addr, Instant::now())
    }
}

/// Where this agent's round-robin starts, so that a fleet spreads over the group.
fn random_start() -> usize {
    (lanyard_host::random::jitter_fraction() * 65_536.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_transient_and_answers_are_not() {
        assert!(tonic::Status::unavailable("down").is_transient());
        assert!(tonic::Status::deadline_exceeded("slow").is_transient());
        for answer in [
            tonic::Status::permission_denied("evicted"),
            tonic::Status::invalid_argument("bad"),
            tonic::Status::not_found("no entry"),
            tonic::Status::unknown("the server said so"),
            tonic::Status::unimplemented("old"),
        ] {
            assert!(!answer.is_transient(), "{answer:?}");
        }
        // A reset connection, as tonic reports it: Unknown with the cause.
        let reset = tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(reset.is_transient(), "{reset:?}");
        assert!(NodeClientError::Refused(tonic::Status::unavailable("down")).is_transient());
        assert!(!NodeClientError::Protocol("x").is_transient());
    }

    #[tokio::test]
    async fn names_resolve_to_every_address_once() {
        let group = ServerGroup::with_roots(
            vec![
                "127.0.0.1:1".to_owned(),
                "127.0.0.2:1".to_owned(),
                "127.0.0.1:1".to_owned(),
                "[::1]:2".to_owned(),
            ],
            Vec::new(),
            0,
        );
        let addrs: Vec<String> = group
            .targets(None)
            .await
            .iter()
            .map(|t| t.addr.to_string())
            .collect();
        assert_eq!(addrs, ["127.0.0.1:1", "127.0.0.2:1", "[::1]:2"]);
    }

    #[test]
    fn roots_are_the_union_and_change_with_what_is_learnt() {
        let cert = |b: u8| CertificateDer::from(vec![b]);
        let group = ServerGroup::with_roots(vec!["a:1".to_owned()], vec![cert(1)], 0);
        let (roots, first) = group.roots();
        assert_eq!(*roots, [cert(1)]);
        group.learn_svid_bundle(&[cert(1), cert(2)]);
        group.learn_synced_authorities(&[vec![2], vec![3]]);
        let (roots, generation) = group.roots();
        assert_eq!(*roots, [cert(1), cert(2), cert(3)]);
        assert_eq!(generation, first + 2);
        // The same again changes nothing; an empty sync is no news.
        group.learn_synced_authorities(&[vec![2], vec![3]]);
        group.learn_synced_authorities(&[]);
        assert_eq!(group.roots().1, generation);
        // A CA dropped from the synced bundle is no longer trusted.
        group.learn_synced_authorities(&[vec![4]]);
        assert_eq!(*group.roots().0, [cert(1), cert(2), cert(4)]);
    }
}
