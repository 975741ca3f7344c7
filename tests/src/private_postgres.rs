//! A PostgreSQL server of one test's own, made with `initdb` in a temporary
//! directory, so the test can crash and restart it — what a database restart
//! or failover does to the servers in front of it — without touching the
//! shared server the other tests use. The binaries are Debian's (installed by
//! `.ci/postgres.sh`); as root, PostgreSQL runs as the `postgres` user, since
//! it refuses to run as root.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};

use crate::process::free_port;

/// A PostgreSQL cluster in a temporary directory; stopped when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    /// Holds the cluster's data, log and socket, owned by `user`.
    home: PathBuf,
    port: u16,
    /// (uid, gid) the cluster runs as, when not the test's own.
    user: Option<(u32, u32)>,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Creates and starts a new cluster; `None` (with the reason printed) on
    /// a machine without PostgreSQL's binaries, an error when `CI` is set.
    pub fn start_new() -> anyhow::Result<Option<Self>> {
        let Some(bin) = server_binaries()? else {
            if std::env::var_os("CI").is_some() {
                bail!(
                    "CI is set but PostgreSQL's binaries (/usr/lib/postgresql/*/bin) are missing"
                );
            }
            eprintln!("private PostgreSQL skipped: no /usr/lib/postgresql/*/bin/initdb");
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        // The cluster's user must be able to reach its home inside the temp dir.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
        let home = dir.path().join("pg");
        std::fs::create_dir(&home)?;
        let user = if nix::unistd::geteuid().is_root() {
            let postgres = nix::unistd::User::from_name("postgres")?
                .context("running as root needs the postgres user (Debian's package makes it)")?;
            nix::unistd::chown(&home, Some(postgres.uid), Some(postgres.gid))?;
            Some((postgres.uid.as_raw(), postgres.gid.as_raw()))
        } else {
            None
        };
        let cluster = Self {
            bin,
            home,
            port: free_port()?,
            user,
            _dir: dir,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "--pgdata",
                &data,
                "--username=postgres",
                "--auth=trust",
                "--no-instructions",
            ],
        )?;
        cluster.start()?;
        Ok(Some(cluster))
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Starts the cluster (again) on its port, and returns once it accepts
    /// connections.
    pub fn start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={}",
            self.port,
            self.home.display()
        );
        let log = self.home.join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "start",
                "--wait",
                "--pgdata",
                &self.data(),
                "--log",
                &log.to_string_lossy(),
                "-o",
                &options,
            ],
        )
        .with_context(|| {
            format!(
                "PostgreSQL did not start; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(())
    }

    /// Stops the cluster the way a crash or a power cut does (`immediate`:
    /// no checkpoint, every connection cut; recovery replays the WAL at the
    /// next start), and returns once it is down.
    pub fn crash(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &[
                "stop",
                "--wait",
                "--mode=immediate",
                "--pgdata",
                &self.data(),
            ],
        )?;
        Ok(())
    }

    fn data(&self) -> String {
        self.home.join("data").to_string_lossy().into_owned()
    }

    /// Runs one of PostgreSQL's programs as the cluster's user.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = Command::new(self.bin.join(program));
        command.args(args).current_dir(&self.home);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        let output = command
            .output()
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} {args:?} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Already down after a crash without a restart: nothing to do then.
        let _ = self.crash();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with an `initdb`.
fn server_binaries() -> anyhow::Result<Option<PathBuf>> {
    let root = Path::new("/usr/lib/postgresql");
    if !root.is_dir() {
        return Ok(None);
    }
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let bin = entry.path().join("bin");
        let version = entry.file_name().to_string_lossy().parse::<u32>().ok();
        if let Some(version) = version.filter(|_| bin.join("initdb").is_file()) {
            found.push((version, bin));
        }
    }
    Ok(found.into_iter().max().map(|(_, bin)| bin))
}
