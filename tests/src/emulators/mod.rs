//! Local emulators of the cloud token services Lanyard's JWT-SVIDs are
//! exchanged at, written to each service's documented rules rather than as
//! stubs: each one discovers the issuer over HTTPS, verifies the signature
//! with an independent implementation (jsonwebtoken), checks the claims the
//! service checks, with the service's skew and limits, against a clock a test
//! can move, and speaks the service's wire format on plain
//! `http://127.0.0.1:<port>` (SDKs accept http endpoint overrides).
//!
//! The shared core: a controllable clock, an HTTP listener that stops when
//! dropped, and the OIDC verifier every service emulator builds on.

pub mod oidc;
mod shared;

pub use oidc::{IssuerTrust, Rejection, Rules, Verifier};
pub use shared::Clock;
