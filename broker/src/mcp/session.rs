//! One MCP session (session era, protocol 2025-11-25 negotiating down to 2025-03-26):
//! lifecycle, method dispatch, policy decisions, the session's worker, and the audit record of
//! every request.
//!
//! Transport-independent: messages come in as text, go out through an unbounded channel of
//! JSON values that the transport serialises. Every client message is hostile input.
//!
//! Audit invariant: every response leaves through [`Session::finish`], which writes the
//! request's audit record (write(2), and fdatasync in strict mode) *before* the response is
//! queued. If the record cannot be written the response is replaced by an error (fail closed),
//! and no call is dispatched to a worker while the log is unhealthy.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use mcpd_ipc::{
    CallErrorKind, Content, LogLevel, ResourceBody, ToolAccess, ToolDescriptor, ToolResult,
};
use mcpd_policy::{ClientId, Decision, DenyReason, ExecRequest, Policy, Request};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::auditing::Audit;
use crate::auth::{Origin, Principal};
use crate::mcp::jsonrpc::{
    self, Id, Incoming, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND,
};
pub use crate::mcp::protocol::{
    HEADER_MISMATCH, META_CAPS, META_VERSION, MISSING_CAPABILITY, STATELESS_VERSIONS,
    SUPPORTED_VERSIONS, UNSUPPORTED_VERSION,
};
pub use crate::mcp::stateless::{is_stateless, stateless_meta, Stateless};
use crate::transport::Outbox;
use crate::worker::supervisor::{CallEvent, CallOutcome, Supervisor, Worker, WorkerContext};

/// Cache hint of list, read and discover results: not cacheable across principals, no TTL.
const TTL_MS: u64 = 0;

/// Tools per `tools/list` page.
pub const TOOLS_PAGE_SIZE: usize = 100;

/// The message a client sees for any path outside its scope. Identical whether or not the
/// path exists, and identical to the worker's.
pub const ACCESS_DENIED: &str = "Access denied - path outside allowed directories";
const WORKER_DIED: &str = "The tool worker terminated unexpectedly; the call did not complete. The next call starts a new worker.";
const SANDBOX_UNAVAILABLE: &str = "The tool sandbox could not be started (see the server log)";
const AUDIT_UNAVAILABLE: &str = "The audit log cannot be written; the request was refused";

#[derive(Debug, Default)]
struct State {
    version: Option<&'static str>,
    initialized: bool,
    log_level: Option<LogLevel>,
    requests: u64,
    /// The client's declared capabilities (from `initialize`).
    client_caps: Value,
    /// `resources/subscribe`d URIs.
    subscriptions: std::collections::BTreeSet<String>,
    /// The roots the client reported (`roots/list`): they narrow the configured paths, never
    /// widen them. `None` until the client reported any.
    client_roots: Option<Vec<std::path::PathBuf>>,
    /// Id of the broker's own `roots/list` request waiting for the client.
    roots_request: Option<Id>,
    /// When the client last sent anything.
    last_activity: LastActivity,
}

/// A timestamp that defaults to now.
#[derive(Debug, Clone, Copy)]
struct LastActivity(Instant);

impl Default for LastActivity {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl LastActivity {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Most resource subscriptions per session.
pub const MAX_SUBSCRIPTIONS: usize = 1024;
/// Resources and prompts per list page.
pub const LIST_PAGE_SIZE: usize = 100;
/// Most server→client requests waiting for an answer per session.
pub const MAX_CLIENT_REQUESTS: usize = 64;

/// Most `subscriptions/listen` streams per session.
pub const MAX_LISTENERS: usize = 32;
/// Most change notifications forwarded per second per session.
const MAX_CHANGES_PER_SEC: u32 = 20;

/// One `subscriptions/listen` stream.
#[derive(Debug)]
struct Listener {
    id: Id,
    tools: bool,
    prompts: bool,
    resources: bool,
    uris: std::collections::BTreeSet<String>,
}

/// A server→client request waiting for the client's answer.
struct ClientPending {
    worker: Arc<Worker>,
    worker_request: u64,
    call: u64,
}

/// One client session.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    client: ClientId,
    policy_cell: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
    out: Outbox,
    state: Mutex<State>,
    worker: tokio::sync::Mutex<Option<Arc<Worker>>>,
    inflight: Mutex<HashMap<Id, (Arc<Worker>, u64)>>,
    client_pending: Mutex<HashMap<Id, ClientPending>>,
    next_client_request: std::sync::atomic::AtomicU64,
    mcp_tasks: Mutex<crate::mcp::tasks::Tasks>,
    /// Stateless-era `subscriptions/listen` streams.
    listeners: Mutex<Vec<Listener>>,
    /// Change reports from the worker (and from policy reloads).
    changes: mpsc::UnboundedSender<mcpd_ipc::Change>,
    slots: Arc<Semaphore>,
    tasks: tokio::sync::watch::Sender<usize>,
    opened: Instant,
}

impl Inner {
    /// The policy in force now (it may be reloaded between two requests).
    fn policy(&self) -> Arc<Policy> {
        self.policy_cell.get()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("client", &self.inner.client)
            .finish()
    }
}

/// What the audit record of one request says, besides the envelope.
#[derive(Debug, Default)]
struct Rec {
    method: String,
    tool: Option<String>,
    args_digest: Option<String>,
    args_preview: Option<Value>,
    decision: Option<(&'static str, String)>,
    outcome: &'static str,
    paths: Vec<String>,
    command: Option<String>,
    limit: Option<&'static str>,
}

impl Rec {
    fn new(method: &str) -> Self {
        Self {
            method: method.chars().take(128).collect(),
            outcome: "success",
            ..Self::default()
        }
    }
    fn allow(mut self, rule: &str) -> Self {
        self.decision = Some(("allow", rule.to_string()));
        self
    }
    fn deny(mut self, reason: &str) -> Self {
        self.decision = Some(("deny", reason.to_string()));
        self
    }
    fn outcome(mut self, o: &'static str) -> Self {
        self.outcome = o;
        self
    }
}

impl Session {
    /// A new session for an authenticated principal. Records `auth.success` and
    /// `session.open`; fails if the audit log cannot take them (fail closed).
    pub async fn open(
        principal: Principal,
        origin: &Origin,
        policy_cell: crate::reload::PolicyCell,
        supervisor: Supervisor,
        audit: Audit,
        out: Outbox,
    ) -> Result<Self, String> {
        let client = principal.client;
        let policy = policy_cell.get();
        let slots = policy.permissions(&client).map_or(1, |p| {
            usize::try_from(p.limits.max_concurrent_calls).unwrap_or(1)
        });
        let id = crate::auditing::random_id();
        let (changes, mut changes_rx) = mpsc::unbounded_channel::<mcpd_ipc::Change>();
        let mut f = Map::new();
        f.insert("session".into(), json!(id));
        f.insert("principal".into(), json!(client.as_str()));
        f.insert("transport".into(), json!(origin.transport));
        f.insert("peer".into(), json!(origin.peer));
        let mut auth = f.clone();
        auth.insert("method".into(), json!(principal.method));
        audit
            .record("auth.success", auth)
            .await
            .map_err(|e| e.to_string())?;
        audit
            .record("session.open", f)
            .await
            .map_err(|e| e.to_string())?;
        let session = Self {
            inner: Arc::new(Inner {
                id,
                client,
                policy_cell: policy_cell.clone(),
                supervisor,
                audit,
                out,
                state: Mutex::default(),
                worker: tokio::sync::Mutex::new(None),
                inflight: Mutex::default(),
                client_pending: Mutex::default(),
                next_client_request: std::sync::atomic::AtomicU64::new(1),
                mcp_tasks: Mutex::default(),
                listeners: Mutex::default(),
                changes,
                slots: Arc::new(Semaphore::new(slots.max(1))),
                tasks: tokio::sync::watch::Sender::new(0),
                opened: Instant::now(),
            }),
        };
        // Change reports (worker, policy reload) become notifications, rate-limited. The task
        // holds only a weak reference: it ends with the session.
        // A policy reload: decisions already use the new policy; announce the lists as changed
        // and retire the worker, so the next call gets a sandbox built from the new policy.
        let weak_reload = Arc::downgrade(&session.inner);
        let mut reloads = policy_cell.subscribe();
        tokio::spawn(async move {
            while reloads.recv().await.is_ok() {
                let Some(inner) = weak_reload.upgrade() else {
                    break;
                };
                let s = Session { inner };
                let old = s.inner.worker.lock().await.take();
                if let Some(w) = old {
                    w.shutdown().await;
                }
                for c in [
                    mcpd_ipc::Change::Tools,
                    mcpd_ipc::Change::Prompts,
                    mcpd_ipc::Change::Resources,
                ] {
                    s.changed(c);
                }
            }
        });
        // Ping both ways: a session-era client idle for a while gets a `ping` (its answer, or
        // silence, changes nothing here; it keeps intermediaries from closing the connection).
        let weak_ping = Arc::downgrade(&session.inner);
        tokio::spawn(async move {
            loop {
                let secs = match weak_ping.upgrade() {
                    Some(inner) => inner.policy().client_ping_secs,
                    None => return,
                };
                if secs == 0 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    continue;
                }
                tokio::time::sleep(Duration::from_secs(secs)).await;
                let Some(inner) = weak_ping.upgrade() else {
                    return;
                };
                let s = Session { inner };
                let (ready, idle) = s
                    .inner
                    .state
                    .lock()
                    .map(|st| (st.initialized, st.last_activity.elapsed()))
                    .unwrap_or((false, Duration::ZERO));
                if ready && idle >= Duration::from_secs(secs) {
                    let id = s.next_request_id("ping");
                    s.inner.out.request(
                        None,
                        json!({"jsonrpc": "2.0", "id": id.to_value(), "method": "ping"}),
                    );
                }
            }
        });
        let weak = Arc::downgrade(&session.inner);
        tokio::spawn(async move {
            let mut window = Instant::now();
            let mut sent = 0u32;
            while let Some(change) = changes_rx.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                if window.elapsed() >= Duration::from_secs(1) {
                    window = Instant::now();
                    sent = 0;
                }
                sent += 1;
                if sent <= MAX_CHANGES_PER_SEC {
                    Session { inner }.notify_changed(&change);
                }
            }
        });
        Ok(session)
    }

