//! Persistent code sessions: `run_code` and `reset_code_session`.
//!
//! One interpreter process per language, started on first use inside the worker's sandbox and
//! kept for the life of the worker (= one client session), so variables persist between calls.
//! A different client has a different worker, hence different interpreters: sessions are never
//! shared. Each interpreter runs a small driver that reads framed code blocks on stdin and
//! executes them in one persistent namespace. A timeout sends `SIGINT` to the interpreter's
//! process group (Python raises `KeyboardInterrupt`, Node's `breakOnSigint` interrupts, `sh`
//! traps it), which keeps the session; if the interpreter does not come back within a grace
//! period, the group is killed and the session is lost (the result says so).
//!
//! The end of a block is framed in two steps. The session's random marker `M` is no secret
//! from the code (it runs in the same interpreter and can find it), so it only *announces* the
//! end: after the code returned the driver prints a line `M` on stdout. The worker answers
//! with this block's nonce (fresh random, generated for the block and written to the driver's
//! stdin only then), and the driver ends stderr with `M <nonce>` and stdout with
//! `M <nonce> <status>`. Only those exact lines end the block. Code that prints marker lines
//! (it may even announce the end early: the nonce then waits in the pipe until the driver reads
//! it) cannot end its block early, and a late marker of an earlier block never matches a later
//! one, so the session stays in step; only code that reads the driver's own stdin could
//! subvert its session (its own client's, no one else's). The worker's [`Scanner`] holds back
//! at most one possible marker line ([`MAX_HELD`] bytes) and passes everything else on as
//! output, under the client's output cap.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcpd_ipc::{
    CallError, Content, ExecArgs, LanguageGrant, ToolAccess, ToolAnnotations, ToolDescriptor,
    ToolResult,
};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::Signal;
use serde_json::{json, Value};

use super::output;
use super::paths::Access;
use super::process::{self, Capture};
use super::{error_result, invalid_args, Registry, Tool, ToolContext};

/// Largest code block, bytes.
pub const MAX_CODE: usize = 1024 * 1024;
/// How long an interrupted interpreter gets to finish its block before it is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

// Python: `SIGINT` raises `KeyboardInterrupt` only while a block runs, so an interrupt that
// arrives while the driver frames a block's end (or waits for the next one) cannot end it.
// The framing lines are written to the file descriptors, past whatever `sys.stdout` has become.
const PYTHON_DRIVER: &str = r#"
import sys, os, ast, signal, traceback
M = sys.argv[1]
del sys.argv[1:]
g = {"__name__": "__main__", "__builtins__": __builtins__}
inp = sys.stdin.buffer
O, E = sys.stdout, sys.stderr
busy = False
def interrupt(signum, frame):
    if busy:
        raise KeyboardInterrupt
signal.signal(signal.SIGINT, interrupt)
def emit(fd, s):
    b = s.encode("utf-8", "replace")
    while b:
        b = b[os.write(fd, b):]
def report():
    # The client's frames only: from its code's first frame on (what it called), without the
    # driver's ("<string>", python3 -c: the exec call, the interrupt handler) or what the
    # driver called before the client's code ran (ast.parse for a syntax error).
    te = traceback.TracebackException(*sys.exc_info())
    seen, todo = set(), [te]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        first = next((i for i, f in enumerate(x.stack) if f.filename == "<run_code>"), None)
        keep = [] if first is None else x.stack[first:]
        x.stack = traceback.StackSummary.from_list(
            [f for f in keep if f.filename != "<string>"])
        todo += [x.__cause__, x.__context__]
    sys.stderr.write("".join(te.format()))
def flush():
    for s in (sys.stdout, sys.stderr, O, E):
        try:
            s.flush()
        except BaseException:
            pass
