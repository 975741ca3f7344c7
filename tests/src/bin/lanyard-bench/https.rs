//! JWKS and discovery over HTTPS with keep-alive: a minimal HTTP/1.1 client
//! over rustls (the same one drives both servers), and nginx from the
//! distribution's packages serving the same two files with the same
//! certificate as the baseline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::stats::Worker;

pub(crate) const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub(crate) const JWKS_PATH: &str = "/keys";

/// A TLS connector trusting only the PEM certificate at `cert`.
pub(crate) fn connector(cert: &Path) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(cert).context("reading the certificate")? {
        roots.add(der.context("parsing the certificate")?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One keep-alive connection that GETs the discovery document and the JWKS in turn.
pub(crate) struct Getter {
    stream: TlsStream<TcpStream>,
    requests: [Vec<u8>; 2],
    buffer: Vec<u8>,
}

impl Getter {
    pub(crate) async fn connect(
        connector: &TlsConnector,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = connector.connect(name, tcp).await?;
        let request = |path: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n")
                .into_bytes()
        };
        Ok(Self {
            stream,
            requests: [request(DISCOVERY_PATH), request(JWKS_PATH)],
            buffer: Vec::with_capacity(8192),
        })
    }

    /// GETs `which` (0 discovery, 1 JWKS); the body.
    pub(crate) async fn get(&mut self, which: usize) -> anyhow::Result<Vec<u8>> {
        self.stream.write_all(&self.requests[which]).await?;
        self.stream.flush().await?;
        self.buffer.clear();
        let (head_len, body_len) = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..end])?;
                if !head.starts_with("HTTP/1.1 200") {
                    bail!("answered {:?}", head.lines().next().unwrap_or_default());
                }
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .context("no Content-Length")?;
                break (end + 4, length);
            }
            self.read_more().await?;
        };
        while self.buffer.len() < head_len + body_len {
            self.read_more().await?;
        }
        Ok(self.buffer[head_len..head_len + body_len].to_vec())
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Worker for Getter {
    async fn call(&mut self, n: u64) -> anyhow::Result<()> {
        self.get((n % 2) as usize).await.map(drop)
    }
}

/// Where nginx is, if installed (Debian puts it in /usr/sbin, which a
/// non-root PATH may lack).
pub(crate) fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

/// nginx serving `discovery` and `jwks` on 127.0.0.1 with `cert`/`key`;
/// stopped when dropped.
#[derive(Debug)]
pub(crate) struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    pub version: String,
}

impl Nginx {
    pub(crate) fn start(
        nginx: &Path,
        dir: &Path,
        cert: &Path,
        key: &Path,
        discovery: &[u8],
        jwks: &[u8],
        workers: usize,
    ) -> anyhow::Result<Self> {
        let www = dir.join("www");
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("discovery.json"), discovery)?;
        std::fs::write(www.join("keys.json"), jwks)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // As root nginx would hand its workers to `nobody`, who cannot read
        // this private temp dir: keep them as the current user.
        let user = if nix::unistd::geteuid().is_root() {
            "user root root;"
        } else {
            ""
        };
        let d = dir.display();
        let config = format!(
            r#"
{user}
worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        add_header Cache-Control "public, max-age=300";
        add_header Access-Control-Allow-Origin "*";
        location = {DISCOVERY_PATH} {{ default_type application/json; alias {www}/discovery.json; }}
        location = {JWKS_PATH} {{ default_type application/json; alias {www}/keys.json; }}
    }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
            www = www.display(),
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config)?;
        let version = Command::new(nginx)
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default();
        let mut child = Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", nginx.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                bail!("nginx exited ({status}): {log}");
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {addr} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            addr,
            version,
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of master and workers.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
