//! HTTP/2 `:authority` on Unix sockets: names nothing, so it must decide nothing.
//!
//! gRPC clients fill `:authority` from their target: C-core (Python, C++, Ruby,
//! PHP) sends the percent-encoded socket path, grpc-java the raw path, others
//! `localhost` or nothing. h2, under hyper and tonic, resets every stream whose
//! `:authority` is not a valid URI authority (hyperium/h2 PR #487), so half of
//! the SPIFFE client libraries could not make a single call.
//!
//! [`AuthorityBlind`] wraps an accepted stream and, in the client-to-server
//! direction only, looks at every request header block before h2 reads it. It
//! decodes each block with h2's own frame codec (so its HPACK state follows
//! the client's), and passes the bytes on untouched for as long as every
//! `:authority` seen is one h2 accepts. From the first one h2 would refuse,
//! every block of the connection is re-encoded by h2's codec without
//! `:authority` and without HPACK's dynamic table (the switch announces a
//! table size of 0, which empties h2's copy, so the two can never disagree).
//! All other frames pass byte for byte, in order, so h2 applies all of its
//! own checks; the server-to-client direction is untouched.
//!
//! What this layer refuses on its own, closing the connection where h2 would
//! have refused a stream or the connection: a header block that does not
//! decode, or one larger than [`MAX_HEADER_BLOCK`] before or after decoding.
//! A frame it cannot place (one over the frame size, or a frame between
//! HEADERS and its CONTINUATION) is passed on untouched with everything after
//! it, so h2 reports the protocol error as it would have.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use h2::Codec;
use h2::frame::{Frame, HEADER_LEN, Head, Kind, StreamId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The client connection preface (RFC 9113 §3.4), passed through as it is.
const PREFACE_LEN: usize = 24;
/// The HEADERS and CONTINUATION flag that ends a header block (RFC 9113 §6.2).
const END_HEADERS: u8 = 0x4;
/// The largest frame a client may send before the server raises
/// SETTINGS_MAX_FRAME_SIZE, which our servers never do.
const MAX_FRAME: usize = 16_384;
/// The largest header block accepted, encoded or decoded: four times hyper's
/// own header-list limit (16 KiB), so h2 still sees and answers every block it
/// would refuse itself.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;

/// An accepted stream whose HTTP/2 requests reach the server without an
/// `:authority` h2 would refuse.
#[derive(Debug)]
pub struct AuthorityBlind<S> {
    inner: S,
    frames: ClientFrames,
    /// Bytes read from `inner` that `frames` has not consumed yet.
    unread: BytesMut,
    /// Bytes ready for the reader (h2), in order.
    ready: BytesMut,
    eof: bool,
}

impl<S> AuthorityBlind<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            frames: ClientFrames::default(),
            unread: BytesMut::new(),
            ready: BytesMut::new(),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Connected> Connected for AuthorityBlind<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityBlind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.unread.capacity() - this.unread.len() < READ_CHUNK / 2 {
                this.unread.reserve(READ_CHUNK);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.unread
            ))?;
            if n == 0 {
                // A frame cut short by the peer goes to h2 as it came.
                this.eof = true;
                this.frames.flush_pending(&mut this.ready);
                this.ready.put(this.unread.split());
                continue;
            }
            this.frames
                .consume(&mut this.unread, &mut this.ready, cx)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityBlind<S> {
    crate::write_through!(inner);
}

/// Why a connection was closed by this layer rather than by h2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderBlockError {
    #[error("HTTP/2 header block over {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
    #[error("HTTP/2 header block refused: {0}")]
    Refused(String),
}

/// Where the client's byte stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Inside the connection preface, with this many bytes of it left.
    Preface(usize),
    /// At the start of a frame.
    FrameStart,
    /// Inside a frame passed on as it is, with this many payload bytes left.
    Payload(usize),
    /// Past something this layer does not understand: everything from here on
    /// goes to h2 untouched, which reports it as it would have.
    Verbatim,
}

/// A header block whose HEADERS frame has arrived and whose CONTINUATION
/// frames may still be coming: the frames as received.
#[derive(Debug)]
struct PendingBlock {
    stream_id: StreamId,
    received: BytesMut,
}

/// Bytes in and out of the h2 codec that reads and writes header blocks.
#[derive(Debug, Default)]
struct Memory {
    incoming: BytesMut,
    outgoing: BytesMut,
}

