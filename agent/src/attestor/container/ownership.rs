//! Without the engine: whether only root can have named a container's cgroup.
//!
//! A cgroup name is a claim by whoever made the directory. A user with a
//! delegated subtree (rootless podman under `user@1000.service`, a service
//! with `Delegate=yes` and `User=`) can make `libpod-<any id>.scope` there
//! and move its own processes in. Making or renaming a directory takes
//! write access to its parent, so the rule is: every directory above the
//! container's cgroup in that hierarchy, from the hierarchy's mount point
//! down to the cgroup's parent, is owned by root and writable by nobody
//! else. Then root (the engine, systemd) named the container's cgroup, and
//! the names below it are the container's own business (see `pattern`).
//! Every hierarchy whose line names the container must pass.
//!
//! Containers under a user's delegated tree (rootless podman) therefore get
//! no container selectors from the cgroup alone; with the engine's API
//! configured, the engine vouches for them instead (`engine`).
//!
//! The mount points come from `/proc/self/mountinfo` (cgroup v1 mounts by
//! their controllers, the cgroup2 mount for the unified hierarchy), each
//! mounted at its hierarchy's root as the agent sees it: the agent must run
//! in the host's cgroup namespace (paths above it read `..`, which names no
//! container).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::attestor::cgroup::Hierarchy;

/// Longest `/proc/self/mountinfo` read (a host with thousands of mounts).
const MAX_MOUNTINFO_BYTES: u64 = 4 * 1024 * 1024;

/// Why a container's cgroup is not known to be root's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum OwnershipError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] std::io::Error),
    #[error("/proc/self/mountinfo is over {MAX_MOUNTINFO_BYTES} bytes")]
    MountinfoTooLong,
    #[error(
        "cgroup hierarchy {hierarchy} ({controllers:?}) is not mounted where the agent can see its root"
    )]
    NotMounted { hierarchy: u32, controllers: String },
    #[error("cannot stat {path}: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} (uid {uid}, mode {mode:o}) is not a directory owned by root and writable by root only: whoever can write there could have named the container's cgroup"
    )]
    NotRoots { path: PathBuf, uid: u32, mode: u32 },
}

/// The agent's cgroup mounts: v1 hierarchies by their controllers (and
/// `name=`), the unified one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CgroupMounts {
    v1: Vec<(BTreeSet<String>, PathBuf)>,
    unified: Option<PathBuf>,
}

impl CgroupMounts {
    pub(crate) fn read() -> Result<Self, OwnershipError> {
        use std::io::Read;
        let file =
            std::fs::File::open("/proc/self/mountinfo").map_err(OwnershipError::Mountinfo)?;
        let mut text = String::new();
        file.take(MAX_MOUNTINFO_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(OwnershipError::Mountinfo)?;
        if text.len() as u64 > MAX_MOUNTINFO_BYTES {
            return Err(OwnershipError::MountinfoTooLong);
        }
        Ok(Self::parse(&text))
    }

    /// The cgroup mounts in mountinfo `text` (proc(5)): `id parent
    /// major:minor root mountpoint options [optional…] - fstype source
    /// superoptions`. Only mounts of a hierarchy's root count; the first of
    /// each wins. Lines that are not well formed are skipped.
    pub(crate) fn parse(text: &str) -> Self {
        let mut mounts = Self::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(root), Some(mount_point), Some(fstype), Some(super_options)) = (
                fields.get(3),
                fields.get(4),
                fields.get(dash + 1),
                fields.get(dash + 3),
            ) else {
                continue;
            };
            if dash < 6 || *root != "/" {
                continue;
            }
            let Some(mount_point) = unescape(mount_point) else {
                continue;
            };
            match *fstype {
                "cgroup2" if mounts.unified.is_none() => mounts.unified = Some(mount_point),
                "cgroup" => {
                    let options: BTreeSet<String> =
                        super_options.split(',').map(str::to_owned).collect();
                    if !mounts.v1.iter().any(|(o, _)| *o == options) {
                        mounts.v1.push((options, mount_point));
                    }
                }
                _ => {}
            }
        }
        mounts
    }

    /// Where `hierarchy` is mounted: the unified one for `0::`, else the v1
    /// mount whose options hold every controller of the line.
    pub(crate) fn mount_of(&self, hierarchy: &Hierarchy) -> Option<&Path> {
        if hierarchy.id == 0 && hierarchy.controllers.is_empty() {
            return self.unified.as_deref();
        }
        let wanted: Vec<&str> = hierarchy
            .controllers
            .split(',')
            .filter(|c| !c.is_empty())
            .collect();
        if wanted.is_empty() {
            return None;
        }
        self.v1
            .iter()
            .find(|(options, _)| wanted.iter().all(|c| options.contains(*c)))
            .map(|(_, path)| path.as_path())
    }
}

