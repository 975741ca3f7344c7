//! The verifiers on real material: X.509 CAs, chains and CRLs made with
//! rcgen here; SSH CAs, host and user certificates and SSHSIGs made with
//! `ssh-keygen` (openssh-client) in a temporary directory (the SSH tests say
//! so and pass when it is missing).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use lanyard_proto::attestation::{SSHSIG_NAMESPACE, signed_message};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber, SigningKey,
};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use ssh_key::encoding::Encode;
use time::OffsetDateTime;

use super::*;
use crate::config::{SshPopConfig, X509PopConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const NONCE: [u8; 32] = [7; 32];
const CSR_KEY: [u8; 32] = [9; 32];

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    Ca {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf for web-1 (OU web) with clientAuth, valid now, unless `tweak` says otherwise.
fn leaf(ca: &Ca, tweak: impl FnOnce(&mut CertificateParams)) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["Web-1.Example.org".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "web-1");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "web");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(SerialNumber::from_slice(&[0x00, 0xab, 0x01]));
    params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + time::Duration::hours(1);
    tweak(&mut params);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.der().clone(), key)
}

fn attestors(bundle: &[&Ca], crls: Vec<CertificateRevocationListDer<'static>>) -> NodeAttestors {
    let config = NodeAttestationConfig {
        x509pop: Some(X509PopConfig {
            ca_bundle: bundle.iter().map(|ca| ca.der.clone()).collect(),
            intermediates: Vec::new(),
            crls,
        }),
        ..NodeAttestationConfig::default()
    };
    NodeAttestors::new(td(), &config).unwrap()
}

fn x509_proof(key: &KeyPair, nonce: &[u8; 32]) -> Vec<u8> {
    key.sign(&signed_message(X509POP, "example.org", nonce, &CSR_KEY))
        .unwrap()
}

const P256: u32 = 0x0403;

fn sha256_hex(bytes: &[u8]) -> String {
    lanyard_host::encoding::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref(),
    )
}

