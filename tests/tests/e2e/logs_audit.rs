//! Logs and the audit trail, through the real binaries: the audit file holds
//! one JSON record per mint, attestation and Admin call (with the caller's
//! uid), no secret of the run appears in any log or audit line, a SIGHUP
//! moves the trail to a new 0600 file, `[log] format = "json"` makes every
//! stderr line JSON, logs into a pipe carry no colour codes, and `gcp
//! executable` prints exactly its JSON even with `RUST_LOG=debug` and stderr
//! merged into stdout.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use lanyard_host::logging::secret_fingerprint;
use lanyard_tests::process::{Daemon, free_port};
use lanyard_tests::{EntrySpec, World, my_uid};
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_test-lanyard-server");
const AGENT: &str = env!("CARGO_BIN_EXE_test-lanyard-agent");
const NODE_ID: &str = "spiffe://example.org/node/logs-1";
const WORKLOAD_ID: &str = "spiffe://example.org/logs/web";

fn admin(dir: &Path, args: &[&str]) -> anyhow::Result<Value> {
    lanyard_tests::process::admin_json(SERVER, &dir.join("server/admin.sock"), args)
}

/// Writes `server.toml` in `dir` with `log_table` appended; returns the
/// Node API port.
fn write_server_config(dir: &Path, log_table: &str) -> anyhow::Result<u16> {
    let (oidc_port, node_port) = (free_port()?, free_port()?);
    std::fs::write(
        dir.join("server.toml"),
        format!(
            "trust_domain = \"example.org\"\nissuer = \"https://127.0.0.1:{oidc_port}\"\ndata_dir = \"{}\"\n\
             [oidc]\nlisten = \"127.0.0.1:{oidc_port}\"\n[node_api]\nlisten = \"127.0.0.1:{node_port}\"\n\
             {log_table}\n",
            dir.join("server").display(),
        ),
    )?;
    Ok(node_port)
}

fn start_server(dir: &Path) -> anyhow::Result<Daemon> {
    let mut command = Command::new(SERVER);
    command
        .args(["run", "--config"])
        .arg(dir.join("server.toml"))
        .env("RUST_LOG", "debug");
    Daemon::start(command, "lanyard-server", "lanyard-server is serving")
}

/// Every line of `path`, each parsed as JSON.
fn json_lines(path: &Path) -> anyhow::Result<Vec<Value>> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
        .collect()
}

/// The records of `records` whose `event` is `event` and whose fields
/// include every `(key, value)` of `fields`.
fn records<'a>(records: &'a [Value], event: &str, fields: &[(&str, Value)]) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["event"] == event && fields.iter().all(|(k, v)| &r[*k] == v))
        .collect()
}

/// The one record matching, or an error showing the trail.
fn one<'a>(all: &'a [Value], event: &str, fields: &[(&str, Value)]) -> anyhow::Result<&'a Value> {
    let found = records(all, event, fields);
    anyhow::ensure!(
        found.len() == 1,
        "{} records of {event} {fields:?} in:\n{}",
        found.len(),
        all.iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(found[0])
}

/// Base64 lines of every PEM private key under `dir` (files the daemons wrote).
fn private_key_lines(dir: &Path, found: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            private_key_lines(&path, found)?;
        } else if let Ok(text) = std::fs::read_to_string(&path)
            && text.contains("PRIVATE KEY-----")
        {
            found.extend(
                text.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                    .map(str::to_owned),
            );
        }
    }
    Ok(())
}

