//! Command line of `lanyard-agent`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    },
    /// Talk to a running agent's Workload API as this process.
    #[command(subcommand)]
    Api(ApiCommand),
}

#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetch something from the Workload API.
    #[command(subcommand)]
    Fetch(FetchCommand),
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
}

#[derive(Debug, Args)]
pub struct SocketArg {
    /// Workload API socket, e.g. unix:///run/lanyard/agent/api.sock.
    #[arg(long = "socket", env = "SPIFFE_ENDPOINT_SOCKET", default_value = concat!("unix://", "/run/lanyard/agent/api.sock"))]
    pub endpoint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The bare token, one per line (for scripts and token files).
    Token,
    /// A JSON array of {spiffe_id, token}.
    Json,
}
