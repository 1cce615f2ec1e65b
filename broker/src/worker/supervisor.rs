//! Worker supervision: starting `mcpd-worker` processes from one long-lived thread, putting
//! each into its own control group before it can fork, the confinement handshake (`Confine` →
//! `Ready`), and the task that waits for a worker's exit, kills it on request, reaps it,
//! removes its cgroup and audits its end.
//!
//! The module's public names (re-exported here, so callers need only this path): [`Supervisor`],
//! [`WorkerContext`], [`SpawnError`]; from `handle.rs` the live [`Worker`] and its calls
//! ([`CallHandle`], [`CallEvent`], [`CallOutcome`]); from `validate.rs` the bounds on what a
//! worker may advertise.
//!
//! Does not route a running worker's messages (`handle.rs`), judge its descriptors or its
//! enforcement report (`validate.rs`), build its sandbox spec (`sandbox.rs`) or manage cgroupfs
//! (`cgroup/`). Trust: every message a worker sends is hostile input. A malformed or oversized
//! frame, a message out of protocol state, or an invalid descriptor ends *that worker only*;
//! calls in flight on it fail with [`CallOutcome::WorkerDied`]; the broker lives on and the next
//! call starts a fresh worker. A worker confined less than the policy requires is killed before
//! it serves anything.
#![forbid(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mcpd_ipc::channel;
use mcpd_ipc::{
    BrokerToWorker, LandlockStatus, SandboxSpec, WorkerToBroker, MAX_FRAME, PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, oneshot};

use super::validate::{check_enforcement, truncate, validate_tools};

// The zone's public path (`crate::worker::supervisor::...`) for every name callers may use,
// whether or not one uses it yet.
#[cfg(test)]
pub use super::handle::CALL_EVENT_QUEUE;
use super::handle::SHUTDOWN_GRACE;
pub use super::handle::{CallEvent, CallHandle, CallOutcome, Worker};

use super::handle::SOCKET_CLOSED;

/// How long a worker may take from exec to `Ready`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// One `fork`+`exec` for the spawner thread: which worker executable, and where the child and
/// the broker's end of its socket go.
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
    /// The session's transport (`Origin::transport`), for the metrics.
    pub transport: &'static str,
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
        let spawned = std::time::Instant::now();
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
        // The worker's start time for the metrics: spawn request to `Ready`.
        let ready_after = spawned.elapsed();
        if let Err(e) = check_enforcement(&enforcement, self.allow_degraded) {
            let _ = child.kill().await;
            return Err(e);
        }
        let iso = &enforcement.isolation;
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
        let (worker, life) = Worker::start(pid, tx, rx, tools, enforcement, ctx.changes.clone());
        // Counted as running until it is reaped (the guard lives in the lifecycle task).
        let running = crate::metrics::worker_started(ctx.transport, ready_after);
        // Lifecycle: wait for exit, or kill on request / reader failure; always reap.
        let exit_ctx = ctx.clone();
        tokio::spawn(async move {
            let mut life = life;
            let status = tokio::select! {
                st = child.wait() => st,
                why = &mut life.reader => {
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
                _ = &mut life.kill => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            life.mark_dead();
            life.reader.abort();
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
            drop(running);
            let _ = life.exited.send(());
        });
        Ok(worker)
    }
}

/// On the spawner thread: the socket pair, then `fork`+`exec` of the worker with an empty
/// environment, `/dev/null` stdin/stdout and the child end as fd 3 (set up in `pre_exec`,
/// `crate::sys`).
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
