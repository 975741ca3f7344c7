//! Registration entries: which SPIFFE ID a workload with which selectors gets,
//! and under which agent (its parent).

use std::time::Duration;

use aws_lc_rs::digest;
use lanyard_proto::{Selector, SpiffeId, node};

/// What an operator (or the config file) says an entry should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySpec {
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    /// Sorted and without duplicates (see [`EntrySpec::new`]).
    pub selectors: Vec<Selector>,
    pub jwt_svid_ttl: Duration,
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
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
