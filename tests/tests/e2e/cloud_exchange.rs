//! The last hop, end to end: a real server and agent, the real
//! `lanyard-agent` helpers and the examples as processes, the cloud-side setup
//! printed by the real `lanyard-server federation`, and local emulators of the
//! four token services that discover the issuer over HTTPS and verify the
//! tokens by the services' documented rules. For AWS the SDK's own default
//! credential chain (`aws-config`, in `aws-sdk-probe`) does the asking.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_tests::emulators::aws_sts::{AwsRole, AwsSts, AwsStsConfig};
use lanyard_tests::emulators::entra::{EntraApp, EntraConfig, FederatedCredential};
use lanyard_tests::emulators::gcp::{Gcp, GcpConfig, GcpServiceAccount};
use lanyard_tests::emulators::requests::{entra_token, gcp_exchange, gcp_exchange_form};
use lanyard_tests::emulators::vault::{Vault, VaultConfig, VaultRole};
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World};
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_test-lanyard-agent");
const SERVER: &str = env!("CARGO_BIN_EXE_test-lanyard-server");
const AWS_PROBE: &str = env!("CARGO_BIN_EXE_aws-sdk-probe");
const ACCOUNT: &str = "123456789012";
const AWS_AUDIENCE: &str = "sts.amazonaws.com";

fn spiffe_id(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}{path}")
}

