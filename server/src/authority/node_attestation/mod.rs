//! Node attestation by challenge and response (x509pop, sshpop): the
//! evidence a node opens with is verified here into an agent ID and node
//! selectors, and its answer to the challenge is checked against the key the
//! evidence names. The stream that carries it is `api::node::attest`; join
//! tokens need none of this.

pub(crate) mod challenge;
pub(crate) mod sshpop;
pub mod x509pop;

use std::time::{Duration, SystemTime};

use lanyard_host::clock::unix_seconds;
use lanyard_proto::attestation::{self, NONCE_LEN, SSHPOP, X509POP};
use lanyard_proto::selector::MAX_NODE_SELECTOR_VALUE_LEN;
use lanyard_proto::{Selector, SpiffeId, TrustDomain};
use rustls::pki_types::{CertificateDer, UnixTime};
use ssh_key::public::KeyData;

use crate::audit;
use crate::config::NodeAttestationConfig;
use challenge::PendingChallenges;
pub use x509pop::X509PopConfigError;

/// Most node selectors one attestation records.
pub const MAX_NODE_SELECTORS: usize = 64;

/// Why an attestation is refused. Each maps to one gRPC status: `Malformed`
/// to InvalidArgument, `NotConfigured` to FailedPrecondition, the others to
/// PermissionDenied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The request breaks the protocol or a limit.
    #[error("{0}")]
    Malformed(String),
    /// The server does not accept this method.
    #[error("{0} attestation is not configured on this server")]
    NotConfigured(&'static str),
    /// The evidence or the proof does not hold.
    #[error("{0}")]
    Refused(String),
    /// The agent is banned.
    #[error("agent {0} is banned")]
    Banned(SpiffeId),
}

/// A fact a certificate states, before it is checked as a node selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    kind: &'static str,
    key: &'static str,
    value: String,
}

impl Candidate {
    pub(crate) fn new(kind: &'static str, key: &'static str, value: &str) -> Self {
        Self {
            kind,
            key,
            value: value.to_owned(),
        }
    }
}

/// The node selectors of `candidates`: values that are too long, hold
/// control characters or could never be named by an alias are dropped (and
/// logged), duplicates merged, at most [`MAX_NODE_SELECTORS`] kept.
pub(crate) fn node_selectors(agent: &SpiffeId, candidates: Vec<Candidate>) -> Vec<Selector> {
    let mut selectors = Vec::new();
    for candidate in candidates {
        let Candidate { kind, key, value } = candidate;
        if value.len() > MAX_NODE_SELECTOR_VALUE_LEN || value.chars().any(char::is_control) {
            audit::node_selector_dropped(
                agent,
                &format!("{kind}:{key}"),
                "its value is too long or holds control characters",
            );
            continue;
        }
        match Selector::parse_known_node(&format!("{kind}:{key}:{value}")) {
            Ok(selector) => selectors.push(selector),
            Err(e) => {
                audit::node_selector_dropped(agent, &format!("{kind}:{key}"), &e.to_string());
            }
        }
    }
    selectors.sort();
    selectors.dedup();
    if selectors.len() > MAX_NODE_SELECTORS {
        audit::node_selector_dropped(
            agent,
            "*",
            &format!(
                "{} node selectors; those beyond {MAX_NODE_SELECTORS} are dropped",
                selectors.len()
            ),
        );
        selectors.truncate(MAX_NODE_SELECTORS);
    }
    selectors
}

