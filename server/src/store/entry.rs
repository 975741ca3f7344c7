//! A registration entry as the datastore holds it: which SPIFFE ID a workload
//! with which selectors gets, and under which agent (its parent). The rules an
//! operator's entry must follow are the authority's (`authority::entries`).

use std::time::Duration;

use aws_lc_rs::digest;
use lanyard_host::encoding::hex;
use lanyard_proto::{Selector, SpiffeId};

/// X509-SVID lifetime of an entry that names none.
pub const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(3600);

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
    /// Its own JWT claims, compact JSON ("" for none), checked when written
    /// (`lanyard_proto::entry_claims`).
    pub claims: String,
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
            claims: String::new(),
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
    /// As [`EntrySpec::claims`].
    pub claims: String,
    pub admin: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// The entry revision of its last change.
    pub revision: u64,
}
