//! Real binaries as child processes, waited on by what they print rather than
//! by sleeping.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};

/// How long a daemon may take to say it is ready before the test gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running daemon; killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    name: String,
    /// Bytes the daemon has written to stderr (its log) so far.
    logged: Arc<AtomicUsize>,
    /// Every line of its stderr so far.
    lines: Arc<Mutex<Vec<String>>>,
    /// The thread draining stderr; it ends when the daemon does.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts `command` and returns once a line of its stderr contains `ready_marker`.
    pub fn start(mut command: Command, name: &str, ready_marker: &str) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let (lines_tx, lines_rx) = mpsc::channel();
        let logged = Arc::new(AtomicUsize::new(0));
        let counter = logged.clone();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        // Keeps draining stderr for the daemon's whole life so it never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                counter.fetch_add(line.len() + 1, Ordering::Relaxed);
                kept.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line.clone());
                let _ = lines_tx.send(line);
            }
        });
        let mut seen = Vec::new();
        loop {
            match lines_rx.recv_timeout(READY_TIMEOUT) {
                Ok(line) if line.contains(ready_marker) => {
                    return Ok(Self {
                        child,
                        name: name.to_owned(),
                        logged,
                        lines,
                        reader: Some(reader),
                    });
                }
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    bail!(
                        "{name} never printed {ready_marker:?} (exit {status:?}); it said:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    }

    /// Bytes the daemon has logged (to stderr) since it started.
    pub fn logged_bytes(&self) -> usize {
        self.logged.load(Ordering::Relaxed)
    }

    /// Asks the daemon to stop with SIGTERM and returns whether it exited cleanly.
    pub fn terminate(self) -> anyhow::Result<bool> {
        Ok(self.stop()?.0)
    }

    /// Every line the daemon has written to stderr so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, signal)?;
        Ok(())
    }

    /// Stops the daemon with SIGTERM; whether it exited cleanly, and every
    /// line of its stderr (read to the end).
    pub fn stop(mut self) -> anyhow::Result<(bool, Vec<String>)> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        let status = self.child.wait()?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok((status.success(), self.log_lines()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("killed {}", self.name);
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a daemon's config).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the server binary `server`'s Admin verb `args` against the Admin
/// socket `socket` with `--output json`, and returns what it printed.
pub fn admin_json(
    server: &str,
    socket: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let output = Command::new(server)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .args(["--output", "json"])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}
