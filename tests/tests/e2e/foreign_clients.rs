//! Clients nobody on this team wrote, against the real binaries: py-spiffe
//! (the official Python SPIFFE library, on gRPC C-core) with its default
//! client and no options, and raw HTTP/2 requests from hyper-h2 carrying each
//! `:authority` form that gRPC clients send over a Unix socket.
//!
//! The Python clients come from PyPI through `.ci/python-clients.sh`, which CI
//! runs and whose python it names in `LANYARD_TEST_PYTHON`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use lanyard_host::encoding::hex;
use lanyard_proto::workload::{JwtsvidRequest, JwtsvidResponse};
use lanyard_tests::process::Daemon;
use lanyard_tests::{https_client_trusting, my_uid, pem_to_der};
use prost::Message;
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_test-lanyard-server");
const AGENT: &str = env!("CARGO_BIN_EXE_test-lanyard-agent");
const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");
const ID: &str = "spiffe://example.org/foreign";

/// The venv python with py-spiffe and hyper-h2, or None (said why) when this
/// run was not given one; CI always is.
pub(crate) fn third_party_python() -> anyhow::Result<Option<PathBuf>> {
    match std::env::var_os("LANYARD_TEST_PYTHON") {
        Some(python) => Ok(Some(PathBuf::from(python))),
        None if std::env::var_os("CI").is_some() => {
            bail!(
                "CI is set but LANYARD_TEST_PYTHON is not: the third-party client tests must run in CI"
            )
        }
        None => {
            eprintln!(
                "third-party client test skipped: LANYARD_TEST_PYTHON is not set \
                 (LANYARD_TEST_PYTHON=$(.ci/python-clients.sh) cargo test)"
            );
            Ok(None)
        }
    }
}

/// The real server and agent binaries on this machine, with one entry for
/// this test's uid.
pub(crate) struct Binaries {
    pub dir: tempfile::TempDir,
    pub port: u16,
    _server: Daemon,
    _agent: Daemon,
}

impl Binaries {
    pub(crate) fn start(agent_tables: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let server_toml = dir.path().join("server.toml");
        std::fs::write(
            &server_toml,
            format!(
                "trust_domain = \"example.org\"\nissuer = \"https://127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
                 [oidc]\nlisten = \"127.0.0.1:{port}\"\n\
                 [[entries]]\nspiffe_id = \"{ID}\"\nselectors = [\"unix:uid:{}\"]\n",
                dir.path().join("server").display(),
                my_uid()
            ),
        )?;
        let agent_toml = dir.path().join("agent.toml");
        std::fs::write(
            &agent_toml,
            format!(
                "trust_domain = \"example.org\"\n[server]\nnode_socket = \"{}\"\n[workload_api]\nsocket = \"{}\"\n{agent_tables}",
                dir.path().join("server/node.sock").display(),
                dir.path().join("agent/api.sock").display()
            ),
        )?;
        let mut server = Command::new(SERVER);
        server.arg("run").arg("--config").arg(&server_toml);
        let server = Daemon::start(server, "lanyard-server", "lanyard-server is serving")?;
        let mut agent = Command::new(AGENT);
        agent.arg("run").arg("--config").arg(&agent_toml);
        let agent = Daemon::start(agent, "lanyard-agent", "Workload API listening")?;
        Ok(Self {
            dir,
            port,
            _server: server,
            _agent: agent,
        })
    }

    pub(crate) fn agent_socket(&self) -> PathBuf {
        self.dir.path().join("agent/api.sock")
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("unix://{}", self.agent_socket().display())
    }

    /// The published JWKS, fetched over the OIDC port.
    pub(crate) fn jwks(&self) -> anyhow::Result<JwkSet> {
        let client = https_client_trusting(&self.dir.path().join("server/oidc-tls-cert.pem"))?;
        let url = format!("https://127.0.0.1:{}/keys", self.port);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                Ok(client
                    .get(url)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?)
            })
    }

    /// Asserts `token` is a JWT-SVID for [`ID`] and `audience` signed by a published key.
    pub(crate) fn assert_verifies(&self, token: &str, audience: &str) -> anyhow::Result<()> {
        let kid = decode_header(token)?.kid.context("token has no kid")?;
        let jwks = self.jwks()?;
        let jwk = jwks
            .find(&kid)
            .context("the signing key is not published")?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[format!("https://127.0.0.1:{}", self.port)]);
        let claims = decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &validation)?.claims;
        assert_eq!(claims["sub"], ID);
        Ok(())
    }
}

/// Runs `script` with the venv python; its one line of JSON output.
pub(crate) fn run_python(
    python: &Path,
    script: &str,
    args: &[&str],
    endpoint: &str,
) -> anyhow::Result<Value> {
    let output = Command::new(python)
        .arg(Path::new(SCRIPTS).join(script))
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("{script} {args:?} failed ({}): {stderr}", output.status);
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{script} printed no JSON; stderr: {stderr}"))
}

#[test]
fn py_spiffe_default_client_fetches_a_jwt_svid() -> anyhow::Result<()> {
    let Some(python) = third_party_python()? else {
        return Ok(());
    };
    let world = Binaries::start("")?;
    let fetched = run_python(
        &python,
        "spiffe_client.py",
        &["jwt", "py-aud"],
        &world.endpoint(),
    )?;
    assert_eq!(fetched["spiffe_id"], ID);
    let token = fetched["token"].as_str().context("no token")?;
    world.assert_verifies(token, "py-aud")
}

