//! How the agent becomes someone to the server: the SVID stored in its data
//! dir while it is valid, else node attestation (a fresh key pair and a CSR,
//! over TLS that authenticates the server against the configured trust
//! bundle) through the `Attest` stream, with a single-use join token or with
//! what the host already holds (x509pop, sshpop: a signature over the
//! server's challenge); and the trade of a current SVID for a new one.

mod sshpop;
mod stream;
mod x509pop;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_host::private_files::FsError;
use lanyard_proto::TrustDomain;
use lanyard_proto::attestation::{NONCE_LEN, signed_message};
use lanyard_proto::node::node_client::NodeClient;
use lanyard_proto::node::{
    AttestAgentRequest, AttestProof, AttestStart, RenewAgentRequest, attest_proof, attest_start,
};
use rcgen::{CertificateParams, KeyPair};

use super::NodeClientError;
use super::channel::ServerEndpoint;
use super::group::ServerGroup;
use super::identity::AgentCredentials;
use crate::config::{JoinTokenError, NodeAttestation};
use sshpop::SshPop;
use x509pop::X509Pop;

/// Why the agent has no identity towards its server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error(transparent)]
    Node(#[from] NodeClientError),
    #[error(
        "no agent SVID in {0} and no way to attest: give a join token (server.join_token_file, --join-token-file or LANYARD_JOIN_TOKEN) or a host certificate ([server.attestation.x509pop] or [server.attestation.sshpop])"
    )]
    NotAttested(PathBuf),
    #[error("join token: {0}")]
    JoinToken(#[source] JoinTokenError),
    #[error("the agent SVID in {0} has expired and no join token was given to attest again")]
    Expired(PathBuf),
    #[error("the server did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// Why the host's material (x509pop certificate and key, sshpop host key and
/// certificate) cannot serve as evidence, or could not sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    #[error(transparent)]
    File(#[from] FsError),
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no CERTIFICATE block")]
    NoCertificate(PathBuf),
    #[error("{path}: the leaf certificate cannot be parsed: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error(
        "{path}: {certificates} certificates, {bytes} bytes; the server takes at most {} certificates and {} bytes",
        lanyard_proto::attestation::MAX_X509_CHAIN_LEN,
        lanyard_proto::attestation::MAX_X509_CHAIN_BYTES
    )]
    ChainTooLarge {
        path: PathBuf,
        certificates: usize,
        bytes: usize,
    },
    #[error("{0}: no PRIVATE KEY block (PKCS#8, SEC1 EC or PKCS#1 RSA)")]
    NoPrivateKey(PathBuf),
    #[error("{path}: unsupported private key: {source}")]
    UnsupportedKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "{0}: the key fits none of ECDSA P-256/SHA-256, P-384/SHA-384, Ed25519, RSA-PSS/SHA-256, RSA PKCS#1/SHA-256"
    )]
    NoScheme(PathBuf),
    #[error("{key} is not the key of the leaf certificate in {certificate}")]
    KeyNotLeaf { key: PathBuf, certificate: PathBuf },
    #[error("signing the challenge: {0}")]
    Sign(#[source] rustls::Error),
    #[error("{path}: {source}")]
    Ssh {
        path: PathBuf,
        #[source]
        source: ssh_key::Error,
    },
    #[error(
        "{0} is encrypted with a passphrase; the agent needs the host key unencrypted (as sshd keeps it)"
    )]
    EncryptedKey(PathBuf),
    #[error("{0} is a user certificate; sshpop needs a host certificate (ssh-keygen -s … -h)")]
    NotHostCertificate(PathBuf),
    #[error("{certificate} certifies another key than {key}")]
    CertificateNotOfKey { key: PathBuf, certificate: PathBuf },
    #[error(
        "{path}: {bytes} bytes; the server takes SSH certificates of at most {} bytes",
        lanyard_proto::attestation::MAX_SSH_CERTIFICATE_BYTES
    )]
    SshCertificateTooLarge { path: PathBuf, bytes: usize },
    #[error("{path}: {algorithm} keys are not supported (Ed25519, ECDSA P-256/P-384, RSA are)")]
    UnsupportedSshKey { path: PathBuf, algorithm: String },
    #[error("{path}: signing the challenge: {reason}")]
    SshSign { path: PathBuf, reason: String },
}

