//! Worker supervision: spawning `mcpd-worker` processes from one long-lived thread, the
//! confinement handshake, and a typed handle that multiplexes calls over the IPC socket.
//!
//! Trust: every message a worker sends is hostile input. A malformed or oversized frame, a
//! message out of protocol state, or an invalid descriptor ends *that worker only*; calls in
//! flight on it fail with [`CallOutcome::WorkerDied`]; the broker lives on and the next call
//! starts a fresh worker.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpd_ipc::channel::{self, Sender};
use mcpd_ipc::{
    BrokerToWorker, CallError, Enforcement, LandlockStatus, LogLevel, SandboxSpec, ToolDescriptor,
    ToolResult, WorkerToBroker, MAX_FRAME, PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, oneshot};

/// How long a worker may take from exec to `Ready`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker gets to exit after `Shutdown` before it is killed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Why a worker's reader ended when the worker closed its end of the socket.
const SOCKET_CLOSED: &str = "worker closed the socket";
/// Most tools a worker may advertise.
pub const MAX_TOOLS: usize = 256;
/// Largest tool description accepted from a worker, bytes.
pub const MAX_DESCRIPTION: usize = 8 * 1024;
/// Largest tool schema accepted from a worker, bytes.
pub const MAX_SCHEMA: usize = 64 * 1024;
/// Most path arguments a tool may declare.
pub const MAX_PATH_ARGS: usize = 16;

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The executable could not be started.
    #[error("cannot start worker {path}: {source}")]
    Exec {
        /// worker path
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// Socket or runtime trouble.
    #[error("worker ipc: {0}")]
    Ipc(String),
    /// The worker refused or failed to confine itself.
    #[error("worker could not confine itself: {0}")]
    Confine(String),
    /// The worker's Landlock is not fully enforced and the operator did not opt in.
    #[error("worker sandbox is degraded ({0:?}) and degraded mode is not enabled")]
    Degraded(LandlockStatus),
    /// The spawner thread is gone.
    #[error("worker spawner unavailable")]
    SpawnerGone,
    /// The worker's control group could not be set up (fail closed: no unlimited worker).
    #[error("worker cgroup: {0}")]
    Cgroup(String),
}

/// The outcome of one call on a worker.
#[derive(Debug)]
pub enum CallOutcome {
    /// The tool ran.
    Done(ToolResult),
    /// The call could not run.
    Failed(CallError),
    /// The worker died (or was killed) before answering.
    WorkerDied,
    /// The answer to a provider query (JSON text, not yet validated).
    Answer(String),
}

/// Events a running call produces before its outcome.
#[derive(Debug)]
pub enum CallEvent {
    /// Progress report.
    Progress {
        /// progress
        progress: f64,
        /// total
        total: Option<f64>,
        /// message
        message: Option<String>,
    },
    /// Log message.
    Log {
        /// level
        level: LogLevel,
        /// logger
        logger: Option<String>,
        /// JSON data (already validated as JSON)
        data: serde_json::Value,
    },
    /// The running tool asks the client something (answer with [`Worker::client_reply`]).
    ClientRequest {
        /// The worker's request id.
        id: u64,
        /// What it asks.
        request: mcpd_ipc::ClientRequestKind,
    },
}

struct Pending {
    done: oneshot::Sender<CallOutcome>,
    events: Option<mpsc::Sender<CallEvent>>,
    /// Progress and log events dropped because the call's queue was full.
    dropped: u64,
}

/// Bound of one call's event queue between the worker and the client (progress, log, client
/// requests). A worker sends as fast as it likes; a slow client does not make the broker
/// buffer without bound.
pub const CALL_EVENT_QUEUE: usize = 256;
/// Places of [`CALL_EVENT_QUEUE`] kept for client requests: progress and log are dropped (and
/// counted) once only this many are free, so they never crowd out a request the tool waits
/// for. The worker itself keeps at most 64 client requests waiting; a worker that queues more
/// than this reserve breaks the protocol and is ended.
pub const CLIENT_REQUEST_RESERVE: usize = 64;

