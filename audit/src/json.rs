//! Compact JSON written and measured as `serde_json` writes it, but fast: the broker's answers
//! (a 4 KiB file's text per call: [`write_value`], [`value_len`]) and every audit record (its
//! line, and the canonical form its hash covers: RFC 8785 escapes strings as `serde_json`
//! does) go through here.
//!
//! A string is copied whole when a vectorised count finds nothing to escape in it
//! ([`specials`]), otherwise in runs between the bytes to escape, found 8 at a time
//! ([`for_each_special`]), instead of through `serde_json`'s byte-at-a-time loop
//! (`format_escaped_str`: 4% of the broker's samples at 16 sessions for a 4 KiB text result,
//! and 4% of its instructions under callgrind for the audit records' strings).
//!
//! The escapes are `serde_json`'s: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, every other control
//! character as `\u00XX` in lower-case hex, nothing else escaped. The tests hold both functions
//! to `serde_json` at every chunk boundary and for every ASCII byte; the broker's
//! `jsonrpc_classify` fuzz target does so for every string it parses.

use serde_json::Value;

/// The length of `v` serialised as compact JSON (what `v.to_string().len()` gives), counted
/// without building the string: size checks and the audit's `result_bytes` run on every call.
/// Strings (most of a result's bytes) are measured by [`str_len`], without going
/// through a serializer; numbers, which `serde_json` formats, are formatted to count them.
pub fn value_len(v: &Value) -> usize {
    match v {
        Value::Null => 4,
        Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => {
            struct Count(usize);
            impl std::io::Write for Count {
                fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                    self.0 += b.len();
                    Ok(b.len())
                }
                fn flush(&mut self) -> std::io::Result<()> {
                    Ok(())
                }
            }
            let mut c = Count(0);
            // Writing to a counter cannot fail, and a number always serialises.
            let _ = serde_json::to_writer(&mut c, n);
            c.0
        }
        Value::String(s) => str_len(s),
        // Brackets, and a comma between elements.
        Value::Array(a) => 2 + a.len().saturating_sub(1) + a.iter().map(value_len).sum::<usize>(),
        // Braces, a colon per entry, and a comma between entries.
        Value::Object(m) => {
            2 + m.len()
                + m.len().saturating_sub(1)
                + m.iter()
                    .map(|(k, v)| str_len(k) + value_len(v))
                    .sum::<usize>()
        }
    }
}

/// Append `v` as compact JSON, byte for byte what `serde_json` writes. Strings, most of a
/// result's bytes, are written by [`write_str`] (copied whole, or in runs between
/// the bytes to escape, instead of through `serde_json`'s byte-at-a-time loop: 4% of the
/// broker's samples at 16 sessions for a 4 KiB text result); numbers by `serde_json`.
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Writing to a Vec cannot fail, and a number always serialises.
        Value::Number(n) => {
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, e);
            }
            out.push(b']');
        }
        Value::Object(m) => {
            out.push(b'{');
            for (i, (k, e)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_value(out, e);
            }
            out.push(b'}');
        }
    }
}

/// Whether a JSON string must escape byte `c`: `"`, `\` and the control characters.
fn special(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\'
}

/// How many bytes of `b` [`special`] selects, counted in chunks of up to 64 into a u8, which
/// the compiler vectorises (about 140 ns for 4 KiB here, against 1.35 µs for a
/// byte-at-a-time count): the quick test that a string has nothing to escape.
fn specials(b: &[u8]) -> usize {
    b.chunks(64)
        .map(|ch| usize::from(ch.iter().map(|&c| u8::from(special(c))).sum::<u8>()))
        .sum()
}

/// The bytes of the 8-byte little-endian word `x` that [`special`] selects, as the top bit of
/// each (SWAR: a byte is zero exactly when `!(((y & 0x7f) + 0x7f) | y | 0x7f)` has its top bit
/// set, with no carry between bytes; `c < 0x20` is `c & 0xe0 == 0`).
fn special_word(x: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let zero = |y: u64| !(((y & LOW7).wrapping_add(LOW7)) | y | LOW7);
    zero(x & 0xe0e0_e0e0_e0e0_e0e0)
        | zero(x ^ 0x2222_2222_2222_2222)
        | zero(x ^ 0x5c5c_5c5c_5c5c_5c5c)
}

/// Call `f` with the position in `b` of each byte that [`special`] selects, in order: 8 bytes
/// at a time ([`special_word`]), then the tail.
fn for_each_special(b: &[u8], mut f: impl FnMut(usize)) {
    let words = b.chunks_exact(8);
    let tail_at = b.len() - words.remainder().len();
    for (k, w) in words.enumerate() {
        let Ok(w) = <[u8; 8]>::try_from(w) else {
            continue;
        };
        let mut m = special_word(u64::from_le_bytes(w));
        while m != 0 {
            f(k * 8 + (m.trailing_zeros() / 8) as usize);
            m &= m - 1;
        }
    }
    for (i, &c) in b.iter().enumerate().skip(tail_at) {
        if special(c) {
            f(i);
        }
    }
}

/// The letter of the two-byte escape `serde_json` writes for byte `c` (`\"`, `\\`, `\b`, `\f`,
/// `\n`, `\r`, `\t`), if it has one; the other control characters are written `\u00XX`.
fn short_escape(c: u8) -> Option<u8> {
    match c {
        b'"' => Some(b'"'),
        b'\\' => Some(b'\\'),
        0x08 => Some(b'b'),
        0x0c => Some(b'f'),
        b'\n' => Some(b'n'),
        b'\r' => Some(b'r'),
        b'\t' => Some(b't'),
        _ => None,
    }
}

