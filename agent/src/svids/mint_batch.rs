//! JWT-SVID mints to the server, batched: the misses that arrive while the
//! agent's earlier exchanges are under way go to the server together in one
//! MintJwtSvids (at most 64 each, at most 8 exchanges at once), so a burst
//! of new audiences costs one gRPC exchange and one caller check at the
//! server per batch instead of per token. An idle agent sends each mint at
//! once, alone: batching never waits for company. A server without
//! MintJwtSvids (an older release) is asked one mint at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lanyard_proto::node::{MintJwtSvidRequest, MintJwtSvidResponse, mint_jwt_svid_result};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Code, Status};

use crate::upstream::client::{ServerClient, on_behalf};
use crate::upstream::reachability::Reachability;

/// Most mints in one exchange (the server takes 64).
const MAX_BATCH: usize = 64;
/// Most exchanges under way at once.
const MAX_IN_FLIGHT: usize = 8;
/// Most mints waiting for an exchange; callers wait for room beyond it.
const QUEUE: usize = 1024;

type Answer = Result<MintJwtSvidResponse, Status>;

struct Pending {
    request: MintJwtSvidRequest,
    answer: oneshot::Sender<Answer>,
}

/// The agent's way to the server for JWT-SVIDs.
#[derive(Debug, Clone)]
pub(crate) struct MintBatcher {
    queue: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("entry_id", &self.request.entry_id)
            .finish_non_exhaustive()
    }
}

impl MintBatcher {
    /// Starts the task that sends batches to `server`, each within `timeout`
    /// (as a single mint would be). Must be called within a Tokio runtime.
    pub(crate) fn start(
        server: ServerClient,
        timeout: Duration,
        reachability: Arc<Reachability>,
    ) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(send_batches(pending, server, timeout, reachability));
        Self { queue }
    }

    /// The server's answer to `request`: a token, or the status it (or the
    /// way to it) refused with — `Unavailable` when it could not be asked.
    pub(crate) async fn mint(&self, request: MintJwtSvidRequest) -> Answer {
        let (answer, answered) = oneshot::channel();
        let gone = || Status::unavailable("the agent is shutting down");
        self.queue
            .send(Pending { request, answer })
            .await
            .map_err(|_| gone())?;
        answered.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// Takes what is queued, up to a batch, whenever an exchange may start.
async fn send_batches(
    mut pending: mpsc::Receiver<Pending>,
    server: ServerClient,
    timeout: Duration,
    reachability: Arc<Reachability>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let one_by_one = Arc::new(AtomicBool::new(false));
    loop {
        let Ok(turn) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = pending.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (server, reachability, one_by_one) =
            (server.clone(), reachability.clone(), one_by_one.clone());
        tokio::spawn(async move {
            exchange(batch, &server, timeout, &reachability, &one_by_one).await;
            drop(turn);
        });
    }
}

/// Sends one batch and hands each caller its answer.
async fn exchange(
    batch: Vec<Pending>,
    server: &ServerClient,
    timeout: Duration,
    reachability: &Reachability,
    one_by_one: &AtomicBool,
) {
    if batch.len() == 1 || one_by_one.load(Ordering::Relaxed) {
        return singly(batch, server, timeout, reachability).await;
    }
    let requests: Vec<MintJwtSvidRequest> = batch.iter().map(|p| p.request.clone()).collect();
    let answered = on_behalf(
        reachability,
        timeout,
        "JWT-SVIDs",
        server.mint_jwt_svids(&requests),
    )
    .await;
    match answered {
        Ok(response) if response.results.len() == batch.len() => {
            for (pending, result) in batch.into_iter().zip(response.results) {
                let _ = pending.answer.send(match result.result {
                    Some(mint_jwt_svid_result::Result::Svid(svid)) => Ok(svid),
                    Some(mint_jwt_svid_result::Result::Refusal(refusal)) => {
                        Err(Status::new(Code::from(refusal.code), refusal.message))
                    }
                    None => Err(Status::internal("the server answered a mint with nothing")),
                });
            }
        }
        Ok(response) => {
            let status = Status::internal(format!(
                "the server answered {} mints with {} results",
                batch.len(),
                response.results.len()
            ));
            for pending in batch {
                let _ = pending.answer.send(Err(status.clone()));
            }
        }
        // An older server: ask it as it was asked before, from now on.
        Err(status) if status.code() == Code::Unimplemented => {
            one_by_one.store(true, Ordering::Relaxed);
            singly(batch, server, timeout, reachability).await;
        }
        Err(status) => {
            for pending in batch {
                let _ = pending.answer.send(Err(status.clone()));
            }
        }
    }
}

/// Each mint of `batch` on its own, at once.
async fn singly(
    batch: Vec<Pending>,
    server: &ServerClient,
    timeout: Duration,
    reachability: &Reachability,
) {
    futures::future::join_all(batch.into_iter().map(|pending| async move {
        let request = pending.request;
        let answer = on_behalf(
            reachability,
            timeout,
            "a JWT-SVID",
            server.mint_jwt_svid(&request.entry_id, &request.audience, &request.selectors),
        )
        .await;
        let _ = pending.answer.send(answer);
    }))
    .await;
}
