//! The agent's client of the server's Node API, which every room that needs
//! the server calls it through: a local server over its socket, or any
//! server of the group over mTLS, each call retried on another server when
//! one fails (see [`ServerGroup`]); and the bounded wait for a call made on
//! a workload's behalf.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use lanyard_proto::Jwks;
use lanyard_proto::node::node_client::NodeClient;
use lanyard_proto::node::{
    GetBundleRequest, MintJwtSvidRequest, MintJwtSvidResponse, MintJwtSvidsRequest,
    MintJwtSvidsResponse, MintX509SvidRequest, MintX509SvidResponse, SyncEntriesRequest,
    SyncEntriesResponse,
};
use tokio::sync::{Notify, watch};
use tonic::transport::Channel;

use super::group::{GroupError, ServerGroup, Target};
use super::identity::AgentCredentials;
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
/// is not this agent's, a rate limit with its wait) pass through and show
/// the server is up; anything else is `Unavailable` and marks the server down.
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
                tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::Unimplemented
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

/// How calls reach the server.
#[derive(Debug)]
enum Upstream {
    /// One channel (a server on this machine).
    Local(Channel),
    /// Any server of the group, each call within `budget`.
    Group {
        servers: Arc<ServerGroup>,
        budget: Duration,
    },
}

/// The agent's identity in use, numbered so that a refusal can be told to
/// concern the identity in use or one replaced since; with the channels to
/// the group's servers that present it.
#[derive(Debug)]
struct Identity {
    creds: Option<AgentCredentials>,
    generation: u64,
    channels: Mutex<Channels>,
}

/// Channels to the servers for one identity, made for the CA certificates
/// of `roots_generation`: a change of the trusted certificates makes new
/// ones (in-flight calls finish on the old).
#[derive(Debug, Default)]
struct Channels {
    roots_generation: u64,
    by_addr: HashMap<SocketAddr, Channel>,
}

impl Identity {
    fn new(creds: Option<AgentCredentials>, generation: u64) -> Self {
        Self {
            creds,
            generation,
            channels: Mutex::new(Channels::default()),
        }
    }

    /// The channel to `target`, made when there is none for the group's
    /// current CA certificates.
    fn channel(&self, servers: &ServerGroup, target: &Target) -> Result<Channel, tonic::Status> {
        let (_, roots_generation) = servers.roots();
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if channels.roots_generation != roots_generation {
            *channels = Channels {
                roots_generation,
                by_addr: HashMap::new(),
            };
        }
        if let Some(channel) = channels.by_addr.get(&target.addr) {
            return Ok(channel.clone());
        }
        let channel = servers
            .channel(target, self.creds.as_ref())
            .map_err(|e| tonic::Status::internal(format!("TLS towards the server: {e}")))?;
        channels.by_addr.insert(target.addr, channel.clone());
        Ok(channel)
    }
}

/// Cheap to clone; every clone sees an identity swapped in by
/// [`replace_identity`](Self::replace_identity) (after an SVID renewal or a
/// new attestation).
#[derive(Debug, Clone)]
pub(crate) struct ServerClient {
    upstream: Arc<Upstream>,
    identity: Arc<ArcSwap<Identity>>,
    /// Woken when the server says this agent's SVID may only renew.
    renewal: Arc<Notify>,
    /// The generation of the latest identity the server refused in a way
    /// only a new attestation cures.
    reattest: Arc<watch::Sender<Option<u64>>>,
}

impl ServerClient {
    /// A server on this machine, over its local Node API socket.
    pub(crate) fn local(node_socket: &Path) -> Self {
        Self::with(
            Upstream::Local(super::channel::local_channel(node_socket)),
            None,
        )
    }

    /// The servers of `servers`, presenting `creds`, each call given
    /// `budget` over all the servers it tries.
    pub(crate) fn remote(
        servers: Arc<ServerGroup>,
        creds: AgentCredentials,
        budget: Duration,
    ) -> Self {
        servers.learn_svid_bundle(&creds.bundle);
        Self::with(Upstream::Group { servers, budget }, Some(creds))
    }

    fn with(upstream: Upstream, creds: Option<AgentCredentials>) -> Self {
        Self {
            upstream: Arc::new(upstream),
            identity: Arc::new(ArcSwap::from_pointee(Identity::new(creds, 0))),
            renewal: Arc::new(Notify::new()),
            reattest: Arc::new(watch::channel(None).0),
        }
    }

