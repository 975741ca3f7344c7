//! The agent's client verbs, run as the real binary against a running agent:
//! `api fetch jwt-bundle`, `api validate jwt`, `healthcheck`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World};
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_test-lanyard-agent");
const WORKLOAD_PATH: &str = "/cli/workload";

fn agent(args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
    let mut child = Command::new(AGENT)
        .args(args)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// `api validate jwt --audience <audience> --token <token> --socket <endpoint>`,
/// then `extra`.
fn validate_args<'a>(
    audience: &'a str,
    token: &'a str,
    endpoint: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "api",
        "validate",
        "jwt",
        "--audience",
        audience,
        "--token",
        token,
        "--socket",
        endpoint,
    ];
    args.extend_from_slice(extra);
    args
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_validate_and_healthcheck_verbs() -> anyhow::Result<()> {
    let world = World::start("", &[EntrySpec::mine(WORKLOAD_PATH)]).await?;
    let endpoint = world.endpoint();
    let expected_id = format!("spiffe://{TRUST_DOMAIN}{WORKLOAD_PATH}");
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let bundle = agent(&["api", "fetch", "jwt-bundle", "--socket", &endpoint], None)?;
        assert!(bundle.status.success(), "{}", stderr(&bundle));
        let bundles: Value = serde_json::from_str(&stdout(&bundle))?;
        let keys = bundles[format!("spiffe://{TRUST_DOMAIN}")]["keys"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!keys.is_empty(), "{bundles}");

        let fetched = agent(
            &[
                "api",
                "fetch",
                "jwt",
                "--audience",
                "cli",
                "--socket",
                &endpoint,
            ],
            None,
        )?;
        assert!(fetched.status.success(), "{}", stderr(&fetched));
        let token = stdout(&fetched);

        let validated = agent(
            &validate_args("cli", &token, &endpoint, &["--output", "json"]),
            None,
        )?;
        assert!(validated.status.success(), "{}", stderr(&validated));
        let answer: Value = serde_json::from_str(&stdout(&validated))?;
        assert_eq!(answer["spiffe_id"], expected_id.as_str());
        assert_eq!(answer["claims"]["sub"], expected_id.as_str());
        assert!(answer["claims"]["exp"].is_i64(), "{answer}");

        // The token can come from stdin instead of the process list.
        let from_stdin = agent(&validate_args("cli", "-", &endpoint, &[]), Some(&token))?;
        assert!(from_stdin.status.success(), "{}", stderr(&from_stdin));
        assert_eq!(stdout(&from_stdin), expected_id);

        let wrong_audience = agent(&validate_args("other", &token, &endpoint, &[]), None)?;
        assert!(!wrong_audience.status.success());
        assert!(
            stderr(&wrong_audience).contains("audience"),
            "{}",
            stderr(&wrong_audience)
        );

        let healthy = agent(&["healthcheck", "--socket", &endpoint], None)?;
        assert!(healthy.status.success(), "{}", stderr(&healthy));
        assert!(
            stdout(&healthy).starts_with("healthy"),
            "{}",
            stdout(&healthy)
        );
        Ok(())
    })?;

    world.stop().await;
    Ok(())
}

#[test]
fn healthcheck_fails_when_nothing_answers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let endpoint = format!("unix://{}", dir.path().join("absent.sock").display());
    let output = agent(&["healthcheck", "--socket", &endpoint], None)?;
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("absent.sock"), "{message}");
    Ok(())
}
