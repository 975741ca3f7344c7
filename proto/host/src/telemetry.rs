//! The telemetry listener both daemons share: `[telemetry] listen`, a small
//! HTTP/1.1 server on TCP that answers three paths and nothing else.
//!
//! - `/metrics`: the daemon's [`Registry`] in the OpenMetrics text format
//!   (which Prometheus scrapes as it does its own text format);
//! - `/healthz`: 200 while the process answers at all;
//! - `/readyz`: 200 `ready`, or 503 with one line saying why not, as the
//!   daemon's readiness check ([`ReadinessCheck`]) finds it, within
//!   [`READINESS_TIMEOUT`].
//!
//! Any other path is 404; methods other than GET and HEAD are 405.
//!
//! Who is on the other side: anyone who can reach the address (by default
//! nothing listens; a loopback address keeps it to local processes). What it
//! gives them: counts and latencies with bounded labels (never a SPIFFE ID,
//! an audience, a uid or an address), and whether the daemon is ready. What
//! bounds them: at most [`MAX_CONNECTIONS`] connections (a quarter of them per
//! address), a request head within [`HEADER_READ_TIMEOUT`] and of at most
//! [`MAX_HEAD_BYTES`], no request body read, and [`MAX_CONNECTION_LIFETIME`]
//! per connection.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config_file::{ConfigError, invalid};
use crate::transport::limits::{AcceptErrors, ConnectionLimiter, ConnectionLimits};

pub use prometheus_client;

/// Most connections the listener holds at once (a scraper and a prober or two).
pub const MAX_CONNECTIONS: usize = 16;
/// A client must send a whole request head within this; also the keep-alive idle time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer.
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// The largest request head read (hyper's smallest buffer).
pub const MAX_HEAD_BYTES: usize = 8192;
/// A readiness check that has not answered by then is "not ready".
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

/// The content type of `/metrics`.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `[telemetry]` as written in either daemon's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    listen: Option<String>,
}

/// `[telemetry]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; off when None.
    pub listen: Option<SocketAddr>,
}

impl RawTelemetry {
    pub fn validate(self) -> Result<TelemetryConfig, ConfigError> {
        let listen = match self.listen {
            Some(raw) => Some(raw.parse::<SocketAddr>().map_err(|e| {
                invalid("telemetry.listen", format!("{raw:?} is not ip:port ({e})"))
            })?),
            None => None,
        };
        Ok(TelemetryConfig { listen })
    }
}

/// Whether a daemon is ready, as `/readyz` says it: `Err` holds the one-line reason.
pub type Readiness = Result<(), String>;

/// The daemon's readiness check, run for every `/readyz` request.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Readiness> + Send>> + Send + Sync>;

/// What the listener serves: a registry and a readiness check.
#[derive(Clone)]
pub struct Endpoint {
    registry: Arc<Registry>,
    readiness: ReadinessCheck,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").finish_non_exhaustive()
    }
}

impl Endpoint {
    pub fn new(registry: Registry, readiness: ReadinessCheck) -> Self {
        Self {
            registry: Arc::new(registry),
            readiness,
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    async fn ready(&self) -> Readiness {
        match tokio::time::timeout(READINESS_TIMEOUT, (self.readiness)()).await {
            Ok(readiness) => readiness,
            Err(_) => Err(format!(
                "the readiness check did not answer within {} s",
                READINESS_TIMEOUT.as_secs()
            )),
        }
    }

    /// The answer to `method` on `path`.
    pub async fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
            return plain(StatusCode::NOT_FOUND, "not found\n".into());
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let mut response = match path {
            "/metrics" => match self.render() {
                Ok(text) => {
                    let mut response = plain(StatusCode::OK, text);
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(OPENMETRICS),
                    );
                    response
                }
                Err(_) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics could not be rendered\n".into(),
                ),
            },
            "/healthz" => plain(StatusCode::OK, "alive\n".into()),
            _ => match self.ready().await {
                Ok(()) => plain(StatusCode::OK, "ready\n".into()),
                Err(reason) => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", one_line(&reason)),
                ),
            },
        };
        if method == Method::HEAD {
            *response.body_mut() = Full::new(Bytes::new());
        }
        response
    }
}

/// `text` on one line (a reason may quote an error with newlines in it).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// Binds the telemetry listener at `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `endpoint` on `listener` until `shutdown` changes.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, mut shutdown: watch::Receiver<bool>) {
    let limiter: Arc<ConnectionLimiter<IpAddr>> = ConnectionLimiter::new(
        "telemetry",
        ConnectionLimits {
            per_peer: MAX_CONNECTIONS / 4,
            total: MAX_CONNECTIONS,
        },
    );
    let mut errors = AcceptErrors::new("telemetry");
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    errors.pause(&e).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // Over the caps: closed at once (logged by the limiter).
        let Some(permit) = limiter.try_acquire(peer.ip()) else {
            continue;
        };
        let endpoint = endpoint.clone();
        let mut stopping = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = tokio::time::timeout(MAX_CONNECTION_LIFETIME, serve_connection(tcp, endpoint, peer)) => {}
                _ = stopping.changed() => {}
            }
        });
    }
}