impl AsyncRead for Memory {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.incoming.is_empty() {
            // Only ever polled right after a whole block was put in: this
            // means "nothing more", and nothing waits on it.
            return Poll::Pending;
        }
        let n = this.incoming.len().min(buf.remaining());
        buf.put_slice(&this.incoming[..n]);
        this.incoming.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Memory {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().outgoing.put_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The client-to-server frame stream, with header blocks checked (and
/// rewritten once needed) by h2's codec.
struct ClientFrames {
    position: Position,
    pending: Option<PendingBlock>,
    /// Reads header blocks as h2 would (its HPACK decoder follows the
    /// client's encoder) and writes rewritten ones.
    codec: Codec<Memory, Bytes>,
    /// Whether blocks are re-encoded (from the first `:authority` h2 would refuse on).
    rewriting: bool,
}

impl std::fmt::Debug for ClientFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientFrames")
            .field("position", &self.position)
            .field("pending", &self.pending)
            .field("rewriting", &self.rewriting)
            .finish_non_exhaustive()
    }
}

impl Default for ClientFrames {
    fn default() -> Self {
        let mut codec = Codec::new(Memory::default());
        codec.set_max_recv_header_list_size(MAX_HEADER_BLOCK);
        Self {
            position: Position::Preface(PREFACE_LEN),
            pending: None,
            codec,
            rewriting: false,
        }
    }
}

impl ClientFrames {
    /// Moves what can be moved from `input` to `output`; an incomplete header
    /// frame stays in `input` until the rest arrives.
    fn consume(
        &mut self,
        input: &mut BytesMut,
        output: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Result<(), HeaderBlockError> {
        loop {
            match self.position {
                Position::Verbatim => {
                    output.put(input.split());
                    return Ok(());
                }
                Position::Preface(left) | Position::Payload(left) => {
                    let n = left.min(input.len());
                    output.put(input.split_to(n));
                    if n < left {
                        self.position = match self.position {
                            Position::Preface(_) => Position::Preface(left - n),
                            _ => Position::Payload(left - n),
                        };
                        return Ok(());
                    }
                    self.position = Position::FrameStart;
                }
                Position::FrameStart => {
                    if input.len() < HEADER_LEN {
                        return Ok(());
                    }
                    let len = (&input[..3]).get_uint(3) as usize;
                    let head = Head::parse(&input[..HEADER_LEN]);
                    let is_block = head.kind() == Kind::Headers
                        || (head.kind() == Kind::Continuation && self.pending.is_some());
                    if !is_block {
                        if self.pending.is_some() {
                            // Only CONTINUATION may follow an unfinished block.
                            self.pass_on_from_here(output);
                            continue;
                        }
                        output.put(input.split_to(HEADER_LEN));
                        self.position = Position::Payload(len);
                        continue;
                    }
                    if len > MAX_FRAME {
                        // Over the advertised frame size: h2's FRAME_SIZE_ERROR.
                        self.pass_on_from_here(output);
                        continue;
                    }
                    if input.len() < HEADER_LEN + len {
                        return Ok(());
                    }
                    let frame = input.split_to(HEADER_LEN + len);
                    self.header_frame(head, frame, output, cx)?;
                }
            }
        }
    }

    /// Gives up on looking: the unfinished block, as received, and all that
    /// follows go to h2 untouched.
    fn pass_on_from_here(&mut self, output: &mut BytesMut) {
        self.flush_pending(output);
        self.position = Position::Verbatim;
    }

    /// An unfinished block goes to h2 as it was received.
    fn flush_pending(&mut self, output: &mut BytesMut) {
        if let Some(pending) = self.pending.take() {
            output.put(pending.received);
        }
    }

    fn header_frame(
        &mut self,
        head: Head,
        frame: BytesMut,
        output: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Result<(), HeaderBlockError> {
        match self.pending.as_mut() {
            None => {
                self.pending = Some(PendingBlock {
                    stream_id: head.stream_id(),
                    received: frame,
                });
            }
            Some(pending) if pending.stream_id == head.stream_id() => {
                pending.received.put(frame);
                if pending.received.len() > MAX_HEADER_BLOCK {
                    return Err(HeaderBlockError::TooLarge);
                }
            }
            Some(_) => {
                // CONTINUATION of another stream: h2's PROTOCOL_ERROR.
                self.flush_pending(output);
                output.put(frame);
                self.position = Position::Verbatim;
                return Ok(());
            }
        }
        self.position = Position::FrameStart;
        if head.flag() & END_HEADERS != 0
            && let Some(block) = self.pending.take()
        {
            self.block(block.received, output, cx)?;
        }
        Ok(())
    }

    /// A whole header block: decoded by the codec, then passed on as received
    /// or, once needed, re-encoded without `:authority`.
    fn block(
        &mut self,
        received: BytesMut,
        output: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Result<(), HeaderBlockError> {
        self.codec.get_mut().incoming.put_slice(&received);
        let mut headers = match self.codec.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(Frame::Headers(headers)))) => headers,
            Poll::Ready(Some(Err(e))) => return Err(HeaderBlockError::Refused(e.to_string())),
            other => {
                return Err(HeaderBlockError::Refused(format!(
                    "not a header block: {other:?}"
                )));
            }
        };
        if headers.is_over_size() {
            return Err(HeaderBlockError::TooLarge);
        }
        let refused = headers
            .pseudo_mut()
            .authority
            .as_ref()
            .is_some_and(|a| http::uri::Authority::try_from(&a[..]).is_err());
        if !self.rewriting && !refused {
            output.put(received);
            return Ok(());
        }
        if !self.rewriting {
            // No dynamic table from here on: h2's copy is emptied by the size
            // update this announces, and nothing is ever added to it again.
            self.codec.set_send_header_table_size(0);
            self.rewriting = true;
        }
        headers.pseudo_mut().authority = None;
        self.codec
            .buffer(Frame::Headers(headers))
            .map_err(|e| HeaderBlockError::Refused(e.to_string()))?;
        match self.codec.flush(cx) {
            Poll::Ready(Ok(())) => {}
            other => {
                return Err(HeaderBlockError::Refused(format!("re-encoding: {other:?}")));
            }
        }
        output.put(self.codec.get_mut().outgoing.split());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2::frame::{BytesStr, Headers, Pseudo};
    use std::task::Waker;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const END_STREAM: u8 = 0x1;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A client's HPACK encoder: h2's own codec, as tonic's client uses it.
    struct Client(Codec<Memory, Bytes>);

    impl Client {
        fn new() -> Self {
            Self(Codec::new(Memory::default()))
        }

        /// The HEADERS frame(s) of a gRPC request on `stream` with `authority`.
        fn request(
            &mut self,
            stream: u32,
            authority: Option<&str>,
            extra: Option<(&str, String)>,
        ) -> Vec<u8> {
            let pseudo = Pseudo {
                method: Some(http::Method::POST),
                scheme: Some(BytesStr::try_from(Bytes::from_static(b"http")).unwrap()),
                authority: authority
                    .map(|a| BytesStr::try_from(Bytes::copy_from_slice(a.as_bytes())).unwrap()),
                path: Some(
                    BytesStr::try_from(Bytes::from_static(b"/SpiffeWorkloadAPI/FetchJWTSVID"))
                        .unwrap(),
                ),
                ..Pseudo::default()
            };
            let mut fields = http::HeaderMap::new();
            fields.insert("content-type", "application/grpc".parse().unwrap());
            fields.insert("workload.spiffe.io", "true".parse().unwrap());
            if let Some((name, value)) = extra {
                fields.insert(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            let headers = Headers::new(StreamId::from(stream), pseudo, fields);
            self.0.buffer(Frame::Headers(headers)).unwrap();
            let mut cx = Context::from_waker(Waker::noop());
            assert!(self.0.flush(&mut cx).is_ready());
            self.0.get_mut().outgoing.split().to_vec()
        }
    }

    /// Runs `input` through a fresh filter in pieces of `step` bytes.
    fn filter(input: &[u8], step: usize) -> Result<Vec<u8>, HeaderBlockError> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut frames = ClientFrames::default();
        let mut pending = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in input.chunks(step) {
            pending.put_slice(piece);
            frames.consume(&mut pending, &mut out, &mut cx)?;
        }
        frames.flush_pending(&mut out);
        out.put(pending);
        Ok(out.to_vec())
    }

    /// What h2 reads from `bytes` (after the preface): each request's
    /// `:authority` and field names, and the other frames' kinds.
    fn as_h2_reads(bytes: &[u8]) -> Vec<String> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut server: Codec<Memory, Bytes> = Codec::new(Memory::default());
        server.get_mut().incoming.put_slice(&bytes[PREFACE.len()..]);
        let mut cx = Context::from_waker(Waker::noop());
        let mut seen = Vec::new();
        while let Poll::Ready(Some(frame)) = server.poll_next_unpin(&mut cx) {
            seen.push(match frame {
                Ok(Frame::Headers(mut headers)) => {
                    let authority = headers
                        .pseudo_mut()
                        .authority
                        .as_ref()
                        .map(|a| a.to_string());
                    let mut names: Vec<&str> =
                        headers.fields().keys().map(|k| k.as_str()).collect();
                    names.sort();
                    format!("headers {authority:?} {names:?}")
                }
                Ok(other) => format!("{other:?}")
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
                Err(e) => format!("error {e}"),
            });
        }
        seen
    }

    #[test]
    fn authorities_h2_accepts_pass_byte_for_byte() -> Result<(), HeaderBlockError> {
        let mut client = Client::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(4, 0, 0, &[]));
        input.extend(client.request(1, Some("localhost"), None));
        input.extend(frame(0, END_STREAM, 1, b"\0\0\0\0\x02\x0a\x00"));
        input.extend(client.request(3, None, None));
        input.extend(client.request(5, Some("localhost"), None));
        for step in [1, 7, input.len()] {
            assert_eq!(filter(&input, step)?, input);
        }
        Ok(())
    }

