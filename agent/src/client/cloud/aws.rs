//! `aws credential-process`: JWT-SVID → STS AssumeRoleWithWebIdentity → the
//! JSON that the AWS SDKs and CLI read from a `credential_process` command.
//! The STS endpoint and region come from the standard AWS settings
//! (`AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`, `AWS_REGION`, the profile).

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sts::config::Region;
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sts::primitives::DateTimeFormat;
use serde::Serialize;

use super::{CloudError, Svid};

/// The audience AWS's documentation uses for its own OIDC client ID.
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";
/// STS's bounds on DurationSeconds; the role's maximum may be lower.
pub const DURATION_RANGE: std::ops::RangeInclusive<u32> = 900..=43_200;
/// STS requires a region; this is where its global endpoint lives.
const FALLBACK_REGION: &str = "us-east-1";
const SESSION_NAME_MAX: usize = 64;
/// How long the AWS CLI or SDK that runs the helper may be kept waiting.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 30;
const TIMEOUT_RANGE: std::ops::RangeInclusive<u32> = 1..=600;
/// One attempt at STS; the SDK retries within the whole timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the helper was asked for: the flags of `aws credential-process`.
#[derive(Debug, Clone)]
pub struct Request {
    pub role_arn: String,
    /// Derived from the SPIFFE ID when not given.
    pub session_name: Option<String>,
    pub duration_seconds: Option<u32>,
    pub region: Option<String>,
    /// The whole exchange, retries included, must be over within this.
    pub timeout_seconds: u32,
}

impl Request {
    /// Checks the flags before any call, naming the bad one.
    pub fn validate(&self) -> Result<(), CloudError> {
        if !is_role_arn(&self.role_arn) {
            return Err(CloudError::Invalid(format!(
                "--role-arn {:?} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)",
                self.role_arn
            )));
        }
        if let Some(name) = &self.session_name
            && !is_session_name(name)
        {
            return Err(CloudError::Invalid(format!(
                "--session-name {name:?} must be 2 to 64 characters of letters, digits and _+=,.@-"
            )));
        }
        if let Some(duration) = self.duration_seconds
            && !DURATION_RANGE.contains(&duration)
        {
            return Err(CloudError::Invalid(format!(
                "--duration {duration} is outside STS's {}..={} seconds",
                DURATION_RANGE.start(),
                DURATION_RANGE.end()
            )));
        }
        if !TIMEOUT_RANGE.contains(&self.timeout_seconds) {
            return Err(CloudError::Invalid(format!(
                "--timeout {} is outside {}..={} seconds",
                self.timeout_seconds,
                TIMEOUT_RANGE.start(),
                TIMEOUT_RANGE.end()
            )));
        }
        Ok(())
    }

    fn session_name_for(&self, spiffe_id: &str) -> String {
        self.session_name
            .clone()
            .unwrap_or_else(|| session_name_for(spiffe_id))
    }
}

fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts.as_slice(),
        ["arn", partition, "iam", "", account, resource]
            if partition.starts_with("aws")
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty()))
}

fn is_session_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// STS's rule for RoleSessionName: `[\w+=,.@-]{2,64}`.
pub fn is_session_name(name: &str) -> bool {
    (2..=SESSION_NAME_MAX).contains(&name.len()) && name.chars().all(is_session_name_char)
}

/// A session name that says which workload assumed the role (it appears in
/// the assumed-role ARN and in CloudTrail): the SPIFFE ID without its scheme,
/// `/` written as `+`. SPIFFE IDs never contain `+`, so distinct IDs give
/// distinct names; a long one keeps its start and gets a hash of the whole ID.
pub fn session_name_for(spiffe_id: &str) -> String {
    let readable: String = spiffe_id
        .strip_prefix("spiffe://")
        .unwrap_or(spiffe_id)
        .chars()
        .map(|c| match c {
            '/' => '+',
            c if is_session_name_char(c) => c,
            _ => '_',
        })
        .collect();
    if readable.len() <= SESSION_NAME_MAX && readable.len() >= 2 {
        return readable;
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spiffe_id.as_bytes());
    let suffix: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = SESSION_NAME_MAX - suffix.len() - 1;
    let head: String = readable.chars().take(keep).collect();
    format!("{head}-{suffix}")
}

