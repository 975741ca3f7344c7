//! Challenges: a fresh nonce per attestation, and a bound on how many
//! attestations may wait for an answer at once, per peer address and in all.
//! A slot is held by a guard for as long as its stream is open, so a peer
//! that drops its streams gets its slots back at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use lanyard_proto::attestation::NONCE_LEN;

/// Most attestations pending on one server, whatever their peers.
pub(crate) const MAX_PENDING_TOTAL: usize = 256;

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PendingError {
    #[error("too many attestations pending from this address (at most {0})")]
    PerPeer(usize),
    #[error("too many attestations pending on this server (at most {0})")]
    Total(usize),
}

#[derive(Debug, Default)]
struct Counts {
    per_peer: HashMap<IpAddr, usize>,
    total: usize,
}

/// The attestations in progress, counted per peer address.
#[derive(Debug)]
pub(crate) struct PendingChallenges {
    counts: Arc<Mutex<Counts>>,
    max_per_peer: usize,
    max_total: usize,
}

impl PendingChallenges {
    pub(crate) fn new(max_per_peer: usize, max_total: usize) -> Self {
        Self {
            counts: Arc::default(),
            max_per_peer,
            max_total,
        }
    }

    /// A slot for one attestation from `peer`, given back when the guard drops.
    pub(crate) fn acquire(&self, peer: IpAddr) -> Result<PendingSlot, PendingError> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(PendingError::Total(self.max_total));
        }
        let count = counts.per_peer.entry(peer).or_insert(0);
        if *count >= self.max_per_peer {
            return Err(PendingError::PerPeer(self.max_per_peer));
        }
        *count += 1;
        counts.total += 1;
        Ok(PendingSlot {
            counts: self.counts.clone(),
            peer,
        })
    }

    #[cfg(test)]
    fn pending(&self, peer: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.per_peer.get(&peer).copied().unwrap_or(0)
    }
}

/// One pending attestation's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct PendingSlot {
    counts: Arc<Mutex<Counts>>,
    peer: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.per_peer.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.per_peer.remove(&self.peer);
            }
        }
    }
}

/// A fresh random nonce.
pub(crate) fn nonce() -> Result<[u8; NONCE_LEN], lanyard_host::random::NoRandomness> {
    lanyard_host::random::bytes::<NONCE_LEN>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_peer_and_in_total_and_freed_on_drop() {
        let pending = PendingChallenges::new(2, 3);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let first = pending.acquire(a).unwrap();
        let _second = pending.acquire(a).unwrap();
        assert_eq!(pending.acquire(a).unwrap_err(), PendingError::PerPeer(2));
        let _third = pending.acquire(b).unwrap();
        assert_eq!(pending.acquire(c).unwrap_err(), PendingError::Total(3));
        drop(first);
        assert_eq!(pending.pending(a), 1);
        let _again = pending.acquire(a).unwrap();
        assert_eq!(pending.acquire(b).unwrap_err(), PendingError::Total(3));
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}
