//! The worker's main sequence and its request loop.
//!
//! Trusts the broker's `Confine` message; validates everything else it reads (unknown tools,
//! malformed arguments, duplicate call ids all get a `Failed` answer, never a panic).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mcpd_ipc::channel::{channel, recv_blocking, send_blocking, Sender};
use mcpd_ipc::{
    BrokerToWorker, CallError, CallErrorKind, ClientReplyOutcome, ClientRequestKind, LogLevel,
    Query, WorkerToBroker, MAX_FRAME, PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, Semaphore};

use crate::confine;
use crate::tools::{paths::Roots, ClientLink, ProgressFn, Registry, ToolContext};

/// Client requests waiting for the broker's `ClientReply`, by worker-chosen id.
type PendingReplies =
    Arc<std::sync::Mutex<HashMap<u64, std::sync::mpsc::Sender<ClientReplyOutcome>>>>;

/// Most client requests a worker may have waiting at once.
const MAX_PENDING_CLIENT_REQUESTS: usize = 64;

/// A running call's way to the client, through the broker.
struct Link {
    call: u64,
    outbox: mpsc::UnboundedSender<WorkerToBroker>,
    pending: PendingReplies,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl ClientLink for Link {
    fn log(&self, level: LogLevel, data: serde_json::Value) {
        let _ = self.outbox.send(WorkerToBroker::Log {
            id: Some(self.call),
            level,
            logger: None,
            data_json: data.to_string(),
        });
    }

    fn changed(&self, change: mcpd_ipc::Change) {
        let _ = self.outbox.send(WorkerToBroker::Changed { change });
    }

    fn request(
        &self,
        request: ClientRequestKind,
        cancelled: &AtomicBool,
        timeout: std::time::Duration,
    ) -> ClientReplyOutcome {
        let err = |m: &str| ClientReplyOutcome::Err { message: m.into() };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let Ok(mut p) = self.pending.lock() else {
                return err("internal error");
            };
            if p.len() >= MAX_PENDING_CLIENT_REQUESTS {
                return err("too many client requests waiting");
            }
            p.insert(id, tx);
        }
        let _ = self.outbox.send(WorkerToBroker::ClientRequest {
            id,
            call: self.call,
            request,
        });
        let deadline = std::time::Instant::now() + timeout;
        let outcome = loop {
            match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(o) => break o,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if cancelled.load(Ordering::Relaxed) {
                        break err("cancelled");
                    }
                    if std::time::Instant::now() >= deadline {
                        break err("the client did not answer in time");
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break err("session ended"),
            }
        };
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
        outcome
    }
}

