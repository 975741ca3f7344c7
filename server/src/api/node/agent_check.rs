//! Whether an agent presenting an X.509 SVID over mTLS may make a call: the
//! SVID must not have expired, the agent must be attested and not evicted, and
//! the serial must be the current one — or, for a renewal only, the one the
//! current SVID was renewed from, so that an agent whose renewal response was
//! lost can renew again. The first call with the current SVID kills the
//! previous one. A renewal is refused, with the reattest-required marker,
//! once the host certificate the agent proved (x509pop, sshpop) has expired:
//! only a new proof extends its identity.

use lanyard_proto::SpiffeId;
use tonic::Status;

use crate::api::node_tls::PeerSvid;
use crate::audit;
use crate::authority::registry::{AgentRecord, Registry, RegistryError};

/// What the caller wants: only a renewal may present the previous serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    Renewal,
    Other,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("an agent SVID is required; attest first")]
    NoSvid,
    #[error("this agent SVID expired at {0} (Unix time); reconnect with a renewed one")]
    Expired(i64),
    #[error("agent {0} is not attested")]
    NotAttested(SpiffeId),
    #[error("agent {0} has been evicted")]
    Evicted(SpiffeId),
    #[error("agent {0} is banned")]
    Banned(SpiffeId),
    #[error("the host certificate this agent proved has expired: attest again")]
    EvidenceExpired,
    #[error("this agent SVID has been superseded; use the renewed one")]
    Superseded,
    #[error(
        "this agent SVID has been renewed but the renewed one was never used: it may only renew again"
    )]
    RenewOnly,
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// `status` marked with `metadata` = 1.
fn marked(mut status: Status, metadata: &'static str) -> Status {
    status
        .metadata_mut()
        .insert(metadata, tonic::metadata::MetadataValue::from_static("1"));
    status
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NoSvid => Status::unauthenticated(refusal.to_string()),
            // Only a new attestation cures these.
            Refusal::Expired(_) => marked(
                Status::unauthenticated(refusal.to_string()),
                lanyard_proto::REATTEST_REQUIRED_METADATA,
            ),
            Refusal::NotAttested(_)
            | Refusal::Evicted(_)
            | Refusal::Banned(_)
            | Refusal::EvidenceExpired => marked(
                Status::permission_denied(refusal.to_string()),
                lanyard_proto::REATTEST_REQUIRED_METADATA,
            ),
            Refusal::Registry(e) => super::unavailable(e),
            Refusal::RenewOnly => marked(
                Status::permission_denied(refusal.to_string()),
                lanyard_proto::RENEW_REQUIRED_METADATA,
            ),
            other => Status::permission_denied(other.to_string()),
        }
    }
}

