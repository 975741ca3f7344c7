//! The container attestor: `container:id` and `container:runtime` from the
//! caller's cgroups (`pattern`), and with the engine's API configured
//! (`[workload_attestor.containers] api_socket`) also `container:image`,
//! `image_id`, `name` and `label:<key>:<value>` (`engine`).
//!
//! A path pattern is only a claim, so container selectors are given only
//! when something stronger backs it, and otherwise none at all (never a
//! guess):
//!
//! - When the entries in force use engine selectors and an engine is
//!   configured, the engine must know the container and say it is running,
//!   and the caller's cgroup must be the cgroup of the container's init
//!   process (the engine's `State.Pid`) or lie below it, in every hierarchy
//!   where the init process's path names the container. A process the engine
//!   does not know, or whose cgroup merely bears a container's name, gets no
//!   container selectors, the ID and runtime included.
//! - Otherwise (entries that use only `container:id`/`runtime`, which never
//!   touch the engine; or no engine configured) the container's cgroup must
//!   have been named by root: see `ownership`.
//!
//! Everything is read while the caller is pinned and its cgroups are those
//! it had when it connected; `WorkloadAttestor` checks the pin last.

pub(crate) mod engine;
pub(crate) mod ownership;
pub(crate) mod pattern;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lanyard_proto::Selector;
use lanyard_proto::selector::CONTAINER_SELECTOR_TYPE;

use self::engine::{Engine, EngineError, Known};
use self::ownership::{CgroupMounts, OwnershipError};
use self::pattern::{ContainerRef, NoContainer, PathFinding, Placement, path_components};
use super::cgroup::{CgroupError, CgroupFile, Membership};
use super::pin::{PinError, ProcessPin};
use crate::config::ContainerEngineConfig;

/// Engine trouble is logged as a warning at most this often (else at debug).
const WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Why a caller gets no container selectors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ContainerError {
    #[error(transparent)]
    NotAContainer(#[from] NoContainer),
    #[error("container {id}: its cgroup may not have been named by root: {source}")]
    Ownership {
        id: String,
        #[source]
        source: OwnershipError,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("container {id}: its init process {pid}: {source}")]
    InitGone {
        id: String,
        pid: i32,
        #[source]
        source: PinError,
    },
    #[error("container {id}: cannot read the cgroups of its init process: {source}")]
    InitCgroup {
        id: String,
        #[source]
        source: CgroupError,
    },
    #[error("container {id}: the engine's init process {pid} is not in the container's cgroup")]
    InitElsewhere { id: String, pid: i32 },
    #[error(
        "container {id}: the caller's cgroup {caller:?} (hierarchy {hierarchy}) is neither the container's init cgroup {init:?} nor below it"
    )]
    NotWithin {
        id: String,
        hierarchy: u32,
        caller: Option<String>,
        init: String,
    },
}

impl ContainerError {
    /// Whether this says something is wrong with the engine (rather than
    /// with the caller's claim to a container).
    fn is_engine_trouble(&self) -> bool {
        matches!(
            self,
            Self::Engine(
                EngineError::Connect { .. }
                    | EngineError::Http { .. }
                    | EngineError::Body { .. }
                    | EngineError::Timeout { .. }
                    | EngineError::TooLarge { .. }
                    | EngineError::Status { .. }
                    | EngineError::Malformed { .. }
                    | EngineError::OtherContainer { .. }
                    | EngineError::NoRuntime(_)
                    | EngineError::Crashed { .. }
            )
        )
    }
}

#[derive(Debug, Default)]
pub(crate) struct ContainerAttestor {
    engine: Option<Engine>,
    warned_at: Mutex<Option<Instant>>,
}

impl ContainerAttestor {
    pub(crate) fn new(engine: Option<&ContainerEngineConfig>) -> Self {
        Self {
            engine: engine.map(Engine::new),
            warned_at: Mutex::new(None),
        }
    }

    #[cfg(test)]
    pub(crate) fn with_engine(engine: Engine) -> Self {
        Self {
            engine: Some(engine),
            warned_at: Mutex::new(None),
        }
    }

    /// The container selectors of a caller whose cgroups are `membership`
    /// (none when it is in no container, or the claim is not backed; the
    /// reason is logged). `use_engine`: the entries use engine selectors.
    /// Blocking when `use_engine` and an engine is configured.
    pub(crate) fn selectors(&self, membership: &Membership, use_engine: bool) -> Vec<Selector> {
        match self.attest(membership, use_engine) {
            Ok(selectors) => selectors,
            Err(reason) => {
                if reason.is_engine_trouble() && self.time_to_warn() {
                    tracing::warn!(%reason, "no container selectors");
                } else {
                    tracing::debug!(%reason, "no container selectors");
                }
                Vec::new()
            }
        }
    }

