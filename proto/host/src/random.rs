//! Random bytes and identifiers from the operating system's CSPRNG, for
//! anything someone must not guess: entry and server IDs, token values,
//! serial numbers, `jti`s.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::encoding::hex;

/// The system's random source failed (it does not on any supported kernel,
/// but the error is the caller's to report rather than a panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no randomness available from the operating system")]
pub struct NoRandomness;

/// `N` random bytes.
pub fn bytes<const N: usize>() -> Result<[u8; N], NoRandomness> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| NoRandomness)?;
    Ok(out)
}

/// An identifier of `N` random bytes in lower-case hex (`2 × N` characters).
pub fn identifier<const N: usize>() -> Result<String, NoRandomness> {
    bytes::<N>().map(|b| hex(&b))
}

/// A number in [0, 1) for jitter, where guessing does no harm: from the
/// randomly keyed std hasher, so it never fails.
pub fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_of_the_asked_length_and_differ() -> Result<(), NoRandomness> {
        let (a, b) = (identifier::<16>()?, identifier::<16>()?);
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        Ok(())
    }

    #[test]
    fn jitter_stays_in_the_unit_interval() {
        for _ in 0..1000 {
            let f = jitter_fraction();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
