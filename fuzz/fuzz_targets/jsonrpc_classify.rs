//! Client bytes → the one JSON-RPC classifier every transport uses, then the stateless-era
//! envelope check on whatever it classified as a request. Never panics; every message gets
//! exactly one classification, and the invariants the engine relies on hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpd::fuzzing::{classify, is_stateless, stateless_meta, Id, Incoming};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text);
});

fn check(text: &str) {
    match classify(text) {
        Incoming::Request { id, method, params } => {
            assert!(!method.is_empty() && method.len() <= 128, "method bounds");
            if let Id::Str(s) = &id {
                assert!(s.len() <= 256, "id bounds");
            }
            if is_stateless(&method, &params) {
                let _ = stateless_meta(&params);
            }
        }
        Incoming::Notification { method, params } => {
            assert!(!method.is_empty() && method.len() <= 128, "method bounds");
            let _ = is_stateless(&method, &params);
        }
        Incoming::Response { .. } => {}
        Incoming::Invalid { id, code, .. } => {
            assert!(
                id.is_null() || id.is_string() || id.is_i64(),
                "echoed id: {id}"
            );
            assert!((-32768..=-32000).contains(&code), "error code {code}");
        }
    }
}