/// Most resources watched for changes.
const MAX_WATCHED: usize = 256;
/// How often watched resources are checked.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Poll the subscribed `file://` resources (size and modification time, beneath the roots)
/// and report changes. Polling, not inotify: it needs no extra kernel interface inside the
/// sandbox and is bounded by [`MAX_WATCHED`].
async fn watch_files(
    watched: Arc<std::sync::Mutex<Vec<String>>>,
    roots: Arc<Roots>,
    outbox: mpsc::UnboundedSender<WorkerToBroker>,
) {
    let mut seen: HashMap<String, Option<(i128, i128, u64)>> = HashMap::new();
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let uris: Vec<String> = watched.lock().map(|w| w.clone()).unwrap_or_default();
        if uris.is_empty() {
            seen.clear();
            continue;
        }
        let roots = roots.clone();
        let stats = tokio::task::spawn_blocking(move || {
            uris.into_iter()
                .map(|u| {
                    let st = crate::tools::resources::uri_path(&u)
                        .and_then(|p| {
                            roots
                                .open_regular(&p, crate::tools::paths::Access::Read)
                                .ok()
                        })
                        .map(|(_, st)| {
                            (
                                i128::from(st.st_mtime),
                                i128::from(st.st_mtime_nsec),
                                st.st_size as u64,
                            )
                        });
                    (u, st)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut next = HashMap::new();
        for (uri, st) in stats {
            if let Some(prev) = seen.get(&uri) {
                if *prev != st {
                    let _ = outbox.send(WorkerToBroker::Changed {
                        change: mcpd_ipc::Change::ResourceUpdated { uri: uri.clone() },
                    });
                }
            }
            next.insert(uri, st);
        }
        seen = next;
    }
}

/// Answer a provider query (blocking: runs on a tool thread).
fn answer_query(
    registry: &Registry,
    ctx: &ToolContext,
    query: Query,
) -> Result<serde_json::Value, CallError> {
    use serde_json::{json, Value};
    let bad = |m: &str| CallError {
        kind: CallErrorKind::InvalidArguments,
        message: m.to_string(),
    };
    let providers = registry.providers();
    Ok(match query {
        Query::ListResources => {
            json!({"resources": providers.iter().flat_map(|p| p.list_resources(ctx)).collect::<Vec<_>>()})
        }
        Query::ListResourceTemplates => {
            json!({"resourceTemplates": providers.iter().flat_map(|p| p.resource_templates()).collect::<Vec<_>>()})
        }
        Query::ReadResource { uri } => {
            return providers
                .iter()
                .find_map(|p| p.read_resource(ctx, &uri))
                .unwrap_or_else(|| {
                    Err(bad(&format!(
                        "Resource not found: {}",
                        uri.chars().take(256).collect::<String>()
                    )))
                })
        }
        Query::ListPrompts => {
            json!({"prompts": providers.iter().flat_map(|p| p.prompts()).collect::<Vec<_>>()})
        }
        Query::GetPrompt {
            name,
            arguments_json,
            input: _,
        } => {
            let args = match serde_json::from_str::<Value>(&arguments_json) {
                Ok(Value::Object(m)) => m,
                _ => return Err(bad("arguments must be an object")),
            };
            return providers
                .iter()
                .find_map(|p| p.get_prompt(ctx, &name, &args))
                .unwrap_or_else(|| Err(bad("Unknown prompt")));
        }
        Query::Complete {
            reference_json,
            argument_json,
        } => {
            let r: Value =
                serde_json::from_str(&reference_json).map_err(|_| bad("ref must be JSON"))?;
            let a: Value =
                serde_json::from_str(&argument_json).map_err(|_| bad("argument must be JSON"))?;
            let mut values: Vec<String> = providers
                .iter()
                .find_map(|p| p.complete(ctx, &r, &a))
                .unwrap_or_default();
            let total = values.len();
            values.truncate(100);
            json!({"completion": {"values": values, "total": total, "hasMore": total > 100}})
        }
    })
}

/// Largest `Confine` message accepted (the sandbox spec is small; this bounds the only
/// read done before confinement).
pub const MAX_CONFINE_FRAME: usize = 256 * 1024;

/// Most calls a worker runs at once; further calls wait for a slot.
pub const MAX_CONCURRENT_CALLS: usize = 16;

/// Exit codes, so the broker and the journal can tell failures apart.
pub mod exit {
    /// Clean shutdown (broker said so, or closed the socket).
    pub const OK: u8 = 0;
    /// Process hygiene (fds, env, dumpable) failed.
    pub const SANITIZE: u8 = 10;
    /// No valid `Confine` message arrived.
    pub const HANDSHAKE: u8 = 11;
    /// Confinement failed.
    pub const CONFINE: u8 = 12;
    /// The IPC channel failed after start-up.
    pub const IPC: u8 = 13;
}

fn fail(msg: &str, code: u8) -> ExitCode {
    eprintln!("mcpd-worker[{}]: {msg}", std::process::id());
    ExitCode::from(code)
}

/// Run a worker with these tools: the fixed start-up sequence, then the request loop.
pub fn run(registry: Registry) -> ExitCode {
    // `mcpd-worker --version`: the broker's start-up check (and `mcpd doctor`) that this is a
    // worker speaking its IPC protocol. Reading argv opens no file and starts no thread, so the
    // start below is still single-threaded with no descriptor taken; nothing else is read.
    if std::env::args_os().nth(1).is_some_and(|a| a == "--version") {
        println!("{}", version_line());
        return ExitCode::SUCCESS;
    }
    // INVARIANT (confinement order; docs/ARCHITECTURE.md "Worker start-up"):
    //   1. sanitize (fds, env, non-dumpable, no core)   2. read ONE bounded Confine message
    //   2b. namespaces → private view (pivot_root) → own /proc → privileges dropped (uid,
    //       capabilities, securebits) — in the PID namespace's init, before the worker forks
    //   3-6. rlimits → no_new_privs → Landlock → seccomp (last)   7. Ready, then serve.
    // Nothing but the single Confine frame is read from the broker before step 6 completed,
    // and no client-controlled byte is read before it. Do not reorder.
    // SAFETY: the single-threaded start `sanitize_process` requires: this is the first thing
    // `main` does (no runtime, no thread has been spawned), and nothing has opened a file yet,
    // so no Rust object owns a descriptor >= 4.
    #[allow(unsafe_code)]
    let sanitized = unsafe { confine::sanitize_process() };
    if let Err(e) = sanitized {
        return fail(&format!("sanitize: {e}"), exit::SANITIZE);
    }
    let fd = match confine::take_ipc_fd() {
        Ok(fd) => fd,
        Err(e) => return fail(&e.to_string(), exit::HANDSHAKE),
    };
    let spec = match recv_blocking::<BrokerToWorker>(fd.as_fd(), MAX_CONFINE_FRAME) {
        Ok(Some(BrokerToWorker::Confine { version, spec })) if version == PROTOCOL_VERSION => spec,
        Ok(Some(BrokerToWorker::Confine { version, .. })) => {
            let reason = format!("ipc version {version} unsupported (want {PROTOCOL_VERSION})");
            let _ = send_blocking(
                fd.as_fd(),
                &WorkerToBroker::ConfineFailed {
                    reason: reason.clone(),
                },
            );
            return fail(&reason, exit::HANDSHAKE);
        }
        Ok(Some(_)) => return fail("first message was not Confine", exit::HANDSHAKE),
        Ok(None) => return fail("broker closed before Confine", exit::HANDSHAKE),
        Err(e) => return fail(&format!("reading Confine: {e}"), exit::HANDSHAKE),
    };
    // 2b-6. Namespaces, private view, identity (`isolate` returns in the worker process only:
    //       the outer process and the PID namespace's init end inside), then rlimits,
    //       no_new_privs, Landlock, seccomp.
    let confined = confine::isolate(&spec, fd.as_raw_fd()).and_then(|i| confine::confine(&spec, i));
    let enforcement = match confined {
        Ok(e) => e,
        Err(e) => {
            let reason = e.to_string();
            let _ = send_blocking(
                fd.as_fd(),
                &WorkerToBroker::ConfineFailed {
                    reason: reason.clone(),
                },
            );
            return fail(&format!("confine: {reason}"), exit::CONFINE);
        }
    };
    // From here on the process is confined; everything below runs under the sandbox.
    let roots = match Roots::open(&spec) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            let reason = format!("opening allowed roots: {e}");
            let _ = send_blocking(
                fd.as_fd(),
                &WorkerToBroker::ConfineFailed {
                    reason: reason.clone(),
                },
            );
            return fail(&reason, exit::CONFINE);
        }
    };
    let mut registry = registry;
    if let Err(reason) = registry
        .enable_toolsets(&spec.toolsets)
        .and_then(|()| registry.add_operator_tools(&spec.exec))
    {
        let _ = send_blocking(
            fd.as_fd(),
            &WorkerToBroker::ConfineFailed {
                reason: reason.clone(),
            },
        );
        return fail(&reason, exit::CONFINE);
    }
    let exec = Arc::new(spec.exec.clone());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .max_blocking_threads(MAX_CONCURRENT_CALLS + 2)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("runtime: {e}"), exit::IPC),
    };
    let code = rt.block_on(serve(
        fd,
        registry,
        roots,
        spec.tool_limits,
        exec,
        enforcement,
    ));
    // Do not wait for tool threads that may still be blocked: the session is over. Every
    // process group a tool started dies with it.
    crate::tools::process::kill_all();
    std::process::exit(i32::from(code))
}

