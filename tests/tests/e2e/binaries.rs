//! The real `lanyard-server` and `lanyard-agent` binaries as processes: bad
//! config is refused in one line with a non-zero exit, and a good config serves
//! a JWT-SVID that `lanyard-agent api fetch jwt` prints.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use lanyard_tests::process::{Daemon, free_port};
use lanyard_tests::{https_client_trusting, my_uid};
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_test-lanyard-server");
const AGENT: &str = env!("CARGO_BIN_EXE_test-lanyard-agent");

fn run(binary: &str, args: &[&str]) -> std::io::Result<Output> {
    Command::new(binary)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
}

/// Runs `<binary> <verb> --config <config>`.
fn run_with_config(binary: &str, verb: &str, config: &Path) -> anyhow::Result<Output> {
    let config = config.to_str().context("config path is not UTF-8")?;
    Ok(run(binary, &[verb, "--config", config])?)
}

/// Asserts a failed run said exactly one line on stderr, containing `needle`.
fn assert_one_line_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line, got: {stderr:?}"
    );
    assert!(stderr.contains(needle), "{stderr:?} should name {needle:?}");
}

fn server_config(dir: &Path, port: u16) -> String {
    format!(
        "trust_domain = \"example.org\"\nissuer = \"https://127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
         [oidc]\nlisten = \"127.0.0.1:{port}\"\n\
         [[entries]]\nspiffe_id = \"spiffe://example.org/cli\"\nselectors = [\"unix:uid:{}\"]\n",
        dir.join("server").display(),
        my_uid()
    )
}

#[test]
fn bad_server_configs_fail_in_one_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nope.toml");
    assert_one_line_error(
        &run_with_config(SERVER, "check-config", &missing)?,
        "cannot read config",
    );

    let good = server_config(dir.path(), free_port()?);
    let cases = [
        (
            format!("{good}colour = \"blue\"\n"),
            "unknown field `colour`",
        ),
        (
            good.replace("\"example.org\"", "\"Example.org\""),
            "config key `trust_domain`",
        ),
        (
            good.replace("unix:uid", "unix:uuid"),
            "config key `entries[0].selectors`",
        ),
        ("not toml at all".to_owned(), "line 1"),
    ];
    for (text, needle) in cases {
        let path = dir.path().join("server.toml");
        std::fs::write(&path, &text)?;
        for verb in ["check-config", "run"] {
            assert_one_line_error(&run_with_config(SERVER, verb, &path)?, needle);
        }
    }
    Ok(())
}

#[test]
fn unreadable_or_exposed_key_file_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("server.toml");
    std::fs::write(&path, server_config(dir.path(), free_port()?))?;
    let keys = dir.path().join("server/keys");
    std::fs::create_dir_all(&keys)?;
    let key = keys.join("jwt-es256.pem");

    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    assert_one_line_error(&run_with_config(SERVER, "run", &path)?, "mode 0644");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    assert_one_line_error(&run_with_config(SERVER, "run", &path)?, "jwt-es256.pem");

    if my_uid() != 0 {
        // Root reads any file, so only an unprivileged run can test this one.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000))?;
        assert_one_line_error(&run_with_config(SERVER, "run", &path)?, "Permission denied");
    }
    Ok(())
}

#[test]
fn bad_agent_configs_fail_in_one_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("agent.toml");
    for verb in ["check-config", "run"] {
        assert_one_line_error(&run_with_config(AGENT, verb, &path)?, "cannot read config");
    }
    let good = "trust_domain = \"example.org\"\n[server]\nnode_socket = \"/x.sock\"\n";
    let cases = [
        (
            good.replace("example.org", "bad domain"),
            "config key `trust_domain`",
        ),
        (
            format!("{good}colour = \"blue\"\n"),
            "unknown field `colour`",
        ),
        (
            good.replace("node_socket = \"/x.sock\"", "node_socket = \"x.sock\""),
            "server.node_socket",
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(&path, &text)?;
        for verb in ["check-config", "run"] {
            assert_one_line_error(&run_with_config(AGENT, verb, &path)?, needle);
        }
    }
    // A good one: exit 0, naming the file, and nothing started.
    std::fs::write(&path, good)?;
    let checked = run_with_config(AGENT, "check-config", &path)?;
    assert!(checked.status.success(), "{checked:?}");
    assert_eq!(
        String::from_utf8(checked.stdout)?.trim(),
        format!("{}: ok", path.display())
    );
    Ok(())
}

