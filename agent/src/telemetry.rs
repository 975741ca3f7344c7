//! What the agent counts, and whether it is ready: the metrics served on
//! `[telemetry] listen` (see [`lanyard_host::telemetry`] for the listener)
//! and the readiness check behind `/readyz`.
//!
//! Every label takes one of a fixed set of values (a method name, a gRPC
//! code, an enum): never a SPIFFE ID, an audience, a uid or a path.

use std::sync::Arc;
use std::time::Instant;

use lanyard_host::label_values;
use lanyard_host::telemetry::{self, Endpoint, GrpcCode, Readiness, ReadinessCheck};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::svids::jwt::JwtSvids;
use crate::svids::x509::X509SvidCache;
use crate::sync::state::SyncedState;
use crate::upstream::reachability::Reachability;

label_values! {
    /// A Workload API method, as the SPIFFE standard names it.
    pub enum WorkloadMethod {
        FetchX509Svid => "FetchX509SVID",
        FetchX509Bundles => "FetchX509Bundles",
        FetchJwtSvid => "FetchJWTSVID",
        FetchJwtBundles => "FetchJWTBundles",
        ValidateJwtSvid => "ValidateJWTSVID",
    }
}

label_values! {
    /// Which kind of SVID a workload was handed.
    pub enum SvidKind { Jwt => "jwt", X509 => "x509" }
}

label_values! {
    /// Where an SVID handed to a workload came from.
    pub enum SvidSource {
        /// Held by the agent already.
        Cache => "cache",
        /// Minted by the server for this request.
        Minted => "minted",
    }
}

label_values! {
    /// How a sync with the server ended.
    pub enum SyncResult { Ok => "ok", Error => "error" }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: WorkloadMethod,
    code: GrpcCode,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: WorkloadMethod,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SvidLabels {
    kind: SvidKind,
    source: SvidSource,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    result: SyncResult,
}

fn request_histogram() -> Histogram {
    // 50 µs (a cached fetch) to about 6.5 s (a mint through a slow server).
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// The agent's counters. Cheap to update: atomics behind a family's map,
/// whose labels are small enums.
#[derive(Debug)]
pub struct AgentMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<MethodLabels, Histogram, fn() -> Histogram>,
    svids: Family<SvidLabels, Counter>,
    syncs: Family<SyncLabels, Counter>,
    rate_limited: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            durations: Family::new_with_constructor(request_histogram),
            svids: Family::default(),
            syncs: Family::default(),
            rate_limited: Counter::default(),
        }
    }
}

impl AgentMetrics {
    /// A Workload API call to `method` that began at `started` and ended
    /// with `result` (for a stream: its opening).
    pub fn request<T>(
        &self,
        method: WorkloadMethod,
        result: &Result<T, tonic::Status>,
        started: Instant,
    ) {
        self.durations
            .get_or_create(&MethodLabels { method })
            .observe(started.elapsed().as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                method,
                code: GrpcCode::of(result),
            })
            .inc();
    }

    /// An SVID of `kind` handed to a workload, from `source`.
    pub fn svid(&self, kind: SvidKind, source: SvidSource) {
        self.svids.get_or_create(&SvidLabels { kind, source }).inc();
    }

    /// A sync with the server that ended with `result`.
    pub fn sync(&self, result: SyncResult) {
        self.syncs.get_or_create(&SyncLabels { result }).inc();
    }

    /// A Workload API call refused by the per-uid rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// Registers every metric under `lanyard_agent_`.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "workload_requests",
            "Workload API calls by method and gRPC status code (for streams: how they opened)",
            self.requests.clone(),
        );
        registry.register(
            "workload_request_duration_seconds",
            "Time to answer a Workload API call (for streams: to open), by method",
            self.durations.clone(),
        );
        registry.register(
            "svids_served",
            "SVIDs handed to workloads, by kind and whether they came from the cache or were minted for the call",
            self.svids.clone(),
        );
        registry.register(
            "syncs",
            "Entry and bundle syncs with the server, by result",
            self.syncs.clone(),
        );
        registry.register(
            "rate_limited",
            "Workload API calls refused by the per-uid rate limit",
            self.rate_limited.clone(),
        );
    }
}

/// Values read at scrape time: the entry revision and the sync's age.
#[derive(Debug)]
struct AgentState {
    state: Arc<SyncedState>,
    reachability: Arc<Reachability>,
}

impl Collector for AgentState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        telemetry::encode_gauge(
            &mut encoder,
            "entry_revision",
            "The entry revision this agent holds (0 before its first sync)",
            self.state.revision() as f64,
        )?;
        if let Some(at) = self.state.last_synced() {
            telemetry::encode_gauge(
                &mut encoder,
                "seconds_since_last_sync",
                "Seconds since the last successful sync with the server (absent before the first)",
                at.elapsed().as_secs_f64(),
            )?;
        }
        telemetry::encode_gauge(
            &mut encoder,
            "server_reachable",
            "1 while the server answers, 0 while the agent serves from its caches",
            if self.reachability.is_down() {
                0.0
            } else {
                1.0
            },
        )?;
        Ok(())
    }
}

/// What the agent's readiness check looks at.
#[derive(Debug, Clone)]
pub(crate) struct AgentParts {
    pub(crate) metrics: Arc<AgentMetrics>,
    pub(crate) state: Arc<SyncedState>,
    pub(crate) reachability: Arc<Reachability>,
    pub(crate) jwt_svids: JwtSvids,
    pub(crate) x509: Option<Arc<X509SvidCache>>,
}

/// The telemetry endpoint of an agent: its metrics, and ready once entries
/// were synced at least once and either the server answers or a cached SVID
/// is still valid.
pub(crate) fn endpoint(parts: AgentParts) -> Endpoint {
    let mut registry = Registry::with_prefix("lanyard_agent");
    parts.metrics.register(&mut registry);
    registry.register_collector(Box::new(AgentState {
        state: parts.state.clone(),
        reachability: parts.reachability.clone(),
    }));
    let readiness: ReadinessCheck = Arc::new(move || {
        let ready = ready(&parts);
        Box::pin(async move { ready })
    });
    Endpoint::new(registry, readiness)
}

fn ready(parts: &AgentParts) -> Readiness {
    if parts.state.last_synced().is_none() {
        return Err("entries not yet synced with the server".into());
    }
    if !parts.reachability.is_down() {
        return Ok(());
    }
    let now = lanyard_host::clock::now();
    let cached = parts.jwt_svids.holds_valid(now)
        || parts
            .x509
            .as_ref()
            .is_some_and(|x509| x509.holds_valid(now));
    if cached {
        Ok(())
    } else {
        Err("the server is unreachable and no cached SVID is still valid".into())
    }
}
