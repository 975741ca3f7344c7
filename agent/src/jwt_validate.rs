//! Validation of JWT-SVIDs against the trust bundle, for ValidateJWTSVID.
//!
//! Only the algorithms this trust domain signs with are accepted: `none`,
//! `HS*` and anything else are refused before a key is looked at.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_proto::{Jwk, Jwks, SpiffeId};
use serde::Deserialize;

/// What this trust domain signs with (ES256 by default, RS256 for Entra).
const ALLOWED_ALGORITHMS: [&str; 2] = ["ES256", "RS256"];

/// Tokens larger than this are refused unparsed (AWS caps them at 20,000 chars).
const MAX_TOKEN_LEN: usize = 20_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("token is not a compact JWS (header.payload.signature)")]
    Malformed,
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("header or claims are not valid base64url JSON: {0}")]
    BadEncoding(String),
    #[error("algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("typ {0:?} is not JWT or JOSE")]
    BadType(String),
    #[error("key {0:?} is not in the trust bundle")]
    UnknownKey(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("audience {0:?} is not among the token's")]
    WrongAudience(String),
    #[error("token expired")]
    Expired,
    #[error("sub {0:?} is not a SPIFFE ID")]
    BadSubject(String),
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RequiredClaims {
    sub: String,
    #[serde(deserialize_with = "one_or_many")]
    aud: Vec<String>,
    exp: i64,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    })
}

/// A validated token: its subject and all of its claims.
#[derive(Debug, Clone)]
pub struct ValidatedJwt {
    pub spiffe_id: SpiffeId,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The bundle's keys decoded and parsed once (per bundle, not per call):
/// `kid` → (the `alg` it is published for, the parsed key). Keys that are not
/// usable ES256 or RS256 keys are left out, so tokens naming them are refused
/// as signed by an unknown key.
#[derive(Debug, Default)]
pub struct VerifyingKeys {
    keys: HashMap<String, (String, ParsedPublicKey)>,
}

impl VerifyingKeys {
    pub fn new(bundle: &Jwks) -> Self {
        let keys = bundle
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.kid.clone(), (jwk.alg.clone(), parse_key(jwk)?))))
            .collect();
        Self { keys }
    }
}

/// Validates against `bundle`, parsing its keys for this one call.
pub fn validate(
    token: &str,
    audience: &str,
    bundle: &Jwks,
    now: SystemTime,
) -> Result<ValidatedJwt, ValidationError> {
    validate_with(token, audience, &VerifyingKeys::new(bundle), now)
}

pub fn validate_with(
    token: &str,
    audience: &str,
    keys: &VerifyingKeys,
    now: SystemTime,
) -> Result<ValidatedJwt, ValidationError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(ValidationError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ValidationError::Malformed);
    };
    let header: Header = decode_json(header_b64)?;
    if !ALLOWED_ALGORITHMS.contains(&header.alg.as_str()) {
        return Err(ValidationError::AlgorithmNotAllowed(header.alg));
    }
    if let Some(typ) = header.typ.filter(|t| t != "JWT" && t != "JOSE") {
        return Err(ValidationError::BadType(typ));
    }
    let kid = header.kid.unwrap_or_default();
    // The key must be published for exactly this algorithm: no RS/ES confusion.
    let key = keys
        .keys
        .get(&kid)
        .filter(|(alg, _)| *alg == header.alg)
        .map(|(_, key)| key)
        .ok_or_else(|| ValidationError::UnknownKey(kid.clone()))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| ValidationError::BadSignature)?;
    let signed = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
    key.verify_sig(signed, &signature)
        .map_err(|_| ValidationError::BadSignature)?;

    let claims: serde_json::Map<String, serde_json::Value> = decode_json(claims_b64)?;
    let required: RequiredClaims =
        serde_json::from_value(serde_json::Value::Object(claims.clone()))
            .map_err(|e| ValidationError::BadEncoding(e.to_string()))?;
    if !required.aud.iter().any(|a| a == audience) {
        return Err(ValidationError::WrongAudience(audience.to_owned()));
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if required.exp <= now {
        return Err(ValidationError::Expired);
    }
    let spiffe_id = SpiffeId::parse(&required.sub)
        .map_err(|_| ValidationError::BadSubject(required.sub.clone()))?;
    Ok(ValidatedJwt { spiffe_id, claims })
}