/// A mount point as mountinfo writes it: space, tab, newline and backslash
/// as `\ooo` octal escapes.
fn unescape(field: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            let digits = bytes.get(i + 1..i + 4)?;
            let text = std::str::from_utf8(digits).ok()?;
            out.push(u8::from_str_radix(text, 8).ok()?);
            i += 4;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

/// Ok when every directory above the container's cgroup `dir` (its path
/// components in `hierarchy`), from the mount point down to its parent, is
/// root's alone; see the module comment.
pub(crate) fn named_by_root(
    mounts: &CgroupMounts,
    hierarchy: &Hierarchy,
    dir: &[String],
) -> Result<(), OwnershipError> {
    let mount = mounts
        .mount_of(hierarchy)
        .ok_or_else(|| OwnershipError::NotMounted {
            hierarchy: hierarchy.id,
            controllers: hierarchy.controllers.clone(),
        })?;
    let mut path = mount.to_path_buf();
    let parents = dir.len().saturating_sub(1);
    for index in 0..=parents {
        if index > 0
            && let Some(component) = dir.get(index - 1)
        {
            path.push(component);
        }
        roots_alone(&path)?;
    }
    Ok(())
}

/// Ok when `path` is a directory owned by root that only root may write.
fn roots_alone(path: &Path) -> Result<(), OwnershipError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| OwnershipError::Stat {
        path: path.to_owned(),
        source,
    })?;
    if meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o022 == 0 {
        Ok(())
    } else {
        Err(OwnershipError::NotRoots {
            path: path.to_owned(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// This project's CI machine (hybrid: v1 controllers, name=systemd, and
    /// cgroup2 at /sys/fs/cgroup/unified), its cgroup lines verbatim, with
    /// one made-up mount with escapes and a bind mount of a subtree.
    const HYBRID: &str = "\
24 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 24 0:32 /libpod_parent /srv/bound rw,relatime - cgroup cgroup rw,memory
91 24 0:40 / /mnt/odd\\040dir rw shared:5 - cgroup cgroup rw,net_cls,net_prio
";

    fn line(id: u32, controllers: &str) -> Hierarchy {
        Hierarchy {
            id,
            controllers: controllers.to_owned(),
            path: "/".to_owned(),
        }
    }

    #[test]
    fn hierarchies_are_found_by_their_controllers() {
        let mounts = CgroupMounts::parse(HYBRID);
        let at = |id, controllers| mounts.mount_of(&line(id, controllers)).map(Path::to_owned);
        assert_eq!(at(0, ""), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(at(9, "name=systemd"), Some("/sys/fs/cgroup/systemd".into()));
        assert_eq!(at(1, "cpu"), Some("/sys/fs/cgroup/cpu".into()));
        // The subtree bind mount is not the hierarchy's root; the first wins.
        assert_eq!(at(4, "memory"), Some("/sys/fs/cgroup/memory".into()));
        assert_eq!(at(5, "net_cls,net_prio"), Some("/mnt/odd dir".into()));
        assert_eq!(at(6, "pids"), None);
        assert_eq!(at(7, ""), None);
        let pure_v2 = CgroupMounts::parse(
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        );
        assert_eq!(
            pure_v2.mount_of(&line(0, "")),
            Some(Path::new("/sys/fs/cgroup"))
        );
        assert_eq!(pure_v2.mount_of(&line(1, "name=systemd")), None);
    }

    #[test]
    fn malformed_mountinfo_lines_are_skipped() {
        let mounts = CgroupMounts::parse(
            "garbage\n1 2 3\n41 31 0:38 / /bad\\04 rw - cgroup2 cgroup2 rw\n42 31 0:38 / /good rw - cgroup2 cgroup2 rw\n",
        );
        assert_eq!(mounts.mount_of(&line(0, "")), Some(Path::new("/good")));
    }

    /// Real directories in a temporary tree stand for a hierarchy: the rule
    /// reads only ownership and mode, which the test sets.
    #[test]
    fn directories_others_can_write_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let tree = tempfile::tempdir()?;
        let root = tree.path().join("hierarchy");
        let parent = root.join("machine.slice");
        std::fs::create_dir_all(parent.join("libpod-x.scope"))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755))?;
        let mounts = CgroupMounts {
            v1: Vec::new(),
            unified: Some(root.clone()),
        };
        let dir = ["machine.slice".to_owned(), "libpod-x.scope".to_owned()];
        let mine = nix::unistd::geteuid().is_root();
        let verdict = named_by_root(&mounts, &line(0, ""), &dir);
        assert_eq!(verdict.is_ok(), mine, "{verdict:?}");
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777))?;
        assert!(matches!(
            named_by_root(&mounts, &line(0, ""), &dir),
            Err(OwnershipError::NotRoots { path, .. }) if path == parent || !mine
        ));
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o775))?;
        assert!(named_by_root(&mounts, &line(0, ""), &dir).is_err());
        // A hierarchy that is not mounted cannot be checked: refused.
        assert!(matches!(
            named_by_root(&mounts, &line(3, "cpu"), &dir),
            Err(OwnershipError::NotMounted { hierarchy: 3, .. })
        ));
        Ok(())
    }

    /// With real cgroups (root, and a writable named systemd hierarchy as on
    /// this project's CI machine): a container-named cgroup that root made in
    /// a root-owned tree passes; the same name made in a subtree delegated
    /// to uid 1000 does not, though root made both directories.
    #[test]
    fn a_delegated_subtree_cannot_name_a_container() -> Result<(), Box<dyn std::error::Error>> {
        let mounts = CgroupMounts::read()?;
        let systemd = line(1, "name=systemd");
        let Some(mount) = mounts.mount_of(&systemd).map(Path::to_owned) else {
            eprintln!("skipped: no named systemd cgroup hierarchy is mounted here");
            return Ok(());
        };
        let top = format!("lanyard-unit-{}", std::process::id());
        let base = mount.join(&top);
        if let Err(e) = std::fs::create_dir(&base) {
            eprintln!("skipped: cannot make a cgroup in {}: {e}", mount.display());
            return Ok(());
        }
        let id = "c".repeat(64);
        let result = (|| -> Result<(), Box<dyn std::error::Error>> {
            std::fs::create_dir(base.join(format!("libpod-{id}")))?;
            let delegated = base.join("user@1000.service");
            std::fs::create_dir(&delegated)?;
            std::os::unix::fs::chown(&delegated, Some(1000), Some(1000))?;
            std::fs::create_dir(delegated.join(format!("libpod-{id}.scope")))?;

            let roots = [top.clone(), format!("libpod-{id}")];
            named_by_root(&mounts, &systemd, &roots)?;
            let users = [
                top.clone(),
                "user@1000.service".to_owned(),
                format!("libpod-{id}.scope"),
            ];
            assert!(matches!(
                named_by_root(&mounts, &systemd, &users),
                Err(OwnershipError::NotRoots { uid: 1000, .. })
            ));
            Ok(())
        })();
        let _ = std::fs::remove_dir(
            base.join("user@1000.service")
                .join(format!("libpod-{id}.scope")),
        );
        let _ = std::fs::remove_dir(base.join("user@1000.service"));
        let _ = std::fs::remove_dir(base.join(format!("libpod-{id}")));
        let _ = std::fs::remove_dir(&base);
        result
    }
}
