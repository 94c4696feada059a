//! Raw TCP frames, byte by byte as docs/protocol.md section 2 defines them, for tests that must
//! send what no well-behaved client would.

use serde_json::Value;

/// The client's first frame.
pub const HELLO: u8 = 0x01;
/// Server's answer to a hello.
pub const WELCOME: u8 = 0x02;
/// Opens a stream.
pub const REQUEST: u8 = 0x10;
/// A partial answer.
pub const HEADER: u8 = 0x11;
/// The final answer of a stream.
pub const END: u8 = 0x12;
/// An error; on stream 0, of the connection.
pub const ERROR: u8 = 0x13;
/// File bytes or stdin.
pub const DATA: u8 = 0x20;
/// Command stdout.
pub const STDOUT: u8 = 0x21;
/// Command stderr.
pub const STDERR: u8 = 0x22;
/// End of stdin.
pub const EOF: u8 = 0x23;
/// A window grant.
pub const WINDOW: u8 = 0x30;
/// Cancels a stream.
pub const CANCEL: u8 = 0x31;

/// Encodes one frame.
pub fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(5 + payload.len()).unwrap();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Encodes a frame with a JSON payload.
pub fn json_frame(kind: u8, stream: u32, v: &Value) -> Vec<u8> {
    frame(kind, stream, &serde_json::to_vec(v).unwrap())
}
