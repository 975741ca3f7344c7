//! A workload that tries to borrow an identity from a process that is gone:
//! the parent connects to the Workload API at `SPIFFE_ENDPOINT_SOCKET`, hands
//! the connected socket to a child (as its stdin) and exits; the child waits
//! until its parent is dead, then asks for a JWT-SVID over the inherited
//! connection. This is the PID-reuse attack minus the recycling itself: once
//! the connecting process has exited, its PID is free for anyone.
//!
//! `handoff-probe [--parent-waits]`: with the flag the parent stays alive
//! until the child is done (the control case). Prints `ok <spiffe-id>`,
//! `denied <message>` or `error <message>` (from the child).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use lanyard_agent::workload_client::WorkloadClient;
use tonic::Code;

const CHILD_FLAG: &str = "--child-of";
const PARENT_DEATH_DEADLINE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, parent, mode] if flag == CHILD_FLAG => child(parent, mode == "parent-exits"),
        [] => parent(false),
        [flag] if flag == "--parent-waits" => parent(true),
        _ => {
            println!("error usage: handoff-probe [--parent-waits]");
            ExitCode::from(2)
        }
    }
}

fn parent(wait: bool) -> ExitCode {
    let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET").unwrap_or_default();
    let path = endpoint.strip_prefix("unix://").unwrap_or(&endpoint);
    let spawned = UnixStream::connect(path).and_then(|stream| {
        let exe = std::env::current_exe()?;
        Command::new(exe)
            .args([
                CHILD_FLAG,
                &std::process::id().to_string(),
                if wait { "parent-waits" } else { "parent-exits" },
            ])
            .stdin(Stdio::from(stream.as_fd().try_clone_to_owned()?))
            .spawn()
    });
    match spawned {
        Ok(mut child) if wait => match child.wait() {
            Ok(status) => ExitCode::from(u8::try_from(status.code().unwrap_or(2)).unwrap_or(2)),
            Err(e) => {
                println!("error waiting for the child: {e}");
                ExitCode::from(2)
            }
        },
        // Exits at once: only the child holds the connection now.
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error {e}");
            ExitCode::from(2)
        }
    }
}

fn child(parent: &str, parent_exits: bool) -> ExitCode {
    match run_child(parent, parent_exits) {
        Ok(line) => {
            let code = if line.starts_with("ok") {
                0
            } else if line.starts_with("denied") {
                1
            } else {
                2
            };
            println!("{line}");
            ExitCode::from(code)
        }
        Err(e) => {
            println!("error {e}");
            ExitCode::from(2)
        }
    }
}

fn run_child(parent: &str, parent_exits: bool) -> anyhow::Result<String> {
    let parent: u32 = parent.parse()?;
    // We are re-parented once the parent is gone: the event to wait for.
    let deadline = Instant::now() + PARENT_DEATH_DEADLINE;
    while parent_exits && std::os::unix::process::parent_id() == parent {
        anyhow::ensure!(Instant::now() < deadline, "parent {parent} never exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    let stream = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut client = WorkloadClient::over_connected(stream)?;
        Ok(
            match client.fetch_jwt(vec!["handoff".to_owned()], None).await {
                Ok(svids) => format!(
                    "ok {}",
                    svids.first().map(|s| s.spiffe_id.as_str()).unwrap_or("")
                ),
                Err(e) if e.code() == Some(Code::PermissionDenied) => format!("denied {e}"),
                Err(e) => format!("error {e}"),
            },
        )
    })
}
