//! The Node API: what the local agent asks of the server.
//!
//! In this release it listens on a local Unix socket and trusts only this
//! server's own uid (or root); the agent behind it is `node_api.agent_id`.

use std::sync::Arc;
use std::time::SystemTime;

use lanyard_proto::SpiffeId;
use lanyard_proto::node::node_server::Node;
use lanyard_proto::node::{
    GetJwtBundleRequest, GetJwtBundleResponse, MintJwtSvidRequest, MintJwtSvidResponse,
    SyncEntriesRequest, SyncEntriesResponse,
};
use tonic::{Request, Response, Status};

use crate::authority::{Authority, MintError};
use crate::peer;

#[derive(Debug)]
pub struct NodeService {
    authority: Arc<Authority>,
    agent_id: SpiffeId,
    server_uid: u32,
}

impl NodeService {
    pub fn new(authority: Arc<Authority>, agent_id: SpiffeId) -> Self {
        Self {
            authority,
            agent_id,
            server_uid: nix::unistd::geteuid().as_raw(),
        }
    }

    /// The agent calling, if its kernel credentials say it may speak for the node.
    fn caller<T>(&self, request: &Request<T>) -> Result<&SpiffeId, Status> {
        peer::require_uid(request, &[self.server_uid], "Node API")?;
        Ok(&self.agent_id)
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn sync_entries(
        &self,
        request: Request<SyncEntriesRequest>,
    ) -> Result<Response<SyncEntriesResponse>, Status> {
        let agent = self.caller(&request)?;
        let update = self
            .authority
            .entry_update_for_agent(agent, request.get_ref().since_revision)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "entry sync failed");
                Status::unavailable("datastore unavailable")
            })?;
        Ok(Response::new(SyncEntriesResponse {
            entries: update.upserts.iter().map(|e| e.to_node()).collect(),
            revision: update.revision,
            deleted_entry_ids: update.deleted_ids,
            full: update.full,
        }))
    }

    async fn mint_jwt_svid(
        &self,
        request: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        let agent = self.caller(&request)?.clone();
        let body = request.into_inner();
        let minted = self
            .authority
            .mint_jwt_svid(&agent, &body.entry_id, &body.audience, SystemTime::now())
            .await
            .map_err(|e| match e {
                MintError::NotAuthorized(_) => Status::permission_denied(e.to_string()),
                MintError::EmptyAudience | MintError::BadAudience(_) => {
                    Status::invalid_argument(e.to_string())
                }
                MintError::Key(_) => {
                    tracing::error!(error = %e, "signing a JWT-SVID failed");
                    Status::internal("signing failed")
                }
                MintError::Store(_) => {
                    tracing::error!(error = %e, "datastore failed while minting");
                    Status::unavailable("datastore unavailable")
                }
            })?;
        Ok(Response::new(MintJwtSvidResponse {
            spiffe_id: minted.spiffe_id.to_string(),
            token: minted.token,
            issued_at: minted.issued_at,
            expires_at: minted.expires_at,
        }))
    }

    async fn get_jwt_bundle(
        &self,
        request: Request<GetJwtBundleRequest>,
    ) -> Result<Response<GetJwtBundleResponse>, Status> {
        self.caller(&request)?;
        let jwks = serde_json::to_vec(&self.authority.jwks())
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(GetJwtBundleResponse {
            trust_domain: self.authority.trust_domain().to_string(),
            jwks,
        }))
    }
}
