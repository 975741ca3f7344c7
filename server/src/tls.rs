//! TLS for the OIDC endpoint: the configured certificate, or a self-signed one
//! kept in the data dir for development.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Issuer, TlsFiles};
use crate::fsutil::{self, FsError};

pub const SELF_SIGNED_CERT_FILE: &str = "oidc-tls-cert.pem";
const SELF_SIGNED_KEY_FILE: &str = "oidc-tls-key.pem";

#[derive(Debug, thiserror::Error)]
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
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the rustls config from `files`, or from a self-signed pair in `data_dir`.
pub fn server_config(
    files: Option<&TlsFiles>,
    issuer: &Issuer,
    data_dir: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_path, key_pem) = match files {
        Some(files) => {
            let key = std::fs::read(&files.key).map_err(|source| TlsError::Read {
                path: files.key.clone(),
                source,
            })?;
            (files.cert.clone(), key)
        }
        None => self_signed(issuer, data_dir)?,
    };
    let cert_pem = std::fs::read(&cert_path).map_err(|source| TlsError::Read {
        path: cert_path.clone(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_path.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path,
            message: "no CERTIFICATE block".into(),
        });
    }
    let key_path = files.map_or_else(|| data_dir.join(SELF_SIGNED_KEY_FILE), |f| f.key.clone());
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Pem {
            path: key_path.clone(),
            message: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: key_path,
            message: "no private key block".into(),
        })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Returns the self-signed certificate's path and key PEM, generating them once.
fn self_signed(issuer: &Issuer, data_dir: &Path) -> Result<(PathBuf, Vec<u8>), TlsError> {
    let cert_path = data_dir.join(SELF_SIGNED_CERT_FILE);
    let key_path = data_dir.join(SELF_SIGNED_KEY_FILE);
    if let (Some(key), true) = (fsutil::read_private_file(&key_path)?, cert_path.exists()) {
        return Ok((cert_path, key));
    }
    let mut names = vec![issuer.host().to_owned()];
    for name in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    let certified = rcgen::generate_simple_self_signed(names)?;
    let key_pem = certified.signing_key.serialize_pem();
    fsutil::write_private_file(&key_path, key_pem.as_bytes())?;
    std::fs::write(&cert_path, certified.cert.pem()).map_err(|source| TlsError::Read {
        path: cert_path.clone(),
        source,
    })?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed OIDC certificate (configure oidc.tls_cert for production)");
    Ok((cert_path, key_pem.into_bytes()))
}
