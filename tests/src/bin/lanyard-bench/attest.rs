//! Rows 10 and 11: node attestations per second through the real `Attest`
//! stream on the mTLS Node API (a new TLS connection, a fresh agent key and
//! CSR, the challenge, the proof, the SVID and the agent record each time),
//! for x509pop (a P-256 host certificate) and sshpop (an Ed25519 host key
//! certified by `ssh-keygen -s`), beside raw verification of the same key
//! type on one core.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, ED25519, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, UnparsedPublicKey,
};
use lanyard_agent::upstream::ServerEndpoint;
use lanyard_proto::attestation;
use lanyard_proto::node::attest_proof::Proof;
use lanyard_tests::fleet::{
    LeafSpec, SshCa, SshHost, SshKeyType, X509Ca, ecdsa_proof, ed25519_sshsig, open, ssh_evidence,
    x509_evidence,
};

use crate::stats::{Worker, single_thread_rate};

/// The server config tables that trust the bench's fleet CAs.
pub(crate) struct FleetMaterial {
    pub server_tables: String,
    leaf: lanyard_tests::fleet::Leaf,
    host: SshHost,
    host_key: ssh_key::PrivateKey,
}

impl FleetMaterial {
    pub(crate) fn make(dir: &Path) -> anyhow::Result<Self> {
        let root = X509Ca::root("bench fleet root")?;
        let bundle = dir.join("bench-fleet-ca.pem");
        std::fs::write(&bundle, &root.cert_pem)?;
        let leaf = root.leaf(&LeafSpec::host("bench-1.example.org", "bench"))?;
        let ca = SshCa::new(dir, "bench-ssh-ca", SshKeyType::Ed25519)?;
        let host = SshHost::new(
            dir,
            "bench_host_ed25519_key",
            SshKeyType::Ed25519,
            &ca,
            &["bench-1"],
            true,
            "-5m:+1h",
        )?;
        let host_key = ssh_key::PrivateKey::read_openssh_file(&host.host_key)?;
        Ok(Self {
            server_tables: format!(
                "[node_attestation]\nmax_pending_per_peer = 256\n\
                 [node_attestation.x509pop]\nca_bundle = \"{}\"\n\
                 [node_attestation.sshpop]\ncert_authorities = [\"{}\"]\n",
                bundle.display(),
                ca.public_line
            ),
            leaf,
            host,
            host_key,
        })
    }
}

/// Which evidence a worker attests with.
#[derive(Clone, Copy)]
pub(crate) enum Method {
    X509Pop,
    SshPop,
}

pub(crate) struct Attester {
    pub endpoint: ServerEndpoint,
    pub method: Method,
    pub material: std::sync::Arc<FleetMaterial>,
}

impl Worker for Attester {
    async fn call(&mut self, _n: u64) -> anyhow::Result<()> {
        let m = &self.material;
        let (evidence, name) = match self.method {
            Method::X509Pop => (x509_evidence(&[&m.leaf.cert_der]), attestation::X509POP),
            Method::SshPop => (ssh_evidence(&m.host)?, attestation::SSHPOP),
        };
        let mut attempt = open(&self.endpoint, evidence).await?;
        let challenge = attempt.challenge().await?;
        let message = attempt.message(name, &challenge)?;
        let proof = match self.method {
            Method::X509Pop => ecdsa_proof(&m.leaf.key_der, &message)?,
            Method::SshPop => Proof::Sshsig(ed25519_sshsig(&m.host_key, &message)?),
        };
        attempt.prove(proof).await?;
        Ok(())
    }
}

/// Raw verifications per second on one core: ECDSA P-256 (ASN.1, as x509pop
/// proofs carry it) and Ed25519.
pub(crate) fn verify_limits(warmup: Duration, window: Duration) -> anyhow::Result<(f64, f64)> {
    let rng = SystemRandom::new();
    let message = attestation::signed_message("x509pop", "example.org", &[7; 32], &[9; 32]);
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?;
    let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ec_signature = ec
        .sign(&rng, &message)
        .map_err(|_| anyhow::anyhow!("signing"))?;
    let ec_public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, ec.public_key().as_ref());
    let ecdsa = single_thread_rate(warmup, window, || {
        ec_public
            .verify(&message, ec_signature.as_ref())
            .map_err(|_| anyhow::anyhow!("verification failed"))
    })?;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("Ed25519"))?;
    let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ed_signature = ed.sign(&message);
    let ed_public = UnparsedPublicKey::new(&ED25519, ed.public_key().as_ref());
    let ed25519 = single_thread_rate(warmup, window, || {
        ed_public
            .verify(&message, ed_signature.as_ref())
            .map_err(|_| anyhow::anyhow!("verification failed"))
    })?;
    Ok((ecdsa, ed25519))
}

/// How agents reach the world's mTLS Node API.
pub(crate) fn endpoint(world: &lanyard_tests::World) -> anyhow::Result<ServerEndpoint> {
    Ok(ServerEndpoint::new(
        &world
            .server
            .node_addr
            .context("the bench's server has an mTLS Node API")?
            .to_string(),
        &world.server.ca_bundle,
    )?)
}
