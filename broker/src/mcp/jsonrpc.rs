//! JSON-RPC 2.0 framing for MCP: classify one incoming message, build responses.
//! Sans-IO: text in, values out. Every client message is hostile input.
#![forbid(unsafe_code)]

use serde_json::{json, Map, Value};

pub use crate::mcp::protocol::{
    INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR,
};

/// A request id: string or integer (MCP forbids null).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Id {
    /// numeric id
    Num(i64),
    /// string id
    Str(String),
}

impl Id {
    /// As JSON.
    pub fn to_value(&self) -> Value {
        match self {
            Id::Num(n) => json!(n),
            Id::Str(s) => json!(s),
        }
    }
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::String(s) if s.len() <= MAX_ID_LEN => Some(Id::Str(s.clone())),
            Value::Number(n) => n.as_i64().map(Id::Num),
            _ => None,
        }
    }
}

/// Longest string request id accepted.
pub const MAX_ID_LEN: usize = 256;
/// Longest method name accepted.
pub const MAX_METHOD_LEN: usize = 128;

/// One classified incoming message.
#[derive(Debug)]
pub enum Incoming {
    /// A request that expects a response.
    Request {
        /// id
        id: Id,
        /// method
        method: String,
        /// params object (empty if absent)
        params: Map<String, Value>,
    },
    /// A notification (never answered).
    Notification {
        /// method
        method: String,
        /// params object (empty if absent)
        params: Map<String, Value>,
    },
    /// A response to a request the server sent.
    Response {
        /// Its id (`None` if not a usable id: it then matches nothing).
        id: Option<Id>,
        /// The result, or the error object.
        outcome: Result<Value, Value>,
    },
    /// Invalid: answer with this error (id if one could be recovered, else null).
    Invalid {
        /// id to echo
        id: Value,
        /// JSON-RPC code
        code: i64,
        /// message
        message: String,
    },
}

impl Incoming {
    /// A message the transport could not even read (oversized, not UTF-8): answered with this
    /// error under a null id.
    pub fn unreadable(code: i64, message: &str) -> Self {
        invalid(Value::Null, code, message)
    }
}

/// Classify one message's text.
pub fn classify(text: &str) -> Incoming {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return invalid(Value::Null, PARSE_ERROR, "Parse error: invalid JSON"),
    };
    let obj = match v {
        Value::Object(o) => o,
        Value::Array(_) => {
            return invalid(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: batches are not supported",
            )
        }
        _ => {
            return invalid(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: expected a JSON object",
            )
        }
    };
    let raw_id = obj.get("id").cloned();
    let echo = raw_id
        .as_ref()
        .and_then(Id::from_value)
        .map_or(Value::Null, |i| i.to_value());
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(
            echo,
            INVALID_REQUEST,
            "Invalid Request: jsonrpc must be \"2.0\"",
        );
    }
    let method = match obj.get("method") {
        None => {
            if obj.contains_key("result") || obj.contains_key("error") {
                let id = raw_id.as_ref().and_then(Id::from_value);
                let outcome = match (obj.get("result"), obj.get("error")) {
                    (Some(r), None) => Ok(r.clone()),
                    (_, Some(e)) => Err(e.clone()),
                    (None, None) => Err(Value::Null),
                };
                return Incoming::Response { id, outcome };
            }
            return invalid(echo, INVALID_REQUEST, "Invalid Request: missing method");
        }
        Some(Value::String(m)) if !m.is_empty() && m.len() <= MAX_METHOD_LEN => m.clone(),
        Some(_) => {
            return invalid(
                echo,
                INVALID_REQUEST,
                "Invalid Request: method must be a non-empty string",
            )
        }
    };
    let params = match obj.get("params") {
        None => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => {
            return match raw_id {
                Some(_) => invalid(
                    echo,
                    INVALID_PARAMS,
                    "Invalid params: params must be an object",
                ),
                None => Incoming::Notification {
                    method,
                    params: Map::new(),
                },
            }
        }
    };
    match raw_id {
        None => Incoming::Notification { method, params },
        Some(v) => match Id::from_value(&v) {
            Some(id) => Incoming::Request { id, method, params },
            None => invalid(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: id must be a string or an integer",
            ),
        },
    }
}

