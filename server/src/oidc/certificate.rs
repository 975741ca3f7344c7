//! TLS for the OIDC endpoint: the configured certificate (reloaded when its
//! files change, so a renewed certificate needs no restart), or a self-signed
//! one kept in the data dir for development.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::api::listener::ReloadingCert;
use crate::authority::Issuer;
use crate::config::TlsFiles;
use lanyard_host::private_files::{self, FsError};

pub(crate) const SELF_SIGNED_CERT_FILE: &str = "oidc-tls-cert.pem";
const SELF_SIGNED_KEY_FILE: &str = "oidc-tls-key.pem";
/// How often configured certificate files are checked for changes.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] FsError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("publishing the self-signed certificate to {path}: {source}")]
    Publish {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate and key files in use.
#[derive(Debug, Clone)]
pub(crate) struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Configured by the operator (and so watched), rather than self-signed.
    pub configured: bool,
}

/// Builds the rustls config and returns the resolver to keep fresh.
pub(crate) fn server_config(
    files: Option<&TlsFiles>,
    issuer: &Issuer,
    data_dir: &Path,
    public_cert_file: Option<&Path>,
) -> Result<(Arc<ServerConfig>, Arc<ReloadingCert>, CertFiles), TlsError> {
    let files = match files {
        Some(files) => CertFiles {
            cert: files.cert.clone(),
            key: files.key.clone(),
            configured: true,
        },
        None => {
            let files = self_signed(issuer, data_dir)?;
            if let Some(public) = public_cert_file {
                publish(&files.cert, public)?;
            }
            files
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resolver = Arc::new(ReloadingCert::new(load_certified_key(&files, &provider)?));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), resolver, files))
}

fn load_certified_key(
    files: &CertFiles,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let pem_error = |path: &Path, message: String| TlsError::Pem {
        path: path.to_owned(),
        message,
    };
    let cert_pem = read(&files.cert)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(|e| pem_error(&files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(&files.cert, "no CERTIFICATE block".into()));
    }
    let key_pem = read(&files.key)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| pem_error(&files.key, e.to_string()))?
        .ok_or_else(|| pem_error(&files.key, "no private key block".into()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| pem_error(&files.key, e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| {
        pem_error(
            &files.key,
            format!("does not match {}: {e}", files.cert.display()),
        )
    })?;
    Ok(Arc::new(certified))
}

/// Reloads configured certificate files when their modification time changes,
/// until `shutdown` changes. A broken new pair is logged and the old one kept.
pub(crate) async fn watch_and_reload(
    resolver: Arc<ReloadingCert>,
    files: CertFiles,
    mut shutdown: watch::Receiver<bool>,
) {
    if !files.configured {
        return;
    }
    let stamp = |files: &CertFiles| -> Option<(SystemTime, SystemTime)> {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((modified(&files.cert)?, modified(&files.key)?))
    };
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut last = stamp(&files);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RELOAD_CHECK_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        let now = stamp(&files);
        if now.is_none() || now == last {
            continue;
        }
        match load_certified_key(&files, &provider) {
            Ok(key) => {
                resolver.replace(key);
                last = now;
                tracing::info!(cert = %files.cert.display(), "reloaded the OIDC certificate");
            }
            Err(e) => {
                tracing::warn!(error = %e, "new OIDC certificate is unusable; keeping the old one")
            }
        }
    }
}

/// Copies the self-signed certificate to `public` (mode 0644) at every
/// start, so it always matches the one served.
fn publish(cert: &Path, public: &Path) -> Result<(), TlsError> {
    let pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        path: cert.to_owned(),
        source,
    })?;
    lanyard_host::private_files::write_public_file(public, &pem).map_err(|source| {
        TlsError::Publish {
            path: public.to_owned(),
            source,
        }
    })?;
    tracing::info!(path = %public.display(), "published the self-signed OIDC certificate");
    Ok(())
}

/// Returns the self-signed certificate and key paths, generating them once.
fn self_signed(issuer: &Issuer, data_dir: &Path) -> Result<CertFiles, TlsError> {
    let files = CertFiles {
        cert: data_dir.join(SELF_SIGNED_CERT_FILE),
        key: data_dir.join(SELF_SIGNED_KEY_FILE),
        configured: false,
    };
    if private_files::read_private_file(&files.key)?.is_some() && files.cert.exists() {
        return Ok(files);
    }
    let mut names = vec![issuer.host().to_owned()];
    for name in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    let certified = rcgen::generate_simple_self_signed(names)?;
    // Both replaced atomically, the key last: the pair counts as present only
    // once the key is there, so a failure in between means a fresh pair next time.
    private_files::write_private_file(&files.cert, certified.cert.pem().as_bytes())?;
    private_files::write_private_file(
        &files.key,
        certified.signing_key.serialize_pem().as_bytes(),
    )?;
    tracing::info!(cert = %files.cert.display(), "generated a self-signed OIDC certificate (configure oidc.tls_cert for production)");
    Ok(files)
}
