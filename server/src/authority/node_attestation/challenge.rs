//! Challenges: a fresh nonce per attestation, and bounds per peer address:
//! on the attestations waiting for an answer at once (`max_pending_per_peer`,
//! and [`MAX_PENDING_TOTAL`] in all), and on the `Attest` streams in progress,
//! from their opening to their end whatever they carry (join tokens too):
//! [`IN_PROGRESS_PER_PENDING`] × `max_pending_per_peer`, so a peer cannot make
//! the server read and verify evidence without bound before any challenge
//! slot is asked for. A slot is held by a guard for as long as its stream is
//! open, so a peer that drops its streams gets its slots back at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use lanyard_proto::attestation::NONCE_LEN;

/// Most attestations pending on one server, whatever their peers.
pub(crate) const MAX_PENDING_TOTAL: usize = 256;

/// `Attest` streams one peer address may have in progress, per challenge it
/// may have pending (`max_pending_per_peer`).
pub(crate) const IN_PROGRESS_PER_PENDING: usize = 4;

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PendingError {
    #[error("too many attestations pending from this address (at most {0})")]
    PerPeer(usize),
    #[error("too many attestations pending on this server (at most {0})")]
    Total(usize),
    #[error("too many attestations in progress from this address (at most {0})")]
    InProgress(usize),
}

/// What the slots count: challenges awaiting their answer, or whole streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Challenges,
    Streams,
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
    counted: Counted,
}

impl PendingChallenges {
    /// Challenges awaiting an answer: `max_per_peer` per address, `max_total` in all.
    pub(crate) fn new(max_per_peer: usize, max_total: usize) -> Self {
        Self {
            counts: Arc::default(),
            max_per_peer,
            max_total,
            counted: Counted::Challenges,
        }
    }

    /// `Attest` streams in progress: [`IN_PROGRESS_PER_PENDING`] ×
    /// `max_pending_per_peer` per address (no bound in all: the challenges'
    /// bound and the connection limits hold that).
    pub(crate) fn streams(max_pending_per_peer: usize) -> Self {
        Self {
            counts: Arc::default(),
            max_per_peer: max_pending_per_peer.saturating_mul(IN_PROGRESS_PER_PENDING),
            max_total: usize::MAX,
            counted: Counted::Streams,
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
            return Err(match self.counted {
                Counted::Challenges => PendingError::PerPeer(self.max_per_peer),
                Counted::Streams => PendingError::InProgress(self.max_per_peer),
            });
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

    /// Review of issue 13: streams in progress are capped per peer at four
    /// times the challenges, with no bound in all.
    #[test]
    fn streams_are_capped_per_peer_at_four_times_the_challenges() {
        let streams = PendingChallenges::streams(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let held: Vec<_> = (0..8).map(|_| streams.acquire(a).unwrap()).collect();
        assert_eq!(streams.acquire(a).unwrap_err(), PendingError::InProgress(8));
        let _other = streams.acquire(b).unwrap();
        drop(held);
        assert_eq!(streams.pending(a), 0);
        let _again = streams.acquire(a).unwrap();
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}
