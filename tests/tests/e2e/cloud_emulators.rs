//! The cloud emulators against a real Lanyard trust domain: genuine
//! JWT-SVIDs fetched from the agent with the `spiffe` crate are exchanged at
//! each emulator through its own wire format, and each emulator refuses what
//! its service refuses (wrong audience or subject, expiry past the service's
//! skew, keys the issuer does not publish, ...).

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lanyard_server::ops::federation::{self, Target};
use lanyard_tests::emulators::Clock;
use lanyard_tests::emulators::aws_sts::{AwsRole, AwsSts, AwsStsConfig};
use lanyard_tests::emulators::entra::{Entra, EntraApp, EntraConfig, FederatedCredential};
use lanyard_tests::emulators::gcp::{Gcp, GcpConfig, GcpServiceAccount};
use lanyard_tests::emulators::requests::{
    entra_token, gcp_exchange, gcp_exchange_form, status_and_json,
};
use lanyard_tests::emulators::vault::{Vault, VaultConfig, VaultRole};
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World};
use serde_json::{Value, json};
use spiffe::WorkloadApiClient;

const WORKLOAD: &str = "/emulated/workload";
const ACCOUNT: &str = "123456789012";

fn spiffe_id() -> String {
    format!("spiffe://{TRUST_DOMAIN}{WORKLOAD}")
}

fn other_id() -> String {
    format!("spiffe://{TRUST_DOMAIN}/someone/else")
}

/// A genuine JWT-SVID for `audience`, from the agent.
async fn svid(world: &World, audience: &str) -> anyhow::Result<String> {
    let client = WorkloadApiClient::connect_to(world.endpoint()).await?;
    Ok(client
        .fetch_jwt_svid([audience], None)
        .await?
        .token()
        .to_owned())
}

/// A CA that has nothing to do with the issuer.
fn foreign_ca() -> anyhow::Result<Vec<u8>> {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    Ok(cert.cert.pem().into_bytes())
}

/// A token with the given claims signed by a key nobody publishes.
fn forge(alg: Algorithm, kid: &str, claims: &Value) -> anyhow::Result<String> {
    let key = match alg {
        Algorithm::RS256 => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
            EncodingKey::from_rsa_der(pkcs1_of(&pair.serialize_der())?)
        }
        _ => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            EncodingKey::from_ec_der(&pair.serialize_der())
        }
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    Ok(jsonwebtoken::encode(&header, claims, &key)?)
}

