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
    // The same words as the metrics' `code` label.
    let code = lanyard_host::telemetry::GrpcCode(code).as_str();
    if code == "ok" {
        audit!("admin.call", uid, method, code, "Admin API call");
    } else {
        audit!(warn, "admin.call", uid, method, code, "Admin API call");
    }
}

/// For tests: a subscriber that keeps the fields of every audit event.
#[cfg(test)]
pub(crate) mod capture {
    use std::sync::{Arc, Mutex};

    /// The `lanyard::audit` events of a test, each as its fields' `name=value` text.
    #[derive(Default, Clone)]
    pub(crate) struct Audit(pub(crate) Arc<Mutex<Vec<String>>>);

    impl Audit {
        /// Captures this thread's audit events until the guard drops.
        ///
        /// tracing-core caches each callsite's interest globally. While only
        /// one dispatcher is registered, a callsite first reached on another
        /// test's thread asks that thread's default (none) and is cached as
        /// never-wanted, silently dropping this capture's events. A second,
        /// process-long dispatcher keeps tracing-core asking every registered
        /// dispatcher instead.
        pub(crate) fn start() -> (Self, tracing::subscriber::DefaultGuard) {
            static SECOND_DISPATCHER: std::sync::OnceLock<tracing::Dispatch> =
                std::sync::OnceLock::new();
            SECOND_DISPATCHER
                .get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::new()));
            let audit = Self::default();
            let guard = tracing::subscriber::set_default(audit.clone());
            (audit, guard)
        }
    }

    struct Fields(String);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }

    impl tracing::Subscriber for Audit {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if event.metadata().target() == lanyard_host::logging::AUDIT_TARGET {
                let mut fields = Fields(String::new());
                event.record(&mut fields);
                lanyard_host::sync::lock(&self.0).push(fields.0);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
}

#[cfg(test)]
mod tests {
    use super::capture::Audit;

    /// The CI failure this guards against: an audit callsite first reached
    /// on a thread with no subscriber must not be cached as unwanted while a
    /// capture is running on another thread.
    #[test]
    fn a_callsite_first_reached_elsewhere_still_reaches_the_capture() {
        fn unban_seen_from_anywhere() {
            super::agent_unbanned(
                7,
                &lanyard_proto::SpiffeId::parse("spiffe://example.org/node/a")
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let (audit, _guard) = Audit::start();
        let elsewhere = std::thread::spawn(unban_seen_from_anywhere);
        assert!(elsewhere.join().is_ok());
        unban_seen_from_anywhere();
        let lines = lanyard_host::sync::lock(&audit.0).clone();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("event=\"agent.unbanned\""), "{lines:?}");
    }
}
