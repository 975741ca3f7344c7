//! HashiCorp Vault's JWT auth method configured with `oidc_discovery_url`
//! (and `oidc_discovery_ca_pem`): `POST /v1/auth/<mount>/login` with
//! `{"role", "jwt"}`, and `GET /v1/auth/token/lookup-self` for the tokens it
//! issues.
//!
//! Sources for the rules (cited where they are applied):
//! - JWT/OIDC auth method API docs and `vault-plugin-auth-jwt` (path_role.go:
//!   `clock_skew_leeway` defaults to 60 s, `expiration_leeway` and
//!   `not_before_leeway` to 150 s; path_login.go: login flow and messages,
//!   "audience claim found in JWT but no audiences bound to the role").
//! - `hashicorp/cap` jwt/jwt.go, the validator the plugin uses: order of
//!   checks (signature, alg, iss, sub, aud, times) and their messages, and
//!   how missing `exp`/`nbf` are derived; jwt/keyset.go for discovery (the
//!   document's issuer must equal the configured URL).
//! - Vault HTTP API: errors are `{"errors": [...]}`; an unknown token is
//!   403 "permission denied".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use super::oidc::{IssuerTrust, Rejection, Verifier};
use super::shared::{
    ALNUM, Clock, Listener, Record, bearer, json_response, lock, random_string, rfc3339, uuid,
};

/// `clock_skew_leeway` default.
const CLOCK_SKEW_LEEWAY: i64 = 60;
/// `expiration_leeway` / `not_before_leeway` defaults.
const CLAIM_DEFAULT_LEEWAY: i64 = 150;
/// The system default TTL (768h) when a role sets none.
const DEFAULT_TTL: u64 = 768 * 3600;

#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Where the auth method is enabled, e.g. "jwt" for `auth/jwt`.
    pub mount: String,
    /// `oidc_discovery_url` and `oidc_discovery_ca_pem`.
    pub issuer: IssuerTrust,
    pub bound_issuer: Option<String>,
    pub roles: Vec<VaultRole>,
}

/// A role of type `jwt`.
#[derive(Debug, Clone)]
pub struct VaultRole {
    pub name: String,
    pub bound_audiences: Vec<String>,
    pub bound_subject: Option<String>,
    pub user_claim: String,
    /// 0 means the system default.
    pub token_ttl_seconds: u64,
    pub token_policies: Vec<String>,
}

/// One Vault token issued by a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultIssued {
    pub client_token: String,
    pub accessor: String,
    pub role: String,
    /// The `user_claim` value (the entity alias name).
    pub alias: String,
    pub display_name: String,
    pub entity_id: String,
    pub policies: Vec<String>,
    pub ttl: u64,
    /// Unix seconds.
    pub issued_at: i64,
}

/// A running Vault emulator; stops when dropped.
#[derive(Debug)]
pub struct Vault {
    listener: Listener,
    state: Arc<VaultState>,
}

#[derive(Debug)]
struct VaultState {
    config: VaultConfig,
    verifier: Verifier,
    clock: Clock,
    issued: Record<VaultIssued>,
    entities: Mutex<HashMap<String, String>>,
}

impl Vault {
    pub async fn start(config: VaultConfig) -> anyhow::Result<Self> {
        Self::start_with_clock(config, Clock::new()).await
    }

    pub async fn start_with_clock(config: VaultConfig, clock: Clock) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !config.mount.is_empty()
                && !config.mount.starts_with('/')
                && !config.mount.ends_with('/'),
            "mount {:?} must be a path like \"jwt\"",
            config.mount
        );
        let state = VaultState {
            verifier: Verifier::discovering(&config.issuer)?,
            config,
            clock,
            issued: Record::new(),
            entities: Mutex::new(HashMap::new()),
        };
        let routes = Router::new()
            .route("/v1/auth/token/lookup-self", get(lookup_self))
            .route("/v1/auth/{*path}", post(login));
        let (listener, state) = Listener::serve(routes, state).await?;
        Ok(Self { listener, state })
    }

    /// `VAULT_ADDR`, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.listener.url()
    }

    /// `<url>/v1/auth/<mount>/login`.
    pub fn login_url(&self) -> String {
        format!("{}/v1/auth/{}/login", self.url(), self.state.config.mount)
    }

    pub fn clock(&self) -> Clock {
        self.state.clock.clone()
    }

    pub fn issued(&self) -> Vec<VaultIssued> {
        self.state.issued.snapshot()
    }
}

