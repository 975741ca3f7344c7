//! Which server of the group a call tries first, and which it keeps away
//! from: pure bookkeeping over a clock the caller passes in, so that the
//! policy is tested without waiting.
//!
//! Calls go round-robin over the servers that are not avoided (each agent
//! starting at a random place, so that a fleet spreads over the group). A
//! server whose call failed (transport error, `Unavailable`, no answer in
//! time) is avoided for 1 s, then 2 s, 4 s… up to 60 s after consecutive
//! failures; an answer from it ends the avoidance. Avoided servers are still
//! tried, last and soonest-due first, when every other one failed: an
//! outage of the whole group must end as soon as any server is back.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The avoidance after the first failure in a row…
pub(crate) const MIN_AVOIDANCE: Duration = Duration::from_secs(1);
/// …doubling with each further one, up to this.
pub(crate) const MAX_AVOIDANCE: Duration = Duration::from_secs(60);

/// How long a server is avoided after `failures` consecutive failures (≥ 1).
pub(crate) fn avoidance(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    MIN_AVOIDANCE
        .saturating_mul(1 << doublings)
        .min(MAX_AVOIDANCE)
}

/// A server's record of failures in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Health {
    failures: u32,
    avoid_until: Instant,
}

/// What a report changed, for logging once per change rather than per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing worth a line.
    None,
    /// The server failed after answering before: avoided for this long.
    StartedFailing(Duration),
    /// The server answered after this many failures in a row.
    Recovered(u32),
}

/// Round-robin order and avoidance over servers named by `K`.
#[derive(Debug)]
pub(crate) struct Selection<K> {
    health: HashMap<K, Health>,
    cursor: usize,
}

impl<K: Eq + Hash + Clone> Selection<K> {
    /// The round-robin starts at `start` (modulo the number of servers).
    pub(crate) fn new(start: usize) -> Self {
        Self {
            health: HashMap::new(),
            cursor: start,
        }
    }

    /// The order in which one call tries `candidates` at `now`: those not
    /// avoided, rotated one step further at each call; then the avoided
    /// ones, soonest due first.
    pub(crate) fn order(&mut self, candidates: &[K], now: Instant) -> Vec<K> {
        let (mut healthy, mut avoided): (Vec<&K>, Vec<&K>) = candidates
            .iter()
            .partition(|k| self.health.get(*k).is_none_or(|h| h.avoid_until <= now));
        if !healthy.is_empty() {
            let start = self.cursor % healthy.len();
            healthy.rotate_left(start);
        }
        self.cursor = self.cursor.wrapping_add(1);
        avoided.sort_by_key(|k| self.health.get(*k).map(|h| h.avoid_until));
        healthy.into_iter().chain(avoided).cloned().collect()
    }

    /// `key` failed at `now`: avoided for longer than after its previous failure.
    pub(crate) fn failed(&mut self, key: &K, now: Instant) -> Change {
        let health = self.health.entry(key.clone()).or_insert(Health {
            failures: 0,
            avoid_until: now,
        });
        health.failures = health.failures.saturating_add(1);
        let avoid = avoidance(health.failures);
        health.avoid_until = now + avoid;
        if health.failures == 1 {
            Change::StartedFailing(avoid)
        } else {
            Change::None
        }
    }

    /// `key` answered: no longer avoided.
    pub(crate) fn succeeded(&mut self, key: &K) -> Change {
        match self.health.remove(key) {
            Some(health) => Change::Recovered(health.failures),
            None => Change::None,
        }
    }

    /// Forgets the records of servers not in `present` (no longer resolved).
    pub(crate) fn retain(&mut self, present: &[K]) {
        self.health.retain(|k, _| present.contains(k));
    }

    /// Whether `key` is avoided at `now`.
    #[cfg(test)]
    pub(crate) fn is_avoided(&self, key: &K, now: Instant) -> bool {
        self.health.get(key).is_some_and(|h| h.avoid_until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn avoidance_doubles_from_one_second_up_to_a_minute() {
        let steps: Vec<u64> = (1..=9).map(|f| avoidance(f).as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(avoidance(u32::MAX), MAX_AVOIDANCE);
    }

    #[test]
    fn healthy_servers_take_turns_from_the_start_given() {
        let t0 = Instant::now();
        let mut selection = Selection::new(1);
        let servers = ["a", "b", "c"];
        let firsts: Vec<&str> = (0..4).map(|_| selection.order(&servers, t0)[0]).collect();
        assert_eq!(firsts, ["b", "c", "a", "b"]);
        assert_eq!(selection.order(&servers, t0), ["c", "a", "b"]);
    }

    #[test]
    fn a_failing_server_is_avoided_longer_each_time_until_it_answers() {
        let t0 = Instant::now();
        let mut selection = Selection::new(0);
        let servers = ["a", "b"];
        assert_eq!(selection.failed(&"a", t0), Change::StartedFailing(S));
        // Avoided: last, whatever the turn.
        for _ in 0..3 {
            assert_eq!(selection.order(&servers, t0), ["b", "a"]);
        }
        assert!(selection.is_avoided(&"a", t0 + S / 2));
        assert!(!selection.is_avoided(&"a", t0 + S));
        // Due again after 1 s; its next failure costs 2 s, logged no more.
        let t1 = t0 + S;
        assert!(selection.order(&servers, t1).contains(&"a"));
        assert_eq!(selection.failed(&"a", t1), Change::None);
        assert!(selection.is_avoided(&"a", t1 + S));
        assert!(!selection.is_avoided(&"a", t1 + 2 * S));
        let t2 = t1 + 2 * S;
        assert_eq!(selection.failed(&"a", t2), Change::None);
        assert!(selection.is_avoided(&"a", t2 + 3 * S));
        assert!(!selection.is_avoided(&"a", t2 + 4 * S));
        // An answer ends it, and says after how many failures.
        assert_eq!(selection.succeeded(&"a"), Change::Recovered(3));
        assert!(!selection.is_avoided(&"a", t2));
        assert_eq!(selection.succeeded(&"a"), Change::None);
        assert_eq!(selection.failed(&"a", t2), Change::StartedFailing(S));
    }

    #[test]
    fn when_every_server_is_avoided_the_soonest_due_comes_first() {
        let t0 = Instant::now();
        let mut selection = Selection::new(0);
        let servers = ["a", "b", "c"];
        selection.failed(&"a", t0);
        selection.failed(&"a", t0);
        selection.failed(&"b", t0);
        selection.failed(&"c", t0);
        selection.failed(&"c", t0);
        selection.failed(&"c", t0);
        // a: 2 s, b: 1 s, c: 4 s.
        assert_eq!(selection.order(&servers, t0), ["b", "a", "c"]);
        // After 1.5 s, b is due again and tried first.
        assert_eq!(selection.order(&servers, t0 + S * 3 / 2), ["b", "a", "c"]);
        // After 2.5 s, a and b take turns again; c stays last.
        assert_eq!(selection.order(&servers, t0 + S * 5 / 2), ["a", "b", "c"]);
    }

    #[test]
    fn servers_no_longer_resolved_are_forgotten() {
        let t0 = Instant::now();
        let mut selection = Selection::new(0);
        selection.failed(&"a", t0);
        selection.failed(&"b", t0);
        selection.retain(&["b"]);
        assert!(!selection.is_avoided(&"a", t0));
        assert!(selection.is_avoided(&"b", t0));
    }
}
