//! Differential: a reference chain builder written here (records with `schema_version`, `seq`
//! from 0, `ts`, `id`, `event`, fuzzer-chosen fields, `prev` = the previous `hash`, genesis
//! zeros first, `hash` = `mcpd_audit::record_hash`) makes a valid log that `verify` must accept
//! whole; then one byte is changed and `verify` must name exactly the record (line) it is in,
//! as malformed or modified — unless the change leaves the JSON value identical (e.g. the case
//! of a `\u` escape's hex digit), when the log must still verify. Changing the final newline
//! leaves an incomplete last line, which `verify` ignores with a warning (documented).
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcpd_audit::FailureKind;
use serde_json::{json, Map, Value};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const EVENTS: &[&str] = &[
    "call.decided",
    "call.finished",
    "session.opened",
    "log.rotated",
    "broker.started",
];

#[derive(Debug, Arbitrary)]
enum Field {
    Int(i64),
    Str(String),
    Bool(bool),
    List(Vec<i64>),
}

#[derive(Debug, Arbitrary)]
struct Rec {
    event: u8,
    id: String,
    fields: Vec<(String, Field)>,
}

#[derive(Debug, Arbitrary)]
struct Case {
    records: Vec<Rec>,
    at: usize,
    xor: u8,
}

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
}

const ENVELOPE: [&str; 7] = ["schema_version", "seq", "ts", "id", "event", "prev", "hash"];

/// As the writer stores them: integers JCS cannot hold exactly (beyond ±(2^53 - 1)) as text.
fn int(i: i64) -> Value {
    if i.unsigned_abs() < 1 << 53 {
        json!(i)
    } else {
        json!(i.to_string())
    }
}

fn build(records: &[Rec]) -> Vec<String> {
    let mut prev = GENESIS.to_owned();
    let mut lines = Vec::new();
    for (seq, r) in records.iter().enumerate() {
        let mut m = Map::new();
        for (k, v) in &r.fields {
            if ENVELOPE.contains(&k.as_str()) || k.starts_with("covers_") || k == "sig" {
                continue;
            }
            let v = match v {
                Field::Int(i) => int(*i),
                Field::Str(s) => json!(s),
                Field::Bool(b) => json!(b),
                Field::List(l) => Value::Array(l.iter().map(|i| int(*i)).collect()),
            };
            m.insert(k.clone(), v);
        }
        m.insert("schema_version".into(), json!(mcpd_audit::SCHEMA_VERSION));
        m.insert("seq".into(), json!(seq));
        m.insert("ts".into(), json!("2026-01-01T00:00:00.000000Z"));
        m.insert("id".into(), json!(r.id));
        m.insert(
            "event".into(),
            json!(EVENTS[usize::from(r.event) % EVENTS.len()]),
        );
        m.insert("prev".into(), json!(prev));
        let hash = mcpd_audit::record_hash(&m);
        m.insert("hash".into(), json!(hash));
        prev = hash;
        lines.push(serde_json::to_string(&Value::Object(m)).expect("json"));
    }
    lines
}

fuzz_target!(|c: Case| {
    if c.records.is_empty() || c.records.len() > 16 {
        return;
    }
    let lines = build(&c.records);
    let mut file: Vec<u8> = Vec::new();
    for l in &lines {
        file.extend_from_slice(l.as_bytes());
        file.push(b'\n');
    }
    let path = dir().path().join("audit.jsonl");
    std::fs::write(&path, &file).expect("write");
    let r = mcpd_audit::verify(std::slice::from_ref(&path), None);
    assert!(r.is_ok(), "a valid chain was refused: {r}");
    assert_eq!(r.records, lines.len() as u64);

    // One byte changed.
    let at = c.at % file.len();
    let xor = c.xor.max(1);
    let line = file[..at].iter().filter(|&&b| b == b'\n').count();
    let mut bad = file.clone();
    bad[at] ^= xor;
    std::fs::write(&path, &bad).expect("write");
    let r = mcpd_audit::verify(std::slice::from_ref(&path), None);
    if at == file.len() - 1 {
        // The final newline: an incomplete last line, ignored (a crash during a write).
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.records, lines.len() as u64 - 1);
        return;
    }
    let start = file[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let end = start + lines[line].len();
    let same = file[at] != b'\n'
        && bad[at] != b'\n'
        && serde_json::from_slice::<Value>(&bad[start..end]).ok()
            == serde_json::from_str::<Value>(&lines[line]).ok();
    if same {
        assert!(r.is_ok(), "an unchanged value was refused: {r}");
        return;
    }
    let Some(f) = &r.failure else {
        panic!(
            "a change at byte {at} (line {}) went unnoticed:\n{}\n{}\n{r}",
            line + 1,
            lines[line],
            String::from_utf8_lossy(&bad[start..end])
        );
    };
    assert_eq!(f.line, line as u64 + 1, "wrong record named: {r}");
    assert!(
        matches!(f.kind, FailureKind::Malformed | FailureKind::Modified),
        "{r}"
    );
});
