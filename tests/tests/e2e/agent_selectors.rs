//! `unix:sha256` and `unix:path` selectors through the real socket: an entry
//! pinned to a binary's hash or path is served to that binary only, and not
//! to a connection whose process has since exec'd that binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lanyard_agent::attestor::binary::sha256_hex;
use lanyard_agent::client::WorkloadClient;
use lanyard_proto::{Selector, SpiffeId};
use lanyard_server::store::Datastore;
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World, my_uid};
use tonic::Code;

const PROBE: &str = env!("CARGO_BIN_EXE_workload-probe");
const HANDOFF: &str = env!("CARGO_BIN_EXE_handoff-probe");
const OTHER_BINARY: &str = env!("CARGO_BIN_EXE_test-lanyard-agent");
const BY_HASH: &str = "/selectors/by-hash";
const BY_PATH: &str = "/selectors/by-path";
const SLEEP_BY_PATH: &str = "/selectors/sleep-by-path";
const SLEEP_BY_HASH: &str = "/selectors/sleep-by-hash";
const HANDOFF_BY_PATH: &str = "/selectors/handoff-by-path";
const OLD_PATH_ONLY: &str = "/selectors/old-path-only";
const OLD_HASH_ONLY: &str = "/selectors/old-hash-only";
const PATH_AND_UID: &str = "/selectors/path-and-uid";
const SERVER: &str = env!("CARGO_BIN_EXE_test-lanyard-server");

/// Runs `binary args` against the agent at `endpoint`: its stdout, trimmed, and exit code.
fn run_against(
    binary: &Path,
    args: &[&str],
    endpoint: &str,
) -> anyhow::Result<(String, Option<i32>)> {
    let output = Command::new(binary)
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .output()?;
    Ok((
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        output.status.code(),
    ))
}

fn probe_output(binary: &Path, endpoint: &str) -> anyhow::Result<(String, Option<i32>)> {
    run_against(binary, &["selectors-test"], endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_hash_selectors_match_the_right_binary_only() -> anyhow::Result<()> {
    // A second copy of the probe, one byte longer: another path and another hash.
    let bin_dir = tempfile::tempdir()?;
    let copy: PathBuf = bin_dir.path().canonicalize()?.join("workload-probe-copy");
    std::fs::copy(PROBE, &copy)?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&copy)?
        .write_all(b"\0")?;
    let probe_hash = sha256_hex(&mut std::fs::File::open(PROBE)?)?;
    let copy_hash = sha256_hex(&mut std::fs::File::open(&copy)?)?;
    assert_ne!(probe_hash, copy_hash);

    // Binary selectors need a uid (or gid) beside them: this test's own.
    let uid = format!("unix:uid:{}", my_uid());
    let world = World::start_with_agent_tables(
        "",
        &[
            EntrySpec::new(BY_HASH, &[&format!("unix:sha256:{probe_hash}"), &uid]),
            EntrySpec::new(BY_PATH, &[&format!("unix:path:{}", copy.display()), &uid]),
        ],
        "[workload_attestor]\npath_selectors = true\nsha256_selectors = true\n",
    )
    .await?;
    let endpoint = world.endpoint();

    let (original, original_code) =
        tokio::task::block_in_place(|| probe_output(Path::new(PROBE), &endpoint))?;
    assert_eq!(original, format!("ok spiffe://{TRUST_DOMAIN}{BY_HASH}"));
    assert_eq!(original_code, Some(0));

    let (copied, _) = tokio::task::block_in_place(|| probe_output(&copy, &endpoint))?;
    assert_eq!(copied, format!("ok spiffe://{TRUST_DOMAIN}{BY_PATH}"));

    // Another binary (the agent's own CLI) matches neither entry.
    let other = tokio::task::block_in_place(|| {
        Command::new(OTHER_BINARY)
            .args([
                "api",
                "fetch",
                "jwt",
                "--audience",
                "a",
                "--socket",
                &endpoint,
            ])
            .output()
    })?;
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(stderr.contains("no identity issued"), "{stderr}");

    // And so does this test binary, same uid as all of the above.
    let mut raw = WorkloadClient::new(&endpoint)?;
    let denied = raw.fetch_jwt(vec!["a".to_owned()], None).await;
    assert_eq!(
        denied.as_ref().err().and_then(|e| e.code()),
        Some(Code::PermissionDenied),
        "{denied:?}"
    );

    world.stop().await;
    Ok(())
}

/// With the binary selectors switched off (the default), entries that need
/// them match nobody, not even the right binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_selectors_are_off_unless_enabled() -> anyhow::Result<()> {
    let probe_hash = sha256_hex(&mut std::fs::File::open(PROBE)?)?;
    let world = World::start(
        "",
        &[EntrySpec::new(
            BY_HASH,
            &[
                &format!("unix:sha256:{probe_hash}"),
                &format!("unix:uid:{}", my_uid()),
            ],
        )],
    )
    .await?;
    let endpoint = world.endpoint();
    let (output, code) = tokio::task::block_in_place(|| probe_output(Path::new(PROBE), &endpoint))?;
    assert!(output.starts_with("denied"), "{output}");
    assert_eq!(code, Some(1));
    world.stop().await;
    Ok(())
}

