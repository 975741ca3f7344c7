//! AWS STS `AssumeRoleWithWebIdentity`, as `aws-sdk-sts` calls it: an
//! unsigned `POST /` with a form body in the AWS query protocol, answered in
//! XML. The account has one IAM OIDC provider (the configured issuer, with
//! its client-ID list) and some roles with trust policies in IAM's JSON form.
//!
//! Sources for the rules (cited where they are applied):
//! - STS API reference, AssumeRoleWithWebIdentity (parameters, constraints,
//!   errors): <https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoleWithWebIdentity.html>
//! - IAM, "Create an OpenID Connect (OIDC) identity provider" (client IDs,
//!   thumbprints, 100 keys) and "Available keys for AWS OIDC federation"
//!   (the `<provider>:aud` / `<provider>:sub` condition keys).
//! - DESIGN.md, "Cloud limits" (5 min skew past `exp`, ≤ 20,000 chars,
//!   RS/ES 256–512).
//! - IAM, "Passing session tags using AssumeRoleWithWebIdentity": the
//!   `https://aws.amazon.com/tags` claim (`principal_tags`, each value a
//!   one-string array; `transitive_tag_keys`), `sts:TagSession` in the trust
//!   policy, and IAM's tag rules (at most 50; keys 1–128 and values 0–256
//!   characters of letters, digits, spaces and `_.:/=+-@`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::oidc::{self, IssuerTrust, Rejection, Rules, Verifier};
use super::shared::{
    BASE64_CHARS, Clock, Listener, Record, UPPER_ALNUM, parse_form, random_string, rfc3339, uuid,
    xml_escape, xml_response,
};

const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
const ACTION: &str = "sts:AssumeRoleWithWebIdentity";
const TAG_ACTION: &str = "sts:TagSession";
/// The claim that carries session tags.
pub const TAGS_CLAIM: &str = "https://aws.amazon.com/tags";
const MAX_SESSION_TAGS: usize = 50;
/// DurationSeconds defaults to 3600 and may range from 900 to the role's
/// maximum session duration (API reference, DurationSeconds).
const DEFAULT_DURATION: i64 = 3600;
const MIN_DURATION: i64 = 900;
const MAX_DURATION: i64 = 43_200;
/// WebIdentityToken: length 4 to 20,000 (API reference).
const MAX_TOKEN_CHARS: usize = 20_000;
/// STS accepts a token up to 5 minutes past its `exp` (DESIGN.md).
const EXP_SKEW_SECONDS: i64 = 300;

#[derive(Debug, Clone)]
pub struct AwsStsConfig {
    /// The IAM OIDC provider's URL is `issuer.issuer`.
    pub issuer: IssuerTrust,
    /// The 12-digit account ID.
    pub account: String,
    /// The OIDC provider's client-ID (audience) list.
    pub client_ids: Vec<String>,
    pub roles: Vec<AwsRole>,
}

#[derive(Debug, Clone)]
pub struct AwsRole {
    pub name: String,
    /// The role's trust policy (`AssumeRolePolicyDocument`), IAM JSON.
    pub trust_policy: Value,
    /// MaxSessionDuration, 3600 to 43200.
    pub max_session_seconds: u32,
}

/// One set of temporary credentials handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsIssued {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// RFC 3339, as in the response.
    pub expiration: String,
    pub role_arn: String,
    pub session_name: String,
    pub subject: String,
    pub audience: String,
    /// Session tags from the token, as the session's principal tags.
    pub principal_tags: Vec<(String, String)>,
    pub transitive_tag_keys: Vec<String>,
}

/// A running STS emulator; stops when dropped.
#[derive(Debug)]
pub struct AwsSts {
    listener: Listener,
    state: Arc<StsState>,
}

#[derive(Debug)]
struct StsState {
    config: AwsStsConfig,
    verifier: Verifier,
    clock: Clock,
    issued: Record<AwsIssued>,
}

impl AwsSts {
    pub async fn start(config: AwsStsConfig) -> anyhow::Result<Self> {
        Self::start_with_clock(config, Clock::new()).await
    }