impl Pending {
    /// Queue a progress or log event, or drop and count it when the queue is nearly full.
    fn notify(&mut self, ev: CallEvent) {
        let Some(tx) = &self.events else { return };
        if tx.capacity() <= CLIENT_REQUEST_RESERVE || tx.try_send(ev).is_err() {
            self.dropped += 1;
        }
    }

    fn report_dropped(&self, id: u64) {
        if self.dropped > 0 {
            tracing::warn!(
                call = id,
                dropped = self.dropped,
                "progress/log events dropped: the client did not keep up (queue of {CALL_EVENT_QUEUE})"
            );
        }
    }
}

/// A live worker.
pub struct Worker {
    pid: u32,
    tx: Sender<BrokerToWorker>,
    pending: Arc<Mutex<HashMap<u64, Pending>>>,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    tools: Vec<ToolDescriptor>,
    enforcement: Enforcement,
    killer: Mutex<Option<oneshot::Sender<()>>>,
    exited: Mutex<Option<oneshot::Receiver<()>>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("pid", &self.pid)
            .field("alive", &self.is_alive())
            .finish()
    }
}

/// A call in flight: its events and its outcome.
#[derive(Debug)]
pub struct CallHandle {
    /// The broker-side call id.
    pub id: u64,
    /// Progress and log events (bounded: [`CALL_EVENT_QUEUE`]).
    pub events: Option<mpsc::Receiver<CallEvent>>,
    /// The outcome.
    pub done: oneshot::Receiver<CallOutcome>,
}

impl Worker {
    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Whether the worker is still serving.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
    /// The validated tool descriptors the worker advertised.
    pub fn tools(&self) -> &[ToolDescriptor] {
        &self.tools
    }
    /// What the kernel enforces on this worker.
    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    /// Send a call. The policy's `Allow` token is consumed: no call reaches a worker without it.
    pub async fn call(
        &self,
        allow: mcpd_policy::Allow,
        arguments_json: String,
        want_events: bool,
        input: Option<mcpd_ipc::InputRound>,
    ) -> CallHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = oneshot::channel();
        let (ev_tx, ev_rx) = if want_events {
            let (a, b) = mpsc::channel(CALL_EVENT_QUEUE);
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let handle = CallHandle {
            id,
            events: ev_rx,
            done: done_rx,
        };
        if !self.is_alive() {
            let _ = done_tx.send(CallOutcome::WorkerDied);
            return handle;
        }
        if let Ok(mut p) = self.pending.lock() {
            p.insert(
                id,
                Pending {
                    done: done_tx,
                    events: ev_tx,
                    dropped: 0,
                },
            );
        }
        let msg = BrokerToWorker::Call {
            id,
            tool: allow.tool().to_string(),
            arguments_json,
            progress: want_events,
            input,
        };
        if self.tx.send(&msg).await.is_err() {
            self.mark_dead();
        }
        handle
    }

    /// Tell the worker to stop a call; its outcome is no longer awaited.
    /// Tell the worker which resources to watch.
    pub async fn watch(&self, uris: Vec<String>) {
        if self.is_alive() {
            let _ = self.tx.send(&BrokerToWorker::Watch { uris }).await;
        }
    }

    /// Ask the worker's providers (resources, prompts, completions).
    pub async fn query(&self, query: mcpd_ipc::Query) -> CallOutcome {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = oneshot::channel();
        if !self.is_alive() {
            return CallOutcome::WorkerDied;
        }
        if let Ok(mut p) = self.pending.lock() {
            p.insert(
                id,
                Pending {
                    done: done_tx,
                    events: None,
                    dropped: 0,
                },
            );
        }
        if self
            .tx
            .send(&BrokerToWorker::Query { id, query })
            .await
            .is_err()
        {
            self.mark_dead();
        }
        done_rx.await.unwrap_or(CallOutcome::WorkerDied)
    }

    /// Answer a worker's client request.
    pub async fn client_reply(&self, id: u64, outcome: mcpd_ipc::ClientReplyOutcome) {
        if self.is_alive() {
            let _ = self
                .tx
                .send(&BrokerToWorker::ClientReply { id, outcome })
                .await;
        }
    }

