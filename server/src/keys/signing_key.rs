//! A JWT signing key: ES256 (ECDSA P-256) or RS256 (RSA 2048), kept as PKCS#8.
//! It is parsed once, when loaded or generated, and the JOSE header is encoded
//! then too; signing never re-parses anything.

use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::error::KeyRejected;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_proto::jwks::KEY_USE_SIGNATURE;
use lanyard_proto::{Jwk, JwtHeader, JwtSvidClaims};

use super::KeyType;
use lanyard_host::pem;
use lanyard_host::private_files::{self, FsError};

/// The single-key file of [`JwtSigningKey::load_or_generate`].
pub(super) const LEGACY_KEY_FILE: &str = "jwt-es256.pem";
pub(super) const PEM_LABEL: &str = "PRIVATE KEY";

/// Why a key could not be generated, stored, loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error(transparent)]
    File(#[from] FsError),
    #[error("key file {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: KeyParseError,
    },
    #[error("no key file for kid {kid:?} in {dir}")]
    NotFound { kid: String, dir: PathBuf },
    #[error("{0:?} is not a key id (expected 1 to 128 base64url characters)")]
    BadKid(String),
    #[error("{key_type} key generation failed")]
    Generate { key_type: KeyType },
    #[error("signing failed")]
    Sign,
    #[error("encoding JWT claims: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Why bytes are not a JWT signing key Lanyard can use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyParseError {
    #[error("not a PEM \"{PEM_LABEL}\" block")]
    NotPem,
    #[error("not a PKCS#8 P-256 key ({ec}) nor a PKCS#8 RSA key ({rsa})")]
    Unrecognised { ec: KeyRejected, rsa: KeyRejected },
    #[error("RSA key has {0} bits, not 2048")]
    RsaSize(usize),
    #[error("public key is not an uncompressed P-256 point")]
    NotUncompressedPoint,
    #[error("JWT header: {0}")]
    Header(#[source] serde_json::Error),
    #[error("holds the key {found}, not {expected}")]
    OtherKid { found: String, expected: String },
}

enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A private JWT signing key with its public JWK, `kid` (the RFC 7638
/// thumbprint) and pre-encoded JOSE header.
pub struct JwtSigningKey {
    signer: Signer,
    key_type: KeyType,
    jwk: Jwk,
    /// base64url of the JOSE header, fixed per key.
    encoded_header: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for JwtSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigningKey")
            .field("kid", &self.jwk.kid)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl JwtSigningKey {
    /// `alg` of the keys made by [`Self::load_or_generate`].
    pub const ALG: &'static str = "ES256";

    /// Loads the single ES256 key `<keys_dir>/jwt-es256.pem`, generating and
    /// persisting it on first start. (Rotated keys live in a [`super::KeyDir`].)
    pub fn load_or_generate(keys_dir: &Path) -> Result<Self, KeyError> {
        private_files::ensure_private_dir(keys_dir)?;
        let path = keys_dir.join(LEGACY_KEY_FILE);
        if let Some(pem) = private_files::read_private_file(&path)? {
            return Self::from_pem(&pem).map_err(|source| KeyError::Invalid { path, source });
        }
        let (key, pkcs8) = Self::generate(KeyType::EcP256)?;
        private_files::write_private_file(&path, pem::encode(PEM_LABEL, &pkcs8).as_bytes())?;
        tracing::info!(path = %path.display(), "generated a new JWT signing key");
        Ok(key)
    }

    /// Generates a new key; returns it with its PKCS#8 DER (to be persisted).
    pub fn generate(key_type: KeyType) -> Result<(Self, Vec<u8>), KeyError> {
        let failed = |_| KeyError::Generate { key_type };
        let pkcs8 = match key_type {
            KeyType::EcP256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                    .map_err(failed)?
                    .as_ref()
                    .to_vec()
            }
            KeyType::Rsa2048 => RsaKeyPair::generate(KeySize::Rsa2048)
                .map_err(failed)?
                .as_der()
                .map_err(failed)?
                .as_ref()
                .to_vec(),
        };
        let key = Self::from_pkcs8(&pkcs8).map_err(|_| KeyError::Generate { key_type })?;
        Ok((key, pkcs8))
    }

    /// Parses a PEM "PRIVATE KEY" (PKCS#8) block holding a P-256 or RSA key.
    pub(super) fn from_pem(pem: &[u8]) -> Result<Self, KeyParseError> {
        let der = rustls_pemfile::pkcs8_private_keys(&mut &pem[..])
            .next()
            .and_then(Result::ok)
            .ok_or(KeyParseError::NotPem)?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    /// Parses PKCS#8 DER holding a P-256 key or an RSA key of 2048 bits.
    pub(super) fn from_pkcs8(der: &[u8]) -> Result<Self, KeyParseError> {
        let (signer, key_type, jwk) =
            match EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
                Ok(key_pair) => {
                    let jwk = ec_public_jwk(key_pair.public_key().as_ref())?;
                    (Signer::Ec(key_pair), KeyType::EcP256, jwk)
                }
                Err(ec_err) => {
                    let key_pair = RsaKeyPair::from_pkcs8(der)
                        .map_err(|rsa| KeyParseError::Unrecognised { ec: ec_err, rsa })?;
                    let bits = key_pair.public_modulus_len() * 8;
                    if bits != 2048 {
                        return Err(KeyParseError::RsaSize(bits));
                    }
                    let public = key_pair.public_key();
                    let jwk = rsa_public_jwk(
                        public.modulus().big_endian_without_leading_zero(),
                        public.exponent().big_endian_without_leading_zero(),
                    );
                    (Signer::Rsa(key_pair), KeyType::Rsa2048, jwk)
                }
            };
        let header = JwtHeader {
            alg: key_type.alg().to_owned(),
            kid: jwk.kid.clone(),
            typ: "JWT".to_owned(),
        };
        let header_json = serde_json::to_vec(&header).map_err(KeyParseError::Header)?;
        Ok(Self {
            signer,
            key_type,
            jwk,
            encoded_header: URL_SAFE_NO_PAD.encode(header_json),
            rng: SystemRandom::new(),
        })
    }

    /// The RFC 7638 JWK thumbprint (base64url SHA-256), the JOSE `kid`.
    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    /// Which kind of key this is.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The JWS `alg` of its signatures: `ES256` or `RS256`.
    pub fn alg(&self) -> &'static str {
        self.key_type.alg()
    }

    /// The public half, as published in the JWKS.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs `claims` as a compact JWS (header `alg`, `kid`, `typ: JWT`).
    pub fn sign(&self, claims: &JwtSvidClaims) -> Result<String, KeyError> {
        let payload = serde_json::to_vec(claims)?;
        let mut token =
            String::with_capacity(self.encoded_header.len() + payload.len() * 4 / 3 + 350);
        token.push_str(&self.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        match &self.signer {
            Signer::Ec(key_pair) => {
                let signature = key_pair
                    .sign(&self.rng, token.as_bytes())
                    .map_err(|_| KeyError::Sign)?;
                token.push('.');
                URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
            }
            Signer::Rsa(key_pair) => {
                let mut signature = vec![0; key_pair.public_modulus_len()];
                key_pair
                    .sign(
                        &RSA_PKCS1_SHA256,
                        &self.rng,
                        token.as_bytes(),
                        &mut signature,
                    )
                    .map_err(|_| KeyError::Sign)?;
                token.push('.');
                URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
            }
        }
        Ok(token)
    }
}

/// The JWK of an uncompressed P-256 point, with the RFC 7638 thumbprint as `kid`.
fn ec_public_jwk(point: &[u8]) -> Result<Jwk, KeyParseError> {
    let coordinates = match point {
        [0x04, rest @ ..] if rest.len() == 64 => rest,
        _ => return Err(KeyParseError::NotUncompressedPoint),
    };
    let (x, y) = coordinates.split_at(32);
    let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
    // RFC 7638: required members in lexicographic order, no whitespace.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    Ok(Jwk {
        kty: "EC".into(),
        kid: thumbprint(&canonical),
        alg: KeyType::EcP256.alg().into(),
        key_use: KEY_USE_SIGNATURE.into(),
        crv: Some("P-256".into()),
        x: Some(x),
        y: Some(y),
        n: None,
        e: None,
    })
}

/// The JWK of an RSA public key (big-endian `n` and `e` without leading zeros),
/// with the RFC 7638 thumbprint as `kid`.
fn rsa_public_jwk(n: &[u8], e: &[u8]) -> Jwk {
    let (n, e) = (URL_SAFE_NO_PAD.encode(n), URL_SAFE_NO_PAD.encode(e));
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    Jwk {
        kty: "RSA".into(),
        kid: thumbprint(&canonical),
        alg: KeyType::Rsa2048.alg().into(),
        key_use: KEY_USE_SIGNATURE.into(),
        crv: None,
        x: None,
        y: None,
        n: Some(n),
        e: Some(e),
    }
}

