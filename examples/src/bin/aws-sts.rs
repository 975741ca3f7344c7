//! AWS: this workload's JWT-SVID → STS AssumeRoleWithWebIdentity → temporary
//! credentials for an IAM role, with `aws-sdk-sts`.
//!
//! Cloud side (once): `lanyard-server federation aws --spiffe-id <ID> --account <ACCOUNT> --name <ROLE>`
//! prints the IAM OIDC provider and the role's trust policy.
//!
//!     SPIFFE_ENDPOINT_SOCKET=unix:///run/lanyard/agent/api.sock \
//!       cargo run -p lanyard-examples --bin aws-sts -- --role-arn arn:aws:iam::123456789012:role/web
//!
//! The STS endpoint follows the standard AWS settings (`AWS_ENDPOINT_URL_STS`,
//! `AWS_REGION`), or `--endpoint-url`.
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]

use anyhow::Context;
use aws_config::BehaviorVersion;
use aws_sdk_sts::config::Region;
use aws_sdk_sts::error::DisplayErrorContext;
use aws_sdk_sts::primitives::DateTimeFormat;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Exchange this workload's JWT-SVID for AWS credentials")]
struct Args {
    /// The IAM role to assume.
    #[arg(long)]
    role_arn: String,
    /// The audience registered as the OIDC provider's client ID.
    #[arg(long, default_value = "sts.amazonaws.com")]
    audience: String,
    /// Session name shown in CloudTrail.
    #[arg(long, default_value = "lanyard-example")]
    session_name: String,
    /// STS endpoint (default: AWS_ENDPOINT_URL_STS, else AWS's).
    #[arg(long)]
    endpoint_url: Option<String>,
    /// STS region (default: AWS_REGION, else us-east-1).
    #[arg(long)]
    region: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (spiffe_id, token) = lanyard_examples::fetch_jwt_svid(&args.audience).await?;

    let region =
        aws_config::meta::region::RegionProviderChain::first_try(args.region.map(Region::new))
            .or_default_provider()
            .or_else("us-east-1");
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .no_credentials()
        .region(region);
    if let Some(url) = args.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let sts = aws_sdk_sts::Client::new(&loader.load().await);
    let answer = sts
        .assume_role_with_web_identity()
        .role_arn(&args.role_arn)
        .role_session_name(&args.session_name)
        .web_identity_token(token)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("AssumeRoleWithWebIdentity: {}", DisplayErrorContext(e)))?;

    let credentials = answer
        .credentials()
        .context("STS returned no credentials")?;
    let summary = serde_json::json!({
        "spiffe_id": spiffe_id,
        "assumed_role_arn": answer.assumed_role_user().map(|u| u.arn()),
        "access_key_id": credentials.access_key_id(),
        "secret_fingerprint": lanyard_examples::fingerprint(credentials.secret_access_key()),
        "expiration": credentials.expiration().fmt(DateTimeFormat::DateTime)?,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
