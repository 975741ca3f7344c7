//! Command line of `lanyard-agent`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::workload_client::{Health, WorkloadClient};

#[derive(Debug, Parser)]
#[command(
    name = "lanyard-agent",
    version,
    about = "Serves the SPIFFE Workload API on this node"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Run {
        /// Path of agent.toml.
        #[arg(long, short, env = "LANYARD_AGENT_CONFIG")]
        config: PathBuf,
        /// Single-use token to attest with when no agent SVID is stored yet.
        #[arg(long, env = "LANYARD_JOIN_TOKEN")]
        join_token: Option<String>,
    },
    /// Talk to a running agent's Workload API as this process.
    #[command(subcommand)]
    Api(ApiCommand),
    /// Check that the agent's Workload API socket answers (exit 0) or not (exit 1).
    Healthcheck {
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetch something from the Workload API.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Have the agent validate something.
    #[command(subcommand)]
    Validate(ValidateCommand),
}

#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Validate a JWT-SVID for an audience; prints its SPIFFE ID and claims.
    Jwt {
        /// The audience the token must carry.
        #[arg(long, short)]
        audience: String,
        /// The token; `-` reads it from stdin (keeps it out of the process list).
        #[arg(long, short)]
        token: String,
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long, value_enum, default_value_t = Output::Token)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum FetchCommand {
    /// Fetch JWT-SVIDs for this process and print them.
    Jwt {
        /// Audience of the token (repeat for several).
        #[arg(long, short, required = true)]
        audience: Vec<String>,
        /// Only this SPIFFE ID (default: every identity of the caller).
        #[arg(long)]
        spiffe_id: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long, value_enum, default_value_t = Output::Token)]
        output: Output,
    },
    /// Print the JWT bundles (JWKS per trust domain) as JSON.
    JwtBundle {
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, Args)]
pub struct SocketArg {
    /// Workload API socket, e.g. unix:///run/lanyard/agent/api.sock.
    #[arg(long = "socket", env = "SPIFFE_ENDPOINT_SOCKET", default_value = concat!("unix://", "/run/lanyard/agent/api.sock"))]
    pub endpoint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The bare token, one per line (for scripts and token files); for
    /// `validate`, the SPIFFE ID.
    Token,
    /// JSON: an array of {spiffe_id, token}; for `validate`, {spiffe_id, claims}.
    Json,
}

/// Runs a client command against a running agent, printing to stdout.
pub async fn run_api(command: ApiCommand) -> anyhow::Result<()> {
    match command {
        ApiCommand::Fetch(FetchCommand::Jwt {
            audience,
            spiffe_id,
            socket,
            output,
        }) => {
            let svids = WorkloadClient::new(&socket.endpoint)?
                .fetch_jwt(audience, spiffe_id)
                .await?;
            match output {
                Output::Token => svids.iter().for_each(|s| println!("{}", s.token)),
                Output::Json => {
                    let list: Vec<_> = svids
                        .iter()
                        .map(|s| serde_json::json!({"spiffe_id": s.spiffe_id, "token": s.token}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&list)?);
                }
            }
        }
        ApiCommand::Fetch(FetchCommand::JwtBundle { socket }) => {
            let bundles = WorkloadClient::new(&socket.endpoint)?
                .fetch_jwt_bundles()
                .await?;
            println!("{}", serde_json::to_string_pretty(&bundles)?);
        }
        ApiCommand::Validate(ValidateCommand::Jwt {
            audience,
            token,
            socket,
            output,
        }) => {
            let token = if token == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the token from stdin")?;
                text.trim().to_owned()
            } else {
                token
            };
            let validated = WorkloadClient::new(&socket.endpoint)?
                .validate_jwt(audience, token)
                .await?;
            match output {
                Output::Token => println!("{}", validated.spiffe_id),
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "spiffe_id": validated.spiffe_id,
                        "claims": validated.claims,
                    }))?
                ),
            }
        }
    }
    Ok(())
}

/// `healthcheck`: Ok when the agent answers; prints what it found.
pub async fn healthcheck(socket: SocketArg) -> anyhow::Result<()> {
    let health = WorkloadClient::new(&socket.endpoint)?.health().await?;
    match health {
        Health::ServingBundle => println!("healthy: the agent serves its trust bundle"),
        Health::AnsweringNoIdentity => {
            println!("healthy: the agent answers (this process has no identity)")
        }
    }
    Ok(())
}
