//! The checks every HTTP request passes before its message is looked at, and the auditing of
//! the requests they refuse:
//! * [`audit_rejects`] (outermost): every 4xx that no session engine answered is recorded, with
//!   the authenticated principal (or `<unauthenticated>`), before its response leaves; no
//!   record, no answer but a 500 (fail closed).
//! * [`authenticate`]: the [`Principal`] of every request (Credentials: the listener's
//!   transport, the connection's [`Peer`]: socket address, or a Unix peer's uid/gid/pid),
//!   before anything touches a session; a refusal is a 403.
//! * [`gate`]: DNS-rebinding protection: `Host` (and `Origin`, when sent) must name this server
//!   ([`host_allowed`]).
//! * Helpers for the handlers: `Accept` ([`accepts`]), `MCP-Protocol-Version` ([`version_ok`]),
//!   `Content-Type` ([`json_content`]), the body size ([`read_body`]), and the error responses.
//!
//! Does not parse a body (that is `jsonrpc::classify`, called once by `post`) and keeps no
//! state. Trusts the authenticator and the kernel's view of the peer; every header is hostile.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{App, HttpConfig, Listen, Peer, SESSION_HEADER, VERSION_HEADER};
use crate::auth::{AuthError, Credentials, Principal};
use crate::mcp::jsonrpc::{self, INTERNAL_ERROR, INVALID_REQUEST};
// (through `mcp::session`, which re-exports the protocol's versions for the transports)
use crate::mcp::protocol::{STATELESS_VERSIONS, SUPPORTED_VERSIONS};

/// The principal recorded for a request whose authentication failed (or never ran).
pub(super) const UNAUTHENTICATED: &str = "<unauthenticated>";

pub(super) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        jsonrpc::to_json_bytes(body),
    )
        .into_response()
}

pub(super) fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    json_response(status, &jsonrpc::error(id, code, message))
}

/// Marks a response that the session engine produced (its request is audited there): the
/// reject auditor leaves it alone.
#[derive(Debug, Clone, Copy)]
struct EngineAnswer;

/// An engine answer sent with the status the stateless era gives it.
pub(super) fn engine_answer(status: StatusCode, response: &Value) -> Response {
    let mut r = json_response(status, response);
    r.extensions_mut().insert(EngineAnswer);
    r
}

/// The engine's answer to a call its token's scopes do not cover (`INSUFFICIENT_SCOPE`):
/// 403 with `WWW-Authenticate: Bearer error="insufficient_scope", scope=...` (RFC 6750 §3.1),
/// the JSON-RPC error as body. `None` for any other answer. The engine audited the request.
pub(super) fn scope_denied(policy: &mcpd_policy::Policy, response: &Value) -> Option<Response> {
    if response["error"]["code"].as_i64() != Some(crate::mcp::protocol::INSUFFICIENT_SCOPE) {
        return None;
    }
    let scope = response["error"]["data"]["scope"].as_str();
    let mut r = engine_answer(StatusCode::FORBIDDEN, response);
    if let Some(h) = bearer_challenge(policy, Some("insufficient_scope"), scope) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, h);
    }
    Some(r)
}

/// The engine's answer to a request a per-client quota refused (`RATE_LIMITED`): 429 with
/// `Retry-After` from `data.retryAfterSecs`, the JSON-RPC error as body. `None` for any other
/// answer. The engine audited the request (and its `limit.hit`).
pub(super) fn quota_refused(response: &Value) -> Option<Response> {
    if response["error"]["code"].as_i64() != Some(crate::mcp::protocol::RATE_LIMITED) {
        return None;
    }
    let secs = response["error"]["data"]["retryAfterSecs"]
        .as_u64()
        .unwrap_or(1)
        .clamp(1, 3600);
    let mut r = engine_answer(StatusCode::TOO_MANY_REQUESTS, response);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Some(r)
}

/// Every transport-level reject (4xx that no session engine answered: authentication,
/// Host/Origin, media types, sizes, session ids, versions, malformed envelopes, methods) is
/// audited like stdio's rejects, before the response leaves (fail closed: no record, no answer
/// but a 500).
pub(super) async fn audit_rejects(
    State(app): State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    audit_rejects_around(&app, req, |r| next.run(r)).await
}