while True:
    line = inp.readline()
    if not line:
        break
    try:
        n = int(line)
    except ValueError:
        break
    src = inp.read(n).decode("utf-8", "replace")
    status = "ok"
    try:
        try:
            busy = True
            tree = ast.parse(src, "<run_code>", "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, "<run_code>", "exec"), g)
            if last is not None:
                v = eval(compile(last, "<run_code>", "eval"), g)
                if v is not None:
                    print(repr(v))
        finally:
            busy = False
    except KeyboardInterrupt:
        status = "interrupted"
        report()
    except SystemExit:
        status = "exit"
    except BaseException:
        status = "error"
        report()
    flush()
    emit(1, "\n" + M + "\n")
    nonce = inp.readline().decode("ascii", "replace").strip()
    emit(2, "\n" + M + " " + nonce + "\n")
    emit(1, "\n" + M + " " + nonce + " " + status + "\n")
"#;

// `sh`: a block arrives as a line holding its terminator (fresh random per block, so the
// client cannot end a block early with a line of its code), the code's lines, and the
// terminator again. A syntax error would make a non-interactive shell exit, so each block is
// checked with `sh -n` first. The code runs in the driver's shell (`eval`): the driver's
// names start with `__mcpd_`. An interrupted `read` (dash: status 1, as at end of input) is
// told from the end of input by the trap's flag, and read again.
const SH_DRIVER: &str = r#"__mcpd_m="$1"; __mcpd_sh="$2"; shift 2
__mcpd_i=0
trap '__mcpd_i=1' INT
__mcpd_read() {
  while :; do
    __mcpd_i=0
    IFS= read -r __mcpd_l && return 0
    [ "$__mcpd_i" = 1 ] || return 1
  done
}
while :; do
  __mcpd_read || exit 0
  __mcpd_t=$__mcpd_l
  __mcpd_c=''; __mcpd_got=0
  while __mcpd_read; do
    if [ "$__mcpd_l" = "$__mcpd_t" ]; then __mcpd_got=1; break; fi
    __mcpd_c="$__mcpd_c$__mcpd_l
"
  done
  [ "$__mcpd_got" = 1 ] || exit 0
  if __mcpd_e=$(printf '%s' "$__mcpd_c" | "$__mcpd_sh" -n 2>&1); then
    eval "$__mcpd_c"
    __mcpd_rc=$?
    __mcpd_st=ok; [ "$__mcpd_rc" = 0 ] || __mcpd_st="exit:$__mcpd_rc"
  else
    printf '%s\n' "$__mcpd_e" >&2
    __mcpd_st=error
  fi
  printf '\n%s\n' "$__mcpd_m"
  __mcpd_read || exit 0
  printf '\n%s %s\n' "$__mcpd_m" "$__mcpd_l" >&2
  printf '\n%s %s %s\n' "$__mcpd_m" "$__mcpd_l" "$__mcpd_st"
done
"#;

// Node: after a block the driver waits (`st`) for the nonce line before the next block. The
// driver is a function, so that its names are not in the global scope the code runs in (where
// they would clash with the code's declarations, or let it reach the driver's state).
const NODE_DRIVER: &str = r#"(() => {
const vm = require('vm'), util = require('util');
const M = process.argv[process.argv.length - 1];
const out = process.stdout.write.bind(process.stdout);
const err = process.stderr.write.bind(process.stderr);
let buf = Buffer.alloc(0);
let st = null;
process.on('SIGINT', () => {});
process.stdin.on('data', (d) => { buf = Buffer.concat([buf, d]); pump(); });
process.stdin.on('end', () => process.exit(0));
function pump() {
  for (;;) {
    const nl = buf.indexOf(10);
    if (nl < 0) return;
    if (st !== null) {
      const nonce = buf.subarray(0, nl).toString().trim();
      buf = buf.subarray(nl + 1);
      err('\n' + M + ' ' + nonce + '\n');
      out('\n' + M + ' ' + nonce + ' ' + st + '\n');
      st = null;
      continue;
    }
    const n = parseInt(buf.subarray(0, nl).toString(), 10);
    if (!(n >= 0)) process.exit(0);
    if (buf.length < nl + 1 + n) return;
    const code = buf.subarray(nl + 1, nl + 1 + n).toString();
    buf = buf.subarray(nl + 1 + n);
    run(code);
  }
}
function run(code) {
  let s = 'ok';
  try {
    const v = vm.runInThisContext(code, { filename: 'run_code', breakOnSigint: true });
    if (v !== undefined) process.stdout.write(util.inspect(v) + '\n');
  } catch (e) {
    s = (e && e.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') ? 'interrupted' : 'error';
    process.stderr.write(((e && e.stack) ? e.stack : String(e)) + '\n');
  }
  out('\n' + M + '\n');
  st = s;
}
})();
"#;

/// How a language's driver is started and fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `<length>\n<bytes>`
    Length,
    /// a line holding the block's terminator, the lines, the terminator again
    MarkerLine,
}

fn driver(lang: &LanguageGrant, marker: &str) -> Option<(Vec<String>, Framing)> {
    let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Some(match lang.name.as_str() {
        "python3" => (
            argv(&["-I", "-u", "-c", PYTHON_DRIVER, marker]),
            Framing::Length,
        ),
        "sh" | "bash" => (
            argv(&["-c", SH_DRIVER, "mcpd-code", marker, &lang.interpreter]),
            Framing::MarkerLine,
        ),
        "node" => (argv(&["-e", NODE_DRIVER, marker]), Framing::Length),
        _ => return None,
    })
}

/// Random bytes in a marker, a nonce or a terminator.
const TOKEN_BYTES: usize = 16;
/// Length of a session's marker, `__mcpd_<hex>__`.
const MARKER_LEN: usize = "__mcpd_".len() + 2 * TOKEN_BYTES + "__".len();
/// Length of a block's nonce (hex).
const NONCE_LEN: usize = 2 * TOKEN_BYTES;
/// The most a [`Scanner`] holds back: a line break and the longest marker line without its
/// own, `<marker> <nonce> <status>` (a status of at most [`MAX_STATUS`] bytes).
const MAX_HELD: usize = 1 + MARKER_LEN + 1 + NONCE_LEN + 1 + MAX_STATUS;

