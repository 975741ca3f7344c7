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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SignatureAlgorithm};
    use rustls::pki_types::SignatureVerificationAlgorithm;
    use std::path::PathBuf;
    use std::process::Command;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The verifier the server uses for `scheme` (the wire code).
    fn verifier(scheme: u32) -> &'static dyn SignatureVerificationAlgorithm {
        use webpki::aws_lc_rs as alg;
        match u16::try_from(scheme).map(SignatureScheme::from) {
            Ok(SignatureScheme::ECDSA_NISTP256_SHA256) => alg::ECDSA_P256_SHA256,
            Ok(SignatureScheme::ECDSA_NISTP384_SHA384) => alg::ECDSA_P384_SHA384,
            Ok(SignatureScheme::ED25519) => alg::ED25519,
            Ok(SignatureScheme::RSA_PSS_SHA256) => alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            Ok(SignatureScheme::RSA_PKCS1_SHA256) => alg::RSA_PKCS1_2048_8192_SHA256,
            other => panic!("unexpected scheme {other:?}"),
        }
    }

    /// Checks `proof` over `message` against the leaf, as the server does.
    pub(in super::super) fn verify(
        leaf: &[u8],
        message: &[u8],
        proof: &X509PopProof,
    ) -> Result<(), webpki::Error> {
        let leaf = CertificateDer::from(leaf.to_vec());
        webpki::EndEntityCert::try_from(&leaf)?.verify_signature(
            verifier(proof.scheme),
            message,
            &proof.signature,
        )
    }

    pub(in super::super) fn write_private(path: &Path, text: &str) -> TestResult {
        lanyard_host::private_files::write_private_file(path, text.as_bytes())?;
        Ok(())
    }

    /// A CA and a leaf over a new key of `alg`, written to `dir` as
    /// `chain.pem` (leaf, CA) and `leaf.key` (PKCS#8, 0600).
    pub(in super::super) fn rcgen_material(
        dir: &Path,
        alg: &'static SignatureAlgorithm,
    ) -> Result<(PathBuf, PathBuf), Box<dyn std::error::Error>> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate_for(alg)?;
        let leaf = CertificateParams::new(vec!["host.example.org".to_owned()])?
            .signed_by(&leaf_key, &issuer)?;
        let (chain, key) = (dir.join("chain.pem"), dir.join("leaf.key"));
        std::fs::write(&chain, format!("{}{}", leaf.pem(), ca.pem()))?;
        write_private(&key, &leaf_key.serialize_pem())?;
        Ok((chain, key))
    }

    fn openssl(dir: &Path, args: &[&str]) -> TestResult {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()?;
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        Ok(())
    }

    /// Signs with `chain`/`key` and checks the proof as the server would.
    fn signs_and_verifies(
        chain: &Path,
        key: &Path,
        expected_scheme: SignatureScheme,
    ) -> TestResult {
        let pop = X509Pop::load(chain, key)?;
        let message = b"lanyard node attestation v1\0x509pop\0example.org\0...";
        let proof = pop.prove(message)?;
        assert_eq!(proof.scheme, u32::from(u16::from(expected_scheme)));
        let evidence = pop.evidence();
        assert_eq!(evidence.chain.len(), 2);
        verify(&evidence.chain[0], message, &proof)?;
        let mut tampered = message.to_vec();
        tampered[0] ^= 1;
        assert!(verify(&evidence.chain[0], &tampered, &proof).is_err());
        Ok(())
    }

    #[test]
    fn rcgen_keys_sign_proofs_the_server_verifies() -> TestResult {
        for (alg, scheme) in [
            (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                SignatureScheme::ECDSA_NISTP256_SHA256,
            ),
            (
                &rcgen::PKCS_ECDSA_P384_SHA384,
                SignatureScheme::ECDSA_NISTP384_SHA384,
            ),
            (&rcgen::PKCS_ED25519, SignatureScheme::ED25519),
        ] {
            let dir = tempfile::tempdir()?;
            let (chain, key) = rcgen_material(dir.path(), alg)?;
            signs_and_verifies(&chain, &key, scheme)?;
        }
        Ok(())
    }

    /// Keys as openssl writes them: RSA in PKCS#1 ("RSA PRIVATE KEY") and
    /// PKCS#8, EC in SEC1 ("EC PRIVATE KEY").
    #[test]
    fn openssl_keys_rsa_and_sec1_sign_proofs_the_server_verifies() -> TestResult {
        for (genkey, scheme) in [
            (
                vec!["genrsa", "-traditional", "-out", "leaf.key", "2048"],
                SignatureScheme::RSA_PSS_SHA256,
            ),
            (
                vec![
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:3072",
                    "-out",
                    "leaf.key",
                ],
                SignatureScheme::RSA_PSS_SHA256,
            ),
            (
                vec![
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    "leaf.key",
                ],
                SignatureScheme::ECDSA_NISTP256_SHA256,
            ),
        ] {
            let dir = tempfile::tempdir()?;
            openssl(dir.path(), &genkey)?;
            openssl(
                dir.path(),
                &[
                    "req", "-new", "-x509", "-key", "leaf.key", "-subj", "/CN=ca", "-days", "1",
                    "-out", "ca.pem",
                ],
            )?;
            openssl(
                dir.path(),
                &[
                    "req", "-new", "-x509", "-key", "leaf.key", "-subj", "/CN=host", "-days", "1",
                    "-out", "leaf.pem",
                ],
            )?;
            let key = dir.path().join("leaf.key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            let text = std::fs::read_to_string(&key)?;
            assert!(text.contains("PRIVATE KEY"), "{text}");
            let chain = dir.path().join("chain.pem");
            std::fs::write(
                &chain,
                std::fs::read_to_string(dir.path().join("leaf.pem"))?
                    + &std::fs::read_to_string(dir.path().join("ca.pem"))?,
            )?;
            signs_and_verifies(&chain, &key, scheme)?;
        }
        Ok(())
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_before_dialling() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (chain, _) = rcgen_material(dir.path(), &rcgen::PKCS_ECDSA_P256_SHA256)?;
        let other = dir.path().join("other.key");
        write_private(&other, &KeyPair::generate()?.serialize_pem())?;
        let err = X509Pop::load(&chain, &other).map(|_| ()).unwrap_err();
        assert!(matches!(err, EvidenceError::KeyNotLeaf { .. }), "{err}");
        assert!(
            err.to_string().contains("is not the key of the leaf"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn key_files_others_may_read_and_missing_files_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (chain, key) = rcgen_material(dir.path(), &rcgen::PKCS_ECDSA_P256_SHA256)?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        let err = X509Pop::load(&chain, &key).map(|_| ()).unwrap_err();
        assert!(matches!(err, EvidenceError::File(_)), "{err}");
        let err = X509Pop::load(&chain, &dir.path().join("nope.key"))
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, EvidenceError::Missing(_)), "{err}");
        let err = X509Pop::load(&dir.path().join("nope.pem"), &key)
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, EvidenceError::Unreadable { .. }), "{err}");
        // A key file in the certificate's place: no CERTIFICATE block.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let err = X509Pop::load(&key, &key).map(|_| ()).unwrap_err();
        assert!(matches!(err, EvidenceError::NoCertificate(_)), "{err}");
        // A certificate in the key's place: no PRIVATE KEY block.
        let copy = dir.path().join("chain-copy.pem");
        write_private(&copy, &std::fs::read_to_string(&chain)?)?;
        let err = X509Pop::load(&chain, &copy).map(|_| ()).unwrap_err();
        assert!(matches!(err, EvidenceError::NoPrivateKey(_)), "{err}");
        Ok(())
    }

    #[test]
    fn a_chain_the_server_would_refuse_for_its_size_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (chain, key) = rcgen_material(dir.path(), &rcgen::PKCS_ECDSA_P256_SHA256)?;
        let text = std::fs::read_to_string(&chain)?;
        let ca = text[text.rfind("-----BEGIN CERTIFICATE-----").unwrap_or(0)..].to_owned();
        std::fs::write(&chain, text.clone() + &ca.repeat(MAX_X509_CHAIN_LEN - 1))?;
        let err = X509Pop::load(&chain, &key).map(|_| ()).unwrap_err();
        assert!(
            matches!(
                err,
                EvidenceError::ChainTooLarge {
                    certificates: 9,
                    ..
                }
            ),
            "{err}"
        );
        // Eight is the most.
        std::fs::write(&chain, text + &ca.repeat(MAX_X509_CHAIN_LEN - 2))?;
        assert_eq!(X509Pop::load(&chain, &key)?.evidence().chain.len(), 8);
        Ok(())
    }
}
