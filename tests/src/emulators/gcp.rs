//! Google Cloud Workload Identity Federation: the Security Token Service
//! token exchange (`sts.googleapis.com/v1/token`) for one OIDC workload
//! identity pool provider, and IAM Credentials `generateAccessToken`
//! (`iamcredentials.googleapis.com`) for service-account impersonation, on
//! one base URL.
//!
//! Sources for the rules (cited where they are applied):
//! - STS REST reference, `v1/token` (request fields, subject token
//!   requirements: `kid`, `alg`, `iat` in the past, `exp` less than 48 hours
//!   after `iat`): <https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token>
//! - `WorkloadIdentityPoolProvider.Oidc.allowed_audiences`: when empty, the
//!   token's `aud` must be the provider's full canonical resource name, with
//!   or without the `https:` prefix.
//! - "Workload Identity Federation with other providers": RS256/ES256,
//!   `google.subject` at most 127 bytes, uploaded `jwks_json`.
//! - IAM Credentials REST reference, `projects.serviceAccounts.generateAccessToken`
//!   (`scope`, `lifetime` up to 3600s by default, `accessToken`/`expireTime`).
//! - "Workload Identity Federation", attribute mappings: `attribute.NAME`
//!   (NAME of `[a-z_][a-z0-9_]*`, at most 100 characters) from a CEL
//!   expression over `assertion`, and `principalSet://…/attribute.NAME/VALUE`
//!   as an IAM member for every identity with that attribute value.
//! - Error texts as seen from the real service in public bug reports
//!   (google-github-actions/auth #60, #211, #370; terraform-example-foundation #1362).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use super::oidc::{IssuerTrust, Rejection, Rules, Verifier};
use super::shared::{
    Clock, Listener, Record, URL_SAFE, bearer, json_response, lock, parse_form, random_string,
    rfc3339,
};

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const SUBJECT_TOKEN_TYPES: [&str; 2] = [
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
];
/// `exp` must be less than 48 hours after `iat` (STS reference, subjectToken).
const MAX_LIFETIME_SECONDS: i64 = 48 * 3600;
/// `google.subject` may not exceed 127 bytes.
const MAX_SUBJECT_BYTES: usize = 127;
const FEDERATED_TOKEN_SECONDS: i64 = 3600;
/// generateAccessToken's `lifetime` defaults to, and without the
/// lifetime-extension org policy may not exceed, one hour.
const MAX_ACCESS_TOKEN_SECONDS: i64 = 3600;

#[derive(Debug, Clone)]
pub struct GcpConfig {
    /// The provider's `issuer-uri`, and how Google reaches it.
    pub issuer: IssuerTrust,
    /// An uploaded JWKS (`--jwk-json-path`): keys are not fetched at all.
    pub jwks_json: Option<String>,
    pub project_number: String,
    pub pool: String,
    pub provider: String,
    /// `--allowed-audiences`; empty means the documented default.
    pub allowed_audiences: Vec<String>,
    /// `--attribute-condition`, of the exact form `assertion.sub == '…'`.
    pub subject_condition: Option<String>,
    /// `--attribute-mapping` beyond `google.subject=assertion.sub`, as
    /// (`attribute.NAME`, `assertion.CLAIM` or `assertion['CLAIM']`).
    pub attribute_mapping: Vec<(String, String)>,
    pub service_accounts: Vec<GcpServiceAccount>,
}

impl GcpConfig {
    /// `//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/PR`,
    /// the `audience` of the token exchange.
    pub fn provider_resource(&self) -> String {
        format!(
            "//iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/{}/providers/{}",
            self.project_number, self.pool, self.provider
        )
    }

    /// The principal a federated `subject` becomes.
    pub fn principal(&self, subject: &str) -> String {
        format!(
            "principal://iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/{}/subject/{subject}",
            self.project_number, self.pool
        )
    }

    fn pool_set(&self) -> String {
        format!(
            "principalSet://iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/{}/*",
            self.project_number, self.pool
        )
    }