/// 128 random bits, in hex.
fn token() -> String {
    let mut b = [0u8; TOKEN_BYTES];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        // getrandom cannot fail for 16 bytes once the pool is initialised; fall back to time.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            ^ u128::from(std::process::id());
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A session's marker.
fn marker() -> String {
    format!("__mcpd_{}__", token())
}

/// One running interpreter.
#[derive(Debug)]
struct Interpreter {
    child: Child,
    pid: i32,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
    marker: String,
    framing: Framing,
    started: Instant,
    runs: u64,
}

impl Interpreter {
    fn kill(mut self) {
        process::signal_group(self.pid, Signal::KILL);
        let _ = self.child.wait();
        process::untrack(self.pid);
    }
}

/// The interpreters of this worker, one slot per language.
#[derive(Debug, Default)]
pub struct Sessions {
    slots: Mutex<HashMap<String, Arc<Mutex<Option<Interpreter>>>>>,
}

impl Sessions {
    fn slot(&self, lang: &str) -> Arc<Mutex<Option<Interpreter>>> {
        let mut m = match self.slots.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.entry(lang.to_string()).or_default().clone()
    }

    /// Kill the interpreters of `lang` (or all); returns how many were running.
    fn reset(&self, lang: Option<&str>) -> usize {
        let slots: Vec<_> = match self.slots.lock() {
            Ok(m) => m
                .iter()
                .filter(|(k, _)| lang.is_none_or(|l| l == k.as_str()))
                .map(|(_, v)| v.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut n = 0;
        for s in slots {
            let mut g = match s.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if let Some(i) = g.take() {
                i.kill();
                n += 1;
            }
        }
        n
    }
}

/// Register `run_code` and `reset_code_session` (sharing one set of sessions).
pub fn register(r: &mut Registry) {
    let sessions = Arc::new(Sessions::default());
    r.register(RunCode {
        sessions: sessions.clone(),
    });
    r.register(ResetCodeSession { sessions });
}

fn start(ctx: &ToolContext, lang: &LanguageGrant) -> Result<Interpreter, String> {
    let marker = marker();
    let (args, framing) = driver(lang, &marker).ok_or("language not supported")?;
    let cwd = if ctx.roots.is_empty() {
        None
    } else {
        ctx.roots.open_dir(".", Access::Read).ok()
    };
    let env = super::exec::base_env(ctx);
    // Not die-with-parent: PDEATHSIG follows the spawning *thread*, which is a pooled tool
    // thread. The interpreter ends instead when the worker closes its stdin (EOF), when the
    // worker kills every group at exit, or with the worker's cgroup.
    let mut child = process::spawn_child(
        &lang.interpreter,
        &lang.exec_set,
        &args,
        &env,
        cwd.as_ref(),
        &ctx.exec.limits,
        false,
    )
    .map_err(|e| e.to_string())?;
    let pid = child.id() as i32;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        process::signal_group(pid, Signal::KILL);
        let _ = child.wait();
        process::untrack(pid);
        return Err("interpreter pipes unavailable".into());
    };
    // Our ends of the pipes: stdin too, so that a block and its nonce are written as the
    // interpreter takes them, within the block's deadline.
    for fd in [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()] {
        let flags = rustix::fs::fcntl_getfl(fd).map_err(|e| e.to_string())?;
        rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| e.to_string())?;
    }
    Ok(Interpreter {
        child,
        pid,
        stdin,
        stdout,
        stderr,
        marker,
        framing,
        started: Instant::now(),
        runs: 0,
    })
}

/// Which of the interpreter's streams a [`Scanner`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// Announces the end (`<marker>`), ends with `<marker> <nonce> <status>`.
    Stdout,
    /// Ends with `<marker> <nonce>`.
    Stderr,
}

/// Finds the framing lines of one block in one stream and passes everything else on.
///
/// Framing lines follow a line break. The scanner holds back a line break and what follows it
/// only while that can still become a framing line (a prefix of `<marker> <nonce>`, or that
/// and a space and at most [`MAX_STATUS`] more bytes), so it holds at most [`MAX_HELD`]
/// bytes; as soon as the line cannot be one, the held bytes are output. A marker split across
/// reads is found all the same.
#[derive(Debug)]
struct Scanner {
    stream: Stream,
    /// `<marker>`: the announcement.
    marker: Vec<u8>,
    /// `<marker> <nonce>`: the start of this block's end lines.
    end: Vec<u8>,
    /// A line break and what followed it, while it may become a framing line.
    held: Vec<u8>,
    /// An announcement was seen (stdout).
    announced: bool,
    /// The end line was seen: the status after it (stderr: empty).
    done: Option<String>,
}

