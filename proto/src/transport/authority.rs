//! HTTP/2 `:authority` on Unix sockets: names nothing, so it must decide nothing.
//!
//! gRPC clients fill `:authority` from their target: C-core (Python, C++, Ruby,
//! PHP) sends the percent-encoded socket path, grpc-java the raw path, others
//! `localhost` or nothing. h2, under hyper and tonic, resets every stream whose
//! `:authority` is not a valid URI authority (hyperium/h2 PR #487), so half of
//! the SPIFFE client libraries could not make a single call.
//!
//! [`AuthorityBlind`] wraps an accepted stream and, in the client-to-server
//! direction only, takes `:authority` out of every request header block before
//! h2 reads it. Every other byte reaches h2 unchanged, in order, so h2 still
//! applies all of its own checks. A header block is decoded with an HPACK
//! decoder that mirrors the client's encoder and re-encoded with an encoder that
//! h2's decoder mirrors; the server-to-client direction is untouched.
//!
//! What this layer refuses on its own (closing the connection, where h2 would
//! have answered with a connection or stream error of its own): a header block
//! it cannot decode, or one larger than [`MAX_HEADER_BLOCK`] before or after
//! decoding. A frame it cannot parse is passed on untouched with everything
//! after it, so h2 reports the protocol error exactly as it would have.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use h2::frame::{HEADER_LEN, Head, Headers, Kind, StreamId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The client connection preface (RFC 9113 §3.4), passed through as it is.
const PREFACE_LEN: usize = 24;
/// HEADERS and CONTINUATION frame flags (RFC 9113 §6.2, §6.10).
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// The largest frame a client may send before the server raises
/// SETTINGS_MAX_FRAME_SIZE, which our servers never do; re-encoded blocks are
/// cut into frames of this size.
const MAX_FRAME: usize = 16_384;
/// The HPACK dynamic table size h2 advertises (SETTINGS_HEADER_TABLE_SIZE is
/// left at its default, 4,096): the most a client's encoder may use.
const HEADER_TABLE_SIZE: usize = 4_096;
/// The largest header block accepted, encoded or decoded (with HPACK's 32
/// bytes per field): four times hyper's own header-list limit (16 KiB), so h2
/// still sees and answers every block it would refuse itself.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;

