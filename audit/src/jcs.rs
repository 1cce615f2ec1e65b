//! RFC 8785 (JCS) canonical JSON of a `serde_json::Value`, written straight into a buffer.
//!
//! Every record's hash is taken over this form, on the writer thread for each append and by
//! `verify` for each line read, so it is on the audit log's hot path. `serde_jcs` builds it
//! through a formatter that buffers each object's keys and values in their own vectors and
//! re-parses every key to sort it: about half of a record's cost. This writes the same bytes
//! in one pass. The `matches_serde_jcs` tests (and the `audit_chain` fuzz target, through
//! `record_hash`) hold it to `serde_jcs`'s output, so hashes of existing logs still verify.
//!
//! The rules (RFC 8785 section 3.2):
//! - literals as they are; strings with JSON's minimal escaping (`"`, `\`, and the controls
//!   below U+0020 as `\b \t \n \f \r` or `\u00xx`, lower-case hex), which is exactly what
//!   `serde_json` writes;
//! - every number as the IEEE 754 double it denotes, in ECMAScript's `Number.toString` form
//!   (`ryu-js`, the formatter `serde_jcs` uses); integers beyond 2^53 therefore lose digits,
//!   which is why the writer stores those as text;
//! - object members sorted by their keys' UTF-16 code units, no whitespace anywhere.

use std::cmp::Ordering;

// serde_json's string escaping is JCS's (see above), which `json::write_str` writes.
use crate::json::write_str;

use serde_json::{Map, Number, Value};

/// One value of an object being written: either the caller's JSON or a record envelope field.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Member<'a> {
    /// Any JSON value.
    Json(&'a Value),
    /// A string.
    Str(&'a str),
    /// An unsigned integer.
    Uint(u64),
}

/// The canonical form of `v`.
pub(crate) fn to_vec(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, v);
    out
}

/// Appends the canonical form of `v` to `out`.
pub(crate) fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, x);
            }
            out.push(b']');
        }
        Value::Object(m) => write_map(out, m),
    }
}

