//! The agent while its server is away: tokens it already holds keep being
//! served, a request that needs the server is refused with `Unavailable`
//! (after a bounded wait, not a hang), and service resumes by itself once the
//! server is back on the same socket and data dir.

use std::time::{Duration, Instant};

use lanyard_agent::client::WorkloadClient;
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World};
use spiffe::{TrustDomain, WorkloadApiClient};
use tonic::Code;

const WORKLOAD_PATH: &str = "/outage/workload";
/// How long the agent may take to notice the server is back.
const RESUME_DEADLINE: Duration = Duration::from_secs(60);
const POLL_EVERY: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tokens_outlive_a_server_outage_and_service_resumes() -> anyhow::Result<()> {
    let world = World::start("", &[EntrySpec::mine(WORKLOAD_PATH)]).await?;
    let client = WorkloadApiClient::connect_to(world.endpoint()).await?;
    let first = client.fetch_jwt_svid(["cached"], None).await?;
    assert_eq!(
        first.spiffe_id().to_string(),
        format!("spiffe://{TRUST_DOMAIN}{WORKLOAD_PATH}")
    );
    // The same request is served from the cache: the very same token.
    let again = client.fetch_jwt_svid(["cached"], None).await?;
    assert_eq!(again.token(), first.token());

    let down = world.stop_server().await;

    // Cached: still served, by a new client connection too.
    let client = WorkloadApiClient::connect_to(down.endpoint()).await?;
    let during = client.fetch_jwt_svid(["cached"], None).await?;
    assert_eq!(during.token(), first.token());
    // The bundle the agent holds is still served, and tokens still validate.
    let bundles = client.fetch_jwt_bundles().await?;
    assert!(bundles.get(&TrustDomain::new(TRUST_DOMAIN)?).is_some());
    let validated = client.validate_jwt_token("cached", first.token()).await?;
    assert_eq!(validated.spiffe_id(), first.spiffe_id());

    // Not cached: needs the server, which is away.
    let mut raw = WorkloadClient::new(&down.endpoint())?;
    let uncached = raw.fetch_jwt(vec!["uncached".to_owned()], None).await;
    assert_eq!(
        uncached.as_ref().err().and_then(|e| e.code()),
        Some(Code::Unavailable),
        "{uncached:?}"
    );
    let via_crate = client.fetch_jwt_svid(["uncached"], None).await;
    assert!(via_crate.is_err(), "{via_crate:?}");

    // The server comes back on the same socket and data dir; nothing is
    // restarted on the agent's side and no one tells it.
    let world = down.restart_server().await?;
    let deadline = Instant::now() + RESUME_DEADLINE;
    let resumed = loop {
        match raw.fetch_jwt(vec!["uncached".to_owned()], None).await {
            Ok(svids) => break svids,
            Err(e) if Instant::now() < deadline && e.code() == Some(Code::Unavailable) => {
                tokio::time::sleep(POLL_EVERY).await;
            }
            Err(e) => anyhow::bail!("service did not resume: {e}"),
        }
    };
    assert_eq!(resumed.len(), 1);
    assert_eq!(
        resumed[0].spiffe_id,
        format!("spiffe://{TRUST_DOMAIN}{WORKLOAD_PATH}")
    );
    // The token minted after the restart validates against the bundle.
    let validated = raw
        .validate_jwt("uncached".to_owned(), resumed[0].token.clone())
        .await?;
    assert_eq!(validated.spiffe_id, resumed[0].spiffe_id);

    world.stop().await;
    Ok(())
}