/// An accepted stream whose HTTP/2 requests reach the server without `:authority`.
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
            this.unread.reserve(READ_CHUNK);
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
                .consume(&mut this.unread, &mut this.ready)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityBlind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Why a connection was closed by this layer rather than by h2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderBlockError {
    #[error("HTTP/2 header block over {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
    #[error("HTTP/2 header block does not decode: {0}")]
    Hpack(String),
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
/// frames are still coming.
#[derive(Debug)]
struct PendingBlock {
    stream_id: StreamId,
    end_stream: bool,
    fragment: BytesMut,
    /// The frames as received, for passing on untouched if something is wrong.
    received: BytesMut,
}

/// The client-to-server frame stream, with `:authority` taken out of header blocks.
struct ClientFrames {
    position: Position,
    pending: Option<PendingBlock>,
    /// Mirrors the client's HPACK encoder.
    decoder: loona_hpack::Decoder<'static>,
    /// h2's HPACK decoder mirrors this one.
    encoder: loona_hpack::Encoder<'static>,
}

impl std::fmt::Debug for ClientFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientFrames")
            .field("position", &self.position)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Default for ClientFrames {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            position: Position::Preface(PREFACE_LEN),
            pending: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
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
                    self.header_frame(head, frame, output)?;
                }
            }
        }
    }

    /// Gives up on rewriting: the unfinished block, as received, and all
    /// that follows go to h2 untouched.
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
        mut frame: BytesMut,
        output: &mut BytesMut,
    ) -> Result<(), HeaderBlockError> {
        let end_headers = head.flag() & END_HEADERS != 0;
        match self.pending.as_mut() {
            None => {
                let received = frame.clone();
                let payload = frame.split_off(HEADER_LEN);
                let Ok((headers, fragment)) = Headers::load(head, payload) else {
                    // Bad padding or stream ID: h2 says so itself.
                    output.put(received);
                    self.position = Position::Verbatim;
                    return Ok(());
                };
                self.pending = Some(PendingBlock {
                    stream_id: headers.stream_id(),
                    end_stream: head.flag() & END_STREAM != 0,
                    fragment,
                    received,
                });
            }
            Some(pending) => {
                if head.stream_id() != pending.stream_id {
                    self.pending_then_verbatim(frame, output);
                    return Ok(());
                }
                pending.fragment.put(&frame[HEADER_LEN..]);
                pending.received.put(frame);
                if pending.fragment.len() > MAX_HEADER_BLOCK {
                    return Err(HeaderBlockError::TooLarge);
                }
            }
        }
        if end_headers && let Some(block) = self.pending.take() {
            self.rewrite(block, output)?;
        }
        self.position = Position::FrameStart;
        Ok(())
    }

    fn pending_then_verbatim(&mut self, frame: BytesMut, output: &mut BytesMut) {
        self.flush_pending(output);
        output.put(frame);
        self.position = Position::Verbatim;
    }

    /// Decodes `block`, drops `:authority`, and writes it out again as one
    /// HEADERS frame followed by as many CONTINUATION frames as it needs.
    fn rewrite(
        &mut self,
        block: PendingBlock,
        output: &mut BytesMut,
    ) -> Result<(), HeaderBlockError> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut decoded_size = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                // RFC 7541 §4.1: each field counts 32 bytes besides its text.
                decoded_size = decoded_size.saturating_add(name.len() + value.len() + 32);
                if decoded_size <= MAX_HEADER_BLOCK && name.as_ref() != b":authority" {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| HeaderBlockError::Hpack(e.to_string()))?;
        if decoded_size > MAX_HEADER_BLOCK {
            return Err(HeaderBlockError::TooLarge);
        }
        let mut encoded = Vec::with_capacity(block.fragment.len());
        self.encoder
            .encode_into(
                fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
                &mut encoded,
            )
            .map_err(|e| HeaderBlockError::Hpack(e.to_string()))?;
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut kind = Kind::Headers;
        let mut first_flags = if block.end_stream { END_STREAM } else { 0 };
        // An empty block still needs its one HEADERS frame.
        let empty: &[u8] = &[];
        let mut next = chunks.next().or(Some(empty));
        while let Some(chunk) = next {
            next = chunks.next();
            let flags = first_flags | if next.is_none() { END_HEADERS } else { 0 };
            output.reserve(HEADER_LEN + chunk.len());
            Head::new(kind, flags, block.stream_id).encode(chunk.len(), output);
            output.put_slice(chunk);
            kind = Kind::Continuation;
            first_flags = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Runs `input` through a fresh filter in pieces of `step` bytes.
    fn filter(input: &[u8], step: usize) -> Result<Vec<u8>, HeaderBlockError> {
        let mut frames = ClientFrames::default();
        let mut pending = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in input.chunks(step) {
            pending.put_slice(piece);
            frames.consume(&mut pending, &mut out)?;
        }
        frames.flush_pending(&mut out);
        out.put(pending);
        Ok(out.to_vec())
    }

    /// The header fields of every HEADERS/CONTINUATION block in `bytes` (after
    /// the preface), decoded by a decoder that follows the whole stream.
    fn blocks(bytes: &[u8]) -> Vec<Vec<(String, String)>> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut rest = &bytes[PREFACE.len()..];
        let mut fragment = Vec::new();
        let mut result = Vec::new();
        while rest.len() >= HEADER_LEN {
            let len = (&rest[..3]).get_uint(3) as usize;
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[HEADER_LEN..HEADER_LEN + len];
            if kind == 1 || kind == 9 {
                fragment.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    let fields = decoder.decode(&fragment).unwrap_or_default();
                    result.push(
                        fields
                            .into_iter()
                            .map(|(n, v)| {
                                (
                                    String::from_utf8_lossy(&n).into_owned(),
                                    String::from_utf8_lossy(&v).into_owned(),
                                )
                            })
                            .collect(),
                    );
                    fragment.clear();
                }
            }
            rest = &rest[HEADER_LEN + len..];
        }
        result
    }

    fn request(authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/SpiffeWorkloadAPI/FetchJWTSVID"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("workload.spiffe.io", "true"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn encode(encoder: &mut loona_hpack::Encoder<'_>, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }

    #[test]
    fn authority_is_taken_out_and_everything_else_kept() -> Result<(), HeaderBlockError> {
        let mut client = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(4, 0, 0, &[]));
        for (stream, authority) in [(1, "tmp%2Frun%2Fapi.sock"), (3, "/run/a.sock"), (5, "")] {
            input.extend(frame(
                1,
                END_HEADERS,
                stream,
                &encode(&mut client, &request(authority)),
            ));
            input.extend(frame(0, END_STREAM, stream, b"\0\0\0\0\x02\x0a\x00"));
        }
        for step in [1, 7, input.len()] {
            let out = filter(&input, step)?;
            let seen = blocks(&out);
            assert_eq!(seen.len(), 3);
            for fields in &seen {
                assert!(fields.iter().all(|(n, _)| n != ":authority"), "{fields:?}");
                assert_eq!(fields.len(), 5, "{fields:?}");
                assert!(fields.contains(&("workload.spiffe.io".into(), "true".into())));
            }
            // SETTINGS and DATA frames pass byte for byte.
            assert!(out.windows(9).any(|w| w == frame(4, 0, 0, &[]).as_slice()));
            assert_eq!(
                out.windows(16)
                    .filter(|w| *w == frame(0, 1, 3, b"\0\0\0\0\x02\x0a\x00").as_slice())
                    .count(),
                1
            );
        }
        Ok(())
    }

    #[test]
    fn continuation_frames_are_joined_and_padding_dropped() -> Result<(), HeaderBlockError> {
        let mut client = loona_hpack::Encoder::new();
        let block = encode(&mut client, &request("x"));
        let (a, b) = block.split_at(5);
        let mut padded = vec![3u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(1, 0x8 | END_STREAM, 1, &padded));
        input.extend(frame(9, END_HEADERS, 1, b));
        let out = filter(&input, 3)?;
        let seen = blocks(&out);
        assert_eq!(seen.len(), 1);
        assert!(!seen[0].iter().any(|(n, _)| n == ":authority"));
        // END_STREAM kept, on the HEADERS frame.
        assert_eq!(out[PREFACE.len() + 4] & END_STREAM, END_STREAM);
        Ok(())
    }

    #[test]
    fn oversized_and_undecodable_blocks_close_the_connection() {
        // An index far past both tables.
        let mut input = PREFACE.to_vec();
        input.extend(frame(1, END_HEADERS, 1, &[0xff, 0xff, 0x7f]));
        assert!(matches!(filter(&input, 4), Err(HeaderBlockError::Hpack(_))));
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
        let mut block = vec![0x40, 1, b'a', 100];
        block.extend(std::iter::repeat_n(b'v', 100));
        block.extend(std::iter::repeat_n(0x80 | 62, 1000));
        input.extend(frame(1, END_HEADERS, 1, &block));
        assert!(matches!(
            filter(&input, 4096),
            Err(HeaderBlockError::TooLarge)
        ));
    }

    #[test]
    fn frames_it_cannot_parse_go_to_h2_untouched() -> Result<(), HeaderBlockError> {
        // HEADERS on stream 0, then more bytes: all of it verbatim.
        let mut input = PREFACE.to_vec();
        input.extend(frame(1, END_HEADERS, 0, &[0x82]));
        input.extend(frame(1, END_HEADERS, 1, &[0x82]));
        assert_eq!(filter(&input, 5)?, input);
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

    #[test]
    fn large_blocks_are_split_into_frames_h2_accepts() -> Result<(), HeaderBlockError> {
        let mut client = loona_hpack::Encoder::new();
        let mut fields = request("x");
        fields.push((b"x-big".to_vec(), vec![b'b'; 40_000]));
        let block = encode(&mut client, &fields);
        let mut input = PREFACE.to_vec();
        for (i, chunk) in block.chunks(MAX_FRAME).enumerate() {
            let last = (i + 1) * MAX_FRAME >= block.len();
            let kind = if i == 0 { 1 } else { 9 };
            input.extend(frame(kind, if last { END_HEADERS } else { 0 }, 1, chunk));
        }
        let out = filter(&input, 1000)?;
        let seen = blocks(&out);
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0]
                .iter()
                .any(|(n, v)| n == "x-big" && v.len() == 40_000)
        );
        Ok(())
    }
}
