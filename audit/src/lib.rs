//! mcpd's tamper-evident audit log.
//!
//! # Record format
//!
//! The log is a file of JSON lines (UTF-8, one object per `\n`-terminated line, no embedded
//! newlines). Each record is
//!
//! ```text
//! {"schema_version":1,"seq":41,"ts":"2025-01-31T12:00:00.123456Z","id":"<32 hex>",
//!  "event":"tool.call", <caller fields...>, "prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! * `seq` grows by exactly one per record, across rotated files, starting at 0.
//! * `ts` is RFC 3339 UTC with microseconds (fixed width, so it sorts as a string).
//! * `id` is a 128-bit random event id.
//! * caller fields are merged in; a caller field named like an envelope field
//!   (`schema_version`, `seq`, `ts`, `id`, `event`, `prev`, `hash`) is discarded — the envelope
//!   wins. Caller values nested more than 64 levels deep are replaced by a marker string.
//! * `prev` is the `hash` of the previous record (64 zeros for seq 0).
//! * `hash` is the hex SHA-256 of the RFC 8785 (JCS) canonical JSON of the record without its
//!   `hash` member.
//!
//! # Records written by the log itself
//!
//! * `log.opened` `{resumed, pid}` — every [`AuditLog::open`] writes one (so a fresh log starts
//!   with seq 0 = `log.opened`, and every broker start is visible).
//! * `log.recovered` `{truncated_bytes}` — written before `log.opened` when the file ended with an
//!   incomplete line (crash during a write), which was cut off.
//! * `log.rotated` `{previous_file}` — the first record of every file after the first; its `prev`
//!   is the last hash of the previous file, so the chain continues.
//! * `log.checkpoint` `{covers_seq, covers_hash, sig}` — whenever a checkpoint key is set:
//!   right after the opening records of every [`AuditLog::open`] (so a keyed log has a head file
//!   from its first start on), every `checkpoint_every` records, at the latest
//!   `checkpoint_interval` after an uncovered record, and on [`AuditLog::close`]; `sig` is the hex Ed25519 signature of
//!   `"mcpd-audit-checkpoint-v1\n{covers_seq}\n{covers_hash}"`, and it always covers the record
//!   just before it.
//!
//! # Files
//!
//! * `<path>` — the live log (mode 0600, opened `O_APPEND|O_CREAT|O_CLOEXEC|O_NOFOLLOW`: a
//!   symlink at the path is refused, as is a symlink in place of its directory, checked with
//!   `O_DIRECTORY|O_NOFOLLOW` at open). The caller resolves the configured path first (the
//!   broker's policy does, before checking it against every client's roots).
//! * `<path>.<last seq, 20 digits>` — rotated files (when the live file exceeds `rotate_bytes`).
//! * `<path>.head` — the latest checkpoint (only with a key), replaced atomically (temp file +
//!   rename): `{"schema_version":1,"covers_seq":N,"covers_hash":"..","sig":"..",
//!   "checkpoint_seq":N+1,"checkpoint_hash":"..","ts":".."}`. It is written only after the log
//!   was synced, so it never claims more than is on disk. With a key, [`AuditLog::open`] refuses
//!   to continue a log that ends before (or differently from) the checkpoint its head names:
//!   signing on top would bless the cut. Keep a copy elsewhere (or forward the journal) if the
//!   attacker can also roll the log and the head file back together to an older valid pair.
//! * key files — see [`generate_key`]: PKCS#8 / SPKI PEM (or 64 hex digits).
//!
//! # Durability, group commit, failure
//!
//! A dedicated writer thread takes every queued append at once (woken only when it sleeps, by
//! the append that opens a batch after letting the tasks runnable with it add theirs: see
//! `queue.rs`), assigns seq/prev/hash in order, writes them with one `write_all`, in
//! [`SyncMode::Strict`] `fdatasync`s once, and only then resolves all of their futures. In
//! [`SyncMode::Batch`], appends resolve after write(2) and `fdatasync` runs at most every
//! `interval` (and before a rotation, a checkpoint and on close); there the append that opens a
//! batch writes it itself, on its own thread, when that cannot block for long (at most 32
//! records, no sync, checkpoint or rotation falls due with it, and no other process holds the
//! file lock), and wakes the writer thread only for what falls due (see `Writer::write_here`). Records reach the
//! file in queue order whichever thread writes them.
//!
//! If a write or sync fails, the file is truncated back to the end of the last good record (no
//! partial record remains, the chain stays intact), the appends of that batch fail,
//! `mcpd: AUDIT LOG FAILURE: ...` is printed on stderr once, [`AuditLog::is_healthy`] turns false
//! and every later append fails too (the log does not retry; restart the broker once the cause is
//! fixed). The same happens when records are cut off the log while it is open (the file ends
//! before the last record this writer wrote): the chain is never continued, nor a checkpoint
//! signed, over such a cut. With `fail_open` (an explicit operator choice), appends instead
//! return `Ok` with
//! `seq == DROPPED_SEQ` and the records are dropped (counted by [`AuditLog::dropped_count`]).
//!
//! # Verification
//!
//! [`verify`] reports the first broken record and its [`FailureKind`]. Without checkpoints and a
//! public key, **cutting records off the end of the log cannot be detected**: the remaining
//! prefix is a valid chain. With a public key, a missing head file
//! ([`FailureKind::HeadMissing`]) and a head older than the log's last checkpoint record
//! ([`FailureKind::HeadStale`]) are failures, not warnings; [`verify_without_head`] is the
//! explicit way to check a log whose head is knowingly gone.
#![forbid(unsafe_code)]