/// Polls `check` until it holds, for at most 20 s.
fn eventually(what: &str, mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if check()? {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_audit_file_has_one_record_per_event_and_no_log_holds_a_secret() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let server_audit = d.join("server-audit.jsonl");
    let agent_audit = d.join("agent-audit.jsonl");
    let node_port = write_server_config(
        d,
        &format!(
            "[log]\nformat = \"json\"\naudit_file = \"{}\"",
            server_audit.display()
        ),
    )?;
    let server = start_server(d)?;

    // An Admin call: a join token for the node.
    let token = admin(d, &["token", "generate", "--spiffe-id", NODE_ID])?;
    let join_token = token["token"].as_str().context("token")?.to_owned();

    // The agent attests with the token (from a 0600 file) and mints.
    let token_file = d.join("join-token");
    std::fs::write(&token_file, &join_token)?;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    let socket = d.join("agent-socket/api.sock");
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "trust_domain = \"example.org\"\ndata_dir = \"{}\"\nsync_interval_seconds = 1\n\
             [server]\naddress = \"127.0.0.1:{node_port}\"\ntrust_bundle = \"{}\"\n\
             join_token_file = \"{}\"\n[workload_api]\nsocket = \"{}\"\n\
             [log]\nformat = \"text\"\naudit_file = \"{}\"\n",
            d.join("agent").display(),
            d.join("server/ca/bundle.pem").display(),
            token_file.display(),
            socket.display(),
            agent_audit.display(),
        ),
    )?;
    let mut command = Command::new(AGENT);
    command
        .args(["run", "--config"])
        .arg(d.join("agent.toml"))
        .env("RUST_LOG", "debug");
    let agent = Daemon::start(command, "lanyard-agent", "Workload API listening")?;
    // Another: an entry under the attested node.
    admin(
        d,
        &[
            "entry",
            "create",
            "--spiffe-id",
            WORKLOAD_ID,
            "--parent-id",
            NODE_ID,
            "--selector",
            &format!("unix:uid:{}", my_uid()),
        ],
    )?;
    let endpoint = format!("unix://{}", socket.display());
    let mut jwt = String::new();
    // The entry reaches the agent at its next sync.
    eventually("the workload gets its JWT-SVID", || {
        let fetched = Command::new(AGENT)
            .args(["api", "fetch", "jwt", "--audience", "logs-test"])
            .args(["--output", "token", "--socket", &endpoint])
            .env_remove("RUST_LOG")
            .output()?;
        jwt = String::from_utf8_lossy(&fetched.stdout).trim().to_owned();
        Ok(fetched.status.success() && jwt.matches('.').count() == 2)
    })?;
    let listed = admin(d, &["entry", "list"])?;
    anyhow::ensure!(listed.to_string().contains(WORKLOAD_ID), "{listed}");
    // The rest of the Admin vocabulary: an entry updated and deleted, and
    // the node banned, unbanned and evicted (its work is done).
    let extra = admin(
        d,
        &[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/logs/extra",
            "--selector",
            "unix:uid:4242",
        ],
    )?;
    let extra_id = extra[0]["id"]
        .as_str()
        .context("the entry's id")?
        .to_owned();
    admin(d, &["entry", "update", &extra_id, "--hint", "renamed"])?;
    admin(d, &["entry", "delete", &extra_id])?;
    admin(d, &["agent", "ban", NODE_ID])?;
    admin(d, &["agent", "unban", NODE_ID])?;
    admin(d, &["agent", "evict", NODE_ID])?;

    // A clean stop writes out every queued record.
    let (agent_clean, agent_log) = agent.stop()?;
    let (server_clean, server_log) = server.stop()?;
    assert!(agent_clean && server_clean);

    let uid = Value::from(my_uid());
    let trail = json_lines(&server_audit)?;
    for record in &trail {
        assert_eq!(record["target"], "lanyard::audit", "{record}");
        assert!(record["timestamp"].is_string(), "{record}");
    }
    // The attestation, by the token's fingerprint only.
    let attested = one(
        &trail,
        "agent.attested",
        &[("agent", NODE_ID.into()), ("method", "join_token".into())],
    )?;
    assert_eq!(
        attested["token_sha256"],
        Value::from(secret_fingerprint(&join_token))
    );
    assert!(
        attested["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
    one(
        &trail,
        "join_token.created",
        &[("uid", uid.clone()), ("spiffe_id", NODE_ID.into())],
    )?;
    // The mint: one record for this audience.
    let minted = one(
        &trail,
        "jwt_svid.minted",
        &[
            ("agent", NODE_ID.into()),
            ("spiffe_id", WORKLOAD_ID.into()),
            ("audience_count", 1.into()),
        ],
    )?;
    assert!(
        minted["audience"].to_string().contains("logs-test"),
        "{minted}"
    );
    one(
        &trail,
        "entry.created",
        &[("uid", uid.clone()), ("spiffe_id", WORKLOAD_ID.into())],
    )?;
    for (event, field, value) in [
        ("entry.updated", "id", extra_id.as_str()),
        ("entry.deleted", "id", extra_id.as_str()),
        ("agent.banned", "agent", NODE_ID),
        ("agent.unbanned", "agent", NODE_ID),
        ("agent.evicted", "agent", NODE_ID),
    ] {
        one(
            &trail,
            event,
            &[("uid", uid.clone()), (field, value.into())],
        )?;
    }
    // Every Admin call, with the caller's uid and the answer.
    for (method, calls) in [
        ("GenerateJoinToken", 1),
        ("CreateEntry", 2),
        ("ListEntries", 1),
        ("UpdateEntry", 1),
        ("DeleteEntry", 1),
        ("BanAgent", 1),
        ("UnbanAgent", 1),
        ("EvictAgent", 1),
    ] {
        let fields = [
            ("method", method.into()),
            ("uid", uid.clone()),
            ("code", "ok".into()),
        ];
        assert_eq!(
            records(&trail, "admin.call", &fields).len(),
            calls,
            "{method}"
        );
    }
    // The trail is the audit file's alone: not in the log.
    assert!(
        !server_log.iter().any(|l| l.contains("lanyard::audit")),
        "audit records in the server's log"
    );

    // The agent's trail: the mint it asked for, for this process's uid.
    let agent_trail = json_lines(&agent_audit)?;
    let asked = one(
        &agent_trail,
        "jwt_svid.minted",
        &[
            ("spiffe_id", WORKLOAD_ID.into()),
            ("uid", uid),
            ("trigger", "request".into()),
        ],
    )?;
    assert_eq!(asked["audience_count"], 1);
    assert!(asked["pid"].as_i64().is_some_and(|pid| pid > 0), "{asked}");

    // `[log] format = "json"`: every stderr line of the server is JSON.
    assert!(!server_log.is_empty());
    for line in &server_log {
        let parsed: Value =
            serde_json::from_str(line).with_context(|| format!("server log line: {line}"))?;
        assert!(parsed["level"].is_string(), "{line}");
    }
    // Logs into a pipe carry no colour codes (text or JSON).
    assert!(agent_log.len() > 1);
    for line in agent_log.iter().chain(&server_log) {
        assert!(!line.contains('\u{1b}'), "ANSI escape in {line:?}");
    }

    // No secret of the run in any log or audit line.
    let mut secrets = vec![
        ("the JWT-SVID", jwt.clone()),
        ("the join token", join_token.clone()),
    ];
    if let Some(signature) = jwt.rsplit('.').next() {
        secrets.push(("the JWT-SVID's signature", signature.to_owned()));
    }
    let mut key_lines = Vec::new();
    private_key_lines(&d.join("server"), &mut key_lines)?;
    private_key_lines(&d.join("agent"), &mut key_lines)?;
    assert!(!key_lines.is_empty(), "no private key found to look for");
    secrets.extend(key_lines.into_iter().map(|l| ("a private key", l)));
    let server_trail = std::fs::read_to_string(&server_audit)?;
    let agent_trail = std::fs::read_to_string(&agent_audit)?;
    let outputs: [(&str, String); 4] = [
        ("the server's log", server_log.join("\n")),
        ("the agent's log", agent_log.join("\n")),
        ("the server's audit file", server_trail),
        ("the agent's audit file", agent_trail),
    ];
    for (name, text) in &outputs {
        for (what, secret) in &secrets {
            assert!(!secret.is_empty());
            assert!(!text.contains(secret.as_str()), "{what} is in {name}");
        }
    }
    Ok(())
}

#[test]
fn sighup_moves_the_audit_trail_to_a_new_private_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let audit = d.join("audit.jsonl");
    write_server_config(d, &format!("[log]\naudit_file = \"{}\"", audit.display()))?;
    let server = start_server(d)?;
    admin(d, &["entry", "list"])?;
    // The record reaches the file through the writer thread.
    eventually("the first Admin call is in the audit file", || {
        Ok(std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .contains("ListEntries"))
    })?;

    // logrotate: move the file, then SIGHUP.
    let rotated = d.join("audit.jsonl.1");
    std::fs::rename(&audit, &rotated)?;
    server.signal(nix::sys::signal::Signal::SIGHUP)?;
    // The reopen is the new file's first record.
    eventually("a new audit file appears", || Ok(audit.exists()))?;
    assert_eq!(
        std::fs::metadata(&audit)?.permissions().mode() & 0o777,
        0o600
    );
    admin(d, &["agent", "list"])?;
    eventually("the next Admin call is in the new file", || {
        Ok(std::fs::read_to_string(&audit)?.contains("ListAgents"))
    })?;
    let (clean, _) = server.stop()?;
    assert!(clean);

    let new = json_lines(&audit)?;
    one(&new, "audit.reopened", &[])?;
    one(&new, "admin.call", &[("method", "ListAgents".into())])?;
    let old = json_lines(&rotated)?;
    one(&old, "admin.call", &[("method", "ListEntries".into())])?;
    assert!(records(&old, "admin.call", &[("method", "ListAgents".into())]).is_empty());
    assert!(records(&new, "admin.call", &[("method", "ListEntries".into())]).is_empty());
    Ok(())
}

