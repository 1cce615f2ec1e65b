//! The writer: group commit, durability, rotation, checkpoints, recovery. It runs on its own
//! thread, and in batch mode an append that opens a batch may hold it to write that batch on
//! its own thread ([`Writer::write_here`]).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use crate::journald::Journald;
use crate::queue::Queue;
use crate::record::{self, GENESIS};
use crate::{keys, AuditConfig, AuditError, Receipt, SyncMode, DROPPED_SEQ, SCHEMA_VERSION};

/// The largest batch an append writes on its own thread ([`Writer::write_here`]); larger ones
/// go to the writer thread. Building a record takes about 2 µs, so with hundreds of sessions
/// a batch of hundreds would hold the runtime thread, and every request it serves, for that
/// long, where the writer thread writes it beside the runtime on the other CPU (measured at
/// 256 sessions: p99 74 ms without a bound, 57 ms with this one; BENCHMARKS.md).
pub(crate) const INLINE_MAX: usize = 32;

/// State shared between the handles and the writer thread.
#[derive(Debug)]
pub(crate) struct State {
    pub healthy: AtomicBool,
    pub sync_count: AtomicU64,
    pub dropped: AtomicU64,
    /// Appends handed to the writer and not yet processed (the metrics' queue depth).
    pub queued: AtomicU64,
    /// Records that appends wrote on their own thread ([`Writer::write_here`]).
    pub written_here: AtomicU64,
    /// Told how long each fdatasync of the log took (the metrics' histogram); set once.
    pub on_sync: std::sync::OnceLock<fn(std::time::Duration)>,
    pub failure: Mutex<Option<String>>,
    pub fail_open: bool,
    /// Test hook: the writer holds this lock while it processes a batch.
    #[cfg(test)]
    pub gate: Mutex<()>,
    /// Test hook: the next write stores only this many bytes and then fails with ENOSPC.
    #[cfg(test)]
    pub inject_short_write: Mutex<Option<usize>>,
}

impl State {
    pub(crate) fn new(fail_open: bool) -> Self {
        Self {
            healthy: AtomicBool::new(true),
            sync_count: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            written_here: AtomicU64::new(0),
            on_sync: std::sync::OnceLock::new(),
            failure: Mutex::new(None),
            fail_open,
            #[cfg(test)]
            gate: Mutex::new(()),
            #[cfg(test)]
            inject_short_write: Mutex::new(None),
        }
    }

    pub(crate) fn failure_message(&self) -> String {
        self.failure
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
            .unwrap_or_else(|| "audit log failed".into())
    }

    /// The answer to an append once the log has failed.
    pub(crate) fn failed_result(&self) -> Result<Receipt, AuditError> {
        if self.fail_open {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            Ok(Receipt { seq: DROPPED_SEQ })
        } else {
            Err(AuditError::Unavailable(self.failure_message()))
        }
    }
}

/// An append waiting for the writer.
#[derive(Debug)]
pub(crate) struct Pending {
    pub event: String,
    pub fields: Map<String, Value>,
    pub ack: Ack,
}

/// An append's event and fields.
pub(crate) type Item = (String, Map<String, Value>);

/// Where an append's answer goes.
pub(crate) type Ack = oneshot::Sender<Result<Receipt, AuditError>>;

/// Messages to the writer thread.
#[derive(Debug)]
pub(crate) enum Msg {
    Append(Pending),
    Close,
}

/// `<path><suffix>` (suffix appended to the file name, not replacing an extension).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Path of a rotated file that ends at `last_seq`.
pub(crate) fn rotated_path(path: &Path, last_seq: u64) -> PathBuf {
    with_suffix(path, &format!(".{last_seq:020}"))
}

