//! The agent binary's client side, which calls a running agent like any
//! workload does: the Workload API client, the command line, and the cloud
//! credential helpers. Nothing here reaches into the daemon's internals.

pub mod cli;
pub mod cloud;
pub mod workload_api;

pub use workload_api::{ClientError, WorkloadClient};
