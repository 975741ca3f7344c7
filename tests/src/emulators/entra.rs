//! Microsoft Entra ID's token endpoint for the client credentials grant
//! with a federated client assertion (workload identity federation):
//! `POST /{tenant}/oauth2/v2.0/token`, form in, JSON out.
//!
//! Sources for the rules (cited where they are applied):
//! - "Microsoft identity platform and the OAuth 2.0 client credentials flow"
//!   (form fields, `/.default` scope, the success body).
//! - "Important considerations and restrictions for federated identity
//!   credentials": only issuers signing with RS256 are supported; matching
//!   on issuer and subject (case-sensitive since 2025) and audience
//!   (`api://AzureADTokenExchange`).
//! - AADSTS codes and texts as the service returns them, from Microsoft's
//!   error-code reference and public reports: 700211/700212/700213 (no
//!   matching issuer/audience/subject), 7000272 (signing key not in the
//!   issuer's metadata), 5002738 (unsupported signature algorithm), 700024
//!   (assertion outside its valid time range), 70023 (external token
//!   lifetime over 1.01:00:00), 90061 (external OIDC endpoint failed),
//!   700016 (unknown application), 1002012 (scope without `/.default`),
//!   90002 (unknown tenant), 7000218 (no client assertion).
//! - Clock skew: not documented for federated assertions; this uses the
//!   5 minutes that Microsoft.IdentityModel validates with by default.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use jsonwebtoken::Algorithm;
use serde_json::json;

use super::oidc::{self, IssuerTrust, Rejection, Rules, Verifier};
use super::shared::{
    Clock, Listener, Record, URL_SAFE, json_response, parse_form, random_string, rfc3339_ticks,
    space_timestamp, uuid,
};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The audience a federated credential expects unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";
const SKEW_SECONDS: i64 = 300;
/// AADSTS70023: an external token may live at most 1.01:00:00 (25 hours).
const MAX_LIFETIME_SECONDS: i64 = 25 * 3600;
const WIF_DOC: &str = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation";
const TOKEN_SECONDS: i64 = 3599;

#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// How Entra reaches each federated issuer.
    pub issuer_trust: Vec<IssuerTrust>,
    pub tenant_id: String,
    pub applications: Vec<EntraApp>,
}

/// An app registration (or user-assigned managed identity).
#[derive(Debug, Clone)]
pub struct EntraApp {
    pub client_id: String,
    pub federated_credentials: Vec<FederatedCredential>,
}

#[derive(Debug, Clone)]
pub struct FederatedCredential {
    pub issuer: String,
    pub subject: String,
    /// Empty means [`DEFAULT_AUDIENCE`].
    pub audiences: Vec<String>,
}

/// One access token handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraIssued {
    pub client_id: String,
    pub scope: String,
    pub issuer: String,
    pub subject: String,
    pub access_token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// A running Entra emulator; stops when dropped.
#[derive(Debug)]
pub struct Entra {
    listener: Listener,
    state: Arc<EntraState>,
}

#[derive(Debug)]
struct EntraState {
    config: EntraConfig,
    verifiers: HashMap<String, Verifier>,
    clock: Clock,
    issued: Record<EntraIssued>,
}

impl Entra {
    pub async fn start(config: EntraConfig) -> anyhow::Result<Self> {
        Self::start_with_clock(config, Clock::new()).await
    }

    pub async fn start_with_clock(config: EntraConfig, clock: Clock) -> anyhow::Result<Self> {
        let mut verifiers = HashMap::new();
        for trust in &config.issuer_trust {
            verifiers.insert(trust.issuer.clone(), Verifier::discovering(trust)?);
        }
        let state = EntraState {
            config,
            verifiers,
            clock,
            issued: Record::new(),
        };
        let routes = Router::new().route("/{tenant}/oauth2/v2.0/token", post(token));
        let (listener, state) = Listener::serve(routes, state).await?;
        Ok(Self { listener, state })
    }