#[test]
fn cli_fetch_prints_a_verifiable_token_and_the_key_survives_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let server_toml = dir.path().join("server.toml");
    std::fs::write(&server_toml, server_config(dir.path(), port))?;
    let agent_socket = dir.path().join("agent/api.sock");
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "trust_domain = \"example.org\"\n[server]\nnode_socket = \"{}\"\n[workload_api]\nsocket = \"{}\"\n",
            dir.path().join("server/node.sock").display(),
            agent_socket.display()
        ),
    )?;

    let start_server = || {
        let mut command = Command::new(SERVER);
        command
            .args(["run", "--config", server_toml.to_str().unwrap()])
            .env("RUST_LOG", "info");
        Daemon::start(command, "lanyard-server", "lanyard-server is serving")
    };
    let server = start_server()?;
    let key_files: Vec<_> =
        std::fs::read_dir(dir.path().join("server/keys"))?.collect::<Result<_, _>>()?;
    assert_eq!(key_files.len(), 1, "one signing key on first start");
    assert_eq!(key_files[0].metadata()?.permissions().mode() & 0o777, 0o600);

    let mut command = Command::new(AGENT);
    command
        .args(["run", "--config", agent_toml.to_str().unwrap()])
        .env("RUST_LOG", "info");
    let agent = Daemon::start(command, "lanyard-agent", "Workload API listening")?;

    let endpoint = format!("unix://{}", agent_socket.display());
    let fetched = Command::new(AGENT)
        .args(["api", "fetch", "jwt", "--audience", "cli-aud"])
        .env("SPIFFE_ENDPOINT_SOCKET", &endpoint)
        .output()?;
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let token = String::from_utf8(fetched.stdout)?.trim().to_owned();

    let jwks = fetch_jwks(dir.path(), port)?;
    let kid = decode_header(&token)?.kid.expect("kid");
    let jwk = jwks.find(&kid).expect("the signing key is published");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["cli-aud"]);
    validation.set_issuer(&[format!("https://127.0.0.1:{port}")]);
    let claims = decode::<Value>(&token, &DecodingKey::from_jwk(jwk)?, &validation)?.claims;
    assert_eq!(claims["sub"], "spiffe://example.org/cli");

    // --output json, and --socket taking precedence over the environment.
    let json = Command::new(AGENT)
        .args([
            "api", "fetch", "jwt", "-a", "x", "--output", "json", "--socket", &endpoint,
        ])
        .env("SPIFFE_ENDPOINT_SOCKET", "unix:///nonexistent.sock")
        .output()?;
    let listed: Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(listed[0]["spiffe_id"], "spiffe://example.org/cli");

    // A missing audience is a usage error; a dead socket is a clear one-line error.
    assert!(
        !Command::new(AGENT)
            .args(["api", "fetch", "jwt"])
            .output()?
            .status
            .success()
    );
    let dead = Command::new(AGENT)
        .args([
            "api",
            "fetch",
            "jwt",
            "-a",
            "x",
            "--socket",
            "unix:///nonexistent/api.sock",
        ])
        .output()?;
    assert_one_line_error(&dead, "/nonexistent/api.sock");

    assert!(agent.terminate()?, "agent exits cleanly on SIGTERM");
    assert!(server.terminate()?, "server exits cleanly on SIGTERM");

    // A restarted server signs with the same key: no new key appears.
    let server = start_server()?;
    let after = fetch_jwks(dir.path(), port)?;
    assert_eq!(after.keys.len(), 1);
    assert!(after.find(&kid).is_some(), "same kid after restart");
    assert!(server.terminate()?);
    Ok(())
}

fn fetch_jwks(dir: &Path, port: u16) -> anyhow::Result<JwkSet> {
    let client = https_client_trusting(&dir.join("server/oidc-tls-cert.pem"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let jwks = client
            .get(format!("https://127.0.0.1:{port}/keys"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(jwks)
    })
}

#[test]
fn federation_prints_cloud_setup_and_refuses_wildcards() -> anyhow::Result<()> {
    let aws = run(
        SERVER,
        &[
            "federation",
            "aws",
            "--issuer",
            "https://oidc.example.org",
            "--spiffe-id",
            "spiffe://example.org/web",
            "--account",
            "123456789012",
        ],
    )?;
    assert!(
        aws.status.success(),
        "{}",
        String::from_utf8_lossy(&aws.stderr)
    );
    let text = String::from_utf8(aws.stdout)?;
    assert!(
        text.contains("\"oidc.example.org:sub\": \"spiffe://example.org/web\""),
        "{text}"
    );
    assert!(
        text.contains("aws iam create-open-id-connect-provider --url https://oidc.example.org")
    );

    let wildcard = run(
        SERVER,
        &[
            "federation",
            "aws",
            "--issuer",
            "https://x",
            "--spiffe-id",
            "spiffe://example.org/*",
        ],
    )?;
    assert_one_line_error(&wildcard, "--allow-wildcard");

    let azure = run(
        SERVER,
        &[
            "federation",
            "azure",
            "--issuer",
            "https://x",
            "--spiffe-id",
            "spiffe://example.org/web",
        ],
    )?;
    assert!(azure.status.success());
    assert!(
        String::from_utf8_lossy(&azure.stderr).contains("warning: the issuer signs with ES256")
    );
    Ok(())
}