/// Rotated siblings of `path` (`<path>.<20 digits>`), sorted by their suffix.
pub(crate) fn rotated_siblings(path: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!("{name}.");
    let mut out = Vec::new();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for ent in rd {
        let ent = ent?;
        let fname = ent.file_name();
        let Some(f) = fname.to_str() else { continue };
        let Some(digits) = f.strip_prefix(&prefix) else {
            continue;
        };
        if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = digits.parse::<u64>() {
                out.push((n, path.with_file_name(f)));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `e`, explained when it is the refusal of a symlink (`ELOOP` from `O_NOFOLLOW`).
fn no_symlink_error(path: &Path, what: &str, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            e.kind(),
            format!(
                "{what} {} is a symbolic link: refused (the audit log, its directory and its head \
                 file are opened without following symlinks; configure the real path)",
                path.display()
            ),
        )
    } else {
        e
    }
}

/// Opens (creating it 0600) the log file at `path` without following a symlink there: a link
/// planted at the log's path after the configuration was checked is refused (`ELOOP`), never
/// written through.
pub(crate) fn open_log(path: &Path) -> io::Result<File> {
    // std opens with O_CLOEXEC; append(true) gives O_APPEND.
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| no_symlink_error(path, "audit log", e))
}

/// Opens a rotated file to read the chain's end from it, refusing a symlink there.
fn open_rotated(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| no_symlink_error(path, "rotated audit file", e))
}

/// The log's directory (`path`'s parent), checked to be a directory and not a symlink to one
/// (opened `O_DIRECTORY|O_NOFOLLOW`). The policy resolved every symlink of the configured path
/// before checking it against the clients' roots; this refuses a directory swapped for a link
/// since then.
fn check_log_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map(drop)
        .map_err(|e| {
            // O_DIRECTORY|O_NOFOLLOW on a link gives ENOTDIR (or ELOOP).
            let link = fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
            no_symlink_error(
                dir,
                "audit directory",
                if link {
                    io::Error::from_raw_os_error(libc::ELOOP)
                } else {
                    e
                },
            )
        })
}

/// What the head file next to the log claims: (checkpoint seq, checkpoint hash). `None` when
/// there is no head file or it is not a head (verification reports that).
fn read_head_claim(path: &Path) -> Option<(u64, Option<String>)> {
    use std::io::Read as _;
    let hp = with_suffix(path, ".head");
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(hp)
        .ok()?;
    let mut text = String::new();
    f.take(64 * 1024).read_to_string(&mut text).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    match (
        v.get("checkpoint_seq").and_then(Value::as_u64),
        v.get("covers_seq").and_then(Value::as_u64),
    ) {
        (Some(s), _) => Some((
            s,
            v.get("checkpoint_hash")
                .and_then(Value::as_str)
                .map(str::to_owned),
        )),
        (None, Some(c)) => Some((c, None)),
        (None, None) => None,
    }
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Finds the end of the last complete line of a file of length `len`.
///
/// Returns (length to keep, the last complete line without its `\n`).
pub(crate) fn scan_tail(file: &File, len: u64) -> io::Result<(u64, Option<Vec<u8>>)> {
    const CHUNK: u64 = 64 * 1024;
    let mut pos = len;
    let mut tail: Vec<u8> = Vec::new(); // bytes [pos, len)
    loop {
        let newlines = tail.iter().filter(|&&b| b == b'\n').count();
        if newlines >= 2 || pos == 0 {
            break;
        }
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; usize::try_from(pos - start).unwrap_or(0)];
        file.read_exact_at(&mut chunk, start)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        pos = start;
    }
    let Some(last_nl) = tail.iter().rposition(|&b| b == b'\n') else {
        return Ok((0, None));
    };
    let keep = pos + last_nl as u64 + 1;
    let line_start = tail[..last_nl]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    Ok((keep, Some(tail[line_start..last_nl].to_vec())))
}

/// (seq, hash) of a serialized record.
pub(crate) fn seq_and_hash(line: &[u8]) -> Result<(u64, String), String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let seq = v.get("seq").and_then(Value::as_u64).ok_or("no seq")?;
    let hash = v.get("hash").and_then(Value::as_str).ok_or("no hash")?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("bad hash".into());
    }
    Ok((seq, hash.to_owned()))
}

/// A checkpoint produced by a batch, to be published in the head file once durable.
#[derive(Debug)]
struct Head(Value);

/// The writer (owned by its thread).
#[derive(Debug)]
pub(crate) struct Writer {
    path: PathBuf,
    file: File,
    len: u64,
    next_seq: u64,
    prev: String,
    mode: SyncMode,
    rotate_bytes: Option<u64>,
    key: Option<SigningKey>,
    checkpoint_every: u64,
    checkpoint_interval: Option<std::time::Duration>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    dirty: bool,
    last_sync: Instant,
    journald: Option<Journald>,
    state: Arc<State>,
    failed: bool,
    head_warned: bool,
    /// `shutdown` ran (the final checkpoint is written): nothing more is appended.
    closed: bool,
}

