//! The agent's client of the server's Node API.

use std::path::Path;

use lanyard_proto::Jwks;
use lanyard_proto::node::node_client::NodeClient;
use lanyard_proto::node::{
    Entry, GetJwtBundleRequest, MintJwtSvidRequest, MintJwtSvidResponse, SyncEntriesRequest,
};
use lanyard_proto::transport::unix_channel;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum ServerClientError {
    #[error("server call failed: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("server sent an invalid JWKS: {0}")]
    BadJwks(#[from] serde_json::Error),
}

#[derive(Debug, Clone)]
pub struct ServerClient {
    node: NodeClient<Channel>,
}

impl ServerClient {
    pub fn new(node_socket: &Path) -> Self {
        Self {
            node: NodeClient::new(unix_channel(node_socket)),
        }
    }

    /// Every entry this agent may serve, and the revision they are as of.
    pub async fn sync_entries(&self) -> Result<(Vec<Entry>, u64), ServerClientError> {
        let response = self
            .node
            .clone()
            .sync_entries(SyncEntriesRequest { since_revision: 0 })
            .await?
            .into_inner();
        Ok((response.entries, response.revision))
    }

    pub async fn jwt_bundle(&self) -> Result<Jwks, ServerClientError> {
        let response = self
            .node
            .clone()
            .get_jwt_bundle(GetJwtBundleRequest {})
            .await?
            .into_inner();
        Ok(serde_json::from_slice(&response.jwks)?)
    }

    pub async fn mint_jwt_svid(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<MintJwtSvidResponse, tonic::Status> {
        Ok(self
            .node
            .clone()
            .mint_jwt_svid(MintJwtSvidRequest {
                entry_id: entry_id.to_owned(),
                audience: audience.to_vec(),
            })
            .await?
            .into_inner())
    }
}