fn errors(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, &json!({"errors": [message.into()]}))
}

fn bad_request(message: impl Into<String>) -> Response {
    errors(StatusCode::BAD_REQUEST, message)
}

async fn login(
    State(state): State<Arc<VaultState>>,
    Path(path): Path<String>,
    body: Bytes,
) -> Response {
    if path != format!("{}/login", state.config.mount) {
        return errors(
            StatusCode::NOT_FOUND,
            format!("no handler for route \"auth/{path}\". route entry not found."),
        );
    }
    match login_inner(&state, &body).await {
        Ok(response) | Err(response) => response,
    }
}

async fn login_inner(state: &VaultState, body: &[u8]) -> Result<Response, Response> {
    let config = &state.config;
    let request: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|_| bad_request("error parsing JSON"))?
    };
    let field = |name: &str| request.get(name).and_then(Value::as_str).unwrap_or("");
    // `role` is a lower-cased string field.
    let role_name = field("role").to_lowercase();
    if role_name.is_empty() {
        return Err(bad_request("missing role"));
    }
    let role = config
        .roles
        .iter()
        .find(|r| r.name.to_lowercase() == role_name)
        .ok_or_else(|| bad_request(format!("role \"{role_name}\" could not be found")))?;
    let token = field("jwt");
    if token.is_empty() {
        return Err(bad_request("missing token"));
    }

    let claims = validate(state, role, token)
        .await
        .map_err(|reason| bad_request(format!("error validating token: {reason}")))?;
    // A role with no bound audiences refuses tokens that have one.
    if !claims.aud.is_empty() && role.bound_audiences.is_empty() {
        return Err(bad_request(
            "audience claim found in JWT but no audiences bound to the role",
        ));
    }
    let alias = match claims.raw.get(&role.user_claim) {
        None => {
            return Err(bad_request(format!(
                "claim \"{}\" not found in token",
                role.user_claim
            )));
        }
        Some(Value::String(value)) => value.clone(),
        Some(_) => {
            return Err(bad_request(format!(
                "claim \"{}\" could not be converted to string",
                role.user_claim
            )));
        }
    };

    let internal = |e: anyhow::Error| errors(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let client_token = random_string(ALNUM, 91)
        .map(|r| format!("hvs.{r}"))
        .map_err(internal)?;
    let accessor = random_string(ALNUM, 24).map_err(internal)?;
    let entity_id = {
        let mut entities = lock(&state.entities);
        match entities.get(&alias) {
            Some(id) => id.clone(),
            None => {
                let id = uuid().map_err(internal)?;
                entities.insert(alias.clone(), id.clone());
                id
            }
        }
    };
    // Every token carries the "default" policy; Vault sorts the list.
    let mut policies: Vec<String> = role.token_policies.clone();
    policies.push("default".into());
    policies.sort();
    policies.dedup();
    let ttl = if role.token_ttl_seconds == 0 {
        DEFAULT_TTL
    } else {
        role.token_ttl_seconds
    };
    let issued = VaultIssued {
        client_token: client_token.clone(),
        accessor: accessor.clone(),
        role: role_name.clone(),
        display_name: format!("{}-{alias}", config.mount.replace('/', "-")),
        alias,
        entity_id: entity_id.clone(),
        policies: policies.clone(),
        ttl,
        issued_at: state.clock.now(),
    };
    state.issued.push(issued);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "request_id": uuid().map_err(internal)?,
            "lease_id": "",
            "renewable": false,
            "lease_duration": 0,
            "data": null,
            "wrap_info": null,
            "warnings": null,
            "auth": {
                "client_token": client_token,
                "accessor": accessor,
                "policies": policies,
                "token_policies": policies,
                "metadata": {"role": role_name},
                "lease_duration": ttl,
                "renewable": true,
                "entity_id": entity_id,
                "token_type": "service",
                "orphan": true,
                "mfa_requirement": null,
                "num_uses": 0,
            },
        }),
    ))
}