    pub async fn start_with_clock(config: AwsStsConfig, clock: Clock) -> anyhow::Result<Self> {
        for role in &config.roles {
            anyhow::ensure!(
                (3600..=43_200).contains(&role.max_session_seconds),
                "role {}: MaxSessionDuration must be 3600..=43200",
                role.name
            );
        }
        let state = StsState {
            verifier: Verifier::discovering(&config.issuer)?,
            config,
            clock,
            issued: Record::new(),
        };
        let routes = Router::new().route("/", post(handle));
        let (listener, state) = Listener::serve(routes, state).await?;
        Ok(Self { listener, state })
    }

    /// The endpoint URL to give an SDK, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.listener.url()
    }

    pub fn clock(&self) -> Clock {
        self.state.clock.clone()
    }

    /// `arn:aws:iam::<account>:oidc-provider/<issuer without https://>`.
    pub fn provider_arn(&self) -> String {
        provider_arn(&self.state.config)
    }

    /// `arn:aws:iam::<account>:role/<name>`.
    pub fn role_arn(&self, name: &str) -> String {
        format!("arn:aws:iam::{}:role/{name}", self.state.config.account)
    }

    /// Every credential issued so far, in order.
    pub fn issued(&self) -> Vec<AwsIssued> {
        self.state.issued.snapshot()
    }
}

fn provider_host(config: &AwsStsConfig) -> &str {
    config.issuer.issuer.trim_start_matches("https://")
}

fn provider_arn(config: &AwsStsConfig) -> String {
    format!(
        "arn:aws:iam::{}:oidc-provider/{}",
        config.account,
        provider_host(config)
    )
}

/// An STS error: code and message as the query protocol carries them.
#[derive(Debug)]
struct StsError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl StsError {
    fn invalid_token(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "InvalidIdentityToken",
            message: message.into(),
        }
    }

    /// The role does not exist or its trust policy does not allow this
    /// caller; STS does not say which (HTTP 403).
    fn access_denied() -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: "AccessDenied",
            message: format!("Not authorized to perform {ACTION}"),
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "ValidationError",
            message: message.into(),
        }
    }

    fn internal(error: &anyhow::Error) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "InternalFailure",
            message: error.to_string(),
        }
    }
}

async fn handle(State(state): State<Arc<StsState>>, body: Bytes) -> Response {
    let request_id = uuid().unwrap_or_default();
    let form = parse_form(&body);
    let (status, xml) = match assume(&state, &form).await {
        Ok(xml) => (StatusCode::OK, xml.replace("{REQUEST_ID}", &request_id)),
        Err(e) => (
            e.status,
            format!(
                "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
                xml_escape(e.code),
                xml_escape(&e.message),
                xml_escape(&request_id)
            ),
        ),
    };
    let mut response = xml_response(status, xml);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-RequestId", value);
    }
    response
}

/// The request's parameters after the API's own constraints.
struct Params<'a> {
    role_arn: &'a str,
    session_name: &'a str,
    token: &'a str,
    duration: i64,
}

