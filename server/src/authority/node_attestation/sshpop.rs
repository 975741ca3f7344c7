//! sshpop: a node proves itself with an OpenSSH host certificate signed by a
//! configured CA and an SSHSIG, by the certified host key, over the
//! challenge. ssh-key only parses and encodes; every signature (the CA's over
//! the certificate, the host's over the challenge) is checked with aws-lc-rs.
//! Ed25519, ECDSA P-256/P-384 and RSA with rsa-sha2-256/512 are accepted;
//! `ssh-rsa` (SHA-1) signatures are not.

use aws_lc_rs::signature as sig;
use lanyard_host::encoding::hex;
use lanyard_proto::attestation::{MAX_SSH_CERTIFICATE_BYTES, SSHPOP, SSHSIG_NAMESPACE};
use lanyard_proto::{SpiffeId, TrustDomain};
use ssh_key::encoding::{Decode, Encode};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, Certificate, EcdsaCurve, HashAlg, Mpint, Signature, SshSig};

use super::{AttestError, Candidate};

/// The CAs sshpop trusts, and the keys it refuses whatever signed them.
#[derive(Debug, Clone)]
pub(crate) struct SshPop {
    cert_authorities: Vec<KeyData>,
    revoked: Vec<KeyData>,
}

/// What a verified host certificate says about the node.
#[derive(Debug, Clone)]
pub(crate) struct SshEvidence {
    pub(crate) agent_id: SpiffeId,
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) host_key: KeyData,
    /// The certificate's valid-before, Unix seconds.
    pub(crate) valid_before: u64,
}

/// The hex SHA-256 fingerprint of `key` (of its public key blob).
pub(crate) fn fingerprint_hex(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256)
        .sha256()
        .map(|bytes| hex(&bytes))
        .unwrap_or_default()
}

impl SshPop {
    pub(crate) fn new(cert_authorities: Vec<KeyData>, revoked: Vec<KeyData>) -> Self {
        Self {
            cert_authorities,
            revoked,
        }
    }

    /// Checks the binary host certificate `bytes` at `now` (Unix seconds):
    /// cheap checks first (size, type, validity, options, CA in the set),
    /// then the CA's signature.
    pub(crate) fn verify_evidence(
        &self,
        trust_domain: &TrustDomain,
        bytes: &[u8],
        now: u64,
    ) -> Result<SshEvidence, AttestError> {
        if bytes.len() > MAX_SSH_CERTIFICATE_BYTES {
            return Err(AttestError::Malformed(format!(
                "sshpop: a certificate of {} bytes exceeds {MAX_SSH_CERTIFICATE_BYTES}",
                bytes.len()
            )));
        }
        let cert = Certificate::from_bytes(bytes).map_err(|e| {
            AttestError::Malformed(format!("sshpop: the certificate does not parse: {e}"))
        })?;
        if !cert.cert_type().is_host() {
            return Err(AttestError::Refused(
                "sshpop: not a host certificate".into(),
            ));
        }
        if now < cert.valid_after() {
            return Err(AttestError::Refused(
                "sshpop: the certificate is not valid yet".into(),
            ));
        }
        if now >= cert.valid_before() {
            return Err(AttestError::Refused(
                "sshpop: the certificate has expired".into(),
            ));
        }
        if !cert.critical_options().is_empty() {
            return Err(AttestError::Refused(
                "sshpop: the certificate has critical options, which are not understood here"
                    .into(),
            ));
        }
        let ca = cert.signature_key();
        if self.revoked.contains(ca) || self.revoked.contains(cert.public_key()) {
            return Err(AttestError::Refused(
                "sshpop: the certificate's CA or host key is revoked".into(),
            ));
        }
        if !self.cert_authorities.contains(ca) {
            return Err(AttestError::Refused(
                "sshpop: the certificate is not signed by a trusted CA".into(),
            ));
        }
        // The signed part is everything before the signature field.
        let signature_len = cert
            .signature()
            .encoded_len_prefixed()
            .map_err(|e| AttestError::Malformed(format!("sshpop: {e}")))?;
        let signed = bytes
            .len()
            .checked_sub(signature_len)
            .and_then(|end| bytes.get(..end))
            .ok_or_else(|| AttestError::Malformed("sshpop: truncated certificate".into()))?;
        ssh_verify(ca, cert.signature(), signed).map_err(|reason| {
            AttestError::Refused(format!("sshpop: the CA signature is refused: {reason}"))
        })?;

        let mut candidates: Vec<Candidate> = cert
            .valid_principals()
            .iter()
            .map(|p| Candidate::new(SSHPOP, "principal", p))
            .collect();
        candidates.push(Candidate::new(SSHPOP, "key_id", cert.key_id()));
        candidates.push(Candidate::new(SSHPOP, "ca:sha256", &fingerprint_hex(ca)));
        let agent_id = trust_domain
            .id_with_path(&format!(
                "/lanyard/agent/{SSHPOP}/{}",
                fingerprint_hex(cert.public_key())
            ))
            .map_err(|e| AttestError::Malformed(format!("sshpop: agent ID: {e}")))?;
        Ok(SshEvidence {
            agent_id,
            candidates,
            host_key: cert.public_key().clone(),
            valid_before: cert.valid_before(),
        })
    }
}

