//! Local emulators of the cloud token services Lanyard's JWT-SVIDs are
//! exchanged at, written to each service's documented rules rather than as
//! stubs: each one discovers the issuer over HTTPS, verifies the signature
//! with an independent implementation (jsonwebtoken), checks the claims the
//! service checks, with the service's skew and limits, against a clock a test
//! can move, and speaks the service's wire format on plain
//! `http://127.0.0.1:<port>` (SDKs accept http endpoint overrides).
//!
//! - [`aws_sts`]: AWS STS `AssumeRoleWithWebIdentity` (query protocol, XML).
//! - [`gcp`]: Google STS token exchange and IAM Credentials
//!   `generateAccessToken` (JSON).
//! - [`entra`]: Microsoft Entra client credentials with a federated client
//!   assertion (form in, JSON out).
//! - [`vault`]: HashiCorp Vault's JWT auth method (JSON).
//!
//! Every emulator records what it issued, so a test can compare what an SDK
//! got with what was handed out, and stops serving when dropped. [`requests`]
//! holds the raw requests that more than one test module sends.

pub mod aws_sts;
pub mod entra;
pub mod gcp;
pub mod oidc;
pub mod requests;
mod shared;
pub mod vault;

pub use oidc::{IssuerTrust, Rejection, Rules, Verifier};
pub use shared::Clock;