/// The agent's record, as checked, if `peer` may make `call` at `now` (Unix
/// seconds). Pass the record to [`Registry::renew_agent`] when renewing.
pub(super) async fn admit(
    registry: &Registry,
    peer: &PeerSvid,
    call: Call,
    now: i64,
) -> Result<AgentRecord, Refusal> {
    if now > peer.not_after {
        return Err(Refusal::Expired(peer.not_after));
    }
    let agent = match registry.get_agent(&peer.spiffe_id).await {
        Ok(agent) => agent,
        Err(RegistryError::NotFound { .. }) => {
            return Err(Refusal::NotAttested(peer.spiffe_id.clone()));
        }
        Err(e) => return Err(e.into()),
    };
    if agent.banned {
        audit::agent_refused(&peer.spiffe_id, "banned");
        return Err(Refusal::Banned(agent.spiffe_id));
    }
    if agent.evicted {
        audit::agent_refused(&peer.spiffe_id, "evicted");
        return Err(Refusal::Evicted(agent.spiffe_id));
    }
    if agent.serial == peer.serial {
        // The renewed SVID arrived: the one it replaced must stop working.
        if agent.prev_serial.is_some()
            && !registry
                .forget_previous_serial(&agent.spiffe_id, &agent.serial)
                .await?
        {
            return Err(Refusal::Superseded); // renewed or evicted meanwhile
        }
    } else if agent.prev_serial.as_deref() == Some(peer.serial.as_str()) {
        if call == Call::Other {
            return Err(Refusal::RenewOnly);
        }
    } else {
        return Err(Refusal::Superseded);
    }
    // The SVID is the agent's: a renewal needs evidence that still holds.
    if call == Call::Renewal && agent.evidence_expired(now) {
        audit::renewal_refused(&peer.spiffe_id, "its evidence has expired");
        return Err(Refusal::EvidenceExpired);
    }
    Ok(agent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::registry::test_support::registries;

    const NOW: i64 = 1_000_000;

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/node/a").unwrap()
    }

    fn peer(serial: &str) -> PeerSvid {
        PeerSvid {
            spiffe_id: id(),
            serial: serial.to_owned(),
            not_after: NOW + 600,
        }
    }

    fn code(result: Result<AgentRecord, Refusal>) -> Result<String, tonic::Code> {
        result.map(|a| a.serial).map_err(|r| Status::from(r).code())
    }

    #[tokio::test]
    async fn an_expired_svid_is_refused_on_an_open_connection() {
        for (_dir, registry) in registries().await {
            registry.attest_agent(&id(), "01").await.unwrap();
            let mut svid = peer("01");
            svid.not_after = NOW;
            assert_eq!(
                code(admit(&registry, &svid, Call::Other, NOW).await),
                Ok("01".into()),
                "valid through its notAfter second"
            );
            for call in [Call::Other, Call::Renewal] {
                let refused = admit(&registry, &svid, call, NOW + 1).await;
                assert!(
                    matches!(&refused, Err(Refusal::Expired(t)) if *t == NOW),
                    "{refused:?}"
                );
                assert_eq!(code(refused), Err(tonic::Code::Unauthenticated));
            }
        }
    }

    /// Renew, lose the response, renew again with the old SVID; the old SVID
    /// serves nothing else, and dies once the new one has been used.
    #[tokio::test]
    async fn a_lost_renewal_response_does_not_lock_the_agent_out() {
        use tonic::Code::PermissionDenied;
        for (_dir, registry) in registries().await {
            registry.attest_agent(&id(), "01").await.unwrap();
            let checked = admit(&registry, &peer("01"), Call::Renewal, NOW)
                .await
                .unwrap();
            registry.renew_agent(&checked, "01", "02").await.unwrap();

            // "02" never reached the agent.
            assert_eq!(
                code(admit(&registry, &peer("01"), Call::Other, NOW).await),
                Err(PermissionDenied)
            );
            let retry = admit(&registry, &peer("01"), Call::Renewal, NOW)
                .await
                .unwrap();
            registry.renew_agent(&retry, "01", "03").await.unwrap();
            assert_eq!(
                code(admit(&registry, &peer("02"), Call::Renewal, NOW).await),
                Err(PermissionDenied),
                "the lost SVID is dead"
            );

            assert_eq!(
                code(admit(&registry, &peer("03"), Call::Other, NOW).await),
                Ok("03".into())
            );
            for call in [Call::Other, Call::Renewal] {
                let refused = admit(&registry, &peer("01"), call, NOW).await;
                assert!(matches!(refused, Err(Refusal::Superseded)), "{refused:?}");
            }
        }
    }

    #[tokio::test]
    async fn eviction_refuses_the_current_and_the_previous_svid() {
        for (_dir, registry) in registries().await {
            let first = registry.attest_agent(&id(), "01").await.unwrap();
            registry.renew_agent(&first, "01", "02").await.unwrap();
            registry.evict_agent(&id()).await.unwrap();
            for serial in ["01", "02"] {
                for call in [Call::Other, Call::Renewal] {
                    let refused = admit(&registry, &peer(serial), call, NOW).await;
                    assert!(matches!(refused, Err(Refusal::Evicted(_))), "{refused:?}");
                }
            }
            let unknown = PeerSvid {
                spiffe_id: SpiffeId::parse("spiffe://example.org/node/b").unwrap(),
                ..peer("01")
            };
            let refused = admit(&registry, &unknown, Call::Other, NOW).await;
            assert!(
                matches!(refused, Err(Refusal::NotAttested(_))),
                "{refused:?}"
            );
        }
    }

    /// Issue 13: a banned agent is refused as such, and the refusals only a
    /// new attestation cures say so in the reattest-required metadata.
    #[tokio::test]
    async fn a_banned_agent_is_refused_and_told_to_reattest() {
        for (_dir, registry) in registries().await {
            registry.attest_agent(&id(), "01").await.unwrap();
            registry.ban_agent(&id()).await.unwrap();
            let refused = admit(&registry, &peer("01"), Call::Other, NOW).await;
            assert!(matches!(refused, Err(Refusal::Banned(_))), "{refused:?}");
            let status = Status::from(refused.unwrap_err());
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            assert!(status.message().contains("is banned"), "{status:?}");
            let marked = |status: &Status| {
                status
                    .metadata()
                    .get(lanyard_proto::REATTEST_REQUIRED_METADATA)
                    .is_some_and(|v| v == "1")
            };
            assert!(marked(&status));
            for refusal in [
                Refusal::Evicted(id()),
                Refusal::NotAttested(id()),
                Refusal::Expired(NOW),
            ] {
                assert!(marked(&Status::from(refusal)));
            }
            for refusal in [Refusal::Superseded, Refusal::RenewOnly, Refusal::NoSvid] {
                assert!(!marked(&Status::from(refusal)));
            }
        }
    }

    /// Review of issue 13: once the host certificate an agent proved has
    /// expired, it may not renew (PermissionDenied, marked reattest-required)
    /// but its current SVID still serves other calls until it ends; a join
    /// token agent (no evidence expiry) renews as before.
    #[tokio::test]
    async fn a_renewal_past_the_evidence_is_refused_and_told_to_reattest() {
        let node = SpiffeId::parse("spiffe://example.org/lanyard/agent/x509pop/ab").unwrap();
        let svid = PeerSvid {
            spiffe_id: node.clone(),
            ..peer("01")
        };
        for (_dir, registry) in registries().await {
            registry
                .attest_node(&node, "01", "x509pop", &[], NOW + 10)
                .await
                .unwrap();
            assert_eq!(
                code(admit(&registry, &svid, Call::Renewal, NOW + 9).await),
                Ok("01".into())
            );
            let refused = admit(&registry, &svid, Call::Renewal, NOW + 10).await;
            assert!(
                matches!(refused, Err(Refusal::EvidenceExpired)),
                "{refused:?}"
            );
            let status = Status::from(refused.unwrap_err());
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            assert!(
                status
                    .message()
                    .contains("the host certificate this agent proved has expired: attest again"),
                "{status:?}"
            );
            assert!(
                status
                    .metadata()
                    .get(lanyard_proto::REATTEST_REQUIRED_METADATA)
                    .is_some_and(|v| v == "1")
            );
            assert_eq!(
                code(admit(&registry, &svid, Call::Other, NOW + 10).await),
                Ok("01".into())
            );

            registry.attest_agent(&id(), "01").await.unwrap();
            assert_eq!(
                code(admit(&registry, &peer("01"), Call::Renewal, NOW + 600).await),
                Ok("01".into())
            );
        }
    }
}
