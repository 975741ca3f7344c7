//! Who is on the other end of a local Unix-socket API, per the kernel.

use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

/// The peer's uid from `SO_PEERCRED`, if the kernel gave one.
pub(crate) fn uid<T>(request: &Request<T>) -> Option<u32> {
    request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid())
}

/// The peer's uid from `SO_PEERCRED`, if it is one of `allowed` or root.
pub(crate) fn require_uid<T>(
    request: &Request<T>,
    allowed: &[u32],
    api: &str,
) -> Result<u32, Status> {
    let uid =
        uid(request).ok_or_else(|| Status::unauthenticated("peer credentials unavailable"))?;
    if uid == 0 || allowed.contains(&uid) {
        Ok(uid)
    } else {
        tracing::warn!(uid, api, "call refused: peer uid is not allowed");
        Err(Status::permission_denied(format!(
            "uid {uid} may not use the {api}"
        )))
    }
}
