//! Workload attestation: what the kernel says about a caller, as selectors.

pub mod unix;
