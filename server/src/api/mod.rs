//! The server's faces to its callers: the Admin API (operators, over a Unix
//! socket), the Node API (agents, over a Unix socket or mTLS), and the
//! listener plumbing they share with the OIDC endpoint. Handlers ask the
//! authority; they never reach the datastore themselves.

pub(crate) mod admin;
pub(crate) mod listener;
pub(crate) mod node;
pub(crate) mod node_tls;
pub(crate) mod peer;

use tonic::Status;

use crate::authority::Authority;

/// The trust domain's JWKS as a bundle reply carries it, rendered by `render`
/// (compact for agents, pretty for operators).
fn jwks_reply(
    authority: &Authority,
    render: fn(&lanyard_proto::Jwks) -> serde_json::Result<Vec<u8>>,
) -> Result<Vec<u8>, Status> {
    let jwks = authority
        .jwks()
        .map_err(|e| Status::unavailable(e.to_string()))?;
    render(&jwks).map_err(|e| Status::internal(e.to_string()))
}