/// Runs a binary with exactly `env` (plus PATH) — no stray AWS or Google
/// settings from the machine running the tests.
fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut command = Command::new(binary);
    command.args(args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .output()
        .with_context(|| format!("running {binary}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

fn succeeded(output: &Output) -> anyhow::Result<Value> {
    anyhow::ensure!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        text(&output.stderr)
    );
    serde_json::from_str(&text(&output.stdout))
        .with_context(|| format!("stdout is not JSON: {}", text(&output.stdout)))
}

/// The claims of a JWT, read without verification (the emulators verify).
fn claims(token: &str) -> anyhow::Result<Value> {
    let payload = token.split('.').nth(1).context("not a JWS")?;
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?)
}

/// What `lanyard-server federation <target>` prints for this world.
fn federation(world: &World, target: &str, extra: &[&str]) -> anyhow::Result<String> {
    let id_arg;
    let mut args = vec!["federation", target, "--issuer", &world.issuer];
    args.extend_from_slice(extra);
    if !extra.contains(&"--spiffe-id") {
        id_arg = spiffe_id(AWS_PATH);
        args.extend_from_slice(&["--spiffe-id", &id_arg]);
    }
    let output = run(SERVER, &args, &[])?;
    anyhow::ensure!(output.status.success(), "{}", text(&output.stderr));
    Ok(text(&output.stdout))
}

/// The trust policy JSON in `federation aws` output.
fn trust_policy(printed: &str) -> anyhow::Result<Value> {
    let start = printed.find('{').context("no policy printed")?;
    let end = printed.rfind('}').context("no policy printed")?;
    Ok(serde_json::from_str(&printed[start..=end])?)
}

const AWS_PATH: &str = "/cloud/aws";

struct AwsSetup {
    world: World,
    sts: AwsSts,
    dir: tempfile::TempDir,
}

impl AwsSetup {
    /// A world with this process registered as `/cloud/aws`, and an STS whose
    /// role `web` trusts exactly what `federation aws` says it should.
    async fn start() -> anyhow::Result<Self> {
        let world = World::start("/aws", &[EntrySpec::mine(AWS_PATH)]).await?;
        let printed = federation(&world, "aws", &["--account", ACCOUNT, "--name", "web"])?;
        let sts = AwsSts::start(AwsStsConfig {
            issuer: world.issuer_trust()?,
            account: ACCOUNT.into(),
            client_ids: vec![AWS_AUDIENCE.into()],
            roles: vec![
                AwsRole {
                    name: "web".into(),
                    trust_policy: trust_policy(&printed)?,
                    max_session_seconds: 3600,
                },
                AwsRole {
                    name: "other".into(),
                    trust_policy: trust_policy(&federation(
                        &world,
                        "aws",
                        &[
                            "--account",
                            ACCOUNT,
                            "--spiffe-id",
                            &spiffe_id("/someone/else"),
                        ],
                    )?)?,
                    max_session_seconds: 3600,
                },
            ],
        })
        .await?;
        Ok(Self {
            world,
            sts,
            dir: tempfile::tempdir()?,
        })
    }

    fn role(&self, name: &str) -> String {
        self.sts.role_arn(name)
    }

    /// The environment an application on this node would run with: the
    /// Workload API socket, an STS endpoint override, a region, no stored keys.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SPIFFE_ENDPOINT_SOCKET", self.world.endpoint()),
            ("AWS_ENDPOINT_URL_STS", self.sts.url()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("HOME", self.dir.path().display().to_string()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.path().join("no-credentials").display().to_string(),
            ),
            (
                "AWS_CONFIG_FILE",
                self.dir.path().join("config").display().to_string(),
            ),
        ]
    }

    fn run(
        &self,
        binary: &str,
        args: &[&str],
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<Output> {
        let mut env = self.env();
        env.extend(extra_env.iter().cloned());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(binary, args, &env)
    }

    fn write_profile(&self, body: &str) -> anyhow::Result<()> {
        std::fs::write(
            self.dir.path().join("config"),
            format!("[default]\n{body}\n"),
        )?;
        Ok(())
    }
}

/// The SDK's answer matches the credentials STS issued for this workload.
fn assert_issued_to_sdk(sts: &AwsSts, sdk: &Value, session_name: &str) -> anyhow::Result<()> {
    let issued = sts.issued();
    let last = issued.last().context("STS issued no credentials")?;
    assert_eq!(sdk["access_key_id"], last.access_key_id.as_str());
    assert_eq!(sdk["secret_access_key"], last.secret_access_key.as_str());
    assert_eq!(sdk["session_token"], last.session_token.as_str());
    assert_eq!(last.subject, spiffe_id(AWS_PATH));
    assert_eq!(last.audience, AWS_AUDIENCE);
    assert_eq!(last.session_name, session_name);
    assert!(sdk["expiry_unix"].as_u64().is_some(), "{sdk}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sdk_default_chain_gets_credentials_through_credential_process() -> anyhow::Result<()> {
    let setup = AwsSetup::start().await?;
    setup.write_profile(&format!(
        "credential_process = {AGENT} aws credential-process --role-arn {}",
        setup.role("web")
    ))?;
    let sdk = tokio::task::block_in_place(|| setup.run(AWS_PROBE, &[], &[]))?;
    let sdk = succeeded(&sdk)?;
    // The session name says which workload it was, within STS's rules.
    assert_issued_to_sdk(&setup.sts, &sdk, "example.org+cloud+aws")?;

    // The helper's own output is the documented credential_process form,
    // and nothing else on either stream, whatever RUST_LOG says (the AWS
    // CLI shows the helper's stderr).
    let output = tokio::task::block_in_place(|| {
        setup.run(
            AGENT,
            &[
                "aws",
                "credential-process",
                "--role-arn",
                &setup.role("web"),
                "--session-name",
                "ops@batch",
                "--duration",
                "900",
            ],
            &[("RUST_LOG", "debug".to_owned())],
        )
    })?;
    let printed = succeeded(&output)?;
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
    let issued = setup.sts.issued();
    let last = issued.last().context("nothing issued")?;
    assert_eq!(printed["Version"], 1);
    assert_eq!(printed["AccessKeyId"], last.access_key_id.as_str());
    assert_eq!(printed["SecretAccessKey"], last.secret_access_key.as_str());
    assert_eq!(printed["SessionToken"], last.session_token.as_str());
    assert_eq!(printed["Expiration"], last.expiration.as_str());
    assert_eq!(last.session_name, "ops@batch");
    setup.world.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sdk_default_chain_gets_credentials_through_a_token_file() -> anyhow::Result<()> {
    let setup = AwsSetup::start().await?;
    setup.write_profile("")?;
    let token_path = setup.dir.path().join("aws-token");
    let path_arg = token_path.display().to_string();
    let written = tokio::task::block_in_place(|| {
        setup.run(
            AGENT,
            &[
                "token-file",
                "--audience",
                AWS_AUDIENCE,
                "--path",
                &path_arg,
                "--once",
            ],
            &[],
        )
    })?;
    anyhow::ensure!(written.status.success(), "{}", text(&written.stderr));
    let mode = std::fs::metadata(&token_path)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file must be private");
    let token = std::fs::read_to_string(&token_path)?;
    assert_eq!(claims(&token)?["sub"], spiffe_id(AWS_PATH));

    let sdk = tokio::task::block_in_place(|| {
        setup.run(
            AWS_PROBE,
            &[],
            &[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", path_arg.clone()),
                ("AWS_ROLE_ARN", setup.role("web")),
                ("AWS_ROLE_SESSION_NAME", "from-token-file".into()),
            ],
        )
    })?;
    let sdk = succeeded(&sdk)?;
    assert_issued_to_sdk(&setup.sts, &sdk, "from-token-file")?;
    setup.world.stop().await;
    Ok(())
}

/// Runs `aws credential-process` expecting a refusal; returns its stderr.
fn refused(setup: &AwsSetup, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["aws", "credential-process"];
    full.extend_from_slice(args);
    // Debug logging asked for: still only the one error line.
    let output = setup.run(AGENT, &full, &[("RUST_LOG", "debug".to_owned())])?;
    anyhow::ensure!(
        !output.status.success(),
        "expected a refusal, got {}",
        text(&output.stdout)
    );
    assert!(output.stdout.is_empty(), "no credentials on a refusal");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    Ok(stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_credential_process_explains_sts_refusals() -> anyhow::Result<()> {
    let setup = AwsSetup::start().await?;
    let me = spiffe_id(AWS_PATH);
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        // A role whose trust policy names another workload.
        let error = refused(&setup, &["--role-arn", &setup.role("other")])?;
        assert!(error.contains("AccessDenied"), "{error}");
        assert!(
            error.contains(&format!("federation aws --spiffe-id {me}")),
            "{error}"
        );

        // An audience the IAM provider does not list.
        let error = refused(
            &setup,
            &[
                "--role-arn",
                &setup.role("web"),
                "--audience",
                "not-registered",
            ],
        )?;
        assert!(error.contains("InvalidIdentityToken"), "{error}");
        assert!(error.contains("client ID list"), "{error}");

        // Bad flags are refused before anything is fetched or sent.
        let before = setup.sts.issued().len();
        let error = refused(&setup, &["--role-arn", "web"])?;
        assert!(error.contains("--role-arn"), "{error}");
        let error = refused(
            &setup,
            &["--role-arn", &setup.role("web"), "--duration", "60"],
        )?;
        assert!(error.contains("--duration 60"), "{error}");
        assert_eq!(setup.sts.issued().len(), before);
        Ok(())
    })?;

    // STS's clock moves past the token's expiry and its five minutes of skew.
    setup.sts.clock().advance(Duration::from_secs(2 * 3600));
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let error = refused(&setup, &["--role-arn", &setup.role("web")])?;
        assert!(error.contains("ExpiredToken"), "{error}");
        assert!(error.contains("clock"), "{error}");
        Ok(())
    })?;
    assert!(setup.sts.issued().is_empty());

    // An endpoint that accepts connections and never answers: the helper
    // gives up after --timeout instead of keeping the AWS CLI waiting.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_url = format!("http://{}", silent.local_addr()?);
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let output = tokio::task::block_in_place(|| {
        setup.run(
            AGENT,
            &[
                "aws",
                "credential-process",
                "--role-arn",
                &setup.role("web"),
                "--timeout",
                "1",
            ],
            &[("AWS_ENDPOINT_URL_STS", silent_url)],
        )
    })?;
    holder.abort();
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("did not answer within 1 s"), "{stderr}");
    setup.world.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_example_assumes_the_role() -> anyhow::Result<()> {
    let setup = AwsSetup::start().await?;
    setup.write_profile("")?;
    let output = tokio::task::block_in_place(|| {
        setup.run(
            env!("CARGO_BIN_EXE_example-aws-sts"),
            &[
                "--role-arn",
                &setup.role("web"),
                "--endpoint-url",
                &setup.sts.url(),
            ],
            &[],
        )
    })?;
    let printed = succeeded(&output)?;
    let issued = setup.sts.issued();
    let last = issued.last().context("nothing issued")?;
    assert_eq!(printed["spiffe_id"], spiffe_id(AWS_PATH));
    assert_eq!(printed["access_key_id"], last.access_key_id.as_str());
    assert_eq!(
        printed["secret_fingerprint"],
        lanyard_examples::fingerprint(&last.secret_access_key)
    );
    assert_eq!(
        printed["assumed_role_arn"],
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/web/lanyard-example")
    );
    setup.world.stop().await;
    Ok(())
}

/// Reads the token file until it holds something other than `previous`.
async fn next_token(path: &Path, previous: &str, within: Duration) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if !now.is_empty() && now != previous {
            return Ok(now);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the token file was not rewritten within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_is_rewritten_before_half_life() -> anyhow::Result<()> {
    const TTL: i64 = 30;
    let world = World::start_with_server_tables(
        "",
        &[EntrySpec::mine("/token/file")],
        &format!("[jwt]\ndefault_ttl_seconds = {TTL}"),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let path: PathBuf = dir.path().join("token");
    let mut daemon = tokio::process::Command::new(AGENT)
        .args(["token-file", "--audience", "azure", "--path"])
        .arg(&path)
        .env("SPIFFE_ENDPOINT_SOCKET", world.endpoint())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;

    let first = next_token(&path, "", Duration::from_secs(10)).await?;
    let first_claims = claims(&first)?;
    let issued_at = first_claims["iat"].as_i64().context("iat")?;
    assert_eq!(first_claims["exp"].as_i64(), Some(issued_at + TTL));
    assert_eq!(first_claims["sub"], spiffe_id("/token/file"));

    let second = next_token(&path, &first, Duration::from_secs(TTL as u64)).await?;
    let second_issued_at = claims(&second)?["iat"].as_i64().context("iat")?;
    assert!(
        second_issued_at <= issued_at + TTL / 2,
        "rewritten at {} s of a {TTL} s token",
        second_issued_at - issued_at
    );
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    daemon.start_kill()?;
    daemon.wait().await?;
    world.stop().await;
    Ok(())
}

/// The value printed for a flag or key in `federation` output:
/// `--flag='v'`, `--flag="v"`, `--flag=v`, `--flag v` or `key='v'`.
fn printed_value(printed: &str, flag: &str) -> anyhow::Result<String> {
    let at = printed
        .find(&format!("{flag}="))
        .or_else(|| printed.find(&format!("{flag} ")))
        .with_context(|| format!("{flag} is not in:\n{printed}"))?;
    let rest = &printed[at + flag.len() + 1..];
    let value = match rest.chars().next() {
        Some(quote @ ('\'' | '"')) => rest[1..].split(quote).next(),
        _ => rest.split_whitespace().next(),
    };
    Ok(value.unwrap_or_default().to_owned())
}

const GCP_PATH: &str = "/cloud/gcp";
const GCP_PROJECT: &str = "424242";
const GCP_SERVICE_ACCOUNT: &str = "web@project.iam.gserviceaccount.com";

/// A world registered as `/cloud/gcp`, and a GCP whose pool, provider and
/// impersonation binding are exactly what `federation gcp` prints.
async fn gcp_setup() -> anyhow::Result<(World, Gcp, String)> {
    let world = World::start("/gcp", &[EntrySpec::mine(GCP_PATH)]).await?;
    let printed = federation(
        &world,
        "gcp",
        &[
            "--spiffe-id",
            &spiffe_id(GCP_PATH),
            "--account",
            GCP_PROJECT,
            "--name",
            "lanyard-pool",
        ],
    )?;
    let audience = printed_value(&printed, "--allowed-audiences")?;
    let gcp = Gcp::start(GcpConfig {
        issuer: world.issuer_trust()?,
        jwks_json: None,
        project_number: GCP_PROJECT.into(),
        pool: "lanyard-pool".into(),
        provider: "lanyard".into(),
        allowed_audiences: vec![audience.clone()],
        subject_condition: Some(printed_value(&printed, "--attribute-condition")?),
        attribute_mapping: Vec::new(),
        service_accounts: vec![GcpServiceAccount {
            email: GCP_SERVICE_ACCOUNT.into(),
            members: vec![printed_value(&printed, "--member")?],
        }],
    })
    .await?;
    anyhow::ensure!(audience == gcp.config().provider_resource(), "{audience}");
    Ok((world, gcp, audience))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_executable_feeds_google_sts() -> anyhow::Result<()> {
    let (world, gcp, audience) = gcp_setup().await?;
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("executable-output.json");
    let endpoint = world.endpoint();
    // The variables Google's auth libraries set when they run the executable.
    let google_env = |token_type: &'static str, socket: String| -> Vec<(&'static str, String)> {
        vec![
            ("SPIFFE_ENDPOINT_SOCKET", socket),
            ("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE", audience.clone()),
            ("GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE", token_type.into()),
            ("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE", "0".into()),
            (
                "GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE",
                cache.display().to_string(),
            ),
        ]
    };
    let run_executable = |env: Vec<(&'static str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        tokio::task::block_in_place(|| run(AGENT, &["gcp", "executable"], &env))
    };

    let output = run_executable(google_env(
        "urn:ietf:params:oauth:token-type:jwt",
        endpoint.clone(),
    ))?;
    let response = succeeded(&output)?;
    assert_eq!(response["version"], 1);
    assert_eq!(response["success"], true);
    assert_eq!(
        response["token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    let token = response["id_token"]
        .as_str()
        .context("id_token")?
        .to_owned();
    assert_eq!(response["expiration_time"], claims(&token)?["exp"]);
    assert_eq!(claims(&token)?["aud"], audience.as_str());
    // The library's cache file holds the same response, privately.
    let cached: Value = serde_json::from_slice(&std::fs::read(&cache)?)?;
    assert_eq!(cached, response);
    assert_eq!(
        std::fs::metadata(&cache)?.permissions().mode() & 0o777,
        0o600
    );

    // What the library does next: RFC 8693 token exchange, form-encoded.
    let exchange = gcp_exchange_form(
        &gcp,
        &audience,
        &token,
        "urn:ietf:params:oauth:token-type:jwt",
    )
    .await?;
    assert_eq!(exchange.0, 200, "{}", exchange.1);
    let federated = gcp.federated_tokens();
    assert_eq!(
        federated.last().map(|t| t.subject.as_str()),
        Some(spiffe_id(GCP_PATH).as_str())
    );

    // An issuer Google cannot reach: the provider gets the JWKS that
    // `oidc publish` writes for `--jwk-json-path`, and verifies against it alone.
    let published = dir.path().join("published");
    let admin_socket = world.server.admin_socket.display().to_string();
    let publish = tokio::task::block_in_place(|| {
        run(
            SERVER,
            &[
                "oidc",
                "publish",
                "--out",
                &published.display().to_string(),
                "--socket",
                &admin_socket,
            ],
            &[],
        )
    })?;
    anyhow::ensure!(publish.status.success(), "{}", text(&publish.stderr));
    let offline = Gcp::start(GcpConfig {
        jwks_json: Some(std::fs::read_to_string(published.join("jwks.json"))?),
        ..gcp.config().clone()
    })
    .await?;
    let exchange = gcp_exchange(&offline, &audience, &token).await?;
    assert_eq!(exchange.0, 200, "{}", exchange.1);

    // The failure form, with a non-zero exit: a SAML configuration, and no agent.
    for (token_type, socket, code) in [
        (
            "urn:ietf:params:oauth:token-type:saml2",
            endpoint.clone(),
            "INVALID_ARGUMENT",
        ),
        (
            "urn:ietf:params:oauth:token-type:jwt",
            format!("unix://{}/absent.sock", dir.path().display()),
            "UNAVAILABLE",
        ),
    ] {
        let output = run_executable(google_env(token_type, socket))?;
        assert!(!output.status.success());
        let failure: Value = serde_json::from_str(&text(&output.stdout))?;
        assert_eq!(failure["version"], 1);
        assert_eq!(failure["success"], false);
        assert_eq!(failure["code"], code, "{failure}");
        assert!(failure["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    world.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_example_impersonates_the_service_account() -> anyhow::Result<()> {
    let (world, gcp, audience) = gcp_setup().await?;
    let endpoint = world.endpoint();
    let url = gcp.url();
    let output = tokio::task::block_in_place(|| {
        run(
            env!("CARGO_BIN_EXE_example-gcp-sts"),
            &[
                "--audience",
                &audience,
                "--service-account",
                GCP_SERVICE_ACCOUNT,
                "--sts-url",
                &url,
                "--iam-credentials-url",
                &url,
            ],
            &[("SPIFFE_ENDPOINT_SOCKET", &endpoint)],
        )
    })?;
    let printed = succeeded(&output)?;
    let issued = gcp.access_tokens();
    let last = issued.last().context("no access token issued")?;
    assert_eq!(last.service_account, GCP_SERVICE_ACCOUNT);
    assert_eq!(last.subject, spiffe_id(GCP_PATH));
    assert_eq!(
        printed["access_token_fingerprint"],
        lanyard_examples::fingerprint(&last.access_token)
    );
    assert_eq!(printed["expire_time"], last.expire_time.as_str());
    world.stop().await;
    Ok(())
}

const ENTRA_PATH: &str = "/cloud/entra";
const ENTRA_AUDIENCE: &str = "api://AzureADTokenExchange";

/// An Entra federated credential exactly as `federation azure` prints it.
fn entra_credential(world: &World) -> anyhow::Result<(FederatedCredential, String)> {
    let command = run(
        SERVER,
        &[
            "federation",
            "azure",
            "--issuer",
            &world.issuer,
            "--key-type",
            if world.issuer.contains("/entra-rsa") {
                "rsa-2048"
            } else {
                "ec-p256"
            },
            "--spiffe-id",
            &spiffe_id(ENTRA_PATH),
        ],
        &[],
    )?;
    anyhow::ensure!(command.status.success(), "{}", text(&command.stderr));
    let printed = text(&command.stdout);
    Ok((
        FederatedCredential {
            issuer: printed_value(&printed, "--issuer")?,
            subject: printed_value(&printed, "--subject")?,
            audiences: vec![printed_value(&printed, "--audiences")?],
        },
        text(&command.stderr),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_accepts_rs256_assertions_and_refuses_es256() -> anyhow::Result<()> {
    let rsa = World::start_with_server_tables(
        "/entra-rsa",
        &[EntrySpec::mine(ENTRA_PATH)],
        "[jwt]\nkey_type = \"rsa-2048\"",
    )
    .await?;
    let ec = World::start("/entra-ec", &[EntrySpec::mine(ENTRA_PATH)]).await?;
    let (rsa_credential, rsa_warnings) = entra_credential(&rsa)?;
    let (ec_credential, ec_warnings) = entra_credential(&ec)?;
    assert!(!rsa_warnings.contains("RS256"), "{rsa_warnings}");
    assert!(
        ec_warnings.contains("RS256"),
        "federation warns before Entra refuses: {ec_warnings}"
    );
    let entra = lanyard_tests::emulators::entra::Entra::start(EntraConfig {
        issuer_trust: vec![rsa.issuer_trust()?, ec.issuer_trust()?],
        tenant_id: "tenant-1".into(),
        applications: vec![
            EntraApp {
                client_id: "client-rsa".into(),
                federated_credentials: vec![rsa_credential],
            },
            EntraApp {
                client_id: "client-ec".into(),
                federated_credentials: vec![ec_credential],
            },
        ],
    })
    .await?;
    let example = |world: &World, client_id: &str| {
        let endpoint = world.endpoint();
        let url = entra.url();
        tokio::task::block_in_place(|| {
            run(
                env!("CARGO_BIN_EXE_example-entra-token"),
                &[
                    "--tenant-id",
                    "tenant-1",
                    "--client-id",
                    client_id,
                    "--authority-url",
                    &url,
                ],
                &[("SPIFFE_ENDPOINT_SOCKET", &endpoint)],
            )
        })
    };

    let printed = succeeded(&example(&rsa, "client-rsa")?)?;
    let issued = entra.issued();
    let last = issued.last().context("nothing issued")?;
    assert_eq!(last.subject, spiffe_id(ENTRA_PATH));
    assert_eq!(last.client_id, "client-rsa");
    assert_eq!(printed["token_type"], "Bearer");
    assert_eq!(
        printed["access_token_fingerprint"],
        lanyard_examples::fingerprint(&last.access_token)
    );

    let refused = example(&ec, "client-ec")?;
    assert!(!refused.status.success());
    let error = text(&refused.stderr);
    assert!(
        error.contains("AADSTS") && error.contains("ES256"),
        "{error}"
    );
    assert_eq!(entra.issued().len(), 1);

    // AZURE_FEDERATED_TOKEN_FILE: what azure-identity reads and sends.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("azure-token");
    let endpoint = rsa.endpoint();
    let path_arg = path.display().to_string();
    let written = tokio::task::block_in_place(|| {
        run(
            AGENT,
            &[
                "token-file",
                "--audience",
                ENTRA_AUDIENCE,
                "--path",
                &path_arg,
                "--once",
            ],
            &[("SPIFFE_ENDPOINT_SOCKET", &endpoint)],
        )
    })?;
    anyhow::ensure!(written.status.success(), "{}", text(&written.stderr));
    let assertion = std::fs::read_to_string(&path)?;
    let answer = entra_token(
        &entra,
        "client-rsa",
        "https://vault.azure.net/.default",
        &assertion,
    )
    .await?;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(entra.issued().len(), 2);
    rsa.stop().await;
    ec.stop().await;
    Ok(())
}

/// The role `federation vault` writes to `path`: the JSON body of
/// `vault write <path> - <<'EOF' … EOF`.
fn vault_role_body(printed: &str, path: &str) -> anyhow::Result<Value> {
    let command = format!("vault write {path} - <<'EOF'\n");
    let at = printed
        .find(&command)
        .with_context(|| format!("no {command:?} in:\n{printed}"))?;
    let body = &printed[at + command.len()..];
    let end = body.find("\nEOF").context("no EOF line")?;
    Ok(serde_json::from_str(&body[..end])?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_example_logs_in_with_the_role_federation_prints() -> anyhow::Result<()> {
    const VAULT_PATH: &str = "/cloud/vault";
    let world = World::start("/vault", &[EntrySpec::mine(VAULT_PATH)]).await?;
    let printed = federation(
        &world,
        "vault",
        &[
            "--spiffe-id",
            &spiffe_id(VAULT_PATH),
            "--name",
            "web",
            "--account",
            "web-secrets",
        ],
    )?;
    let role = vault_role_body(&printed, "auth/jwt/role/web")?;
    let strings = |key: &str| -> anyhow::Result<Vec<String>> {
        serde_json::from_value(role[key].clone()).with_context(|| format!("{key} in {role}"))
    };
    let vault = Vault::start(VaultConfig {
        mount: "jwt".into(),
        issuer: world.issuer_trust()?,
        bound_issuer: None,
        roles: vec![VaultRole {
            name: "web".into(),
            bound_audiences: strings("bound_audiences")?,
            bound_subject: role["bound_subject"].as_str().map(str::to_owned),
            user_claim: role["user_claim"].as_str().unwrap_or_default().to_owned(),
            token_ttl_seconds: 900,
            token_policies: strings("token_policies")?,
        }],
    })
    .await?;
    let endpoint = world.endpoint();
    let addr = vault.url();
    let login = |role: &str| {
        tokio::task::block_in_place(|| {
            run(
                env!("CARGO_BIN_EXE_example-vault-login"),
                &["--role", role],
                &[("SPIFFE_ENDPOINT_SOCKET", &endpoint), ("VAULT_ADDR", &addr)],
            )
        })
    };
    let printed = succeeded(&login("web")?)?;
    let issued = vault.issued();
    let last = issued.last().context("no Vault token issued")?;
    assert_eq!(last.role, "web");
    assert_eq!(
        printed["policies"],
        serde_json::json!(["default", "web-secrets"])
    );
    assert_eq!(
        printed["client_token_fingerprint"],
        lanyard_examples::fingerprint(&last.client_token)
    );

    let refused = login("nosuch")?;
    assert!(!refused.status.success());
    let error = text(&refused.stderr);
    // Vault's own error text, passed on by the example.
    assert!(
        error.contains("could not be found") && error.contains("nosuch"),
        "{error}"
    );
    world.stop().await;
    Ok(())
}
