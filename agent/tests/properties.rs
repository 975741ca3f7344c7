//! Property tests over what the agent reads from untrusted hands (issue 11,
//! "standing defence"): tokens handed to ValidateJWTSVID. The config file's
//! are in tests/tests/e2e/config_properties.rs, beside the server's.
//!
//! Bounded for CI: a fixed number of cases per property, tokens of at most
//! 1 MiB, and no failure persistence files (a failing case is printed,
//! shrunk, by proptest).
#![allow(
    unused_crate_dependencies,
    reason = "an integration test shares its package's dependency list; the library target is where unused dependencies are caught"
)]

use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_agent::workload::jwt_validate::{
    MAX_TOKEN_LEN, ValidationError, VerifyingKeys, validate_with,
};
use lanyard_proto::{Jwk, Jwks, SpiffeId, TrustDomain};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value, json};

/// `bounded` cases per property, or `PROPTEST_CASES` for a longer search by hand.
fn config(bounded: u32) -> Config {
    Config {
        cases: cases(bounded),
        failure_persistence: None,
        ..Config::default()
    }
}

fn cases(bounded: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(bounded)
}

const TD: &str = "example.org";
const KID: &str = "k1";
const AUDIENCE: &str = "sts.amazonaws.com";

/// A real ES256 key published as `k1` in the bundle of example.org.
struct Signer {
    key: EcdsaKeyPair,
    keys: VerifyingKeys,
    trust_domain: TrustDomain,
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

impl Signer {
    fn new() -> Result<Self, TestCaseError> {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(fail)?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(fail)?;
        let point = key.public_key().as_ref();
        let jwk = Jwk {
            kty: "EC".into(),
            kid: KID.into(),
            alg: "ES256".into(),
            key_use: "sig".into(),
            crv: Some("P-256".into()),
            x: Some(URL_SAFE_NO_PAD.encode(&point[1..33])),
            y: Some(URL_SAFE_NO_PAD.encode(&point[33..65])),
            n: None,
            e: None,
        };
        let keys = VerifyingKeys::new(&Jwks { keys: vec![jwk] });
        let trust_domain = TrustDomain::new(TD).map_err(fail)?;
        Ok(Self {
            key,
            keys,
            trust_domain,
        })
    }

