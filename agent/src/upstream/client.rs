//! The agent's client of the server's Node API, which every room that needs
//! the server calls it through; and the bounded wait for a call made on a
//! workload's behalf.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lanyard_proto::Jwks;
use lanyard_proto::node::node_client::NodeClient;
use lanyard_proto::node::{
    GetBundleRequest, MintJwtSvidRequest, MintJwtSvidResponse, MintX509SvidRequest,
    MintX509SvidResponse, SyncEntriesRequest, SyncEntriesResponse,
};
use tokio::sync::{Notify, watch};
use tonic::transport::Channel;

use super::reachability::Reachability;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ServerClientError {
    #[error("server call failed: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("server sent an invalid JWKS: {0}")]
    BadJwks(#[from] serde_json::Error),
}

/// Waits at most `timeout` for the server's answer to `call`, made on a
/// workload's behalf to issue `what`. Refusals (a bad request, an entry that
/// is not this agent's) pass through and show the server is up; anything else
/// is `Unavailable` and marks the server down.
pub(crate) async fn on_behalf<T>(
    reachability: &Reachability,
    timeout: Duration,
    what: &str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let unavailable = |error: &dyn std::fmt::Display| {
        reachability.mark_down(error);
        tonic::Status::unavailable(format!("the server could not be reached to issue {what}"))
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(answer)) => {
            reachability.mark_up();
            Ok(answer)
        }
        Ok(Err(status))
            if matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
            ) =>
        {
            reachability.mark_up();
            Err(status)
        }
        Ok(Err(status)) => Err(unavailable(&status)),
        Err(_) => Err(unavailable(&format!(
            "no answer within {} s",
            timeout.as_secs()
        ))),
    }
}

/// The client over one channel, numbered so that a refusal can be told to
/// concern the channel in use or one replaced since.
#[derive(Debug)]
struct Node {
    client: NodeClient<Channel>,
    generation: u64,
}

/// Cheap to clone; every clone sees a channel swapped in by
/// [`replace_channel`](Self::replace_channel) (after an SVID renewal or a
/// new attestation).
#[derive(Debug, Clone)]
pub(crate) struct ServerClient {
    node: Arc<ArcSwap<Node>>,
    /// Woken when the server says this agent's SVID may only renew.
    renewal: Arc<Notify>,
    /// The generation of the latest channel whose SVID the server refused
    /// in a way only a new attestation cures.
    reattest: Arc<watch::Sender<Option<u64>>>,
}

impl ServerClient {
    /// A server on this machine, over its local Node API socket.
    pub(crate) fn local(node_socket: &Path) -> Self {
        Self::over(super::channel::local_channel(node_socket))
    }

    pub(crate) fn over(channel: Channel) -> Self {
        Self {
            node: Arc::new(ArcSwap::from_pointee(Node {
                client: NodeClient::new(channel),
                generation: 0,
            })),
            renewal: Arc::new(Notify::new()),
            reattest: Arc::new(watch::channel(None).0),
        }
    }

    pub(crate) fn replace_channel(&self, channel: Channel) {
        self.node.rcu(|current| Node {
            client: NodeClient::new(channel.clone()),
            generation: current.generation + 1,
        });
    }

    /// Resolves when a call over the channel in use was refused because the
    /// agent must attest again (see [`lanyard_proto::REATTEST_REQUIRED_METADATA`]:
    /// evicted, unknown, banned, expired). Refusals of calls made over a
    /// channel replaced since do not count.
    pub(crate) async fn reattestation_requested(&self) {
        let mut refused = self.reattest.subscribe();
        if refused
            .wait_for(|generation| *generation == Some(self.node.load().generation))
            .await
            .is_err()
        {
            // The sender lives as long as `self`: never.
            std::future::pending::<()>().await;
        }
    }

    /// Resolves when a call was refused because the SVID it presented may
    /// only renew (see [`lanyard_proto::RENEW_REQUIRED_METADATA`]).
    pub(crate) async fn renewal_requested(&self) {
        self.renewal.notified().await;
    }

