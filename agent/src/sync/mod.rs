//! What the agent knows from the server and keeps in step with it: the
//! entries in force and the matching of callers against them, the trust
//! bundle, the sync loop, and whether the server answers at all.

pub(crate) mod entries;
pub(crate) mod reachability;
pub(crate) mod state;
