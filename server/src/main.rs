use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use lanyard_server::cli::{Cli, Command};
use lanyard_server::config::ServerConfig;

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
            eprintln!("lanyard-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        verb @ (Command::Entry(_)
        | Command::Token(_)
        | Command::Agent(_)
        | Command::Bundle(_)
        | Command::Healthcheck { .. }) => {
            println!("{}", lanyard_server::admin_client::run(verb).await?);
            Ok(())
        }
        Command::CheckConfig { config } => {
            ServerConfig::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Run { config } => {
            let config = ServerConfig::load(&config)?;
            let mut server = lanyard_server::start(config).await?;
            tokio::select! {
                result = server.wait() => result.context("server stopped")?,
                signal = shutdown_signal() => {
                    signal.context("listening for signals")?;
                    tracing::info!("shutting down");
                    server.shutdown().await;
                }
            }
            Ok(())
        }
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