/// What the host holds to prove itself (x509pop or sshpop), read from disk
/// for one attestation: files are read again at each one, since host
/// certificates rotate on disk.
#[derive(Debug)]
pub struct HostEvidence(Material);

#[derive(Debug)]
enum Material {
    X509Pop(X509Pop),
    SshPop(Box<SshPop>),
}

impl HostEvidence {
    /// Reads and checks the host material `attestation` names; `None` for a
    /// join token, which proves nothing by a signature.
    pub fn load(attestation: &NodeAttestation) -> Result<Option<Self>, EvidenceError> {
        Ok(match attestation {
            NodeAttestation::JoinToken(_) => None,
            NodeAttestation::X509Pop {
                certificate,
                private_key,
            } => Some(Self(Material::X509Pop(X509Pop::load(
                certificate,
                private_key,
            )?))),
            NodeAttestation::SshPop {
                host_key,
                host_certificate,
            } => Some(Self(Material::SshPop(Box::new(SshPop::load(
                host_key,
                host_certificate,
            )?)))),
        })
    }

    /// The method's name (`x509pop`, `sshpop`), as in the signed message.
    pub fn method(&self) -> &'static str {
        match self.0 {
            Material::X509Pop(_) => lanyard_proto::attestation::X509POP,
            Material::SshPop(_) => lanyard_proto::attestation::SSHPOP,
        }
    }

    /// The evidence of [`AttestStart`]: the chain, or the SSH certificate.
    pub fn evidence(&self) -> attest_start::Evidence {
        match &self.0 {
            Material::X509Pop(x509pop) => attest_start::Evidence::X509pop(x509pop.evidence()),
            Material::SshPop(sshpop) => attest_start::Evidence::Sshpop(sshpop.evidence()),
        }
    }

    /// The answer to a challenge: a signature by the host key over
    /// [`signed_message`] of this method, `trust_domain`, `nonce` and the
    /// SHA-256 of the CSR's SubjectPublicKeyInfo.
    pub fn proof(
        &self,
        trust_domain: &TrustDomain,
        nonce: &[u8; NONCE_LEN],
        csr_key_sha256: &[u8; 32],
    ) -> Result<AttestProof, EvidenceError> {
        let message = signed_message(self.method(), trust_domain.as_str(), nonce, csr_key_sha256);
        let proof = match &self.0 {
            Material::X509Pop(x509pop) => attest_proof::Proof::X509pop(x509pop.prove(&message)?),
            Material::SshPop(sshpop) => attest_proof::Proof::Sshsig(sshpop.prove(&message)?),
        };
        Ok(AttestProof { proof: Some(proof) })
    }
}

/// SHA-256 of the SubjectPublicKeyInfo DER of the CSR `csr` (DER): the key
/// the signed message binds, exactly as the server reads it from the CSR.
pub fn csr_key_sha256(csr: &[u8]) -> Result<[u8; 32], NodeClientError> {
    use x509_parser::prelude::FromDer;
    let (_, request) = x509_parser::certification_request::X509CertificationRequest::from_der(csr)
        .map_err(|_| NodeClientError::Protocol("the agent's own CSR does not parse"))?;
    let spki = request.certification_request_info.subject_pki.raw;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    Ok(hash)
}

/// The stored credentials when still valid, else a new attestation with
/// `attestation` (saved before it is used). A stored SVID wins over a token,
/// so restarting with the same config never burns a token twice. An agent
/// that attests with host material also attests again when the stored
/// credentials are damaged. The attestation is given up after `timeout`.
pub(crate) async fn establish(
    servers: &ServerGroup,
    data_dir: &Path,
    trust_domain: &TrustDomain,
    attestation: Option<&NodeAttestation>,
    timeout: Duration,
) -> Result<AgentCredentials, IdentityError> {
    let stored = match AgentCredentials::load(data_dir) {
        Ok(stored) => stored,
        Err(e @ (NodeClientError::Credentials { .. } | NodeClientError::KeyMismatch { .. }))
            if attestation.is_some_and(NodeAttestation::reattests) =>
        {
            tracing::warn!(error = %e, "the stored agent credentials are unusable; attesting again");
            None
        }
        Err(e) => return Err(e.into()),
    };
    match (stored, attestation) {
        (Some(creds), _) if creds.expires_at > lanyard_host::clock::now() => {
            tracing::info!(agent = %creds.spiffe_id, "using the stored agent SVID");
            Ok(creds)
        }
        (stored, Some(attestation)) => {
            let creds = attest_within(servers, trust_domain, attestation, timeout).await?;
            creds.save(data_dir)?;
            let action = if stored.is_some() {
                "re-attested"
            } else {
                "attested"
            };
            match attestation {
                NodeAttestation::JoinToken(_) => {
                    tracing::info!(agent = %creds.spiffe_id, "{action} with a join token")
                }
                other => {
                    tracing::info!(agent = %creds.spiffe_id, method = other.method(), "{action} with the host's certificate")
                }
            }
            Ok(creds)
        }
        (Some(_), None) => Err(IdentityError::Expired(data_dir.to_owned())),
        (None, None) => Err(IdentityError::NotAttested(data_dir.to_owned())),
    }
}

