//! The caller's executable, read through `/proc/<pid>/exe` (which reaches the
//! very file the process runs, even if it was renamed or replaced since), and
//! its SHA-256, cached by file identity so a hot caller is not rehashed.
//!
//! The pin proves a caller is the process that connected, not that it still
//! runs the same program: a process may connect, hand the socket to a child
//! and execve a trusted binary. So which file the caller ran when it was
//! accepted is recorded (`ExeIdentity`), and its path or hash is given only
//! while it still runs that file. An execve between `connect` and the
//! agent's accept is not seen: /proc cannot tell what ran before.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use aws_lc_rs::digest;
use lanyard_host::encoding::hex;
use lanyard_host::sync::lock;

use crate::lru::Lru;

/// Hashes of this many distinct binaries are remembered.
const HASH_CACHE_CAPACITY: usize = 512;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BinaryError {
    #[error("cannot read the executable of process {pid}: {source}")]
    Read { pid: i32, source: std::io::Error },
    #[error("the executable of process {0} changed while it was hashed")]
    Changed(i32),
    #[error("process {0} runs another executable than when it connected (it called execve)")]
    Exec(i32),
    #[error("the executable of process {pid} was not recorded when it connected: {reason}")]
    Unrecorded { pid: i32, reason: String },
    #[error(
        "the connection of process {0} was written by another process (handed over): no binary selectors"
    )]
    HandedOver(i32),
}

/// What a caller ran when its connection was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectedExe {
    /// Not looked at: binary selectors are off.
    Skipped,
    Known(ExeIdentity),
    /// Could not be read, and why.
    Unreadable(String),
}

impl ConnectedExe {
    pub(crate) fn record(pid: i32) -> Self {
        match ExeIdentity::of_process(pid) {
            Ok(identity) => Self::Known(identity),
            Err(e) => Self::Unreadable(e.to_string()),
        }
    }

    /// The recorded file; an error when there is none.
    pub(crate) fn identity(&self, pid: i32) -> Result<&ExeIdentity, BinaryError> {
        let reason = match self {
            Self::Known(identity) => return Ok(identity),
            Self::Skipped => "binary selectors were off".to_owned(),
            Self::Unreadable(reason) => reason.clone(),
        };
        Err(BinaryError::Unrecorded { pid, reason })
    }
}

/// The file a process runs: `/proc/<pid>/exe` followed to its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExeIdentity {
    dev: u64,
    ino: u64,
}

impl ExeIdentity {
    /// One stat of `/proc/<pid>/exe` (no read of the file).
    pub(crate) fn of_process(pid: i32) -> Result<Self, BinaryError> {
        let meta = std::fs::metadata(format!("/proc/{pid}/exe"))
            .map_err(|source| BinaryError::Read { pid, source })?;
        Ok(Self::of(&meta))
    }

    fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// Ok when `meta` (of the file just opened for `pid`) is this file.
    fn check(&self, pid: i32, meta: &Metadata) -> Result<(), BinaryError> {
        if Self::of(meta) == *self {
            Ok(())
        } else {
            Err(BinaryError::Exec(pid))
        }
    }
}

/// Identifies one version of one file: if none of these changed, neither did its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileIdentity {
    fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

#[derive(Debug)]
pub(crate) struct BinaryInspector {
    hashes: Mutex<Lru<FileIdentity, String>>,
}

impl Default for BinaryInspector {
    fn default() -> Self {
        Self {
            hashes: Mutex::new(Lru::new(HASH_CACHE_CAPACITY)),
        }
    }
}

impl BinaryInspector {
    /// The path the process runs from, provided it still runs `connected`;
    /// None when the file was deleted (the name then no longer leads to what
    /// runs).
    pub(crate) fn path(pid: i32, connected: &ExeIdentity) -> Result<Option<PathBuf>, BinaryError> {
        let read_err = |source| BinaryError::Read { pid, source };
        // Opened, checked and named through one descriptor, so the name is
        // that of the checked file even if the process execs meanwhile.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_PATH)
            .open(format!("/proc/{pid}/exe"))
            .map_err(read_err)?;
        connected.check(pid, &file.metadata().map_err(read_err)?)?;
        let link =
            std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(read_err)?;
        let deleted = link.to_string_lossy().ends_with(" (deleted)");
        Ok((!deleted).then_some(link))
    }