    /// The member for every identity whose attribute `name` is `value`.
    pub fn attribute_set(&self, name: &str, value: &str) -> String {
        format!(
            "principalSet://iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/{}/attribute.{name}/{value}",
            self.project_number, self.pool
        )
    }
}

/// A service account and the principals holding
/// `roles/iam.workloadIdentityUser` (or Token Creator) on it.
#[derive(Debug, Clone)]
pub struct GcpServiceAccount {
    pub email: String,
    pub members: Vec<String>,
}

/// A federated access token from the token exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpFederatedToken {
    pub access_token: String,
    /// `google.subject`, i.e. the token's `sub`.
    pub subject: String,
    pub principal: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Mapped custom attributes, by name without `attribute.`.
    pub attributes: Vec<(String, String)>,
}

/// A service-account access token from `generateAccessToken`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpAccessToken {
    pub access_token: String,
    pub service_account: String,
    pub subject: String,
    pub scopes: Vec<String>,
    /// RFC 3339, as in the response.
    pub expire_time: String,
}

/// A running GCP emulator; stops when dropped.
#[derive(Debug)]
pub struct Gcp {
    listener: Listener,
    state: Arc<GcpState>,
}

#[derive(Debug)]
struct GcpState {
    config: GcpConfig,
    condition_subject: Option<String>,
    /// (attribute name, claim) pairs.
    mapping: Vec<(String, String)>,
    verifier: Verifier,
    clock: Clock,
    federated: Record<GcpFederatedToken>,
    access_tokens: Record<GcpAccessToken>,
    live: Mutex<HashMap<String, GcpFederatedToken>>,
}

impl Gcp {
    pub async fn start(config: GcpConfig) -> anyhow::Result<Self> {
        Self::start_with_clock(config, Clock::new()).await
    }

    pub async fn start_with_clock(config: GcpConfig, clock: Clock) -> anyhow::Result<Self> {
        let condition_subject = config
            .subject_condition
            .as_deref()
            .map(parse_condition)
            .transpose()?;
        let mapping = config
            .attribute_mapping
            .iter()
            .map(|(target, source)| parse_mapping(target, source))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let verifier = match &config.jwks_json {
            Some(jwks) => Verifier::with_jwks(&config.issuer.issuer, jwks)?,
            None => Verifier::discovering(&config.issuer)?,
        };
        let state = GcpState {
            config,
            condition_subject,
            mapping,
            verifier,
            clock,
            federated: Record::new(),
            access_tokens: Record::new(),
            live: Mutex::new(HashMap::new()),
        };
        let routes = Router::new().route("/v1/token", post(exchange)).route(
            "/v1/projects/{project}/serviceAccounts/{name}",
            post(generate_access_token),
        );
        let (listener, state) = Listener::serve(routes, state).await?;
        Ok(Self { listener, state })
    }

    /// Base URL of both the STS and the IAM Credentials endpoints.
    pub fn url(&self) -> String {
        self.listener.url()
    }

    /// The `token_url` for a credential configuration: `<url>/v1/token`.
    pub fn token_url(&self) -> String {
        format!("{}/v1/token", self.url())
    }

    pub fn clock(&self) -> Clock {
        self.state.clock.clone()
    }

    pub fn config(&self) -> &GcpConfig {
        &self.state.config
    }

    pub fn federated_tokens(&self) -> Vec<GcpFederatedToken> {
        self.state.federated.snapshot()
    }

    pub fn access_tokens(&self) -> Vec<GcpAccessToken> {
        self.state.access_tokens.snapshot()
    }
}