#[test]
fn sighup_without_an_audit_file_does_not_stop_a_daemon() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    write_server_config(d, "")?;
    let server = start_server(d)?;
    server.signal(nix::sys::signal::Signal::SIGHUP)?;
    eventually("the server notes the SIGHUP", || {
        Ok(server
            .log_lines()
            .iter()
            .any(|l| l.contains("no audit file to reopen")))
    })?;
    // Still serving; audit records stay in the log when there is no file.
    admin(d, &["entry", "list"])?;
    let (clean, log) = server.stop()?;
    assert!(clean);
    assert!(
        log.iter()
            .any(|l| l.contains("lanyard::audit") && l.contains("admin.call")),
        "no audit record in the log"
    );
    Ok(())
}

/// Runs `gcp executable` with exactly `env`, stderr merged into stdout as
/// google-auth runs it; the merged output and whether it succeeded.
fn gcp_executable_merged(env: &[(&str, String)]) -> anyhow::Result<(String, bool)> {
    let (mut reader, writer) = std::io::pipe()?;
    let mut command = Command::new(AGENT);
    command
        .args(["gcp", "executable"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn()?;
    // The parent's copies of the pipe's write end go with `command`.
    drop(command);
    let mut merged = String::new();
    reader.read_to_string(&mut merged)?;
    let status = child.wait()?;
    Ok((merged, status.success()))
}

#[tokio::test(flavor = "multi_thread")]
async fn gcp_executable_prints_only_its_json_whatever_rust_log_says() -> anyhow::Result<()> {
    let world = World::start("/logs-gcp", &[EntrySpec::mine("/logs/gcp")]).await?;
    let audience =
        "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/l";
    let dir = tempfile::tempdir()?;
    let env = |socket: String| {
        vec![
            ("RUST_LOG", "debug".to_owned()),
            ("SPIFFE_ENDPOINT_SOCKET", socket),
            ("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE", audience.to_owned()),
            ("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE", "0".to_owned()),
        ]
    };

    // Success: the whole merged output is the response, one JSON line.
    let (merged, ok) =
        tokio::task::block_in_place(|| gcp_executable_merged(&env(world.endpoint())))?;
    assert!(ok, "{merged}");
    let response: Value =
        serde_json::from_str(&merged).with_context(|| format!("not exact JSON: {merged:?}"))?;
    assert_eq!(merged.trim_end().lines().count(), 1, "{merged:?}");
    assert_eq!(response["success"], true);
    assert_eq!(response["version"], 1);
    assert!(
        response["id_token"]
            .as_str()
            .is_some_and(|t| t.matches('.').count() == 2)
    );

    // Failure (no agent there): the failure form, exactly, and a non-zero exit.
    let nowhere = format!("unix://{}", dir.path().join("nothing.sock").display());
    let (merged, ok) =
        tokio::task::block_in_place(|| gcp_executable_merged(&env(nowhere.clone())))?;
    assert!(!ok);
    let response: Value =
        serde_json::from_str(&merged).with_context(|| format!("not exact JSON: {merged:?}"))?;
    assert_eq!(response["success"], false);
    assert!(response["code"].is_string() && response["message"].is_string());

    // Logs only when asked, to the file named, created 0600.
    let log_file: PathBuf = dir.path().join("helper.log");
    let mut asked = env(nowhere);
    asked.push(("LANYARD_LOG_FILE", log_file.display().to_string()));
    let (merged, ok) = tokio::task::block_in_place(|| gcp_executable_merged(&asked))?;
    assert!(!ok);
    let _: Value =
        serde_json::from_str(&merged).with_context(|| format!("not exact JSON: {merged:?}"))?;
    let logged = std::fs::read_to_string(&log_file)?;
    assert!(logged.contains("gcp executable failed"), "{logged}");
    assert!(!logged.contains('\u{1b}'));
    assert_eq!(
        std::fs::metadata(&log_file)?.permissions().mode() & 0o777,
        0o600
    );
    world.stop().await;
    Ok(())
}