    /// As `selectors`, with the reason for none.
    pub(crate) fn attest(
        &self,
        membership: &Membership,
        use_engine: bool,
    ) -> Result<Vec<Selector>, ContainerError> {
        let placement = pattern::placement(membership)?;
        let mut selectors = match (&self.engine, use_engine) {
            (Some(engine), true) => via_engine(engine, &placement, membership)?,
            _ => {
                named_by_root(&placement)?;
                Vec::new()
            }
        };
        selectors.extend(cgroup_selectors(&placement.container));
        Ok(selectors)
    }

    fn time_to_warn(&self) -> bool {
        let mut last = self
            .warned_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < WARNING_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// `container:id` and (where the path tells) `container:runtime`.
fn cgroup_selectors(container: &ContainerRef) -> Vec<Selector> {
    let runtime = container.runtime.map(|r| format!("runtime:{}", r.name()));
    [Some(format!("id:{}", container.id)), runtime]
        .into_iter()
        .flatten()
        .filter_map(|value| {
            Selector::parse_known(&format!("{CONTAINER_SELECTOR_TYPE}:{value}")).ok()
        })
        .collect()
}

/// Ok when root named the container's cgroup in every hierarchy naming it.
fn named_by_root(placement: &Placement) -> Result<(), ContainerError> {
    let ownership = |source| ContainerError::Ownership {
        id: placement.container.id.clone(),
        source,
    };
    let mounts = CgroupMounts::read().map_err(ownership)?;
    for (hierarchy, dir) in &placement.lines {
        ownership::named_by_root(&mounts, hierarchy, dir).map_err(ownership)?;
    }
    Ok(())
}

/// The engine's selectors for the caller's container, if the engine runs it
/// and the caller is within its init process's cgroups.
fn via_engine(
    engine: &Engine,
    placement: &Placement,
    caller: &Membership,
) -> Result<Vec<Selector>, ContainerError> {
    let id = &placement.container.id;
    let (known, fresh) = match engine.cached(id) {
        Some(known) => (known, false),
        None => {
            let facts = engine.ask_blocking(id)?;
            let pid = facts.init_pid;
            let init =
                ProcessPin::by_start_time(pid).map_err(|source| ContainerError::InitGone {
                    id: id.clone(),
                    pid,
                    source,
                })?;
            (Arc::new(Known { facts, init }), true)
        }
    };
    let pid = known.facts.init_pid;
    let init = CgroupFile::read(pid)
        .and_then(|file| file.parse(pid))
        .map_err(|source| ContainerError::InitCgroup {
            id: id.clone(),
            source,
        });
    // Read from the pinned init process only if it still holds its PID.
    if let Err(source) = known.init.verify() {
        engine.forget(id);
        return Err(ContainerError::InitGone {
            id: id.clone(),
            pid,
            source,
        });
    }
    let init = init?;
    match within_init(caller, &init, id, pid) {
        Err(e @ ContainerError::InitElsewhere { .. }) => {
            engine.forget(id);
            return Err(e);
        }
        other => other?,
    }
    if fresh {
        engine.remember(id, known.clone());
    }
    Ok(known.facts.selectors.clone())
}

/// Ok when, in every hierarchy where the path of the init process (`pid`)
/// names container `id` (at least one), the caller's path is that path or lies below it.
fn within_init(
    caller: &Membership,
    init: &Membership,
    id: &str,
    pid: i32,
) -> Result<(), ContainerError> {
    let mut checked = 0;
    for line in init.hierarchies() {
        let names_it = matches!(
            pattern::in_path(&line.path),
            PathFinding::Container { container, .. } if container.id == id
        );
        if !names_it {
            continue;
        }
        let theirs = caller
            .hierarchies()
            .iter()
            .find(|h| h.id == line.id && h.controllers == line.controllers);
        let within =
            theirs.is_some_and(
                |h| match (path_components(&h.path), path_components(&line.path)) {
                    (Some(caller), Some(init)) => caller.starts_with(&init),
                    _ => false,
                },
            );
        if !within {
            return Err(ContainerError::NotWithin {
                id: id.to_owned(),
                hierarchy: line.id,
                caller: theirs.map(|h| h.path.clone()),
                init: line.path.clone(),
            });
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(ContainerError::InitElsewhere {
            id: id.to_owned(),
            pid,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};
    use std::sync::atomic::Ordering;

    use super::engine::tests::{FakeEngine, ID, podman_answer};

    fn membership(text: &str) -> Membership {
        Membership::fixture(text)
    }

    fn texts(selectors: &[Selector]) -> Vec<String> {
        selectors.iter().map(ToString::to_string).collect()
    }

    /// The CI machine's layout (podman, cgroupfs manager, hybrid).
    fn podman_lines(path: &str) -> String {
        format!("9:name=systemd:{path}\n4:memory:{path}\n1:cpu:{path}\n0::{path}\n")
    }

    #[test]
    fn callers_at_or_below_the_init_cgroup_are_within() {
        let init = membership(&podman_lines(&format!("/libpod_parent/libpod-{ID}")));
        for caller in [
            podman_lines(&format!("/libpod_parent/libpod-{ID}")),
            podman_lines(&format!("/libpod_parent/libpod-{ID}/container")),
        ] {
            let got = within_init(&membership(&caller), &init, ID, 7);
            assert!(got.is_ok(), "{caller}: {got:?}");
        }
        // The same name made elsewhere (a user's delegated subtree).
        let spoof = podman_lines(&format!(
            "/user.slice/user-1000.slice/user@1000.service/libpod-{ID}.scope"
        ));
        assert!(matches!(
            within_init(&membership(&spoof), &init, ID, 7),
            Err(ContainerError::NotWithin { .. })
        ));
        // Only one hierarchy elsewhere is enough to refuse.
        let one_off = format!(
            "9:name=systemd:/u/libpod-{ID}\n4:memory:/libpod_parent/libpod-{ID}\n1:cpu:/libpod_parent/libpod-{ID}\n0::/libpod_parent/libpod-{ID}\n"
        );
        assert!(matches!(
            within_init(&membership(&one_off), &init, ID, 7),
            Err(ContainerError::NotWithin { hierarchy: 9, .. })
        ));
        // A prefix of a component is not a parent.
        let sibling = podman_lines(&format!("/libpod_parent/libpod-{ID}x"));
        assert!(within_init(&membership(&sibling), &init, ID, 7).is_err());
        // A hierarchy the caller lacks.
        let fewer = format!("0::/libpod_parent/libpod-{ID}\n");
        assert!(matches!(
            within_init(&membership(&fewer), &init, ID, 7),
            Err(ContainerError::NotWithin { caller: None, .. })
        ));
    }

    #[test]
    fn only_the_init_lines_naming_the_container_count() {
        // Docker on a hybrid systemd host: the unified line is the daemon's.
        let init = membership(&format!(
            "11:perf_event:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n"
        ));
        let caller = membership(&format!(
            "11:perf_event:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice/other.service\n"
        ));
        assert!(within_init(&caller, &init, ID, 7).is_ok());
        // An init process in no cgroup of the container: the engine's PID is
        // not the container's (or not any more).
        let elsewhere = membership("1:name=systemd:/\n0::/system.slice/x.service\n");
        assert!(matches!(
            within_init(&caller, &elsewhere, ID, 7),
            Err(ContainerError::InitElsewhere { pid: 7, .. })
        ));
    }

    /// Entries that use only `container:id`/`runtime` never reach the engine;
    /// engine selectors do, once per container while it lives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_engine_is_asked_only_for_engine_selectors()
    -> Result<(), Box<dyn std::error::Error>> {
        let fake = FakeEngine::answering(200, podman_answer(ID, 1))?;
        let attestor = Arc::new(ContainerAttestor::with_engine(
            fake.engine(Duration::from_secs(2)),
        ));
        let caller = membership(&podman_lines(&format!("/libpod_parent/libpod-{ID}")));
        let (a, c) = (attestor.clone(), caller.clone());
        let result = tokio::task::spawn_blocking(move || a.attest(&c, false)).await?;
        assert_eq!(fake.connections.load(Ordering::SeqCst), 0, "{result:?}");
        if let Ok(selectors) = result {
            // This machine's /libpod_parent is root's: the ID from the cgroup.
            assert_eq!(
                texts(&selectors),
                [
                    format!("container:id:{ID}"),
                    "container:runtime:podman".to_owned()
                ]
            );
        }
        // PID 1 is in no container: asked, and refused.
        let (a, c) = (attestor.clone(), caller.clone());
        let result = tokio::task::spawn_blocking(move || a.attest(&c, true)).await?;
        assert_eq!(fake.connections.load(Ordering::SeqCst), 1);
        assert!(
            matches!(
                result,
                Err(ContainerError::NotWithin { .. } | ContainerError::InitElsewhere { .. })
            ),
            "{result:?}"
        );
        Ok(())
    }

    /// A `sleep` in a real cgroup named like a podman container, that a
    /// fake engine calls the container's init process.
    struct FakeContainer {
        cgroup: std::path::PathBuf,
        top: std::path::PathBuf,
        init: Child,
    }

    impl FakeContainer {
        fn start(id: &str) -> Result<Option<Self>, Box<dyn std::error::Error>> {
            let mounts = CgroupMounts::read()?;
            let systemd = super::super::cgroup::Hierarchy {
                id: 1,
                controllers: "name=systemd".to_owned(),
                path: "/".to_owned(),
            };
            let Some(mount) = mounts.mount_of(&systemd) else {
                eprintln!("skipped: no named systemd cgroup hierarchy here");
                return Ok(None);
            };
            let top = mount.join(format!("lanyard-engine-{}", std::process::id()));
            if let Err(e) = std::fs::create_dir(&top) {
                eprintln!("skipped: cannot make a cgroup in {}: {e}", mount.display());
                return Ok(None);
            }
            let cgroup = top.join(format!("libpod-{id}"));
            std::fs::create_dir(&cgroup)?;
            let init = Command::new("sleep").arg("60").spawn()?;
            let fake = Self { cgroup, top, init };
            std::fs::write(fake.cgroup.join("cgroup.procs"), fake.init.id().to_string())?;
            Ok(Some(fake))
        }

        fn pid(&self) -> i32 {
            i32::try_from(self.init.id()).unwrap_or(0)
        }

        /// The init process's cgroups, as a caller in the container has them.
        fn membership(&self) -> Result<Membership, CgroupError> {
            CgroupFile::read(self.pid())?.parse(self.pid())
        }
    }

    impl Drop for FakeContainer {
        fn drop(&mut self) {
            let _ = self.init.kill();
            let _ = self.init.wait();
            let _ = std::fs::remove_dir(&self.cgroup);
            let _ = std::fs::remove_dir(&self.top);
        }
    }

    /// With real cgroups (root and a writable named systemd hierarchy, as on
    /// this project's CI machine): a caller in the init process's cgroup gets
    /// every selector; one in a cgroup of the same name elsewhere gets none;
    /// the answer is cached while the init process lives and asked again
    /// once it has gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_engine_vouches_only_for_its_containers_processes()
    -> Result<(), Box<dyn std::error::Error>> {
        let id = "d".repeat(64);
        let Some(container) = FakeContainer::start(&id)? else {
            return Ok(());
        };
        let fake = FakeEngine::answering(200, podman_answer(&id, container.pid().into()))?;
        let attestor = Arc::new(ContainerAttestor::with_engine(
            fake.engine(Duration::from_secs(2)),
        ));
        let attest = |caller: Membership| {
            let attestor = attestor.clone();
            tokio::task::spawn_blocking(move || attestor.attest(&caller, true))
        };

        let inside = container.membership()?;
        let selectors = attest(inside.clone()).await??;
        let texts = texts(&selectors);
        for expected in [
            format!("container:id:{id}"),
            "container:runtime:podman".to_owned(),
            "container:image:localhost/lanyard-test:1".to_owned(),
            "container:label:team:billing".to_owned(),
            "container:name:lanyard-demo".to_owned(),
        ] {
            assert!(texts.contains(&expected), "{expected} not in {texts:?}");
        }
        assert_eq!(fake.connections.load(Ordering::SeqCst), 1);
        // Cached: not asked again.
        attest(inside.clone()).await??;
        assert_eq!(fake.connections.load(Ordering::SeqCst), 1);

        // The container's name, in a subtree of its own.
        let top = container
            .top
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let spoof_text = CgroupFile::read(container.pid())?
            .parse(container.pid())?
            .hierarchies()
            .iter()
            .map(|h| {
                let path = if h.controllers == "name=systemd" {
                    format!("/{top}/user@1000.service/libpod-{id}.scope")
                } else {
                    h.path.clone()
                };
                format!("{}:{}:{path}\n", h.id, h.controllers)
            })
            .collect::<String>();
        let result = attest(membership(&spoof_text)).await?;
        assert!(
            matches!(result, Err(ContainerError::NotWithin { .. })),
            "{result:?}"
        );

        // The init process goes: the cached answer with it.
        let pid = container.pid();
        drop(container);
        let result = attest(inside).await?;
        assert!(
            matches!(result, Err(ContainerError::InitGone { pid: p, .. }) if p == pid),
            "{result:?}"
        );
        assert_eq!(fake.connections.load(Ordering::SeqCst), 2);
        Ok(())
    }
}
