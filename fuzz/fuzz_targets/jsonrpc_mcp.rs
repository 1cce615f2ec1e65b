//! Structure-aware: JSON shaped like MCP (real method names, ids of every kind, params with
//! `_meta` envelopes of both eras, progress tokens, cursors, arguments), serialised and fed to
//! the classifier. Differential: what we built decides what the classifier must say.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcpd::fuzzing::{classify, is_stateless, stateless_meta, Id, Incoming};
use serde_json::{json, Map, Value};

const METHODS: &[&str] = &[
    "initialize",
    "ping",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "completion/complete",
    "elicitation/create",
    "logging/setLevel",
    "prompts/get",
    "prompts/list",
    "resources/list",
    "resources/read",
    "resources/subscribe",
    "resources/templates/list",
    "resources/unsubscribe",
    "roots/list",
    "sampling/createMessage",
    "server/discover",
    "subscriptions/listen",
    "tasks/cancel",
    "tasks/get",
    "tasks/update",
    "tools/call",
    "tools/list",
];

const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPS: &str = "io.modelcontextprotocol/clientCapabilities";
const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
const VERSIONS: &[&str] = &[
    "2026-07-28",
    "2025-11-25",
    "2025-06-18",
    "2025-03-26",
    "",
    "2026-07-29",
];
const LEVELS: &[&str] = &[
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
    "loud",
];

#[derive(Debug, Arbitrary)]
enum IdKind {
    None,
    Num(i64),
    Big(u64),
    Float(f64),
    Str(String),
    Null,
    Bool(bool),
    Array,
}

#[derive(Debug, Arbitrary)]
enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    fn value(self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => json!(b),
            Scalar::Int(i) => json!(i),
            Scalar::Float(f) => json!(f),
            Scalar::Str(s) => json!(s),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Meta {
    version: Option<u8>,
    caps: Option<Option<Vec<(String, Scalar)>>>,
    level: Option<u8>,
    progress_token: Option<Scalar>,
    extra: Vec<(String, Scalar)>,
}

#[derive(Debug, Arbitrary)]
struct Msg {
    jsonrpc_ok: bool,
    method: Result<u8, String>,
    id: IdKind,
    params: Option<Result<Vec<(String, Scalar)>, Scalar>>,
    meta: Option<Meta>,
    name: Option<String>,
    arguments: Option<Vec<(String, Scalar)>>,
    cursor: Option<String>,
    nesting: u8,
}

fn object(kv: Vec<(String, Scalar)>) -> Map<String, Value> {
    kv.into_iter().map(|(k, v)| (k, v.value())).collect()
}

fuzz_target!(|m: Msg| {
    let method = match m.method {
        Ok(i) => METHODS[usize::from(i) % METHODS.len()].to_owned(),
        Err(s) => s,
    };
    let mut o = Map::new();
    o.insert(
        "jsonrpc".into(),
        json!(if m.jsonrpc_ok { "2.0" } else { "1.0" }),
    );
    o.insert("method".into(), json!(method));
    let id = match m.id {
        IdKind::None => None,
        IdKind::Num(n) => Some(json!(n)),
        IdKind::Big(n) => Some(json!(n)),
        IdKind::Float(f) => Some(json!(f)),
        IdKind::Str(s) => Some(json!(s)),
        IdKind::Null => Some(Value::Null),
        IdKind::Bool(b) => Some(json!(b)),
        IdKind::Array => Some(json!([1])),
    };
    if let Some(id) = &id {
        o.insert("id".into(), id.clone());
    }
    let mut params_is_object = true;
    if let Some(p) = m.params {
        let mut pv = match p {
            Ok(kv) => Value::Object(object(kv)),
            Err(s) => {
                params_is_object = false;
                s.value()
            }
        };
        if let Value::Object(po) = &mut pv {
            if let Some(meta) = m.meta {
                let mut mo = object(meta.extra);
                if let Some(v) = meta.version {
                    mo.insert(
                        META_VERSION.into(),
                        json!(VERSIONS[usize::from(v) % VERSIONS.len()]),
                    );
                }
                match meta.caps {
                    Some(Some(kv)) => {
                        mo.insert(META_CAPS.into(), Value::Object(object(kv)));
                    }
                    Some(None) => {
                        mo.insert(META_CAPS.into(), json!("not an object"));
                    }
                    None => {}
                }
                if let Some(l) = meta.level {
                    mo.insert(
                        META_LOG_LEVEL.into(),
                        json!(LEVELS[usize::from(l) % LEVELS.len()]),
                    );
                }
                if let Some(t) = meta.progress_token {
                    mo.insert("progressToken".into(), t.value());
                }
                po.insert("_meta".into(), Value::Object(mo));
            }
            if let Some(n) = m.name {
                po.insert("name".into(), json!(n));
            }
            if let Some(a) = m.arguments {
                let mut args = Value::Object(object(a));
                for _ in 0..(m.nesting % 8) {
                    args = json!({ "nested": [args] });
                }
                po.insert("arguments".into(), args);
            }
            if let Some(c) = m.cursor {
                po.insert("cursor".into(), json!(c));
            }
        }
        o.insert("params".into(), pv);
    }
    let text = serde_json::to_string(&Value::Object(o)).unwrap_or_default();
    let method_ok = !method.is_empty() && method.len() <= 128;
    let id_ok = match &id {
        None => true,
        Some(Value::String(s)) => s.len() <= 256,
        Some(Value::Number(n)) => n.as_i64().is_some(),
        Some(_) => false,
    };
    match classify(&text) {
        Incoming::Request {
            id: got,
            method: gm,
            params,
        } => {
            assert!(
                m.jsonrpc_ok && method_ok && params_is_object && id_ok,
                "{text}"
            );
            assert_eq!(gm, method);
            match (&got, &id) {
                (Id::Num(n), Some(v)) => assert_eq!(v.as_i64(), Some(*n)),
                (Id::Str(s), Some(v)) => assert_eq!(v.as_str(), Some(s.as_str())),
                _ => panic!("request without an id: {text}"),
            }
            if is_stateless(&gm, &params) {
                let _ = stateless_meta(&params);
            }
        }
        Incoming::Notification { method: gm, params } => {
            assert!(m.jsonrpc_ok && method_ok && id.is_none(), "{text}");
            assert_eq!(gm, method);
            let _ = is_stateless(&gm, &params);
        }
        Incoming::Response { .. } => {
            panic!("a message with a method classified as a response: {text}")
        }
        Incoming::Invalid { .. } => {
            assert!(
                !m.jsonrpc_ok || !method_ok || !id_ok || (!params_is_object && id.is_some()),
                "valid message refused: {text}"
            );
        }
    }
});
