//! Node attestation and the mTLS Node API, end to end over real TCP and TLS:
//! join tokens are single use; an agent syncs and mints only its own entries;
//! a superseded or evicted SVID is refused (the one renewed from may renew
//! again until the new one is used); no client certificate, no service.

use anyhow::Context;
use lanyard_agent::upstream::{self as node_client, AgentCredentials, ServerEndpoint};
use lanyard_host::transport::unix_channel;
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{CreateEntryRequest, EvictAgentRequest, GenerateJoinTokenRequest};
use lanyard_proto::node::node_client::NodeClient;
use lanyard_proto::node::{
    AttestAgentRequest, MintJwtSvidRequest, MintX509SvidRequest, SyncEntriesRequest,
};
use lanyard_server::RunningServer;
use lanyard_server::config::ServerConfig;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

async fn start_server(dir: &std::path::Path, datastore_url: &str) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let text = format!(
        "trust_domain = \"example.org\"\nissuer = \"https://127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
         [node_api]\nlisten = \"127.0.0.1:0\"\n[datastore]\nurl = \"{datastore_url}\"\n",
        dir.join("server").display()
    );
    Ok(
        lanyard_server::start_with_listener(ServerConfig::from_toml(&text, "test")?, listener)
            .await?,
    )
}

async fn join_token(admin: &mut AdminClient<Channel>, spiffe_id: &str) -> anyhow::Result<String> {
    let request = GenerateJoinTokenRequest {
        spiffe_id: spiffe_id.to_owned(),
        ttl_seconds: 300,
    };
    Ok(admin.generate_join_token(request).await?.into_inner().token)
}

async fn create_entry(
    admin: &mut AdminClient<Channel>,
    spiffe_id: &str,
    parent: &str,
) -> anyhow::Result<String> {
    let request = CreateEntryRequest {
        spiffe_id: spiffe_id.to_owned(),
        parent_id: parent.to_owned(),
        selectors: vec!["unix:uid:1000".to_owned()],
        jwt_svid_ttl_seconds: 0,
        admin: false,
        ..CreateEntryRequest::default()
    };
    Ok(admin.create_entry(request).await?.into_inner().id)
}

fn node(
    server: &ServerEndpoint,
    creds: Option<&AgentCredentials>,
) -> anyhow::Result<NodeClient<Channel>> {
    Ok(NodeClient::new(node_client::channel(server, creds)?))
}

/// A server, how an agent reaches its mTLS Node API, and an Admin client.
async fn start_server_with_clients(
    dir: &std::path::Path,
    datastore_url: &str,
) -> anyhow::Result<(RunningServer, ServerEndpoint, AdminClient<Channel>)> {
    let server = start_server(dir, datastore_url).await?;
    let endpoint = ServerEndpoint::new(
        &server
            .node_addr
            .context("mTLS Node API enabled")?
            .to_string(),
        &server.ca_bundle,
    )?;
    let admin = AdminClient::new(unix_channel(&server.admin_socket));
    Ok((server, endpoint, admin))
}

async fn mint(client: &mut NodeClient<Channel>, entry_id: &str) -> Result<String, tonic::Status> {
    let request = MintJwtSvidRequest {
        entry_id: entry_id.to_owned(),
        audience: vec!["aud".into()],
        selectors: Vec::new(),
    };
    Ok(client.mint_jwt_svid(request).await?.into_inner().spiffe_id)
}

/// An X509-SVID for `entry_id` over a fresh key; the SPIFFE ID its leaf names.
async fn mint_x509(
    client: &mut NodeClient<Channel>,
    entry_id: &str,
) -> Result<String, tonic::Status> {
    let key = rcgen::KeyPair::generate().map_err(|e| tonic::Status::internal(e.to_string()))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let request = MintX509SvidRequest {
        entry_id: entry_id.to_owned(),
        csr: csr.der().to_vec(),
    };
    let minted = client.mint_x509_svid(request).await?.into_inner();
    let leaf = minted.cert_chain.first().cloned().unwrap_or_default();
    let (id, _) = lanyard_server::authority::ca::peer_identity(&leaf)
        .ok_or_else(|| tonic::Status::internal("the leaf names no SPIFFE ID"))?;
    assert_eq!(id.as_str(), minted.spiffe_id);
    Ok(minted.spiffe_id)
}

