//! What the server counts, and whether it is ready: the metrics served on
//! `[telemetry] listen` (see [`lanyard_host::telemetry`] for the listener)
//! and the readiness check behind `/readyz`.
//!
//! Every label takes one of a fixed set of values (an enum, a gRPC code):
//! never a SPIFFE ID, an audience, a uid or a peer address.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lanyard_host::label_values;
use lanyard_host::sync::lock;
use lanyard_host::telemetry::{self, Endpoint, GrpcCode, Readiness, ReadinessCheck};
use lanyard_proto::SpiffeId;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::authority::ca::CertificateAuthority;
use crate::keys::KeyManager;
use crate::store::Datastore;

/// An agent counts as connected for this long after its last authenticated
/// Node API call (agents sync every 5 s by default).
pub const CONNECTED_WINDOW: Duration = Duration::from_secs(60);
/// `/readyz` gives the datastore this long to answer its ping.
pub const DATASTORE_PING_TIMEOUT: Duration = Duration::from_secs(2);

label_values! {
    /// Which kind of SVID a mint made.
    pub enum SvidKind { Jwt => "jwt", X509 => "x509" }
}

label_values! {
    /// How a node proved itself.
    pub enum AttestMethod {
        JoinToken => "join_token",
        X509Pop => "x509pop",
        SshPop => "sshpop",
        /// Refused before the evidence was read.
        Unknown => "unknown",
    }
}

label_values! {
    /// How an attestation ended.
    pub enum AttestResult {
        Ok => "ok",
        /// The node was refused (see the refusal's reason).
        Refused => "refused",
        /// The server failed (datastore, CA): not the node's doing.
        Error => "error",
    }
}

label_values! {
    /// Why an attestation was refused, by the status the node was given.
    pub enum RefusalReason {
        /// Malformed: no start, a bad CSR, evidence that does not parse (InvalidArgument).
        Malformed => "malformed",
        /// The method is not configured on this server (FailedPrecondition).
        MethodNotConfigured => "method_not_configured",
        /// Not proven: a bad chain or signature, a spent or unknown token,
        /// a banned agent, an expired challenge (PermissionDenied).
        NotProven => "not_proven",
        /// Too many attestations or challenges open from one address (ResourceExhausted).
        TooMany => "too_many_in_progress",
        /// No start in time (DeadlineExceeded).
        Timeout => "timeout",
        /// The node's own stream failed or was cancelled.
        Other => "other",
    }
}

label_values! {
    /// Which rate limit refused a call.
    pub enum RateLimit { Mint => "mint", Attestation => "attestation" }
}