/// The plugin's validation (cap's `Validator.Validate`), returning the
/// claims or the message Vault puts after "error validating token: ".
async fn validate(
    state: &VaultState,
    role: &VaultRole,
    token: &str,
) -> Result<super::oidc::Claims, String> {
    // With no `jwt_supported_algs`, every asymmetric algorithm is allowed.
    let algorithms = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::EdDSA,
    ];
    let verified = state
        .verifier
        .verify_signature(token, &algorithms)
        .await
        .map_err(|rejection| match rejection {
            Rejection::Algorithm(_) => {
                "invalid algorithm (alg) header parameter: token signed with unexpected algorithm"
                    .to_owned()
            }
            Rejection::Unreachable(detail) | Rejection::Discovery(detail) => format!(
                "error verifying token signature: fetching keys oidc: get keys failed: {detail}"
            ),
            Rejection::Malformed(detail) => {
                format!("error verifying token signature: oidc: malformed jwt: {detail}")
            }
            _ => "error verifying token signature: failed to verify id token signature".to_owned(),
        })?;
    let claims = verified.claims;
    if let Some(bound) = &state.config.bound_issuer
        && claims.iss.as_deref() != Some(bound.as_str())
    {
        return Err("invalid issuer (iss) claim".into());
    }
    if let Some(bound) = &role.bound_subject
        && claims.sub.as_deref() != Some(bound.as_str())
    {
        return Err("invalid subject (sub) claim".into());
    }
    if !role.bound_audiences.is_empty()
        && !role.bound_audiences.iter().any(|a| claims.aud.contains(a))
    {
        return Err(
            "invalid audience (aud) claim: audience claim does not match any expected audience"
                .into(),
        );
    }
    let (iat, mut exp, mut nbf) = (claims.iat, claims.exp, claims.nbf);
    if iat.is_none() && exp.is_none() && nbf.is_none() {
        return Err(
            "no issued at (iat), not before (nbf), or expiration time (exp) claims in token".into(),
        );
    }
    // A missing exp is the later of iat/nbf plus expiration_leeway; a missing
    // nbf is iat, or exp minus not_before_leeway.
    if exp.is_none() {
        exp = Some(iat.unwrap_or(0).max(nbf.unwrap_or(0)) + CLAIM_DEFAULT_LEEWAY);
    }
    if nbf.is_none() {
        nbf = iat.or(exp.map(|e| e - CLAIM_DEFAULT_LEEWAY));
    }
    let now = state.clock.now();
    if let Some(nbf) = nbf
        && now + CLOCK_SKEW_LEEWAY < nbf
    {
        return Err("invalid not before (nbf) claim: token not yet valid".into());
    }
    if let Some(exp) = exp
        && now - CLOCK_SKEW_LEEWAY > exp
    {
        return Err("invalid expiration time (exp) claim: token is expired".into());
    }
    if let Some(iat) = iat
        && now + CLOCK_SKEW_LEEWAY < iat
    {
        return Err("invalid issued at (iat) claim: token issued in the future".into());
    }
    Ok(claims)
}

async fn lookup_self(State(state): State<Arc<VaultState>>, headers: HeaderMap) -> Response {
    let presented = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| bearer(&headers));
    let now = state.clock.now();
    let found = presented.and_then(|t| state.issued.find(|i| i.client_token == t));
    let Some(token) = found.filter(|t| now < t.issued_at + t.ttl as i64) else {
        return errors(StatusCode::FORBIDDEN, "permission denied");
    };
    let remaining = token.issued_at + token.ttl as i64 - now;
    json_response(
        StatusCode::OK,
        &json!({
            "request_id": uuid().unwrap_or_default(),
            "lease_id": "",
            "renewable": false,
            "lease_duration": 0,
            "data": {
                "accessor": token.accessor,
                "creation_time": token.issued_at,
                "creation_ttl": token.ttl,
                "display_name": token.display_name,
                "entity_id": token.entity_id,
                "expire_time": rfc3339(token.issued_at + token.ttl as i64),
                "explicit_max_ttl": 0,
                "id": token.client_token,
                "issue_time": rfc3339(token.issued_at),
                "meta": {"role": token.role},
                "num_uses": 0,
                "orphan": true,
                "path": format!("auth/{}/login", state.config.mount),
                "policies": token.policies,
                "renewable": true,
                "ttl": remaining,
                "type": "service",
            },
            "wrap_info": null,
            "warnings": null,
            "auth": null,
        }),
    )
}
