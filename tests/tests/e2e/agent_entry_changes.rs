//! Registration changes reach a running agent by itself: an entry deleted
//! through the Admin API stops being served within the sync interval, cached
//! tokens included; an entry created later starts being served.

use std::time::{Duration, Instant};

use lanyard_host::transport::unix_channel;
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{CreateEntryRequest, DeleteEntryRequest, ListEntriesRequest};
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World, my_uid};
use spiffe::{WorkloadApiClient, WorkloadApiError};

const AUDIENCE: &str = "changes";
/// Far longer than the 1 s sync interval configured below.
const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_entries_stop_and_new_ones_start_within_the_sync_interval() -> anyhow::Result<()> {
    let world = World::start_with_agent_config(
        "",
        &[EntrySpec::mine("/doomed")],
        "sync_interval_seconds = 1",
        "",
    )
    .await?;
    let client = WorkloadApiClient::connect_to(world.endpoint()).await?;
    let svid = client.fetch_jwt_svid([AUDIENCE], None).await?;
    assert_eq!(
        svid.spiffe_id().to_string(),
        format!("spiffe://{TRUST_DOMAIN}/doomed")
    );

    let mut admin = AdminClient::new(unix_channel(&world.server.admin_socket));
    let id = admin
        .list_entries(ListEntriesRequest::default())
        .await?
        .into_inner()
        .entries[0]
        .id
        .clone();
    admin.delete_entry(DeleteEntryRequest { id }).await?;

    // The same (cached) audience too: a deleted identity is not served from cache.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match client.fetch_jwt_svid([AUDIENCE], None).await {
            Err(WorkloadApiError::NoIdentityIssued | WorkloadApiError::PermissionDenied(_)) => {
                break;
            }
            other => anyhow::ensure!(
                Instant::now() < deadline,
                "still served after the deadline: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    admin
        .create_entry(CreateEntryRequest {
            spiffe_id: format!("spiffe://{TRUST_DOMAIN}/reborn"),
            parent_id: String::new(),
            selectors: vec![format!("unix:uid:{}", my_uid())],
            jwt_svid_ttl_seconds: 0,
            admin: false,
            ..CreateEntryRequest::default()
        })
        .await?;
    let deadline = Instant::now() + DEADLINE;
    let reborn = loop {
        match client.fetch_jwt_svid([AUDIENCE], None).await {
            Ok(svid) => break svid,
            Err(e) => anyhow::ensure!(Instant::now() < deadline, "new entry never served: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        reborn.spiffe_id().to_string(),
        format!("spiffe://{TRUST_DOMAIN}/reborn")
    );
    world.stop().await;
    Ok(())
}
