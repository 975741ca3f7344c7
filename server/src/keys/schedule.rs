//! The signing key rotation schedule: pure decisions over the public key
//! records and the current time, with no I/O and no clock of its own.
//!
//! Each key has a window `[activate_at, retire_at)` in which it may sign and
//! is published in the JWKS from its creation until `remove_at` =
//! `retire_at + max_token_ttl + safety_margin`, i.e. until every token it can
//! have signed has expired (with room for verifiers' clock skew). The next key
//! is created `publish_lead` before the current one retires, so clouds that
//! cache the JWKS have seen it before it signs anything.
//!
//! Every decision depends only on the records and `now`, so a restarted server
//! (or a second call at the same instant) decides the same and adds no key.
//!
//! In an HA group each server signs only with the keys it holds: pass
//! [`signing_record`] and [`RotationPolicy::next_key`] the records of this
//! server's keys, and [`RotationPolicy::published`] those of one server at a
//! time (the JWKS being the union), so that the bound applies per server.

use std::cmp::Ordering;
use std::time::Duration;

use lanyard_proto::Jwk;

use super::{JwtSigningKey, KeyType};

/// Upper bound on keys a JWKS may hold: AWS and Entra use at most 100.
pub const CLOUD_JWKS_LIMIT: usize = 100;

/// The public record of one signing key and its schedule (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The RFC 7638 thumbprint of `public_jwk`.
    pub kid: String,
    pub key_type: KeyType,
    /// What the JWKS publishes.
    pub public_jwk: Jwk,
    /// When the key was generated (and first published).
    pub created_at: i64,
    /// When it starts to sign.
    pub activate_at: i64,
    /// When it stops signing.
    pub retire_at: i64,
    /// When it leaves the JWKS: `retire_at + max_token_ttl + safety_margin`.
    pub remove_at: i64,
}

impl KeyRecord {
    /// Newest first: the later `activate_at` wins, then `created_at`, then `kid`.
    fn newest_first(a: &&KeyRecord, b: &&KeyRecord) -> Ordering {
        (b.activate_at, b.created_at, &b.kid).cmp(&(a.activate_at, a.created_at, &a.kid))
    }
}

/// How keys rotate. [`RotationPolicy::default`] is 7-day keys published 24 h
/// ahead, tokens of at most 48 h, a 1 h margin and at most 10 published keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long each key signs.
    pub key_lifetime: Duration,
    /// How long before it signs a key is published, at least.
    pub publish_lead: Duration,
    /// The longest JWT-SVID TTL the server issues (`jwt.max_ttl_seconds`).
    pub max_token_ttl: Duration,
    /// Extra time a retired key stays published past its last token's `exp`
    /// (verifier clock skew: AWS allows 5 min).
    pub safety_margin: Duration,
    /// Most keys [`RotationPolicy::published`] returns.
    pub max_published_keys: usize,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            key_lifetime: Duration::from_secs(7 * 24 * 3600),
            publish_lead: Duration::from_secs(24 * 3600),
            max_token_ttl: Duration::from_secs(48 * 3600),
            safety_margin: Duration::from_secs(3600),
            max_published_keys: 10,
        }
    }
}

/// A rotation policy that cannot keep its promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("key_lifetime ({lifetime}s) must be longer than publish_lead ({lead}s)")]
    LeadNotShorterThanLifetime { lifetime: u64, lead: u64 },
    #[error(
        "max_published_keys is {given}, but this policy needs at least {needed} \
         (keys are published for up to key_lifetime + publish_lead + max_token_ttl + safety_margin)"
    )]
    TooFewPublishedKeys { given: usize, needed: usize },
    #[error("max_published_keys is {0}; clouds use at most {CLOUD_JWKS_LIMIT} keys of a JWKS")]
    TooManyPublishedKeys(usize),
}

/// A key to generate now, with its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewKey {
    /// The configured type at the time of the decision.
    pub key_type: KeyType,
    pub activate_at: i64,
    pub retire_at: i64,
    pub remove_at: i64,
}

