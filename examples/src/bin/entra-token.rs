//! Microsoft Entra: this workload's JWT-SVID as a client assertion in the
//! OAuth 2.0 client credentials grant → an access token for an app
//! registration or user-assigned managed identity with a federated credential.
//! Entra accepts only RS256: run the server with `[jwt] key_type = "rsa-2048"`.
//!
//! Cloud side (once): `lanyard-server federation azure --spiffe-id <ID> --name <IDENTITY> --account <GROUP>`.
//!
//!     SPIFFE_ENDPOINT_SOCKET=unix:///run/lanyard/agent/api.sock \
//!       cargo run -p lanyard-examples --bin entra-token -- --tenant-id <TENANT> --client-id <CLIENT_ID>
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]

use clap::Parser;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Exchange this workload's JWT-SVID for a Microsoft Entra access token")]
struct Args {
    #[arg(long)]
    tenant_id: String,
    /// Client ID of the app registration or managed identity.
    #[arg(long)]
    client_id: String,
    /// The resource's scope, ending in /.default.
    #[arg(long, default_value = "https://management.azure.com/.default")]
    scope: String,
    /// The audience of the federated credential.
    #[arg(long, default_value = "api://AzureADTokenExchange")]
    audience: String,
    /// Authority host.
    #[arg(
        long,
        env = "AZURE_AUTHORITY_HOST",
        default_value = "https://login.microsoftonline.com"
    )]
    authority_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (spiffe_id, token) = lanyard_examples::fetch_jwt_svid(&args.audience).await?;
    let http = lanyard_examples::http_client(None)?;
    let response = http
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            args.authority_url.trim_end_matches('/'),
            args.tenant_id
        ))
        .form(&[
            ("client_id", args.client_id.as_str()),
            ("scope", args.scope.as_str()),
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", token.as_str()),
        ])
        .send()
        .await?;
    let answer = lanyard_examples::json_or_error("Entra token endpoint", response).await?;
    let access_token = answer["access_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("Entra answered without access_token: {answer}"))?;
    let summary = json!({
        "spiffe_id": spiffe_id,
        "token_type": answer["token_type"],
        "expires_in": answer["expires_in"],
        "access_token_fingerprint": lanyard_examples::fingerprint(access_token),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
