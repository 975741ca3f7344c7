//! `systemd:unit` and `systemd:slice` selectors through the real socket:
//! real cgroups named as systemd names them, probe processes moved into
//! them, and the agent reading their cgroups as any caller's.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::Context;
use lanyard_tests::cgroups::{TestSlice, Unavailable};
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World};

const PROBE: &str = env!("CARGO_BIN_EXE_workload-probe");
const WEB: &str = "/units/web";
const IN_SLICE: &str = "/units/batch-in-test-slice";

/// A probe that connects and asks only when told (see `--stdin-steps`).
pub(crate) struct SteppedProbe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl SteppedProbe {
    pub(crate) fn spawn(endpoint: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(PROBE)
            .args(["cgroups", "--stdin-steps"])
            .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().context("probe stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("probe stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it take its next step; what it printed.
    pub(crate) fn step(&mut self) -> anyhow::Result<String> {
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

/// The test slice, or None (printed why) where the machine has no writable
/// cgroup hierarchy — never in CI, where that fails the test.
fn slice_or_skip() -> anyhow::Result<Option<TestSlice>> {
    match TestSlice::create() {
        Ok(slice) => Ok(Some(slice)),
        Err(Unavailable(reason)) if std::env::var_os("CI").is_some() => {
            anyhow::bail!("CI must be able to make cgroups: {reason}")
        }
        Err(Unavailable(reason)) => {
            eprintln!("skipped: this machine cannot host test cgroups: {reason}");
            Ok(None)
        }
    }
}

/// A process in `web.service` gets the entry on that unit; a sibling in
/// another unit of the same slice does not; a unit in the test slice gets
/// the entry on slice and unit; and a process moved to another unit after
/// connecting is refused on its open connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_and_slices_select_their_own_processes_only() -> anyhow::Result<()> {
    let Some(slice) = slice_or_skip()? else {
        return Ok(());
    };
    let world = World::start(
        "",
        &[
            EntrySpec::new(WEB, &["systemd:unit:web.service"]),
            EntrySpec::new(
                IN_SLICE,
                &[
                    &format!("systemd:slice:{}", slice.name()),
                    "systemd:unit:batch.service",
                ],
            ),
        ],
    )
    .await?;
    let endpoint = world.endpoint();

    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let mut web = SteppedProbe::spawn(&endpoint)?;
        slice.move_into("web.service", web.pid())?;
        assert_eq!(web.step()?, format!("ok spiffe://{TRUST_DOMAIN}{WEB}"));

        let mut db = SteppedProbe::spawn(&endpoint)?;
        slice.move_into("db.service", db.pid())?;
        let sibling = db.step()?;
        assert!(sibling.starts_with("denied "), "{sibling}");
        assert!(sibling.contains("no identity issued"), "{sibling}");

        let mut batch = SteppedProbe::spawn(&endpoint)?;
        slice.move_into("batch.service", batch.pid())?;
        assert_eq!(
            batch.step()?,
            format!("ok spiffe://{TRUST_DOMAIN}{IN_SLICE}")
        );

        // Between its two calls the web probe moves to db.service.
        slice.move_into("db.service", web.pid())?;
        let moved = web.step()?;
        assert!(moved.starts_with("denied "), "{moved}");
        assert!(moved.contains("moved to another cgroup"), "{moved}");
        Ok(())
    })?;

    world.stop().await;
    Ok(())
}