impl Scanner {
    fn new(stream: Stream, marker: &str, nonce: &str) -> Self {
        debug_assert!(marker.len() <= MARKER_LEN && nonce.len() <= NONCE_LEN);
        Self {
            stream,
            marker: marker.as_bytes().to_vec(),
            end: format!("{marker} {nonce}").into_bytes(),
            held: Vec::with_capacity(MAX_HELD),
            announced: false,
            done: None,
        }
    }

    /// The longest framing line of this stream (without line breaks).
    fn longest(&self) -> usize {
        match self.stream {
            Stream::Stdout => self.end.len() + 1 + MAX_STATUS,
            Stream::Stderr => self.end.len(),
        }
    }

    /// Whether `line` (after a line break, no line break in it) may still become a framing line.
    fn may_frame(&self, line: &[u8]) -> bool {
        if self.end.starts_with(line) {
            return true;
        }
        self.stream == Stream::Stdout
            && line.len() <= self.longest()
            && line.starts_with(&self.end)
            && line[self.end.len()] == b' '
    }

    /// A complete line (after a line break): whether it was a framing line.
    fn complete(&mut self, line: &[u8]) -> bool {
        match self.stream {
            Stream::Stdout if line == self.marker.as_slice() => {
                self.announced = true;
                true
            }
            Stream::Stdout if line.len() > self.end.len() && self.may_frame(line) => {
                let status = &line[self.end.len() + 1..];
                self.done = Some(String::from_utf8_lossy(status).trim().to_string());
                true
            }
            Stream::Stderr if line == self.end.as_slice() => {
                self.done = Some(String::new());
                true
            }
            _ => false,
        }
    }

    /// Feed bytes; returns those that are output. After the end line, nothing is.
    fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = data;
        while self.done.is_none() && !rest.is_empty() {
            if self.held.is_empty() {
                // Plain output up to the next line break, which may start a framing line.
                match rest.iter().position(|b| *b == b'\n') {
                    None => {
                        out.extend_from_slice(rest);
                        rest = &[];
                    }
                    Some(nl) => {
                        out.extend_from_slice(&rest[..nl]);
                        self.held.push(b'\n');
                        rest = &rest[nl + 1..];
                    }
                }
                continue;
            }
            let b = rest[0];
            rest = &rest[1..];
            if b == b'\n' {
                let line = self.held[1..].to_vec();
                if self.complete(&line) {
                    self.held.clear();
                } else {
                    // Not a framing line; the new line break may start one.
                    out.extend_from_slice(&self.held);
                    self.held.clear();
                    self.held.push(b'\n');
                }
                continue;
            }
            if self.held.len() > self.longest() {
                // Already the longest framing line: one more byte cannot frame.
                out.extend_from_slice(&self.held);
                out.push(b);
                self.held.clear();
                continue;
            }
            self.held.push(b);
            if !self.may_frame(&self.held[1..]) {
                out.extend_from_slice(&self.held);
                self.held.clear();
            }
        }
        debug_assert!(self.held.len() <= MAX_HELD);
        out
    }

    /// What is held back, once no framing line will follow.
    fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// What happened to one block.