/// Against SQLite, and against PostgreSQL where one is configured (always in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_agents_get_exactly_their_own_identities() -> anyhow::Result<()> {
    let urls_dir = tempfile::tempdir()?;
    for url in lanyard_tests::datastore_urls(urls_dir.path()).await? {
        attested_agents_scenario(&url).await?;
    }
    Ok(())
}

async fn attested_agents_scenario(datastore_url: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, endpoint, mut admin) =
        start_server_with_clients(dir.path(), datastore_url).await?;

    let (id_a, id_b) = ("spiffe://example.org/node/a", "spiffe://example.org/node/b");
    let token_a = join_token(&mut admin, id_a).await?;
    let creds_a = node_client::attest(&endpoint, &token_a).await?;
    assert_eq!(creds_a.spiffe_id.as_str(), id_a);
    let reused = node_client::attest(&endpoint, &token_a).await;
    assert!(
        matches!(&reused, Err(node_client::NodeClientError::Refused(s)) if s.code() == Code::PermissionDenied),
        "{reused:?}"
    );
    let creds_b = node_client::attest(&endpoint, &join_token(&mut admin, id_b).await?).await?;

    let entry_a = create_entry(&mut admin, "spiffe://example.org/web", id_a).await?;
    let entry_b = create_entry(&mut admin, "spiffe://example.org/db", id_b).await?;

    let mut a = node(&endpoint, Some(&creds_a))?;
    let synced = a
        .sync_entries(SyncEntriesRequest { since_revision: 0 })
        .await?
        .into_inner();
    assert!(synced.full);
    let ids: Vec<&str> = synced.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![entry_a.as_str()],
        "agent A sees only its own entry"
    );
    assert_eq!(mint(&mut a, &entry_a).await?, "spiffe://example.org/web");
    assert_eq!(
        mint(&mut a, &entry_b).await.map_err(|s| s.code()),
        Err(Code::PermissionDenied),
        "B's entry"
    );
    // X509-SVIDs: the same ownership check, over a key the agent made.
    assert_eq!(
        mint_x509(&mut a, &entry_a).await?,
        "spiffe://example.org/web"
    );
    assert_eq!(
        mint_x509(&mut a, &entry_b).await.map_err(|s| s.code()),
        Err(Code::PermissionDenied),
        "B's entry, as an X509-SVID"
    );
    let garbage = a
        .mint_x509_svid(MintX509SvidRequest {
            entry_id: entry_a.clone(),
            csr: b"not a csr".to_vec(),
        })
        .await;
    assert_eq!(
        garbage.map_err(|s| s.code()).err(),
        Some(Code::InvalidArgument)
    );
    let mut b = node(&endpoint, Some(&creds_b))?;
    assert_eq!(mint(&mut b, &entry_b).await?, "spiffe://example.org/db");

    // Incremental sync: a deleted entry arrives as a deletion, nothing else.
    admin
        .delete_entry(lanyard_proto::admin::DeleteEntryRequest {
            id: entry_a.clone(),
        })
        .await?;
    let delta = a
        .sync_entries(SyncEntriesRequest {
            since_revision: synced.revision,
        })
        .await?
        .into_inner();
    assert!(!delta.full, "{delta:?}");
    assert!(delta.entries.is_empty());
    assert_eq!(delta.deleted_entry_ids, vec![entry_a.clone()]);

    // Without a client certificate there is nothing but attestation.
    let mut anonymous = node(&endpoint, None)?;
    let refused = anonymous
        .sync_entries(SyncEntriesRequest { since_revision: 0 })
        .await;
    assert_eq!(
        refused.map(|_| ()).map_err(|s| s.code()),
        Err(Code::Unauthenticated)
    );

    // Renewal supersedes the old SVID.
    let renewed = node_client::renew(&endpoint, &creds_b).await?;
    assert_eq!(renewed.spiffe_id, creds_b.spiffe_id);
    let mut stale = node(&endpoint, Some(&creds_b))?;
    assert_eq!(
        mint(&mut stale, &entry_b).await.map_err(|s| s.code()),
        Err(Code::PermissionDenied)
    );
    let mut fresh = node(&endpoint, Some(&renewed))?;
    assert_eq!(mint(&mut fresh, &entry_b).await?, "spiffe://example.org/db");

    // Eviction takes effect on the very next call.
    admin
        .evict_agent(EvictAgentRequest {
            spiffe_id: id_b.to_owned(),
        })
        .await?;
    let evicted = mint(&mut fresh, &entry_b).await;
    assert!(
        matches!(&evicted, Err(s) if s.code() == Code::PermissionDenied && s.message().contains("evicted")),
        "{evicted:?}"
    );
    assert!(node_client::renew(&endpoint, &renewed).await.is_err());

    // Credentials survive a restart of the agent: saved 0600, loaded back.
    let state = dir.path().join("agent");
    creds_a.save(&state)?;
    let loaded = AgentCredentials::load(&state)?.context("saved credentials")?;
    assert_eq!(loaded.spiffe_id, creds_a.spiffe_id);
    let mut reloaded = node(&endpoint, Some(&loaded))?;
    assert!(
        reloaded
            .sync_entries(SyncEntriesRequest { since_revision: 0 })
            .await
            .is_ok()
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.join(lanyard_agent::upstream::CREDENTIALS_FILE))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    server.shutdown().await;
    Ok(())
}

