//! Frames of the TCP protocol: `len:u32be | kind:u8 | stream:u32be | payload`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use std::io;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder, FramedWrite, LengthDelimitedCodec};

/// Bytes of kind and stream id that follow the length prefix.
pub const HEADER_LEN: usize = 5;

/// Payloads at least this big are written from their own memory rather than copied into the
/// write buffer (see [`feed`]).
const DIRECT: usize = 16 * 1024;

/// The default and largest sensible frame size (length field value).
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client opens: version and token (JSON).
    Hello = 0x01,
    /// Server answers the hello: version, session and limits (JSON).
    Welcome = 0x02,
    /// Client starts an operation on a new stream (JSON).
    Request = 0x10,
    /// A partial answer: a `get` header, a batch of `list` entries (JSON).
    Header = 0x11,
    /// The final answer of a stream (JSON).
    End = 0x12,
    /// The stream failed, or with stream 0 the connection (JSON `{code, message}`).
    Error = 0x13,
    /// File bytes, or a command's stdin (raw).
    Data = 0x20,
    /// A command's stdout (raw).
    Stdout = 0x21,
    /// A command's stderr (raw).
    Stderr = 0x22,
    /// The client has no more stdin (empty).
    Eof = 0x23,
    /// The receiver grants more bytes of data on a stream (u32 be increment).
    Window = 0x30,
    /// The client cancels a stream (empty).
    Cancel = 0x31,
}

impl Kind {
    /// Decodes a kind byte.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0x01 => Kind::Hello,
            0x02 => Kind::Welcome,
            0x10 => Kind::Request,
            0x11 => Kind::Header,
            0x12 => Kind::End,
            0x13 => Kind::Error,
            0x20 => Kind::Data,
            0x21 => Kind::Stdout,
            0x22 => Kind::Stderr,
            0x23 => Kind::Eof,
            0x30 => Kind::Window,
            0x31 => Kind::Cancel,
            _ => return None,
        })
    }

    /// Whether frames of this kind count against the stream's window.
    pub fn is_flow_controlled(self) -> bool {
        matches!(self, Kind::Data | Kind::Stdout | Kind::Stderr)
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// The stream it belongs to; 0 is the connection itself.
    pub stream: u32,
    /// The payload.
    pub payload: Bytes,
}

impl Frame {
    /// A frame with a raw payload.
    pub fn new(kind: Kind, stream: u32, payload: impl Into<Bytes>) -> Frame {
        Frame {
            kind,
            stream,
            payload: payload.into(),
        }
    }

    /// A frame with a JSON payload.
    pub fn json(kind: Kind, stream: u32, value: &impl serde::Serialize) -> Frame {
        let payload = serde_json::to_vec(value).expect("serializable");
        Frame::new(kind, stream, payload)
    }

    /// A window grant of `n` bytes.
    pub fn window(stream: u32, n: u32) -> Frame {
        Frame::new(
            Kind::Window,
            stream,
            Bytes::copy_from_slice(&n.to_be_bytes()),
        )
    }

    /// Parses the JSON payload.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// Why a byte stream is not valid frames.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length field is above the maximum; nothing was buffered for it.
    #[error("a frame length is over the maximum of {0} bytes")]
    TooLarge(usize),
    /// The frame is shorter than its kind and stream id.
    #[error("frame of {0} bytes is shorter than its 5-byte header")]
    Short(usize),
    /// The kind byte is unknown.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The frame codec: tokio-util's `LengthDelimitedCodec` with an explicit maximum, plus the header.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max: usize,
}

impl FrameCodec {
    /// A codec that refuses length fields above `max_frame`.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .big_endian()
                .max_frame_length(max_frame)
                .new_codec(),
            max: max_frame,
        }
    }

    /// Changes the largest frame accepted (raised once a peer has authenticated).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.inner.set_max_frame_length(max_frame);
        self.max = max_frame;
    }

    /// The largest payload a frame can carry (0 when the maximum is below the header).
    pub fn max_payload(&self) -> usize {
        self.max.saturating_sub(HEADER_LEN)
    }

    /// The length field of a frame with `payload` bytes, if it is within the maximum.
    fn length(&self, payload: usize) -> Result<usize, CodecError> {
        let len = HEADER_LEN + payload;
        if len > self.max {
            return Err(CodecError::TooLarge(self.max));
        }
        Ok(len)
    }
}

/// Appends the length field `len`, then the kind and stream of `frame`: all but its payload.
/// Written directly (same layout as LengthDelimitedCodec) so that the payload is copied at most
/// once.
fn put_header(frame: &Frame, len: usize, dst: &mut BytesMut) {
    dst.put_u32(len as u32);
    dst.put_u8(frame.kind as u8);
    dst.put_u32(frame.stream);
}