    /// Hex SHA-256 of the executable, provided the process still runs
    /// `connected`; None when it is larger than `max_bytes`.
    pub(crate) fn sha256(
        &self,
        pid: i32,
        connected: &ExeIdentity,
        max_bytes: u64,
    ) -> Result<Option<String>, BinaryError> {
        let read_err = |source| BinaryError::Read { pid, source };
        let mut file = File::open(format!("/proc/{pid}/exe")).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        connected.check(pid, &meta)?;
        let before = FileIdentity::of(&meta);
        if before.size > max_bytes {
            tracing::debug!(pid, size = before.size, "executable too large to hash");
            return Ok(None);
        }
        if let Some(hash) = self.cached(&before) {
            return Ok(Some(hash));
        }
        // Hashed without the lock: two callers may hash the same file at once,
        // which is cheaper than making every caller wait behind one big file.
        let hash = sha256_hex(&mut file).map_err(read_err)?;
        if FileIdentity::of(&file.metadata().map_err(read_err)?) != before {
            return Err(BinaryError::Changed(pid));
        }
        self.lock().insert(before, hash.clone());
        Ok(Some(hash))
    }

    fn cached(&self, identity: &FileIdentity) -> Option<String> {
        self.lock().get_mut(identity).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, Lru<FileIdentity, String>> {
        lock(&self.hashes)
    }

    #[cfg(test)]
    fn cached_count(&self) -> usize {
        self.lock().len()
    }
}

/// Hex SHA-256 of everything `reader` yields: the value of a `unix:sha256` selector.
pub fn sha256_hex(reader: &mut impl Read) -> std::io::Result<String> {
    let mut context = digest::Context::new(&digest::SHA256);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            return Ok(hex(context.finish().as_ref()));
        }
        context.update(&buffer[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_binary_is_found_hashed_and_cached() -> Result<(), Box<dyn std::error::Error>> {
        let pid = i32::try_from(std::process::id())?;
        let exe = std::env::current_exe()?;
        let running = ExeIdentity::of_process(pid)?;
        assert_eq!(BinaryInspector::path(pid, &running)?, Some(exe.clone()));
        let expected = hex(digest::digest(&digest::SHA256, &std::fs::read(&exe)?).as_ref());
        let inspector = BinaryInspector::default();
        assert_eq!(
            inspector.sha256(pid, &running, u64::MAX)?,
            Some(expected.clone())
        );
        assert_eq!(inspector.cached_count(), 1);
        assert_eq!(inspector.sha256(pid, &running, u64::MAX)?, Some(expected));
        assert_eq!(inspector.cached_count(), 1);
        assert_eq!(
            inspector.sha256(pid, &running, 1)?,
            None,
            "over the size limit"
        );
        Ok(())
    }

    /// What a process that called execve since it connected looks like: it
    /// runs another file than the one recorded. Neither its path nor its hash
    /// is given (nothing is hashed either).
    #[test]
    fn another_executable_than_at_connect_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let pid = i32::try_from(std::process::id())?;
        let running = ExeIdentity::of_process(pid)?;
        let before_exec = ExeIdentity {
            ino: running.ino.wrapping_add(1),
            ..running
        };
        assert!(matches!(
            BinaryInspector::path(pid, &before_exec),
            Err(BinaryError::Exec(p)) if p == pid
        ));
        let inspector = BinaryInspector::default();
        assert!(matches!(
            inspector.sha256(pid, &before_exec, u64::MAX),
            Err(BinaryError::Exec(p)) if p == pid
        ));
        assert_eq!(inspector.cached_count(), 0);
        Ok(())
    }
}
