//! `Node.Attest`: node attestation by challenge and response on one stream.
//!
//! Each stream takes, as it opens and before anything is read, an
//! in-progress slot for the peer's address (at most 4 × `max_pending_per_peer`
//! streams at once, join tokens included; 32 by default), held until the
//! stream's task ends. The server waits (10 s at most) for the start (a CSR and the evidence),
//! checks the CSR and the evidence, refuses a banned agent, takes a pending
//! slot for the peer's address (at most `max_pending_per_peer` challenges
//! open at once), sends a fresh nonce and waits for the answer until the
//! challenge expires; only a signature by the evidence's
//! key over the nonce, the method, the trust domain and the CSR's key earns
//! the agent SVID, which ends no later than the evidence (the host
//! certificate) does. The nonce lives in this stream's task alone: it cannot be
//! answered twice, nor on another stream. Join tokens take the same stream
//! without a challenge, and share their code with the unary `AttestAgent`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use futures::{Stream, StreamExt};
use lanyard_host::clock::unix_seconds;
use lanyard_proto::SpiffeId;
use lanyard_proto::node::attest_proof::Proof as WireProof;
use lanyard_proto::node::attest_request::Step;
use lanyard_proto::node::attest_response::Step as ResponseStep;
use lanyard_proto::node::attest_start::Evidence as WireEvidence;
use lanyard_proto::node::{
    AgentSvidResponse, AttestProof, AttestRequest, AttestResponse, AttestStart, Challenge,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::audit;
use crate::authority::Authority;
use crate::authority::bundle::TrustBundle;
use crate::authority::ca::{self, CertificateAuthority};
use crate::authority::node_attestation::{
    self, AttestError, Evidence, NodeAttestors, Proof, Verified, challenge,
};
use crate::authority::registry::RegistryError;
use crate::telemetry::AttestMethod;
use lanyard_proto::attestation::JOIN_TOKEN;

/// How long a new stream may stay silent before its start.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message the Node API decodes (a chain is at most 64 KiB).
pub(crate) const MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// The responses of one `Attest` stream.
pub(crate) type AttestStream =
    Pin<Box<dyn Stream<Item = Result<AttestResponse, Status>> + Send + 'static>>;

/// What an attestation needs, cloned into the stream's task.
#[derive(Debug, Clone)]
pub(super) struct Attestation {
    pub(super) authority: Arc<Authority>,
    pub(super) ca: Arc<CertificateAuthority>,
    pub(super) bundle: Arc<TrustBundle>,
    pub(super) attestors: Arc<NodeAttestors>,
    pub(super) local_agent_id: SpiffeId,
    pub(super) agent_svid_ttl: Duration,
}

/// The one audit line of a refused attestation, and the status the node gets.
fn refuse(remote: SocketAddr, agent: Option<&SpiffeId>, code: Code, reason: &str) -> Status {
    audit::attestation_refused(remote, agent, None, None, reason);
    Status::new(code, format!("attestation refused: {reason}"))
}

/// [`refuse`] for a join token: the audit record names the method and the
/// token's fingerprint (never the token).
fn refuse_token(remote: SocketAddr, token: &str, code: Code, reason: &str) -> Status {
    audit::attestation_refused(remote, None, Some(JOIN_TOKEN), Some(token), reason);
    Status::new(code, format!("attestation refused: {reason}"))
}

fn attest_status(remote: SocketAddr, agent: Option<&SpiffeId>, error: &AttestError) -> Status {
    let code = match error {
        AttestError::Malformed(_) => Code::InvalidArgument,
        AttestError::NotConfigured(_) => Code::FailedPrecondition,
        _ => Code::PermissionDenied,
    };
    refuse(remote, agent, code, &error.to_string())
}

/// The next message, as `Streaming::message` gives it.
async fn next<S>(inbound: &mut S) -> Result<Option<AttestRequest>, Status>
where
    S: Stream<Item = Result<AttestRequest, Status>> + Unpin,
{
    inbound.next().await.transpose()
}

/// SHA-256 of the CSR's SubjectPublicKeyInfo (the CSR was checked before).
fn csr_key_sha256(csr: &[u8]) -> Option<[u8; 32]> {
    let (_, request) = X509CertificationRequest::from_der(csr).ok()?;
    let hash = digest::digest(
        &digest::SHA256,
        request.certification_request_info.subject_pki.raw,
    );
    hash.as_ref().try_into().ok()
}

impl Attestation {
    /// The responses of an `Attest` stream from `remote`, served by its own task.
    pub(super) fn open<S>(self, remote: SocketAddr, inbound: S) -> Result<AttestStream, Status>
    where
        S: Stream<Item = Result<AttestRequest, Status>> + Send + Unpin + 'static,
    {
        // Held until this stream's task ends, before the start is read.
        let slot = self
            .attestors
            .in_progress()
            .acquire(remote.ip())
            .map_err(|e| refuse(remote, None, Code::ResourceExhausted, &e.to_string()))
            .inspect_err(|status| {
                self.authority
                    .metrics()
                    .attestation_ended(AttestMethod::Unknown, Some(status))
            })?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut method = AttestMethod::Unknown;
            let result = self.run(remote, inbound, &tx, &mut method).await;
            self.authority.metrics().attestation(method, &result);
            // Given back before the refusal goes out: a node that reads it
            // may open a stream again at once.
            drop(slot);
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn run<S>(
        &self,
        remote: SocketAddr,
        mut inbound: S,
        tx: &mpsc::Sender<Result<AttestResponse, Status>>,
        method: &mut AttestMethod,
    ) -> Result<(), Status>
    where
        S: Stream<Item = Result<AttestRequest, Status>> + Unpin,
    {
        let start = match tokio::time::timeout(START_TIMEOUT, next(&mut inbound)).await {
            Err(_) => {
                return Err(refuse(
                    remote,
                    None,
                    Code::DeadlineExceeded,
                    "no start within 10 seconds",
                ));
            }
            Ok(Err(status)) => {
                return Err(refuse(remote, None, status.code(), status.message()));
            }
            Ok(Ok(None)) => {
                return Err(refuse(
                    remote,
                    None,
                    Code::InvalidArgument,
                    "the stream ended before its start",
                ));
            }
            Ok(Ok(Some(AttestRequest {
                step: Some(Step::Start(start)),
            }))) => start,
            Ok(Ok(Some(_))) => {
                return Err(refuse(
                    remote,
                    None,
                    Code::InvalidArgument,
                    "the first message must be a start",
                ));
            }
        };
        let AttestStart { csr, evidence } = start;
        let evidence = match &evidence {
            None => {
                return Err(refuse(
                    remote,
                    None,
                    Code::InvalidArgument,
                    "the start names no evidence",
                ));
            }
            Some(WireEvidence::JoinToken(token)) => {
                *method = AttestMethod::JoinToken;
                let svid = self.attest_with_join_token(remote, &csr, token).await?;
                let _ = tx
                    .send(Ok(AttestResponse {
                        step: Some(ResponseStep::Svid(svid)),
                    }))
                    .await;
                return Ok(());
            }
            Some(WireEvidence::X509pop(x509pop)) => {
                *method = AttestMethod::X509Pop;
                Evidence::X509Pop {
                    chain: &x509pop.chain,
                }
            }
            Some(WireEvidence::Sshpop(sshpop)) => {
                *method = AttestMethod::SshPop;
                Evidence::SshPop {
                    certificate: &sshpop.certificate,
                }
            }
        };
        ca::check_csr(&csr)
            .map_err(|e| refuse(remote, None, Code::InvalidArgument, &e.to_string()))?;
        let csr_key = csr_key_sha256(&csr).ok_or_else(|| {
            refuse(
                remote,
                None,
                Code::InvalidArgument,
                "the CSR's public key does not parse",
            )
        })?;
        let verified = self
            .attestors
            .verify_evidence(evidence, SystemTime::now())
            .map_err(|e| attest_status(remote, None, &e))?;
        let agent = verified.agent_id.clone();
        self.check_admissible(remote, &verified).await?;

        // Held until this stream's task ends: an unanswered challenge counts
        // against its peer's address.
        let _slot = self.attestors.pending().acquire(remote.ip()).map_err(|e| {
            refuse(
                remote,
                Some(&agent),
                Code::ResourceExhausted,
                &e.to_string(),
            )
        })?;
        let nonce = challenge::nonce().map_err(|_| {
            refuse(
                remote,
                Some(&agent),
                Code::Internal,
                "no randomness available",
            )
        })?;
        let ttl = self.attestors.challenge_ttl();
        let deadline = tokio::time::Instant::now() + ttl;
        let expires_at = unix_seconds(SystemTime::now() + ttl);
        let challenge = AttestResponse {
            step: Some(ResponseStep::Challenge(Challenge {
                nonce: nonce.to_vec(),
                expires_at,
            })),
        };
        if tx.send(Ok(challenge)).await.is_err() {
            return Ok(()); // the node left
        }
        let wire_proof = match tokio::time::timeout_at(deadline, next(&mut inbound)).await {
            Err(_) => {
                return Err(refuse(
                    remote,
                    Some(&agent),
                    Code::PermissionDenied,
                    "the challenge expired before its answer",
                ));
            }
            Ok(Err(status)) => {
                return Err(refuse(
                    remote,
                    Some(&agent),
                    status.code(),
                    status.message(),
                ));
            }
            Ok(Ok(None)) => {
                return Err(refuse(
                    remote,
                    Some(&agent),
                    Code::InvalidArgument,
                    "the stream ended before the answer",
                ));
            }
            Ok(Ok(Some(AttestRequest {
                step: Some(Step::Proof(AttestProof { proof: Some(proof) })),
            }))) => proof,
            Ok(Ok(Some(_))) => {
                return Err(refuse(
                    remote,
                    Some(&agent),
                    Code::InvalidArgument,
                    "the answer to the challenge (a proof) was expected",
                ));
            }
        };
        let proof = match &wire_proof {
            WireProof::X509pop(x509pop) => Proof::X509Pop {
                scheme: x509pop.scheme,
                signature: &x509pop.signature,
            },
            WireProof::Sshsig(sshsig) => Proof::SshPop { sshsig },
        };
        let now = SystemTime::now();
        if unix_seconds(now) > expires_at {
            return Err(refuse(
                remote,
                Some(&agent),
                Code::PermissionDenied,
                "the challenge expired before its answer",
            ));
        }
        self.attestors
            .verify_proof(&verified, proof, &nonce, &csr_key, now)
            .map_err(|e| attest_status(remote, Some(&agent), &e))?;

        // The identity never outlives the evidence it was earned with.
        let ttl = node_attestation::agent_svid_ttl(self.agent_svid_ttl, verified.valid_until, now);
        let issued = self
            .ca
            .issue_agent_svid(&csr, &agent, ttl, now)
            .map_err(super::csr_status)?;
        self.authority
            .registry()
            .attest_node(
                &agent,
                &issued.serial,
                verified.method,
                &verified.selectors,
                verified.valid_until,
            )
            .await
            .map_err(|e| match e {
                RegistryError::Conflict(message) => {
                    refuse(remote, Some(&agent), Code::PermissionDenied, &message)
                }
                other => super::unavailable(other),
            })?;
        audit::agent_attested(
            remote,
            &agent,
            verified.method,
            &issued.serial,
            verified.selectors.len(),
            None,
        );
        let svid = super::svid_response(&self.bundle, &agent, issued);
        let _ = tx
            .send(Ok(AttestResponse {
                step: Some(ResponseStep::Svid(svid)),
            }))
            .await;
        Ok(())
    }

    /// Refuses, before any challenge, an agent that may not attest: a banned
    /// one, or evidence that would make a node the local agent.
    async fn check_admissible(
        &self,
        remote: SocketAddr,
        verified: &Verified,
    ) -> Result<(), Status> {
        let agent = &verified.agent_id;
        if *agent == self.local_agent_id {
            return Err(refuse(
                remote,
                Some(agent),
                Code::PermissionDenied,
                "the evidence names the local agent's ID",
            ));
        }
        match self.authority.registry().get_agent(agent).await {
            Ok(record) if record.banned => Err(attest_status(
                remote,
                Some(agent),
                &AttestError::Banned(agent.clone()),
            )),
            Ok(_) | Err(RegistryError::NotFound { .. }) => Ok(()),
            Err(e) => Err(super::unavailable(e)),
        }
    }

    /// Spends `token` for an agent SVID of the key in `csr`: the unary
    /// `AttestAgent` and the `Attest` stream both come here.
    pub(super) async fn attest_with_join_token(
        &self,
        remote: SocketAddr,
        csr: &[u8],
        token: &str,
    ) -> Result<AgentSvidResponse, Status> {
        if token.is_empty() {
            return Err(refuse_token(
                remote,
                token,
                Code::InvalidArgument,
                "join_token is required",
            ));
        }
        // A CSR that cannot be signed is refused while the token is still
        // unspent, so the agent can retry with a good one.
        ca::check_csr(csr).map_err(|e| match e {
            ca::CaError::BadCsr(_) => {
                refuse_token(remote, token, Code::InvalidArgument, &e.to_string())
            }
            other => super::csr_status(other),
        })?;
        let registry = self.authority.registry();
        let agent_id = match registry
            .redeem_join_token(token)
            .await
            .map_err(super::unavailable)?
        {
            Ok(id) => id,
            Err(reason) => {
                return Err(refuse_token(
                    remote,
                    token,
                    Code::PermissionDenied,
                    &reason.to_string(),
                ));
            }
        };
        // Tokens made before IDs under /lanyard/ were refused could name the
        // local agent: a remote node must never become it.
        if agent_id == self.local_agent_id {
            return Err(refuse_token(
                remote,
                token,
                Code::PermissionDenied,
                "the join token names the local agent's ID",
            ));
        }
        // The token is spent either way: a failure below needs a new token,
        // which is what an operator would expect of a single-use secret.
        let issued = self
            .ca
            .issue_agent_svid(csr, &agent_id, self.agent_svid_ttl, SystemTime::now())
            .map_err(super::csr_status)?;
        registry
            .attest_agent(&agent_id, &issued.serial)
            .await
            .map_err(|e| match e {
                RegistryError::Conflict(message) => {
                    audit::attestation_refused(
                        remote,
                        Some(&agent_id),
                        Some(JOIN_TOKEN),
                        Some(token),
                        &message,
                    );
                    Status::permission_denied(message)
                }
                other => super::unavailable(other),
            })?;
        audit::agent_attested(
            remote,
            &agent_id,
            JOIN_TOKEN,
            &issued.serial,
            0,
            Some(token),
        );
        Ok(super::svid_response(&self.bundle, &agent_id, issued))
    }
}

#[cfg(test)]
mod tests {
    //! The stream handler end to end (evidence, challenge, proof, SVID, the
    //! record), fed by a channel in place of the HTTP/2 stream.

    use lanyard_proto::TrustDomain;
    use lanyard_proto::attestation::{X509POP, signed_message};
    use lanyard_proto::node::{X509PopEvidence, X509PopProof};
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, PublicKeyData, SigningKey,
    };

    use super::*;
    use crate::authority::Issuer as OidcIssuer;
    use crate::config::{NodeAttestationConfig, X509PopConfig};
    use crate::keys::{KeyManager, KeyType, RotationPolicy};
    use crate::store::Datastore;

    type Inbound = mpsc::Sender<Result<AttestRequest, Status>>;

    struct Node {
        chain: Vec<Vec<u8>>,
        key: KeyPair,
    }

    async fn setup(
        dir: &std::path::Path,
        ttl: Duration,
        max_pending: usize,
    ) -> Result<(Attestation, Node), Box<dyn std::error::Error>> {
        setup_with(dir, ttl, max_pending, |_| {}).await
    }

    /// As [`setup`], the node's leaf changed by `tweak`.
    async fn setup_with(
        dir: &std::path::Path,
        ttl: Duration,
        max_pending: usize,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Result<(Attestation, Node), Box<dyn std::error::Error>> {
        let td = TrustDomain::new("example.org")?;
        let store = Datastore::open_sqlite(&dir.join("db.sqlite")).await?;
        let policy = RotationPolicy::with_max_token_ttl(Duration::from_secs(3600));
        let now = unix_seconds(SystemTime::now());
        let keys = KeyManager::open(
            store.clone(),
            &dir.join("keys"),
            "test",
            policy,
            KeyType::EcP256,
            now,
        )
        .await?;
        let authority = Authority::new(
            td.clone(),
            OidcIssuer::parse("https://issuer.example.org")?,
            Arc::new(keys),
            store,
            Duration::from_secs(3600),
        );
        let ca = Arc::new(CertificateAuthority::load_or_generate(
            &dir.join("ca"),
            &td,
            SystemTime::now(),
        )?);

        let root_key = KeyPair::generate()?;
        let mut root = CertificateParams::new(Vec::<String>::new())?;
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root_der = root.self_signed(&root_key)?.der().clone();
        let issuer = Issuer::new(root, root_key);
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec!["web-1.example.org".to_owned()])?;
        leaf.distinguished_name
            .push(DnType::OrganizationalUnitName, "web");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        tweak(&mut leaf);
        let leaf_der = leaf.signed_by(&key, &issuer)?.der().to_vec();

        let config = NodeAttestationConfig {
            challenge_ttl: ttl,
            max_pending_per_peer: max_pending,
            x509pop: Some(X509PopConfig {
                ca_bundle: vec![root_der],
                intermediates: Vec::new(),
                crls: Vec::new(),
            }),
            sshpop: None,
        };
        let attestation = Attestation {
            authority: Arc::new(authority),
            bundle: Arc::new(crate::authority::bundle::TrustBundle::local(ca.clone())),
            ca,
            attestors: Arc::new(NodeAttestors::new(td, &config)?),
            local_agent_id: TrustDomain::new("example.org")?
                .id_with_path("/lanyard/agent/local")?,
            agent_svid_ttl: Duration::from_secs(600),
        };
        Ok((
            attestation,
            Node {
                chain: vec![leaf_der],
                key,
            },
        ))
    }

    fn remote() -> SocketAddr {
        "192.0.2.7:4000".parse().unwrap()
    }

    /// A CSR and the SHA-256 of its key, computed apart from the server's code.
    fn csr() -> (Vec<u8>, [u8; 32]) {
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        let hash = digest::digest(&digest::SHA256, &key.subject_public_key_info());
        (csr, hash.as_ref().try_into().unwrap())
    }

    fn open(attestation: &Attestation) -> Result<(Inbound, AttestStream), Status> {
        let (tx, rx) = mpsc::channel(4);
        let stream = attestation
            .clone()
            .open(remote(), ReceiverStream::new(rx))?;
        Ok((tx, stream))
    }

    fn start(node: &Node, csr: &[u8]) -> AttestRequest {
        AttestRequest {
            step: Some(Step::Start(AttestStart {
                csr: csr.to_vec(),
                evidence: Some(WireEvidence::X509pop(X509PopEvidence {
                    chain: node.chain.clone(),
                })),
            })),
        }
    }

    fn proof(node: &Node, nonce: &[u8], csr_key: &[u8; 32]) -> AttestRequest {
        let nonce: [u8; 32] = nonce.try_into().unwrap();
        let message = signed_message(X509POP, "example.org", &nonce, csr_key);
        AttestRequest {
            step: Some(Step::Proof(AttestProof {
                proof: Some(WireProof::X509pop(X509PopProof {
                    scheme: 0x0403,
                    signature: node.key.sign(&message).unwrap(),
                })),
            })),
        }
    }

    async fn challenge(stream: &mut AttestStream) -> Vec<u8> {
        match stream.next().await {
            Some(Ok(AttestResponse {
                step: Some(ResponseStep::Challenge(challenge)),
            })) => challenge.nonce,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    async fn refusal(stream: &mut AttestStream) -> Status {
        match stream.next().await {
            Some(Err(status)) => status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn x509pop_attests_once_per_challenge() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (attestation, node) = setup(dir.path(), Duration::from_secs(30), 8).await?;
        let (csr, csr_key) = csr();

        let (tx, mut stream) = open(&attestation)?;
        tx.send(Ok(start(&node, &csr))).await?;
        let nonce = challenge(&mut stream).await;
        assert_eq!(nonce.len(), 32);
        let answer = proof(&node, &nonce, &csr_key);
        tx.send(Ok(answer.clone())).await?;
        let svid = match stream.next().await {
            Some(Ok(AttestResponse {
                step: Some(ResponseStep::Svid(svid)),
            })) => svid,
            other => panic!("expected the SVID, got {other:?}"),
        };
        assert!(
            svid.spiffe_id
                .starts_with("spiffe://example.org/lanyard/agent/x509pop/")
        );
        let id = SpiffeId::parse(&svid.spiffe_id)?;
        let record = attestation.authority.registry().get_agent(&id).await?;
        assert_eq!(record.attestation_type, "x509pop");
        assert!(
            record
                .selectors
                .iter()
                .any(|s| s.to_string() == "x509pop:subject:ou:web")
        );

        // The same answer on a new stream (a replay) is refused.
        let (tx, mut stream) = open(&attestation)?;
        tx.send(Ok(start(&node, &csr))).await?;
        let _ = challenge(&mut stream).await;
        tx.send(Ok(answer)).await?;
        assert_eq!(refusal(&mut stream).await.code(), Code::PermissionDenied);

        // A second start where the answer belongs.
        let (tx, mut stream) = open(&attestation)?;
        tx.send(Ok(start(&node, &csr))).await?;
        let _ = challenge(&mut stream).await;
        tx.send(Ok(start(&node, &csr))).await?;
        assert_eq!(refusal(&mut stream).await.code(), Code::InvalidArgument);

        // Banned: refused before any challenge.
        attestation.authority.registry().ban_agent(&id).await?;
        let (tx, mut stream) = open(&attestation)?;
        tx.send(Ok(start(&node, &csr))).await?;
        let status = refusal(&mut stream).await;
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.message().contains("banned"), "{status:?}");
        Ok(())
    }

    #[tokio::test]
    async fn late_answers_and_too_many_open_challenges_are_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        // Challenges of 1 s, at most 2 open per peer address.
        let (attestation, node) = setup(dir.path(), Duration::from_secs(1), 2).await?;
        let (csr, csr_key) = csr();
        let (tx, mut stream) = open(&attestation)?;
        tx.send(Ok(start(&node, &csr))).await?;
        let nonce = challenge(&mut stream).await;
        let (held_tx, mut held) = open(&attestation)?;
        held_tx.send(Ok(start(&node, &csr))).await?;
        challenge(&mut held).await;
        // A third start while two challenges are open: refused at its challenge.
        let (third_tx, mut third) = open(&attestation)?;
        third_tx.send(Ok(start(&node, &csr))).await?;
        assert_eq!(refusal(&mut third).await.code(), Code::ResourceExhausted);
        // The first challenge expires unanswered; its refusal comes after its
        // slot is given back, so a new challenge is granted at once.
        let status = refusal(&mut stream).await;
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.message().contains("expired"), "{status:?}");
        let _ = tx.send(Ok(proof(&node, &nonce, &csr_key))).await;
        let (again_tx, mut again) = open(&attestation)?;
        again_tx.send(Ok(start(&node, &csr))).await?;
        challenge(&mut again).await;
        Ok(())
    }

    #[tokio::test]
    async fn join_tokens_take_the_stream_without_a_challenge()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (attestation, _) = setup(dir.path(), Duration::from_secs(30), 8).await?;
        let registry = attestation.authority.registry();
        let token = registry
            .create_join_token(&TrustDomain::new("example.org")?, None, 600)
            .await?;
        let (csr, _) = csr();
        let (tx, mut stream) = open(&attestation)?;
        tx.send(Ok(AttestRequest {
            step: Some(Step::Start(AttestStart {
                csr,
                evidence: Some(WireEvidence::JoinToken(token.token)),
            })),
        }))
        .await?;
        match stream.next().await {
            Some(Ok(AttestResponse {
                step: Some(ResponseStep::Svid(svid)),
            })) => assert_eq!(svid.spiffe_id, token.spiffe_id.to_string()),
            other => panic!("expected the SVID, got {other:?}"),
        }
        // sshpop is not configured on this server.
        let (tx, mut stream) = open(&attestation)?;
        tx.send(Ok(AttestRequest {
            step: Some(Step::Start(AttestStart {
                csr: csr_of_nothing(),
                evidence: Some(WireEvidence::Sshpop(lanyard_proto::node::SshPopEvidence {
                    certificate: Vec::new(),
                })),
            })),
        }))
        .await?;
        assert_eq!(refusal(&mut stream).await.code(), Code::FailedPrecondition);
        Ok(())
    }

    /// Review of issue 13: a host certificate that ends before
    /// `agent_svid_ttl` (600 s) cuts the agent SVID short, and the record
    /// keeps its end for renewals.
    #[tokio::test]
    async fn the_agent_svid_ends_with_the_host_certificate()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(120);
        let (attestation, node) = setup_with(dir.path(), Duration::from_secs(30), 8, |leaf| {
            leaf.not_after = not_after;
        })
        .await?;
        let (csr, csr_key) = csr();
        let (tx, mut stream) = open(&attestation)?;
        tx.send(Ok(start(&node, &csr))).await?;
        let nonce = challenge(&mut stream).await;
        tx.send(Ok(proof(&node, &nonce, &csr_key))).await?;
        let svid = match stream.next().await {
            Some(Ok(AttestResponse {
                step: Some(ResponseStep::Svid(svid)),
            })) => svid,
            other => panic!("expected the SVID, got {other:?}"),
        };
        assert_eq!(svid.expires_at, not_after.unix_timestamp());
        let (_, cert) = x509_parser::parse_x509_certificate(&svid.svid)?;
        assert_eq!(
            cert.validity().not_after.timestamp(),
            not_after.unix_timestamp()
        );
        let id = SpiffeId::parse(&svid.spiffe_id)?;
        let record = attestation.authority.registry().get_agent(&id).await?;
        assert_eq!(record.evidence_expires_at, not_after.unix_timestamp());

        // A join token agent has no evidence expiry: the full TTL, as before.
        let token = attestation
            .authority
            .registry()
            .create_join_token(&TrustDomain::new("example.org")?, None, 600)
            .await?;
        let issued = attestation
            .attest_with_join_token(remote(), &csr, &token.token)
            .await?;
        assert!(issued.expires_at >= unix_seconds(SystemTime::now()) + 590);
        let record = attestation
            .authority
            .registry()
            .get_agent(&token.spiffe_id)
            .await?;
        assert_eq!(record.evidence_expires_at, 0);
        Ok(())
    }

    /// Review of issue 13: at most 4 × `max_pending_per_peer` streams in
    /// progress per address, counted from their opening (before any start);
    /// a stream that ends gives its place back.
    #[tokio::test]
    async fn too_many_streams_in_progress_are_refused_at_open()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (attestation, _) = setup(dir.path(), Duration::from_secs(30), 1).await?;
        let mut open_streams = Vec::new();
        for _ in 0..4 {
            open_streams.push(open(&attestation)?);
        }
        let refused = match open(&attestation) {
            Err(status) => status,
            Ok(_) => panic!("a fifth stream in progress was accepted"),
        };
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("in progress"), "{refused:?}");
        // One node leaves before its start: its place is free once it is told.
        let (tx, mut stream) = open_streams.remove(0);
        drop(tx);
        assert_eq!(refusal(&mut stream).await.code(), Code::InvalidArgument);
        let _again = open(&attestation)?;
        assert!(open(&attestation).is_err());
        Ok(())
    }

    use crate::audit::capture::Audit;

    /// Review of issue 13: a join token refused for being empty, or for its
    /// CSR, leaves one audit line with the peer and the reason.
    #[tokio::test]
    async fn join_token_refusals_are_audited() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (attestation, _) = setup(dir.path(), Duration::from_secs(30), 8).await?;
        let token = attestation
            .authority
            .registry()
            .create_join_token(&TrustDomain::new("example.org")?, None, 600)
            .await?;
        let (audit, _guard) = Audit::start();
        let (good, _) = csr();
        for (csr, token, reason) in [
            (&good[..], "", "join_token is required"),
            (
                b"not a CSR".as_slice(),
                token.token.as_str(),
                "certificate signing request",
            ),
        ] {
            audit.0.lock().unwrap().clear();
            let status = attestation
                .attest_with_join_token(remote(), csr, token)
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains(reason), "{status:?}");
            let lines = audit.0.lock().unwrap().clone();
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(lines[0].contains("peer=192.0.2.7:4000"), "{lines:?}");
            assert!(lines[0].contains(reason), "{lines:?}");
            assert!(lines[0].contains("node attestation refused"), "{lines:?}");
        }
        // The token was never spent: it still attests.
        attestation
            .attest_with_join_token(remote(), &good, &token.token)
            .await?;
        Ok(())
    }

    fn csr_of_nothing() -> Vec<u8> {
        csr().0
    }
}