fn refused_code<T>(result: Result<T, node_client::NodeClientError>) -> Option<Code> {
    match result {
        Err(node_client::NodeClientError::Refused(status)) => Some(status.code()),
        _ => None,
    }
}

/// A renewal whose response never reaches the agent does not lock it out: the
/// old SVID may renew again (and do nothing else) until the new one is used.
/// Of two renewals racing with the same SVID, exactly one yields a usable SVID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_renewal_response_is_recovered_by_renewing_again() -> anyhow::Result<()> {
    let urls_dir = tempfile::tempdir()?;
    for url in lanyard_tests::datastore_urls(urls_dir.path()).await? {
        lost_renewal_scenario(&url).await?;
    }
    Ok(())
}

async fn lost_renewal_scenario(datastore_url: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, endpoint, mut admin) =
        start_server_with_clients(dir.path(), datastore_url).await?;
    let id = "spiffe://example.org/node/c";
    let creds = node_client::attest(&endpoint, &join_token(&mut admin, id).await?).await?;
    let entry = create_entry(&mut admin, "spiffe://example.org/api", id).await?;

    // The server commits this renewal, but the agent never sees the answer.
    let lost = node_client::renew(&endpoint, &creds).await?;
    let mut old = node(&endpoint, Some(&creds))?;
    let refused = mint(&mut old, &entry).await;
    assert!(
        matches!(&refused, Err(s) if s.code() == Code::PermissionDenied && s.message().contains("may only renew")),
        "{refused:?}"
    );
    let renewed = node_client::renew(&endpoint, &creds).await?;
    let mut dead = node(&endpoint, Some(&lost))?;
    assert_eq!(
        mint(&mut dead, &entry).await.map_err(|s| s.code()),
        Err(Code::PermissionDenied),
        "the SVID whose response was lost"
    );

    // The first call with the new SVID kills the old one, even for renewal.
    let mut fresh = node(&endpoint, Some(&renewed))?;
    assert_eq!(mint(&mut fresh, &entry).await?, "spiffe://example.org/api");
    assert_eq!(
        refused_code(node_client::renew(&endpoint, &creds).await),
        Some(Code::PermissionDenied)
    );

    // Two renewals with the same SVID (a stolen copy racing the agent). If both
    // saw the same record, one is refused; if one came after the other had
    // committed, it renewed from the previous serial and replaced the first.
    // Either way exactly one SVID comes out usable.
    let (a, b) = tokio::join!(
        node_client::renew(&endpoint, &renewed),
        node_client::renew(&endpoint, &renewed)
    );
    let mut usable = 0;
    for outcome in [a, b] {
        match outcome {
            Ok(won) => {
                let mut client = node(&endpoint, Some(&won))?;
                usable += usize::from(mint(&mut client, &entry).await.is_ok());
            }
            lost => assert_eq!(refused_code(lost), Some(Code::PermissionDenied)),
        }
    }
    assert_eq!(usable, 1);

    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_from_another_trust_domain_is_not_trusted() -> anyhow::Result<()> {
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let sqlite = |dir: &std::path::Path| format!("sqlite://{}/db.sqlite3?mode=rwc", dir.display());
    let server_a = start_server(dir_a.path(), &sqlite(dir_a.path())).await?;
    let server_b = start_server(dir_b.path(), &sqlite(dir_b.path())).await?;
    // Server B's address with server A's CA as the trust bundle.
    let wrong = ServerEndpoint::new(
        &server_b.node_addr.expect("enabled").to_string(),
        &server_a.ca_bundle,
    )?;
    let mut admin_b = AdminClient::new(unix_channel(&server_b.admin_socket));
    let token = join_token(&mut admin_b, "").await?;
    let result = node_client::attest(&wrong, &token).await;
    assert!(
        matches!(&result, Err(node_client::NodeClientError::Refused(s)) if s.code() == Code::Unavailable),
        "{result:?}"
    );
    server_a.shutdown().await;
    server_b.shutdown().await;
    Ok(())
}