/// `handoff-probe <args>` against `endpoint`: its child's line and exit code.
fn handoff(endpoint: &str, args: &[&str]) -> anyhow::Result<(String, Option<i32>)> {
    // `output` returns once the child, which inherited stdout, is done too.
    run_against(Path::new(HANDOFF), args, endpoint)
}

/// Borrowing a binary's identity through execve: a process connects, the
/// agent accepts, the process hands the connection to a child and execs a
/// binary that entries are pinned to (by path and by hash). Its PID and so
/// the agent's pin are unchanged, and /proc now shows the pinned binary; but
/// it is not what connected, so the child gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_kept_across_an_exec_gets_no_binary_identity() -> anyhow::Result<()> {
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("no sleep binary"))?;
    // What /proc/<pid>/exe shows: the file behind any symbolic links.
    let sleep_file = sleep.canonicalize()?;
    let sleep_hash = sha256_hex(&mut std::fs::File::open(&sleep_file)?)?;
    let handoff_file = Path::new(HANDOFF).canonicalize()?;
    // The exec'd process keeps the uid, so the uid beside each binary
    // selector leaves the exec the only thing under test.
    let uid = format!("unix:uid:{}", my_uid());
    let world = World::start_with_agent_tables(
        "",
        &[
            EntrySpec::new(
                SLEEP_BY_PATH,
                &[&format!("unix:path:{}", sleep_file.display()), &uid],
            ),
            EntrySpec::new(SLEEP_BY_HASH, &[&format!("unix:sha256:{sleep_hash}"), &uid]),
            EntrySpec::new(
                HANDOFF_BY_PATH,
                &[&format!("unix:path:{}", handoff_file.display()), &uid],
            ),
        ],
        "[workload_attestor]\npath_selectors = true\nsha256_selectors = true\n",
    )
    .await?;
    let endpoint = world.endpoint();

    // The same handoff without the exec: the child, not the connecting
    // process, writes, so it gets no binary identity either (agent_handoff.rs).
    let (kept, code) = tokio::task::block_in_place(|| handoff(&endpoint, &["--parent-waits"]))?;
    assert!(kept.starts_with("denied"), "{kept}");
    assert!(kept.contains("handed over"), "{kept}");
    assert_eq!(code, Some(1));

    let sleep_arg = sleep.display().to_string();
    // The exit status is that of the exec'd sleep, which the child kills.
    let (execd, _) =
        tokio::task::block_in_place(|| handoff(&endpoint, &["--parent-execs", &sleep_arg, "30"]))?;
    // The child writes here, so the writer check (SO_PASSCRED) refuses the
    // binary selectors before the exec check does; either is a refusal.
    assert!(execd.starts_with("denied"), "{execd}");
    assert!(
        execd.contains("execve") || execd.contains("handed over"),
        "{execd}"
    );

    world.stop().await;
    Ok(())
}

