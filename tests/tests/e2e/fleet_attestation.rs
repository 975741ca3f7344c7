//! Fleet enrolment over the real mTLS Node API, driven by hand so every
//! step can be broken: x509pop and sshpop evidence, the server's challenge,
//! the proof, and what the server must refuse (another CA, expiry, a user
//! certificate, a proof by another key, a replayed or late answer, oversized
//! chains, too many open challenges, a banned node). Material is made in the
//! test: rcgen and `openssl` for X.509, `ssh-keygen` for SSH; `openssl dgst`
//! and `ssh-keygen -Y sign` also sign challenges, as independent signers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use lanyard_agent::upstream::ServerEndpoint;
use lanyard_host::transport::unix_channel;
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{BanAgentRequest, GetAgentRequest, UnbanAgentRequest};
use lanyard_proto::attestation::{self, SSHSIG_NAMESPACE};
use lanyard_proto::node::attest_proof::Proof;
use lanyard_proto::node::attest_start::Evidence;
use lanyard_proto::node::{AgentSvidResponse, X509PopProof};
use lanyard_server::RunningServer;
use lanyard_server::config::ServerConfig;
use lanyard_tests::fleet::{
    Leaf, LeafSpec, SshCa, SshHost, SshKeyType, X509Ca, ecdsa_proof, open, openssl_rsa_host,
    sha256_hex, ssh_certificate_blob, ssh_evidence, ssh_keygen_sign, x509_evidence,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Status};

const TD: &str = "example.org";
/// RSA PKCS#1 v1.5 with SHA-256, as TLS numbers it.
const SCHEME_RSA_PKCS1_SHA256: u32 = 0x0401;
/// A hang guard only: every exchange here ends in milliseconds.
const GUARD: Duration = Duration::from_secs(20);

/// A server trusting `x509_bundle` (a PEM file) for x509pop and `ssh_ca`
/// (a public key line) for sshpop, with short challenges and few pending.
async fn start_server(
    dir: &Path,
    datastore_url: &str,
    x509_bundle: &Path,
    ssh_ca: &str,
) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let text = format!(
        "trust_domain = \"{TD}\"\nissuer = \"https://127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
         [node_api]\nlisten = \"127.0.0.1:0\"\n[datastore]\nurl = \"{datastore_url}\"\n\
         [node_attestation]\nchallenge_ttl_seconds = 2\nmax_pending_per_peer = 4\n\
         [node_attestation.x509pop]\nca_bundle = \"{}\"\n\
         [node_attestation.sshpop]\ncert_authorities = [\"{ssh_ca}\"]\n",
        dir.join("server").display(),
        x509_bundle.display(),
    );
    Ok(
        lanyard_server::start_with_listener(ServerConfig::from_toml(&text, "test")?, listener)
            .await?,
    )
}

fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    codes: &[Code],
    what: &str,
) -> anyhow::Result<Status> {
    match result {
        Err(status) if codes.contains(&status.code()) => Ok(status),
        other => anyhow::bail!("{what}: expected one of {codes:?}, got {other:?}"),
    }
}

/// Where a refusal happens (at the start or at the proof) is the server's
/// choice; what matters is that no SVID comes out.
async fn refused_at_start_or_proof(
    endpoint: &ServerEndpoint,
    evidence: Evidence,
    method: &str,
    key_pkcs8: &[u8],
) -> anyhow::Result<Status> {
    let mut attempt = match open(endpoint, evidence).await {
        Ok(attempt) => attempt,
        Err(e) => return e.downcast::<Status>().map_err(|e| anyhow::anyhow!("{e}")),
    };
    let challenge = match attempt.challenge().await {
        Ok(challenge) => challenge,
        Err(status) => return Ok(status),
    };
    let proof = ecdsa_proof(key_pkcs8, &attempt.message(method, &challenge)?)?;
    match attempt.prove(proof).await {
        Ok(svid) => anyhow::bail!("an SVID was issued: {}", svid.spiffe_id),
        Err(status) => Ok(status),
    }
}

