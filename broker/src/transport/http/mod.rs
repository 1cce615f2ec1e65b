//! Streamable HTTP transport (MCP 2025-11-25 session era, negotiating 2025-06-18 / 2025-03-26).
//!
//! One endpoint, `/mcp`:
//! * `POST` a JSON-RPC message. A request gets either `application/json` (one response) or
//!   `text/event-stream` (the request's progress/log notifications, then its response; chosen
//!   for `tools/call` when the client accepts SSE). A notification or a client response gets
//!   `202`. `initialize` without a session creates one: `Mcp-Session-Id` (128 random bits) in the
//!   response; every later message must carry it (missing → 400, unknown or ended → 404).
//! * `GET` with `Accept: text/event-stream`: the session's stream for messages not tied to a
//!   request (one at a time; a second → 409).
//! * `DELETE`: ends the session (its worker is shut down and reaped).
//!
//! Every request passes the same gate first: `Host` must name this server (and `Origin`, when
//! present, too) or the answer is 403 — DNS-rebinding protection for a server on loopback; the
//! body is bounded (`server.max_message_bytes`, 413), its type must be JSON (415), `Accept` must
//! allow JSON or SSE (406), batches are refused (400), `MCP-Protocol-Version` must be a
//! supported version when present (400).
//!
//! One worker per session, exactly as over stdio (`Session` is transport-independent). Clients
//! often never send DELETE: sessions idle longer than `http.session_idle_secs` with nothing in
//! flight are closed and their workers reaped. A client that goes away during a request (its
//! response stream or connection dropped) cancels that request in the worker.
//!
//! Until HTTP authentication exists, every HTTP peer speaks for one configured client
//! (`[http] client`, default the stdio client), and listening on a non-loopback address needs
//! an explicit, loudly logged opt-in.
#![forbid(unsafe_code)]
// Helpers return a finished `Response` as their error (the early answer to the client); it
// is moved once per request, so boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use futures_util::Stream;
use mcpd_policy::ClientId;
use serde_json::{json, Value};
use std::fmt::Write as _;
use tokio::sync::mpsc;

use crate::auditing::Audit;
use crate::auth::{Authenticator, Credentials, ListenerClient, Origin};
use crate::mcp::jsonrpc::{
    self, Id, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR,
};
use crate::mcp::session::{
    is_stateless, stateless_meta, Session, HEADER_MISMATCH, META_CAPS, META_VERSION,
    MISSING_CAPABILITY, STATELESS_VERSIONS, SUPPORTED_VERSIONS, UNSUPPORTED_VERSION,
};
use crate::transport::{Outbox, Outgoing};
use crate::worker::supervisor::Supervisor;

/// The MCP endpoint path.
pub const ENDPOINT: &str = "/mcp";
/// `retry:` sent in the priming event of every SSE stream, milliseconds.
pub const SSE_RETRY: Duration = Duration::from_millis(1000);
/// Keep-alive comment interval on SSE streams.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);
pub use crate::mcp::protocol::SESSION_NOT_FOUND;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// What the listener needs.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The bound address.
    pub addr: SocketAddr,
    /// The client HTTP sessions speak for.
    pub client: ClientId,
    /// Extra accepted Host values (lower case).
    pub extra_hosts: Vec<String>,
    /// Idle time before a session is reaped.
    pub idle: Duration,
    /// Most sessions at once.
    pub max_sessions: usize,
}

struct App {
    policy: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
    cfg: HttpConfig,
    hosts: Vec<String>,
    max_body: usize,
    sessions: Mutex<HashMap<String, Arc<HttpSession>>>,
    /// The principal's stateless-era session (no Mcp-Session-Id; one worker, reaped when idle).
    stateless: tokio::sync::Mutex<Option<Arc<HttpSession>>>,
}

/// One HTTP session: the transport-independent [`Session`] plus routing of its output.
struct HttpSession {
    session: Session,
    /// Open response streams by request id.
    routes: Mutex<HashMap<Id, mpsc::UnboundedSender<Value>>>,
    /// The GET stream, if open.
    standalone: Mutex<Option<mpsc::UnboundedSender<Value>>>,
    last_seen: Mutex<Instant>,
    /// Requests and streams in progress (a busy session is never reaped).
    active: AtomicUsize,
    /// SSE event ids.
    next_event: AtomicU64,
    /// Recent events of request streams, for `Last-Event-ID` resumption (session era).
    replay: Mutex<Replay>,
}

/// Most events kept for resumption per session.
const REPLAY_EVENTS: usize = 1024;
/// Most bytes kept for resumption per session.
const REPLAY_BYTES: usize = 4 * 1024 * 1024;
/// How long a request whose client disconnected waits for a `Last-Event-ID` resumption before
/// it is cancelled (session era; in the stateless era a closed stream cancels at once).
pub const RESUME_GRACE: Duration = Duration::from_secs(3);

