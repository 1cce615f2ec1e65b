//! A live, confined worker as the rest of the broker sees it: [`Worker`], the handle sessions
//! send calls, queries, cancellations and client replies through; [`CallHandle`], one call in
//! flight with its bounded event queue ([`CALL_EVENT_QUEUE`]) and its [`CallOutcome`]; and the
//! reader task that routes every message the worker sends to the call it belongs to.
//!
//! Does not start, confine, place in a cgroup or reap a worker (`supervisor.rs` does, and
//! holds the other end of [`Lifetime`]), and decides nothing about what may be called: a call
//! needs the policy's `Allow` token. Trusts nothing the worker sends: a message out of protocol
//! state, an answer to a call that is not in flight (never made, or answered already: each call
//! is answered exactly once), non-finite progress, log data that is not JSON, a malformed change
//! report or client request, more client requests than [`CLIENT_REQUEST_RESERVE`] or more
//! unanswered cancelled calls than [`MAX_ABANDONED`] ends *that worker only*;
//! its calls in flight then fail with [`CallOutcome::WorkerDied`].
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpd_ipc::channel::{Receiver, Sender};
use mcpd_ipc::{
    BrokerToWorker, CallError, Enforcement, LogLevel, ToolDescriptor, ToolResult, WorkerToBroker,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::validate::{change_ok, client_request_ok, truncate};

/// How long a worker gets to exit after `Shutdown` before it is killed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Why a worker's reader ended when the worker closed its end of the socket.
pub(super) const SOCKET_CLOSED: &str = "worker closed the socket";

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

/// One call (or provider query) in flight: where its outcome and its events go. A call the
/// broker gave up on ([`Worker::cancel`]) stays as a tombstone (`done: None`) until the worker's
/// late answer, so that every id is answered exactly once: an answer to an id that is not in
/// flight (never issued, or answered already) is a protocol violation.
struct Pending {
    done: Option<oneshot::Sender<CallOutcome>>,
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
/// Most cancelled calls a worker may leave unanswered (tombstones kept for their late answer).
/// A worker answers every call, cancelled or not; one that owes more than this is stuck or
/// hostile and is ended, so the tombstones stay bounded.
pub const MAX_ABANDONED: usize = 1024;

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
    /// Wrap a worker that reported `Ready` (its tools validated, its enforcement accepted) and
    /// start its reader task, which routes what the worker sends from `rx`; change reports go
    /// to `changes`. The returned [`Lifetime`] is for the task that waits for the worker's
    /// exit.
    pub(super) fn start(
        pid: u32,
        tx: Sender<BrokerToWorker>,
        mut rx: Receiver<WorkerToBroker>,
        tools: Vec<ToolDescriptor>,
        enforcement: Enforcement,
        changes: Option<mpsc::UnboundedSender<mcpd_ipc::Change>>,
    ) -> (Arc<Worker>, Lifetime) {
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
        let reader = tokio::spawn(async move {
            let why = loop {
                match rx.recv().await {
                    Ok(Some(WorkerToBroker::Changed { change })) => {
                        if !change_ok(&change) {
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
        let lifetime = Lifetime {
            reader,
            kill: kill_rx,
            exited: exit_tx,
            pending,
            alive,
        };
        (worker, lifetime)
    }

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
                    done: Some(done_tx),
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
                    done: Some(done_tx),
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

    /// Tell the worker to stop a call; its outcome is no longer awaited (the call's handle
    /// resolves at once). The call stays as a tombstone until the worker's late answer.
    pub async fn cancel(&self, id: u64) {
        let (abandoned, owed) = match self.pending.lock() {
            Ok(mut p) => {
                let abandoned = p
                    .get_mut(&id)
                    .and_then(|c| {
                        c.events = None;
                        c.done.take()
                    })
                    .is_some();
                (abandoned, p.values().filter(|c| c.done.is_none()).count())
            }
            Err(_) => (false, 0),
        };
        if owed > MAX_ABANDONED {
            tracing::warn!(
                pid = self.pid,
                "ending worker: more than {MAX_ABANDONED} cancelled calls unanswered"
            );
            self.mark_dead();
        } else if abandoned && self.is_alive() {
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

/// The supervisor's side of one worker's life, for the task that waits for its exit, kills it
/// on request and reaps it.
pub(super) struct Lifetime {
    /// The reader task; it ends with why the worker must end ([`SOCKET_CLOSED`] when it closed
    /// its socket).
    pub(super) reader: JoinHandle<String>,
    /// Fires when the worker is to be killed ([`Worker::kill`], a failed send, a lost handle).
    pub(super) kill: oneshot::Receiver<()>,
    /// To send once the worker is reaped: [`Worker::kill`] and [`Worker::shutdown`] wait for it.
    pub(super) exited: oneshot::Sender<()>,
    pending: Arc<Mutex<HashMap<u64, Pending>>>,
    alive: Arc<AtomicBool>,
}

impl Lifetime {
    /// The worker no longer serves: every call in flight ends with [`CallOutcome::WorkerDied`].
    pub(super) fn mark_dead(&self) {
        mark_dead(&self.alive, &self.pending);
    }
}

/// Mark a worker dead and end every call in flight with [`CallOutcome::WorkerDied`].
fn mark_dead(alive: &AtomicBool, pending: &Mutex<HashMap<u64, Pending>>) {
    alive.store(false, Ordering::Release);
    let drained: Vec<Pending> = pending
        .lock()
        .map(|mut p| p.drain().map(|(_, v)| v).collect())
        .unwrap_or_default();
    for p in drained.into_iter().filter_map(|p| p.done) {
        let _ = p.send(CallOutcome::WorkerDied);
    }
}

/// The call an answer (`Result`, `Failed`, `Answer`) ends, removed from the calls in flight.
/// `Err` if no call with this id is in flight: the id was never issued or was answered already
/// (each call is answered exactly once; a cancelled call's tombstone takes its late answer).
fn answered(p: &mut HashMap<u64, Pending>, id: u64) -> Result<Pending, String> {
    p.remove(&id).ok_or_else(|| {
        format!("answer to call {id}, which is not in flight (never made, or answered already)")
    })
}

/// Route one worker message to the call it belongs to. `Err` = protocol violation: the worker must end.
fn route(pending: &Mutex<HashMap<u64, Pending>>, msg: WorkerToBroker) -> Result<(), String> {
    let mut p = pending.lock().map_err(|_| "poisoned".to_string())?;
    match msg {
        WorkerToBroker::Result { id, result } => {
            // A cancelled or timed-out call's late answer only removes its tombstone.
            let call = answered(&mut p, id)?;
            call.report_dropped(id);
            if let Some(done) = call.done {
                let _ = done.send(CallOutcome::Done(result));
            }
        }
        WorkerToBroker::Failed { id, error } => {
            let call = answered(&mut p, id)?;
            call.report_dropped(id);
            if let Some(done) = call.done {
                let _ = done.send(CallOutcome::Failed(CallError {
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
            if let Some(done) = answered(&mut p, id)?.done {
                let _ = done.send(CallOutcome::Answer(result_json));
            }
        }
        WorkerToBroker::ClientRequest { id, call, request } => {
            if !client_request_ok(&request) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_calls_event_queue_is_bounded_and_keeps_room_for_client_requests() {
        let pending = Mutex::new(HashMap::new());
        let (done, _done_rx) = oneshot::channel();
        let (tx, mut rx) = mpsc::channel(CALL_EVENT_QUEUE);
        pending.lock().unwrap().insert(
            7,
            Pending {
                done: Some(done),
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
    }

    fn result(id: u64) -> WorkerToBroker {
        WorkerToBroker::Result {
            id,
            result: ToolResult {
                content: vec![],
                structured_json: None,
                is_error: false,
                input_required: None,
            },
        }
    }

    #[test]
    fn each_call_is_answered_exactly_once() {
        let pending = Mutex::new(HashMap::new());
        let (done, mut done_rx) = oneshot::channel();
        let call = |done| Pending {
            done,
            events: None,
            dropped: 0,
        };
        pending.lock().unwrap().insert(1, call(Some(done)));
        // A tombstone: a call the broker cancelled (or timed out), still owed an answer.
        pending.lock().unwrap().insert(2, call(None));
        assert!(route(&pending, result(1)).is_ok());
        assert!(matches!(done_rx.try_recv(), Ok(CallOutcome::Done(_))));
        // The late answer to the cancelled call only removes its tombstone.
        assert!(route(&pending, result(2)).is_ok());
        assert!(pending.lock().unwrap().is_empty());
        // A second answer to either, or an answer to an id never issued, ends the worker.
        assert!(route(&pending, result(1)).is_err());
        assert!(route(
            &pending,
            WorkerToBroker::Failed {
                id: 2,
                error: CallError {
                    kind: mcpd_ipc::CallErrorKind::Internal,
                    message: String::new()
                }
            }
        )
        .is_err());
        assert!(route(&pending, result(99)).is_err());
        assert!(route(
            &pending,
            WorkerToBroker::Answer {
                id: 7,
                result_json: "{}".into()
            }
        )
        .is_err());
    }
}
