//! What the agent knows from the server and keeps in step with it: the
//! entries in force and the matching of callers against them, the trust
//! bundle, the sync loop.

pub(crate) mod entries;
pub(crate) mod state;