#[derive(Debug)]
enum BlockEnd {
    /// The driver reported this status.
    Done(String),
    /// Interrupted after the timeout, the driver reported this status.
    Interrupted(String),
    /// The interpreter died (or was killed); the session is gone.
    Lost(&'static str),
}

fn run_block(
    ctx: &ToolContext,
    it: &mut Interpreter,
    code: &str,
    timeout: Duration,
    cap: &mut Capture,
) -> BlockEnd {
    let nonce = token();
    let mut input = match it.framing {
        Framing::Length => format!("{}\n{}", code.len(), code),
        Framing::MarkerLine => {
            let mut c = code.to_string();
            if !c.ends_with('\n') {
                c.push('\n');
            }
            let t = format!("__mcpd_end_{}__", token());
            format!("{t}\n{c}{t}\n")
        }
    }
    .into_bytes();
    // How much of `input` the interpreter has taken: stdin is non-blocking, so the block (and
    // later the nonce) is written as the interpreter reads it, within the block's deadline.
    let mut written = 0;
    let mut nonce_sent = false;
    it.runs += 1;
    let mut out_scan = Scanner::new(Stream::Stdout, &it.marker, &nonce);
    let mut err_scan = Scanner::new(Stream::Stderr, &it.marker, &nonce);
    let started = Instant::now();
    let mut deadline = started + timeout;
    let mut interrupted = false;
    let mut last_progress = started;
    let mut out_open = true;
    let mut err_open = true;
    let lost = |why, out_scan: &mut Scanner, err_scan: &mut Scanner, cap: &mut Capture| {
        cap.push(false, &out_scan.finish());
        cap.push(true, &err_scan.finish());
        BlockEnd::Lost(why)
    };
    loop {
        if out_scan.done.is_some() && err_scan.done.is_some() {
            let status = out_scan.done.take().unwrap_or_default();
            return if interrupted {
                BlockEnd::Interrupted(status)
            } else {
                BlockEnd::Done(status)
            };
        }
        if !out_open && !err_open {
            return lost("the interpreter exited", &mut out_scan, &mut err_scan, cap);
        }
        // The end was announced (perhaps early, by the code): the nonce goes out, once.
        if out_scan.announced && !nonce_sent {
            nonce_sent = true;
            input.drain(..written);
            written = 0;
            input.extend_from_slice(nonce.as_bytes());
            input.push(b'\n');
        }
        while written < input.len() {
            match it.stdin.write(&input[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return lost("the interpreter exited", &mut out_scan, &mut err_scan, cap),
            }
        }
        if written == input.len() && !input.is_empty() {
            input = Vec::new();
            written = 0;
        }
        let now = Instant::now();
        if (ctx.is_cancelled() || cap.flooding()) && !interrupted {
            // Treat like a timeout: interrupt, keep the session if the interpreter comes back.
            deadline = now;
        }
        if now >= deadline {
            if interrupted {
                return lost(
                    "the interpreter did not stop after an interrupt and was killed",
                    &mut out_scan,
                    &mut err_scan,
                    cap,
                );
            }
            interrupted = true;
            process::signal_group(it.pid, Signal::INT);
            deadline = now + INTERRUPT_GRACE;
        }
        if ctx.wants_progress() && now.duration_since(last_progress) >= Duration::from_secs(1) {
            last_progress = now;
            let secs = now.duration_since(started).as_secs();
            ctx.progress(secs as f64, None, Some(format!("running for {secs} s")));
        }
        let slice = deadline
            .saturating_duration_since(now)
            .min(Duration::from_millis(100));
        let ts = rustix::event::Timespec {
            tv_sec: slice.as_secs() as i64,
            tv_nsec: i64::from(slice.subsec_nanos()),
        };
        {
            let mut fds = Vec::with_capacity(3);
            if out_open {
                fds.push(PollFd::new(&it.stdout, PollFlags::IN));
            }
            if err_open {
                fds.push(PollFd::new(&it.stderr, PollFlags::IN));
            }
            if written < input.len() {
                fds.push(PollFd::new(&it.stdin, PollFlags::OUT));
            }
            let _ = poll(&mut fds, Some(&ts));
        }
        if out_open {
            let r = process::drain(&mut it.stdout, &mut |d| {
                let o = out_scan.feed(d);
                cap.push(false, &o);
            });
            if !matches!(r, Ok(true)) {
                out_open = false;
            }
        }
        if err_open {
            let r = process::drain(&mut it.stderr, &mut |d| {
                let o = err_scan.feed(d);
                cap.push(true, &o);
            });
            if !matches!(r, Ok(true)) {
                err_open = false;
            }
        }
    }
}

/// The language a client names, with the aliases the policy accepts.
fn canonical_language(asked: &str) -> &str {
    match asked {
        "python" | "python3" => "python3",
        "shell" | "sh" => "sh",
        "js" | "javascript" | "node" => "node",
        other => other,
    }
}

/// `run_code`.
#[derive(Debug)]
pub struct RunCode {
    sessions: Arc<Sessions>,
}

impl Tool for RunCode {
    fn descriptor(&self) -> ToolDescriptor {
        ToolDescriptor {
            name: "run_code".into(),
            title: Some("Run code in a persistent session".into()),
            description: "Run code in this client's persistent interpreter session for the language (variables, functions and imports persist between calls until reset_code_session). The value of a final expression is printed. Runs inside the client's sandbox: only the allowed directories are reachable, network is denied unless granted. On timeout the code is interrupted and the session kept when the interpreter allows.".into(),
            input_schema_json: json!({
                "type": "object",
                "properties": {
                    "language": {"type": "string", "description": "An allowed language: python3, sh, bash or node."},
                    "code": {"type": "string", "description": "The code to run."},
                    "timeout_secs": {"type": "integer", "minimum": 1, "description": "Wall-clock timeout in seconds (capped by policy)."}
                },
                "required": ["language", "code"],
                "additionalProperties": false
            })
            .to_string(),
            output_schema_json: Some(json!({
                "type": "object",
                "properties": {
                    "status": {"type": "string", "description": "ok, error, exit, interrupted, exit:N (sh), or lost"},
                    "stdout": {"type": "string"},
                    "stderr": {"type": "string"},
                    "truncated": {"type": "boolean"},
                    "session_kept": {"type": "boolean", "description": "Whether the session's state survives this call"},
                    "session_runs": {"type": "integer", "description": "Blocks run in this session so far"},
                    "duration_ms": {"type": "integer"}
                },
                "required": ["status", "stdout", "stderr", "truncated", "session_kept", "session_runs", "duration_ms"]
            }).to_string()),
            annotations: ToolAnnotations {
                read_only: false,
                destructive: true,
                idempotent: false,
                open_world: true,
            },
            access: ToolAccess::Code,
            path_args: vec![],
            exec_args: Some(ExecArgs {
                language: Some("language".into()),
                ..ExecArgs::default()
            }),
            client_capabilities: vec![],
            task_support: mcpd_ipc::TaskSupport::Forbidden,
        }
    }

    fn call(&self, ctx: &ToolContext, args: Value) -> Result<ToolResult, CallError> {
        let Value::Object(args) = args else {
            return Err(invalid_args("arguments must be an object"));
        };
        let asked = args
            .get("language")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid_args("language must be a string"))?;
        let code = args
            .get("code")
            .and_then(Value::as_str)
            .filter(|c| c.len() <= MAX_CODE)
            .ok_or_else(|| {
                invalid_args(format!("code must be a string of at most {MAX_CODE} bytes"))
            })?;
        let canonical = canonical_language(asked);
        let Some(lang) = ctx.exec.languages.iter().find(|l| l.name == canonical) else {
            return Ok(error_result(format!(
                "Language not allowed by policy: {}",
                asked.chars().take(64).collect::<String>()
            )));
        };
        let limits = &ctx.exec.limits;
        let timeout = match args.get("timeout_secs") {
            None | Some(Value::Null) => limits.timeout_secs,
            Some(v) => v
                .as_u64()
                .filter(|s| *s >= 1)
                .ok_or_else(|| invalid_args("timeout_secs must be a positive integer"))?,
        }
        .min(limits.max_lifetime_secs);
        let timeout = Duration::from_secs(timeout.max(1));
        let slot = self.sessions.slot(&lang.name);
        let mut guard = match slot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut notes = Vec::new();
        if let Some(it) = guard.as_ref() {
            if it.started.elapsed() >= Duration::from_secs(limits.max_lifetime_secs) {
                if let Some(old) = guard.take() {
                    old.kill();
                }
                notes.push("The previous session reached its maximum lifetime and was replaced by a new one (earlier state is gone).".to_string());
            }
        }
        if guard.is_none() {
            match start(ctx, lang) {
                Ok(i) => *guard = Some(i),
                Err(e) => {
                    return Ok(error_result(format!(
                        "Cannot start the {} session: {e}",
                        lang.name
                    )))
                }
            }
        }
        let Some(it) = guard.as_mut() else {
            return Ok(error_result("session unavailable"));
        };
        let started = Instant::now();
        let mut cap = Capture::new(limits.max_output_bytes);
        let end = run_block(ctx, it, code, timeout, &mut cap);
        let runs = it.runs;
        let (status, kept, is_error) = match &end {
            BlockEnd::Done(s) => (s.clone(), true, s != "ok"),
            BlockEnd::Interrupted(s) => {
                notes.push(format!(
                    "Interrupted after {} s (timeout or cancellation); the session is kept.",
                    timeout.as_secs()
                ));
                let _ = s;
                ("interrupted".to_string(), true, true)
            }
            BlockEnd::Lost(why) => {
                notes.push(format!(
                    "The session was lost: {why}. The next call starts a new one."
                ));
                ("lost".to_string(), false, true)
            }
        };
        if !kept {
            if let Some(old) = guard.take() {
                old.kill();
            }
        }
        drop(guard);
        Ok(render_block(&Block {
            notes: &notes,
            status: &status,
            kept,
            runs,
            is_error,
            elapsed: started.elapsed(),
            cap: &cap,
            budget: limits.max_output_bytes,
        }))
    }
}

/// What one `run_code` call produced.
struct Block<'a> {
    notes: &'a [String],
    status: &'a str,
    kept: bool,
    runs: u64,
    is_error: bool,
    elapsed: Duration,
    cap: &'a Capture,
    /// The client's `max_output_bytes`: stdout and stderr, in the text and in
    /// `structuredContent` together, stay within it ([`output::fit`]).
    budget: u64,
}