    /// Passes `status` of a call over channel `generation` through, first
    /// noting a request to renew or to attest again.
    fn observe(&self, generation: u64, status: tonic::Status) -> tonic::Status {
        if status
            .metadata()
            .contains_key(lanyard_proto::RENEW_REQUIRED_METADATA)
        {
            self.renewal.notify_one();
        }
        if status
            .metadata()
            .contains_key(lanyard_proto::REATTEST_REQUIRED_METADATA)
        {
            self.reattest.send_if_modified(|refused| {
                let newer = refused.is_none_or(|r| r < generation);
                if newer {
                    *refused = Some(generation);
                }
                newer
            });
        }
        status
    }

    /// The current client and its channel's generation, taken out of the
    /// cell for one call.
    fn node(&self) -> (NodeClient<Channel>, u64) {
        let node = self.node.load();
        (node.client.clone(), node.generation)
    }

    /// What changed in this agent's entries since `since_revision` (everything when 0).
    pub(crate) async fn sync_entries(
        &self,
        since_revision: u64,
    ) -> Result<SyncEntriesResponse, ServerClientError> {
        let (mut node, generation) = self.node();
        Ok(node
            .sync_entries(SyncEntriesRequest { since_revision })
            .await
            .map_err(|status| self.observe(generation, status))?
            .into_inner())
    }

    /// The trust domain's bundle: JWT keys and X.509 authorities (DER).
    pub(crate) async fn bundle(&self) -> Result<(Jwks, Vec<Vec<u8>>), ServerClientError> {
        let (mut node, generation) = self.node();
        let response = node
            .get_bundle(GetBundleRequest {})
            .await
            .map_err(|status| self.observe(generation, status))?
            .into_inner();
        Ok((
            serde_json::from_slice(&response.jwks)?,
            response.x509_authorities,
        ))
    }

    /// An X509-SVID for `entry_id` over the key of `csr` (DER).
    pub(crate) async fn mint_x509_svid(
        &self,
        entry_id: &str,
        csr: Vec<u8>,
    ) -> Result<MintX509SvidResponse, tonic::Status> {
        let (mut node, generation) = self.node();
        Ok(node
            .mint_x509_svid(MintX509SvidRequest {
                entry_id: entry_id.to_owned(),
                csr,
            })
            .await
            .map_err(|status| self.observe(generation, status))?
            .into_inner())
    }

    pub(crate) async fn mint_jwt_svid(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<MintJwtSvidResponse, tonic::Status> {
        let (mut node, generation) = self.node();
        Ok(node
            .mint_jwt_svid(MintJwtSvidRequest {
                entry_id: entry_id.to_owned(),
                audience: audience.to_vec(),
            })
            .await
            .map_err(|status| self.observe(generation, status))?
            .into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reattest_refusal() -> tonic::Status {
        let mut status = tonic::Status::permission_denied("evicted");
        status.metadata_mut().insert(
            lanyard_proto::REATTEST_REQUIRED_METADATA,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        status
    }

    async fn requested(client: &ServerClient) -> bool {
        tokio::time::timeout(Duration::from_millis(50), client.reattestation_requested())
            .await
            .is_ok()
    }

    /// A refusal asks for a new attestation only while the channel it came
    /// over is in use: calls still in flight on a replaced one do not ask
    /// again after the agent attested.
    #[tokio::test]
    async fn reattestation_is_requested_for_the_channel_in_use_only() {
        let dir = std::env::temp_dir().join("lanyard-no-server.sock");
        let client = ServerClient::local(&dir);
        assert!(!requested(&client).await);
        let _ = client.observe(0, tonic::Status::unavailable("down"));
        assert!(!requested(&client).await, "any refusal asked");
        let _ = client.observe(0, reattest_refusal());
        assert!(requested(&client).await);
        assert!(
            requested(&client).await,
            "asks until the channel is replaced"
        );

        client.replace_channel(super::super::channel::local_channel(&dir));
        assert!(
            !requested(&client).await,
            "a replaced channel's refusal asked"
        );
        let _ = client.observe(0, reattest_refusal());
        assert!(
            !requested(&client).await,
            "a late refusal of the old channel asked"
        );
        let _ = client.observe(1, reattest_refusal());
        assert!(requested(&client).await);
    }
}