/// [`audit_rejects`] around `next` (the rest of the chain, as a function: the endpoint's
/// direct path, [`super::Routes`], calls the three layers without the router's middleware).
pub(super) async fn audit_rejects_around<F, Fut>(app: &App, mut req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    // A trusted proxy's request speaks for the client it names, first of all (its record
    // and its limits are the client's).
    let relayed = super::forwarded::relay(app, &mut req);
    let http_method = req.method().to_string();
    let peer_ext = req.extensions().get::<Peer>().cloned();
    let peer = peer_ext.as_ref().map(|p| p.describe().to_string());
    let session = header_str(req.headers(), SESSION_HEADER).is_some();
    let response = match relayed {
        Ok(None) => next(req).await,
        Ok(Some(slot)) => super::forwarded::hold_until_sent(next(req).await, slot),
        Err(refused) => refused,
    };
    if !response.status().is_client_error()
        || response.extensions().get::<EngineAnswer>().is_some()
        || !app.audit.enabled()
    {
        return response;
    }
    let principal = response
        .extensions()
        .get::<Principal>()
        .map_or(UNAUTHENTICATED, |p| p.client.as_str());
    let auth_failed = response.extensions().get::<AuthFailed>().copied();
    let mut f = serde_json::Map::new();
    f.insert("principal".into(), json!(principal));
    f.insert("transport".into(), json!(app.cfg.listen.transport()));
    // An authentication refusal is an `auth.failure` (like a refused handshake), with the
    // authentication method; every other reject a `request` record.
    let event = match auth_failed {
        Some(AuthFailed(method)) => {
            f.insert("method".into(), json!(method));
            f.insert("stage".into(), json!("http-request"));
            // A Unix-socket peer: the kernel's credentials it was refused for.
            if let Some(u) = peer_ext.as_ref().and_then(|p| p.unix) {
                f.insert("uid".into(), json!(u.uid));
                f.insert("gid".into(), json!(u.gid));
                f.insert("pid".into(), json!(u.pid));
            }
            "auth.failure"
        }
        None => {
            f.insert("method".into(), json!("<invalid>"));
            f.insert("outcome".into(), json!("invalid"));
            "request"
        }
    };
    f.insert("http_method".into(), json!(http_method));
    f.insert("http_status".into(), json!(response.status().as_u16()));
    f.insert("with_session_id".into(), json!(session));
    if let Some(p) = peer {
        f.insert("peer".into(), json!(p));
    }
    if let Some(r) = response.extensions().get::<RejectReason>() {
        f.insert("reason".into(), json!(r.0));
    }
    match app.audit.record(event, f).await {
        Ok(()) => response,
        Err(e) => {
            tracing::error!("audit: {e}");
            rpc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                Value::Null,
                INTERNAL_ERROR,
                "The audit log cannot be written; the request was refused",
            )
        }
    }
}

/// The request was refused by the authenticator (the method that refused it), for
/// [`audit_rejects`]: its record is an `auth.failure`.
#[derive(Debug, Clone, Copy)]
pub(super) struct AuthFailed(pub(super) &'static str);

/// Why the transport refused a request (a short code), for [`audit_rejects`]' record.
#[derive(Debug, Clone, Copy)]
pub(super) struct RejectReason(pub(super) &'static str);

/// Whether a query string carries an OAuth access token (`access_token=`, any case): tokens
/// never travel in URLs (they end up in logs and histories).
fn token_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|kv| {
            let name = kv.split('=').next().unwrap_or("");
            name.eq_ignore_ascii_case("access_token") || name.eq_ignore_ascii_case("access%5Ftoken")
        })
    })
}

