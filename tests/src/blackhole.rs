//! A TCP relay on loopback that a test turns into a black hole: from the
//! moment a client sends a chosen byte string, nothing more passes either
//! way on any connection, new ones included, and every socket stays open.
//! That is how a network partition, or a database failover that drops
//! packets, looks to the client: no reset, no answer. [`Blackhole::reopen`]
//! then cuts every held connection and passes traffic again, as when the
//! database comes back at its address.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Whether traffic passes, and how many times connections were cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Phase {
    frozen: bool,
    cuts: u64,
}

/// A relay from a local port to `target`, black-holed by a marker.
#[derive(Debug)]
pub struct Blackhole {
    address: SocketAddr,
    phase: watch::Sender<Phase>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    /// Relays 127.0.0.1:(a free port) to `target` until a client sends `marker`.
    pub async fn start(target: SocketAddr, marker: &[u8]) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (phase, _) = watch::channel(Phase {
            frozen: false,
            cuts: 0,
        });
        let marker = marker.to_vec();
        let accepting = tokio::spawn({
            let phase = phase.clone();
            async move {
                let mut connections = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let (phase, marker) = (phase.clone(), marker.clone());
                    connections.spawn(async move {
                        // A connection that fails ends; the client sees it closed.
                        let _ = relay(client, target, phase, &marker).await;
                    });
                }
            }
        });
        Ok(Self {
            address,
            phase,
            accepting,
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Whether a client has sent the marker (and nothing passes now).
    pub fn frozen(&self) -> bool {
        self.phase.borrow().frozen
    }

    /// Cuts every connection held so far and passes traffic again.
    pub fn reopen(&self) {
        self.phase.send_modify(|phase| {
            phase.frozen = false;
            phase.cuts += 1;
        });
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection.
        self.accepting.abort();
    }
}

/// Passes bytes between `client` and `target` while the phase allows, holds
/// both sockets silent while frozen, and ends at the next cut.
async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    phase: watch::Sender<Phase>,
    marker: &[u8],
) -> io::Result<()> {
    let mut changes = phase.subscribe();
    let born = changes.borrow_and_update().cuts;
    // Held (unread, unanswered) while frozen, even before connecting on.
    while changes.borrow().frozen {
        changes.changed().await.map_err(io::Error::other)?;
    }
    if changes.borrow().cuts != born {
        return Ok(());
    }
    let mut server = TcpStream::connect(target).await?;
    let (mut from_client, mut from_server) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
    // The client's last bytes, so a marker split across two reads is seen.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let now = *changes.borrow_and_update();
        if now.cuts != born {
            return Ok(());
        }
        if now.frozen {
            changes.changed().await.map_err(io::Error::other)?;
            continue;
        }
        tokio::select! {
            read = client.read(&mut from_client) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                tail.extend_from_slice(&from_client[..n]);
                if contains(&tail, marker) {
                    // Swallowed: the request never reaches the server.
                    phase.send_modify(|phase| phase.frozen = true);
                    continue;
                }
                let keep = tail.len().saturating_sub(marker.len());
                tail.drain(..keep);
                server.write_all(&from_client[..n]).await?;
            }
            read = server.read(&mut from_server) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                client.write_all(&from_server[..n]).await?;
            }
            changed = changes.changed() => changed.map_err(io::Error::other)?,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn traffic_passes_until_the_marker_then_nothing_until_reopened() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = socket.read(&mut buf).await {
                        if socket.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let hole = Blackhole::start(target, b"STOP").await.unwrap();
        let mut client = TcpStream::connect(("127.0.0.1", hole.port()))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        client.write_all(b"hello").await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");

        // The marker split across two writes still freezes the relay.
        client.write_all(b"ST").await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ST");
        client.write_all(b"OP").await.unwrap();
        let mut changes = hole.phase.subscribe();
        changes.wait_for(|phase| phase.frozen).await.unwrap();
        assert!(hole.frozen());
        client.write_all(b"more").await.unwrap();

        hole.reopen();
        // The held connection is cut with nothing passed after the marker:
        // had "more" reached the echo, it would be read here before the end.
        assert_eq!(client.read(&mut buf).await.unwrap_or(0), 0);
        let mut again = TcpStream::connect(("127.0.0.1", hole.port()))
            .await
            .unwrap();
        again.write_all(b"back").await.unwrap();
        let n = again.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"back");
    }
}
