//! Every `lanyard-server` Admin verb, run as the real binary against a running
//! server's real Admin socket.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Context;
use lanyard_tests::my_uid;
use lanyard_tests::process::Daemon;
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_test-lanyard-server");

struct Admin {
    socket: PathBuf,
}

impl Admin {
    fn run(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new(SERVER)
            .args(args)
            .args([
                "--socket",
                self.socket.to_str().unwrap_or_default(),
                "--output",
                "json",
            ])
            .env("RUST_LOG", "off")
            .output()
    }

    /// Runs a verb that must succeed and returns its JSON output.
    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let output = self.run(args)?;
        anyhow::ensure!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// Runs a verb that must fail and returns its one-line stderr.
    fn error(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.run(args)?;
        anyhow::ensure!(!output.status.success(), "{args:?} unexpectedly succeeded");
        let stderr = String::from_utf8(output.stderr)?;
        anyhow::ensure!(
            stderr.trim_end().lines().count() == 1,
            "not one line: {stderr:?}"
        );
        Ok(stderr)
    }
}

/// `entry create --spiffe-id <spiffe_id>` followed by `rest` (selectors, flags).
fn entry_create<'a>(spiffe_id: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["entry", "create", "--spiffe-id", spiffe_id];
    args.extend_from_slice(rest);
    args
}

fn start_server(dir: &Path) -> anyhow::Result<Daemon> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nissuer = \"https://127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[oidc]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.join("server").display()
        ),
    )?;
    let mut command = Command::new(SERVER);
    command
        .args(["run", "--config", config.to_str().unwrap_or_default()])
        .env("RUST_LOG", "info");
    Daemon::start(command, "lanyard-server", "lanyard-server is serving")
}

