//! Container selectors with real containers: rootful Podman from Debian's
//! packages (runc, cgroupfs manager), an image imported from a local busybox
//! rootfs (no registry; `.ci/podman.sh` makes it), the engine's real Docker
//! Engine API served by `podman system service` on a socket of the test's,
//! and the agent reading the callers' cgroups as anyone's.
//!
//! The workload in the container is `workload-probe`, run by `podman exec`
//! (so its cgroups are the container's), with the binary and the shared
//! libraries `ldd` names bind-mounted read-only at their own paths, and the
//! agent's socket directory bind-mounted at /agent.
//!
//! `.ci/run` runs `.ci/podman.sh` and passes its answer in
//! `LANYARD_TEST_PODMAN`: an env file, or `SKIP: <reason>` where the machine
//! cannot run containers. Then these tests say so on stderr (uncaptured) and
//! pass; the cgroup-pattern tests (lanyard-agent's unit tests) run anyway.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lanyard_host::transport::unix_channel;
use lanyard_proto::admin::CreateEntryRequest;
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_tests::cgroups::TestSlice;
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World};

use lanyard_tests::probe::SteppedProbe;

const PROBE: &str = env!("CARGO_BIN_EXE_workload-probe");
const AUDIENCE: &str = "containers";
/// Far longer than the 1 s sync interval the worlds here use.
const DEADLINE: Duration = Duration::from_secs(30);

/// Podman as `.ci/podman.sh` set it up.
struct Podman {
    vars: Vec<(String, String)>,
    image: String,
}

/// Podman, or None (said why, uncaptured) where this run has none.
fn podman_or_skip() -> anyhow::Result<Option<Podman>> {
    let setup = match std::env::var("LANYARD_TEST_PODMAN") {
        Ok(setup) => setup,
        Err(_) if std::env::var_os("CI").is_some() => {
            bail!("CI is set but LANYARD_TEST_PODMAN is not: .ci/run sets it from .ci/podman.sh")
        }
        Err(_) => {
            eprintln!(
                "container e2e test skipped: LANYARD_TEST_PODMAN is not set \
                 (as root: LANYARD_TEST_PODMAN=$(.ci/podman.sh) cargo test -p lanyard-tests --test e2e agent_containers)"
            );
            return Ok(None);
        }
    };
    if let Some(reason) = setup.strip_prefix("SKIP:") {
        // Straight to stderr, past the test harness's capture: a skip must
        // show in the output even when the test passes.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** CONTAINER E2E TESTS SKIPPED: this machine cannot run containers:{reason}\n\
             *** (.ci/podman.sh said so; the cgroup-pattern unit tests in lanyard-agent still ran)\n"
        );
        return Ok(None);
    }
    let text = std::fs::read_to_string(&setup)
        .with_context(|| format!("LANYARD_TEST_PODMAN names {setup:?}, which cannot be read"))?;
    let mut vars = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line
            .trim()
            .strip_prefix("export ")
            .and_then(|rest| rest.split_once('='))
        else {
            continue;
        };
        vars.push((key.to_owned(), value.trim_matches('"').to_owned()));
    }
    let image = vars
        .iter()
        .find(|(key, _)| key == "LANYARD_PODMAN_IMAGE")
        .map(|(_, value)| value.clone())
        .context("the podman env file names no LANYARD_PODMAN_IMAGE")?;
    Ok(Some(Podman { vars, image }))
}

