//! The directory of private signing keys: one PKCS#8 PEM file per key, named
//! `<kid>.pem`, mode 0600, written atomically and fsynced. Private keys live
//! only here; the datastore holds their public records.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::signing_key::{LEGACY_KEY_FILE, PEM_LABEL};
use super::{JwtSigningKey, KeyError, KeyParseError, KeyType};
use lanyard_host::private_files::{self, FsError};

const KEY_FILE_SUFFIX: &str = ".pem";
const MAX_KID_LEN: usize = 128;

/// A private directory (mode 0700) of signing key files.
#[derive(Debug, Clone)]
pub struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    /// Opens `dir`, creating it mode 0700 if needed (and refusing one that is not ours).
    pub fn open(dir: &Path) -> Result<Self, KeyError> {
        private_files::ensure_private_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where the key `kid` is (or would be) kept.
    pub fn key_path(&self, kid: &str) -> Result<PathBuf, KeyError> {
        check_kid(kid)?;
        Ok(self.dir.join(format!("{kid}{KEY_FILE_SUFFIX}")))
    }

    /// Generates a key of `key_type` and persists it durably before returning it,
    /// so a key whose record reaches the datastore always has its file.
    pub fn generate(&self, key_type: KeyType) -> Result<JwtSigningKey, KeyError> {
        let (key, pkcs8) = JwtSigningKey::generate(key_type)?;
        let path = self.key_path(key.kid())?;
        private_files::write_private_file(
            &path,
            lanyard_host::pem::encode(PEM_LABEL, &pkcs8).as_bytes(),
        )?;
        tracing::info!(kid = key.kid(), %key_type, path = %path.display(), "generated a JWT signing key");
        Ok(key)
    }

    /// Loads the key `kid`, checking that the file really holds that key.
    pub fn load(&self, kid: &str) -> Result<JwtSigningKey, KeyError> {
        let path = self.key_path(kid)?;
        let pem = private_files::read_private_file(&path)?.ok_or_else(|| KeyError::NotFound {
            kid: kid.to_owned(),
            dir: self.dir.clone(),
        })?;
        let key = JwtSigningKey::from_pem(&pem).map_err(|source| KeyError::Invalid {
            path: path.clone(),
            source,
        })?;
        if key.kid() != kid {
            return Err(KeyError::Invalid {
                path,
                source: KeyParseError::OtherKid {
                    found: key.kid().to_owned(),
                    expected: kid.to_owned(),
                },
            });
        }
        Ok(key)
    }

    /// Deletes the key file of `kid`; `false` when there was none.
    pub fn delete(&self, kid: &str) -> Result<bool, KeyError> {
        let path = self.key_path(kid)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(FsError::Io { path, source }.into()),
        }
        // Make the removal durable.
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| FsError::Io {
                path: self.dir.clone(),
                source,
            })?;
        tracing::info!(kid, "deleted a JWT signing key");
        Ok(true)
    }

    /// Moves the single key of [`JwtSigningKey::load_or_generate`]
    /// (`jwt-es256.pem`, from before rotation) to `<kid>.pem` and returns it,
    /// so a server that already published it can keep it as its first key.
    /// `None` when there is no such file. Safe to repeat after a crash.
    pub fn adopt_legacy_key(&self) -> Result<Option<JwtSigningKey>, KeyError> {
        let legacy = self.dir.join(LEGACY_KEY_FILE);
        let Some(pem) = private_files::read_private_file(&legacy)? else {
            return Ok(None);
        };
        let key = JwtSigningKey::from_pem(&pem).map_err(|source| KeyError::Invalid {
            path: legacy.clone(),
            source,
        })?;
        private_files::write_private_file(&self.key_path(key.kid())?, &pem)?;
        fs::remove_file(&legacy).map_err(|source| FsError::Io {
            path: legacy.clone(),
            source,
        })?;
        tracing::info!(
            kid = key.kid(),
            "adopted the single JWT signing key {LEGACY_KEY_FILE}"
        );
        Ok(Some(key))
    }

    /// The kids of all key files here, sorted (e.g. to remove files whose
    /// record is gone). Other files are ignored.
    pub fn kids(&self) -> Result<Vec<String>, KeyError> {
        let io_err = |source| FsError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut kids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err)? {
            let name = entry.map_err(io_err)?.file_name();
            let Some(kid) = name.to_str().and_then(|n| n.strip_suffix(KEY_FILE_SUFFIX)) else {
                continue;
            };
            if check_kid(kid).is_ok() {
                kids.push(kid.to_owned());
            }
        }
        kids.sort_unstable();
        Ok(kids)
    }
}

