//! Files that hold secrets (keys, SVIDs): created with owner-only modes, replaced atomically,
//! and refused when someone has loosened their permissions; and the few
//! public ones (discovery documents, a self-signed certificate), replaced as
//! atomically but readable by all.

use std::fs::{self, DirBuilder};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} has mode {mode:04o}; it must not be readable by group or others (chmod 600)")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is owned by uid {owner}, not by this process (uid {me})")]
    WrongOwner { path: PathBuf, owner: u32, me: u32 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and parents) if needed and makes sure it is ours and mode 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<(), FsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(FsError::WrongOwner {
            path: dir.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// Writes `contents` to `path` with mode 0600: a temporary file in the same
/// directory (mode 0600 from its creation, a random name made with
/// `O_EXCL`, so nobody can plant or pre-empt it), fsynced, then renamed over
/// `path`, so readers see all or nothing.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    let dir = parent_dir(path);
    let prefix = format!(
        ".{}.",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(contents).map_err(io_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    // On failure the temporary file is removed when `tmp` drops.
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    // Make the rename itself durable.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Replaces `path` with `contents`, mode 0644 whatever the umask (a web
/// server or another user must read it): a temporary file in the same
/// directory renamed over it, so no reader sees a half-written file. A
/// missing directory is created mode 0755, whatever the umask, so the file
/// in it is reachable too.
pub fn write_public_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".lanyard-publish.")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    // On failure the temporary file is removed when `tmp` drops.
    tmp.persist(path).map(drop).map_err(|e| e.error)
}

/// The directory `path` is in; `Path::new("token").parent()` is `Some("")`,
/// which no system call accepts: that is the current directory.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Reads a secret file, refusing it when group or others may read it.
/// Returns `Ok(None)` when the file does not exist.
pub fn read_private_file(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(FsError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    fs::read(path).map(Some).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_round_trip_with_mode_0600() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret");
        assert!(read_private_file(&path)?.is_none());
        write_private_file(&path, b"one")?;
        write_private_file(&path, b"two")?;
        assert_eq!(fs::metadata(&path)?.mode() & 0o777, 0o600);
        assert_eq!(read_private_file(&path)?.as_deref(), Some(&b"two"[..]));
        assert_eq!(
            fs::read_dir(dir.path())?.count(),
            1,
            "no temporary file left behind"
        );
        Ok(())
    }

    #[test]
    fn a_bare_file_name_is_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("token")), Path::new("."));
        assert_eq!(parent_dir(Path::new("run/token")), Path::new("run"));
        assert_eq!(parent_dir(Path::new("/token")), Path::new("/"));
    }

    #[test]
    fn a_planted_temporary_name_does_not_stop_the_write() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret");
        // What the fixed-name scheme of earlier versions would have used.
        let planted = dir
            .path()
            .join(format!(".secret.tmp-{}", std::process::id()));
        fs::write(&planted, b"someone else's")?;
        write_private_file(&path, b"mine")?;
        assert_eq!(read_private_file(&path)?.as_deref(), Some(&b"mine"[..]));
        assert_eq!(fs::read(&planted)?, b"someone else's", "not ours to remove");
        Ok(())
    }

    #[test]
    fn loosened_files_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret");
        write_private_file(&path, b"k")?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        let err = read_private_file(&path).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("mode 0644")));
        Ok(())
    }
}
