//! The physical limits of the signing path, on one core: raw ES256 signatures
//! and verifications with aws-lc-rs (the key parsed once), and, for the record
//! of the signing-path choice, the `p256` crate and `jsonwebtoken::encode`.

use std::time::Duration;

use anyhow::Context;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    ParsedPublicKey,
};

use crate::stats::single_thread_rate;

/// What a JWT-SVID's signing input looks like: header.claims, about 330 bytes.
fn signing_input() -> Vec<u8> {
    let header = "eyJhbGciOiJFUzI1NiIsImtpZCI6IjBiZ2dJY1hKZFBSR1NfdlA0bWZ5dEJfWFl3b2xqV0RuSnFMX0lPbVBnN0UiLCJ0eXAiOiJKV1QifQ";
    let claims = "eyJpc3MiOiJodHRwczovLzEyNy4wLjAuMTo0MTIzNSIsInN1YiI6InNwaWZmZTovL2V4YW1wbGUub3JnL2JlbmNoL3dvcmtsb2FkIiwiYXVkIjpbImJlbmNoLWF1ZGllbmNlIl0sImV4cCI6MTc5MDAwMDMwMCwiaWF0IjoxNzkwMDAwMDAwLCJqdGkiOiJxMlZ4V1BfdUxrN3N3X1BWUXhqZ1NnIn0";
    format!("{header}.{claims}").into_bytes()
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub aws_lc_sign: f64,
    pub aws_lc_verify: f64,
}

/// aws-lc-rs ES256 signatures and verifications per second on this thread.
pub(crate) fn aws_lc_limits(warmup: Duration, window: Duration) -> anyhow::Result<Limits> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|e| anyhow::anyhow!("parsing the P-256 key: {e}"))?;
    let message = signing_input();
    let aws_lc_sign = single_thread_rate(warmup, window, || {
        key.sign(&rng, &message)
            .map(drop)
            .map_err(|_| anyhow::anyhow!("signing"))
    })?;
    let signature = key
        .sign(&rng, &message)
        .map_err(|_| anyhow::anyhow!("signing"))?;
    let public = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref())
        .map_err(|e| anyhow::anyhow!("parsing the public key: {e}"))?;
    let aws_lc_verify = single_thread_rate(warmup, window, || {
        public
            .verify_sig(&message, signature.as_ref())
            .map_err(|_| anyhow::anyhow!("verification failed"))
    })?;
    Ok(Limits {
        aws_lc_sign,
        aws_lc_verify,
    })
}

/// The other two signing paths the issue names, one core each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Alternatives {
    pub p256_sign: f64,
    pub jsonwebtoken_encode: f64,
}

pub(crate) fn alternatives(warmup: Duration, window: Duration) -> anyhow::Result<Alternatives> {
    use p256::ecdsa::signature::Signer;
    let message = signing_input();
    let p256_key = p256::ecdsa::SigningKey::from_slice(&[0x4c; 32])
        .map_err(|e| anyhow::anyhow!("p256 key: {e}"))?;
    let p256_sign = single_thread_rate(warmup, window, || {
        let signature: p256::ecdsa::Signature = p256_key.sign(&message);
        std::hint::black_box(signature);
        Ok(())
    })?;

    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?;
    let key = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    let claims = serde_json::json!({
        "iss": "https://127.0.0.1:41235",
        "sub": "spiffe://example.org/bench/workload",
        "aud": ["bench-audience"],
        "exp": 1_790_000_300,
        "iat": 1_790_000_000,
        "jti": "q2VxWP_uLk7sw_PVQxjgSg",
    });
    let jsonwebtoken_encode = single_thread_rate(warmup, window, || {
        jsonwebtoken::encode(&header, &claims, &key)
            .map(drop)
            .context("jsonwebtoken::encode")
    })?;
    Ok(Alternatives {
        p256_sign,
        jsonwebtoken_encode,
    })
}