/// [`attest_node`] over any server of `servers`, given up after `timeout`
/// (a server that fails is left for another within it).
pub(crate) async fn attest_within(
    servers: &ServerGroup,
    trust_domain: &TrustDomain,
    attestation: &NodeAttestation,
    timeout: Duration,
) -> Result<AgentCredentials, IdentityError> {
    let attested = tokio::time::timeout(
        timeout,
        attest_over(servers, Some(timeout), trust_domain, attestation),
    )
    .await
    .map_err(|_| IdentityError::Timeout(timeout))?;
    match attested {
        Err(IdentityError::Node(NodeClientError::NoAnswer(_))) => {
            Err(IdentityError::Timeout(timeout))
        }
        other => other,
    }
}

/// A new key pair and a CSR (DER) over it.
fn csr() -> Result<(KeyPair, Vec<u8>), NodeClientError> {
    let key = KeyPair::generate()?;
    let request = CertificateParams::default().serialize_request(&key)?;
    Ok((key, request.der().to_vec()))
}

/// Attests with a single-use join token and returns the agent's first SVID.
/// It goes through the `Attest` stream; a server of an earlier release,
/// which has no such method, is asked with the unary `AttestAgent` instead
/// (it answered `Unimplemented` without looking at the token).
pub async fn attest(
    server: &ServerEndpoint,
    join_token: &str,
) -> Result<AgentCredentials, NodeClientError> {
    attest_with_token(&ServerGroup::single(server), None, join_token).await
}

/// [`attest`] over any server of `servers`, within `budget` when given.
async fn attest_with_token(
    servers: &ServerGroup,
    budget: Option<Duration>,
    join_token: &str,
) -> Result<AgentCredentials, NodeClientError> {
    let (key, csr) = csr()?;
    let start = AttestStart {
        csr: csr.clone(),
        evidence: Some(attest_start::Evidence::JoinToken(join_token.to_owned())),
    };
    let response = servers
        .call(budget, |target| {
            let channel = servers.channel(target, None);
            let (start, csr) = (start.clone(), csr.clone());
            async move {
                let channel = channel?;
                match stream::exchange(channel.clone(), start, |_| {
                    Err(NodeClientError::Protocol(
                        "the server challenged a join token",
                    ))
                })
                .await
                {
                    Err(NodeClientError::Refused(status))
                        if status.code() == tonic::Code::Unimplemented =>
                    {
                        Ok(NodeClient::new(channel)
                            .attest_agent(AttestAgentRequest {
                                join_token: join_token.to_owned(),
                                csr,
                            })
                            .await
                            .map_err(NodeClientError::Refused)?
                            .into_inner())
                    }
                    other => other,
                }
            }
        })
        .await?;
    AgentCredentials::from_response(response, &key)
}

/// Attests as `attestation` says: a join token (read now from its file when
/// it is one), or the host material (read now) answering the server's
/// challenge for `trust_domain`. Returns the agent's new SVID. No deadline:
/// see `attest_within`.
pub async fn attest_node(
    server: &ServerEndpoint,
    trust_domain: &TrustDomain,
    attestation: &NodeAttestation,
) -> Result<AgentCredentials, IdentityError> {
    attest_over(
        &ServerGroup::single(server),
        None,
        trust_domain,
        attestation,
    )
    .await
}

