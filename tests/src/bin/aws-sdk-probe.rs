//! Resolves credentials through the AWS SDK's own default chain
//! (`aws_config::load_defaults`), exactly as an application would, and prints
//! what it got as JSON. Tests point the chain at `credential_process` or at
//! `AWS_WEB_IDENTITY_TOKEN_FILE` through the environment and compare the
//! result with what the STS emulator issued.
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]

use anyhow::Context;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let provider = config
        .credentials_provider()
        .context("the default chain has no credentials provider")?;
    let credentials = provider
        .provide_credentials()
        .await
        .context("the default credential chain found no credentials")?;
    let expiry = credentials.expiry().map(|at| {
        at.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    });
    let summary = serde_json::json!({
        "access_key_id": credentials.access_key_id(),
        "secret_access_key": credentials.secret_access_key(),
        "session_token": credentials.session_token(),
        "expiry_unix": expiry,
    });
    println!("{summary}");
    Ok(())
}