impl Writer {
    /// Opens or continues the log at `cfg.path`, recovering a torn tail, and writes the opening
    /// records (synced, whatever the mode).
    pub(crate) fn open(cfg: &AuditConfig, state: Arc<State>) -> Result<Self, AuditError> {
        let ctx = |e: io::Error| {
            AuditError::Io(io::Error::new(
                e.kind(),
                format!("{}: {e}", cfg.path.display()),
            ))
        };
        let key = cfg
            .checkpoint_key
            .as_deref()
            .map(keys::load_signing_key)
            .transpose()?;
        check_log_dir(&cfg.path).map_err(ctx)?;
        let file = open_log(&cfg.path).map_err(ctx)?;
        let mut len = file.metadata().map_err(ctx)?.len();
        let mut truncated = 0;
        let mut last: Option<(u64, String)> = None;
        if len > 0 {
            let (keep, line) = scan_tail(&file, len).map_err(ctx)?;
            if keep < len {
                file.set_len(keep).map_err(ctx)?;
                file.sync_data().map_err(ctx)?;
                truncated = len - keep;
                len = keep;
            }
            if let Some(line) = line {
                last = Some(seq_and_hash(&line).map_err(|e| {
                    AuditError::Unavailable(format!(
                        "{}: cannot continue the log, its last record is unreadable ({e}); \
                         verify it and move it aside",
                        cfg.path.display()
                    ))
                })?);
            }
        }
        let mut from_sibling = None;
        if last.is_none() {
            // A crash right after a rotation leaves an empty live file: continue the chain
            // from the newest rotated file.
            if let Some((_, sib)) = rotated_siblings(&cfg.path).map_err(ctx)?.pop() {
                let f = open_rotated(&sib).map_err(ctx)?;
                let slen = f.metadata().map_err(ctx)?.len();
                let (_, line) = scan_tail(&f, slen).map_err(ctx)?;
                let parsed = line.as_deref().map(seq_and_hash);
                match parsed {
                    Some(Ok(sh)) => {
                        last = Some(sh);
                        from_sibling = sib.file_name().map(|n| n.to_string_lossy().into_owned());
                    }
                    _ => {
                        return Err(AuditError::Unavailable(format!(
                            "{}: cannot continue the chain: last record unreadable",
                            sib.display()
                        )))
                    }
                }
            }
        }
        let resumed = last.is_some();
        let (next_seq, prev) = match last {
            Some((s, h)) => (s.saturating_add(1), h),
            None => (0, GENESIS.to_owned()),
        };
        let mut w = Self {
            path: cfg.path.clone(),
            file,
            len,
            next_seq,
            prev,
            mode: cfg.mode,
            rotate_bytes: cfg.rotate_bytes,
            key,
            checkpoint_every: cfg.checkpoint_every,
            checkpoint_interval: cfg.checkpoint_interval,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            dirty: false,
            last_sync: Instant::now(),
            journald: cfg.journald_socket.clone().map(Journald::new),
            state,
            failed: false,
            head_warned: false,
            closed: false,
        };
        let _ = from_sibling; // `write_batch` starts an empty file with `log.rotated`
        if w.key.is_some() {
            // Under the lock, so that another broker sharing the log is not caught between its
            // checkpoint and its head file.
            w.lock_current().map_err(ctx)?;
            let r = w.check_head_claim();
            let _ = w.file.unlock();
            r?;
        }
        let mut items = Vec::new();
        if truncated > 0 {
            items.push((
                "log.recovered".to_owned(),
                obj(json!({ "truncated_bytes": truncated })),
            ));
        }
        items.push((
            "log.opened".to_owned(),
            obj(json!({ "resumed": resumed, "pid": std::process::id() })),
        ));
        // With a key, the opening records end with a signed checkpoint (and the head file is
        // written): every keyed log has a head from its first start on, so a missing head file
        // is always a finding for `audit verify --key`.
        let checkpoint = w.key.is_some();
        w.write_batch(items, true, checkpoint).map_err(ctx)?;
        Ok(w)
    }