    #[test]
    fn authorities_h2_refuses_are_taken_out_and_everything_else_kept()
    -> Result<(), HeaderBlockError> {
        let mut client = Client::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(4, 0, 0, &[]));
        // A valid one first (passed as it is), then the forms h2 refuses,
        // then valid again: h2's HPACK state must follow across the switch.
        for (stream, authority) in [
            (1, Some("localhost")),
            (3, Some("tmp%2Frun%2Fapi.sock")),
            (5, Some("/run/lanyard/agent/api.sock")),
            (7, Some("")),
            (9, Some("localhost")),
            (11, None),
        ] {
            input.extend(client.request(stream, authority, None));
            input.extend(frame(0, END_STREAM, stream, b"\0\0\0\0\x02\x0a\x00"));
        }
        let names = r#"["content-type", "workload.spiffe.io"]"#;
        let mut expected = vec!["Settings".to_owned()];
        expected.push(format!("headers Some(\"localhost\") {names}"));
        expected.push("Data".to_owned());
        for _ in 0..5 {
            expected.push(format!("headers None {names}"));
            expected.push("Data".to_owned());
        }
        for step in [1, 7, input.len()] {
            let out = filter(&input, step)?;
            assert_eq!(as_h2_reads(&out), expected, "step {step}");
        }
        Ok(())
    }