#[test]
fn every_admin_verb_works_through_the_socket() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path())?;
    let admin = Admin {
        socket: dir.path().join("server/admin.sock"),
    };

    let health = admin.json(&["healthcheck"])?;
    assert_eq!(health["trust_domain"], "example.org");

    let created = admin.json(&entry_create(
        "spiffe://example.org/web",
        &[
            "-s",
            "unix:uid:1000",
            "-s",
            "unix:gid:1000",
            "--jwt-svid-ttl",
            "120",
        ],
    ))?;
    let id = created[0]["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        created[0]["parent_id"],
        "spiffe://example.org/lanyard/agent/local"
    );
    assert_eq!(
        created[0]["selectors"],
        serde_json::json!(["unix:gid:1000", "unix:uid:1000"])
    );
    assert_eq!(created[0]["jwt_svid_ttl_seconds"], 120);

    assert_eq!(
        admin.json(&["entry", "show", &id])?[0]["spiffe_id"],
        "spiffe://example.org/web"
    );
    admin.json(&entry_create(
        "spiffe://example.org/db",
        &["-s", "unix:user:postgres"],
    ))?;
    assert_eq!(
        admin.json(&["entry", "list"])?.as_array().map(Vec::len),
        Some(2)
    );
    let filtered = admin.json(&["entry", "list", "--selector", "unix:user:postgres"])?;
    assert_eq!(filtered[0]["spiffe_id"], "spiffe://example.org/db");

    let updated = admin.json(&["entry", "update", &id, "--jwt-svid-ttl", "60"])?;
    assert_eq!(updated[0]["jwt_svid_ttl_seconds"], 60);
    assert_eq!(
        updated[0]["spiffe_id"], "spiffe://example.org/web",
        "untouched fields are kept"
    );
    assert!(updated[0]["revision"].as_u64() > created[0]["revision"].as_u64());

    // Validation names the field; nothing is stored.
    assert!(
        admin
            .error(&entry_create(
                "spiffe://example.org/x/",
                &["-s", "unix:uid:1"]
            ))?
            .contains("spiffe_id")
    );
    assert!(
        admin
            .error(&entry_create("spiffe://other.org/x", &["-s", "unix:uid:1"]))?
            .contains("not in trust domain")
    );
    assert!(
        admin
            .error(&entry_create(
                "spiffe://example.org/x",
                &["-s", "k8s:ns:default"]
            ))?
            .contains("unknown selector")
    );
    assert!(
        admin
            .error(&entry_create(
                "spiffe://example.org/x",
                &[
                    "--parent-id",
                    "spiffe://example.org/ghost",
                    "-s",
                    "unix:uid:1"
                ]
            ))?
            .contains("parent_id")
    );
    assert!(
        admin
            .error(&entry_create(
                "spiffe://example.org/web",
                &["-s", "unix:uid:1000", "-s", "unix:gid:1000"]
            ))?
            .contains("already exists")
    );
    assert_eq!(
        admin.json(&["entry", "list"])?.as_array().map(Vec::len),
        Some(2)
    );

    admin.json(&["entry", "delete", &id])?;
    assert!(admin.error(&["entry", "show", &id])?.contains("NotFound"));
    assert!(
        admin
            .error(&["entry", "delete", &id])?
            .contains("not found")
    );

    let token = admin.json(&["token", "generate", "--ttl", "300"])?;
    assert_eq!(token["token"].as_str().map(str::len), Some(40));
    assert!(
        token["spiffe_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("spiffe://example.org/lanyard/agent/join_token/")
    );
    let named = admin.json(&[
        "token",
        "generate",
        "--spiffe-id",
        "spiffe://example.org/node/db-1",
    ])?;
    assert_eq!(named["spiffe_id"], "spiffe://example.org/node/db-1");
    assert!(
        admin
            .error(&["token", "generate", "--ttl", "999999"])?
            .contains("ttl_seconds")
    );

    assert_eq!(admin.json(&["agent", "list"])?, serde_json::json!([]));
    assert!(
        admin
            .error(&[
                "agent",
                "evict",
                "spiffe://example.org/lanyard/agent/nobody"
            ])?
            .contains("not found")
    );

    let bundle = admin.json(&["bundle", "show"])?;
    assert_eq!(bundle["keys"][0]["use"], "sig");

    // The issuer as static files, from the running server's keys.
    let out = dir.path().join("static-issuer");
    let published = admin.run(&["oidc", "publish", "--out", out.to_str().unwrap_or_default()])?;
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let keys: Value = serde_json::from_slice(&std::fs::read(out.join("keys"))?)?;
    assert_eq!(keys, bundle, "the published JWKS is the server's");
    let discovery: Value = serde_json::from_slice(&std::fs::read(
        out.join(".well-known/openid-configuration"),
    )?)?;
    assert_eq!(
        discovery["jwks_uri"],
        format!("{}/keys", discovery["issuer"].as_str().unwrap_or_default())
    );

    // AWS's thumbprint: SHA-1 of the top certificate the issuer's host presents.
    let issuer = discovery["issuer"].as_str().unwrap_or_default().to_owned();
    let thumbprint = Command::new(SERVER)
        .args(["oidc", "thumbprint", "--issuer", &issuer])
        .output()?;
    assert!(
        thumbprint.status.success(),
        "{}",
        String::from_utf8_lossy(&thumbprint.stderr)
    );
    let pem = std::fs::read(dir.path().join("server/oidc-tls-cert.pem"))?;
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .expect("a certificate")?;
    let expected = lanyard_host::encoding::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der).as_ref(),
    );
    assert_eq!(String::from_utf8(thumbprint.stdout)?.trim(), expected);

    assert!(server.terminate()?);
    // With the server gone, verbs fail in one line naming the socket trouble.
    assert!(!admin.error(&["healthcheck"])?.is_empty());
    Ok(())
}

