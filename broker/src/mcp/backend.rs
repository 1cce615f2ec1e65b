//! What the engine needs of workers, as two traits: [`Workers`] starts a session's worker,
//! [`ToolWorker`] is one running worker (its tools, calls, provider queries, cancellation,
//! client replies, watch list, end). The broker's implementation is the real supervisor and
//! its confined processes (`crate::worker`); the engine's in-process tests put a fake worker
//! behind the same traits, so method logic is tested without spawning anything.
//!
//! The traits carry no trust: whatever implements them is hostile to the engine, which
//! validates every answer (`results`, `providers`, `tools`) as if it came from a worker.
#![forbid(unsafe_code)]

use std::sync::Arc;

use futures_util::future::BoxFuture;
use mcpd_ipc::{ClientReplyOutcome, InputRound, Query, SandboxSpec, ToolDescriptor};

use crate::worker::cgroup::Limits;
use crate::worker::supervisor::{CallHandle, CallOutcome, Supervisor, Worker, WorkerContext};

/// Starts the worker of a session.
///
/// The supervisor completes the spec with what the host's filesystem says (program loaders,
/// `#!` interpreters) before it starts the worker: that is worker-zone knowledge.
pub trait Workers: Send + Sync + std::fmt::Debug {
    /// Start a worker confined by `spec` within `limits`, working for `ctx`; `Err` says why
    /// not (for the log, never for the client).
    fn start(
        &self,
        spec: SandboxSpec,
        limits: Limits,
        ctx: WorkerContext,
    ) -> BoxFuture<'_, Result<Arc<dyn ToolWorker>, String>>;
}

/// One running worker, as the engine uses it.
pub trait ToolWorker: Send + Sync + std::fmt::Debug {
    /// Its process id (0 for an in-process fake).
    fn pid(&self) -> u32;
    /// Whether it still serves.
    fn is_alive(&self) -> bool;
    /// The tools it advertised (already bounded by the supervisor).
    fn tools(&self) -> &[ToolDescriptor];
    /// A one-line description of what confines it, for the log.
    fn confinement(&self) -> String;
    /// Send a call; the policy's `Allow` token is consumed: no call reaches a worker without it.
    fn call(
        &self,
        allow: mcpd_policy::Allow,
        arguments_json: String,
        want_events: bool,
        input: Option<InputRound>,
    ) -> BoxFuture<'_, CallHandle>;
    /// Ask its providers (resources, prompts, completions).
    fn query(&self, query: Query) -> BoxFuture<'_, CallOutcome>;
    /// Tell it which resources to watch.
    fn watch(&self, uris: Vec<String>) -> BoxFuture<'_, ()>;
    /// Stop a call; its outcome is no longer awaited.
    fn cancel(&self, call: u64) -> BoxFuture<'_, ()>;
    /// Answer one of its client requests.
    fn client_reply(&self, id: u64, outcome: ClientReplyOutcome) -> BoxFuture<'_, ()>;
    /// End it now; returns once it is gone.
    fn kill(&self) -> BoxFuture<'_, ()>;
    /// Orderly end (a grace period, then kill); returns once it is gone.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

impl Workers for Supervisor {
    fn start(
        &self,
        spec: SandboxSpec,
        limits: Limits,
        ctx: WorkerContext,
    ) -> BoxFuture<'_, Result<Arc<dyn ToolWorker>, String>> {
        Box::pin(async move {
            let mut spec = spec;
            crate::worker::sandbox::complete(&mut spec);
            self.spawn(spec, limits, ctx)
                .await
                .map(|w| w as Arc<dyn ToolWorker>)
                .map_err(|e| e.to_string())
        })
    }
}

impl ToolWorker for Worker {
    fn pid(&self) -> u32 {
        Worker::pid(self)
    }
    fn is_alive(&self) -> bool {
        Worker::is_alive(self)
    }
    fn tools(&self) -> &[ToolDescriptor] {
        Worker::tools(self)
    }
    fn confinement(&self) -> String {
        format!("landlock={:?}", self.enforcement().landlock)
    }
    fn call(
        &self,
        allow: mcpd_policy::Allow,
        arguments_json: String,
        want_events: bool,
        input: Option<InputRound>,
    ) -> BoxFuture<'_, CallHandle> {
        Box::pin(Worker::call(
            self,
            allow,
            arguments_json,
            want_events,
            input,
        ))
    }
    fn query(&self, query: Query) -> BoxFuture<'_, CallOutcome> {
        Box::pin(Worker::query(self, query))
    }
    fn watch(&self, uris: Vec<String>) -> BoxFuture<'_, ()> {
        Box::pin(Worker::watch(self, uris))
    }
    fn cancel(&self, call: u64) -> BoxFuture<'_, ()> {
        Box::pin(Worker::cancel(self, call))
    }
    fn client_reply(&self, id: u64, outcome: ClientReplyOutcome) -> BoxFuture<'_, ()> {
        Box::pin(Worker::client_reply(self, id, outcome))
    }
    fn kill(&self) -> BoxFuture<'_, ()> {
        Box::pin(Worker::kill(self))
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(Worker::shutdown(self))
    }
}
