//! Entry claims end to end: one entry on a slice serves every unit in it,
//! each caller's JWT-SVID carries its own unit (a template the agent fills
//! from the caller's cgroup), and the clouds read it — AWS STS as session
//! tags on the role session (through the AWS SDK, under a trust policy that
//! `lanyard-server federation aws --session-tag` printed), GCP as a mapped
//! attribute that an IAM binding on that attribute lets through.

use aws_sdk_sts::config::{BehaviorVersion, Region};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_server::ops::federation::{self, Target};
use lanyard_tests::cgroups::TestSlice;
use lanyard_tests::emulators::aws_sts::{AwsRole, AwsSts, AwsStsConfig};
use lanyard_tests::emulators::gcp::{Gcp, GcpConfig, GcpServiceAccount};
use lanyard_tests::emulators::requests::gcp_exchange;
use lanyard_tests::probe::SteppedProbe;
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World, my_uid};
use serde_json::{Value, json};

const PROBE: &str = env!("CARGO_BIN_EXE_workload-probe");
const PATH: &str = "/units/tagged";
const ACCOUNT: &str = "123456789012";
const SERVICE_ACCOUNT: &str = "web@project.iam.gserviceaccount.com";

fn payload(token: &str) -> anyhow::Result<Value> {
    let body = token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("not a JWS"))?;
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body)?)?)
}