#[test]
fn admin_socket_refuses_other_uids() -> anyhow::Result<()> {
    if my_uid() != 0 {
        eprintln!("skipped: switching to another uid needs root (CI runs as root)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path())?;
    let socket = dir.path().join("server/admin.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket)?.permissions());
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("server"))?.permissions(),
    );
    assert_eq!(dir_mode & 0o777, 0o700);
    // Even with the socket made reachable, the peer uid check refuses nobody.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::fs::set_permissions(
        dir.path().join("server"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    let output = Command::new(SERVER)
        .args([
            "entry",
            "list",
            "--socket",
            socket.to_str().unwrap_or_default(),
        ])
        .uid(65534)
        .gid(65534)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("uid 65534"),
        "{stderr}"
    );
    assert!(server.terminate()?);
    Ok(())
}

/// Issue 11, findings 4 and 6 and the update duplicate: through the real
/// binary, the Admin API refuses selectors that can never match, the bare
/// trust-domain ID and IDs under /lanyard/ (for entries and join tokens),
/// and an update that would make two identical entries; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_what_can_never_match_or_is_the_systems() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path())?;
    let admin = Admin {
        socket: dir.path().join("server/admin.sock"),
    };
    let web = admin.json(&entry_create(
        "spiffe://example.org/web",
        &["-s", "unix:uid:1000"],
    ))?;
    let web_id = web[0]["id"].as_str().unwrap_or_default().to_owned();
    let api = admin.json(&entry_create(
        "spiffe://example.org/web",
        &["-s", "unix:uid:1001"],
    ))?;
    let api_id = api[0]["id"].as_str().unwrap_or_default().to_owned();

    let sha_upper = format!("unix:sha256:{}", "A".repeat(64));
    let unmatchable = [
        ("unix:uid:-1", "decimal"),
        ("unix:uid:abc", "decimal"),
        ("unix:uid:99999999999", "decimal"),
        ("unix:uid:1e3", "decimal"),
        ("unix:uid:01000", "leading zeros"),
        ("unix:uid: 1000", "spaces"),
        ("unix:uid:1000\n", "decimal"),
        ("unix:gid:xyz", "decimal"),
        ("unix:supplementary_gid:foo", "decimal"),
        ("unix:sha256:not-hex", "64 lowercase hex"),
        (sha_upper.as_str(), "64 lowercase hex"),
        ("unix:path:relative/bin", "absolute"),
        ("unix:path:/a/../b", "normalised"),
        ("unix:path:/usr/bin/", "normalised"),
        ("unix:user:root\radmin", "control characters"),
    ];
    for (selector, rule) in unmatchable {
        let create = admin.error(&entry_create(
            "spiffe://example.org/x",
            &["-s", "unix:gid:0", "-s", selector],
        ))?;
        let update = admin.error(&["entry", "update", &web_id, "-s", selector])?;
        for message in [create, update] {
            assert!(
                message.contains("InvalidArgument")
                    && message.contains("selectors")
                    && message.contains("can never match")
                    && message.contains(rule),
                "{selector:?}: {message}"
            );
        }
    }

    let reserved = [
        "spiffe://example.org/lanyard/agent/local",
        "spiffe://example.org/lanyard/server",
        "spiffe://example.org/lanyard/agent/join_token/0123456789abcdef",
        "spiffe://example.org/lanyard",
    ];
    for id in reserved {
        for message in [
            admin.error(&entry_create(id, &["-s", "unix:uid:0"]))?,
            admin.error(&["entry", "update", &web_id, "--spiffe-id", id])?,
            admin.error(&["token", "generate", "--spiffe-id", id])?,
        ] {
            assert!(
                message.contains("InvalidArgument")
                    && message.contains("spiffe_id")
                    && message.contains("reserved for the system"),
                "{id}: {message}"
            );
        }
    }
    for message in [
        admin.error(&entry_create("spiffe://example.org", &["-s", "unix:uid:0"]))?,
        admin.error(&[
            "entry",
            "update",
            &web_id,
            "--spiffe-id",
            "spiffe://example.org",
        ])?,
        admin.error(&["token", "generate", "--spiffe-id", "spiffe://example.org"])?,
    ] {
        assert!(
            message.contains("InvalidArgument")
                && message.contains("spiffe_id")
                && message.contains("needs a path"),
            "{message}"
        );
    }

    // An update may not make web and api identical (create never could).
    let duplicate = admin.error(&["entry", "update", &api_id, "-s", "unix:uid:1000"])?;
    assert!(
        duplicate.contains("AlreadyExists") && duplicate.contains(&web_id),
        "{duplicate}"
    );

    // NUL cannot travel in argv: the same refusal straight over the socket.
    let mut client = lanyard_proto::admin::admin_client::AdminClient::new(
        lanyard_host::transport::unix_channel(&admin.socket),
    );
    let nul = client
        .create_entry(lanyard_proto::admin::CreateEntryRequest {
            spiffe_id: "spiffe://example.org/x".into(),
            selectors: vec!["unix:user:root\0admin".into()],
            ..Default::default()
        })
        .await;
    assert!(
        matches!(&nul, Err(s) if s.code() == tonic::Code::InvalidArgument && s.message().contains("control characters")),
        "{nul:?}"
    );

    // Nothing of that was stored, and web and api are as they were.
    let entries = admin.json(&["entry", "list"])?;
    assert_eq!(entries.as_array().map(Vec::len), Some(2), "{entries}");
    assert_eq!(
        admin.json(&["entry", "show", &api_id])?[0]["selectors"],
        serde_json::json!(["unix:uid:1001"])
    );
    assert_eq!(
        admin.json(&["entry", "show", &web_id])?[0]["spiffe_id"],
        "spiffe://example.org/web"
    );

    // What stays allowed: /lanyardx, values the attestor does produce, the
    // local agent as an explicit parent, and tokens with the default ID.
    let sha = format!("unix:sha256:{}", "0123456789abcdef".repeat(4));
    admin.json(&entry_create(
        "spiffe://example.org/lanyardx",
        &[
            "--parent-id",
            "spiffe://example.org/lanyard/agent/local",
            "-s",
            "unix:uid:0",
            "-s",
            "unix:gid:4294967295",
            "-s",
            "unix:path:/usr/bin/python3",
            "-s",
            &sha,
            "-s",
            "unix:user:www-data",
        ],
    ))?;
    assert_eq!(
        admin.json(&[
            "token",
            "generate",
            "--spiffe-id",
            "spiffe://example.org/lanyardx/n1"
        ])?["spiffe_id"],
        "spiffe://example.org/lanyardx/n1"
    );
    let token = admin.json(&["token", "generate"])?;
    assert!(
        token["spiffe_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("spiffe://example.org/lanyard/agent/join_token/"),
        "{token}"
    );

    assert!(server.terminate()?);
    Ok(())
}

/// Issue 11, finding 1: an entry pinned to a binary (`unix:path`,
/// `unix:sha256`) must also select a uid or gid, at create and at update, so
/// that an exec race gains nothing the racer's own uid could not reach.
#[test]
fn binary_selectors_need_a_uid_or_gid() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path())?;
    let admin = Admin {
        socket: dir.path().join("server/admin.sock"),
    };
    let sleep = "unix:path:/usr/bin/sleep";
    let sha = format!("unix:sha256:{}", "0123456789abcdef".repeat(4));
    let rule = "must also select unix:uid or unix:gid";
    let refused = |message: String| {
        assert!(
            message.contains("InvalidArgument")
                && message.contains("selectors")
                && message.contains(rule),
            "{message}"
        );
    };

    refused(admin.error(&entry_create("spiffe://example.org/sleep", &["-s", sleep]))?);
    refused(admin.error(&entry_create("spiffe://example.org/sleep", &["-s", &sha]))?);
    // A user or group name is not a uid or gid.
    refused(admin.error(&entry_create(
        "spiffe://example.org/sleep",
        &["-s", sleep, "-s", "unix:user:root"],
    ))?);
    assert_eq!(admin.json(&["entry", "list"])?, serde_json::json!([]));

    let created = admin.json(&entry_create(
        "spiffe://example.org/sleep",
        &["-s", sleep, "-s", "unix:uid:1000"],
    ))?;
    let id = created[0]["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(created[0]["issuable"], true);
    assert_eq!(created[0]["warnings"], serde_json::json!([]));
    admin.json(&entry_create(
        "spiffe://example.org/hashed",
        &["-s", &sha, "-s", "unix:gid:0"],
    ))?;

    // Dropping the uid by an update is refused too, and changes nothing.
    refused(admin.error(&["entry", "update", &id, "-s", sleep])?);
    refused(admin.error(&["entry", "update", &id, "-s", sleep, "-s", &sha])?);
    assert_eq!(
        admin.json(&["entry", "show", &id])?[0]["selectors"],
        serde_json::json!(["unix:path:/usr/bin/sleep", "unix:uid:1000"])
    );
    // Swapping the uid for a gid is fine.
    let updated = admin.json(&["entry", "update", &id, "-s", sleep, "-s", "unix:gid:1000"])?;
    assert_eq!(
        updated[0]["selectors"],
        serde_json::json!(["unix:gid:1000", "unix:path:/usr/bin/sleep"])
    );

    assert!(server.terminate()?);
    Ok(())
}

