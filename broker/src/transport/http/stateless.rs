//! A stateless-era (2026-07-28) POST: the envelope and the headers that mirror it are checked
//! in the order the specification fixes — `_meta` keys (-32602), `MCP-Protocol-Version` =
//! `_meta` version (-32020), a supported version (-32022), `Mcp-Method`, `Mcp-Name`,
//! `Mcp-Param-*` for `x-mcp-header` arguments (-32020) — then the message runs on the
//! principal's stateless session, and error codes map to HTTP statuses.
//!
//! Works on the message as classified once by `post` (never re-parses the body); does not
//! validate what the session engine validates (methods, capabilities, arguments). Trusts
//! nothing in the headers or the envelope.
#![forbid(unsafe_code)]

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::gate::{header_str, json_response};
use super::post::{answer, invalid, streams, Era};
use super::sessions::Busy;
use super::{App, Peer, VERSION_HEADER};
use crate::auth::Principal;
use crate::mcp::jsonrpc::{self, Id, Incoming, INVALID_PARAMS, METHOD_NOT_FOUND};
use crate::mcp::protocol::{
    HEADER_MISMATCH, META_CAPS, META_VERSION, MISSING_CAPABILITY, UNSUPPORTED_VERSION,
};
use crate::mcp::stateless::stateless_meta;

/// Status of a stateless-era error response (the spec maps codes to HTTP statuses).
pub(super) fn stateless_status(response: &Value) -> StatusCode {
    match response["error"]["code"].as_i64() {
        Some(METHOD_NOT_FOUND) => StatusCode::NOT_FOUND,
        Some(INVALID_PARAMS | HEADER_MISMATCH | MISSING_CAPABILITY | UNSUPPORTED_VERSION) => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::OK,
    }
}

fn stateless_error(id: Value, code: i64, message: &str, data: Value) -> Response {
    let mut e = jsonrpc::error(id, code, message);
    if !data.is_null() {
        e["error"]["data"] = data;
    }
    json_response(stateless_status(&e), &e)
}

fn mismatch(id: Value, message: &str, header: &str) -> Response {
    stateless_error(id, HEADER_MISMATCH, message, json!({ "header": header }))
}

/// The checks of a stateless-era message, then the message itself on the principal's
/// stateless session. `incoming` is never `Invalid` (`post` answers those).
pub(super) async fn post(
    app: &Arc<App>,
    peer: &Peer,
    principal: &Principal,
    headers: &HeaderMap,
    incoming: Incoming,
    sse_ok: bool,
) -> Response {
    let empty = Map::new();
    let (rid, method, params) = match &incoming {
        Incoming::Request { id, method, params } => (id.to_value(), method.as_str(), params),
        Incoming::Notification { method, params } => (Value::Null, method.as_str(), params),
        Incoming::Response { id, .. } => {
            (id.as_ref().map_or(Value::Null, Id::to_value), "", &empty)
        }
        Incoming::Invalid { id, code, message } => return invalid(id, *code, message),
    };
    let meta = params.get("_meta").and_then(Value::as_object);
    // (1) the envelope's required keys
    let meta_version = meta
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str);
    if meta_version.is_none()
        || !meta.is_some_and(|m| m.get(META_CAPS).is_some_and(Value::is_object))
    {
        return stateless_error(
            rid,
            INVALID_PARAMS,
            &format!("Invalid params: _meta must carry {META_VERSION} and {META_CAPS}"),
            Value::Null,
        );
    }
    // (2) the version header must match the envelope
    if header_str(headers, VERSION_HEADER).map(str::trim) != meta_version {
        return mismatch(
            rid,
            "Header mismatch: MCP-Protocol-Version does not match _meta",
            VERSION_HEADER,
        );
    }
    // (3) a version this server speaks
    if let Err(e) = stateless_meta(params) {
        return stateless_error(rid, e.code, &e.message, e.data);
    }
    // (4) Mcp-Method, (5) Mcp-Name
    if header_str(headers, "mcp-method").map(str::trim) != Some(method) {
        return mismatch(
            rid,
            "Header mismatch: Mcp-Method does not match the request method",
            "Mcp-Method",
        );
    }
    let name_key = match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    };
    if let Some(k) = name_key {
        let want = params.get(k).and_then(Value::as_str);
        if want.is_none() || header_str(headers, "mcp-name").map(str::trim) != want {
            return mismatch(
                rid,
                "Header mismatch: Mcp-Name does not match the request",
                "Mcp-Name",
            );
        }
    }
    let hs = match app.stateless_session(peer, principal).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // (6) arguments a tool mirrors into headers (`x-mcp-header`) must match them.
    if method == "tools/call" {
        if let Some(name) = params.get("name").and_then(Value::as_str) {
            if let Some(schema) = hs.session.header_mapped_schema(name).await {
                let args = params.get("arguments").and_then(Value::as_object);
                if let Err(h) = check_param_headers(&schema, args, headers) {
                    return mismatch(
                        rid,
                        "Header mismatch: an Mcp-Param header does not match its argument",
                        &h,
                    );
                }
            }
        }
    }
    let busy = Busy::new(&hs);
    match &incoming {
        Incoming::Request { id, method, .. } => {
            let (id, streaming) = (id.clone(), sse_ok && streams(method));
            answer(app, hs, busy, id, streaming, incoming, Era::Stateless).await
        }
        _ => {
            hs.session.handle(incoming);
            drop(busy);
            StatusCode::ACCEPTED.into_response()
        }
    }
}

