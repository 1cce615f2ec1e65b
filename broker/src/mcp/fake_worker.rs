//! Test support: one in-process fake worker behind [`Workers`]/[`ToolWorker`], shared by the
//! engine's tests and the HTTP transport's. A call plays a script: the events it sends (with
//! backpressure, as the supervisor's reader does), then its outcome. Records what reached it.
//!
//! Test builds only; trusts nothing (the engine validates its answers like a real worker's).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use mcpd_ipc::{
    ClientReplyOutcome, Content, InputRound, PathArg, Query, SandboxSpec, ToolAccess,
    ToolAnnotations, ToolDescriptor, ToolResult,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::mcp::backend::{ToolWorker, Workers};
use crate::worker::cgroup::Limits;
use crate::worker::supervisor::{CallEvent, CallHandle, CallOutcome, WorkerContext};

/// What a call of a tool (by name) does: the events it sends, then its outcome.
pub(crate) type Script = Arc<dyn Fn(&str) -> (Vec<CallEvent>, CallOutcome) + Send + Sync>;

/// One call that reached the fake.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) tool: String,
    pub(crate) args: Value,
}

/// The fake worker, and the `Workers` that starts it (every start hands out the same fake).
#[derive(Clone)]
pub(crate) struct FakeWorker {
    pub(crate) tools: Vec<ToolDescriptor>,
    pub(crate) script: Script,
    /// Calls that reached it, in order.
    pub(crate) calls: Arc<Mutex<Vec<Received>>>,
    /// Ended (killed or shut down); a test may set it to make the engine start another.
    pub(crate) killed: Arc<AtomicBool>,
    /// Set once a call's last event and its outcome are handed over.
    pub(crate) finished: Arc<AtomicBool>,
    /// Runs at every start, before the fake is handed out.
    pub(crate) on_start: Arc<dyn Fn() + Send + Sync>,
    /// How many times it was started.
    pub(crate) started: Arc<AtomicU32>,
}

impl std::fmt::Debug for FakeWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWorker")
            .field("tools", &self.tools.len())
            .finish()
    }
}

impl FakeWorker {
    /// A fake with these tools, playing `script`.
    pub(crate) fn new(tools: Vec<ToolDescriptor>, script: Script) -> Self {
        Self {
            tools,
            script,
            calls: Arc::default(),
            killed: Arc::default(),
            finished: Arc::default(),
            on_start: Arc::new(|| {}),
            started: Arc::default(),
        }
    }

    /// The same fake, running `hook` at every start.
    pub(crate) fn on_start(mut self, hook: Arc<dyn Fn() + Send + Sync>) -> Self {
        self.on_start = hook;
        self
    }

    /// Whether it was ended.
    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Mark it ended (or not).
    pub(crate) fn set_killed(&self, killed: bool) {
        self.killed.store(killed, Ordering::SeqCst);
    }

    /// How many times it was started.
    pub(crate) fn starts(&self) -> u32 {
        self.started.load(Ordering::SeqCst)
    }
}

/// A tool of the fake: `access` decides who sees it, `path_arg` names a path argument
/// (and whether it is written).
pub(crate) fn tool(
    name: &str,
    access: ToolAccess,
    path_arg: Option<(&str, bool)>,
) -> ToolDescriptor {
    ToolDescriptor {
        name: name.into(),
        title: None,
        description: format!("{name} (fake)"),
        input_schema_json: r#"{"type":"object"}"#.into(),
        output_schema_json: None,
        annotations: ToolAnnotations::default(),
        access,
        path_args: path_arg
            .map(|(n, write)| PathArg {
                name: n.into(),
                many: false,
                write,
            })
            .into_iter()
            .collect(),
        exec_args: None,
        client_capabilities: vec![],
        task_support: mcpd_ipc::TaskSupport::Forbidden,
    }
}

/// A text result.
pub(crate) fn text(t: &str) -> CallOutcome {
    CallOutcome::Done(ToolResult {
        content: vec![Content::Text { text: t.into() }],
        structured_json: None,
        is_error: false,
        input_required: None,
    })
}

impl ToolWorker for FakeWorker {
    fn pid(&self) -> u32 {
        0
    }
    fn is_alive(&self) -> bool {
        !self.is_killed()
    }
    fn tools(&self) -> &[ToolDescriptor] {
        &self.tools
    }
    fn confinement(&self) -> String {
        "in-process fake".into()
    }
    fn call(
        &self,
        allow: mcpd_policy::Allow,
        arguments_json: String,
        want_events: bool,
        _input: Option<InputRound>,
    ) -> BoxFuture<'_, CallHandle> {
        let tool = allow.tool().to_string();
        self.calls.lock().unwrap().push(Received {
            tool: tool.clone(),
            args: serde_json::from_str(&arguments_json).unwrap(),
        });
        let (events, outcome) = (self.script)(&tool);
        let (ev_tx, ev_rx) = mpsc::channel(crate::worker::supervisor::CALL_EVENT_QUEUE);
        let (done_tx, done) = oneshot::channel();
        let finished = self.finished.clone();
        tokio::spawn(async move {
            for e in events {
                if want_events && ev_tx.send(e).await.is_err() {
                    break;
                }
            }
            let _ = done_tx.send(outcome);
            finished.store(true, Ordering::SeqCst);
        });
        Box::pin(async move {
            CallHandle {
                id: 1,
                events: want_events.then_some(ev_rx),
                done,
            }
        })
    }
    fn query(&self, _query: Query) -> BoxFuture<'_, CallOutcome> {
        Box::pin(async { CallOutcome::Answer("{}".into()) })
    }
    fn watch(&self, _uris: Vec<String>) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn cancel(&self, _call: u64) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn client_reply(&self, _id: u64, _outcome: ClientReplyOutcome) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn kill(&self) -> BoxFuture<'_, ()> {
        self.set_killed(true);
        Box::pin(async {})
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.kill()
    }
}

impl Workers for FakeWorker {
    fn start(
        &self,
        _spec: SandboxSpec,
        _limits: Limits,
        _ctx: WorkerContext,
    ) -> BoxFuture<'_, Result<Arc<dyn ToolWorker>, String>> {
        (self.on_start)();
        self.started.fetch_add(1, Ordering::SeqCst);
        let w: Arc<dyn ToolWorker> = Arc::new(self.clone());
        Box::pin(async move { Ok(w) })
    }
}