/// The config file's [[entries]] get the same rules: the config loading that
/// `run` does stops with one line naming the key (shown by `check-config`,
/// which cannot hang on a config wrongly accepted).
#[test]
fn config_entries_that_can_never_match_or_are_the_systems_stop_the_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cases = [
        (
            "spiffe://example.org/web",
            "unix:uid:01000",
            "entries[0].selectors",
            "leading zeros",
        ),
        (
            "spiffe://example.org/web",
            "unix:path:/a/../b",
            "entries[0].selectors",
            "normalised",
        ),
        (
            "spiffe://example.org/web",
            "unix:user:root\\u0000admin",
            "entries[0].selectors",
            "control characters",
        ),
        (
            "spiffe://example.org/web",
            "unix:path:/usr/bin/sleep",
            "entries[0].selectors",
            "must also select unix:uid or unix:gid",
        ),
        (
            "spiffe://example.org/lanyard/server",
            "unix:uid:0",
            "entries[0].spiffe_id",
            "reserved for the system",
        ),
        (
            "spiffe://example.org",
            "unix:uid:0",
            "entries[0].spiffe_id",
            "needs a path",
        ),
    ];
    for (spiffe_id, selector, key, rule) in cases {
        let config = dir.path().join("server.toml");
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"example.org\"\nissuer = \"https://127.0.0.1:1\"\ndata_dir = \"{}\"\n\
                 [[entries]]\nspiffe_id = \"{spiffe_id}\"\nselectors = [\"{selector}\"]\n",
                dir.path().join("server").display()
            ),
        )?;
        let output = Command::new(SERVER)
            .args([
                "check-config",
                "--config",
                config.to_str().unwrap_or_default(),
            ])
            .env("RUST_LOG", "off")
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{spiffe_id} {selector}: accepted");
        assert!(
            stderr.contains(&format!("config key `{key}`")) && stderr.contains(rule),
            "{spiffe_id} {selector}: {stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
    }
    Ok(())
}

