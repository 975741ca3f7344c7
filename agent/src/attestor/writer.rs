//! Who wrote the bytes of a Workload API connection. With SO_PASSCRED on the
//! listening socket (inherited by every accepted one) the kernel labels every
//! read with its writer's PID, even for bytes sent before the agent accepted.
//! A connection handed to another process (over SCM_RIGHTS, or inherited by a
//! child) is then seen the moment that process writes, and its caller gets no
//! binary selectors: what /proc says of the pinned process says nothing of
//! the process actually asking.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

/// Set once bytes on a connection came from a process other than the one
/// that connected (or from an unknown one).
#[derive(Debug, Clone, Default)]
pub(crate) struct HandedOver(Arc<AtomicBool>);

impl HandedOver {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A caller's stream, read with its writers' credentials when `expected`
/// names the PID that every byte must come from.
#[derive(Debug)]
pub(crate) struct WriterChecked {
    stream: UnixStream,
    expected: Option<(i32, HandedOver)>,
}

impl WriterChecked {
    pub(crate) fn new(stream: UnixStream, expected: Option<(i32, HandedOver)>) -> Self {
        Self { stream, expected }
    }
}

/// One read of at most `buf.len()` bytes; false in the second place when
/// any of them was written by a process other than `pid`.
fn read_checked(stream: &UnixStream, buf: &mut [u8], pid: i32) -> io::Result<(usize, bool)> {
    let mut space = nix::cmsg_space!(UnixCredentials);
    let mut iov = [IoSliceMut::new(buf)];
    let message = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(space.as_mut_slice()),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let read = message.bytes;
    let mut writers_ok = true;
    let mut labelled = false;
    for cmsg in message.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmCredentials(credentials) = cmsg {
            labelled = true;
            writers_ok &= credentials.pid() == pid;
        }
    }
    // Bytes without a label have no known writer: not the pinned one.
    Ok((read, writers_ok && (labelled || read == 0)))
}

impl AsyncRead for WriterChecked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some((pid, handed_over)) = &this.expected else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match this.stream.try_io(Interest::READABLE, || {
                read_checked(&this.stream, unfilled, *pid)
            }) {
                Ok((read, writers_ok)) => {
                    if !writers_ok && !handed_over.is_set() {
                        tracing::warn!(
                            pid,
                            "a Workload API connection is written by another process than the one that connected; no binary selectors for it"
                        );
                        handed_over.set();
                    }
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for WriterChecked {
    lanyard_host::write_through!(stream);
}