/// `WWW-Authenticate: Bearer` for this policy's `[auth.jwt]` (RFC 6750, RFC 9728 §5.1):
/// `resource_metadata`, `scope`, and `error` when given.
pub(super) fn bearer_challenge(
    policy: &mcpd_policy::Policy,
    error: Option<&str>,
    scope: Option<&str>,
) -> Option<HeaderValue> {
    let j = policy.jwt()?;
    let mut parts = Vec::new();
    if let Some(e) = error {
        parts.push(format!("error=\"{e}\""));
    }
    let scope = scope.map_or_else(|| j.challenge_scopes().join(" "), str::to_string);
    if !scope.is_empty() {
        parts.push(format!("scope=\"{scope}\""));
    }
    parts.push(format!(
        "resource_metadata=\"{}\"",
        j.resource_metadata_url()
    ));
    HeaderValue::from_str(&format!("Bearer {}", parts.join(", "))).ok()
}

/// Establish the request's [`Principal`] under the policy in force now: handed to the handler
/// as a request extension, and put on the response for [`audit_rejects`]. A peer without one
/// is refused before anything else happens: 401 with a `Bearer` challenge for a missing or
/// refused token, 403 for a peer no client is configured for. A token in the query string is
/// a 400. The token itself is never logged.
pub(super) async fn authenticate(
    State(app): State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    authenticate_around(&app, req, |r| next.run(r)).await
}

/// [`authenticate`] around `next` (see [`audit_rejects_around`]).
pub(super) async fn authenticate_around<F, Fut>(app: &App, mut req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let peer = req.extensions().get::<Peer>().cloned();
    let described = peer.as_ref().map_or("", Peer::describe);
    let policy = app.policy.get();
    if token_in_query(req.uri().query()) {
        tracing::warn!(peer = %described, "refused a request with an access token in its URL");
        let mut r = rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            INVALID_REQUEST,
            "Bad Request: access tokens are accepted only in the Authorization header",
        );
        if let Some(h) = bearer_challenge(&policy, Some("invalid_request"), None) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, h);
        }
        r.extensions_mut().insert(RejectReason("token_in_query"));
        return r;
    }
    let mut authz = req.headers().get_all(header::AUTHORIZATION).iter();
    let authorization = match (authz.next(), authz.next()) {
        (Some(v), None) => v.to_str().ok(),
        _ => None,
    };
    let cert = req
        .extensions()
        .get::<super::tls::PeerCertificate>()
        .cloned();
    let transport = app.cfg.listen.transport();
    let mut creds = peer
        .as_ref()
        .map_or_else(
            || Credentials::new(transport, ""),
            |p| p.credentials(transport),
        )
        .with_client_cert(cert.as_ref().map(|c| c.0.as_slice()));
    creds.authorization = authorization;
    match app.auth.authenticate(&policy, &creds) {
        Ok(principal) => {
            req.extensions_mut().insert(principal.clone());
            let mut response = next(req).await;
            response.extensions_mut().insert(principal);
            response
        }
        Err(e) => {
            tracing::warn!(peer = %described, "http peer refused: {e}");
            let (status, error, reason) = match &e {
                AuthError::NoClient { .. } => (StatusCode::FORBIDDEN, None, "no_client"),
                AuthError::Certificate { .. } => (StatusCode::FORBIDDEN, None, "certificate"),
                AuthError::MissingToken { .. } => (StatusCode::UNAUTHORIZED, None, "missing_token"),
                AuthError::InvalidToken { reason, .. } => {
                    (StatusCode::UNAUTHORIZED, Some("invalid_token"), *reason)
                }
            };
            let text = if status == StatusCode::UNAUTHORIZED {
                format!("Unauthorized: {e}")
            } else {
                format!("Forbidden: {e}")
            };
            let mut r = rpc_error(status, Value::Null, INVALID_REQUEST, &text);
            if status == StatusCode::UNAUTHORIZED {
                if let Some(h) = bearer_challenge(&policy, error, None) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, h);
                }
            }
            r.extensions_mut().insert(RejectReason(reason));
            r.extensions_mut().insert(AuthFailed(match &e {
                _ if peer.as_ref().is_some_and(|p| p.unix.is_some()) => {
                    crate::auth::peercred::METHOD
                }
                AuthError::Certificate { .. } => "mtls",
                AuthError::MissingToken { .. } | AuthError::InvalidToken { .. } => "jwt-bearer",
                AuthError::NoClient { .. } => "none",
            }));
            r
        }
    }
}

