//! The trust domain's signing keys.

mod signing_key;

pub use signing_key::{JwtSigningKey, KeyError};
