//! For tests: a Node API that answers the calls a test scripts and refuses
//! every other one as Unimplemented, so each test states only what it means.

use std::pin::Pin;

use lanyard_proto::node::node_server::Node;
use lanyard_proto::node::{
    AgentSvidResponse, AttestAgentRequest, AttestRequest, AttestResponse, GetBundleRequest,
    GetBundleResponse, MintJwtSvidRequest, MintJwtSvidResponse, MintJwtSvidsRequest,
    MintJwtSvidsResponse, MintX509SvidRequest, MintX509SvidResponse, RenewAgentRequest,
    SyncEntriesRequest, SyncEntriesResponse,
};
use tonic::{Request, Response, Status, Streaming};

pub(crate) type AttestStream =
    Pin<Box<dyn futures::Stream<Item = Result<AttestResponse, Status>> + Send>>;

fn unscripted() -> Status {
    Status::unimplemented("test")
}

/// The calls a test node answers; any it does not is Unimplemented.
#[tonic::async_trait]
pub(crate) trait NodeScript: Send + Sync + 'static {
    async fn attest_agent(
        &self,
        _: Request<AttestAgentRequest>,
    ) -> Result<Response<AgentSvidResponse>, Status> {
        Err(unscripted())
    }

    async fn attest(
        &self,
        _: Request<Streaming<AttestRequest>>,
    ) -> Result<Response<AttestStream>, Status> {
        Err(unscripted())
    }

    async fn renew_agent(
        &self,
        _: Request<RenewAgentRequest>,
    ) -> Result<Response<AgentSvidResponse>, Status> {
        Err(unscripted())
    }

    async fn sync_entries(
        &self,
        _: Request<SyncEntriesRequest>,
    ) -> Result<Response<SyncEntriesResponse>, Status> {
        Err(unscripted())
    }

    async fn mint_jwt_svid(
        &self,
        _: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        Err(unscripted())
    }

    async fn mint_jwt_svids(
        &self,
        _: Request<MintJwtSvidsRequest>,
    ) -> Result<Response<MintJwtSvidsResponse>, Status> {
        Err(unscripted())
    }

    async fn mint_x509_svid(
        &self,
        _: Request<MintX509SvidRequest>,
    ) -> Result<Response<MintX509SvidResponse>, Status> {
        Err(unscripted())
    }

    async fn get_bundle(
        &self,
        _: Request<GetBundleRequest>,
    ) -> Result<Response<GetBundleResponse>, Status> {
        Err(unscripted())
    }
}

/// A test's script, served as the Node API.
pub(crate) struct Scripted<T>(pub(crate) T);

#[tonic::async_trait]
impl<T: NodeScript> Node for Scripted<T> {
    async fn attest_agent(
        &self,
        request: Request<AttestAgentRequest>,
    ) -> Result<Response<AgentSvidResponse>, Status> {
        self.0.attest_agent(request).await
    }

    type AttestStream = AttestStream;

    async fn attest(
        &self,
        request: Request<Streaming<AttestRequest>>,
    ) -> Result<Response<AttestStream>, Status> {
        self.0.attest(request).await
    }

    async fn renew_agent(
        &self,
        request: Request<RenewAgentRequest>,
    ) -> Result<Response<AgentSvidResponse>, Status> {
        self.0.renew_agent(request).await
    }

    async fn sync_entries(
        &self,
        request: Request<SyncEntriesRequest>,
    ) -> Result<Response<SyncEntriesResponse>, Status> {
        self.0.sync_entries(request).await
    }

    async fn mint_jwt_svid(
        &self,
        request: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        self.0.mint_jwt_svid(request).await
    }

    async fn mint_jwt_svids(
        &self,
        request: Request<MintJwtSvidsRequest>,
    ) -> Result<Response<MintJwtSvidsResponse>, Status> {
        self.0.mint_jwt_svids(request).await
    }

    async fn mint_x509_svid(
        &self,
        request: Request<MintX509SvidRequest>,
    ) -> Result<Response<MintX509SvidResponse>, Status> {
        self.0.mint_x509_svid(request).await
    }

    async fn get_bundle(
        &self,
        request: Request<GetBundleRequest>,
    ) -> Result<Response<GetBundleResponse>, Status> {
        self.0.get_bundle(request).await
    }
}