/// The Host values this listener answers to: on TCP its address (and, on loopback, the
/// loopback spellings) with its port; on a Unix socket `localhost` (with any port too, see
/// [`host_allowed`]); then `[http] allowed_hosts`.
pub(super) fn allowed_hosts(cfg: &HttpConfig) -> Vec<String> {
    let mut v = match &cfg.listen {
        Listen::Tcp(addr) => {
            let port = addr.port();
            let mut v = vec![format!("{}:{port}", fmt_ip(addr))];
            if addr.ip().is_loopback() {
                v.push(format!("localhost:{port}"));
                v.push(format!("127.0.0.1:{port}"));
                v.push(format!("[::1]:{port}"));
            }
            v
        }
        Listen::Unix(_) => vec!["localhost".to_string()],
    };
    v.extend(cfg.extra_hosts.iter().cloned());
    v.sort();
    v.dedup();
    v
}

/// Whether `host` (trimmed, lower case: a `Host` value, or an `Origin` without its scheme)
/// names this listener: one of its [`allowed_hosts`], or, on a Unix socket (which has no
/// port a client could know), `localhost:` with any port number.
pub(super) fn host_allowed(app: &App, host: &str) -> bool {
    let any_port = |h: &str| {
        h.strip_prefix("localhost:").is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
        })
    };
    app.hosts.iter().any(|a| a == host)
        || (matches!(app.cfg.listen, Listen::Unix(_)) && any_port(host))
}

fn fmt_ip(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    }
}

/// Request smuggling and routing confusion: exactly one `Host`, and an absolute-form target
/// (`POST http://host/mcp`) must name the same authority as `Host`, with a scheme of this
/// listener. `Some(reason)` for a request to refuse with 400.
fn host_framing_error(req: &Request, tls: bool) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Some("Bad Request: exactly one Host header is required");
    };
    let uri = req.uri();
    if let Some(authority) = uri.authority() {
        let scheme_ok = match uri.scheme_str() {
            Some("https") => tls,
            Some("http") => !tls,
            _ => false,
        };
        let same = host
            .to_str()
            .is_ok_and(|h| h.trim().eq_ignore_ascii_case(authority.as_str()));
        if !scheme_ok || !same {
            return Some("Bad Request: the request target names another authority than Host");
        }
    }
    None
}

/// DNS-rebinding protection: Host (and Origin, when sent) must name this server; before that,
/// exactly one Host, and an absolute-form target that agrees with it ([`host_framing_error`]).
pub(super) async fn gate(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    gate_around(&app, req, |r| next.run(r)).await
}

/// [`gate`] around `next` (see [`audit_rejects_around`]).
pub(super) async fn gate_around<F, Fut>(app: &App, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    if let Some(reason) = host_framing_error(&req, app.cfg.tls.is_some()) {
        tracing::warn!(uri = %req.uri(), "refused a request: {reason}");
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            INVALID_REQUEST,
            reason,
        );
    }
    let h = req.headers();
    let host_ok = header_str(h, "host")
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| host_allowed(app, &v));
    let origin_ok = match header_str(h, "origin") {
        None => true,
        Some(o) => {
            let o = o.trim().to_ascii_lowercase();
            ["http://", "https://"]
                .iter()
                .filter_map(|scheme| o.strip_prefix(scheme))
                .any(|rest| host_allowed(app, rest))
        }
    };
    if !host_ok || !origin_ok {
        tracing::warn!(
            host = header_str(h, "host").unwrap_or("-"),
            origin = header_str(h, "origin").unwrap_or("-"),
            "refused a request with a foreign Host or Origin"
        );
        return rpc_error(
            StatusCode::FORBIDDEN,
            Value::Null,
            INVALID_REQUEST,
            "Forbidden: Host or Origin is not this server",
        );
    }
    next(req).await
}

/// Whether `Accept` allows (JSON, SSE).
pub(super) fn accepts(h: &HeaderMap) -> (bool, bool) {
    let a = header_str(h, "accept")
        .unwrap_or("*/*")
        .to_ascii_lowercase();
    let any = a.contains("*/*");
    (
        any || a.contains("application/json") || a.contains("application/*"),
        a.contains("text/event-stream"),
    )
}