    /// Tell the client about a change: on the session's own stream (session era) and on every
    /// `subscriptions/listen` stream whose filter asks for it.
    fn notify_changed(&self, change: &mcpd_ipc::Change) {
        use mcpd_ipc::Change;
        let (method, uri) = match change {
            Change::Tools => ("notifications/tools/list_changed", None),
            Change::Prompts => ("notifications/prompts/list_changed", None),
            Change::Resources => ("notifications/resources/list_changed", None),
            Change::ResourceUpdated { uri } => {
                ("notifications/resources/updated", Some(uri.as_str()))
            }
        };
        let params = |sub: Option<&Id>| {
            let mut p = json!({});
            if let Some(u) = uri {
                p["uri"] = json!(u);
            }
            if let Some(id) = sub {
                p["_meta"] = json!({crate::mcp::protocol::META_SUBSCRIPTION: id.to_value()});
            }
            p
        };
        let (session_era, subscribed) = self
            .inner
            .state
            .lock()
            .map(|s| {
                (
                    s.version.is_some(),
                    uri.is_none_or(|u| s.subscriptions.contains(u)),
                )
            })
            .unwrap_or((false, false));
        if session_era && subscribed {
            self.inner
                .out
                .notify(None, jsonrpc::notification(method, params(None)));
        }
        let targets: Vec<Id> = self
            .inner
            .listeners
            .lock()
            .map(|ls| {
                ls.iter()
                    .filter(|l| match change {
                        Change::Tools => l.tools,
                        Change::Prompts => l.prompts,
                        Change::Resources => l.resources,
                        Change::ResourceUpdated { uri } => l.uris.contains(uri),
                    })
                    .map(|l| l.id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for id in targets {
            self.inner
                .out
                .notify(Some(&id), jsonrpc::notification(method, params(Some(&id))));
        }
    }

    /// Report a change (e.g. after a policy reload).
    pub fn changed(&self, change: mcpd_ipc::Change) {
        let _ = self.inner.changes.send(change);
    }

    /// Every resource URI someone in this session watches, for the worker.
    fn watched_uris(&self) -> Vec<String> {
        let mut all: std::collections::BTreeSet<String> = self
            .inner
            .state
            .lock()
            .map(|s| s.subscriptions.clone())
            .unwrap_or_default();
        if let Ok(ls) = self.inner.listeners.lock() {
            for l in ls.iter() {
                all.extend(l.uris.iter().cloned());
            }
        }
        all.into_iter()
            .filter(|u| u.starts_with("file://"))
            .collect()
    }

    async fn update_watch(&self) {
        let uris = self.watched_uris();
        let w = self.inner.worker.lock().await.clone();
        if let Some(w) = w {
            w.watch(uris).await;
        }
    }

    /// Run request work in the background, counted so [`Session::drain`] can wait for it.
    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.inner.tasks.send_modify(|n| *n += 1);
        let tasks = self.inner.tasks.clone();
        tokio::spawn(async move {
            f.await;
            tasks.send_modify(|n| *n = n.saturating_sub(1));
        });
    }

    /// Wait until every request in progress has answered, at most `limit`.
    pub async fn drain(&self, limit: Duration) {
        let mut rx = self.inner.tasks.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
    }

    /// The longest a call of this client may take (for draining at end of input).
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(
            self.inner
                .policy()
                .permissions(&self.inner.client)
                .map_or(1, |p| p.limits.call_timeout_secs),
        )
    }

    /// The session's id (also the HTTP `Mcp-Session-Id`): 128 random bits, hex.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Whether `initialize` succeeded on this session.
    pub fn is_initialized(&self) -> bool {
        self.inner
            .state
            .lock()
            .map(|s| s.version.is_some())
            .unwrap_or(false)
    }

    /// Cancel a request in progress (the client cancelled it or went away): the worker is told
    /// to stop, and no response is sent.
    pub fn cancel(&self, id: &Id) {
        let was_listener = self.inner.listeners.lock().is_ok_and(|mut ls| {
            let before = ls.len();
            ls.retain(|l| &l.id != id);
            ls.len() != before
        });
        if was_listener {
            let s = self.clone();
            tokio::spawn(async move { s.update_watch().await });
        }
        let entry = self
            .inner
            .inflight
            .lock()
            .ok()
            .and_then(|mut m| m.remove(id));
        if let Some((worker, call)) = entry {
            tokio::spawn(async move { worker.cancel(call).await });
        }
    }

    fn base_fields(&self) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("session".into(), json!(self.inner.id));
        f.insert("principal".into(), json!(self.inner.client.as_str()));
        f
    }

    /// Record a limit hit.
    async fn limit_hit(&self, limit: &'static str, tool: Option<&str>) {
        let mut f = self.base_fields();
        f.insert("limit".into(), json!(limit));
        if let Some(t) = tool {
            f.insert("tool".into(), json!(t));
        }
        let _ = self.inner.audit.record("limit.hit", f).await;
    }

