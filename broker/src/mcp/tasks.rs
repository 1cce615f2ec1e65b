//! The tasks extension (`io.modelcontextprotocol/tasks`, stateless era): a `tools/call` of a
//! tool with task support, from a request that declares the extension, returns a
//! `CreateTaskResult` at once; the call keeps running in the worker and the client follows it
//! with `tasks/get`, answers its questions with `tasks/update`, stops it with `tasks/cancel`.
//!
//! Tasks belong to the session (= principal) that created them, live at most [`TASK_TTL`], and
//! are bounded in number. The work itself is an ordinary tool call through the same policy
//! decision, audit record and worker as any other call.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::mcp::jsonrpc::Id;
use crate::mcp::stateless::Stateless;

/// The extension's identifier (in `capabilities.extensions`).
pub const TASKS_EXT: &str = "io.modelcontextprotocol/tasks";
/// How long a task is kept after it was created.
pub const TASK_TTL: Duration = Duration::from_secs(300);
/// Suggested polling interval.
pub const POLL_INTERVAL_MS: u64 = 200;
/// Most tasks per session.
pub const MAX_TASKS: usize = 256;
/// How long a task-capable call may take to decide on an input round before it becomes a task.
pub const DECIDE_WINDOW: Duration = Duration::from_millis(100);

/// A task's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Running.
    Working,
    /// Waiting for `tasks/update`.
    InputRequired,
    /// Finished with a result.
    Completed,
    /// Finished with a protocol error.
    Failed,
    /// Stopped by `tasks/cancel`.
    Cancelled,
}

impl Status {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Working => "working",
            Status::InputRequired => "input_required",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
    /// No further change.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// One task.
#[derive(Debug)]
pub struct Task {
    /// Current status.
    pub status: Status,
    created_at: String,
    updated_at: String,
    born: Instant,
    /// The call's result (completed).
    pub result: Option<Value>,
    /// The call's error (failed).
    pub error: Option<Value>,
    /// What the task waits for (input_required).
    pub input_requests: Option<Map<String, Value>>,
    /// The tool call's parameters (name, arguments).
    pub params: Map<String, Value>,
    /// Answers received so far.
    pub responses: Map<String, Value>,
    /// The sealed state the tool asked to get back.
    pub request_state: Option<String>,
    /// The id under which the current run of the call is in flight (for cancellation).
    pub run_id: Id,
    /// The request context of the creating request.
    pub ctx: Stateless,
}

impl Task {
    /// A new working task.
    pub fn new(params: Map<String, Value>, run_id: Id, ctx: Stateless) -> Self {
        let now = mcpd_audit::now_rfc3339();
        Self {
            status: Status::Working,
            created_at: now.clone(),
            updated_at: now,
            born: Instant::now(),
            result: None,
            error: None,
            input_requests: None,
            params,
            responses: Map::new(),
            request_state: None,
            run_id,
            ctx,
        }
    }

    fn touch(&mut self) {
        self.updated_at = mcpd_audit::now_rfc3339();
    }

    /// Record the outcome of a run (`response` is the JSON-RPC response the call produced).
    pub fn finish_run(&mut self, response: &Value) {
        if self.status.is_terminal() {
            return; // cancelled meanwhile: the late outcome changes nothing
        }
        self.touch();
        if let Some(e) = response.get("error") {
            self.status = Status::Failed;
            self.error = Some(json!({
                "code": e.get("code").cloned().unwrap_or(json!(-32603)),
                "message": e.get("message").cloned().unwrap_or(json!("Internal error")),
            }));
            return;
        }
        let result = response.get("result").cloned().unwrap_or(Value::Null);
        if result.get("resultType").and_then(Value::as_str) == Some("input_required") {
            self.status = Status::InputRequired;
            self.input_requests = result
                .get("inputRequests")
                .and_then(Value::as_object)
                .cloned();
            self.request_state = result
                .get("requestState")
                .and_then(Value::as_str)
                .map(str::to_string);
            return;
        }
        let mut r = result;
        if let Some(o) = r.as_object_mut() {
            o.remove("_inTask");
        }
        self.status = Status::Completed;
        self.result = Some(r);
    }

    /// `tasks/update`: merge answers; `true` when every question is answered and the call
    /// should run again.
    pub fn update(&mut self, answers: &Map<String, Value>) -> bool {
        if self.status != Status::InputRequired {
            return false;
        }
        self.touch();
        let mut asked = self.input_requests.take().unwrap_or_default();
        for (k, v) in answers.iter().take(64) {
            if asked.remove(k).is_some() {
                self.responses.insert(k.clone(), v.clone());
            }
        }
        if asked.is_empty() {
            self.status = Status::Working;
            true
        } else {
            self.input_requests = Some(asked);
            false
        }
    }

