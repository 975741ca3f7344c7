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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::process::Command;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn ssh_keygen(dir: &Path, args: &[&str]) -> TestResult {
        let out = Command::new("/usr/bin/ssh-keygen")
            .current_dir(dir)
            .args(args)
            .output()?;
        assert!(out.status.success(), "ssh-keygen {args:?}: {out:?}");
        Ok(())
    }

    /// A key `name` of `kind` (`-t`, `-b`) in `dir`, unencrypted.
    pub(in super::super) fn key(dir: &Path, name: &str, kind: &[&str]) -> TestResult {
        let mut args = vec!["-q", "-N", "", "-C", name, "-f", name];
        args.extend_from_slice(kind);
        ssh_keygen(dir, &args)
    }

    /// An Ed25519 CA `ca` and a host key `host` of `kind` with a host
    /// certificate (`host-cert.pub`) signed by it.
    pub(in super::super) fn host_material(
        dir: &Path,
        kind: &[&str],
    ) -> Result<(PathBuf, PathBuf), Box<dyn std::error::Error>> {
        key(dir, "ca", &["-t", "ed25519"])?;
        key(dir, "host", kind)?;
        ssh_keygen(
            dir,
            &[
                "-q",
                "-s",
                "ca",
                "-I",
                "host-1",
                "-h",
                "-n",
                "host.example.org",
                "host.pub",
            ],
        )?;
        Ok((dir.join("host"), dir.join("host-cert.pub")))
    }

    /// Whether `ssh-keygen -Y check-novalidate` accepts `sshsig` (binary)
    /// as a signature over `message` by the key in `public_key`.
    pub(in super::super) fn ssh_keygen_accepts(
        dir: &Path,
        public_key: &Path,
        sshsig: &[u8],
        message: &[u8],
    ) -> Result<bool, Box<dyn std::error::Error>> {
        use ssh_key::encoding::Decode;
        let parsed = SshSig::decode(&mut &sshsig[..])?;
        let sig_path = dir.join("proof.sig");
        std::fs::write(&sig_path, parsed.to_pem(ssh_key::LineEnding::LF)?)?;
        let mut child = Command::new("/usr/bin/ssh-keygen")
            .args(["-Y", "check-novalidate", "-n", SSHSIG_NAMESPACE, "-s"])
            .arg(&sig_path)
            .arg("-f")
            .arg(public_key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, message)?;
        }
        Ok(child.wait()?.success())
    }

    #[test]
    fn every_host_key_type_signs_what_ssh_keygen_verifies() -> TestResult {
        let message = b"lanyard node attestation v1\0sshpop\0example.org\0nonce and key hash";
        for (kind, algorithm) in [
            (&["-t", "ed25519"][..], "ssh-ed25519"),
            (&["-t", "ecdsa", "-b", "256"][..], "ecdsa-sha2-nistp256"),
            (&["-t", "ecdsa", "-b", "384"][..], "ecdsa-sha2-nistp384"),
            (&["-t", "rsa", "-b", "2048"][..], "rsa-sha2-512"),
        ] {
            let dir = tempfile::tempdir()?;
            let (host_key, host_cert) = host_material(dir.path(), kind)?;
            let pop = SshPop::load(&host_key, &host_cert)?;
            let sshsig = pop.prove(message)?;
            use ssh_key::encoding::Decode;
            let parsed = SshSig::decode(&mut sshsig.as_slice())?;
            assert_eq!(parsed.algorithm().as_str(), algorithm);
            assert_eq!(parsed.namespace(), SSHSIG_NAMESPACE);
            assert_eq!(parsed.hash_alg(), HashAlg::Sha512);
            let public = dir.path().join("host.pub");
            assert!(
                ssh_keygen_accepts(dir.path(), &public, &sshsig, message)?,
                "{algorithm}: ssh-keygen refused the signature"
            );
            assert!(
                !ssh_keygen_accepts(dir.path(), &public, &sshsig, b"another message")?,
                "{algorithm}: ssh-keygen took the signature for another message"
            );
            // The evidence is the certificate file's binary form.
            let text = std::fs::read_to_string(&host_cert)?;
            let base64 = text.split_whitespace().nth(1).unwrap_or_default();
            let expected =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, base64)?;
            assert_eq!(pop.evidence().certificate, expected);
        }
        Ok(())
    }

    #[test]
    fn a_user_certificate_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        key(d, "ca", &["-t", "ed25519"])?;
        key(d, "host", &["-t", "ed25519"])?;
        ssh_keygen(
            d,
            &["-q", "-s", "ca", "-I", "user", "-n", "alice", "host.pub"],
        )?;
        let err = SshPop::load(&d.join("host"), &d.join("host-cert.pub"))
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, EvidenceError::NotHostCertificate(_)), "{err}");
        Ok(())
    }

    #[test]
    fn a_certificate_of_another_key_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (_, host_cert) = host_material(dir.path(), &["-t", "ed25519"])?;
        key(dir.path(), "other", &["-t", "ed25519"])?;
        let err = SshPop::load(&dir.path().join("other"), &host_cert)
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, EvidenceError::CertificateNotOfKey { .. }),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn an_encrypted_host_key_is_refused_with_a_clear_error() -> TestResult {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        key(d, "ca", &["-t", "ed25519"])?;
        ssh_keygen(
            d,
            &[
                "-q",
                "-N",
                "secret passphrase",
                "-f",
                "host",
                "-t",
                "ed25519",
            ],
        )?;
        ssh_keygen(d, &["-q", "-s", "ca", "-I", "h", "-h", "host.pub"])?;
        let err = SshPop::load(&d.join("host"), &d.join("host-cert.pub"))
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, EvidenceError::EncryptedKey(_)), "{err}");
        assert!(
            err.to_string().contains("encrypted with a passphrase"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn a_host_key_others_may_read_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (host_key, host_cert) = host_material(dir.path(), &["-t", "ed25519"])?;
        std::fs::set_permissions(
            &host_key,
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )?;
        let err = SshPop::load(&host_key, &host_cert).map(|_| ()).unwrap_err();
        assert!(matches!(err, EvidenceError::File(_)), "{err}");
        Ok(())
    }

    #[test]
    fn a_certificate_the_server_would_refuse_for_its_size_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        key(d, "ca", &["-t", "ed25519"])?;
        key(d, "host", &["-t", "ed25519"])?;
        // ssh-keygen takes at most 256 principals: long ones, then.
        let principals = (0..256)
            .map(|i| format!("host-{i:04}-{}.example.org", "x".repeat(60)))
            .collect::<Vec<_>>()
            .join(",");
        ssh_keygen(
            d,
            &[
                "-q",
                "-s",
                "ca",
                "-I",
                "big",
                "-h",
                "-n",
                &principals,
                "host.pub",
            ],
        )?;
        let err = SshPop::load(&d.join("host"), &d.join("host-cert.pub"))
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, EvidenceError::SshCertificateTooLarge { .. }),
            "{err}"
        );
        Ok(())
    }
}