struct Fleet {
    _dir: tempfile::TempDir,
    material: tempfile::TempDir,
    server: RunningServer,
    endpoint: ServerEndpoint,
    admin: AdminClient<Channel>,
    root: X509Ca,
    ssh_ca: SshCa,
}

impl Fleet {
    async fn start(datastore_url: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let material = tempfile::tempdir()?;
        let root = X509Ca::root("fleet root")?;
        let bundle = material.path().join("fleet-ca.pem");
        std::fs::write(&bundle, &root.cert_pem)?;
        let ssh_ca = SshCa::new(material.path(), "ssh-ca", SshKeyType::Ed25519)?;
        let server = start_server(dir.path(), datastore_url, &bundle, &ssh_ca.public_line).await?;
        let endpoint = ServerEndpoint::new(
            &server.node_addr.context("mTLS Node API")?.to_string(),
            &server.ca_bundle,
        )?;
        let admin = AdminClient::new(unix_channel(&server.admin_socket));
        Ok(Self {
            _dir: dir,
            material,
            server,
            endpoint,
            admin,
            root,
            ssh_ca,
        })
    }

    /// Attests with the x509pop leaf `leaf` (key PKCS#8 `key`): the SVID.
    async fn attest_x509(&self, chain: &[&[u8]], key: &[u8]) -> anyhow::Result<AgentSvidResponse> {
        let mut attempt = open(&self.endpoint, x509_evidence(chain)).await?;
        let challenge = attempt.challenge().await?;
        let proof = ecdsa_proof(key, &attempt.message(attestation::X509POP, &challenge)?)?;
        Ok(attempt.prove(proof).await?)
    }
}

/// Against SQLite, and against PostgreSQL where one is configured (always in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_nodes_prove_their_host_certificate() -> anyhow::Result<()> {
    let urls_dir = tempfile::tempdir()?;
    for url in lanyard_tests::datastore_urls(urls_dir.path()).await? {
        x509pop_scenario(&url).await?;
    }
    Ok(())
}

async fn x509pop_scenario(datastore_url: &str) -> anyhow::Result<()> {
    let mut fleet = Fleet::start(datastore_url).await?;
    let leaf = fleet
        .root
        .leaf(&LeafSpec::host("web-1.example.org", "web"))?;
    let svid = fleet.attest_x509(&[&leaf.cert_der], &leaf.key_der).await?;
    let agent_id = format!(
        "spiffe://{TD}/lanyard/agent/x509pop/{}",
        sha256_hex(&leaf.cert_der)
    );
    assert_eq!(svid.spiffe_id, agent_id);

    // The node selectors are what the certificate proved, no more.
    let agent = fleet
        .admin
        .get_agent(GetAgentRequest {
            spiffe_id: agent_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(agent.attestation_type, attestation::X509POP);
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.cert_der)?;
    let mut selectors = agent.selectors.clone();
    selectors.sort();
    let mut expected = vec![
        "x509pop:subject:cn:web-1.example.org".to_owned(),
        "x509pop:subject:ou:web".to_owned(),
        "x509pop:san:dns:web-1.example.org".to_owned(),
        format!("x509pop:ca:sha256:{}", sha256_hex(&fleet.root.cert_der)),
        format!("x509pop:serial:{:x}", parsed.serial),
    ];
    expected.sort();
    assert_eq!(selectors, expected);

    // Through an intermediate, the issuing CA is the intermediate.
    let intermediate = fleet.root.intermediate("fleet issuing CA")?;
    let leaf2 = intermediate.leaf(&LeafSpec::host("db-1.example.org", "db"))?;
    let svid2 = fleet
        .attest_x509(&[&leaf2.cert_der, &intermediate.cert_der], &leaf2.key_der)
        .await?;
    let agent2 = fleet
        .admin
        .get_agent(GetAgentRequest {
            spiffe_id: svid2.spiffe_id.clone(),
        })
        .await?
        .into_inner();
    assert!(
        agent2.selectors.contains(&format!(
            "x509pop:ca:sha256:{}",
            sha256_hex(&intermediate.cert_der)
        )),
        "{:?}",
        agent2.selectors
    );

    // Banned: refused before any challenge, until unbanned.
    fleet
        .admin
        .ban_agent(BanAgentRequest {
            spiffe_id: agent_id.clone(),
        })
        .await?;
    let banned = refused_at_start_or_proof(
        &fleet.endpoint,
        x509_evidence(&[&leaf.cert_der]),
        attestation::X509POP,
        &leaf.key_der,
    )
    .await?;
    assert_eq!(banned.code(), Code::PermissionDenied, "{banned:?}");
    assert!(banned.message().contains("banned"), "{banned:?}");
    fleet
        .admin
        .unban_agent(UnbanAgentRequest {
            spiffe_id: agent_id.clone(),
        })
        .await?;
    let again = fleet.attest_x509(&[&leaf.cert_der], &leaf.key_der).await?;
    assert_eq!(again.spiffe_id, agent_id);
    fleet.server.shutdown().await;
    Ok(())
}

/// A fleet server on SQLite for one refusal (the directory lives as long as it).
async fn refusal_fleet() -> anyhow::Result<(tempfile::TempDir, Fleet)> {
    let urls_dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        urls_dir.path().join("e2e.sqlite3").display()
    );
    let fleet = Fleet::start(&url).await?;
    Ok((urls_dir, fleet))
}