    pub async fn cancel(&self, id: u64) {
        let removed = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
        if removed.is_some() && self.is_alive() {
            let _ = self.tx.send(&BrokerToWorker::Cancel { id }).await;
        }
    }

    fn mark_dead(&self) {
        mark_dead(&self.alive, &self.pending);
        if let Some(k) = self.killer.lock().ok().and_then(|mut k| k.take()) {
            let _ = k.send(());
        }
    }

    /// Kill the worker now and wait until it is reaped.
    pub async fn kill(&self) {
        self.mark_dead();
        let rx = self.exited.lock().ok().and_then(|mut e| e.take());
        if let Some(rx) = rx {
            let _ = rx.await;
        }
    }

    /// Orderly end: `Shutdown`, a short grace period, then kill; returns once reaped.
    pub async fn shutdown(&self) {
        if self.is_alive() {
            let _ = self.tx.send(&BrokerToWorker::Shutdown).await;
            let rx = self.exited.lock().ok().and_then(|mut e| e.take());
            if let Some(mut rx) = rx {
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut rx).await.is_err() {
                    self.mark_dead();
                    let _ = rx.await;
                }
                self.mark_dead();
                return;
            }
        }
        self.kill().await;
    }
}

fn mark_dead(alive: &AtomicBool, pending: &Mutex<HashMap<u64, Pending>>) {
    alive.store(false, Ordering::Release);
    let drained: Vec<Pending> = pending
        .lock()
        .map(|mut p| p.drain().map(|(_, v)| v).collect())
        .unwrap_or_default();
    for p in drained {
        let _ = p.done.send(CallOutcome::WorkerDied);
    }
}

struct SpawnRequest {
    worker: PathBuf,
    reply: oneshot::Sender<std::io::Result<(tokio::process::Child, OwnedFd)>>,
}

/// Who a worker works for, so its lifecycle lands in the audit log.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// The audit log.
    pub audit: crate::auditing::Audit,
    /// Session id.
    pub session: String,
    /// Principal.
    pub principal: String,
    /// Where the worker's change reports go (the session), if anywhere.
    pub changes: Option<mpsc::UnboundedSender<mcpd_ipc::Change>>,
}

impl WorkerContext {
    fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut f = serde_json::Map::new();
        f.insert("session".into(), self.session.clone().into());
        f.insert("principal".into(), self.principal.clone().into());
        f
    }
}

/// Starts workers. All `fork`+`exec` happen on one long-lived thread, so that the workers'
/// `PR_SET_PDEATHSIG` (which fires when the *forking thread* exits) only fires when the broker
/// itself goes away.
#[derive(Debug, Clone)]
pub struct Supervisor {
    requests: std::sync::mpsc::Sender<SpawnRequest>,
    worker_path: PathBuf,
    allow_degraded: bool,
    cgroups: Option<crate::worker::cgroup::Cgroups>,
    groups_made: Arc<AtomicU64>,
    ipc_spin: Duration,
}

impl Supervisor {
    /// Start the spawner thread. Must be called inside a tokio runtime.
    pub fn start(
        worker_path: PathBuf,
        allow_degraded: bool,
        cgroups: Option<crate::worker::cgroup::Cgroups>,
        ipc_spin: Duration,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("mcpd-spawner".into())
            .spawn(move || {
                let _guard = handle.enter();
                while let Ok(req) = rx.recv() {
                    let _ = req.reply.send(spawn_one(&req.worker));
                }
            })?;
        Ok(Self {
            requests: tx,
            worker_path,
            allow_degraded,
            cgroups,
            groups_made: Arc::new(AtomicU64::new(0)),
            ipc_spin,
        })
    }

    /// Start a worker, send it its sandbox, and wait until it reports `Ready`.
    pub async fn spawn(
        &self,
        spec: SandboxSpec,
        limits: crate::worker::cgroup::Limits,
        ctx: WorkerContext,
    ) -> Result<Arc<Worker>, SpawnError> {
        let r = self.spawn_inner(spec, limits, &ctx).await;
        if let Err(e) = &r {
            let mut f = ctx.fields();
            f.insert("error".into(), e.to_string().into());
            let _ = ctx.audit.record("worker.spawn_failed", f).await;
        }
        r
    }

