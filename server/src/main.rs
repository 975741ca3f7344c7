//! The `lanyard-server` binary: runs the server or one of its operator verbs.
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use lanyard_host::{daemon, logging};
use lanyard_server::authority::Issuer;
use lanyard_server::config::ServerConfig;
use lanyard_server::ops::cli::{Cli, Command, FederationArgs, OidcCommand};
use lanyard_server::ops::federation;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` logs as its config's [log] table says, once it is read.
    if !matches!(cli.command, Command::Run { .. }) {
        logging::init_client("info");
    }
    daemon::exit_code("lanyard-server", run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        verb @ (Command::Entry(_)
        | Command::Oidc(OidcCommand::Publish { .. })
        | Command::Token(_)
        | Command::Agent(_)
        | Command::Bundle(_)
        | Command::Healthcheck { .. }) => {
            println!("{}", lanyard_server::ops::admin_client::run(verb).await?);
            Ok(())
        }
        Command::Federation(args) => federation(args),
        Command::Oidc(OidcCommand::Thumbprint { issuer }) => {
            let issuer = parse_issuer(&issuer)?;
            println!(
                "{}",
                lanyard_server::ops::oidc_tools::thumbprint(&issuer).await?
            );
            Ok(())
        }
        Command::CheckConfig { config } => {
            ServerConfig::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Run { config } => {
            let config = ServerConfig::load(&config)?;
            // Held until the server has stopped: dropping it flushes the audit file.
            let _logging = logging::init(&config.log)?;
            let server = lanyard_server::start(config).await?;
            daemon::run_until_signal(server)
                .await
                .context("server stopped")?;
            Ok(())
        }
    }
}

fn federation(args: FederationArgs) -> anyhow::Result<()> {
    let (issuer, key_type) = match (&args.config, args.issuer) {
        (Some(path), _) => {
            let config = ServerConfig::load(path)?;
            (config.issuer, config.jwt.key_type)
        }
        (None, Some(issuer)) => (parse_issuer(&issuer)?, args.key_type),
        (None, None) => anyhow::bail!("name the issuer with --config server.toml or --issuer URL"),
    };
    let rendered = federation::render(&federation::Request {
        target: args.target,
        issuer,
        subject: args.spiffe_id,
        audience: args.audience,
        allow_wildcard: args.allow_wildcard,
        signing_alg: key_type.alg().to_owned(),
        name: args.name,
        account: args.account,
        session_tags: args.session_tags,
        attribute_mapping: args.attribute_mapping,
    })?;
    for warning in &rendered.warnings {
        eprintln!("warning: {warning}");
    }
    print!("{}", rendered.text);
    Ok(())
}

/// `--issuer` read exactly as `server.toml`'s `issuer` is, so what the clouds
/// are told matches the `iss` the server signs.
fn parse_issuer(issuer: &str) -> anyhow::Result<Issuer> {
    Issuer::parse(issuer).map_err(|e| anyhow::anyhow!("--issuer {issuer:?}: {e}"))
}