    /// The authority host, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.listener.url()
    }

    /// `<url>/<tenant>/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.url(),
            self.state.config.tenant_id
        )
    }

    pub fn clock(&self) -> Clock {
        self.state.clock.clone()
    }

    pub fn issued(&self) -> Vec<EntraIssued> {
        self.state.issued.snapshot()
    }
}

/// An AADSTS error body.
struct Aadsts {
    status: StatusCode,
    error: &'static str,
    code: u32,
    text: String,
}

impl Aadsts {
    fn new(status: StatusCode, error: &'static str, code: u32, text: impl Into<String>) -> Self {
        Self {
            status,
            error,
            code,
            text: text.into(),
        }
    }

    /// OAuth 2.0 (RFC 6749 §5.2): a failed client authentication is 401.
    fn client(code: u32, text: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", code, text)
    }

    fn request(code: u32, text: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", code, text)
    }

    fn into_response(self, now: i64) -> Response {
        let trace_id = uuid().unwrap_or_default();
        let correlation_id = uuid().unwrap_or_default();
        let timestamp = space_timestamp(now);
        json_response(
            self.status,
            &json!({
                "error": self.error,
                "error_description": format!(
                    "AADSTS{}: {} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}",
                    self.code, self.text
                ),
                "error_codes": [self.code],
                "timestamp": timestamp,
                "trace_id": trace_id,
                "correlation_id": correlation_id,
                "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
            }),
        )
    }
}

async fn token(
    State(state): State<Arc<EntraState>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let now = state.clock.now();
    match token_inner(&state, &tenant, &body, now).await {
        Ok(response) => response,
        Err(error) => error.into_response(now),
    }
}