    /// Put a freshly started worker (not yet confined, waiting for `Confine`) into its own
    /// control group, so that it and everything it will ever start share the limits.
    async fn place_in_cgroup(
        &self,
        pid: u32,
        limits: &crate::worker::cgroup::Limits,
    ) -> Result<Option<crate::worker::cgroup::WorkerGroup>, SpawnError> {
        let Some(cg) = self.cgroups.clone() else {
            return Ok(None);
        };
        let n = self.groups_made.fetch_add(1, Ordering::Relaxed);
        let name = format!("mcpd-{}-{n}", std::process::id());
        let have = cg.controllers();
        let limits = crate::worker::cgroup::Limits {
            max_processes: limits.max_processes.filter(|_| have.pids),
            memory_bytes: limits.memory_bytes.filter(|_| have.memory),
        };
        let made = tokio::task::spawn_blocking(move || {
            let g = cg.create(&name, &limits)?;
            g.add(pid)?;
            Ok::<_, crate::worker::cgroup::CgroupError>(g)
        })
        .await;
        match made {
            Ok(Ok(g)) => Ok(Some(g)),
            Ok(Err(e)) => Err(SpawnError::Cgroup(e.to_string())),
            Err(e) => Err(SpawnError::Cgroup(e.to_string())),
        }
    }

