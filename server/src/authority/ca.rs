//! The trust domain's X.509 certificate authority: it issues agents their
//! SVIDs (from a CSR, so an agent's key never leaves its node) and the server
//! its Node API certificate.
//!
//! CAs rotate like the JWT keys: each lives a year; two months before the
//! signing CA expires a successor is generated and published in the trust
//! bundle, and it starts signing one month later, so every agent (whose SVID
//! lives at most 30 days and is renewed at half-life) holds the new CA before
//! it is needed. A CA stays in the bundle until it expires. Each generation is
//! a key (0600) and a certificate in `<data_dir>/ca/`; `bundle.pem` holds
//! every published CA certificate for operators to hand to agents.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use lanyard_host::private_files::{self, FsError};
use lanyard_host::random;
use lanyard_proto::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;

use lanyard_host::clock::unix_seconds;
use lanyard_host::encoding::hex;

pub const BUNDLE_FILE: &str = "bundle.pem";
const CA_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// A successor is generated when the signing CA has this little life left…
const ROTATE_BEFORE_EXPIRY: Duration = Duration::from_secs(60 * 24 * 3600);
/// …and signs once the old one has this little left.
const SWITCH_BEFORE_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clocks drift: certificates start a little in the past.
const BACKDATE: Duration = Duration::from_secs(60);
/// The DNS name in the server's Node API certificate, which agents verify.
pub const SERVER_DNS_NAME: &str = "lanyard-server";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    #[error("no CA is valid now; check the server clock")]
    NoSigningCa,
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub der: CertificateDer<'static>,
    /// Lowercase hex, as recorded for agents.
    pub serial: String,
    pub expires_at: i64,
}

/// A CA certificate a server holds, with its validity in Unix seconds.
#[derive(Debug, Clone)]
pub(crate) struct HeldCa {
    pub(crate) serial: String,
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

/// The validity (notBefore, notAfter in Unix seconds) of `cert` when it is a
/// CA certificate of `trust_domain` as every Lanyard server makes them (a CA
/// whose only URI SAN is the trust domain's ID); None for anything else.
pub(crate) fn trust_domain_ca_validity(
    cert: &[u8],
    trust_domain: &TrustDomain,
) -> Option<(i64, i64)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    if !parsed.is_ca() {
        return None;
    }
    let san = parsed.subject_alternative_name().ok()??;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    if uris != [trust_domain.id_string().as_str()] {
        return None;
    }
    let validity = parsed.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// One CA key and certificate.
struct Generation {
    /// Names its files: `ca-<serial>-key.pem`, `ca-<serial>-cert.pem`.
    serial: String,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    not_before: i64,
    not_after: i64,
}

pub struct CertificateAuthority {
    dir: PathBuf,
    trust_domain: TrustDomain,
    /// Oldest first.
    generations: ArcSwap<Vec<Arc<Generation>>>,
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
    let mut bytes = random::bytes::<16>().map_err(|_| CaError::Random)?;
    // A positive INTEGER whose DER form is exactly these 16 bytes: with a
    // leading 0x00 the encoding would drop it and the serial read back from
    // the certificate would no longer match the one recorded for the agent.
    bytes[0] = bytes[0] % 0x7f + 1;
    Ok((SerialNumber::from_slice(&bytes), hex(&bytes)))
}

fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let validity = parsed.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

impl CertificateAuthority {
    /// Loads every CA generation in `dir` and rotates at `now` (creating the
    /// first CA on first start).
    pub fn load_or_generate(
        dir: &Path,
        trust_domain: &TrustDomain,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        private_files::ensure_private_dir(dir)?;
        let mut generations = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| CaError::Invalid {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(serial) = name
                .strip_prefix("ca-")
                .and_then(|n| n.strip_suffix("-key.pem"))
            {
                if !dir.join(format!("ca-{serial}-cert.pem")).exists() {
                    // Left by a crash inside `generate` in an earlier version
                    // (it wrote the key first): never published, never signed.
                    tracing::warn!(serial, "ignoring a CA key without its certificate");
                    continue;
                }
                generations.push(Arc::new(Self::load_generation(dir, serial)?));
            }
        }
        generations.sort_by_key(|g| g.not_before);
        let ca = Self {
            dir: dir.to_owned(),
            trust_domain: trust_domain.clone(),
            generations: ArcSwap::from_pointee(generations),
        };
        ca.rotate(now)?;
        Ok(ca)
    }