impl Podman {
    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command.envs(self.vars.iter().map(|(k, v)| (k, v)));
        command
    }

    /// `podman <args>`'s stdout, trimmed; an error with its stderr if it fails.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("podman {args:?}"))?;
        if !output.status.success() {
            bail!(
                "podman {args:?}: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// `podman system service` on `socket`, answering once it accepts.
    fn service(&self, socket: &Path) -> anyhow::Result<Service> {
        let log = std::fs::File::create(socket.with_extension("log"))?;
        let child = self
            .command()
            .args(["system", "service", "--time", "0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("podman system service")?;
        let mut service = Service(child);
        let deadline = Instant::now() + DEADLINE;
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Some(status) = service.0.try_wait()? {
                let log = std::fs::read_to_string(socket.with_extension("log")).unwrap_or_default();
                bail!("podman system service exited ({status}): {log}");
            }
            if Instant::now() > deadline {
                bail!(
                    "podman system service never listened on {}",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(service)
    }

    /// A running container of the test image (`sleep`), with the probe, its
    /// libraries and the agent's socket directory mounted in it.
    fn container(
        &self,
        name: &str,
        labels: &[&str],
        agent_dir: &Path,
    ) -> anyhow::Result<Container<'_>> {
        let mut args: Vec<String> = ["run", "-d", "--name", name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for label in labels {
            args.extend(["--label".to_owned(), label.to_string()]);
        }
        args.extend([
            "-v".to_owned(),
            format!("{}:/agent", agent_dir.display()),
            "-v".to_owned(),
            format!("{PROBE}:/probe/workload-probe:ro"),
        ]);
        for library in shared_libraries(PROBE)? {
            args.extend(["-v".to_owned(), format!("{library}:{library}:ro")]);
        }
        args.extend([self.image.clone(), "sleep".to_owned(), "600".to_owned()]);
        let _ = self.run(&["rm", "-f", "-t", "0", name]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = self.run(&argv)?;
        anyhow::ensure!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "podman run printed {id:?}, not a container ID"
        );
        Ok(Container {
            podman: self,
            name: name.to_owned(),
            id,
        })
    }
}

/// The absolute paths `ldd` gives for `binary`'s libraries and loader.
fn shared_libraries(binary: &str) -> anyhow::Result<Vec<String>> {
    let output = Command::new("ldd").arg(binary).output().context("ldd")?;
    anyhow::ensure!(output.status.success(), "ldd {binary} failed");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut paths: Vec<String> = text
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(str::to_owned)
        .collect();
    paths.sort();
    paths.dedup();
    anyhow::ensure!(!paths.is_empty(), "ldd named no libraries: {text}");
    Ok(paths)
}

/// Removes these (empty) directories, in order, when dropped.
struct RemoveDirs(Vec<std::path::PathBuf>);

impl Drop for RemoveDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Container<'a> {
    podman: &'a Podman,
    name: String,
    id: String,
}

impl Container<'_> {
    /// The probe, run in the container, asking for every identity it has.
    fn probe(&self) -> anyhow::Result<String> {
        self.probe_with("--all")
    }

    /// The probe, run in the container, with `flag` after the audience.
    fn probe_with(&self, flag: &str) -> anyhow::Result<String> {
        let output = self
            .podman
            .command()
            .args([
                "exec",
                "-e",
                "SPIFFE_ENDPOINT_SOCKET=unix:///agent/api.sock",
            ])
            .args([self.name.as_str(), "/probe/workload-probe", AUDIENCE, flag])
            .stdin(Stdio::null())
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        anyhow::ensure!(
            stdout.starts_with("ok ") || stdout.starts_with("denied "),
            "probe in the container: {}: {stdout} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(stdout)
    }

    /// Probes until the answer holds `wanted` (the agent syncs an entry
    /// made after it started within its sync interval).
    fn probe_until(&self, wanted: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let answer = self.probe()?;
            if answer.contains(wanted) || Instant::now() > deadline {
                return Ok(answer);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.podman.run(&["rm", "-f", "-t", "0", &self.name]);
    }
}

fn id(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}{path}")
}

/// The probe on the host, as a process of the same uid, asking for everything.
fn probe_on_host(endpoint: &str) -> anyhow::Result<String> {
    let output = Command::new(PROBE)
        .args([AUDIENCE, "--all"])
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

async fn add_entry(world: &World, path: &str, selector: &str) -> anyhow::Result<()> {
    let mut admin = AdminClient::new(unix_channel(&world.server.admin_socket));
    admin
        .create_entry(CreateEntryRequest {
            spiffe_id: id(path),
            selectors: vec![selector.to_owned()],
            ..CreateEntryRequest::default()
        })
        .await?;
    Ok(())
}

/// A world whose agent asks the Podman API service (started here, on a
/// socket in the returned directory) about containers, with `entries`.
async fn with_engine(
    podman: &Podman,
    entries: &[EntrySpec],
) -> anyhow::Result<(World, Service, tempfile::TempDir)> {
    let scratch = tempfile::tempdir()?;
    let socket = scratch.path().join("podman.sock");
    let service = tokio::task::block_in_place(|| podman.service(&socket))?;
    let world = World::start_with_agent_config(
        "",
        entries,
        "sync_interval_seconds = 1",
        &format!(
            "[workload_attestor.containers]\napi_socket = \"{}\"\n",
            socket.display()
        ),
    )
    .await?;
    Ok((world, service, scratch))
}

/// With the engine: the containerised workload gets the entries on its
/// image, image ID, name, label and ID (and not the one on a label value it
/// lacks);
/// a host process of the same uid gets none of them, nor does one that
/// root put in a cgroup named after the container, since that is not where
/// the engine's container runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_selectors_reach_the_containers_processes_only() -> anyhow::Result<()> {
    let Some(podman) = podman_or_skip()? else {
        return Ok(());
    };
    let (world, _service, _scratch) = with_engine(
        &podman,
        &[
            EntrySpec::new("/by-image", &[&format!("container:image:{}", podman.image)]),
            EntrySpec::new("/by-label", &["container:label:team:billing"]),
            EntrySpec::new("/other-team", &["container:label:team:payments"]),
        ],
    )
    .await?;
    let agent_dir = world.dir.path().join("agent");
    let name = format!("lanyard-e2e-engine-{}", std::process::id());
    let (container, image_id) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        let container = podman.container(&name, &["team=billing", "app=api"], &agent_dir)?;
        let image_id = podman.run(&["image", "inspect", "--format", "{{.Id}}", &podman.image])?;
        Ok((container, image_id))
    })?;
    add_entry(&world, "/by-name", &format!("container:name:{name}")).await?;
    add_entry(
        &world,
        "/by-image-id",
        &format!("container:image_id:sha256:{image_id}"),
    )
    .await?;
    add_entry(&world, "/by-id", &format!("container:id:{}", container.id)).await?;

    let endpoint = world.endpoint();
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        // /by-id was made last: once it is served, so are the others.
        let inside = container.probe_until(&id("/by-id"))?;
        let expected: Vec<String> = [
            "/by-id",
            "/by-image",
            "/by-image-id",
            "/by-label",
            "/by-name",
        ]
        .into_iter()
        .map(id)
        .collect();
        assert_eq!(inside, format!("ok {}", expected.join(" ")));

        let host = probe_on_host(&endpoint)?;
        assert!(host.starts_with("denied "), "{host}");
        assert!(host.contains("no identity issued"), "{host}");

        // A host process in a cgroup root made with the container's name.
        if let Some(slice) = TestSlice::create_or_skip()? {
            let mut impostor = SteppedProbe::spawn(PROBE, &endpoint, "cgroups", false)?;
            slice.move_into(&format!("libpod-{}", container.id), impostor.pid())?;
            let answer = impostor.step()?;
            assert!(answer.starts_with("denied "), "{answer}");
        }
        Ok(())
    })?;
    drop(container);
    world.stop().await;
    Ok(())
}