/// `MCP-Protocol-Version`, when present, names a session-era version this server speaks.
pub(super) fn version_ok(h: &HeaderMap) -> bool {
    header_str(h, VERSION_HEADER).is_none_or(|v| SUPPORTED_VERSIONS.contains(&v.trim()))
}

/// `MCP-Protocol-Version` names a stateless-era version.
pub(super) fn stateless_version_header(h: &HeaderMap) -> bool {
    header_str(h, VERSION_HEADER).is_some_and(|v| STATELESS_VERSIONS.contains(&v.trim()))
}

/// A POST body must be JSON (415 otherwise).
pub(super) fn json_content(h: &HeaderMap) -> Result<(), Response> {
    let ctype = header_str(h, "content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if ctype.starts_with("application/json") {
        return Ok(());
    }
    Err(rpc_error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Value::Null,
        INVALID_REQUEST,
        "Unsupported Media Type: POST a JSON-RPC message as application/json",
    ))
}

/// GET and DELETE belong to sessions: a stateless-era client gets 405.
pub(super) fn stateless_405(headers: &HeaderMap) -> Option<Response> {
    let stateless =
        header_str(headers, SESSION_HEADER).is_none() && stateless_version_header(headers);
    stateless.then(|| (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")]).into_response())
}

/// The body, at most `max_body` bytes (413 beyond, decided on `Content-Length` when sent).
pub(super) async fn read_body(
    max_body: usize,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Response> {
    let too_large = || {
        rpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            Value::Null,
            INVALID_REQUEST,
            &format!("Invalid Request: message exceeds the limit of {max_body} bytes"),
        )
    };
    if header_str(headers, "content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max_body as u64)
    {
        return Err(too_large());
    }
    axum::body::to_bytes(body, max_body)
        .await
        .map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpd_policy::ClientId;
    use std::time::Duration;

    #[test]
    fn access_tokens_in_the_query_string_are_recognised() {
        for q in [
            "access_token=x",
            "a=1&ACCESS_TOKEN=x",
            "access%5Ftoken=x",
            "access_token",
        ] {
            assert!(token_in_query(Some(q)), "{q}");
        }
        for q in ["token=x", "access_tokens=x", "x=access_token"] {
            assert!(!token_in_query(Some(q)), "{q}");
        }
        assert!(!token_in_query(None));
    }

    #[test]
    fn hosts_cover_the_loopback_spellings() {
        let cfg = HttpConfig {
            listen: Listen::Tcp("127.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!())),
            client: ClientId::parse("c"),
            extra_hosts: vec!["mcp.example".into()],
            idle: Duration::from_secs(1),
            max_sessions: 1,
            tls: None,
            max_connections: 8,
            max_connections_per_ip: 8,
            trusted_proxies: Vec::new(),
            forwarded_header: mcpd_policy::ForwardedHeader::XForwardedFor,
        };
        let h = allowed_hosts(&cfg);
        for want in [
            "127.0.0.1:8080",
            "localhost:8080",
            "[::1]:8080",
            "mcp.example",
        ] {
            assert!(h.contains(&want.to_string()), "{h:?}");
        }
        assert!(!h.contains(&"evil.example:8080".to_string()));
        let mut hm = HeaderMap::new();
        hm.insert(
            "accept",
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        assert_eq!(accepts(&hm), (true, true));
        hm.insert("accept", HeaderValue::from_static("text/html"));
        assert_eq!(accepts(&hm), (false, false));
        hm.insert(VERSION_HEADER, HeaderValue::from_static("1999-01-01"));
        assert!(!version_ok(&hm));
        assert!(!stateless_version_header(&hm));
        hm.insert(VERSION_HEADER, HeaderValue::from_static("2026-07-28"));
        assert!(stateless_version_header(&hm));
        assert!(stateless_405(&hm).is_some());
        hm.insert(SESSION_HEADER, HeaderValue::from_static("abc"));
        assert!(stateless_405(&hm).is_none());
    }
}
