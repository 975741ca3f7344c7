//! Unix-socket plumbing both sides of every local API share: binding a listening
//! socket safely and dialling one as a gRPC channel.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

pub mod authority;
pub mod limits;

/// The body of an `AsyncWrite` impl for a stream wrapper that writes
/// straight through to its field `$field` (an `AsyncWrite + Unpin`): every
/// wrapper here changes only how its stream is read or who holds it.
#[macro_export]
macro_rules! write_through {
    ($field:ident) => {
        fn poll_write(
            self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            buf: &[u8],
        ) -> ::std::task::Poll<::std::io::Result<usize>> {
            ::tokio::io::AsyncWrite::poll_write(
                ::std::pin::Pin::new(&mut self.get_mut().$field),
                cx,
                buf,
            )
        }

        fn poll_flush(
            self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::tokio::io::AsyncWrite::poll_flush(
                ::std::pin::Pin::new(&mut self.get_mut().$field),
                cx,
            )
        }

        fn poll_shutdown(
            self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::tokio::io::AsyncWrite::poll_shutdown(
                ::std::pin::Pin::new(&mut self.get_mut().$field),
                cx,
            )
        }

        fn poll_write_vectored(
            self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            bufs: &[::std::io::IoSlice<'_>],
        ) -> ::std::task::Poll<::std::io::Result<usize>> {
            ::tokio::io::AsyncWrite::poll_write_vectored(
                ::std::pin::Pin::new(&mut self.get_mut().$field),
                cx,
                bufs,
            )
        }

        fn is_write_vectored(&self) -> bool {
            ::tokio::io::AsyncWrite::is_write_vectored(&self.$field)
        }
    };
}
pub use authority::AuthorityBlind;

/// An accepted stream with what was learnt about its peer at accept time
/// (kernel credentials, a client certificate), which tonic hands to every
/// request on the connection.
#[derive(Debug)]
pub struct Accepted<S, I> {
    stream: S,
    info: I,
}

impl<S, I> Accepted<S, I> {
    pub fn new(stream: S, info: I) -> Self {
        Self { stream, info }
    }

    pub fn info(&self) -> &I {
        &self.info
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

impl<S, I: Clone + Send + Sync + 'static> tonic::transport::server::Connected for Accepted<S, I> {
    type ConnectInfo = I;

    fn connect_info(&self) -> I {
        self.info.clone()
    }
}

impl<S: tokio::io::AsyncRead + Unpin, I: Unpin> tokio::io::AsyncRead for Accepted<S, I> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin, I: Unpin> tokio::io::AsyncWrite for Accepted<S, I> {
    crate::write_through!(stream);
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    #[error("socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("socket {0}: another process is already listening there")]
    InUse(PathBuf),
    #[error("socket {0}: the path exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    #[error("socket path {0:?} is not a valid unix:// endpoint")]
    BadEndpoint(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Binds a Unix socket at `path` with permissions `mode`.
///
/// The parent directory is created with `dir_mode` when missing. A stale socket
/// left by a dead process is removed; a live one, or any other kind of file, is
/// refused rather than clobbered.
pub async fn bind_unix_socket(
    path: &Path,
    mode: u32,
    dir_mode: u32,
) -> Result<UnixListener, SocketError> {
    if let Some(parent) = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(parent)
            .map_err(io_err(parent))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(SocketError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    Ok(listener)
}

/// Turns `unix:///path`, `unix:/path` or a bare path into a filesystem path.
pub fn socket_path_from_endpoint(endpoint: &str) -> Result<PathBuf, SocketError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if path.is_empty() || !path.starts_with('/') && endpoint.starts_with("unix:") {
        return Err(SocketError::BadEndpoint(endpoint.to_owned()));
    }
    Ok(PathBuf::from(path))
}

/// A lazily connecting gRPC channel to the Unix socket at `path`.
pub fn unix_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    // The URI is required by tonic but unused: every connection dials `path`.
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn binds_with_mode_and_replaces_only_stale_sockets()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub/dir/api.sock");
        let live = bind_unix_socket(&path, 0o666, 0o755).await?;
        assert_eq!(std::fs::metadata(&path)?.mode() & 0o777, 0o666);
        assert_eq!(
            std::fs::metadata(path.parent().ok_or("parent")?)?.mode() & 0o777,
            0o755
        );
        assert!(matches!(
            bind_unix_socket(&path, 0o666, 0o755).await,
            Err(SocketError::InUse(_))
        ));
        drop(live);
        bind_unix_socket(&path, 0o600, 0o755).await?;
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x")?;
        assert!(matches!(
            bind_unix_socket(&file, 0o600, 0o755).await,
            Err(SocketError::NotASocket(_))
        ));
        assert!(file.exists());
        Ok(())
    }

    #[test]
    fn endpoints_become_paths() {
        assert_eq!(
            socket_path_from_endpoint("unix:///run/a.sock").ok(),
            Some(PathBuf::from("/run/a.sock"))
        );
        assert_eq!(
            socket_path_from_endpoint("unix:/run/a.sock").ok(),
            Some(PathBuf::from("/run/a.sock"))
        );
        assert_eq!(
            socket_path_from_endpoint("/run/a.sock").ok(),
            Some(PathBuf::from("/run/a.sock"))
        );
        assert!(socket_path_from_endpoint("unix://relative").is_err());
        assert!(socket_path_from_endpoint("").is_err());
    }
}
