//! The Node API's per-caller rate limits: SVID mints per agent, and
//! attestations per peer address (before any evidence is looked at, so a
//! flood costs the server a map lookup, not a signature check).

use std::net::IpAddr;
use std::sync::Arc;

use lanyard_host::rate_limit::{self, KeyedRateLimit};
use lanyard_proto::SpiffeId;
use tonic::Status;

use crate::config::RateLimitsConfig;
use crate::telemetry::{RateLimit, ServerMetrics};

#[derive(Debug)]
pub(crate) struct NodeRateLimits {
    mints: KeyedRateLimit<SpiffeId>,
    attestations: KeyedRateLimit<IpAddr>,
    metrics: Arc<ServerMetrics>,
}

impl NodeRateLimits {
    pub(crate) fn new(config: &RateLimitsConfig, metrics: Arc<ServerMetrics>) -> Self {
        Self {
            mints: KeyedRateLimit::new(config.mints_per_agent),
            attestations: KeyedRateLimit::new(config.attestations_per_address),
            metrics,
        }
    }

    /// One mint by `agent`, or `ResourceExhausted` with the wait.
    pub(crate) fn mint(&self, agent: &SpiffeId) -> Result<(), Status> {
        self.mints.check(agent).map_err(|wait| {
            tracing::debug!(agent = %agent, wait_ms = wait.as_millis(), "mint over the agent's rate limit");
            self.metrics.rate_limited(RateLimit::Mint);
            rate_limit::exhausted("rate_limits.mints_per_second_per_agent", wait)
        })
    }

    /// One attestation from `peer`, or `ResourceExhausted` with the wait.
    pub(crate) fn attestation(&self, peer: IpAddr) -> Result<(), Status> {
        self.attestations.check(&peer).map_err(|wait| {
            tracing::debug!(%peer, wait_ms = wait.as_millis(), "attestation over the address's rate limit");
            self.metrics.rate_limited(RateLimit::Attestation);
            rate_limit::exhausted("rate_limits.attestations_per_second_per_address", wait)
        })
    }
}
