//! One MCP session of one principal: its state, its worker, and the dispatch of every message
//! a transport hands it (both eras: session era 2025-11-25 negotiating down to 2025-03-26, and
//! stateless-era requests selected by `_meta`) to the method families in the sibling modules.
//!
//! Transport-independent: a transport hands it typed [`Incoming`] messages and writes what it
//! queues in its bounded [`Outbox`]. Each request takes one policy snapshot and is validated,
//! decided and limited under it. Every client message is hostile input.
//!
//! Audit invariant: every response leaves through `Session::finish` (`record.rs`), which writes
//! the request's audit record *before* the response is queued (fail closed), and no call is
//! dispatched to a worker while the log is unhealthy.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcpd_ipc::LogLevel;
use mcpd_policy::{ClientId, Policy};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::auditing::Audit;
use crate::auth::{Origin, Principal};
use crate::mcp::backend::{ToolWorker, Workers};
use crate::mcp::client_requests::ClientPending;
use crate::mcp::jsonrpc::{self, Id, Incoming, INVALID_REQUEST, METHOD_NOT_FOUND};
use crate::mcp::record::Rec;
use crate::mcp::stateless::is_stateless;
use crate::mcp::subscriptions::{Listener, MAX_CHANGES_PER_SEC};
use crate::transport::Outbox;
use crate::worker::supervisor::{Supervisor, WorkerContext};

/// A call in progress: the worker running it and its call id there.
pub(super) type InFlight = (Arc<dyn ToolWorker>, u64);

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) version: Option<&'static str>,
    pub(super) initialized: bool,
    pub(super) log_level: Option<LogLevel>,
    pub(super) requests: u64,
    /// The client's declared capabilities (from `initialize`).
    pub(super) client_caps: Value,
    /// `resources/subscribe`d URIs.
    pub(super) subscriptions: std::collections::BTreeSet<String>,
    /// The roots the client reported (`roots/list`): they narrow the configured paths, never
    /// widen them. `None` until the client reported any.
    pub(super) client_roots: Option<Vec<std::path::PathBuf>>,
    /// Id of the broker's own `roots/list` request waiting for the client.
    pub(super) roots_request: Option<Id>,
    /// When the client last sent anything.
    pub(super) last_activity: LastActivity,
}

/// A timestamp that defaults to now.
#[derive(Debug, Clone, Copy)]
pub(super) struct LastActivity(pub(super) Instant);

impl Default for LastActivity {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl LastActivity {
    pub(super) fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The audit log cannot take `auth.success`/`session.open` (fail closed).
    #[error("audit log unavailable: {0}")]
    Audit(String),
    /// The client has `limits.max_sessions` sessions open.
    #[error("the client has {max} sessions open, its limit (limits.max_sessions)")]
    TooManySessions {
        /// The limit.
        max: u64,
    },
}

/// One client session.
#[derive(Clone)]
pub struct Session {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) id: String,
    pub(super) client: ClientId,
    /// What the session's credential restricts it to (a bearer token's scopes); `None`: no
    /// restriction beyond the policy (stdio, unauthenticated HTTP).
    pub(super) scopes: Option<Vec<String>>,
    pub(super) policy_cell: crate::reload::PolicyCell,
    pub(super) workers: Arc<dyn Workers>,
    pub(super) audit: Audit,
    pub(super) out: Outbox,
    pub(super) state: Mutex<State>,
    pub(super) worker: tokio::sync::Mutex<Option<Arc<dyn ToolWorker>>>,
    /// Calls in progress by request id: the worker running each and its call id there.
    pub(super) inflight: Mutex<HashMap<Id, InFlight>>,
    pub(super) client_pending: Mutex<HashMap<Id, ClientPending>>,
    pub(super) next_client_request: std::sync::atomic::AtomicU64,
    pub(super) mcp_tasks: Mutex<crate::mcp::tasks::Tasks>,
    /// Stateless-era `subscriptions/listen` streams.
    pub(super) listeners: Mutex<Vec<Listener>>,
    /// Change reports from the worker (and from policy reloads).
    pub(super) changes: mpsc::UnboundedSender<mcpd_ipc::Change>,
    pub(super) tasks: tokio::sync::watch::Sender<usize>,
    /// Set when the broker stops and the grace for in-flight calls has run out: every call
    /// still running is cancelled in its worker and answered with [`STOPPING_MESSAGE`].
    pub(super) stopping: tokio::sync::watch::Sender<bool>,
    pub(super) opened: Instant,
    /// Dropped with the session: its background tasks (reload, ping) end then, not at the
    /// next reload or ping (a task per ended session would pile up on a busy server).
    pub(super) ended: tokio::sync::watch::Sender<()>,
    /// This session's place among its client's sessions, given back at close.
    pub(super) slot: Mutex<Option<crate::mcp::quota::SessionSlot>>,
    /// The transport the session came in on (`Origin::transport`), for its workers' metrics.
    pub(super) transport: &'static str,
    /// Counts the session as open in the metrics while it lives (`None`: metrics off).
    pub(super) _open: Option<crate::metrics::Running>,
}

