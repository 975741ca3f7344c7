//! Node material for the fleet-attestation tests, made in the test itself:
//! X.509 CAs and host certificates with rcgen (and one with the `openssl`
//! command line), SSH CAs, host keys and host or user certificates with
//! `ssh-keygen` (Debian's openssh-client), as a fleet's PKI would make them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail, ensure};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use lanyard_agent::upstream::{self as node_client, ServerEndpoint};
use lanyard_proto::attestation;
use lanyard_proto::node::attest_proof::Proof;
use lanyard_proto::node::attest_request::Step;
use lanyard_proto::node::attest_response::Step as Answer;
use lanyard_proto::node::attest_start::Evidence;
use lanyard_proto::node::node_client::NodeClient;
use lanyard_proto::node::{
    AgentSvidResponse, AttestProof, AttestRequest, AttestResponse, AttestStart, Challenge,
    SshPopEvidence, X509PopEvidence, X509PopProof,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// ECDSA P-256 with SHA-256, as TLS numbers it.
pub const SCHEME_ECDSA_P256: u32 = 0x0403;
/// A hang guard only: every exchange ends in milliseconds.
const GUARD: Duration = Duration::from_secs(20);

/// The SHA-256 of `bytes` in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    lanyard_host::encoding::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref(),
    )
}

/// Writes `contents` to `path` with mode 0600 (keys must be owner-only).
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// An X.509 CA of a fleet's PKI.
pub struct X509Ca {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for X509Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Ca")
            .field("sha256", &sha256_hex(&self.cert_der))
            .finish_non_exhaustive()
    }
}

/// What a host certificate says and how long it is valid.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub organizational_units: Vec<String>,
    pub dns_names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The clientAuth EKU (a host certificate for mTLS has it); false gives serverAuth only.
    pub client_auth: bool,
    pub algorithm: &'static SignatureAlgorithm,
}

impl LeafSpec {
    /// A P-256 host certificate for `common_name` in `ou`, valid from a minute ago for a day.
    pub fn host(common_name: &str, ou: &str) -> Self {
        let now = SystemTime::now();
        Self {
            common_name: common_name.to_owned(),
            organizational_units: vec![ou.to_owned()],
            dns_names: vec![common_name.to_owned()],
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(86_400),
            client_auth: true,
            algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

/// A host certificate and its key.
#[derive(Debug)]
pub struct Leaf {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
    /// PKCS#8 DER of the key.
    pub key_der: Vec<u8>,
}

impl Leaf {
    /// Writes `<name>.pem` (the certificate, then `chain_extra` PEM) and
    /// `<name>-key.pem` (0600) into `dir`; returns their paths.
    pub fn write(
        &self,
        dir: &Path,
        name: &str,
        chain_extra: &str,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert, format!("{}{chain_extra}", self.cert_pem))?;
        write_private(&key, self.key_pem.as_bytes())?;
        Ok((cert, key))
    }
}

fn offset(time: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(time)
}

impl X509Ca {
    /// A self-signed root CA named `common_name`.
    pub fn root(common_name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let params = ca_params(common_name, BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An intermediate CA under this one, allowed no further CA below it.
    pub fn intermediate(&self, common_name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let params = ca_params(common_name, BasicConstraints::Constrained(0));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A host certificate signed by this CA.
    pub fn leaf(&self, spec: &LeafSpec) -> anyhow::Result<Leaf> {
        let key = KeyPair::generate_for(spec.algorithm)?;
        self.leaf_for_key(spec, &key)
            .map(|(cert_der, cert_pem)| Leaf {
                cert_der,
                cert_pem,
                key_pem: key.serialize_pem(),
                key_der: key.serialize_der(),
            })
    }

    /// A certificate of `spec` for the public key of `key`; (DER, PEM).
    pub fn leaf_for_key(
        &self,
        spec: &LeafSpec,
        key: &impl PublicKeyData,
    ) -> anyhow::Result<(Vec<u8>, String)> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, spec.common_name.as_str());
        for ou in &spec.organizational_units {
            name.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        params.distinguished_name = name;
        params.subject_alt_names = spec
            .dns_names
            .iter()
            .map(|dns| Ok(SanType::DnsName(dns.as_str().try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if spec.client_auth {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        params.not_before = offset(spec.not_before);
        params.not_after = offset(spec.not_after);
        let cert = params.signed_by(key, &self.issuer)?;
        Ok((cert.der().to_vec(), cert.pem()))
    }

    /// The SubjectPublicKeyInfo DER of a CSR's key, as the signed message hashes it.
    pub fn spki(key: &KeyPair) -> Vec<u8> {
        key.subject_public_key_info()
    }
}

fn ca_params(common_name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = offset(now - Duration::from_secs(3600));
    params.not_after = offset(now + Duration::from_secs(30 * 86_400));
    params
}

/// Runs a command and fails with its stderr when it fails.
fn run(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

/// An RSA-2048 host certificate made with the `openssl` command line (an
/// independent implementation of the PKI side), signed by a root CA that
/// `openssl` makes too; returns (CA PEM path, leaf PEM path, key PEM path).
pub fn openssl_rsa_host(dir: &Path, common_name: &str, ou: &str) -> anyhow::Result<[PathBuf; 3]> {
    let path = |name: &str| dir.join(name);
    let s = |p: &PathBuf| p.to_string_lossy().into_owned();
    let (ca_key, ca_cert) = (path("openssl-ca-key.pem"), path("openssl-ca.pem"));
    let (key, csr, cert, ext) = (
        path("openssl-host-key.pem"),
        path("openssl-host.csr"),
        path("openssl-host.pem"),
        path("openssl-host.ext"),
    );
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=openssl fleet CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca_cert),
    ]))?;
    run(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={common_name}/OU={ou}"),
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
    ]))?;
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:{common_name}\n"
        ),
    )?;
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca_cert),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&cert),
    ]))?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    Ok([ca_cert, cert, key])
}

