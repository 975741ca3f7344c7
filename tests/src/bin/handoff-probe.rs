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
//!
//! `handoff-probe --parent-execs <program> [args…]`: borrowing a binary's
//! identity through execve. The parent waits until the agent has accepted
//! its connection, hands it to the child and execs `program` (which keeps
//! its PID, so the agent's pin on it holds); the child waits for the exec,
//! asks over the connection, then kills the parent.
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use lanyard_agent::client::WorkloadClient;
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{MsgFlags, recv};
use nix::unistd::Pid;
use tonic::Code;

const CHILD_FLAG: &str = "--child-of";
const PARENT_DEATH_DEADLINE: Duration = Duration::from_secs(30);

/// What the parent does once the child holds the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parent {
    Waits,
    Exits,
    Execs,
}

impl Parent {
    fn name(self) -> &'static str {
        match self {
            Self::Waits => "parent-waits",
            Self::Exits => "parent-exits",
            Self::Execs => "parent-execs",
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, parent, mode] if flag == CHILD_FLAG => {
            let mode = [Parent::Waits, Parent::Exits, Parent::Execs]
                .into_iter()
                .find(|m| m.name() == mode)
                .unwrap_or(Parent::Waits);
            child(parent, mode)
        }
        [] => parent(Parent::Exits, &[]),
        [flag] if flag == "--parent-waits" => parent(Parent::Waits, &[]),
        [flag, program @ ..] if flag == "--parent-execs" => parent(Parent::Execs, program),
        _ => {
            println!(
                "error usage: handoff-probe [--parent-waits | --parent-execs <program> [args…]]"
            );
            ExitCode::from(2)
        }
    }
}

/// Blocks until the agent has accepted `stream` and identified its peer:
/// its HTTP/2 server speaks first (SETTINGS), which is peeked at, not
/// consumed, so that the child's client still reads it.
fn wait_until_accepted(stream: &UnixStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(PARENT_DEATH_DEADLINE))?;
    let mut byte = [0u8; 1];
    let peeked = recv(stream.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK)?;
    stream.set_read_timeout(None)?;
    if peeked == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the agent closed the connection",
        ));
    }
    Ok(())
}

fn parent(mode: Parent, program: &[String]) -> ExitCode {
    let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET").unwrap_or_default();
    let path = endpoint.strip_prefix("unix://").unwrap_or(&endpoint);
    let spawned = UnixStream::connect(path).and_then(|stream| {
        if mode == Parent::Execs {
            wait_until_accepted(&stream)?;
        }
        let exe = std::env::current_exe()?;
        Command::new(exe)
            .args([CHILD_FLAG, &std::process::id().to_string(), mode.name()])
            .stdin(Stdio::from(stream.as_fd().try_clone_to_owned()?))
            .spawn()
    });
    match spawned {
        Ok(_) if mode == Parent::Execs => {
            let Some((program, args)) = program.split_first() else {
                println!("error no program to exec");
                return ExitCode::from(2);
            };
            // Our descriptor of the connection is close-on-exec: only the
            // child holds it from here on.
            let error = Command::new(program).args(args).exec();
            println!("error exec {program}: {error}");
            ExitCode::from(2)
        }
        Ok(mut child) if mode == Parent::Waits => match child.wait() {
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

fn child(parent: &str, mode: Parent) -> ExitCode {
    let result = run_child(parent, mode);
    if mode == Parent::Execs
        && let Ok(pid) = parent.parse()
    {
        // The exec'd program has served its purpose: standing in for a
        // trusted binary while we called.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    match result {
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

fn run_child(parent: &str, mode: Parent) -> anyhow::Result<String> {
    let parent: u32 = parent.parse()?;
    let deadline = Instant::now() + PARENT_DEATH_DEADLINE;
    // We are re-parented once the parent is gone: the event to wait for.
    while mode == Parent::Exits && std::os::unix::process::parent_id() == parent {
        anyhow::ensure!(Instant::now() < deadline, "parent {parent} never exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The parent runs another program once its executable is not ours.
    let ours = std::env::current_exe()?;
    while mode == Parent::Execs && parent_exe(parent)? == ours {
        anyhow::ensure!(Instant::now() < deadline, "parent {parent} never exec'd");
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

fn parent_exe(parent: u32) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{parent}/exe"))
}