impl NewKey {
    /// The record of `key`, generated for this plan at `created_at`.
    pub fn record(&self, key: &JwtSigningKey, created_at: i64) -> KeyRecord {
        KeyRecord {
            kid: key.kid().to_owned(),
            key_type: key.key_type(),
            public_jwk: key.jwk().clone(),
            created_at,
            activate_at: self.activate_at,
            retire_at: self.retire_at,
            remove_at: self.remove_at,
        }
    }
}

/// The record that signs at `now`: the newest whose `activate_at <= now < retire_at`.
/// `None` when no key may sign (no keys yet, or all retired).
pub fn signing_record(records: &[KeyRecord], now: i64) -> Option<&KeyRecord> {
    records
        .iter()
        .filter(|r| r.activate_at <= now && now < r.retire_at)
        .min_by(KeyRecord::newest_first)
}

/// Records whose every token has expired (`remove_at <= now`): their record and
/// key file can be deleted.
pub fn expired(records: &[KeyRecord], now: i64) -> Vec<&KeyRecord> {
    records.iter().filter(|r| r.remove_at <= now).collect()
}

impl RotationPolicy {
    /// The default policy for a server whose longest JWT-SVID TTL is `max_token_ttl`.
    pub fn with_max_token_ttl(max_token_ttl: Duration) -> Self {
        Self {
            max_token_ttl,
            ..Self::default()
        }
    }