async fn token_inner(
    state: &EntraState,
    tenant: &str,
    body: &[u8],
    now: i64,
) -> Result<Response, Aadsts> {
    let config = &state.config;
    if tenant != config.tenant_id {
        return Err(Aadsts::request(
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        ));
    }
    let form = parse_form(body);
    let field = |name: &str| form.get(name).map(String::as_str);
    let required = |name: &str| {
        field(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            Aadsts::request(
                900144,
                format!("The request body must contain the following parameter: '{name}'."),
            )
        })
    };
    let grant_type = required("grant_type")?;
    if grant_type != "client_credentials" {
        return Err(Aadsts::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = required("client_id")?;
    let scope = required("scope")?;
    // Client credentials: the scope is a resource's `/.default`.
    if !scope.split(' ').all(|s| s.ends_with("/.default")) {
        return Err(Aadsts::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    }
    let assertion = match (field("client_assertion_type"), field("client_assertion")) {
        (Some(ASSERTION_TYPE), Some(assertion)) if !assertion.is_empty() => assertion,
        _ => {
            return Err(Aadsts::client(
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
    };
    let app = config
        .applications
        .iter()
        .find(|a| a.client_id == client_id)
        .ok_or_else(|| {
            Aadsts::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."),
            )
        })?;

    let (header, unverified) = oidc::peek(assertion)
        .map_err(|_| Aadsts::request(50027, "JWT token is invalid or malformed."))?;
    // Only RS256 is supported for workload identity federation.
    if header.alg != Algorithm::RS256 {
        return Err(Aadsts::request(
            5002738,
            format!(
                "Invalid JWT token. '{}' is not a supported signature algorithm.",
                oidc::alg_name(header.alg)
            ),
        ));
    }
    // Federated credentials are found by the assertion's issuer (exact,
    // case-sensitive), then its subject, then its audience.
    let iss = unverified.iss.clone().unwrap_or_default();
    let by_issuer: Vec<&FederatedCredential> = app
        .federated_credentials
        .iter()
        .filter(|fic| fic.issuer == iss)
        .collect();
    if by_issuer.is_empty() {
        return Err(Aadsts::client(
            700211,
            format!(
                "No matching federated identity record found for presented assertion issuer '{iss}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WIF_DOC}"
            ),
        ));
    }
    let verifier = state
        .verifiers
        .get(&iss)
        .ok_or_else(|| Aadsts::request(90061, "Request to External OIDC endpoint failed."))?;
    let verified = verifier
        .verify_signature(assertion, &[Algorithm::RS256])
        .await
        .map_err(|rejection| match rejection {
            Rejection::Unreachable(_) | Rejection::Discovery(_) => {
                Aadsts::request(90061, "Request to External OIDC endpoint failed.")
            }
            Rejection::UnknownKey { kid } => Aadsts::client(
                7000272,
                format!("The certificate with identifier {} used to sign the federated credential could not be found in the metadata of identity provider {iss}. Please validate that your Identity Provider's metadata exposes the key used to sign the incoming token.", kid.unwrap_or_default()),
            ),
            Rejection::BadSignature => {
                Aadsts::client(700027, "Client assertion contains an invalid signature.")
            }
            _ => Aadsts::request(50027, "JWT token is invalid or malformed."),
        })?;
    let claims = verified.claims;

    // Valid time range, with skew.
    let window = Rules {
        algorithms: Vec::new(),
        check_issuer: false,
        exp_leeway: SKEW_SECONDS,
        nbf_leeway: SKEW_SECONDS,
        require_iat: false,
        iat_future_leeway: None,
        max_lifetime: None,
    };
    if let Err(rejection) = claims.check_times(&window, now) {
        let valid_from = claims.nbf.unwrap_or(0);
        let expiry = claims.exp.unwrap_or(0);
        return Err(match rejection {
            Rejection::MissingClaim(_) => {
                Aadsts::request(50027, "JWT token is invalid or malformed.")
            }
            _ => Aadsts::client(
                700024,
                format!(
                    "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                    rfc3339_ticks(now),
                    rfc3339_ticks(valid_from),
                    rfc3339_ticks(expiry)
                ),
            ),
        });
    }
    // An external token must carry `iat` and live at most 1.01:00:00.
    let (iat, exp) = (claims.iat.unwrap_or(0), claims.exp.unwrap_or(0));
    if claims.iat.is_none() || exp - iat > MAX_LIFETIME_SECONDS {
        return Err(Aadsts::request(
            70023,
            format!(
                "External OIDC Provider token must have a lifetime of less than or equal to 1.01:00:00. Token issued at {iat}. Token expires on {exp}."
            ),
        ));
    }
    let sub = claims.sub.clone().unwrap_or_default();
    let by_subject: Vec<&FederatedCredential> = by_issuer
        .into_iter()
        .filter(|fic| fic.subject == sub)
        .collect();
    if by_subject.is_empty() {
        return Err(Aadsts::client(
            700213,
            format!(
                "No matching federated identity record found for presented assertion subject '{sub}'. Check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WIF_DOC}"
            ),
        ));
    }
    let audience_matches = by_subject.iter().any(|fic| {
        let expected: Vec<&str> = if fic.audiences.is_empty() {
            vec![DEFAULT_AUDIENCE]
        } else {
            fic.audiences.iter().map(String::as_str).collect()
        };
        claims.aud.iter().any(|a| expected.contains(&a.as_str()))
    });
    if !audience_matches {
        return Err(Aadsts::client(
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WIF_DOC}",
                claims.aud.join(",")
            ),
        ));
    }

    let access_token = random_string(URL_SAFE, 400)
        .map(|r| format!("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{r}"))
        .map_err(|e| {
            Aadsts::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                50000,
                format!("There was an error issuing a token: {e}"),
            )
        })?;
    state.issued.push(EntraIssued {
        client_id: client_id.to_owned(),
        scope: scope.to_owned(),
        issuer: iss,
        subject: sub,
        access_token: access_token.clone(),
        expires_at: now + TOKEN_SECONDS,
    });
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": TOKEN_SECONDS,
            "ext_expires_in": TOKEN_SECONDS,
            "access_token": access_token,
        }),
    ))
}