/// `[\w+=,.@-]`, with `\w` as Java (and so AWS) reads it: `[a-zA-Z_0-9]`.
fn session_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// AWS's constraint check: every violation is listed, as
/// "N validation error(s) detected: Value '…' at 'member' failed to satisfy
/// constraint: …".
fn validate<'a>(form: &'a HashMap<String, String>) -> Result<Params<'a>, StsError> {
    let mut errors = Vec::new();
    let mut required = |name: &str, member: &str| -> Option<&'a str> {
        let value = form.get(name).map(String::as_str);
        if value.is_none() {
            errors.push(format!(
                "Value null at '{member}' failed to satisfy constraint: Member must not be null"
            ));
        }
        value
    };
    let role_arn = required("RoleArn", "roleArn");
    let session_name = required("RoleSessionName", "roleSessionName");
    let token = required("WebIdentityToken", "webIdentityToken");
    // RoleArn: length 20 to 2048.
    if let Some(arn) = role_arn
        && !(20..=2048).contains(&arn.len())
    {
        errors.push(format!(
            "Value '{arn}' at 'roleArn' failed to satisfy constraint: Member must have length {}",
            if arn.len() < 20 {
                "greater than or equal to 20"
            } else {
                "less than or equal to 2048"
            }
        ));
    }
    // RoleSessionName: length 2 to 64, pattern [\w+=,.@-]*.
    if let Some(name) = session_name {
        let len = name.chars().count();
        if len < 2 {
            errors.push(format!("Value '{name}' at 'roleSessionName' failed to satisfy constraint: Member must have length greater than or equal to 2"));
        }
        if len > 64 {
            errors.push(format!("Value '{name}' at 'roleSessionName' failed to satisfy constraint: Member must have length less than or equal to 64"));
        }
        if !name.chars().all(session_name_char) {
            errors.push(format!("Value '{name}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*"));
        }
    }
    // WebIdentityToken: length 4 to 20,000 (the value is sensitive and not echoed).
    if let Some(token) = token {
        if token.len() < 4 {
            errors.push("Value at 'webIdentityToken' failed to satisfy constraint: Member must have length greater than or equal to 4".into());
        }
        if token.len() > MAX_TOKEN_CHARS {
            errors.push(format!("Value at 'webIdentityToken' failed to satisfy constraint: Member must have length less than or equal to {MAX_TOKEN_CHARS}"));
        }
    }
    // DurationSeconds: 900 to 43200.
    let duration = match form.get("DurationSeconds") {
        None => DEFAULT_DURATION,
        Some(text) => match text.parse::<i64>() {
            Ok(d) if d < MIN_DURATION => {
                errors.push(format!("Value '{d}' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to {MIN_DURATION}"));
                d
            }
            Ok(d) if d > MAX_DURATION => {
                errors.push(format!("Value '{d}' at 'durationSeconds' failed to satisfy constraint: Member must have value less than or equal to {MAX_DURATION}"));
                d
            }
            Ok(d) => d,
            Err(_) => {
                errors.push(format!(
                    "Value '{text}' at 'durationSeconds' failed to satisfy constraint: Member must be a number"
                ));
                DEFAULT_DURATION
            }
        },
    };
    match (role_arn, session_name, token) {
        (Some(role_arn), Some(session_name), Some(token)) if errors.is_empty() => Ok(Params {
            role_arn,
            session_name,
            token,
            duration,
        }),
        _ => Err(StsError::validation(format!(
            "{} validation error{} detected: {}",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" },
            errors.join("; ")
        ))),
    }
}

