//! Registration entries: which SPIFFE ID a workload with which selectors gets,
//! and under which agent (its parent).

use std::time::Duration;

use aws_lc_rs::digest;
use lanyard_proto::{Selector, SpiffeId, node};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationEntry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    pub selectors: Vec<Selector>,
    pub jwt_svid_ttl: Duration,
}

impl RegistrationEntry {
    /// An entry whose id is derived from its content, so a static entry keeps
    /// its id across restarts.
    pub fn new(
        spiffe_id: SpiffeId,
        parent_id: SpiffeId,
        mut selectors: Vec<Selector>,
        jwt_svid_ttl: Duration,
    ) -> Self {
        selectors.sort();
        selectors.dedup();
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [spiffe_id.as_str(), parent_id.as_str()] {
            ctx.update(part.as_bytes());
            ctx.update(b"\0");
        }
        for selector in &selectors {
            ctx.update(selector.to_string().as_bytes());
            ctx.update(b"\0");
        }
        let id = ctx.finish().as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            id,
            spiffe_id,
            parent_id,
            selectors,
            jwt_svid_ttl,
        }
    }

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