/// `attribute.NAME` and `assertion.CLAIM` / `assertion['CLAIM']` of one
/// mapping → (NAME, CLAIM), refused as `gcloud` would refuse them.
fn parse_mapping(target: &str, source: &str) -> anyhow::Result<(String, String)> {
    let name = target
        .strip_prefix("attribute.")
        .filter(|n| {
            (1..=100).contains(&n.len())
                && n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .with_context(|| format!("invalid attribute name {target:?}"))?;
    let claim = source
        .strip_prefix("assertion.")
        .or_else(|| {
            source
                .strip_prefix("assertion['")
                .and_then(|r| r.strip_suffix("']"))
        })
        .filter(|c| !c.is_empty())
        .with_context(|| format!("unsupported attribute mapping expression {source:?}"))?;
    Ok((name.to_owned(), claim.to_owned()))
}

/// `assertion.sub == 'value'` (or with double quotes) → `value`.
fn parse_condition(text: &str) -> anyhow::Result<String> {
    let rest = text
        .trim()
        .strip_prefix("assertion.sub")
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix("=="))
        .map(str::trim)
        .with_context(|| format!("unsupported attribute condition {text:?}"))?;
    let quoted = rest
        .strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .or_else(|| rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')))
        .with_context(|| format!("attribute condition {text:?} does not compare to a string"))?;
    Ok(quoted.to_owned())
}

/// An OAuth 2.0 error from the STS (HTTP 400).
fn oauth_error(error: &str, description: impl Into<String>) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": error, "error_description": description.into()}),
    )
}

/// A Google API error (`google.rpc.Status` in JSON).
fn api_error(status: StatusCode, message: &str, code_name: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"code": status.as_u16(), "message": message, "status": code_name}}),
    )
}

fn internal(error: &anyhow::Error) -> Response {
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &error.to_string(),
        "INTERNAL",
    )
}

/// The request's fields, from JSON (camelCase, as the REST reference names
/// them) or an RFC 8693 form (snake_case, as client libraries send it);
/// either spelling is accepted in either encoding. An unreadable body
/// yields the `invalid_request` description.
fn request_fields(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, String> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let raw: HashMap<String, String> = if is_json {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("Invalid JSON payload: {e}"))?;
        let Some(object) = value.as_object() else {
            return Err("Invalid JSON payload".to_owned());
        };
        object
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
            .collect()
    } else {
        parse_form(body)
    };
    let mut fields = HashMap::new();
    for (camel, snake) in [
        ("grantType", "grant_type"),
        ("audience", "audience"),
        ("scope", "scope"),
        ("requestedTokenType", "requested_token_type"),
        ("subjectToken", "subject_token"),
        ("subjectTokenType", "subject_token_type"),
    ] {
        if let Some(value) = raw.get(camel).or_else(|| raw.get(snake)) {
            fields.insert(snake.to_owned(), value.clone());
        }
    }
    Ok(fields)
}

async fn exchange(State(state): State<Arc<GcpState>>, headers: HeaderMap, body: Bytes) -> Response {
    match exchange_inner(&state, &headers, &body).await {
        Ok(response) | Err(response) => response,
    }
}