    /// Checks that the policy can keep its promises, naming what is wrong.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let (lifetime, lead) = (self.key_lifetime.as_secs(), self.publish_lead.as_secs());
        if lifetime <= lead {
            return Err(PolicyError::LeadNotShorterThanLifetime { lifetime, lead });
        }
        let needed = self.needed_published_keys();
        if self.max_published_keys < needed {
            return Err(PolicyError::TooFewPublishedKeys {
                given: self.max_published_keys,
                needed,
            });
        }
        if self.max_published_keys > CLOUD_JWKS_LIMIT {
            return Err(PolicyError::TooManyPublishedKeys(self.max_published_keys));
        }
        Ok(())
    }

    /// The most keys one server publishes at once under this policy: the next,
    /// the active, the retired ones whose tokens may still be valid, and one
    /// more for an off-schedule key (downtime recovery or a key type change).
    pub fn needed_published_keys(&self) -> usize {
        let retention = self.retention_secs().unsigned_abs();
        let lifetime = self.key_lifetime.as_secs().max(1);
        let retired = usize::try_from(retention.div_ceil(lifetime)).unwrap_or(usize::MAX);
        retired.saturating_add(3)
    }

    /// Whether a key must be generated at `now` given this server's `records`
    /// and the configured `key_type`, and its schedule:
    /// - no key can sign now (bootstrap, or the server was down past the last
    ///   key's `retire_at`): a key active at once;
    /// - none is waiting to activate and the signing one retires within
    ///   `publish_lead`: the successor, activating when it retires;
    /// - none is waiting and the signing one is not of `key_type` (the config
    ///   changed): a key of the new type activating `publish_lead` from now.
    ///
    /// Otherwise `None`; in particular once the returned key is recorded,
    /// asking again at the same instant returns `None`.
    pub fn next_key(&self, records: &[KeyRecord], now: i64, key_type: KeyType) -> Option<NewKey> {
        let lead = secs(self.publish_lead);
        let Some(active) = signing_record(records, now) else {
            return Some(self.new_key(key_type, now));
        };
        if records.iter().any(|r| r.activate_at > now) {
            return None;
        }
        if active.retire_at.saturating_sub(now) <= lead {
            return Some(self.new_key(key_type, active.retire_at));
        }
        if active.key_type != key_type {
            // Signs before `active` retires: the newest active key wins.
            return Some(self.new_key(key_type, now.saturating_add(lead)));
        }
        None
    }

    /// The records to publish at `now`: all not yet removed, newest first,
    /// at most `max_published_keys`.
    pub fn published<'a>(&self, records: &'a [KeyRecord], now: i64) -> Vec<&'a KeyRecord> {
        let mut published: Vec<&KeyRecord> = records.iter().filter(|r| r.remove_at > now).collect();
        published.sort_by(KeyRecord::newest_first);
        published.truncate(self.max_published_keys);
        published
    }

    fn new_key(&self, key_type: KeyType, activate_at: i64) -> NewKey {
        let retire_at = activate_at.saturating_add(secs(self.key_lifetime));
        NewKey {
            key_type,
            activate_at,
            retire_at,
            remove_at: retire_at.saturating_add(self.retention_secs()),
        }
    }

    /// A key that may still sign must stay published until the longest token
    /// this policy allows has expired; `remove_at` was computed under the
    /// policy of its creation, so a raised `max_token_ttl` extends it (never
    /// shortens it: tokens signed under the old policy keep their due).
    /// Returns whether `record` changed.
    pub fn extend_retention(&self, record: &mut KeyRecord, now: i64) -> bool {
        let due = record.retire_at.saturating_add(self.retention_secs());
        if now < record.retire_at && record.remove_at < due {
            record.remove_at = due;
            return true;
        }
        false
    }

    /// How long a retired key stays published.
    fn retention_secs(&self) -> i64 {
        secs(self.max_token_ttl).saturating_add(secs(self.safety_margin))
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const HOUR: i64 = 3600;
    const DAY: i64 = 24 * HOUR;
    /// An arbitrary start: 2026-11-01T00:00:00Z.
    const T0: i64 = 1_793_491_200;

    fn policy() -> RotationPolicy {
        RotationPolicy::default()
    }

    fn jwk(kid: &str) -> Jwk {
        Jwk {
            kty: "EC".into(),
            kid: kid.into(),
            alg: "ES256".into(),
            key_use: "sig".into(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
        }
    }

    /// A fake "server": its records, plus what happened, driven by a clock we set.
    #[derive(Default)]
    struct Sim {
        records: Vec<KeyRecord>,
        generated: usize,
        deleted: Vec<String>,
    }

    impl Sim {
        /// What the server does on each tick: generate what the schedule asks
        /// for, then delete what expired. Returns how many keys it generated.
        fn tick(&mut self, policy: &RotationPolicy, now: i64, key_type: KeyType) -> usize {
            let mut made = 0;
            while let Some(new) = policy.next_key(&self.records, now, key_type) {
                made += 1;
                assert!(made <= 1, "a second key at the same instant");
                self.generated += 1;
                let kid = format!("k{:03}", self.generated);
                self.records.push(KeyRecord {
                    kid: kid.clone(),
                    key_type: new.key_type,
                    public_jwk: jwk(&kid),
                    created_at: now,
                    activate_at: new.activate_at,
                    retire_at: new.retire_at,
                    remove_at: new.remove_at,
                });
            }
            let gone: Vec<String> = expired(&self.records, now)
                .into_iter()
                .map(|r| r.kid.clone())
                .collect();
            self.records.retain(|r| !gone.contains(&r.kid));
            self.deleted.extend(gone);
            made
        }

        fn signer(&self, now: i64) -> Option<&KeyRecord> {
            signing_record(&self.records, now)
        }

        fn published_kids(&self, policy: &RotationPolicy, now: i64) -> Vec<String> {
            policy
                .published(&self.records, now)
                .into_iter()
                .map(|r| r.kid.clone())
                .collect()
        }
    }

    #[test]
    fn default_policy_is_valid() {
        assert_eq!(policy().validate(), Ok(()));
        assert_eq!(policy().needed_published_keys(), 4);
    }

    #[test]
    fn bootstrap_makes_a_key_active_at_once() {
        let p = policy();
        assert!(signing_record(&[], T0).is_none());
        let new = p.next_key(&[], T0, KeyType::EcP256);
        assert_eq!(
            new,
            Some(NewKey {
                key_type: KeyType::EcP256,
                activate_at: T0,
                retire_at: T0 + 7 * DAY,
                remove_at: T0 + 7 * DAY + 48 * HOUR + HOUR,
            })
        );
        let mut sim = Sim::default();
        assert_eq!(sim.tick(&p, T0, KeyType::EcP256), 1);
        assert_eq!(sim.signer(T0).map(|r| r.kid.as_str()), Some("k001"));
        assert_eq!(sim.published_kids(&p, T0), ["k001"]);
    }

    #[test]
    fn deciding_twice_or_after_a_restart_adds_nothing() {
        let p = policy();
        let mut sim = Sim::default();
        for now in [
            T0,
            T0 + 6 * DAY,
            T0 + 6 * DAY + HOUR,
            T0 + 7 * DAY,
            T0 + 20 * DAY,
        ] {
            sim.tick(&p, now, KeyType::EcP256);
            // A restart: only the persisted records and the time are left.
            let restarted = sim.records.clone();
            assert_eq!(
                p.next_key(&restarted, now, KeyType::EcP256),
                None,
                "at {now}"
            );
            assert_eq!(sim.tick(&p, now, KeyType::EcP256), 0);
        }
    }

    #[test]
    fn next_key_is_published_publish_lead_before_it_signs() {
        let p = policy();
        let mut sim = Sim::default();
        sim.tick(&p, T0, KeyType::EcP256);
        // Not yet: the active key has more than publish_lead left.
        let due = T0 + 6 * DAY;
        assert_eq!(sim.tick(&p, due - 1, KeyType::EcP256), 0);
        assert_eq!(sim.tick(&p, due, KeyType::EcP256), 1);
        let next = sim.records.iter().find(|r| r.kid == "k002").cloned();
        let next = next.expect("k002 generated");
        assert_eq!(next.activate_at, T0 + 7 * DAY);
        assert!(next.activate_at - next.created_at >= 24 * HOUR);
        assert_eq!(sim.published_kids(&p, due), ["k002", "k001"]);
        // The old key keeps signing until its retire_at, then the new one takes over.
        assert_eq!(
            sim.signer(T0 + 7 * DAY - 1).map(|r| r.kid.as_str()),
            Some("k001")
        );
        assert_eq!(
            sim.signer(T0 + 7 * DAY).map(|r| r.kid.as_str()),
            Some("k002")
        );
    }

    #[test]
    fn retired_key_stays_published_until_its_last_token_expires() {
        let p = policy();
        let ttl = 48 * HOUR;
        let mut sim = Sim::default();
        sim.tick(&p, T0, KeyType::EcP256);
        sim.tick(&p, T0 + 6 * DAY, KeyType::EcP256);
        let first = sim.records[0].clone();
        assert!(first.remove_at >= first.retire_at + ttl);
        // The last token k001 signs, one second before retiring, lives until:
        let last_exp = first.retire_at - 1 + ttl;
        for now in [first.retire_at, last_exp, first.remove_at - 1] {
            sim.tick(&p, now, KeyType::EcP256);
            assert!(sim.published_kids(&p, now).contains(&first.kid), "at {now}");
        }
        sim.tick(&p, first.remove_at, KeyType::EcP256);
        assert!(!sim.published_kids(&p, first.remove_at).contains(&first.kid));
        assert_eq!(sim.deleted, [first.kid]);
    }

    /// A year of hourly ticks: always a signer, every key published at least
    /// publish_lead before it signs and until every token it signed expired,
    /// the JWKS within its bound, and about one key a week.
    #[test]
    fn a_year_of_hourly_ticks_keeps_every_promise() {
        let p = RotationPolicy::with_max_token_ttl(Duration::from_secs(12 * 3600));
        assert_eq!(p.validate(), Ok(()));
        let (lead, ttl) = (24 * HOUR, 12 * HOUR);
        let mut sim = Sim::default();
        let mut first_published: HashMap<String, i64> = HashMap::new();
        let mut last_signed: HashMap<String, i64> = HashMap::new();
        let mut most_published = 0;
        for hour in 0..365 * 24 {
            let now = T0 + hour * HOUR;
            sim.tick(&p, now, KeyType::EcP256);
            let published = sim.published_kids(&p, now);
            most_published = most_published.max(published.len());
            assert!(published.len() <= p.max_published_keys);
            for kid in &published {
                first_published.entry(kid.clone()).or_insert(now);
            }
            let signer = sim
                .signer(now)
                .expect("a key signs at every tick")
                .kid
                .clone();
            if !last_signed.contains_key(&signer) && signer != "k001" {
                assert!(
                    now - first_published[&signer] >= lead,
                    "{signer} signs {}s after being published",
                    now - first_published[&signer]
                );
            }
            last_signed.insert(signer, now);
            for (kid, signed) in &last_signed {
                if now < signed + ttl {
                    assert!(published.contains(kid), "{kid} unpublished at {now}");
                }
            }
        }
        assert!((53..=54).contains(&sim.generated), "{}", sim.generated);
        assert!(
            most_published <= p.needed_published_keys(),
            "{most_published}"
        );
        assert!(sim.records.len() <= p.needed_published_keys());
    }

    #[test]
    fn after_a_long_downtime_a_key_signs_at_once() {
        let p = policy();
        let mut sim = Sim::default();
        sim.tick(&p, T0, KeyType::EcP256);
        sim.tick(&p, T0 + 6 * DAY, KeyType::EcP256);
        // Down for a month: both keys are past retire_at.
        let back = T0 + 40 * DAY;
        assert!(sim.signer(back).is_none());
        let new = p.next_key(&sim.records, back, KeyType::EcP256);
        assert_eq!(new.map(|n| n.activate_at), Some(back));
        assert_eq!(sim.tick(&p, back, KeyType::EcP256), 1);
        assert_eq!(sim.signer(back).map(|r| r.kid.as_str()), Some("k003"));
        assert_eq!(sim.deleted, ["k001", "k002"]);
        // Normal rotation resumes from there.
        assert_eq!(sim.tick(&p, back + 6 * DAY, KeyType::EcP256), 1);
        assert_eq!(
            sim.signer(back + 7 * DAY).map(|r| r.kid.as_str()),
            Some("k004")
        );
    }

    #[test]
    fn down_past_retire_but_within_the_successor_needs_nothing_new() {
        let p = policy();
        let mut sim = Sim::default();
        sim.tick(&p, T0, KeyType::EcP256);
        sim.tick(&p, T0 + 6 * DAY, KeyType::EcP256);
        // Back 3 days into k002's lifetime: it signs, k003 is not due yet.
        let back = T0 + 10 * DAY;
        assert_eq!(p.next_key(&sim.records, back, KeyType::EcP256), None);
        assert_eq!(sim.signer(back).map(|r| r.kid.as_str()), Some("k002"));
    }

    #[test]
    fn a_clock_that_went_back_still_gets_a_signer() {
        let p = policy();
        let mut sim = Sim::default();
        sim.tick(&p, T0, KeyType::EcP256);
        let earlier = T0 - DAY;
        assert!(sim.signer(earlier).is_none());
        assert_eq!(sim.tick(&p, earlier, KeyType::EcP256), 1);
        assert_eq!(sim.signer(earlier).map(|r| r.kid.as_str()), Some("k002"));
        assert_eq!(sim.tick(&p, earlier, KeyType::EcP256), 0);
    }

    #[test]
    fn a_key_type_change_switches_after_publish_lead() {
        let p = policy();
        let mut sim = Sim::default();
        sim.tick(&p, T0, KeyType::EcP256);
        // The operator switches to RSA on day 2 (k001 has 5 days left).
        let change = T0 + 2 * DAY;
        assert_eq!(sim.tick(&p, change, KeyType::Rsa2048), 1);
        let rsa = sim.records[1].clone();
        assert_eq!(rsa.key_type, KeyType::Rsa2048);
        assert_eq!(rsa.activate_at, change + 24 * HOUR);
        assert_eq!(sim.tick(&p, change + HOUR, KeyType::Rsa2048), 0);
        assert_eq!(
            sim.signer(rsa.activate_at - 1).map(|r| r.kid.as_str()),
            Some("k001")
        );
        assert_eq!(
            sim.signer(rsa.activate_at).map(|r| r.kid.as_str()),
            Some("k002")
        );
        // k001 stopped signing early and stays published at least as long as needed.
        assert!(
            sim.published_kids(&p, rsa.activate_at + 48 * HOUR)
                .contains(&"k001".into())
        );
        // Rotation continues in RSA.
        for hour in 0..30 * 24 {
            sim.tick(&p, change + hour * HOUR, KeyType::Rsa2048);
        }
        assert!(
            sim.records[1..]
                .iter()
                .all(|r| r.key_type == KeyType::Rsa2048),
            "{:?}",
            sim.records
        );
        assert!(sim.records.iter().all(|r| r.key_type == KeyType::Rsa2048));
    }

    #[test]
    fn a_key_type_change_waits_for_an_already_published_successor() {
        let p = policy();
        let mut sim = Sim::default();
        sim.tick(&p, T0, KeyType::EcP256);
        sim.tick(&p, T0 + 6 * DAY, KeyType::EcP256);
        // Switched while the EC successor k002 is pending: it still gets its turn.
        let change = T0 + 6 * DAY + HOUR;
        assert_eq!(sim.tick(&p, change, KeyType::Rsa2048), 0);
        let k002_start = T0 + 7 * DAY;
        assert_eq!(sim.tick(&p, k002_start, KeyType::Rsa2048), 1);
        let rsa = sim.records.last().cloned().expect("a record");
        assert_eq!(rsa.key_type, KeyType::Rsa2048);
        assert_eq!(rsa.activate_at, k002_start + 24 * HOUR);
        assert_eq!(
            sim.signer(rsa.activate_at).map(|r| r.kid.clone()),
            Some(rsa.kid)
        );
    }

    #[test]
    fn published_is_newest_first_and_capped() {
        let p = RotationPolicy {
            max_published_keys: 3,
            ..policy()
        };
        let records: Vec<KeyRecord> = (0..6)
            .map(|i| KeyRecord {
                kid: format!("k{i}"),
                key_type: KeyType::EcP256,
                public_jwk: jwk(&format!("k{i}")),
                created_at: T0 + i * DAY,
                activate_at: T0 + i * DAY,
                retire_at: T0 + (i + 1) * DAY,
                remove_at: T0 + (i + 3) * DAY,
            })
            .collect();
        let now = T0 + 3 * DAY;
        let kids: Vec<&str> = p
            .published(&records, now)
            .iter()
            .map(|r| r.kid.as_str())
            .collect();
        // k0 is removed at T0 + 3 days; of k1..k5 the three newest remain.
        assert_eq!(kids, ["k5", "k4", "k3"]);
        let gone: Vec<&str> = expired(&records, now)
            .iter()
            .map(|r| r.kid.as_str())
            .collect();
        assert_eq!(gone, ["k0"]);
    }

    #[test]
    fn impossible_policies_are_named() {
        let short = RotationPolicy {
            key_lifetime: Duration::from_secs(3600),
            publish_lead: Duration::from_secs(3600),
            ..policy()
        };
        assert_eq!(
            short.validate().err().map(|e| e.to_string()).as_deref(),
            Some("key_lifetime (3600s) must be longer than publish_lead (3600s)")
        );
        let cramped = RotationPolicy {
            key_lifetime: Duration::from_secs(2 * 24 * 3600),
            max_published_keys: 4,
            ..policy()
        };
        // 49 h retention over 48 h keys: 2 retired + next + active + 1 spare.
        assert_eq!(
            cramped.validate(),
            Err(PolicyError::TooFewPublishedKeys {
                given: 4,
                needed: 5
            })
        );
        let huge = RotationPolicy {
            max_published_keys: 101,
            ..policy()
        };
        assert_eq!(huge.validate(), Err(PolicyError::TooManyPublishedKeys(101)));
    }
}