/// Issue 11: a CSR that cannot be signed no longer spends the join token;
/// the Admin API refuses join tokens for the system's IDs and the bare
/// trust domain; a token stored before that, naming the local agent, is
/// refused at attestation; the server never signs an audience with control
/// characters. SQLite, and PostgreSQL where configured (always in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_csr_leaves_the_token_and_system_ids_stay_the_systems() -> anyhow::Result<()> {
    let urls_dir = tempfile::tempdir()?;
    for url in lanyard_tests::datastore_urls(urls_dir.path()).await? {
        bad_csr_and_system_ids_scenario(&url).await?;
    }
    Ok(())
}

async fn bad_csr_and_system_ids_scenario(datastore_url: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, endpoint, mut admin) =
        start_server_with_clients(dir.path(), datastore_url).await?;
    let id = "spiffe://example.org/node/csr";
    let token = join_token(&mut admin, id).await?;
    let garbage = node(&endpoint, None)?
        .attest_agent(AttestAgentRequest {
            join_token: token.clone(),
            csr: b"not a csr".to_vec(),
        })
        .await;
    assert!(
        matches!(&garbage, Err(s) if s.code() == Code::InvalidArgument && s.message().contains("certificate signing request")),
        "{garbage:?}"
    );
    let creds = node_client::attest(&endpoint, &token).await?;
    assert_eq!(
        creds.spiffe_id.as_str(),
        id,
        "the same token, with a good CSR"
    );

    for (wanted, rule) in [
        (
            "spiffe://example.org/lanyard/agent/local",
            "reserved for the system",
        ),
        (
            "spiffe://example.org/lanyard/server",
            "reserved for the system",
        ),
        (
            "spiffe://example.org/lanyard/agent/x",
            "reserved for the system",
        ),
        ("spiffe://example.org", "needs a path"),
    ] {
        let refused = join_token(&mut admin, wanted).await;
        let status = refused
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<tonic::Status>());
        assert!(
            matches!(status, Some(s) if s.code() == Code::InvalidArgument && s.message().contains(rule)),
            "{wanted}: {refused:?}"
        );
    }

    // A token stored by an older server for the local agent's ID.
    let legacy = "00112233445566778899aabbccddeeff00112233";
    let hash = lanyard_host::encoding::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, legacy.as_bytes()).as_ref(),
    );
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(datastore_url).await?;
    sqlx::query("INSERT INTO join_tokens (token_hash, spiffe_id, created_at, expires_at, used_at) VALUES ($1, $2, 0, 9999999999, NULL)")
        .bind(hash)
        .bind("spiffe://example.org/lanyard/agent/local")
        .execute(&db)
        .await?;
    db.close().await;
    assert_eq!(
        refused_code(node_client::attest(&endpoint, legacy).await),
        Some(Code::PermissionDenied),
        "a remote node must never become the local agent"
    );

    // The server's mint: control characters are never signed into `aud`.
    let entry = create_entry(&mut admin, "spiffe://example.org/web", id).await?;
    let mut client = node(&endpoint, Some(&creds))?;
    for bad in ["aud\r\nx", "a\0b", "del\u{7f}"] {
        let minted = client
            .mint_jwt_svid(MintJwtSvidRequest {
                entry_id: entry.clone(),
                audience: vec!["sts.amazonaws.com".into(), bad.into()],
                selectors: Vec::new(),
            })
            .await;
        assert!(
            matches!(&minted, Err(s) if s.code() == Code::InvalidArgument && s.message().contains("control character")),
            "{bad:?}: {minted:?}"
        );
    }
    assert_eq!(mint(&mut client, &entry).await?, "spiffe://example.org/web");

    server.shutdown().await;
    Ok(())
}
