//! A caller's control groups, from `/proc/<pid>/cgroup`: where systemd and
//! the container engines put every process they start, so the path names
//! its unit or container. Read once when the caller connects and again at
//! attestation; selectors come only from a membership that did not change
//! in between (a process that moved may be acting for another unit).
//!
//! The file is parsed strictly rather than with a general /proc reader: a
//! cgroup name may contain ':' and, on kernels that allow it, a newline (a
//! user with a delegated subtree names its cgroups) — so a line that does
//! not parse, a hierarchy listed twice, or a set of hierarchies other than
//! the agent's own (every process is in every mounted hierarchy) makes the
//! whole membership unknown instead of letting a forged line pass for the
//! real one. Paths are only meaningful from the host's cgroup namespace.

/// Longest `/proc/<pid>/cgroup` read (one line per hierarchy; a real one is
/// well under a page, a delegated subtree can make paths long).
const MAX_CGROUP_FILE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CgroupError {
    #[error("cannot read /proc/{pid}/cgroup: {reason}")]
    Read { pid: i32, reason: String },
    #[error("/proc/{pid}/cgroup is over {MAX_CGROUP_FILE_BYTES} bytes")]
    TooLong { pid: i32 },
    #[error("/proc/{pid}/cgroup line {line} is not hierarchy:controllers:/path")]
    Malformed { pid: i32, line: usize },
    #[error("/proc/{pid}/cgroup lists hierarchy {hierarchy} twice")]
    Duplicate { pid: i32, hierarchy: u32 },
    #[error(
        "the calling process {0} moved to another cgroup after it connected; reconnect to be attested in the new one"
    )]
    Moved(i32),
    #[error("/proc/{pid}/cgroup lists other hierarchies than the agent's own")]
    ForeignHierarchies { pid: i32 },
    #[error(
        "the agent runs in a cgroup namespace of its own, where callers' cgroup paths say nothing: run it in the host's"
    )]
    Namespaced,
}

/// The inode of the initial cgroup namespace (the kernel's
/// `PROC_CGROUP_INIT_INO`): the host's, whatever PID 1 is.
const HOST_CGROUP_NAMESPACE_INODE: u64 = 0xEFFF_FFFB;

/// Whether this process is in the host's cgroup namespace.
pub(crate) fn in_host_cgroup_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/cgroup").is_ok_and(|m| m.ino() == HOST_CGROUP_NAMESPACE_INODE)
}

/// Checks that `membership` lists exactly the hierarchies this process is
/// in, as (id, controllers): a line in a caller's file that the agent's own
/// lacks can only be forged. Read again once on a mismatch, in case a
/// hierarchy was mounted since.
pub(crate) fn check_host_hierarchies(membership: &Membership, pid: i32) -> Result<(), CgroupError> {
    static OWN: std::sync::Mutex<Option<Vec<(u32, String)>>> = std::sync::Mutex::new(None);
    let theirs = membership.shape();
    let own_now = || -> Result<Vec<(u32, String)>, CgroupError> {
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        Ok(CgroupFile::read(me)?.parse(me)?.shape())
    };
    let mut own = lanyard_host::sync::lock(&OWN);
    if own.as_ref() == Some(&theirs) {
        return Ok(());
    }
    let fresh = own_now()?;
    let same = fresh == theirs;
    *own = Some(fresh);
    if same {
        Ok(())
    } else {
        Err(CgroupError::ForeignHierarchies { pid })
    }
}

/// The raw membership as read, kept to compare a later read against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupFile(String);

impl CgroupFile {
    /// `/proc/<pid>/cgroup` now.
    pub(crate) fn read(pid: i32) -> Result<Self, CgroupError> {
        use std::io::Read;
        let file =
            std::fs::File::open(format!("/proc/{pid}/cgroup")).map_err(|e| CgroupError::Read {
                pid,
                reason: e.to_string(),
            })?;
        let mut text = String::new();
        let limit = u64::try_from(MAX_CGROUP_FILE_BYTES + 1).unwrap_or(u64::MAX);
        file.take(limit)
            .read_to_string(&mut text)
            .map_err(|e| CgroupError::Read {
                pid,
                reason: e.to_string(),
            })?;
        if text.len() > MAX_CGROUP_FILE_BYTES {
            return Err(CgroupError::TooLong { pid });
        }
        Ok(Self(text))
    }

