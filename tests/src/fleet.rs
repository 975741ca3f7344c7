//! Node material for the fleet-attestation tests, made in the test itself:
//! X.509 CAs and host certificates with rcgen (and one with the `openssl`
//! command line), SSH CAs, host keys and host or user certificates with
//! `ssh-keygen` (Debian's openssh-client), as a fleet's PKI would make them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm,
};

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
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=openssl fleet CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
        "keyUsage=critical,keyCertSign,cRLSign", "-keyout", &s(&ca_key), "-out", &s(&ca_cert),
    ]))?;
    run(Command::new("openssl").args([
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={common_name}/OU={ou}"),
        "-keyout", &s(&key), "-out", &s(&csr),
    ]))?;
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:{common_name}\n"
        ),
    )?;
    run(Command::new("openssl").args([
        "x509", "-req", "-in", &s(&csr), "-CA", &s(&ca_cert), "-CAkey", &s(&ca_key),
        "-CAcreateserial", "-days", "1", "-extfile", &s(&ext), "-out", &s(&cert),
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
    use ssh_key::Encode;
    Ok(ssh_key::SshSig::from_pem(armored)?.encode_vec()?)
}