    /// Write the request's audit record, then queue the response (fail closed).
    async fn finish(&self, id: Option<&Id>, started: Instant, rec: Rec, response: Value) {
        if !self.inner.audit.enabled() {
            if let Ok(mut s) = self.inner.state.lock() {
                s.requests += 1;
            }
            if !response.is_null() {
                self.inner.out.reply(id, response).await;
            }
            return;
        }
        let mut f = self.base_fields();
        f.insert("method".into(), json!(rec.method));
        if let Some(id) = id {
            f.insert("request_id".into(), id.to_value());
        }
        if let Some(t) = rec.tool {
            f.insert("tool".into(), json!(t));
        }
        if let Some(d) = rec.args_digest {
            f.insert("args_digest".into(), json!(d));
        }
        if let Some(p) = rec.args_preview {
            f.insert("args_preview".into(), p);
        }
        if let Some((decision, why)) = rec.decision {
            f.insert("decision".into(), json!(decision));
            f.insert(
                if decision == "allow" {
                    "rule"
                } else {
                    "reason"
                }
                .into(),
                json!(why),
            );
        }
        let outcome = match response.get("error") {
            Some(_) if rec.outcome == "success" => "error",
            _ => rec.outcome,
        };
        f.insert("outcome".into(), json!(outcome));
        if let Some(code) = response.get("error").and_then(|e| e.get("code")) {
            f.insert("error_code".into(), code.clone());
        }
        if !rec.paths.is_empty() {
            f.insert("paths".into(), json!(rec.paths));
        }
        if let Some(c) = rec.command {
            f.insert("command".into(), json!(c));
        }
        if let Some(l) = rec.limit {
            f.insert("limit".into(), json!(l));
        }
        f.insert(
            "duration_us".into(),
            json!(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
        );
        let bytes = response.get("result").map_or(0, |r| r.to_string().len());
        f.insert("result_bytes".into(), json!(bytes));
        if let Ok(mut s) = self.inner.state.lock() {
            s.requests += 1;
        }
        match self.inner.audit.record("request", f).await {
            Ok(()) if response.is_null() => {}
            Ok(()) => {
                self.inner.out.reply(id, response).await;
            }
            Err(e) => {
                tracing::error!("audit: {e}");
                let rid = id.map_or(Value::Null, Id::to_value);
                self.inner
                    .out
                    .reply(id, jsonrpc::error(rid, INTERNAL_ERROR, AUDIT_UNAVAILABLE))
                    .await;
            }
        }
    }

    /// Handle one incoming message. Every request is answered from a spawned task, after its
    /// audit record is written.
    pub fn handle(&self, msg: Incoming) {
        let started = Instant::now();
        if let Ok(mut s) = self.inner.state.lock() {
            s.last_activity = LastActivity(started);
        }
        match msg {
            Incoming::Invalid { id, code, message } => {
                let s = self.clone();
                self.spawn(async move {
                    let rec = Rec::new("<invalid>").outcome("invalid");
                    let rid = match &id {
                        Value::String(x) => Some(Id::Str(x.clone())),
                        Value::Number(n) => n.as_i64().map(Id::Num),
                        _ => None,
                    };
                    s.finish(
                        rid.as_ref(),
                        started,
                        rec,
                        jsonrpc::error(id, code, &message),
                    )
                    .await;
                });
            }
            Incoming::Response { id, outcome } => self.client_response(id, outcome),
            Incoming::Notification { method, params } => self.notification(&method, &params),
            Incoming::Request { id, method, params } => {
                let s = self.clone();
                self.spawn(async move {
                    let (rec, response) = s.request(&id, &method, params).await;
                    s.finish(Some(&id), started, rec, response).await;
                });
            }
        }
    }

    /// The client answered one of our requests: pass the answer to the worker that asked.
    fn client_response(&self, id: Option<Id>, outcome: Result<Value, Value>) {
        let Some(id) = id else { return };
        // The answer to the broker's own roots/list?
        let own = self.inner.state.lock().ok().is_some_and(|mut s| {
            if s.roots_request.as_ref() == Some(&id) {
                s.roots_request = None;
                true
            } else {
                false
            }
        });
        if own {
            self.set_client_roots(outcome.ok());
            return;
        }
        let Some(p) = self
            .inner
            .client_pending
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&id))
        else {
            return; // unknown or already answered: ignored
        };
        let reply = match outcome {
            Ok(v @ Value::Object(_)) if v.to_string().len() <= 1024 * 1024 => {
                mcpd_ipc::ClientReplyOutcome::Ok {
                    result_json: v.to_string(),
                }
            }
            Ok(_) => mcpd_ipc::ClientReplyOutcome::Err {
                message: "the client's answer was not a valid result".into(),
            },
            Err(e) => mcpd_ipc::ClientReplyOutcome::Err {
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .map_or_else(|| "the client refused".to_string(), printable),
            },
        };
        tokio::spawn(async move { p.worker.client_reply(p.worker_request, reply).await });
    }

    /// Ask the client for its roots (session era, if it declared the capability).
    fn ask_roots(&self) {
        let id = {
            let Ok(mut s) = self.inner.state.lock() else {
                return;
            };
            if s.version.is_none() || s.client_caps.get("roots").is_none() {
                return;
            }
            let id = self.next_request_id("roots");
            s.roots_request = Some(id.clone());
            id
        };
        let queued = self.inner.out.request(
            None,
            json!({"jsonrpc": "2.0", "id": id.to_value(), "method": "roots/list", "params": {}}),
        );
        if !queued {
            if let Ok(mut s) = self.inner.state.lock() {
                s.roots_request = None;
            }
        }
    }

    /// Record the client's roots: `file://` directories, lexically normalised. A malformed
    /// answer leaves the previous roots in place.
    fn set_client_roots(&self, result: Option<Value>) {
        let Some(list) = result
            .as_ref()
            .and_then(|r| r.get("roots"))
            .and_then(Value::as_array)
        else {
            return;
        };
        let roots: Vec<std::path::PathBuf> = list
            .iter()
            .take(256)
            .filter_map(|r| r.get("uri").and_then(Value::as_str))
            .filter_map(file_uri_path)
            .filter_map(|p| lexical(std::path::Path::new(&p)))
            .collect();
        tracing::info!(client = %self.inner.client, roots = roots.len(), "client roots narrow the configured paths");
        if let Ok(mut s) = self.inner.state.lock() {
            // No usable roots (an empty list, or none that is a file:// URI) narrow nothing.
            s.client_roots = (!roots.is_empty()).then_some(roots);
        }
    }

    /// With client roots: whether every path lies inside one of them (resolved like the
    /// policy resolves it). Without: true.
    fn inside_client_roots(&self, paths: &[&str]) -> bool {
        let roots = self
            .inner
            .state
            .lock()
            .ok()
            .and_then(|s| s.client_roots.clone());
        let Some(roots) = roots else { return true };
        let policy = self.inner.policy();
        let base = policy
            .permissions(&self.inner.client)
            .and_then(mcpd_policy::base_dir)
            .map(std::path::Path::to_path_buf);
        paths.iter().all(|p| {
            let given = std::path::Path::new(p);
            let abs = if given.is_absolute() {
                given.to_path_buf()
            } else {
                match &base {
                    Some(b) => b.join(given),
                    None => return false,
                }
            };
            lexical(&abs).is_some_and(|n| roots.iter().any(|r| n.starts_with(r)))
        })
    }

    /// Relay a worker's request to the client, on the stream of the call that made it.
    async fn client_request(
        &self,
        related: &Id,
        worker: &Arc<Worker>,
        call: u64,
        worker_request: u64,
        request: mcpd_ipc::ClientRequestKind,
    ) {
        let refuse = |m: &str| mcpd_ipc::ClientReplyOutcome::Err { message: m.into() };
        let (method, params, cap) = match &request {
            mcpd_ipc::ClientRequestKind::Sampling { params_json } => (
                "sampling/createMessage",
                serde_json::from_str::<Value>(params_json).unwrap_or(Value::Null),
                "sampling",
            ),
            mcpd_ipc::ClientRequestKind::Elicitation { params_json } => (
                "elicitation/create",
                serde_json::from_str::<Value>(params_json).unwrap_or(Value::Null),
                "elicitation",
            ),
            mcpd_ipc::ClientRequestKind::Roots => ("roots/list", json!({}), "roots"),
        };
        let declared = self
            .inner
            .state
            .lock()
            .map(|s| s.client_caps.get(cap).is_some())
            .unwrap_or(false);
        if !declared {
            worker
                .client_reply(
                    worker_request,
                    refuse(&format!("the client does not support {cap}")),
                )
                .await;
            return;
        }
        let id = self.next_request_id("req");
        let registered = match self.inner.client_pending.lock() {
            Ok(mut m) if m.len() < MAX_CLIENT_REQUESTS => {
                m.insert(
                    id.clone(),
                    ClientPending {
                        worker: worker.clone(),
                        worker_request,
                        call,
                    },
                );
                true
            }
            _ => false,
        };
        if !registered {
            worker
                .client_reply(
                    worker_request,
                    refuse("too many requests waiting for the client"),
                )
                .await;
            return;
        }
        let queued = self.inner.out.request(
            Some(related),
            json!({"jsonrpc": "2.0", "id": id.to_value(), "method": method, "params": params}),
        );
        if !queued {
            if let Some(p) = self
                .inner
                .client_pending
                .lock()
                .ok()
                .and_then(|mut m| m.remove(&id))
            {
                p.worker
                    .client_reply(p.worker_request, refuse("the client is not reading"))
                    .await;
            }
            return;
        }
        // Give up after a while: the worker is told, and a late answer is ignored.
        let s = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(
                s.inner.policy().client_request_timeout_secs,
            ))
            .await;
            let gone = s
                .inner
                .client_pending
                .lock()
                .ok()
                .and_then(|mut m| m.remove(&id));
            if let Some(p) = gone {
                p.worker
                    .client_reply(
                        p.worker_request,
                        mcpd_ipc::ClientReplyOutcome::Err {
                            message: "the client did not answer in time".into(),
                        },
                    )
                    .await;
            }
        });
    }

    /// Forget the client requests of a call that ended.
    fn forget_client_requests(&self, call: u64) {
        if let Ok(mut m) = self.inner.client_pending.lock() {
            m.retain(|_, p| p.call != call);
        }
    }

    fn notification(&self, method: &str, params: &Map<String, Value>) {
        match method {
            "notifications/initialized" => {
                if let Ok(mut s) = self.inner.state.lock() {
                    if s.version.is_some() {
                        s.initialized = true;
                    }
                }
                self.ask_roots();
            }
            "notifications/roots/list_changed" => self.ask_roots(),
            "notifications/cancelled" => {
                let Some(id) = params.get("requestId").and_then(|v| match v {
                    Value::String(s) => Some(Id::Str(s.clone())),
                    Value::Number(n) => n.as_i64().map(Id::Num),
                    _ => None,
                }) else {
                    return;
                };
                self.cancel(&id);
            }
            _ => {} // unknown notifications are ignored, as JSON-RPC requires
        }
    }

    async fn request(&self, id: &Id, method: &str, params: Map<String, Value>) -> (Rec, Value) {
        let rec = Rec::new(method);
        let err = |code, msg: &str| jsonrpc::error(id.to_value(), code, msg);
        let version = self.inner.state.lock().ok().and_then(|s| s.version);
        if is_stateless(method, &params) {
            return self.stateless_request(id, method, params, rec).await;
        }
        match method {
            "ping" => return (rec.allow("protocol"), jsonrpc::response(id, json!({}))),
            "initialize" => return self.initialize(id, &params, rec),
            _ => {}
        }
        if version.is_none() {
            return (
                rec.deny("not_initialized"),
                err(
                    INVALID_REQUEST,
                    "Invalid Request: the session is not initialized; send initialize first",
                ),
            );
        }
        match method {
            "tools/list" => self.tools_list(id, params, rec).await,
            "tools/call" => self.tools_call(id, params, rec, None).await,
            "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "prompts/list"
            | "prompts/get"
            | "completion/complete" => self.provider_request(id, method, params, rec, None).await,
            "resources/subscribe" | "resources/unsubscribe" => {
                let Some(uri) = params
                    .get("uri")
                    .and_then(Value::as_str)
                    .filter(|u| !u.is_empty() && u.len() <= 8192)
                else {
                    return (
                        rec,
                        err(INVALID_PARAMS, "Invalid params: uri must be a string"),
                    );
                };
                let updated: Result<(), &str> = match self.inner.state.lock() {
                    Err(_) => Err("Internal error"),
                    Ok(mut s) => {
                        if method == "resources/subscribe" {
                            if s.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                                Err("Invalid params: too many subscriptions")
                            } else {
                                s.subscriptions.insert(uri.to_string());
                                Ok(())
                            }
                        } else {
                            s.subscriptions.remove(uri);
                            Ok(())
                        }
                    }
                };
                if let Err(m) = updated {
                    return (rec.outcome("limit"), err(INVALID_PARAMS, m));
                }
                self.update_watch().await;
                (rec.allow("protocol"), jsonrpc::response(id, json!({})))
            }
            "logging/setLevel" => match params
                .get("level")
                .and_then(Value::as_str)
                .and_then(LogLevel::parse)
            {
                Some(l) => {
                    if let Ok(mut s) = self.inner.state.lock() {
                        s.log_level = Some(l);
                    }
                    (rec.allow("protocol"), jsonrpc::response(id, json!({})))
                }
                None => (
                    rec,
                    err(
                        INVALID_PARAMS,
                        "Invalid params: level must be a log level name",
                    ),
                ),
            },
            _ => (
                rec,
                err(
                    METHOD_NOT_FOUND,
                    &format!("Method not found: {}", printable(method)),
                ),
            ),
        }
    }

    fn initialize(&self, id: &Id, params: &Map<String, Value>, rec: Rec) -> (Rec, Value) {
        let Some(asked) = params.get("protocolVersion").and_then(Value::as_str) else {
            return (
                rec,
                jsonrpc::error(
                    id.to_value(),
                    INVALID_PARAMS,
                    "Invalid params: protocolVersion is required",
                ),
            );
        };
        let version = SUPPORTED_VERSIONS
            .iter()
            .copied()
            .find(|v| *v == asked)
            .unwrap_or(SUPPORTED_VERSIONS[0]);
        {
            let Ok(mut s) = self.inner.state.lock() else {
                return (
                    rec,
                    jsonrpc::error(id.to_value(), INTERNAL_ERROR, "Internal error"),
                );
            };
            if s.version.is_some() {
                drop(s);
                return (
                    rec,
                    jsonrpc::error(
                        id.to_value(),
                        INVALID_REQUEST,
                        "Invalid Request: already initialized",
                    ),
                );
            }
            s.version = Some(version);
            s.client_caps = params
                .get("capabilities")
                .filter(|c| c.is_object())
                .cloned()
                .unwrap_or_else(|| json!({}));
        }
        // Start the worker now, while the client finishes its handshake.
        let s = self.clone();
        tokio::spawn(async move {
            let _ = s.worker().await;
        });
        (
            rec.allow("protocol"),
            jsonrpc::response(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {
                        "tools": {"listChanged": true},
                        "resources": {"subscribe": true, "listChanged": true},
                        "prompts": {"listChanged": true},
                        "completions": {},
                        "logging": {}
                    },
                    "serverInfo": {"name": "mcpd", "title": "mcpd (confined MCP server)", "version": env!("CARGO_PKG_VERSION")},
                    "instructions": "Tools run in a per-session sandbox. Paths must lie within the directories listed by list_allowed_directories."
                }),
            ),
        )
    }

    async fn worker(&self) -> Result<Arc<Worker>, ()> {
        let mut slot = self.inner.worker.lock().await;
        if let Some(w) = slot.as_ref().filter(|w| w.is_alive()) {
            return Ok(w.clone());
        }
        if let Some(old) = slot.take() {
            tracing::warn!(client = %self.inner.client, pid = old.pid(), "replacing dead worker");
            old.kill().await;
        }
        let ctx = WorkerContext {
            audit: self.inner.audit.clone(),
            session: self.inner.id.clone(),
            principal: self.inner.client.to_string(),
            changes: Some(self.inner.changes.clone()),
        };
        match self
            .inner
            .supervisor
            .spawn(
                {
                    let mut spec = self.inner.policy().sandbox_spec(&self.inner.client);
                    crate::worker::sandbox::complete(&mut spec);
                    spec
                },
                self.inner
                    .policy()
                    .permissions(&self.inner.client)
                    .map(|p| crate::worker::cgroup::Limits {
                        max_processes: p.limits.max_processes,
                        memory_bytes: p.limits.memory_bytes,
                    })
                    .unwrap_or_default(),
                ctx,
            )
            .await
        {
            Ok(w) => {
                tracing::info!(client = %self.inner.client, pid = w.pid(), landlock = ?w.enforcement().landlock, "worker started");
                *slot = Some(w.clone());
                let uris = self.watched_uris();
                if !uris.is_empty() {
                    w.watch(uris).await;
                }
                Ok(w)
            }
            Err(e) => {
                tracing::error!(client = %self.inner.client, "worker start failed: {e}");
                Err(())
            }
        }
    }

    /// Whether the policy lets this client see (and so call) a tool.
    fn may_see(&self, t: &ToolDescriptor) -> bool {
        matches!(
            self.inner.policy().decide(
                &self.inner.client,
                &Request::SeeTool {
                    tool: &t.name,
                    access: t.access
                }
            ),
            Decision::Allow(_)
        )
    }

    fn visible<'a>(&self, tools: &'a [ToolDescriptor]) -> Vec<&'a ToolDescriptor> {
        tools.iter().filter(|t| self.may_see(t)).collect()
    }

    /// A tool of the worker by name, if this client may see it.
    fn visible_tool<'a>(&self, worker: &'a Worker, name: &str) -> Option<&'a ToolDescriptor> {
        worker
            .tools()
            .iter()
            .find(|t| t.name == name)
            .filter(|t| self.may_see(t))
    }

    /// A fresh id for a request the broker sends to the client (`mcpd-<kind>-<n>`), unique in
    /// the session so the client's answer finds its way back.
    fn next_request_id(&self, kind: &str) -> Id {
        let n = self
            .inner
            .next_client_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Id::Str(format!("mcpd-{kind}-{n}"))
    }

    async fn tools_list(&self, id: &Id, params: Map<String, Value>, rec: Rec) -> (Rec, Value) {
        let err = |code, msg: &str| jsonrpc::error(id.to_value(), code, msg);
        let start = match params.get("cursor") {
            None | Some(Value::Null) => 0,
            Some(Value::String(c)) => match c
                .strip_prefix("offset:")
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) => n,
                None => return (rec, err(INVALID_PARAMS, "Invalid params: unknown cursor")),
            },
            Some(_) => {
                return (
                    rec,
                    err(INVALID_PARAMS, "Invalid params: cursor must be a string"),
                )
            }
        };
        let Ok(worker) = self.worker().await else {
            return (
                rec.outcome("worker_unavailable"),
                err(INTERNAL_ERROR, SANDBOX_UNAVAILABLE),
            );
        };
        let visible = self.visible(worker.tools());
        if start > visible.len() {
            return (rec, err(INVALID_PARAMS, "Invalid params: unknown cursor"));
        }
        let page: Vec<Value> = visible
            .iter()
            .skip(start)
            .take(TOOLS_PAGE_SIZE)
            .map(|t| tool_json(t))
            .collect();
        let mut result = json!({ "tools": page });
        if start + TOOLS_PAGE_SIZE < visible.len() {
            result["nextCursor"] = json!(format!("offset:{}", start + TOOLS_PAGE_SIZE));
        }
        (
            rec.allow(&format!("clients.{} tool visibility", self.inner.client)),
            jsonrpc::response(id, result),
        )
    }

    /// A stateless-era request: no session state, `_meta` per request, `resultType` on every
    /// result, cache hints on lists, reads and discover.
    async fn stateless_request(
        &self,
        id: &Id,
        method: &str,
        params: Map<String, Value>,
        rec: Rec,
    ) -> (Rec, Value) {
        let st = match stateless_meta(&params) {
            Ok(st) => st,
            Err(e) => return (rec.deny("invalid_meta"), e.to_response(id.to_value())),
        };
        let (rec, mut response) = match method {
            "server/discover" => (
                rec.allow("protocol"),
                jsonrpc::response(id, self.discover()),
            ),
            "tools/list" => self.tools_list(id, params, rec).await,
            "tools/call" => self.call_or_task(id, params, rec, &st).await,
            "tasks/get" | "tasks/update" | "tasks/cancel" => {
                self.tasks_request(id, method, &params, rec, &st)
            }
            "subscriptions/listen" => return self.listen(id, &params, rec).await,
            "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "prompts/list"
            | "prompts/get"
            | "completion/complete" => {
                self.provider_request(id, method, params, rec, Some(&st))
                    .await
            }
            _ => {
                let mut e = jsonrpc::error(
                    id.to_value(),
                    METHOD_NOT_FOUND,
                    &format!("Method not found: {}", printable(method)),
                );
                e["error"]["data"] = json!(printable(method));
                return (rec, e);
            }
        };
        if let Some(r) = response.get_mut("result").and_then(Value::as_object_mut) {
            r.remove("_inTask");
            r.entry("resultType").or_insert_with(|| json!("complete"));
            if matches!(
                method,
                "tools/list"
                    | "resources/list"
                    | "resources/templates/list"
                    | "resources/read"
                    | "prompts/list"
            ) {
                r.insert("ttlMs".into(), json!(TTL_MS));
                r.insert("cacheScope".into(), json!("private"));
            }
        }
        (rec, response)
    }

    /// The input schema of a tool this client may see, when it mirrors arguments into headers
    /// (`x-mcp-header`, checked by the HTTP transport); `None` otherwise, so the common call
    /// does not parse a schema.
    pub async fn header_mapped_schema(&self, name: &str) -> Option<Value> {
        let worker = self.worker().await.ok()?;
        let t = self.visible_tool(&worker, name)?;
        if !t.input_schema_json.contains("x-mcp-header") {
            return None;
        }
        serde_json::from_str(&t.input_schema_json).ok()
    }

    /// The client's answers and the verified state of an input-required retry.
    fn input_round(
        &self,
        scope: &str,
        params: &Map<String, Value>,
        st: &Stateless,
    ) -> Result<mcpd_ipc::InputRound, &'static str> {
        let responses_json = match params.get("inputResponses") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(m)) if m.len() <= 64 && v.to_string().len() <= 1024 * 1024 => {
                Some(v.to_string())
            }
            Some(_) => return Err("Invalid params: inputResponses must be an object"),
        };
        let state = match params.get("requestState") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(
                crate::mcp::seal::open(self.inner.client.as_str(), scope, t)
                    .ok_or("Invalid params: requestState failed verification")?,
            ),
            Some(_) => return Err("Invalid params: requestState must be a string"),
        };
        Ok(mcpd_ipc::InputRound {
            client_caps_json: st.caps.to_string(),
            responses_json,
            state,
        })
    }

    /// An `InputRequiredResult` from a (hostile) worker's request list and state, sealed.
    fn input_required_json(&self, scope: &str, ir: &mcpd_ipc::InputRequired) -> Option<Value> {
        let requests: Value = serde_json::from_str(&ir.requests_json).ok()?;
        let m = requests.as_object()?;
        let ok = !m.is_empty()
            && m.len() <= 16
            && m.iter().all(|(k, v)| {
                short(k, 128)
                    && matches!(
                        v.get("method").and_then(Value::as_str),
                        Some("elicitation/create" | "sampling/createMessage" | "roots/list")
                    )
                    && v.get("params").is_none_or(Value::is_object)
            });
        if !ok
            || ir
                .state
                .as_ref()
                .is_some_and(|s| s.len() > crate::mcp::seal::MAX_STATE / 2)
        {
            return None;
        }
        let mut v = json!({"resultType": "input_required", "inputRequests": requests});
        if ir.in_task {
            // Internal marker for the task runner (removed before anything reaches a client).
            v["_inTask"] = json!(true);
        }
        if let Some(state) = &ir.state {
            // `None` only without a key (seal::init runs at broker start): fail closed.
            v["requestState"] = json!(crate::mcp::seal::seal(
                self.inner.client.as_str(),
                scope,
                state
            )?);
        }
        Some(v)
    }

    /// `tools/call` in the stateless era: a task when the tool supports tasks and the request
    /// declares the extension, else an ordinary call.
    async fn call_or_task(
        &self,
        id: &Id,
        params: Map<String, Value>,
        rec: Rec,
        st: &Stateless,
    ) -> (Rec, Value) {
        use crate::mcp::tasks::{self, Task};
        use mcpd_ipc::TaskSupport;
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = name.as_str();
        let support = match self.worker().await {
            Ok(w) => self.visible_tool(&w, name).map(|t| t.task_support),
            Err(_) => None,
        };
        match (support, tasks::declared(st)) {
            (Some(TaskSupport::Required), false) => {
                let mut e = jsonrpc::error(
                    id.to_value(),
                    MISSING_CAPABILITY,
                    "This tool runs only as a task: declare the tasks extension",
                );
                e["error"]["data"] = tasks::required_capability();
                return (rec.deny("missing_client_capability"), e);
            }
            (Some(TaskSupport::Optional | TaskSupport::Required), true) => {}
            _ => return self.tools_call(id, params, rec, Some(st)).await,
        }
        if let Ok(mut t) = self.inner.mcp_tasks.lock() {
            t.expire();
            if t.full() {
                return (
                    rec.outcome("limit"),
                    jsonrpc::error(id.to_value(), INTERNAL_ERROR, "Too many tasks"),
                );
            }
        }
        let task_id = crate::auditing::random_id();
        let run_id = Id::Str(format!("task:{task_id}"));
        let started = Instant::now();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        {
            let s = self.clone();
            let (p, st, rid) = (params.clone(), st.clone(), run_id.clone());
            tokio::spawn(async move {
                let r = s.tools_call(&rid, p, rec, Some(&st)).await;
                let _ = tx.send(r);
            });
        }
        // A tool that needs input before any work starts answers at once: that is an input
        // round of the request itself, not a task.
        let early = match tokio::time::timeout(tasks::DECIDE_WINDOW, &mut rx).await {
            // No response (cancelled), or an input round: answered as the request itself.
            Ok(Ok((rec, mut resp))) if resp.get("result").is_none() || is_input_round(&resp) => {
                resp["id"] = id.to_value();
                return (rec, resp);
            }
            Ok(Ok(done)) => Some(done),
            Ok(Err(_)) => {
                return (
                    rec_task_created(name),
                    jsonrpc::error(id.to_value(), INTERNAL_ERROR, "Internal error"),
                )
            }
            Err(_) => None,
        };
        let mut task = Task::new(params, run_id, st.clone());
        let created = task.to_json(&task_id, true);
        let still_running = early.is_none();
        if let Some((rec, resp)) = early {
            task.finish_run(&resp);
            let s = self.clone();
            tokio::spawn(async move { s.finish(None, started, rec, Value::Null).await });
        }
        if let Ok(mut t) = self.inner.mcp_tasks.lock() {
            t.insert(task_id.clone(), task);
        }
        if still_running {
            self.watch_task(task_id, rx, started);
        }
        (rec_task_created(name), jsonrpc::response(id, created))
    }

    /// When a task's run ends: record its outcome, audit it.
    fn watch_task(
        &self,
        task_id: String,
        rx: tokio::sync::oneshot::Receiver<(Rec, Value)>,
        started: Instant,
    ) {
        let s = self.clone();
        tokio::spawn(async move {
            let Ok((rec, resp)) = rx.await else { return };
            if let Ok(mut t) = s.inner.mcp_tasks.lock() {
                if let Some(task) = t.get_mut(&task_id) {
                    task.finish_run(&resp);
                }
            }
            s.finish(None, started, rec, Value::Null).await;
        });
    }

    /// tasks/get, tasks/update, tasks/cancel.
    fn tasks_request(
        &self,
        id: &Id,
        method: &str,
        params: &Map<String, Value>,
        rec: Rec,
        st: &Stateless,
    ) -> (Rec, Value) {
        use crate::mcp::tasks;
        if !tasks::declared(st) {
            let mut e = jsonrpc::error(
                id.to_value(),
                MISSING_CAPABILITY,
                "The tasks extension is not declared by this request",
            );
            e["error"]["data"] = tasks::required_capability();
            return (rec.deny("missing_client_capability"), e);
        }
        let Some(task_id) = params.get("taskId").and_then(Value::as_str) else {
            return (
                rec,
                jsonrpc::error(
                    id.to_value(),
                    INVALID_PARAMS,
                    "Invalid params: taskId must be a string",
                ),
            );
        };
        let mut rerun = None;
        let answer = {
            let Ok(mut all) = self.inner.mcp_tasks.lock() else {
                return (
                    rec,
                    jsonrpc::error(id.to_value(), INTERNAL_ERROR, "Internal error"),
                );
            };
            all.expire();
            let Some(t) = all.get_mut(task_id) else {
                let mut e = jsonrpc::error(id.to_value(), INVALID_PARAMS, "Unknown task");
                e["error"]["data"] = json!({"taskId": printable(task_id)});
                return (rec, e);
            };
            match method {
                "tasks/get" => t.to_json(task_id, false),
                "tasks/update" => {
                    let answers = params
                        .get("inputResponses")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default();
                    if t.update(&answers) {
                        let n = crate::auditing::random_id();
                        t.run_id = Id::Str(format!("task:{task_id}:{n}"));
                        rerun = Some((t.run_id.clone(), t.rerun_params(), t.ctx.clone()));
                    }
                    json!({})
                }
                _ => {
                    if t.cancel() {
                        self.cancel(&t.run_id);
                    }
                    json!({})
                }
            }
        };
        if let Some((run_id, p, st)) = rerun {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let s = self.clone();
            tokio::spawn(async move {
                let mut r = Rec::new("tools/call");
                r.tool = p.get("name").and_then(Value::as_str).map(printable);
                let out = s.tools_call(&run_id, p, r, Some(&st)).await;
                let _ = tx.send(out);
            });
            self.watch_task(task_id.to_string(), rx, Instant::now());
        }
        (rec.allow("tasks"), jsonrpc::response(id, answer))
    }

    /// `subscriptions/listen`: acknowledge the honoured filter on the request's stream, then
    /// keep sending matching notifications there until the client closes it (no response).
    async fn listen(&self, id: &Id, params: &Map<String, Value>, rec: Rec) -> (Rec, Value) {
        let n = params.get("notifications").and_then(Value::as_object);
        let flag = |k: &str| {
            n.and_then(|n| n.get(k))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let uris: std::collections::BTreeSet<String> = n
            .and_then(|n| n.get("resourceSubscriptions"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter(|u| short(u, 8192))
                    .take(MAX_SUBSCRIPTIONS)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let listener = Listener {
            id: id.clone(),
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
            uris,
        };
        let mut honoured = json!({});
        for (k, on) in [
            ("toolsListChanged", listener.tools),
            ("promptsListChanged", listener.prompts),
            ("resourcesListChanged", listener.resources),
        ] {
            if on {
                honoured[k] = json!(true);
            }
        }
        if !listener.uris.is_empty() {
            honoured["resourceSubscriptions"] = json!(listener.uris);
        }
        let watch = !listener.uris.is_empty();
        let added = self.inner.listeners.lock().is_ok_and(|mut ls| {
            if ls.len() >= MAX_LISTENERS || ls.iter().any(|l| &l.id == id) {
                return false;
            }
            ls.push(listener);
            true
        });
        if !added {
            return (
                rec.outcome("limit"),
                jsonrpc::error(
                    id.to_value(),
                    INVALID_REQUEST,
                    "Too many subscriptions streams",
                ),
            );
        }
        if watch {
            self.update_watch().await;
        }
        self.inner.out.reply(
            Some(id),
            jsonrpc::notification(
                "notifications/subscriptions/acknowledged",
                json!({"notifications": honoured, "_meta": {crate::mcp::protocol::META_SUBSCRIPTION: id.to_value()}}),
            ),
        ).await;
        (rec.allow("protocol"), Value::Null)
    }

    /// The `server/discover` result.
    fn discover(&self) -> Value {
        json!({
            "resultType": "complete",
            "supportedVersions": STATELESS_VERSIONS,
            "capabilities": {
                "tools": {"listChanged": true},
                "resources": {"listChanged": true, "subscribe": true},
                "prompts": {"listChanged": true},
                "completions": {},
                "logging": {},
                "extensions": {crate::mcp::tasks::TASKS_EXT: {}}
            },
            "instructions": "Tools run in a per-client sandbox. Paths must lie within the directories listed by list_allowed_directories.",
            "ttlMs": TTL_MS,
            "cacheScope": "private",
            "_meta": {crate::mcp::protocol::META_SERVER_INFO: {"name": "mcpd", "title": "mcpd (confined MCP server)", "version": env!("CARGO_PKG_VERSION")}}
        })
    }

    async fn tools_call(
        &self,
        id: &Id,
        params: Map<String, Value>,
        mut rec: Rec,
        stateless: Option<&Stateless>,
    ) -> (Rec, Value) {
        // Log notifications: the session's level, or (stateless) only at the level the
        // request asked for, and none without one.
        let log_min = match stateless {
            Some(st) => st.log_level,
            None => Some(
                self.inner
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.log_level)
                    .unwrap_or(LogLevel::Info),
            ),
        };
        let err = |code, msg: &str| jsonrpc::error(id.to_value(), code, msg);
        let Some(name) = params.get("name").and_then(Value::as_str) else {
            return (
                rec,
                err(INVALID_PARAMS, "Invalid params: name must be a string"),
            );
        };
        rec.tool = Some(printable(name));
        let args = match params.get("arguments") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(a)) => a.clone(),
            Some(_) => {
                return (
                    rec,
                    err(
                        INVALID_PARAMS,
                        "Invalid params: arguments must be an object",
                    ),
                )
            }
        };
        let args_value = Value::Object(args);
        if self.inner.audit.enabled() {
            rec.args_digest = Some(mcpd_audit::args_digest(&args_value));
        }
        if self.inner.audit.preview_args() {
            rec.args_preview = Some(mcpd_audit::redacted_preview(&args_value));
        }
        let Value::Object(args) = args_value else {
            return (rec, err(INTERNAL_ERROR, "Internal error"));
        };
        let progress_token = params
            .get("_meta")
            .and_then(|m| m.get("progressToken"))
            .filter(|t| t.is_string() || t.is_i64())
            .cloned();
        let Ok(worker) = self.worker().await else {
            return (
                rec.outcome("worker_unavailable"),
                err(INTERNAL_ERROR, SANDBOX_UNAVAILABLE),
            );
        };
        let unknown = || {
            err(
                INVALID_PARAMS,
                &format!("Unknown tool: {}", printable(name)),
            )
        };
        // A tool the client may not see is reported exactly like a tool that does not exist.
        let Some(desc) = self.visible_tool(&worker, name).cloned() else {
            let known = worker.tools().iter().any(|t| t.name == name);
            let rec = if known {
                rec.deny(DenyReason::ToolNotAllowed.code())
            } else {
                rec.deny("unknown_tool")
            };
            return (rec, unknown());
        };
        if let Some(st) = stateless {
            let missing: Map<String, Value> = desc
                .client_capabilities
                .iter()
                .filter(|c| st.caps.get(c.as_str()).is_none())
                .map(|c| (c.clone(), json!({})))
                .collect();
            if !missing.is_empty() {
                let mut e = err(
                    MISSING_CAPABILITY,
                    "Missing required client capability for this tool",
                );
                e["error"]["data"] = json!({"requiredCapabilities": missing});
                return (rec.deny("missing_client_capability"), e);
            }
        }
        let mut paths = Vec::new();
        // Where each entry of `paths` came from: the argument and, for a list, the index.
        let mut path_slots: Vec<(&str, Option<usize>)> = Vec::new();
        for pa in &desc.path_args {
            match (args.get(&pa.name), pa.many) {
                (None, _) => {}
                (Some(Value::String(s)), false) => {
                    paths.push((s.as_str(), pa.write));
                    path_slots.push((pa.name.as_str(), None));
                }
                (Some(Value::Array(items)), true) => {
                    for (i, it) in items.iter().enumerate() {
                        match it.as_str() {
                            Some(s) => {
                                paths.push((s, pa.write));
                                path_slots.push((pa.name.as_str(), Some(i)));
                            }
                            None => {
                                return (
                                    rec,
                                    err(
                                        INVALID_PARAMS,
                                        &format!(
                                            "Invalid arguments: {} must contain only strings",
                                            pa.name
                                        ),
                                    ),
                                )
                            }
                        }
                    }
                }
                _ => {
                    return (
                        rec,
                        err(
                            INVALID_PARAMS,
                            &format!("Invalid arguments: {} has the wrong type", pa.name),
                        ),
                    )
                }
            }
        }
        let exec = match exec_request(&desc, &args) {
            Ok(e) => e,
            Err(m) => return (rec.outcome("invalid_arguments"), err(INVALID_PARAMS, &m)),
        };
        rec.paths = paths
            .iter()
            .take(64)
            .map(|(p, _)| p.chars().take(4096).collect())
            .collect();
        if let Some(e) = &exec {
            // The command line a tool would run, for the audit record.
            let mut line: Vec<String> = e.program.iter().map(|p| p.to_string()).collect();
            line.extend(e.args.iter().map(|a| a.to_string()));
            if let Some(l) = e.language {
                line.insert(0, format!("<{l}>"));
            }
            rec.command = Some(line.join(" ").chars().take(4096).collect());
        }
        if desc.access == ToolAccess::Operator {
            // The schema is the operator's (from the policy), never the worker's.
            match self.inner.policy().operator_tool(&desc.name) {
                None => return (rec.deny("unknown_tool"), unknown()),
                Some(t) => {
                    if let Err(m) = t.validate(&Value::Object(args.clone())) {
                        return (
                            rec.outcome("invalid_arguments"),
                            jsonrpc::response(id, tool_error(&format!("Invalid arguments: {m}"))),
                        );
                    }
                }
            }
        }
        let path_list: Vec<&str> = paths.iter().map(|(p, _)| *p).collect();
        let decision = self.inner.policy().decide(
            &self.inner.client,
            &Request::CallTool {
                tool: &desc.name,
                access: desc.access,
                paths,
                exec,
            },
        );
        let allow = match decision {
            // Roots the client reported narrow what the policy allows (never widen it).
            Decision::Allow(_) if !self.inside_client_roots(&path_list) => {
                tracing::info!(client = %self.inner.client, tool = %desc.name, "denied: outside the client's roots");
                return (
                    rec.deny("outside_client_roots").outcome("denied"),
                    jsonrpc::response(id, tool_error(ACCESS_DENIED)),
                );
            }
            Decision::Allow(a) => a,
            Decision::Deny(r @ (DenyReason::PathOutsideScope | DenyReason::InvalidPath)) => {
                tracing::info!(client = %self.inner.client, tool = %desc.name, "denied: path outside scope");
                return (
                    rec.deny(r.code()).outcome("denied"),
                    jsonrpc::response(id, tool_error(ACCESS_DENIED)),
                );
            }
            Decision::Deny(
                r @ (DenyReason::ProgramNotAllowed
                | DenyReason::ArgumentNotAllowed
                | DenyReason::ShellNotAllowed
                | DenyReason::LanguageNotAllowed),
            ) => {
                tracing::info!(client = %self.inner.client, tool = %desc.name, reason = r.code(), "denied");
                let msg = match r {
                    DenyReason::ProgramNotAllowed => "Program not allowed by policy",
                    DenyReason::ArgumentNotAllowed => {
                        "An argument is not allowed by policy for this program"
                    }
                    DenyReason::ShellNotAllowed => "Shell command lines are not allowed by policy",
                    _ => "Language not allowed by policy",
                };
                return (
                    rec.deny(r.code()).outcome("denied"),
                    jsonrpc::response(id, tool_error(msg)),
                );
            }
            Decision::Deny(r) => {
                tracing::info!(client = %self.inner.client, tool = %desc.name, reason = r.code(), "denied");
                return (rec.deny(r.code()), unknown());
            }
        };
        rec = rec.allow(allow.rule());
        let mut args = args;
        if desc.access == ToolAccess::Operator {
            // Arguments that are paths stay paths. An operator tool puts its path arguments
            // into a program's argv, where the program (not mcpd) interprets them: a raw
            // client string such as `-rf` or `--files0-from=/etc/passwd` would be an option
            // to it. So the program gets the path the policy just checked: absolute (it starts
            // with `/`, so it can never be read as an option), lexically normalised, beneath
            // a root that grants it. This happens here, once, because this is where the
            // path is checked: what is checked is exactly what runs. The worker does not
            // resolve these paths again (the program opens them itself, confined by
            // Landlock to the same roots), it only refuses a value that is not absolute.
            // File tools keep the client's string: the worker resolves it beneath its
            // root descriptors and echoes it in messages as the reference server does.
            rewrite_path_args(&mut args, &path_slots, allow.paths());
        }
        if !self.inner.audit.healthy() {
            return (
                rec.outcome("audit_unavailable"),
                err(INTERNAL_ERROR, AUDIT_UNAVAILABLE),
            );
        }
        let limits = self
            .inner
            .policy()
            .permissions(&self.inner.client)
            .map(|p| p.limits.clone())
            .unwrap_or_default();
        let timeout = Duration::from_secs(limits.call_timeout_secs);
        let deadline = tokio::time::Instant::now() + timeout;
        let Ok(Ok(_permit)) =
            tokio::time::timeout_at(deadline, self.inner.slots.clone().acquire_owned()).await
        else {
            self.limit_hit("max_concurrent_calls", Some(&desc.name))
                .await;
            rec.limit = Some("max_concurrent_calls");
            return (
                rec.outcome("timeout"),
                jsonrpc::response(
                    id,
                    tool_error("Too many concurrent calls; the call timed out waiting for a slot"),
                ),
            );
        };
        let args_json = Value::Object(args).to_string();
        let scope = format!("tool:{}", desc.name);
        let input = match stateless {
            None => None,
            Some(st) => match self.input_round(&scope, &params, st) {
                Ok(i) => Some(i),
                Err(m) => {
                    return (
                        rec.deny("invalid_request_state")
                            .outcome("invalid_arguments"),
                        err(INVALID_PARAMS, m),
                    )
                }
            },
        };
        let mut handle = worker.call(allow, args_json, true, input).await;
        if let Ok(mut m) = self.inner.inflight.lock() {
            m.insert(id.clone(), (worker.clone(), handle.id));
        }
        let mut last_progress = f64::NEG_INFINITY;
        let mut events = handle.events.take();
        let outcome = loop {
            tokio::select! {
                o = &mut handle.done => break o.ok(),
                Some(ev) = async { match events.as_mut() { Some(e) => e.recv().await, None => None } } => {
                    match ev {
                        CallEvent::ClientRequest { id: wreq, request } => {
                            self.client_request(id, &worker, handle.id, wreq, request).await;
                        }
                        ev => self.event(id, ev, progress_token.as_ref(), &mut last_progress, log_min),
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    worker.cancel(handle.id).await;
                    self.inner.inflight.lock().ok().map(|mut m| m.remove(id));
                    self.limit_hit("call_timeout_secs", Some(&desc.name)).await;
                    rec.limit = Some("call_timeout_secs");
                    return (rec.outcome("timeout"), jsonrpc::response(id, tool_error(&format!("The tool call timed out after {} s and was cancelled", limits.call_timeout_secs))));
                }
            }
        };
        // Progress and log events sent before the result are queued on their own channel:
        // deliver them before the response (the worker sent them first).
        if let Some(ev) = events.as_mut() {
            while let Ok(e) = ev.try_recv() {
                if !matches!(e, CallEvent::ClientRequest { .. }) {
                    self.event(id, e, progress_token.as_ref(), &mut last_progress, log_min);
                }
            }
        }
        self.forget_client_requests(handle.id);
        let still_wanted = self
            .inner
            .inflight
            .lock()
            .ok()
            .and_then(|mut m| m.remove(id))
            .is_some();
        if !still_wanted {
            // Cancelled by the client: JSON-RPC wants no response; the record still goes out,
            // and `finish` drops the (null) response.
            return (rec.outcome("cancelled"), Value::Null);
        }
        match outcome {
            Some(CallOutcome::Done(mut r)) if r.input_required.is_some() => {
                let ir = r.input_required.take();
                match (
                    stateless,
                    ir.and_then(|ir| self.input_required_json(&scope, &ir)),
                ) {
                    (Some(_), Some(v)) => (rec.outcome("input_required"), jsonrpc::response(id, v)),
                    _ => malformed_result(&worker, rec, id).await,
                }
            }
            Some(CallOutcome::Done(r)) => {
                let is_error = r.is_error;
                match result_json(r) {
                    Some(v) => (
                        rec.outcome(if is_error { "tool_error" } else { "success" }),
                        jsonrpc::response(id, v),
                    ),
                    None => malformed_result(&worker, rec, id).await,
                }
            }
            Some(CallOutcome::Failed(e)) => match e.kind {
                CallErrorKind::UnknownTool => (rec, unknown()),
                CallErrorKind::InvalidArguments => (
                    rec.outcome("invalid_arguments"),
                    err(INVALID_PARAMS, &format!("Invalid arguments: {}", e.message)),
                ),
                CallErrorKind::Cancelled => (
                    rec.outcome("cancelled"),
                    jsonrpc::response(id, tool_error("The call was cancelled")),
                ),
                CallErrorKind::Internal => (
                    rec,
                    err(INTERNAL_ERROR, &format!("Internal error: {}", e.message)),
                ),
            },
            Some(CallOutcome::Answer(_)) => {
                tracing::warn!(
                    pid = worker.pid(),
                    "worker answered a call as a query; ending it"
                );
                worker.kill().await;
                (
                    rec.outcome("killed"),
                    err(INTERNAL_ERROR, "Internal error: malformed tool result"),
                )
            }
            Some(CallOutcome::WorkerDied) | None => {
                tracing::warn!(client = %self.inner.client, pid = worker.pid(), tool = %desc.name, "worker died during a call");
                (
                    rec.outcome("worker_crash"),
                    err(INTERNAL_ERROR, WORKER_DIED),
                )
            }
        }
    }

    fn event(
        &self,
        related: &Id,
        ev: CallEvent,
        token: Option<&Value>,
        last: &mut f64,
        log_min: Option<LogLevel>,
    ) {
        match ev {
            CallEvent::Progress {
                progress,
                total,
                message,
            } => {
                let Some(token) = token else { return };
                if progress <= *last {
                    return; // progress must increase
                }
                *last = progress;
                let mut p = json!({"progressToken": token, "progress": progress});
                if let Some(t) = total {
                    p["total"] = json!(t);
                }
                if let Some(m) = message {
                    p["message"] = json!(m);
                }
                self.inner.out.notify(
                    Some(related),
                    jsonrpc::notification("notifications/progress", p),
                );
            }
            CallEvent::ClientRequest { .. } => {} // handled by the call loop
            CallEvent::Log {
                level,
                logger,
                data,
            } => {
                let Some(min) = log_min else { return };
                if level < min {
                    return;
                }
                let mut p = json!({"level": level.as_str(), "data": data});
                if let Some(l) = logger {
                    p["logger"] = json!(l);
                }
                self.inner.out.notify(
                    Some(related),
                    jsonrpc::notification("notifications/message", p),
                );
            }
        }
    }

    /// End the session: stop the worker, wait until it is reaped, record `session.close`.
    pub async fn close(&self) {
        let w = self.inner.worker.lock().await.take();
        if let Some(w) = w {
            w.shutdown().await;
        }
        let mut f = self.base_fields();
        let requests = self.inner.state.lock().map(|s| s.requests).unwrap_or(0);
        f.insert("requests".into(), json!(requests));
        f.insert(
            "notifications_dropped".into(),
            json!(self.inner.out.dropped()),
        );
        f.insert(
            "duration_ms".into(),
            json!(u64::try_from(self.inner.opened.elapsed().as_millis()).unwrap_or(u64::MAX)),
        );
        let _ = self.inner.audit.record("session.close", f).await;
    }
}

