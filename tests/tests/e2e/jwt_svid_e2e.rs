//! The walking skeleton end to end: a workload fetches a JWT-SVID from the
//! agent with the `spiffe` crate, and the token is verified independently the
//! way a cloud STS does it: discovery document → jwks_uri → signature and claims.

use std::os::unix::process::CommandExt;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use lanyard_host::clock::now;
use lanyard_host::transport::unix_channel;
use lanyard_proto::WORKLOAD_API_HEADER;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{JwtBundlesRequest, JwtsvidRequest, X509svidRequest};
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World, my_uid};
use serde_json::Value;
use spiffe::{TrustDomain, WorkloadApiClient};
use tonic::Code;

const WORKLOAD_PATH: &str = "/e2e/workload";
const AUDIENCE: &str = "sts.example.test";

fn my_entry() -> EntrySpec {
    EntrySpec::mine(WORKLOAD_PATH)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svid_verifies_through_oidc_discovery() -> anyhow::Result<()> {
    let world = World::start("/tenant-a", &[my_entry()]).await?;
    let client = WorkloadApiClient::connect_to(world.endpoint()).await?;

    let svid = client.fetch_jwt_svid([AUDIENCE], None).await?;
    let expected_id = format!("spiffe://{TRUST_DOMAIN}{WORKLOAD_PATH}");
    assert_eq!(svid.spiffe_id().to_string(), expected_id);
    let token = svid.token().to_owned();

    // The JWT bundle the agent hands out holds the key that signed the token.
    let header = decode_header(&token)?;
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let kid = header.kid.clone().expect("kid is always set");
    let bundles = client.fetch_jwt_bundles().await?;
    let bundle = bundles
        .get(&TrustDomain::new(TRUST_DOMAIN)?)
        .expect("bundle for our trust domain");
    assert!(
        bundle.find_jwt_authority(&kid).is_some(),
        "bundle lacks kid {kid}"
    );

    // Independently, as an STS would: discovery → jwks_uri → verify.
    let https = world.https_client()?;
    let discovery_url = format!("{}/.well-known/openid-configuration", world.issuer);
    let response = https.get(&discovery_url).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let discovery: Value = response.json().await?;
    assert_eq!(discovery["issuer"], world.issuer.as_str());
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .expect("jwks_uri is a string");
    let jwks: JwkSet = https
        .get(jwks_uri)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let jwk = jwks.find(&kid).expect("signing key is published");
    let raw_jwks: Value = https.get(jwks_uri).send().await?.json().await?;
    for key in raw_jwks["keys"].as_array().expect("keys array") {
        assert_eq!(key["use"], "sig");
        assert!(key.get("d").is_none(), "private part published: {key}");
    }

    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[world.issuer.as_str()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    validation.leeway = 0;
    let verified = decode::<Value>(&token, &DecodingKey::from_jwk(jwk)?, &validation)?;
    let claims = verified.claims;
    assert_eq!(claims["sub"], expected_id.as_str());
    assert_eq!(
        claims["iss"],
        world.issuer.as_str(),
        "iss equals discovery issuer byte for byte"
    );
    let (iat, exp) = (
        claims["iat"].as_i64().expect("integer iat"),
        claims["exp"].as_i64().expect("integer exp"),
    );
    assert!(
        iat <= now() && now() < exp,
        "iat {iat} now {} exp {exp}",
        now()
    );
    assert_eq!(exp - iat, 300, "default JWT-SVID lifetime");

    // A verifier expecting another audience refuses it.
    let mut wrong = Validation::new(Algorithm::ES256);
    wrong.set_audience(&["someone-else"]);
    assert!(decode::<Value>(&token, &DecodingKey::from_jwk(jwk)?, &wrong).is_err());

    // The agent's own ValidateJWTSVID agrees, and refuses the wrong audience.
    let validated = client.validate_jwt_token(AUDIENCE, &token).await?;
    assert_eq!(validated.spiffe_id().to_string(), expected_id);
    let refused = client.validate_jwt_token("someone-else", &token).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.is_invalid_argument()),
        "{refused:?}"
    );
    let mut tampered = token.clone();
    tampered.replace_range(token.len() - 4.., "AAAA");
    assert!(
        client
            .validate_jwt_token(AUDIENCE, &tampered)
            .await
            .is_err()
    );

    world.stop().await;
    Ok(())
}