    /// `header.claims.signature` with a real signature over exactly these bytes.
    fn sign(&self, header: &[u8], claims: &[u8]) -> Result<String, TestCaseError> {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .map_err(fail)?;
        Ok(format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    fn validate(&self, token: &str) -> Result<SpiffeId, ValidationError> {
        validate_with(
            token,
            AUDIENCE,
            &self.trust_domain,
            &self.keys,
            SystemTime::now(),
        )
        .map(|validated| validated.spiffe_id)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Claims that pass for `sub`: the audience, an `exp` ten minutes ahead.
fn good_claims(sub: &str) -> Value {
    json!({ "sub": sub, "aud": AUDIENCE, "exp": unix_now() + 600, "iat": unix_now() })
}

fn good_header() -> Value {
    json!({ "alg": "ES256", "kid": KID, "typ": "JWT" })
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(("\\PC{0,8}", inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// Header objects close to a real one: the members a JWS header may have,
/// with values that are right, wrong or of the wrong type (mostly right, so
/// that some signed ones pass).
fn header_object() -> impl Strategy<Value = Value> {
    let alg = prop_oneof![
        20 => Just(json!("ES256")),
        1 => Just(json!("RS256")),
        1 => Just(json!("none")),
        1 => Just(json!("HS256")),
        1 => Just(json!("ES384")),
        1 => json_value(),
    ];
    let kid = prop_oneof![10 => Just(json!(KID)), 1 => Just(json!("k2")), 1 => json_value()];
    let extra = prop_oneof![
        3 => Just(vec![]),
        1 => proptest::sample::subsequence(
            vec!["crit", "jku", "jwk", "x5u", "x5c", "zip", "p2c", "p2s", "enc", "cty"],
            1..3,
        ),
    ];
    (
        proptest::option::weighted(0.95, alg),
        proptest::option::weighted(0.95, kid),
        proptest::option::of(prop_oneof![3 => Just(json!("JWT")), 1 => json_value()]),
        extra,
        json_value(),
    )
        .prop_map(|(alg, kid, typ, extra, value)| {
            let mut header = Map::new();
            for (name, member) in [("alg", alg), ("kid", kid), ("typ", typ)] {
                if let Some(member) = member {
                    header.insert(name.to_owned(), member);
                }
            }
            for name in extra {
                header.insert(name.to_owned(), value.clone());
            }
            Value::Object(header)
        })
}

/// A time claim: now, or anything.
fn time() -> impl Strategy<Value = Value> {
    prop_oneof![3 => Just(json!(unix_now())), 1 => json_value()]
}

/// Claims objects close to real ones (mostly right, as above).
fn claims_object() -> impl Strategy<Value = Value> {
    let sub = prop_oneof![
        12 => Just(json!("spiffe://example.org/w")),
        1 => Just(json!("spiffe://other.org/w")),
        1 => Just(json!("spiffe://example.org/../w")),
        1 => json_value(),
    ];
    let aud = prop_oneof![
        4 => Just(json!(AUDIENCE)),
        4 => Just(json!([AUDIENCE, "x"])),
        1 => Just(json!(["x"])),
        1 => json_value(),
    ];
    let exp = prop_oneof![
        12 => Just(json!(unix_now() + 600)),
        1 => Just(json!(0)),
        1 => Just(json!(i64::MAX)),
        1 => Just(json!(1e300)),
        1 => json_value(),
    ];
    (
        proptest::option::weighted(0.95, sub),
        proptest::option::weighted(0.95, aud),
        proptest::option::weighted(0.95, exp),
        proptest::option::weighted(0.2, time()),
        proptest::option::weighted(0.5, time()),
    )
        .prop_map(|(sub, aud, exp, nbf, iat)| {
            let mut claims = Map::new();
            for (name, member) in [
                ("sub", sub),
                ("aud", aud),
                ("exp", exp),
                ("nbf", nbf),
                ("iat", iat),
            ] {
                if let Some(member) = member {
                    claims.insert(name.to_owned(), member);
                }
            }
            Value::Object(claims)
        })
}

/// What a part of a token may decode to: close to real, or any JSON at all,
/// or bytes that are no JSON.
fn part() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

const B64URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary bytes as a token: refused, no panic.
    #[test]
    fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let signer = Signer::new()?;
        let token = String::from_utf8_lossy(&bytes);
        let result = signer.validate(&token);
        prop_assert!(result.is_err(), "{:?}", result);
    }

    /// Arbitrary strings with two dots: refused, no panic.
    #[test]
    fn arbitrary_three_part_strings_are_refused(
        parts in proptest::collection::vec(
            prop_oneof!["[A-Za-z0-9_-]{0,300}", "[A-Za-z0-9_=+/.-]{0,40}", any::<String>()],
            3,
        ),
    ) {
        let signer = Signer::new()?;
        let token = parts.join(".");
        let result = signer.validate(&token);
        prop_assert!(result.is_err(), "{:?}: {:?}", token, result);
    }

    /// base64url of any JSON (or other bytes) as header and claims, with any
    /// signature but a real one: refused, no panic. Even the best-formed
    /// header and claims get no further than the signature check.
    #[test]
    fn json_parts_without_a_valid_signature_are_refused(
        header in prop_oneof![
            1 => Just(good_header().to_string().into_bytes()),
            2 => header_object().prop_map(|v| v.to_string().into_bytes()),
            2 => part(),
        ],
        claims in prop_oneof![
            1 => Just(good_claims("spiffe://example.org/w").to_string().into_bytes()),
            2 => claims_object().prop_map(|v| v.to_string().into_bytes()),
            2 => part(),
        ],
        signature in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let signer = Signer::new()?;
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(&header),
            URL_SAFE_NO_PAD.encode(&claims),
            URL_SAFE_NO_PAD.encode(&signature),
        );
        let result = signer.validate(&token);
        prop_assert!(result.is_err(), "{:?}: {:?}", token, result);
        let good = header == good_header().to_string().into_bytes()
            && claims == good_claims("spiffe://example.org/w").to_string().into_bytes();
        if good {
            prop_assert_eq!(result, Err(ValidationError::BadSignature));
        }
    }

    /// A real token validates; changing any one character of it, or
    /// cutting it anywhere, gets it refused.
    #[test]
    fn any_change_to_a_signed_token_is_refused(
        path in "(/[A-Za-z0-9._-]{1,12}){1,4}",
        position in any::<usize>(),
        replacement in proptest::sample::select(format!("{B64URL}.=+/ ").chars().collect::<Vec<_>>()),
        cut in any::<usize>(),
    ) {
        prop_assume!(!path.split('/').any(|s| s == "." || s == ".."));
        let signer = Signer::new()?;
        let sub = format!("spiffe://{TD}{path}");
        let token = signer.sign(
            good_header().to_string().as_bytes(),
            good_claims(&sub).to_string().as_bytes(),
        )?;
        prop_assert_eq!(signer.validate(&token).map(|id| id.to_string()), Ok(sub));

        let at = position % token.len();
        let mut changed = token.clone().into_bytes();
        prop_assume!(changed[at] != replacement as u8);
        changed[at] = replacement as u8;
        let changed = String::from_utf8(changed).map_err(fail)?;
        let result = signer.validate(&changed);
        prop_assert!(result.is_err(), "{:?} at {}: {:?}", replacement, at, result);

        let cut = &token[..cut % token.len()];
        let result = signer.validate(cut);
        prop_assert!(result.is_err(), "cut at {}: {:?}", cut.len(), result);
    }
}

/// Random header and claims, really signed: no panic, and accepted only
/// when they are what a JWT-SVID may be: alg ES256 with this key, only
/// alg/kid/typ in the header, a subject in this trust domain, the audience,
/// an `exp` ahead. Some cases must pass, or the property says nothing.
#[test]
fn signed_near_tokens_pass_only_when_well_formed() {
    let signer = Signer::new().expect("a signer");
    let passed = std::cell::Cell::new(0u32);
    let mut runner = proptest::test_runner::TestRunner::new(config(256));
    let outcome = runner.run(&(header_object(), claims_object()), |(header, claims)| {
        let token = signer.sign(header.to_string().as_bytes(), claims.to_string().as_bytes())?;
        let Ok(id) = signer.validate(&token) else {
            return Ok(());
        };
        passed.set(passed.get() + 1);
        prop_assert_eq!(header.get("alg"), Some(&json!("ES256")));
        prop_assert_eq!(header.get("kid"), Some(&json!(KID)));
        let names: Vec<&String> = header
            .as_object()
            .map(|h| h.keys().collect())
            .unwrap_or_default();
        prop_assert!(
            names
                .iter()
                .all(|n| ["alg", "kid", "typ"].contains(&n.as_str())),
            "{:?}",
            names
        );
        prop_assert_eq!(claims.get("sub"), Some(&json!(id.as_str())));
        prop_assert_eq!(id.trust_domain_name(), TD);
        let aud = claims.get("aud");
        let holds = aud == Some(&json!(AUDIENCE))
            || aud
                .and_then(Value::as_array)
                .is_some_and(|a| a.contains(&json!(AUDIENCE)));
        prop_assert!(holds, "{:?}", aud);
        let exp = claims.get("exp").and_then(Value::as_i64);
        prop_assert!(exp.is_some_and(|exp| exp > unix_now() - 5), "{:?}", exp);
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    eprintln!(
        "{} of {} signed tokens were well formed",
        passed.get(),
        runner.config().cases
    );
    assert!(passed.get() > 0, "no generated token was well formed");
}

proptest! {
    #![proptest_config(config(48))]

    /// Tokens of any size up to 1 MiB are answered (refused), quickly: past
    /// MAX_TOKEN_LEN before anything is decoded.
    #[test]
    fn tokens_up_to_a_megabyte_are_refused_quickly(
        len in prop_oneof![0usize..=MAX_TOKEN_LEN + 16, 0usize..=(1 << 20)],
        pattern in prop_oneof![
            Just(".".to_owned()),
            Just("a".to_owned()),
            Just("a.".to_owned()),
            Just("eyJ".to_owned()),
            "[A-Za-z0-9_.-]{1,16}",
        ],
    ) {
        let signer = Signer::new()?;
        let token: String = pattern.chars().cycle().take(len).collect();
        let started = Instant::now();
        let result = signer.validate(&token);
        let took = started.elapsed();
        prop_assert!(result.is_err(), "{} bytes of {:?}: {:?}", len, pattern, result);
        if token.len() > MAX_TOKEN_LEN {
            prop_assert_eq!(result, Err(ValidationError::TooLong));
        }
        prop_assert!(took < Duration::from_millis(500), "{} bytes of {:?} took {:?}", len, pattern, took);
    }
}