    #[test]
    fn large_blocks_are_split_into_frames_h2_accepts() -> Result<(), HeaderBlockError> {
        let mut client = Client::new();
        let mut input = PREFACE.to_vec();
        input.extend(client.request(1, Some("a/b"), Some(("x-big", "b".repeat(40_000)))));
        let out = filter(&input, 1000)?;
        let names = r#"["content-type", "workload.spiffe.io", "x-big"]"#;
        assert_eq!(as_h2_reads(&out), [format!("headers None {names}")]);
        Ok(())
    }

    #[test]
    fn undecodable_and_oversized_blocks_close_the_connection() {
        // An index far past both tables.
        let mut input = PREFACE.to_vec();
        input.extend(frame(1, END_HEADERS, 1, &[0xff, 0xff, 0x7f]));
        assert!(matches!(
            filter(&input, 4),
            Err(HeaderBlockError::Refused(_))
        ));
        // HEADERS on stream 0.
        let mut input = PREFACE.to_vec();
        input.extend(frame(1, END_HEADERS, 0, &[0x82]));
        assert!(filter(&input, 4).is_err());
        // Endless CONTINUATION frames.
        let mut input = PREFACE.to_vec();
        input.extend(frame(1, 0, 1, &[0x82]));
        for _ in 0..5 {
            input.extend(frame(9, 0, 1, &[0x40; MAX_FRAME]));
        }
        assert!(matches!(
            filter(&input, 4096),
            Err(HeaderBlockError::TooLarge)
        ));
        // One small literal repeated by index until it decodes past the limit.
        let mut input = PREFACE.to_vec();
        let mut block = vec![0x82, 0x86, 0x84, 0x40, 1, b'a', 100];
        block.extend(std::iter::repeat_n(b'v', 100));
        block.extend(std::iter::repeat_n(0x80 | 62, 1000));
        input.extend(frame(1, END_HEADERS, 1, &block));
        assert!(filter(&input, 4096).is_err());
    }

    #[test]
    fn frames_it_cannot_place_go_to_h2_untouched() -> Result<(), HeaderBlockError> {
        // A PING between HEADERS and its CONTINUATION.
        let mut input = PREFACE.to_vec();
        input.extend(frame(1, 0, 1, &[0x82]));
        input.extend(frame(6, 0, 0, &[0; 8]));
        assert_eq!(filter(&input, 5)?, input);
        // A HEADERS frame over the frame size limit.
        let mut input = PREFACE.to_vec();
        input.extend(frame(1, END_HEADERS, 1, &vec![0x82; MAX_FRAME + 1]));
        assert_eq!(filter(&input, 999)?, input);
        Ok(())
    }
}