/// Decode an `Mcp-Param-*` header value: `=?base64?<standard base64>?=` or a literal.
/// `Err` for a base64 form that does not decode (bad padding, bad characters, not UTF-8).
pub(crate) fn param_header_value(v: &str) -> Result<String, ()> {
    use base64::Engine as _;
    match v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| ())
            .and_then(|b| String::from_utf8(b).map_err(|_| ())),
        None => Ok(v.to_string()),
    }
}

/// Whether a (trimmed, decoded) `Mcp-Param-*` value is the argument it mirrors: a string as it
/// is, a boolean as `true`/`false`, a number compared as a number (`42` and `42.0` are equal;
/// exact for integers, and for floats below 2^53). Nulls, arrays and objects mirror nothing.
fn mirrors(arg: &Value, header: &str) -> bool {
    match arg {
        Value::String(s) => header == s,
        Value::Bool(b) => header == if *b { "true" } else { "false" },
        Value::Number(n) => {
            if let (Some(a), Ok(h)) = (n.as_i64(), header.parse::<i64>()) {
                a == h
            } else if let (Some(a), Ok(h)) = (n.as_u64(), header.parse::<u64>()) {
                a == h
            } else {
                let exact = |f: f64| f.is_finite() && f.abs() < 9_007_199_254_740_992.0;
                match (n.as_f64(), header.parse::<f64>()) {
                    (Some(a), Ok(h)) => exact(a) && exact(h) && a == h,
                    _ => false,
                }
            }
        }
        Value::Null | Value::Array(_) | Value::Object(_) => false,
    }
}

/// Check the `Mcp-Param-<Name>` headers of the arguments whose schema says
/// `"x-mcp-header": "<Name>"`, on a property reached from the root through `properties` only
/// (at any depth, as the specification allows): whenever the argument at that path is a
/// string, a number or a boolean, exactly one such header line must be sent (a repeated one
/// may be read otherwise by a proxy) and its value must mirror the argument ([`mirrors`]).
/// `Err(header)`.
pub(crate) fn check_param_headers(
    schema: &Value,
    args: Option<&Map<String, Value>>,
    headers: &HeaderMap,
) -> Result<(), String> {
    check_param_level(schema, args, headers, 0)
}

