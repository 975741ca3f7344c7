//! Command line of `lanyard-server`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lanyard-server",
    version,
    about = "The authority of a Lanyard trust domain"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: Node API, JWT-SVID signing and the OIDC discovery endpoint.
    Run {
        /// Path of server.toml.
        #[arg(long, short, env = "LANYARD_SERVER_CONFIG")]
        config: PathBuf,
    },
    /// Load and validate a config file, then exit.
    CheckConfig {
        #[arg(long, short, env = "LANYARD_SERVER_CONFIG")]
        config: PathBuf,
    },
}