/// Calls the Workload API with our generated client, with or without the header.
async fn raw_fetch(
    world: &World,
    audience: &[&str],
    with_header: bool,
) -> Result<usize, tonic::Status> {
    let path = world.agent.socket.clone();
    let mut client = SpiffeWorkloadApiClient::new(unix_channel(&path));
    let mut request = tonic::Request::new(JwtsvidRequest {
        audience: audience.iter().map(|a| a.to_string()).collect(),
        spiffe_id: String::new(),
    });
    if with_header {
        request.metadata_mut().insert(
            WORKLOAD_API_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    Ok(client
        .fetch_jwtsvid(request)
        .await?
        .into_inner()
        .svids
        .len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_spec_status_codes() -> anyhow::Result<()> {
    let world = World::start("", &[my_entry()]).await?;
    assert_eq!(
        raw_fetch(&world, &[AUDIENCE], true).await?,
        1,
        "control: a good request works"
    );

    let missing_header = raw_fetch(&world, &[AUDIENCE], false).await;
    assert_eq!(
        missing_header.map_err(|s| s.code()),
        Err(Code::InvalidArgument)
    );

    let empty_audience = raw_fetch(&world, &[], true).await;
    assert_eq!(
        empty_audience.map_err(|s| s.code()),
        Err(Code::InvalidArgument)
    );

    let client = WorkloadApiClient::connect_to(world.endpoint()).await?;
    let via_spiffe_crate = client.fetch_jwt_svid(Vec::<String>::new(), None).await;
    assert!(
        via_spiffe_crate
            .as_ref()
            .is_err_and(|e| e.is_invalid_argument()),
        "{via_spiffe_crate:?}"
    );

    // X509-SVIDs need the header too (x509_svids.rs tests what they serve).
    let mut raw = SpiffeWorkloadApiClient::new(unix_channel(&world.agent.socket));
    let x509 = raw
        .fetch_x509svid(tonic::Request::new(X509svidRequest {}))
        .await
        .map(|_| ());
    assert_eq!(x509.map_err(|s| s.code()), Err(Code::InvalidArgument));

    // Bundles need the header too.
    let bundles = raw
        .fetch_jwt_bundles(tonic::Request::new(JwtBundlesRequest {}))
        .await
        .map(|_| ());
    assert_eq!(bundles.map_err(|s| s.code()), Err(Code::InvalidArgument));

    world.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_whose_uid_matches_no_entry_is_denied() -> anyhow::Result<()> {
    // Entries exist, but none for this process's uid.
    let other_uid = my_uid().wrapping_add(4242);
    let world = World::start(
        "",
        &[EntrySpec::new(
            "/someone-else",
            &[&format!("unix:uid:{other_uid}")],
        )],
    )
    .await?;
    assert_eq!(
        raw_fetch(&world, &[AUDIENCE], true)
            .await
            .map_err(|s| s.code()),
        Err(Code::PermissionDenied)
    );
    let client = WorkloadApiClient::connect_to(world.endpoint()).await?;
    let denied = client.fetch_jwt_svid([AUDIENCE], None).await;
    assert!(
        matches!(
            denied,
            Err(spiffe::WorkloadApiError::NoIdentityIssued
                | spiffe::WorkloadApiError::PermissionDenied(_))
        ),
        "{denied:?}"
    );
    world.stop().await;
    Ok(())
}

/// The same agent serves this uid and refuses another one: a separate process
/// run as `nobody` asks through the same socket. Needs root to switch uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_uid_on_the_same_agent_is_denied() -> anyhow::Result<()> {
    if my_uid() != 0 {
        eprintln!("skipped: switching to another uid needs root (CI runs as root)");
        return Ok(());
    }
    let world = World::start("", &[my_entry()]).await?;
    let probe = |uid: Option<u32>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_workload-probe"));
        command
            .arg(AUDIENCE)
            .env("SPIFFE_ENDPOINT_SOCKET", world.endpoint());
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        command.output()
    };
    let as_me = tokio::task::block_in_place(|| probe(None))?;
    assert_eq!(
        String::from_utf8_lossy(&as_me.stdout).trim(),
        format!("ok spiffe://{TRUST_DOMAIN}{WORKLOAD_PATH}")
    );
    let nobody = 65534;
    let as_nobody = tokio::task::block_in_place(|| probe(Some(nobody)))?;
    let stdout = String::from_utf8_lossy(&as_nobody.stdout);
    assert!(
        stdout.starts_with("denied"),
        "uid {nobody} got: {stdout} {}",
        String::from_utf8_lossy(&as_nobody.stderr)
    );
    assert_eq!(as_nobody.status.code(), Some(1));
    world.stop().await;
    Ok(())
}
