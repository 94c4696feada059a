//! The terminal WebSocket's text messages: acknowledgements and control messages.
//!
//! Properties: no panic; a text is an ack only when it is JSON `{"type":"ack","seq":N}`; a
//! control message is a resize within 1 to 1000 cells each way or a `bad_request` error.
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
        let v: serde_json::Value = serde_json::from_str(text).expect("an ack is JSON");
        assert_eq!(v["type"], "ack");
        assert_eq!(v["seq"].as_u64(), Some(seq));
    }
    match term_control(text) {
        Ok(Input::Resize(size)) => {
            assert!((1..=1000).contains(&size.cols) && (1..=1000).contains(&size.rows));
            size.check().expect("a parsed size passes its own check");
            let v: serde_json::Value = serde_json::from_str(text).expect("a resize is JSON");
            assert_eq!(v["type"], "resize");
            assert_eq!(v["cols"].as_i64(), Some(i64::from(size.cols)));
        }
        Ok(Input::Bytes(_)) => panic!("a text message never becomes keystrokes"),
        Err(e) => assert_eq!(e.code, Code::BadRequest),
    }
});