async fn writer(tx: Sender<WorkerToBroker>, mut outbox: mpsc::UnboundedReceiver<WorkerToBroker>) {
    while let Some(msg) = outbox.recv().await {
        if let Err(e) = tx.send(&msg).await {
            eprintln!("mcpd-worker[{}]: ipc send: {e}", std::process::id());
            std::process::exit(i32::from(exit::IPC));
        }
    }
}

async fn serve(
    fd: OwnedFd,
    registry: Registry,
    roots: Arc<Roots>,
    limits: mcpd_ipc::ToolLimits,
    exec: Arc<mcpd_ipc::ExecSpec>,
    enforcement: mcpd_ipc::Enforcement,
) -> u8 {
    let (tx, mut rx) = match channel::<BrokerToWorker, WorkerToBroker>(fd, MAX_FRAME) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mcpd-worker: ipc channel: {e}");
            return exit::IPC;
        }
    };
    let (outbox, outbox_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer(tx, outbox_rx));
    let _ = outbox.send(WorkerToBroker::Ready {
        version: PROTOCOL_VERSION,
        enforcement,
        tools: registry.descriptors(),
    });
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_CALLS));
    let mut inflight: HashMap<u64, Arc<AtomicBool>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
    let replies: PendingReplies = Arc::default();
    let watched: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    tokio::spawn(watch_files(watched.clone(), roots.clone(), outbox.clone()));
    let next_request = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let code = loop {
        tokio::select! {
            Some(id) = done_rx.recv() => { inflight.remove(&id); }
            msg = rx.recv() => match msg {
                Ok(Some(BrokerToWorker::Call { id, tool, arguments_json, progress, input })) => {
                    let failed = move |kind, message: &str| WorkerToBroker::Failed {
                        id, error: CallError { kind, message: message.to_string() } };
                    if inflight.contains_key(&id) {
                        let _ = outbox.send(failed(CallErrorKind::Internal, "duplicate call id"));
                        continue;
                    }
                    let Some(t) = registry.get(&tool) else {
                        let _ = outbox.send(failed(CallErrorKind::UnknownTool, "unknown tool"));
                        continue;
                    };
                    let args: serde_json::Value = match serde_json::from_str(&arguments_json) {
                        Ok(v @ serde_json::Value::Object(_)) => v,
                        _ => {
                            let _ = outbox.send(failed(CallErrorKind::InvalidArguments, "arguments must be a JSON object"));
                            continue;
                        }
                    };
                    let cancelled = Arc::new(AtomicBool::new(false));
                    inflight.insert(id, cancelled.clone());
                    let progress_fn: Option<ProgressFn> = progress.then(|| {
                        let outbox = outbox.clone();
                        Arc::new(move |p: crate::tools::ProgressUpdate| {
                            let _ = outbox.send(WorkerToBroker::Progress {
                                id, progress: p.progress, total: p.total, message: p.message });
                        }) as ProgressFn
                    });
                    let link = Arc::new(Link { call: id, outbox: outbox.clone(), pending: replies.clone(), next: next_request.clone() });
                    let ctx = ToolContext::new(roots.clone(), limits.clone(), cancelled, progress_fn).with_exec(exec.clone()).with_link(link).with_input(input);
                    if t.is_quick() && inflight.len() == 1 {
                        // Nothing else in flight: run it here (no hand-off to a tool thread).
                        let answer = match t.call(&ctx, args) {
                            Ok(result) => WorkerToBroker::Result { id, result },
                            Err(error) => WorkerToBroker::Failed { id, error },
                        };
                        let _ = outbox.send(answer);
                        inflight.remove(&id);
                        continue;
                    }
                    let outbox = outbox.clone();
                    let done_tx = done_tx.clone();
                    let slots = slots.clone();
                    tokio::spawn(async move {
                        let _permit = slots.acquire_owned().await;
                        let answer = if ctx.is_cancelled() {
                            failed(CallErrorKind::Cancelled, "cancelled")
                        } else {
                            match tokio::task::spawn_blocking(move || t.call(&ctx, args)).await {
                                Ok(Ok(result)) => WorkerToBroker::Result { id, result },
                                Ok(Err(error)) => WorkerToBroker::Failed { id, error },
                                Err(_) => failed(CallErrorKind::Internal, "tool failed unexpectedly"),
                            }
                        };
                        let _ = outbox.send(answer);
                        let _ = done_tx.send(id);
                    });
                }
                Ok(Some(BrokerToWorker::Cancel { id })) => {
                    if let Some(flag) = inflight.get(&id) {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
                Ok(Some(BrokerToWorker::ClientReply { id, outcome })) => {
                    // A reply for a request that gave up waiting is dropped.
                    let waiter = replies.lock().ok().and_then(|mut p| p.remove(&id));
                    if let Some(w) = waiter {
                        let _ = w.send(outcome);
                    }
                }
                Ok(Some(BrokerToWorker::Watch { uris })) => {
                    if let Ok(mut w) = watched.lock() {
                        *w = uris.into_iter().filter(|u| u.starts_with("file://")).take(MAX_WATCHED).collect();
                    }
                }
                Ok(Some(BrokerToWorker::Query { id, query })) => {
                    let registry = registry.clone();
                    let input = match &query { Query::GetPrompt { input, .. } => input.clone(), _ => None };
                    let ctx = ToolContext::new(roots.clone(), limits.clone(), Arc::new(AtomicBool::new(false)), None).with_exec(exec.clone()).with_input(input);
                    let outbox = outbox.clone();
                    let slots = slots.clone();
                    tokio::spawn(async move {
                        let _permit = slots.acquire_owned().await;
                        let answer = match tokio::task::spawn_blocking(move || answer_query(&registry, &ctx, query)).await {
                            Ok(Ok(v)) => WorkerToBroker::Answer { id, result_json: v.to_string() },
                            Ok(Err(error)) => WorkerToBroker::Failed { id, error },
                            Err(_) => WorkerToBroker::Failed { id, error: CallError { kind: CallErrorKind::Internal, message: "query failed".into() } },
                        };
                        let _ = outbox.send(answer);
                    });
                }
                Ok(Some(BrokerToWorker::Confine { .. })) => {
                    eprintln!("mcpd-worker: second Confine message; exiting");
                    break exit::IPC;
                }
                Ok(Some(BrokerToWorker::Shutdown)) | Ok(None) => break exit::OK,
                Err(e) => {
                    eprintln!("mcpd-worker: ipc receive: {e}");
                    break exit::IPC;
                }
            }
        }
    };
    drop(outbox);
    // Flush what is already queued (bounded: the writer ends when the outbox is drained and
    // every sender is gone, or the socket fails).
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), writer).await;
    code
}

/// What `mcpd-worker --version` prints: `mcpd-worker VERSION ipc N` (N = the IPC
/// [`PROTOCOL_VERSION`] the broker must speak).
pub fn version_line() -> String {
    format!(
        "mcpd-worker {} ipc {PROTOCOL_VERSION}",
        env!("CARGO_PKG_VERSION")
    )
}