/// Checks the proof: an SSHSIG (binary) with our namespace, by `host_key`,
/// over `message`.
pub(crate) fn verify_proof(
    host_key: &KeyData,
    sshsig: &[u8],
    message: &[u8],
) -> Result<(), AttestError> {
    let mut reader = sshsig;
    let signature = SshSig::decode(&mut reader)
        .map_err(|e| AttestError::Malformed(format!("sshpop: the SSHSIG does not parse: {e}")))?;
    if !reader.is_empty() {
        return Err(AttestError::Malformed(
            "sshpop: bytes after the SSHSIG".into(),
        ));
    }
    if signature.namespace() != SSHSIG_NAMESPACE {
        return Err(AttestError::Refused(format!(
            "sshpop: the SSHSIG namespace must be {SSHSIG_NAMESPACE}"
        )));
    }
    if signature.public_key() != host_key {
        return Err(AttestError::Refused(
            "sshpop: the SSHSIG is not by the certified host key".into(),
        ));
    }
    let data = SshSig::signed_data(signature.namespace(), signature.hash_alg(), message)
        .map_err(|e| AttestError::Malformed(format!("sshpop: {e}")))?;
    ssh_verify(host_key, signature.signature(), &data)
        .map_err(|reason| AttestError::Refused(format!("sshpop: the proof is refused: {reason}")))
}

/// Verifies an SSH signature by `key` over `data` with aws-lc-rs.
fn ssh_verify(key: &KeyData, signature: &Signature, data: &[u8]) -> Result<(), &'static str> {
    match (key, signature.algorithm()) {
        (KeyData::Ed25519(public), Algorithm::Ed25519) => {
            sig::UnparsedPublicKey::new(&sig::ED25519, public.0)
                .verify(data, signature.as_bytes())
                .map_err(|_| "bad Ed25519 signature")
        }
        (KeyData::Ecdsa(public), Algorithm::Ecdsa { curve }) if curve == public.curve() => {
            let (algorithm, size): (&sig::EcdsaVerificationAlgorithm, usize) = match curve {
                EcdsaCurve::NistP256 => (&sig::ECDSA_P256_SHA256_FIXED, 32),
                EcdsaCurve::NistP384 => (&sig::ECDSA_P384_SHA384_FIXED, 48),
                _ => return Err("ECDSA curve not accepted (P-256 and P-384 are)"),
            };
            // The SSH form is two mpints (r, s); aws-lc wants r ‖ s, fixed size.
            let mut reader = signature.as_bytes();
            let mut fixed = Vec::with_capacity(2 * size);
            for _ in 0..2 {
                let n = Mpint::decode(&mut reader).map_err(|_| "malformed ECDSA signature")?;
                let bytes = n.as_positive_bytes().ok_or("malformed ECDSA signature")?;
                if bytes.len() > size {
                    return Err("malformed ECDSA signature");
                }
                fixed.extend(std::iter::repeat_n(0, size - bytes.len()));
                fixed.extend_from_slice(bytes);
            }
            if !reader.is_empty() {
                return Err("malformed ECDSA signature");
            }
            sig::UnparsedPublicKey::new(algorithm, public.as_sec1_bytes())
                .verify(data, &fixed)
                .map_err(|_| "bad ECDSA signature")
        }
        (KeyData::Rsa(public), Algorithm::Rsa { hash: Some(hash) }) => {
            let params = match hash {
                HashAlg::Sha256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                HashAlg::Sha512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                _ => return Err("RSA hash not accepted (rsa-sha2-256 and rsa-sha2-512 are)"),
            };
            let components = sig::RsaPublicKeyComponents {
                n: public.n().as_positive_bytes().ok_or("malformed RSA key")?,
                e: public.e().as_positive_bytes().ok_or("malformed RSA key")?,
            };
            components
                .verify(params, data, signature.as_bytes())
                .map_err(|_| "bad RSA signature")
        }
        (_, Algorithm::Rsa { hash: None }) => Err("ssh-rsa (SHA-1) signatures are not accepted"),
        _ => Err("signature algorithm not accepted for this key"),
    }
}