/// Events of request streams and the live relays, by stream (the priming event's id).
#[derive(Default)]
struct Replay {
    events: std::collections::VecDeque<(u64, u64, Bytes)>,
    bytes: usize,
    /// Streams whose request is still running: where to send their next events.
    live: HashMap<u64, Arc<Mutex<Option<mpsc::UnboundedSender<Bytes>>>>>,
}

impl Replay {
    fn push(&mut self, event: u64, stream: u64, b: Bytes) {
        self.bytes += b.len();
        self.events.push_back((event, stream, b));
        while self.events.len() > REPLAY_EVENTS || self.bytes > REPLAY_BYTES {
            match self.events.pop_front() {
                Some((_, _, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
    fn stream_of(&self, event: u64) -> Option<u64> {
        self.events
            .iter()
            .find(|(e, _, _)| *e == event)
            .map(|(_, s, _)| *s)
    }
    fn after(&self, stream: u64, event: u64) -> Vec<Bytes> {
        self.events
            .iter()
            .filter(|(e, s, _)| *s == stream && *e > event)
            .map(|(_, _, b)| b.clone())
            .collect()
    }
}

impl HttpSession {
    fn touch(&self) {
        if let Ok(mut t) = self.last_seen.lock() {
            *t = Instant::now();
        }
    }
    fn idle_for(&self) -> Duration {
        self.last_seen
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }
    fn event_id(&self) -> String {
        format!("{}", self.next_event.fetch_add(1, Ordering::Relaxed))
    }
}

/// Counts a session as busy while alive; on drop, records the activity time.
struct Busy(Arc<HttpSession>);

impl Busy {
    fn new(s: &Arc<HttpSession>) -> Self {
        s.active.fetch_add(1, Ordering::SeqCst);
        s.touch();
        Self(s.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// While alive, the request has not been answered: dropping it early (the client went away)
/// cancels the request in the worker.
struct PendingRequest {
    hs: Arc<HttpSession>,
    id: Id,
    answered: bool,
}

impl Drop for PendingRequest {
    fn drop(&mut self) {
        if let Ok(mut r) = self.hs.routes.lock() {
            r.remove(&self.id);
        }
        if !self.answered {
            tracing::info!(session = %self.hs.session.id(), "client went away during a request; cancelling it");
            self.hs.session.cancel(&self.id);
        }
    }
}

fn is_response(msg: &Value) -> bool {
    msg.get("method").is_none() && (msg.get("result").is_some() || msg.get("error").is_some())
}

/// Route a session's output to the stream of the request it belongs to, else to the GET
/// stream, else nowhere (the client did not open one).
async fn dispatch(mut rx: mpsc::Receiver<Outgoing>, hs: Weak<HttpSession>) {
    while let Some(out) = rx.recv().await {
        let Some(hs) = hs.upgrade() else { break };
        if let Some(rel) = &out.related {
            let route = hs.routes.lock().ok().and_then(|r| r.get(rel).cloned());
            if let Some(tx) = route {
                let _ = tx.send(out.msg);
                continue;
            }
        }
        let standalone = hs.standalone.lock().ok().and_then(|s| s.clone());
        match standalone {
            Some(tx) => {
                let _ = tx.send(out.msg);
            }
            None => tracing::debug!("no stream for an outgoing message; dropped"),
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    json_response(status, &jsonrpc::error(id, code, message))
}

/// Marks a response that the session engine produced (its request is audited there): the
/// reject auditor leaves it alone.
#[derive(Debug, Clone, Copy)]
struct EngineAnswer;

/// An engine answer sent with the status the stateless era gives it.
fn engine_answer(status: StatusCode, response: &Value) -> Response {
    let mut r = json_response(status, response);
    r.extensions_mut().insert(EngineAnswer);
    r
}

/// Every transport-level reject (4xx that no session engine answered: Host/Origin, media
/// types, sizes, session ids, versions, malformed envelopes, methods) is audited like stdio's
/// rejects, before the response leaves (fail closed: no record, no answer but a 500).
async fn audit_rejects(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let http_method = req.method().to_string();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    let session = header_str(req.headers(), SESSION_HEADER).is_some();
    let response = next.run(req).await;
    if !response.status().is_client_error()
        || response.extensions().get::<EngineAnswer>().is_some()
        || !app.audit.enabled()
    {
        return response;
    }
    let mut f = serde_json::Map::new();
    f.insert("principal".into(), json!(app.cfg.client.as_str()));
    f.insert("transport".into(), json!("http"));
    f.insert("method".into(), json!("<invalid>"));
    f.insert("outcome".into(), json!("invalid"));
    f.insert("http_method".into(), json!(http_method));
    f.insert("http_status".into(), json!(response.status().as_u16()));
    f.insert("with_session_id".into(), json!(session));
    if let Some(p) = peer {
        f.insert("peer".into(), json!(p));
    }
    match app.audit.record("request", f).await {
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

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The Host values this listener answers to.
fn allowed_hosts(cfg: &HttpConfig) -> Vec<String> {
    let port = cfg.addr.port();
    let mut v = vec![format!("{}:{port}", fmt_ip(&cfg.addr))];
    if cfg.addr.ip().is_loopback() {
        v.push(format!("localhost:{port}"));
        v.push(format!("127.0.0.1:{port}"));
        v.push(format!("[::1]:{port}"));
    }
    v.extend(cfg.extra_hosts.iter().cloned());
    v.sort();
    v.dedup();
    v
}

fn fmt_ip(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    }
}

/// DNS-rebinding protection: Host (and Origin, when sent) must name this server.
async fn gate(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let host_ok = header_str(h, "host")
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| app.hosts.contains(&v));
    let origin_ok = match header_str(h, "origin") {
        None => true,
        Some(o) => {
            let o = o.trim().to_ascii_lowercase();
            ["http://", "https://"]
                .iter()
                .filter_map(|scheme| o.strip_prefix(scheme))
                .any(|rest| app.hosts.iter().any(|a| a == rest))
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
    next.run(req).await
}

fn accepts(h: &HeaderMap) -> (bool, bool) {
    let a = header_str(h, "accept")
        .unwrap_or("*/*")
        .to_ascii_lowercase();
    let any = a.contains("*/*");
    (
        any || a.contains("application/json") || a.contains("application/*"),
        a.contains("text/event-stream"),
    )
}

fn version_ok(h: &HeaderMap) -> bool {
    header_str(h, VERSION_HEADER).is_none_or(|v| SUPPORTED_VERSIONS.contains(&v.trim()))
}

impl App {
    fn lookup(&self, h: &HeaderMap) -> Result<Option<Arc<HttpSession>>, Response> {
        let Some(sid) = header_str(h, SESSION_HEADER) else {
            return Ok(None);
        };
        match self.sessions.lock().ok().and_then(|m| m.get(sid).cloned()) {
            Some(s) => Ok(Some(s)),
            None => Err(rpc_error(
                StatusCode::NOT_FOUND,
                Value::Null,
                SESSION_NOT_FOUND,
                "Session not found: it ended or never existed; start a new one with initialize",
            )),
        }
    }

    async fn new_session(self: &Arc<Self>, peer: SocketAddr) -> Result<Arc<HttpSession>, Response> {
        // At the limit, the least recently used session with nothing in flight makes room
        // (clients that never send DELETE are common); if every session is busy, refuse.
        let (full, evicted) = match self.sessions.lock() {
            Ok(mut m) if m.len() >= self.cfg.max_sessions => {
                let lru = m
                    .iter()
                    .filter(|(_, s)| s.active.load(Ordering::SeqCst) == 0)
                    .max_by_key(|(_, s)| s.idle_for())
                    .map(|(k, _)| k.clone());
                let evicted = lru.and_then(|k| m.remove(&k));
                (evicted.is_none(), evicted)
            }
            Ok(_) => (false, None),
            Err(_) => (true, None),
        };
        if let Some(old) = evicted {
            tokio::spawn(end_session(
                old,
                "session limit reached: least recently used idle session closed",
            ));
        }
        if full {
            return Err(rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                Value::Null,
                jsonrpc::INTERNAL_ERROR,
                "Too many sessions",
            ));
        }
        self.open_session("http", peer).await
    }

    /// Open a `Session` for the HTTP client (audited: `auth.success`, `session.open`) and start
    /// routing its output.
    async fn open_session(
        &self,
        transport: &'static str,
        peer: SocketAddr,
    ) -> Result<Arc<HttpSession>, Response> {
        let (tx, rx) = Outbox::channel();
        let origin = Origin {
            transport,
            peer: peer.to_string(),
        };
        let principal = ListenerClient::new(self.cfg.client.clone())
            .authenticate(
                &self.policy.get(),
                &Credentials {
                    transport,
                    peer: &origin.peer,
                },
            )
            .map_err(|e| {
                rpc_error(
                    StatusCode::FORBIDDEN,
                    Value::Null,
                    INVALID_REQUEST,
                    &format!("Forbidden: {e}"),
                )
            })?;
        let session = Session::open(
            principal,
            &origin,
            self.policy.clone(),
            self.supervisor.clone(),
            self.audit.clone(),
            tx,
        )
        .await
        .map_err(|e| {
            tracing::error!("{transport} session refused: {e}");
            rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                Value::Null,
                jsonrpc::INTERNAL_ERROR,
                "The audit log cannot be written; the session was refused",
            )
        })?;
        let hs = Arc::new(HttpSession {
            session,
            routes: Mutex::default(),
            standalone: Mutex::default(),
            last_seen: Mutex::new(Instant::now()),
            active: AtomicUsize::new(0),
            next_event: AtomicU64::new(1),
            replay: Mutex::default(),
        });
        tokio::spawn(dispatch(rx, Arc::downgrade(&hs)));
        Ok(hs)
    }

    /// The shared session that serves stateless-era requests (created on first use, again
    /// after it was reaped).
    async fn stateless_session(
        self: &Arc<Self>,
        peer: SocketAddr,
    ) -> Result<Arc<HttpSession>, Response> {
        let mut slot = self.stateless.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let hs = self.open_session("http-stateless", peer).await?;
        tracing::info!(session = %hs.session.id(), %peer, "http stateless session open");
        *slot = Some(hs.clone());
        Ok(hs)
    }

    fn remove(&self, sid: &str) -> Option<Arc<HttpSession>> {
        self.sessions.lock().ok().and_then(|mut m| m.remove(sid))
    }
}

async fn end_session(hs: Arc<HttpSession>, why: &str) {
    tracing::info!(session = %hs.session.id(), "{why}");
    if let Ok(mut s) = hs.standalone.lock() {
        s.take();
    }
    hs.session.close().await;
}

async fn mcp(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match method {
        Method::POST => post(app, peer, headers, body).await,
        Method::GET => get(app, headers).await,
        Method::DELETE => delete(app, headers).await,
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, POST, DELETE")],
        )
            .into_response(),
    }
}

async fn read_body(app: &App, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let too_large = || {
        rpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            Value::Null,
            INVALID_REQUEST,
            &format!(
                "Invalid Request: message exceeds the limit of {} bytes",
                app.max_body
            ),
        )
    };
    if header_str(headers, "content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > app.max_body as u64)
    {
        return Err(too_large());
    }
    axum::body::to_bytes(body, app.max_body)
        .await
        .map_err(|_| too_large())
}

async fn post(app: Arc<App>, peer: SocketAddr, headers: HeaderMap, body: Body) -> Response {
    let ctype = header_str(&headers, "content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if !ctype.starts_with("application/json") {
        return rpc_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Value::Null,
            INVALID_REQUEST,
            "Unsupported Media Type: POST a JSON-RPC message as application/json",
        );
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
    let bytes = match read_body(&app, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            PARSE_ERROR,
            "Parse error: body is not valid UTF-8",
        );
    };
    let msg: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                PARSE_ERROR,
                "Parse error: invalid JSON",
            )
        }
    };
    let Value::Object(obj) = &msg else {
        let what = if msg.is_array() {
            "Invalid Request: batches are not supported"
        } else {
            "Invalid Request: a message must be a JSON object"
        };
        return rpc_error(StatusCode::BAD_REQUEST, Value::Null, INVALID_REQUEST, what);
    };
    let method = obj.get("method").and_then(Value::as_str);
    let id = obj.get("id").and_then(|v| match v {
        Value::String(s) if s.len() <= 256 => Some(Id::Str(s.clone())),
        Value::Number(n) => n.as_i64().map(Id::Num),
        _ => None,
    });
    let is_request = method.is_some() && obj.contains_key("id");
    let empty = serde_json::Map::new();
    let params = obj
        .get("params")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let has_session = header_str(&headers, SESSION_HEADER).is_some();
    let stateless_header = header_str(&headers, VERSION_HEADER)
        .is_some_and(|v| STATELESS_VERSIONS.contains(&v.trim()));
    if !has_session && (method.is_some_and(|m| is_stateless(m, params)) || stateless_header) {
        return post_stateless(&app, peer, &headers, text, obj, sse_ok).await;
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
    let existing = match app.lookup(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (hs, created) = match existing {
        Some(s) => (s, false),
        None if is_request && method == Some("initialize") => match app.new_session(peer).await {
            Ok(s) => (s, true),
            Err(r) => return r,
        },
        None => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                obj.get("id").cloned().unwrap_or(Value::Null),
                INVALID_REQUEST,
                "Bad Request: Mcp-Session-Id header is required (send initialize first)",
            )
        }
    };
    // The engine's classifier decides what a message is (one set of rules for every
    // transport): an invalid message that carries an id is answered, never taken for a
    // notification (`{"id": 1, "method": 5}` got 202 and its error was lost).
    if let jsonrpc::Incoming::Invalid { id, code, message } = jsonrpc::classify(text) {
        if !id.is_null() {
            return rpc_error(StatusCode::BAD_REQUEST, id, code, &message);
        }
    }
    let busy = Busy::new(&hs);
    if !is_request {
        // A notification, or the client's answer to a server request: no response body.
        hs.session.handle(jsonrpc::classify(text));
        drop(busy);
        return StatusCode::ACCEPTED.into_response();
    }
    let Some(id) = id else {
        // A request whose id is not usable: the session answers it with an error (no route).
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            INVALID_REQUEST,
            "Invalid Request: id must be a string or an integer",
        );
    };
    answer(
        &app, peer, hs, busy, id, text, method, sse_ok, created, false,
    )
    .await
}

/// Status of a stateless-era error response (the spec maps codes to HTTP statuses).
fn stateless_status(response: &Value) -> StatusCode {
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

/// A stateless-era (2026-07-28) POST: the envelope and headers are checked in the order the
/// specification fixes, then the request runs on the principal's shared stateless session.
async fn post_stateless(
    app: &Arc<App>,
    peer: SocketAddr,
    headers: &HeaderMap,
    text: &str,
    obj: &serde_json::Map<String, Value>,
    sse_ok: bool,
) -> Response {
    let rid = obj.get("id").cloned().unwrap_or(Value::Null);
    let method = obj.get("method").and_then(Value::as_str).unwrap_or("");
    let empty = serde_json::Map::new();
    let params = obj
        .get("params")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
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
        return stateless_error(
            rid,
            HEADER_MISMATCH,
            "Header mismatch: MCP-Protocol-Version does not match _meta",
            json!({"header": VERSION_HEADER}),
        );
    }
    // (3) a version this server speaks
    if let Err(e) = stateless_meta(params) {
        return stateless_error(rid, e.code, &e.message, e.data);
    }
    // (4) Mcp-Method, (5) Mcp-Name
    if header_str(headers, "mcp-method").map(str::trim) != Some(method) {
        return stateless_error(
            rid,
            HEADER_MISMATCH,
            "Header mismatch: Mcp-Method does not match the request method",
            json!({"header": "Mcp-Method"}),
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
            return stateless_error(
                rid,
                HEADER_MISMATCH,
                "Header mismatch: Mcp-Name does not match the request",
                json!({"header": "Mcp-Name"}),
            );
        }
    }
    let hs = match app.stateless_session(peer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // (6) arguments a tool mirrors into headers (`x-mcp-header`) must match them.
    if method == "tools/call" {
        if let Some(name) = params.get("name").and_then(Value::as_str) {
            if let Some(schema) = hs.session.header_mapped_schema(name).await {
                let args = params.get("arguments").and_then(Value::as_object);
                if let Err(h) = check_param_headers(&schema, args, headers) {
                    return stateless_error(
                        rid,
                        HEADER_MISMATCH,
                        "Header mismatch: an Mcp-Param header does not match its argument",
                        json!({"header": h}),
                    );
                }
            }
        }
    }
    let busy = Busy::new(&hs);
    let is_request = obj.contains_key("id");
    if !is_request {
        hs.session.handle(jsonrpc::classify(text));
        drop(busy);
        return StatusCode::ACCEPTED.into_response();
    }
    let id = match obj.get("id") {
        Some(Value::String(s)) if s.len() <= 256 => Id::Str(s.clone()),
        Some(Value::Number(n)) if n.as_i64().is_some() => Id::Num(n.as_i64().unwrap_or(0)),
        _ => {
            return stateless_error(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: id must be a string or an integer",
                Value::Null,
            )
        }
    };
    answer(
        app,
        peer,
        hs,
        busy,
        id,
        text,
        Some(method),
        sse_ok,
        false,
        true,
    )
    .await
}

/// Decode an `Mcp-Param-*` header value: `=?base64?<standard base64>?=` or a literal.
/// `Err` for a base64 form that does not decode (bad padding, bad characters, not UTF-8).
fn param_header_value(v: &str) -> Result<String, ()> {
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
fn check_param_headers(
    schema: &Value,
    args: Option<&serde_json::Map<String, Value>>,
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

/// Run one request on a session and answer it: one JSON body, or (for `tools/call` when the
/// client accepts it) an SSE stream of its notifications and then its response.
#[allow(clippy::too_many_arguments)]
async fn answer(
    app: &Arc<App>,
    peer: SocketAddr,
    hs: Arc<HttpSession>,
    busy: Busy,
    id: Id,
    text: &str,
    method: Option<&str>,
    sse_ok: bool,
    created: bool,
    stateless: bool,
) -> Response {
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    {
        let Ok(mut routes) = hs.routes.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        if routes.contains_key(&id) {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                id.to_value(),
                INVALID_REQUEST,
                "Invalid Request: a request with this id is already in progress",
            );
        }
        routes.insert(id.clone(), tx);
    }
    let mut pending = PendingRequest {
        hs: hs.clone(),
        id: id.clone(),
        answered: false,
    };
    hs.session.handle(jsonrpc::classify(text));
    let streaming = sse_ok && matches!(method, Some("tools/call" | "subscriptions/listen"));
    if !streaming {
        // One JSON response; notifications of this request (none for these methods, or the
        // client refused SSE) go to the GET stream if there is one.
        let response = loop {
            match rx.recv().await {
                Some(m) if is_response(&m) => break Some(m),
                Some(m) => {
                    let standalone = hs.standalone.lock().ok().and_then(|s| s.clone());
                    if let Some(s) = standalone {
                        let _ = s.send(m);
                    }
                }
                None => break None,
            }
        };
        pending.answered = true;
        drop(pending);
        let Some(response) = response else {
            // Cancelled: no JSON-RPC response exists.
            return StatusCode::ACCEPTED.into_response();
        };
        if stateless {
            drop(busy);
            return engine_answer(stateless_status(&response), &response);
        }
        let sid = hs.session.id().to_string();
        if created {
            if !hs.session.is_initialized() {
                drop(busy);
                tokio::spawn(end_session(hs, "initialize failed; session discarded"));
                return json_response(StatusCode::OK, &response);
            }
            if let Ok(mut m) = app.sessions.lock() {
                m.insert(sid.clone(), hs.clone());
            }
            let _ = peer;
            tracing::info!(session = %sid, %peer, "http session open");
        }
        let mut r = json_response(StatusCode::OK, &response);
        if let Ok(v) = HeaderValue::from_str(&sid) {
            r.headers_mut().insert(SESSION_HEADER, v);
        }
        return r;
    }
    if !stateless {
        return resumable_stream(hs, rx, pending, busy);
    }
    // Stateless era: an error decided before any notification (missing capability, bad
    // arguments) is a plain JSON answer with its HTTP status, not a 200 stream.
    let mut early = None;
    if stateless {
        match rx.recv().await {
            Some(m) if is_response(&m) => {
                pending.answered = true;
                drop(pending);
                drop(busy);
                return engine_answer(stateless_status(&m), &m);
            }
            Some(m) => early = Some(m),
            None => {
                pending.answered = true;
                return StatusCode::ACCEPTED.into_response();
            }
        }
    }
    // SSE: a priming event (id, empty data, retry), then this request's notifications, then
    // its response; the stream ends after the response.
    let first = match early {
        None => priming(&hs),
        Some(m) => {
            let done = is_response(&m);
            let mut b = priming(&hs).to_vec();
            b.extend_from_slice(&event(&hs, &m));
            if done {
                pending.answered = true;
            }
            Bytes::from(b)
        }
    };
    let stream_hs = hs.clone();
    let stream = futures_util::stream::unfold(
        (Some(first), rx, pending, busy, false),
        move |(first, mut rx, mut pending, busy, done)| {
            let hs = stream_hs.clone();
            async move {
                if let Some(f) = first {
                    return Some((Ok::<Bytes, Infallible>(f), (None, rx, pending, busy, done)));
                }
                if done {
                    return None;
                }
                let m = match tokio::time::timeout(SSE_KEEPALIVE, rx.recv()).await {
                    Ok(m) => m?,
                    Err(_) => {
                        return Some((
                            Ok(Bytes::from_static(b":\n\n")),
                            (None, rx, pending, busy, done),
                        ))
                    }
                };
                let last = is_response(&m);
                if last {
                    pending.answered = true;
                }
                Some((Ok(event(&hs, &m)), (None, rx, pending, busy, last)))
            }
        },
    );
    sse(stream)
}

/// Session era: the request's messages go through a relay that records every event for
/// resumption and forwards it to whichever HTTP stream is attached: first this POST's
/// response, after a disconnect a `GET` with `Last-Event-ID`. With nobody attached for
/// [`RESUME_GRACE`], the request is cancelled.
fn resumable_stream(
    hs: Arc<HttpSession>,
    mut rx: mpsc::UnboundedReceiver<Value>,
    mut pending: PendingRequest,
    busy: Busy,
) -> Response {
    let stream_id = hs.next_event.fetch_add(1, Ordering::Relaxed);
    let priming = Bytes::from(format!(
        "id: {stream_id}\nretry: {}\ndata: \n\n",
        SSE_RETRY.as_millis()
    ));
    let (btx, brx) = mpsc::unbounded_channel::<Bytes>();
    let _ = btx.send(priming.clone());
    let attached = Arc::new(Mutex::new(Some(btx)));
    if let Ok(mut r) = hs.replay.lock() {
        r.push(stream_id, stream_id, priming);
        r.live.insert(stream_id, attached.clone());
    }
    let relay_hs = hs.clone();
    tokio::spawn(async move {
        let _busy = busy;
        let mut detached_since: Option<Instant> = None;
        loop {
            let msg = tokio::time::timeout(Duration::from_millis(250), rx.recv()).await;
            let sender = attached.lock().ok().and_then(|a| a.clone());
            match msg {
                Ok(Some(m)) => {
                    let last = is_response(&m);
                    let eid = relay_hs.next_event.fetch_add(1, Ordering::Relaxed);
                    let b = Bytes::from(format!("id: {eid}\ndata: {m}\n\n"));
                    if let Ok(mut r) = relay_hs.replay.lock() {
                        r.push(eid, stream_id, b.clone());
                    }
                    if let Some(tx) = sender {
                        if tx.send(b).is_err() {
                            if let Ok(mut a) = attached.lock() {
                                a.take();
                            }
                        }
                    }
                    if last {
                        pending.answered = true;
                        break;
                    }
                }
                Ok(None) => break, // cancelled: no response exists
                Err(_) => {
                    // Keep-alive doubles as a liveness probe of the attached stream.
                    let alive =
                        sender.is_some_and(|tx| tx.send(Bytes::from_static(b":\n\n")).is_ok());
                    if alive {
                        detached_since = None;
                    } else {
                        if let Ok(mut a) = attached.lock() {
                            a.take();
                        }
                        let since = *detached_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= RESUME_GRACE {
                            break; // `pending` drops unanswered: the request is cancelled
                        }
                    }
                }
            }
        }
        if let Ok(mut r) = relay_hs.replay.lock() {
            r.live.remove(&stream_id);
        }
        drop(pending);
    });
    sse_bytes(brx, ())
}

/// An SSE response that forwards ready-made event bytes until the sender side is gone,
/// holding `keep` (a guard) for as long as the client reads.
fn sse_bytes<G: Send + 'static>(rx: mpsc::UnboundedReceiver<Bytes>, keep: G) -> Response {
    let stream = futures_util::stream::unfold((rx, keep), |(mut rx, keep)| async move {
        let b = rx.recv().await?;
        Some((Ok::<Bytes, Infallible>(b), (rx, keep)))
    });
    sse(stream)
}

/// `GET` with `Last-Event-ID` naming an event of a request stream: replay what followed it,
/// then (if the request is still running) attach to its relay.
fn resume(hs: &Arc<HttpSession>, last: u64) -> Option<Response> {
    let (replayed, live) = {
        let r = hs.replay.lock().ok()?;
        let stream = r.stream_of(last)?;
        (r.after(stream, last), r.live.get(&stream).cloned())
    };
    let (btx, brx) = mpsc::unbounded_channel::<Bytes>();
    for b in replayed {
        let _ = btx.send(b);
    }
    if let Some(slot) = live {
        if let Ok(mut a) = slot.lock() {
            *a = Some(btx);
        }
    }
    Some(sse_bytes(brx, Busy::new(hs)))
}

/// The first event of every stream: an id to resume from, the reconnection delay, and an
/// empty `data:` line (parsers drop events without one; clients skip empty data).
fn priming(hs: &HttpSession) -> Bytes {
    Bytes::from(format!(
        "id: {}\nretry: {}\ndata: \n\n",
        hs.event_id(),
        SSE_RETRY.as_millis()
    ))
}

/// One message as an SSE event. JSON text never contains a raw newline, so it is one `data:`
/// line (some clients parse SSE line by line).
fn event(hs: &HttpSession, msg: &Value) -> Bytes {
    let mut s = String::with_capacity(64);
    let _ = write!(s, "id: {}\ndata: {}\n\n", hs.event_id(), msg);
    Bytes::from(s)
}

fn sse<S>(stream: S) -> Response
where
    S: Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// GET and DELETE belong to sessions: a stateless-era client gets 405.
fn stateless_405(headers: &HeaderMap) -> Option<Response> {
    let stateless = header_str(headers, SESSION_HEADER).is_none()
        && header_str(headers, VERSION_HEADER)
            .is_some_and(|v| STATELESS_VERSIONS.contains(&v.trim()));
    stateless.then(|| (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")]).into_response())
}

async fn get(app: Arc<App>, headers: HeaderMap) -> Response {
    if let Some(r) = stateless_405(&headers) {
        return r;
    }
    let (_, sse_ok) = accepts(&headers);
    if !sse_ok {
        return rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            Value::Null,
            INVALID_REQUEST,
            "Not Acceptable: GET opens an SSE stream; accept text/event-stream",
        );
    }
    if !version_ok(&headers) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            INVALID_REQUEST,
            "Bad Request: unsupported MCP-Protocol-Version",
        );
    }
    let hs = match app.lookup(&headers) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                INVALID_REQUEST,
                "Bad Request: Mcp-Session-Id header is required",
            )
        }
        Err(r) => return r,
    };
    if let Some(last) =
        header_str(&headers, "last-event-id").and_then(|v| v.trim().parse::<u64>().ok())
    {
        if let Some(r) = resume(&hs, last) {
            tracing::info!(session = %hs.session.id(), last, "stream resumed with Last-Event-ID");
            return r;
        }
    }
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    {
        let Ok(mut s) = hs.standalone.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        if s.as_ref().is_some_and(|t| !t.is_closed()) {
            return rpc_error(
                StatusCode::CONFLICT,
                Value::Null,
                INVALID_REQUEST,
                "Conflict: this session already has an open GET stream",
            );
        }
        *s = Some(tx);
    }
    struct Standalone {
        _busy: Busy,
    }
    let guard = Standalone {
        _busy: Busy::new(&hs),
    };
    let first = priming(&hs);
    let stream_hs = hs.clone();
    let stream =
        futures_util::stream::unfold((Some(first), rx, guard), move |(first, mut rx, guard)| {
            let hs = stream_hs.clone();
            async move {
                if let Some(f) = first {
                    return Some((Ok::<Bytes, Infallible>(f), (None, rx, guard)));
                }
                let m = match tokio::time::timeout(SSE_KEEPALIVE, rx.recv()).await {
                    Ok(m) => m?,
                    Err(_) => return Some((Ok(Bytes::from_static(b":\n\n")), (None, rx, guard))),
                };
                Some((Ok(event(&hs, &m)), (None, rx, guard)))
            }
        });
    sse(stream)
}

async fn delete(app: Arc<App>, headers: HeaderMap) -> Response {
    if let Some(r) = stateless_405(&headers) {
        return r;
    }
    let Some(sid) = header_str(&headers, SESSION_HEADER) else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header is required",
        );
    };
    match app.remove(sid) {
        Some(hs) => {
            end_session(hs, "session ended by the client (DELETE)").await;
            StatusCode::OK.into_response()
        }
        None => rpc_error(
            StatusCode::NOT_FOUND,
            Value::Null,
            SESSION_NOT_FOUND,
            "Session not found",
        ),
    }
}

