//! Workload attestation: what the kernel says about a caller, as selectors,
//! and (in [`identify`]) the identities those selectors give it.

pub mod binary;
pub(crate) mod identify;
pub(crate) mod peer;
pub(crate) mod pin;
pub(crate) mod unix;
pub(crate) mod writer;