async fn serve_connection(tcp: tokio::net::TcpStream, endpoint: Endpoint, peer: SocketAddr) {
    let service = service_fn(move |request: Request<Incoming>| {
        let endpoint = endpoint.clone();
        async move {
            // The body (if any) is never read: hyper closes the connection
            // after answering rather than reading what it did not need.
            let response = endpoint
                .respond(request.method(), request.uri().path())
                .await;
            Ok::<_, Infallible>(response)
        }
    });
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(tcp), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "telemetry connection ended with an error");
    }
}

/// A gRPC status code as a label value: `ok`, `permission_denied`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcCode(pub tonic::Code);

impl GrpcCode {
    /// The code of a handler's result.
    pub fn of<T>(result: &Result<T, tonic::Status>) -> Self {
        Self(
            result
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        )
    }

    pub fn as_str(self) -> &'static str {
        use tonic::Code;
        match self.0 {
            Code::Ok => "ok",
            Code::Cancelled => "cancelled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }
}

impl EncodeLabelValue for GrpcCode {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// An enum of fixed label values, each written as the text given:
/// `label_values! { pub enum Kind { Jwt => "jwt", X509 => "x509" } }`.
#[macro_export]
macro_rules! label_values {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            #[allow(dead_code, reason = "not every label is also printed")]
            $vis fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl $crate::telemetry::prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut $crate::telemetry::prometheus_client::encoding::LabelValueEncoder,
            ) -> Result<(), ::std::fmt::Error> {
                ::std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

/// Writes one gauge of value `value` from a collector (a value read at
/// scrape time: a deadline, an age).
pub fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

/// Writes one counter of value `value` from a collector (a count kept
/// elsewhere); `name` without `_total`, which is added.
pub fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
    counter.encode(metric)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    fn endpoint(ready: Readiness) -> Endpoint {
        let mut registry = Registry::with_prefix("test");
        let counter: Counter = Counter::default();
        counter.inc();
        registry.register("events", "Events", counter);
        Endpoint::new(
            registry,
            Arc::new(move || {
                let ready = ready.clone();
                Box::pin(async move { ready })
            }),
        )
    }

    async fn body(response: Response<Full<Bytes>>) -> Result<String, Box<dyn std::error::Error>> {
        use http_body_util::BodyExt;
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8(bytes.to_vec())?)
    }

    #[tokio::test]
    async fn routes_methods_and_readiness() -> Result<(), Box<dyn std::error::Error>> {
        let up = endpoint(Ok(()));
        let metrics = up.respond(&Method::GET, "/metrics").await;
        assert_eq!(metrics.status(), StatusCode::OK);
        assert_eq!(metrics.headers()[header::CONTENT_TYPE], OPENMETRICS);
        assert!(body(metrics).await?.contains("test_events_total 1"));
        assert_eq!(
            up.respond(&Method::GET, "/healthz").await.status(),
            StatusCode::OK
        );
        assert_eq!(
            body(up.respond(&Method::GET, "/readyz").await).await?,
            "ready\n"
        );
        assert_eq!(
            up.respond(&Method::GET, "/other").await.status(),
            StatusCode::NOT_FOUND
        );
        let post = up.respond(&Method::POST, "/metrics").await;
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
        let head = up.respond(&Method::HEAD, "/healthz").await;
        assert_eq!(head.status(), StatusCode::OK);
        assert!(body(head).await?.is_empty());

        let down = endpoint(Err("datastore\nunreachable".into()));
        let readyz = down.respond(&Method::GET, "/readyz").await;
        assert_eq!(readyz.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(readyz).await?, "not ready: datastore unreachable\n");
        assert_eq!(
            down.respond(&Method::GET, "/healthz").await.status(),
            StatusCode::OK
        );
        Ok(())
    }