fn invalid(id: Value, code: i64, message: &str) -> Incoming {
    Incoming::Invalid {
        id,
        code,
        message: message.to_string(),
    }
}

/// A success response.
pub fn response(id: &Id, result: Value) -> Value {
    // Built from the parts, not with `json!`, which would copy the result (deeply).
    let mut m = Map::with_capacity(3);
    m.insert("jsonrpc".into(), Value::from("2.0"));
    m.insert("id".into(), id.to_value());
    m.insert("result".into(), result);
    Value::Object(m)
}

/// An error response.
pub fn error(id: Value, code: i64, message: &str) -> Value {
    crate::mcp::protocol::RpcError::new(code, message).to_response(id)
}

/// A notification.
pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

/// The length of `v` serialised as compact JSON (what `v.to_string().len()` gives), counted
/// without building the string: size checks and the audit's `result_bytes` run on every call.
/// Strings (most of a result's bytes) are measured by one pass over their bytes, without going
/// through a serializer; numbers, which `serde_json` formats, are formatted to count them.
pub fn json_len(v: &Value) -> usize {
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
        Value::String(s) => json_str_len(s),
        // Brackets, and a comma between elements.
        Value::Array(a) => 2 + a.len().saturating_sub(1) + a.iter().map(json_len).sum::<usize>(),
        // Braces, a colon per entry, and a comma between entries.
        Value::Object(m) => {
            2 + m.len()
                + m.len().saturating_sub(1)
                + m.iter()
                    .map(|(k, v)| json_str_len(k) + json_len(v))
                    .sum::<usize>()
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

/// The escape `serde_json` writes for byte `c` of a string, one that [`special`] selects: a
/// [`short_escape`], or `\u00XX` (lower-case hex) for the other control characters.
fn write_escape(out: &mut Vec<u8>, c: u8) {
    if let Some(e) = short_escape(c) {
        out.extend_from_slice(&[b'\\', e]);
    } else {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let hex = |n: u8| HEX[usize::from(n & 0xf)];
        out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex(c >> 4), hex(c)]);
    }
}

/// The length of `s` as a JSON string, quotes included, escaped as `serde_json` escapes it
/// ([`write_escape`]): a short escape takes 2 bytes, a `\u00XX` 6.
fn json_str_len(s: &str) -> usize {
    let b = s.as_bytes();
    if specials(b) == 0 {
        return b.len() + 2;
    }
    let mut n = b.len() + 2;
    for_each_special(b, |i| n += short_escape(b[i]).map_or(5, |_| 1));
    n
}

/// `v` serialised as compact JSON, into a buffer sized for it up front (no regrowing while a
/// large result is written). The same bytes as `v.to_string()`, written by [`write_json`].
pub fn to_json_bytes(v: &Value) -> Vec<u8> {
    // (A little over the hint: room for escapes and a stdio line's newline.)
    let mut out = Vec::with_capacity(size_hint(v) + 64);
    write_json(&mut out, v);
    out
}

/// Append `v` as compact JSON, byte for byte what `serde_json` writes. Strings, most of a
/// result's bytes, are copied whole when a vectorised count finds nothing to escape in them
/// ([`specials`]), otherwise in runs between the bytes to escape, found 8 at a time
/// ([`for_each_special`]), instead of through `serde_json`'s byte-at-a-time loop (4% of the
/// broker's samples at 16 sessions for a 4 KiB text result); numbers are written by
/// `serde_json`.
pub fn write_json(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Writing to a Vec cannot fail, and a number always serialises.
        Value::Number(n) => {
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => write_json_str(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, e);
            }
            out.push(b']');
        }
        Value::Object(m) => {
            out.push(b'{');
            for (i, (k, e)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_str(out, k);
                out.push(b':');
                write_json(out, e);
            }
            out.push(b'}');
        }
    }
}

/// Append `s` as a JSON string (see [`write_json`]): copied in runs between the bytes to
/// escape. Only ASCII bytes are ever escaped, so the runs never split a character.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
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

