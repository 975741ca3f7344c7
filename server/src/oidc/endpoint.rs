//! The OIDC discovery endpoint: `<issuer>/.well-known/openid-configuration`
//! and the JWKS it points to, over HTTPS, for cloud STSs to fetch.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use lanyard_host::transport::limits::ConnectionLimiter;
use lanyard_proto::Jwks;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::api::listener;
use crate::authority::Issuer;

/// How long clients may cache the documents: short, so rotation shows quickly.
const CACHE_CONTROL: &str = "public, max-age=300";

/// The two documents, rendered once.
#[derive(Debug)]
pub(crate) struct OidcDocuments {
    discovery_path: String,
    jwks_path: String,
    discovery: Bytes,
    jwks: Bytes,
}

impl OidcDocuments {
    pub(crate) fn new(issuer: &Issuer, jwks: &Jwks) -> Result<Self, serde_json::Error> {
        let discovery = json!({
            "issuer": issuer.as_str(),
            "jwks_uri": issuer.jwks_url(),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": jwks.algorithms(),
        });
        Ok(Self {
            discovery_path: format!("{}/.well-known/openid-configuration", issuer.path()),
            jwks_path: format!("{}/keys", issuer.path()),
            discovery: Bytes::from(serde_json::to_vec_pretty(&discovery)?),
            jwks: Bytes::from(serde_json::to_vec_pretty(jwks)?),
        })
    }

    pub(crate) fn discovery(&self) -> &[u8] {
        &self.discovery
    }

    pub(crate) fn jwks(&self) -> &[u8] {
        &self.jwks
    }

    pub(crate) fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let body = if path == self.discovery_path {
            &self.discovery
        } else if path == self.jwks_path {
            &self.jwks
        } else {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        };
        let method = request.method();
        if method == Method::OPTIONS {
            return with_common_headers(
                Response::builder().status(StatusCode::NO_CONTENT),
                Bytes::new(),
            );
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response.headers_mut().insert(
                header::ALLOW,
                header::HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
            return response;
        }
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            body.clone()
        };
        with_common_headers(
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CACHE_CONTROL, CACHE_CONTROL),
            body,
        )
    }
}

/// The documents in force, swapped whole when the published keys change.
#[derive(Debug)]
pub(crate) struct SharedDocuments(ArcSwap<OidcDocuments>);

impl SharedDocuments {
    pub(crate) fn new(documents: OidcDocuments) -> Self {
        Self(ArcSwap::from_pointee(documents))
    }

    pub(crate) fn current(&self) -> Arc<OidcDocuments> {
        self.0.load_full()
    }

    pub(crate) fn replace(&self, documents: OidcDocuments) {
        self.0.store(Arc::new(documents));
    }
}

fn with_common_headers(builder: http::response::Builder, body: Bytes) -> Response<Full<Bytes>> {
    builder
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, HEAD, OPTIONS")
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A client must send a whole request head within this (and the next one
/// on a kept-alive connection, so it is also the idle timeout).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer: a cloud fetches two small documents.
const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves the documents on `listener` until `shutdown` changes: over TLS
/// when given an acceptor, else plain HTTP (behind a TLS-terminating proxy).
/// HTTP/1.1 only: what the clouds' fetchers speak, and less to defend.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    documents: Arc<SharedDocuments>,
    limiter: Arc<ConnectionLimiter<IpAddr>>,
    shutdown: watch::Receiver<bool>,
) {
    listener::accept_loop(listener, "OIDC", limiter, shutdown, |tcp, peer, permit| {
        let (acceptor, documents) = (acceptor.clone(), documents.clone());
        async move {
            let _permit = permit;
            let served = async {
                match acceptor {
                    None => serve_connection(tcp, documents, peer).await,
                    Some(acceptor) => {
                        if let Some(tls) = listener::handshake(&acceptor, tcp, peer, "OIDC").await {
                            serve_connection(tls, documents, peer).await;
                        }
                    }
                }
            };
            if tokio::time::timeout(MAX_CONNECTION_LIFETIME, served)
                .await
                .is_err()
            {
                tracing::debug!(%peer, "OIDC connection closed at its lifetime limit");
            }
        }
    })
    .await;
}

async fn serve_connection<I>(io: I, documents: Arc<SharedDocuments>, peer: std::net::SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let response = documents.current().respond(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "OIDC connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_proto::Jwk;

    fn documents() -> Result<OidcDocuments, Box<dyn std::error::Error>> {
        let issuer = Issuer::parse("https://example.org/tenant")?;
        let jwks = Jwks {
            keys: vec![Jwk {
                kty: "EC".into(),
                kid: "k1".into(),
                alg: "ES256".into(),
                key_use: "sig".into(),
                crv: Some("P-256".into()),
                x: Some("x".into()),
                y: Some("y".into()),
                n: None,
                e: None,
            }],
        };
        Ok(OidcDocuments::new(&issuer, &jwks)?)
    }

    fn request(method: Method, path: &str) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = path.parse().unwrap_or_default();
        request
    }

    #[test]
    fn routes_under_the_issuer_path() -> Result<(), Box<dyn std::error::Error>> {
        let docs = documents()?;
        let ok = docs.respond(&request(
            Method::GET,
            "/tenant/.well-known/openid-configuration",
        ));
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(
            ok.headers()[header::CACHE_CONTROL]
                .to_str()?
                .contains("max-age=")
        );
        assert_eq!(
            docs.respond(&request(Method::GET, "/tenant/keys")).status(),
            StatusCode::OK
        );
        assert_eq!(
            docs.respond(&request(Method::GET, "/.well-known/openid-configuration"))
                .status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            docs.respond(&request(Method::GET, "/tenant/keys/"))
                .status(),
            StatusCode::NOT_FOUND
        );
        let post = docs.respond(&request(Method::POST, "/tenant/keys"));
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(post.headers().contains_key(header::ALLOW));
        Ok(())
    }

    #[test]
    fn discovery_names_issuer_keys_and_algorithms() -> Result<(), Box<dyn std::error::Error>> {
        let docs = documents()?;
        let discovery: serde_json::Value = serde_json::from_slice(&docs.discovery)?;
        assert_eq!(discovery["issuer"], "https://example.org/tenant");
        assert_eq!(discovery["jwks_uri"], "https://example.org/tenant/keys");
        assert_eq!(
            discovery["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );
        assert_eq!(discovery["response_types_supported"], json!(["id_token"]));
        assert_eq!(discovery["subject_types_supported"], json!(["public"]));
        Ok(())
    }
}
