//! What to apply on the cloud side to trust this issuer for one workload:
//! AWS IAM, GCP Workload Identity Federation, Microsoft Entra and Vault.
//! Each target pins both the audience and the exact subject, and the lints
//! catch the mistakes each cloud punishes late and obscurely.

use lanyard_proto::SpiffeId;
use serde_json::json;

/// GCP maps `sub` to `google.subject`, which may not exceed 127 bytes.
const GCP_SUBJECT_LIMIT: usize = 127;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Aws,
    Gcp,
    Azure,
    Vault,
}

/// Everything a rendering needs; unnamed cloud-side names become placeholders.
#[derive(Debug, Clone)]
pub struct Request {
    pub target: Target,
    pub issuer: String,
    /// A SPIFFE ID, or with `allow_wildcard` a pattern ending in `/*`.
    pub subject: String,
    pub audience: Option<String>,
    pub allow_wildcard: bool,
    /// The `alg` of the issuer's signing keys, e.g. "ES256".
    pub signing_alg: String,
    /// Target-specific names: role, account, pool, identity, policy…
    pub name: Option<String>,
    pub account: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    #[error(
        "subject {0:?} is a wildcard: any workload matching it could assume this identity; pass --allow-wildcard if that is intended"
    )]
    Wildcard(String),
    #[error("subject {subject:?} is not a SPIFFE ID: {reason}")]
    BadSubject { subject: String, reason: String },
    #[error("{target:?} does not support wildcard subjects; register each SPIFFE ID")]
    WildcardUnsupported { target: Target },
}

fn validate_subject(request: &Request) -> Result<bool, FederationError> {
    let bad = |reason: String| FederationError::BadSubject {
        subject: request.subject.clone(),
        reason,
    };
    if request.subject.contains('*') {
        if !request.allow_wildcard {
            return Err(FederationError::Wildcard(request.subject.clone()));
        }
        let prefix = request
            .subject
            .strip_suffix("/*")
            .ok_or_else(|| bad("a wildcard may only be a final \"/*\"".into()))?;
        SpiffeId::parse(prefix).map_err(|e| bad(e.to_string()))?;
        return Ok(true);
    }
    SpiffeId::parse(&request.subject).map_err(|e| bad(e.to_string()))?;
    Ok(false)
}

pub fn render(request: &Request) -> Result<Rendered, FederationError> {
    let wildcard = validate_subject(request)?;
    let mut warnings = Vec::new();
    if !request.issuer.starts_with("https://") {
        warnings.push(format!(
            "issuer {} is not https: AWS, GCP and Entra fetch discovery only over HTTPS; put a TLS proxy or a static host in front",
            request.issuer
        ));
    }
    let text = match request.target {
        Target::Aws => aws(request, wildcard),
        Target::Gcp => {
            if wildcard {
                return Err(FederationError::WildcardUnsupported {
                    target: Target::Gcp,
                });
            }
            if request.subject.len() > GCP_SUBJECT_LIMIT {
                warnings.push(format!(
                    "the SPIFFE ID is {} bytes; GCP's google.subject takes at most {GCP_SUBJECT_LIMIT}: map a shorter attribute or shorten the ID",
                    request.subject.len()
                ));
            }
            gcp(request)
        }
        Target::Azure => {
            if wildcard {
                return Err(FederationError::WildcardUnsupported {
                    target: Target::Azure,
                });
            }
            if request.signing_alg != "RS256" {
                warnings.push(format!(
                    "the issuer signs with {}, but Entra accepts only RS256: set jwt key type rsa-2048 on the server",
                    request.signing_alg
                ));
            }
            azure(request)
        }
        Target::Vault => vault(request, wildcard),
    };
    Ok(Rendered { text, warnings })
}