use mcpd_policy::lexical_normalize as lexical;

fn short(s: &str, n: usize) -> bool {
    !s.is_empty() && s.len() <= n
}

/// Keep only well-formed entries of a (hostile) worker's list: objects whose `keys` are
/// non-empty strings of bounded length.
fn valid_entries(v: &Value, list: &str, keys: &[&str]) -> Option<Vec<Value>> {
    let items = v.get(list)?.as_array()?;
    Some(
        items
            .iter()
            .take(10_000)
            .filter(|e| {
                e.is_object()
                    && keys.iter().all(|k| {
                        e.get(*k)
                            .and_then(Value::as_str)
                            .is_some_and(|x| short(x, 8192))
                    })
                    && e.to_string().len() <= 64 * 1024
            })
            .cloned()
            .collect(),
    )
}

pub use mcpd_ipc::text::file_uri_path;

fn page(items: Vec<Value>, cursor: Option<&Value>) -> Result<(Vec<Value>, Option<String>), ()> {
    let start = match cursor {
        None | Some(Value::Null) => 0,
        Some(Value::String(c)) => c
            .strip_prefix("offset:")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= items.len())
            .ok_or(())?,
        Some(_) => return Err(()),
    };
    let end = (start + LIST_PAGE_SIZE).min(items.len());
    let next = (end < items.len()).then(|| format!("offset:{end}"));
    Ok((items[start..end].to_vec(), next))
}