    /// Signing on top of a log whose end no longer matches its signed head would bless the cut
    /// (the next head would cover the shortened log): refuses to continue such a log.
    fn check_head_claim(&self) -> Result<(), AuditError> {
        let Some((seq, hash)) = read_head_claim(&self.path) else {
            return Ok(());
        };
        let empty = self.len == 0 && self.next_seq == 0;
        let cut = empty || seq >= self.next_seq;
        let replaced = seq.checked_add(1) == Some(self.next_seq)
            && hash.as_deref().is_some_and(|h| h != self.prev);
        if !(cut || replaced) {
            return Ok(());
        }
        let end = if empty {
            "is empty".to_owned()
        } else if cut {
            format!("ends at seq {}", self.next_seq - 1)
        } else {
            format!("ends with a different record at seq {seq}")
        };
        Err(AuditError::Unavailable(format!(
            "{}: the signed head file {} names checkpoint seq {seq}, but the log {end}: records \
             were cut off or replaced since that checkpoint; run `mcpd audit verify --key` on it \
             and move the log and its head file aside",
            self.path.display(),
            with_suffix(&self.path, ".head").display(),
        )))
    }

    fn sync(&mut self) -> io::Result<()> {
        let started = Instant::now();
        self.file.sync_data()?;
        if let Some(f) = self.state.on_sync.get() {
            f(started.elapsed());
        }
        self.state.sync_count.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn raw_write(&mut self, data: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        {
            let inject = self
                .state
                .inject_short_write
                .lock()
                .ok()
                .and_then(|mut g| g.take());
            if let Some(n) = inject {
                self.file.write_all(&data[..n.min(data.len())])?;
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
        }
        self.file.write_all(data)
    }

    /// Removes whatever a failed write left after the last complete record.
    fn cut_back(&mut self) {
        if let Err(e) = self.file.set_len(self.len) {
            eprintln!(
                "mcpd: AUDIT LOG FAILURE: {}: could not remove a partial record: {e}",
                self.path.display()
            );
        }
    }

    /// Builds, writes (one write) and — in strict mode, or when forced or when a checkpoint is
    /// included — syncs the records for `items`, returning their seqs. With `final_checkpoint`, a
    /// checkpoint is appended if records were written since the last one. On error nothing of
    /// the batch remains in the file and the chain state is unchanged.
    fn write_batch(
        &mut self,
        items: Vec<(String, Map<String, Value>)>,
        force_sync: bool,
        final_checkpoint: bool,
    ) -> io::Result<Vec<u64>> {
        // Several brokers may append to one log (socket-activated sessions each run their own
        // `mcpd`): hold an exclusive lock on the file for the whole batch and re-read the chain
        // head if another process appended or rotated since our last batch.
        self.lock_current()?;
        let r = self.write_batch_locked(items, force_sync, final_checkpoint, true);
        let _ = self.file.unlock();
        r
    }

    /// Locks the file currently at `self.path` (reopening it if another process rotated it
    /// away) and brings `len`, `next_seq` and `prev` up to date with what is on disk.
    ///
    /// The chain never goes back: if what is on disk now ends before the last record this
    /// writer knows of (something other than mcpd cut records off the log while it was open),
    /// this fails instead of continuing the chain — and signing checkpoints — over the cut.
    fn lock_current(&mut self) -> io::Result<()> {
        self.lock_current_as(true).map(|_| ())
    }

    /// [`Writer::lock_current`], or `Ok(false)` at once (nothing locked) if another process
    /// holds the lock (`wait` false).
    fn lock_current_as(&mut self, wait: bool) -> io::Result<bool> {
        let known_next = self.next_seq;
        let r = self.lock_current_inner(wait);
        match r {
            Err(_) => {
                let _ = self.file.unlock();
            }
            Ok(true) if self.next_seq < known_next => {
                let _ = self.file.unlock();
                return Err(io::Error::other(format!(
                    "the log now ends at seq {}, but seq {} was written: records were cut off \
                     it while it was open; not continuing the chain over the cut (verify the \
                     log and move it aside)",
                    self.next_seq.saturating_sub(1),
                    known_next - 1
                )));
            }
            Ok(_) => {}
        }
        r
    }

    fn lock_current_inner(&mut self, wait: bool) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt as _;
        let actual = loop {
            if wait {
                self.file.lock()?;
            } else {
                match self.file.try_lock() {
                    Ok(()) => {}
                    Err(fs::TryLockError::WouldBlock) => return Ok(false),
                    Err(fs::TryLockError::Error(e)) => return Err(e),
                }
            }
            // One fstat gives both the identity compared with the path's and the length.
            if let (Ok(p), Ok(f)) = (fs::metadata(&self.path), self.file.metadata()) {
                if p.ino() == f.ino() && p.dev() == f.dev() {
                    break f.len();
                }
            }
            let _ = self.file.unlock();
            self.file = open_log(&self.path)?;
            self.len = u64::MAX; // force a rescan of the new file
        };
        if actual == self.len {
            return Ok(true);
        }
        let (keep, line) = scan_tail(&self.file, actual)?;
        if keep < actual {
            // A torn record left by a writer that died mid-write (we hold the lock, so it is
            // not in progress): cut it, as `open` does.
            self.file.set_len(keep)?;
        }
        self.len = keep;
        match line {
            Some(l) => {
                let (s, h) = seq_and_hash(&l).map_err(io::Error::other)?;
                self.next_seq = s.saturating_add(1);
                self.prev = h;
            }
            None => {
                // An empty live file: the chain continues from the newest rotated file.
                if let Some((_, sib)) = rotated_siblings(&self.path)?.pop() {
                    let f = open_rotated(&sib)?;
                    let slen = f.metadata()?.len();
                    if let (_, Some(l)) = scan_tail(&f, slen)? {
                        let (s, h) = seq_and_hash(&l).map_err(io::Error::other)?;
                        self.next_seq = s.saturating_add(1);
                        self.prev = h;
                    }
                }
            }
        }
        Ok(true)
    }

    /// `sign` false leaves a checkpoint that falls due by count to the writer thread (it signs
    /// it as soon as it wakes: see [`Writer::due_work`]).
    fn write_batch_locked(
        &mut self,
        mut items: Vec<(String, Map<String, Value>)>,
        force_sync: bool,
        final_checkpoint: bool,
        sign: bool,
    ) -> io::Result<Vec<u64>> {
        let mut rotated_record = false;
        if self.len == 0 && self.next_seq > 0 {
            // Every file after the first starts with `log.rotated`, whoever writes first.
            if let Some((_, sib)) = rotated_siblings(&self.path)?.pop() {
                let name = sib
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                items.insert(
                    0,
                    (
                        "log.rotated".to_owned(),
                        obj(json!({ "previous_file": name })),
                    ),
                );
                rotated_record = true;
            }
        }
        let mut buf = String::with_capacity(items.len() * 320);
        let mut seq = self.next_seq;
        let mut prev = self.prev.clone();
        let mut since = self.since_checkpoint;
        let mut seqs = Vec::with_capacity(items.len());
        let mut journal: Vec<(u64, String, std::ops::Range<usize>)> = Vec::new();
        let mut head = None;
        let n = items.len();
        for (i, (event, fields)) in items.into_iter().enumerate() {
            let b = record::build(seq, &prev, &event, fields)?;
            let start = buf.len();
            buf.push_str(&b.line);
            journal.push((seq, event, start..buf.len()));
            seqs.push(seq);
            prev = b.hash;
            seq += 1;
            since += 1;
            let due = sign && self.checkpoint_every > 0 && since >= self.checkpoint_every;
            let last_and_final = final_checkpoint && i + 1 == n;
            if self.key.is_some() && (due || last_and_final) {
                let (h, fields) = self.checkpoint(seq - 1, &prev)?;
                let c = record::build(seq, &prev, "log.checkpoint", fields)?;
                let start = buf.len();
                buf.push_str(&c.line);
                journal.push((seq, "log.checkpoint".into(), start..buf.len()));
                head = Some(Head(merge_head(h, seq, &c.hash)));
                prev = c.hash;
                seq += 1;
                since = 0;
            }
        }
        if n == 0 && final_checkpoint && self.key.is_some() && since > 0 {
            let (h, fields) = self.checkpoint(seq - 1, &prev)?;
            let c = record::build(seq, &prev, "log.checkpoint", fields)?;
            buf.push_str(&c.line);
            journal.push((seq, "log.checkpoint".into(), 0..buf.len()));
            head = Some(Head(merge_head(h, seq, &c.hash)));
            prev = c.hash;
            seq += 1;
            since = 0;
        }
        if rotated_record && !seqs.is_empty() {
            seqs.remove(0);
        }
        if buf.is_empty() {
            return Ok(seqs);
        }
        if let Err(e) = self.raw_write(buf.as_bytes()) {
            self.cut_back();
            return Err(e);
        }
        if force_sync || self.mode == SyncMode::Strict || head.is_some() {
            if let Err(e) = self.sync() {
                // The page cache state is unknown after a failed fdatasync: drop the batch so
                // the file matches what the callers are told.
                self.cut_back();
                return Err(e);
            }
        } else {
            self.dirty = true;
        }
        self.len += buf.len() as u64;
        self.next_seq = seq;
        self.prev = prev;
        self.since_checkpoint = since;
        if head.is_some() {
            self.last_checkpoint = Instant::now();
        }
        if let Some(Head(h)) = head {
            if let Err(e) = self.write_head(&h) {
                if !self.head_warned {
                    self.head_warned = true;
                    eprintln!(
                        "mcpd: audit: could not write the checkpoint head file for {}: {e}",
                        self.path.display()
                    );
                }
            }
        }
        if let Some(j) = &mut self.journald {
            for (seq, event, r) in &journal {
                j.send(*seq, event, &buf[r.clone()]);
            }
        }
        Ok(seqs)
    }

    /// Signs a checkpoint over (`seq`, `hash`): returns the head skeleton and record fields.
    fn checkpoint(&self, seq: u64, hash: &str) -> io::Result<(Value, Map<String, Value>)> {
        let Some(key) = &self.key else {
            return Err(io::Error::other("no checkpoint key"));
        };
        let sig = hex::encode(
            key.sign(record::checkpoint_message(seq, hash).as_bytes())
                .to_bytes(),
        );
        let fields = obj(json!({ "covers_seq": seq, "covers_hash": hash, "sig": sig }));
        let head = json!({
            "schema_version": SCHEMA_VERSION,
            "covers_seq": seq,
            "covers_hash": hash,
            "sig": sig,
        });
        Ok((head, fields))
    }

    fn write_head(&self, head: &Value) -> io::Result<()> {
        let dst = with_suffix(&self.path, ".head");
        let tmp = with_suffix(&self.path, ".head.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| no_symlink_error(&tmp, "audit head file", e))?;
        let mut text = serde_json::to_string(head).map_err(io::Error::other)?;
        text.push('\n');
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &dst)?;
        sync_dir(&dst);
        Ok(())
    }

    fn fail(&mut self, e: &io::Error) {
        if self.failed {
            return;
        }
        self.failed = true;
        let msg = format!("{}: {e}", self.path.display());
        if let Ok(mut g) = self.state.failure.lock() {
            *g = Some(format!("audit log write failed earlier: {msg}"));
        }
        self.state.healthy.store(false, Ordering::SeqCst);
        if self.state.fail_open {
            eprintln!(
                "mcpd: AUDIT LOG FAILURE: {msg}; fail_open is set: continuing WITHOUT audit records \
                 (they are dropped)"
            );
        } else {
            eprintln!("mcpd: AUDIT LOG FAILURE: {msg}; audited operations will be refused");
        }
    }

    fn periodic_sync(&mut self) {
        if self.dirty && !self.failed {
            if let Err(e) = self.sync() {
                self.fail(&e);
            }
        }
    }

    fn maybe_rotate(&mut self) -> io::Result<()> {
        let Some(limit) = self.rotate_bytes else {
            return Ok(());
        };
        if self.len <= limit || self.next_seq == 0 {
            return Ok(());
        }
        // Under the lock, and only if the file is still too large once brought up to date
        // (another broker sharing the log may have rotated it already).
        self.lock_current()?;
        let r = self.rotate_locked(limit);
        let _ = self.file.unlock();
        if !r? {
            return Ok(());
        }
        self.file = open_log(&self.path)?;
        self.len = u64::MAX; // rescan: another writer may already have started the new file
                             // Starts the new file with `log.rotated` (prepended by `write_batch_locked`) unless
                             // another writer already did.
        self.write_batch(Vec::new(), true, false)?;
        Ok(())
    }

    fn rotate_locked(&mut self, limit: u64) -> io::Result<bool> {
        if self.len <= limit || self.next_seq == 0 {
            return Ok(false);
        }
        if self.dirty {
            self.sync()?;
        }
        let rotated = rotated_path(&self.path, self.next_seq - 1);
        if rotated.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("rotation target {} exists", rotated.display()),
            ));
        }
        fs::rename(&self.path, &rotated)?;
        sync_dir(&self.path);
        Ok(true)
    }

    /// When the batch-mode sync is due (records written, not yet synced).
    fn sync_due(&self) -> Option<Instant> {
        match self.mode {
            SyncMode::Batch { interval } if self.dirty && !self.failed => {
                Some(self.last_sync + interval)
            }
            _ => None,
        }
    }

    /// When the timed checkpoint is due (with a key, records no checkpoint covers yet).
    fn checkpoint_due(&self) -> Option<Instant> {
        let every = self.checkpoint_interval?;
        (self.key.is_some() && !self.failed && self.since_checkpoint > 0)
            .then(|| self.last_checkpoint + every)
    }

    fn timed_checkpoint(&mut self) {
        if let Err(e) = self.write_batch(Vec::new(), true, true) {
            self.fail(&e);
        }
    }

    /// When the writer thread must wake at the latest (a batch-mode sync or a timed checkpoint).
    fn deadline(&self) -> Option<Instant> {
        [self.sync_due(), self.checkpoint_due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// A checkpoint due by count that a batch written on another thread left to this one.
    fn count_checkpoint_due(&self) -> bool {
        self.key.is_some()
            && !self.failed
            && self.checkpoint_every > 0
            && self.since_checkpoint >= self.checkpoint_every
    }

    /// The live file has outgrown `rotate_bytes`.
    fn rotation_due(&self) -> bool {
        self.rotate_bytes.is_some_and(|limit| self.len > limit) && self.next_seq > 0
    }

    /// The writer thread's periodic work: what has fallen due by time, a checkpoint due by
    /// count, a rotation.
    fn due_work(&mut self) {
        if self.failed {
            return;
        }
        let now = Instant::now();
        if self.count_checkpoint_due() || self.checkpoint_due().is_some_and(|t| t <= now) {
            // Syncs the log too.
            self.timed_checkpoint();
        }
        if self.sync_due().is_some_and(|t| t <= now) {
            self.periodic_sync();
        }
        if !self.failed {
            if let Err(e) = self.maybe_rotate() {
                self.fail(&e);
            }
        }
    }

    /// Tells each waiting append how its batch went.
    fn answer(&mut self, acks: Vec<Ack>, r: io::Result<Vec<u64>>) {
        // Out of the queue depth before anyone hears back.
        self.state
            .queued
            .fetch_sub(acks.len() as u64, Ordering::Relaxed);
        match r {
            Ok(seqs) => {
                for (a, seq) in acks.into_iter().zip(seqs) {
                    let _ = a.send(Ok(Receipt { seq }));
                }
            }
            Err(e) => {
                self.fail(&e);
                for a in acks {
                    let r = if self.state.fail_open {
                        self.state.failed_result()
                    } else {
                        Err(AuditError::Io(io::Error::new(
                            e.kind(),
                            format!("audit log write failed: {}: {e}", self.path.display()),
                        )))
                    };
                    let _ = a.send(r);
                }
            }
        }
    }

    fn split(batch: Vec<Pending>) -> (Vec<Ack>, Vec<Item>) {
        let mut acks = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        for p in batch {
            acks.push(p.ack);
            items.push((p.event, p.fields));
        }
        (acks, items)
    }

    /// Answers appends that are not written with `why()` each (out of the queue depth first).
    fn refuse(&self, acks: Vec<Ack>, why: impl Fn() -> Result<Receipt, AuditError>) {
        self.state
            .queued
            .fetch_sub(acks.len() as u64, Ordering::Relaxed);
        for a in acks {
            let _ = a.send(why());
        }
    }

    fn process(&mut self, batch: Vec<Pending>) {
        let (acks, items) = Self::split(batch);
        if self.failed {
            self.refuse(acks, || self.state.failed_result());
            return;
        }
        let r = self.write_batch(items, false, false);
        self.answer(acks, r);
        // A sync due by now and a rotation (nothing else can be due after a batch written
        // here: it signs its own checkpoints); nothing once the write failed.
        self.due_work();
    }

    /// Batch mode, called by the append that opened a batch, on its own (runtime) thread:
    /// writes the queued appends there, saving the writer thread's wake-up and the answers'
    /// cross-thread wake-ups, if that needs no call that may block for long. It never syncs,
    /// signs a checkpoint or rotates (those stay on the writer thread, which it wakes when one
    /// falls due), and it only takes the file lock if no other process holds it. Returns how
    /// many appends it answered, or `None` if it left the queue to the writer thread (strict
    /// mode, a failed log, more than [`INLINE_MAX`] queued, the file locked by another broker,
    /// or an error finding the chain's head, which the writer thread then reports).
    pub(crate) fn write_here(&mut self, queue: &Queue) -> Option<usize> {
        if self.mode == SyncMode::Strict || self.failed {
            return None;
        }
        if queue.len() > INLINE_MAX {
            // Many sessions at once: the writer thread writes it beside the runtime.
            return None;
        }
        if self.count_checkpoint_due() || self.rotation_due() {
            // Left to the writer thread, which does that first: the unsigned tail and the
            // file's overshoot stay bounded by one batch, however late the thread runs.
            return None;
        }
        if self.closed {
            // After the final checkpoint: what was queued in a race with `close` is refused.
            let late: Vec<Ack> = queue.take_appends().into_iter().map(|p| p.ack).collect();
            let n = late.len();
            self.refuse(late, || Err(crate::closed_error()));
            return Some(n);
        }
        match self.lock_current_as(false) {
            Ok(true) => {}
            Ok(false) | Err(_) => return None,
        }
        let batch = queue.take_appends();
        let n = batch.len();
        let was_dirty = self.dirty;
        let timed_before = self.checkpoint_due().is_some();
        let (acks, items) = Self::split(batch);
        let r = if items.is_empty() {
            Ok(Vec::new())
        } else {
            self.write_batch_locked(items, false, false, false)
        };
        let _ = self.file.unlock();
        if let Ok(seqs) = &r {
            self.state
                .written_here
                .fetch_add(seqs.len() as u64, Ordering::Relaxed);
        }
        self.answer(acks, r);
        let new_timer =
            (self.dirty && !was_dirty) || (!timed_before && self.checkpoint_due().is_some());
        if new_timer || self.rotation_due() || self.count_checkpoint_due() {
            queue.rearm();
        }
        Some(n)
    }

    fn shutdown(&mut self) {
        self.closed = true;
        if self.failed {
            return;
        }
        let r = self.write_batch(Vec::new(), false, true).and_then(|_| {
            if self.dirty {
                self.sync()
            } else {
                Ok(())
            }
        });
        if let Err(e) = r {
            self.fail(&e);
        }
    }
}

/// The writer thread's body: group commit until closed. It waits without holding the writer,
/// so that an append can write a batch itself meanwhile ([`Writer::write_here`]), and takes the
/// queue only once it holds it: records reach the file in queue order whoever writes them.
pub(crate) fn run(shared: &Mutex<Writer>, queue: &Queue) {
    let lock = || {
        shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    loop {
        let deadline = lock().deadline();
        queue.wait(deadline);
        let mut w = lock();
        w.due_work();
        let msgs = queue.take_now();
        if msgs.is_empty() {
            continue;
        }
        #[cfg(test)]
        let state = Arc::clone(&w.state);
        #[cfg(test)]
        let _gate = state.gate.lock();
        let mut batch = Vec::with_capacity(msgs.len());
        let mut close = false;
        // Appends queued after `Close` are dropped unanswered: their callers get the
        // closed-log error (`close` refuses new appends before it queues `Close`).
        for m in msgs {
            match m {
                Msg::Append(p) => batch.push(p),
                Msg::Close => {
                    close = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            w.process(batch);
        }
        if close {
            w.shutdown();
            return;
        }
    }
}

fn merge_head(mut h: Value, checkpoint_seq: u64, checkpoint_hash: &str) -> Value {
    if let Some(o) = h.as_object_mut() {
        o.insert("checkpoint_seq".into(), checkpoint_seq.into());
        o.insert("checkpoint_hash".into(), checkpoint_hash.into());
        o.insert("ts".into(), record::now_rfc3339().into());
    }
    h
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