/// What `federation` prints for this world's workload, as the CLI renders it.
fn federation_text(
    world: &World,
    target: Target,
    session_tags: &[(&str, &str)],
    attribute_mapping: &[(&str, &str)],
) -> anyhow::Result<String> {
    let pairs = |list: &[(&str, &str)]| {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    Ok(federation::render(&federation::Request {
        target,
        issuer: lanyard_server::config::Issuer::parse(&world.issuer).map_err(anyhow::Error::msg)?,
        subject: format!("spiffe://{TRUST_DOMAIN}{PATH}"),
        audience: None,
        allow_wildcard: false,
        signing_alg: "ES256".into(),
        name: Some("tagged".into()),
        account: Some(ACCOUNT.into()),
        session_tags: pairs(session_tags),
        attribute_mapping: pairs(attribute_mapping),
    })?
    .text)
}

/// The JSON here-document `federation` writes to `file`.
fn heredoc(text: &str, file: &str) -> anyhow::Result<Value> {
    let start = format!("cat > {file} <<'EOF'\n");
    let body = text
        .split_once(&start)
        .and_then(|(_, rest)| rest.split_once("\nEOF\n"))
        .ok_or_else(|| anyhow::anyhow!("no {file} in:\n{text}"))?
        .0;
    Ok(serde_json::from_str(body)?)
}

/// The token a probe in `unit` of `slice` gets for `audience`.
fn token_in_unit(
    slice: &TestSlice,
    unit: &str,
    endpoint: &str,
    audience: &str,
) -> anyhow::Result<String> {
    let mut probe = SteppedProbe::spawn(PROBE, endpoint, audience, true)?;
    slice.move_into(unit, probe.pid())?;
    let line = probe.step()?;
    let token = line
        .strip_prefix(&format!("ok spiffe://{TRUST_DOMAIN}{PATH} "))
        .ok_or_else(|| anyhow::anyhow!("probe in {unit}: {line}"))?;
    Ok(token.to_owned())
}

async fn assume(sts: &AwsSts, role: &str, token: &str) -> anyhow::Result<()> {
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(sts.url())
        .build();
    aws_sdk_sts::Client::from_conf(config)
        .assume_role_with_web_identity()
        .role_arn(sts.role_arn(role))
        .role_session_name("tagged")
        .web_identity_token(token)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_sts::error::DisplayErrorContext(e)))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_units_tokens_carry_its_unit_to_aws_and_gcp() -> anyhow::Result<()> {
    let Some(slice) = TestSlice::create_or_skip()? else {
        return Ok(());
    };
    // The claims are exactly what `federation` prints for the two clouds
    // (for any issuer: they do not name it).
    let world_for_text = World::start("/claims", &[]).await?;
    let aws_text = federation_text(
        &world_for_text,
        Target::Aws,
        &[("unit", "{{ systemd:unit }}")],
        &[],
    )?;
    let gcp_text = federation_text(
        &world_for_text,
        Target::Gcp,
        &[],
        &[("unit", "{{ systemd:unit }}")],
    )?;
    world_for_text.stop().await;
    let mut claims = heredoc(&aws_text, "claims.json")?;
    if let (Some(all), Value::Object(gcp)) =
        (claims.as_object_mut(), heredoc(&gcp_text, "claims.json")?)
    {
        all.extend(gcp);
    }
    let world = World::start(
        "/claims",
        &[EntrySpec::new(
            PATH,
            &[
                &format!("systemd:slice:{}", slice.name()),
                &format!("unix:uid:{}", my_uid()),
            ],
        )
        .with_claims(claims)],
    )
    .await?;
    let endpoint = world.endpoint();
    let gcp_setup = GcpConfig {
        issuer: world.issuer_trust()?,
        jwks_json: None,
        project_number: "123456".into(),
        pool: "lanyard-pool".into(),
        provider: "lanyard".into(),
        allowed_audiences: Vec::new(),
        subject_condition: None,
        attribute_mapping: vec![("attribute.unit".into(), "assertion.unit".into())],
        service_accounts: Vec::new(),
    };
    let gcp_audience = gcp_setup.provider_resource();
    let (web, db) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        Ok((
            (
                token_in_unit(&slice, "web.service", &endpoint, "sts.amazonaws.com")?,
                token_in_unit(&slice, "web.service", &endpoint, &gcp_audience)?,
            ),
            (
                token_in_unit(&slice, "db.service", &endpoint, "sts.amazonaws.com")?,
                token_in_unit(&slice, "db.service", &endpoint, &gcp_audience)?,
            ),
        ))
    })?;
    // Two callers of one entry, one audience: two tokens, each its own unit.
    assert_ne!(web.0, db.0);
    for (token, unit) in [(&web.0, "web.service"), (&db.0, "db.service")] {
        let claims = payload(token)?;
        assert_eq!(claims["sub"], format!("spiffe://{TRUST_DOMAIN}{PATH}"));
        assert_eq!(claims["unit"], unit);
        assert_eq!(
            claims["https://aws.amazon.com/tags"],
            json!({"principal_tags": {"unit": [unit]}})
        );
    }

    // AWS: the printed trust policy (with sts:TagSession) lets the tags in;
    // the same policy without it refuses a tagged token. (Printed again for
    // this world: the policy names its issuer, the claims did not.)
    let aws_text = federation_text(&world, Target::Aws, &[("unit", "{{ systemd:unit }}")], &[])?;
    let policy = heredoc(&aws_text, "trust-policy.json")?;
    let mut untagged = policy.clone();
    untagged["Statement"][0]["Action"] = json!("sts:AssumeRoleWithWebIdentity");
    // The printed policy admits only the tag keys the claims carry.
    let mut other_keys = policy.clone();
    other_keys["Statement"][0]["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"] =
        json!(["team"]);
    let sts = AwsSts::start(AwsStsConfig {
        issuer: world.issuer_trust()?,
        account: ACCOUNT.into(),
        client_ids: vec!["sts.amazonaws.com".into()],
        roles: vec![
            AwsRole {
                name: "tagged".into(),
                trust_policy: policy,
                max_session_seconds: 3600,
            },
            AwsRole {
                name: "untagged".into(),
                trust_policy: untagged,
                max_session_seconds: 3600,
            },
            AwsRole {
                name: "other-keys".into(),
                trust_policy: other_keys,
                max_session_seconds: 3600,
            },
        ],
    })
    .await?;
    assume(&sts, "tagged", &web.0).await?;
    assume(&sts, "tagged", &db.0).await?;
    let issued = sts.issued();
    let tags: Vec<_> = issued.iter().map(|i| i.principal_tags.clone()).collect();
    assert_eq!(
        tags,
        [
            vec![("unit".to_owned(), "web.service".to_owned())],
            vec![("unit".to_owned(), "db.service".to_owned())]
        ]
    );
    let refused = assume(&sts, "untagged", &web.0).await;
    let message = refused
        .map(|()| String::new())
        .unwrap_or_else(|e| e.to_string());
    assert!(message.contains("sts:TagSession"), "{message}");
    let refused = assume(&sts, "other-keys", &web.0).await;
    let message = refused
        .map(|()| String::new())
        .unwrap_or_else(|e| e.to_string());
    assert!(message.contains("AccessDenied"), "{message}");

    // GCP: the attribute maps, and a binding on attribute.unit/web.service
    // lets web's federated token impersonate the account, not db's.
    let gcp = Gcp::start(GcpConfig {
        service_accounts: vec![GcpServiceAccount {
            email: SERVICE_ACCOUNT.into(),
            members: vec![gcp_setup.attribute_set("unit", "web.service")],
        }],
        ..gcp_setup
    })
    .await?;
    assert!(
        gcp_text.contains("attribute.unit=assertion.unit"),
        "{gcp_text}"
    );
    let client = reqwest::Client::new();
    for (token, unit, allowed) in [(&web.1, "web.service", true), (&db.1, "db.service", false)] {
        let (status, body) = gcp_exchange(&gcp, &gcp_audience, token).await?;
        assert_eq!(status, 200, "{body}");
        let federated = gcp.federated_tokens();
        let last = federated
            .last()
            .ok_or_else(|| anyhow::anyhow!("no federated token"))?;
        assert_eq!(last.attributes, [("unit".to_owned(), unit.to_owned())]);
        let access = client
            .post(format!(
                "{}/v1/projects/-/serviceAccounts/{SERVICE_ACCOUNT}:generateAccessToken",
                gcp.url()
            ))
            .bearer_auth(body["access_token"].as_str().unwrap_or_default())
            .json(&json!({"scope": ["https://www.googleapis.com/auth/cloud-platform"]}))
            .send()
            .await?;
        assert_eq!(
            access.status().is_success(),
            allowed,
            "{unit}: {}",
            access.status()
        );
    }
    world.stop().await;
    Ok(())
}

