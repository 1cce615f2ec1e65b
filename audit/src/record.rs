//! Record envelope, canonical hashing, timestamps and event ids.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::SCHEMA_VERSION;

/// `prev` of the very first record of a log.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Field names owned by the envelope; caller fields with these names are discarded.
pub(crate) const ENVELOPE: [&str; 7] =
    ["schema_version", "seq", "ts", "id", "event", "prev", "hash"];

/// Caller values nested deeper than this are replaced by a marker string, so that every record
/// stays parseable by serde_json (whose parser stops at 128 levels).
const MAX_FIELD_DEPTH: usize = 64;

/// RFC 8785 canonical form of `v`.
///
/// `serde_jcs` cannot fail on a `serde_json::Value` (its numbers are always finite); should it
/// ever, we fall back to serde_json's compact form so that hashing still works deterministically.
pub(crate) fn canonical(v: &Value) -> Vec<u8> {
    serde_jcs::to_vec(v).unwrap_or_else(|_| serde_json::to_vec(v).unwrap_or_default())
}

/// Lower-case hex SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Hash of a record: SHA-256 of the JCS form of the record object without its `hash` member.
pub(crate) fn record_hash(without_hash: &Map<String, Value>) -> String {
    // Serialize the map as an object without cloning it into a `Value`.
    let bytes = serde_jcs::to_vec(without_hash)
        .unwrap_or_else(|_| serde_json::to_vec(without_hash).unwrap_or_default());
    sha256_hex(&bytes)
}

/// Current time as RFC 3339 UTC with microseconds, e.g. `2025-01-31T12:00:00.123456Z`.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_ts(d.as_secs(), d.subsec_micros())
}

/// Formats seconds since the epoch (UTC) plus microseconds.
pub(crate) fn format_ts(secs: u64, micros: u32) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// A fresh 128-bit random event id (32 hex digits).
pub(crate) fn new_id() -> Result<String, std::io::Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(format!("getrandom: {e}")))?;
    Ok(hex::encode(b))
}

/// Largest integer magnitude the hash binds exactly: JCS (RFC 8785) writes every number as an
/// IEEE 754 double, so integers beyond 2^53 - 1 that round to the same double would share a
/// hash (a changed digit would go unnoticed).
pub(crate) const MAX_EXACT_INT: u64 = (1 << 53) - 1;

/// Whether JCS represents `n` exactly: every float, and the integers within ±[`MAX_EXACT_INT`].
pub(crate) fn jcs_exact(n: &serde_json::Number) -> bool {
    match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => u <= MAX_EXACT_INT,
        (None, Some(i)) => i.unsigned_abs() <= MAX_EXACT_INT,
        (None, None) => true,
    }
}

/// Replaces values nested deeper than [`MAX_FIELD_DEPTH`] by a marker string, and integers the
/// hash would not bind exactly (beyond ±[`MAX_EXACT_INT`]) by their decimal text.
fn clamp_depth(v: Value, depth: usize) -> Value {
    match v {
        Value::Number(n) if !jcs_exact(&n) => Value::String(n.to_string()),
        Value::Array(_) | Value::Object(_) if depth >= MAX_FIELD_DEPTH => {
            Value::String("[truncated: nested too deeply]".into())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(|x| clamp_depth(x, depth + 1)).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, x)| (k, clamp_depth(x, depth + 1)))
                .collect(),
        ),
        other => other,
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A record ready to be written.
#[derive(Debug)]
pub(crate) struct Built {
    /// The JSON line, `\n`-terminated.
    pub line: String,
    /// Its `hash`.
    pub hash: String,
}