/// Longest status text kept (the driver's status line can be forged by the code it runs).
const MAX_STATUS: usize = 64;

fn render_block(b: &Block<'_>) -> ToolResult {
    let output::Fitted {
        stdout,
        stderr,
        cut,
    } = output::fit(&b.cap.out, &b.cap.err, b.budget);
    let discarded = b.cap.dropped.saturating_add(cut);
    let status: String = b.status.chars().take(MAX_STATUS).collect();
    let mut text = String::new();
    for n in b.notes {
        text.push_str(n);
        text.push('\n');
    }
    text.push_str(&stdout);
    if !stderr.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("--- stderr ---\n");
        text.push_str(&stderr);
    }
    if discarded > 0 {
        text.push_str(&format!(
            "\n[output truncated: {discarded} bytes discarded]\n"
        ));
    }
    let structured = json!({
        "status": status,
        "stdout": stdout,
        "stderr": stderr,
        "truncated": discarded > 0,
        "session_kept": b.kept,
        "session_runs": b.runs,
        "duration_ms": u64::try_from(b.elapsed.as_millis()).unwrap_or(u64::MAX),
    });
    ToolResult {
        content: vec![Content::Text { text }],
        structured_json: Some(structured.to_string()),
        is_error: b.is_error,
        input_required: None,
    }
}