/// A token whose rendered claims would pass 8 KiB is refused at the mint,
/// and the workload is told why; so is a caller without a value a template
/// needs; entries without such claims still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_tokens_and_missing_values_are_refused_with_the_reason() -> anyhow::Result<()> {
    // 60 uses of a 250-byte SPIFFE ID: 15 KB of claims from 800 bytes of text.
    let big = "{{spiffe_id}}".repeat(60);
    let too_big = format!("/claims/too-big/{}", "x".repeat(234));
    let world = World::start(
        "",
        &[
            EntrySpec::mine(&too_big).with_claims(json!({ "big": big })),
            EntrySpec::mine("/claims/plain"),
            EntrySpec::mine("/claims/needs-label")
                .with_claims(json!({ "team": "{{ container:label:team }}" })),
        ],
    )
    .await?;
    let endpoint = world.endpoint();
    let mut client = lanyard_agent::client::WorkloadClient::new(&endpoint)?;
    let refused = client
        .fetch_jwt(
            vec!["aud".to_owned()],
            Some(format!("spiffe://{TRUST_DOMAIN}{too_big}")),
        )
        .await;
    let error = refused
        .err()
        .ok_or_else(|| anyhow::anyhow!("an oversize token was issued"))?;
    assert_eq!(
        error.code(),
        Some(tonic::Code::FailedPrecondition),
        "{error}"
    );
    assert!(
        error.to_string().contains("over the 8192-byte limit"),
        "{error}"
    );
    let plain = client
        .fetch_jwt(
            vec!["aud".to_owned()],
            Some(format!("spiffe://{TRUST_DOMAIN}/claims/plain")),
        )
        .await?;
    assert_eq!(plain.len(), 1);
    // A caller with no value for a template gets no token, never an empty claim.
    let unlabelled = client
        .fetch_jwt(
            vec!["aud".to_owned()],
            Some(format!("spiffe://{TRUST_DOMAIN}/claims/needs-label")),
        )
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a token without its team claim was issued"))?;
    assert_eq!(
        unlabelled.code(),
        Some(tonic::Code::PermissionDenied),
        "{unlabelled}"
    );
    assert!(
        unlabelled
            .to_string()
            .contains("no container:label:team selector"),
        "{unlabelled}"
    );
    world.stop().await;
    Ok(())
}
