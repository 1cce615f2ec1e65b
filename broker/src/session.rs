//! One MCP session (session era, protocol 2025-11-25 negotiating down to 2025-03-26):
//! lifecycle, method dispatch, policy decisions, and the session's worker.
//!
//! Transport-independent: messages come in as text, go out through an unbounded channel of
//! JSON values that the transport serialises. Every client message is hostile input.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use mcpd_ipc::{CallErrorKind, Content, LogLevel, ResourceBody, ToolDescriptor, ToolResult};
use mcpd_policy::{ClientId, Decision, DenyReason, Policy, Request};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::jsonrpc::{
    self, Id, Incoming, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND,
};
use crate::supervisor::{CallEvent, CallOutcome, Supervisor, Worker};

/// Session-era protocol versions, newest first.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
/// Tools per `tools/list` page.
pub const TOOLS_PAGE_SIZE: usize = 100;

/// The message a client sees for any path outside its scope. Identical whether or not the
/// path exists, and identical to the worker's.
pub const ACCESS_DENIED: &str = "Access denied - path outside allowed directories";
const WORKER_DIED: &str = "The tool worker terminated unexpectedly; the call did not complete. The next call starts a new worker.";
const SANDBOX_UNAVAILABLE: &str = "The tool sandbox could not be started (see the server log)";

#[derive(Debug, Default)]
struct State {
    version: Option<&'static str>,
    initialized: bool,
    log_level: Option<LogLevel>,
}

/// One client session.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    client: ClientId,
    policy: Arc<Policy>,
    supervisor: Supervisor,
    out: mpsc::UnboundedSender<Value>,
    state: Mutex<State>,
    worker: tokio::sync::Mutex<Option<Arc<Worker>>>,
    inflight: Mutex<HashMap<Id, (Arc<Worker>, u64)>>,
    slots: Arc<Semaphore>,
    tasks: tokio::sync::watch::Sender<usize>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("client", &self.inner.client)
            .finish()
    }
}

impl Session {
    /// A new session for an authenticated principal.
    pub fn new(
        client: ClientId,
        policy: Arc<Policy>,
        supervisor: Supervisor,
        out: mpsc::UnboundedSender<Value>,
    ) -> Self {
        let slots = policy.permissions(&client).map_or(1, |p| {
            usize::try_from(p.limits.max_concurrent_calls).unwrap_or(1)
        });
        Self {
            inner: Arc::new(Inner {
                client,
                policy,
                supervisor,
                out,
                state: Mutex::default(),
                worker: tokio::sync::Mutex::new(None),
                inflight: Mutex::default(),
                slots: Arc::new(Semaphore::new(slots.max(1))),
                tasks: tokio::sync::watch::Sender::new(0),
            }),
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
                .policy
                .permissions(&self.inner.client)
                .map_or(1, |p| p.limits.call_timeout_secs),
        )
    }

    fn send(&self, v: Value) {
        let _ = self.inner.out.send(v);
    }

    /// Answer a transport-level problem (oversized line, invalid UTF-8) with this error.
    pub fn reject(&self, code: i64, message: &str) {
        self.send(jsonrpc::error(Value::Null, code, message));
    }

