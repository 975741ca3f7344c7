//! The JWT signing key: ES256 (ECDSA P-256), generated on first start and kept
//! as PKCS#8 PEM in `<data_dir>/keys/` with mode 0600. It is parsed once, at
//! load; signing never re-parses it.

use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use lanyard_proto::jwks::KEY_USE_SIGNATURE;
use lanyard_proto::{Jwk, JwtHeader, JwtSvidClaims};

use crate::fsutil::{self, FsError};

const KEY_FILE: &str = "jwt-es256.pem";
const PEM_LABEL: &str = "PRIVATE KEY";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    File(#[from] FsError),
    #[error("key file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("key generation failed")]
    Generate,
    #[error("signing failed")]
    Sign,
    #[error("encoding JWT claims: {0}")]
    Encode(#[from] serde_json::Error),
}

pub struct JwtSigningKey {
    key_pair: EcdsaKeyPair,
    jwk: Jwk,
    /// base64url of the JOSE header, fixed per key.
    encoded_header: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for JwtSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigningKey")
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

impl JwtSigningKey {
    pub const ALG: &'static str = "ES256";

    /// Loads the key from `keys_dir`, generating and persisting it on first start.
    pub fn load_or_generate(keys_dir: &Path) -> Result<Self, KeyError> {
        fsutil::ensure_private_dir(keys_dir)?;
        let path = keys_dir.join(KEY_FILE);
        if let Some(pem) = fsutil::read_private_file(&path)? {
            let der = decode_pem(&pem).ok_or_else(|| KeyError::Invalid {
                path: path.clone(),
                message: format!("not a PEM \"{PEM_LABEL}\" block"),
            })?;
            return Self::from_pkcs8(&der).map_err(|message| KeyError::Invalid { path, message });
        }
        let document =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| KeyError::Generate)?;
        fsutil::write_private_file(&path, encode_pem(document.as_ref()).as_bytes())?;
        tracing::info!(path = %path.display(), "generated a new JWT signing key");
        Self::from_pkcs8(document.as_ref()).map_err(|message| KeyError::Invalid { path, message })
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| format!("not a PKCS#8 P-256 key ({e})"))?;
        let jwk = public_jwk(key_pair.public_key().as_ref())?;
        let header = JwtHeader {
            alg: Self::ALG.to_owned(),
            kid: jwk.kid.clone(),
            typ: "JWT".to_owned(),
        };
        let header_json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
        Ok(Self {
            key_pair,
            jwk,
            encoded_header: URL_SAFE_NO_PAD.encode(header_json),
            rng: SystemRandom::new(),
        })
    }

    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    /// The public half, as published in the JWKS.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs `claims` as a compact JWS.
    pub fn sign(&self, claims: &JwtSvidClaims) -> Result<String, KeyError> {
        let payload = serde_json::to_vec(claims)?;
        let mut token =
            String::with_capacity(self.encoded_header.len() + payload.len() * 4 / 3 + 90);
        token.push_str(&self.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self
            .key_pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| KeyError::Sign)?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

/// The JWK of an uncompressed P-256 point, with the RFC 7638 thumbprint as `kid`.
fn public_jwk(point: &[u8]) -> Result<Jwk, String> {
    let coordinates = match point {
        [0x04, rest @ ..] if rest.len() == 64 => rest,
        _ => return Err("public key is not an uncompressed P-256 point".into()),
    };
    let (x, y) = coordinates.split_at(32);
    let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
    // RFC 7638: members in lexicographic order, no whitespace.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()));
    Ok(Jwk {
        kty: "EC".into(),
        kid,
        alg: JwtSigningKey::ALG.into(),
        key_use: KEY_USE_SIGNATURE.into(),
        crv: Some("P-256".into()),
        x: Some(x),
        y: Some(y),
        n: None,
        e: None,
    })
}

fn encode_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {PEM_LABEL}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    pem
}

fn decode_pem(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let body = text
        .trim()
        .strip_prefix(&format!("-----BEGIN {PEM_LABEL}-----"))?
        .strip_suffix(&format!("-----END {PEM_LABEL}-----"))?;
    let joined: String = body.split_whitespace().collect();
    STANDARD.decode(joined).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    use std::os::unix::fs::MetadataExt;

    fn claims() -> JwtSvidClaims {
        JwtSvidClaims {
            iss: "https://issuer".into(),
            sub: "spiffe://td/w".into(),
            aud: vec!["a".into()],
            exp: 2,
            iat: 1,
            jti: None,
        }
    }

    #[test]
    fn key_persists_with_mode_0600_and_is_reused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = JwtSigningKey::load_or_generate(dir.path())?;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))?.mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = JwtSigningKey::load_or_generate(dir.path())?;
        assert_eq!(first.kid(), second.kid());
        Ok(())
    }

    #[test]
    fn signature_verifies_against_the_published_point() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let key = JwtSigningKey::load_or_generate(dir.path())?;
        let token = key.sign(&claims())?;
        let (signed, signature) = token.rsplit_once('.').ok_or("no signature")?;
        let jwk = key.jwk();
        let mut point = vec![0x04];
        point.extend(URL_SAFE_NO_PAD.decode(jwk.x.as_deref().ok_or("x")?)?);
        point.extend(URL_SAFE_NO_PAD.decode(jwk.y.as_deref().ok_or("y")?)?);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(signature)?)
            .map_err(|_| "signature does not verify")?;
        Ok(())
    }

    #[test]
    fn corrupt_key_file_is_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        fsutil::write_private_file(&dir.path().join(KEY_FILE), b"garbage")?;
        let err = JwtSigningKey::load_or_generate(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(KEY_FILE) && err.contains("PEM"), "{err}");
        Ok(())
    }
}
