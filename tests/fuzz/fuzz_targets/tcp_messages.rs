//! The payload parsers of the TCP protocol: every JSON message a frame can carry, the window
//! grant, and error bodies.
//!
//! Properties: no panic; a payload that parses serialises to JSON that parses to the same
//! message; an error body made from any message fits the 1 KiB cut and keeps a prefix of it.
#![no_main]

use ferry::core::error::{Code, Error};
use ferry::tcp::codec::{Frame, Kind};
use ferry::tcp::messages::{
    ErrorBody, ExecEnd, GetEnd, GetHeader, Hello, ListBatch, ListEnd, PutEnd, Request, Welcome,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let frame = Frame::new(Kind::Request, 1, data.to_vec());
    round_trip::<Request>(&frame);
    round_trip::<Hello>(&frame);
    round_trip::<Welcome>(&frame);
    round_trip::<ListBatch>(&frame);
    round_trip::<ListEnd>(&frame);
    round_trip::<ExecEnd>(&frame);
    round_trip::<GetHeader>(&frame);
    round_trip::<GetEnd>(&frame);
    round_trip::<PutEnd>(&frame);
    if let Some(body) = round_trip::<ErrorBody>(&frame) {
        // Unknown codes become `internal`; known ones keep their spelling.
        let e = Error::from(body.clone());
        assert!(e.code == Code::Internal || e.code.as_str() == body.code);
        check_cut(&body.message);
    }
    // A window grant is exactly four bytes (as the server and client read it).
    if let Ok(b) = <[u8; 4]>::try_from(data) {
        let w = Frame::window(1, u32::from_be_bytes(b));
        assert_eq!(&w.payload[..], data);
    }
    check_cut(&String::from_utf8_lossy(data));
});

/// Parses the payload as `T`; if it parses, its JSON must parse back to the same JSON.
fn round_trip<T: Serialize + DeserializeOwned>(frame: &Frame) -> Option<T> {
    let msg: T = frame.parse().ok()?;
    let json = serde_json::to_value(&msg).expect("a parsed message serialises");
    let again = Frame::json(Kind::End, 1, &msg);
    let back: T = again.parse().expect("a serialised message parses");
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    Some(msg)
}

/// Error messages sent in frames are cut at 1 KiB on a character boundary, marked with `…`.
fn check_cut(message: &str) {
    let body = ErrorBody::from(&Error::new(Code::NotFound, message));
    assert_eq!(body.code, "not_found");
    if message.len() <= 1024 {
        assert_eq!(body.message, message);
    } else {
        let kept = body
            .message
            .strip_suffix('…')
            .expect("a cut message ends with …");
        assert!(
            (1021..=1024).contains(&kept.len()),
            "{} bytes kept",
            kept.len()
        );
        assert!(message.starts_with(kept));
    }
}
