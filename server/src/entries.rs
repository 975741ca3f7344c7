//! Registration entries: which SPIFFE ID a workload with which selectors gets,
//! and under which agent (its parent).

use std::time::Duration;

use aws_lc_rs::digest;
use lanyard_proto::{Selector, SpiffeId, node};

/// X509-SVID lifetime of an entry that names none.
pub const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(3600);

/// The longest X509-SVID lifetime an entry may ask for (a CA lives a year
/// and a successor signs a month before it expires).
pub const MAX_X509_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest hint; SPIRE's is shorter still.
pub const MAX_HINT_LEN: usize = 1024;

/// An entry's X509-SVID lifetime from `seconds` as an operator gives it (0:
/// the default), or why it is refused.
pub fn x509_svid_ttl(seconds: u32) -> Result<Duration, String> {
    match Duration::from_secs(seconds.into()) {
        ttl if ttl.is_zero() => Ok(DEFAULT_X509_SVID_TTL),
        ttl if ttl > MAX_X509_SVID_TTL => Err(format!(
            "must be at most {} (30 days)",
            MAX_X509_SVID_TTL.as_secs()
        )),
        ttl => Ok(ttl),
    }
}

/// A hint is shown to workloads and logged: printable text, short.
pub fn check_hint(hint: &str) -> Result<(), String> {
    if hint.len() > MAX_HINT_LEN {
        return Err(format!("must be at most {MAX_HINT_LEN} bytes"));
    }
    if hint.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

/// What an operator (or the config file) says an entry should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySpec {
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    /// Sorted and without duplicates (see [`EntrySpec::new`]).
    pub selectors: Vec<Selector>,
    pub jwt_svid_ttl: Duration,
    /// Lifetime of its X509-SVIDs (never beyond the signing CA's).
    pub x509_svid_ttl: Duration,
    /// Handed to workloads with each SVID, to tell several identities apart.
    pub hint: String,
    /// May this identity use the Admin API (reserved for remote admin).
    pub admin: bool,
}

impl EntrySpec {
    pub fn new(
        spiffe_id: SpiffeId,
        parent_id: SpiffeId,
        mut selectors: Vec<Selector>,
        jwt_svid_ttl: Duration,
    ) -> Self {
        selectors.sort();
        selectors.dedup();
        Self {
            spiffe_id,
            parent_id,
            selectors,
            jwt_svid_ttl,
            x509_svid_ttl: DEFAULT_X509_SVID_TTL,
            hint: String::new(),
            admin: false,
        }
    }

    /// An id derived from what identifies the entry, so that an entry from the
    /// config file keeps its id across restarts.
    pub fn content_id(&self) -> String {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [self.spiffe_id.as_str(), self.parent_id.as_str()] {
            ctx.update(part.as_bytes());
            ctx.update(b"\0");
        }
        for selector in &self.selectors {
            ctx.update(selector.to_string().as_bytes());
            ctx.update(b"\0");
        }
        hex(&ctx.finish().as_ref()[..16])
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationEntry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    pub selectors: Vec<Selector>,
    pub jwt_svid_ttl: Duration,
    pub x509_svid_ttl: Duration,
    pub hint: String,
    pub admin: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// The entry revision of its last change.
    pub revision: u64,
}

impl RegistrationEntry {
    pub fn to_node(&self) -> node::Entry {
        node::Entry {
            id: self.id.clone(),
            spiffe_id: self.spiffe_id.to_string(),
            parent_id: self.parent_id.to_string(),
            selectors: self.selectors.iter().map(ToString::to_string).collect(),
            jwt_svid_ttl_seconds: u32::try_from(self.jwt_svid_ttl.as_secs()).unwrap_or(u32::MAX),
            x509_svid_ttl_seconds: u32::try_from(self.x509_svid_ttl.as_secs()).unwrap_or(u32::MAX),
            hint: self.hint.clone(),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
