//! How a cloud verifies a third-party OIDC token, independently of Lanyard:
//! discovery document over HTTPS → `jwks_uri` → key by `kid` → signature
//! (jsonwebtoken) → claims, against the emulator's clock. Each service picks
//! its algorithms, skews and limits through [`Rules`] and maps the typed
//! [`Rejection`] to its own error codes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::Value;

use super::shared::lock;

/// How a cloud reaches an issuer: its URL (exactly the `iss` of its tokens
/// and the `issuer` of its discovery document) and the CA certificates (PEM)
/// it trusts for that HTTPS connection, and no others.
#[derive(Debug, Clone)]
pub struct IssuerTrust {
    pub issuer: String,
    pub ca_pem: Vec<u8>,
}

/// Why a token was refused, before any service-specific rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not a compact JWS: {0}")]
    Malformed(String),
    #[error("signing algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("no key {kid:?} in the issuer's JWKS")]
    UnknownKey { kid: Option<String> },
    #[error("signature does not verify")]
    BadSignature,
    #[error("issuer keys could not be fetched: {0}")]
    Unreachable(String),
    #[error("issuer discovery is unusable: {0}")]
    Discovery(String),
    #[error("token issuer {found:?} is not {expected:?}")]
    Issuer {
        expected: String,
        found: Option<String>,
    },
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("token issued in the future at {iat} (now {now})")]
    IssuedInFuture { iat: i64, now: i64 },
    #[error("token lifetime {lifetime}s exceeds {max}s")]
    LifetimeTooLong { lifetime: i64, max: i64 },
}

/// The registered claims a cloud looks at, plus the whole claim set.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    /// `aud` as a list, whether the token has a string or an array.
    pub aud: Vec<String>,
    pub exp: Option<i64>,
    pub iat: Option<i64>,
    pub nbf: Option<i64>,
    pub raw: Value,
}