/// An ES256 or RS256 JWK as a parsed public key; None when it is not usable as one.
fn parse_key(jwk: &Jwk) -> Option<ParsedPublicKey> {
    let field = |f: &Option<String>| f.as_deref().and_then(|v| URL_SAFE_NO_PAD.decode(v).ok());
    match (jwk.alg.as_str(), jwk.kty.as_str()) {
        ("ES256", "EC") if jwk.crv.as_deref() == Some("P-256") => {
            let mut point = vec![0x04];
            point.extend(field(&jwk.x)?);
            point.extend(field(&jwk.y)?);
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .parse()
                .ok()
        }
        ("RS256", "RSA") => RsaPublicKeyComponents {
            n: field(&jwk.n)?,
            e: field(&jwk.e)?,
        }
        .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
        .ok(),
        _ => None,
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, ValidationError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| ValidationError::BadEncoding(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| ValidationError::BadEncoding(e.to_string()))
}

/// Converts JSON claims to the protobuf `Struct` the Workload API returns.
pub fn to_struct(claims: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: claims.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn refuses_disallowed_algorithms_before_looking_at_keys() {
        let bundle = Jwks::default();
        for alg in ["none", "HS256", "ES384", "PS256"] {
            let token = format!(
                "{}.{}.",
                b64(&format!(r#"{{"alg":"{alg}","kid":"k"}}"#)),
                b64("{}")
            );
            assert_eq!(
                validate(&token, "a", &bundle, SystemTime::now()).err(),
                Some(ValidationError::AlgorithmNotAllowed(alg.into()))
            );
        }
    }

    /// An RS256 token (what Entra needs) verifies with its RSA key, and the
    /// same key published under another `alg` is refused.
    #[test]
    fn rs256_verifies_and_alg_must_match_the_key() -> Result<(), Box<dyn std::error::Error>> {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::rsa::KeySize;
        use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};

        let key = RsaKeyPair::generate(KeySize::Rsa2048)?;
        let public = key.public_key();
        let jwk = |alg: &str| Jwk {
            kty: "RSA".into(),
            kid: "r1".into(),
            alg: alg.into(),
            key_use: "sig".into(),
            crv: None,
            x: None,
            y: None,
            n: Some(URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero())),
            e: Some(URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero())),
        };
        let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 60;
        let signed = format!(
            "{}.{}",
            b64(r#"{"alg":"RS256","kid":"r1","typ":"JWT"}"#),
            b64(&format!(
                r#"{{"sub":"spiffe://example.org/w","aud":"a","exp":{exp}}}"#
            ))
        );
        let mut signature = vec![0; key.public_modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signed.as_bytes(),
            &mut signature,
        )?;
        let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&signature));

        let good = Jwks {
            keys: vec![jwk("RS256")],
        };
        let validated = validate(&token, "a", &good, SystemTime::now())?;
        assert_eq!(validated.spiffe_id.to_string(), "spiffe://example.org/w");
        let mislabelled = Jwks {
            keys: vec![jwk("ES256")],
        };
        assert_eq!(
            validate(&token, "a", &mislabelled, SystemTime::now()).err(),
            Some(ValidationError::UnknownKey("r1".into()))
        );
        let mut tampered = token.clone();
        tampered.replace_range(token.len() - 4.., "AAAA");
        assert_eq!(
            validate(&tampered, "a", &good, SystemTime::now()).err(),
            Some(ValidationError::BadSignature)
        );
        Ok(())
    }

    #[test]
    fn refuses_unknown_kid_and_malformed_tokens() {
        let bundle = Jwks::default();
        let token = format!(
            "{}.{}.AA",
            b64(r#"{"alg":"ES256","kid":"nope"}"#),
            b64("{}")
        );
        assert_eq!(
            validate(&token, "a", &bundle, SystemTime::now()).err(),
            Some(ValidationError::UnknownKey("nope".into()))
        );
        assert_eq!(
            validate("a.b", "a", &bundle, SystemTime::now()).err(),
            Some(ValidationError::Malformed)
        );
        assert_eq!(
            validate("a.b.c.d", "a", &bundle, SystemTime::now()).err(),
            Some(ValidationError::Malformed)
        );
        assert!(matches!(
            validate("!.b.c", "a", &bundle, SystemTime::now()),
            Err(ValidationError::BadEncoding(_))
        ));
    }
}
