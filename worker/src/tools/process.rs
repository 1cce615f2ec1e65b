//! Running a program inside the worker's sandbox: one process group per command, bounded
//! output, a wall-clock deadline, cancellation, and no process left behind.
//!
//! The child inherits the worker's whole confinement (Landlock, seccomp, no_new_privs,
//! rlimits) and [`crate::confine::child::ChildSetup`] lowers its limits further and puts it in
//! its own exec domain ([`crate::confine::exec_domain`]): it may execute only its exec set,
//! never the client's other programs. It starts in
//! its own process group; on timeout, cancellation, output flood or normal exit the *group* is
//! sent `SIGKILL` while the leader is still unreaped (so its id cannot have been reused), then
//! the leader is reaped. A descendant that left the group (`setsid`) is out of reach here: the
//! broker's per-worker cgroup catches it, and without cgroups it dies with the session only if
//! it keeps a pipe open (documented in docs/cgroups.md).

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mcpd_ipc::CommandLimits;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{Pid, Signal};

use crate::confine::child::ChildSetup;
use crate::confine::exec_domain::ExecDomain;
use crate::tools::ToolContext;

/// Process groups started and not yet reaped, so that [`kill_all`] can end them at shutdown.
static LIVE_GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Track a process group (its leader's pid).
pub(crate) fn track(pgid: i32) {
    if let Ok(mut g) = LIVE_GROUPS.lock() {
        g.insert(pgid);
    }
}

/// Stop tracking a process group (its leader was reaped).
pub(crate) fn untrack(pgid: i32) {
    if let Ok(mut g) = LIVE_GROUPS.lock() {
        g.remove(&pgid);
    }
}

/// Send a signal to a tracked group; `ESRCH` (already gone) is not an error.
pub(crate) fn signal_group(pgid: i32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// `SIGKILL` every process group the worker started (session end). Leaders are not reaped
/// here: the worker is about to exit and its children are reparented.
pub fn kill_all() {
    let groups: Vec<i32> = LIVE_GROUPS
        .lock()
        .map(|g| g.iter().copied().collect())
        .unwrap_or_default();
    for g in groups {
        signal_group(g, Signal::KILL);
    }
}

/// What to run.
#[derive(Debug)]
pub struct Spawn {
    /// Absolute path of the program (one of the sandbox's exec paths).
    pub program: String,
    /// What the program may execute (its grant's `exec_set`: itself, its `#!` chain, the
    /// loader, its helpers); it runs in a nested Landlock domain limited to these paths.
    pub exec_set: Vec<String>,
    /// Arguments (without argv\[0\]).
    pub args: Vec<String>,
    /// Working directory, opened beneath an allowed root.
    pub cwd: Option<OwnedFd>,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// Bytes written to stdin, which is then closed.
    pub stdin: Vec<u8>,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Per-process limits and the output cap.
    pub limits: CommandLimits,
}

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// Exit status.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

/// Why mcpd stopped the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The wall-clock limit passed.
    Timeout,
    /// The client cancelled the call (or the session ended).
    Cancelled,
    /// It kept writing far beyond the output cap.
    OutputFlood,
}

/// The outcome of [`run`].
#[derive(Debug)]
pub struct Finished {
    /// Captured stdout (at most the cap, shared with stderr).
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// Output bytes discarded beyond the cap.
    pub dropped: u64,
    /// How it ended.
    pub termination: Termination,
    /// Set when mcpd ended it.
    pub stopped: Option<Stopped>,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// The leader's pid (= process group id).
    pub pid: u32,
}

/// A program that could not be started; the message is client-safe (no paths beyond the
/// program the client named).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpawnFailure(pub String);

/// Captured output with a shared cap.
#[derive(Debug)]
pub(crate) struct Capture {
    pub(crate) out: Vec<u8>,
    pub(crate) err: Vec<u8>,
    pub(crate) dropped: u64,
    cap: u64,
}

impl Capture {
    pub(crate) fn new(cap: u64) -> Self {
        Self {
            out: Vec::new(),
            err: Vec::new(),
            dropped: 0,
            cap,
        }
    }
    fn kept(&self) -> u64 {
        (self.out.len() + self.err.len()) as u64
    }
    pub(crate) fn push(&mut self, stderr: bool, data: &[u8]) {
        let room = usize::try_from(self.cap.saturating_sub(self.kept())).unwrap_or(usize::MAX);
        let take = room.min(data.len());
        let buf = if stderr { &mut self.err } else { &mut self.out };
        buf.extend_from_slice(&data[..take]);
        self.dropped += (data.len() - take) as u64;
    }
    /// Output far beyond the cap: the program is flooding.
    pub(crate) fn flooding(&self) -> bool {
        self.dropped > self.cap.saturating_mul(8).max(8 * 1024 * 1024)
    }
}

fn set_nonblocking(fd: impl AsFd) -> std::io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// Read what is available; `Ok(false)` at end of file.
pub(crate) fn drain(r: &mut impl Read, sink: &mut dyn FnMut(&[u8])) -> std::io::Result<bool> {
    let mut buf = [0u8; 16 * 1024];
    for _ in 0..64 {
        match r.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => sink(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Whether the leader has exited, without reaping it (so its pid, the group id, stays ours).
pub(crate) fn leader_exited(pid: i32) -> bool {
    let Some(p) = Pid::from_raw(pid) else {
        return true;
    };
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    matches!(
        waitid(
            WaitId::Pid(p),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT
        ),
        Ok(Some(_)) | Err(_)
    )
}

/// Start `cmd` with the standard setup: piped stdio, own process group, cleared environment,
/// and a nested exec domain that may execute only `exec_set`.
pub(crate) fn spawn_child(
    program: &str,
    exec_set: &[String],
    args: &[String],
    env: &[(String, String)],
    cwd: Option<&OwnedFd>,
    limits: &CommandLimits,
    die_with_parent: bool,
) -> Result<Child, SpawnFailure> {
    let name = program.rsplit('/').next().unwrap_or(program);
    // Built before the fork (the hook may not allocate); kept alive until `spawn` returns.
    let domain = ExecDomain::build(exec_set).map_err(|e| {
        eprintln!(
            "mcpd-worker[{}]: exec domain of {program}: {e}",
            std::process::id()
        );
        SpawnFailure(format!(
            "Cannot run {name}: its exec domain could not be built"
        ))
    })?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut setup = ChildSetup::new(limits, die_with_parent);
    if let Some(fd) = cwd {
        setup = setup.cwd(fd.as_fd());
    }
    if let Some(fd) = domain.fd() {
        setup = setup.exec_domain(fd);
    }
    setup.install(&mut cmd);
    let child = cmd.spawn().map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => "permission denied by the sandbox",
            Some(libc::ENOENT) => "program not found",
            Some(libc::EAGAIN) => "process limit reached",
            Some(libc::ENOMEM) => "out of memory",
            Some(libc::EMFILE) | Some(libc::ENFILE) => "too many open files",
            _ => "cannot start the program",
        };
        SpawnFailure(format!("Cannot run {name}: {why}"))
    })?;
    drop(domain);
    track(child.id() as i32);
    Ok(child)
}

/// Run one program to completion (or until mcpd stops it). Blocking: call it from the tool's
/// own thread.
pub fn run(ctx: &ToolContext, s: Spawn) -> Result<Finished, SpawnFailure> {
    let started = Instant::now();
    let deadline = started + s.timeout;
    let mut child = spawn_child(
        &s.program,
        &s.exec_set,
        &s.args,
        &s.env,
        s.cwd.as_ref(),
        &s.limits,
        true,
    )?;
    drop(s.cwd); // the child has its own cwd now
    let pid = child.id() as i32;
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    for fd in [
        stdin.as_ref().map(|f| f.as_fd()),
        stdout.as_ref().map(|f| f.as_fd()),
        stderr.as_ref().map(|f| f.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        let _ = set_nonblocking(fd);
    }
    let mut input: &[u8] = &s.stdin;
    if input.is_empty() {
        stdin = None;
    }
    let mut cap = Capture::new(s.limits.max_output_bytes);
    let mut stopped = None;
    let mut last_progress = started;
    loop {
        if ctx.is_cancelled() {
            stopped = Some(Stopped::Cancelled);
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            stopped = Some(Stopped::Timeout);
            break;
        }
        if cap.flooding() {
            stopped = Some(Stopped::OutputFlood);
            break;
        }
        if ctx.wants_progress() && now.duration_since(last_progress) >= Duration::from_secs(1) {
            last_progress = now;
            let secs = now.duration_since(started).as_secs();
            ctx.progress(
                secs as f64,
                None,
                Some(format!(
                    "running for {secs} s, {} bytes of output",
                    cap.kept() + cap.dropped
                )),
            );
        }
        if leader_exited(pid) {
            // Collect what the pipes still hold, briefly (a background process may keep them
            // open; it is killed with the group below).
            let until = Instant::now() + Duration::from_millis(50);
            while Instant::now() < until && (stdout.is_some() || stderr.is_some()) {
                pump(
                    &mut stdout,
                    &mut stderr,
                    &mut cap,
                    Duration::from_millis(10),
                );
            }
            break;
        }
        if stdout.is_none() && stderr.is_none() && stdin.is_none() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let slice = deadline
            .saturating_duration_since(now)
            .min(Duration::from_millis(100));
        // Write stdin when it is writable.
        if let Some(w) = stdin.as_mut() {
            match w.write(input) {
                Ok(n) => {
                    input = &input[n..];
                    if input.is_empty() {
                        stdin = None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => stdin = None, // EPIPE: the program does not read its input
            }
        }
        pump(&mut stdout, &mut stderr, &mut cap, slice);
    }
    // Kill the group while the leader is unreaped: its id cannot have been reused.
    signal_group(pid, Signal::KILL);
    drop(stdin);
    let status = child.wait();
    untrack(pid);
    let termination = match status {
        Ok(st) => match (st.code(), st.signal()) {
            (Some(c), _) => Termination::Exited(c),
            (None, Some(sig)) => Termination::Signaled(sig),
            _ => Termination::Signaled(0),
        },
        Err(_) => Termination::Signaled(libc::SIGKILL),
    };
    Ok(Finished {
        stdout: cap.out,
        stderr: cap.err,
        dropped: cap.dropped,
        termination,
        stopped,
        elapsed: started.elapsed(),
        pid: pid as u32,
    })
}

/// Wait up to `slice` for output and read it into `cap`.
fn pump(
    stdout: &mut Option<std::process::ChildStdout>,
    stderr: &mut Option<std::process::ChildStderr>,
    cap: &mut Capture,
    slice: Duration,
) {
    let ts = rustix::event::Timespec {
        tv_sec: slice.as_secs() as i64,
        tv_nsec: i64::from(slice.subsec_nanos()),
    };
    {
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(2);
        if let Some(o) = stdout.as_ref() {
            fds.push(PollFd::new(o, PollFlags::IN));
        }
        if let Some(e) = stderr.as_ref() {
            fds.push(PollFd::new(e, PollFlags::IN));
        }
        if fds.is_empty() {
            std::thread::sleep(slice.min(Duration::from_millis(5)));
            return;
        }
        let _ = poll(&mut fds, Some(&ts));
    }
    if let Some(o) = stdout.as_mut() {
        match drain(o, &mut |d| cap.push(false, d)) {
            Ok(true) => {}
            _ => *stdout = None,
        }
    }
    if let Some(e) = stderr.as_mut() {
        match drain(e, &mut |d| cap.push(true, d)) {
            Ok(true) => {}
            _ => *stderr = None,
        }
    }
}

/// Render a signal number for people.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGXCPU => "SIGXCPU".into(),
        libc::SIGXFSZ => "SIGXFSZ".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        libc::SIGSYS => "SIGSYS".into(),
        libc::SIGBUS => "SIGBUS".into(),
        other => format!("signal {other}"),
    }
}