fn pem_strings(value: &Value) -> anyhow::Result<String> {
    Ok(value
        .as_array()
        .context("not a list")?
        .iter()
        .filter_map(Value::as_str)
        .collect())
}

#[test]
fn py_spiffe_default_client_fetches_an_x509_svid() -> anyhow::Result<()> {
    let Some(python) = third_party_python()? else {
        return Ok(());
    };
    let world = Binaries::start("")?;
    let fetched = run_python(&python, "spiffe_client.py", &["x509"], &world.endpoint())?;
    assert_eq!(fetched["spiffe_id"], ID);
    // The `spiffe` crate, independently, takes it as an X509-SVID: one URI
    // SAN, a leaf that is no CA, a key that fits the certificate.
    let chain = pem_to_der(&pem_strings(&fetched["chain_pem"])?)?.concat();
    let key = pem_to_der(fetched["key_pem"].as_str().context("no key")?)?.concat();
    let svid = spiffe::X509Svid::parse_from_der(&chain, &key)?;
    assert_eq!(svid.spiffe_id().to_string(), ID);
    // The bundle is the server's published CA set.
    let mut served = pem_to_der(&pem_strings(&fetched["bundle_pem"])?)?;
    let published = std::fs::read_to_string(world.dir.path().join("server/ca/bundle.pem"))?;
    let mut published = pem_to_der(&published)?;
    served.sort();
    published.sort();
    assert_eq!(served, published);

    let bundles = run_python(
        &python,
        "spiffe_client.py",
        &["x509-bundles"],
        &world.endpoint(),
    )?;
    let mut bundle = pem_to_der(&pem_strings(&bundles["bundles"]["example.org"])?)?;
    bundle.sort();
    assert_eq!(bundle, published);
    Ok(())
}

/// One raw FetchJWTSVID over HTTP/2 with `authority` (None: no
/// `:authority` at all); the gRPC status, message and decoded response.
fn fetch_jwt_raw(
    python: &Path,
    socket: &Path,
    authority: Option<&str>,
) -> anyhow::Result<(Value, Option<JwtsvidResponse>)> {
    let request = JwtsvidRequest {
        audience: vec!["raw-aud".to_owned()],
        spiffe_id: String::new(),
    };
    let body = hex(&request.encode_to_vec());
    let socket = socket.to_str().context("socket path is not UTF-8")?;
    let mut args = vec![
        "--socket",
        socket,
        "--path",
        "/SpiffeWorkloadAPI/FetchJWTSVID",
        "--body-hex",
        &body,
        "--header",
        "workload.spiffe.io=true",
    ];
    match authority {
        Some(value) => args.extend(["--authority", value]),
        None => args.push("--no-authority"),
    }
    let result = run_python(python, "h2_call.py", &args, "")?;
    let response = match result["messages_hex"].as_array().and_then(|m| m.first()) {
        Some(message) => Some(JwtsvidResponse::decode(
            unhex(message.as_str().context("message is not a string")?)?.as_slice(),
        )?),
        None => None,
    };
    Ok((result, response))
}

#[test]
fn every_authority_form_gets_an_answer() -> anyhow::Result<()> {
    let Some(python) = third_party_python()? else {
        return Ok(());
    };
    let world = Binaries::start("")?;
    let socket = world.agent_socket();
    let raw_path = socket.display().to_string();
    // gRPC C-core: the path without its leading slash, percent-encoded.
    let c_core = raw_path.trim_start_matches('/').replace('/', "%2F");
    let forms = [
        Some(c_core.as_str()),
        Some(raw_path.as_str()),
        Some(""),
        Some("localhost"),
        None,
    ];
    for authority in forms {
        let (result, response) = fetch_jwt_raw(&python, &socket, authority)?;
        assert_eq!(
            result["grpc_status"], 0,
            ":authority {authority:?}: {result}"
        );
        let svids = response.context("no response message")?.svids;
        assert_eq!(svids.len(), 1, ":authority {authority:?}");
        assert_eq!(svids[0].spiffe_id, ID);
        world.assert_verifies(&svids[0].svid, "raw-aud")?;
    }

    // The server's Unix sockets stand on the same stack: Admin (Health) and
    // the local Node API (GetBundle), both with C-core's form.
    let server_dir = world.dir.path().join("server");
    for (socket, path) in [
        (
            server_dir.join("admin.sock"),
            "/lanyard.admin.v1.Admin/Health",
        ),
        (
            server_dir.join("node.sock"),
            "/lanyard.node.v1.Node/GetBundle",
        ),
    ] {
        let text = socket.display().to_string();
        let encoded = text.trim_start_matches('/').replace('/', "%2F");
        let result = run_python(
            &python,
            "h2_call.py",
            &["--socket", &text, "--authority", &encoded, "--path", path],
            "",
        )?;
        assert_eq!(result["grpc_status"], 0, "{path}: {result}");
        let messages = result["messages_hex"].as_array().map(Vec::len);
        assert_eq!(messages, Some(1), "{path}: {result}");
    }
    Ok(())
}

fn unhex(text: &str) -> anyhow::Result<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .context("not hex")
        })
        .collect()
}
