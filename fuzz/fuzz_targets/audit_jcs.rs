//! Differential: the audit log's canonical JSON writer (`mcpd_audit`'s own RFC 8785 writer,
//! behind `args_digest` and `record_hash`) against the `serde_jcs` crate it replaced on the hot
//! path. Any JSON text the fuzzer finds is parsed with serde_json; both must then hash the same
//! bytes, for the value itself and, when it is an object, for it as a record. Keys are sorted
//! by UTF-16 code units, numbers go through ECMAScript formatting: the places where the two
//! could part ways (astral keys against U+E000.., big integers, -0, exponents, escapes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let reference = serde_jcs::to_vec(&v).expect("a serde_json value always canonicalises");
    let want = hex::encode(Sha256::digest(&reference));
    assert_eq!(
        mcpd_audit::args_digest(&v),
        want,
        "canonical forms differ; serde_jcs: {}",
        String::from_utf8_lossy(&reference)
    );
    if let Value::Object(m) = &v {
        if !m.contains_key("hash") {
            assert_eq!(mcpd_audit::record_hash(m), want);
        }
    }
});
