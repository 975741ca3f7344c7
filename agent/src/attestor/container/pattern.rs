//! Which container a cgroup path names, by the path patterns of the
//! runtimes (the container ID is always the full 64 lowercase hex digits;
//! anything shorter, longer or in capitals names nothing):
//!
//! | runtime | cgroup path | made by |
//! |---|---|---|
//! | docker | `/docker/<id>` (at the root) | the cgroupfs driver |
//! | docker | `…/docker-<id>.scope` | the systemd driver |
//! | podman | `…/libpod-<id>` | the cgroupfs manager (`/libpod_parent/libpod-<id>`) |
//! | podman | `…/libpod-<id>.scope`, also followed by `/container` | the systemd manager, rootful or rootless |
//! | containerd | `…/cri-containerd-<id>.scope` | Kubernetes (CRI), systemd driver |
//! | containerd | `/default/<id>` (at the root) | plain `ctr` in its `default` namespace, only when the ID the user chose is 64 hex digits |
//! | cri-o | `…/crio-<id>.scope` | Kubernetes (CRI), systemd driver |
//! | (none) | `/kubepods[/burstable\|/besteffort]/pod<uid>/<id>` (at the root) | Kubernetes' cgroupfs driver: the ID only, for containerd and Docker (cri-dockerd) make the same path, so the runtime is not named |
//!
//! Not containers, ever: the monitor processes (`libpod-conmon-<id>.scope`,
//! `crio-conmon-<id>.scope`; with podman's cgroupfs manager every conmon
//! is in `/libpod_parent/conmon`, which names no ID). Not recognised (no
//! container selectors): podman's `--cgroups=split` (`libpod-payload-<id>`),
//! the `slice:cri-containerd:<id>` names runc gives v1 controllers that
//! systemd does not manage, Docker with a custom `--cgroup-parent`.
//!
//! The first component (from the root) that matches decides: what lies
//! below a container's cgroup is the container's own (a container running
//! systemd makes `init.scope` there) and may be named anything by whoever
//! runs in it, so a `libpod-<other id>` made inside container A still names A.
//!
//! A process is in a container when the lines of `/proc/<pid>/cgroup`
//! that name one all name the same one. Every line is read: on hybrid hosts
//! the unified (`0::`) line of a Docker container can be the daemon's
//! `/system.slice/containerd.service` while every v1 line names the
//! container, and a line naming nothing is no evidence either way. Lines
//! naming two containers, any line in a monitor's cgroup, or a path outside
//! the agent's cgroup namespace (`..`): no container. The pattern alone
//! proves nothing about who made the cgroup; see `ownership` and `engine`.

use lanyard_proto::selector::is_sha256_hex;

use crate::attestor::cgroup::{Hierarchy, Membership};

/// A runtime known by its cgroup names; the values of `container:runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runtime {
    Docker,
    Podman,
    Containerd,
    CriO,
}

impl Runtime {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
        }
    }
}

/// A container as its cgroup path names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerRef {
    /// 64 lowercase hex digits.
    pub id: String,
    /// None where the path does not tell (Kubernetes' cgroupfs layout).
    pub runtime: Option<Runtime>,
}

/// What one cgroup path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathFinding {
    /// No container.
    Nothing,
    /// A container monitor's cgroup (conmon): never the container.
    Monitor,
    /// Above the agent's cgroup namespace root (`..`): unknown.
    Outside,
    /// `container`'s cgroup, whose path is the first `depth` components.
    Container {
        container: ContainerRef,
        depth: usize,
    },
}

/// The container `path` names, if any; see the module comment.
pub(crate) fn in_path(path: &str) -> PathFinding {
    let Some(components) = path_components(path) else {
        return PathFinding::Outside;
    };
    if let Some(found) = at_root(&components) {
        return found;
    }
    for (index, component) in components.iter().enumerate() {
        if let Some(found) = by_name(component) {
            return match found {
                Named::Monitor => PathFinding::Monitor,
                Named::Container(id, runtime) => PathFinding::Container {
                    container: ContainerRef {
                        id: id.to_owned(),
                        runtime: Some(runtime),
                    },
                    depth: index + 1,
                },
            };
        }
    }
    PathFinding::Nothing
}

