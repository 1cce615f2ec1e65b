//! Client bytes → the one JSON-RPC classifier every transport uses, then the stateless-era
//! envelope check on whatever it classified as a request. Never panics; every message gets
//! exactly one classification, and the invariants the engine relies on hold. Differential on
//! the way out: whatever parses as JSON is written by the broker's own writer
//! (`to_json_bytes`, and measured by `json_len`) exactly as `serde_json` writes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpd::fuzzing::{classify, is_stateless, json_len, stateless_meta, to_json_bytes, Id, Incoming};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        let want = serde_json::to_vec(&v).expect("a Value serialises");
        assert_eq!(to_json_bytes(&v), want, "to_json_bytes differs from serde_json");
        assert_eq!(json_len(&v), want.len(), "json_len differs from serde_json");
    }
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
