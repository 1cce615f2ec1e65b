//! `POST`: one JSON-RPC message in, its answer out.
//!
//! The body is bounded, decoded as UTF-8 and classified exactly once
//! ([`crate::mcp::jsonrpc::classify`]); every decision is taken from that [`Incoming`]: an
//! invalid message (parse error, batch, bad envelope) is a 400 with its JSON-RPC error; a
//! stateless-era message (its `_meta` or `server/discover`, or the version header) goes to
//! [`super::stateless`]; `initialize` without a session opens one; a notification or a client
//! response is handed to the session and gets 202; a request is handed to the session and
//! answered by [`answer`] — one JSON body, or an SSE stream for `tools/call` and
//! `subscriptions/listen` when the client accepts it. The same `Incoming` value goes to
//! `Session::handle`.
//!
//! Does not validate methods or params (the session engine does) nor authenticate (the
//! principal is given). Trusts nothing in the body or the headers.
#![forbid(unsafe_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::gate::{
    accepts, engine_answer, header_str, json_content, json_response, quota_refused, read_body,
    rpc_error, scope_denied, stateless_version_header, version_ok,
};
use super::routes::is_response;
use super::sessions::{end_session, Busy, HttpSession, PendingRequest, SessionKey};
use super::sse::{request_stream, resumable_stream};
use super::stateless::{self, stateless_status};
use super::{App, Peer, SESSION_HEADER};
use crate::auth::Principal;
use crate::mcp::jsonrpc::{self, Id, Incoming, INVALID_REQUEST, PARSE_ERROR};
use crate::mcp::protocol::SUPPORTED_VERSIONS;
use crate::mcp::stateless::is_stateless;

/// Which kind of session a request runs on.
pub(super) enum Era {
    /// An existing session-era session.
    Session,
    /// A session this `initialize` opened: entered in the table under `key` if it succeeds.
    Created {
        /// The session's key.
        key: SessionKey,
        /// Its peer, for the log.
        peer: Peer,
    },
    /// The principal's stateless-era session.
    Stateless,
}

/// Methods answered on an SSE stream when the client accepts one.
/// How long a session-era call that may stream waits for its first message before it opens
/// its SSE stream: a response within it is sent as plain JSON.
pub(super) const JSON_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);

pub(super) fn streams(method: &str) -> bool {
    matches!(method, "tools/call" | "subscriptions/listen")
}

/// The answer to an invalid message: its JSON-RPC error (under its id if one could be
/// recovered), 400.
pub(super) fn invalid(id: &Value, code: i64, message: &str) -> Response {
    rpc_error(StatusCode::BAD_REQUEST, id.clone(), code, message)
}

fn id_of(incoming: &Incoming) -> Value {
    match incoming {
        Incoming::Request { id, .. } | Incoming::Response { id: Some(id), .. } => id.to_value(),
        Incoming::Invalid { id, .. } => id.clone(),
        _ => Value::Null,
    }
}

pub(super) async fn post(
    app: Arc<App>,
    peer: &Peer,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = json_content(&headers) {
        return r;
    }
    let (json_ok, sse_ok) = accepts(&headers);
    if !json_ok && !sse_ok {
        return rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            Value::Null,
            INVALID_REQUEST,
            "Not Acceptable: accept application/json and text/event-stream",
        );
    }
    let bytes = match read_body(app.max_body, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // The one classification of the message: every decision below is taken from it.
    let incoming = match std::str::from_utf8(&bytes) {
        Ok(text) => jsonrpc::classify(text),
        Err(_) => Incoming::unreadable(PARSE_ERROR, "Parse error: body is not valid UTF-8"),
    };
    if let Incoming::Invalid { id, code, message } = &incoming {
        return invalid(id, *code, message);
    }
    let stateless_body = match &incoming {
        Incoming::Request { method, params, .. } | Incoming::Notification { method, params } => {
            is_stateless(method, params)
        }
        _ => false,
    };
    if header_str(&headers, SESSION_HEADER).is_none()
        && (stateless_body || stateless_version_header(&headers))
    {
        return stateless::post(&app, peer, &principal, &headers, incoming, sse_ok).await;
    }
    if !version_ok(&headers) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            INVALID_REQUEST,
            &format!(
                "Bad Request: unsupported MCP-Protocol-Version (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        );
    }
    let existing = match app.lookup(&principal, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let initialize =
        matches!(&incoming, Incoming::Request { method, .. } if method == "initialize");
    let (hs, era) = match existing {
        Some(s) => (s, Era::Session),
        None if initialize => match app.new_session(peer, &principal).await {
            Ok(s) => {
                let key = SessionKey::new(&principal, s.session.id());
                (
                    s,
                    Era::Created {
                        key,
                        peer: peer.clone(),
                    },
                )
            }
            Err(r) => return r,
        },
        None => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                id_of(&incoming),
                INVALID_REQUEST,
                "Bad Request: Mcp-Session-Id header is required (send initialize first)",
            )
        }
    };
    let busy = Busy::new(&hs);
    match &incoming {
        Incoming::Request { id, method, params } => {
            let (id, mut streaming) = (id.clone(), sse_ok && streams(method));
            if streaming && method == "tools/call" && principal.scopes.is_some() {
                // A call the token's scopes do not cover is answered 403, not on a stream.
                if let Some(name) = params.get("name").and_then(Value::as_str) {
                    streaming = hs.session.call_scope_missing(name).await.is_none();
                }
            }
            answer(&app, hs, busy, id, streaming, incoming, era).await
        }
        _ => {
            // A notification, or the client's answer to a server request: no response body.
            hs.session.handle(incoming);
            drop(busy);
            StatusCode::ACCEPTED.into_response()
        }
    }
}

