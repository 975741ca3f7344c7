//! The rules a registration entry must follow before it is stored: its
//! X509-SVID lifetime, its hint and its claims. The entry itself is the datastore's record
//! ([`EntrySpec`], [`RegistrationEntry`]).

use std::time::Duration;

use lanyard_proto::entry_claims::{ClaimsError, EntryClaims};

pub use crate::store::{DEFAULT_X509_SVID_TTL, EntrySpec, RegistrationEntry};

/// The longest X509-SVID lifetime an entry may ask for (a CA lives a year
/// and a successor signs a month before it expires).
pub const MAX_X509_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest hint; SPIRE's is shorter still.
pub const MAX_HINT_LEN: usize = 1024;

/// Why an entry's field is refused; the caller names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryRuleError {
    #[error("must be at most {} (30 days)", MAX_X509_SVID_TTL.as_secs())]
    X509SvidTtlTooLong,
    #[error("must be at most {MAX_HINT_LEN} bytes")]
    HintTooLong,
    #[error("must not contain control characters")]
    HintNotPrintable,
}

/// An entry's X509-SVID lifetime from `seconds` as an operator gives it (0:
/// the default), or why it is refused.
pub(crate) fn x509_svid_ttl(seconds: u32) -> Result<Duration, EntryRuleError> {
    match Duration::from_secs(seconds.into()) {
        ttl if ttl.is_zero() => Ok(DEFAULT_X509_SVID_TTL),
        ttl if ttl > MAX_X509_SVID_TTL => Err(EntryRuleError::X509SvidTtlTooLong),
        ttl => Ok(ttl),
    }
}

/// An entry's claims as stored: "" for none, else the checked object as
/// compact JSON (see `lanyard_proto::entry_claims` for the rules).
pub(crate) fn checked_claims(text: &str) -> Result<String, ClaimsError> {
    if text.trim().is_empty() {
        return Ok(String::new());
    }
    Ok(EntryClaims::parse(text)?.to_json())
}

/// A hint is shown to workloads and logged: printable text, short.
pub(crate) fn check_hint(hint: &str) -> Result<(), EntryRuleError> {
    if hint.len() > MAX_HINT_LEN {
        return Err(EntryRuleError::HintTooLong);
    }
    if hint.chars().any(char::is_control) {
        return Err(EntryRuleError::HintNotPrintable);
    }
    Ok(())
}
