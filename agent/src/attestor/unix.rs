//! The unix attestor: selectors from the caller's kernel credentials, its
//! groups and (when enabled) its executable, all read while the process is
//! pinned so they cannot describe another process.

use lanyard_proto::Selector;
use lanyard_proto::selector::UNIX_SELECTOR_TYPE;

pub(crate) use super::workload::{AttestError, Needs};
use nix::unistd::{Gid, Group, Uid, User};

use super::binary::{BinaryError, BinaryInspector, ExeIdentity};
use super::peer::{Peer, PeerCredentials};
use crate::config::UnixAttestorConfig;

#[derive(Debug, Default)]
pub(crate) struct UnixAttestor {
    config: UnixAttestorConfig,
    binaries: BinaryInspector,
}

impl UnixAttestor {
    pub(crate) fn new(config: UnixAttestorConfig) -> Self {
        Self {
            config,
            binaries: BinaryInspector::default(),
        }
    }

    /// The caller's selectors. Blocking (reads /proc, may hash a file, asks NSS
    /// for names): run it off the async executor.
    #[cfg(test)]
    pub(crate) fn attest(&self, peer: &Peer) -> Result<Vec<Selector>, AttestError> {
        self.attest_for(peer, Needs::ALL)
    }

    /// The caller's selectors of the kinds in `needs` (uid and gid always).
    /// Blocking when `needs.may_block()`; else it only reads procfs.
    pub(crate) fn attest_for(
        &self,
        peer: &Peer,
        needs: Needs,
    ) -> Result<Vec<Selector>, AttestError> {
        let pid = peer.credentials.pid;
        peer.pin.verify()?;
        let mut facts = id_facts(&peer.credentials, needs.names);
        if needs.supplementary_gids || needs.supplementary_groups {
            for gid in supplementary_gids(pid)? {
                facts.push(("supplementary_gid", gid.to_string()));
                if needs.supplementary_groups
                    && let Ok(Some(group)) = Group::from_gid(Gid::from_raw(gid))
                {
                    facts.push(("supplementary_group", group.name));
                }
            }
        }
        if self.config.path_selectors
            && needs.path
            && let Some(path) = BinaryInspector::path(pid, connected_exe(peer)?)?
        {
            facts.push(("path", path.to_string_lossy().into_owned()));
        }
        if self.config.sha256_selectors
            && needs.sha256
            && let Some(hash) =
                self.binaries
                    .sha256(pid, connected_exe(peer)?, self.config.max_binary_bytes)?
        {
            facts.push(("sha256", hash));
        }
        // Everything above read /proc/<pid>; it described our caller only if
        // the caller still holds that PID now.
        peer.pin.verify()?;
        Ok(to_selectors(facts))
    }
}

/// The executable recorded when the caller connected.
fn connected_exe(peer: &Peer) -> Result<&ExeIdentity, BinaryError> {
    if peer.handed_over.is_set() {
        return Err(BinaryError::HandedOver(peer.credentials.pid));
    }
    peer.exe.identity(peer.credentials.pid)
}

/// `uid`, `gid`, and (with `names`) `user`/`group` where the ids have names.
fn id_facts(peer: &PeerCredentials, names: bool) -> Vec<(&'static str, String)> {
    let mut facts = vec![("uid", peer.uid.to_string()), ("gid", peer.gid.to_string())];
    if !names {
        return facts;
    }
    if let Ok(Some(user)) = User::from_uid(Uid::from_raw(peer.uid)) {
        facts.push(("user", user.name));
    }
    if let Ok(Some(group)) = Group::from_gid(Gid::from_raw(peer.gid)) {
        facts.push(("group", group.name));
    }
    facts
}

fn to_selectors(facts: Vec<(&'static str, String)>) -> Vec<Selector> {
    let mut selectors: Vec<Selector> = facts
        .into_iter()
        .filter_map(|(key, value)| Selector::new(UNIX_SELECTOR_TYPE, format!("{key}:{value}")).ok())
        .collect();
    selectors.sort();
    selectors.dedup();
    selectors
}

/// The `Groups:` line of `/proc/<pid>/status`.
fn supplementary_gids(pid: i32) -> Result<Vec<u32>, AttestError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| AttestError::Status { pid, source })?;
    parse_groups(&status).ok_or(AttestError::NoGroups(pid))
}

