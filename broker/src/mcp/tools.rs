//! `tools/list` and `tools/call`: visibility by policy, argument shape checks, path and
//! command extraction for the decision, operator-tool schema validation, the policy decision
//! and its `Allow` token, client-root narrowing, limits (concurrency, timeout), the call on the
//! worker with its progress/log events, and the outcome mapped to MCP.
//!
//! Trusts nothing: the client's arguments are checked before the decision, the worker's result
//! is validated (`results`) before it reaches the client; a tool the client may not see is
//! reported exactly like one that does not exist.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use mcpd_ipc::{CallErrorKind, LogLevel, ToolAccess, ToolDescriptor};
use mcpd_policy::{Decision, DenyReason, Request};
use serde_json::{json, Map, Value};

use crate::mcp::backend::ToolWorker;
use crate::mcp::jsonrpc::{self, Id, INTERNAL_ERROR, INVALID_PARAMS};
use crate::mcp::printable;
use crate::mcp::protocol::RpcError;
use crate::mcp::protocol::{INSUFFICIENT_SCOPE, MISSING_CAPABILITY, RATE_LIMITED};
use crate::mcp::record::Rec;
use crate::mcp::record::AUDIT_UNAVAILABLE;
use crate::mcp::results::{result_json, tool_json};
use crate::mcp::session::Session;
use crate::mcp::stateless::Stateless;
use crate::worker::supervisor::{CallEvent, CallOutcome};
use mcpd_policy::ExecRequest;
use mcpd_policy::Policy;

/// Tools per `tools/list` page.
pub const TOOLS_PAGE_SIZE: usize = 100;

/// The message a client sees for any path outside its scope. Identical whether or not the
/// path exists, and identical to the worker's.
pub const ACCESS_DENIED: &str = "Access denied - path outside allowed directories";

/// The message for a write beneath a root the client may only read (a root it can list).
pub const READ_ONLY: &str =
    "Access denied - read-only directory: this client may read here but not write";

pub(super) const WORKER_DIED: &str = "The tool worker terminated unexpectedly; the call did not complete. The next call starts a new worker.";

pub(super) const SANDBOX_UNAVAILABLE: &str =
    "The tool sandbox could not be started (see the server log)";

impl Session {
    /// Whether the policy lets this client see (and so call) a tool.
    pub(super) fn may_see(&self, policy: &Policy, t: &ToolDescriptor) -> bool {
        matches!(
            policy.decide(
                &self.inner.client,
                &Request::SeeTool {
                    tool: &t.name,
                    access: t.access
                }
            ),
            Decision::Allow(_)
        )
    }

    /// The scope the session's token lacks for tools of class `access` (`[auth.jwt.scopes]`),
    /// if any. Always `None` without a token.
    pub(super) fn missing_scope(&self, policy: &Policy, access: ToolAccess) -> Option<String> {
        let have = self.inner.scopes.as_ref()?;
        let need = policy.jwt()?.scope_for(access)?;
        (!have.iter().any(|s| s == need)).then(|| need.to_string())
    }