mod jcs;
mod journald;
pub mod json;
mod keys;
mod queue;
mod read;
mod record;
mod verify;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::oneshot;

pub use keys::generate_key;
pub use read::{discover_files, query, read_records, Query};
pub use record::now_rfc3339;
pub use verify::{
    verify, verify_with_head, verify_without_head, FailureKind, VerifyFailure, VerifyReport,
};

use writer::{Msg, Pending, State, Writer};

/// Version of the record format.
pub const SCHEMA_VERSION: u32 = 1;

/// `Receipt::seq` of an append whose record was dropped because the log failed and the operator
/// set `fail_open`.
pub const DROPPED_SEQ: u64 = u64::MAX;

/// When records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// write(2) then fdatasync before `append` resolves; concurrent appends share one sync.
    Strict,
    /// write(2) before `append` resolves; fdatasync at most every `interval`.
    Batch {
        /// sync interval
        interval: Duration,
    },
}

/// Audit log configuration.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The log file (its directory must exist).
    pub path: PathBuf,
    /// Durability mode.
    pub mode: SyncMode,
    /// Rotate when the file grows beyond this many bytes.
    pub rotate_bytes: Option<u64>,
    /// Ed25519 signing key file for checkpoints (PKCS#8 PEM or 64 hex digits of seed).
    pub checkpoint_key: Option<PathBuf>,
    /// Write a signed checkpoint every this many records (with a key; 0 = only on close).
    pub checkpoint_every: u64,
    /// With a key: also write one at the latest this long after a record that no checkpoint
    /// covers yet (bounds how much of the tail a crash leaves unsigned; None = by count only).
    pub checkpoint_interval: Option<Duration>,
    /// Keep serving when the log cannot be written (explicit operator choice; default false).
    /// Appends then return `Ok` with `seq == DROPPED_SEQ` and the records are lost.
    pub fail_open: bool,
    /// Forward events to journald at this socket path (None = off); best effort.
    pub journald_socket: Option<PathBuf>,
}

impl AuditConfig {
    /// A strict-mode configuration for `path` with no rotation, checkpoints or journald.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            mode: SyncMode::Strict,
            rotate_bytes: None,
            checkpoint_key: None,
            checkpoint_every: 1000,
            checkpoint_interval: None,
            fail_open: false,
            journald_socket: None,
        }
    }
}

/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// I/O failure.
    #[error("audit log i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The log is unusable.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
}

/// What `append` returns.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// Sequence number of the record ([`DROPPED_SEQ`] if dropped under `fail_open`).
    pub seq: u64,
}

#[derive(Debug)]
struct Inner {
    queue: Arc<queue::Queue>,
    writer: Arc<Mutex<Writer>>,
    /// Batch mode: the append that opens a batch may write it itself (see `writer::Writer::write_here`).
    write_here: bool,
    state: Arc<State>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    path: PathBuf,
}

impl Inner {
    fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            drop(self.queue.push(Msg::Close));
        }
        let handle = self.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

/// A handle on the open audit log (cheap to clone; the log closes when [`AuditLog::close`] is
/// called or the last clone is dropped).
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

enum Submitted<'a> {
    /// Queued; the guard, if any, wakes the writer (this append opened the batch).
    Queued(
        oneshot::Receiver<Result<Receipt, AuditError>>,
        Option<queue::Kick<'a>>,
    ),
    Done(Result<Receipt, AuditError>),
}