    #[cfg(test)]
    pub(crate) fn from_text(text: &str) -> Self {
        Self(text.to_owned())
    }

    /// The hierarchies and paths, refused whole if any line is not one.
    pub(crate) fn parse(&self, pid: i32) -> Result<Membership, CgroupError> {
        let mut lines: Vec<Hierarchy> = Vec::new();
        for (index, line) in self.0.lines().enumerate() {
            let malformed = || CgroupError::Malformed {
                pid,
                line: index + 1,
            };
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(malformed());
            };
            let id: u32 = id
                .parse()
                .ok()
                .filter(|_| id.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(malformed)?;
            if !path.starts_with('/') {
                return Err(malformed());
            }
            if lines.iter().any(|h| h.id == id) {
                return Err(CgroupError::Duplicate { pid, hierarchy: id });
            }
            lines.push(Hierarchy {
                id,
                controllers: controllers.to_owned(),
                path: path.to_owned(),
            });
        }
        Ok(Membership { lines })
    }
}

/// One line: a hierarchy and the caller's path in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    pub id: u32,
    /// `cpu,cpuacct`, `name=systemd`, or empty for the unified (v2) hierarchy.
    pub controllers: String,
    pub path: String,
}

/// Every hierarchy the caller belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Membership {
    lines: Vec<Hierarchy>,
}

#[cfg(test)]
impl Membership {
    /// A membership from fixture text, which must parse.
    pub(crate) fn fixture(text: &str) -> Self {
        match CgroupFile::from_text(text).parse(1) {
            Ok(membership) => membership,
            Err(e) => panic!("fixture does not parse: {e}: {text:?}"),
        }
    }
}

impl Membership {
    /// Its hierarchies as (id, controllers), sorted.
    fn shape(&self) -> Vec<(u32, String)> {
        let mut shape: Vec<(u32, String)> = self
            .lines
            .iter()
            .map(|h| (h.id, h.controllers.clone()))
            .collect();
        shape.sort();
        shape
    }

    pub(crate) fn hierarchies(&self) -> &[Hierarchy] {
        &self.lines
    }

    /// The path in the hierarchy systemd keeps its units in: its own named
    /// v1 hierarchy (legacy and hybrid layouts), else the unified one.
    pub(crate) fn systemd_path(&self) -> Option<&str> {
        let named = self
            .lines
            .iter()
            .find(|h| h.id != 0 && h.controllers == "name=systemd");
        let unified = || {
            self.lines
                .iter()
                .find(|h| h.id == 0 && h.controllers.is_empty())
        };
        named.or_else(unified).map(|h| h.path.as_str())
    }
}

