//! Jittered exponential backoff, shared by the loops that retry the server
//! (entry sync, re-attestation), so that many agents do not hit a returning
//! server in step.

use std::time::Duration;

/// Exponential backoff from `min` up to `max`, each delay drawn uniformly
/// from the upper half of its ceiling.
#[derive(Debug)]
pub(crate) struct Backoff {
    current: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let min = min.min(max);
        Self {
            current: min,
            min,
            max,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }

    pub(crate) fn next(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(lanyard_host::random::jitter_fraction())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_up_to_the_max() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(5));
        let mut backoff = Backoff::new(min, max);
        let mut ceiling = min;
        for _ in 0..10 {
            let delay = backoff.next();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(max);
        }
        backoff.reset();
        assert!(backoff.next() <= min);
    }

    #[test]
    fn a_min_above_the_max_is_the_max() {
        let mut backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert!(backoff.next() <= Duration::from_secs(1));
    }
}
