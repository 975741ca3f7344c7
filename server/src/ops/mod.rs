//! Operator tools: the command line, the Admin API client behind its verbs,
//! the cloud federation snippets and the OIDC publishing helpers.

pub mod admin_client;
pub mod cli;
pub mod federation;
pub mod oidc_tools;
