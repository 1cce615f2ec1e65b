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

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::gate::{header_str, json_response};
use super::post::{answer, invalid, streams, Era};
use super::sessions::Busy;
use super::{App, VERSION_HEADER};
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
    peer: SocketAddr,
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

/// Check the `Mcp-Param-<Name>` headers of string arguments whose schema says
/// `"x-mcp-header": "<Name>"`: present and equal whenever the argument is. `Err(header)`.
pub(crate) fn check_param_headers(
    schema: &Value,
    args: Option<&Map<String, Value>>,
    headers: &HeaderMap,
) -> Result<(), String> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Ok(());
    };
    for (prop, def) in props.iter().take(256) {
        let Some(hname) = def.get("x-mcp-header").and_then(Value::as_str) else {
            continue;
        };
        let Some(arg) = args.and_then(|a| a.get(prop)).and_then(Value::as_str) else {
            continue;
        };
        let header = format!("mcp-param-{}", hname.to_ascii_lowercase());
        let got = header_str(headers, &header).map(str::trim);
        match got.map(param_header_value) {
            Some(Ok(v)) if v == arg => {}
            _ => return Err(format!("Mcp-Param-{hname}")),
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
    fn stateless_error_codes_map_to_statuses() {
        let st = |code: i64| stateless_status(&jsonrpc::error(Value::Null, code, "x"));
        assert_eq!(st(METHOD_NOT_FOUND), StatusCode::NOT_FOUND);
        assert_eq!(st(HEADER_MISMATCH), StatusCode::BAD_REQUEST);
        assert_eq!(st(UNSUPPORTED_VERSION), StatusCode::BAD_REQUEST);
        assert_eq!(st(crate::mcp::protocol::INTERNAL_ERROR), StatusCode::OK);
        assert_eq!(stateless_status(&json!({"result": {}})), StatusCode::OK);
    }
}
