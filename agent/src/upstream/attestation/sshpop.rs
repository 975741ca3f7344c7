//! sshpop: the node's OpenSSH host certificate as evidence, and an SSHSIG
//! (OpenSSH PROTOCOL.sshsig, what `ssh-keygen -Y sign` makes) by the host key
//! over the challenge as proof. Ed25519 and ECDSA keys sign with aws-lc-rs;
//! RSA keys with ssh-key's `rsa` feature (rsa-sha2-512).

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature as sig;
use lanyard_proto::attestation::{MAX_SSH_CERTIFICATE_BYTES, SSHSIG_NAMESPACE};
use lanyard_proto::node::SshPopEvidence;
use ssh_key::encoding::Encode;
use ssh_key::{Algorithm, Certificate, EcdsaCurve, HashAlg, Mpint, PrivateKey, Signature, SshSig};

use super::EvidenceError;

/// The hash SSHSIG applies to the message before signing.
const HASH: HashAlg = HashAlg::Sha512;

/// A host key and its host certificate, read from disk and checked to
/// belong together.
pub(crate) struct SshPop {
    key: PrivateKey,
    /// The certificate in its binary form, as sent.
    certificate: Vec<u8>,
    key_path: PathBuf,
}

impl std::fmt::Debug for SshPop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshPop")
            .field("algorithm", &self.key.algorithm().as_str())
            .finish_non_exhaustive()
    }
}

impl SshPop {
    /// Reads the OpenSSH private key at `host_key` (owner-only, not
    /// encrypted) and the certificate at `host_certificate`, and refuses a
    /// user certificate, a certificate of another key, and one the server
    /// would refuse for its size.
    pub(crate) fn load(host_key: &Path, host_certificate: &Path) -> Result<Self, EvidenceError> {
        let ssh = |path: &Path| {
            let path = path.to_owned();
            move |source| EvidenceError::Ssh { path, source }
        };
        let text = std::fs::read_to_string(host_certificate).map_err(|source| {
            EvidenceError::Unreadable {
                path: host_certificate.to_owned(),
                source,
            }
        })?;
        let certificate = Certificate::from_openssh(text.trim()).map_err(ssh(host_certificate))?;
        if !certificate.cert_type().is_host() {
            return Err(EvidenceError::NotHostCertificate(
                host_certificate.to_owned(),
            ));
        }
        let encoded = certificate.to_bytes().map_err(ssh(host_certificate))?;
        if encoded.len() > MAX_SSH_CERTIFICATE_BYTES {
            return Err(EvidenceError::SshCertificateTooLarge {
                path: host_certificate.to_owned(),
                bytes: encoded.len(),
            });
        }

        let pem = lanyard_host::private_files::read_private_file(host_key)?
            .ok_or_else(|| EvidenceError::Missing(host_key.to_owned()))?;
        let key = PrivateKey::from_openssh(&pem).map_err(ssh(host_key))?;
        if key.is_encrypted() {
            return Err(EvidenceError::EncryptedKey(host_key.to_owned()));
        }
        if certificate.public_key() != key.public_key().key_data() {
            return Err(EvidenceError::CertificateNotOfKey {
                key: host_key.to_owned(),
                certificate: host_certificate.to_owned(),
            });
        }
        let usable = matches!(key.algorithm(), Algorithm::Ed25519 | Algorithm::Rsa { .. })
            || matches!(
                key.algorithm(),
                Algorithm::Ecdsa {
                    curve: EcdsaCurve::NistP256 | EcdsaCurve::NistP384
                }
            );
        if !usable {
            return Err(EvidenceError::UnsupportedSshKey {
                path: host_key.to_owned(),
                algorithm: key.algorithm().as_str().to_owned(),
            });
        }
        Ok(Self {
            key,
            certificate: encoded,
            key_path: host_key.to_owned(),
        })
    }

    pub(crate) fn evidence(&self) -> SshPopEvidence {
        SshPopEvidence {
            certificate: self.certificate.clone(),
        }
    }

    /// An SSHSIG over `message` in [`SSHSIG_NAMESPACE`], binary.
    pub(crate) fn prove(&self, message: &[u8]) -> Result<Vec<u8>, EvidenceError> {
        let failed = |reason: String| EvidenceError::SshSign {
            path: self.key_path.clone(),
            reason,
        };
        let sshsig = self.sign(message).map_err(|e| failed(e.to_string()))?;
        sshsig.encode_vec().map_err(|e| failed(e.to_string()))
    }

    fn sign(&self, message: &[u8]) -> Result<SshSig, Box<dyn std::error::Error>> {
        let keypair = self.key.key_data();
        if keypair.rsa().is_some() {
            // rsa-sha2-512 (PKCS#1 v1.5 over SHA-512), as `ssh-keygen -Y sign`.
            return Ok(self.key.sign(SSHSIG_NAMESPACE, HASH, message)?);
        }
        let data = SshSig::signed_data(SSHSIG_NAMESPACE, HASH, message)?;
        let signature = if let Some(ed25519) = keypair.ed25519() {
            let signer = sig::Ed25519KeyPair::from_seed_and_public_key(
                &ed25519.private.to_bytes(),
                &ed25519.public.0,
            )?;
            Signature::new(Algorithm::Ed25519, signer.sign(&data).as_ref().to_vec())?
        } else if let Some(ecdsa) = keypair.ecdsa() {
            let (alg, size) = match ecdsa.curve() {
                EcdsaCurve::NistP256 => (&sig::ECDSA_P256_SHA256_FIXED_SIGNING, 32),
                EcdsaCurve::NistP384 => (&sig::ECDSA_P384_SHA384_FIXED_SIGNING, 48),
                other => return Err(format!("ECDSA curve {other} is not supported").into()),
            };
            let signer = sig::EcdsaKeyPair::from_private_key_and_public_key(
                alg,
                ecdsa.private_key_bytes(),
                ecdsa.public_key_bytes(),
            )?;
            let fixed = signer.sign(&SystemRandom::new(), &data)?;
            // SSH encodes ECDSA as two mpints, r and s.
            let (r, s) = fixed.as_ref().split_at(size);
            let mut blob = Vec::with_capacity(2 * size + 10);
            Mpint::from_positive_bytes(r).encode(&mut blob)?;
            Mpint::from_positive_bytes(s).encode(&mut blob)?;
            Signature::new(
                Algorithm::Ecdsa {
                    curve: ecdsa.curve(),
                },
                blob,
            )?
        } else {
            return Err(format!("{} keys are not supported", self.key.algorithm().as_str()).into());
        };
        Ok(SshSig::new(
            self.key.public_key().key_data().clone(),
            SSHSIG_NAMESPACE,
            HASH,
            signature,
        )?)
    }
}
