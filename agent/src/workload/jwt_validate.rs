//! Validation of JWT-SVIDs for ValidateJWTSVID, per the SPIFFE JWT-SVID
//! standard and RFC 7515/7519, strictly:
//!
//! - at most [`MAX_TOKEN_LEN`] bytes, checked before anything is decoded;
//! - compact JWS of three base64url parts whose header and claims are JSON
//!   objects with no member name repeated anywhere (serde_json alone would keep
//!   the last one, so `{"sub":A,"sub":B}` would mean B to us and A to others);
//! - header: only `alg`, `kid` (required) and `typ` (`JWT` or `JOSE`); `crit`
//!   and every other parameter (`jku`, `jwk`, `x5u`, `x5c`, `zip`, …) refused;
//!   `alg` only what this trust domain signs with, and the key named by `kid`
//!   must be published for that very `alg`;
//! - `sub` a SPIFFE ID, checked against the bundle of its own trust domain (the
//!   agent holds only its own, so any other trust domain is refused);
//! - `exp` (integer) and `aud` (string or array of strings holding the
//!   requested audience) required; `nbf` honoured; `iat`/`nbf` numbers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_proto::{Jwk, Jwks, SpiffeId, TrustDomain};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// What this trust domain signs with (ES256 by default, RS256 for Entra).
const ALLOWED_ALGORITHMS: [&str; 2] = ["ES256", "RS256"];

/// The header parameters a JWT-SVID may carry. Any other one (`crit`, `jku`,
/// `jwk`, `x5u`, `x5c`, `zip`, `p2c`, …) would change how the token is to be
/// read or where its key comes from, which no JWT-SVID needs.
const ALLOWED_HEADER_PARAMETERS: [&str; 3] = ["alg", "kid", "typ"];

/// Tokens larger than this are refused before any decoding. The Workload API
/// sets no limit; 20,000 characters is AWS STS's documented limit for web
/// identity tokens, so every JWT-SVID a cloud would take fits.
pub const MAX_TOKEN_LEN: usize = 20_000;

/// Clock leeway for `exp` and `nbf`, kept the same for both. None: the server
/// signs `exp` and never `nbf`, and the agent has always checked `exp` exactly.
const CLOCK_LEEWAY_SECONDS: i64 = 0;

/// Which part of the token an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Part {
    Header,
    Claims,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Header => "header",
            Self::Claims => "claims",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    #[error("token is not a compact JWS (header.payload.signature)")]
    Malformed,
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("{0} is not base64url")]
    BadBase64(Part),
    #[error("{part} is not valid JSON: {message}")]
    BadJson { part: Part, message: String },
    #[error("{0} is not a JSON object")]
    NotAnObject(Part),
    #[error("{part} has the member {name:?} more than once")]
    DuplicateMember { part: Part, name: String },
    #[error("header parameter \"crit\" is not allowed: no extension is understood")]
    Critical,
    #[error("header parameter {0:?} is not allowed (only alg, kid and typ are)")]
    HeaderParameterNotAllowed(String),
    #[error("header parameter {name:?} {problem}")]
    BadHeader {
        name: &'static str,
        problem: &'static str,
    },
    #[error("algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("typ {0:?} is not JWT or JOSE")]
    BadType(String),
    #[error("key {0:?} is not in the trust bundle")]
    UnknownKey(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("claim {name:?} {problem}")]
    BadClaim {
        name: &'static str,
        problem: &'static str,
    },
    #[error("sub {sub:?} is not a SPIFFE ID: {reason}")]
    BadSubject { sub: String, reason: String },
    #[error("no bundle for trust domain {0}")]
    NoBundle(String),
    #[error("audience {0:?} is not among the token's")]
    WrongAudience(String),
    #[error("token expired (exp)")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
}

const MISSING: &str = "is missing";
const NOT_A_STRING: &str = "must be a string";