    /// The tools listed to this client: those the policy lets it see and its token's scopes
    /// cover.
    pub(super) fn visible<'a>(
        &self,
        policy: &Policy,
        tools: &'a [ToolDescriptor],
    ) -> Vec<&'a ToolDescriptor> {
        tools
            .iter()
            .filter(|t| self.may_see(policy, t) && self.missing_scope(policy, t.access).is_none())
            .collect()
    }

    /// The scope a call of tool `name` needs and this session's token lacks (for the HTTP
    /// transport, which answers such a call with a plain 403 rather than a stream). `None`
    /// without a token, and for a tool the client may not see (the call reports it).
    pub async fn call_scope_missing(&self, name: &str) -> Option<String> {
        self.inner.scopes.as_ref()?;
        let policy = self.inner.policy();
        policy.jwt()?;
        let worker = self.worker(&policy).await.ok()?;
        let t = self.visible_tool(&policy, worker.as_ref(), name)?;
        self.missing_scope(&policy, t.access)
    }

    /// A tool of the worker by name, if this client may see it.
    pub(super) fn visible_tool<'a>(
        &self,
        policy: &Policy,
        worker: &'a dyn ToolWorker,
        name: &str,
    ) -> Option<&'a ToolDescriptor> {
        worker
            .tools()
            .iter()
            .find(|t| t.name == name)
            .filter(|t| self.may_see(policy, t))
    }

    pub(super) async fn tools_list(
        &self,
        policy: &Arc<Policy>,
        id: &Id,
        params: Map<String, Value>,
        rec: Rec,
    ) -> (Rec, Value) {
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
        let Ok(worker) = self.worker(policy).await else {
            return (
                rec.outcome("worker_unavailable"),
                err(INTERNAL_ERROR, SANDBOX_UNAVAILABLE),
            );
        };
        let visible = self.visible(policy, worker.tools());
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

    pub(super) async fn tools_call(
        &self,
        policy: &Arc<Policy>,
        id: &Id,
        mut params: Map<String, Value>,
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
        // Taken out, not copied: nothing after this reads them from `params`.
        let arguments = params.remove("arguments");
        let Some(name) = params.get("name").and_then(Value::as_str) else {
            return (
                rec,
                err(INVALID_PARAMS, "Invalid params: name must be a string"),
            );
        };
        rec.tool = Some(printable(name));
        let args = match arguments {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(a)) => a,
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
        let Ok(worker) = self.worker(policy).await else {
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
        let Some(desc) = self.visible_tool(policy, worker.as_ref(), name).cloned() else {
            let known = worker.tools().iter().any(|t| t.name == name);
            rec.tool_known = known;
            let rec = if known {
                rec.deny(DenyReason::ToolNotAllowed.code())
            } else {
                rec.deny("unknown_tool")
            };
            return (rec, unknown());
        };
        rec.tool_known = true;
        if let Some(scope) = self.missing_scope(policy, desc.access) {
            tracing::info!(client = %self.inner.client, tool = %desc.name, %scope, "denied: insufficient token scope");
            let e = RpcError::new(
                INSUFFICIENT_SCOPE,
                format!("Insufficient scope: this tool needs the token scope '{scope}'"),
            )
            .with_data(json!({ "scope": scope }));
            return (rec.deny("insufficient_scope"), e.to_response(id.to_value()));
        }
        if let Some(st) = stateless {
            let missing: Map<String, Value> = desc
                .client_capabilities
                .iter()
                .filter(|c| st.caps.get(c.as_str()).is_none())
                .map(|c| (c.clone(), json!({})))
                .collect();
            if !missing.is_empty() {
                let e = RpcError::new(
                    MISSING_CAPABILITY,
                    "Missing required client capability for this tool",
                )
                .with_data(json!({"requiredCapabilities": missing}));
                return (
                    rec.deny("missing_client_capability"),
                    e.to_response(id.to_value()),
                );
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
            match policy.operator_tool(&desc.name) {
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
        let decision = policy.decide(
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
            Decision::Allow(_) if !self.inside_client_roots(policy, &path_list) => {
                tracing::info!(client = %self.inner.client, tool = %desc.name, "denied: outside the client's roots");
                return (
                    rec.deny("outside_client_roots").outcome("denied"),
                    jsonrpc::response(id, tool_error(ACCESS_DENIED)),
                );
            }
            Decision::Allow(a) => a,
            Decision::Deny(r @ DenyReason::ReadOnlyRoot) => {
                tracing::info!(client = %self.inner.client, tool = %desc.name, "denied: write into a read-only root");
                return (
                    rec.deny(r.code()).outcome("denied"),
                    jsonrpc::response(id, tool_error(READ_ONLY)),
                );
            }
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
        let limits = policy
            .permissions(&self.inner.client)
            .map(|p| p.limits.clone())
            .unwrap_or_default();
        let timeout = Duration::from_secs(limits.call_timeout_secs);
        let deadline = tokio::time::Instant::now() + timeout;
        if let Err(wait) = crate::mcp::quota::take_call(&self.inner.client.tenant(), &limits) {
            self.limit_hit("calls_per_minute", Some(&desc.name)).await;
            rec.limit = Some("calls_per_minute");
            let secs = wait.as_secs().max(1);
            let e = RpcError::new(
                RATE_LIMITED,
                format!("Rate limit reached: too many tool calls; retry in {secs} s"),
            )
            .with_data(json!({"retryAfterSecs": secs}));
            return (rec.outcome("rate_limited"), e.to_response(id.to_value()));
        }
        let slots = crate::mcp::quota::call_slots(&self.inner.client.tenant(), &limits);
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, slots.acquire_owned()).await else {
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
        let mut stopping = self.inner.stopping.subscribe();
        let outcome = loop {
            tokio::select! {
                o = &mut handle.done => break o.ok(),
                Ok(()) = async { stopping.wait_for(|s| *s).await.map(|_| ()) } => {
                    worker.cancel(handle.id).await;
                    self.inner.inflight.lock().ok().map(|mut m| m.remove(id));
                    self.forget_client_requests(handle.id);
                    return (rec.outcome("stopped"), jsonrpc::response(id, tool_error(crate::mcp::session::STOPPING_MESSAGE)));
                }
                Some(ev) = async { match events.as_mut() { Some(e) => e.recv().await, None => None } } => {
                    match ev {
                        CallEvent::ClientRequest { id: wreq, request } => {
                            self.client_request(policy, id, &worker, handle.id, wreq, request).await;
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
                    _ => malformed_result(worker.as_ref(), rec, id).await,
                }
            }
            Some(CallOutcome::Done(r)) => {
                let is_error = r.is_error;
                match result_json(r) {
                    Some(v) => (
                        rec.outcome(if is_error { "tool_error" } else { "success" }),
                        jsonrpc::response(id, v),
                    ),
                    None => malformed_result(worker.as_ref(), rec, id).await,
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

    pub(super) fn event(
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
}

/// What a command or code tool call would execute, from the arguments its descriptor names.
/// Replace each path argument by its checked form (`slots[i]` names where `checked[i]` goes).
pub(super) fn rewrite_path_args(
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

pub(super) fn exec_request<'a>(
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

/// A worker sent a result that breaks the protocol: it is ended, the client gets an error.
pub(super) async fn malformed_result(worker: &dyn ToolWorker, rec: Rec, id: &Id) -> (Rec, Value) {
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

pub(super) fn tool_error(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": true})
}