/// A kid names a file, so it must be plain base64url: no `/`, no `..`.
fn check_kid(kid: &str) -> Result<(), KeyError> {
    let ok = !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadKid(kid.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn keys_are_0600_files_named_by_kid_and_reload_to_the_same_kid() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let keys = KeyDir::open(&tmp.path().join("keys"))?;
        assert_eq!(fs::metadata(keys.path())?.mode() & 0o777, 0o700);
        for key_type in KeyType::ALL {
            let key = keys.generate(key_type)?;
            let path = keys.path().join(format!("{}.pem", key.kid()));
            assert_eq!(fs::metadata(&path)?.mode() & 0o777, 0o600, "{key_type}");
            let loaded = keys.load(key.kid())?;
            assert_eq!(loaded.kid(), key.kid());
            assert_eq!(loaded.key_type(), key_type);
            assert_eq!(loaded.jwk(), key.jwk());
        }
        assert_eq!(keys.kids()?.len(), 2);
        let reopened = KeyDir::open(keys.path())?;
        assert_eq!(reopened.kids()?, keys.kids()?);
        Ok(())
    }

    #[test]
    fn the_legacy_single_key_is_adopted_once() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let legacy = JwtSigningKey::load_or_generate(tmp.path())?;
        let keys = KeyDir::open(tmp.path())?;
        let adopted = keys.adopt_legacy_key()?.ok_or("no legacy key")?;
        assert_eq!(adopted.kid(), legacy.kid());
        assert!(!tmp.path().join(LEGACY_KEY_FILE).exists());
        assert_eq!(keys.kids()?, vec![legacy.kid().to_owned()]);
        assert_eq!(keys.load(legacy.kid())?.kid(), legacy.kid());
        assert!(keys.adopt_legacy_key()?.is_none());
        Ok(())
    }

    #[test]
    fn delete_removes_only_that_key() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let keys = KeyDir::open(tmp.path())?;
        let a = keys.generate(KeyType::EcP256)?;
        let b = keys.generate(KeyType::EcP256)?;
        assert!(keys.delete(a.kid())?);
        assert!(!keys.delete(a.kid())?, "already gone");
        assert_eq!(keys.kids()?, vec![b.kid().to_owned()]);
        assert!(matches!(keys.load(a.kid()), Err(KeyError::NotFound { .. })));
        assert_eq!(keys.load(b.kid())?.kid(), b.kid());
        Ok(())
    }

    #[test]
    fn kids_that_are_not_file_names_are_refused() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let keys = KeyDir::open(&tmp.path().join("keys"))?;
        fs::write(tmp.path().join("x.pem"), "outside")?;
        for bad in ["", "../x", "a/b", "a.b", &"k".repeat(129)] {
            assert!(
                matches!(keys.load(bad), Err(KeyError::BadKid(_))),
                "{bad:?}"
            );
            assert!(matches!(keys.delete(bad), Err(KeyError::BadKid(_))));
        }
        assert!(tmp.path().join("x.pem").exists());
        Ok(())
    }

    #[test]
    fn a_file_holding_another_key_or_loosened_is_refused() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let keys = KeyDir::open(tmp.path())?;
        let a = keys.generate(KeyType::EcP256)?;
        let b = keys.generate(KeyType::EcP256)?;
        fs::copy(keys.key_path(b.kid())?, keys.key_path(a.kid())?)?;
        let err = keys.load(a.kid()).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("holds the key")),
            "{err:?}"
        );
        fs::set_permissions(keys.key_path(b.kid())?, fs::Permissions::from_mode(0o644))?;
        assert!(matches!(
            keys.load(b.kid()),
            Err(KeyError::File(FsError::TooOpen { .. }))
        ));
        Ok(())
    }
}