/// The components of a cgroup path, as systemd named them: a leading '_'
/// is systemd's escape for names that would clash with the kernel's files.
/// None when the path leaves the agent's cgroup namespace (`..`).
pub(crate) fn components(path: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if component == ".." || component == "." {
            return None;
        }
        out.push(component.strip_prefix('_').unwrap_or(component));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "12:pids:/system.slice/billing.service\n\
        1:name=systemd:/system.slice/billing.service\n\
        0::/system.slice/billing.service\n";

    #[test]
    fn the_systemd_hierarchy_is_preferred_then_the_unified_one() -> Result<(), CgroupError> {
        let hybrid = CgroupFile::from_text(
            "3:cpu:/x\n1:name=systemd:/system.slice/a.service\n0::/other.slice/b.service\n",
        )
        .parse(1)?;
        assert_eq!(hybrid.systemd_path(), Some("/system.slice/a.service"));
        let unified = CgroupFile::from_text("0::/system.slice/b.service\n").parse(1)?;
        assert_eq!(unified.systemd_path(), Some("/system.slice/b.service"));
        let legacy_without_systemd = CgroupFile::from_text("4:memory:/docker/x\n").parse(1)?;
        assert_eq!(legacy_without_systemd.systemd_path(), None);
        assert_eq!(
            CgroupFile::from_text(HYBRID).parse(1)?.hierarchies().len(),
            3
        );
        Ok(())
    }

    #[test]
    fn paths_may_hold_colons() -> Result<(), CgroupError> {
        let membership = CgroupFile::from_text("0::/a.slice/odd:name.service\n").parse(1)?;
        assert_eq!(membership.systemd_path(), Some("/a.slice/odd:name.service"));
        Ok(())
    }

    /// A cgroup named with a newline (possible in a delegated subtree) can
    /// add a line; a second line for a hierarchy makes the whole file unknown.
    #[test]
    fn a_forged_line_makes_the_membership_unknown() {
        let forged = "0::/user.slice/user-1000.slice/user@1000.service/x\n0::/system.slice/billing.service\n";
        assert!(matches!(
            CgroupFile::from_text(forged).parse(7),
            Err(CgroupError::Duplicate {
                pid: 7,
                hierarchy: 0
            })
        ));
        for bad in [
            "0:/no-controllers-field\n",
            "x::/a\n",
            "+1::/a\n",
            "0::relative\n",
            "0::/a\nnot a line\n",
        ] {
            assert!(
                matches!(
                    CgroupFile::from_text(bad).parse(7),
                    Err(CgroupError::Malformed { pid: 7, .. })
                ),
                "{bad:?}"
            );
        }
    }

    /// Review of issue 16: a forged line with a hierarchy ID no real line
    /// has is caught by comparing with the agent's own hierarchies.
    #[test]
    fn a_hierarchy_the_agent_is_not_in_is_forged() -> Result<(), CgroupError> {
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let own = CgroupFile::read(pid)?;
        check_host_hierarchies(&own.parse(pid)?, pid)?;
        let forged = CgroupFile::from_text(&format!(
            "{}99:name=systemd:/system.slice/billing.service\n",
            own.0
        ));
        assert!(matches!(
            check_host_hierarchies(&forged.parse(pid)?, pid),
            Err(CgroupError::ForeignHierarchies { .. })
        ));
        let missing_one = CgroupFile::from_text(own.0.lines().next().unwrap_or(""));
        if own.0.lines().count() > 1 {
            assert!(check_host_hierarchies(&missing_one.parse(pid)?, pid).is_err());
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 256,
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Whatever a cgroup name holds (':', newlines, a forged line), the
        /// parse never panics, and a membership it accepts lists each
        /// hierarchy once with an absolute path whose systemd reading is
        /// the one line chosen for it.
        #[test]
        fn any_cgroup_file_parses_strictly_or_not_at_all(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    "[0-9]{1,2}:[a-z=,]{0,12}:/[a-z0-9.:/\n_@-]{0,30}",
                    proptest::arbitrary::any::<String>(),
                ],
                0..6,
            )
        ) {
            let text = lines.join("\n");
            if let Ok(membership) = CgroupFile::from_text(&text).parse(1) {
                let mut ids: Vec<u32> = membership.hierarchies().iter().map(|h| h.id).collect();
                let count = ids.len();
                ids.sort();
                ids.dedup();
                proptest::prop_assert_eq!(ids.len(), count);
                proptest::prop_assert!(membership.hierarchies().iter().all(|h| h.path.starts_with('/')));
                if let Some(path) = membership.systemd_path() {
                    proptest::prop_assert!(membership.hierarchies().iter().any(|h| h.path == path));
                }
            }
        }
    }

    #[test]
    fn components_unescape_and_refuse_paths_outside_the_namespace() {
        assert_eq!(
            components("/system.slice/_cpu.service/"),
            Some(vec!["system.slice", "cpu.service"])
        );
        assert_eq!(components("/"), Some(vec![]));
        assert_eq!(components("/../../system.slice/a.service"), None);
    }

    #[test]
    fn this_process_has_a_readable_membership() -> Result<(), CgroupError> {
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let membership = CgroupFile::read(pid)?.parse(pid)?;
        assert!(!membership.hierarchies().is_empty());
        Ok(())
    }
}
