//! Tasks (stateless era, `io.modelcontextprotocol/tasks`): a `tools/call` that becomes a task,
//! its run watched and audited, and `tasks/get`, `tasks/update`, `tasks/cancel`. The task data
//! itself lives in [`crate::mcp::tasks`].
//!
//! Trusts no task id it did not issue; tasks are per session and bounded in number and life.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::mcp::jsonrpc::{self, Id, INTERNAL_ERROR, INVALID_PARAMS};
use crate::mcp::printable;
use crate::mcp::protocol::RpcError;
use crate::mcp::protocol::MISSING_CAPABILITY;
use crate::mcp::record::Rec;
use crate::mcp::session::Session;
use crate::mcp::stateless::Stateless;
use crate::mcp::stateless_requests::is_input_round;
use mcpd_policy::Policy;

impl Session {
    /// `tools/call` in the stateless era: a task when the tool supports tasks and the request
    /// declares the extension, else an ordinary call.
    pub(super) async fn call_or_task(
        &self,
        policy: &Arc<Policy>,
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
        let support = match self.worker(policy).await {
            Ok(w) => self
                .visible_tool(policy, w.as_ref(), name)
                .map(|t| t.task_support),
            Err(_) => None,
        };
        match (support, tasks::declared(st)) {
            (Some(TaskSupport::Required), false) => {
                let e = RpcError::new(
                    MISSING_CAPABILITY,
                    "This tool runs only as a task: declare the tasks extension",
                )
                .with_data(tasks::required_capability());
                return (
                    rec.deny("missing_client_capability"),
                    e.to_response(id.to_value()),
                );
            }
            (Some(TaskSupport::Optional | TaskSupport::Required), true) => {}
            _ => return self.tools_call(policy, id, params, rec, Some(st)).await,
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
            let policy = policy.clone();
            tokio::spawn(async move {
                let r = s.tools_call(&policy, &rid, p, rec, Some(&st)).await;
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
    pub(super) fn watch_task(
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
    pub(super) fn tasks_request(
        &self,
        policy: &Arc<Policy>,
        id: &Id,
        method: &str,
        params: &Map<String, Value>,
        rec: Rec,
        st: &Stateless,
    ) -> (Rec, Value) {
        use crate::mcp::tasks;
        if !tasks::declared(st) {
            let e = RpcError::new(
                MISSING_CAPABILITY,
                "The tasks extension is not declared by this request",
            )
            .with_data(tasks::required_capability());
            return (
                rec.deny("missing_client_capability"),
                e.to_response(id.to_value()),
            );
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
                let e = RpcError::new(INVALID_PARAMS, "Unknown task")
                    .with_data(json!({"taskId": printable(task_id)}));
                return (rec, e.to_response(id.to_value()));
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
            let policy = policy.clone();
            tokio::spawn(async move {
                let mut r = Rec::new("tools/call");
                r.tool = p.get("name").and_then(Value::as_str).map(printable);
                let out = s.tools_call(&policy, &run_id, p, r, Some(&st)).await;
                let _ = tx.send(out);
            });
            self.watch_task(task_id.to_string(), rx, Instant::now());
        }
        (rec.allow("tasks"), jsonrpc::response(id, answer))
    }
}

/// The audit record of a `tools/call` answered with a new task.
pub(super) fn rec_task_created(tool: &str) -> Rec {
    let mut r = Rec::new("tools/call")
        .allow("tasks")
        .outcome("task_created");
    r.tool = Some(printable(tool));
    r
}
