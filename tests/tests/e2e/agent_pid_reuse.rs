//! A connection whose process has exited gets no identity, even though the
//! kernel still reports that process's uid for the socket: its PID is free
//! for reuse, so nothing read about "that PID" can be trusted any more. The
//! agent pinned the process (pidfd) when it accepted the connection and finds
//! it gone. Without the pin, the uid-only entry below would match.

use std::process::Command;

use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World};

const HANDOFF: &str = env!("CARGO_BIN_EXE_handoff-probe");
const WORKLOAD_PATH: &str = "/pid-reuse/workload";

fn handoff(endpoint: &str, parent_waits: bool) -> anyhow::Result<(String, Option<i32>)> {
    let mut command = Command::new(HANDOFF);
    if parent_waits {
        command.arg("--parent-waits");
    }
    // `output` returns once the child, which inherited stdout, is done too.
    let output = command.env("SPIFFE_ENDPOINT_SOCKET", endpoint).output()?;
    Ok((
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        output.status.code(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_outliving_its_process_gets_no_identity() -> anyhow::Result<()> {
    let world = World::start("", &[EntrySpec::mine(WORKLOAD_PATH)]).await?;
    let endpoint = world.endpoint();

    // Control: the same handoff while the connecting process is alive works.
    let (alive, code) = tokio::task::block_in_place(|| handoff(&endpoint, true))?;
    assert_eq!(alive, format!("ok spiffe://{TRUST_DOMAIN}{WORKLOAD_PATH}"));
    assert_eq!(code, Some(0));

    // The connecting process is dead when the call is made: refused.
    let (orphaned, _) = tokio::task::block_in_place(|| handoff(&endpoint, false))?;
    assert!(orphaned.starts_with("denied"), "{orphaned}");
    assert!(orphaned.contains("has exited"), "{orphaned}");

    world.stop().await;
    Ok(())
}