    /// Handle one incoming message. Long work (tool calls) continues in spawned tasks.
    pub fn handle(&self, text: &str) {
        match jsonrpc::classify(text) {
            Incoming::Invalid { id, code, message } => {
                self.send(jsonrpc::error(id, code, &message))
            }
            Incoming::Response => {}
            Incoming::Notification { method, params } => self.notification(&method, &params),
            Incoming::Request { id, method, params } => self.request(id, &method, params),
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
            }
            "notifications/cancelled" => {
                let Some(id) = params.get("requestId").and_then(|v| match v {
                    Value::String(s) => Some(Id::Str(s.clone())),
                    Value::Number(n) => n.as_i64().map(Id::Num),
                    _ => None,
                }) else {
                    return;
                };
                let entry = self
                    .inner
                    .inflight
                    .lock()
                    .ok()
                    .and_then(|mut m| m.remove(&id));
                if let Some((worker, call)) = entry {
                    tokio::spawn(async move { worker.cancel(call).await });
                }
            }
            _ => {} // unknown notifications are ignored, as JSON-RPC requires
        }
    }

    fn request(&self, id: Id, method: &str, params: Map<String, Value>) {
        let version = self.inner.state.lock().ok().and_then(|s| s.version);
        match method {
            "ping" => return self.send(jsonrpc::response(&id, json!({}))),
            "initialize" => return self.initialize(id, &params),
            "server/discover" => {
                return self.send(jsonrpc::error(
                    id.to_value(),
                    METHOD_NOT_FOUND,
                    "Method not found: server/discover (the stateless protocol era is not served yet; use initialize)",
                ))
            }
            _ => {}
        }
        if version.is_none() {
            return self.send(jsonrpc::error(
                id.to_value(),
                INVALID_REQUEST,
                "Invalid Request: the session is not initialized; send initialize first",
            ));
        }
        match method {
            "tools/list" => {
                let s = self.clone();
                self.spawn(async move { s.tools_list(id, params).await });
            }
            "tools/call" => {
                let s = self.clone();
                self.spawn(async move { s.tools_call(id, params).await });
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
                    self.send(jsonrpc::response(&id, json!({})));
                }
                None => self.send(jsonrpc::error(
                    id.to_value(),
                    INVALID_PARAMS,
                    "Invalid params: level must be a log level name",
                )),
            },
            "resources/list" | "resources/templates/list" | "prompts/list" => {
                // Not offered in this capability set: answer as the spec's "method not found".
                self.send(jsonrpc::error(
                    id.to_value(),
                    METHOD_NOT_FOUND,
                    &format!("Method not found: {method}"),
                ))
            }
            _ => self.send(jsonrpc::error(
                id.to_value(),
                METHOD_NOT_FOUND,
                &format!("Method not found: {}", printable(method)),
            )),
        }
    }

    fn initialize(&self, id: Id, params: &Map<String, Value>) {
        let Some(asked) = params.get("protocolVersion").and_then(Value::as_str) else {
            return self.send(jsonrpc::error(
                id.to_value(),
                INVALID_PARAMS,
                "Invalid params: protocolVersion is required",
            ));
        };
        let version = SUPPORTED_VERSIONS
            .iter()
            .copied()
            .find(|v| *v == asked)
            .unwrap_or(SUPPORTED_VERSIONS[0]);
        {
            let Ok(mut s) = self.inner.state.lock() else {
                return;
            };
            if s.version.is_some() {
                drop(s);
                return self.send(jsonrpc::error(
                    id.to_value(),
                    INVALID_REQUEST,
                    "Invalid Request: already initialized",
                ));
            }
            s.version = Some(version);
        }
        self.send(jsonrpc::response(
            &id,
            json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}, "logging": {}},
                "serverInfo": {"name": "mcpd", "title": "mcpd (confined MCP server)", "version": env!("CARGO_PKG_VERSION")},
                "instructions": "Tools run in a per-session sandbox. Paths must lie within the directories listed by list_allowed_directories."
            }),
        ));
        // Start the worker now, while the client finishes its handshake.
        let s = self.clone();
        tokio::spawn(async move {
            let _ = s.worker().await;
        });
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
        match self
            .inner
            .supervisor
            .spawn(self.inner.policy.sandbox_spec(&self.inner.client))
            .await
        {
            Ok(w) => {
                tracing::info!(client = %self.inner.client, pid = w.pid(), landlock = ?w.enforcement().landlock, "worker started");
                *slot = Some(w.clone());
                Ok(w)
            }
            Err(e) => {
                tracing::error!(client = %self.inner.client, "worker start failed: {e}");
                Err(())
            }
        }
    }

    fn visible<'a>(&self, tools: &'a [ToolDescriptor]) -> Vec<&'a ToolDescriptor> {
        tools
            .iter()
            .filter(|t| {
                matches!(
                    self.inner.policy.decide(
                        &self.inner.client,
                        &Request::SeeTool {
                            tool: &t.name,
                            access: t.access
                        }
                    ),
                    Decision::Allow(_)
                )
            })
            .collect()
    }

    async fn tools_list(&self, id: Id, params: Map<String, Value>) {
        let start = match params.get("cursor") {
            None | Some(Value::Null) => 0,
            Some(Value::String(c)) => match c
                .strip_prefix("offset:")
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) => n,
                None => {
                    return self.send(jsonrpc::error(
                        id.to_value(),
                        INVALID_PARAMS,
                        "Invalid params: unknown cursor",
                    ))
                }
            },
            Some(_) => {
                return self.send(jsonrpc::error(
                    id.to_value(),
                    INVALID_PARAMS,
                    "Invalid params: cursor must be a string",
                ))
            }
        };
        let Ok(worker) = self.worker().await else {
            return self.send(jsonrpc::error(
                id.to_value(),
                INTERNAL_ERROR,
                SANDBOX_UNAVAILABLE,
            ));
        };
        let visible = self.visible(worker.tools());
        if start > visible.len() {
            return self.send(jsonrpc::error(
                id.to_value(),
                INVALID_PARAMS,
                "Invalid params: unknown cursor",
            ));
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
        self.send(jsonrpc::response(&id, result));
    }

    async fn tools_call(&self, id: Id, params: Map<String, Value>) {
        let Some(name) = params.get("name").and_then(Value::as_str) else {
            return self.send(jsonrpc::error(
                id.to_value(),
                INVALID_PARAMS,
                "Invalid params: name must be a string",
            ));
        };
        let args = match params.get("arguments") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(a)) => a.clone(),
            Some(_) => {
                return self.send(jsonrpc::error(
                    id.to_value(),
                    INVALID_PARAMS,
                    "Invalid params: arguments must be an object",
                ))
            }
        };
        let progress_token = params
            .get("_meta")
            .and_then(|m| m.get("progressToken"))
            .filter(|t| t.is_string() || t.is_i64())
            .cloned();
        let Ok(worker) = self.worker().await else {
            return self.send(jsonrpc::error(
                id.to_value(),
                INTERNAL_ERROR,
                SANDBOX_UNAVAILABLE,
            ));
        };
        let unknown = || {
            jsonrpc::error(
                id.to_value(),
                INVALID_PARAMS,
                &format!("Unknown tool: {}", printable(name)),
            )
        };
        // A tool the client may not see is reported exactly like a tool that does not exist.
        let Some(desc) = self
            .visible(worker.tools())
            .into_iter()
            .find(|t| t.name == name)
            .cloned()
        else {
            return self.send(unknown());
        };
        let mut paths = Vec::new();
        for pa in &desc.path_args {
            match (args.get(&pa.name), pa.many) {
                (None, _) => {}
                (Some(Value::String(s)), false) => paths.push((s.as_str(), pa.write)),
                (Some(Value::Array(items)), true) => {
                    for it in items {
                        match it.as_str() {
                            Some(s) => paths.push((s, pa.write)),
                            None => {
                                return self.send(jsonrpc::error(
                                    id.to_value(),
                                    INVALID_PARAMS,
                                    &format!(
                                        "Invalid arguments: {} must contain only strings",
                                        pa.name
                                    ),
                                ))
                            }
                        }
                    }
                }
                _ => {
                    return self.send(jsonrpc::error(
                        id.to_value(),
                        INVALID_PARAMS,
                        &format!("Invalid arguments: {} has the wrong type", pa.name),
                    ))
                }
            }
        }
        let decision = self.inner.policy.decide(
            &self.inner.client,
            &Request::CallTool {
                tool: &desc.name,
                access: desc.access,
                paths,
            },
        );
        let allow = match decision {
            Decision::Allow(a) => a,
            Decision::Deny(DenyReason::PathOutsideScope | DenyReason::InvalidPath) => {
                tracing::info!(client = %self.inner.client, tool = %desc.name, "denied: path outside scope");
                return self.send(jsonrpc::response(&id, tool_error(ACCESS_DENIED)));
            }
            Decision::Deny(r) => {
                tracing::info!(client = %self.inner.client, tool = %desc.name, reason = r.code(), "denied");
                return self.send(unknown());
            }
        };
        let limits = self
            .inner
            .policy
            .permissions(&self.inner.client)
            .map(|p| p.limits.clone())
            .unwrap_or_default();
        let timeout = Duration::from_secs(limits.call_timeout_secs);
        let deadline = tokio::time::Instant::now() + timeout;
        let Ok(Ok(_permit)) =
            tokio::time::timeout_at(deadline, self.inner.slots.clone().acquire_owned()).await
        else {
            return self.send(jsonrpc::response(
                &id,
                tool_error("Too many concurrent calls; the call timed out waiting for a slot"),
            ));
        };
        let args_json = Value::Object(args).to_string();
        let mut handle = worker.call(allow, args_json, true).await;
        if let Ok(mut m) = self.inner.inflight.lock() {
            m.insert(id.clone(), (worker.clone(), handle.id));
        }
        let mut last_progress = f64::NEG_INFINITY;
        let mut events = handle.events.take();
        let outcome = loop {
            tokio::select! {
                o = &mut handle.done => break o.ok(),
                Some(ev) = async { match events.as_mut() { Some(e) => e.recv().await, None => None } } => {
                    self.event(ev, progress_token.as_ref(), &mut last_progress);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    worker.cancel(handle.id).await;
                    self.inner.inflight.lock().ok().map(|mut m| m.remove(&id));
                    return self.send(jsonrpc::response(&id, tool_error(&format!("The tool call timed out after {} s and was cancelled", limits.call_timeout_secs))));
                }
            }
        };
        let still_wanted = self
            .inner
            .inflight
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&id))
            .is_some();
        if !still_wanted {
            return; // cancelled by the client: no response is sent
        }
        let reply = match outcome {
            Some(CallOutcome::Done(r)) => match result_json(r) {
                Some(v) => jsonrpc::response(&id, v),
                None => {
                    tracing::warn!(
                        pid = worker.pid(),
                        "worker returned a malformed result; ending it"
                    );
                    worker.kill().await;
                    jsonrpc::error(
                        id.to_value(),
                        INTERNAL_ERROR,
                        "Internal error: malformed tool result",
                    )
                }
            },
            Some(CallOutcome::Failed(e)) => match e.kind {
                CallErrorKind::UnknownTool => unknown(),
                CallErrorKind::InvalidArguments => jsonrpc::error(
                    id.to_value(),
                    INVALID_PARAMS,
                    &format!("Invalid arguments: {}", e.message),
                ),
                CallErrorKind::Cancelled => {
                    jsonrpc::response(&id, tool_error("The call was cancelled"))
                }
                CallErrorKind::Internal => jsonrpc::error(
                    id.to_value(),
                    INTERNAL_ERROR,
                    &format!("Internal error: {}", e.message),
                ),
            },
            Some(CallOutcome::WorkerDied) | None => {
                tracing::warn!(client = %self.inner.client, pid = worker.pid(), tool = %desc.name, "worker died during a call");
                jsonrpc::error(id.to_value(), INTERNAL_ERROR, WORKER_DIED)
            }
        };
        self.send(reply);
    }

    fn event(&self, ev: CallEvent, token: Option<&Value>, last: &mut f64) {
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
                self.send(jsonrpc::notification("notifications/progress", p));
            }
            CallEvent::Log {
                level,
                logger,
                data,
            } => {
                let min = self
                    .inner
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.log_level)
                    .unwrap_or(LogLevel::Info);
                if level < min {
                    return;
                }
                let mut p = json!({"level": level.as_str(), "data": data});
                if let Some(l) = logger {
                    p["logger"] = json!(l);
                }
                self.send(jsonrpc::notification("notifications/message", p));
            }
        }
    }

    /// End the session: stop the worker and wait until it is reaped.
    pub async fn close(&self) {
        let w = self.inner.worker.lock().await.take();
        if let Some(w) = w {
            w.shutdown().await;
        }
    }
}

fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(128).collect()
}

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
        };
        assert!(result_json(bad_mime).is_none());
        let bad_structured = ToolResult {
            content: vec![],
            structured_json: Some("[1]".into()),
            is_error: false,
        };
        assert!(result_json(bad_structured).is_none());
    }
}