    /// A listener on loopback serving `endpoint(Ok(()))`, and its address.
    async fn listening() -> Result<(SocketAddr, watch::Sender<bool>), Box<dyn std::error::Error>> {
        let listener = bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, endpoint(Ok(())), stopped));
        Ok((addr, stop))
    }

    /// Everything the server sends on `tcp` until it closes it (bounded by a
    /// guard far above any of the listener's limits).
    async fn until_closed(
        tcp: &mut tokio::net::TcpStream,
    ) -> Result<String, Box<dyn std::error::Error>> {
        use tokio::io::AsyncReadExt;
        let mut said = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut said)).await??;
        Ok(String::from_utf8_lossy(&said).into_owned())
    }

    /// Who may be on the other side: anyone who reaches the address. A head
    /// over the size cap is refused (431) and the connection closed.
    #[tokio::test]
    async fn an_oversize_request_head_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        use tokio::io::AsyncWriteExt;
        let (addr, _stop) = listening().await?;
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let filler = "a".repeat(4 * MAX_HEAD_BYTES);
        let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n");
        // The server may close before all of it is written: that is a refusal too.
        let _ = tcp.write_all(request.as_bytes()).await;
        let said = until_closed(&mut tcp).await.unwrap_or_default();
        assert!(!said.contains(" 200 "), "{said}");
        assert!(
            said.is_empty() || said.starts_with("HTTP/1.1 431"),
            "{said}"
        );
        Ok(())
    }

    /// A head that never ends is cut off after the header timeout, and a
    /// malformed one is answered 400; neither holds its connection.
    #[tokio::test]
    async fn slow_and_malformed_heads_lose_their_connection()
    -> Result<(), Box<dyn std::error::Error>> {
        use tokio::io::AsyncWriteExt;
        let (addr, _stop) = listening().await?;
        let mut slow = tokio::net::TcpStream::connect(addr).await?;
        slow.write_all(b"GET /metr").await?;
        until_closed(&mut slow).await?;

        let mut malformed = tokio::net::TcpStream::connect(addr).await?;
        malformed
            .write_all(b"\x00\x01 not http at all\r\n\r\n")
            .await?;
        let said = until_closed(&mut malformed).await?;
        assert!(
            said.is_empty() || said.starts_with("HTTP/1.1 400"),
            "{said}"
        );
        Ok(())
    }

    /// One address may hold a quarter of the connections: the next is
    /// closed at once, and a place comes back when one closes.
    #[tokio::test]
    async fn connections_beyond_the_per_address_cap_are_closed()
    -> Result<(), Box<dyn std::error::Error>> {
        use tokio::io::AsyncWriteExt;
        let (addr, _stop) = listening().await?;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS / 4 {
            held.push(tokio::net::TcpStream::connect(addr).await?);
        }
        // Each held connection is known to the server once it answers on it.
        for tcp in &mut held {
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await?;
            let mut buf = [0u8; 12];
            tokio::io::AsyncReadExt::read_exact(tcp, &mut buf).await?;
            assert_eq!(&buf, b"HTTP/1.1 200");
        }
        // Asked, the connection over the cap gets no answer: it was closed.
        let mut over = tokio::net::TcpStream::connect(addr).await?;
        let _ = over
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let said = until_closed(&mut over).await.unwrap_or_default();
        assert!(
            said.is_empty(),
            "a connection over the cap was served: {said}"
        );

        drop(held.pop());
        // The freed place is taken again (the close reaches the server first).
        let mut tries = 0;
        loop {
            tries += 1;
            let mut again = tokio::net::TcpStream::connect(addr).await?;
            let _ = again
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let said = until_closed(&mut again).await.unwrap_or_default();
            if said.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(tries < 500, "the freed place never came back: {said:?}");
            // Polling: the server has yet to read the close of the dropped one.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_readiness_check_that_hangs_is_not_ready() -> Result<(), Box<dyn std::error::Error>> {
        let hanging = Endpoint::new(
            Registry::default(),
            Arc::new(|| Box::pin(std::future::pending::<Readiness>())),
        );
        let readyz = hanging.respond(&Method::GET, "/readyz").await;
        assert_eq!(readyz.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(readyz).await?.contains("did not answer"));
        Ok(())
    }

    #[test]
    fn listen_must_be_ip_and_port() {
        let raw: RawTelemetry = toml::from_str("listen = \"localhost:9988\"").unwrap_or_default();
        let error = raw.validate().err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("telemetry.listen")),
            "{error:?}"
        );
        let raw: RawTelemetry = toml::from_str("listen = \"127.0.0.1:9988\"").unwrap_or_default();
        assert_eq!(
            raw.validate().ok().and_then(|c| c.listen),
            Some(SocketAddr::from(([127, 0, 0, 1], 9988)))
        );
    }

    label_values! {
        enum Kind { Jwt => "jwt", X509 => "x509" }
    }

    #[test]
    fn label_values_are_written_as_given() -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabelSet;
        #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Labels {
            kind: Kind,
            code: GrpcCode,
        }
        let family = prometheus_client::metrics::family::Family::<Labels, Counter>::default();
        family
            .get_or_create(&Labels {
                kind: Kind::X509,
                code: GrpcCode(tonic::Code::PermissionDenied),
            })
            .inc();
        let _ = Kind::Jwt;
        let mut registry = Registry::default();
        registry.register("svids", "SVIDs", family);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        assert!(
            text.contains("svids_total{kind=\"x509\",code=\"permission_denied\"} 1"),
            "{text}"
        );
        Ok(())
    }
}
