//! The real agent binary as a process, against the in-process server's mTLS
//! Node API: how soon it answers after a restart with its agent SVID on disk,
//! and how much memory it holds with 10,000 JWT-SVIDs cached.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lanyard_host::transport::unix_channel;
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{CreateEntryRequest, GenerateJoinTokenRequest};
use lanyard_tests::{TRUST_DOMAIN, World, my_uid};

use crate::{UNLIMITED_AGENT, workload};

/// Where the agent binary is: built beside this one by
/// `cargo build -p lanyard-tests --bin test-lanyard-agent` (same features).
pub(crate) fn agent_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the bench binary has no directory")?;
    let release = dir.file_name().is_some_and(|n| n == "release");
    let binary = dir.join("test-lanyard-agent");
    // Under `cargo run` Cargo names itself; build (or confirm fresh) the agent.
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "-p",
            "lanyard-tests",
            "--bin",
            "test-lanyard-agent",
        ]);
        if release {
            build.arg("--release");
        }
        let output = build
            .output()
            .context("running cargo build for the agent")?;
        if !output.status.success() {
            bail!(
                "building the agent binary failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    if !binary.is_file() {
        bail!(
            "{} is missing: run the bench with `cargo run --release -p lanyard-tests --bin lanyard-bench`",
            binary.display()
        );
    }
    Ok(binary)
}

#[derive(Debug, Clone)]
pub(crate) struct ProcessFigures {
    /// Start → first FetchJWTSVID answered, per restart, sorted.
    pub ready: Vec<Duration>,
    pub rss_idle_kib: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cached: usize,
    pub fill_per_second: f64,
}

struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    fn spawn(
        binary: &Path,
        config: &Path,
        join_token: Option<&str>,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut command = Command::new(binary);
        command.arg("run").arg("--config").arg(config);
        if let Some(token) = join_token {
            // The environment, not argv: a token on the command line is refused.
            command.env("LANYARD_JOIN_TOKEN", token);
        }
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls until FetchJWTSVID answers with an SVID; the time since `since`.
async fn wait_answering(
    socket: &Path,
    since: Instant,
    give_up: Duration,
) -> anyhow::Result<Duration> {
    loop {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            let mut client = workload::client(socket);
            let answer = tokio::time::timeout(
                Duration::from_secs(2),
                workload::fetch(&mut client, "bench-ready".to_owned()),
            )
            .await;
            if let Ok(Ok(_)) = answer {
                return Ok(since.elapsed());
            }
        }
        if since.elapsed() > give_up {
            bail!(
                "the agent at {} did not answer within {give_up:?}",
                socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

pub(crate) async fn run(
    world: &World,
    binary: &Path,
    dir: &Path,
    restarts: usize,
    cached: usize,
) -> anyhow::Result<ProcessFigures> {
    let node_addr = world
        .server
        .node_addr
        .context("the server has no mTLS Node API listener")?;
    let agent_id = format!("spiffe://{TRUST_DOMAIN}/bench/agent-process");
    let mut admin = AdminClient::new(unix_channel(&world.server.admin_socket));
    let token = admin
        .generate_join_token(GenerateJoinTokenRequest {
            spiffe_id: agent_id.clone(),
            ttl_seconds: 600,
        })
        .await?
        .into_inner()
        .token;
    let socket = dir.join("agent-process/api.sock");
    let config = dir.join("agent-process.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"{TRUST_DOMAIN}\"\ndata_dir = \"{data}\"\nsync_interval_seconds = 1\n\
             [server]\naddress = \"{node_addr}\"\ntrust_bundle = \"{bundle}\"\n\
             [workload_api]\nsocket = \"{socket}\"\njwt_svid_cache_size = {cached}\n{UNLIMITED_AGENT}",
            data = dir.join("agent-process-data").display(),
            bundle = world.server.ca_bundle.display(),
            socket = socket.display(),
        ),
    )?;
    let log = dir.join("agent-process.log");

    // First start: attest with the token (the SVID is saved), then register a
    // workload under this agent and wait until the agent serves it.
    let first = AgentProcess::spawn(binary, &config, Some(&token), &log)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&socket).is_err() {
        if Instant::now() > deadline {
            bail!("the agent never opened its socket; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin
        .create_entry(CreateEntryRequest {
            spiffe_id: format!("spiffe://{TRUST_DOMAIN}/bench/process-workload"),
            parent_id: agent_id,
            selectors: vec![format!("unix:uid:{}", my_uid())],
            jwt_svid_ttl_seconds: 0,
            admin: false,
            ..CreateEntryRequest::default()
        })
        .await?;
    wait_answering(&socket, Instant::now(), Duration::from_secs(30)).await?;
    first.stop()?;

    let mut ready = Vec::with_capacity(restarts);
    let mut running = None;
    for i in 0..restarts {
        let started = Instant::now();
        let agent = AgentProcess::spawn(binary, &config, None, &log)?;
        ready.push(wait_answering(&socket, started, Duration::from_secs(30)).await?);
        if i + 1 < restarts {
            agent.stop()?;
        } else {
            running = Some(agent);
        }
    }
    ready.sort_unstable();
    let agent = running.context("no restart was measured")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle_kib = status_kib(agent.pid(), "VmRSS:")?;

    // Fill the cache: `cached` distinct audiences, 32 callers.
    let callers = 32;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..callers {
        let socket = socket.clone();
        tasks.spawn(async move {
            let mut client = workload::client(&socket);
            let mut n = w;
            while n < cached {
                workload::fetch(&mut client, format!("fill-{n}")).await?;
                n += callers;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let fill_per_second = cached as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_kib = status_kib(agent.pid(), "VmRSS:")?;
    let hwm_kib = status_kib(agent.pid(), "VmHWM:")?;
    agent.stop()?;
    Ok(ProcessFigures {
        ready,
        rss_idle_kib,
        rss_kib,
        hwm_kib,
        cached,
        fill_per_second,
    })
}
