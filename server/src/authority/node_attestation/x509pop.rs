//! x509pop: a node proves itself with an X.509 certificate chain to a
//! configured CA bundle and a signature, by the leaf's key, over the
//! challenge. rustls-webpki checks the chain (signatures, validity, path
//! length, CA:FALSE on the leaf, name constraints, the clientAuth EKU when the
//! leaf names any EKU, and the configured CRLs); x509-parser reads the
//! selectors. Nothing is fetched: no AIA, no OCSP, no CRL distribution point.

use aws_lc_rs::digest;
use lanyard_host::encoding::hex;
use lanyard_proto::attestation::{MAX_X509_CHAIN_BYTES, MAX_X509_CHAIN_LEN, X509POP};
use lanyard_proto::{SpiffeId, TrustDomain};
use rustls::SignatureScheme;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, SignatureVerificationAlgorithm, TrustAnchor,
    UnixTime,
};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::extensions::GeneralName;

use super::{AttestError, Candidate};

/// Why the configured x509pop material is unusable (named by the config key).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum X509PopConfigError {
    #[error("certificate {index} is not a usable trust anchor: {source}")]
    Anchor {
        index: usize,
        #[source]
        source: webpki::Error,
    },
    #[error("CRL {index} does not parse: {source}")]
    Crl {
        index: usize,
        #[source]
        source: webpki::Error,
    },
    #[error("holds no certificate")]
    Empty,
}

/// The trust x509pop evidence is checked against.
#[derive(Debug)]
pub(crate) struct X509Pop {
    /// Each bundle certificate and the anchor made of it.
    anchors: Vec<(CertificateDer<'static>, TrustAnchor<'static>)>,
    intermediates: Vec<CertificateDer<'static>>,
    crls: Vec<CertRevocationList<'static>>,
}

/// What a verified chain says about the node.
#[derive(Debug, Clone)]
pub(crate) struct X509Evidence {
    pub(crate) agent_id: SpiffeId,
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) leaf: CertificateDer<'static>,
    /// The earliest notAfter along the verified path (the leaf and the
    /// intermediates it went through; not the trust anchor, whose validity
    /// webpki does not check), Unix seconds.
    pub(crate) not_after: i64,
}

