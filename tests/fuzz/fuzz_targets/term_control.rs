//! The terminal WebSocket's text messages: acknowledgements and control messages.
//!
//! Properties: no panic; a text is an ack only when it is JSON `{"type":"ack","seq":N}`; a
//! control message is a resize within 1 to 1000 cells each way or a `bad_request` error.
//! (serde also takes the array spelling of the same message, `["resize",80,24]`: harmless, the
//! values are checked the same way, so it is allowed here.)
#![no_main]

use ferry::core::error::Code;
use ferry::core::term::Input;
use ferry::http::{term_ack_of, term_control};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(seq) = term_ack_of(text) {
        // (serde_json's `Value` refuses some numbers that an ignored field may hold.)
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            assert_eq!(field(&v, "type", 0), "ack");
            assert_eq!(field(&v, "seq", 1).as_u64(), Some(seq));
        }
    }
    match term_control(text) {
        Ok(Input::Resize(size)) => {
            assert!((1..=1000).contains(&size.cols) && (1..=1000).contains(&size.rows));
            size.check().expect("a parsed size passes its own check");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
                assert_eq!(field(&v, "type", 0), "resize");
                assert_eq!(field(&v, "cols", 1).as_i64(), Some(i64::from(size.cols)));
                assert_eq!(field(&v, "rows", 2).as_i64(), Some(i64::from(size.rows)));
            }
        }
        Ok(Input::Bytes(_)) => panic!("a text message never becomes keystrokes"),
        Err(e) => assert_eq!(e.code, Code::BadRequest),
    }
});

/// A message's field by name, or by position in the array spelling.
fn field<'a>(v: &'a serde_json::Value, name: &str, at: usize) -> &'a serde_json::Value {
    if v.is_array() { &v[at] } else { &v[name] }
}