    async fn spawn_inner(
        &self,
        spec: SandboxSpec,
        limits: crate::worker::cgroup::Limits,
        ctx: &WorkerContext,
    ) -> Result<Arc<Worker>, SpawnError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(SpawnRequest {
                worker: self.worker_path.clone(),
                reply,
            })
            .map_err(|_| SpawnError::SpawnerGone)?;
        let (mut child, sock) =
            rx.await
                .map_err(|_| SpawnError::SpawnerGone)?
                .map_err(|source| SpawnError::Exec {
                    path: self.worker_path.clone(),
                    source,
                })?;
        let pid = child.id().unwrap_or(0);
        // Into its cgroup before it reads `Confine`: it forks nothing before that.
        let group = match self.place_in_cgroup(pid, &limits).await {
            Ok(g) => g,
            Err(e) => {
                let _ = child.kill().await;
                return Err(e);
            }
        };
        let (tx, mut rx) = channel::channel::<WorkerToBroker, BrokerToWorker>(sock, MAX_FRAME)
            .map_err(|e| SpawnError::Ipc(e.to_string()))?;
        let handshake = async {
            tx.send(&BrokerToWorker::Confine {
                version: PROTOCOL_VERSION,
                spec: Box::new(spec),
            })
            .await
            .map_err(|e| SpawnError::Ipc(e.to_string()))?;
            match rx.recv().await {
                Ok(Some(WorkerToBroker::Ready {
                    version,
                    enforcement,
                    tools,
                })) if version == PROTOCOL_VERSION => Ok((enforcement, tools)),
                Ok(Some(WorkerToBroker::ConfineFailed { reason })) => {
                    Err(SpawnError::Confine(truncate(&reason, 512)))
                }
                Ok(Some(_)) => Err(SpawnError::Ipc("unexpected first message".into())),
                Ok(None) => Err(SpawnError::Ipc(
                    "worker closed the socket during start-up".into(),
                )),
                Err(e) => Err(SpawnError::Ipc(e.to_string())),
            }
        };
        let (enforcement, tools) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = child.kill().await;
                return Err(e);
            }
            Err(_) => {
                let _ = child.kill().await;
                return Err(SpawnError::Ipc("worker start-up timed out".into()));
            }
        };
        if enforcement.landlock != LandlockStatus::FullyEnforced && !self.allow_degraded {
            let _ = child.kill().await;
            return Err(SpawnError::Degraded(enforcement.landlock));
        }
        let iso = &enforcement.isolation;
        if (!iso.namespaces || !iso.capabilities_cleared) && !self.allow_degraded {
            let _ = child.kill().await;
            return Err(SpawnError::Confine(format!(
                "worker runs without {} and degraded mode is not enabled",
                if iso.namespaces {
                    "cleared capabilities"
                } else {
                    "namespaces"
                }
            )));
        }
        if !enforcement.seccomp || !enforcement.no_new_privs {
            let _ = child.kill().await;
            return Err(SpawnError::Confine(
                "worker reports no seccomp or no_new_privs".into(),
            ));
        }
        let tools = validate_tools(tools);
        let mut f = ctx.fields();
        f.insert("pid".into(), pid.into());
        f.insert("landlock_abi".into(), enforcement.landlock_abi.into());
        f.insert(
            "landlock".into(),
            format!("{:?}", enforcement.landlock).into(),
        );
        f.insert("landlock_net".into(), enforcement.landlock_net.into());
        f.insert("landlock_scoped".into(), enforcement.landlock_scoped.into());
        f.insert("seccomp".into(), enforcement.seccomp.into());
        f.insert("no_new_privs".into(), enforcement.no_new_privs.into());
        f.insert("namespaces".into(), iso.namespaces.into());
        f.insert("network_namespace".into(), iso.network_namespace.into());
        f.insert("user_namespace".into(), iso.user_namespace.into());
        f.insert("uid".into(), iso.uid.into());
        f.insert(
            "capabilities_cleared".into(),
            iso.capabilities_cleared.into(),
        );
        f.insert("memfd_noexec".into(), iso.memfd_noexec.into());
        f.insert("proc".into(), iso.proc.into());
        f.insert("degraded".into(), iso.degraded.clone().into());
        f.insert("idmapped".into(), iso.idmapped.len().into());
        f.insert("not_idmapped".into(), iso.not_idmapped.clone().into());
        f.insert("tools".into(), tools.len().into());
        f.insert(
            "cgroup".into(),
            group
                .as_ref()
                .and_then(|g| g.paths().first().map(|p| p.display().to_string()))
                .into(),
        );
        if ctx.audit.record("worker.spawn", f).await.is_err() {
            let _ = child.kill().await;
            return Err(SpawnError::Ipc("audit log unavailable".into()));
        }
        tracing::info!(pid, landlock_abi = enforcement.landlock_abi, landlock = ?enforcement.landlock,
            landlock_net = enforcement.landlock_net, landlock_scoped = enforcement.landlock_scoped,
            seccomp = enforcement.seccomp, no_new_privs = enforcement.no_new_privs, tools = tools.len(),
            namespaces = iso.namespaces, network_namespace = iso.network_namespace,
            user_namespace = iso.user_namespace, uid = iso.uid,
            capabilities_cleared = iso.capabilities_cleared, memfd_noexec = iso.memfd_noexec,
            idmapped = iso.idmapped.len(), "worker confined and ready");
        if let Some(why) = &iso.degraded {
            tracing::warn!(pid, "DEGRADED SANDBOX (server.allow_degraded_sandbox): the worker runs without namespaces or a private view: {why}");
        }
        if iso.namespaces && !iso.proc {
            tracing::warn!(pid, "the worker's view has no /proc: its user namespace may not mount procfs beside the service manager's over-mounted /proc (ProtectKernelTunables=, ProtectProc=, ProcSubset=; see docs/ARCHITECTURE.md)");
        }
        if !iso.not_idmapped.is_empty() {
            tracing::warn!(pid, roots = ?iso.not_idmapped, uid = iso.uid,
                "these roots' filesystems refused an idmapped mount: the worker runs as their owner \
                 (capabilities cleared; tenants with such roots may share that uid)");
        }
        // From here on a request to the worker is usually answered within tens of µs: poll for
        // the answer that long instead of sleeping (bounded; `server.ipc_spin_us`).
        tx.spin_after_send(self.ipc_spin);
        let pending: Arc<Mutex<HashMap<u64, Pending>>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let (exit_tx, exit_rx) = oneshot::channel::<()>();
        let worker = Arc::new(Worker {
            pid,
            tx,
            pending: pending.clone(),
            next_id: AtomicU64::new(1),
            alive: alive.clone(),
            tools,
            enforcement,
            killer: Mutex::new(Some(kill_tx)),
            exited: Mutex::new(Some(exit_rx)),
        });
        // Reader: routes the worker's messages; any protocol violation ends the worker.
        let reader_pending = pending.clone();
        let reader_alive = alive.clone();
        let changes = ctx.changes.clone();
        let reader = tokio::spawn(async move {
            let why = loop {
                match rx.recv().await {
                    Ok(Some(WorkerToBroker::Changed { change })) => {
                        let ok = match &change {
                            mcpd_ipc::Change::ResourceUpdated { uri } => uri.len() <= 8192,
                            _ => true,
                        };
                        if !ok {
                            break "malformed change report".to_string();
                        }
                        if let Some(c) = &changes {
                            let _ = c.send(change);
                        }
                    }
                    Ok(Some(msg)) => {
                        if let Err(why) = route(&reader_pending, msg) {
                            break why;
                        }
                    }
                    Ok(None) => break SOCKET_CLOSED.to_string(),
                    Err(e) => break format!("invalid ipc from worker: {e}"),
                }
            };
            mark_dead(&reader_alive, &reader_pending);
            why
        });
        // Lifecycle: wait for exit, or kill on request / reader failure; always reap.
        let exit_ctx = ctx.clone();
        tokio::spawn(async move {
            let mut reader = reader;
            let mut kill_rx = kill_rx;
            let status = tokio::select! {
                st = child.wait() => st,
                why = &mut reader => {
                    // A worker that closed its socket is exiting: its outer process relays
                    // the status once the PID namespace's init has gone; give it that long.
                    let closed = matches!(&why, Ok(w) if w == SOCKET_CLOSED);
                    if closed {
                        if let Ok(st) = tokio::time::timeout(SHUTDOWN_GRACE, child.wait()).await {
                            st
                        } else {
                            tracing::warn!(pid, "ending worker: {SOCKET_CLOSED} but did not exit");
                            let _ = child.start_kill();
                            child.wait().await
                        }
                    } else {
                        if let Ok(why) = why { tracing::warn!(pid, "ending worker: {why}"); }
                        let _ = child.start_kill();
                        child.wait().await
                    }
                }
                _ = &mut kill_rx => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            mark_dead(&alive, &pending);
            reader.abort();
            if let Some(g) = group {
                // Everything the session started dies with it, daemonized or not.
                let stats = g.stats();
                for (hit, limit) in [
                    (stats.pids_limit_hit(), "max_processes"),
                    (stats.memory_limit_hit(), "memory_bytes"),
                ] {
                    if hit {
                        let mut l = exit_ctx.fields();
                        l.insert("limit".into(), limit.into());
                        l.insert("pid".into(), pid.into());
                        let _ = exit_ctx.audit.record("limit.hit", l).await;
                    }
                }
                let removed = tokio::task::spawn_blocking(move || g.remove()).await;
                if let Ok(Err(e)) = removed {
                    tracing::warn!(pid, "removing the worker's cgroup: {e}");
                }
            }
            let mut f = exit_ctx.fields();
            f.insert("pid".into(), pid.into());
            match &status {
                Ok(st) if st.success() => tracing::debug!(pid, "worker exited"),
                Ok(st) => tracing::warn!(pid, status = %st, "worker ended abnormally"),
                Err(e) => tracing::warn!(pid, "waiting for worker: {e}"),
            }
            if let Ok(st) = &status {
                use std::os::unix::process::ExitStatusExt;
                f.insert("exit_code".into(), st.code().into());
                f.insert("signal".into(), st.signal().into());
                f.insert("clean".into(), st.success().into());
            }
            let _ = exit_ctx.audit.record("worker.exit", f).await;
            let _ = exit_tx.send(());
        });
        Ok(worker)
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Route one worker message. `Err` = protocol violation: the worker must end.
fn route(pending: &Mutex<HashMap<u64, Pending>>, msg: WorkerToBroker) -> Result<(), String> {
    let mut p = pending.lock().map_err(|_| "poisoned".to_string())?;
    match msg {
        WorkerToBroker::Result { id, result } => {
            // A result for an unknown id is a late answer to a cancelled or timed-out call.
            if let Some(call) = p.remove(&id) {
                call.report_dropped(id);
                let _ = call.done.send(CallOutcome::Done(result));
            }
        }
        WorkerToBroker::Failed { id, error } => {
            if let Some(call) = p.remove(&id) {
                call.report_dropped(id);
                let _ = call.done.send(CallOutcome::Failed(CallError {
                    kind: error.kind,
                    message: truncate(&error.message, 1024),
                }));
            }
        }
        WorkerToBroker::Progress {
            id,
            progress,
            total,
            message,
        } => {
            if !progress.is_finite() || total.is_some_and(|t| !t.is_finite()) {
                return Err("non-finite progress".into());
            }
            if let Some(call) = p.get_mut(&id) {
                call.notify(CallEvent::Progress {
                    progress,
                    total,
                    message: message.map(|m| truncate(&m, 1024)),
                });
            }
        }
        WorkerToBroker::Log {
            id,
            level,
            logger,
            data_json,
        } => {
            let data: serde_json::Value =
                serde_json::from_str(&data_json).map_err(|_| "log data is not JSON".to_string())?;
            if let Some(call) = id.and_then(|id| p.get_mut(&id)) {
                call.notify(CallEvent::Log {
                    level,
                    logger: logger.map(|l| truncate(&l, 128)),
                    data,
                });
            }
        }
        WorkerToBroker::Answer { id, result_json } => {
            if let Some(call) = p.remove(&id) {
                let _ = call.done.send(CallOutcome::Answer(result_json));
            }
        }
        WorkerToBroker::ClientRequest { id, call, request } => {
            let params_ok = match &request {
                mcpd_ipc::ClientRequestKind::Sampling { params_json }
                | mcpd_ipc::ClientRequestKind::Elicitation { params_json } => {
                    params_json.len() <= 1024 * 1024
                        && matches!(
                            serde_json::from_str::<serde_json::Value>(params_json),
                            Ok(serde_json::Value::Object(_))
                        )
                }
                mcpd_ipc::ClientRequestKind::Roots => true,
            };
            if !params_ok {
                return Err("client request parameters are not a JSON object".into());
            }
            // A request for a call that already ended is stale: the worker times it out.
            if let Some(ev) = p.get(&call).and_then(|c| c.events.as_ref()) {
                match ev.try_send(CallEvent::ClientRequest { id, request }) {
                    Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        return Err("more client requests queued than the worker may have".into())
                    }
                }
            }
        }
        WorkerToBroker::Changed { .. } => {} // handled by the reader
        WorkerToBroker::Ready { .. } | WorkerToBroker::ConfineFailed { .. } => {
            return Err("start-up message after start-up".into());
        }
    }
    Ok(())
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn schema_ok(s: &str) -> bool {
    s.len() <= MAX_SCHEMA
        && serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .is_some_and(|v| v.get("type").and_then(|t| t.as_str()) == Some("object"))
}

/// Keep only well-formed descriptors from a (hostile) worker.
fn validate_tools(tools: Vec<ToolDescriptor>) -> Vec<ToolDescriptor> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for t in tools.into_iter().take(MAX_TOOLS) {
        let ok = valid_name(&t.name)
            && t.description.len() <= MAX_DESCRIPTION
            && t.title.as_ref().is_none_or(|x| x.len() <= 256)
            && schema_ok(&t.input_schema_json)
            && t.output_schema_json.as_deref().is_none_or(schema_ok)
            && t.path_args.len() <= MAX_PATH_ARGS
            && t.path_args.iter().all(|a| valid_name(&a.name))
            && t.exec_args.as_ref().is_none_or(|e| {
                [&e.program, &e.args, &e.shell, &e.language]
                    .iter()
                    .all(|n| n.as_deref().is_none_or(valid_name))
            })
            && t.client_capabilities.len() <= 8
            && t.client_capabilities.iter().all(|c| valid_name(c))
            && seen.insert(t.name.clone());
        if ok {
            out.push(t);
        } else {
            tracing::warn!(tool = %truncate(&t.name, 64), "worker advertised an invalid tool descriptor; ignored");
        }
    }
    out
}