/// Run the request `incoming` (whose id is `id`) on a session and answer it: one JSON body, or
/// (`streaming`) an SSE stream of its notifications and then its response.
pub(super) async fn answer(
    app: &Arc<App>,
    hs: Arc<HttpSession>,
    busy: Busy,
    id: Id,
    streaming: bool,
    incoming: Incoming,
    era: Era,
) -> Response {
    let Some(mut rx) = hs.routes.open(&id) else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            id.to_value(),
            INVALID_REQUEST,
            "Invalid Request: a request with this id is already in progress",
        );
    };
    let mut pending = PendingRequest::new(&hs, id);
    hs.session.handle(incoming);
    if !streaming {
        // One JSON response; notifications of this request (none for these methods, or the
        // client refused SSE) go to the GET stream if there is one.
        let response = loop {
            match rx.recv().await {
                Some(m) if is_response(&m) => break Some(m),
                Some(m) => hs.routes.to_standalone(m),
                None => break None,
            }
        };
        pending.answer();
        drop(pending);
        let Some(response) = response else {
            // Cancelled: no JSON-RPC response exists.
            return StatusCode::ACCEPTED.into_response();
        };
        if let Some(r) =
            scope_denied(&app.policy.get(), &response).or_else(|| quota_refused(&response))
        {
            drop(busy);
            return r;
        }
        let sid = hs.session.id().to_string();
        match era {
            Era::Stateless => {
                drop(busy);
                return engine_answer(stateless_status(&response), &response);
            }
            Era::Created { key, peer } => {
                if !hs.session.is_initialized() {
                    drop(busy);
                    tokio::spawn(end_session(hs, "initialize failed; session discarded"));
                    return json_response(StatusCode::OK, &response);
                }
                app.sessions.insert(key, hs.clone());
                tracing::info!(session = %sid, %peer, "http session open");
            }
            Era::Session => {}
        }
        let mut r = json_response(StatusCode::OK, &response);
        if let Ok(v) = HeaderValue::from_str(&sid) {
            r.headers_mut().insert(SESSION_HEADER, v);
        }
        return r;
    }
    if !matches!(era, Era::Stateless) {
        // A call answered at once needs no stream: its response goes as one JSON body (no
        // relay task, no replay, no SSE framing). One that reports progress, asks the client
        // something, or takes longer than [`JSON_WINDOW`] gets its SSE stream (resumable
        // from then on).
        return match tokio::time::timeout(JSON_WINDOW, rx.recv()).await {
            Ok(Some(m)) if is_response(&m) => {
                pending.answer();
                drop(pending);
                drop(busy);
                scope_denied(&app.policy.get(), &m)
                    .or_else(|| quota_refused(&m))
                    .unwrap_or_else(|| json_response(StatusCode::OK, &m))
            }
            Ok(Some(m)) => resumable_stream(hs, rx, pending, busy, Some(m)),
            Ok(None) => {
                // Cancelled: no JSON-RPC response exists.
                pending.answered = true;
                StatusCode::ACCEPTED.into_response()
            }
            Err(_) => resumable_stream(hs, rx, pending, busy, None),
        };
    }
    // Stateless era: an error decided before any notification (missing capability, bad
    // arguments) is a plain JSON answer with its HTTP status, not a 200 stream.
    match rx.recv().await {
        Some(m) if is_response(&m) => {
            pending.answered = true;
            drop(pending);
            drop(busy);
            scope_denied(&app.policy.get(), &m)
                .or_else(|| quota_refused(&m))
                .unwrap_or_else(|| engine_answer(stateless_status(&m), &m))
        }
        Some(m) => request_stream(hs, rx, pending, busy, Some(m)),
        None => {
            pending.answered = true;
            StatusCode::ACCEPTED.into_response()
        }
    }
}