impl Session {
    /// resources/*, prompts/*, completion/complete: asked of the worker's providers, answers
    /// validated (the worker is hostile), file:// resources checked against the policy.
    async fn provider_request(
        &self,
        id: &Id,
        method: &str,
        params: Map<String, Value>,
        rec: Rec,
        stateless: Option<&Stateless>,
    ) -> (Rec, Value) {
        let err = |code, msg: &str| jsonrpc::error(id.to_value(), code, msg);
        let str_param = |k: &str| {
            params
                .get(k)
                .and_then(Value::as_str)
                .filter(|v| short(v, 8192))
                .map(str::to_string)
        };
        // Operator prompts (from the policy) are served by the broker itself.
        let policy_now = self.inner.policy();
        let operator_prompts = policy_now.prompts_for(&self.inner.client);
        let operator_prompt = |n: &str| operator_prompts.iter().find(|p| p.name == n).copied();
        if method == "prompts/get" {
            if let Some(p) = str_param("name").as_deref().and_then(operator_prompt) {
                let args = params
                    .get("arguments")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                return match p.render(&args) {
                    Ok(v) => (rec.allow("prompts"), jsonrpc::response(id, v)),
                    Err(m) => (rec, err(INVALID_PARAMS, &format!("Invalid params: {m}"))),
                };
            }
        }
        if method == "completion/complete" {
            let r = params.get("ref");
            let prompt = (r.and_then(|r| r.get("type")).and_then(Value::as_str)
                == Some("ref/prompt"))
            .then(|| r.and_then(|r| r.get("name")).and_then(Value::as_str))
            .flatten()
            .and_then(operator_prompt);
            if let Some(p) = prompt {
                let a = params.get("argument");
                let values = p.complete(
                    a.and_then(|a| a.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    a.and_then(|a| a.get("value"))
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                );
                return (
                    rec.allow("prompts"),
                    jsonrpc::response(
                        id,
                        json!({"completion": {"values": values, "total": values.len(), "hasMore": false}}),
                    ),
                );
            }
        }
        let query = match method {
            "resources/list" => mcpd_ipc::Query::ListResources,
            "resources/templates/list" => mcpd_ipc::Query::ListResourceTemplates,
            "prompts/list" => mcpd_ipc::Query::ListPrompts,
            "resources/read" => {
                let Some(uri) = str_param("uri") else {
                    return (
                        rec,
                        err(INVALID_PARAMS, "Invalid params: uri must be a string"),
                    );
                };
                if let Some(path) = file_uri_path(&uri) {
                    let d = self
                        .inner
                        .policy()
                        .decide(&self.inner.client, &Request::ReadResource { path: &path });
                    match d {
                        Decision::Allow(_) => {}
                        Decision::Deny(r) => {
                            let mut e = err(INVALID_PARAMS, "Resource not found");
                            e["error"]["data"] = json!({"uri": uri});
                            return (rec.deny(r.code()).outcome("denied"), e);
                        }
                    }
                }
                mcpd_ipc::Query::ReadResource { uri }
            }
            "prompts/get" => {
                let Some(name) = str_param("name") else {
                    return (
                        rec,
                        err(INVALID_PARAMS, "Invalid params: name must be a string"),
                    );
                };
                let arguments = match params.get("arguments") {
                    None | Some(Value::Null) => json!({}),
                    Some(a @ Value::Object(_)) => a.clone(),
                    Some(_) => {
                        return (
                            rec,
                            err(
                                INVALID_PARAMS,
                                "Invalid params: arguments must be an object",
                            ),
                        )
                    }
                };
                let input = match stateless {
                    None => None,
                    Some(st) => match self.input_round(&format!("prompt:{name}"), &params, st) {
                        Ok(i) => Some(i),
                        Err(m) => {
                            return (rec.deny("invalid_request_state"), err(INVALID_PARAMS, m))
                        }
                    },
                };
                mcpd_ipc::Query::GetPrompt {
                    name,
                    arguments_json: arguments.to_string(),
                    input,
                }
            }
            _ => {
                let (Some(r @ Value::Object(_)), Some(a @ Value::Object(_))) =
                    (params.get("ref"), params.get("argument"))
                else {
                    return (
                        rec,
                        err(
                            INVALID_PARAMS,
                            "Invalid params: ref and argument must be objects",
                        ),
                    );
                };
                mcpd_ipc::Query::Complete {
                    reference_json: r.to_string(),
                    argument_json: a.to_string(),
                }
            }
        };
        let uri_for_error = str_param("uri");
        let Ok(worker) = self.worker().await else {
            return (
                rec.outcome("worker_unavailable"),
                err(INTERNAL_ERROR, SANDBOX_UNAVAILABLE),
            );
        };
        let answer = match worker.query(query).await {
            CallOutcome::Answer(json) => match serde_json::from_str::<Value>(&json) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    worker.kill().await;
                    return (
                        rec.outcome("killed"),
                        err(INTERNAL_ERROR, "Internal error: malformed answer"),
                    );
                }
            },
            CallOutcome::Failed(e) => {
                return match e.kind {
                    CallErrorKind::InvalidArguments | CallErrorKind::UnknownTool => {
                        let mut r = err(INVALID_PARAMS, &printable(&e.message));
                        if let Some(u) = uri_for_error {
                            r["error"]["data"] = json!({"uri": u});
                        }
                        (rec.outcome("not_found"), r)
                    }
                    _ => (rec, err(INTERNAL_ERROR, "Internal error")),
                }
            }
            CallOutcome::WorkerDied => {
                return (
                    rec.outcome("worker_crash"),
                    err(INTERNAL_ERROR, WORKER_DIED),
                )
            }
            CallOutcome::Done(_) => {
                worker.kill().await;
                return (
                    rec.outcome("killed"),
                    err(INTERNAL_ERROR, "Internal error: malformed answer"),
                );
            }
        };
        let malformed = || (INTERNAL_ERROR, "Internal error: malformed answer");
        let result: Result<Value, (i64, &str)> = match method {
            "resources/list" => valid_entries(&answer, "resources", &["uri", "name"])
                .ok_or_else(malformed)
                .and_then(|items| {
                    let visible: Vec<Value> = items
                        .into_iter()
                        .filter(|r| match r["uri"].as_str().and_then(file_uri_path) {
                            None => true,
                            Some(p) => matches!(
                                self.inner.policy().decide(
                                    &self.inner.client,
                                    &Request::ReadResource { path: &p }
                                ),
                                Decision::Allow(_)
                            ),
                        })
                        .collect();
                    let (items, next) = page(visible, params.get("cursor"))
                        .map_err(|()| (INVALID_PARAMS, "Invalid params: invalid cursor"))?;
                    let mut v = json!({"resources": items});
                    if let Some(n) = next {
                        v["nextCursor"] = json!(n);
                    }
                    Ok(v)
                }),
            "resources/templates/list" => {
                valid_entries(&answer, "resourceTemplates", &["uriTemplate", "name"])
                    .map(|t| json!({"resourceTemplates": t}))
                    .ok_or_else(malformed)
            }
            "prompts/list" => valid_entries(&answer, "prompts", &["name"])
                .map(|p| {
                    let mut all: Vec<Value> =
                        operator_prompts.iter().map(|op| op.listing()).collect();
                    all.extend(p.into_iter().filter(|w| {
                        !operator_prompts
                            .iter()
                            .any(|op| Some(op.name.as_str()) == w["name"].as_str())
                    }));
                    json!({"prompts": all})
                })
                .ok_or_else(malformed),
            "resources/read" => {
                let ok = answer["contents"].as_array().is_some_and(|c| {
                    c.iter().all(|x| {
                        x["uri"].as_str().is_some_and(|u| short(u, 8192))
                            && (x["text"].is_string() || x["blob"].is_string())
                    })
                });
                if ok {
                    Ok(json!({"contents": answer["contents"]}))
                } else {
                    Err(malformed())
                }
            }
            "prompts/get" if stateless.is_some() && answer.get("inputRequests").is_some() => {
                let name = str_param("name").unwrap_or_default();
                let state = match answer.get("requestState") {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(b)) => base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map(Some)
                        .map_err(|_| ()),
                    Some(_) => Err(()),
                };
                let ir = state.ok().map(|state| mcpd_ipc::InputRequired {
                    requests_json: answer["inputRequests"].to_string(),
                    state,
                    in_task: false,
                });
                ir.and_then(|ir| self.input_required_json(&format!("prompt:{name}"), &ir))
                    .ok_or_else(malformed)
            }
            "prompts/get" => {
                let ok = answer["messages"].as_array().is_some_and(|m| {
                    m.iter()
                        .all(|x| x["role"].is_string() && x["content"].is_object())
                });
                if ok {
                    let mut v = json!({"messages": answer["messages"]});
                    if let Some(d) = answer.get("description").filter(|d| d.is_string()) {
                        v["description"] = d.clone();
                    }
                    Ok(v)
                } else {
                    Err(malformed())
                }
            }
            _ => {
                let c = &answer["completion"];
                let ok = c["values"]
                    .as_array()
                    .is_some_and(|v| v.len() <= 100 && v.iter().all(Value::is_string));
                if ok {
                    let mut v = json!({"completion": {"values": c["values"]}});
                    if let Some(t) = c.get("total").filter(|t| t.is_u64()) {
                        v["completion"]["total"] = t.clone();
                    }
                    if let Some(h) = c.get("hasMore").filter(|h| h.is_boolean()) {
                        v["completion"]["hasMore"] = h.clone();
                    }
                    Ok(v)
                } else {
                    Err(malformed())
                }
            }
        };
        match result {
            Ok(v) => (rec.allow("protocol"), jsonrpc::response(id, v)),
            Err((code, m)) => {
                if code == INTERNAL_ERROR {
                    tracing::warn!(
                        pid = worker.pid(),
                        method,
                        "worker answered a query with a malformed result; ending it"
                    );
                    worker.kill().await;
                }
                (rec, err(code, m))
            }
        }
    }
}

