//! Record envelope, canonical hashing, timestamps and event ids.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::{jcs, json, SCHEMA_VERSION};

/// `prev` of the very first record of a log.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Field names owned by the envelope; caller fields with these names are discarded.
pub(crate) const ENVELOPE: [&str; 7] =
    ["schema_version", "seq", "ts", "id", "event", "prev", "hash"];

/// Caller values nested deeper than this are replaced by a marker string, so that every record
/// stays parseable by serde_json (whose parser stops at 128 levels).
const MAX_FIELD_DEPTH: usize = 64;

/// RFC 8785 canonical form of `v`.
pub(crate) fn canonical(v: &Value) -> Vec<u8> {
    jcs::to_vec(v)
}

/// Lower-case hex SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    lower_hex(&Sha256::digest(data))
}

/// `bytes` in lower-case hex, as `hex::encode` writes them, from a table rather than through
/// an iterator of `char`s collected into a `String` (which was 1.2% of the broker's
/// instructions under callgrind: three of these per call).
pub(crate) fn lower_hex(bytes: &[u8]) -> String {
    use crate::json::HEX_DIGITS;
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.extend_from_slice(&[
            HEX_DIGITS[usize::from(b >> 4)],
            HEX_DIGITS[usize::from(b & 0xf)],
        ]);
    }
    // Only ASCII digits and letters were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Hash of a record: SHA-256 of the JCS form of the record object without its `hash` member.