/// An SSH CA key pair made by `ssh-keygen`.
#[derive(Debug, Clone)]
pub struct SshCa {
    pub private_key: PathBuf,
    /// The `ssh-ed25519 AAAA… comment` line of its public key.
    pub public_line: String,
}

/// The key types of host keys and CAs the tests make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshKeyType {
    Ed25519,
    EcdsaP256,
    EcdsaP384,
    Rsa,
}

impl SshKeyType {
    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Ed25519 => &["-t", "ed25519"],
            Self::EcdsaP256 => &["-t", "ecdsa", "-b", "256"],
            Self::EcdsaP384 => &["-t", "ecdsa", "-b", "384"],
            Self::Rsa => &["-t", "rsa", "-b", "2048"],
        }
    }
}

/// Makes an unencrypted key pair at `path` (and `path.pub`).
pub fn ssh_keygen(path: &Path, key_type: SshKeyType) -> anyhow::Result<String> {
    if path.exists() {
        bail!("{} exists", path.display());
    }
    run(Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", "lanyard-test", "-f"])
        .arg(path)
        .args(key_type.args()))?;
    let public = std::fs::read_to_string(path.with_extension("pub"))
        .or_else(|_| std::fs::read_to_string(format!("{}.pub", path.display())))?;
    Ok(public.trim().to_owned())
}

impl SshCa {
    pub fn new(dir: &Path, name: &str, key_type: SshKeyType) -> anyhow::Result<Self> {
        let private_key = dir.join(name);
        let public_line = ssh_keygen(&private_key, key_type)?;
        Ok(Self {
            private_key,
            public_line,
        })
    }

    /// Signs the public key at `public_key` (`….pub`) as a certificate:
    /// `host` for a host certificate (`-h`), else a user certificate;
    /// `validity` as `ssh-keygen -V` takes it; extra `ssh-keygen` options
    /// (e.g. `["-t", "rsa-sha2-256"]`, `["-O", "critical:…"]`) in `extra`.
    /// Returns the certificate's path (`…-cert.pub`).
    pub fn certify(
        &self,
        public_key: &Path,
        key_id: &str,
        principals: &[&str],
        host: bool,
        validity: &str,
        extra: &[&str],
    ) -> anyhow::Result<PathBuf> {
        let mut command = Command::new("ssh-keygen");
        command
            .arg("-q")
            .arg("-s")
            .arg(&self.private_key)
            .args(["-I", key_id, "-V", validity, "-z", "42"])
            .args(extra);
        if host {
            command.arg("-h");
        }
        if !principals.is_empty() {
            command.args(["-n", &principals.join(",")]);
        }
        run(command.arg(public_key))?;
        let stem = public_key.to_string_lossy();
        let cert = PathBuf::from(format!(
            "{}-cert.pub",
            stem.strip_suffix(".pub").unwrap_or(&stem)
        ));
        ensure!(cert.exists(), "ssh-keygen wrote no {}", cert.display());
        Ok(cert)
    }
}

