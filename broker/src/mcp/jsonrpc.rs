//! JSON-RPC 2.0 framing for MCP: classify one incoming message, build responses.
//! Sans-IO: text in, values out. Every client message is hostile input.
#![forbid(unsafe_code)]

use serde_json::{json, Map, Value};

/// How every JSON answer is written and measured: byte for byte what `serde_json` writes,
/// with strings copied in runs instead of byte by byte (shared with the audit records).
pub use mcpd_audit::json::{value_len as json_len, write_value as write_json};

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

/// `v` serialised as compact JSON, into a buffer sized for it up front (no regrowing while a
/// large result is written). The same bytes as `v.to_string()`, written by [`write_json`].
pub fn to_json_bytes(v: &Value) -> Vec<u8> {
    // (A little over the hint: room for escapes and a stdio line's newline.)
    let mut out = Vec::with_capacity(size_hint(v) + 64);
    write_json(&mut out, v);
    out
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

    /// Answers are written into a buffer sized from a guess: what comes out is still exactly
    /// `serde_json`'s (the writer and the measure themselves are tested in `mcpd_audit::json`).
    #[test]
    fn to_json_bytes_is_what_serde_json_writes() {
        for v in [
            json!(null),
            json!({"content": [{"type": "text", "text": "x\n".repeat(5000)}]}),
            json!([1, -2.5, u64::MAX, i64::MIN, "\u{1}\u{e9}"]),
            json!({"k\"": {"\u{2028}": []}}),
        ] {
            assert_eq!(to_json_bytes(&v), v.to_string().into_bytes(), "{v}");
            assert_eq!(json_len(&v), v.to_string().len(), "{v}");
        }
    }
}
