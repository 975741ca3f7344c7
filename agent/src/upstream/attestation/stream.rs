//! The agent's side of the `Attest` stream: start (CSR and evidence) →
//! challenge (a nonce) → proof → agent SVID; a join token gets the SVID
//! straight after the start.

use futures::StreamExt as _;
use futures::channel::mpsc;
use lanyard_proto::attestation::NONCE_LEN;
use lanyard_proto::node::node_client::NodeClient;
use lanyard_proto::node::{
    AgentSvidResponse, AttestProof, AttestRequest, AttestResponse, AttestStart, attest_request,
    attest_response,
};

use super::super::NodeClientError;

/// Runs one attestation over `channel` (a new TLS connection that presents
/// no client certificate): sends `start`, answers a challenge with `prove(nonce)`, and
/// returns the SVID the server sends. Refusals are `Refused` with the
/// server's status; a stream that breaks the sequence is `Protocol`.
pub(super) async fn exchange(
    channel: tonic::transport::Channel,
    start: AttestStart,
    prove: impl FnOnce(&[u8; NONCE_LEN]) -> Result<AttestProof, NodeClientError>,
) -> Result<AgentSvidResponse, NodeClientError> {
    let (requests, outgoing) = mpsc::unbounded();
    let send = |step| {
        requests
            .unbounded_send(AttestRequest { step: Some(step) })
            .map_err(|_| NodeClientError::Protocol("the server closed the stream early"))
    };
    send(attest_request::Step::Start(start))?;
    let mut responses = NodeClient::new(channel)
        .attest(outgoing)
        .await
        .map_err(NodeClientError::Refused)?
        .into_inner();
    let challenge = match next_step(&mut responses).await? {
        attest_response::Step::Svid(svid) => return Ok(svid),
        attest_response::Step::Challenge(challenge) => challenge,
    };
    let nonce: &[u8; NONCE_LEN] = challenge
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| NodeClientError::Protocol("the challenge's nonce is not 32 bytes"))?;
    send(attest_request::Step::Proof(prove(nonce)?))?;
    let answer = match next_step(&mut responses).await? {
        attest_response::Step::Svid(svid) => Ok(svid),
        attest_response::Step::Challenge(_) => Err(NodeClientError::Protocol(
            "the server sent a second challenge",
        )),
    };
    // The request side stays open until the answer is in: a closed stream
    // could be taken as the agent giving up.
    drop(requests);
    answer
}

/// The next step the server sends; its refusal as `Refused`.
async fn next_step(
    responses: &mut tonic::codec::Streaming<AttestResponse>,
) -> Result<attest_response::Step, NodeClientError> {
    match responses.next().await {
        Some(Ok(AttestResponse { step: Some(step) })) => Ok(step),
        Some(Ok(AttestResponse { step: None })) => {
            Err(NodeClientError::Protocol("the server sent an empty step"))
        }
        Some(Err(status)) => Err(NodeClientError::Refused(status)),
        None => Err(NodeClientError::Protocol(
            "the server closed the stream without an answer",
        )),
    }
}