/// A host key with its certificate: the files sshd has.
#[derive(Debug, Clone)]
pub struct SshHost {
    pub host_key: PathBuf,
    pub host_certificate: PathBuf,
    /// The host public key line (`ssh-ed25519 AAAA…`).
    pub public_line: String,
}

impl SshHost {
    /// A host key of `key_type` named `name` in `dir`, certified by `ca` as a
    /// host (or, with `host = false`, a user) for `principals`, valid `validity`.
    pub fn new(
        dir: &Path,
        name: &str,
        key_type: SshKeyType,
        ca: &SshCa,
        principals: &[&str],
        host: bool,
        validity: &str,
    ) -> anyhow::Result<Self> {
        let host_key = dir.join(name);
        let public_line = ssh_keygen(&host_key, key_type)?;
        let host_certificate = ca.certify(
            &dir.join(format!("{name}.pub")),
            &format!("{name}-id"),
            principals,
            host,
            validity,
            &[],
        )?;
        Ok(Self {
            host_key,
            host_certificate,
            public_line,
        })
    }

    /// The agent ID the server gives this host: the SHA-256 of its public key blob.
    pub fn agent_id(&self, trust_domain: &str) -> anyhow::Result<String> {
        let blob = ssh_key::PublicKey::from_openssh(&self.public_line)?.to_bytes()?;
        Ok(format!(
            "spiffe://{trust_domain}/lanyard/agent/sshpop/{}",
            sha256_hex(&blob)
        ))
    }
}

/// The binary form of an OpenSSH certificate file (`…-cert.pub`).
pub fn ssh_certificate_blob(path: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(ssh_key::Certificate::read_file(path)?.to_bytes()?)
}

/// `ssh-keygen -Y sign` of `message` with the key at `key` in `namespace`:
/// the SSHSIG in its binary form (what an independent signer produces).
pub fn ssh_keygen_sign(
    dir: &Path,
    key: &Path,
    namespace: &str,
    message: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let file = dir.join(format!(
        "message-{}",
        lanyard_host::random::identifier::<8>()?
    ));
    std::fs::write(&file, message)?;
    run(Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", namespace, "-f"])
        .arg(key)
        .arg(&file))?;
    let armored = std::fs::read_to_string(format!("{}.sig", file.display()))?;
    use ssh_key::encoding::Encode;
    Ok(ssh_key::SshSig::from_pem(armored)?.encode_vec()?)
}

/// One attestation in progress: the request side of the stream, the
/// server's answers, and the key the CSR carries.
#[derive(Debug)]
pub struct Attempt {
    requests: mpsc::Sender<AttestRequest>,
    answers: Streaming<AttestResponse>,
    csr_spki_sha256: [u8; 32],
}

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref());
    out
}

/// Opens `Attest` over TLS (no client certificate) and sends the start.
pub async fn open(endpoint: &ServerEndpoint, evidence: Evidence) -> anyhow::Result<Attempt> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let mut client = NodeClient::new(node_client::channel(endpoint, None)?);
    let (requests, receiver) = mpsc::channel(4);
    requests
        .send(AttestRequest {
            step: Some(Step::Start(AttestStart {
                csr: csr.der().to_vec(),
                evidence: Some(evidence),
            })),
        })
        .await?;
    let answers = client
        .attest(ReceiverStream::new(receiver))
        .await
        .map_err(|status| anyhow::anyhow!(status))?
        .into_inner();
    Ok(Attempt {
        requests,
        answers,
        csr_spki_sha256: sha256(&X509Ca::spki(&key)),
    })
}

