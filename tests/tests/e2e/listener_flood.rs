//! A hostile client of the OIDC port, against the real server binary held to
//! systemd's default of 1,024 open files: 1,005 TLS connections from one
//! address, each sending half a request and then nothing. Before, they used
//! up the server's descriptors, so discovery fetches timed out, the Admin
//! socket stopped answering and the accept loop logged "Too many open files"
//! hundreds of thousands of times a second. Now the address holds at most a
//! quarter of the OIDC port's places, the rest are closed at once, and others
//! are served. Bounded in count and time, on loopback only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lanyard_tests::process::Daemon;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SERVER: &str = env!("CARGO_BIN_EXE_test-lanyard-server");
const FLOOD: usize = 1005;
/// The answers the issue asks for while the flood holds its connections.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// Only a bound for a broken test.
const PATIENCE: Duration = Duration::from_secs(60);

/// One flooding connection: TLS, then half a request, then silence. None
/// when the server closed it (refused over the caps) before that.
async fn half_request(
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut stream = tls.connect(name, tcp).await.ok()?;
    stream
        .write_all(b"GET /keys HTTP/1.1\r\nHost: x\r\n")
        .await
        .ok()?;
    stream.flush().await.ok()?;
    Some(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_requests_leaves_others_served() -> anyhow::Result<()> {
    // The test itself holds a thousand sockets.
    lanyard_host::transport::limits::raise_open_files_limit();
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server_toml = dir.path().join("server.toml");
    std::fs::write(
        &server_toml,
        format!(
            "trust_domain = \"example.org\"\nissuer = \"https://127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
             [oidc]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().join("server").display()
        ),
    )?;
    // systemd's default: soft and hard 1,024, so the server cannot raise it.
    let mut command = Command::new("prlimit");
    command
        .args(["--nofile=1024:1024", "--", SERVER, "run", "--config"])
        .arg(&server_toml)
        .env("RUST_LOG", "info");
    let server = Daemon::start(command, "lanyard-server", "lanyard-server is serving")?;
    let logged_before = server.logged_bytes();

    let cert = std::fs::read(dir.path().join("server/oidc-tls-cert.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    for der in lanyard_tests::pem_to_der(&String::from_utf8(cert.clone())?)? {
        roots.add(der.into())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);

    // The flood, from 127.0.0.1, 64 handshakes at a time.
    let held = tokio::time::timeout(PATIENCE, async {
        let mut held = Vec::new();
        for batch in (0..FLOOD).collect::<Vec<_>>().chunks(64) {
            let attempts = batch.iter().map(|_| half_request(addr, connector.clone()));
            held.extend(
                futures::future::join_all(attempts)
                    .await
                    .into_iter()
                    .flatten(),
            );
        }
        held
    })
    .await?;
    assert!(
        !held.is_empty() && held.len() < FLOOD / 2,
        "{} of {FLOOD} flooding connections were kept",
        held.len()
    );

    // Another client (another loopback address) is served at once.
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&cert)?)
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()?;
    let discovery = tokio::time::timeout(
        ANSWER_WITHIN,
        client
            .get(format!(
                "https://127.0.0.1:{port}/.well-known/openid-configuration"
            ))
            .send(),
    )
    .await
    .context("discovery did not answer within 1 s under the flood")??;
    assert_eq!(discovery.status(), 200);

    // The Admin socket too.
    let mut health = tokio::process::Command::new(SERVER);
    health
        .args(["healthcheck", "--socket"])
        .arg(dir.path().join("server/admin.sock"));
    let health = tokio::time::timeout(ANSWER_WITHIN, health.output())
        .await
        .context("the Admin healthcheck did not answer within 1 s under the flood")??;
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );

    // Refusals are logged once per address, not once per connection.
    let logged = server.logged_bytes() - logged_before;
    assert!(
        logged < 64 * 1024,
        "the flood made the server log {logged} bytes"
    );
    drop(held);
    assert!(server.terminate()?);
    Ok(())
}
