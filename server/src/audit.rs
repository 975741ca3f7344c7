//! The server's audit records, one function per event: each is a `tracing`
//! event with target `lanyard::audit` and a stable `event` name, routed by
//! `lanyard_host::logging` to the log or to `[log] audit_file` (JSON lines).
//! The names and fields are a contract with whoever reads the trail (the
//! README lists them); a token, a key or a join token is never a field — a
//! join token appears as the first 12 hex digits of its SHA-256 at most.

use std::net::SocketAddr;

use lanyard_host::audit;
use lanyard_host::logging::secret_fingerprint;
use lanyard_proto::SpiffeId;

/// `jwt_svid.minted`: a JWT-SVID signed for `agent`'s entry.
pub(crate) fn jwt_svid_minted(
    agent: &SpiffeId,
    spiffe_id: &SpiffeId,
    audience: &[String],
    kid: &str,
    jti: &str,
    expires_at: i64,
) {
    audit!(
        "jwt_svid.minted",
        agent = %agent,
        spiffe_id = %spiffe_id,
        audience = ?audience,
        audience_count = audience.len(),
        kid,
        jti,
        expires_at,
        "minted JWT-SVID"
    );
}

/// `x509_svid.minted`: a workload's CSR signed for `agent`'s entry.
pub(crate) fn x509_svid_minted(
    agent: &SpiffeId,
    spiffe_id: &SpiffeId,
    serial: &str,
    expires_at: i64,
) {
    audit!(
        "x509_svid.minted",
        agent = %agent,
        spiffe_id = %spiffe_id,
        serial,
        expires_at,
        "signed X509-SVID"
    );
}

/// `svid.refused`: a mint refused (not the agent's entry, or an entry that
/// breaks a rule).
pub(crate) fn svid_refused(agent: &SpiffeId, entry: &str, reason: &str) {
    audit!(warn, "svid.refused", agent = %agent, entry, reason, "mint refused");
}

/// `agent.attested`: a node proved itself and got an agent SVID.
pub(crate) fn agent_attested(
    peer: SocketAddr,
    agent: &SpiffeId,
    method: &str,
    serial: &str,
    node_selectors: usize,
    join_token: Option<&str>,
) {
    let token_sha256 = join_token.map(secret_fingerprint);
    audit!(
        "agent.attested",
        peer = %peer,
        agent = %agent,
        method,
        serial,
        node_selectors,
        token_sha256,
        "agent attested"
    );
}

/// `agent.attestation_refused`: a node's proof (or token) was refused.
pub(crate) fn attestation_refused(
    peer: SocketAddr,
    agent: Option<&SpiffeId>,
    method: Option<&str>,
    join_token: Option<&str>,
    reason: &str,
) {
    let agent = agent.map(ToString::to_string);
    let token_sha256 = join_token.filter(|t| !t.is_empty()).map(secret_fingerprint);
    audit!(
        warn,
        "agent.attestation_refused",
        peer = %peer,
        agent,
        method,
        token_sha256,
        reason,
        "node attestation refused"
    );
}

/// `agent.renewed`: an agent's SVID renewed.
pub(crate) fn agent_renewed(agent: &SpiffeId, serial: &str, presented: &str, from_previous: bool) {
    audit!(
        "agent.renewed",
        agent = %agent,
        serial,
        presented,
        from_previous,
        "agent SVID renewed"
    );
}

/// `agent.renewal_refused`: a renewal refused (lost a race, evidence expired).
pub(crate) fn renewal_refused(agent: &SpiffeId, reason: &str) {
    audit!(warn, "agent.renewal_refused", agent = %agent, reason, "agent renewal refused");
}

/// `agent.refused`: a call from an evicted or banned agent refused.
pub(crate) fn agent_refused(agent: &SpiffeId, reason: &str) {
    audit!(warn, "agent.refused", agent = %agent, reason, "agent refused");
}

/// `node_selector.dropped`: a node selector an attestation proved, not kept.
pub(crate) fn node_selector_dropped(agent: &SpiffeId, selector: &str, reason: &str) {
    audit!(
        warn,
        "node_selector.dropped",
        agent = %agent,
        selector,
        reason,
        "node selector dropped"
    );
}

/// `entry.created` (Admin API).
pub(crate) fn entry_created(uid: u32, id: &str, spiffe_id: &SpiffeId) {
    audit!("entry.created", uid, id, spiffe_id = %spiffe_id, "entry created");
}

/// `entry.updated` (Admin API).
pub(crate) fn entry_updated(uid: u32, id: &str, spiffe_id: &SpiffeId) {
    audit!("entry.updated", uid, id, spiffe_id = %spiffe_id, "entry updated");
}

/// `entry.deleted` (Admin API).
pub(crate) fn entry_deleted(uid: u32, id: &str) {
    audit!("entry.deleted", uid, id, "entry deleted");
}

/// `join_token.created` (Admin API): never the token, its fingerprint only.
pub(crate) fn join_token_created(uid: u32, spiffe_id: &SpiffeId, expires_at: i64, token: &str) {
    audit!(
        "join_token.created",
        uid,
        spiffe_id = %spiffe_id,
        expires_at,
        token_sha256 = secret_fingerprint(token),
        "join token generated"
    );
}

/// `agent.evicted` (Admin API).
pub(crate) fn agent_evicted(uid: u32, agent: &SpiffeId) {
    audit!("agent.evicted", uid, agent = %agent, "agent evicted");
}

/// `agent.banned` (Admin API).
pub(crate) fn agent_banned(uid: u32, agent: &SpiffeId) {
    audit!("agent.banned", uid, agent = %agent, "agent banned");
}

/// `agent.unbanned` (Admin API).
pub(crate) fn agent_unbanned(uid: u32, agent: &SpiffeId) {
    audit!("agent.unbanned", uid, agent = %agent, "agent unbanned");
}

/// `admin.call`: every Admin API call, allowed or not, with the caller's
/// uid (from the socket's peer credentials; absent if the kernel gave none)
/// and the gRPC code it was answered with (`ok`, `permission_denied`, …).
pub(crate) fn admin_call(uid: Option<u32>, method: &str, code: tonic::Code) {
    let code = code_name(code);
    if code == "ok" {
        audit!("admin.call", uid, method, code, "Admin API call");
    } else {
        audit!(warn, "admin.call", uid, method, code, "Admin API call");
    }
}

/// A gRPC code as a stable snake_case word.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
