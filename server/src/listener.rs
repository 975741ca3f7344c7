//! The TCP accept loop and TLS handshake shared by the server's listeners.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` changes, handling each in its own task.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    mut shutdown: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Small request/response exchanges: Nagle's algorithm
                    // against the peer's delayed ACK would add ~40 ms stalls.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(listener = name, %peer, error = %e, "TCP_NODELAY not set");
                    }
                    tokio::spawn(handle(tcp, peer));
                }
                Err(e) => tracing::warn!(listener = name, error = %e, "accept failed"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Completes the TLS handshake, or logs why it did not and returns None.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    name: &str,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(listener = name, %peer, "TLS handshake timed out");
            None
        }
    }
}