/// About the serialised length of `v` (escapes not counted, numbers guessed): cheap, for
/// sizing buffers.
fn size_hint(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 20,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.len() + a.iter().map(size_hint).sum::<usize>(),
        Value::Object(m) => {
            2 + m
                .iter()
                .map(|(k, v)| k.len() + 4 + size_hint(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn code(i: Incoming) -> i64 {
        match i {
            Incoming::Invalid { code, .. } => code,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn classification() {
        assert_eq!(code(classify("{nope")), PARSE_ERROR);
        assert_eq!(code(classify("[1,2]")), INVALID_REQUEST);
        assert_eq!(code(classify("42")), INVALID_REQUEST);
        assert_eq!(
            code(classify(r#"{"id":1,"method":"ping"}"#)),
            INVALID_REQUEST
        );
        assert_eq!(
            code(classify(r#"{"jsonrpc":"2.0","id":1,"method":7}"#)),
            INVALID_REQUEST
        );
        assert_eq!(
            code(classify(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#)),
            INVALID_REQUEST
        );
        assert_eq!(
            code(classify(
                r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#
            )),
            INVALID_PARAMS
        );
        assert!(matches!(
            classify(r#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#),
            Incoming::Request { id: Id::Str(_), .. }
        ));
        assert!(matches!(
            classify(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Incoming::Notification { .. }
        ));
        assert!(matches!(
            classify(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#),
            Incoming::Response {
                id: Some(Id::Num(3)),
                outcome: Ok(_)
            }
        ));
        match classify(r#"{"jsonrpc":"1.0","id":5,"method":"ping"}"#) {
            Incoming::Invalid { id, .. } => assert_eq!(id, json!(5)),
            _ => panic!(),
        }
    }

    #[test]
    fn json_len_is_the_serialised_length() {
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
            assert_eq!(json_len(&v), v.to_string().len(), "{v}");
            assert_eq!(to_json_bytes(&v), v.to_string().into_bytes(), "{v}");
        }
        // Every byte value a string can hold, alone and in company.
        for c in (0u32..0x80).chain([0xe9, 0x2028, 0x1f600]) {
            let c = char::from_u32(c).unwrap();
            for s in [c.to_string(), format!("a{c}b{c}{c}")] {
                let v = Value::String(s);
                assert_eq!(json_len(&v), v.to_string().len(), "{v}");
                assert_eq!(to_json_bytes(&v), v.to_string().into_bytes(), "{v}");
                let v = json!({v.as_str().unwrap(): v.clone()});
                assert_eq!(json_len(&v), v.to_string().len(), "{v}");
                assert_eq!(to_json_bytes(&v), v.to_string().into_bytes(), "{v}");
            }
        }
    }

    /// Strings are counted 64 bytes at a time and searched 8 at a time: escapes and
    /// multi-byte characters at and across every such boundary come out as `serde_json`
    /// writes them.
    #[test]
    fn strings_are_written_as_serde_json_writes_them_across_chunks() {
        let mut n = 0;
        for len in [0usize, 1, 63, 64, 65, 127, 128, 129, 200, 4096] {
            for at in [0usize, 1, 62, 63, 64, 65, 126, 127, 128, 199, 4095] {
                for ins in [
                    "\"",
                    "\\",
                    "\n",
                    "\u{1}",
                    "\u{1f}",
                    "\u{e9}",
                    "\u{20ac}",
                    "\u{1f600}",
                ] {
                    if at > len {
                        continue;
                    }
                    let mut s = "a".repeat(len);
                    s.insert_str(at, ins);
                    let v = Value::String(s);
                    assert_eq!(to_json_bytes(&v), v.to_string().into_bytes(), "{v}");
                    assert_eq!(json_len(&v), v.to_string().len(), "{v}");
                    n += 1;
                }
            }
        }
        // Every chunk holding escapes, and a string of nothing else.
        let v = Value::String("\"\n\u{0}".repeat(100));
        assert_eq!(to_json_bytes(&v), v.to_string().into_bytes());
        assert_eq!(json_len(&v), v.to_string().len());
        assert!(n > 500, "{n} cases");
    }
}
