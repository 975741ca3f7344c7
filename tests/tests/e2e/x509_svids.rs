//! The X509-SVID profile through the real socket: the `spiffe` crate's
//! X509Source, mTLS between two workloads of different uids with
//! `spiffe-rustls`, rotation and entry deletion on one open stream, a CA
//! rotation reaching FetchX509Bundles, the operator's switch, and the CLI.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use lanyard_host::transport::unix_channel;
use lanyard_proto::WORKLOAD_API_HEADER;
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{DeleteEntryRequest, ListEntriesRequest};
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{X509BundlesRequest, X509svidRequest};
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World, my_uid, pem_to_der};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use spiffe::{TrustDomain, X509Source};
use spiffe_rustls::{TrustDomainPolicy, authorizer, mtls_server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tonic::Code;
use tonic::metadata::MetadataValue;

/// Only a bound for a broken test; nothing here waits on time otherwise.
const PATIENCE: Duration = Duration::from_secs(30);
const NOBODY: u32 = 65534;

fn id(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}{path}")
}

fn workload_client(world: &World) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(unix_channel(&world.dir.path().join("agent/api.sock")))
}

fn with_header<T>(body: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert(WORKLOAD_API_HEADER, MetadataValue::from_static("true"));
    request
}

/// The leaf's serial, to tell SVIDs apart.
fn leaf_serial(chain: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(chain)?;
    Ok(cert.raw_serial().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_source_gets_an_svid_and_the_bundle() -> anyhow::Result<()> {
    let world = World::start("", &[EntrySpec::mine("/x509")]).await?;
    let source = X509Source::builder()
        .endpoint(world.endpoint())
        .build()
        .await?;
    let svid = source.svid()?;
    assert_eq!(svid.spiffe_id().to_string(), id("/x509"));
    let bundles = source.bundle_set()?;
    let bundle = bundles
        .get(&TrustDomain::new(TRUST_DOMAIN)?)
        .context("no bundle for our trust domain")?;
    let served: Vec<Vec<u8>> = bundle
        .authorities()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let published: Vec<Vec<u8>> = world
        .server
        .ca
        .bundle()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    assert_eq!(served, published);
    source.shutdown().await;
    world.stop().await;
    Ok(())
}

/// A TLS client that accepts any server: only the server's verdict on the
/// client certificate is under test.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A certificate for `spiffe://other.org/client` from another trust
/// domain's CA, presented as a client certificate.
async fn dial_with_foreign_svid(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.subject_alt_names = vec![rcgen::SanType::URI("spiffe://other.org".try_into()?)];
    let ca = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names = vec![rcgen::SanType::URI("spiffe://other.org/client".try_into()?)];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &ca)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_client_auth_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("workload")?, tcp)
        .await?;
    tls.write_all(b"hello\n").await?;
    let mut reply = String::new();
    BufReader::new(tls).read_line(&mut reply).await?;
    Ok(reply)
}

/// Two workloads under different uids each take an X509-SVID from the same
/// agent and do mutual TLS with `spiffe-rustls`, each accepting only the
/// other's SPIFFE ID; a certificate from another trust domain is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workloads_do_mtls_with_their_svids() -> anyhow::Result<()> {
    if my_uid() != 0 {
        eprintln!(
            "skipped: running the second workload as another uid needs root (CI runs as root)"
        );
        return Ok(());
    }
    let server_id = id("/mtls/server");
    let client_id = id("/mtls/client");
    let world = World::start(
        "",
        &[
            EntrySpec::mine("/mtls/server"),
            EntrySpec::new("/mtls/client", &[&format!("unix:uid:{NOBODY}")]),
        ],
    )
    .await?;
    let source = X509Source::builder()
        .endpoint(world.endpoint())
        .build()
        .await?;
    let config = mtls_server(source.clone())
        .authorize(authorizer::exact([client_id.as_str()])?)
        .trust_domain_policy(TrustDomainPolicy::LocalOnly(TrustDomain::new(
            TRUST_DOMAIN,
        )?))
        .build()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Serves two connections: the probe's, then the foreign client's.
    let serving = tokio::spawn(async move {
        let mut verdicts = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await?;
            let verdict = match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| {
                            let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
                            let san = cert.subject_alternative_name().ok()??;
                            san.value.general_names.iter().find_map(|name| match name {
                                x509_parser::extensions::GeneralName::URI(uri) => {
                                    Some(uri.to_string())
                                }
                                _ => None,
                            })
                        })
                        .unwrap_or_default();
                    let mut line = String::new();
                    let (read, mut write) = tokio::io::split(&mut tls);
                    BufReader::new(read).read_line(&mut line).await?;
                    write
                        .write_all(format!("hello {peer}\n").as_bytes())
                        .await?;
                    write.shutdown().await?;
                    Ok(peer)
                }
                Err(e) => Err(e.to_string()),
            };
            verdicts.push(verdict);
        }
        anyhow::Ok(verdicts)
    });

    let mut probe = std::process::Command::new(env!("CARGO_BIN_EXE_mtls-probe"));
    probe
        .args([addr.to_string(), server_id.clone()])
        .env("SPIFFE_ENDPOINT_SOCKET", world.endpoint())
        .uid(NOBODY)
        .gid(NOBODY);
    let output = tokio::task::spawn_blocking(move || probe.output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.trim(),
        format!("ok hello {client_id}"),
        "probe: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let foreign = tokio::time::timeout(PATIENCE, dial_with_foreign_svid(addr)).await?;
    assert!(
        foreign.as_ref().map_or(true, String::is_empty),
        "a certificate of another trust domain was served: {foreign:?}"
    );
    let verdicts = tokio::time::timeout(PATIENCE, serving).await???;
    assert_eq!(verdicts[0].as_deref(), Ok(client_id.as_str()));
    assert!(verdicts[1].is_err(), "{verdicts:?}");
    source.shutdown().await;
    world.stop().await;
    Ok(())
}