/// Builds the record `seq` chained to `prev`. Caller fields named like envelope fields are
/// dropped (the envelope wins).
pub(crate) fn build(
    seq: u64,
    prev: &str,
    event: &str,
    fields: Map<String, Value>,
) -> Result<Built, std::io::Error> {
    let ts = now_rfc3339();
    let id = new_id()?;
    let mut map = Map::new();
    let mut line = String::with_capacity(256);
    let _ = write!(
        line,
        "{{\"schema_version\":{SCHEMA_VERSION},\"seq\":{seq},\"ts\":\"{ts}\",\"id\":\"{id}\",\"event\":{}",
        json_string(event)
    );
    for (k, v) in fields {
        if ENVELOPE.contains(&k.as_str()) {
            continue;
        }
        let v = clamp_depth(v, 1);
        line.push(',');
        line.push_str(&json_string(&k));
        line.push(':');
        line.push_str(&serde_json::to_string(&v).unwrap_or_else(|_| "null".into()));
        map.insert(k, v);
    }
    map.insert("schema_version".into(), Value::from(SCHEMA_VERSION));
    map.insert("seq".into(), Value::from(seq));
    map.insert("ts".into(), Value::String(ts));
    map.insert("id".into(), Value::String(id));
    map.insert("event".into(), Value::String(event.to_owned()));
    map.insert("prev".into(), Value::String(prev.to_owned()));
    let hash = record_hash(&map);
    let _ = writeln!(line, ",\"prev\":\"{prev}\",\"hash\":\"{hash}\"}}");
    Ok(Built { line, hash })
}

/// The message signed by a checkpoint.
pub(crate) fn checkpoint_message(seq: u64, hash: &str) -> String {
    format!("mcpd-audit-checkpoint-v1\n{seq}\n{hash}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(format_ts(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_ts(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(
            format_ts(1_700_000_000, 123_456),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            format_ts(4_107_542_399, 999_999),
            "2100-02-28T23:59:59.999999Z"
        );
        let now = now_rfc3339();
        assert_eq!(now.len(), 27, "{now}");
    }

    /// Found by the `audit_chain` fuzz target: 3084805214953730574 and 3084805214953730564 are
    /// the same double, so a record holding one verified with the digit changed. The writer now
    /// stores such integers as their decimal text; the ones JCS holds exactly stay numbers.
    #[test]
    fn integers_the_hash_cannot_bind_are_written_as_text() {
        let mut f = Map::new();
        f.insert("big".into(), 3_084_805_214_953_730_574_u64.into());
        f.insert("neg".into(), (-3_084_805_214_953_730_574_i64).into());
        f.insert("max".into(), MAX_EXACT_INT.into());
        f.insert("nested".into(), serde_json::json!([{"n": u64::MAX}]));
        let b = build(1, GENESIS, "tool.call", f).unwrap();
        let v: Value = serde_json::from_str(&b.line).unwrap();
        assert_eq!(v["big"], "3084805214953730574");
        assert_eq!(v["neg"], "-3084805214953730574");
        assert_eq!(v["max"], MAX_EXACT_INT);
        assert_eq!(v["nested"][0]["n"], u64::MAX.to_string());
        let mut m = v.as_object().unwrap().clone();
        m.remove("hash");
        assert_eq!(record_hash(&m), v["hash"]);
    }

    #[test]
    fn built_line_parses_and_hash_verifies() {
        let mut f = Map::new();
        f.insert("principal".into(), "alice".into());
        f.insert("seq".into(), 99.into()); // envelope wins
        f.insert("text".into(), "multi\nline \u{2028} \"quoted\"".into());
        f.insert("n".into(), serde_json::json!(1.5e300));
        let b = build(7, GENESIS, "tool.call", f).unwrap();
        assert!(b.line.ends_with('\n'));
        assert_eq!(b.line.matches('\n').count(), 1);
        let mut v: Map<String, Value> = serde_json::from_str(b.line.trim_end()).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["principal"], "alice");
        let h = v.remove("hash").unwrap();
        assert_eq!(h.as_str().unwrap(), b.hash);
        assert_eq!(record_hash(&v), b.hash);
        // envelope first, prev/hash last
        assert!(b
            .line
            .starts_with("{\"schema_version\":1,\"seq\":7,\"ts\":\""));
    }

    #[test]
    fn deep_values_are_clamped() {
        let mut v = Value::Null;
        for _ in 0..200 {
            v = Value::Array(vec![v]);
        }
        let mut f = Map::new();
        f.insert("deep".into(), v);
        let b = build(0, GENESIS, "x", f).unwrap();
        let parsed: Value = serde_json::from_str(b.line.trim_end()).unwrap();
        assert!(parsed.is_object());
    }
}