/// [`attest_node`] over any server of `servers`, within `budget` when given.
async fn attest_over(
    servers: &ServerGroup,
    budget: Option<Duration>,
    trust_domain: &TrustDomain,
    attestation: &NodeAttestation,
) -> Result<AgentCredentials, IdentityError> {
    let evidence = match attestation {
        NodeAttestation::JoinToken(token) => {
            let token = token.read().map_err(IdentityError::JoinToken)?;
            return Ok(attest_with_token(servers, budget, &token).await?);
        }
        other => HostEvidence::load(other).map_err(NodeClientError::from)?,
    };
    let Some(evidence) = evidence else {
        return Err(NodeClientError::Protocol("no evidence for this method").into());
    };
    let (key, csr) = csr()?;
    let csr_key = csr_key_sha256(&csr)?;
    let start = AttestStart {
        csr,
        evidence: Some(evidence.evidence()),
    };
    let (evidence, csr_key) = (&evidence, &csr_key);
    let response = servers
        .call(budget, |target| {
            let channel = servers.channel(target, None);
            let start = start.clone();
            async move {
                stream::exchange(channel?, start, |nonce| {
                    Ok(evidence.proof(trust_domain, nonce, csr_key)?)
                })
                .await
            }
        })
        .await
        .map_err(NodeClientError::from)?;
    Ok(AgentCredentials::from_response(response, &key)?)
}

/// Trades the current SVID for a new one over a new key.
pub async fn renew(
    server: &ServerEndpoint,
    current: &AgentCredentials,
) -> Result<AgentCredentials, NodeClientError> {
    let servers = ServerGroup::single(server);
    servers.learn_svid_bundle(&current.bundle);
    renew_over(&servers, None, current).await
}

