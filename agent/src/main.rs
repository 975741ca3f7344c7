//! The lanyard-agent binary: `run` starts the daemon until SIGTERM/SIGINT;
//! the other commands are Workload API clients (see `lanyard_agent::client`).
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]
use std::process::ExitCode;

use clap::Parser;
use lanyard_agent::client::cli::{self, Cli, Command};
use lanyard_agent::config::{
    AgentConfig, JoinToken, NodeAttestation, ServerConnection, read_join_token_file,
};
use lanyard_host::{daemon, logging};

/// Client commands run inside other tools (the AWS CLI shows a
/// credential_process's stderr): only our warnings and real errors, and none
/// of the AWS SDK's chatter about absent config files.
const CLIENT_LOG_FILTER: &str = "warn,aws_config=error,aws_runtime=error,aws_smithy_runtime=error";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // Its config's [log] table decides, once it is read (in `run`).
        Command::Run { .. } => {}
        // The caller parses what these print (google-auth merges stderr into
        // stdout): no logs on either, whatever RUST_LOG says.
        Command::Gcp(command) => {
            if let Err(e) = logging::init_helper() {
                let message = daemon::error_line(&e);
                println!(
                    "{}",
                    lanyard_agent::client::cloud::gcp::ExecutableResponse::failure(
                        "LOG_FILE", message
                    )
                    .to_json()
                );
                return ExitCode::FAILURE;
            }
            return cli::run_gcp(command).await;
        }
        Command::Aws(_) => {
            if let Err(e) = logging::init_helper() {
                return daemon::exit_code("lanyard-agent", Err(anyhow::Error::new(e)));
            }
        }
        Command::TokenFile { once: false, .. } => logging::init_client("info"),
        _ => logging::init_client(CLIENT_LOG_FILTER),
    }
    daemon::exit_code("lanyard-agent", run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            join_token_file,
            join_token,
        } => {
            if join_token.is_some() {
                anyhow::bail!(
                    "--join-token is refused: a token on the command line is in the process list, \
                     where any local user can read it and attest as this node first (consider this \
                     one seen and generate a new one); give it with --join-token-file (mode 0600), \
                     LANYARD_JOIN_TOKEN or server.join_token_file"
                );
            }
            let mut config = AgentConfig::load(&config)?;
            // Held until the agent has stopped: dropping it flushes the audit file.
            let _logging = logging::init(&config.log)?;
            let given = match (join_token_file, std::env::var("LANYARD_JOIN_TOKEN")) {
                (Some(path), _) => {
                    // Checked now, so a wrong path or mode fails at once.
                    read_join_token_file(&path)
                        .map_err(|e| anyhow::anyhow!("--join-token-file: {e}"))?;
                    Some(JoinToken::File(path))
                }
                (None, Ok(token)) if !token.trim().is_empty() => {
                    Some(JoinToken::Value(token.trim().to_owned()))
                }
                (None, _) => None,
            };
            match (given, &mut config.server) {
                (Some(token), ServerConnection::Remote { attestation, .. }) => match attestation {
                    Some(configured) if configured.reattests() => anyhow::bail!(
                        "a join token was given, but this config attests with server.attestation.{}; give one or the other",
                        configured.method()
                    ),
                    _ => *attestation = Some(NodeAttestation::JoinToken(token)),
                },
                (Some(_), ServerConnection::Local { .. }) => {
                    anyhow::bail!(
                        "a join token is for a remote server (server.address); this config names server.node_socket"
                    )
                }
                (None, _) => {}
            }
            let agent = lanyard_agent::start(config).await?;
            daemon::run_until_signal(agent).await.map_err(|e| match e {
                daemon::RunError::Stopped(e) => anyhow::Error::new(e).context("agent stopped"),
                other => anyhow::Error::new(other),
            })
        }
        Command::CheckConfig { config } => {
            AgentConfig::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Api(command) => cli::run_api(command).await,
        Command::Healthcheck { socket } => cli::healthcheck(socket).await,
        Command::Aws(command) => cli::run_aws(command).await,
        // Run from `main`, which prints nothing but its response.
        Command::Gcp(command) => {
            if cli::run_gcp(command).await != ExitCode::SUCCESS {
                anyhow::bail!("gcp executable failed");
            }
            Ok(())
        }
        Command::TokenFile {
            audience,
            path,
            spiffe_id,
            once,
            socket,
        } => {
            let file = lanyard_agent::client::cloud::token_file::TokenFile {
                endpoint: socket.endpoint,
                audience,
                spiffe_id,
                path,
            };
            cli::run_token_file(file, once).await
        }
    }
}