/// Appends the canonical form of the object `m` to `out`.
pub(crate) fn write_map(out: &mut Vec<u8>, m: &Map<String, Value>) {
    let mut members: Vec<(&str, Member<'_>)> = m
        .iter()
        .map(|(k, v)| (k.as_str(), Member::Json(v)))
        .collect();
    write_object(out, &mut members);
}

/// Appends the canonical form of the object made of `members` (keys unique) to `out`,
/// sorting them first.
pub(crate) fn write_object(out: &mut Vec<u8>, members: &mut [(&str, Member<'_>)]) {
    // serde_json's map iterates in code point order, which is UTF-16 order unless keys mix
    // characters above U+FFFF with ones in U+E000..U+FFFF: usually nothing to sort.
    if !members
        .windows(2)
        .all(|w| utf16_cmp(w[0].0, w[1].0) == Ordering::Less)
    {
        members.sort_by(|a, b| utf16_cmp(a.0, b.0));
    }
    out.push(b'{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        match v {
            Member::Json(v) => write_value(out, v),
            Member::Str(s) => write_str(out, s),
            Member::Uint(n) => write_uint(out, *n),
        }
    }
    out.push(b'}');
}

/// Orders two keys by their UTF-16 code units, as RFC 8785 section 3.2.3 requires.
pub(crate) fn utf16_cmp(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        // One code unit per byte, of the same value.
        return a.as_bytes().cmp(b.as_bytes());
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_number(out: &mut Vec<u8>, n: &Number) {
    match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => write_uint(out, u),
        (None, Some(i)) if i.unsigned_abs() <= crate::record::MAX_EXACT_INT => {
            out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
        }
        // Without serde_json's `arbitrary_precision` every number has an f64 value (integers
        // converted, rounding beyond 2^53 as JCS does), and floats are always finite.
        _ => write_f64(out, n.as_f64().unwrap_or(0.0)),
    }
}

/// An unsigned integer: up to 2^53 - 1 a double holds it exactly and ECMAScript writes its
/// decimal digits (no exponent below 10^21), which `itoa` writes faster than the double's
/// formatter; beyond, the double it rounds to.
fn write_uint(out: &mut Vec<u8>, u: u64) {
    if u <= crate::record::MAX_EXACT_INT {
        out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes());
    } else {
        write_f64(out, u as f64);
    }
}

fn write_f64(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() {
        out.extend_from_slice(ryu_js::Buffer::new().format_finite(f).as_bytes());
    } else {
        // Not reachable from a `Value`; `null` is what JSON.stringify writes for it.
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn same_as_serde_jcs(v: &Value) {
        let want = serde_jcs::to_vec(v).unwrap();
        let got = to_vec(v);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "for {v}"
        );
    }

    /// A small deterministic generator (no external randomness in unit tests).
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn string(&mut self) -> String {
            // Characters chosen to hit every escaping and ordering rule: controls, quotes,
            // backslash, DEL, Latin-1, U+2028, the U+E000.. range against astral characters.
            const POOL: [char; 16] = [
                'a',
                'Z',
                '0',
                '"',
                '\\',
                '/',
                '\u{0}',
                '\u{1f}',
                '\n',
                '\u{7f}',
                '\u{e9}',
                '\u{2028}',
                '\u{e000}',
                '\u{ffff}',
                '\u{1f600}',
                '\u{10ffff}',
            ];
            let len = self.below(6);
            (0..len)
                .map(|_| POOL[self.below(POOL.len() as u64) as usize])
                .collect()
        }
        fn number(&mut self) -> Value {
            match self.below(6) {
                0 => json!(self.next()),
                1 => json!(-(self.below(1 << 62) as i64)),
                2 => json!(self.below(1000)),
                3 => {
                    let f = f64::from_bits(self.next());
                    if f.is_finite() {
                        json!(f)
                    } else {
                        json!(0.5)
                    }
                }
                4 => json!((self.below(2_000_000) as f64 - 1e6) / 1e3),
                _ => json!(9_007_199_254_740_993_u64),
            }
        }
        fn value(&mut self, depth: u32) -> Value {
            let kind = if depth >= 4 {
                self.below(4)
            } else {
                self.below(6)
            };
            match kind {
                0 => Value::Null,
                1 => Value::Bool(self.below(2) == 0),
                2 => self.number(),
                3 => Value::String(self.string()),
                4 => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
                _ => Value::Object(
                    (0..self.below(6))
                        .map(|_| (self.string(), self.value(depth + 1)))
                        .collect(),
                ),
            }
        }
    }

    #[test]
    fn matches_serde_jcs_on_generated_values() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            same_as_serde_jcs(&g.value(0));
        }
    }

    #[test]
    fn matches_serde_jcs_on_edge_cases() {
        for v in [
            json!({}),
            json!([]),
            json!(""),
            json!(-0.0),
            json!(u64::MAX),
            json!(i64::MIN),
            // Integers are written by `itoa` up to 2^53 - 1, by the double beyond.
            json!(0),
            json!(-1),
            json!(9_007_199_254_740_991_u64),
            json!(9_007_199_254_740_992_u64),
            json!(9_007_199_254_740_993_u64),
            json!(-9_007_199_254_740_991_i64),
            json!(-9_007_199_254_740_992_i64),
            json!(-9_007_199_254_740_993_i64),
            json!(1_000_000_000_000_000_000_000_u128 as f64),
            json!(5e-324),
            json!(1e21),
            json!(123_456_789_012_345_680_000.0),
            json!({"\u{e000}": 1, "\u{1f600}": 2, "\u{ffff}": 3, "\u{10000}": 4}),
            json!({"b": {"d": [1, {"f": null, "e": true}], "c": "x"}, "a": "\u{0}\u{8}\u{c}"}),
        ] {
            same_as_serde_jcs(&v);
        }
    }

    #[test]
    fn members_are_sorted_by_utf16_code_units() {
        // U+E000 is one code unit 0xE000; U+1F600 is 0xD83D 0xDE00, which sorts first although
        // its code point is larger.
        assert_eq!(utf16_cmp("\u{1f600}", "\u{e000}"), Ordering::Less);
        assert_eq!(utf16_cmp("ab", "b"), Ordering::Less);
        assert_eq!(utf16_cmp("a", "a"), Ordering::Equal);
        let mut out = Vec::new();
        let v = json!("v");
        let mut members = [
            ("seq", Member::Uint(7)),
            ("\u{e000}", Member::Str("x")),
            ("ts", Member::Json(&v)),
            ("\u{1f600}", Member::Uint(1 << 60)),
            ("s", Member::Uint((1 << 53) - 1)),
        ];
        write_object(&mut out, &mut members);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"s\":9007199254740991,\"seq\":7,\"ts\":\"v\",\"\u{1f600}\":1152921504606847000,\"\u{e000}\":\"x\"}"
        );
    }
}