/// Without the engine: the container's ID comes from its cgroup, which root
/// named (podman's `/libpod_parent/libpod-<id>`). A host process in a cgroup
/// of that name inside a subtree delegated to uid 1000 gets nothing; in one
/// that root made (root can do anything) it gets the ID, which shows it is
/// the cgroup's owner, not its path, that decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_engine_ids_come_from_cgroups_root_named() -> anyhow::Result<()> {
    let Some(podman) = podman_or_skip()? else {
        return Ok(());
    };
    let world = World::start_with_agent_config("", &[], "sync_interval_seconds = 1", "").await?;
    let agent_dir = world.dir.path().join("agent");
    let name = format!("lanyard-e2e-cgroup-{}", std::process::id());
    let container =
        tokio::task::block_in_place(|| podman.container(&name, &["team=billing"], &agent_dir))?;
    add_entry(&world, "/by-id", &format!("container:id:{}", container.id)).await?;

    let endpoint = world.endpoint();
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        assert_eq!(
            container.probe_until(&id("/by-id"))?,
            format!("ok {}", id("/by-id"))
        );
        let host = probe_on_host(&endpoint)?;
        assert!(host.starts_with("denied "), "{host}");

        let Some(slice) = TestSlice::create_or_skip()? else {
            return Ok(());
        };
        let delegated = slice.dir().join("user@1000.service");
        let spoof = delegated.join(format!("libpod-{}.scope", container.id));
        // Dropped after the probes (declared before them), before the slice.
        let _cleanup = RemoveDirs(vec![spoof.clone(), delegated.clone()]);
        std::fs::create_dir(&delegated)?;
        std::os::unix::fs::chown(&delegated, Some(1000), Some(1000))?;
        std::fs::create_dir(&spoof)?;

        let mut user_made = SteppedProbe::spawn(PROBE, &endpoint, "cgroups", false)?;
        slice.move_into(
            &format!("user@1000.service/libpod-{}.scope", container.id),
            user_made.pid(),
        )?;
        let answer = user_made.step()?;
        assert!(answer.starts_with("denied "), "{answer}");

        let mut root_made = SteppedProbe::spawn(PROBE, &endpoint, "cgroups", false)?;
        slice.move_into(&format!("libpod-{}", container.id), root_made.pid())?;
        assert_eq!(root_made.step()?, format!("ok {}", id("/by-id")));
        Ok(())
    })?;
    drop(container);
    world.stop().await;
    Ok(())
}

