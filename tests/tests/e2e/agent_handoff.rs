//! Issue 11, finding 1, the hand-off variant: a process connects to the
//! Workload API and hands the connection to another process (here its
//! child, which inherits it), which then asks. The connecting process stays
//! alive and keeps running the binary an entry is pinned to, so its pin and
//! /proc agree with the entry; before, the other process got that binary's
//! identity. The kernel labels every read with its writer (SO_PASSCRED), so
//! the agent now sees who wrote and gives binary selectors to nobody else.

use std::path::Path;
use std::process::Command;

use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World, my_uid};

const PROBE: &str = env!("CARGO_BIN_EXE_workload-probe");
const HANDOFF: &str = env!("CARGO_BIN_EXE_handoff-probe");
const PROBE_BY_PATH: &str = "/handoff/probe-by-path";
const HANDOFF_BY_PATH: &str = "/handoff/handoff-by-path";

/// `binary args` against `endpoint`: its stdout, trimmed, and exit code.
fn run(binary: &str, args: &[&str], endpoint: &str) -> anyhow::Result<(String, Option<i32>)> {
    let output = Command::new(binary)
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .output()?;
    Ok((
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        output.status.code(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_written_by_another_process_gets_no_binary_identity() -> anyhow::Result<()> {
    let uid = format!("unix:uid:{}", my_uid());
    let path_of = |binary: &str| -> anyhow::Result<String> {
        Ok(format!(
            "unix:path:{}",
            Path::new(binary).canonicalize()?.display()
        ))
    };
    let world = World::start_with_agent_tables(
        "",
        &[
            EntrySpec::new(PROBE_BY_PATH, &[&path_of(PROBE)?, &uid]),
            EntrySpec::new(HANDOFF_BY_PATH, &[&path_of(HANDOFF)?, &uid]),
        ],
        "[workload_attestor]\npath_selectors = true\n",
    )
    .await?;
    let endpoint = world.endpoint();

    // A process asking on its own connection keeps its binary identity:
    // every byte it sent is labelled with its own PID.
    let (own, code) = tokio::task::block_in_place(|| run(PROBE, &["handoff-aud"], &endpoint))?;
    assert_eq!(own, format!("ok spiffe://{TRUST_DOMAIN}{PROBE_BY_PATH}"));
    assert_eq!(code, Some(0));

    // The parent connects and waits; its child asks on that connection.
    let (handed, code) =
        tokio::task::block_in_place(|| run(HANDOFF, &["--parent-waits"], &endpoint))?;
    assert!(handed.starts_with("denied"), "{handed}");
    assert!(handed.contains("handed over"), "{handed}");
    assert_eq!(code, Some(1));

    world.stop().await;
    Ok(())
}