/// Lower-case hex digits, by value (the `\u00XX` escapes here, the records' hashes and ids).
pub(crate) const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The escape `serde_json` writes for byte `c` of a string, one that [`special`] selects: a
/// [`short_escape`], or `\u00XX` (lower-case hex) for the other control characters.
fn write_escape(out: &mut Vec<u8>, c: u8) {
    if let Some(e) = short_escape(c) {
        out.extend_from_slice(&[b'\\', e]);
    } else {
        let hex = |n: u8| HEX_DIGITS[usize::from(n & 0xf)];
        out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex(c >> 4), hex(c)]);
    }
}

/// The length of `s` as a JSON string, quotes included, escaped as [`write_str`] escapes it:
/// a short escape takes 2 bytes, a `\u00XX` 6.
pub fn str_len(s: &str) -> usize {
    let b = s.as_bytes();
    if specials(b) == 0 {
        return b.len() + 2;
    }
    let mut n = b.len() + 2;
    for_each_special(b, |i| n += short_escape(b[i]).map_or(5, |_| 1));
    n
}

/// Append `s` as a JSON string, quoted, byte for byte what `serde_json` writes: copied in runs
/// between the bytes to escape. Only ASCII bytes are ever escaped, so the runs never split a
/// character.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    if specials(b) == 0 {
        out.extend_from_slice(b);
    } else {
        // `b[from..]` is not written yet.
        let mut from = 0;
        for_each_special(b, |i| {
            out.extend_from_slice(&b[from..i]);
            write_escape(out, b[i]);
            from = i + 1;
        });
        out.extend_from_slice(&b[from..]);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn same_as_serde_json(s: &str) {
        let want = serde_json::to_string(s).unwrap();
        let mut got = Vec::new();
        write_str(&mut got, s);
        assert_eq!(String::from_utf8(got).unwrap(), want, "{s:?}");
        assert_eq!(str_len(s), want.len(), "{s:?}");
    }

    fn same_value_as_serde_json(v: &Value) {
        let mut out = Vec::new();
        write_value(&mut out, v);
        assert_eq!(String::from_utf8(out).unwrap(), v.to_string(), "{v}");
        assert_eq!(value_len(v), v.to_string().len(), "{v}");
    }

    /// Values of every kind, nested, with escapes in keys and strings, and numbers at the
    /// edges of their types.
    #[test]
    fn values_are_written_and_measured_as_serde_json_writes_them() {
        for v in [
            json!(null),
            json!({"a": [1, 2.5, "x\u{e9}\"\n"], "b": {"c": true}}),
            json!("\u{1F600} and \u{0001}"),
            json!({"content": [{"type": "text", "text": "x".repeat(5000)}]}),
            json!([]),
            json!({}),
            json!([
                {},
                [],
                [null, false, true],
                -0.0,
                1e300,
                -12,
                u64::MAX,
                i64::MIN
            ]),
            json!({"\u{7f}\u{0}\u{1f}\u{8}\u{c}\r\t\\/": {"k\"": "\u{2028}\u{ffff}"}}),
        ] {
            same_value_as_serde_json(&v);
        }
        // Every ASCII character as a key and as a value.
        for c in (0u8..0x80).map(char::from) {
            same_value_as_serde_json(&json!({c.to_string(): format!("a{c}b")}));
        }
    }

    /// Every byte value a string can hold, alone and in company.
    #[test]
    fn every_character_is_escaped_as_serde_json_escapes_it() {
        for c in (0u32..0x80).chain([0xe9, 0x2028, 0xffff, 0x1f600]) {
            let c = char::from_u32(c).unwrap();
            same_as_serde_json(&c.to_string());
            same_as_serde_json(&format!("a{c}b{c}{c}"));
        }
        same_as_serde_json("");
    }

    /// Strings are counted 64 bytes at a time and searched 8 at a time: escapes and
    /// multi-byte characters at and across every such boundary come out as `serde_json`
    /// writes them.
    #[test]
    fn strings_are_written_as_serde_json_writes_them_across_chunks() {
        let mut n = 0;
        for len in [0usize, 1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 200, 4096] {
            for at in [0usize, 1, 7, 8, 62, 63, 64, 65, 126, 127, 128, 199, 4095] {
                if at > len {
                    continue;
                }
                for ins in [
                    "\"",
                    "\\",
                    "\n",
                    "\u{1}",
                    "\u{1f}",
                    "\u{7f}",
                    "\u{e9}",
                    "\u{20ac}",
                    "\u{1f600}",
                ] {
                    let mut s = "a".repeat(len);
                    s.insert_str(at, ins);
                    same_as_serde_json(&s);
                    n += 1;
                }
            }
        }
        // Every chunk holding escapes, and a string of nothing else.
        same_as_serde_json(&"\"\n\u{0}".repeat(100));
        assert!(n > 700, "{n} cases");
    }

    /// Appending keeps what the buffer held.
    #[test]
    fn appends() {
        let mut out = b"x:".to_vec();
        write_str(&mut out, "a\"b");
        write_str(&mut out, "c");
        assert_eq!(out, b"x:\"a\\\"b\"\"c\"");
    }
}