label_values! {
    /// What a datastore operation at the registry boundary was for; each is
    /// one query or a few.
    pub enum StoreOp {
        Ping => "ping",
        EntryRead => "entry_read",
        EntryWrite => "entry_write",
        AgentRead => "agent_read",
        AgentWrite => "agent_write",
        JoinToken => "join_token",
        /// The entries and changes an agent's sync needs.
        Sync => "sync",
        /// The entry check before a mint.
        MintLookup => "mint_lookup",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MintLabels {
    kind: SvidKind,
    code: GrpcCode,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttestLabels {
    method: AttestMethod,
    result: AttestResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    method: AttestMethod,
    reason: RefusalReason,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: RateLimit,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    operation: StoreOp,
}

fn store_histogram() -> Histogram {
    // 0.25 ms to about 4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// The server's counters. Cheap to update: atomics behind a family's map,
/// whose labels are small enums.
#[derive(Debug)]
pub struct ServerMetrics {
    mints: Family<MintLabels, Counter>,
    attestations: Family<AttestLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
    store_duration: Family<StoreLabels, Histogram, fn() -> Histogram>,
    store_errors: Family<StoreLabels, Counter>,
    entry_revision: Gauge<i64, AtomicI64>,
    /// Agent ID → when it last made an authenticated Node API call.
    seen: Mutex<HashMap<SpiffeId, Instant>>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        let metrics = Self {
            mints: Family::default(),
            attestations: Family::default(),
            refusals: Family::default(),
            rate_limited: Family::default(),
            store_duration: Family::new_with_constructor(store_histogram),
            store_errors: Family::default(),
            entry_revision: Gauge::default(),
            seen: Mutex::default(),
        };
        // Both limits show from the start, at zero, so a rate of them is defined.
        for limit in [RateLimit::Mint, RateLimit::Attestation] {
            let _ = metrics.rate_limited.get_or_create(&LimitLabels { limit });
        }
        metrics
    }
}

impl ServerMetrics {
    /// A JWT-SVID or X509-SVID mint asked of the Node API, and how it ended.
    pub fn mint<T>(&self, kind: SvidKind, result: &Result<T, tonic::Status>) {
        self.mints
            .get_or_create(&MintLabels {
                kind,
                code: GrpcCode::of(result),
            })
            .inc();
    }

    /// An attestation by `method` that ended with `result` (a refusal also
    /// counts under its reason).
    pub fn attestation<T>(&self, method: AttestMethod, result: &Result<T, tonic::Status>) {
        self.attestation_ended(method, result.as_ref().err());
    }

    /// An attestation by `method` that succeeded (None) or ended with `error`.
    pub fn attestation_ended(&self, method: AttestMethod, error: Option<&tonic::Status>) {
        use tonic::Code;
        let outcome = match error {
            None => AttestResult::Ok,
            Some(status) => {
                let reason = match status.code() {
                    Code::InvalidArgument => Some(RefusalReason::Malformed),
                    Code::FailedPrecondition => Some(RefusalReason::MethodNotConfigured),
                    Code::PermissionDenied | Code::Unauthenticated => {
                        Some(RefusalReason::NotProven)
                    }
                    Code::ResourceExhausted => Some(RefusalReason::TooMany),
                    Code::DeadlineExceeded => Some(RefusalReason::Timeout),
                    Code::Cancelled | Code::Unknown | Code::Aborted => Some(RefusalReason::Other),
                    _ => None,
                };
                match reason {
                    Some(reason) => {
                        self.refusals
                            .get_or_create(&RefusalLabels { method, reason })
                            .inc();
                        AttestResult::Refused
                    }
                    None => AttestResult::Error,
                }
            }
        };
        self.attestations
            .get_or_create(&AttestLabels {
                method,
                result: outcome,
            })
            .inc();
    }

    /// A call refused by the rate limit `limit`.
    pub fn rate_limited(&self, limit: RateLimit) {
        self.rate_limited
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    /// The entry revision last handed to an agent.
    pub fn entry_revision(&self, revision: u64) {
        self.entry_revision
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
    }

    /// `agent` made an authenticated Node API call just now.
    pub fn agent_seen(&self, agent: &SpiffeId) {
        let now = Instant::now();
        let mut seen = lock(&self.seen);
        match seen.get_mut(agent) {
            Some(at) => *at = now,
            None => {
                seen.insert(agent.clone(), now);
            }
        }
    }

    /// Agents seen within [`CONNECTED_WINDOW`]; forgets the others.
    pub fn connected_agents(&self) -> usize {
        let now = Instant::now();
        let mut seen = lock(&self.seen);
        seen.retain(|_, at| now.duration_since(*at) < CONNECTED_WINDOW);
        seen.len()
    }

    /// Runs the datastore operation `call`, timing it as `operation`;
    /// `failed` tells a datastore failure from an answer (not found, a conflict).
    pub async fn datastore<T, E>(
        &self,
        operation: StoreOp,
        call: impl Future<Output = Result<T, E>>,
        failed: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = call.await;
        let labels = StoreLabels { operation };
        self.store_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result
            && failed(e)
        {
            self.store_errors.get_or_create(&labels).inc();
        }
        result
    }

    /// Registers every metric under `lanyard_server_`.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "mints",
            "JWT-SVID and X509-SVID mints asked of the Node API, by kind and gRPC status code",
            self.mints.clone(),
        );
        registry.register(
            "attestations",
            "Node attestations by method and result (ok, refused, error)",
            self.attestations.clone(),
        );
        registry.register(
            "attestation_refusals",
            "Refused node attestations by method and reason",
            self.refusals.clone(),
        );
        registry.register(
            "rate_limited",
            "Calls refused by a rate limit, by limit",
            self.rate_limited.clone(),
        );
        registry.register(
            "datastore_query_duration_seconds",
            "Time taken by datastore operations at the registry boundary, by operation",
            self.store_duration.clone(),
        );
        registry.register(
            "datastore_errors",
            "Datastore operations that failed (not answers such as not found), by operation",
            self.store_errors.clone(),
        );
        registry.register(
            "entry_revision",
            "The entry revision last handed to an agent by this server",
            self.entry_revision.clone(),
        );
    }
}

/// Values read at scrape time: key and CA deadlines, connected agents.
#[derive(Debug)]
struct ServerState {
    metrics: Arc<ServerMetrics>,
    keys: Arc<KeyManager>,
    ca: Arc<CertificateAuthority>,
}

/// Seconds from now until `at` (Unix seconds); negative once past.
fn seconds_until(at: i64) -> f64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    at as f64 - now
}

impl Collector for ServerState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        telemetry::encode_gauge(
            &mut encoder,
            "connected_agents",
            "Agents that made an authenticated Node API call (sync, mint, renewal) in the last 60 s",
            self.metrics.connected_agents() as f64,
        )?;
        if let Some(at) = self.keys.next_activation() {
            telemetry::encode_gauge(
                &mut encoder,
                "key_next_activation_seconds",
                "Seconds until this server's next JWT signing key starts signing (the next published key, else when the current one retires)",
                seconds_until(at),
            )?;
        }
        if let Some(at) = self.ca.signing_not_after(SystemTime::now()) {
            telemetry::encode_gauge(
                &mut encoder,
                "ca_expiry_seconds",
                "Seconds until the X.509 CA that signs now expires",
                seconds_until(at),
            )?;
        }
        Ok(())
    }
}

