//! The Workload API with each call counted and timed, by method and status
//! code, around the handlers (which know nothing of it).

use std::sync::Arc;
use std::time::Instant;

use lanyard_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use lanyard_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509svidRequest,
};
use tonic::{Request, Response, Status};

use super::api::WorkloadService;
use crate::telemetry::{AgentMetrics, WorkloadMethod};

/// [`WorkloadService`], counted into [`AgentMetrics`].
#[derive(Debug, Clone)]
pub(crate) struct Metered {
    inner: WorkloadService,
    metrics: Arc<AgentMetrics>,
}

impl Metered {
    pub(crate) fn new(inner: WorkloadService, metrics: Arc<AgentMetrics>) -> Self {
        Self { inner, metrics }
    }

    fn record<T>(
        &self,
        method: WorkloadMethod,
        started: Instant,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        self.metrics.request(method, &result, started);
        result
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Metered {
    type FetchX509SVIDStream = <WorkloadService as SpiffeWorkloadApi>::FetchX509SVIDStream;
    type FetchX509BundlesStream = <WorkloadService as SpiffeWorkloadApi>::FetchX509BundlesStream;
    type FetchJWTBundlesStream = <WorkloadService as SpiffeWorkloadApi>::FetchJWTBundlesStream;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let started = Instant::now();
        let result = self.inner.fetch_x509svid(request).await;
        self.record(WorkloadMethod::FetchX509Svid, started, result)
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let started = Instant::now();
        let result = self.inner.fetch_x509_bundles(request).await;
        self.record(WorkloadMethod::FetchX509Bundles, started, result)
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let started = Instant::now();
        let result = self.inner.fetch_jwtsvid(request).await;
        self.record(WorkloadMethod::FetchJwtSvid, started, result)
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let started = Instant::now();
        let result = self.inner.fetch_jwt_bundles(request).await;
        self.record(WorkloadMethod::FetchJwtBundles, started, result)
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let started = Instant::now();
        let result = self.inner.validate_jwtsvid(request).await;
        self.record(WorkloadMethod::ValidateJwtSvid, started, result)
    }
}