/// Issue 11, finding 1, entries stored before binary selectors needed a uid
/// or gid: written straight into the running server's datastore (as an older
/// server stored them, past today's Admin API), one selecting only this test
/// binary's path and one only its hash are never issued to it, while an entry
/// with its path and uid is; `entry list` marks the old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_binary_entry_without_a_uid_is_never_issued() -> anyhow::Result<()> {
    let world = World::start_with_agent_config(
        "",
        &[],
        "sync_interval_seconds = 1",
        "[workload_attestor]\npath_selectors = true\nsha256_selectors = true\n",
    )
    .await?;
    let me = std::env::current_exe()?.canonicalize()?;
    let path = format!("unix:path:{}", me.display());
    let hash = format!(
        "unix:sha256:{}",
        sha256_hex(&mut std::fs::File::open(&me)?)?
    );
    let uid = format!("unix:uid:{}", my_uid());
    let id = |path: &str| SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}{path}"));
    let local_agent = id("/lanyard/agent/local")?;
    let store = Datastore::open_sqlite(&world.dir.path().join("server/datastore.sqlite3")).await?;
    // The old entries first: once the agent serves the last one, it has synced them.
    for (entry_id, spiffe_path, selectors) in [
        ("old-path-only", OLD_PATH_ONLY, vec![&path]),
        ("old-hash-only", OLD_HASH_ONLY, vec![&hash]),
        ("path-and-uid", PATH_AND_UID, vec![&path, &uid]),
    ] {
        let spec = lanyard_server::authority::entries::EntrySpec::new(
            id(spiffe_path)?,
            local_agent.clone(),
            selectors
                .into_iter()
                .map(|s| Selector::parse(s))
                .collect::<Result<_, _>>()?,
            Duration::from_secs(300),
        );
        store.create_entry(entry_id, &spec, 1).await?;
    }
    store.close().await;

    let mut client = WorkloadClient::new(&world.endpoint())?;
    let wanted = vec![format!("spiffe://{TRUST_DOMAIN}{PATH_AND_UID}")];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let served = client.fetch_jwt(vec!["a".to_owned()], None).await;
        let ids: Option<Vec<String>> = served
            .as_ref()
            .ok()
            .map(|svids| svids.iter().map(|s| s.spiffe_id.clone()).collect());
        if ids.as_ref() == Some(&wanted) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline && ids.is_none_or(|ids| ids.len() <= 1),
            "not (only) the path+uid entry: {served:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And so it stays, through more syncs: neither asked for by name, nor as X.509.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let all = client.fetch_jwt(vec!["a".to_owned()], None).await?;
    assert_eq!(
        all.iter().map(|s| s.spiffe_id.clone()).collect::<Vec<_>>(),
        wanted
    );
    for old in [OLD_PATH_ONLY, OLD_HASH_ONLY] {
        let named = client
            .fetch_jwt(
                vec!["a".to_owned()],
                Some(format!("spiffe://{TRUST_DOMAIN}{old}")),
            )
            .await;
        assert_eq!(
            named.as_ref().err().and_then(|e| e.code()),
            Some(Code::PermissionDenied),
            "{old}: {named:?}"
        );
    }
    let x509 = client.fetch_x509().await?;
    assert_eq!(
        x509.iter().map(|s| s.spiffe_id.clone()).collect::<Vec<_>>(),
        wanted
    );

    // `entry list` marks them, for people and for scripts.
    let list = |output: &str| -> anyhow::Result<String> {
        let out = Command::new(SERVER)
            .args(["entry", "list", "--output", output, "--socket"])
            .arg(&world.server.admin_socket)
            .env("RUST_LOG", "off")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let (human, json) =
        tokio::task::block_in_place(|| anyhow::Ok((list("human")?, list("json")?)))?;
    let warning = "Warning       : selects a binary without unix:uid or unix:gid; the agent will not issue it";
    assert_eq!(human.matches(warning).count(), 2, "{human}");
    for block in human.split("\n\n") {
        assert_eq!(
            block.contains(warning),
            !block.contains(PATH_AND_UID),
            "{block}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(&json)?;
    let entries = json.as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 3, "{json}");
    for entry in entries {
        let old = entry["spiffe_id"] != format!("spiffe://{TRUST_DOMAIN}{PATH_AND_UID}");
        assert_eq!(entry["issuable"], !old, "{entry}");
        assert_eq!(
            entry["warnings"].as_array().map(Vec::len),
            Some(usize::from(old)),
            "{entry}"
        );
    }

    world.stop().await;
    Ok(())
}