pub(crate) fn closed_error() -> AuditError {
    AuditError::Unavailable("audit log is closed".into())
}

impl AuditLog {
    /// Open (or continue) the log.
    ///
    /// A torn last line is cut off and recorded (`log.recovered`); an existing log continues its
    /// seq/prev chain (from the newest rotated file if the live file is empty); a `log.opened`
    /// record is written and synced before this returns. Fails if the file cannot be opened or
    /// written, the key cannot be read, or the last record is unreadable (the log is then left
    /// untouched: verify it and move it aside).
    pub fn open(cfg: AuditConfig) -> Result<Self, AuditError> {
        let state = Arc::new(State::new(cfg.fail_open));
        let writer = Arc::new(Mutex::new(Writer::open(&cfg, Arc::clone(&state))?));
        let queue = Arc::new(queue::Queue::default());
        let (rx, w) = (Arc::clone(&queue), Arc::clone(&writer));
        let thread = std::thread::Builder::new()
            .name("mcpd-audit".into())
            .spawn(move || writer::run(&w, &rx))?;
        Ok(Self {
            inner: Arc::new(Inner {
                queue,
                writer,
                write_here: matches!(cfg.mode, SyncMode::Batch { .. }),
                state,
                thread: Mutex::new(Some(thread)),
                closed: AtomicBool::new(false),
                path: cfg.path,
            }),
        })
    }

    fn submit(&self, event: &str, fields: Map<String, Value>) -> Submitted<'_> {
        let st = &self.inner.state;
        if self.inner.closed.load(Ordering::SeqCst) {
            return Submitted::Done(Err(closed_error()));
        }
        if !st.healthy.load(Ordering::SeqCst) {
            return Submitted::Done(st.failed_result());
        }
        let (ack, rx) = oneshot::channel();
        let msg = Msg::Append(Pending {
            event: event.to_owned(),
            fields,
            ack,
        });
        // Counted before the push, so the writer's decrement never comes first.
        st.queued.fetch_add(1, Ordering::Relaxed);
        let kick = self.inner.queue.push(msg);
        Submitted::Queued(rx, kick)
    }

    /// Append one event (fields are merged into the record envelope).
    ///
    /// Resolves once the record was written (and, in strict mode, fdatasynced), together with
    /// every other append queued at the same time.
    pub async fn append(
        &self,
        event: &str,
        fields: Map<String, Value>,
    ) -> Result<Receipt, AuditError> {
        match self.submit(event, fields) {
            Submitted::Done(r) => r,
            Submitted::Queued(rx, kick) => {
                if let Some(mut kick) = kick {
                    // This append opened the batch: let the tasks already runnable on this
                    // thread add theirs before the writer is woken (see `queue`).
                    if kick.should_yield() {
                        tokio::task::yield_now().await;
                    }
                    if self.inner.write_here {
                        // Not waiting for the writer: if it is busy (a sync, a checkpoint),
                        // it takes the batch next.
                        if let Ok(mut w) = self.inner.writer.try_lock() {
                            if let Some(n) = w.write_here(&self.inner.queue) {
                                kick.wrote(n);
                            }
                        }
                    }
                    drop(kick);
                }
                rx.await.unwrap_or_else(|_| Err(closed_error()))
            }
        }
    }

    /// Append from synchronous code (blocks the calling thread; must not be called from within
    /// an async runtime's worker thread).
    pub fn append_blocking(
        &self,
        event: &str,
        fields: Map<String, Value>,
    ) -> Result<Receipt, AuditError> {
        match self.submit(event, fields) {
            Submitted::Done(r) => r,
            Submitted::Queued(rx, kick) => {
                drop(kick);
                rx.blocking_recv().unwrap_or_else(|_| Err(closed_error()))
            }
        }
    }

    /// False once a write has failed (the broker then fails closed).
    pub fn is_healthy(&self) -> bool {
        self.inner.state.healthy.load(Ordering::SeqCst)
    }

    /// Flush, write a final checkpoint when a key is configured, sync, and stop the writer.
    ///
    /// Appends queued before `close` are written; later ones fail. Blocks until the writer
    /// thread has finished (a few milliseconds); idempotent.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Number of fdatasync calls on the log file so far (for tests and metrics).
    pub fn sync_count(&self) -> u64 {
        self.inner.state.sync_count.load(Ordering::Relaxed)
    }

    /// Appends waiting for the writer thread (queued, not yet written): for metrics.
    pub fn queued(&self) -> u64 {
        self.inner.state.queued.load(Ordering::Relaxed)
    }

    /// Records that appends wrote on their own (runtime) thread, in batch mode, rather than the
    /// writer thread: for tests and metrics.
    pub fn written_by_appenders(&self) -> u64 {
        self.inner.state.written_here.load(Ordering::Relaxed)
    }

    /// Have `observe` told the duration of every fdatasync of the log file from now on (for
    /// metrics; called on the writer thread, so it must be quick). Only the first observer
    /// set on a log is kept; `false` if one was already set.
    pub fn on_sync(&self, observe: fn(std::time::Duration)) -> bool {
        self.inner.state.on_sync.set(observe).is_ok()
    }

    /// Number of records dropped because the log failed under `fail_open`.
    pub fn dropped_count(&self) -> u64 {
        self.inner.state.dropped.load(Ordering::Relaxed)
    }

    /// The log file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.inner.path
    }
}

