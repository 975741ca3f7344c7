//! FetchJWTSVID per the SPIFFE spec: an empty `spiffe_id` asks for every
//! identity of the caller; a named one must be among them. Repeated requests
//! for the same audience set, in any order, get the cached token.

use lanyard_agent::client::WorkloadClient;
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World, my_uid};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_spiffe_id_means_all_and_a_named_one_must_be_ours() -> anyhow::Result<()> {
    let uid = format!("unix:uid:{}", my_uid());
    let world = World::start(
        "",
        &[
            EntrySpec::new("/api/one", &[&uid]),
            EntrySpec::new("/api/two", &[&uid]),
            EntrySpec::new(
                "/api/not-mine",
                &[&format!("unix:uid:{}", my_uid().wrapping_add(4242))],
            ),
        ],
    )
    .await?;
    let mut client = WorkloadClient::new(&world.endpoint())?;
    let one = format!("spiffe://{TRUST_DOMAIN}/api/one");
    let two = format!("spiffe://{TRUST_DOMAIN}/api/two");

    let all = client.fetch_jwt(vec!["a".into(), "b".into()], None).await?;
    let mut ids: Vec<&str> = all.iter().map(|s| s.spiffe_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, [one.as_str(), two.as_str()]);

    let named = client
        .fetch_jwt(vec!["b".into(), "a".into()], Some(two.clone()))
        .await?;
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].spiffe_id, two);
    // Same identity and audience set in another order: the cached token.
    let cached = all
        .iter()
        .find(|s| s.spiffe_id == two)
        .map(|s| s.token.clone());
    assert_eq!(Some(named[0].token.clone()), cached);

    let not_mine = client
        .fetch_jwt(
            vec!["a".into()],
            Some(format!("spiffe://{TRUST_DOMAIN}/api/not-mine")),
        )
        .await;
    assert_eq!(
        not_mine.err().and_then(|e| e.code()),
        Some(Code::PermissionDenied)
    );
    let malformed = client
        .fetch_jwt(vec!["a".into()], Some("not-an-id".into()))
        .await;
    assert_eq!(
        malformed.err().and_then(|e| e.code()),
        Some(Code::InvalidArgument)
    );

    world.stop().await;
    Ok(())
}

/// Issue 11, finding 7: FetchJWTSVID applies the server's audience rules on
/// the agent's socket, so an audience with control characters (or too many,
/// or too long) is InvalidArgument, naming the problem, and is never signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiences_with_control_characters_are_invalid_arguments() -> anyhow::Result<()> {
    let world = World::start("", &[EntrySpec::mine("/api/aud")]).await?;
    let mut client = WorkloadClient::new(&world.endpoint())?;
    let cases: [(Vec<String>, &str); 5] = [
        (vec!["aud\r\nx".into()], "control character '\\r'"),
        (vec!["a\0b".into()], "control character '\\0'"),
        (vec!["ok".into(), "c1\u{85}".into()], "audience value 1"),
        (vec!["x".into(); 17], "more than 16"),
        (vec!["a".repeat(1025)], "longer than 1024"),
    ];
    for (audience, problem) in cases {
        let refused = client.fetch_jwt(audience.clone(), None).await;
        match refused {
            Err(e) => {
                assert_eq!(e.code(), Some(Code::InvalidArgument), "{audience:?}: {e}");
                assert!(e.to_string().contains(problem), "{audience:?}: {e}");
            }
            Ok(svids) => panic!("{audience:?} was signed: {svids:?}"),
        }
    }
    // The agent is fine for a good audience afterwards.
    let good = client
        .fetch_jwt(vec!["sts.amazonaws.com".into()], None)
        .await?;
    assert_eq!(good.len(), 1);
    world.stop().await;
    Ok(())
}