async fn assume(state: &StsState, form: &HashMap<String, String>) -> Result<String, StsError> {
    let config = &state.config;
    match form.get("Action").map(String::as_str) {
        Some("AssumeRoleWithWebIdentity") => {}
        other => {
            return Err(StsError {
                status: StatusCode::BAD_REQUEST,
                code: "InvalidAction",
                message: format!(
                    "Could not find operation {} for version 2011-06-15",
                    other.unwrap_or("")
                ),
            });
        }
    }
    let params = validate(form)?;

    // The token names its issuer; STS looks for an IAM OIDC provider whose
    // URL is that issuer.
    let (_, unverified) = oidc::peek(params.token).map_err(|_| {
        StsError::invalid_token(
            "The ID Token provided is not a valid JWT. (You may see this error if you sent an Access Token)",
        )
    })?;
    let iss = unverified.iss.clone().unwrap_or_default();
    if iss.trim_start_matches("https://") != provider_host(config) || !iss.starts_with("https://") {
        return Err(StsError::invalid_token(format!(
            "No OpenIDConnect provider found in your account for {iss}"
        )));
    }

    // Keys from the provider's discovery document; RS256/384/512 and
    // ES256/384/512 are accepted (DESIGN.md, "Cloud limits").
    let rules = Rules {
        algorithms: vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::ES256,
            Algorithm::ES384,
        ],
        // The provider was chosen by `iss` above.
        check_issuer: false,
        exp_leeway: EXP_SKEW_SECONDS,
        nbf_leeway: EXP_SKEW_SECONDS,
        require_iat: true,
        iat_future_leeway: None,
        max_lifetime: None,
    };
    // (jsonwebtoken has no ES512; such a token is refused like an unknown alg.)
    let verified = state
        .verifier
        .verify_signature(params.token, &rules.algorithms)
        .await
        .map_err(token_error)?;
    let claims = verified.claims;

    // The token's audience must be one of the provider's client IDs.
    let audience = claims
        .aud
        .iter()
        .find(|a| config.client_ids.contains(a))
        .cloned()
        .ok_or_else(|| StsError::invalid_token("Incorrect token audience"))?;
    claims
        .check_times(&rules, state.clock.now())
        .map_err(token_error)?;
    let subject = claims
        .sub
        .clone()
        .ok_or_else(|| StsError::invalid_token("The token has no sub claim"))?;

    // The role: an unknown role and a trust policy that does not match look
    // the same to the caller.
    let role = role_named(config, params.role_arn).ok_or_else(StsError::access_denied)?;
    let tags = session_tags(&claims.raw)?;
    let mut context: HashMap<String, Vec<String>> = HashMap::new();
    let host = provider_host(config);
    context.insert(format!("{host}:aud"), claims.aud.clone());
    context.insert(format!("{host}:sub"), vec![subject.clone()]);
    for (key, value) in &tags.principal {
        context.insert(format!("aws:RequestTag/{key}"), vec![value.clone()]);
    }
    if !tags.principal.is_empty() {
        context.insert(
            "aws:TagKeys".to_owned(),
            tags.principal.iter().map(|(k, _)| k.clone()).collect(),
        );
    }
    let provider = provider_arn(config);
    if !trust_allows(&role.trust_policy, &provider, &context) {
        return Err(StsError::access_denied());
    }
    // Tags need sts:TagSession too (IAM, "Passing session tags").
    if !tags.principal.is_empty()
        && !trust_allows_action(&role.trust_policy, &provider, &context, TAG_ACTION)
    {
        return Err(StsError {
            status: StatusCode::FORBIDDEN,
            code: "AccessDenied",
            message: format!("Not authorized to perform {TAG_ACTION}"),
        });
    }
    // "If you specify a value higher than this setting, the operation fails."
    if params.duration > i64::from(role.max_session_seconds) {
        return Err(StsError::validation(
            "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
        ));
    }

    let issued = mint(state, &params, role, &subject, &audience, tags)
        .map_err(|e| StsError::internal(&e))?;
    let role_id = random_string(UPPER_ALNUM, 17).map_err(|e| StsError::internal(&e))?;
    let assumed_arn = format!(
        "arn:aws:sts::{}:assumed-role/{}/{}",
        config.account, role.name, params.session_name
    );
    let xml = format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"{XMLNS}\"><AssumeRoleWithWebIdentityResult>\
<SubjectFromWebIdentityToken>{}</SubjectFromWebIdentityToken><Audience>{}</Audience>\
<AssumedRoleUser><Arn>{}</Arn><AssumedRoleId>AROA{}:{}</AssumedRoleId></AssumedRoleUser>\
<Credentials><AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey><SessionToken>{}</SessionToken><Expiration>{}</Expiration></Credentials>\
<Provider>{}</Provider></AssumeRoleWithWebIdentityResult>\
<ResponseMetadata><RequestId>{{REQUEST_ID}}</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>",
        xml_escape(&subject),
        xml_escape(&audience),
        xml_escape(&assumed_arn),
        xml_escape(&role_id),
        xml_escape(params.session_name),
        xml_escape(&issued.access_key_id),
        xml_escape(&issued.secret_access_key),
        xml_escape(&issued.session_token),
        xml_escape(&issued.expiration),
        // "For OpenID Connect ID tokens, this contains the value of the iss field."
        xml_escape(&iss),
    );
    state.issued.push(issued);
    Ok(xml)
}

fn mint(
    state: &StsState,
    params: &Params<'_>,
    role: &AwsRole,
    subject: &str,
    audience: &str,
    tags: SessionTags,
) -> anyhow::Result<AwsIssued> {
    Ok(AwsIssued {
        // Temporary credentials' access key IDs start with ASIA.
        access_key_id: format!("ASIA{}", random_string(UPPER_ALNUM, 16)?),
        secret_access_key: random_string(BASE64_CHARS, 40)?,
        session_token: format!("IQoJb3JpZ2luX2Vj{}", random_string(BASE64_CHARS, 340)?),
        expiration: rfc3339(state.clock.now() + params.duration),
        role_arn: format!("arn:aws:iam::{}:role/{}", state.config.account, role.name),
        session_name: params.session_name.to_owned(),
        subject: subject.to_owned(),
        audience: audience.to_owned(),
        principal_tags: tags.principal,
        transitive_tag_keys: tags.transitive,
    })
}

/// The session tags a token carries.
#[derive(Debug, Default)]
struct SessionTags {
    principal: Vec<(String, String)>,
    transitive: Vec<String>,
}