fn spawn_one(worker: &Path) -> std::io::Result<(tokio::process::Child, OwnedFd)> {
    let (parent_end, child_end) = channel::socketpair()?;
    let child_raw = child_end.as_raw_fd();
    let broker_pid = rustix::process::getpid().as_raw_nonzero().get();
    let mut cmd = tokio::process::Command::new(worker);
    cmd.env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    crate::sys::install_worker_pre_exec(&mut cmd, child_raw, broker_pid);
    let child = cmd.spawn()?;
    drop(child_end);
    Ok((child, parent_end))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mcpd_ipc::{ToolAccess, ToolAnnotations};

    fn desc(name: &str, schema: &str) -> ToolDescriptor {
        ToolDescriptor {
            name: name.into(),
            title: None,
            description: "d".into(),
            input_schema_json: schema.into(),
            output_schema_json: None,
            annotations: ToolAnnotations::default(),
            access: ToolAccess::FileRead,
            path_args: vec![],
            exec_args: None,
            client_capabilities: vec![],
            task_support: mcpd_ipc::TaskSupport::Forbidden,
        }
    }

    #[test]
    fn hostile_descriptors_are_dropped() {
        let ok = r#"{"type":"object"}"#;
        let tools = vec![
            desc("good", ok),
            desc("good", ok),
            desc("bad name!", ok),
            desc("arr", r#"{"type":"array"}"#),
            desc("notjson", "{"),
            desc(&"x".repeat(65), ok),
        ];
        let v = validate_tools(tools);
        assert_eq!(
            v.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            vec!["good"]
        );
    }

    #[test]
    fn a_calls_event_queue_is_bounded_and_keeps_room_for_client_requests() {
        let pending = Mutex::new(HashMap::new());
        let (done, _done_rx) = oneshot::channel();
        let (tx, mut rx) = mpsc::channel(CALL_EVENT_QUEUE);
        pending.lock().unwrap().insert(
            7,
            Pending {
                done,
                events: Some(tx),
                dropped: 0,
            },
        );
        // Nobody reads: progress and log fill the queue up to the reserve, the rest is counted.
        for i in 0..1000 {
            let msg = if i % 2 == 0 {
                WorkerToBroker::Progress {
                    id: 7,
                    progress: f64::from(i),
                    total: None,
                    message: None,
                }
            } else {
                WorkerToBroker::Log {
                    id: Some(7),
                    level: LogLevel::Info,
                    logger: None,
                    data_json: "1".into(),
                }
            };
            assert!(route(&pending, msg).is_ok());
        }
        let kept = CALL_EVENT_QUEUE - CLIENT_REQUEST_RESERVE;
        assert_eq!(pending.lock().unwrap()[&7].dropped, (1000 - kept) as u64);
        // The reserve takes the client requests a worker may have waiting...
        let request = |id| WorkerToBroker::ClientRequest {
            id,
            call: 7,
            request: mcpd_ipc::ClientRequestKind::Roots,
        };
        for id in 0..CLIENT_REQUEST_RESERVE as u64 {
            assert!(route(&pending, request(id)).is_ok(), "request {id}");
        }
        // ... and one more is a protocol violation.
        assert!(route(&pending, request(999)).is_err());
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, CALL_EVENT_QUEUE);
    }

    #[test]
    fn protocol_violations_end_the_worker() {
        let pending = Mutex::new(HashMap::new());
        assert!(route(
            &pending,
            WorkerToBroker::ConfineFailed { reason: "x".into() }
        )
        .is_err());
        assert!(route(
            &pending,
            WorkerToBroker::Progress {
                id: 1,
                progress: f64::NAN,
                total: None,
                message: None
            }
        )
        .is_err());
        assert!(route(
            &pending,
            WorkerToBroker::Log {
                id: None,
                level: LogLevel::Info,
                logger: None,
                data_json: "{".into()
            }
        )
        .is_err());
        // A late result for a call nobody waits for is not a violation.
        assert!(route(
            &pending,
            WorkerToBroker::Result {
                id: 99,
                result: ToolResult {
                    content: vec![],
                    structured_json: None,
                    is_error: false,
                    input_required: None,
                }
            }
        )
        .is_ok());
    }
}