/// [`check_param_headers`] on one object of the schema and the arguments at the same path.
/// The depth is bounded by serde_json's own nesting limit (128) for a parsed schema.
fn check_param_level(
    schema: &Value,
    args: Option<&Map<String, Value>>,
    headers: &HeaderMap,
    depth: usize,
) -> Result<(), String> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Ok(());
    };
    for (prop, def) in props.iter().take(256) {
        let arg = args.and_then(|a| a.get(prop));
        if depth < 128 {
            check_param_level(def, arg.and_then(Value::as_object), headers, depth + 1)?;
        }
        let Some(hname) = def.get("x-mcp-header").and_then(Value::as_str) else {
            continue;
        };
        let Some(arg) = arg.filter(|a| a.is_string() || a.is_number() || a.is_boolean()) else {
            continue;
        };
        let header = format!("mcp-param-{}", hname.to_ascii_lowercase());
        let mut lines = headers.get_all(header.as_str()).iter();
        let got = match (lines.next(), lines.next()) {
            (Some(v), None) => v
                .to_str()
                .ok()
                .and_then(|v| param_header_value(v.trim()).ok()),
            _ => None,
        };
        if !got.is_some_and(|v| mirrors(arg, &v)) {
            return Err(format!("Mcp-Param-{hname}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn param_headers_match_their_arguments() {
        let schema = json!({"properties": {"region": {"type": "string", "x-mcp-header": "Region"},
                                           "plain": {"type": "string"}}});
        let args = json!({"region": "eu-west", "plain": "x"});
        let args = args.as_object();
        let mut h = HeaderMap::new();
        assert_eq!(
            check_param_headers(&schema, args, &h),
            Err("Mcp-Param-Region".into())
        );
        h.insert("mcp-param-region", HeaderValue::from_static("eu-west"));
        assert_eq!(check_param_headers(&schema, args, &h), Ok(()));
        // base64 form: "eu-west"
        h.insert(
            "mcp-param-region",
            HeaderValue::from_static("=?base64?ZXUtd2VzdA==?="),
        );
        assert_eq!(check_param_headers(&schema, args, &h), Ok(()));
        h.insert(
            "mcp-param-region",
            HeaderValue::from_static("=?base64?ZXUtd2VzdA?="),
        );
        assert!(
            check_param_headers(&schema, args, &h).is_err(),
            "bad padding"
        );
        // No argument, no header needed.
        assert_eq!(
            check_param_headers(&schema, None, &HeaderMap::new()),
            Ok(())
        );
    }

    #[test]
    fn param_headers_of_integers_and_booleans_are_checked_and_sent_once() {
        // Regression (fuzz target `mcp_param_headers`): only string arguments were checked, so
        // `"flag": false` passed with any `Mcp-Param-Flag`; and of a repeated header line only
        // the first was read.
        let schema = json!({"properties": {
            "count": {"type": "integer", "x-mcp-header": "Count"},
            "flag": {"type": "boolean", "x-mcp-header": "Flag"},
            "region": {"type": "string", "x-mcp-header": "Region"}}});
        let args = json!({"count": 42, "flag": false, "region": "eu-west"});
        let check = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(*n, HeaderValue::from_static(v));
            }
            check_param_headers(&schema, args.as_object(), &h)
        };
        let good = [
            ("mcp-param-count", "42"),
            ("mcp-param-flag", "false"),
            ("mcp-param-region", "eu-west"),
        ];
        assert_eq!(check(&good), Ok(()));
        let with = |n: &'static str, v: &'static str| {
            let mut p: Vec<_> = good.iter().copied().filter(|(g, _)| *g != n).collect();
            p.push((n, v));
            check(&p)
        };
        assert_eq!(
            with("mcp-param-count", "42.0"),
            Ok(()),
            "compared as numbers"
        );
        assert_eq!(with("mcp-param-count", "=?base64?NDI=?="), Ok(()));
        assert_eq!(with("mcp-param-count", "43"), Err("Mcp-Param-Count".into()));
        assert_eq!(
            with("mcp-param-count", "forty-two"),
            Err("Mcp-Param-Count".into())
        );
        assert_eq!(with("mcp-param-flag", "true"), Err("Mcp-Param-Flag".into()));
        assert_eq!(
            with("mcp-param-flag", "False"),
            Err("Mcp-Param-Flag".into())
        );
        let mut twice = good.to_vec();
        twice.push(("mcp-param-region", "us-east"));
        assert_eq!(check(&twice), Err("Mcp-Param-Region".into()));
        twice.pop();
        twice.push(("mcp-param-region", "eu-west"));
        assert_eq!(
            check(&twice),
            Err("Mcp-Param-Region".into()),
            "even the same twice"
        );
        // A null argument mirrors nothing, so needs no header.
        let args = json!({"count": null});
        assert_eq!(
            check_param_headers(&schema, args.as_object(), &HeaderMap::new()),
            Ok(())
        );
    }

    #[test]
    fn param_headers_of_nested_properties_are_checked() {
        // Regression (fuzz target `mcp_param_headers`): only top-level properties were read.
        let schema = json!({"properties": {"target": {"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"}}}}});
        let args = json!({"target": {"region": "eu-west"}});
        let mut h = HeaderMap::new();
        assert_eq!(
            check_param_headers(&schema, args.as_object(), &h),
            Err("Mcp-Param-Region".into())
        );
        h.insert("mcp-param-region", HeaderValue::from_static("us-east"));
        assert_eq!(
            check_param_headers(&schema, args.as_object(), &h),
            Err("Mcp-Param-Region".into())
        );
        h.insert("mcp-param-region", HeaderValue::from_static("eu-west"));
        assert_eq!(check_param_headers(&schema, args.as_object(), &h), Ok(()));
        // No value at the path (no `target`, or not an object): no header needed.
        for args in [json!({}), json!({"target": "eu-west"})] {
            let none = HeaderMap::new();
            assert_eq!(
                check_param_headers(&schema, args.as_object(), &none),
                Ok(())
            );
        }
    }

    #[test]
    fn stateless_error_codes_map_to_statuses() {
        let st = |code: i64| stateless_status(&jsonrpc::error(Value::Null, code, "x"));
        assert_eq!(st(METHOD_NOT_FOUND), StatusCode::NOT_FOUND);
        assert_eq!(st(HEADER_MISMATCH), StatusCode::BAD_REQUEST);
        assert_eq!(st(UNSUPPORTED_VERSION), StatusCode::BAD_REQUEST);
        assert_eq!(st(crate::mcp::protocol::INTERNAL_ERROR), StatusCode::OK);
        assert_eq!(stateless_status(&json!({"result": {}})), StatusCode::OK);
    }
}
