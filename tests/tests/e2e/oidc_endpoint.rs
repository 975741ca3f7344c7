//! The OIDC endpoint over real sockets: a configured certificate is served and
//! replaced without a restart when its files change; plain HTTP behind a proxy
//! never lets the Host header change the issuer; methods and paths get the
//! right status codes.

use std::path::Path;
use std::time::{Duration, Instant};

use lanyard_server::config::ServerConfig;
use serde_json::Value;
use tokio::net::TcpListener;

fn write_cert(dir: &Path, name: &str) -> anyhow::Result<(String, String)> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), format!("{name}.test")])?;
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    Ok((cert.display().to_string(), key.display().to_string()))
}

async fn start(
    dir: &Path,
    oidc_table: &str,
) -> anyhow::Result<(lanyard_server::RunningServer, String, u16)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let issuer = format!("https://issuer.example.test:{port}/tenant");
    let text = format!(
        "trust_domain = \"example.org\"\nissuer = \"{issuer}\"\ndata_dir = \"{}\"\n[oidc]\n{oidc_table}\n",
        dir.join("server").display()
    );
    let server =
        lanyard_server::start_with_listener(ServerConfig::from_toml(&text, "test")?, listener)
            .await?;
    Ok((server, issuer, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_certificate_is_served_and_reloaded_without_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = write_cert(dir.path(), "first")?;
    let (server, _issuer, port) = start(
        dir.path(),
        &format!("tls_cert = \"{cert}\"\ntls_key = \"{key}\""),
    )
    .await?;
    let url = format!("https://127.0.0.1:{port}/tenant/keys");
    let first = lanyard_tests::https_client_trusting(Path::new(&cert))?;
    assert_eq!(first.get(&url).send().await?.status(), 200);

    // Renew: new files in place. The running server must pick them up.
    let (new_cert, new_key) = write_cert(dir.path(), "second")?;
    std::fs::rename(&new_key, &key)?;
    std::fs::rename(&new_cert, &cert)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A new client (no pooled connection) each time, so the handshake shows the current certificate.
        let fresh = lanyard_tests::https_client_trusting(Path::new(&cert))?;
        if fresh.get(&url).send().await.is_ok() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_behind_a_proxy_keeps_the_configured_issuer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, issuer, port) = start(dir.path(), "plain_http = true").await?;
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/tenant");
    let discovery: Value = client
        .get(format!("{base}/.well-known/openid-configuration"))
        .header("Host", "attacker.example")
        .header("X-Forwarded-Host", "attacker.example")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(discovery["jwks_uri"], format!("{issuer}/keys"));

    let head = client.head(format!("{base}/keys")).send().await?;
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        client.post(format!("{base}/keys")).send().await?.status(),
        405
    );
    assert_eq!(
        client
            .delete(format!("{base}/.well-known/openid-configuration"))
            .send()
            .await?
            .status(),
        405
    );
    assert_eq!(
        client.get(format!("{base}/nope")).send().await?.status(),
        404
    );
    assert_eq!(
        client
            .get(format!("http://127.0.0.1:{port}/keys"))
            .send()
            .await?
            .status(),
        404,
        "outside the issuer path"
    );
    server.shutdown().await;
    Ok(())
}

#[test]
fn plain_http_and_tls_files_together_are_refused() {
    let text = "trust_domain = \"example.org\"\nissuer = \"https://x\"\ndata_dir = \"/tmp/x\"\n[oidc]\nplain_http = true\ntls_cert = \"/c\"\ntls_key = \"/k\"\n";
    let error = ServerConfig::from_toml(text, "test")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("oidc.plain_http"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_signed_certificate_is_published_for_every_user() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    // Reachable by other users, as /run or /etc are.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let public = dir.path().join("public/oidc-ca.pem");
    let (server, _issuer, port) = start(
        dir.path(),
        &format!("public_cert_file = \"{}\"", public.display()),
    )
    .await?;
    let mode = |path: &Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
    };
    assert_eq!(mode(&public)?, 0o644);
    let served = dir.path().join("server/oidc-tls-cert.pem");
    assert_eq!(std::fs::read(&public)?, std::fs::read(&served)?);
    assert_eq!(mode(&dir.path().join("server/oidc-tls-key.pem"))?, 0o600);
    assert_eq!(mode(&dir.path().join("server"))?, 0o700);

    // A client trusting the published file alone reaches the issuer.
    let client = lanyard_tests::https_client_trusting(&public)?;
    let url = format!("https://127.0.0.1:{port}/tenant/keys");
    assert_eq!(client.get(&url).send().await?.status(), 200);
    // Another user reads it (as root, the test can be that user).
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::process::CommandExt;
        let read = std::process::Command::new("cat")
            .arg(&public)
            .uid(65534)
            .gid(65534)
            .output()?;
        assert!(read.status.success(), "{read:?}");
        assert_eq!(read.stdout, std::fs::read(&public)?);
    }
    server.shutdown().await;
    Ok(())
}

#[test]
fn a_public_certificate_path_is_refused_where_it_cannot_apply() {
    for (oidc, why) in [
        ("public_cert_file = \"relative.pem\"", "absolute"),
        (
            "public_cert_file = \"/p.pem\"\ntls_cert = \"/c\"\ntls_key = \"/k\"",
            "self-signed",
        ),
        (
            "public_cert_file = \"/p.pem\"\nplain_http = true",
            "self-signed",
        ),
    ] {
        let text = format!(
            "trust_domain = \"example.org\"\nissuer = \"https://x\"\ndata_dir = \"/tmp/x\"\n[oidc]\n{oidc}\n"
        );
        let error = ServerConfig::from_toml(&text, "test")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("oidc.public_cert_file") && error.contains(why),
            "{oidc}: {error}"
        );
    }
}