/// A validated token: its subject and all of its claims.
#[derive(Debug, Clone)]
pub struct ValidatedJwt {
    pub spiffe_id: SpiffeId,
    pub claims: Map<String, Value>,
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

/// Validates against `bundle`, the bundle of `trust_domain`, parsing its keys
/// for this one call.
#[cfg(test)]
pub(crate) fn validate(
    token: &str,
    audience: &str,
    trust_domain: &TrustDomain,
    bundle: &Jwks,
    now: SystemTime,
) -> Result<ValidatedJwt, ValidationError> {
    validate_with(
        token,
        audience,
        trust_domain,
        &VerifyingKeys::new(bundle),
        now,
    )
}

/// Validates against `keys`, the parsed bundle of `trust_domain`: the only
/// trust domain whose tokens can be validated here.
pub fn validate_with(
    token: &str,
    audience: &str,
    trust_domain: &TrustDomain,
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

    let header = decode_object(header_b64, Part::Header)?;
    if header.contains_key("crit") {
        return Err(ValidationError::Critical);
    }
    if let Some(name) = header
        .keys()
        .find(|name| !ALLOWED_HEADER_PARAMETERS.contains(&name.as_str()))
    {
        return Err(ValidationError::HeaderParameterNotAllowed(name.clone()));
    }
    let alg = header_string(&header, "alg")?;
    if !ALLOWED_ALGORITHMS.contains(&alg) {
        return Err(ValidationError::AlgorithmNotAllowed(alg.to_owned()));
    }
    if let Some(typ) = header.get("typ") {
        match typ.as_str() {
            Some("JWT" | "JOSE") => {}
            Some(other) => return Err(ValidationError::BadType(other.to_owned())),
            None => {
                return Err(ValidationError::BadHeader {
                    name: "typ",
                    problem: NOT_A_STRING,
                });
            }
        }
    }
    let kid = header_string(&header, "kid")?;

    // The subject picks the bundle, so it is read before the signature is
    // checked (as go-spiffe does); its claims are trusted only after.
    let claims = decode_object(claims_b64, Part::Claims)?;
    let sub = match claims.get("sub") {
        Some(Value::String(sub)) => sub,
        Some(_) => return Err(bad_claim("sub", NOT_A_STRING)),
        None => return Err(bad_claim("sub", MISSING)),
    };
    let spiffe_id = SpiffeId::parse(sub).map_err(|e| ValidationError::BadSubject {
        sub: sub.clone(),
        reason: e.to_string(),
    })?;
    if !spiffe_id.is_member_of(trust_domain) {
        return Err(ValidationError::NoBundle(
            spiffe_id.trust_domain_name().to_owned(),
        ));
    }

    // The key must be published for exactly this algorithm: no RS/ES confusion.
    let key = keys
        .keys
        .get(kid)
        .filter(|(key_alg, _)| key_alg == alg)
        .map(|(_, key)| key)
        .ok_or_else(|| ValidationError::UnknownKey(kid.to_owned()))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| ValidationError::BadSignature)?;
    let signed = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
    key.verify_sig(signed, &signature)
        .map_err(|_| ValidationError::BadSignature)?;

    check_claims(&claims, audience, now)?;
    Ok(ValidatedJwt { spiffe_id, claims })
}

/// `exp`, `aud`, `nbf` and `iat` of signed claims.
fn check_claims(
    claims: &Map<String, Value>,
    audience: &str,
    now: SystemTime,
) -> Result<(), ValidationError> {
    let exp = match claims.get("exp") {
        Some(exp) => exp
            .as_i64()
            .ok_or_else(|| bad_claim("exp", "must be an integer"))?,
        None => return Err(bad_claim("exp", MISSING)),
    };
    let audiences: Vec<&Value> = match claims.get("aud") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
        None => return Err(bad_claim("aud", MISSING)),
    };
    let mut found = false;
    for item in audiences {
        let item = item
            .as_str()
            .ok_or_else(|| bad_claim("aud", "must be a string or an array of strings"))?;
        found |= item == audience;
    }
    if !found {
        return Err(ValidationError::WrongAudience(audience.to_owned()));
    }
    let number = |name: &'static str| match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad_claim(name, "must be a number")),
    };
    let nbf = number("nbf")?;
    number("iat")?;

    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if exp.saturating_add(CLOCK_LEEWAY_SECONDS) <= now {
        return Err(ValidationError::Expired);
    }
    // A fractional nbf is compared as it is: `now` (whole seconds) must reach it.
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(CLOCK_LEEWAY_SECONDS) as f64) {
        return Err(ValidationError::NotYetValid);
    }
    Ok(())
}