    /// `tasks/cancel`.
    pub fn cancel(&mut self) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        self.touch();
        self.status = Status::Cancelled;
        self.input_requests = None;
        true
    }

    /// The task as `tasks/get` returns it (a DetailedTask), or as the flat CreateTaskResult.
    pub fn to_json(&self, id: &str, created: bool) -> Value {
        let ttl = TASK_TTL
            .saturating_sub(self.born.elapsed())
            .as_millis()
            .max(1);
        let mut v = json!({
            "resultType": if created { "task" } else { "complete" },
            "taskId": id,
            "status": self.status.as_str(),
            "createdAt": self.created_at,
            "lastUpdatedAt": self.updated_at,
            "ttlMs": u64::try_from(ttl).unwrap_or(u64::MAX),
            "pollIntervalMs": POLL_INTERVAL_MS,
        });
        if created {
            return v;
        }
        match self.status {
            Status::Completed => v["result"] = self.result.clone().unwrap_or(Value::Null),
            Status::Failed => v["error"] = self.error.clone().unwrap_or(Value::Null),
            Status::InputRequired => {
                v["inputRequests"] = Value::Object(self.input_requests.clone().unwrap_or_default())
            }
            _ => {}
        }
        v
    }

    /// Parameters of the next run: the original call plus the answers and the sealed state.
    pub fn rerun_params(&self) -> Map<String, Value> {
        let mut p = self.params.clone();
        p.insert(
            "inputResponses".into(),
            Value::Object(self.responses.clone()),
        );
        match &self.request_state {
            Some(s) => p.insert("requestState".into(), json!(s)),
            None => p.remove("requestState"),
        };
        p
    }
}

/// The tasks of one session.
#[derive(Debug, Default)]
pub struct Tasks {
    map: HashMap<String, Task>,
}

impl Tasks {
    /// Drop expired tasks.
    pub fn expire(&mut self) {
        self.map.retain(|_, t| t.born.elapsed() < TASK_TTL);
    }
    /// Room for one more?
    pub fn full(&self) -> bool {
        self.map.len() >= MAX_TASKS
    }
    /// Insert a task.
    pub fn insert(&mut self, id: String, t: Task) {
        self.map.insert(id, t);
    }
    /// A task by id.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Task> {
        self.map.get_mut(id)
    }
}

/// Whether a stateless request declared the tasks extension.
pub fn declared(st: &Stateless) -> bool {
    st.caps
        .get("extensions")
        .and_then(|e| e.get(TASKS_EXT))
        .is_some()
}

/// The `-32021` data for a missing tasks extension.
pub fn required_capability() -> Value {
    json!({"requiredCapabilities": {"extensions": {TASKS_EXT: {}}}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st() -> Stateless {
        Stateless {
            log_level: None,
            caps: json!({"extensions": {TASKS_EXT: {}}}),
        }
    }

    #[test]
    fn lifecycle_and_partial_updates() {
        let mut t = Task::new(Map::new(), Id::Num(1), st());
        assert!(declared(&t.ctx));
        t.finish_run(&json!({"result": {"resultType": "input_required", "inputRequests": {"a": {}, "b": {}}}}));
        assert_eq!(t.status, Status::InputRequired);
        let mut one = Map::new();
        one.insert("a".into(), json!({"action": "accept"}));
        one.insert("zzz".into(), json!({"ignored": true}));
        assert!(!t.update(&one));
        assert_eq!(t.status, Status::InputRequired);
        assert_eq!(t.to_json("x", false)["inputRequests"], json!({"b": {}}));
        let mut two = Map::new();
        two.insert("b".into(), json!({"action": "accept"}));
        assert!(t.update(&two));
        assert_eq!(
            t.rerun_params()["inputResponses"].as_object().map(Map::len),
            Some(2)
        );
        t.finish_run(&json!({"result": {"resultType": "complete", "content": [{"type": "text", "text": "x"}]}}));
        assert_eq!(t.status, Status::Completed);
        assert!(!t.cancel());
        assert_eq!(t.to_json("x", false)["status"], "completed");
        let created = t.to_json("x", true);
        assert_eq!(created["resultType"], "task");
        assert!(created.get("result").is_none());
    }
}