    fn load_generation(dir: &Path, serial: &str) -> Result<Generation, CaError> {
        let key_path = dir.join(format!("ca-{serial}-key.pem"));
        let cert_path = dir.join(format!("ca-{serial}-cert.pem"));
        let invalid = |path: &Path, message: String| CaError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let key_pem = private_files::read_private_file(&key_path)?
            .ok_or_else(|| invalid(&key_path, "missing".into()))?;
        let key_pem = String::from_utf8(key_pem).map_err(|e| invalid(&key_path, e.to_string()))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, e.to_string()))?;
        let cert_pem = std::fs::read(&cert_path).map_err(|e| invalid(&cert_path, e.to_string()))?;
        let cert = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| invalid(&cert_path, "no CERTIFICATE block".into()))?;
        let (not_before, not_after) =
            validity(&cert).ok_or_else(|| invalid(&cert_path, "unparsable certificate".into()))?;
        let issuer =
            Issuer::from_ca_cert_der(&cert, key).map_err(|e| invalid(&cert_path, e.to_string()))?;
        Ok(Generation {
            serial: serial.to_owned(),
            issuer,
            cert,
            not_before,
            not_after,
        })
    }

    fn generate(&self, now: SystemTime) -> Result<Generation, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Lanyard");
        name.push(
            DnType::CommonName,
            format!("Lanyard CA for {}", self.trust_domain),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(self.trust_domain.id_string().try_into()?)];
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + CA_LIFETIME);
        let (serial_number, serial) = random_serial()?;
        params.serial_number = Some(serial_number);
        let cert = params.self_signed(&key)?;
        // Certificate first: a generation exists once its key file does, so a
        // failure between the two writes leaves only an unused certificate.
        private_files::write_private_file(
            &self.dir.join(format!("ca-{serial}-cert.pem")),
            cert.pem().as_bytes(),
        )?;
        private_files::write_private_file(
            &self.dir.join(format!("ca-{serial}-key.pem")),
            key.serialize_pem().as_bytes(),
        )?;
        tracing::info!(serial, "generated an X.509 CA for the trust domain");
        Ok(Generation {
            serial,
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
            not_before: unix_seconds(now - BACKDATE),
            not_after: unix_seconds(now + CA_LIFETIME),
        })
    }

    fn snapshot(&self) -> Vec<Arc<Generation>> {
        Vec::clone(&self.generations.load())
    }

    /// Generates a successor when due and drops expired CAs. Returns true when
    /// the set of published CAs changed (listeners must then trust the new set).
    pub fn rotate(&self, now: SystemTime) -> Result<bool, CaError> {
        let at = unix_seconds(now);
        let mut generations = self.snapshot();
        let before = generations.len();
        let expired: Vec<Arc<Generation>> = generations
            .iter()
            .filter(|g| g.not_after <= at)
            .cloned()
            .collect();
        generations.retain(|g| g.not_after > at);
        let newest_expiry = generations.iter().map(|g| g.not_after).max();
        let due = newest_expiry.is_none_or(|end| end - at <= secs(ROTATE_BEFORE_EXPIRY));
        let mut changed = !expired.is_empty();
        if due {
            generations.push(Arc::new(self.generate(now)?));
            changed = true;
        }
        if changed || before == 0 {
            let bundle: String = generations
                .iter()
                .map(|g| lanyard_host::pem::encode("CERTIFICATE", &g.cert))
                .collect();
            private_files::write_private_file(&self.dir.join(BUNDLE_FILE), bundle.as_bytes())?;
            self.generations.store(Arc::new(generations));
            for old in expired {
                // Best effort: a leftover expired CA file is never loaded as a signer.
                let _ = std::fs::remove_file(self.dir.join(format!("ca-{}-key.pem", old.serial)));
                let _ = std::fs::remove_file(self.dir.join(format!("ca-{}-cert.pem", old.serial)));
                tracing::info!(serial = old.serial, "expired X.509 CA removed");
            }
        }
        Ok(changed)
    }

    /// When the CA that signs at `now` expires (Unix seconds), if one does.
    pub fn signing_not_after(&self, now: SystemTime) -> Option<i64> {
        self.signer(now).ok().map(|g| g.not_after)
    }

    /// The CA that signs at `now`: the newest valid one, unless it is too
    /// fresh and an older one still has more than a month to live.
    fn signer(&self, now: SystemTime) -> Result<Arc<Generation>, CaError> {
        let at = unix_seconds(now);
        let valid: Vec<Arc<Generation>> = self
            .snapshot()
            .into_iter()
            .filter(|g| g.not_before <= at && at < g.not_after)
            .collect();
        let established = valid
            .iter()
            .find(|g| g.not_after - at > secs(SWITCH_BEFORE_EXPIRY));
        established
            .or_else(|| valid.last())
            .cloned()
            .ok_or(CaError::NoSigningCa)
    }

    /// Every CA certificate this server holds (current, next and previous
    /// generations), oldest first, as it publishes them in the datastore.
    pub(crate) fn held(&self) -> Vec<HeldCa> {
        self.snapshot()
            .iter()
            .map(|g| HeldCa {
                serial: g.serial.clone(),
                cert: g.cert.clone(),
                not_before: g.not_before,
                not_after: g.not_after,
            })
            .collect()
    }

    pub(crate) fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// `<data_dir>/ca/bundle.pem`, which operators hand to agents.
    pub(crate) fn bundle_file(&self) -> PathBuf {
        self.dir.join(BUNDLE_FILE)
    }

    /// Every published CA certificate: the trust bundle.
    pub fn bundle(&self) -> Vec<CertificateDer<'static>> {
        self.snapshot().iter().map(|g| g.cert.clone()).collect()
    }

    /// An X.509-SVID for `agent_id` over the public key of `csr`. Nothing else
    /// the CSR asks for (names, usages) is honoured.
    pub fn issue_agent_svid(
        &self,
        csr: &[u8],
        agent_id: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, CaError> {
        let request = parse_csr(csr)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(agent_id.as_str().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign_request(request, params, ttl, now)
    }

    /// Signs `params` over the public key of `request`, and nothing else of it.
    fn sign_request(
        &self,
        request: CertificateSigningRequestParams,
        params: CertificateParams,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, CaError> {
        let signer = self.signer(now)?;
        Self::sign(&signer, params, ttl, now, |params| {
            CertificateSigningRequestParams {
                params,
                public_key: request.public_key,
            }
            .signed_by(&signer.issuer)
        })
    }

    /// A workload's X509-SVID for `spiffe_id` over the public key of `csr`,
    /// as the X509-SVID standard has it: exactly one URI SAN, not a CA,
    /// digitalSignature (and keyEncipherment for RSA keys), serverAuth and
    /// clientAuth, a random serial. Nothing else the CSR asks for is honoured.
    pub fn issue_workload_svid(
        &self,
        csr: &[u8],
        spiffe_id: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, CaError> {
        let request = parse_csr(csr)?;
        let mut params = CertificateParams::default();
        // A subject besides the SAN: some TLS stacks refuse an empty one
        // unless the SAN extension is critical.
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Lanyard");
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::URI(spiffe_id.as_str().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let rsa = [
            &rcgen::PKCS_RSA_SHA256,
            &rcgen::PKCS_RSA_SHA384,
            &rcgen::PKCS_RSA_SHA512,
        ];
        if rsa.contains(&request.public_key.algorithm()) {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign_request(request, params, ttl, now)
    }

    /// The server's own Node API certificate for `key`, with the chain to present.
    pub fn issue_server_cert(
        &self,
        key: &KeyPair,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(IssuedCert, CertificateDer<'static>), CaError> {
        let server_id = self.trust_domain.id_string() + "/lanyard/server";
        let mut params = CertificateParams::new(vec![SERVER_DNS_NAME.to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::URI(server_id.try_into()?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let signer = self.signer(now)?;
        let issued = Self::sign(&signer, params, ttl, now, |params| {
            params.signed_by(key, &signer.issuer)
        })?;
        Ok((issued, signer.cert.clone()))
    }

    fn sign(
        signer: &Generation,
        mut params: CertificateParams,
        ttl: Duration,
        now: SystemTime,
        sign: impl FnOnce(CertificateParams) -> Result<rcgen::Certificate, rcgen::Error>,
    ) -> Result<IssuedCert, CaError> {
        // Nothing outlives the CA that signed it.
        let expires_at = unix_seconds(now + ttl).min(signer.not_after);
        let expires =
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(expires_at).unwrap_or(0));
        let (serial_number, serial) = random_serial()?;
        params.serial_number = Some(serial_number);
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(expires);
        params.use_authority_key_identifier_extension = true;
        let cert = sign(params)?;
        Ok(IssuedCert {
            der: cert.der().clone(),
            serial,
            expires_at,
        })
    }
}

/// Whether `csr` would be accepted for signing, without signing anything:
/// lets a caller refuse a bad request before it spends something single-use.
pub fn check_csr(csr: &[u8]) -> Result<(), CaError> {
    parse_csr(csr).map(|_| ())
}

fn parse_csr(csr: &[u8]) -> Result<CertificateSigningRequestParams, CaError> {
    CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
        .map_err(CaError::BadCsr)
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
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

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn csr() -> Result<Vec<u8>, rcgen::Error> {
        let agent_key = KeyPair::generate()?;
        // The CSR asks for someone else's identity: ignored.
        let mut wanted = CertificateParams::new(vec!["evil.example".to_owned()])?;
        wanted
            .subject_alt_names
            .push(SanType::URI("spiffe://example.org/admin".try_into()?));
        Ok(wanted.serialize_request(&agent_key)?.der().to_vec())
    }

    #[test]
    fn serials_survive_der_encoding() -> Result<(), Box<dyn std::error::Error>> {
        for _ in 0..2000 {
            let (number, text) = random_serial()?;
            assert_eq!(text.len(), 32);
            assert!((1..=0x7f).contains(&number.as_ref()[0]), "{text}");
        }
        Ok(())
    }

    #[test]
    fn agent_svid_carries_only_what_the_ca_decides() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let td = TrustDomain::new("example.org")?;
        let now = SystemTime::now();
        let ca = CertificateAuthority::load_or_generate(dir.path(), &td, now)?;
        let agent_id = td.id_with_path("/lanyard/agent/join_token/abc")?;
        let issued = ca.issue_agent_svid(&csr()?, &agent_id, Duration::from_secs(3600), now)?;
        let (id, serial) = peer_identity(&issued.der).ok_or("no identity")?;
        assert_eq!(id, agent_id);
        assert_eq!(serial, issued.serial);
        let (_, parsed) = x509_parser::parse_x509_certificate(&issued.der)?;
        assert!(!parsed.is_ca());
        let reloaded = CertificateAuthority::load_or_generate(dir.path(), &td, now)?;
        assert_eq!(
            reloaded.bundle(),
            ca.bundle(),
            "the CA persists; a restart adds none"
        );
        Ok(())
    }

    #[test]
    fn ca_rotates_publishing_its_successor_a_month_before_it_signs()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let td = TrustDomain::new("example.org")?;
        let t0 = SystemTime::now();
        let agent = td.id_with_path("/a")?;
        let ca = CertificateAuthority::load_or_generate(dir.path(), &td, t0)?;
        let first = ca.bundle();
        assert_eq!(first.len(), 1);
        assert!(!ca.rotate(t0 + 200 * DAY)?, "nothing due mid-life");

        // Two months before expiry: a successor is published, the old CA still signs.
        assert!(ca.rotate(t0 + 306 * DAY)?);
        let bundle = ca.bundle();
        assert_eq!(bundle.len(), 2);
        let issuer_of = |issued: &IssuedCert| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
            let (_, parsed) = x509_parser::parse_x509_certificate(&issued.der)?;
            Ok(parsed.issuer().as_raw().to_vec())
        };
        let subject_of =
            |cert: &CertificateDer<'_>| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
                let (_, parsed) = x509_parser::parse_x509_certificate(cert)?;
                Ok(parsed.subject().as_raw().to_vec())
            };
        let early = ca.issue_agent_svid(&csr()?, &agent, DAY, t0 + 306 * DAY)?;
        assert_eq!(
            issuer_of(&early)?,
            subject_of(&first[0])?,
            "the old CA signs for another month"
        );
        assert!(
            early.expires_at <= unix_seconds(t0 + CA_LIFETIME),
            "nothing outlives its CA"
        );

        // A month before expiry the successor signs; both stay trusted.
        let late = ca.issue_agent_svid(&csr()?, &agent, DAY, t0 + 340 * DAY)?;
        assert_eq!(issuer_of(&late)?, subject_of(&bundle[1])?);
        assert!(!ca.rotate(t0 + 340 * DAY)?);

        // Expired CAs leave the bundle and the disk.
        assert!(ca.rotate(t0 + 366 * DAY)?);
        assert_eq!(ca.bundle(), vec![bundle[1].clone()]);
        let files = std::fs::read_dir(dir.path())?.count();
        assert_eq!(files, 3, "one key, one certificate, the bundle");
        Ok(())
    }

    #[test]
    fn a_half_written_generation_does_not_stop_the_ca() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let td = TrustDomain::new("example.org")?;
        let now = SystemTime::now();
        let bundle = CertificateAuthority::load_or_generate(dir.path(), &td, now)?.bundle();
        // A key whose certificate was never written, as a crash mid-generation leaves it.
        let orphan = KeyPair::generate()?;
        private_files::write_private_file(
            &dir.path().join("ca-7f00-key.pem"),
            orphan.serialize_pem().as_bytes(),
        )?;
        let reloaded = CertificateAuthority::load_or_generate(dir.path(), &td, now)?;
        assert_eq!(reloaded.bundle(), bundle, "the orphan is not published");
        Ok(())
    }

    /// The X509-SVID standard's leaf: one URI SAN, not a CA, the usages it
    /// names, and a lifetime bounded by the request.
    #[test]
    fn workload_svid_follows_the_x509_svid_profile() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let td = TrustDomain::new("example.org")?;
        let now = SystemTime::now();
        let ca = CertificateAuthority::load_or_generate(dir.path(), &td, now)?;
        let id = td.id_with_path("/web")?;
        let issued = ca.issue_workload_svid(&csr()?, &id, Duration::from_secs(600), now)?;
        let (parsed_id, serial) = peer_identity(&issued.der).ok_or("no identity")?;
        assert_eq!((parsed_id, serial), (id, issued.serial.clone()));
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.der)?;
        let constraints = cert.basic_constraints()?.ok_or("no basicConstraints")?;
        assert!(!constraints.value.ca);
        let usage = cert.key_usage()?.ok_or("no keyUsage")?.value;
        assert!(usage.digital_signature() && !usage.key_cert_sign() && !usage.key_encipherment());
        let eku = cert.extended_key_usage()?.ok_or("no EKU")?.value;
        assert!(eku.server_auth && eku.client_auth);
        let san = cert.subject_alternative_name()?.ok_or("no SAN")?.value;
        assert_eq!(san.general_names.len(), 1, "only the SPIFFE ID: {san:?}");
        assert_eq!(
            issued.expires_at,
            unix_seconds(now + Duration::from_secs(600))
        );
        assert!(
            cert.validity().not_before.timestamp() < unix_seconds(now),
            "backdated for skew"
        );
        Ok(())
    }

    #[test]
    fn garbage_csr_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let td = TrustDomain::new("example.org")?;
        let now = SystemTime::now();
        let ca = CertificateAuthority::load_or_generate(dir.path(), &td, now)?;
        let result = ca.issue_agent_svid(
            b"not a csr",
            &td.id_with_path("/a")?,
            Duration::from_secs(60),
            now,
        );
        assert!(matches!(result, Err(CaError::BadCsr(_))));
        Ok(())
    }
}
