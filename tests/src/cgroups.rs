//! Real cgroups for tests, named as systemd names them
//! (`lanyard-test-<pid>-<n>.slice/web.service`), in the hierarchy the agent reads
//! units from: systemd's named v1 hierarchy where the machine has one
//! (legacy and hybrid layouts), else the unified one.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A slice of test units, removed (with its units) when dropped; processes
/// still in it are moved back to the root first.
#[derive(Debug)]
pub struct TestSlice {
    root: PathBuf,
    slice: PathBuf,
    name: String,
}

/// Why this machine cannot host the test's cgroups.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl TestSlice {
    /// A new slice, or why the machine has no writable hierarchy for one.
    pub fn create() -> Result<Self, Unavailable> {
        let root = systemd_hierarchy_mount()?;
        // Unique per test too: tests of one binary run at once.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("lanyard-test-{}-{n}.slice", std::process::id());
        let slice = root.join(&name);
        std::fs::create_dir(&slice).map_err(|e| {
            Unavailable(format!(
                "cannot create a cgroup under {}: {e}",
                root.display()
            ))
        })?;
        Ok(Self { root, slice, name })
    }

    /// A new slice, or None (printed why) where the machine has no writable
    /// cgroup hierarchy — never when `CI` is set, where that is an error.
    pub fn create_or_skip() -> anyhow::Result<Option<Self>> {
        match Self::create() {
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

    /// The slice's name, e.g. `lanyard-test-42-0.slice`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The slice's directory, for tests that shape cgroups in it themselves
    /// (they remove what they make below its units).
    pub fn dir(&self) -> &Path {
        &self.slice
    }

    /// Creates the unit's cgroup in the slice (once) and moves `pid` into it.
    pub fn move_into(&self, unit: &str, pid: u32) -> anyhow::Result<()> {
        let dir = self.slice.join(unit);
        if !dir.exists() {
            std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        write_pid(&dir, pid)
    }

    fn units(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.slice)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TestSlice {
    fn drop(&mut self) {
        for unit in self.units() {
            if let Ok(procs) = std::fs::read_to_string(unit.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|p| p.parse().ok()) {
                    let _ = write_pid(&self.root, pid);
                }
            }
            let _ = std::fs::remove_dir(&unit);
        }
        let _ = std::fs::remove_dir(&self.slice);
    }
}

fn write_pid(cgroup: &Path, pid: u32) -> anyhow::Result<()> {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string())
        .with_context(|| format!("moving {pid} into {}", procs.display()))
}

/// Where the hierarchy the agent reads units from is mounted.
fn systemd_hierarchy_mount() -> Result<PathBuf, Unavailable> {
    let mine = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| Unavailable(format!("cannot read /proc/self/cgroup: {e}")))?;
    let named = mine.lines().any(|l| l.contains(":name=systemd:"));
    let candidates: &[&str] = if named {
        &["/sys/fs/cgroup/systemd"]
    } else {
        &["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
    };
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists())
        .ok_or_else(|| {
            Unavailable(format!(
                "none of {candidates:?} is a cgroup hierarchy (this process's cgroups: {mine:?})"
            ))
        })
}
