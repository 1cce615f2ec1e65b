//! Arbitrary bytes as an audit log file (and, split at a fuzzer-chosen point, as a rotated pair
//! of files) read by `verify`: never panics, and a report that says OK counts only records.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
}

fuzz_target!(|data: &[u8]| {
    let [k, rest @ ..] = data else {
        return;
    };
    let one = dir().path().join("audit.jsonl");
    std::fs::write(&one, rest).expect("write");
    let r = mcpd_audit::verify(std::slice::from_ref(&one), None);
    if r.is_ok() {
        assert!(r.records <= rest.iter().filter(|&&b| b == b'\n').count() as u64);
    }
    let _ = r.to_string();
    // Two files: the same bytes split in two (rotation order is the caller's).
    let cut = usize::from(*k) % (rest.len() + 1);
    let a = dir().path().join("audit.jsonl.1");
    let b = dir().path().join("audit.jsonl.2");
    std::fs::write(&a, &rest[..cut]).expect("write");
    std::fs::write(&b, &rest[cut..]).expect("write");
    let files: Vec<PathBuf> = vec![b, a];
    let _ = mcpd_audit::verify(&files, None).to_string();
});