async fn exchange_inner(
    state: &GcpState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Response> {
    let config = &state.config;
    let fields =
        request_fields(headers, body).map_err(|text| oauth_error("invalid_request", text))?;
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or("");

    if field("grant_type") != GRANT_TYPE {
        return Err(oauth_error(
            "invalid_request",
            format!("Invalid value for \"grant_type\". Expected \"{GRANT_TYPE}\"."),
        ));
    }
    if field("requested_token_type") != ACCESS_TOKEN_TYPE {
        return Err(oauth_error(
            "invalid_request",
            format!(
                "Invalid value for \"requested_token_type\". Expected \"{ACCESS_TOKEN_TYPE}\"."
            ),
        ));
    }
    if !SUBJECT_TOKEN_TYPES.contains(&field("subject_token_type")) {
        return Err(oauth_error(
            "invalid_request",
            "Invalid value for \"subject_token_type\".",
        ));
    }
    // The audience is the provider's full resource name.
    let audience = field("audience");
    let parts: Vec<&str> = audience
        .strip_prefix("//iam.googleapis.com/")
        .unwrap_or("")
        .split('/')
        .collect();
    let well_formed = parts.len() == 8
        && parts[0] == "projects"
        && parts[2] == "locations"
        && parts[4] == "workloadIdentityPools"
        && parts[6] == "providers"
        && parts.iter().all(|p| !p.is_empty());
    if !well_formed {
        return Err(oauth_error(
            "invalid_request",
            "Invalid value for \"audience\". This value should be the full resource name of the Identity Provider. See https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token for the list of possible formats.",
        ));
    }
    if audience != config.provider_resource() {
        return Err(oauth_error(
            "invalid_target",
            "The target service indicated by the \"audience\" parameters is invalid. This might either be because the pool or provider is disabled or deleted or because it doesn't exist.",
        ));
    }
    let token = field("subject_token");
    if token.is_empty() {
        return Err(oauth_error(
            "invalid_request",
            "Invalid value for \"subject_token\".",
        ));
    }

    // Subject token: `kid` and `alg` RS256 or ES256.
    let verified = state
        .verifier
        .verify_signature(token, &[Algorithm::RS256, Algorithm::ES256])
        .await
        .map_err(grant_error)?;
    let claims = verified.claims;
    if claims.iss.as_deref() != Some(config.issuer.issuer.as_str()) {
        return Err(oauth_error(
            "invalid_grant",
            format!(
                "The issuer in ID Token {} does not match the expected ISS {}.",
                claims.iss.unwrap_or_default(),
                config.issuer.issuer
            ),
        ));
    }
    // allowed_audiences, or by default the provider's canonical resource
    // name with or without the https: prefix.
    let default_audiences = [
        config.provider_resource(),
        format!("https:{}", config.provider_resource()),
    ];
    let allowed: Vec<&str> = if config.allowed_audiences.is_empty() {
        default_audiences.iter().map(String::as_str).collect()
    } else {
        config
            .allowed_audiences
            .iter()
            .map(String::as_str)
            .collect()
    };
    if !claims.aud.iter().any(|a| allowed.contains(&a.as_str())) {
        return Err(oauth_error(
            "invalid_grant",
            "The audience in JWT does not match the expected values.",
        ));
    }
    // `iat` in the past, `exp` less than 48 hours after it; no skew is
    // documented, so none is allowed.
    let rules = Rules {
        algorithms: Vec::new(),
        check_issuer: false,
        exp_leeway: 0,
        nbf_leeway: 0,
        require_iat: true,
        iat_future_leeway: Some(0),
        max_lifetime: Some(MAX_LIFETIME_SECONDS),
    };
    let now = state.clock.now();
    claims.check_times(&rules, now).map_err(grant_error)?;

    // google.subject = assertion.sub, at most 127 bytes.
    let subject = claims.sub.clone().unwrap_or_default();
    if subject.is_empty() {
        return Err(oauth_error(
            "invalid_grant",
            "The mapped attribute google.subject is empty.",
        ));
    }
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err(oauth_error(
            "invalid_grant",
            format!(
                "The mapped attribute google.subject exceeds the {MAX_SUBJECT_BYTES} bytes limit."
            ),
        ));
    }
    if let Some(wanted) = &state.condition_subject
        && *wanted != subject
    {
        return Err(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "unauthorized_client", "error_description": "The given credential is rejected by the attribute condition."}),
        ));
    }

    let access_token = random_string(URL_SAFE, 160)
        .map(|r| format!("ya29.d.{r}"))
        .map_err(|e| internal(&e))?;
    // A mapped claim that is absent maps to nothing; one that is not a
    // string is an error of the mapping.
    let mut attributes = Vec::new();
    for (name, claim) in &state.mapping {
        match claims.raw.get(claim) {
            None => {}
            Some(Value::String(value)) => attributes.push((name.clone(), value.clone())),
            Some(_) => {
                return Err(oauth_error(
                    "invalid_grant",
                    format!(
                        "The attribute mapping for attribute.{name} must evaluate to a string."
                    ),
                ));
            }
        }
    }
    let federated = GcpFederatedToken {
        access_token: access_token.clone(),
        principal: config.principal(&subject),
        subject,
        expires_at: now + FEDERATED_TOKEN_SECONDS,
        attributes,
    };
    lock(&state.live).insert(access_token.clone(), federated.clone());
    state.federated.push(federated);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "access_token": access_token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": FEDERATED_TOKEN_SECONDS,
        }),
    ))
}