/// Close sessions idle longer than the limit (nothing in flight, no open stream).
async fn reaper(app: Weak<App>, idle: Duration) {
    let tick = (idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        tokio::time::sleep(tick).await;
        let Some(app) = app.upgrade() else { return };
        let stale: Vec<String> = app
            .sessions
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, s)| s.active.load(Ordering::SeqCst) == 0 && s.idle_for() >= idle)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        for sid in stale {
            if let Some(hs) = app.remove(&sid) {
                tokio::spawn(end_session(hs, "idle session reaped"));
            }
        }
        let idle_stateless = {
            let mut slot = app.stateless.lock().await;
            match slot.as_ref() {
                Some(s) if s.active.load(Ordering::SeqCst) == 0 && s.idle_for() >= idle => {
                    slot.take()
                }
                _ => None,
            }
        };
        if let Some(hs) = idle_stateless {
            tokio::spawn(end_session(hs, "idle stateless worker reaped"));
        }
    }
}

/// Serve Streamable HTTP on `listener` until `shutdown` resolves; then close every session.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: HttpConfig,
    policy: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let max_body = usize::try_from(policy.get().max_message_bytes).unwrap_or(usize::MAX);
    let hosts = allowed_hosts(&cfg);
    let idle = cfg.idle;
    let app = Arc::new(App {
        policy,
        supervisor,
        audit,
        cfg,
        hosts,
        max_body,
        sessions: Mutex::default(),
        stateless: tokio::sync::Mutex::default(),
    });
    tokio::spawn(reaper(Arc::downgrade(&app), idle));
    let router = Router::new()
        .route(ENDPOINT, any(mcp))
        .layer(axum::middleware::from_fn_with_state(app.clone(), gate))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            audit_rejects,
        ))
        .with_state(app.clone());
    let listener = listener.tap_io(|tcp| {
        // Without it, SSE replies written in pieces stall ~40 ms on delayed ACKs.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
    });
    tracing::info!(addr = %app.cfg.addr, endpoint = ENDPOINT, "Streamable HTTP listening");
    let result = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    let all: Vec<Arc<HttpSession>> = app
        .sessions
        .lock()
        .map(|mut m| m.drain().map(|(_, v)| v).collect())
        .unwrap_or_default();
    for hs in all {
        end_session(hs, "server shutting down").await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_cover_the_loopback_spellings() {
        let cfg = HttpConfig {
            addr: "127.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!()),
            client: ClientId::parse("c").unwrap_or_else(|| unreachable!()),
            extra_hosts: vec!["mcp.example".into()],
            idle: Duration::from_secs(1),
            max_sessions: 1,
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
    }
}