/// IAM's tag characters: letters, digits, spaces and `_.:/=+-@`.
fn tag_text_ok(text: &str, max: usize) -> bool {
    text.chars().count() <= max
        && text
            .chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c))
}

/// The `https://aws.amazon.com/tags` claim, checked as STS checks it.
fn session_tags(claims: &Value) -> Result<SessionTags, StsError> {
    let Some(tags) = claims.get(TAGS_CLAIM) else {
        return Ok(SessionTags::default());
    };
    let malformed =
        |why: &str| StsError::invalid_token(format!("Invalid session tags claim: {why}"));
    let principal = tags
        .get("principal_tags")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("principal_tags must be an object"))?;
    if principal.len() > MAX_SESSION_TAGS {
        return Err(malformed("more than 50 tags"));
    }
    let mut out = SessionTags::default();
    for (key, values) in principal {
        let value = match values.as_array().map(Vec::as_slice) {
            Some([Value::String(one)]) => one.clone(),
            _ => return Err(malformed("each tag value must be an array of one string")),
        };
        if key.is_empty() || !tag_text_ok(key, 128) || !tag_text_ok(&value, 256) {
            return Err(malformed(
                "tag keys are 1-128 and values 0-256 characters of letters, digits, spaces and _.:/=+-@",
            ));
        }
        out.principal.push((key.clone(), value));
    }
    if let Some(keys) = tags.get("transitive_tag_keys") {
        let keys = keys
            .as_array()
            .ok_or_else(|| malformed("transitive_tag_keys must be an array"))?;
        for key in keys {
            let key = key
                .as_str()
                .filter(|k| principal.contains_key(*k))
                .ok_or_else(|| malformed("a transitive tag key must be one of principal_tags"))?;
            out.transitive.push(key.to_owned());
        }
    }
    Ok(out)
}

/// Maps a verification failure to the STS error a caller sees.
fn token_error(rejection: Rejection) -> StsError {
    match rejection {
        Rejection::Unreachable(_) | Rejection::Discovery(_) => StsError::invalid_token(
            "Couldn't retrieve verification key from your identity provider,  please reference AssumeRoleWithWebIdentity documentation for requirements",
        ),
        Rejection::Expired { .. } => StsError {
            status: StatusCode::BAD_REQUEST,
            code: "ExpiredTokenException",
            message: "Token is expired".into(),
        },
        Rejection::Algorithm(alg) => {
            StsError::invalid_token(format!("Unsupported token signing algorithm {alg}"))
        }
        Rejection::UnknownKey { kid } => StsError::invalid_token(format!(
            "Couldn't find a verification key for kid {} in your identity provider's JWKS",
            kid.unwrap_or_default()
        )),
        Rejection::BadSignature => StsError::invalid_token("Incorrect token signature"),
        other => StsError::invalid_token(other.to_string()),
    }
}

/// The role named by `arn:aws:iam::<account>:role/<path/><name>`.
fn role_named<'a>(config: &'a AwsStsConfig, arn: &str) -> Option<&'a AwsRole> {
    let rest = arn.strip_prefix("arn:aws:iam::")?;
    let (account, resource) = rest.split_once(':')?;
    if account != config.account {
        return None;
    }
    let path = resource.strip_prefix("role/")?;
    let name = path.rsplit('/').next()?;
    config.roles.iter().find(|r| r.name == name)
}

/// A policy value that may be a string or an array of strings.
fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// IAM's evaluation of a role trust policy for this request: allowed when
/// some `Allow` statement matches and no `Deny` statement does. A statement
/// matches when its `Principal.Federated` names the provider, its `Action`
/// covers `sts:AssumeRoleWithWebIdentity` and every condition holds.
/// Supported operators: `StringEquals` and `StringLike` (`*`, `?`), alone or
/// as `ForAllValues:`; a condition on a key the request lacks (but for
/// `ForAllValues:`), or an operator this emulator does not know, does not hold.
pub fn trust_allows(
    policy: &Value,
    provider_arn: &str,
    context: &HashMap<String, Vec<String>>,
) -> bool {
    trust_allows_action(policy, provider_arn, context, ACTION)
}

