//! Operator tools around the OIDC issuer: the documents as static files for an
//! issuer hosted on a bucket or CDN (and GCP's uploadable `jwks_json`), and
//! the SHA-1 certificate thumbprint AWS asks for when registering the issuer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use lanyard_host::sync::lock;
use lanyard_proto::Jwks;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::authority::Issuer;
use crate::oidc::endpoint::OidcDocuments;
use lanyard_host::encoding::hex;

/// How long `thumbprint` waits for the issuer's host to connect and finish
/// the TLS handshake: a host that accepts and never answers must not hang it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcToolError {
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rendering the documents: {0}")]
    Render(#[from] serde_json::Error),
    #[error("issuer {0}: {1}")]
    Issuer(String, String),
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error(
        "issuer {0} is not https: there is no certificate to take a thumbprint of (AWS requires an https:// issuer)"
    )]
    NotHttps(String),
    #[error("{host} ({address}) did not complete a TLS handshake within {limit:?}")]
    Timeout {
        host: String,
        address: String,
        limit: Duration,
    },
    #[error("{0} presented no certificate")]
    NoCertificate(String),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Writes the discovery document and JWKS where a static host serves them
/// at the issuer's paths, plus `jwks.json` for GCP's `--jwk-json-path`.
pub fn publish(issuer: &Issuer, jwks: &Jwks, out: &Path) -> Result<Vec<PathBuf>, OidcToolError> {
    let documents = OidcDocuments::new(issuer, jwks)?;
    let root = out.join(issuer.path().trim_start_matches('/'));
    let files = [
        (
            root.join(".well-known/openid-configuration"),
            documents.discovery(),
        ),
        (root.join("keys"), documents.jwks()),
        (out.join("jwks.json"), documents.jwks()),
    ];
    let mut written = Vec::new();
    for (path, bytes) in files {
        lanyard_host::private_files::write_public_file(&path, bytes).map_err(|source| {
            OidcToolError::Write {
                path: path.clone(),
                source,
            }
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Records the chain a server presents without judging it: the thumbprint is
/// an observation the operator compares, not a trust decision made here.
#[derive(Debug)]
struct ObserveChain {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: std::sync::Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for ObserveChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *lock(&self.chain) = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The SHA-1 thumbprint (hex) of the last certificate the issuer's host
/// presents: the top of its chain, which is what AWS IAM wants.
pub async fn thumbprint(issuer: &Issuer) -> Result<String, OidcToolError> {
    thumbprint_within(issuer, HANDSHAKE_TIMEOUT).await
}

async fn thumbprint_within(issuer: &Issuer, limit: Duration) -> Result<String, OidcToolError> {
    if !issuer.is_https() {
        return Err(OidcToolError::NotHttps(issuer.as_str().to_owned()));
    }
    let address = issuer.socket_address();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let observer = Arc::new(ObserveChain {
        provider: provider.clone(),
        chain: std::sync::Mutex::new(Vec::new()),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(observer.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(issuer.host().to_owned())
        .map_err(|e| OidcToolError::Issuer(issuer.as_str().to_owned(), e.to_string()))?;
    let connect_error = |source| OidcToolError::Connect {
        address: address.clone(),
        source,
    };
    let handshake = async {
        let tcp = TcpStream::connect(&address).await.map_err(connect_error)?;
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(connect_error)
    };
    tokio::time::timeout(limit, handshake)
        .await
        .map_err(|_| OidcToolError::Timeout {
            host: issuer.host().to_owned(),
            address: address.clone(),
            limit,
        })??;
    let chain = lock(&observer.chain).clone();
    let top = chain.last().ok_or(OidcToolError::NoCertificate(address))?;
    Ok(hex(
        digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, top).as_ref()
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn published_files_sit_at_the_issuer_paths() -> Result<(), Box<dyn std::error::Error>> {
        let out = tempfile::tempdir()?;
        let issuer = Issuer::parse("https://cdn.example.org/tenant-a")?;
        let written = publish(&issuer, &Jwks::default(), out.path())?;
        assert_eq!(written.len(), 3);
        let discovery: serde_json::Value = serde_json::from_slice(&std::fs::read(
            out.path().join("tenant-a/.well-known/openid-configuration"),
        )?)?;
        assert_eq!(discovery["issuer"], "https://cdn.example.org/tenant-a");
        assert_eq!(
            discovery["jwks_uri"],
            "https://cdn.example.org/tenant-a/keys"
        );
        assert!(out.path().join("tenant-a/keys").exists());
        assert!(out.path().join("jwks.json").exists());
        Ok(())
    }

    #[test]
    fn socket_address_defaults_the_port() -> Result<(), crate::authority::IssuerError> {
        assert_eq!(
            Issuer::parse("https://a.example")?.socket_address(),
            "a.example:443"
        );
        assert_eq!(
            Issuer::parse("https://a.example:8443/x")?.socket_address(),
            "a.example:8443"
        );
        assert_eq!(
            Issuer::parse("http://[::1]/x")?.socket_address(),
            "[::1]:80"
        );
        Ok(())
    }

    #[test]
    fn published_files_are_public_and_replaced_whole() -> Result<(), Box<dyn std::error::Error>> {
        let out = tempfile::tempdir()?;
        let issuer = Issuer::parse("https://cdn.example.org/t")?;
        let keys = out.path().join("t/keys");
        std::fs::create_dir_all(out.path().join("t"))?;
        std::fs::write(&keys, b"stale")?;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600))?;
        for path in publish(&issuer, &Jwks::default(), out.path())? {
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{}", path.display());
        }
        let jwks: serde_json::Value = serde_json::from_slice(&std::fs::read(&keys)?)?;
        assert!(jwks["keys"].is_array(), "{jwks}");
        let names: Vec<_> = std::fs::read_dir(out.path().join("t"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names.len(), 2, "no temporary file left behind: {names:?}");
        Ok(())
    }

    #[test]
    fn an_issuer_path_cannot_leave_the_out_directory() {
        // Issuer::parse is the gate: nothing with `..` reaches `publish`.
        let error = Issuer::parse("https://cdn.example.org/../../x")
            .err()
            .map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("\"..\"")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn thumbprints_need_https() -> Result<(), Box<dyn std::error::Error>> {
        let error = thumbprint(&Issuer::parse("http://127.0.0.1:1/x")?).await;
        assert!(
            matches!(&error, Err(OidcToolError::NotHttps(url)) if url == "http://127.0.0.1:1/x"),
            "{error:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_silent_host_times_out_by_name() -> Result<(), Box<dyn std::error::Error>> {
        // The kernel completes the TCP connection; nobody ever answers the ClientHello.
        let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
        let issuer = Issuer::parse(&format!("https://{}", silent.local_addr()?))?;
        let started = std::time::Instant::now();
        let error = thumbprint_within(&issuer, Duration::from_millis(300))
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.starts_with("127.0.0.1 ") && e.contains("TLS handshake")),
            "{error:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        Ok(())
    }
}