    /// Calls present `creds` from now on (and trust the CA certificates that
    /// came with them).
    pub(crate) fn replace_identity(&self, creds: AgentCredentials) {
        if let Upstream::Group { servers, .. } = &*self.upstream {
            servers.learn_svid_bundle(&creds.bundle);
        }
        self.identity
            .rcu(|current| Identity::new(Some(creds.clone()), current.generation + 1));
    }

    /// Resolves when a call presenting the identity in use was refused
    /// because the agent must attest again (see
    /// [`lanyard_proto::REATTEST_REQUIRED_METADATA`]: evicted, unknown,
    /// banned, expired). Refusals of calls made with an identity replaced
    /// since do not count.
    pub(crate) async fn reattestation_requested(&self) {
        let mut refused = self.reattest.subscribe();
        if refused
            .wait_for(|generation| *generation == Some(self.identity.load().generation))
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

    /// Passes `status` of a call made with identity `generation` through,
    /// first noting a request to renew or to attest again.
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

    /// Runs `call` on the server; in a group, on one server after another
    /// until one answers (see [`ServerGroup::call`]).
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(NodeClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let identity = self.identity.load_full();
        let answer = match &*self.upstream {
            Upstream::Local(channel) => call(NodeClient::new(channel.clone())).await,
            Upstream::Group { servers, budget } => servers
                .call(Some(*budget), |target| {
                    let node = identity
                        .channel(servers, target)
                        .map(|channel| call(NodeClient::new(channel)));
                    async move { node?.await }
                })
                .await
                .map_err(GroupError::into_status),
        };
        answer
            .map(tonic::Response::into_inner)
            .map_err(|status| self.observe(identity.generation, status))
    }

    /// What changed in this agent's entries since `since_revision` (everything when 0).
    pub(crate) async fn sync_entries(
        &self,
        since_revision: u64,
    ) -> Result<SyncEntriesResponse, ServerClientError> {
        Ok(self
            .call(|mut node| async move {
                node.sync_entries(SyncEntriesRequest { since_revision })
                    .await
            })
            .await?)
    }

    /// The trust domain's bundle: JWT keys and X.509 authorities (DER). The
    /// X.509 authorities also authenticate the servers from now on.
    pub(crate) async fn bundle(&self) -> Result<(Jwks, Vec<Vec<u8>>), ServerClientError> {
        let response = self
            .call(|mut node| async move { node.get_bundle(GetBundleRequest {}).await })
            .await?;
        let jwks = serde_json::from_slice(&response.jwks)?;
        if let Upstream::Group { servers, .. } = &*self.upstream {
            servers.learn_synced_authorities(&response.x509_authorities);
        }
        Ok((jwks, response.x509_authorities))
    }

    /// An X509-SVID for `entry_id` over the key of `csr` (DER).
    pub(crate) async fn mint_x509_svid(
        &self,
        entry_id: &str,
        csr: Vec<u8>,
    ) -> Result<MintX509SvidResponse, tonic::Status> {
        self.call(|mut node| {
            let request = MintX509SvidRequest {
                entry_id: entry_id.to_owned(),
                csr: csr.clone(),
            };
            async move { node.mint_x509_svid(request).await }
        })
        .await
    }

    /// Several JWT-SVIDs in one exchange: one result per request, in order.
    pub(crate) async fn mint_jwt_svids(
        &self,
        mints: &[MintJwtSvidRequest],
    ) -> Result<MintJwtSvidsResponse, tonic::Status> {
        self.call(|mut node| {
            let request = MintJwtSvidsRequest {
                mints: mints.to_vec(),
            };
            async move { node.mint_jwt_svids(request).await }
        })
        .await
    }

    /// `selectors`: the caller's selectors the entry's claims use.
    pub(crate) async fn mint_jwt_svid(
        &self,
        entry_id: &str,
        audience: &[String],
        selectors: &[String],
    ) -> Result<MintJwtSvidResponse, tonic::Status> {
        self.call(|mut node| {
            let request = MintJwtSvidRequest {
                entry_id: entry_id.to_owned(),
                audience: audience.to_vec(),
                selectors: selectors.to_vec(),
            };
            async move { node.mint_jwt_svid(request).await }
        })
        .await
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

    /// A refusal asks for a new attestation only while the identity it
    /// presented is in use: calls still in flight with a replaced one do not
    /// ask again after the agent attested.
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

        client
            .identity
            .rcu(|current| Identity::new(None, current.generation + 1));
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

    mod group {
        //! Calls over a group of in-process TLS Node APIs: failover,
        //! answers that are not failures, and CA certificates learnt.

        use super::*;
        use crate::upstream::attestation::tests::serve;
        use crate::upstream::test_node::NodeScript;
        use lanyard_proto::node::{AgentSvidResponse, GetBundleResponse, RenewAgentRequest};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tonic::{Request, Response, Status};

        type TestResult = Result<(), Box<dyn std::error::Error>>;

        /// Mints JWT-SVIDs for entry `ok`, refuses any other; counts the
        /// mints it was asked for; its bundle names `authorities`.
        #[derive(Clone, Default)]
        struct Minting {
            mints: Arc<AtomicUsize>,
            authorities: Vec<Vec<u8>>,
        }

        #[tonic::async_trait]
        impl NodeScript for Minting {
            async fn renew_agent(
                &self,
                _: Request<RenewAgentRequest>,
            ) -> Result<Response<AgentSvidResponse>, Status> {
                self.mints.fetch_add(1, Ordering::SeqCst);
                Ok(Response::new(AgentSvidResponse {
                    spiffe_id: "spiffe://example.org/node/a".to_owned(),
                    svid: vec![1],
                    bundle: self.authorities.clone(),
                    expires_at: 1,
                }))
            }

            async fn mint_jwt_svid(
                &self,
                request: Request<MintJwtSvidRequest>,
            ) -> Result<Response<MintJwtSvidResponse>, Status> {
                self.mints.fetch_add(1, Ordering::SeqCst);
                match request.into_inner().entry_id.as_str() {
                    "ok" => Ok(Response::new(MintJwtSvidResponse {
                        token: "token".to_owned(),
                        ..Default::default()
                    })),
                    _ => Err(Status::permission_denied("not this agent's entry")),
                }
            }

            async fn get_bundle(
                &self,
                _: Request<GetBundleRequest>,
            ) -> Result<Response<GetBundleResponse>, Status> {
                Ok(Response::new(GetBundleResponse {
                    trust_domain: "example.org".to_owned(),
                    jwks: br#"{"keys":[]}"#.to_vec(),
                    x509_authorities: self.authorities.clone(),
                }))
            }
        }

        /// Credentials over a self-signed certificate (the test servers ask
        /// for no client certificate).
        fn creds() -> Result<AgentCredentials, Box<dyn std::error::Error>> {
            let key = rcgen::KeyPair::generate()?;
            let cert =
                rcgen::CertificateParams::new(vec!["agent".to_owned()])?.self_signed(&key)?;
            Ok(AgentCredentials {
                spiffe_id: lanyard_proto::SpiffeId::parse("spiffe://example.org/node/a")?,
                svid: cert.der().clone(),
                key_pkcs8: key.serialize_der(),
                bundle: vec![cert.der().clone()],
                expires_at: 1_900_000_000,
            })
        }

        /// An address nothing listens on: bound, then closed.
        async fn dead_address() -> Result<String, Box<dyn std::error::Error>> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            Ok(listener.local_addr()?.to_string())
        }

        const BUDGET: Duration = Duration::from_secs(10);
        const AUDIENCE: &[String] = &[];

        #[tokio::test]
        async fn a_call_failing_on_a_dead_server_is_answered_by_another() -> TestResult {
            let live = Minting::default();
            let endpoint = serve(live.clone()).await?;
            let dead = dead_address().await?;
            // The dead server comes first in turn.
            let servers = Arc::new(ServerGroup::with_roots(
                vec![dead.clone(), endpoint.address.clone()],
                endpoint.trust_bundle.clone(),
                0,
            ));
            let client = ServerClient::remote(servers.clone(), creds()?, BUDGET);
            let started = std::time::Instant::now();
            let answer = client.mint_jwt_svid("ok", AUDIENCE, &[]).await?;
            assert!(started.elapsed() < BUDGET);
            assert_eq!(answer.token, "token");
            assert_eq!(live.mints.load(Ordering::SeqCst), 1);
            assert!(
                servers.is_avoided(&dead.parse()?),
                "the dead server is avoided"
            );
            assert!(!servers.is_avoided(&endpoint.address.parse()?));
            // The next calls go to the live server first, whatever the turn.
            for _ in 0..3 {
                client.mint_jwt_svid("ok", AUDIENCE, &[]).await?;
            }
            assert_eq!(live.mints.load(Ordering::SeqCst), 4);
            Ok(())
        }

        #[tokio::test]
        async fn a_renewal_failing_on_a_dead_server_is_answered_by_another() -> TestResult {
            let live = Minting {
                authorities: vec![vec![2]],
                ..Minting::default()
            };
            let endpoint = serve(live.clone()).await?;
            let dead = dead_address().await?;
            let servers = ServerGroup::with_roots(
                vec![dead.clone(), endpoint.address.clone()],
                endpoint.trust_bundle.clone(),
                0,
            );
            let renewed =
                crate::upstream::attestation::renew_over(&servers, Some(BUDGET), &creds()?).await?;
            assert_eq!(
                renewed.bundle,
                [rustls::pki_types::CertificateDer::from(vec![2])]
            );
            assert_eq!(live.mints.load(Ordering::SeqCst), 1);
            assert!(servers.is_avoided(&dead.parse()?));
            Ok(())
        }

        #[tokio::test]
        async fn a_refusal_is_the_answer_and_is_not_asked_elsewhere() -> TestResult {
            let counted = Minting::default();
            let first = serve(counted.clone()).await?;
            let second = serve(counted.clone()).await?;
            let mut roots = first.trust_bundle.clone();
            roots.extend(second.trust_bundle.clone());
            let servers = Arc::new(ServerGroup::with_roots(
                vec![first.address.clone(), second.address.clone()],
                roots,
                0,
            ));
            let client = ServerClient::remote(servers.clone(), creds()?, BUDGET);
            let refused = client.mint_jwt_svid("not-mine", AUDIENCE, &[]).await;
            assert!(
                matches!(&refused, Err(s) if s.code() == tonic::Code::PermissionDenied),
                "{refused:?}"
            );
            assert_eq!(
                counted.mints.load(Ordering::SeqCst),
                1,
                "asked again elsewhere"
            );
            for server in [&first, &second] {
                assert!(!servers.is_avoided(&server.address.parse()?));
            }
            Ok(())
        }

        #[tokio::test]
        async fn a_server_whose_ca_is_learnt_later_is_trusted_from_then_on() -> TestResult {
            let later = Minting::default();
            let later_endpoint = serve(later.clone()).await?;
            let later_ca = later_endpoint.trust_bundle[0].to_vec();
            // The known server's bundle names both CAs.
            let known = serve(Minting {
                authorities: vec![later_ca.clone()],
                ..Minting::default()
            })
            .await?;
            let servers = Arc::new(ServerGroup::with_roots(
                vec![known.address.clone()],
                known.trust_bundle.clone(),
                0,
            ));
            let client = ServerClient::remote(servers.clone(), creds()?, BUDGET);
            client.bundle().await?;
            assert!(
                servers
                    .roots()
                    .0
                    .iter()
                    .any(|c| c.as_ref() == later_ca.as_slice())
            );

            // A group whose configured bundle lacks the later server's CA
            // fails there (TLS), until a sync names it.
            let group = Arc::new(ServerGroup::with_roots(
                vec![later_endpoint.address.clone()],
                known.trust_bundle.clone(),
                0,
            ));
            let client = ServerClient::remote(group.clone(), creds()?, BUDGET);
            let untrusted = client.mint_jwt_svid("ok", AUDIENCE, &[]).await;
            assert!(
                matches!(&untrusted, Err(s) if s.code() == tonic::Code::Unavailable),
                "{untrusted:?}"
            );
            assert_eq!(later.mints.load(Ordering::SeqCst), 0);
            group.learn_synced_authorities(&[later_ca]);
            client.mint_jwt_svid("ok", AUDIENCE, &[]).await?;
            assert_eq!(later.mints.load(Ordering::SeqCst), 1);
            Ok(())
        }

        #[tokio::test]
        async fn no_server_answering_is_unavailable_within_the_budget() -> TestResult {
            let servers = Arc::new(ServerGroup::with_roots(
                vec![dead_address().await?, dead_address().await?],
                Vec::new(),
                0,
            ));
            let client = ServerClient::remote(servers, creds()?, BUDGET);
            let down = client.mint_jwt_svid("ok", AUDIENCE, &[]).await;
            assert!(
                matches!(&down, Err(s) if s.code() == tonic::Code::Unavailable),
                "{down:?}"
            );
            Ok(())
        }
    }
}