/// As [`trust_allows`], for another action (`sts:TagSession`).
pub fn trust_allows_action(
    policy: &Value,
    provider_arn: &str,
    context: &HashMap<String, Vec<String>>,
    action: &str,
) -> bool {
    let statements: Vec<&Value> = match policy.get("Statement") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        _ => return false,
    };
    let matching = |effect: &str| {
        statements
            .iter()
            .filter(|s| s.get("Effect").and_then(Value::as_str) == Some(effect))
            .any(|s| statement_matches(s, provider_arn, context, action))
    };
    matching("Allow") && !matching("Deny")
}

fn statement_matches(
    statement: &Value,
    provider_arn: &str,
    context: &HashMap<String, Vec<String>>,
    action: &str,
) -> bool {
    let federated = statement
        .get("Principal")
        .and_then(|p| p.get("Federated"))
        .map(strings)
        .unwrap_or_default();
    if !federated.contains(&provider_arn) {
        return false;
    }
    let actions = statement.get("Action").map(strings).unwrap_or_default();
    if !actions
        .iter()
        .any(|a| glob_matches(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()))
    {
        return false;
    }
    let Some(conditions) = statement.get("Condition") else {
        return true;
    };
    let Some(conditions) = conditions.as_object() else {
        return false;
    };
    conditions.iter().all(|(operator, block)| {
        let Some(block) = block.as_object() else {
            return false;
        };
        // `ForAllValues:`: every value of a multivalued key must match (and
        // a key the request lacks matches); otherwise any value may.
        let (for_all, operator) = match operator.strip_prefix("ForAllValues:") {
            Some(inner) => (true, inner),
            None => (false, operator.as_str()),
        };
        block.iter().all(|(key, wanted)| {
            // Condition key names are case-insensitive.
            let actual = context
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v);
            let Some(actual) = actual else {
                return for_all;
            };
            let wanted = strings(wanted);
            let matches = |value: &String| {
                wanted.iter().any(|w| match operator {
                    "StringEquals" => w == value,
                    "StringLike" => glob_matches(w, value),
                    _ => false,
                })
            };
            if for_all {
                actual.iter().all(matches)
            } else {
                actual.iter().any(matches)
            }
        })
    })
}

/// IAM's `StringLike`: `*` matches any run of characters, `?` any one.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob_matches("spiffe://x/*", "spiffe://x/a/b"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "abbc"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("spiffe://x/*", "spiffe://y/a"));
    }

    fn context(aud: &str, sub: &str) -> HashMap<String, Vec<String>> {
        HashMap::from([
            ("idp.example/t:aud".to_owned(), vec![aud.to_owned()]),
            ("idp.example/t:sub".to_owned(), vec![sub.to_owned()]),
        ])
    }

    #[test]
    fn trust_policy_conditions() {
        let arn = "arn:aws:iam::123456789012:oidc-provider/idp.example/t";
        let policy = json!({"Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {"idp.example/t:aud": "sts.amazonaws.com"},
                "StringLike": {"idp.example/t:sub": ["spiffe://x/web/*"]}
            }
        }]});
        assert!(trust_allows(
            &policy,
            arn,
            &context("sts.amazonaws.com", "spiffe://x/web/1")
        ));
        assert!(!trust_allows(
            &policy,
            arn,
            &context("other", "spiffe://x/web/1")
        ));
        assert!(!trust_allows(
            &policy,
            arn,
            &context("sts.amazonaws.com", "spiffe://x/db")
        ));
        assert!(!trust_allows(
            &policy,
            "arn:aws:iam::123456789012:oidc-provider/elsewhere",
            &context("sts.amazonaws.com", "spiffe://x/web/1")
        ));
        let mut denied = policy.clone();
        if let Some(statements) = denied["Statement"].as_array_mut() {
            statements.push(
                json!({"Effect": "Deny", "Principal": {"Federated": arn}, "Action": "sts:*"}),
            );
        }
        assert!(!trust_allows(
            &denied,
            arn,
            &context("sts.amazonaws.com", "spiffe://x/web/1")
        ));
    }

    #[test]
    fn session_names_follow_the_pattern() {
        assert!("svc-01_a+b=c,d.e@f".chars().all(session_name_char));
        assert!(!"has space".chars().all(session_name_char));
        assert!(!"slash/".chars().all(session_name_char));
    }
}
