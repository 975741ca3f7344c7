//! `systemd:unit` and `systemd:slice` selectors through the real socket:
//! real cgroups named as systemd names them, probe processes moved into
//! them, and the agent reading their cgroups as any caller's.

use lanyard_tests::cgroups::TestSlice;
use lanyard_tests::probe::SteppedProbe;
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World, my_uid};

const PROBE: &str = env!("CARGO_BIN_EXE_workload-probe");
const WEB: &str = "/units/web";
const IN_SLICE: &str = "/units/batch-in-test-slice";

/// A process in `web.service` gets the entry on that unit; a sibling in
/// another unit of the same slice does not; a unit in the test slice gets
/// the entry on slice and unit; and a process moved to another unit after
/// connecting is refused on its open connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_and_slices_select_their_own_processes_only() -> anyhow::Result<()> {
    let Some(slice) = TestSlice::create_or_skip()? else {
        return Ok(());
    };
    // A unit's entries also name the uid its processes run as (the probes run as ours).
    let uid = format!("unix:uid:{}", my_uid());
    let world = World::start(
        "",
        &[
            EntrySpec::new(WEB, &["systemd:unit:web.service", &uid]),
            EntrySpec::new(
                IN_SLICE,
                &[
                    &format!("systemd:slice:{}", slice.name()),
                    "systemd:unit:batch.service",
                    &uid,
                ],
            ),
        ],
    )
    .await?;
    let endpoint = world.endpoint();

    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let mut web = SteppedProbe::spawn(PROBE, &endpoint, "cgroups", false)?;
        slice.move_into("web.service", web.pid())?;
        assert_eq!(web.step()?, format!("ok spiffe://{TRUST_DOMAIN}{WEB}"));

        let mut db = SteppedProbe::spawn(PROBE, &endpoint, "cgroups", false)?;
        slice.move_into("db.service", db.pid())?;
        let sibling = db.step()?;
        assert!(sibling.starts_with("denied "), "{sibling}");
        assert!(sibling.contains("no identity issued"), "{sibling}");

        let mut batch = SteppedProbe::spawn(PROBE, &endpoint, "cgroups", false)?;
        slice.move_into("batch.service", batch.pid())?;
        assert_eq!(
            batch.step()?,
            format!("ok spiffe://{TRUST_DOMAIN}{IN_SLICE}")
        );

        // Between its two calls the web probe moves to batch.service, whose
        // entry it would match: the move, not the unit, is why it gets no
        // cgroup selectors and so no identity on its open connection.
        slice.move_into("batch.service", web.pid())?;
        let moved = web.step()?;
        assert!(moved.starts_with("denied "), "{moved}");
        assert!(moved.contains("no identity issued"), "{moved}");
        Ok(())
    })?;

    world.stop().await;
    Ok(())
}