/// The evidence a node opens with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Evidence<'a> {
    X509Pop { chain: &'a [Vec<u8>] },
    SshPop { certificate: &'a [u8] },
}

/// The answer to a challenge.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Proof<'a> {
    X509Pop { scheme: u32, signature: &'a [u8] },
    SshPop { sshsig: &'a [u8] },
}

#[derive(Debug, Clone)]
enum ProofKey {
    X509(CertificateDer<'static>),
    Ssh(KeyData),
}

/// Evidence that holds: who the node is and what it proved, and the key its
/// answer must be signed with.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub(crate) agent_id: SpiffeId,
    /// `x509pop` or `sshpop`.
    pub(crate) method: &'static str,
    pub(crate) selectors: Vec<Selector>,
    key: ProofKey,
    /// When the evidence stops being valid, Unix seconds: x509pop, the
    /// earliest notAfter along the verified path; sshpop, the certificate's
    /// valid-before. From that second on the evidence proves nothing (a proof
    /// arriving then is refused, a renewal too); the agent SVID is capped at
    /// it, and the agent must attest again to renew past it.
    pub(crate) valid_until: i64,
}

/// The lifetime of an agent SVID issued at `now`: `ttl`, cut short so that it
/// ends no later than `evidence_expires_at` (Unix seconds; 0 for no evidence
/// expiry, as with join tokens).
pub(crate) fn agent_svid_ttl(ttl: Duration, evidence_expires_at: i64, now: SystemTime) -> Duration {
    if evidence_expires_at <= 0 {
        return ttl;
    }
    let left = evidence_expires_at.saturating_sub(unix_seconds(now));
    ttl.min(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
}

/// The configured methods, and the challenges in progress.
#[derive(Debug)]
pub(crate) struct NodeAttestors {
    trust_domain: TrustDomain,
    x509pop: Option<x509pop::X509Pop>,
    sshpop: Option<sshpop::SshPop>,
    challenge_ttl: Duration,
    pending: PendingChallenges,
    in_progress: PendingChallenges,
}

impl NodeAttestors {
    pub(crate) fn new(
        trust_domain: TrustDomain,
        config: &NodeAttestationConfig,
    ) -> Result<Self, X509PopConfigError> {
        let x509pop = config
            .x509pop
            .as_ref()
            .map(|c| x509pop::X509Pop::new(&c.ca_bundle, &c.intermediates, &c.crls))
            .transpose()?;
        let sshpop = config
            .sshpop
            .as_ref()
            .map(|c| sshpop::SshPop::new(c.cert_authorities.clone(), c.revoked.clone()));
        Ok(Self {
            trust_domain,
            x509pop,
            sshpop,
            challenge_ttl: config.challenge_ttl,
            pending: PendingChallenges::new(
                config.max_pending_per_peer,
                challenge::MAX_PENDING_TOTAL,
            ),
            in_progress: PendingChallenges::streams(config.max_pending_per_peer),
        })
    }

    pub(crate) fn challenge_ttl(&self) -> Duration {
        self.challenge_ttl
    }

    pub(crate) fn pending(&self) -> &PendingChallenges {
        &self.pending
    }

    /// The `Attest` streams in progress, per peer address.
    pub(crate) fn in_progress(&self) -> &PendingChallenges {
        &self.in_progress
    }

    /// Verifies `evidence` at `now`.
    pub(crate) fn verify_evidence(
        &self,
        evidence: Evidence<'_>,
        now: SystemTime,
    ) -> Result<Verified, AttestError> {
        match evidence {
            Evidence::X509Pop { chain } => {
                let verifier = self
                    .x509pop
                    .as_ref()
                    .ok_or(AttestError::NotConfigured(X509POP))?;
                let since_epoch = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                let found = verifier.verify_evidence(
                    &self.trust_domain,
                    chain,
                    UnixTime::since_unix_epoch(since_epoch),
                )?;
                let selectors = node_selectors(&found.agent_id, found.candidates);
                Ok(Verified {
                    agent_id: found.agent_id,
                    method: X509POP,
                    selectors,
                    key: ProofKey::X509(found.leaf),
                    valid_until: found.not_after,
                })
            }
            Evidence::SshPop { certificate } => {
                let verifier = self
                    .sshpop
                    .as_ref()
                    .ok_or(AttestError::NotConfigured(SSHPOP))?;
                let now = u64::try_from(unix_seconds(now)).unwrap_or(0);
                let found = verifier.verify_evidence(&self.trust_domain, certificate, now)?;
                let selectors = node_selectors(&found.agent_id, found.candidates);
                Ok(Verified {
                    agent_id: found.agent_id,
                    method: SSHPOP,
                    selectors,
                    key: ProofKey::Ssh(found.host_key),
                    valid_until: i64::try_from(found.valid_before).unwrap_or(i64::MAX),
                })
            }
        }
    }

    /// Checks `proof`, the answer to `nonce` for a CSR whose key hashes to
    /// `csr_key_sha256`, against `verified` at `now`.
    pub(crate) fn verify_proof(
        &self,
        verified: &Verified,
        proof: Proof<'_>,
        nonce: &[u8; NONCE_LEN],
        csr_key_sha256: &[u8; 32],
        now: SystemTime,
    ) -> Result<(), AttestError> {
        // Re-checked: the certificate may have expired while the node answered.
        // The evidence ends at `valid_until` (an SSH valid-before is
        // exclusive), as a renewal's check has it.
        if unix_seconds(now) >= verified.valid_until {
            return Err(AttestError::Refused(format!(
                "{}: the certificate expired during the attestation",
                verified.method
            )));
        }
        let message = attestation::signed_message(
            verified.method,
            self.trust_domain.as_str(),
            nonce,
            csr_key_sha256,
        );
        match (&verified.key, proof) {
            (ProofKey::X509(leaf), Proof::X509Pop { scheme, signature }) => {
                x509pop::verify_proof(leaf, scheme, signature, &message)
            }
            (ProofKey::Ssh(host_key), Proof::SshPop { sshsig }) => {
                sshpop::verify_proof(host_key, sshsig, &message)
            }
            _ => Err(AttestError::Malformed(format!(
                "the proof is not of the evidence's method ({})",
                verified.method
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
