//! A Workload API caller's selectors from every workload attestor: unix
//! (credentials, groups, executable), systemd (unit and slice) and
//! containers — only of the kinds asked for, all read while the caller is
//! pinned, and given only if the pin still holds afterwards.

use lanyard_proto::Selector;
use lanyard_proto::selector::{CONTAINER_SELECTOR_TYPE, SYSTEMD_SELECTOR_TYPE, UNIX_SELECTOR_TYPE};

use super::binary::BinaryError;
use super::cgroup::{self, CgroupError, CgroupFile, Membership};
use super::container::ContainerAttestor;
use super::peer::Peer;
use super::pin::PinError;
use super::systemd::SystemdPlacement;
use super::unix::UnixAttestor;
use crate::config::{ContainerEngineConfig, UnixAttestorConfig};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("cannot read /proc/{pid}/status: {source}")]
    Status { pid: i32, source: std::io::Error },
    #[error("cannot read /proc/{0}/status: no parsable Groups: line")]
    NoGroups(i32),
    #[error(transparent)]
    Binary(#[from] BinaryError),
}

/// Which facts about a caller the entries in force can use. Selectors of a
/// kind no entry has cannot change which entries match, so the attestor skips
/// finding them out: a caller of a node whose entries name only uids costs a
/// pin check, not a read of /proc, the passwd and group files and the binary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    /// `unix:user`, `unix:group`: names from NSS.
    pub names: bool,
    /// `unix:supplementary_gid` (from /proc/<pid>/status).
    pub supplementary_gids: bool,
    /// `unix:supplementary_group`: the above, named through NSS.
    pub supplementary_groups: bool,
    pub path: bool,
    pub sha256: bool,
    /// `systemd:*`, from the caller's cgroup.
    pub systemd: bool,
    /// `container:id`, `container:runtime`, from the caller's cgroup.
    pub container: bool,
    /// `container:image`, `image_id`, `name`, `label`: from the engine's API.
    pub container_engine: bool,
}

impl Needs {
    /// Every fact.
    #[cfg(test)]
    pub(crate) const ALL: Self = Self {
        names: true,
        supplementary_gids: true,
        supplementary_groups: true,
        path: true,
        sha256: true,
        systemd: true,
        container: true,
        container_engine: true,
    };

    /// What matching against entries with `selectors` needs.
    pub(crate) fn of<'a>(selectors: impl IntoIterator<Item = &'a Selector>) -> Self {
        let mut needs = Self::default();
        for selector in selectors {
            let key = selector.value().split_once(':').map_or("", |(key, _)| key);
            needs.add(selector.kind(), key);
        }
        needs
    }

    /// Adds what finding out selectors `kind:key:*` takes.
    pub(crate) fn add(&mut self, kind: &str, key: &str) {
        match (kind, key) {
            (UNIX_SELECTOR_TYPE, "user" | "group") => self.names = true,
            (UNIX_SELECTOR_TYPE, "supplementary_gid") => self.supplementary_gids = true,
            (UNIX_SELECTOR_TYPE, "supplementary_group") => self.supplementary_groups = true,
            (UNIX_SELECTOR_TYPE, "path") => self.path = true,
            (UNIX_SELECTOR_TYPE, "sha256") => self.sha256 = true,
            (SYSTEMD_SELECTOR_TYPE, _) => self.systemd = true,
            (CONTAINER_SELECTOR_TYPE, "id" | "runtime") => self.container = true,
            (CONTAINER_SELECTOR_TYPE, _) => {
                self.container = true;
                self.container_engine = true;
            }
            _ => {}
        }
    }

    /// Each of these may wait on something slow: NSS (perhaps a network
    /// directory), hashing a large executable, the container engine's API.
    /// The rest reads procfs only.
    pub(crate) fn may_block(&self) -> bool {
        self.names || self.supplementary_groups || self.sha256 || self.container_engine
    }

    fn cgroup(&self) -> bool {
        self.systemd || self.container
    }
}

/// Every workload attestor of the agent.
#[derive(Debug)]
pub(crate) struct WorkloadAttestor {
    unix: UnixAttestor,
    containers: ContainerAttestor,
    /// False when the agent runs in a cgroup namespace of its own: callers'
    /// cgroup paths are then relative to it and name no unit or container.
    host_cgroups: bool,
}

impl Default for WorkloadAttestor {
    fn default() -> Self {
        Self::new(UnixAttestorConfig::default(), None)
    }
}

impl WorkloadAttestor {
    pub(crate) fn new(
        config: UnixAttestorConfig,
        container_engine: Option<&ContainerEngineConfig>,
    ) -> Self {
        let host_cgroups = cgroup::in_host_cgroup_namespace();
        if !host_cgroups {
            tracing::warn!("{}", CgroupError::Namespaced);
        }
        Self {
            unix: UnixAttestor::new(config),
            containers: ContainerAttestor::new(container_engine),
            host_cgroups,
        }
    }

    /// The caller's selectors of the kinds in `needs` (uid and gid always),
    /// sorted. Blocking when `needs.may_block()`; else it only reads procfs.
    pub(crate) fn attest_for(
        &self,
        peer: &Peer,
        needs: Needs,
    ) -> Result<Vec<Selector>, AttestError> {
        let mut selectors = self.unix.attest_for(peer, needs)?;
        // A cgroup membership that cannot be trusted gives no systemd or
        // container selectors; the caller keeps what the others give it.
        match self.membership(peer, needs) {
            Ok(None) => {}
            Ok(Some(membership)) => {
                if needs.systemd {
                    selectors.extend(SystemdPlacement::of(&membership).selectors());
                }
                if needs.container {
                    selectors.extend(
                        self.containers
                            .selectors(&membership, needs.container_engine),
                    );
                }
            }
            Err(reason) => tracing::debug!(%reason, "no cgroup selectors for this caller"),
        }
        // Everything above read /proc/<pid>; it described our caller only if
        // the caller still holds that PID now.
        peer.pin.verify()?;
        selectors.sort();
        selectors.dedup();
        Ok(selectors)
    }
}

impl WorkloadAttestor {
    /// The caller's cgroups when `needs` asks for them: only if they are
    /// those it had when it connected, parse strictly and list exactly the
    /// hierarchies the agent is in, seen from the host's cgroup namespace.
    fn membership(&self, peer: &Peer, needs: Needs) -> Result<Option<Membership>, CgroupError> {
        if !needs.cgroup() {
            return Ok(None);
        }
        if !self.host_cgroups {
            return Err(CgroupError::Namespaced);
        }
        let pid = peer.credentials.pid;
        let at_connect = peer.cgroups.as_ref().map_err(Clone::clone)?;
        let now = CgroupFile::read(pid)?;
        if &now != at_connect {
            return Err(CgroupError::Moved(pid));
        }
        let membership = now.parse(pid)?;
        cgroup::check_host_hierarchies(&membership, pid)?;
        Ok(Some(membership))
    }
}
