//! A workload for tests: takes its X509-SVID from the Workload API at
//! `SPIFFE_ENDPOINT_SOCKET` (the `spiffe` crate's X509Source), dials
//! `<addr>` over mTLS (`spiffe-rustls`) accepting only the server SPIFFE ID
//! `<server-id>`, says hello and prints `ok <reply>`, or `error <message>`
//! with exit code 2. Tests run it under another uid.
//!
//! Usage: `mtls-probe <addr> <server-id>`
#![allow(
    unused_crate_dependencies,
    reason = "a binary shares its package's dependency list with the library and the other targets; the library target is where unused dependencies are caught"
)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::ServerName;
use spiffe_rustls::{TrustDomainPolicy, authorizer, mtls_client};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(reply) => {
            println!("ok {reply}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<String> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .context("usage: mtls-probe <addr> <server-id>")?;
    let server_id = args
        .next()
        .context("usage: mtls-probe <addr> <server-id>")?;
    let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET").context("SPIFFE_ENDPOINT_SOCKET")?;
    let trust_domain = spiffe::SpiffeId::new(&server_id)?.trust_domain().clone();
    let source = spiffe::X509Source::builder()
        .endpoint(endpoint)
        .build()
        .await?;
    let config = mtls_client(source)
        .authorize(authorizer::exact([server_id.as_str()])?)
        .trust_domain_policy(TrustDomainPolicy::LocalOnly(trust_domain))
        .build()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    // The name is not checked: the SPIFFE ID is.
    let mut tls = connector
        .connect(ServerName::try_from("workload")?, tcp)
        .await?;
    tls.write_all(b"hello\n").await?;
    tls.flush().await?;
    let mut reply = String::new();
    BufReader::new(tls).read_line(&mut reply).await?;
    Ok(reply.trim().to_owned())
}
