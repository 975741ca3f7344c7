//! Workload attestation: what the kernel says about a caller, as selectors.

pub mod binary;
pub mod peer;
pub mod pin;
pub mod unix;
pub mod writer;