/// What a command or code tool call would execute, from the arguments its descriptor names.
/// Replace each path argument by its checked form (`slots[i]` names where `checked[i]` goes).
fn rewrite_path_args(
    args: &mut Map<String, Value>,
    slots: &[(&str, Option<usize>)],
    checked: &[std::path::PathBuf],
) {
    for ((name, index), path) in slots.iter().zip(checked) {
        // The checked path was built from a UTF-8 client string, so it is UTF-8.
        let path = Value::String(path.to_string_lossy().into_owned());
        match (args.get_mut(*name), index) {
            (Some(slot), None) => *slot = path,
            (Some(Value::Array(items)), Some(i)) => {
                if let Some(slot) = items.get_mut(*i) {
                    *slot = path;
                }
            }
            _ => {}
        }
    }
}

fn exec_request<'a>(
    desc: &ToolDescriptor,
    args: &'a Map<String, Value>,
) -> Result<Option<ExecRequest<'a>>, String> {
    let Some(names) = &desc.exec_args else {
        return Ok(None);
    };
    let string = |n: &Option<String>| -> Result<Option<&'a str>, String> {
        match n.as_ref().and_then(|n| args.get(n).map(|v| (n, v))) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.as_str())),
            Some((n, _)) => Err(format!("Invalid arguments: {n} must be a string")),
        }
    };
    let program = string(&names.program)?;
    let language = string(&names.language)?;
    let mut list = Vec::new();
    if let Some((n, v)) = names
        .args
        .as_ref()
        .and_then(|n| args.get(n).map(|v| (n, v)))
    {
        match v {
            Value::Null => {}
            Value::Array(items) => {
                for it in items {
                    list.push(it.as_str().ok_or_else(|| {
                        format!("Invalid arguments: {n} must contain only strings")
                    })?);
                }
            }
            _ => {
                return Err(format!(
                    "Invalid arguments: {n} must be an array of strings"
                ))
            }
        }
    }
    let shell = match names
        .shell
        .as_ref()
        .and_then(|n| args.get(n).map(|v| (n, v)))
    {
        None | Some((_, Value::Null)) => false,
        Some((_, Value::Bool(b))) => *b,
        Some((n, _)) => return Err(format!("Invalid arguments: {n} must be a boolean")),
    };
    Ok(Some(ExecRequest {
        program,
        args: list,
        shell,
        language,
    }))
}

