//! Rows 12-14: an HA group, 3 servers on one PostgreSQL database, with the
//! agents spread over them, beside one server alone on its own database in
//! the same run: JWT-SVID mints per second (MintJwtSvid over the agents' own
//! mTLS connections, a new audience every call), full sync and one change
//! reaching every agent.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use lanyard_proto::node::MintJwtSvidRequest;
use lanyard_proto::node::node_client::NodeClient;
use lanyard_server::RunningServer;
use lanyard_server::config::ServerConfig;
use lanyard_tests::TRUST_DOMAIN;
use tokio::runtime::Runtime;
use tonic::transport::Channel;

use crate::UNLIMITED_SERVER;
use crate::stats::{self, Sample, Worker};
use crate::sync::{self, Fleet, SyncFigures};

/// Entries per agent, as in row 8.
const ENTRIES_PER_AGENT: usize = 100;

/// Servers sharing one datastore, each with its own data dir (and so its own
/// CA and signing key) and `server_id`.
pub(crate) async fn start_servers(
    root: &Path,
    names: &[&str],
    datastore_url: &str,
) -> anyhow::Result<Vec<RunningServer>> {
    let mut servers = Vec::with_capacity(names.len());
    for name in names {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let text = format!(
            "trust_domain = \"{TRUST_DOMAIN}\"\nserver_id = \"{name}\"\n\
             issuer = \"https://127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
             [node_api]\nlisten = \"127.0.0.1:0\"\n[datastore]\nurl = \"{datastore_url}\"\n\
             {UNLIMITED_SERVER}",
            root.join(name).display()
        );
        servers.push(
            lanyard_server::start_with_listener(ServerConfig::from_toml(&text, name)?, listener)
                .await
                .with_context(|| format!("starting {name}"))?,
        );
    }
    Ok(servers)
}

/// Refreshes every server's trust bundle until each holds every server's CA
/// certificates (servers do it by themselves every 10 s).
pub(crate) async fn wait_for_one_bundle(servers: &[RunningServer]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for server in servers {
            server.trust_bundle.refresh().await?;
        }
        let one = servers.iter().all(|a| {
            let union = a.trust_bundle.certificates();
            servers
                .iter()
                .all(|b| b.ca.bundle().iter().all(|cert| union.contains(cert)))
        });
        if one {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the group has no single trust bundle after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Mints a JWT-SVID for a new audience every call, for its agents in turn,
/// each over its own connection to its own server.
pub(crate) struct Minter {
    agents: Vec<(NodeClient<Channel>, String)>,
    prefix: String,
}

impl Worker for Minter {
    async fn call(&mut self, n: u64) -> anyhow::Result<()> {
        let len = self.agents.len() as u64;
        let (client, entry_id) = &mut self.agents[(n % len) as usize];
        client
            .mint_jwt_svid(MintJwtSvidRequest {
                entry_id: entry_id.clone(),
                audience: vec![format!("{}-{n}", self.prefix)],
                selectors: Vec::new(),
            })
            .await
            .context("MintJwtSvid")?;
        Ok(())
    }
}

/// `callers` concurrent callers over every agent of `fleet` (caller `w` mints
/// for agents w, w + callers, …), in a fixed window.
pub(crate) async fn mints(
    fleet: &Fleet,
    callers: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Sample> {
    let callers = callers.clamp(1, fleet.clients.len().max(1));
    let workers = (0..callers)
        .map(|w| Minter {
            agents: (w..fleet.clients.len())
                .step_by(callers)
                .map(|i| (fleet.clients[i].clone(), Fleet::workload_entry(i)))
                .collect(),
            prefix: format!("mint-{w}"),
        })
        .collect();
    stats::run(workers, warmup, window).await
}

/// What rows 12-14 measured.
pub(crate) struct GroupFigures {
    pub servers: usize,
    pub agents: usize,
    pub callers: usize,
    /// Mints across the group, and on one server alone (row 12 only).
    pub mints: Option<(Sample, Sample)>,
    /// Sync across the group (rows 13-14 only).
    pub sync: Option<SyncFigures>,
}

pub(crate) struct Wanted {
    pub mints: bool,
    pub sync: bool,
}

/// One server alone on `one_url` (mints only), then `names.len()` servers on
/// `group_url`; servers run on `server_rt`, agents and callers on `client_rt`.
pub(crate) fn run(
    server_rt: &Runtime,
    client_rt: &Runtime,
    root: &Path,
    (one_url, group_url): (&str, &str),
    (agents, callers): (usize, usize),
    (warmup, window): (Duration, Duration),
    wanted: Wanted,
) -> anyhow::Result<GroupFigures> {
    let names = ["group-1", "group-2", "group-3"];
    let mut alone = None;
    if wanted.mints {
        eprintln!("row 12: one server alone on PostgreSQL, {agents} agents…");
        let servers = server_rt.block_on(start_servers(&root.join("one"), &["alone"], one_url))?;
        let result = client_rt.block_on(async {
            let fleet = sync::setup(&[&servers[0]], one_url, agents, ENTRIES_PER_AGENT).await?;
            eprintln!("row 12: one server's setup took {}", stats::ms(fleet.setup));
            mints(&fleet, callers, warmup, window).await
        });
        for server in servers {
            server_rt.block_on(server.shutdown());
        }
        alone = Some(result?);
    }
    eprintln!(
        "rows 12-14: {} servers on one PostgreSQL, {agents} agents round-robin…",
        names.len()
    );
    let servers = server_rt.block_on(async {
        let servers = start_servers(&root.join("group"), &names, group_url).await?;
        wait_for_one_bundle(&servers).await?;
        anyhow::Ok(servers)
    })?;
    let result = client_rt.block_on(async {
        let refs: Vec<&RunningServer> = servers.iter().collect();
        let fleet = sync::setup(&refs, group_url, agents, ENTRIES_PER_AGENT).await?;
        eprintln!(
            "rows 12-14: the group's setup took {}",
            stats::ms(fleet.setup)
        );
        let group_mints = match alone {
            Some(alone) => Some((mints(&fleet, callers, warmup, window).await?, alone)),
            None => None,
        };
        let sync = if wanted.sync {
            Some(sync::measure(&fleet).await?)
        } else {
            None
        };
        anyhow::Ok((group_mints, sync))
    });
    for server in servers {
        server_rt.block_on(server.shutdown());
    }
    let (mints, sync) = result?;
    Ok(GroupFigures {
        servers: names.len(),
        agents,
        callers,
        mints,
        sync,
    })
}
