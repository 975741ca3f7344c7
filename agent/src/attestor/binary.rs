//! The caller's executable, read through `/proc/<pid>/exe` (which reaches the
//! very file the process runs, even if it was renamed or replaced since), and
//! its SHA-256, cached by file identity so a hot caller is not rehashed.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;

use aws_lc_rs::digest;

use crate::lru::Lru;

/// Hashes of this many distinct binaries are remembered.
const HASH_CACHE_CAPACITY: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("cannot read the executable of process {pid}: {source}")]
    Read { pid: i32, source: std::io::Error },
    #[error("the executable of process {0} changed while it was hashed")]
    Changed(i32),
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
pub struct BinaryInspector {
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
    /// The path the process runs from; None when it was deleted (the name
    /// then no longer leads to what runs).
    pub fn path(pid: i32) -> Result<Option<PathBuf>, BinaryError> {
        let link = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_err(|source| BinaryError::Read { pid, source })?;
        let deleted = link.to_string_lossy().ends_with(" (deleted)");
        Ok((!deleted).then_some(link))
    }

    /// Hex SHA-256 of the executable; None when it is larger than `max_bytes`.
    pub fn sha256(&self, pid: i32, max_bytes: u64) -> Result<Option<String>, BinaryError> {
        let read_err = |source| BinaryError::Read { pid, source };
        let mut file = File::open(format!("/proc/{pid}/exe")).map_err(read_err)?;
        let before = FileIdentity::of(&file.metadata().map_err(read_err)?);
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru<FileIdentity, String>> {
        self.hashes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_binary_is_found_hashed_and_cached() -> Result<(), Box<dyn std::error::Error>> {
        let pid = i32::try_from(std::process::id())?;
        let exe = std::env::current_exe()?;
        assert_eq!(BinaryInspector::path(pid)?, Some(exe.clone()));
        let expected = hex(digest::digest(&digest::SHA256, &std::fs::read(&exe)?).as_ref());
        let inspector = BinaryInspector::default();
        assert_eq!(inspector.sha256(pid, u64::MAX)?, Some(expected.clone()));
        assert_eq!(inspector.cached_count(), 1);
        assert_eq!(inspector.sha256(pid, u64::MAX)?, Some(expected));
        assert_eq!(inspector.cached_count(), 1);
        assert_eq!(inspector.sha256(pid, 1)?, None, "over the size limit");
        Ok(())
    }
}