/// A refusal leaves no agent record behind.
async fn assert_no_agents(fleet: &mut Fleet) -> anyhow::Result<()> {
    let agents = fleet
        .admin
        .list_agents(lanyard_proto::admin::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    anyhow::ensure!(agents.is_empty(), "a refusal left agents: {agents:?}");
    Ok(())
}

/// Attests with `leaf` (its own key signing unless `signer` is given) and
/// expects a refusal with `code`; no agent may be left behind.
async fn x509_refused(
    mut fleet: Fleet,
    chain: &[&[u8]],
    signer: &[u8],
    code: Code,
    what: &str,
) -> anyhow::Result<()> {
    let status = refused_at_start_or_proof(
        &fleet.endpoint,
        x509_evidence(chain),
        attestation::X509POP,
        signer,
    )
    .await?;
    anyhow::ensure!(status.code() == code, "{what}: {status:?}");
    anyhow::ensure!(!status.message().is_empty(), "{what}: no reason given");
    assert_no_agents(&mut fleet).await?;
    fleet.server.shutdown().await;
    Ok(())
}

fn leaf_valid(
    fleet: &Fleet,
    not_before: SystemTime,
    not_after: SystemTime,
) -> anyhow::Result<Leaf> {
    fleet.root.leaf(&LeafSpec {
        not_before,
        not_after,
        ..LeafSpec::host("web-2.example.org", "web")
    })
}

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_refuses_a_certificate_from_another_ca() -> anyhow::Result<()> {
    let (_dir, fleet) = refusal_fleet().await?;
    let stranger = X509Ca::root("someone else's root")?;
    let foreign = stranger.leaf(&LeafSpec::host("web-9.example.org", "web"))?;
    x509_refused(
        fleet,
        &[&foreign.cert_der],
        &foreign.key_der,
        Code::PermissionDenied,
        "another CA",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_refuses_an_expired_certificate() -> anyhow::Result<()> {
    let (_dir, fleet) = refusal_fleet().await?;
    let now = SystemTime::now();
    let leaf = leaf_valid(&fleet, now - 2 * DAY, now - DAY)?;
    x509_refused(
        fleet,
        &[&leaf.cert_der],
        &leaf.key_der,
        Code::PermissionDenied,
        "expired",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_refuses_a_certificate_not_yet_valid() -> anyhow::Result<()> {
    let (_dir, fleet) = refusal_fleet().await?;
    let now = SystemTime::now();
    let leaf = leaf_valid(&fleet, now + DAY, now + 2 * DAY)?;
    x509_refused(
        fleet,
        &[&leaf.cert_der],
        &leaf.key_der,
        Code::PermissionDenied,
        "not yet valid",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_refuses_a_server_only_certificate() -> anyhow::Result<()> {
    let (_dir, fleet) = refusal_fleet().await?;
    // serverAuth only: a web server's certificate is no node's client identity.
    let leaf = fleet.root.leaf(&LeafSpec {
        client_auth: false,
        ..LeafSpec::host("web-3.example.org", "web")
    })?;
    x509_refused(
        fleet,
        &[&leaf.cert_der],
        &leaf.key_der,
        Code::PermissionDenied,
        "serverAuth",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_refuses_a_proof_by_another_key() -> anyhow::Result<()> {
    let (_dir, fleet) = refusal_fleet().await?;
    let leaf = fleet
        .root
        .leaf(&LeafSpec::host("web-4.example.org", "web"))?;
    let other = fleet
        .root
        .leaf(&LeafSpec::host("web-5.example.org", "web"))?;
    x509_refused(
        fleet,
        &[&leaf.cert_der],
        &other.key_der,
        Code::PermissionDenied,
        "another key",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_refuses_a_chain_of_nine_certificates() -> anyhow::Result<()> {
    let (_dir, fleet) = refusal_fleet().await?;
    let leaf = fleet
        .root
        .leaf(&LeafSpec::host("web-6.example.org", "web"))?;
    let nine: Vec<&[u8]> = std::iter::repeat_n(leaf.cert_der.as_slice(), 9).collect();
    x509_refused(
        fleet,
        &nine,
        &leaf.key_der,
        Code::InvalidArgument,
        "nine certificates",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_refuses_a_one_mebibyte_chain_at_once() -> anyhow::Result<()> {
    let (_dir, fleet) = refusal_fleet().await?;
    let leaf = fleet
        .root
        .leaf(&LeafSpec::host("web-7.example.org", "web"))?;
    let huge = vec![0x30u8; 1024 * 1024];
    // Over the Node API's 128 KiB message cap, or the chain's 64 KiB: refused
    // by size before anything is parsed (the guard only catches a hang).
    let status = refused_at_start_or_proof(
        &fleet.endpoint,
        x509_evidence(&[&leaf.cert_der, &huge]),
        attestation::X509POP,
        &leaf.key_der,
    )
    .await?;
    anyhow::ensure!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
        ),
        "a 1 MiB chain: {status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_refuses_a_replayed_answer() -> anyhow::Result<()> {
    let (_dir, mut fleet) = refusal_fleet().await?;
    let leaf = fleet
        .root
        .leaf(&LeafSpec::host("web-8.example.org", "web"))?;
    let x509 = attestation::X509POP;
    // A proof made for one challenge, sent for another.
    let mut first = open(&fleet.endpoint, x509_evidence(&[&leaf.cert_der])).await?;
    let first_challenge = first.challenge().await?;
    let old_proof = ecdsa_proof(&leaf.key_der, &first.message(x509, &first_challenge)?)?;
    drop(first);
    let mut second = open(&fleet.endpoint, x509_evidence(&[&leaf.cert_der])).await?;
    let _ = second.challenge().await?;
    assert_refused(
        second.prove(old_proof).await,
        &[Code::PermissionDenied],
        "a replayed answer",
    )?;
    assert_no_agents(&mut fleet).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_takes_one_proof_per_challenge() -> anyhow::Result<()> {
    let (_dir, fleet) = refusal_fleet().await?;
    let leaf = fleet
        .root
        .leaf(&LeafSpec::host("web-8.example.org", "web"))?;
    let mut once = open(&fleet.endpoint, x509_evidence(&[&leaf.cert_der])).await?;
    let challenge = once.challenge().await?;
    let good = ecdsa_proof(
        &leaf.key_der,
        &once.message(attestation::X509POP, &challenge)?,
    )?;
    once.prove(good.clone()).await?;
    assert!(once.prove(good).await.is_err(), "a second proof was taken");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_refuses_a_late_answer() -> anyhow::Result<()> {
    let (_dir, mut fleet) = refusal_fleet().await?;
    let leaf = fleet
        .root
        .leaf(&LeafSpec::host("web-8.example.org", "web"))?;
    let mut late = open(&fleet.endpoint, x509_evidence(&[&leaf.cert_der])).await?;
    let challenge = late.challenge().await?;
    let proof = ecdsa_proof(
        &leaf.key_der,
        &late.message(attestation::X509POP, &challenge)?,
    )?;
    let expires = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(challenge.expires_at)?);
    if let Ok(wait) = expires.duration_since(SystemTime::now()) {
        // Waiting out a deadline the server set (2 s here): the point of this case.
        tokio::time::sleep(wait + Duration::from_millis(1100)).await;
    }
    assert_refused(
        late.prove(proof).await,
        &[
            Code::PermissionDenied,
            Code::DeadlineExceeded,
            Code::Aborted,
        ],
        "a late answer",
    )?;
    assert_no_agents(&mut fleet).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_challenges_are_capped_per_peer() -> anyhow::Result<()> {
    let urls_dir = tempfile::tempdir()?;
    let url = lanyard_tests::datastore_urls(urls_dir.path()).await?;
    let fleet = Fleet::start(url.first().context("a SQLite URL")?).await?;
    let leaf = fleet
        .root
        .leaf(&LeafSpec::host("web-1.example.org", "web"))?;
    // max_pending_per_peer = 4: four challenges stay open, the fifth is refused.
    let mut open_ones = Vec::new();
    for _ in 0..4 {
        let mut attempt = open(&fleet.endpoint, x509_evidence(&[&leaf.cert_der])).await?;
        attempt.challenge().await?;
        open_ones.push(attempt);
    }
    let fifth = match open(&fleet.endpoint, x509_evidence(&[&leaf.cert_der])).await {
        Ok(mut attempt) => attempt.challenge().await.map(|_| ()),
        Err(e) => Err(e.downcast::<Status>().map_err(|e| anyhow::anyhow!("{e}"))?),
    };
    assert_refused(fifth, &[Code::ResourceExhausted], "a fifth open challenge")?;
    // A closed one frees its place.
    drop(open_ones.pop());
    let freed = tokio::time::timeout(GUARD, async {
        loop {
            let mut attempt = open(&fleet.endpoint, x509_evidence(&[&leaf.cert_der])).await?;
            match attempt.challenge().await {
                Ok(_) => return anyhow::Ok(()),
                Err(status) if status.code() == Code::ResourceExhausted => {
                    // The server notices the closed stream on its next poll.
                    tokio::task::yield_now().await;
                }
                Err(status) => return Err(status.into()),
            }
        }
    })
    .await;
    assert!(matches!(freed, Ok(Ok(()))), "{freed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_signers_answer_challenges() -> anyhow::Result<()> {
    let urls_dir = tempfile::tempdir()?;
    let url = lanyard_tests::datastore_urls(urls_dir.path()).await?;
    let material = tempfile::tempdir()?;
    // An RSA host certificate from openssl, its CA the one the server trusts.
    let [ca, cert, key] = openssl_rsa_host(material.path(), "build-1.example.org", "ci")?;
    let dir = tempfile::tempdir()?;
    let ssh_ca = SshCa::new(material.path(), "ssh-ca", SshKeyType::Ed25519)?;
    let server = start_server(
        dir.path(),
        url.first().context("a SQLite URL")?,
        &ca,
        &ssh_ca.public_line,
    )
    .await?;
    let endpoint = ServerEndpoint::new(
        &server.node_addr.context("mTLS Node API")?.to_string(),
        &server.ca_bundle,
    )?;

    // openssl signs the challenge (RSA PKCS#1 v1.5, SHA-256).
    let leaf_der = lanyard_tests::pem_to_der(&std::fs::read_to_string(&cert)?)?
        .into_iter()
        .next()
        .context("a certificate")?;
    let mut attempt = open(&endpoint, x509_evidence(&[&leaf_der])).await?;
    let challenge = attempt.challenge().await?;
    let message_file = material.path().join("challenge");
    std::fs::write(
        &message_file,
        attempt.message(attestation::X509POP, &challenge)?,
    )?;
    let signed = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .arg(&message_file)
        .output()?;
    anyhow::ensure!(signed.status.success(), "{signed:?}");
    let svid = attempt
        .prove(Proof::X509pop(X509PopProof {
            scheme: SCHEME_RSA_PKCS1_SHA256,
            signature: signed.stdout,
        }))
        .await?;
    assert_eq!(
        svid.spiffe_id,
        format!(
            "spiffe://{TD}/lanyard/agent/x509pop/{}",
            sha256_hex(&leaf_der)
        )
    );

    // ssh-keygen -Y sign answers an sshpop challenge.
    let host = SshHost::new(
        material.path(),
        "ssh_host_ed25519_key",
        SshKeyType::Ed25519,
        &ssh_ca,
        &["build-1", "build-1.example.org"],
        true,
        "-5m:+1h",
    )?;
    let mut attempt = open(&endpoint, ssh_evidence(&host)?).await?;
    let challenge = attempt.challenge().await?;
    let sshsig = ssh_keygen_sign(
        material.path(),
        &host.host_key,
        SSHSIG_NAMESPACE,
        &attempt.message(attestation::SSHPOP, &challenge)?,
    )?;
    let svid = attempt.prove(Proof::Sshsig(sshsig)).await?;
    assert_eq!(svid.spiffe_id, host.agent_id(TD)?);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshpop_nodes_prove_their_host_certificate() -> anyhow::Result<()> {
    let urls_dir = tempfile::tempdir()?;
    for url in lanyard_tests::datastore_urls(urls_dir.path()).await? {
        sshpop_scenario(&url).await?;
    }
    Ok(())
}

async fn ssh_attest(
    fleet: &Fleet,
    host: &SshHost,
    signer: &Path,
) -> Result<AgentSvidResponse, Status> {
    let mut attempt = open(
        &fleet.endpoint,
        ssh_evidence(host).map_err(|e| Status::internal(e.to_string()))?,
    )
    .await
    .map_err(|e| match e.downcast::<Status>() {
        Ok(status) => status,
        Err(e) => Status::internal(e.to_string()),
    })?;
    let challenge = attempt.challenge().await?;
    let message = attempt
        .message(attestation::SSHPOP, &challenge)
        .map_err(|e| Status::internal(e.to_string()))?;
    let sshsig = ssh_keygen_sign(fleet.material.path(), signer, SSHSIG_NAMESPACE, &message)
        .map_err(|e| Status::internal(e.to_string()))?;
    attempt.prove(Proof::Sshsig(sshsig)).await
}

async fn sshpop_scenario(datastore_url: &str) -> anyhow::Result<()> {
    let mut fleet = Fleet::start(datastore_url).await?;
    let m = fleet.material.path().to_owned();
    for (name, key_type) in [
        ("host_ed25519", SshKeyType::Ed25519),
        ("host_ecdsa256", SshKeyType::EcdsaP256),
        ("host_ecdsa384", SshKeyType::EcdsaP384),
        ("host_rsa", SshKeyType::Rsa),
    ] {
        let host = SshHost::new(
            &m,
            name,
            key_type,
            &fleet.ssh_ca,
            &["web1", "web1.example.org"],
            true,
            "-5m:+1h",
        )?;
        let svid = ssh_attest(&fleet, &host, &host.host_key).await?;
        assert_eq!(svid.spiffe_id, host.agent_id(TD)?, "{name}");
        let agent = fleet
            .admin
            .get_agent(GetAgentRequest {
                spiffe_id: svid.spiffe_id.clone(),
            })
            .await?
            .into_inner();
        let mut selectors = agent.selectors.clone();
        selectors.sort();
        let ca_fingerprint = ssh_key::PublicKey::from_openssh(&fleet.ssh_ca.public_line)?
            .fingerprint(ssh_key::HashAlg::Sha256);
        let mut expected = vec![
            "sshpop:principal:web1".to_owned(),
            "sshpop:principal:web1.example.org".to_owned(),
            format!("sshpop:key_id:{name}-id"),
            format!(
                "sshpop:ca:sha256:{}",
                lanyard_host::encoding::hex(ca_fingerprint.as_bytes())
            ),
        ];
        expected.sort();
        assert_eq!(selectors, expected, "{name}");
        assert_eq!(agent.attestation_type, attestation::SSHPOP);
    }

    fleet.server.shutdown().await;
    Ok(())
}

/// An Ed25519 host certified by `ca` (`host` false: a user certificate) for
/// `principals`, valid `validity`; attested with `signer` (its own key when
/// None) and expected refused with `code`, leaving no agent behind.
async fn ssh_refused(
    certify: impl FnOnce(&Fleet) -> anyhow::Result<SshHost>,
    other_signer: bool,
    code: Code,
    what: &str,
) -> anyhow::Result<()> {
    let (_dir, mut fleet) = refusal_fleet().await?;
    let node = certify(&fleet)?;
    let signer = if other_signer {
        let stranger = fleet.material.path().join("stranger");
        lanyard_tests::fleet::ssh_keygen(&stranger, SshKeyType::Ed25519)?;
        stranger
    } else {
        node.host_key.clone()
    };
    let status = assert_refused(ssh_attest(&fleet, &node, &signer).await, &[code], what)?;
    anyhow::ensure!(!status.message().is_empty(), "{what}: no reason given");
    assert_no_agents(&mut fleet).await?;
    fleet.server.shutdown().await;
    Ok(())
}

fn ssh_node(
    fleet: &Fleet,
    ca: Option<&SshCa>,
    host: bool,
    validity: &str,
) -> anyhow::Result<SshHost> {
    SshHost::new(
        fleet.material.path(),
        "node",
        SshKeyType::Ed25519,
        ca.unwrap_or(&fleet.ssh_ca),
        &["web2"],
        host,
        validity,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshpop_refuses_a_user_certificate() -> anyhow::Result<()> {
    ssh_refused(
        |f| ssh_node(f, None, false, "-5m:+1h"),
        false,
        Code::PermissionDenied,
        "user certificate",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshpop_refuses_an_expired_certificate() -> anyhow::Result<()> {
    ssh_refused(
        |f| ssh_node(f, None, true, "20200101:20200102"),
        false,
        Code::PermissionDenied,
        "expired",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshpop_refuses_a_certificate_not_yet_valid() -> anyhow::Result<()> {
    ssh_refused(
        |f| ssh_node(f, None, true, "+1h:+2h"),
        false,
        Code::PermissionDenied,
        "not yet valid",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshpop_refuses_a_certificate_from_an_unlisted_ca() -> anyhow::Result<()> {
    ssh_refused(
        |f| {
            let other = SshCa::new(f.material.path(), "other-ca", SshKeyType::Ed25519)?;
            ssh_node(f, Some(&other), true, "-5m:+1h")
        },
        false,
        Code::PermissionDenied,
        "unlisted CA",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshpop_refuses_a_proof_by_another_key() -> anyhow::Result<()> {
    ssh_refused(
        |f| ssh_node(f, None, true, "-5m:+1h"),
        true,
        Code::PermissionDenied,
        "another key",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshpop_refuses_a_certificate_over_16_kib() -> anyhow::Result<()> {
    ssh_refused(
        |f| {
            // ssh-keygen takes at most 256 principals: 250 of 80 bytes each.
            let principals: Vec<String> = (0..250)
                .map(|i| format!("{i:03}{}", "p".repeat(77)))
                .collect();
            let principals: Vec<&str> = principals.iter().map(String::as_str).collect();
            let big = SshHost::new(
                f.material.path(),
                "big",
                SshKeyType::Ed25519,
                &f.ssh_ca,
                &principals,
                true,
                "-5m:+1h",
            )?;
            anyhow::ensure!(
                ssh_certificate_blob(&big.host_certificate)?.len()
                    > attestation::MAX_SSH_CERTIFICATE_BYTES
            );
            Ok(big)
        },
        false,
        Code::InvalidArgument,
        "a certificate over 16 KiB",
    )
    .await
}
