//! The agent's own identity towards a remote server, as it is kept on disk:
//! key, X.509 SVID and trust bundle in one owner-only file in the data dir,
//! so a restart needs no new join token.

use std::path::Path;
use std::sync::Arc;

use lanyard_host::pem::encode as pem;
use lanyard_host::private_files;
use lanyard_proto::SpiffeId;
use lanyard_proto::node::AgentSvidResponse;
use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::NodeClientError;

/// Key, SVID and trust bundle, in one file so that they change together.
pub const CREDENTIALS_FILE: &str = "agent-credentials.pem";
/// Key, SVID and bundle files of earlier versions: read, then replaced.
const LEGACY_FILES: [&str; 3] = ["agent-key.pem", "agent-svid.pem", "bundle.pem"];

/// What an attested agent holds: its SVID, its key and the CA bundle.
#[derive(Clone)]
pub struct AgentCredentials {
    pub spiffe_id: SpiffeId,
    pub svid: CertificateDer<'static>,
    pub(super) key_pkcs8: Vec<u8>,
    pub bundle: Vec<CertificateDer<'static>>,
    pub expires_at: i64,
}

impl std::fmt::Debug for AgentCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCredentials")
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl AgentCredentials {
    pub(super) fn from_response(
        response: AgentSvidResponse,
        key: &KeyPair,
    ) -> Result<Self, NodeClientError> {
        let spiffe_id =
            SpiffeId::parse(&response.spiffe_id).map_err(NodeClientError::BadSpiffeId)?;
        if response.bundle.is_empty() {
            return Err(NodeClientError::NoBundle);
        }
        Ok(Self {
            spiffe_id,
            svid: CertificateDer::from(response.svid),
            key_pkcs8: key.serialize_der(),
            bundle: response
                .bundle
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            expires_at: response.expires_at,
        })
    }

    /// Persists the credentials in `dir` as one 0600 file, replaced
    /// atomically: key, SVID and bundle can never disagree on disk, whatever
    /// fails or crashes halfway (the server refuses the previous SVID as soon
    /// as it has issued a new one, so a new key beside an old SVID would lock
    /// the agent out).
    pub fn save(&self, dir: &Path) -> Result<(), NodeClientError> {
        private_files::ensure_private_dir(dir)?;
        let mut text = pem("PRIVATE KEY", &self.key_pkcs8);
        text.push_str(&pem("CERTIFICATE", &self.svid));
        text.push_str(&format!(
            "# spiffe_id {}\n# expires_at {}\n# the certificates below: the trust bundle\n",
            self.spiffe_id, self.expires_at
        ));
        for ca in &self.bundle {
            text.push_str(&pem("CERTIFICATE", ca));
        }
        private_files::write_private_file(&dir.join(CREDENTIALS_FILE), text.as_bytes())?;
        // Files of the three-file layout of earlier versions are superseded.
        for legacy in LEGACY_FILES {
            match std::fs::remove_file(dir.join(legacy)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = legacy, error = %e, "could not remove a superseded credentials file")
                }
            }
        }
        Ok(())
    }

    /// Loads credentials saved by [`save`](Self::save) (or by the three-file
    /// layout of earlier versions); `Ok(None)` if there are none. A key that
    /// does not belong to the SVID is refused here, not at the first call.
    pub fn load(dir: &Path) -> Result<Option<Self>, NodeClientError> {
        let broken = |problem: &'static str| NodeClientError::Credentials {
            dir: dir.to_owned(),
            problem,
        };
        let text = match private_files::read_private_file(&dir.join(CREDENTIALS_FILE))? {
            Some(text) => text,
            None => match read_legacy(dir, &broken)? {
                Some(text) => text,
                None => return Ok(None),
            },
        };
        let mut reader = text.as_slice();
        let mut items = rustls_pemfile::read_all(&mut reader);
        let key = match items.next() {
            Some(Ok(rustls_pemfile::Item::Pkcs8Key(key))) => key.secret_pkcs8_der().to_vec(),
            _ => return Err(broken("the first PEM block is not a PKCS#8 PRIVATE KEY")),
        };
        let svid = match items.next() {
            Some(Ok(rustls_pemfile::Item::X509Certificate(cert))) => cert,
            _ => return Err(broken("the SVID CERTIFICATE does not follow the key")),
        };
        let bundle = items
            .map(|item| match item {
                Ok(rustls_pemfile::Item::X509Certificate(cert)) => Ok(cert),
                _ => Err(broken(
                    "the trust bundle holds something else than CERTIFICATE blocks",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if bundle.is_empty() {
            return Err(broken("the trust bundle is missing"));
        }
        let notes = String::from_utf8_lossy(&text);
        let note = |name: &str| {
            notes
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# {name} ")))
                .map(str::to_owned)
        };
        let spiffe_id = note("spiffe_id")
            .and_then(|s| SpiffeId::parse(&s).ok())
            .ok_or_else(|| broken("SPIFFE ID note missing"))?;
        let expires_at = note("expires_at")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| broken("expiry note missing"))?;
        let creds = Self {
            spiffe_id,
            svid,
            key_pkcs8: key,
            bundle,
            expires_at,
        };
        // rustls checks that the key is the one the certificate names.
        tls_config(&creds.bundle, Some(&creds)).map_err(|source| NodeClientError::KeyMismatch {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(Some(creds))
    }
}

/// TLS towards the server, trusting `roots` and presenting `identity` when given.
pub(super) fn tls_config(
    roots: &[CertificateDer<'static>],
    identity: Option<&AgentCredentials>,
) -> Result<ClientConfig, rustls::Error> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store);
    let mut config = match identity {
        Some(creds) => builder.with_client_auth_cert(
            vec![creds.svid.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(creds.key_pkcs8.clone())),
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The three files of earlier versions (key, SVID with its notes, bundle),
/// concatenated in the order of the one-file layout.
fn read_legacy(
    dir: &Path,
    broken: &dyn Fn(&'static str) -> NodeClientError,
) -> Result<Option<Vec<u8>>, NodeClientError> {
    let [key, svid, bundle] = LEGACY_FILES;
    let Some(mut text) = private_files::read_private_file(&dir.join(key))? else {
        return Ok(None);
    };
    for (file, missing) in [(svid, "SVID missing"), (bundle, "bundle missing")] {
        let part =
            private_files::read_private_file(&dir.join(file))?.ok_or_else(|| broken(missing))?;
        text.push(b'\n');
        text.extend_from_slice(&part);
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::CertificateParams;

    /// Credentials whose SVID is a self-signed certificate over `svid_key`,
    /// holding `held_key` as the agent's key.
    fn credentials(svid_key: &KeyPair, held_key: &KeyPair) -> AgentCredentials {
        let cert = CertificateParams::new(vec!["agent".to_owned()])
            .unwrap()
            .self_signed(svid_key)
            .unwrap();
        AgentCredentials {
            spiffe_id: SpiffeId::parse("spiffe://example.org/node/a").unwrap(),
            svid: cert.der().clone(),
            key_pkcs8: held_key.serialize_der(),
            bundle: vec![cert.der().clone()],
            expires_at: 1_900_000_000,
        }
    }

    #[test]
    fn saved_credentials_load_back_from_one_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let creds = credentials(&key, &key);
        creds.save(dir.path()).unwrap();

        let path = dir.path().join(CREDENTIALS_FILE);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let loaded = AgentCredentials::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.spiffe_id, creds.spiffe_id);
        assert_eq!(loaded.svid, creds.svid);
        assert_eq!(loaded.key_pkcs8, creds.key_pkcs8);
        assert_eq!(loaded.bundle, creds.bundle);
        assert_eq!(loaded.expires_at, creds.expires_at);
    }

    #[test]
    fn nothing_stored_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(AgentCredentials::load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn a_key_that_does_not_fit_the_svid_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let creds = credentials(&KeyPair::generate().unwrap(), &KeyPair::generate().unwrap());
        creds.save(dir.path()).unwrap();
        let err = AgentCredentials::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not fit the SVID"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn a_damaged_file_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        credentials(&key, &key).save(dir.path()).unwrap();
        let path = dir.path().join(CREDENTIALS_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        // Cut off after the key: no SVID, no bundle.
        let key_end = text.find("-----END PRIVATE KEY-----\n").unwrap() + 26;
        private_files::write_private_file(&path, &text.as_bytes()[..key_end]).unwrap();
        let err = AgentCredentials::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("SVID CERTIFICATE does not follow the key"),
            "{err}"
        );
    }

    #[test]
    fn the_three_file_layout_of_earlier_versions_is_read_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let creds = credentials(&key, &key);
        let [key_file, svid_file, bundle_file] = LEGACY_FILES;
        let svid_text = format!(
            "{}# spiffe_id {}\n# expires_at {}\n",
            pem("CERTIFICATE", &creds.svid),
            creds.spiffe_id,
            creds.expires_at
        );
        for (file, text) in [
            (key_file, pem("PRIVATE KEY", &creds.key_pkcs8)),
            (svid_file, svid_text),
            (bundle_file, pem("CERTIFICATE", &creds.bundle[0])),
        ] {
            private_files::write_private_file(&dir.path().join(file), text.as_bytes()).unwrap();
        }

        let loaded = AgentCredentials::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.svid, creds.svid);
        assert_eq!(loaded.expires_at, creds.expires_at);
        loaded.save(dir.path()).unwrap();
        for file in LEGACY_FILES {
            assert!(!dir.path().join(file).exists(), "{file} left behind");
        }
        assert!(AgentCredentials::load(dir.path()).unwrap().is_some());
    }
}
