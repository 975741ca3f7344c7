//! GCP: this workload's JWT-SVID → Security Token Service token exchange
//! (workload identity federation) → IAM Credentials generateAccessToken for a
//! service account the federated identity may impersonate.
//!
//! Cloud side (once): `lanyard-server federation gcp --spiffe-id <ID> --account <PROJECT_NUMBER>`
//! prints the pool, the provider and the impersonation binding.
//!
//! ```sh
//! SPIFFE_ENDPOINT_SOCKET=unix:///run/lanyard/agent/api.sock \
//!   cargo run -p lanyard-examples --bin gcp-sts -- \
//!     --audience //iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/lanyard-pool/providers/lanyard \
//!     --service-account web@my-project.iam.gserviceaccount.com
//! ```
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]

use clap::Parser;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Exchange this workload's JWT-SVID for a GCP access token")]
struct Args {
    /// The workload identity provider: //iam.googleapis.com/projects/…/providers/….
    #[arg(long)]
    audience: String,
    /// The service account to impersonate.
    #[arg(long)]
    service_account: String,
    /// OAuth scope of the access token.
    #[arg(long, default_value = "https://www.googleapis.com/auth/cloud-platform")]
    scope: String,
    /// Security Token Service base URL.
    #[arg(long, default_value = "https://sts.googleapis.com")]
    sts_url: String,
    /// IAM Service Account Credentials base URL.
    #[arg(long, default_value = "https://iamcredentials.googleapis.com")]
    iam_credentials_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (spiffe_id, token) = lanyard_examples::fetch_jwt_svid(&args.audience).await?;
    let http = lanyard_examples::http_client(None)?;

    // RFC 8693 token exchange at Google's STS.
    let exchange = http
        .post(format!("{}/v1/token", args.sts_url.trim_end_matches('/')))
        .json(&json!({
            "grantType": "urn:ietf:params:oauth:grant-type:token-exchange",
            "audience": args.audience,
            "scope": args.scope,
            "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
            "subjectToken": token,
            "subjectTokenType": "urn:ietf:params:oauth:token-type:jwt",
        }))
        .send()
        .await?;
    let federated = lanyard_examples::json_or_error("STS token exchange", exchange).await?;
    let federated_token = federated["access_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("STS answered without access_token: {federated}"))?;

    // The federated token impersonates the service account.
    let generate = http
        .post(format!(
            "{}/v1/projects/-/serviceAccounts/{}:generateAccessToken",
            args.iam_credentials_url.trim_end_matches('/'),
            args.service_account
        ))
        .bearer_auth(federated_token)
        .json(&json!({ "scope": [args.scope], "lifetime": "3600s" }))
        .send()
        .await?;
    let access = lanyard_examples::json_or_error("generateAccessToken", generate).await?;
    let access_token = access["accessToken"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("IAM Credentials answered without accessToken: {access}"))?;

    let summary = json!({
        "spiffe_id": spiffe_id,
        "service_account": args.service_account,
        "access_token_fingerprint": lanyard_examples::fingerprint(access_token),
        "expire_time": access["expireTime"],
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