fn bad_claim(name: &'static str, problem: &'static str) -> ValidationError {
    ValidationError::BadClaim { name, problem }
}

/// A header parameter that must be present and a string.
fn header_string<'a>(
    header: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, ValidationError> {
    match header.get(name) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(ValidationError::BadHeader {
            name,
            problem: NOT_A_STRING,
        }),
        None => Err(ValidationError::BadHeader {
            name,
            problem: MISSING,
        }),
    }
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

/// Converts JSON claims to the protobuf `Struct` the Workload API returns.
pub(crate) fn to_struct(claims: Map<String, Value>) -> prost_types::Struct {
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

/// Decodes one base64url part as a JSON object, refusing repeated member names.
fn decode_object(part_b64: &str, part: Part) -> Result<Map<String, Value>, ValidationError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part_b64)
        .map_err(|_| ValidationError::BadBase64(part))?;
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let parsed = NoDuplicates {
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    match (parsed, duplicate.into_inner()) {
        (_, Some(name)) => Err(ValidationError::DuplicateMember { part, name }),
        (Err(e), None) => Err(ValidationError::BadJson {
            part,
            message: e.to_string(),
        }),
        (Ok(Value::Object(map)), None) => Ok(map),
        (Ok(_), None) => Err(ValidationError::NotAnObject(part)),
    }
}

