//! `unix:sha256` and `unix:path` selectors through the real socket: an entry
//! pinned to a binary's hash or path is served to that binary only, and not
//! to a connection whose process has since exec'd that binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use lanyard_agent::attestor::binary::sha256_hex;
use lanyard_agent::workload_client::WorkloadClient;
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