/// One DER element: (tag, contents, the rest of the input).
fn der(input: &[u8]) -> anyhow::Result<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("empty DER"))?;
    let (&first, mut rest) = rest
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no length"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        anyhow::ensure!(n <= 4 && rest.len() >= n, "bad DER length");
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
        rest = &rest[n..];
        len
    };
    anyhow::ensure!(rest.len() >= len, "truncated DER");
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (what
/// jsonwebtoken's aws-lc-rs backend signs with).
fn pkcs1_of(pkcs8: &[u8]) -> anyhow::Result<&[u8]> {
    let (_, info, _) = der(pkcs8)?;
    let (_, _version, rest) = der(info)?;
    let (_, _algorithm, rest) = der(rest)?;
    let (tag, key, _) = der(rest)?;
    anyhow::ensure!(tag == 0x04, "PKCS#8 private key is not an OCTET STRING");
    Ok(key)
}

/// Claims like the world's genuine tokens, for forging.
fn lookalike(world: &World, sub: &str, aud: &str, clock: &Clock) -> Value {
    json!({"iss": world.issuer, "sub": sub, "aud": aud, "iat": clock.now(), "exp": clock.now() + 300})
}

fn claims_of(token: &str) -> anyhow::Result<Value> {
    Ok(jsonwebtoken::dangerous::insecure_decode_claims(token)?)
}

fn kid_of(token: &str) -> anyhow::Result<String> {
    jsonwebtoken::decode_header(token)?
        .kid
        .ok_or_else(|| anyhow::anyhow!("token has no kid"))
}

/// Moves `clock` to `offset` seconds past the token's `exp`.
fn move_past_exp(clock: &Clock, token: &str, offset: i64) -> anyhow::Result<()> {
    let exp = claims_of(token)?["exp"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no exp"))?;
    let by = exp + offset - clock.now();
    anyhow::ensure!(by >= 0, "clock already past exp + {offset}");
    clock.advance(Duration::from_secs(by as u64));
    Ok(())
}

/// The text of the first `<tag>` element, unescaped.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(
        xml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

// ---------------------------------------------------------------- AWS STS

/// The trust policy `lanyard-server federation aws` prints for `subject`.
fn aws_trust_policy(world: &World, subject: &str) -> anyhow::Result<Value> {
    let rendered = federation::render(&federation::Request {
        target: Target::Aws,
        issuer: lanyard_server::config::Issuer::parse(&world.issuer).map_err(anyhow::Error::msg)?,
        subject: subject.to_owned(),
        audience: None,
        allow_wildcard: false,
        signing_alg: "ES256".into(),
        name: Some("lanyard-web".into()),
        account: Some(ACCOUNT.into()),
        session_tags: Vec::new(),
        attribute_mapping: Vec::new(),
    })?;
    let text = &rendered.text;
    let start = text.find('{').ok_or_else(|| anyhow::anyhow!("no policy"))?;
    let end = text
        .rfind('}')
        .ok_or_else(|| anyhow::anyhow!("no policy"))?;
    Ok(serde_json::from_str(&text[start..=end])?)
}

async fn assume(
    sts: &AwsSts,
    role: &str,
    session: &str,
    token: &str,
    duration: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let role_arn = sts.role_arn(role);
    let mut form = vec![
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn.as_str()),
        ("RoleSessionName", session),
        ("WebIdentityToken", token),
    ];
    if let Some(d) = duration {
        form.push(("DurationSeconds", d));
    }
    let response = reqwest::Client::new()
        .post(format!("{}/", sts.url()))
        .form(&form)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.text().await?))
}

