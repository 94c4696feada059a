//! The TCP frame decoder fed arbitrary bytes, whole and split at arbitrary points.
//!
//! Input: `max_frame: u16 be` (0xffff: the default 1 MiB), `split seed: u8`, then the byte stream.
//! Properties: no panic; splitting never changes the frames or the error; no decode call reserves
//! more than a frame's worth of memory (an oversized length reserves nothing); every decoded
//! frame re-encodes to exactly the bytes it came from.
#![no_main]

use bytes::{Bytes, BytesMut};
use ferry::tcp::codec::{CodecError, DEFAULT_MAX_FRAME, Frame, FrameCodec, HEADER_LEN};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let [m0, m1, seed, stream @ ..] = data else {
        return;
    };
    let max = match u16::from_be_bytes([*m0, *m1]) {
        0xffff => DEFAULT_MAX_FRAME,
        m => m as usize,
    };
    let codec = FrameCodec::new(max);
    assert_eq!(codec.max_payload(), max.saturating_sub(HEADER_LEN));
    let whole = decode_all(max, stream, &[stream]);
    let pieces = decode_all(max, stream, &split(stream, *seed));
    assert_eq!(
        whole, pieces,
        "splitting the stream changed what was decoded"
    );
    if max <= 4096 {
        // The encoder refuses what the decoder would refuse.
        let mut enc = FrameCodec::new(max);
        let over = Frame::new(
            ferry::tcp::codec::Kind::Data,
            1,
            Bytes::from(vec![0u8; enc.max_payload() + 1]),
        );
        let mut out = BytesMut::new();
        assert!(matches!(
            enc.encode(over, &mut out),
            Err(CodecError::TooLarge(_))
        ));
    }
});

/// The frames decoded and how decoding stopped: `None` when the bytes ran out, else the error.
type Outcome = (Vec<Frame>, Option<String>);

/// Feeds `chunks` (which concatenate to `stream`) one by one and decodes all it can after each.
fn decode_all(max: usize, stream: &[u8], chunks: &[&[u8]]) -> Outcome {
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    let mut start = 0;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        loop {
            let (len_before, cap_before) = (buf.len(), buf.capacity());
            let r = codec.decode(&mut buf);
            let cap = buf.capacity();
            if cap > cap_before {
                // Growth is for the frame being read only: its length is at most `max`.
                let bound = 2 * (len_before + max + 4) + (128 << 10);
                assert!(cap <= bound, "decode reserved {cap} bytes (max {max})");
            }
            match r {
                Ok(Some(frame)) => {
                    let end = fed - buf.len();
                    let mut again = BytesMut::new();
                    codec.encode(frame.clone(), &mut again).expect("re-encode");
                    assert_eq!(&again[..], &stream[start..end], "re-encoded bytes differ");
                    start = end;
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => {
                    if let CodecError::TooLarge(_) = e {
                        assert!(cap <= cap_before, "an oversized length reserved memory");
                    }
                    assert!(!matches!(e, CodecError::Io(_)), "no I/O here: {e}");
                    return (frames, Some(e.to_string()));
                }
            }
        }
    }
    (frames, None)
}

/// Cuts `data` into pieces whose sizes follow `seed` (0: one byte at a time).
fn split(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut x = u32::from(seed) | 0x9e37_0000;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = if seed == 0 {
            1
        } else {
            1 + x as usize % (2 * usize::from(seed))
        };
        let (head, tail) = rest.split_at(n.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}