/// The `credential_process` output, version 1, as the AWS SDKs parse it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessCredentials {
    pub version: u8,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// RFC 3339, UTC.
    pub expiration: String,
}

/// The whole helper: the caller's JWT-SVID for `audience`, exchanged for
/// `credential_process` JSON.
pub async fn credential_process(
    endpoint: &str,
    audience: &str,
    spiffe_id: Option<&str>,
    request: &Request,
) -> Result<String, CloudError> {
    request.validate()?;
    let svid = super::fetch_svid(endpoint, &[audience.to_owned()], spiffe_id).await?;
    let credentials = assume_role(request, &svid).await?;
    serde_json::to_string_pretty(&credentials)
        .map_err(|e| CloudError::Exchange(format!("encoding the credentials: {e}")))
}

/// The SDK's defaults bound only connecting; an endpoint that accepts and
/// never answers would hang the AWS CLI or SDK that runs this helper.
fn sts_timeouts(request: &Request) -> TimeoutConfig {
    let whole = Duration::from_secs(u64::from(request.timeout_seconds));
    TimeoutConfig::builder()
        .connect_timeout(whole.min(Duration::from_secs(5)))
        .operation_attempt_timeout(whole.min(ATTEMPT_TIMEOUT))
        .operation_timeout(whole)
        .build()
}

/// Exchanges `svid` at STS for the role's temporary credentials.
pub async fn assume_role(request: &Request, svid: &Svid) -> Result<ProcessCredentials, CloudError> {
    let region = RegionProviderChain::first_try(request.region.clone().map(Region::new))
        .or_default_provider()
        .or_else(Region::from_static(FALLBACK_REGION));
    // AssumeRoleWithWebIdentity is unsigned: no credentials are looked up,
    // which also keeps this helper from calling itself through the chain.
    let config = aws_config::defaults(BehaviorVersion::latest())
        .no_credentials()
        .region(region)
        .timeout_config(sts_timeouts(request))
        .load()
        .await;
    let answer = aws_sdk_sts::Client::new(&config)
        .assume_role_with_web_identity()
        .role_arn(&request.role_arn)
        .role_session_name(request.session_name_for(&svid.spiffe_id))
        .web_identity_token(&svid.token)
        .set_duration_seconds(request.duration_seconds.map(|d| d as i32))
        .send()
        .await
        .map_err(|e| {
            CloudError::Exchange(describe_failure(
                &e,
                &svid.spiffe_id,
                request.timeout_seconds,
            ))
        })?;
    let credentials = answer.credentials().ok_or_else(|| {
        CloudError::Exchange("STS answered without credentials (malformed response)".into())
    })?;
    let expiration = credentials
        .expiration()
        .fmt(DateTimeFormat::DateTime)
        .map_err(|e| CloudError::Exchange(format!("STS returned an unusable expiration: {e}")))?;
    Ok(ProcessCredentials {
        version: 1,
        access_key_id: credentials.access_key_id().to_owned(),
        secret_access_key: credentials.secret_access_key().to_owned(),
        session_token: credentials.session_token().to_owned(),
        expiration,
    })
}

fn describe_failure<E, R>(error: &SdkError<E, R>, spiffe_id: &str, timeout_seconds: u32) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown");
            let message = service.err().message().unwrap_or("(no message)");
            format!(
                "STS refused AssumeRoleWithWebIdentity: {code}: {message} — {}",
                hint(code, message, spiffe_id)
            )
        }
        SdkError::TimeoutError(_) => format!(
            "STS did not answer within {timeout_seconds} s (--timeout) — check AWS_ENDPOINT_URL_STS / AWS_REGION, the network and any proxy"
        ),
        other => format!(
            "could not complete the call to STS: {} — check AWS_ENDPOINT_URL_STS / AWS_REGION and the network",
            one_line(&DisplayErrorContext(other).to_string())
        ),
    }
}