impl Attempt {
    /// The server's next answer (an error status ends the stream).
    pub async fn next(&mut self) -> Result<Answer, Status> {
        match tokio::time::timeout(GUARD, self.answers.message()).await {
            Err(_) => Err(Status::deadline_exceeded("no answer within the guard")),
            Ok(Err(status)) => Err(status),
            Ok(Ok(None)) => Err(Status::aborted("the stream ended without an answer")),
            Ok(Ok(Some(AttestResponse { step: None }))) => {
                Err(Status::internal("an answer with no step"))
            }
            Ok(Ok(Some(AttestResponse { step: Some(step) }))) => Ok(step),
        }
    }

    pub async fn challenge(&mut self) -> Result<Challenge, Status> {
        match self.next().await? {
            Answer::Challenge(challenge) => Ok(challenge),
            Answer::Svid(_) => Err(Status::internal("an SVID without a challenge")),
        }
    }

    /// The message this attempt's node must sign for `challenge`.
    pub fn message(&self, method: &str, challenge: &Challenge) -> anyhow::Result<Vec<u8>> {
        let nonce: [u8; 32] = challenge
            .nonce
            .as_slice()
            .try_into()
            .context("a nonce of 32 bytes")?;
        Ok(attestation::signed_message(
            method,
            crate::TRUST_DOMAIN,
            &nonce,
            &self.csr_spki_sha256,
        ))
    }

    pub async fn prove(&mut self, proof: Proof) -> Result<AgentSvidResponse, Status> {
        self.requests
            .send(AttestRequest {
                step: Some(Step::Proof(AttestProof { proof: Some(proof) })),
            })
            .await
            .map_err(|_| Status::aborted("the server closed the stream"))?;
        match self.next().await? {
            Answer::Svid(svid) => Ok(svid),
            Answer::Challenge(_) => Err(Status::internal("a second challenge")),
        }
    }
}

/// A P-256 ECDSA signature (ASN.1 DER, as TLS sends it) by the PKCS#8 `key`.
pub fn ecdsa_proof(key_pkcs8: &[u8], message: &[u8]) -> anyhow::Result<Proof> {
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key_pkcs8)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let signature = pair
        .sign(&SystemRandom::new(), message)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Proof::X509pop(X509PopProof {
        scheme: SCHEME_ECDSA_P256,
        signature: signature.as_ref().to_vec(),
    }))
}

pub fn x509_evidence(chain: &[&[u8]]) -> Evidence {
    Evidence::X509pop(X509PopEvidence {
        chain: chain.iter().map(|der| der.to_vec()).collect(),
    })
}

pub fn ssh_evidence(host: &SshHost) -> anyhow::Result<Evidence> {
    Ok(Evidence::Sshpop(SshPopEvidence {
        certificate: ssh_certificate_blob(&host.host_certificate)?,
    }))
}

/// An SSHSIG over `message` by the Ed25519 OpenSSH private key `key`, made
/// in-process with aws-lc-rs (where `ssh-keygen -Y sign` would cost a process
/// per signature, as in the bench); the binary form, as a proof carries it.
pub fn ed25519_sshsig(key: &ssh_key::PrivateKey, message: &[u8]) -> anyhow::Result<Vec<u8>> {
    use ssh_key::encoding::Encode;
    use ssh_key::{Algorithm, HashAlg, Signature, SshSig};
    let pair = key.key_data().ed25519().context("an Ed25519 host key")?;
    let signer = aws_lc_rs::signature::Ed25519KeyPair::from_seed_and_public_key(
        &pair.private.to_bytes(),
        &pair.public.0,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let data = SshSig::signed_data(attestation::SSHSIG_NAMESPACE, HashAlg::Sha512, message)?;
    let signature = Signature::new(Algorithm::Ed25519, signer.sign(&data).as_ref().to_vec())?;
    let sshsig = SshSig::new(
        key.public_key().key_data().clone(),
        attestation::SSHSIG_NAMESPACE,
        HashAlg::Sha512,
        signature,
    )?;
    Ok(sshsig.encode_vec()?)
}