/// The audit record of a `tools/call` answered with a new task.
fn rec_task_created(tool: &str) -> Rec {
    let mut r = Rec::new("tools/call")
        .allow("tasks")
        .outcome("task_created");
    r.tool = Some(printable(tool));
    r
}

/// An input round before any work starts (not a task's question): `input_required` without the
/// task runner's internal marker.
fn is_input_round(resp: &Value) -> bool {
    let r = &resp["result"];
    r.get("resultType").and_then(Value::as_str) == Some("input_required")
        && r.get("_inTask").is_none()
}

/// A worker sent a result that breaks the protocol: it is ended, the client gets an error.
async fn malformed_result(worker: &Worker, rec: Rec, id: &Id) -> (Rec, Value) {
    tracing::warn!(
        pid = worker.pid(),
        "worker returned a malformed result; ending it"
    );
    worker.kill().await;
    (
        rec.outcome("killed"),
        jsonrpc::error(
            id.to_value(),
            INTERNAL_ERROR,
            "Internal error: malformed tool result",
        ),
    )
}

use crate::mcp::printable;

fn tool_error(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": true})
}

fn tool_json(t: &ToolDescriptor) -> Value {
    let mut v = json!({
        "name": t.name,
        "description": t.description,
        "inputSchema": serde_json::from_str::<Value>(&t.input_schema_json).unwrap_or_else(|_| json!({"type": "object"})),
        "annotations": {
            "readOnlyHint": t.annotations.read_only,
            "destructiveHint": t.annotations.destructive,
            "idempotentHint": t.annotations.idempotent,
            "openWorldHint": t.annotations.open_world,
        },
    });
    if let Some(title) = &t.title {
        v["title"] = json!(title);
    }
    match t.task_support {
        mcpd_ipc::TaskSupport::Forbidden => {}
        mcpd_ipc::TaskSupport::Optional => v["execution"] = json!({"taskSupport": "optional"}),
        mcpd_ipc::TaskSupport::Required => v["execution"] = json!({"taskSupport": "required"}),
    }
    if let Some(o) = t
        .output_schema_json
        .as_deref()
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    {
        v["outputSchema"] = o;
    }
    v
}

