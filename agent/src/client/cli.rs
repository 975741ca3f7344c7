//! Command line of `lanyard-agent`.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use super::cloud;
use super::workload_api::{FetchedX509, Health, WorkloadClient};

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
        /// A file (mode 0600) holding the single-use token to attest with when
        /// no agent SVID is stored yet. The token itself may also come from the
        /// environment (LANYARD_JOIN_TOKEN) or server.join_token(_file).
        #[arg(long, env = "LANYARD_JOIN_TOKEN_FILE")]
        join_token_file: Option<PathBuf>,
        /// Refused: a token on the command line is in /proc/PID/cmdline,
        /// readable by every local user, who could redeem it first.
        #[arg(long, hide = true)]
        join_token: Option<String>,
    },
    /// Load and validate a config file, then exit (0 when it would run).
    CheckConfig {
        /// Path of agent.toml.
        #[arg(long, short, env = "LANYARD_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Talk to a running agent's Workload API as this process.
    #[command(subcommand)]
    Api(ApiCommand),
    /// Check that the agent's Workload API socket answers (exit 0) or not (exit 1).
    Healthcheck {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// AWS credentials from this process's JWT-SVID.
    #[command(subcommand)]
    Aws(AwsCommand),
    /// GCP workload identity federation from this process's JWT-SVID.
    #[command(subcommand)]
    Gcp(GcpCommand),
    /// Keep this process's JWT-SVID in a file (AWS_WEB_IDENTITY_TOKEN_FILE,
    /// AZURE_FEDERATED_TOKEN_FILE, GCP file-sourced credentials), rewritten
    /// before half of its lifetime has passed. Runs until stopped.
    TokenFile {
        /// Audience of the token (repeat for several).
        #[arg(long, short, required = true)]
        audience: Vec<String>,
        /// The file to keep (mode 0600, replaced atomically).
        #[arg(long)]
        path: PathBuf,
        /// Only this SPIFFE ID (required when the process has several).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Write the file once and exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum AwsCommand {
    /// Print AWS `credential_process` JSON: the JWT-SVID exchanged at STS
    /// AssumeRoleWithWebIdentity. The endpoint follows AWS_ENDPOINT_URL_STS.
    CredentialProcess {
        /// The role to assume.
        #[arg(long)]
        role_arn: String,
        /// The token's audience: a client ID of the IAM OIDC provider.
        #[arg(long, default_value = cloud::aws::DEFAULT_AUDIENCE)]
        audience: String,
        /// RoleSessionName (default: derived from the SPIFFE ID).
        #[arg(long)]
        session_name: Option<String>,
        /// Session length in seconds (900–43200; STS defaults to 3600).
        #[arg(long = "duration")]
        duration_seconds: Option<u32>,
        /// STS region (default: AWS_REGION or the profile, else us-east-1).
        #[arg(long)]
        region: Option<String>,
        /// Give up after this many seconds, retries included (1–600).
        #[arg(long = "timeout", default_value_t = cloud::aws::DEFAULT_TIMEOUT_SECONDS)]
        timeout_seconds: u32,
        /// Only this SPIFFE ID (required when the process has several).
        #[arg(long)]
        spiffe_id: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum GcpCommand {
    /// Print Google's executable-sourced credential response (for
    /// `credential_source.executable.command`).
    Executable {
        /// The provider's audience: //iam.googleapis.com/projects/…/providers/….
        #[arg(long, env = "GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE")]
        audience: String,
        /// Only this SPIFFE ID (required when the process has several).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Where Google's library caches the response, when it asks.
        #[arg(long, env = "GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE")]
        output_file: Option<PathBuf>,
        /// The subject token type the credential configuration expects.
        #[arg(long, env = "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE")]
        token_type: Option<String>,
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
    /// Fetch this process's X509-SVIDs: print what they are, or write them out.
    X509 {
        /// Write svid.pem (chain, leaf first), svid.key (PKCS#8, mode 0600) and
        /// bundle.pem into this directory; further SVIDs as svid.1.pem, ….
        #[arg(long)]
        write: Option<PathBuf>,
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Print the X.509 bundles (CA certificates per trust domain) as PEM, or JSON.
    X509Bundle {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
}

/// How X.509 material is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: a summary of each SVID; bundles as PEM.
    Text,
    /// JSON with PEM strings (never the private key).
    Json,
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
        ApiCommand::Fetch(FetchCommand::X509 {
            write,
            socket,
            output,
        }) => {
            let svids = WorkloadClient::new(&socket.endpoint)?.fetch_x509().await?;
            if let Some(dir) = &write {
                write_x509(dir, &svids)?;
            }
            print_x509(&svids, output, write.as_deref())?;
        }
        ApiCommand::Fetch(FetchCommand::X509Bundle { socket, output }) => {
            let bundles = WorkloadClient::new(&socket.endpoint)?
                .fetch_x509_bundles()
                .await?;
            match output {
                Format::Text => {
                    for certificates in bundles.values() {
                        print!("{}", pem_certificates(certificates));
                    }
                }
                Format::Json => {
                    let json: serde_json::Map<String, serde_json::Value> = bundles
                        .iter()
                        .map(|(td, certificates)| (td.clone(), pem_list(certificates).into()))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&json)?);
                }
            }
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

fn pem_certificates(certificates: &[Vec<u8>]) -> String {
    certificates
        .iter()
        .map(|der| lanyard_host::pem::encode("CERTIFICATE", der))
        .collect()
}

fn pem_list(certificates: &[Vec<u8>]) -> Vec<serde_json::Value> {
    certificates
        .iter()
        .map(|der| lanyard_host::pem::encode("CERTIFICATE", der).into())
        .collect()
}

/// svid.pem, svid.key (0600) and bundle.pem for the first SVID; svid.N.* for
/// the N-th after it. Each file is replaced atomically.
fn write_x509(dir: &std::path::Path, svids: &[FetchedX509]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, svid) in svids.iter().enumerate() {
        let suffix = if i == 0 {
            String::new()
        } else {
            format!(".{i}")
        };
        let key = lanyard_host::pem::encode("PRIVATE KEY", &svid.key);
        lanyard_host::private_files::write_private_file(
            &dir.join(format!("svid{suffix}.key")),
            key.as_bytes(),
        )?;
        for (name, contents) in [
            (format!("svid{suffix}.pem"), pem_certificates(&svid.chain)),
            (
                format!("bundle{suffix}.pem"),
                pem_certificates(&svid.bundle),
            ),
        ] {
            // Certificates are public: readable by whoever may enter `dir`.
            let path = dir.join(name);
            lanyard_host::private_files::write_private_file(&path, contents.as_bytes())?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
        }
    }
    Ok(())
}

fn print_x509(
    svids: &[FetchedX509],
    output: Format,
    written: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    match output {
        Format::Text => {
            for (i, svid) in svids.iter().enumerate() {
                let leaf = svid
                    .chain
                    .first()
                    .context("an X509-SVID without a certificate")?;
                let (_, cert) = x509_parser::parse_x509_certificate(leaf)
                    .map_err(|e| anyhow::anyhow!("the agent's certificate does not parse: {e}"))?;
                println!("SPIFFE ID    : {}", svid.spiffe_id);
                if !svid.hint.is_empty() {
                    println!("Hint         : {}", svid.hint);
                }
                println!("Valid after  : {}", cert.validity().not_before);
                println!("Valid until  : {}", cert.validity().not_after);
                println!("Chain        : {} certificate(s)", svid.chain.len());
                println!("Bundle       : {} CA certificate(s)", svid.bundle.len());
                if let Some(dir) = written {
                    let suffix = if i == 0 {
                        String::new()
                    } else {
                        format!(".{i}")
                    };
                    println!(
                        "Written      : {}/svid{suffix}.{{pem,key}}, bundle{suffix}.pem",
                        dir.display()
                    );
                }
                println!();
            }
        }
        Format::Json => {
            let list: Vec<_> = svids
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "spiffe_id": s.spiffe_id,
                        "hint": s.hint,
                        "chain_pem": pem_list(&s.chain),
                        "bundle_pem": pem_list(&s.bundle),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
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

/// `aws …`: prints the credentials on stdout; an error goes to the caller.
pub async fn run_aws(command: AwsCommand) -> anyhow::Result<()> {
    let AwsCommand::CredentialProcess {
        role_arn,
        audience,
        session_name,
        duration_seconds,
        region,
        timeout_seconds,
        spiffe_id,
        socket,
    } = command;
    let request = cloud::aws::Request {
        role_arn,
        session_name,
        duration_seconds,
        region,
        timeout_seconds,
    };
    let json =
        cloud::aws::credential_process(&socket.endpoint, &audience, spiffe_id.as_deref(), &request)
            .await?;
    println!("{json}");
    Ok(())
}

/// `gcp …`: prints the executable response, success or failure form; a
/// failure also fails the process, as Google's libraries require. Nothing
/// else is written to stdout or stderr: google-auth merges them.
pub async fn run_gcp(command: GcpCommand) -> std::process::ExitCode {
    let GcpCommand::Executable {
        audience,
        spiffe_id,
        output_file,
        token_type,
        socket,
    } = command;
    let response = cloud::gcp::executable(
        &socket.endpoint,
        &audience,
        spiffe_id.as_deref(),
        token_type.as_deref(),
        output_file.as_deref(),
    )
    .await;
    println!("{}", response.to_json());
    match response {
        cloud::gcp::ExecutableResponse::Failure { code, message, .. } => {
            tracing::warn!(code, reason = message, "gcp executable failed");
            std::process::ExitCode::FAILURE
        }
        cloud::gcp::ExecutableResponse::Success { .. } => std::process::ExitCode::SUCCESS,
    }
}

/// `token-file`: once, or until SIGTERM/SIGINT.
pub async fn run_token_file(file: cloud::token_file::TokenFile, once: bool) -> anyhow::Result<()> {
    file.validate()?;
    if once {
        file.write_once().await?;
        return Ok(());
    }
    let stop = async {
        if let Err(error) = lanyard_host::daemon::shutdown_signal().await {
            tracing::warn!(%error, "cannot listen for signals; stopping");
        }
    };
    file.run(stop).await;
    Ok(())
}