fn aws(request: &Request, wildcard: bool) -> String {
    let audience = request.audience.as_deref().unwrap_or("sts.amazonaws.com");
    let provider = request
        .issuer
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let account = request.account.as_deref().unwrap_or("ACCOUNT_ID");
    let role = request.name.as_deref().unwrap_or("ROLE_NAME");
    let (aud_key, sub_key) = (format!("{provider}:aud"), format!("{provider}:sub"));
    let conditions = if wildcard {
        json!({ "StringEquals": { aud_key: audience }, "StringLike": { sub_key: request.subject } })
    } else {
        json!({ "StringEquals": { aud_key: audience, sub_key: request.subject } })
    };
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Federated": format!("arn:aws:iam::{account}:oidc-provider/{provider}") },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": conditions,
        }]
    });
    let policy = serde_json::to_string_pretty(&policy).unwrap_or_default();
    format!(
        "# 1. Register the issuer with IAM (once per account).\n\
         aws iam create-open-id-connect-provider --url {issuer} --client-id-list {audience}\n\n\
         # 2. Trust policy for the role: save as trust-policy.json.\n{policy}\n\n\
         # 3. Create the role (or update an existing one's trust policy).\n\
         aws iam create-role --role-name {role} --assume-role-policy-document file://trust-policy.json\n\n\
         # The workload then uses: lanyard-agent aws credential-process --role-arn arn:aws:iam::{account}:role/{role}\n",
        issuer = request.issuer,
    )
}

fn gcp(request: &Request) -> String {
    let project = request.account.as_deref().unwrap_or("PROJECT_NUMBER");
    let pool = request.name.as_deref().unwrap_or("lanyard-pool");
    let provider = "lanyard";
    let default_audience = format!(
        "//iam.googleapis.com/projects/{project}/locations/global/workloadIdentityPools/{pool}/providers/{provider}"
    );
    let audience = request.audience.clone().unwrap_or(default_audience);
    format!(
        "# 1. A pool and an OIDC provider that trusts exactly this workload.\n\
         gcloud iam workload-identity-pools create {pool} --location=global\n\
         gcloud iam workload-identity-pools providers create-oidc {provider} --location=global \\\n  \
         --workload-identity-pool={pool} --issuer-uri={issuer} \\\n  \
         --allowed-audiences='{audience}' \\\n  \
         --attribute-mapping='google.subject=assertion.sub' \\\n  \
         --attribute-condition=\"assertion.sub == '{subject}'\"\n\
         # If the issuer is not reachable from Google, add: --jwk-json-path=jwks.json (lanyard-server oidc publish writes it).\n\n\
         # 2. Let that subject impersonate a service account.\n\
         gcloud iam service-accounts add-iam-policy-binding SERVICE_ACCOUNT_EMAIL \\\n  \
         --role=roles/iam.workloadIdentityUser \\\n  \
         --member='principal://iam.googleapis.com/projects/{project}/locations/global/workloadIdentityPools/{pool}/subject/{subject}'\n\n\
         # The workload then uses: lanyard-agent gcp executable --audience '{audience}'\n",
        issuer = request.issuer,
        subject = request.subject,
    )
}

fn azure(request: &Request) -> String {
    let audience = request
        .audience
        .as_deref()
        .unwrap_or("api://AzureADTokenExchange");
    let identity = request.name.as_deref().unwrap_or("IDENTITY_NAME");
    let group = request.account.as_deref().unwrap_or("RESOURCE_GROUP");
    format!(
        "# A federated credential on a user-assigned managed identity.\n\
         az identity federated-credential create --name lanyard \\\n  \
         --identity-name {identity} --resource-group {group} \\\n  \
         --issuer {issuer} --subject {subject} --audiences {audience}\n",
        issuer = request.issuer,
        subject = request.subject,
    )
}

