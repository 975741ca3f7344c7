//! Lanyard end to end: the real binaries, sockets, TLS, databases and
//! third-party clients. One test binary, not one per file: each links the
//! whole dependency tree, and fourteen of them cost gigabytes of disk and
//! minutes of linking for nothing.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test shares its package's dependency list; the library target is where unused dependencies are caught"
)]

mod admin_cli;
mod advisories;
mod agent_cli;
mod agent_containers;
mod agent_entry_changes;
mod agent_handoff;
mod agent_outage;
mod agent_pid_reuse;
mod agent_remote;
mod agent_selectors;
mod agent_systemd;
mod agent_workload_api;
mod binaries;
mod claims_clouds;
mod cloud_emulators;
mod cloud_exchange;
mod config_properties;
mod fleet_attestation;
mod fleet_enrolment;
mod foreign_clients;
mod ha_group;
mod jwt_svid_e2e;
mod listener_flood;
mod logs_audit;
mod node_attestation;
mod oidc_endpoint;
mod quickstart;
mod rate_limits;
mod telemetry;
mod validate_strict;
mod x509_svids;
