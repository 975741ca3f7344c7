use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use lanyard_agent::cli::{ApiCommand, Cli, Command, FetchCommand, Output};
use lanyard_agent::config::AgentConfig;
use lanyard_proto::WORKLOAD_API_HEADER;
use lanyard_proto::transport::{socket_path_from_endpoint, unix_channel};
use lanyard_proto::workload::JwtsvidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

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
        Command::Run { config } => {
            let config = AgentConfig::load(&config)?;
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
        Command::Api(ApiCommand::Fetch(FetchCommand::Jwt {
            audience,
            spiffe_id,
            socket,
            output,
        })) => {
            let path = socket_path_from_endpoint(&socket.endpoint)?;
            let mut client = SpiffeWorkloadApiClient::new(unix_channel(&path));
            let mut request = tonic::Request::new(JwtsvidRequest {
                audience,
                spiffe_id: spiffe_id.unwrap_or_default(),
            });
            request.metadata_mut().insert(
                WORKLOAD_API_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
            let svids = client
                .fetch_jwtsvid(request)
                .await
                .map_err(|s| anyhow::anyhow!("{}: {} ({})", path.display(), s.message(), s.code()))?
                .into_inner()
                .svids;
            match output {
                Output::Token => {
                    for svid in svids {
                        println!("{}", svid.svid);
                    }
                }
                Output::Json => {
                    let list: Vec<_> = svids
                        .iter()
                        .map(|s| serde_json::json!({"spiffe_id": s.spiffe_id, "token": s.svid}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&list)?);
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
