use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use lanyard_agent::cli::{self, Cli, Command};
use lanyard_agent::config::{AgentConfig, ServerConnection};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanyard-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, join_token } => {
            let mut config = AgentConfig::load(&config)?;
            match (join_token, &mut config.server) {
                (Some(token), ServerConnection::Remote { join_token, .. }) => {
                    *join_token = Some(token)
                }
                (Some(_), ServerConnection::Local { .. }) => {
                    anyhow::bail!(
                        "--join-token is for a remote server (server.address); this config names server.node_socket"
                    )
                }
                (None, _) => {}
            }
            let mut agent = lanyard_agent::start(config).await?;
            tokio::select! {
                result = agent.wait() => result.context("agent stopped")?,
                signal = shutdown_signal() => {
                    signal.context("listening for signals")?;
                    tracing::info!("shutting down");
                    agent.shutdown().await;
                }
            }
            Ok(())
        }
        Command::Api(command) => cli::run_api(command).await,
        Command::Healthcheck { socket } => cli::healthcheck(socket).await,
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => Ok(()),
        interrupted = tokio::signal::ctrl_c() => interrupted,
    }
}
