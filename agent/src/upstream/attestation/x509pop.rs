//! x509pop: the node's X.509 host certificate chain as evidence, and a
//! signature by the leaf's key over the challenge as proof. The key is used
//! through rustls' aws-lc-rs signer, with the TLS signature schemes the
//! server verifies.

use std::path::Path;

use lanyard_proto::attestation::{MAX_X509_CHAIN_BYTES, MAX_X509_CHAIN_LEN};
use lanyard_proto::node::{X509PopEvidence, X509PopProof};
use rustls::SignatureScheme;
use rustls::pki_types::CertificateDer;
use rustls::sign::Signer;

use super::EvidenceError;

/// The schemes offered to the key, in order: it takes the first it can make.
/// An RSA key makes RSA-PSS SHA-256 (PKCS#1 v1.5 only if it cannot).
const SCHEMES: [SignatureScheme; 5] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
];

/// A host certificate chain and the leaf's key, read from disk and checked
/// to belong together.
pub(crate) struct X509Pop {
    chain: Vec<CertificateDer<'static>>,
    /// The leaf key with the scheme it chose.
    signer: Box<dyn Signer>,
}

impl std::fmt::Debug for X509Pop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Pop")
            .field("chain_len", &self.chain.len())
            .field("scheme", &self.signer.scheme())
            .finish_non_exhaustive()
    }
}

impl X509Pop {
    /// Reads the PEM chain at `certificate` (leaf first) and the PEM key at
    /// `private_key` (owner-only), and refuses a key that is not the leaf's,
    /// a chain the server would refuse for its size, and a key type no
    /// offered scheme fits.
    pub(crate) fn load(certificate: &Path, private_key: &Path) -> Result<Self, EvidenceError> {
        let unreadable = |source| EvidenceError::Unreadable {
            path: certificate.to_owned(),
            source,
        };
        let pem = std::fs::read(certificate).map_err(unreadable)?;
        let chain = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(unreadable)?;
        let Some(leaf) = chain.first() else {
            return Err(EvidenceError::NoCertificate(certificate.to_owned()));
        };
        let bytes: usize = chain.iter().map(|c| c.len()).sum();
        if chain.len() > MAX_X509_CHAIN_LEN || bytes > MAX_X509_CHAIN_BYTES {
            return Err(EvidenceError::ChainTooLarge {
                path: certificate.to_owned(),
                certificates: chain.len(),
                bytes,
            });
        }
        let leaf_spki = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| EvidenceError::BadCertificate {
                path: certificate.to_owned(),
                reason: e.to_string(),
            })?
            .1
            .public_key()
            .raw
            .to_vec();

        let key_pem = lanyard_host::private_files::read_private_file(private_key)?
            .ok_or_else(|| EvidenceError::Missing(private_key.to_owned()))?;
        let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|source| EvidenceError::Unreadable {
                path: private_key.to_owned(),
                source,
            })?
            .ok_or_else(|| EvidenceError::NoPrivateKey(private_key.to_owned()))?;
        let key =
            rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der).map_err(|source| {
                EvidenceError::UnsupportedKey {
                    path: private_key.to_owned(),
                    source,
                }
            })?;
        let signer = key
            .choose_scheme(&SCHEMES)
            .ok_or_else(|| EvidenceError::NoScheme(private_key.to_owned()))?;
        // Every aws-lc-rs key says what its public key is; one that does
        // not is left to the server to refuse.
        if let Some(spki) = key.public_key()
            && spki.as_ref() != leaf_spki.as_slice()
        {
            return Err(EvidenceError::KeyNotLeaf {
                key: private_key.to_owned(),
                certificate: certificate.to_owned(),
            });
        }
        Ok(Self { chain, signer })
    }

    pub(crate) fn evidence(&self) -> X509PopEvidence {
        X509PopEvidence {
            chain: self.chain.iter().map(|c| c.to_vec()).collect(),
        }
    }

    /// The leaf key's signature over `message`, with its scheme.
    pub(crate) fn prove(&self, message: &[u8]) -> Result<X509PopProof, EvidenceError> {
        let signature = self.signer.sign(message).map_err(EvidenceError::Sign)?;
        Ok(X509PopProof {
            scheme: u16::from(self.signer.scheme()).into(),
            signature,
        })
    }
}