/// What a call still running when the stop grace ends is answered (a tool error).
pub const STOPPING_MESSAGE: &str =
    "mcpd is stopping: the call was cancelled before it finished; retry once the server is back";
/// How long cancelled calls have to be answered and recorded at a stop.
const STOP_CANCEL_WAIT: Duration = Duration::from_secs(3);

impl Inner {
    /// The policy in force now (it may be reloaded between two requests).
    pub(super) fn policy(&self) -> Arc<Policy> {
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
    ) -> Result<Self, OpenError> {
        Self::open_with(
            principal,
            origin,
            policy_cell,
            Arc::new(supervisor),
            audit,
            out,
        )
        .await
    }

    /// [`Session::open`] with any [`Workers`] (the engine's in-process tests use a fake).
    pub async fn open_with(
        principal: Principal,
        origin: &Origin,
        policy_cell: crate::reload::PolicyCell,
        workers: Arc<dyn Workers>,
        audit: Audit,
        out: Outbox,
    ) -> Result<Self, OpenError> {
        let client = principal.client;
        let scopes = principal.scopes;
        let policy = policy_cell.get();
        let limits = policy
            .permissions(&client)
            .map(|p| p.limits.clone())
            .unwrap_or_default();
        let slot = crate::mcp::quota::open_session(&client.tenant(), &limits).ok_or_else(|| {
            crate::metrics::limit_hit("max_sessions");
            OpenError::TooManySessions {
                max: limits.max_sessions,
            }
        })?;
        // `NAME.` first when the instance has a name (`server.instance`): a balancer routes the
        // session's later requests to this instance by it.
        let id = match &policy.instance {
            Some(name) => format!("{name}.{}", crate::auditing::random_id()),
            None => crate::auditing::random_id(),
        };
        let (changes, mut changes_rx) = mpsc::unbounded_channel::<mcpd_ipc::Change>();
        let mut f = Map::new();
        f.insert("session".into(), json!(id));
        f.insert("principal".into(), json!(client.as_str()));
        f.insert("transport".into(), json!(origin.transport));
        f.insert("peer".into(), json!(origin.peer));
        let mut auth = f.clone();
        auth.insert("method".into(), json!(principal.method));
        for (k, v) in &principal.attributes {
            auth.insert((*k).into(), json!(v));
        }
        audit
            .record("auth.success", auth)
            .await
            .map_err(|e| OpenError::Audit(e.to_string()))?;
        audit
            .record("session.open", f)
            .await
            .map_err(|e| OpenError::Audit(e.to_string()))?;
        let session = Self {
            inner: Arc::new(Inner {
                id,
                client,
                scopes,
                policy_cell: policy_cell.clone(),
                workers,
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
                tasks: tokio::sync::watch::Sender::new(0),
                stopping: tokio::sync::watch::Sender::new(false),
                opened: Instant::now(),
                slot: Mutex::new(Some(slot)),
                ended: tokio::sync::watch::Sender::new(()),
                transport: origin.transport,
                _open: crate::metrics::session_opened(origin.transport),
            }),
        };
        // Change reports (worker, policy reload) become notifications, rate-limited. The task
        // holds only a weak reference: it ends with the session.
        // A policy reload: decisions already use the new policy; announce the lists as changed
        // and retire the worker, so the next call gets a sandbox built from the new policy.
        let weak_reload = Arc::downgrade(&session.inner);
        let mut reloads = policy_cell.subscribe();
        let mut ended = session.inner.ended.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = reloads.recv() => match r {
                        Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    _ = ended.changed() => break,
                }
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
        let mut ping_ended = session.inner.ended.subscribe();
        tokio::spawn(async move {
            loop {
                let secs = match weak_ping.upgrade() {
                    Some(inner) => inner.policy().client_ping_secs,
                    None => return,
                };
                if secs == 0 {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(60)) => {}
                        _ = ping_ended.changed() => return,
                    }
                    continue;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(secs)) => {}
                    _ = ping_ended.changed() => return,
                }
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

    /// Run request work in the background, counted so [`Session::drain`] can wait for it.
    pub(super) fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
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

    /// Requests being answered now (a session with none may be closed as idle).
    pub fn in_flight(&self) -> usize {
        *self.inner.tasks.borrow()
    }

    /// The broker stops: calls in progress get `grace` to answer; those still running then
    /// are cancelled in the worker and answered with an error saying so ([`STOPPING_MESSAGE`],
    /// audited with outcome `stopped`), given a few seconds to be written. The session is
    /// still open afterwards ([`Session::close`] ends it).
    pub async fn stop(&self, grace: Duration) {
        self.drain(grace).await;
        if *self.inner.tasks.borrow() == 0 {
            return;
        }
        tracing::info!(session = %self.inner.id, calls = *self.inner.tasks.borrow(), "stop grace over: cancelling the calls still running");
        self.inner.stopping.send_replace(true);
        self.drain(STOP_CANCEL_WAIT).await;
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

    /// The session's id (also the HTTP `Mcp-Session-Id`): 128 random bits, hex, after the
    /// instance's name and a dot when `server.instance` is set.
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

    async fn request(&self, id: &Id, method: &str, params: Map<String, Value>) -> (Rec, Value) {
        let rec = Rec::new(method);
        let err = |code, msg: &str| jsonrpc::error(id.to_value(), code, msg);
        let version = self.inner.state.lock().ok().and_then(|s| s.version);
        // The one policy snapshot of this request: it is validated, decided and limited under
        // it, whatever a reload does meanwhile.
        let policy = self.inner.policy();
        if is_stateless(method, &params) {
            return self
                .stateless_request(&policy, id, method, params, rec)
                .await;
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
            "tools/list" => self.tools_list(&policy, id, params, rec).await,
            "tools/call" => self.tools_call(&policy, id, params, rec, None).await,
            "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "prompts/list"
            | "prompts/get"
            | "completion/complete" => {
                self.provider_request(&policy, id, method, params, rec, None)
                    .await
            }
            "resources/subscribe" | "resources/unsubscribe" => {
                self.subscription(id, method, &params, rec).await
            }
            "logging/setLevel" => self.set_level(id, &params, rec),
            _ => (
                rec,
                err(
                    METHOD_NOT_FOUND,
                    &format!("Method not found: {}", printable(method)),
                ),
            ),
        }
    }

    /// The session's worker, started under `policy` (the request's snapshot) if there is none
    /// or it died.
    pub(super) async fn worker(&self, policy: &Policy) -> Result<Arc<dyn ToolWorker>, ()> {
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
            transport: self.inner.transport,
        };
        match self
            .inner
            .workers
            .start(
                policy.sandbox_spec(&self.inner.client),
                policy
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
                tracing::info!(client = %self.inner.client, pid = w.pid(), confinement = %w.confinement(), "worker started");
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

    /// A fresh id for a request the broker sends to the client (`mcpd-<kind>-<n>`), unique in
    /// the session so the client's answer finds its way back.
    pub(super) fn next_request_id(&self, kind: &str) -> Id {
        let n = self
            .inner
            .next_client_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Id::Str(format!("mcpd-{kind}-{n}"))
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
        if let Ok(mut slot) = self.inner.slot.lock() {
            slot.take();
        }
    }
}

use crate::mcp::printable;
