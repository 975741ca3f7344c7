//! Lanyard's wire contract and the identity types that both server and agent
//! share. It carries no runtime: the messages and types need only prost and
//! serde (and serde_json for entries' claims); the tonic client and server stubs come with the `grpc` feature.
//! What the daemons share on a host (sockets, files, signals) is `lanyard-host`.
#![cfg_attr(
    test,
    allow(
        unused_crate_dependencies,
        reason = "dev-dependencies serve the integration tests; the library build catches unused dependencies"
    )
)]

pub mod attestation;
pub mod audience;
pub mod claims;
pub mod entry_claims;
pub mod jwks;
pub mod selector;
pub mod spiffe_id;

pub use claims::{JwtHeader, JwtSvidClaims};
pub use jwks::{Jwk, Jwks};
pub use selector::{Selector, SelectorError};
pub use spiffe_id::{AssignError, SpiffeId, SpiffeIdError, TrustDomain};

/// The SPIFFE Workload API (no protobuf package, as the standard requires).
#[allow(clippy::all, missing_debug_implementations)]
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// The Node API between agent and server.
#[allow(clippy::all, missing_debug_implementations)]
pub mod node {
    include!(concat!(env!("OUT_DIR"), "/lanyard.node.v1.rs"));
}

/// The Admin API between operator and server.
#[allow(clippy::all, missing_debug_implementations)]
pub mod admin {
    include!(concat!(env!("OUT_DIR"), "/lanyard.admin.v1.rs"));
}

/// Metadata key every Workload API call must carry with the value `true`.
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";

/// Response metadata of a Node API refusal that the agent's SVID can only
/// renew: the server issued a successor that never reached use (a lost
/// response, a crash before saving), so the agent should renew at once.
pub const RENEW_REQUIRED_METADATA: &str = "lanyard-renew-required";

/// Response metadata of a Node API refusal that only a new attestation can
/// cure (the agent was evicted, is unknown, or its SVID expired): an agent
/// that attests by x509pop or sshpop then attests again by itself.
pub const REATTEST_REQUIRED_METADATA: &str = "lanyard-reattest-required";