fn refused(result: Result<Verified, AttestError>) -> String {
    match result {
        Err(AttestError::Refused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn x509pop_verifies_a_chain_and_its_proof() -> TestResult {
    let root = ca("root");
    let attestors = attestors(&[&root], Vec::new());
    let (cert, key) = leaf(&root, |_| {});
    let chain = [cert.to_vec()];
    let verified =
        attestors.verify_evidence(Evidence::X509Pop { chain: &chain }, SystemTime::now())?;
    assert_eq!(
        verified.agent_id.as_str(),
        format!(
            "spiffe://example.org/lanyard/agent/x509pop/{}",
            sha256_hex(&cert)
        )
    );
    let selectors: Vec<String> = verified.selectors.iter().map(ToString::to_string).collect();
    let mut expected = vec![
        format!("x509pop:ca:sha256:{}", sha256_hex(&root.der)),
        "x509pop:san:dns:web-1.example.org".to_owned(),
        "x509pop:serial:ab01".to_owned(),
        "x509pop:subject:cn:web-1".to_owned(),
        "x509pop:subject:ou:web".to_owned(),
    ];
    expected.sort();
    assert_eq!(selectors, expected);

    let signature = x509_proof(&key, &NONCE);
    let proof = Proof::X509Pop {
        scheme: P256,
        signature: &signature,
    };
    attestors.verify_proof(&verified, proof, &NONCE, &CSR_KEY, SystemTime::now())?;
    // Another nonce (a replay), another CSR key (a relay), another scheme.
    for (nonce, csr_key) in [([8; 32], CSR_KEY), (NONCE, [1; 32])] {
        assert!(matches!(
            attestors.verify_proof(&verified, proof, &nonce, &csr_key, SystemTime::now()),
            Err(AttestError::Refused(_))
        ));
    }
    assert!(matches!(
        attestors.verify_proof(
            &verified,
            Proof::X509Pop {
                scheme: 0x0201,
                signature: &signature
            },
            &NONCE,
            &CSR_KEY,
            SystemTime::now()
        ),
        Err(AttestError::Malformed(_))
    ));
    // A signature by a key other than the certificate's.
    let other = KeyPair::generate()?;
    let forged = x509_proof(&other, &NONCE);
    assert!(matches!(
        attestors.verify_proof(
            &verified,
            Proof::X509Pop {
                scheme: P256,
                signature: &forged
            },
            &NONCE,
            &CSR_KEY,
            SystemTime::now()
        ),
        Err(AttestError::Refused(_))
    ));
    // An SSH answer to X.509 evidence.
    assert!(matches!(
        attestors.verify_proof(
            &verified,
            Proof::SshPop { sshsig: b"x" },
            &NONCE,
            &CSR_KEY,
            SystemTime::now()
        ),
        Err(AttestError::Malformed(_))
    ));
    // After the leaf's notAfter.
    let later = SystemTime::now() + Duration::from_secs(7200);
    assert!(matches!(
        attestors.verify_proof(&verified, proof, &NONCE, &CSR_KEY, later),
        Err(AttestError::Refused(_))
    ));
    Ok(())
}

#[test]
fn x509pop_refuses_bad_chains() {
    let root = ca("root");
    let stranger = ca("stranger");
    let attestors = attestors(&[&root], Vec::new());
    let check = |cert: &CertificateDer<'_>| {
        let chain = [cert.to_vec()];
        attestors.verify_evidence(Evidence::X509Pop { chain: &chain }, SystemTime::now())
    };
    let (other_ca, _) = leaf(&stranger, |_| {});
    assert!(refused(check(&other_ca)).contains("chain is refused"));
    let (expired, _) = leaf(&root, |p| {
        p.not_before = OffsetDateTime::now_utc() - time::Duration::days(2);
        p.not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
    });
    assert!(refused(check(&expired)).contains("Expired"));
    let (future, _) = leaf(&root, |p| {
        p.not_before = OffsetDateTime::now_utc() + time::Duration::days(1);
        p.not_after = OffsetDateTime::now_utc() + time::Duration::days(2);
    });
    assert!(refused(check(&future)).contains("NotValidYet"));
    let (server_only, _) = leaf(&root, |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    refused(check(&server_only));
    let (ca_leaf, _) = leaf(&root, |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    });
    refused(check(&ca_leaf));
    let (no_signing, _) = leaf(&root, |p| {
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    });
    assert!(refused(check(&no_signing)).contains("digitalSignature"));
    // Review of issue 13: a keyUsage that does not parse (a NULL where the
    // BIT STRING belongs) is a refusal, not a pass.
    let (malformed_usage, _) = leaf(&root, |p| {
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            &[2, 5, 29, 15],
            vec![0x05, 0x00],
        )];
    });
    assert!(
        refused(check(&malformed_usage)).contains("key usage does not parse"),
        "{:?}",
        check(&malformed_usage)
    );
    let (fine, _) = leaf(&root, |_| {});

    // Limits: 9 certificates, 1 MiB, nothing; refused at once, unparsed.
    let nine = vec![fine.to_vec(); 9];
    let huge = vec![vec![0_u8; 1 << 20]];
    for chain in [nine, huge, Vec::new()] {
        let started = std::time::Instant::now();
        let result =
            attestors.verify_evidence(Evidence::X509Pop { chain: &chain }, SystemTime::now());
        assert!(
            matches!(result, Err(AttestError::Malformed(_))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(100));
    }
    let garbage = [b"not a certificate".to_vec()];
    assert!(matches!(
        attestors.verify_evidence(Evidence::X509Pop { chain: &garbage }, SystemTime::now()),
        Err(AttestError::Malformed(_))
    ));
    // sshpop is not configured here.
    assert_eq!(
        attestors
            .verify_evidence(Evidence::SshPop { certificate: b"" }, SystemTime::now())
            .unwrap_err(),
        AttestError::NotConfigured("sshpop")
    );
}

#[test]
fn x509pop_follows_intermediates_and_refuses_revoked_leaves() -> TestResult {
    let root = ca("root");
    let inter_key = KeyPair::generate()?;
    let mut inter_params = CertificateParams::new(Vec::<String>::new())?;
    inter_params
        .distinguished_name
        .push(DnType::CommonName, "intermediate");
    inter_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    inter_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let inter_der = inter_params
        .signed_by(&inter_key, &root.issuer)?
        .der()
        .clone();
    let inter = Ca {
        der: inter_der.clone(),
        issuer: Issuer::new(inter_params, inter_key),
    };
    let (good, _) = leaf(&inter, |p| {
        p.serial_number = Some(SerialNumber::from(1_u64))
    });
    let (revoked, _) = leaf(&inter, |p| {
        p.serial_number = Some(SerialNumber::from(2_u64))
    });
    let crl = CertificateRevocationListParams {
        this_update: OffsetDateTime::now_utc() - time::Duration::hours(1),
        next_update: OffsetDateTime::now_utc() + time::Duration::hours(1),
        crl_number: SerialNumber::from(1_u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(2_u64),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&inter.issuer)?;
    let attestors = attestors(&[&root], vec![crl.der().clone()]);
    let chain = [good.to_vec(), inter_der.to_vec()];
    let verified =
        attestors.verify_evidence(Evidence::X509Pop { chain: &chain }, SystemTime::now())?;
    assert!(
        verified
            .selectors
            .iter()
            .any(|s| s.to_string() == format!("x509pop:ca:sha256:{}", sha256_hex(&inter_der))),
        "the issuing CA is the intermediate: {:?}",
        verified.selectors
    );
    let chain = [revoked.to_vec(), inter_der.to_vec()];
    assert!(
        refused(attestors.verify_evidence(Evidence::X509Pop { chain: &chain }, SystemTime::now()))
            .contains("Revoked")
    );
    // Without the intermediate the leaf reaches nothing.
    let chain = [good.to_vec()];
    refused(attestors.verify_evidence(Evidence::X509Pop { chain: &chain }, SystemTime::now()));
    Ok(())
}

#[test]
fn node_selectors_drop_what_an_alias_could_never_name() {
    let agent = td().id_with_path("/lanyard/agent/x509pop/ab").unwrap();
    let long = "a".repeat(256);
    let mut candidates = vec![
        Candidate::new(X509POP, "subject:cn", "web-1"),
        Candidate::new(X509POP, "subject:cn", "bad\nname"),
        Candidate::new(X509POP, "subject:ou", &long),
        Candidate::new(X509POP, "san:dns", "web_1.example.org"),
        Candidate::new(X509POP, "subject:cn", "web-1"),
    ];
    for i in 0..100 {
        candidates.push(Candidate::new(SSHPOP, "principal", &format!("p{i:03}")));
    }
    let selectors = node_selectors(&agent, candidates);
    assert_eq!(selectors.len(), MAX_NODE_SELECTORS);
    assert!(!selectors.iter().any(|s| s.to_string().contains("bad")));
    assert!(!selectors.iter().any(|s| s.to_string().contains("san:dns")));
    let cn = selectors
        .iter()
        .filter(|s| s.to_string() == "x509pop:subject:cn:web-1")
        .count();
    assert!(cn <= 1);
}

// ---- sshpop, with ssh-keygen ----

fn ssh_keygen(dir: &Path, args: &[&str]) -> bool {
    Command::new("ssh-keygen")
        .current_dir(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success())
}

fn have_ssh_keygen() -> bool {
    let found = Command::new("ssh-keygen").arg("-?").output().is_ok();
    if !found {
        eprintln!("ssh-keygen is missing (Debian: openssh-client): sshpop tests skipped");
    }
    found
}

fn keygen(dir: &Path, name: &str, kind: &[&str]) {
    let mut args = vec!["-q", "-N", "", "-f", name];
    args.extend_from_slice(kind);
    assert!(ssh_keygen(dir, &args), "ssh-keygen {name}");
}

/// `ssh-keygen -s ca …` on `host.pub`; the binary certificate.
fn certify(dir: &Path, ca: &str, host: &str, extra: &[&str]) -> Vec<u8> {
    let mut args = vec!["-q", "-s", ca, "-I", "node-17"];
    args.extend_from_slice(extra);
    let public = format!("{host}.pub");
    args.push(&public);
    assert!(ssh_keygen(dir, &args), "ssh-keygen -s {extra:?}");
    let text = std::fs::read_to_string(dir.join(format!("{host}-cert.pub"))).unwrap();
    ssh_key::Certificate::from_openssh(text.trim())
        .unwrap()
        .to_bytes()
        .unwrap()
}

/// `ssh-keygen -Y sign` of the challenge message by `host`: the binary SSHSIG.
fn sshsig(dir: &Path, host: &str, namespace: &str, nonce: &[u8; 32]) -> Vec<u8> {
    let message = signed_message(SSHPOP, "example.org", nonce, &CSR_KEY);
    let file = dir.join(format!("msg-{host}-{}", nonce[0]));
    let _ = std::fs::remove_file(file.with_extension("sig"));
    std::fs::write(&file, message).unwrap();
    let path = file.display().to_string();
    assert!(ssh_keygen(
        dir,
        &["-Y", "sign", "-f", host, "-n", namespace, &path]
    ));
    let pem = std::fs::read(format!("{path}.sig")).unwrap();
    let signature = ssh_key::SshSig::from_pem(pem).unwrap();
    let mut out = Vec::new();
    signature.encode(&mut out).unwrap();
    out
}

fn ca_key(dir: &Path, name: &str) -> KeyData {
    ssh_key::PublicKey::read_openssh_file(dir.join(format!("{name}.pub")))
        .unwrap()
        .key_data()
        .clone()
}

fn ssh_attestors(cas: Vec<KeyData>, revoked: Vec<KeyData>) -> NodeAttestors {
    let config = NodeAttestationConfig {
        sshpop: Some(SshPopConfig {
            cert_authorities: cas,
            revoked,
        }),
        ..NodeAttestationConfig::default()
    };
    NodeAttestors::new(td(), &config).unwrap()
}

#[test]
fn sshpop_verifies_host_certificates_of_each_key_type() {
    if !have_ssh_keygen() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    keygen(dir, "ca", &["-t", "ed25519"]);
    keygen(dir, "rsaca", &["-t", "rsa", "-b", "2048"]);
    let attestors = ssh_attestors(vec![ca_key(dir, "ca"), ca_key(dir, "rsaca")], Vec::new());
    for (host, kind, signer, extra) in [
        ("ed", vec!["-t", "ed25519"], "ca", vec![]),
        ("p256", vec!["-t", "ecdsa", "-b", "256"], "ca", vec![]),
        ("p384", vec!["-t", "ecdsa", "-b", "384"], "rsaca", vec![]),
        (
            "rsa",
            vec!["-t", "rsa", "-b", "2048"],
            "rsaca",
            vec!["-t", "rsa-sha2-256"],
        ),
    ] {
        keygen(dir, host, &kind);
        let mut args = vec![
            "-h",
            "-n",
            "web1,web1.example.org",
            "-V",
            "-5m:+1h",
            "-z",
            "42",
        ];
        args.extend(extra);
        let cert = certify(dir, signer, host, &args);
        let verified = attestors
            .verify_evidence(Evidence::SshPop { certificate: &cert }, SystemTime::now())
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        let host_key = ca_key(dir, host);
        assert_eq!(
            verified.agent_id.as_str(),
            format!(
                "spiffe://example.org/lanyard/agent/sshpop/{}",
                sshpop::fingerprint_hex(&host_key)
            )
        );
        let selectors: Vec<String> = verified.selectors.iter().map(ToString::to_string).collect();
        let mut expected = vec![
            format!(
                "sshpop:ca:sha256:{}",
                sshpop::fingerprint_hex(&ca_key(dir, signer))
            ),
            "sshpop:key_id:node-17".to_owned(),
            "sshpop:principal:web1".to_owned(),
            "sshpop:principal:web1.example.org".to_owned(),
        ];
        expected.sort();
        assert_eq!(selectors, expected, "{host}");

        let answer = sshsig(dir, host, SSHSIG_NAMESPACE, &NONCE);
        let proof = Proof::SshPop { sshsig: &answer };
        attestors
            .verify_proof(&verified, proof, &NONCE, &CSR_KEY, SystemTime::now())
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        // A replayed answer (another nonce) and another namespace.
        assert!(matches!(
            attestors.verify_proof(&verified, proof, &[1; 32], &CSR_KEY, SystemTime::now()),
            Err(AttestError::Refused(_))
        ));
        let other_namespace = sshsig(dir, host, "file", &NONCE);
        assert!(matches!(
            attestors.verify_proof(
                &verified,
                Proof::SshPop {
                    sshsig: &other_namespace
                },
                &NONCE,
                &CSR_KEY,
                SystemTime::now()
            ),
            Err(AttestError::Refused(_))
        ));
    }
}

#[test]
fn sshpop_refuses_what_is_not_a_valid_host_certificate() {
    if !have_ssh_keygen() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    keygen(dir, "ca", &["-t", "ed25519"]);
    keygen(dir, "other", &["-t", "ed25519"]);
    keygen(dir, "revokedca", &["-t", "ed25519"]);
    keygen(dir, "rsaca", &["-t", "rsa", "-b", "2048"]);
    keygen(dir, "host", &["-t", "ed25519"]);
    keygen(dir, "intruder", &["-t", "ed25519"]);
    let attestors = ssh_attestors(
        vec![
            ca_key(dir, "ca"),
            ca_key(dir, "revokedca"),
            ca_key(dir, "rsaca"),
        ],
        vec![ca_key(dir, "revokedca")],
    );
    let check = |cert: &[u8]| {
        attestors.verify_evidence(Evidence::SshPop { certificate: cert }, SystemTime::now())
    };
    let cases: [(&str, &[&str], &str); 7] = [
        ("ca", &["-n", "web1"], "not a host certificate"),
        ("ca", &["-h", "-V", "20200101:20200102"], "expired"),
        ("ca", &["-h", "-V", "+1h:+2h"], "not valid yet"),
        ("other", &["-h"], "not signed by a trusted CA"),
        ("revokedca", &["-h"], "revoked"),
        ("ca", &["-h", "-O", "critical:foo=bar"], "critical options"),
        ("rsaca", &["-h", "-t", "ssh-rsa"], "SHA-1"),
    ];
    for (signer, args, reason) in cases {
        let cert = certify(dir, signer, "host", args);
        let refusal = refused(check(&cert));
        assert!(refusal.contains(reason), "{args:?}: {refusal}");
    }
    // A valid certificate, answered by a key that is not the certified one.
    let cert = certify(dir, "ca", "host", &["-h", "-n", "web1"]);
    let verified = check(&cert).unwrap();
    let answer = sshsig(dir, "intruder", SSHSIG_NAMESPACE, &NONCE);
    assert!(matches!(
        attestors.verify_proof(
            &verified,
            Proof::SshPop { sshsig: &answer },
            &NONCE,
            &CSR_KEY,
            SystemTime::now()
        ),
        Err(AttestError::Refused(_))
    ));
    // A certificate over 16 KiB is refused before it is parsed.
    assert!(matches!(
        check(&vec![0; 16 * 1024 + 1]),
        Err(AttestError::Malformed(_))
    ));
    assert!(matches!(check(b"garbage"), Err(AttestError::Malformed(_))));
}

/// Review of issue 13: the evidence expires with the earliest notAfter along
/// the verified path (here an intermediate that ends before the leaf), and an
/// agent SVID never outlives it.
#[test]
fn x509pop_evidence_expires_with_the_earliest_certificate_of_its_path() -> TestResult {
    let root = ca("root");
    let inter_key = KeyPair::generate()?;
    let mut inter_params = CertificateParams::new(Vec::<String>::new())?;
    inter_params
        .distinguished_name
        .push(DnType::CommonName, "intermediate");
    inter_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    inter_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    inter_params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let inter_end = OffsetDateTime::now_utc() + time::Duration::minutes(30);
    inter_params.not_after = inter_end;
    let inter_der = inter_params
        .signed_by(&inter_key, &root.issuer)?
        .der()
        .clone();
    let inter = Ca {
        der: inter_der.clone(),
        issuer: Issuer::new(inter_params, inter_key),
    };
    let attestors = attestors(&[&root], Vec::new());
    let now = SystemTime::now();

    let (longer, _) = leaf(&inter, |_| {});
    let chain = [longer.to_vec(), inter_der.to_vec()];
    let verified = attestors.verify_evidence(Evidence::X509Pop { chain: &chain }, now)?;
    assert_eq!(verified.valid_until, inter_end.unix_timestamp());

    let leaf_end = OffsetDateTime::now_utc() + time::Duration::minutes(10);
    let (shorter, _) = leaf(&inter, |p| p.not_after = leaf_end);
    let chain = [shorter.to_vec(), inter_der.to_vec()];
    let verified = attestors.verify_evidence(Evidence::X509Pop { chain: &chain }, now)?;
    assert_eq!(verified.valid_until, leaf_end.unix_timestamp());

    // The SVID's lifetime: cut at the evidence, never lengthened.
    let ttl = Duration::from_secs(3600);
    let at = unix_seconds(now);
    let capped = agent_svid_ttl(ttl, verified.valid_until, now);
    assert_eq!(unix_seconds(now + capped), leaf_end.unix_timestamp());
    assert_eq!(
        agent_svid_ttl(Duration::from_secs(60), at + 600, now),
        Duration::from_secs(60)
    );
    assert_eq!(
        agent_svid_ttl(ttl, 0, now),
        ttl,
        "join tokens: no evidence expiry"
    );
    assert_eq!(agent_svid_ttl(ttl, at - 5, now), Duration::ZERO);
    Ok(())
}

/// Review of issue 13: an sshpop agent's evidence ends at the certificate's
/// valid-before.
#[test]
fn sshpop_evidence_expires_at_valid_before() {
    if !have_ssh_keygen() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    keygen(dir, "ca", &["-t", "ed25519"]);
    keygen(dir, "host", &["-t", "ed25519"]);
    let attestors = ssh_attestors(vec![ca_key(dir, "ca")], Vec::new());
    let cert = certify(dir, "ca", "host", &["-h", "-V", "-5m:+20m"]);
    let valid_before = ssh_key::Certificate::from_bytes(&cert)
        .unwrap()
        .valid_before();
    let verified = attestors
        .verify_evidence(Evidence::SshPop { certificate: &cert }, SystemTime::now())
        .unwrap();
    assert_eq!(verified.valid_until, i64::try_from(valid_before).unwrap());
    assert!(verified.valid_until > unix_seconds(SystemTime::now()) + 15 * 60);

    // valid-before is exclusive: a proof arriving in that second is refused,
    // one the second before is not.
    let answer = sshsig(dir, "host", SSHSIG_NAMESPACE, &NONCE);
    let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let proof = Proof::SshPop { sshsig: &answer };
    assert!(
        attestors
            .verify_proof(&verified, proof, &NONCE, &CSR_KEY, at(valid_before - 1))
            .is_ok()
    );
    let late = attestors.verify_proof(&verified, proof, &NONCE, &CSR_KEY, at(valid_before));
    assert!(
        matches!(&late, Err(AttestError::Refused(m)) if m.contains("expired")),
        "{late:?}"
    );
}
