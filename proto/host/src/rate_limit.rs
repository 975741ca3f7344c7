//! Rate limits per caller (an agent, a peer address, a uid): a token bucket
//! per key, so one noisy caller spends only its own budget. The buckets are
//! GCRA cells from `governor`, one atomic word each; keys idle long enough to
//! have refilled are forgotten now and then, so the map stays as large as the
//! set of callers active at once.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;

use crate::config_file::{ConfigError, invalid};

/// How often (in checks) idle keys are forgotten.
const FORGET_IDLE_EVERY: u64 = 4096;

/// The gRPC metadata a refused caller's client may honour before retrying
/// (gRFC A6, "retry pushback"): milliseconds to wait.
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// A sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// No config may ask for more than this a second (or as a burst): above it a
/// limit is no limit, and a typo (an extra zero or three) should say so.
pub const MAX_RATE: u32 = 1_000_000;

impl RateLimit {
    pub const fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self { per_second, burst }
    }

    /// A limit written in the code (a default): zeros read as 1.
    pub const fn fixed(per_second: u32, burst: u32) -> Self {
        const fn at_least_one(n: u32) -> NonZeroU32 {
            match NonZeroU32::new(n) {
                Some(n) => n,
                None => NonZeroU32::MIN,
            }
        }
        Self::new(at_least_one(per_second), at_least_one(burst))
    }

    /// The limit a config section gives with its `<rate_key>` and
    /// `<burst_key>` (each falling back to `default`'s), checked: each at
    /// least 1 and at most [`MAX_RATE`], errors naming the key.
    pub fn from_config(
        (rate_key, per_second): (&str, Option<u32>),
        (burst_key, burst): (&str, Option<u32>),
        default: RateLimit,
    ) -> Result<Self, ConfigError> {
        let checked = |key: &str, value: Option<u32>, default: NonZeroU32| match value {
            None => Ok(default),
            Some(n) if n > MAX_RATE => Err(invalid(key, format!("{n} is above {MAX_RATE}"))),
            Some(n) => NonZeroU32::new(n).ok_or_else(|| invalid(key, "must be at least 1")),
        };
        Ok(Self {
            per_second: checked(rate_key, per_second, default.per_second)?,
            burst: checked(burst_key, burst, default.burst)?,
        })
    }
}

/// One token bucket per key.
#[derive(Debug)]
pub struct KeyedRateLimit<K: Hash + Eq + Clone> {
    limit: RateLimit,
    buckets: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedRateLimit<K> {
    pub fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Self {
            limit,
            buckets: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one token from `key`'s bucket, or says how long until one is there.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_IDLE_EVERY == FORGET_IDLE_EVERY - 1
        {
            self.buckets.retain_recent();
        }
        self.buckets
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Keys with a bucket now (idle ones are dropped from time to time).
    pub fn tracked_keys(&self) -> usize {
        self.buckets.len()
    }
}

/// The answer to a caller over `limit`: `ResourceExhausted`, naming the limit,
/// with the wait in the message and in [`RETRY_PUSHBACK_HEADER`].
pub fn exhausted(limit: &str, wait: Duration) -> tonic::Status {
    // At least 1 ms: a zero would read as "retry at once".
    let millis = wait.as_millis().clamp(1, u128::from(u32::MAX));
    let mut status = tonic::Status::resource_exhausted(format!(
        "rate limit {limit} reached; retry in {millis} ms"
    ));
    if let Ok(value) = millis.to_string().parse() {
        status.metadata_mut().insert(RETRY_PUSHBACK_HEADER, value);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: u32, burst: u32) -> RateLimit {
        match (NonZeroU32::new(per_second), NonZeroU32::new(burst)) {
            (Some(per_second), Some(burst)) => RateLimit::new(per_second, burst),
            _ => panic!("test limits are non-zero"),
        }
    }

    #[test]
    fn each_key_spends_its_own_burst() {
        // 1/s: nothing refills within the test.
        let limits = KeyedRateLimit::new(limit(1, 3));
        for _ in 0..3 {
            assert!(limits.check(&"noisy").is_ok());
        }
        let wait = limits.check(&"noisy").err();
        assert!(wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(1)));
        // Another key is untouched by the first one's flood.
        assert!(limits.check(&"quiet").is_ok());
        assert_eq!(limits.tracked_keys(), 2);
    }

    #[test]
    fn config_values_are_checked_and_named() {
        let default = limit(10, 20);
        let read = |rate, burst| RateLimit::from_config(("r", rate), ("b", burst), default);
        assert_eq!(read(None, None).ok(), Some(default));
        assert_eq!(read(Some(5), None).ok(), Some(limit(5, 20)));
        let error = |rate, burst| read(rate, burst).err().map(|e| e.to_string());
        assert!(
            error(Some(0), None).is_some_and(|e| e.contains("`r`") && e.contains("at least 1"))
        );
        assert!(error(None, Some(MAX_RATE + 1)).is_some_and(|e| e.contains("`b`")));
    }

    #[test]
    fn the_refusal_carries_the_wait() {
        let status = exhausted("mints per agent", Duration::from_millis(250));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("mints per agent"));
        assert_eq!(
            status
                .metadata()
                .get(RETRY_PUSHBACK_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("250")
        );
    }
}
