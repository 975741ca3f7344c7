//! The Workload API as the agent serves it: the listener (callers identified
//! at accept, connections capped per uid), the gRPC handlers (counted and
//! timed by `metered`), and the validation of JWT-SVIDs for ValidateJWTSVID.

pub(crate) mod api;
pub(crate) mod identify;
pub mod jwt_validate;
pub(crate) mod listener;
pub(crate) mod metered;
