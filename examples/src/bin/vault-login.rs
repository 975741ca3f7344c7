//! HashiCorp Vault: this workload's JWT-SVID → `auth/jwt/login` → a Vault
//! token with the role's policies (checked with `auth/token/lookup-self`).
//!
//! Vault side (once): `lanyard-server federation vault --spiffe-id <ID> --name <ROLE> --account <POLICY>`.
//!
//!     SPIFFE_ENDPOINT_SOCKET=unix:///run/lanyard/agent/api.sock VAULT_ADDR=https://vault:8200 \
//!       cargo run -p lanyard-examples --bin vault-login -- --role web
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]

use std::path::PathBuf;

use clap::Parser;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Log in to Vault with this workload's JWT-SVID")]
struct Args {
    /// The role of the JWT auth method.
    #[arg(long)]
    role: String,
    /// Where the JWT auth method is mounted.
    #[arg(long, default_value = "jwt")]
    mount: String,
    /// The audience the role is bound to.
    #[arg(long, default_value = "vault")]
    audience: String,
    /// Vault's address.
    #[arg(long, env = "VAULT_ADDR", default_value = "https://127.0.0.1:8200")]
    vault_addr: String,
    /// A PEM CA file to trust for Vault's TLS certificate.
    #[arg(long, env = "VAULT_CACERT")]
    ca_cert: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (spiffe_id, token) = lanyard_examples::fetch_jwt_svid(&args.audience).await?;
    let http = lanyard_examples::http_client(args.ca_cert.as_deref())?;
    let vault = args.vault_addr.trim_end_matches('/');

    let login = http
        .post(format!("{vault}/v1/auth/{}/login", args.mount))
        .json(&json!({ "role": args.role, "jwt": token }))
        .send()
        .await?;
    let login = lanyard_examples::json_or_error("Vault login", login).await?;
    let client_token = login["auth"]["client_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("Vault answered without auth.client_token: {login}"))?;

    let lookup = http
        .get(format!("{vault}/v1/auth/token/lookup-self"))
        .header("X-Vault-Token", client_token)
        .send()
        .await?;
    let lookup = lanyard_examples::json_or_error("Vault token lookup", lookup).await?;

    let summary = json!({
        "spiffe_id": spiffe_id,
        "policies": lookup["data"]["policies"],
        "lease_duration": login["auth"]["lease_duration"],
        "client_token_fingerprint": lanyard_examples::fingerprint(client_token),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