/// A short-lived entry's SVID rotates on one open stream, at least twice,
/// each one before half its life; deleting the entry ends the stream with
/// PermissionDenied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_arrive_on_one_stream_and_deletion_ends_it() -> anyhow::Result<()> {
    let world = World::start_with_agent_config(
        "",
        &[EntrySpec::mine("/short").with_x509_ttl(4)],
        "sync_interval_seconds = 1",
        "",
    )
    .await?;
    let mut stream = workload_client(&world)
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await?
        .into_inner();
    let mut serials = Vec::new();
    while serials.len() < 3 {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await??
            .context("the stream ended")?;
        assert_eq!(message.svids.len(), 1);
        let svid = &message.svids[0];
        assert_eq!(svid.spiffe_id, id("/short"));
        let (_, cert) = x509_parser::parse_x509_certificate(&svid.x509_svid)?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs() as i64;
        // Issued a second or so ago, valid for four: never past half-life
        // (with a second's rounding).
        assert!(
            cert.validity().not_after.timestamp() - now >= 1,
            "handed out near expiry"
        );
        let serial = leaf_serial(&svid.x509_svid)?;
        assert!(!serials.contains(&serial), "the same SVID was sent twice");
        serials.push(serial);
    }

    let mut admin = AdminClient::new(unix_channel(&world.server.admin_socket));
    let entries = admin
        .list_entries(ListEntriesRequest {
            spiffe_id: id("/short"),
            ..ListEntriesRequest::default()
        })
        .await?
        .into_inner()
        .entries;
    admin
        .delete_entry(DeleteEntryRequest {
            id: entries.first().context("no entry")?.id.clone(),
        })
        .await?;
    // Rotations may still arrive until the agent has synced the deletion.
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await?;
    assert_eq!(ended.err().map(|s| s.code()), Some(Code::PermissionDenied));
    assert!(matches!(stream.message().await, Ok(None) | Err(_)));
    world.stop().await;
    Ok(())
}

/// A CA rotation at the server (its successor published two months before
/// the old CA expires) reaches an open FetchX509Bundles stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_reaches_fetch_x509_bundles() -> anyhow::Result<()> {
    let world = World::start_with_agent_config(
        "",
        &[EntrySpec::mine("/bundles")],
        "sync_interval_seconds = 1",
        "",
    )
    .await?;
    let key = format!("spiffe://{TRUST_DOMAIN}");
    let mut stream = workload_client(&world)
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await?
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, stream.message())
        .await??
        .context("no first message")?;
    let before = world.server.ca.bundle();
    assert_eq!(before.len(), 1);
    assert_eq!(first.bundles.get(&key), Some(&before[0].to_vec()));

    let year = Duration::from_secs(306 * 24 * 3600);
    assert!(world.server.ca.rotate(SystemTime::now() + year)?);
    let after: Vec<u8> = world
        .server
        .ca
        .bundle()
        .iter()
        .flat_map(|c| c.to_vec())
        .collect();
    let next = tokio::time::timeout(PATIENCE, stream.message())
        .await??
        .context("the stream ended")?;
    assert_eq!(next.bundles.get(&key), Some(&after));
    world.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_can_switch_the_x509_profile_off() -> anyhow::Result<()> {
    // The World's agent config ends inside its [workload_api] table.
    let world =
        World::start_with_agent_tables("", &[EntrySpec::mine("/off")], "x509 = false\n").await?;
    let mut client = workload_client(&world);
    let svids = client.fetch_x509svid(with_header(X509svidRequest {})).await;
    assert_eq!(svids.err().map(|s| s.code()), Some(Code::Unimplemented));
    let bundles = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await;
    assert_eq!(bundles.err().map(|s| s.code()), Some(Code::Unimplemented));
    // The JWT profile is unaffected.
    let jwt = spiffe::WorkloadApiClient::connect_to(world.endpoint())
        .await?
        .fetch_jwt_svid(["aud"], None)
        .await?;
    assert_eq!(jwt.spiffe_id().to_string(), id("/off"));
    world.stop().await;
    Ok(())
}

/// `lanyard-agent api fetch x509 --write DIR`: the chain, a 0600 key and the
/// bundle, which parse as an X509-SVID with the `spiffe` crate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_writes_svid_key_and_bundle() -> anyhow::Result<()> {
    let world = World::start("", &[EntrySpec::mine("/cli-x509")]).await?;
    let out = world.dir.path().join("x509-out");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_test-lanyard-agent"));
    command
        .args(["api", "fetch", "x509", "--write"])
        .arg(&out)
        .env("SPIFFE_ENDPOINT_SOCKET", world.endpoint());
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(&id("/cli-x509")));
    let key_mode = std::fs::metadata(out.join("svid.key"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let pem_der = |name: &str| -> anyhow::Result<Vec<Vec<u8>>> {
        pem_to_der(&std::fs::read_to_string(out.join(name))?)
    };
    let chain = pem_der("svid.pem")?.concat();
    let key = pem_der("svid.key")?.concat();
    let svid = spiffe::X509Svid::parse_from_der(&chain, &key)?;
    assert_eq!(svid.spiffe_id().to_string(), id("/cli-x509"));
    let bundle = pem_der("bundle.pem")?;
    let published: Vec<Vec<u8>> = world
        .server
        .ca
        .bundle()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    assert_eq!(bundle, published);
    world.stop().await;
    Ok(())
}