fn vault(request: &Request, wildcard: bool) -> String {
    let audience = request.audience.as_deref().unwrap_or("vault");
    let role = request.name.as_deref().unwrap_or("lanyard-workload");
    let policy = request.account.as_deref().unwrap_or("POLICY");
    let glob = if wildcard {
        format!(
            "bound_claims_type=glob bound_claims='{{\"sub\":\"{}\"}}'",
            request.subject
        )
    } else {
        format!("bound_subject='{}'", request.subject)
    };
    format!(
        "# 1. The JWT auth method, trusting the issuer's discovery document.\n\
         vault auth enable jwt\n\
         vault write auth/jwt/config oidc_discovery_url='{issuer}'\n\
         # With a self-signed issuer certificate, add: oidc_discovery_ca_pem=@oidc-tls-cert.pem\n\n\
         # 2. A role bound to exactly this audience and subject.\n\
         vault write auth/jwt/role/{role} role_type=jwt user_claim=sub \\\n  \
         bound_audiences='{audience}' {glob} \\\n  \
         token_policies={policy} token_ttl=15m\n",
        issuer = request.issuer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: Target, subject: &str) -> Request {
        Request {
            target,
            issuer: "https://oidc.example.org".into(),
            subject: subject.into(),
            audience: None,
            allow_wildcard: false,
            signing_alg: "ES256".into(),
            name: None,
            account: Some("123456789012".into()),
        }
    }

    #[test]
    fn aws_trust_policy_pins_audience_and_subject() -> Result<(), Box<dyn std::error::Error>> {
        let rendered = render(&request(Target::Aws, "spiffe://example.org/web"))?;
        let start = rendered.text.find('{').ok_or("no policy")?;
        let end = rendered.text.rfind('}').ok_or("no policy")?;
        let policy: serde_json::Value = serde_json::from_str(&rendered.text[start..=end])?;
        let equals = &policy["Statement"][0]["Condition"]["StringEquals"];
        assert_eq!(equals["oidc.example.org:aud"], "sts.amazonaws.com");
        assert_eq!(equals["oidc.example.org:sub"], "spiffe://example.org/web");
        assert_eq!(
            policy["Statement"][0]["Principal"]["Federated"],
            "arn:aws:iam::123456789012:oidc-provider/oidc.example.org"
        );
        assert!(rendered.warnings.is_empty());
        Ok(())
    }

    #[test]
    fn wildcards_are_refused_unless_allowed() -> Result<(), Box<dyn std::error::Error>> {
        let mut wild = request(Target::Aws, "spiffe://example.org/ns/*");
        assert!(matches!(render(&wild), Err(FederationError::Wildcard(_))));
        wild.allow_wildcard = true;
        assert!(render(&wild)?.text.contains("StringLike"));
        wild.target = Target::Gcp;
        assert!(matches!(
            render(&wild),
            Err(FederationError::WildcardUnsupported { .. })
        ));
        let mut bad = request(Target::Aws, "spiffe://example.org/*/x");
        bad.allow_wildcard = true;
        assert!(matches!(
            render(&bad),
            Err(FederationError::BadSubject { .. })
        ));
        assert!(matches!(
            render(&request(Target::Vault, "https://x")),
            Err(FederationError::BadSubject { .. })
        ));
        Ok(())
    }

    #[test]
    fn lints_warn_about_each_cloud_limit() -> Result<(), Box<dyn std::error::Error>> {
        let long = format!("spiffe://example.org/{}", "a".repeat(120));
        let gcp = render(&request(Target::Gcp, &long))?;
        assert!(
            gcp.warnings.iter().any(|w| w.contains("127")),
            "{:?}",
            gcp.warnings
        );
        let azure = render(&request(Target::Azure, "spiffe://example.org/web"))?;
        assert!(azure.warnings.iter().any(|w| w.contains("RS256")));
        let mut rsa = request(Target::Azure, "spiffe://example.org/web");
        rsa.signing_alg = "RS256".into();
        assert!(render(&rsa)?.warnings.is_empty());
        let mut http = request(Target::Vault, "spiffe://example.org/web");
        http.issuer = "http://10.0.0.1:8080".into();
        assert!(
            render(&http)?
                .warnings
                .iter()
                .any(|w| w.contains("not https"))
        );
        Ok(())
    }

    #[test]
    fn every_target_names_issuer_audience_and_subject() -> Result<(), Box<dyn std::error::Error>> {
        for (target, audience) in [
            (
                Target::Gcp,
                "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/lanyard-pool/providers/lanyard",
            ),
            (Target::Azure, "api://AzureADTokenExchange"),
            (Target::Vault, "vault"),
        ] {
            let text = render(&request(target, "spiffe://example.org/web"))?.text;
            assert!(text.contains("https://oidc.example.org"), "{target:?}");
            assert!(text.contains(audience), "{target:?}: {text}");
            assert!(text.contains("spiffe://example.org/web"), "{target:?}");
        }
        Ok(())
    }
}