fn mime_ok(m: &str) -> bool {
    !m.is_empty() && m.len() <= 255 && m.bytes().all(|b| b.is_ascii_graphic())
}

/// Convert a (hostile) worker result to MCP JSON; `None` if it is malformed.
fn result_json(r: ToolResult) -> Option<Value> {
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let mut content = Vec::with_capacity(r.content.len());
    for c in r.content {
        content.push(match c {
            Content::Text { text } => json!({"type": "text", "text": text}),
            Content::Image { data, mime_type } if mime_ok(&mime_type) => {
                json!({"type": "image", "data": b64(&data), "mimeType": mime_type})
            }
            Content::Audio { data, mime_type } if mime_ok(&mime_type) => {
                json!({"type": "audio", "data": b64(&data), "mimeType": mime_type})
            }
            Content::Resource {
                uri,
                mime_type,
                body,
            } if uri.len() <= 8192 && mime_type.as_deref().is_none_or(mime_ok) => {
                let mut res = json!({"uri": uri});
                if let Some(m) = mime_type {
                    res["mimeType"] = json!(m);
                }
                match body {
                    ResourceBody::Text(t) => res["text"] = json!(t),
                    ResourceBody::Blob(b) => res["blob"] = json!(b64(&b)),
                }
                json!({"type": "resource", "resource": res})
            }
            Content::ResourceLink {
                uri,
                name,
                description,
                mime_type,
            } if uri.len() <= 8192
                && name.len() <= 1024
                && mime_type.as_deref().is_none_or(mime_ok) =>
            {
                let mut l = json!({"type": "resource_link", "uri": uri, "name": name});
                if let Some(d) = description {
                    l["description"] = json!(d);
                }
                if let Some(m) = mime_type {
                    l["mimeType"] = json!(m);
                }
                l
            }
            _ => return None,
        });
    }
    let mut v = json!({"content": content});
    if let Some(s) = r.structured_json {
        match serde_json::from_str::<Value>(&s) {
            Ok(o @ Value::Object(_)) => v["structuredContent"] = o,
            _ => return None,
        }
    }
    if r.is_error {
        v["isError"] = json!(true);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn malformed_worker_results_are_refused() {
        let ok = ToolResult {
            content: vec![Content::Image {
                data: vec![1, 2, 3],
                mime_type: "image/png".into(),
            }],
            structured_json: Some(r#"{"a":1}"#.into()),
            is_error: false,
            input_required: None,
        };
        let v = result_json(ok).unwrap();
        assert_eq!(v["content"][0]["data"], "AQID");
        assert_eq!(v["structuredContent"]["a"], 1);
        assert!(v.get("isError").is_none());
        let bad_mime = ToolResult {
            content: vec![Content::Image {
                data: vec![],
                mime_type: "image/png\r\nX: y".into(),
            }],
            structured_json: None,
            is_error: false,
            input_required: None,
        };
        assert!(result_json(bad_mime).is_none());
        let bad_structured = ToolResult {
            content: vec![],
            structured_json: Some("[1]".into()),
            is_error: false,
            input_required: None,
        };
        assert!(result_json(bad_structured).is_none());
    }
}