/// The telemetry endpoint of a server: its metrics, and ready while the
/// datastore answers a ping within [`DATASTORE_PING_TIMEOUT`] and a JWT
/// signing key is active.
pub(crate) fn endpoint(
    metrics: Arc<ServerMetrics>,
    keys: Arc<KeyManager>,
    ca: Arc<CertificateAuthority>,
    store: Datastore,
) -> Endpoint {
    let mut registry = Registry::with_prefix("lanyard_server");
    metrics.register(&mut registry);
    registry.register_collector(Box::new(ServerState {
        metrics: metrics.clone(),
        keys: keys.clone(),
        ca,
    }));
    let readiness: ReadinessCheck = Arc::new(move || {
        let (metrics, keys, store) = (metrics.clone(), keys.clone(), store.clone());
        Box::pin(async move { ready(&metrics, &keys, &store).await })
    });
    Endpoint::new(registry, readiness)
}

async fn ready(metrics: &ServerMetrics, keys: &KeyManager, store: &Datastore) -> Readiness {
    metrics
        .datastore(
            StoreOp::Ping,
            async {
                match tokio::time::timeout(DATASTORE_PING_TIMEOUT, store.ping()).await {
                    Ok(pinged) => pinged.map_err(|e| format!("datastore unreachable: {e}")),
                    Err(_) => Err(format!(
                        "datastore did not answer within {} s",
                        DATASTORE_PING_TIMEOUT.as_secs()
                    )),
                }
            },
            |_| true,
        )
        .await?;
    keys.current()
        .map(|_| ())
        .map_err(|e| format!("no JWT signing key: {e}"))
}