fn parse_groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestor::binary::ConnectedExe;
    use crate::attestor::pin::{PinError, ProcessPin};

    fn me() -> Result<Peer, Box<dyn std::error::Error>> {
        let pid = i32::try_from(std::process::id())?;
        Ok(Peer {
            credentials: PeerCredentials {
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                pid,
            },
            pin: ProcessPin::by_start_time(pid)?,
            exe: ConnectedExe::Known(ExeIdentity::of_process(pid)?),
            handed_over: Default::default(),
            cgroups: crate::attestor::cgroup::CgroupFile::read(pid),
        })
    }

    fn strings(selectors: &[Selector]) -> Vec<String> {
        selectors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn groups_line_is_parsed() {
        assert_eq!(
            parse_groups("Name:\tx\nGroups:\t4 24 27 \nNgid:\t0\n"),
            Some(vec![4, 24, 27])
        );
        assert_eq!(parse_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_groups("Groups:\tx\n"), None);
    }

    #[test]
    fn ids_always_and_binary_only_when_enabled() -> Result<(), Box<dyn std::error::Error>> {
        let peer = me()?;
        let plain = strings(&UnixAttestor::default().attest(&peer)?);
        let uid = format!("unix:uid:{}", peer.credentials.uid);
        assert!(plain.contains(&uid), "{plain:?}");
        assert!(plain.iter().all(|s| !s.starts_with("unix:path:")));
        assert!(plain.iter().all(|s| !s.starts_with("unix:sha256:")));

        let full = UnixAttestor::new(UnixAttestorConfig {
            path_selectors: true,
            sha256_selectors: true,
            max_binary_bytes: u64::MAX,
        });
        let got = strings(&full.attest(&peer)?);
        let exe = std::env::current_exe()?;
        assert!(
            got.contains(&format!("unix:path:{}", exe.display())),
            "{got:?}"
        );
        assert!(got.iter().any(|s| s.starts_with("unix:sha256:")), "{got:?}");
        Ok(())
    }

    #[test]
    fn only_the_needed_facts_are_found_out() -> Result<(), Box<dyn std::error::Error>> {
        let peer = me()?;
        let full = UnixAttestor::new(UnixAttestorConfig {
            path_selectors: true,
            sha256_selectors: true,
            max_binary_bytes: u64::MAX,
        });
        let uid = format!("unix:uid:{}", peer.credentials.uid);
        let bare = strings(&full.attest_for(&peer, Needs::default())?);
        assert_eq!(bare.len(), 2, "uid and gid only: {bare:?}");
        assert!(bare.contains(&uid));
        let needs = Needs::of(&[Selector::parse("unix:path:/bin/x")?, Selector::parse(&uid)?]);
        assert_eq!(
            needs,
            Needs {
                path: true,
                ..Needs::default()
            }
        );
        assert!(!needs.may_block());
        let got = strings(&full.attest_for(&peer, needs)?);
        assert!(got.iter().any(|s| s.starts_with("unix:path:")), "{got:?}");
        assert!(
            got.iter().all(|s| !s.starts_with("unix:sha256:")),
            "{got:?}"
        );
        assert!(Needs::of(&[Selector::parse("unix:user:root")?]).may_block());
        // Everything needed: the same as a full attestation.
        let all = Needs::of(
            &[
                "unix:user:a",
                "unix:supplementary_gid:1",
                "unix:supplementary_group:a",
                "unix:path:/x",
                "unix:sha256:ab",
                "systemd:unit:a.service",
                "container:label:a:b",
            ]
            .map(Selector::parse)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?,
        );
        assert_eq!(all, Needs::ALL);
        assert_eq!(full.attest_for(&peer, all)?, full.attest(&peer)?);
        Ok(())
    }

    /// Binary selectors are given only for the executable recorded at
    /// connect; uid-only attestation never looks at it.
    #[test]
    fn binary_selectors_need_the_executable_of_connect_time()
    -> Result<(), Box<dyn std::error::Error>> {
        let full = UnixAttestor::new(UnixAttestorConfig {
            path_selectors: true,
            sha256_selectors: true,
            max_binary_bytes: u64::MAX,
        });
        let path_only = Needs {
            path: true,
            ..Needs::default()
        };
        let hash_only = Needs {
            sha256: true,
            ..Needs::default()
        };
        let mut peer = me()?;
        peer.exe = ConnectedExe::Skipped;
        full.attest_for(&peer, Needs::default())?;
        for needs in [path_only, hash_only] {
            assert!(matches!(
                full.attest_for(&peer, needs),
                Err(AttestError::Binary(BinaryError::Unrecorded { .. }))
            ));
        }
        // As if we had called execve since connecting: another file was recorded.
        let mut other = std::process::Command::new("sleep").arg("30").spawn()?;
        let other_exe = ExeIdentity::of_process(i32::try_from(other.id())?);
        other.kill()?;
        other.wait()?;
        peer.exe = ConnectedExe::Known(other_exe?);
        full.attest_for(&peer, Needs::default())?;
        for needs in [path_only, hash_only] {
            assert!(matches!(
                full.attest_for(&peer, needs),
                Err(AttestError::Binary(BinaryError::Exec(_)))
            ));
        }
        Ok(())
    }

    #[test]
    fn a_replaced_process_gets_no_selectors() -> Result<(), Box<dyn std::error::Error>> {
        let mut peer = me()?;
        if let ProcessPin::StartTime { start_ticks, .. } = &mut peer.pin {
            *start_ticks += 1;
        }
        assert!(matches!(
            UnixAttestor::default().attest(&peer),
            Err(AttestError::Pin(PinError::Replaced(_)))
        ));
        Ok(())
    }
}
