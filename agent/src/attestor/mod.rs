//! Workload attestation: what the kernel says about a caller (its peer
//! credentials, pinned process, executable, cgroups), as selectors. Which identities
//! those selectors give it is `workload::identify`'s matter.

pub mod binary;
pub(crate) mod cgroup;
pub(crate) mod container;
pub(crate) mod peer;
pub(crate) mod pin;
pub(crate) mod systemd;
pub(crate) mod unix;
pub(crate) mod workload;
pub(crate) mod writer;