/// The components of a cgroup path as the kernel wrote them; None when it
/// leaves the agent's cgroup namespace (`..`).
pub(crate) fn path_components(path: &str) -> Option<Vec<&str>> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    (!components.iter().any(|c| *c == "." || *c == "..")).then_some(components)
}

/// The layouts placed at the hierarchy's root by cgroupfs drivers.
fn at_root(components: &[&str]) -> Option<PathFinding> {
    let container = |id: &str, runtime, depth| PathFinding::Container {
        container: ContainerRef {
            id: id.to_owned(),
            runtime,
        },
        depth,
    };
    match components {
        ["docker", id, ..] if is_sha256_hex(id) => Some(container(id, Some(Runtime::Docker), 2)),
        ["default", id, ..] if is_sha256_hex(id) => {
            Some(container(id, Some(Runtime::Containerd), 2))
        }
        ["kubepods", "burstable" | "besteffort", pod, id, ..]
            if is_pod(pod) && is_sha256_hex(id) =>
        {
            Some(container(id, None, 4))
        }
        ["kubepods", pod, id, ..] if is_pod(pod) && is_sha256_hex(id) => {
            Some(container(id, None, 3))
        }
        _ => None,
    }
}

/// `pod<uid>` as Kubernetes' cgroupfs driver names a pod's cgroup.
fn is_pod(component: &str) -> bool {
    component.strip_prefix("pod").is_some_and(|uid| {
        !uid.is_empty()
            && uid
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_')
    })
}

enum Named<'a> {
    Monitor,
    Container(&'a str, Runtime),
}

/// A component named after a container (or its monitor) wherever it is.
fn by_name(component: &str) -> Option<Named<'_>> {
    if component.starts_with("libpod-conmon-") || component.starts_with("crio-conmon-") {
        return Some(Named::Monitor);
    }
    let scope = component.strip_suffix(".scope");
    let found = if let Some(id) =
        id_after("libpod-", scope).or_else(|| id_after("libpod-", Some(component)))
    {
        (id, Runtime::Podman)
    } else if let Some(id) = id_after("docker-", scope) {
        (id, Runtime::Docker)
    } else if let Some(id) = id_after("cri-containerd-", scope) {
        (id, Runtime::Containerd)
    } else if let Some(id) = id_after("crio-", scope) {
        (id, Runtime::CriO)
    } else {
        return None;
    };
    Some(Named::Container(found.0, found.1))
}

/// The container ID that is all of `text` after `prefix`.
fn id_after<'a>(prefix: &str, text: Option<&'a str>) -> Option<&'a str> {
    text.and_then(|t| t.strip_prefix(prefix))
        .filter(|id| is_sha256_hex(id))
}

/// A caller's container: which, and its cgroup in each hierarchy that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    pub container: ContainerRef,
    /// The lines naming it, and the container's own cgroup path (the
    /// line's path up to the matching component) in each.
    pub lines: Vec<(Hierarchy, Vec<String>)>,
}

/// Why a caller is in no container (for the debug log and tests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum NoContainer {
    #[error("no cgroup path names a container")]
    NotNamed,
    #[error("a cgroup path is a container monitor's (conmon), not a container's")]
    Monitor,
    #[error("a cgroup path lies outside the agent's cgroup namespace")]
    Outside,
    #[error("cgroup paths name two different containers ({0} and {1})")]
    Conflicting(String, String),
}