/// Builds a `serde_json::Value` from serde_json's own parser, as
/// `serde_json::from_slice` would, except that a member name repeated within
/// one object (compared after unescaping, so `"s\u0075b"` is `"sub"`) stops
/// parsing and is recorded in `duplicate`. serde_json's recursion limit still
/// bounds nesting.
#[derive(Clone, Copy)]
struct NoDuplicates<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for NoDuplicates<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoDuplicates<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                let message = format!("duplicate member {name:?}");
                *self.duplicate.borrow_mut() = Some(name);
                return Err(serde::de::Error::custom(message));
            }
            let value = map.next_value_seed(self)?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    use super::*;

    const NOW: u64 = 1_700_000_000;
    const TD: &str = "example.org";
    const SUB: &str = "spiffe://example.org/w";
    const HEADER: &str = r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn at_now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn td() -> TrustDomain {
        TrustDomain::new(TD).expect("a trust domain")
    }

    /// A real ES256 key published as `k1`: tokens are signed exactly as
    /// written, so each test changes only what it is about.
    struct Signer {
        key: EcdsaKeyPair,
        bundle: Jwks,
    }

    impl Signer {
        fn new() -> Result<Self, Box<dyn std::error::Error>> {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)?;
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())?;
            // Uncompressed point: 0x04 || x || y.
            let point = key.public_key().as_ref();
            let jwk = Jwk {
                kty: "EC".into(),
                kid: "k1".into(),
                alg: "ES256".into(),
                key_use: "sig".into(),
                crv: Some("P-256".into()),
                x: Some(URL_SAFE_NO_PAD.encode(&point[1..33])),
                y: Some(URL_SAFE_NO_PAD.encode(&point[33..65])),
                n: None,
                e: None,
            };
            Ok(Self {
                key,
                bundle: Jwks { keys: vec![jwk] },
            })
        }

        fn sign(&self, header: &str, claims: &str) -> Result<String, Box<dyn std::error::Error>> {
            let signed = format!("{}.{}", b64(header), b64(claims));
            let signature = self.key.sign(&SystemRandom::new(), signed.as_bytes())?;
            Ok(format!(
                "{signed}.{}",
                URL_SAFE_NO_PAD.encode(signature.as_ref())
            ))
        }

        /// Validates `claims` signed under `header`, for audience "a", at NOW.
        fn check(&self, header: &str, claims: &str) -> Result<ValidatedJwt, ValidationError> {
            let token = self.sign(header, claims).expect("signing");
            validate(&token, "a", &td(), &self.bundle, at_now())
        }
    }

    /// Claims that pass, with `extra` members appended.
    fn claims(extra: &str) -> String {
        format!(
            r#"{{"sub":"{SUB}","aud":"a","exp":{},"iat":{}{extra}}}"#,
            NOW + 60,
            NOW - 1
        )
    }

    fn bad_claim(name: &'static str, problem: &'static str) -> Option<ValidationError> {
        Some(ValidationError::BadClaim { name, problem })
    }

    #[test]
    fn a_well_formed_token_validates() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        let validated = s.check(HEADER, &claims(""))?;
        assert_eq!(validated.spiffe_id.as_str(), SUB);
        assert_eq!(validated.claims["exp"], Value::from(NOW + 60));
        // typ may be JOSE or absent; aud an array; nbf now or earlier; extra claims kept.
        for header in [
            r#"{"alg":"ES256","kid":"k1","typ":"JOSE"}"#,
            r#"{"kid":"k1","alg":"ES256"}"#,
        ] {
            s.check(header, &claims(""))?;
        }
        let exp = NOW + 60;
        s.check(
            HEADER,
            &format!(r#"{{"sub":"{SUB}","aud":["b","a"],"exp":{exp},"nbf":{NOW},"iss":"x"}}"#),
        )?;
        s.check(HEADER, &claims(&format!(r#","nbf":{}.5"#, NOW - 1)))?;
        let nested = s.check(HEADER, &claims(r#","x":{"a":[{"b":1},{"b":2}],"c":null}"#))?;
        assert_eq!(nested.claims["x"]["a"][1]["b"], Value::from(2));
        Ok(())
    }

    /// Finding 5: `nbf` an hour ahead was accepted.
    #[test]
    fn nbf_is_honoured() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        for nbf in [
            format!("{}", NOW + 3600),
            format!("{}", NOW + 1),
            format!("{NOW}.5"),
        ] {
            assert_eq!(
                s.check(HEADER, &claims(&format!(r#","nbf":{nbf}"#))).err(),
                Some(ValidationError::NotYetValid),
                "nbf {nbf}"
            );
        }
        s.check(HEADER, &claims(&format!(r#","nbf":{NOW}"#)))?;
        Ok(())
    }

    /// `exp` is required (a SPIRE advisory), an integer, and in the future.
    #[test]
    fn exp_is_required_integer_and_not_past() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        let no_exp = format!(r#"{{"sub":"{SUB}","aud":"a"}}"#);
        assert_eq!(s.check(HEADER, &no_exp).err(), bad_claim("exp", MISSING));
        for exp in [
            format!("\"{}\"", NOW + 60),
            format!("{}.0", NOW + 60),
            "1e10".to_owned(),
            "null".to_owned(),
            "18446744073709551615".to_owned(),
        ] {
            let token_claims = format!(r#"{{"sub":"{SUB}","aud":"a","exp":{exp}}}"#);
            assert_eq!(
                s.check(HEADER, &token_claims).err(),
                bad_claim("exp", "must be an integer"),
                "exp {exp}"
            );
        }
        for exp in [NOW, NOW - 1, 0] {
            let token_claims = format!(r#"{{"sub":"{SUB}","aud":"a","exp":{exp}}}"#);
            assert_eq!(
                s.check(HEADER, &token_claims).err(),
                Some(ValidationError::Expired)
            );
        }
        let token_claims = format!(r#"{{"sub":"{SUB}","aud":"a","exp":-5}}"#);
        assert_eq!(
            s.check(HEADER, &token_claims).err(),
            Some(ValidationError::Expired)
        );
        Ok(())
    }

    /// `aud` is required (a SPIRE advisory), strings only, and must hold the audience.
    #[test]
    fn aud_is_required_and_must_hold_the_audience() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        let exp = NOW + 60;
        let with_aud = |aud: &str| format!(r#"{{"sub":"{SUB}","exp":{exp}{aud}}}"#);
        assert_eq!(
            s.check(HEADER, &with_aud("")).err(),
            bad_claim("aud", MISSING)
        );
        for aud in [
            r#","aud":1"#,
            r#","aud":null"#,
            r#","aud":["a",1]"#,
            r#","aud":{"a":1}"#,
        ] {
            assert_eq!(
                s.check(HEADER, &with_aud(aud)).err(),
                bad_claim("aud", "must be a string or an array of strings"),
                "{aud}"
            );
        }
        for aud in [r#","aud":"b""#, r#","aud":[]"#, r#","aud":["b","A"]"#] {
            assert_eq!(
                s.check(HEADER, &with_aud(aud)).err(),
                Some(ValidationError::WrongAudience("a".into())),
                "{aud}"
            );
        }
        Ok(())
    }

    #[test]
    fn iat_and_nbf_must_be_numbers() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        for name in ["iat", "nbf"] {
            for value in [r#""1""#, "null", "true", "[1]"] {
                let exp = NOW + 60;
                let token_claims =
                    format!(r#"{{"sub":"{SUB}","aud":"a","exp":{exp},"{name}":{value}}}"#);
                assert!(
                    matches!(
                        s.check(HEADER, &token_claims),
                        Err(ValidationError::BadClaim { name: n, problem: "must be a number" }) if n == name
                    ),
                    "{name}: {value}"
                );
            }
        }
        Ok(())
    }

    /// Finding 5: a `crit` header was accepted.
    #[test]
    fn crit_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        for crit in [r#"["exp"]"#, "[]", r#"["b64"]"#] {
            let header = format!(r#"{{"alg":"ES256","kid":"k1","typ":"JWT","crit":{crit}}}"#);
            assert_eq!(
                s.check(&header, &claims("")).err(),
                Some(ValidationError::Critical)
            );
        }
        Ok(())
    }

    /// Only alg, kid and typ; the SPIRE advisories' zip/jku/jwk/p2c among the rest.
    #[test]
    fn other_header_parameters_are_refused_by_name() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        for name in [
            "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "zip", "p2c", "p2s", "enc", "cty",
            "b64", "epk", "iss", "ALG", "",
        ] {
            let header = format!(r#"{{"alg":"ES256","kid":"k1","typ":"JWT","{name}":"x"}}"#);
            let refused = s.check(&header, &claims("")).err();
            assert_eq!(
                refused,
                Some(ValidationError::HeaderParameterNotAllowed(name.into()))
            );
            assert!(
                refused.is_some_and(|e| e.to_string().contains(&format!("{name:?}"))),
                "the message names {name:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn alg_kid_and_typ_must_be_well_formed() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        let cases = [
            (
                r#"{"alg":"ES256","typ":"JWT"}"#,
                ValidationError::BadHeader {
                    name: "kid",
                    problem: MISSING,
                },
            ),
            (
                r#"{"alg":"ES256","kid":1}"#,
                ValidationError::BadHeader {
                    name: "kid",
                    problem: NOT_A_STRING,
                },
            ),
            (
                r#"{"kid":"k1"}"#,
                ValidationError::BadHeader {
                    name: "alg",
                    problem: MISSING,
                },
            ),
            (
                r#"{"alg":["ES256"],"kid":"k1"}"#,
                ValidationError::BadHeader {
                    name: "alg",
                    problem: NOT_A_STRING,
                },
            ),
            (
                r#"{"alg":"ES256","kid":"k1","typ":null}"#,
                ValidationError::BadHeader {
                    name: "typ",
                    problem: NOT_A_STRING,
                },
            ),
            (
                r#"{"alg":"ES256","kid":"k1","typ":"at+jwt"}"#,
                ValidationError::BadType("at+jwt".into()),
            ),
            (
                r#"{"alg":"ES256","kid":"k2"}"#,
                ValidationError::UnknownKey("k2".into()),
            ),
            (
                r#"{"alg":"RS256","kid":"k1"}"#,
                ValidationError::UnknownKey("k1".into()),
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(
                s.check(header, &claims("")).err(),
                Some(expected),
                "{header}"
            );
        }
        Ok(())
    }

    #[test]
    fn refuses_disallowed_algorithms_before_looking_at_keys() {
        let bundle = Jwks::default();
        for alg in ["none", "HS256", "ES384", "PS256", "es256", ""] {
            let token = format!(
                "{}.{}.",
                b64(&format!(r#"{{"alg":"{alg}","kid":"k"}}"#)),
                b64("{}")
            );
            assert_eq!(
                validate(&token, "a", &td(), &bundle, SystemTime::now()).err(),
                Some(ValidationError::AlgorithmNotAllowed(alg.into()))
            );
        }
    }

    #[test]
    fn sub_must_be_a_spiffe_id() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        let exp = NOW + 60;
        assert_eq!(
            s.check(HEADER, &format!(r#"{{"aud":"a","exp":{exp}}}"#))
                .err(),
            bad_claim("sub", MISSING)
        );
        assert_eq!(
            s.check(HEADER, &format!(r#"{{"sub":7,"aud":"a","exp":{exp}}}"#))
                .err(),
            bad_claim("sub", NOT_A_STRING)
        );
        for sub in [
            "w",
            "",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/w/",
            "spiffe://Example.org/w",
            "spiffe://example.org:443/w",
            "https://example.org/w",
        ] {
            let token_claims = format!(r#"{{"sub":"{sub}","aud":"a","exp":{exp}}}"#);
            assert!(
                matches!(
                    s.check(HEADER, &token_claims),
                    Err(ValidationError::BadSubject { sub: ref bad, .. }) if bad == sub
                ),
                "{sub}"
            );
        }
        Ok(())
    }

    /// Finding 5: `sub` of another trust domain was checked against this one's
    /// bundle; it must meet its own, which the agent does not hold.
    #[test]
    fn sub_of_another_trust_domain_has_no_bundle() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        let exp = NOW + 60;
        for (sub, td_name) in [
            ("spiffe://other.org/w", "other.org"),
            ("spiffe://example.org.evil/w", "example.org.evil"),
            ("spiffe://org/w", "org"),
        ] {
            let token_claims = format!(r#"{{"sub":"{sub}","aud":"a","exp":{exp}}}"#);
            let refused = s.check(HEADER, &token_claims).err();
            assert_eq!(refused, Some(ValidationError::NoBundle(td_name.into())));
            assert_eq!(
                refused.map(|e| e.to_string()),
                Some(format!("no bundle for trust domain {td_name}"))
            );
        }
        Ok(())
    }

    /// Finding 5: with repeated member names the last one won.
    #[test]
    fn duplicate_members_are_refused_anywhere() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        let (exp, past) = (NOW + 60, NOW - 60);
        let claim_cases = [
            (
                format!(
                    r#"{{"sub":"{SUB}","sub":"spiffe://example.org/admin","aud":"a","exp":{exp}}}"#
                ),
                "sub",
            ),
            (
                format!(r#"{{"sub":"{SUB}","aud":"a","exp":{past},"exp":{exp}}}"#),
                "exp",
            ),
            (
                format!(r#"{{"sub":"{SUB}","aud":"b","aud":"a","exp":{exp}}}"#),
                "aud",
            ),
            // Escapes are undone before names are compared.
            (
                format!(
                    r#"{{"sub":"{SUB}","s\u0075b":"spiffe://example.org/x","aud":"a","exp":{exp}}}"#
                ),
                "sub",
            ),
            (
                format!(r#"{{"sub":"{SUB}","aud":"a","exp":{exp},"x":{{"y":1,"y":2}}}}"#),
                "y",
            ),
            (
                format!(
                    r#"{{"sub":"{SUB}","aud":"a","exp":{exp},"x":[{{}},{{"z":[{{"q":1,"q":1}}]}}]}}"#
                ),
                "q",
            ),
        ];
        for (token_claims, name) in claim_cases {
            assert_eq!(
                s.check(HEADER, &token_claims).err(),
                Some(ValidationError::DuplicateMember {
                    part: Part::Claims,
                    name: name.into()
                }),
                "{token_claims}"
            );
        }
        for (header, name) in [
            (r#"{"alg":"none","alg":"ES256","kid":"k1"}"#, "alg"),
            (r#"{"alg":"ES256","kid":"k2","kid":"k1"}"#, "kid"),
            (
                r#"{"alg":"ES256","kid":"k1","typ":"JWT","typ":"JWT"}"#,
                "typ",
            ),
        ] {
            assert_eq!(
                s.check(header, &claims("")).err(),
                Some(ValidationError::DuplicateMember {
                    part: Part::Header,
                    name: name.into()
                }),
                "{header}"
            );
        }
        // The same name in different objects is fine.
        s.check(HEADER, &claims(r#","x":{"sub":1,"y":{"sub":2}}"#))?;
        Ok(())
    }

    #[test]
    fn header_and_claims_must_be_json_objects() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        assert_eq!(
            s.check(HEADER, "[1]").err(),
            Some(ValidationError::NotAnObject(Part::Claims))
        );
        assert_eq!(
            s.check("null", &claims("")).err(),
            Some(ValidationError::NotAnObject(Part::Header))
        );
        for bad in [
            format!("{} x", claims("")),
            format!("{}{{}}", claims("")),
            "{".into(),
            String::new(),
        ] {
            assert!(
                matches!(
                    s.check(HEADER, &bad),
                    Err(ValidationError::BadJson {
                        part: Part::Claims,
                        ..
                    })
                ),
                "{bad}"
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            s.check(HEADER, &claims(&format!(r#","x":{deep}"#))),
            Err(ValidationError::BadJson {
                part: Part::Claims,
                ..
            })
        ));
        Ok(())
    }

    /// Hostile sizes are refused before any decoding, in bounded time.
    #[test]
    fn oversize_tokens_are_refused_unparsed() {
        let bundle = Jwks::default();
        let started = std::time::Instant::now();
        let dots = ".".repeat(1 << 20);
        assert_eq!(
            validate(&dots, "a", &td(), &bundle, at_now()).err(),
            Some(ValidationError::TooLong)
        );
        let long = "A".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            validate(&long, "a", &td(), &bundle, at_now()).err(),
            Some(ValidationError::TooLong)
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        // At the limit it is read, and refused for its shape.
        assert_eq!(
            validate(&dots[..MAX_TOKEN_LEN], "a", &td(), &bundle, at_now()).err(),
            Some(ValidationError::Malformed)
        );
    }

    /// An RS256 token (what Entra needs) verifies with its RSA key, and the
    /// same key published under another `alg` is refused.
    #[test]
    fn rs256_verifies_and_alg_must_match_the_key() -> Result<(), Box<dyn std::error::Error>> {
        use aws_lc_rs::rsa::KeySize;
        use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};

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
        let validated = validate(&token, "a", &td(), &good, SystemTime::now())?;
        assert_eq!(validated.spiffe_id.to_string(), "spiffe://example.org/w");
        let mislabelled = Jwks {
            keys: vec![jwk("ES256")],
        };
        assert_eq!(
            validate(&token, "a", &td(), &mislabelled, SystemTime::now()).err(),
            Some(ValidationError::UnknownKey("r1".into()))
        );
        let mut tampered = token.clone();
        tampered.replace_range(token.len() - 4.., "AAAA");
        assert_eq!(
            validate(&tampered, "a", &td(), &good, SystemTime::now()).err(),
            Some(ValidationError::BadSignature)
        );
        Ok(())
    }

    #[test]
    fn refuses_unknown_kid_and_malformed_tokens() -> Result<(), Box<dyn std::error::Error>> {
        let s = Signer::new()?;
        let token = format!(
            "{}.{}.AA",
            b64(r#"{"alg":"ES256","kid":"nope"}"#),
            b64(&claims(""))
        );
        assert_eq!(
            validate(&token, "a", &td(), &s.bundle, at_now()).err(),
            Some(ValidationError::UnknownKey("nope".into()))
        );
        for bad in ["a.b", "a.b.c.d", "", "..."] {
            assert_eq!(
                validate(bad, "a", &td(), &s.bundle, at_now()).err(),
                Some(ValidationError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            validate("!.b.c", "a", &td(), &s.bundle, at_now()).err(),
            Some(ValidationError::BadBase64(Part::Header))
        );
        // Padded base64 is not base64url as JWS uses it.
        let padded = format!("{}=.{}.AA", b64(HEADER), b64(&claims("")));
        assert_eq!(
            validate(&padded, "a", &td(), &s.bundle, at_now()).err(),
            Some(ValidationError::BadBase64(Part::Header))
        );
        // A valid token with its signature swapped for one over other claims.
        let good = s.sign(HEADER, &claims(""))?;
        let other = s.sign(HEADER, &claims(r#","x":1"#))?;
        let (signed, _) = good.rsplit_once('.').expect("three parts");
        let (_, signature) = other.rsplit_once('.').expect("three parts");
        assert_eq!(
            validate(
                &format!("{signed}.{signature}"),
                "a",
                &td(),
                &s.bundle,
                at_now()
            )
            .err(),
            Some(ValidationError::BadSignature)
        );
        Ok(())
    }
}