fn grant_error(rejection: Rejection) -> Response {
    let description = match &rejection {
        Rejection::Expired { .. } => "The subject token has expired.".to_owned(),
        Rejection::Algorithm(alg) => {
            format!("The subject token is signed with {alg}; only RS256 and ES256 are supported.")
        }
        Rejection::UnknownKey { kid } => format!(
            "The key {} used to sign the subject token was not found in the provider's JWKS.",
            kid.as_deref().unwrap_or("(no kid)")
        ),
        Rejection::BadSignature => "Invalid JWT signature.".to_owned(),
        Rejection::Unreachable(detail) | Rejection::Discovery(detail) => {
            format!("Unable to retrieve the keys of the identity provider: {detail}")
        }
        other => other.to_string(),
    };
    oauth_error("invalid_grant", description)
}

async fn generate_access_token(
    State(state): State<Arc<GcpState>>,
    Path((_project, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = &state.config;
    let Some(email) = name.strip_suffix(":generateAccessToken") else {
        return api_error(
            StatusCode::NOT_FOUND,
            "Requested entity was not found.",
            "NOT_FOUND",
        );
    };
    let now = state.clock.now();
    let caller = bearer(&headers).and_then(|t| lock(&state.live).get(&t).cloned());
    let Some(caller) = caller.filter(|c| c.expires_at > now) else {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            "UNAUTHENTICATED",
        );
    };
    // The caller's principal needs roles/iam.workloadIdentityUser on the
    // account; a missing account is indistinguishable from a denied one.
    let allowed = config
        .service_accounts
        .iter()
        .find(|sa| sa.email == email)
        .is_some_and(|sa| {
            sa.members.iter().any(|m| {
                *m == caller.principal
                    || *m == config.pool_set()
                    || caller
                        .attributes
                        .iter()
                        .any(|(name, value)| *m == config.attribute_set(name, value))
            })
        });
    if !allowed {
        return api_error(
            StatusCode::FORBIDDEN,
            "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
            "PERMISSION_DENIED",
        );
    }
    let invalid = |message: &str| api_error(StatusCode::BAD_REQUEST, message, "INVALID_ARGUMENT");
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return invalid("Invalid JSON payload received.");
    };
    let scopes: Vec<String> = request
        .get("scope")
        .and_then(Value::as_array)
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if scopes.is_empty() {
        return invalid("Scope required.");
    }
    let lifetime = match request.get("lifetime").and_then(Value::as_str) {
        None => MAX_ACCESS_TOKEN_SECONDS,
        Some(text) => match text
            .strip_suffix('s')
            .and_then(|n| n.parse::<f64>().ok())
            .map(|n| n.ceil() as i64)
        {
            Some(n) if (1..=MAX_ACCESS_TOKEN_SECONDS).contains(&n) => n,
            _ => {
                return invalid(&format!(
                    "Invalid value for lifetime {text:?}: must be between 1s and {MAX_ACCESS_TOKEN_SECONDS}s."
                ));
            }
        },
    };
    let Ok(random) = random_string(URL_SAFE, 180) else {
        return internal(&anyhow::anyhow!("system RNG failed"));
    };
    let issued = GcpAccessToken {
        access_token: format!("ya29.c.{random}"),
        service_account: email.to_owned(),
        subject: caller.subject,
        scopes,
        expire_time: rfc3339(now + lifetime),
    };
    state.access_tokens.push(issued.clone());
    json_response(
        StatusCode::OK,
        &json!({"accessToken": issued.access_token, "expireTime": issued.expire_time}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse() -> anyhow::Result<()> {
        assert_eq!(
            parse_condition("assertion.sub == 'spiffe://x/a'")?,
            "spiffe://x/a"
        );
        assert_eq!(parse_condition("assertion.sub==\"b\"")?, "b");
        assert!(parse_condition("assertion.aud == 'x'").is_err());
        assert!(parse_condition("assertion.sub == x").is_err());
        Ok(())
    }
}