/// The one container every line naming a container names.
pub(crate) fn placement(membership: &Membership) -> Result<Placement, NoContainer> {
    let mut found: Option<Placement> = None;
    let mut monitor = false;
    for hierarchy in membership.hierarchies() {
        match in_path(&hierarchy.path) {
            PathFinding::Nothing => {}
            PathFinding::Monitor => monitor = true,
            PathFinding::Outside => return Err(NoContainer::Outside),
            PathFinding::Container { container, depth } => {
                let dir = hierarchy
                    .path
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .take(depth)
                    .map(str::to_owned)
                    .collect();
                match &mut found {
                    None => {
                        found = Some(Placement {
                            container,
                            lines: vec![(hierarchy.clone(), dir)],
                        });
                    }
                    Some(placed) if placed.container == container => {
                        placed.lines.push((hierarchy.clone(), dir));
                    }
                    Some(placed) => {
                        return Err(NoContainer::Conflicting(
                            describe(&placed.container),
                            describe(&container),
                        ));
                    }
                }
            }
        }
    }
    if monitor {
        return Err(NoContainer::Monitor);
    }
    found.ok_or(NoContainer::NotNamed)
}

fn describe(container: &ContainerRef) -> String {
    match container.runtime {
        Some(runtime) => format!("{} {}", runtime.name(), container.id),
        None => container.id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(text: &str) -> Membership {
        Membership::fixture(text)
    }

    #[track_caller]
    fn assert_container(text: &str, id: &str, runtime: Option<Runtime>) {
        match placement(&membership(text)) {
            Ok(placed) => {
                assert_eq!(placed.container.id, id, "{text}");
                assert_eq!(placed.container.runtime, runtime, "{text}");
            }
            Err(e) => panic!("no container ({e}) in {text}"),
        }
    }

    #[track_caller]
    fn assert_none(text: &str, why: NoContainer) {
        assert_eq!(placement(&membership(text)), Err(why), "{text}");
    }

    // ---- Podman ----------------------------------------------------------

    const PODMAN_ID: &str = "528f4e1565bb8ca717829475efd9e2d1f9c9316844e3fd88f77e53210a82494e";

    /// Real, from the machine Lanyard's CI runs on (Debian 12, podman 4.3.1,
    /// runc, cgroupfs manager, hybrid v1 + v2, no systemd): a container process.
    const PODMAN_CGROUPFS: &str = "\
9:name=systemd:/libpod_parent/libpod-528f4e1565bb8ca717829475efd9e2d1f9c9316844e3fd88f77e53210a82494e
8:pids:/libpod_parent/libpod-528f4e1565bb8ca717829475efd9e2d1f9c9316844e3fd88f77e53210a82494e
7:blkio:/libpod_parent/libpod-528f4e1565bb8ca717829475efd9e2d1f9c9316844e3fd88f77e53210a82494e
6:freezer:/libpod_parent/libpod-528f4e1565bb8ca717829475efd9e2d1f9c9316844e3fd88f77e53210a82494e
5:devices:/libpod_parent/libpod-528f4e1565bb8ca717829475efd9e2d1f9c9316844e3fd88f77e53210a82494e
4:memory:/libpod_parent/libpod-528f4e1565bb8ca717829475efd9e2d1f9c9316844e3fd88f77e53210a82494e
3:cpuset:/libpod_parent/libpod-528f4e1565bb8ca717829475efd9e2d1f9c9316844e3fd88f77e53210a82494e
2:cpuacct:/libpod_parent/libpod-528f4e1565bb8ca717829475efd9e2d1f9c9316844e3fd88f77e53210a82494e
1:cpu:/libpod_parent/libpod-528f4e1565bb8ca717829475efd9e2d1f9c9316844e3fd88f77e53210a82494e
0::/libpod_parent/libpod-528f4e1565bb8ca717829475efd9e2d1f9c9316844e3fd88f77e53210a82494e
";

    /// Real, the same machine: that container's conmon (cgroupfs manager).
    const PODMAN_CGROUPFS_CONMON: &str = "\
9:name=systemd:/
8:pids:/libpod_parent/conmon
7:blkio:/libpod_parent/conmon
6:freezer:/libpod_parent/conmon
5:devices:/libpod_parent/conmon
4:memory:/libpod_parent/conmon
3:cpuset:/libpod_parent/conmon
2:cpuacct:/libpod_parent/conmon
1:cpu:/libpod_parent/conmon
0::/
";

    /// Real: rootful podman, systemd manager, crun, hybrid host (a public
    /// markdown file of cgroup talk notes; four of its lines). The
    /// name=systemd line has no `/container` suffix; the others have it.
    const PODMAN_SYSTEMD_HYBRID: &str = "\
15:name=systemd:/machine.slice/libpod-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope
14:misc:/machine.slice/libpod-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope/container
1:cpuset:/machine.slice/libpod-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope/container
0::/machine.slice/libpod-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope/container
";

    /// Real, the same source: that container's conmon, verbatim.
    const PODMAN_SYSTEMD_HYBRID_CONMON: &str = "\
15:name=systemd:/machine.slice/libpod-conmon-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope
14:misc:/
13:rdma:/
12:pids:/machine.slice/libpod-conmon-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope
11:hugetlb:/
10:net_prio:/
9:perf_event:/
8:net_cls:/
7:freezer:/
6:devices:/machine.slice
5:memory:/machine.slice/libpod-conmon-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope
4:blkio:/
3:cpuacct:/
2:cpu:/machine.slice/libpod-conmon-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope
1:cpuset:/
0::/machine.slice/libpod-conmon-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope
";

    #[test]
    fn podman_containers_are_found_and_their_conmon_never() {
        assert_container(PODMAN_CGROUPFS, PODMAN_ID, Some(Runtime::Podman));
        assert_none(PODMAN_CGROUPFS_CONMON, NoContainer::NotNamed);
        assert_container(
            PODMAN_SYSTEMD_HYBRID,
            "24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5",
            Some(Runtime::Podman),
        );
        assert_none(PODMAN_SYSTEMD_HYBRID_CONMON, NoContainer::Monitor);
        // Real, https://github.com/podman-container-tools/podman/issues/10602 (Ubuntu
        // 20.04, three of its lines): a container running systemd, whose
        // name=systemd line goes on below the scope.
        assert_container(
            "12:pids:/machine.slice/libpod-2521e906f0a0c758c3a7dc4fd68c197e32e96abb4b36807d0b0ede6d014a7c24.scope\n\
             11:memory:/machine.slice/libpod-2521e906f0a0c758c3a7dc4fd68c197e32e96abb4b36807d0b0ede6d014a7c24.scope\n\
             1:name=systemd:/machine.slice/libpod-2521e906f0a0c758c3a7dc4fd68c197e32e96abb4b36807d0b0ede6d014a7c24.scope/init.scope\n",
            "2521e906f0a0c758c3a7dc4fd68c197e32e96abb4b36807d0b0ede6d014a7c24",
            Some(Runtime::Podman),
        );
        // Real, https://github.com/podman-container-tools/podman/issues/20423 (Fedora 38,
        // rootful, under root's user manager).
        assert_container(
            "0::/user.slice/user-0.slice/user@0.service/machine.slice/libpod-cf21d19260ace8544fe8b769fc2638bf2c0873dfbfff0b6253f0569b26a1d5eb.scope/container\n",
            "cf21d19260ace8544fe8b769fc2638bf2c0873dfbfff0b6253f0569b26a1d5eb",
            Some(Runtime::Podman),
        );
        // Real: rootless, a copied /proc in sustainable-computing-io/kepler
        // (internal/resource/testdata/procfs/3538356/cgroup). The pattern
        // matches; only the ownership rule or the engine can say whether a
        // user's own cgroup really is that container.
        assert_container(
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-f992ec4ed807f76e5e54c9c67d78f0a4105bf945420271c2558ba905e38d2108.scope/container\n",
            "f992ec4ed807f76e5e54c9c67d78f0a4105bf945420271c2558ba905e38d2108",
            Some(Runtime::Podman),
        );
        // Real, exein-io/pulsar's procfs parser comment ("observed with
        // podman on Fedora"): conmon on pure v2.
        assert_none(
            "0::/machine.slice/libpod-conmon-551ccf517b3394d9b953efeb8296b93451e45c2a8288518e4391d7b1db3cc9ee.scope\n",
            NoContainer::Monitor,
        );
        // Test data in kepler's container_test.go: quadlet's split cgroups are
        // not recognised, and `payload-<id>` is not mistaken for an ID.
        assert_none(
            "0::/system.slice/kepler.service/libpod-payload-8e363eb2287da4ccc9f52ffc5de11252ac5fe707e3ddb917a3c0bdf9bb64165b\n",
            NoContainer::NotNamed,
        );
    }

    // ---- Docker ----------------------------------------------------------

    /// Real, from this project's CI machine (docker.io 20.10.24, cgroupfs
    /// driver, hybrid, no systemd).
    const DOCKER_CGROUPFS: &str = "\
9:name=systemd:/docker/2234c44919f0446d74f7ee43c6f4dded9b0f60b3754dd205604db1783bba4cfc
8:pids:/docker/2234c44919f0446d74f7ee43c6f4dded9b0f60b3754dd205604db1783bba4cfc
7:blkio:/docker/2234c44919f0446d74f7ee43c6f4dded9b0f60b3754dd205604db1783bba4cfc
6:freezer:/docker/2234c44919f0446d74f7ee43c6f4dded9b0f60b3754dd205604db1783bba4cfc
5:devices:/docker/2234c44919f0446d74f7ee43c6f4dded9b0f60b3754dd205604db1783bba4cfc
4:memory:/docker/2234c44919f0446d74f7ee43c6f4dded9b0f60b3754dd205604db1783bba4cfc
3:cpuset:/docker/2234c44919f0446d74f7ee43c6f4dded9b0f60b3754dd205604db1783bba4cfc
2:cpuacct:/docker/2234c44919f0446d74f7ee43c6f4dded9b0f60b3754dd205604db1783bba4cfc
1:cpu:/docker/2234c44919f0446d74f7ee43c6f4dded9b0f60b3754dd205604db1783bba4cfc
0::/docker/2234c44919f0446d74f7ee43c6f4dded9b0f60b3754dd205604db1783bba4cfc
";

    /// Real, https://github.com/docker/for-linux/issues/1293 (hybrid systemd
    /// host, cgroupfs driver; lines shortened): the unified line is the
    /// daemon's unit, not the container.
    const DOCKER_HYBRID_DAEMON_V2: &str = "\
12:rdma:/
11:perf_event:/docker/a2ffe0e97ac22657a2a023ad628e9df837c38a03b1ebc904d3f6d644eb1a1a81
1:name=systemd:/docker/a2ffe0e97ac22657a2a023ad628e9df837c38a03b1ebc904d3f6d644eb1a1a81
0::/system.slice/containerd.service
";

    #[test]
    fn docker_containers_are_found_on_every_layout() {
        assert_container(
            DOCKER_CGROUPFS,
            "2234c44919f0446d74f7ee43c6f4dded9b0f60b3754dd205604db1783bba4cfc",
            Some(Runtime::Docker),
        );
        assert_container(
            DOCKER_HYBRID_DAEMON_V2,
            "a2ffe0e97ac22657a2a023ad628e9df837c38a03b1ebc904d3f6d644eb1a1a81",
            Some(Runtime::Docker),
        );
        // Real, https://github.com/d2iq-archive/kubernetes-mesos/issues/565
        // (pure v1, shortened).
        assert_container(
            "12:name=systemd:/\n\
             11:hugetlb:/docker/611a8d133d2c636e777745e4dbb1d5866a068fe0f6cc87033e52fe139fca5ba1\n\
             10:net_prio:/docker/611a8d133d2c636e777745e4dbb1d5866a068fe0f6cc87033e52fe139fca5ba1\n",
            "611a8d133d2c636e777745e4dbb1d5866a068fe0f6cc87033e52fe139fca5ba1",
            Some(Runtime::Docker),
        );
        // Real: systemd driver, pure v2 (kepler's copied /proc, 3456208).
        assert_container(
            "0::/system.slice/docker-b176419186d75a44628851daf7841d3374a2ec56d0b038ee3bd1e0c6d331e5b1.scope\n",
            "b176419186d75a44628851daf7841d3374a2ec56d0b038ee3bd1e0c6d331e5b1",
            Some(Runtime::Docker),
        );
        // Real, https://github.com/lxc/lxc/issues/3890: systemd driver under
        // kubelet's pod slices, v1 (one line of it).
        assert_container(
            "11:freezer:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7d4424e6_bb13_42f4_a47a_45a4828bf54d.slice/docker-d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98.scope\n",
            "d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98",
            Some(Runtime::Docker),
        );
    }

    // ---- containerd ------------------------------------------------------

    #[test]
    fn containerd_containers_are_found() {
        // Real, https://github.com/cryptnono/cryptnono/issues/47 (k3s, pure v2).
        assert_container(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod7fda01c4_0ece_403d_88b4_c371d66d132a.slice/cri-containerd-e58a24d4a722c99712cff74ef69d93311089584eb32617b3890e0dcb996133f1.scope\n",
            "e58a24d4a722c99712cff74ef69d93311089584eb32617b3890e0dcb996133f1",
            Some(Runtime::Containerd),
        );
        // Real, this project's CI machine (containerd 1.6.20, `ctr run` with
        // the user-chosen ID `ctr-demo`): not hex, so not an ID.
        assert_none(
            "9:name=systemd:/default/ctr-demo\n4:memory:/default/ctr-demo\n0::/default/ctr-demo\n",
            NoContainer::NotNamed,
        );
        // Reconstruction (no real sample): the same with a 64-hex ID.
        assert_container(
            "4:memory:/default/e58a24d4a722c99712cff74ef69d93311089584eb32617b3890e0dcb996133f1\n",
            "e58a24d4a722c99712cff74ef69d93311089584eb32617b3890e0dcb996133f1",
            Some(Runtime::Containerd),
        );
        // Real, https://github.com/open-telemetry/opentelemetry-java/issues/4507:
        // the `slice:cri-containerd:<id>` names of v1 controllers systemd does
        // not manage are not recognised (rather than guessed at).
        assert_none(
            "11:perf_event:/kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice:cri-containerd:ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459\n\
             10:blkio:/system.slice/containerd.service/kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice:cri-containerd:ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459\n",
            NoContainer::NotNamed,
        );
    }

    #[test]
    fn kubernetes_cgroupfs_layout_gives_the_id_but_no_runtime() {
        // Real, https://github.com/duckdb/duckdb/pull/16608 ("a kubernetes pod
        // with docker"; containerd makes the same path), two of its lines.
        assert_container(
            "12:rdma:/\n\
             11:freezer:/kubepods/burstable/podc101fead-5fa2-4525-97af-5894973b336e/2b7a2f7fb72575bb50a46d68cceaf43a12a597184714cb33af2f6420f5314293\n\
             10:pids:/kubepods/burstable/podc101fead-5fa2-4525-97af-5894973b336e/2b7a2f7fb72575bb50a46d68cceaf43a12a597184714cb33af2f6420f5314293\n",
            "2b7a2f7fb72575bb50a46d68cceaf43a12a597184714cb33af2f6420f5314293",
            None,
        );
        // Real, https://github.com/adoptium/adoptium-support/issues/638.
        assert_container(
            "10:memory:/kubepods/burstable/podd7874f44-eee0-423c-83c9-f246075bdde1/fbaa59723cd1f05d310e6f48b5d49a9d9e9552b7fde2205d0a2e2b5f60ec21ba\n",
            "fbaa59723cd1f05d310e6f48b5d49a9d9e9552b7fde2205d0a2e2b5f60ec21ba",
            None,
        );
        // Reconstruction from the documented layout: a guaranteed-QoS pod has
        // no QoS level.
        assert_container(
            "10:memory:/kubepods/podd7874f44-eee0-423c-83c9-f246075bdde1/fbaa59723cd1f05d310e6f48b5d49a9d9e9552b7fde2205d0a2e2b5f60ec21ba\n",
            "fbaa59723cd1f05d310e6f48b5d49a9d9e9552b7fde2205d0a2e2b5f60ec21ba",
            None,
        );
        // A pod's own cgroup (its pause process, say) is no container.
        assert_none(
            "10:memory:/kubepods/burstable/podd7874f44-eee0-423c-83c9-f246075bdde1\n",
            NoContainer::NotNamed,
        );
    }

    // ---- CRI-O -----------------------------------------------------------

    #[test]
    fn cri_o_containers_are_found_and_their_conmon_never() {
        // Real, https://github.com/opencontainers/runc/issues/4620 (v1,
        // systemd driver; three of its lines).
        const CRIO_V1: &str = "\
13:freezer:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda5c1f8d5_1919_434d_add7_4afaafdaef89.slice/crio-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c.scope
12:cpuset:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda5c1f8d5_1919_434d_add7_4afaafdaef89.slice/crio-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c.scope
11:files:/
";
        assert_container(
            CRIO_V1,
            "5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c",
            Some(Runtime::CriO),
        );
        // The same issue, in a faulty state: that container's process has its
        // name=systemd line in the conmon scope. A monitor's cgroup anywhere
        // means no container.
        let faulty = format!(
            "{CRIO_V1}1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda5c1f8d5_1919_434d_add7_4afaafdaef89.slice/crio-conmon-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c.scope\n"
        );
        assert_none(&faulty, NoContainer::Monitor);
        // Test data in kepler's container_test.go (pure v2).
        assert_container(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c9f8a79_5391_454b_88cb_86190881cb96.slice/crio-a09343ca97901516c25036e2b954421254f8c68b384b536064e8999f0c4ed18d.scope\n",
            "a09343ca97901516c25036e2b954421254f8c68b384b536064e8999f0c4ed18d",
            Some(Runtime::CriO),
        );
        // Reconstruction from a real `systemctl status` CGroup: line
        // (https://github.com/openshift/microshift/pull/697): conmon under
        // system.slice.
        assert_none(
            "0::/system.slice/crio-conmon-e0c85fe7644a858988d9687c2e0736a7d31922740d0f3e001c6b2e0aa7e5f528.scope\n",
            NoContainer::Monitor,
        );
    }

    // ---- not containers --------------------------------------------------

    #[test]
    fn ordinary_processes_are_in_no_container() {
        for text in [
            // Real, https://github.com/threathunters-io/laurel/issues/228.
            "0::/system.slice/nginx.service\n",
            // Real, https://github.com/netdata/netdata/issues/9028 (shortened).
            "11:freezer:/\n10:cpu,cpuacct:/system.slice/systemd-timesyncd.service\n9:memory:/system.slice/systemd-timesyncd.service\n",
            // Real, https://github.com/Atoptool/atop/pull/284 (hybrid PID 1, shortened).
            "13:perf_event:/\n12:memory:/init.scope\n1:name=systemd:/init.scope\n0::/init.scope\n",
            // Real, https://github.com/libcgroup/libcgroup/issues/335.
            "0::/user.slice/user-1000.slice/session-1080.scope\n",
            // Real: kepler's copied /proc, 43251 (a user manager's scope).
            "0::/user.slice/user-1000.slice/user@1000.service/tmux-spawn-5474f896-9032-4de8-89a4-afa59c0c0822.scope\n",
            // Real, this project's CI machine: its own processes.
            "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/98df3d705e0bc4bc1b60d5ccf9fda599\n1:cpu:/\n0::/\n",
        ] {
            assert_none(text, NoContainer::NotNamed);
        }
    }

    // ---- the rules, on made-up paths -------------------------------------

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn lines_naming_two_containers_name_none() {
        assert!(matches!(
            placement(&membership(&format!(
                "4:memory:/libpod_parent/libpod-{A}\n0::/libpod_parent/libpod-{B}\n"
            ))),
            Err(NoContainer::Conflicting(..))
        ));
        // The same ID by two runtimes' names is two claims, not one.
        assert!(matches!(
            placement(&membership(&format!(
                "4:memory:/docker/{A}\n0::/system.slice/docker-{A}.scope\n1:cpu:/machine.slice/libpod-{A}.scope\n"
            ))),
            Err(NoContainer::Conflicting(..))
        ));
    }

    #[test]
    fn only_full_lowercase_ids_are_ids() {
        let short = &A[..63];
        let long = format!("{A}a");
        let upper = A.to_uppercase();
        let not_hex = format!("{}g", &A[..63]);
        for id in [short, &long, &upper, &not_hex, ""] {
            for path in [
                format!("/docker/{id}"),
                format!("/system.slice/docker-{id}.scope"),
                format!("/libpod_parent/libpod-{id}"),
                format!("/machine.slice/libpod-{id}.scope"),
                format!("/k.slice/cri-containerd-{id}.scope"),
                format!("/k.slice/crio-{id}.scope"),
                format!("/default/{id}"),
                format!("/kubepods/besteffort/pod1234/{id}"),
            ] {
                assert_eq!(in_path(&path), PathFinding::Nothing, "{path}");
            }
        }
        // Wrong suffixes and prefixes.
        for path in [
            format!("/system.slice/docker-{A}"),
            format!("/system.slice/docker-{A}.service"),
            format!("/x/crio-{A}"),
            format!("/x/xlibpod-{A}"),
            format!("/x/libpod-{A}.scopes"),
            format!("/elsewhere/docker/{A}"),
            format!("/x/default/{A}"),
        ] {
            assert_eq!(in_path(&path), PathFinding::Nothing, "{path}");
        }
    }

    #[test]
    fn the_outermost_container_decides() {
        // Made inside container A (its systemd, say): still A.
        let nested = format!("/machine.slice/libpod-{A}.scope/container/libpod-{B}.scope");
        assert!(matches!(
            in_path(&nested),
            PathFinding::Container { container, depth: 2 } if container.id == A
        ));
        let dind = format!("/docker/{A}/docker/{B}");
        assert!(matches!(
            in_path(&dind),
            PathFinding::Container { container, depth: 2 } if container.id == A
        ));
        // A monitor's cgroup above a container-like name: a monitor's.
        assert_eq!(
            in_path(&format!("/m.slice/libpod-conmon-{A}.scope/libpod-{A}")),
            PathFinding::Monitor
        );
    }

    #[test]
    fn paths_outside_the_namespace_are_unknown() {
        assert_eq!(
            in_path(&format!("/../../libpod_parent/libpod-{A}")),
            PathFinding::Outside
        );
        assert_none(
            &format!("4:memory:/libpod_parent/libpod-{A}\n0::/../x\n"),
            NoContainer::Outside,
        );
    }

    #[test]
    fn placement_keeps_the_container_cgroup_of_each_line() -> Result<(), NoContainer> {
        let placed = placement(&membership(PODMAN_SYSTEMD_HYBRID))?;
        assert_eq!(placed.lines.len(), 4);
        for (_, dir) in &placed.lines {
            assert_eq!(
                dir,
                &[
                    "machine.slice",
                    "libpod-24fce7291bc6d7f8a5965a5920740b0df25dda9bb4e84ffb889d8ea2927acec5.scope"
                ]
            );
        }
        Ok(())
    }
}