impl Claims {
    pub fn from_value(raw: Value) -> Self {
        let string = |name: &str| raw.get(name).and_then(Value::as_str).map(str::to_owned);
        // NumericDate may be fractional (RFC 7519 §2); whole seconds suffice.
        let date = |name: &str| {
            raw.get(name)
                .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f.floor() as i64)))
        };
        let aud = match raw.get("aud") {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(many)) => many
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        Self {
            iss: string("iss"),
            sub: string("sub"),
            aud,
            exp: date("exp"),
            iat: date("iat"),
            nbf: date("nbf"),
            raw,
        }
    }

    /// Checks `exp`, `nbf`, `iat` and the lifetime against `now`.
    pub fn check_times(&self, rules: &Rules, now: i64) -> Result<(), Rejection> {
        let exp = self.exp.ok_or(Rejection::MissingClaim("exp"))?;
        if now > exp.saturating_add(rules.exp_leeway) {
            return Err(Rejection::Expired { exp, now });
        }
        if let Some(nbf) = self.nbf
            && now.saturating_add(rules.nbf_leeway) < nbf
        {
            return Err(Rejection::NotYetValid { nbf, now });
        }
        match self.iat {
            None if rules.require_iat => return Err(Rejection::MissingClaim("iat")),
            None => {}
            Some(iat) => {
                if let Some(leeway) = rules.iat_future_leeway
                    && now.saturating_add(leeway) < iat
                {
                    return Err(Rejection::IssuedInFuture { iat, now });
                }
                if let Some(max) = rules.max_lifetime
                    && exp.saturating_sub(iat) > max
                {
                    return Err(Rejection::LifetimeTooLong {
                        lifetime: exp.saturating_sub(iat),
                        max,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A token whose signature verified with a key the issuer publishes.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub header: Header,
    pub claims: Claims,
}

/// One service's rules for third-party tokens.
#[derive(Debug, Clone)]
pub struct Rules {
    pub algorithms: Vec<Algorithm>,
    /// Whether `iss` must equal the verifier's issuer.
    pub check_issuer: bool,
    /// Seconds a token stays acceptable after `exp`.
    pub exp_leeway: i64,
    /// Seconds a token is acceptable before `nbf`.
    pub nbf_leeway: i64,
    pub require_iat: bool,
    /// Refuse an `iat` more than this many seconds ahead of now.
    pub iat_future_leeway: Option<i64>,
    /// Largest accepted `exp - iat`, in seconds.
    pub max_lifetime: Option<i64>,
}

/// Reads a token's header and claims without verifying anything, as a cloud
/// does to find out which issuer (and so which keys) a token claims.
pub fn peek(token: &str) -> Result<(Header, Claims), Rejection> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| Rejection::Malformed(e.to_string()))?;
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|e| Rejection::Malformed(e.to_string()))?;
    if !claims.is_object() {
        return Err(Rejection::Malformed("claims are not a JSON object".into()));
    }
    Ok((header, Claims::from_value(claims)))
}

/// The name of an algorithm as it appears in a JOSE header.
pub fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{alg:?}"))
}

#[derive(Debug)]
enum KeySource {
    /// Discovery document and JWKS fetched over HTTPS with this client.
    Discovery(reqwest::Client),
    /// A JWKS uploaded to the cloud (GCP's `jwks_json`): nothing is fetched.
    Uploaded(Arc<Vec<Jwk>>),
}

/// Verifies tokens of one issuer. Keys are fetched on first use and cached;
/// a token naming a `kid` not in the cache triggers one refetch, after which
/// an unknown `kid` is refused.
#[derive(Debug)]
pub struct Verifier {
    issuer: String,
    source: KeySource,
    cache: Mutex<Option<Arc<Vec<Jwk>>>>,
}

/// AWS and Entra use at most the first 100 keys of a JWKS (DESIGN.md,
/// "Cloud limits").
const MAX_KEYS: usize = 100;

impl Verifier {
    /// A verifier that discovers the issuer's keys over HTTPS, trusting
    /// only `trust.ca_pem`.
    pub fn discovering(trust: &IssuerTrust) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none());
        let certs =
            reqwest::Certificate::from_pem_bundle(&trust.ca_pem).context("issuer CA is not PEM")?;
        anyhow::ensure!(!certs.is_empty(), "issuer CA PEM holds no certificate");
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
        Ok(Self {
            issuer: trust.issuer.clone(),
            source: KeySource::Discovery(builder.build()?),
            cache: Mutex::new(None),
        })
    }

    /// A verifier for `issuer` that uses an uploaded JWKS document.
    pub fn with_jwks(issuer: &str, jwks_json: &str) -> anyhow::Result<Self> {
        let doc: Value = serde_json::from_str(jwks_json).context("uploaded JWKS is not JSON")?;
        let keys = parse_jwks(&doc).map_err(|e| anyhow::anyhow!("uploaded JWKS: {e}"))?;
        Ok(Self {
            issuer: issuer.to_owned(),
            source: KeySource::Uploaded(Arc::new(keys)),
            cache: Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signature only: the algorithm must be one of `algorithms` and the key
    /// one the issuer publishes under the token's `kid`.
    pub async fn verify_signature(
        &self,
        token: &str,
        algorithms: &[Algorithm],
    ) -> Result<VerifiedToken, Rejection> {
        let (header, _) = peek(token)?;
        if !algorithms.contains(&header.alg) {
            return Err(Rejection::Algorithm(alg_name(header.alg)));
        }
        let kid = header
            .kid
            .clone()
            .ok_or(Rejection::UnknownKey { kid: None })?;
        let jwk = self.key(&kid).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| Rejection::BadSignature)?;
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                    Rejection::Malformed(e.to_string())
                }
                _ => Rejection::BadSignature,
            }
        })?;
        Ok(VerifiedToken {
            header: data.header,
            claims: Claims::from_value(data.claims),
        })
    }

    /// Signature, then `iss`, then times, in that order.
    pub async fn verify(
        &self,
        token: &str,
        rules: &Rules,
        now: i64,
    ) -> Result<VerifiedToken, Rejection> {
        let verified = self.verify_signature(token, &rules.algorithms).await?;
        if rules.check_issuer && verified.claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(Rejection::Issuer {
                expected: self.issuer.clone(),
                found: verified.claims.iss.clone(),
            });
        }
        verified.claims.check_times(rules, now)?;
        Ok(verified)
    }

    async fn key(&self, kid: &str) -> Result<Jwk, Rejection> {
        let find = |keys: &[Jwk]| {
            keys.iter()
                .find(|k| k.common.key_id.as_deref() == Some(kid))
                .cloned()
        };
        let cached = lock(&self.cache).clone();
        if let Some(keys) = cached
            && let Some(jwk) = find(&keys)
        {
            return Ok(jwk);
        }
        let fresh = Arc::new(self.fetch_keys().await?);
        *lock(&self.cache) = Some(fresh.clone());
        find(&fresh).ok_or_else(|| Rejection::UnknownKey {
            kid: Some(kid.to_owned()),
        })
    }

    async fn fetch_keys(&self) -> Result<Vec<Jwk>, Rejection> {
        let client = match &self.source {
            KeySource::Uploaded(keys) => return Ok(keys.as_ref().clone()),
            KeySource::Discovery(client) => client,
        };
        // OIDC Discovery 1.0 §4: the document lives at the issuer with
        // "/.well-known/openid-configuration" appended (trailing "/" removed).
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let doc = get_json(client, &url).await?;
        // §4.3: the issuer in the document MUST be identical to the URL used
        // to retrieve it.
        let named = doc.get("issuer").and_then(Value::as_str);
        if named != Some(self.issuer.as_str()) {
            return Err(Rejection::Discovery(format!(
                "discovery document names issuer {named:?}, expected {:?}",
                self.issuer
            )));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| Rejection::Discovery("discovery document has no jwks_uri".into()))?;
        // Clouds fetch keys over HTTPS only.
        if !jwks_uri.starts_with("https://") {
            return Err(Rejection::Discovery(format!(
                "jwks_uri {jwks_uri} is not https"
            )));
        }
        let jwks = get_json(client, jwks_uri).await?;
        parse_jwks(&jwks)
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, Rejection> {
    let unreachable = |e: reqwest::Error| Rejection::Unreachable(format!("GET {url}: {e}"));
    let response = client.get(url).send().await.map_err(unreachable)?;
    let response = response.error_for_status().map_err(unreachable)?;
    response.json::<Value>().await.map_err(unreachable)
}

/// The usable keys of a JWKS document (at most [`MAX_KEYS`]); keys of kinds
/// jsonwebtoken cannot read are skipped, as a cloud skips keys it cannot use.
fn parse_jwks(doc: &Value) -> Result<Vec<Jwk>, Rejection> {
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| Rejection::Discovery("JWKS has no \"keys\" array".into()))?;
    Ok(keys
        .iter()
        .take(MAX_KEYS)
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            algorithms: vec![Algorithm::ES256],
            check_issuer: true,
            exp_leeway: 300,
            nbf_leeway: 0,
            require_iat: true,
            iat_future_leeway: None,
            max_lifetime: Some(3600),
        }
    }

    #[test]
    fn times_honour_leeway_and_lifetime() {
        let claims = Claims::from_value(serde_json::json!({"exp": 1000, "iat": 700, "aud": "a"}));
        assert_eq!(claims.aud, vec!["a".to_owned()]);
        assert!(claims.check_times(&rules(), 1300).is_ok());
        assert_eq!(
            claims.check_times(&rules(), 1301),
            Err(Rejection::Expired {
                exp: 1000,
                now: 1301
            })
        );
        let long = Claims::from_value(serde_json::json!({"exp": 5000, "iat": 1000}));
        assert!(matches!(
            long.check_times(&rules(), 1000),
            Err(Rejection::LifetimeTooLong { .. })
        ));
        let no_iat = Claims::from_value(serde_json::json!({"exp": 5000}));
        assert_eq!(
            no_iat.check_times(&rules(), 1000),
            Err(Rejection::MissingClaim("iat"))
        );
    }

    #[test]
    fn peek_refuses_garbage() {
        assert!(matches!(peek("not-a-jwt"), Err(Rejection::Malformed(_))));
    }
}