fn thumbprint(canonical_jwk: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical_jwk.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
        UnparsedPublicKey,
    };
    use std::os::unix::fs::MetadataExt;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn claims() -> JwtSvidClaims {
        JwtSvidClaims {
            extra: serde_json::Map::new(),
            iss: "https://issuer".into(),
            sub: "spiffe://td/w".into(),
            aud: vec!["a".into()],
            exp: 2,
            iat: 1,
            jti: None,
        }
    }

    fn b64(field: Option<&str>) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        Ok(URL_SAFE_NO_PAD.decode(field.ok_or("missing JWK field")?)?)
    }

    /// Splits a compact JWS into (header JSON, signing input, signature bytes).
    fn split(
        token: &str,
    ) -> Result<(serde_json::Value, &str, Vec<u8>), Box<dyn std::error::Error>> {
        let (signed, signature) = token.rsplit_once('.').ok_or("no signature")?;
        let (header, _) = signed.split_once('.').ok_or("no payload")?;
        let header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?;
        Ok((header, signed, URL_SAFE_NO_PAD.decode(signature)?))
    }

    #[test]
    fn key_persists_with_mode_0600_and_is_reused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let first = JwtSigningKey::load_or_generate(dir.path())?;
        let mode = std::fs::metadata(dir.path().join(LEGACY_KEY_FILE))?.mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = JwtSigningKey::load_or_generate(dir.path())?;
        assert_eq!(first.kid(), second.kid());
        assert_eq!(first.key_type(), KeyType::EcP256);
        Ok(())
    }

    #[test]
    fn es256_signature_verifies_against_the_published_point() -> TestResult {
        let dir = tempfile::tempdir()?;
        let key = JwtSigningKey::load_or_generate(dir.path())?;
        let token = key.sign(&claims())?;
        let (header, signed, signature) = split(&token)?;
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], key.kid());
        assert_eq!(header["typ"], "JWT");
        let jwk = key.jwk();
        let mut point = vec![0x04];
        point.extend(b64(jwk.x.as_deref())?);
        point.extend(b64(jwk.y.as_deref())?);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| "signature does not verify")?;
        Ok(())
    }

    #[test]
    fn rs256_signature_verifies_against_the_published_modulus() -> TestResult {
        let (key, _) = JwtSigningKey::generate(KeyType::Rsa2048)?;
        assert_eq!(key.key_type(), KeyType::Rsa2048);
        assert_eq!(key.alg(), "RS256");
        let token = key.sign(&claims())?;
        let (header, signed, signature) = split(&token)?;
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], key.kid());
        assert_eq!(header["typ"], "JWT");
        assert_eq!(signature.len(), 256);

        let jwk = key.jwk();
        let public = RsaPublicKeyComponents {
            n: b64(jwk.n.as_deref())?,
            e: b64(jwk.e.as_deref())?,
        };
        public
            .verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &signature)
            .map_err(|_| "signature does not verify")?;
        let mut tampered = signature.clone();
        tampered[0] ^= 1;
        assert!(
            public
                .verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &tampered)
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn rsa_jwk_has_only_public_fields_and_a_thumbprint_kid() -> TestResult {
        let (key, _) = JwtSigningKey::generate(KeyType::Rsa2048)?;
        let json = serde_json::to_value(key.jwk())?;
        let mut members: Vec<&str> = json
            .as_object()
            .ok_or("not an object")?
            .keys()
            .map(String::as_str)
            .collect();
        members.sort_unstable();
        assert_eq!(members, ["alg", "e", "kid", "kty", "n", "use"]);
        assert_eq!(json["kty"], "RSA");
        assert_eq!(json["alg"], "RS256");
        assert_eq!(json["use"], "sig");
        assert_eq!(json["e"], "AQAB", "e = 65537");
        assert_eq!(b64(key.jwk().n.as_deref())?.len(), 256, "no leading zero");
        // RFC 7638 §3: SHA-256 over {"e","kty","n"} in this order, no whitespace.
        let canonical = format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            json["e"].as_str().ok_or("e")?,
            json["n"].as_str().ok_or("n")?
        );
        let expected =
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()));
        assert_eq!(key.kid(), expected);
        Ok(())
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1's example key and its thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let canonical = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
        assert_eq!(
            thumbprint(&canonical),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn pkcs8_round_trip_keeps_type_and_kid() -> TestResult {
        for key_type in KeyType::ALL {
            let (key, pkcs8) = JwtSigningKey::generate(key_type)?;
            let again = JwtSigningKey::from_pem(pem::encode(PEM_LABEL, &pkcs8).as_bytes())?;
            assert_eq!(again.key_type(), key_type);
            assert_eq!(again.kid(), key.kid());
            assert_eq!(again.jwk(), key.jwk());
        }
        Ok(())
    }

    #[test]
    fn corrupt_key_file_is_named() -> TestResult {
        let dir = tempfile::tempdir()?;
        private_files::write_private_file(&dir.path().join(LEGACY_KEY_FILE), b"garbage")?;
        let err = JwtSigningKey::load_or_generate(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(LEGACY_KEY_FILE) && err.contains("PEM"),
            "{err}"
        );
        let not_a_key = pem::encode(PEM_LABEL, b"not pkcs8");
        assert!(
            JwtSigningKey::from_pem(not_a_key.as_bytes())
                .err()
                .map(|e| e.to_string())
                .is_some_and(|e| e.contains("P-256") && e.contains("RSA"))
        );
        Ok(())
    }
}