/// `reset_code_session`.
#[derive(Debug)]
pub struct ResetCodeSession {
    sessions: Arc<Sessions>,
}

impl Tool for ResetCodeSession {
    fn descriptor(&self) -> ToolDescriptor {
        ToolDescriptor {
            name: "reset_code_session".into(),
            title: Some("Reset code sessions".into()),
            description: "End this client's persistent interpreter session for a language (or all languages): its variables and state are discarded; the next run_code starts fresh.".into(),
            input_schema_json: json!({
                "type": "object",
                "properties": {
                    "language": {"type": "string", "description": "The language to reset; omit to reset all."}
                },
                "additionalProperties": false
            })
            .to_string(),
            output_schema_json: None,
            annotations: ToolAnnotations {
                read_only: false,
                destructive: true,
                idempotent: true,
                open_world: false,
            },
            access: ToolAccess::Code,
            path_args: vec![],
            exec_args: Some(ExecArgs {
                language: Some("language".into()),
                ..ExecArgs::default()
            }),
            client_capabilities: vec![],
            task_support: mcpd_ipc::TaskSupport::Forbidden,
        }
    }

    fn call(&self, _ctx: &ToolContext, args: Value) -> Result<ToolResult, CallError> {
        let lang = match args.get("language") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(canonical_language(s)),
            Some(_) => return Err(invalid_args("language must be a string")),
        };
        let n = self.sessions.reset(lang);
        Ok(ToolResult {
            content: vec![Content::Text {
                text: format!("Reset {n} session(s)."),
            }],
            structured_json: None,
            is_error: false,
            input_required: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_block_result_stays_within_the_budget() {
        let notes = vec![
            "The previous session reached its maximum lifetime and was replaced by a new one (earlier state is gone).".to_string(),
            format!("Interrupted after {} s (timeout or cancellation); the session is kept.", u64::MAX),
            "The session was lost: the interpreter did not stop after an interrupt and was killed. The next call starts a new one.".to_string(),
        ];
        let forged_status = "ok".repeat(100_000);
        for (out, err) in [
            (vec![b'x'; 200_000], vec![]),
            (vec![0u8; 100_000], vec![0xfe; 100_000]),
            (vec![], vec![]),
        ] {
            for budget in [0u64, 100, 65536, 1 << 20] {
                let mut cap = Capture::new(u64::MAX);
                cap.out = out.clone();
                cap.err = err.clone();
                cap.dropped = u64::MAX;
                let r = render_block(&Block {
                    notes: &notes,
                    status: &forged_status,
                    kept: true,
                    runs: u64::MAX,
                    is_error: true,
                    elapsed: Duration::MAX,
                    cap: &cap,
                    budget,
                });
                let size = output::result_size(&r);
                assert!(
                    size <= budget + mcpd_ipc::RESULT_ENVELOPE_BYTES,
                    "{size} > {budget} + envelope"
                );
                let v: Value = serde_json::from_str(r.structured_json.as_deref().unwrap()).unwrap();
                assert_eq!(v["truncated"], true);
                assert_eq!(v["status"].as_str().unwrap().len(), MAX_STATUS);
            }
        }
        // Under the budget nothing is cut.
        let mut cap = Capture::new(1000);
        cap.push(false, b"42\n");
        let r = render_block(&Block {
            notes: &[],
            status: "ok",
            kept: true,
            runs: 1,
            is_error: false,
            elapsed: Duration::from_millis(1),
            cap: &cap,
            budget: 1000,
        });
        let v: Value = serde_json::from_str(r.structured_json.as_deref().unwrap()).unwrap();
        assert_eq!(
            (v["stdout"].as_str(), v["truncated"].as_bool()),
            (Some("42\n"), Some(false))
        );
    }

    #[test]
    fn scanner_finds_markers_split_across_reads() {
        let m = "__mcpd_abc__";
        let mut s = Scanner::new(Stream::Stdout, m, "n0nce");
        let mut out = Vec::new();
        for chunk in [
            &b"hello\nwor"[..],
            b"ld\n\n__mcp",
            b"d_abc__\n\n__mcpd_abc",
            b"__ n0n",
            b"ce o",
            b"k\n",
        ] {
            out.extend(s.feed(chunk));
        }
        assert_eq!(out, b"hello\nworld\n");
        assert!(s.announced);
        assert_eq!(s.done.as_deref(), Some("ok"));
        let mut s = Scanner::new(Stream::Stdout, m, "n0nce");
        assert!(s.feed(b"no marker here\n").len() < 16);
        assert!(s.done.is_none());
    }

    /// The whole framed stream, split at every point (and fed a byte at a time): the same output.
    #[test]
    fn scanner_finds_markers_at_every_split() {
        let (m, n) = (marker(), token());
        // What is output: lines that look like framing lines, but are not this stream's.
        let out_body = format!("a\n{m} x\nb\n\n{m} {n}\n\n{m} {n}x ok\nc");
        let err_body = format!("a\n{m}\n{m} x\nb\n\n{m} {n} ok\nc");
        let out_stream = format!("{out_body}\n{m}\n\n{m} {n} exit:3\nafter");
        let err_stream = format!("{err_body}\n{m} {n}\nafter");
        for (stream, data, body, status) in [
            (Stream::Stdout, &out_stream, &out_body, "exit:3"),
            (Stream::Stderr, &err_stream, &err_body, ""),
        ] {
            let data = data.as_bytes();
            for cut in 0..=data.len() {
                let mut s = Scanner::new(stream, &m, &n);
                let mut out = s.feed(&data[..cut]);
                out.extend(s.feed(&data[cut..]));
                assert_eq!(out, body.as_bytes(), "{stream:?} cut at {cut}");
                assert_eq!(s.done.as_deref(), Some(status));
            }
            let mut s = Scanner::new(stream, &m, &n);
            let out: Vec<u8> = data.iter().flat_map(|b| s.feed(&[*b])).collect();
            assert_eq!(out, body.as_bytes());
            assert_eq!(s.done.as_deref(), Some(status));
        }
    }

    /// A marker line that never ends (or one too long to frame) is output, a byte past what
    /// could still frame, and the scanner never holds more than `MAX_HELD` bytes.
    #[test]
    fn scanner_holds_back_a_bounded_amount() {
        let (m, n) = (marker(), token());
        assert_eq!((m.len(), n.len()), (MARKER_LEN, NONCE_LEN));
        let starts = [
            format!("\n{m}"),
            format!("\n{m} {n}"),
            format!("\n{m} {n} "),
            format!("\n{m} {n} {}", "o".repeat(MAX_STATUS)),
        ];
        for stream in [Stream::Stdout, Stream::Stderr] {
            for start in &starts {
                let mut s = Scanner::new(stream, &m, &n);
                let mut out = s.feed(start.as_bytes());
                assert!(s.held.len() <= MAX_HELD);
                let chunk = vec![b'k'; 16 * 1024];
                for _ in 0..640 {
                    // 10 MiB
                    out.extend(s.feed(&chunk));
                    assert!(s.held.len() <= MAX_HELD, "{}", s.held.len());
                    assert!(s.held.capacity() <= MAX_HELD, "{}", s.held.capacity());
                }
                assert_eq!(out.len(), start.len() + 640 * chunk.len());
                assert!(s.held.is_empty() && s.done.is_none() && !s.announced);
                // The real end still ends it.
                let end = match stream {
                    Stream::Stdout => format!("\n{m}\n\n{m} {n} ok\n"),
                    Stream::Stderr => format!("\n{m} {n}\n"),
                };
                assert!(s.feed(end.as_bytes()).is_empty());
                assert!(s.done.is_some());
            }
        }
        // Nothing held is lost when the stream ends without a framing line.
        let mut s = Scanner::new(Stream::Stdout, &m, &n);
        let mut out = s.feed(format!("x\n{m} {}", &n[..5]).as_bytes());
        out.extend(s.finish());
        assert_eq!(out, format!("x\n{m} {}", &n[..5]).as_bytes());
    }

    /// Only this block's nonce ends it: the marker alone, another block's nonce, the stdout
    /// form on stderr, or a status past `MAX_STATUS` are output.
    #[test]
    fn only_the_blocks_nonce_ends_it() {
        let (m, n, other) = (marker(), token(), token());
        let forged = format!(
            "\n{m} ok\n{m} {other} ok\n\n{m} {other}\n\n{m} {n} {}\n",
            "o".repeat(MAX_STATUS + 1)
        );
        let mut s = Scanner::new(Stream::Stdout, &m, &n);
        let mut out = s.feed(forged.as_bytes());
        assert!(s.done.is_none() && !s.announced);
        out.extend(s.finish());
        assert_eq!(out, forged.as_bytes());
        let mut s = Scanner::new(Stream::Stderr, &m, &n);
        let on_err = format!("{forged}\n{m}\n\n{m} {n} ok\n");
        let mut out = s.feed(on_err.as_bytes());
        assert!(s.done.is_none());
        out.extend(s.finish());
        assert_eq!(out, on_err.as_bytes());
        // An early announcement (the code may print one) is framing, not output; it does not end
        // the block.
        let mut s = Scanner::new(Stream::Stdout, &m, &n);
        assert_eq!(s.feed(format!("a\n{m}\nb\n").as_bytes()), b"ab");
        assert!(s.announced && s.done.is_none());
        assert_eq!(s.finish(), b"\n");
    }
}