/// Queues `frame` on `w` like `SinkExt::feed`, except that a big payload is not copied: it is
/// written at once from its own memory, after the bytes queued before it (one `writev` where
/// the socket takes them). Copying it would cost about as much as sending it.
pub async fn feed<W: AsyncWrite + Unpin>(
    w: &mut FramedWrite<W, FrameCodec>,
    frame: Frame,
) -> Result<(), CodecError> {
    if frame.payload.len() < DIRECT {
        return w.feed(frame).await;
    }
    let len = w.encoder().length(frame.payload.len())?;
    let buf = w.write_buffer_mut();
    put_header(&frame, len, buf);
    // The buffer keeps its memory, to be used again once these bytes are gone.
    let mut out = buf.split().chain(frame.payload);
    w.get_mut().write_all_buf(&mut out).await?;
    Ok(())
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let decoded = self.inner.decode(src).map_err(|e| {
            // The inner codec refuses an oversized length before reserving anything for it.
            match e
                .get_ref()
                .and_then(|i| i.downcast_ref::<tokio_util::codec::LengthDelimitedCodecError>())
            {
                Some(_) => CodecError::TooLarge(self.max),
                None => CodecError::Io(e),
            }
        })?;
        let Some(mut buf) = decoded else {
            return Ok(None);
        };
        if buf.len() < HEADER_LEN {
            return Err(CodecError::Short(buf.len()));
        }
        let kind_byte = buf.get_u8();
        let kind = Kind::from_u8(kind_byte).ok_or(CodecError::UnknownKind(kind_byte))?;
        let stream = buf.get_u32();
        Ok(Some(Frame {
            kind,
            stream,
            payload: buf.freeze(),
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = self.length(frame.payload.len())?;
        dst.reserve(4 + len);
        put_header(&frame, len, dst);
        dst.extend_from_slice(&frame.payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let mut c = FrameCodec::new(64);
        let mut buf = BytesMut::new();
        c.encode(Frame::new(Kind::Data, 7, &b"abc"[..]), &mut buf)
            .unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 8, 0x20, 0, 0, 0, 7, b'a', b'b', b'c']);
        // Split across reads: nothing until the whole frame is there.
        let mut part = buf.split_to(5);
        assert!(c.decode(&mut part).unwrap().is_none());
        part.unsplit(buf);
        let f = c.decode(&mut part).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.stream, &f.payload[..]),
            (Kind::Data, 7, &b"abc"[..])
        );
        let mut big = BytesMut::from(&[0u8, 0, 0, 65][..]);
        assert!(matches!(c.decode(&mut big), Err(CodecError::TooLarge(64))));
        assert!(
            big.capacity() < 64,
            "no buffer is reserved for an oversized frame"
        );
        let mut short = BytesMut::from(&[0u8, 0, 0, 2, 1, 0][..]);
        assert!(matches!(c.decode(&mut short), Err(CodecError::Short(2))));
    }

    #[tokio::test]
    async fn big_payloads_written_from_their_own_memory_keep_their_place() {
        use futures_util::StreamExt;
        use tokio_util::codec::FramedRead;
        let max = 1 << 20;
        // A pipe smaller than one big payload, so that its writes are partial.
        let (a, b) = tokio::io::duplex(DIRECT);
        let mut w = FramedWrite::new(a, FrameCodec::new(max));
        let big = |n: usize, seed: u8| -> Bytes { (0..n).map(|i| (i as u8) ^ seed).collect() };
        let sent = vec![
            Frame::new(Kind::Header, 1, &b"{}"[..]),
            Frame::new(Kind::Data, 1, big(DIRECT, 1)),
            Frame::new(Kind::Window, 2, &b"abcd"[..]),
            Frame::new(Kind::Stdout, 3, big(200_000, 2)),
            Frame::new(Kind::Data, 1, big(DIRECT - 1, 3)),
            Frame::new(Kind::Data, 1, big(max - HEADER_LEN, 4)),
            Frame::new(Kind::End, 1, &b"{}"[..]),
        ];
        let queued = Frame::new(Kind::Header, 5, &b"queued"[..]);
        let n = sent.len() + 1;
        let reader = tokio::spawn(async move {
            let r = FramedRead::new(b, FrameCodec::new(max));
            r.take(n).map(|f| f.unwrap()).collect::<Vec<Frame>>().await
        });
        for f in sent.clone() {
            feed(&mut w, f).await.unwrap();
        }
        // Too big for a frame: refused, and what was queued before it still goes out.
        feed(&mut w, queued.clone()).await.unwrap();
        let over = feed(&mut w, Frame::new(Kind::Data, 5, big(max, 5))).await;
        assert!(matches!(over, Err(CodecError::TooLarge(m)) if m == max));
        w.flush().await.unwrap();
        let got = reader.await.unwrap();
        let mut want = sent;
        want.push(queued);
        assert!(got == want, "every frame arrives whole and in order");
    }

    #[test]
    fn a_maximum_below_the_header_leaves_no_payload() {
        // Also checked by the frame fuzz target: this used to underflow (a panic in debug).
        assert_eq!(FrameCodec::new(3).max_payload(), 0);
        assert_eq!(FrameCodec::new(HEADER_LEN).max_payload(), 0);
        assert_eq!(FrameCodec::new(64).max_payload(), 59);
    }
}
