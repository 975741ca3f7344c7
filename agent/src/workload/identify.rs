//! Who a caller is, in one call: its peer (as accepted) → its selectors (the
//! unix attestor, only of the kinds the entries in force use) → the entries
//! it matches. This decides which identities a process gets; the Workload
//! API only turns the answer into SVIDs, or an error into a status.

use std::sync::Arc;

use lanyard_proto::Selector;

use crate::attestor::peer::{PeerError, PeerInfo};
use crate::attestor::workload::{AttestError, WorkloadAttestor};
use crate::sync::entries::{AgentEntry, EntrySet};

/// Why a caller gets no identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentifyError {
    /// The caller was not identified when its connection was accepted.
    #[error("caller could not be attested: {0}")]
    Peer(#[source] PeerError),
    #[error("caller could not be attested: {0}")]
    Attest(#[source] AttestError),
    /// The blocking attestation task panicked or was cancelled.
    #[error("attestation task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// Attested, and no entry in force matches.
    #[error("no identity issued")]
    NoIdentity,
}

/// A caller's selectors and the identities they give it.
#[derive(Debug)]
pub(crate) struct Identified {
    pub selectors: Vec<Selector>,
    pub identities: Vec<AgentEntry>,
}

/// The identities of `peer` among `entries`, and the selectors they were
/// matched on. Selectors are found out once, and only of the kinds `entries`
/// use; they are matched against the same snapshot.
pub(crate) async fn identify(
    attestor: &Arc<WorkloadAttestor>,
    peer: &PeerInfo,
    entries: &EntrySet,
) -> Result<Identified, IdentifyError> {
    let selectors = selectors(attestor, peer, entries).await?;
    let identities = identities_in(entries, &selectors)?;
    Ok(Identified {
        selectors,
        identities,
    })
}

/// The caller's selectors, of the kinds `entries` use, from what the kernel
/// says about it (and its pin still holding).
pub(crate) async fn selectors(
    attestor: &Arc<WorkloadAttestor>,
    peer: &PeerInfo,
    entries: &EntrySet,
) -> Result<Vec<Selector>, IdentifyError> {
    let needs = entries.needs();
    let attestor = attestor.clone();
    let peer = peer.clone();
    let attest = move || match peer.0.as_ref() {
        Ok(peer) => attestor
            .attest_for(peer, needs)
            .map(|selectors| (peer.credentials, selectors))
            .map_err(|reason| {
                tracing::debug!(%reason, "caller could not be attested");
                IdentifyError::Attest(reason)
            }),
        Err(reason) => {
            tracing::debug!(%reason, "caller could not be attested");
            Err(IdentifyError::Peer(reason.clone()))
        }
    };
    let attested = if needs.may_block() {
        // NSS may ask a network directory; a large binary takes a while to hash.
        tokio::task::spawn_blocking(attest)
            .await
            .map_err(IdentifyError::Task)?
    } else {
        // A pin check and procfs reads: cheaper than a trip to the blocking pool.
        attest()
    };
    let (caller, selectors) = attested?;
    tracing::trace!(
        uid = caller.uid,
        gid = caller.gid,
        pid = caller.pid,
        "caller attested"
    );
    Ok(selectors)
}

/// The identities `selectors` have among `entries`; none is an error.
pub(crate) fn identities_in(
    entries: &EntrySet,
    selectors: &[Selector],
) -> Result<Vec<AgentEntry>, IdentifyError> {
    let identities = entries.identities_for(selectors);
    if identities.is_empty() {
        tracing::debug!("caller has no identity");
        return Err(IdentifyError::NoIdentity);
    }
    Ok(identities)
}