/// One entry for every container of the image, whose tokens carry each
/// container's own `team` label (a claim template): two containers with
/// different labels get different tokens, each with its own team.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_containers_token_carries_its_own_label() -> anyhow::Result<()> {
    let Some(podman) = podman_or_skip()? else {
        return Ok(());
    };
    let (world, _service, _scratch) = with_engine(
        &podman,
        &[
            EntrySpec::new("/teams", &[&format!("container:image:{}", podman.image)])
                .with_claims(serde_json::json!({ "team": "{{ container:label:team }}" })),
        ],
    )
    .await?;
    let agent_dir = world.dir.path().join("agent");
    let pid = std::process::id();
    let tokens = tokio::task::block_in_place(|| -> anyhow::Result<Vec<(String, String)>> {
        let mut tokens = Vec::new();
        for team in ["billing", "search"] {
            let container = podman.container(
                &format!("lanyard-e2e-{team}-{pid}"),
                &[&format!("team={team}")],
                &agent_dir,
            )?;
            let answer = container.probe_with("--token")?;
            let token = answer
                .strip_prefix(&format!("ok {} ", id("/teams")))
                .with_context(|| format!("container of {team}: {answer}"))?;
            tokens.push((team.to_owned(), token.to_owned()));
        }
        Ok(tokens)
    })?;
    assert_ne!(tokens[0].1, tokens[1].1);
    for (team, token) in &tokens {
        let payload = token.split('.').nth(1).context("not a JWS")?;
        let claims: serde_json::Value = serde_json::from_slice(&base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            payload,
        )?)?;
        assert_eq!(claims["team"], team.as_str(), "{claims}");
        assert_eq!(claims["sub"], id("/teams"));
    }
    world.stop().await;
    Ok(())
}
