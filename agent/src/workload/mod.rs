//! The Workload API as the agent serves it: the listener (callers identified
//! at accept, connections capped per uid), the gRPC handlers, and the
//! validation of JWT-SVIDs for ValidateJWTSVID.

pub(crate) mod api;
pub(crate) mod identify;
pub mod jwt_validate;
pub(crate) mod listener;