#[track_caller]
fn assert_sts_error(got: &(u16, String), status: u16, code: &str, message: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(xml_text(&got.1, "Code").as_deref(), Some(code), "{}", got.1);
    assert!(
        xml_text(&got.1, "Message").is_some_and(|m| m.contains(message)),
        "expected {message:?} in {}",
        got.1
    );
    assert!(got.1.starts_with(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sts_exchanges_a_genuine_svid_and_refuses_the_rest() -> anyhow::Result<()> {
    let world = World::start("/aws", &[EntrySpec::mine(WORKLOAD)]).await?;
    let config = AwsStsConfig {
        issuer: world.issuer_trust()?,
        account: ACCOUNT.into(),
        client_ids: vec!["sts.amazonaws.com".into()],
        roles: vec![
            AwsRole {
                name: "lanyard-web".into(),
                trust_policy: aws_trust_policy(&world, &spiffe_id())?,
                max_session_seconds: 3600,
            },
            AwsRole {
                name: "someone-else".into(),
                trust_policy: aws_trust_policy(&world, &other_id())?,
                max_session_seconds: 3600,
            },
        ],
    };
    let sts = AwsSts::start(config.clone()).await?;
    let token = svid(&world, "sts.amazonaws.com").await?;

    let ok = assume(&sts, "lanyard-web", "web-session.1", &token, Some("900")).await?;
    assert_eq!(ok.0, 200, "{}", ok.1);
    assert!(ok.1.starts_with(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"
    ));
    let issued = sts.issued();
    assert_eq!(issued.len(), 1);
    let creds = &issued[0];
    assert_eq!(
        xml_text(&ok.1, "AccessKeyId").as_deref(),
        Some(creds.access_key_id.as_str())
    );
    assert!(creds.access_key_id.starts_with("ASIA") && creds.access_key_id.len() == 20);
    assert_eq!(
        xml_text(&ok.1, "SecretAccessKey").as_deref(),
        Some(creds.secret_access_key.as_str())
    );
    assert_eq!(creds.secret_access_key.len(), 40);
    assert_eq!(
        xml_text(&ok.1, "SessionToken").as_deref(),
        Some(creds.session_token.as_str())
    );
    assert_eq!(
        xml_text(&ok.1, "Expiration").as_deref(),
        Some(creds.expiration.as_str())
    );
    assert!(creds.expiration.ends_with('Z'));
    assert_eq!(
        xml_text(&ok.1, "SubjectFromWebIdentityToken").as_deref(),
        Some(spiffe_id().as_str())
    );
    assert_eq!(
        xml_text(&ok.1, "Audience").as_deref(),
        Some("sts.amazonaws.com")
    );
    assert_eq!(
        xml_text(&ok.1, "Provider").as_deref(),
        Some(world.issuer.as_str())
    );
    assert_eq!(
        xml_text(&ok.1, "Arn").as_deref(),
        Some(format!("arn:aws:sts::{ACCOUNT}:assumed-role/lanyard-web/web-session.1").as_str())
    );
    assert!(
        xml_text(&ok.1, "AssumedRoleId")
            .is_some_and(|id| id.starts_with("AROA") && id.ends_with(":web-session.1"))
    );
    assert_eq!(creds.subject, spiffe_id());
    assert_eq!(creds.role_arn, sts.role_arn("lanyard-web"));

    // Another audience than the provider's client IDs.
    let wrong_aud = svid(&world, "not-sts").await?;
    let got = assume(&sts, "lanyard-web", "s1", &wrong_aud, None).await?;
    assert_sts_error(
        &got,
        400,
        "InvalidIdentityToken",
        "Incorrect token audience",
    );
    // A role whose trust policy names another subject, and no role at all.
    let got = assume(&sts, "someone-else", "s1", &token, None).await?;
    assert_sts_error(
        &got,
        403,
        "AccessDenied",
        "Not authorized to perform sts:AssumeRoleWithWebIdentity",
    );
    let got = assume(&sts, "no-such-role", "s1", &token, None).await?;
    assert_sts_error(&got, 403, "AccessDenied", "Not authorized");
    // Same claims, signed by a key the issuer does not publish: under an
    // unknown kid, and under the real kid.
    let clock = sts.clock();
    let claims = lookalike(&world, &spiffe_id(), "sts.amazonaws.com", &clock);
    let got = assume(
        &sts,
        "lanyard-web",
        "s1",
        &forge(Algorithm::ES256, "forged", &claims)?,
        None,
    )
    .await?;
    assert_sts_error(&got, 400, "InvalidIdentityToken", "forged");
    let got = assume(
        &sts,
        "lanyard-web",
        "s1",
        &forge(Algorithm::ES256, &kid_of(&token)?, &claims)?,
        None,
    )
    .await?;
    assert_sts_error(&got, 400, "InvalidIdentityToken", "signature");
    // An issuer the account has no provider for.
    let mut elsewhere = claims.clone();
    elsewhere["iss"] = json!("https://elsewhere.example");
    let got = assume(
        &sts,
        "lanyard-web",
        "s1",
        &forge(Algorithm::ES256, "k", &elsewhere)?,
        None,
    )
    .await?;
    assert_sts_error(
        &got,
        400,
        "InvalidIdentityToken",
        "No OpenIDConnect provider found in your account for https://elsewhere.example",
    );
    // The API's own constraints.
    let got = assume(&sts, "lanyard-web", "a", &token, None).await?;
    assert_sts_error(
        &got,
        400,
        "ValidationError",
        "at 'roleSessionName' failed to satisfy constraint: Member must have length greater than or equal to 2",
    );
    let got = assume(&sts, "lanyard-web", "has space", &token, None).await?;
    assert_sts_error(
        &got,
        400,
        "ValidationError",
        "regular expression pattern: [\\w+=,.@-]*",
    );
    let got = assume(&sts, "lanyard-web", "s1", &token, Some("600")).await?;
    assert_sts_error(&got, 400, "ValidationError", "greater than or equal to 900");
    let got = assume(&sts, "lanyard-web", "s1", &token, Some("7200")).await?;
    assert_sts_error(
        &got,
        400,
        "ValidationError",
        "exceeds the MaxSessionDuration",
    );
    let got = assume(&sts, "lanyard-web", "s1", &"x".repeat(20_001), None).await?;
    assert_sts_error(&got, 400, "ValidationError", "less than or equal to 20000");
    // An issuer STS cannot reach over TLS it trusts.
    let mut unreachable = config.clone();
    unreachable.issuer.ca_pem = foreign_ca()?;
    let blind = AwsSts::start(unreachable).await?;
    let got = assume(&blind, "lanyard-web", "s1", &token, None).await?;
    assert_sts_error(
        &got,
        400,
        "InvalidIdentityToken",
        "Couldn't retrieve verification key from your identity provider",
    );

    // Expiry: accepted up to 5 minutes past exp, refused after.
    move_past_exp(&clock, &token, 200)?;
    let got = assume(&sts, "lanyard-web", "late", &token, None).await?;
    assert_eq!(got.0, 200, "{}", got.1);
    clock.advance(Duration::from_secs(150));
    let got = assume(&sts, "lanyard-web", "later", &token, None).await?;
    assert_sts_error(&got, 400, "ExpiredTokenException", "Token is expired");
    assert_eq!(sts.issued().len(), 2);
    Ok(())
}

// -------------------------------------------------------------------- GCP

fn gcp_config(world: &World, subject: &str) -> anyhow::Result<GcpConfig> {
    let mut config = GcpConfig {
        issuer: world.issuer_trust()?,
        jwks_json: None,
        project_number: ACCOUNT.into(),
        pool: "lanyard-pool".into(),
        provider: "lanyard".into(),
        allowed_audiences: Vec::new(),
        subject_condition: Some(format!("assertion.sub == '{subject}'")),
        attribute_mapping: Vec::new(),
        service_accounts: Vec::new(),
    };
    config.service_accounts = vec![
        GcpServiceAccount {
            email: "app@project.iam.gserviceaccount.com".into(),
            members: vec![config.principal(&spiffe_id())],
        },
        GcpServiceAccount {
            email: "other@project.iam.gserviceaccount.com".into(),
            members: vec![config.principal(&other_id())],
        },
    ];
    Ok(config)
}

async fn generate_access_token(
    gcp: &Gcp,
    email: &str,
    bearer: &str,
) -> anyhow::Result<(u16, Value)> {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
            gcp.url()
        ))
        .bearer_auth(bearer)
        .json(&json!({"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "3600s"}))
        .send()
        .await?;
    status_and_json(response).await
}

#[track_caller]
fn assert_oauth_error(got: &(u16, Value), error: &str, description: &str) {
    assert_eq!(got.0, 400, "{}", got.1);
    assert_eq!(got.1["error"], error, "{}", got.1);
    assert!(
        got.1["error_description"]
            .as_str()
            .is_some_and(|d| d.contains(description)),
        "expected {description:?} in {}",
        got.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_exchanges_and_impersonates_only_for_the_bound_subject() -> anyhow::Result<()> {
    let world = World::start("/gcp", &[EntrySpec::mine(WORKLOAD)]).await?;
    let config = gcp_config(&world, &spiffe_id())?;
    let gcp = Gcp::start(config.clone()).await?;
    let audience = config.provider_resource();
    let token = svid(&world, &audience).await?;

    let ok = gcp_exchange(&gcp, &audience, &token).await?;
    assert_eq!(ok.0, 200, "{}", ok.1);
    assert_eq!(
        ok.1["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(ok.1["token_type"], "Bearer");
    assert_eq!(ok.1["expires_in"], 3600);
    let federated = ok.1["access_token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(gcp.federated_tokens()[0].access_token, federated);
    assert_eq!(gcp.federated_tokens()[0].subject, spiffe_id());

    // Form-encoded, as client libraries send it; the default audience also
    // accepts the provider name with an https: prefix.
    let https_aud = format!("https:{audience}");
    let form_token = svid(&world, &https_aud).await?;
    let got = gcp_exchange_form(
        &gcp,
        &audience,
        &form_token,
        "urn:ietf:params:oauth:token-type:id_token",
    )
    .await?;
    assert_eq!(got.0, 200, "{}", got.1);

    // Impersonation: the bound subject may, other accounts refuse it, and a
    // made-up bearer token is not authenticated.
    let sa = generate_access_token(&gcp, "app@project.iam.gserviceaccount.com", &federated).await?;
    assert_eq!(sa.0, 200, "{}", sa.1);
    let issued = &gcp.access_tokens()[0];
    assert_eq!(sa.1["accessToken"], issued.access_token.as_str());
    assert_eq!(sa.1["expireTime"], issued.expire_time.as_str());
    assert_eq!(issued.subject, spiffe_id());
    let denied =
        generate_access_token(&gcp, "other@project.iam.gserviceaccount.com", &federated).await?;
    assert_eq!(denied.0, 403, "{}", denied.1);
    assert_eq!(denied.1["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(
        denied.1["error"]["message"],
        "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist)."
    );
    let anonymous =
        generate_access_token(&gcp, "app@project.iam.gserviceaccount.com", "ya29.made-up").await?;
    assert_eq!(anonymous.0, 401, "{}", anonymous.1);
    assert_eq!(anonymous.1["error"]["status"], "UNAUTHENTICATED");

    // Refusals of the exchange.
    let wrong_aud = svid(&world, "sts.amazonaws.com").await?;
    assert_oauth_error(
        &gcp_exchange(&gcp, &audience, &wrong_aud).await?,
        "invalid_grant",
        "The audience in JWT does not match the expected values.",
    );
    assert_oauth_error(
        &gcp_exchange(&gcp, "projects/1/pools/x", &token).await?,
        "invalid_request",
        "Invalid value for \"audience\"",
    );
    let other_provider = audience.replace("/providers/lanyard", "/providers/other");
    assert_oauth_error(
        &gcp_exchange(&gcp, &other_provider, &token).await?,
        "invalid_target",
        "The target service indicated by the \"audience\" parameters is invalid.",
    );
    let strict = Gcp::start(gcp_config(&world, &other_id())?).await?;
    assert_oauth_error(
        &gcp_exchange(&strict, &audience, &token).await?,
        "unauthorized_client",
        "The given credential is rejected by the attribute condition.",
    );
    let clock = gcp.clock();
    let forged = forge(
        Algorithm::ES256,
        "forged",
        &lookalike(&world, &spiffe_id(), &audience, &clock),
    )?;
    assert_oauth_error(
        &gcp_exchange(&gcp, &audience, &forged).await?,
        "invalid_grant",
        "forged",
    );

    // An uploaded JWKS: the issuer need not be reachable.
    let jwks_uri = format!("{}/.well-known/openid-configuration", world.issuer);
    let https = world.https_client()?;
    let discovery: Value = https.get(&jwks_uri).send().await?.json().await?;
    let jwks = https
        .get(discovery["jwks_uri"].as_str().unwrap_or_default())
        .send()
        .await?
        .text()
        .await?;
    let mut offline = gcp_config(&world, &spiffe_id())?;
    offline.issuer.ca_pem = foreign_ca()?;
    offline.jwks_json = Some(jwks);
    let uploaded = Gcp::start(offline).await?;
    let got = gcp_exchange(&uploaded, &audience, &token).await?;
    assert_eq!(got.0, 200, "{}", got.1);

    // No skew is documented: one second past exp is too late; and the
    // federated token itself expires after an hour.
    move_past_exp(&clock, &token, 1)?;
    assert_oauth_error(
        &gcp_exchange(&gcp, &audience, &token).await?,
        "invalid_grant",
        "expired",
    );
    clock.advance(Duration::from_secs(3600));
    let late =
        generate_access_token(&gcp, "app@project.iam.gserviceaccount.com", &federated).await?;
    assert_eq!(late.0, 401, "{}", late.1);
    Ok(())
}

// ------------------------------------------------------------------ Entra

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "0b8a4a4e-1b41-4cbb-9f37-5f6b61f2c7a1";
const OTHER_CLIENT_ID: &str = "5a1d2e9f-64b7-4e52-8d3b-0c9e7f6a2b10";
const SCOPE: &str = "https://vault.azure.net/.default";
const ENTRA_AUD: &str = "api://AzureADTokenExchange";

#[track_caller]
fn assert_aadsts(got: &(u16, Value), status: u16, error: &str, code: u64, text: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"], error, "{}", got.1);
    assert_eq!(got.1["error_codes"], json!([code]), "{}", got.1);
    let description = got.1["error_description"].as_str().unwrap_or_default();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    assert!(
        description.contains(text),
        "expected {text:?} in {description}"
    );
    assert!(got.1["trace_id"].is_string() && got.1["correlation_id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_accepts_rs256_assertions_only_for_matching_federated_credentials()
-> anyhow::Result<()> {
    let entries = [EntrySpec::mine(WORKLOAD)];
    let (rsa, ec) = tokio::try_join!(
        World::start_with_server_tables("/entra", &entries, "[jwt]\nkey_type = \"rsa-2048\""),
        World::start("/entra-ec", &entries),
    )?;
    let fic = |issuer: &str, subject: String| FederatedCredential {
        issuer: issuer.to_owned(),
        subject,
        audiences: Vec::new(),
    };
    let entra = Entra::start(EntraConfig {
        issuer_trust: vec![rsa.issuer_trust()?, ec.issuer_trust()?],
        tenant_id: TENANT.into(),
        applications: vec![
            EntraApp {
                client_id: CLIENT_ID.into(),
                federated_credentials: vec![
                    fic(&rsa.issuer, spiffe_id()),
                    fic(&ec.issuer, spiffe_id()),
                ],
            },
            EntraApp {
                client_id: OTHER_CLIENT_ID.into(),
                federated_credentials: vec![fic(&rsa.issuer, other_id())],
            },
        ],
    })
    .await?;
    let token = svid(&rsa, ENTRA_AUD).await?;
    assert_eq!(jsonwebtoken::decode_header(&token)?.alg, Algorithm::RS256);

    let ok = entra_token(&entra, CLIENT_ID, SCOPE, &token).await?;
    assert_eq!(ok.0, 200, "{}", ok.1);
    assert_eq!(ok.1["token_type"], "Bearer");
    assert_eq!(ok.1["expires_in"], 3599);
    assert_eq!(ok.1["ext_expires_in"], 3599);
    let issued = &entra.issued()[0];
    assert_eq!(ok.1["access_token"], issued.access_token.as_str());
    assert_eq!(
        (issued.subject.as_str(), issued.issuer.as_str()),
        (spiffe_id().as_str(), rsa.issuer.as_str())
    );

    // A genuine ES256 token from an issuer with a matching credential.
    let es256 = svid(&ec, ENTRA_AUD).await?;
    let got = entra_token(&entra, CLIENT_ID, SCOPE, &es256).await?;
    assert_aadsts(
        &got,
        400,
        "invalid_request",
        5002738,
        "'ES256' is not a supported signature algorithm",
    );
    // Subject, audience and issuer that no credential names.
    let got = entra_token(&entra, OTHER_CLIENT_ID, SCOPE, &token).await?;
    assert_aadsts(
        &got,
        401,
        "invalid_client",
        700213,
        &format!("presented assertion subject '{}'", spiffe_id()),
    );
    let wrong_aud = svid(&rsa, "api://SomethingElse").await?;
    let got = entra_token(&entra, CLIENT_ID, SCOPE, &wrong_aud).await?;
    assert_aadsts(
        &got,
        401,
        "invalid_client",
        700212,
        "presented assertion audience 'api://SomethingElse'",
    );
    let clock = entra.clock();
    let mut elsewhere = lookalike(&rsa, &spiffe_id(), ENTRA_AUD, &clock);
    elsewhere["iss"] = json!("https://elsewhere.example");
    let got = entra_token(
        &entra,
        CLIENT_ID,
        SCOPE,
        &forge(Algorithm::RS256, "k", &elsewhere)?,
    )
    .await?;
    assert_aadsts(
        &got,
        401,
        "invalid_client",
        700211,
        "presented assertion issuer 'https://elsewhere.example'",
    );
    // A key the issuer does not publish.
    let forged = forge(
        Algorithm::RS256,
        "forged",
        &lookalike(&rsa, &spiffe_id(), ENTRA_AUD, &clock),
    )?;
    let got = entra_token(&entra, CLIENT_ID, SCOPE, &forged).await?;
    assert_aadsts(
        &got,
        401,
        "invalid_client",
        7000272,
        "The certificate with identifier forged",
    );
    // Request-level errors.
    let got = entra_token(
        &entra,
        "00000000-0000-0000-0000-000000000000",
        SCOPE,
        &token,
    )
    .await?;
    assert_aadsts(
        &got,
        400,
        "unauthorized_client",
        700016,
        "was not found in the directory",
    );
    let got = entra_token(&entra, CLIENT_ID, "https://vault.azure.net/read", &token).await?;
    assert_aadsts(&got, 400, "invalid_scope", 1002012, "/.default");
    let response = reqwest::Client::new()
        .post(format!("{}/contoso.example/oauth2/v2.0/token", entra.url()))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    let got = status_and_json(response).await?;
    assert_aadsts(
        &got,
        400,
        "invalid_request",
        90002,
        "Tenant 'contoso.example' not found",
    );

    // Five minutes of skew past exp, then AADSTS700024.
    move_past_exp(&clock, &token, 200)?;
    assert_eq!(entra_token(&entra, CLIENT_ID, SCOPE, &token).await?.0, 200);
    clock.advance(Duration::from_secs(150));
    let got = entra_token(&entra, CLIENT_ID, SCOPE, &token).await?;
    assert_aadsts(
        &got,
        401,
        "invalid_client",
        700024,
        "Client assertion is not within its valid time range.",
    );
    assert_eq!(entra.issued().len(), 2);
    Ok(())
}

// ------------------------------------------------------------------ Vault

async fn vault_login(vault: &Vault, role: &str, jwt: &str) -> anyhow::Result<(u16, Value)> {
    let response = reqwest::Client::new()
        .post(vault.login_url())
        .json(&json!({"role": role, "jwt": jwt}))
        .send()
        .await?;
    status_and_json(response).await
}

async fn lookup_self(vault: &Vault, token: &str) -> anyhow::Result<(u16, Value)> {
    let response = reqwest::Client::new()
        .get(format!("{}/v1/auth/token/lookup-self", vault.url()))
        .header("X-Vault-Token", token)
        .send()
        .await?;
    status_and_json(response).await
}

#[track_caller]
fn assert_vault_error(got: &(u16, Value), status: u16, message: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["errors"], json!([message]), "{}", got.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_jwt_login_binds_audience_and_subject() -> anyhow::Result<()> {
    let world = World::start("/vault", &[EntrySpec::mine(WORKLOAD)]).await?;
    let role = |name: &str, audiences: &[&str], subject: String| VaultRole {
        name: name.into(),
        bound_audiences: audiences.iter().map(|a| a.to_string()).collect(),
        bound_subject: Some(subject),
        user_claim: "sub".into(),
        token_ttl_seconds: 900,
        token_policies: vec!["web-read".into()],
    };
    let vault = Vault::start(VaultConfig {
        mount: "jwt".into(),
        issuer: world.issuer_trust()?,
        bound_issuer: Some(world.issuer.clone()),
        roles: vec![
            role("web", &["vault"], spiffe_id()),
            role("db", &["vault"], other_id()),
            role("open", &[], spiffe_id()),
        ],
    })
    .await?;
    let token = svid(&world, "vault").await?;

    let ok = vault_login(&vault, "web", &token).await?;
    assert_eq!(ok.0, 200, "{}", ok.1);
    let auth = &ok.1["auth"];
    let client_token = auth["client_token"].as_str().unwrap_or_default().to_owned();
    assert!(client_token.starts_with("hvs."));
    assert_eq!(auth["policies"], json!(["default", "web-read"]));
    assert_eq!(auth["metadata"]["role"], "web");
    assert_eq!(auth["lease_duration"], 900);
    assert_eq!(auth["token_type"], "service");
    assert_eq!(ok.1["lease_id"], "");
    assert_eq!(vault.issued()[0].client_token, client_token);

    let me = lookup_self(&vault, &client_token).await?;
    assert_eq!(me.0, 200, "{}", me.1);
    assert_eq!(me.1["data"]["policies"], json!(["default", "web-read"]));
    assert_eq!(me.1["data"]["meta"]["role"], "web");
    assert_eq!(me.1["data"]["display_name"], format!("jwt-{}", spiffe_id()));
    assert!(
        me.1["data"]["ttl"]
            .as_i64()
            .is_some_and(|t| t > 0 && t <= 900)
    );
    assert_vault_error(
        &lookup_self(&vault, "hvs.not-a-token").await?,
        403,
        "permission denied",
    );

    assert_vault_error(
        &vault_login(&vault, "nope", &token).await?,
        400,
        "role \"nope\" could not be found",
    );
    let wrong_aud = svid(&world, "not-vault").await?;
    assert_vault_error(
        &vault_login(&vault, "web", &wrong_aud).await?,
        400,
        "error validating token: invalid audience (aud) claim: audience claim does not match any expected audience",
    );
    assert_vault_error(
        &vault_login(&vault, "db", &token).await?,
        400,
        "error validating token: invalid subject (sub) claim",
    );
    assert_vault_error(
        &vault_login(&vault, "open", &token).await?,
        400,
        "audience claim found in JWT but no audiences bound to the role",
    );
    let clock = vault.clock();
    let forged = forge(
        Algorithm::ES256,
        "forged",
        &lookalike(&world, &spiffe_id(), "vault", &clock),
    )?;
    assert_vault_error(
        &vault_login(&vault, "web", &forged).await?,
        400,
        "error validating token: error verifying token signature: failed to verify id token signature",
    );

    // clock_skew_leeway: 60 s past exp is still fine, 90 s is not.
    move_past_exp(&clock, &token, 30)?;
    assert_eq!(vault_login(&vault, "web", &token).await?.0, 200);
    clock.advance(Duration::from_secs(60));
    assert_vault_error(
        &vault_login(&vault, "web", &token).await?,
        400,
        "error validating token: invalid expiration time (exp) claim: token is expired",
    );
    // The Vault token itself lapses after its TTL.
    clock.advance(Duration::from_secs(900));
    assert_vault_error(
        &lookup_self(&vault, &client_token).await?,
        403,
        "permission denied",
    );
    Ok(())
}