/// [`renew`] over any server of `servers`, within `budget` when given: the
/// server accepts the current SVID until the new one is used, so a renewal
/// whose answer was lost may be asked again elsewhere.
pub(crate) async fn renew_over(
    servers: &ServerGroup,
    budget: Option<Duration>,
    current: &AgentCredentials,
) -> Result<AgentCredentials, NodeClientError> {
    let (key, csr) = csr()?;
    let response = servers
        .call(budget, |target| {
            let channel = servers.channel(target, Some(current));
            let csr = csr.clone();
            async move {
                Ok(NodeClient::new(channel?)
                    .renew_agent(RenewAgentRequest { csr })
                    .await
                    .map_err(NodeClientError::Refused)?
                    .into_inner())
            }
        })
        .await?;
    AgentCredentials::from_response(response, &key)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::upstream::test_node::{AttestStream, NodeScript, Scripted};
    use futures::StreamExt as _;
    use lanyard_proto::attestation::{SSHPOP, X509POP};
    use lanyard_proto::node::node_server::NodeServer;
    use lanyard_proto::node::{
        AgentSvidResponse, AttestRequest, AttestResponse, Challenge, attest_request,
        attest_response,
    };
    use rcgen::{BasicConstraints, IsCa, Issuer, PublicKeyData};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::sync::Arc;
    use tonic::{Request, Response, Status, Streaming};

    type TestResult = Result<(), Box<dyn std::error::Error>>;
    const TD: &str = "example.org";
    const NONCE: [u8; NONCE_LEN] = [7; NONCE_LEN];

    /// A Node API that checks attestations as the real server does (the
    /// signed message rebuilt from its own nonce and the CSR's key) and
    /// answers with a placeholder SVID naming the method; `attest` is
    /// `Unimplemented` when `old` (a server of an earlier release).
    struct TestNode {
        old: bool,
        dir: PathBuf,
    }

    fn svid(method: &str) -> AgentSvidResponse {
        AgentSvidResponse {
            spiffe_id: format!("spiffe://{TD}/lanyard/agent/{method}/x"),
            svid: vec![1],
            bundle: vec![vec![2]],
            expires_at: 1,
        }
    }

    /// Checks `proof` for `start`, as the server would.
    fn check(dir: &Path, start: &AttestStart, proof: AttestProof) -> Result<&'static str, Status> {
        let denied = |what: &str| Status::permission_denied(what.to_owned());
        let key = csr_key_sha256(&start.csr).map_err(|_| denied("csr"))?;
        match (&start.evidence, proof.proof) {
            (
                Some(attest_start::Evidence::X509pop(chain)),
                Some(attest_proof::Proof::X509pop(p)),
            ) => {
                let message = signed_message(X509POP, TD, &NONCE, &key);
                x509pop::tests::verify(&chain.chain[0], &message, &p)
                    .map_err(|_| denied("x509pop signature"))?;
                Ok(X509POP)
            }
            (Some(attest_start::Evidence::Sshpop(_)), Some(attest_proof::Proof::Sshsig(sig))) => {
                let message = signed_message(SSHPOP, TD, &NONCE, &key);
                let accepted =
                    sshpop::tests::ssh_keygen_accepts(dir, &dir.join("host.pub"), &sig, &message)
                        .map_err(|_| denied("ssh-keygen"))?;
                accepted.then_some(SSHPOP).ok_or_else(|| denied("sshsig"))
            }
            _ => Err(denied("proof of another method")),
        }
    }

    #[tonic::async_trait]
    impl NodeScript for TestNode {
        async fn attest_agent(
            &self,
            request: Request<AttestAgentRequest>,
        ) -> Result<Response<AgentSvidResponse>, Status> {
            match request.into_inner().join_token.as_str() {
                "good" => Ok(Response::new(svid("join_token"))),
                _ => Err(Status::permission_denied("unknown join token")),
            }
        }

        async fn attest(
            &self,
            request: Request<Streaming<AttestRequest>>,
        ) -> Result<Response<AttestStream>, Status> {
            if self.old {
                return Err(Status::unimplemented("no Attest"));
            }
            let mut requests = request.into_inner();
            let (answers, stream) = futures::channel::mpsc::unbounded();
            let dir = self.dir.clone();
            tokio::spawn(async move {
                let step = |s| Ok(AttestResponse { step: Some(s) });
                let Some(Ok(AttestRequest {
                    step: Some(attest_request::Step::Start(start)),
                })) = requests.next().await
                else {
                    let _ = answers.unbounded_send(Err(Status::invalid_argument("no start")));
                    return;
                };
                if let Some(attest_start::Evidence::JoinToken(token)) = &start.evidence {
                    let _ = answers.unbounded_send(if token == "good" {
                        step(attest_response::Step::Svid(svid("join_token")))
                    } else {
                        Err(Status::permission_denied("unknown join token"))
                    });
                    return;
                }
                let _ = answers.unbounded_send(step(attest_response::Step::Challenge(Challenge {
                    nonce: NONCE.to_vec(),
                    expires_at: 0,
                })));
                let answer = match requests.next().await {
                    Some(Ok(AttestRequest {
                        step: Some(attest_request::Step::Proof(proof)),
                    })) => check(&dir, &start, proof)
                        .and_then(|method| step(attest_response::Step::Svid(svid(method)))),
                    _ => Err(Status::invalid_argument("no proof")),
                };
                let _ = answers.unbounded_send(answer);
            });
            Ok(Response::new(Box::pin(stream)))
        }
    }

    /// Serves `node` over TLS (a certificate for `lanyard-server` from a
    /// new CA) on a local port; the endpoint trusts that CA.
    pub(crate) async fn serve<N: NodeScript>(
        node: N,
    ) -> Result<ServerEndpoint, Box<dyn std::error::Error>> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![super::super::SERVER_NAME.to_owned()])?
            .signed_by(&key, &issuer)?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let incoming =
            futures::stream::unfold((listener, acceptor), |(listener, acceptor)| async move {
                let accepted = match listener.accept().await {
                    Ok((tcp, _)) => acceptor
                        .accept(tcp)
                        .await
                        .map(|tls| lanyard_host::transport::Accepted::new(tls, ())),
                    Err(e) => Err(e),
                };
                Some((accepted, (listener, acceptor)))
            });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(NodeServer::new(Scripted(node)))
                .serve_with_incoming(incoming),
        );
        Ok(ServerEndpoint {
            address,
            trust_bundle: vec![CertificateDer::from(ca.der().to_vec())],
        })
    }

    fn td() -> TrustDomain {
        TrustDomain::new(TD).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn the_csr_key_hash_is_that_of_the_keys_subject_public_key_info() -> TestResult {
        let (key, csr) = csr()?;
        let expected =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key.subject_public_key_info());
        assert_eq!(csr_key_sha256(&csr)?.as_slice(), expected.as_ref());
        assert!(csr_key_sha256(b"not a CSR").is_err());
        Ok(())
    }

    #[tokio::test]
    async fn x509pop_answers_the_challenge_over_the_attest_stream() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (certificate, private_key) =
            x509pop::tests::rcgen_material(dir.path(), &rcgen::PKCS_ECDSA_P256_SHA256)?;
        let server = serve(TestNode {
            old: false,
            dir: dir.path().to_owned(),
        })
        .await?;
        let attestation = NodeAttestation::X509Pop {
            certificate,
            private_key,
        };
        let creds = attest_within(
            &ServerGroup::single(&server),
            &td(),
            &attestation,
            Duration::from_secs(10),
        )
        .await?;
        assert!(creds.spiffe_id.as_str().contains("/x509pop/"), "{creds:?}");
        // Signed for another trust domain: refused.
        let other = TrustDomain::new("other.org")?;
        let refused = attest_node(&server, &other, &attestation).await;
        assert!(
            matches!(&refused, Err(IdentityError::Node(NodeClientError::Refused(s))) if s.code() == tonic::Code::PermissionDenied),
            "{refused:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn sshpop_answers_the_challenge_over_the_attest_stream() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (host_key, host_certificate) =
            sshpop::tests::host_material(dir.path(), &["-t", "ecdsa", "-b", "256"])?;
        let server = serve(TestNode {
            old: false,
            dir: dir.path().to_owned(),
        })
        .await?;
        let attestation = NodeAttestation::SshPop {
            host_key,
            host_certificate,
        };
        let creds = attest_within(
            &ServerGroup::single(&server),
            &td(),
            &attestation,
            Duration::from_secs(10),
        )
        .await?;
        assert!(creds.spiffe_id.as_str().contains("/sshpop/"), "{creds:?}");
        Ok(())
    }

    #[tokio::test]
    async fn join_tokens_go_through_attest_and_fall_back_on_older_servers() -> TestResult {
        let dir = tempfile::tempdir()?;
        for old in [false, true] {
            let server = serve(TestNode {
                old,
                dir: dir.path().to_owned(),
            })
            .await?;
            let creds = attest(&server, "good").await?;
            assert!(creds.spiffe_id.as_str().contains("/join_token/"));
            let refused = attest(&server, "bad").await;
            assert!(
                matches!(&refused, Err(NodeClientError::Refused(s)) if s.code() == tonic::Code::PermissionDenied),
                "old={old}: {refused:?}"
            );
        }
        Ok(())
    }

    /// An attestation that cannot reach the first server of a group goes
    /// to the next one; a refusal is not asked elsewhere.
    #[tokio::test]
    async fn attestation_fails_over_to_a_live_server() -> TestResult {
        let dir = tempfile::tempdir()?;
        let live = serve(TestNode {
            old: false,
            dir: dir.path().to_owned(),
        })
        .await?;
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?
            .to_string();
        let servers = ServerGroup::with_roots(
            vec![dead.clone(), live.address.clone()],
            live.trust_bundle.clone(),
            0,
        );
        let token = NodeAttestation::JoinToken(crate::config::JoinToken::Value("good".into()));
        let creds = attest_within(&servers, &td(), &token, Duration::from_secs(10)).await?;
        assert!(creds.spiffe_id.as_str().contains("/join_token/"));
        assert!(servers.is_avoided(&dead.parse()?));
        let bad = NodeAttestation::JoinToken(crate::config::JoinToken::Value("bad".into()));
        let refused = attest_within(&servers, &td(), &bad, Duration::from_secs(10)).await;
        assert!(
            matches!(&refused, Err(IdentityError::Node(NodeClientError::Refused(s))) if s.code() == tonic::Code::PermissionDenied),
            "{refused:?}"
        );
        assert!(!servers.is_avoided(&live.address.parse()?));
        Ok(())
    }

    /// Host material that cannot serve fails before anything is sent.
    #[tokio::test]
    async fn unusable_host_material_fails_with_its_reason() -> TestResult {
        let dir = tempfile::tempdir()?;
        let server = ServerEndpoint {
            address: "127.0.0.1:9".to_owned(),
            trust_bundle: Vec::new(),
        };
        let attestation = NodeAttestation::X509Pop {
            certificate: dir.path().join("missing.pem"),
            private_key: dir.path().join("missing.key"),
        };
        let err = attest_node(&server, &td(), &attestation)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::Node(NodeClientError::Evidence(EvidenceError::Unreadable { .. }))
            ),
            "{err}"
        );
        assert!(err.to_string().contains("missing.pem"), "{err}");
        Ok(())
    }
}