/// The trust anchors in `bundle`, checked as a config load does.
pub fn check_anchors(bundle: &[CertificateDer<'_>]) -> Result<(), X509PopConfigError> {
    if bundle.is_empty() {
        return Err(X509PopConfigError::Empty);
    }
    for (index, cert) in bundle.iter().enumerate() {
        webpki::anchor_from_trusted_cert(cert)
            .map_err(|source| X509PopConfigError::Anchor { index, source })?;
    }
    Ok(())
}

/// The CRLs in `crls`, checked as a config load does.
pub fn check_crls(crls: &[CertificateRevocationListDer<'_>]) -> Result<(), X509PopConfigError> {
    for (index, crl) in crls.iter().enumerate() {
        OwnedCertRevocationList::from_der(crl)
            .map_err(|source| X509PopConfigError::Crl { index, source })?;
    }
    Ok(())
}

/// The webpki verifier of a TLS signature scheme (IANA code), as the proof
/// names it; None for any other scheme (SHA-1, RSA below 2048 bits are
/// refused by these verifiers themselves).
fn proof_algorithm(scheme: u32) -> Option<&'static dyn SignatureVerificationAlgorithm> {
    use webpki::aws_lc_rs as alg;
    let scheme = SignatureScheme::from(u16::try_from(scheme).ok()?);
    Some(match scheme {
        SignatureScheme::ECDSA_NISTP256_SHA256 => alg::ECDSA_P256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384 => alg::ECDSA_P384_SHA384,
        SignatureScheme::ED25519 => alg::ED25519,
        SignatureScheme::RSA_PSS_SHA256 => alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        SignatureScheme::RSA_PKCS1_SHA256 => alg::RSA_PKCS1_2048_8192_SHA256,
        _ => return None,
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

impl X509Pop {
    pub(crate) fn new(
        ca_bundle: &[CertificateDer<'static>],
        intermediates: &[CertificateDer<'static>],
        crls: &[CertificateRevocationListDer<'static>],
    ) -> Result<Self, X509PopConfigError> {
        check_anchors(ca_bundle)?;
        let anchors = ca_bundle
            .iter()
            .enumerate()
            .map(|(index, cert)| {
                webpki::anchor_from_trusted_cert(cert)
                    .map(|anchor| (cert.clone(), anchor.to_owned()))
                    .map_err(|source| X509PopConfigError::Anchor { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let crls = crls
            .iter()
            .enumerate()
            .map(|(index, crl)| {
                OwnedCertRevocationList::from_der(crl)
                    .map(CertRevocationList::from)
                    .map_err(|source| X509PopConfigError::Crl { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            anchors,
            intermediates: intermediates.to_vec(),
            crls,
        })
    }

    /// Checks `chain` (DER, leaf first) at `now`: the limits first, then the
    /// path to a configured anchor. Nothing here proves the node holds the
    /// leaf's key: that is the proof's job.
    pub(crate) fn verify_evidence(
        &self,
        trust_domain: &TrustDomain,
        chain: &[Vec<u8>],
        now: UnixTime,
    ) -> Result<X509Evidence, AttestError> {
        if chain.is_empty() {
            return Err(AttestError::Malformed("x509pop: the chain is empty".into()));
        }
        if chain.len() > MAX_X509_CHAIN_LEN {
            return Err(AttestError::Malformed(format!(
                "x509pop: a chain of {} certificates exceeds {MAX_X509_CHAIN_LEN}",
                chain.len()
            )));
        }
        let bytes: usize = chain.iter().map(Vec::len).sum();
        if bytes > MAX_X509_CHAIN_BYTES {
            return Err(AttestError::Malformed(format!(
                "x509pop: a chain of {bytes} bytes exceeds {MAX_X509_CHAIN_BYTES}"
            )));
        }
        let leaf = CertificateDer::from(chain[0].clone());
        let end_entity = EndEntityCert::try_from(&leaf).map_err(|e| {
            AttestError::Malformed(format!("x509pop: the leaf does not parse: {e}"))
        })?;
        let mut intermediates: Vec<CertificateDer<'_>> = chain[1..]
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        intermediates.extend(self.intermediates.iter().cloned());
        let anchors: Vec<TrustAnchor<'_>> = self.anchors.iter().map(|(_, a)| a.clone()).collect();
        let crl_refs: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = if crl_refs.is_empty() {
            None
        } else {
            Some(
                RevocationOptionsBuilder::new(&crl_refs)
                    .map_err(|_| AttestError::Refused("x509pop: no usable CRL".into()))?
                    .with_depth(RevocationCheckDepth::Chain)
                    .with_status_policy(UnknownStatusPolicy::Allow)
                    .with_expiration_policy(ExpirationPolicy::Ignore)
                    .build(),
            )
        };
        let algorithms = rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all;
        let path = end_entity
            .verify_for_usage(
                algorithms,
                &anchors,
                &intermediates,
                now,
                KeyUsage::client_auth(),
                revocation,
                None,
            )
            .map_err(|e| AttestError::Refused(format!("x509pop: the chain is refused: {e}")))?;
        let mut path_not_after = i64::MAX;
        for intermediate in path.intermediate_certificates() {
            let der = intermediate.der();
            let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
                AttestError::Malformed(format!("x509pop: an intermediate does not parse: {e}"))
            })?;
            path_not_after = path_not_after.min(parsed.validity().not_after.timestamp());
        }
        let issuer_der: Vec<u8> = match path.intermediate_certificates().next() {
            Some(cert) => cert.der().to_vec(),
            None => {
                let anchor = path.anchor();
                self.anchors
                    .iter()
                    .find(|(_, a)| {
                        a.subject == anchor.subject
                            && a.subject_public_key_info == anchor.subject_public_key_info
                    })
                    .map(|(der, _)| der.to_vec())
                    .ok_or_else(|| {
                        AttestError::Refused("x509pop: the issuing CA is not in the bundle".into())
                    })?
            }
        };

        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| {
            AttestError::Malformed(format!("x509pop: the leaf does not parse: {e}"))
        })?;
        // webpki ignores KeyUsage; a leaf that names one must allow signing,
        // and one that cannot be read (malformed, or twice) allows nothing.
        match parsed.key_usage() {
            Ok(Some(usage)) if !usage.value.digital_signature() => {
                return Err(AttestError::Refused(
                    "x509pop: the leaf's key usage does not allow digitalSignature".into(),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(AttestError::Refused(format!(
                    "x509pop: the leaf's key usage does not parse: {e}"
                )));
            }
        }
        let mut candidates = Vec::new();
        for cn in parsed.subject().iter_common_name() {
            if let Ok(value) = cn.as_str() {
                candidates.push(Candidate::new(X509POP, "subject:cn", value));
            }
        }
        for ou in parsed.subject().iter_organizational_unit() {
            if let Ok(value) = ou.as_str() {
                candidates.push(Candidate::new(X509POP, "subject:ou", value));
            }
        }
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    candidates.push(Candidate::new(
                        X509POP,
                        "san:dns",
                        &dns.to_ascii_lowercase(),
                    ));
                }
            }
        }
        candidates.push(Candidate::new(
            X509POP,
            "ca:sha256",
            &sha256_hex(&issuer_der),
        ));
        candidates.push(Candidate::new(
            X509POP,
            "serial",
            &format!("{:x}", parsed.serial),
        ));
        let agent_id = trust_domain
            .id_with_path(&format!("/lanyard/agent/{X509POP}/{}", sha256_hex(&leaf)))
            .map_err(|e| AttestError::Malformed(format!("x509pop: agent ID: {e}")))?;
        let not_after = parsed.validity().not_after.timestamp().min(path_not_after);
        Ok(X509Evidence {
            agent_id,
            candidates,
            leaf: leaf.into_owned(),
            not_after,
        })
    }
}

/// Checks the proof: `signature` by the leaf's key over `message`, with the
/// TLS signature scheme `scheme`.
pub(crate) fn verify_proof(
    leaf: &CertificateDer<'_>,
    scheme: u32,
    signature: &[u8],
    message: &[u8],
) -> Result<(), AttestError> {
    let algorithm = proof_algorithm(scheme).ok_or_else(|| {
        AttestError::Malformed(format!(
            "x509pop: signature scheme 0x{scheme:04x} is not accepted (0x0403, 0x0503, 0x0804, 0x0401, 0x0807 are)"
        ))
    })?;
    let end_entity = EndEntityCert::try_from(leaf)
        .map_err(|e| AttestError::Malformed(format!("x509pop: the leaf does not parse: {e}")))?;
    end_entity
        .verify_signature(algorithm, message, signature)
        .map_err(|_| {
            AttestError::Refused(
                "x509pop: the proof is not a signature by the certificate's key over this challenge"
                    .into(),
            )
        })
}