/// The likely misconfiguration behind an STS error code.
pub fn hint(code: &str, message: &str, spiffe_id: &str) -> String {
    match code {
        "InvalidIdentityToken" if message.contains("audience") => {
            "the token's audience (--audience) must be in the IAM OIDC provider's client ID list"
                .into()
        }
        "InvalidIdentityToken" if message.contains("No OpenIDConnect provider") => {
            "register this issuer as an IAM OIDC provider with the exact issuer URL (see `lanyard-server federation aws`)".into()
        }
        "InvalidIdentityToken" | "IDPCommunicationError" => {
            "AWS could not verify the token: the issuer's discovery document and JWKS must be reachable from AWS over HTTPS with a publicly trusted certificate, and the signing key published".into()
        }
        "ExpiredTokenException" | "ExpiredToken" => {
            "the token had expired when STS checked it: check this node's clock".into()
        }
        "IDPRejectedClaim" => {
            "a claim was rejected: check the issuer URL and audience registered with IAM".into()
        }
        "AccessDenied" => format!(
            "the role's trust policy does not admit this workload: its Condition must pin :aud to the audience and :sub to {spiffe_id} (`lanyard-server federation aws --spiffe-id {spiffe_id}` prints one)"
        ),
        "ValidationError" | "InvalidParameterValue" => {
            "check --role-arn, --session-name and --duration (it may not exceed the role's maximum session duration)".into()
        }
        "RegionDisabledException" => {
            "STS is not activated in this region: set AWS_REGION to an active one".into()
        }
        "PackedPolicyTooLarge" | "MalformedPolicyDocument" => {
            "the session policy was refused".into()
        }
        _ => "see the STS documentation for this code".into(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_session_names_follow_sts_rules_and_stay_distinct() {
        let short = session_name_for("spiffe://example.org/ns/prod/sa/web");
        assert_eq!(short, "example.org+ns+prod+sa+web");
        let long_a = format!("spiffe://example.org/{}/a", "x".repeat(100));
        let long_b = format!("spiffe://example.org/{}/b", "x".repeat(100));
        let (name_a, name_b) = (session_name_for(&long_a), session_name_for(&long_b));
        assert_ne!(name_a, name_b);
        for name in [&short, &name_a, &name_b] {
            assert!(is_session_name(name), "{name}");
        }
        assert!(is_session_name(&session_name_for("spiffe://a")));
    }

    #[test]
    fn session_name_rule() {
        assert!(is_session_name("ab"));
        assert!(is_session_name("a_b+c=d,e.f@g-h"));
        assert!(!is_session_name("a"));
        assert!(!is_session_name(&"a".repeat(65)));
        assert!(!is_session_name("a/b"));
        assert!(!is_session_name("a b"));
    }

    #[test]
    fn flags_are_checked_before_any_call() {
        let request = |arn: &str, name: Option<&str>, duration: Option<u32>| Request {
            role_arn: arn.into(),
            session_name: name.map(Into::into),
            duration_seconds: duration,
            region: None,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
        };
        let arn = "arn:aws:iam::123456789012:role/web";
        let derived = request(arn, None, None);
        assert!(derived.validate().is_ok());
        assert_eq!(
            derived.session_name_for("spiffe://example.org/web"),
            "example.org+web"
        );
        let gov = request(
            "arn:aws-us-gov:iam::123456789012:role/path/web",
            None,
            Some(900),
        );
        assert!(gov.validate().is_ok());
        for bad_arn in [
            "web",
            "arn:aws:iam::12345:role/web",
            "arn:aws:iam::123456789012:user/web",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::123456789012:role/",
        ] {
            let error = request(bad_arn, None, None)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(error.contains("--role-arn"), "{bad_arn}: {error}");
        }
        let error = request(arn, Some("a/b"), None)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("--session-name"), "{error}");
        let error = request(arn, None, Some(60))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("--duration 60"), "{error}");
        let never = Request {
            timeout_seconds: 0,
            ..derived
        };
        let error = never.validate().unwrap_err().to_string();
        assert!(error.contains("--timeout 0"), "{error}");
    }

    #[test]
    fn hints_point_at_the_misconfiguration() {
        let id = "spiffe://example.org/web";
        assert!(
            hint("InvalidIdentityToken", "Incorrect token audience", id).contains("client ID list")
        );
        assert!(hint("AccessDenied", "Not authorized", id).contains(id));
        assert!(hint("ExpiredTokenException", "Token is expired", id).contains("clock"));
    }
}
