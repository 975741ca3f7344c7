//! Node attestation by challenge and response: the exact bytes a node signs
//! with its host key, so that agent and server (and any independent signer,
//! such as `openssl dgst` or `ssh-keygen -Y sign`) agree on them.
//!
//! The message binds the server's fresh nonce (so an answer cannot be
//! replayed), the SHA-256 of the CSR's SubjectPublicKeyInfo (so whoever
//! relays a challenge gets no SVID for a key it holds), the method and the
//! trust domain (so a signature made for one use serves no other).

/// The methods a node can attest with, as they appear in agent IDs
/// (`spiffe://<td>/lanyard/agent/<method>/…`), selectors and the datastore.
pub const JOIN_TOKEN: &str = "join_token";
pub const X509POP: &str = "x509pop";
pub const SSHPOP: &str = "sshpop";

/// The first bytes of every signed message.
pub const CONTEXT: &[u8] = b"lanyard node attestation v1";
/// The SSHSIG namespace of an sshpop proof (`ssh-keygen -Y sign -n …`).
pub const SSHSIG_NAMESPACE: &str = "lanyard-node-attestation-v1@lanyard";

/// Length of a challenge nonce.
pub const NONCE_LEN: usize = 32;
/// The longest a challenge may stay open, in seconds.
pub const MAX_CHALLENGE_TTL_SECONDS: u32 = 60;

/// Most certificates in an x509pop chain, leaf included.
pub const MAX_X509_CHAIN_LEN: usize = 8;
/// Most bytes of an x509pop chain, all certificates together.
pub const MAX_X509_CHAIN_BYTES: usize = 64 * 1024;
/// Most bytes of an sshpop host certificate.
pub const MAX_SSH_CERTIFICATE_BYTES: usize = 16 * 1024;

/// The bytes a node signs: `CONTEXT ‖ 0 ‖ method ‖ 0 ‖ trust domain ‖ 0 ‖
/// nonce (32) ‖ SHA-256 of the CSR's SubjectPublicKeyInfo (32)`. The text
/// fields hold no NUL and the tail has a fixed length, so no two inputs
/// give the same message.
pub fn signed_message(
    method: &str,
    trust_domain: &str,
    nonce: &[u8; NONCE_LEN],
    csr_key_sha256: &[u8; 32],
) -> Vec<u8> {
    let mut message =
        Vec::with_capacity(CONTEXT.len() + method.len() + trust_domain.len() + 3 + NONCE_LEN + 32);
    message.extend_from_slice(CONTEXT);
    message.push(0);
    message.extend_from_slice(method.as_bytes());
    message.push(0);
    message.extend_from_slice(trust_domain.as_bytes());
    message.push(0);
    message.extend_from_slice(nonce);
    message.extend_from_slice(csr_key_sha256);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_its_parts_in_order() {
        let message = signed_message(X509POP, "example.org", &[7; 32], &[9; 32]);
        let mut expected = b"lanyard node attestation v1\0x509pop\0example.org\0".to_vec();
        expected.extend([7; 32]);
        expected.extend([9; 32]);
        assert_eq!(message, expected);
    }

    #[test]
    fn each_part_changes_the_message() {
        let base = signed_message(X509POP, "a.org", &[1; 32], &[2; 32]);
        assert_ne!(base, signed_message(SSHPOP, "a.org", &[1; 32], &[2; 32]));
        assert_ne!(base, signed_message(X509POP, "b.org", &[1; 32], &[2; 32]));
        assert_ne!(base, signed_message(X509POP, "a.org", &[3; 32], &[2; 32]));
        assert_ne!(base, signed_message(X509POP, "a.org", &[1; 32], &[3; 32]));
    }
}