/// Runs `lanyard-server <args>` with `LANYARD_ADMIN_SOCKET` set to `env` (or unset).
fn server_cli(args: &[&str], env: Option<&Path>) -> std::io::Result<Output> {
    let mut command = Command::new(SERVER);
    command.args(args).env_remove("LANYARD_ADMIN_SOCKET");
    if let Some(socket) = env {
        command.env("LANYARD_ADMIN_SOCKET", socket);
    }
    command.output()
}

#[test]
fn admin_verbs_find_the_socket_from_the_config_then_the_environment() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let _server = start_server(dir.path())?;
    let config = dir.path().join("server.toml");
    let config = config.to_str().context("a UTF-8 path")?;
    let socket = dir.path().join("server/admin.sock");
    let nowhere = dir.path().join("nowhere.sock");

    // The config file names the data dir, so the socket in it; it wins over the environment.
    let by_config = server_cli(&["entry", "list", "--config", config], Some(&nowhere))?;
    assert!(by_config.status.success(), "{by_config:?}");
    let by_env = server_cli(&["healthcheck"], Some(&socket))?;
    assert!(by_env.status.success(), "{by_env:?}");
    // Neither: the default path, which this test's server does not use.
    let by_default = server_cli(&["healthcheck"], None)?;
    assert!(!by_default.status.success());
    assert!(
        String::from_utf8_lossy(&by_default.stderr).contains("/var/lib/lanyard/server/admin.sock"),
        "{by_default:?}"
    );

    // Both --socket and --config is a usage error (exit 2) naming them.
    let both = server_cli(
        &[
            "entry",
            "list",
            "--config",
            config,
            "--socket",
            socket.to_str().unwrap_or_default(),
        ],
        None,
    )?;
    assert_eq!(both.status.code(), Some(2), "{both:?}");
    assert!(String::from_utf8_lossy(&both.stderr).contains("--socket"));
    // A config that does not load: exit 1, one line naming the bad key.
    let broken = dir.path().join("broken.toml");
    let good = std::fs::read_to_string(config)?;
    std::fs::write(
        &broken,
        good.replace(
            "trust_domain = \"example.org\"",
            "trust_domain = \"Not A Domain\"",
        ),
    )?;
    let bad = server_cli(
        &[
            "entry",
            "list",
            "--config",
            broken.to_str().unwrap_or_default(),
        ],
        Some(&socket),
    )?;
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        said.contains("--config") && said.contains("trust_domain"),
        "{said}"
    );
    Ok(())
}