/// SHA-256 (hex) of the RFC 8785 canonical JSON of `v`.
pub fn args_digest(v: &Value) -> String {
    record::sha256_hex(&record::canonical(v))
}

/// The `hash` a record must carry: SHA-256 (hex) of the JCS form of `record` without its `hash`
/// member (any `hash` member present is ignored).
pub fn record_hash(record: &Map<String, Value>) -> String {
    if record.contains_key("hash") {
        let mut m = record.clone();
        m.remove("hash");
        record::record_hash(&m)
    } else {
        record::record_hash(record)
    }
}

/// Maximum characters kept of a string by [`redacted_preview`].
pub const PREVIEW_STRING_CHARS: usize = 32;
const PREVIEW_MAX_DEPTH: usize = 6;
const PREVIEW_MAX_ITEMS: usize = 16;
const PREVIEW_MAX_NODES: usize = 256;

/// True for object keys whose values are treated as secrets by [`redacted_preview`].
fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "token",
        "password",
        "passwd",
        "secret",
        "key",
        "authorization",
        "cookie",
        "credential",
        "bearer",
    ]
    .iter()
    .any(|w| k.contains(w))
}

fn preview(v: &Value, depth: usize, budget: &mut usize) -> Value {
    if *budget == 0 {
        return Value::String("[...]".into());
    }
    *budget -= 1;
    match v {
        Value::String(s) => {
            let n = s.chars().count();
            if n > PREVIEW_STRING_CHARS {
                let head: String = s.chars().take(PREVIEW_STRING_CHARS).collect();
                Value::String(format!("{head}...[+{} chars]", n - PREVIEW_STRING_CHARS))
            } else {
                v.clone()
            }
        }
        Value::Array(_) | Value::Object(_) if depth >= PREVIEW_MAX_DEPTH => {
            Value::String("[nested]".into())
        }
        Value::Array(a) => {
            let mut out: Vec<Value> = a
                .iter()
                .take(PREVIEW_MAX_ITEMS)
                .map(|x| preview(x, depth + 1, budget))
                .collect();
            if a.len() > PREVIEW_MAX_ITEMS {
                out.push(Value::String(format!(
                    "[+{} items]",
                    a.len() - PREVIEW_MAX_ITEMS
                )));
            }
            Value::Array(out)
        }
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, x) in o.iter().take(PREVIEW_MAX_ITEMS) {
                let kk = if k.chars().count() > PREVIEW_STRING_CHARS {
                    k.chars().take(PREVIEW_STRING_CHARS).collect::<String>() + "..."
                } else {
                    k.clone()
                };
                let val = if is_secret_key(k) {
                    Value::String("[redacted]".into())
                } else {
                    preview(x, depth + 1, budget)
                };
                out.insert(kk, val);
            }
            if o.len() > PREVIEW_MAX_ITEMS {
                out.insert(
                    "...".into(),
                    Value::String(format!("[+{} keys]", o.len() - PREVIEW_MAX_ITEMS)),
                );
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// A redacted preview of arguments: structure kept, strings shortened, bounded total size.
///
/// Strings longer than [`PREVIEW_STRING_CHARS`] characters are cut and marked
/// `...[+N chars]`; values of object keys containing token, password, passwd, secret, key,
/// authorization, cookie, credential or bearer (case-insensitive) become `"[redacted]"`;
/// arrays/objects keep at most 16 entries (then a `[+N items]` / `"...": "[+N keys]"` marker),
/// nesting beyond 6 levels becomes `"[nested]"` and after 256 values everything is `"[...]"`.
pub fn redacted_preview(v: &Value) -> Value {
    let mut budget = PREVIEW_MAX_NODES;
    preview(v, 0, &mut budget)
}

#[cfg(test)]
mod tests;
