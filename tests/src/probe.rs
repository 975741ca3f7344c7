//! A workload probe (`workload-probe --stdin-steps`) that connects and asks
//! only when told, so that a test can move it (into a cgroup, say) before it
//! connects and between its calls on one connection.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::Context;

#[derive(Debug)]
pub struct SteppedProbe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl SteppedProbe {
    /// Starts `probe` (the workload-probe binary) against `endpoint`, asking
    /// for `audience`; with `token` it prints the token after the ID.
    pub fn spawn(probe: &str, endpoint: &str, audience: &str, token: bool) -> anyhow::Result<Self> {
        let mut args = vec![audience, "--stdin-steps"];
        if token {
            args.push("--token");
        }
        let mut child = Command::new(probe)
            .args(&args)
            .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {probe}"))?;
        let stdin = child.stdin.take().context("probe stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("probe stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it take its next step; what it printed.
    pub fn step(&mut self) -> anyhow::Result<String> {
        writeln!(self.stdin, "go")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line.trim().to_owned())
    }
}

impl Drop for SteppedProbe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
