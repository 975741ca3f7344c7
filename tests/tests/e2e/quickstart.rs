//! The README's first command, `cargo quickstart`: a server and an agent on
//! embedded defaults, the current user registered, a JWT-SVID printed. The
//! printed token verifies against the keys the printed issuer publishes, the
//! configs it writes load, and Ctrl-C stops it cleanly. A state directory
//! whose socket path no SPIFFE endpoint URI can carry is refused, by name.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use lanyard_tests::https_client_trusting;
use serde_json::Value;

const QUICKSTART: &str = env!("CARGO_BIN_EXE_example-quickstart");
/// Longest wait for the quickstart's output before the test gives up.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(60);

/// The value after `marker` on the first line holding it, up to the next space.
fn after<'a>(lines: &'a [String], marker: &str) -> anyhow::Result<&'a str> {
    lines
        .iter()
        .find_map(|l| l.split_once(marker).map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("no {marker:?} in:\n{}", lines.join("\n")))
}

/// The issuer's JWKS, found through its discovery document as an STS would.
async fn discovered_jwks(issuer: &str, cert: &Path) -> anyhow::Result<JwkSet> {
    let client = https_client_trusting(cert)?;
    let discovery: Value = client
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(discovery["issuer"], issuer);
    let jwks_uri = discovery["jwks_uri"].as_str().context("no jwks_uri")?;
    Ok(client
        .get(jwks_uri)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_prints_a_verifiable_jwt_svid_for_the_current_user() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // URI-safe characters that TOML strings must still escape or quote with care.
    let state = dir.path().join("it's-(quick)+start;=@");
    let mut child = Command::new(QUICKSTART)
        .env("LANYARD_QUICKSTART_DIR", &state)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning the quickstart")?;
    let stdout = child.stdout.take().context("stdout is piped")?;
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut lines = Vec::new();
    loop {
        let Ok(line) = lines_rx.recv_timeout(OUTPUT_TIMEOUT) else {
            let _ = child.kill();
            anyhow::bail!(
                "the quickstart stopped before it was serving; it printed:\n{}",
                lines.join("\n")
            );
        };
        let serving = line.starts_with("Serving until Ctrl-C");
        lines.push(line);
        if serving {
            break;
        }
    }

    let issuer = after(&lines, "issuer ")?.to_owned();
    let spiffe_id = after(&lines, "JWT-SVID for ")?.to_owned();
    let token = lines
        .iter()
        .find(|l| l.starts_with("eyJ"))
        .context("no token printed")?;
    assert!(
        spiffe_id.starts_with("spiffe://lanyard.local/user/"),
        "{spiffe_id}"
    );

    let jwks = discovered_jwks(&issuer, &state.join("server/oidc-tls-cert.pem")).await?;
    let kid = decode_header(token)?.kid.context("no kid")?;
    let jwk = jwks.find(&kid).context("kid not published")?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["quickstart"]);
    validation.set_issuer(&[issuer.as_str()]);
    let claims = decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &validation)?.claims;
    assert_eq!(claims["sub"], spiffe_id.as_str());

    // The configs it wrote are what a separate server and agent would load.
    let server = lanyard_server::config::ServerConfig::load(&state.join("server.toml"))?;
    assert_eq!(server.data_dir, state.join("server"));
    let agent = lanyard_agent::config::AgentConfig::load(&state.join("agent.toml"))?;
    assert_eq!(agent.socket, state.join("agent/api.sock"));

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    let status = tokio::task::block_in_place(|| child.wait())?;
    assert!(status.success(), "Ctrl-C ends it cleanly: {status}");
    Ok(())
}

#[test]
fn quickstart_refuses_a_state_directory_no_endpoint_uri_can_name() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join(r#"my "state" \ dir"#);
    let output = Command::new(QUICKSTART)
        .env("LANYARD_QUICKSTART_DIR", &state)
        .stdin(Stdio::null())
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("LANYARD_QUICKSTART_DIR"), "{stderr}");
    assert!(stderr.contains("workload_api.socket"), "{stderr}");
    assert!(stderr.contains("SPIFFE endpoint URI"), "{stderr}");
    assert!(
        !state.join("server").exists(),
        "nothing started, nothing written for the server"
    );
    Ok(())
}
