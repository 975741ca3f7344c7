//! The trust domain's X.509 certificate authority: it issues agents their
//! SVIDs (from a CSR, so an agent's key never leaves its node) and the server
//! its Node API certificate. Key and certificate live in `<data_dir>/ca/`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use lanyard_proto::fsutil::{self, FsError};
use lanyard_proto::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;

use crate::entries::hex;

const CA_KEY_FILE: &str = "ca-key.pem";
const CA_CERT_FILE: &str = "ca-cert.pem";
const CA_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Clocks drift: certificates start a little in the past.
const BACKDATE: Duration = Duration::from_secs(60);
/// The DNS name in the server's Node API certificate, which agents verify.
pub const SERVER_DNS_NAME: &str = "lanyard-server";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    File(#[from] FsError),
    #[error("CA file {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("certificate signing request is invalid: {0}")]
    BadCsr(rcgen::Error),
    #[error("no randomness available")]
    Random,
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub der: CertificateDer<'static>,
    /// Lowercase hex, as recorded for agents.
    pub serial: String,
    pub expires_at: i64,
}

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    trust_domain: TrustDomain,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn offset(time: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(time)
}

fn random_serial() -> Result<(SerialNumber, String), CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] &= 0x7f; // a positive INTEGER
    Ok((SerialNumber::from_slice(&bytes), hex(&bytes)))
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, creating it on first start.
    pub fn load_or_generate(dir: &Path, trust_domain: &TrustDomain) -> Result<Self, CaError> {
        fsutil::ensure_private_dir(dir)?;
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        let invalid = |path: &Path, message: String| CaError::Invalid {
            path: path.display().to_string(),
            message,
        };
        if let Some(key_pem) = fsutil::read_private_file(&key_path)? {
            let key_pem =
                String::from_utf8(key_pem).map_err(|e| invalid(&key_path, e.to_string()))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, e.to_string()))?;
            let cert_pem = std::fs::read_to_string(&cert_path)
                .map_err(|e| invalid(&cert_path, e.to_string()))?;
            let cert_der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
                .next()
                .and_then(Result::ok)
                .ok_or_else(|| invalid(&cert_path, "no CERTIFICATE block".into()))?;
            let issuer = Issuer::from_ca_cert_der(&cert_der, key)
                .map_err(|e| invalid(&cert_path, e.to_string()))?;
            return Ok(Self {
                issuer,
                cert_der,
                trust_domain: trust_domain.clone(),
            });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Lanyard");
        name.push(DnType::CommonName, format!("Lanyard CA for {trust_domain}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(trust_domain.id_string().try_into()?)];
        let now = SystemTime::now();
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + CA_LIFETIME);
        params.serial_number = Some(random_serial()?.0);
        let cert = params.self_signed(&key)?;
        // Key first: a certificate without its key would be useless on restart.
        fsutil::write_private_file(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, cert.pem()).map_err(|e| invalid(&cert_path, e.to_string()))?;
        tracing::info!(cert = %cert_path.display(), "generated the trust domain's X.509 CA");
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_der: cert.der().clone(),
            trust_domain: trust_domain.clone(),
        })
    }

    /// The CA certificate agents and servers trust.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn certificate_pem(&self) -> String {
        lanyard_proto::pem::encode("CERTIFICATE", &self.cert_der)
    }

    /// An X.509-SVID for `agent_id` over the public key of `csr`. Nothing else
    /// the CSR asks for (names, usages) is honoured.
    pub fn issue_agent_svid(
        &self,
        csr: &[u8],
        agent_id: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        let request =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
                .map_err(CaError::BadCsr)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(agent_id.as_str().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, ttl, |params| {
            CertificateSigningRequestParams {
                params,
                public_key: request.public_key.clone(),
            }
            .signed_by(&self.issuer)
        })
    }

    /// The server's own Node API certificate, for `key`.
    pub fn issue_server_cert(&self, key: &KeyPair, ttl: Duration) -> Result<IssuedCert, CaError> {
        let server_id = self.trust_domain.id_string() + "/lanyard/server";
        let mut params = CertificateParams::new(vec![SERVER_DNS_NAME.to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::URI(server_id.try_into()?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, ttl, |params| params.signed_by(key, &self.issuer))
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        ttl: Duration,
        sign: impl FnOnce(CertificateParams) -> Result<rcgen::Certificate, rcgen::Error>,
    ) -> Result<IssuedCert, CaError> {
        let now = SystemTime::now();
        let expires = now + ttl;
        let (serial_number, serial) = random_serial()?;
        params.serial_number = Some(serial_number);
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(expires);
        params.use_authority_key_identifier_extension = true;
        let cert = sign(params)?;
        Ok(IssuedCert {
            der: cert.der().clone(),
            serial,
            expires_at: crate::authority::unix_seconds(expires),
        })
    }
}

/// The SPIFFE ID (URI SAN) and serial of a peer's leaf certificate.
pub fn peer_identity(cert: &[u8]) -> Option<(SpiffeId, String)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris.next()?;
    if uris.next().is_some() {
        return None; // an X509-SVID has exactly one URI SAN
    }
    let id = SpiffeId::parse(uri).ok()?;
    Some((id, hex(parsed.raw_serial())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_svid_carries_only_what_the_ca_decides() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let td = TrustDomain::new("example.org")?;
        let ca = CertificateAuthority::load_or_generate(dir.path(), &td)?;
        let agent_key = KeyPair::generate()?;
        // The CSR asks for someone else's identity and CA powers: both ignored.
        let mut wanted = CertificateParams::new(vec!["evil.example".to_owned()])?;
        wanted
            .subject_alt_names
            .push(SanType::URI("spiffe://example.org/admin".try_into()?));
        let csr = wanted.serialize_request(&agent_key)?;
        let agent_id = td.id_with_path("/lanyard/agent/join_token/abc")?;
        let issued = ca.issue_agent_svid(csr.der(), &agent_id, Duration::from_secs(3600))?;
        let (id, serial) = peer_identity(&issued.der).ok_or("no identity")?;
        assert_eq!(id, agent_id);
        assert_eq!(serial, issued.serial);
        let (_, parsed) = x509_parser::parse_x509_certificate(&issued.der)?;
        assert!(!parsed.is_ca());
        let reloaded = CertificateAuthority::load_or_generate(dir.path(), &td)?;
        assert_eq!(reloaded.certificate(), ca.certificate(), "the CA persists");
        Ok(())
    }

    #[test]
    fn garbage_csr_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let td = TrustDomain::new("example.org")?;
        let ca = CertificateAuthority::load_or_generate(dir.path(), &td)?;
        let result = ca.issue_agent_svid(
            b"not a csr",
            &td.id_with_path("/a")?,
            Duration::from_secs(60),
        );
        assert!(matches!(result, Err(CaError::BadCsr(_))));
        Ok(())
    }
}