pub(crate) fn record_hash(without_hash: &Map<String, Value>) -> String {
    let mut bytes = Vec::with_capacity(512);
    jcs::write_map(&mut bytes, without_hash);
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
    let (h, min, sec) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Beyond four year digits or six microsecond digits, `format!` widens the field.
    let Some(year) = u32::try_from(y)
        .ok()
        .filter(|&y| y <= 9999 && micros <= 999_999)
    else {
        return format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{sec:02}.{micros:06}Z");
    };
    // Every record's time: the digits written in place rather than through `format!`.
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut digits = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    digits(0, 4, u64::from(year));
    digits(5, 2, u64::from(m));
    digits(8, 2, u64::from(d));
    digits(11, 2, h);
    digits(14, 2, min);
    digits(17, 2, sec);
    digits(20, 6, u64::from(micros));
    String::from_utf8(b.to_vec()).unwrap_or_default()
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

/// Random bytes drawn from the kernel per `getrandom` call for event ids (64 ids).
const ID_POOL: usize = 1024;

thread_local! {
    /// Kernel randomness not yet used for ids, and how much of it is used. One `getrandom` per
    /// 64 records instead of one per record: the bytes are the kernel CSPRNG's all the same,
    /// each used once. Per thread (records are built on the writer thread), never shared; the
    /// broker never forks without exec, so no copy of the pool outlives into another process.
    static ID_BYTES: std::cell::RefCell<([u8; ID_POOL], usize)> =
        const { std::cell::RefCell::new(([0; ID_POOL], ID_POOL)) };
}

/// A fresh 128-bit random event id (32 hex digits).
pub(crate) fn new_id() -> Result<String, std::io::Error> {
    ID_BYTES.with_borrow_mut(|(pool, used)| {
        if *used + 16 > ID_POOL {
            getrandom::fill(pool).map_err(|e| std::io::Error::other(format!("getrandom: {e}")))?;
            *used = 0;
        }
        let id = lower_hex(&pool[*used..*used + 16]);
        // Used bytes are wiped: the pool never holds an id already handed out.
        pool[*used..*used + 16].fill(0);
        *used += 16;
        Ok(id)
    })
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
/// hash would not bind exactly (beyond ±[`MAX_EXACT_INT`]) by their decimal text. In place: a
/// value that needs neither is left as it is, without copying it.
fn clamp_depth(v: &mut Value, depth: usize) {
    let replacement = match v {
        Value::Number(n) if !jcs_exact(n) => Value::String(n.to_string()),
        Value::Array(_) | Value::Object(_) if depth >= MAX_FIELD_DEPTH => {
            Value::String("[truncated: nested too deeply]".into())
        }
        Value::Array(a) => {
            a.iter_mut().for_each(|x| clamp_depth(x, depth + 1));
            return;
        }
        Value::Object(o) => {
            o.values_mut().for_each(|x| clamp_depth(x, depth + 1));
            return;
        }
        _ => return,
    };
    *v = replacement;
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
///
/// One pass over the fields for the line (envelope first, the caller's fields in their order,
/// `prev` and `hash` last) and one for the canonical form the hash covers, which sorts the
/// envelope in among them; no field is copied.
pub(crate) fn build(
    seq: u64,
    prev: &str,
    event: &str,
    mut fields: Map<String, Value>,
) -> Result<Built, std::io::Error> {
    let ts = now_rfc3339();
    let id = new_id()?;
    fields.retain(|k, _| !ENVELOPE.contains(&k.as_str()));
    fields.values_mut().for_each(|v| clamp_depth(v, 1));

    let mut line: Vec<u8> = Vec::with_capacity(384);
    let _ = write!(
        line,
        "{{\"schema_version\":{SCHEMA_VERSION},\"seq\":{seq},\"ts\":\"{ts}\",\"id\":\"{id}\",\"event\":"
    );
    json::write_str(&mut line, event);
    for (k, v) in &fields {
        line.push(b',');
        json::write_str(&mut line, k);
        line.push(b':');
        json::write_value(&mut line, v);
    }

    // The envelope in canonical order, merged in among the caller's fields (which the map
    // keeps in code point order, UTF-16 order but for one corner `write_object` sorts out):
    // the members arrive sorted, and `write_object` has only to check it.
    let envelope = [
        ("event", jcs::Member::Str(event)),
        ("id", jcs::Member::Str(&id)),
        ("prev", jcs::Member::Str(prev)),
        (
            "schema_version",
            jcs::Member::Uint(u64::from(SCHEMA_VERSION)),
        ),
        ("seq", jcs::Member::Uint(seq)),
        ("ts", jcs::Member::Str(&ts)),
    ];
    let mut members: Vec<(&str, jcs::Member<'_>)> = Vec::with_capacity(fields.len() + 6);
    let mut envelope = envelope.into_iter().peekable();
    for (k, v) in &fields {
        while let Some(e) = envelope.next_if(|e| jcs::utf16_cmp(e.0, k) == std::cmp::Ordering::Less)
        {
            members.push(e);
        }
        members.push((k.as_str(), jcs::Member::Json(v)));
    }
    members.extend(envelope);
    let mut canonical = Vec::with_capacity(line.len() + 96);
    jcs::write_object(&mut canonical, &mut members);
    let hash = sha256_hex(&canonical);

    let _ = writeln!(line, ",\"prev\":\"{prev}\",\"hash\":\"{hash}\"}}");
    // Only `str`s and serde_json's output (valid UTF-8) were written.
    let line = String::from_utf8(line).map_err(|e| std::io::Error::other(e.to_string()))?;
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
        // The digits written in place are what `format!` writes, from 1970 to past year 9999
        // in steps of about 13 days, at the edges of the microseconds; beyond year 9999
        // `format!` writes it.
        let reference = |secs: u64, micros: u32| {
            let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap());
            let rem = secs % 86_400;
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            )
        };
        let mut secs = 0u64;
        while secs < 253_402_300_800 + 86_400 * 800 {
            for micros in [0, 9, 10, 999_999] {
                assert_eq!(format_ts(secs, micros), reference(secs, micros));
            }
            secs += 86_399 * 13 + 7;
        }
        assert_eq!(format_ts(253_402_300_799, 1), "9999-12-31T23:59:59.000001Z");
        assert_eq!(
            format_ts(253_402_300_800, 0),
            "10000-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(lower_hex(&all), hex::encode(&all));
        assert_eq!(lower_hex(&[]), "");
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
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
        // The reference canonicaliser agrees on the bytes hashed.
        assert_eq!(sha256_hex(&serde_jcs::to_vec(&v).unwrap()), b.hash);
        // envelope first, prev/hash last
        assert!(b
            .line
            .starts_with("{\"schema_version\":1,\"seq\":7,\"ts\":\""));
    }

    /// Caller keys that sort in among the envelope's, by UTF-16 code units (the astral key
    /// before U+E000), give the hash serde_jcs gives; every event id is new.
    #[test]
    fn envelope_and_caller_fields_hash_in_canonical_order() {
        let mut f = Map::new();
        f.insert("a".into(), 1.into());
        f.insert(
            "sez".into(),
            serde_json::json!({"z": [1.5, null], "b": "\u{1}"}),
        );
        f.insert("\u{e000}".into(), "x".into());
        f.insert("\u{1f600}".into(), true.into());
        f.insert("hash".into(), "forged".into());
        // Between and after the envelope's names, and one that is a prefix of one.
        for k in ["f", "pa", "s", "se", "seqq", "tt", "zz"] {
            f.insert(k.into(), k.into());
        }
        let mut ids = std::collections::HashSet::new();
        for seq in 0..200 {
            let b = build(seq, GENESIS, "tool.call", f.clone()).unwrap();
            let mut v: Map<String, Value> = serde_json::from_str(b.line.trim_end()).unwrap();
            assert_eq!(v.remove("hash").unwrap(), b.hash.as_str());
            assert_eq!(sha256_hex(&serde_jcs::to_vec(&v).unwrap()), b.hash);
            assert!(ids.insert(v["id"].as_str().unwrap().to_owned()));
            assert_eq!(v["id"].as_str().unwrap().len(), 32);
        }
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
