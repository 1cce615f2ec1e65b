//! Persistent code sessions: `run_code` and `reset_code_session`.
//!
//! One interpreter process per language, started on first use inside the worker's sandbox and
//! kept for the life of the worker (= one client session), so variables persist between calls.
//! A different client has a different worker, hence different interpreters: sessions are never
//! shared. Each interpreter runs a small driver that reads length-framed code blocks on stdin,
//! executes them in one persistent namespace, and ends each block's output with a random
//! marker line on stdout and stderr. A timeout sends `SIGINT` to the interpreter's process
//! group (Python raises `KeyboardInterrupt`, Node's `breakOnSigint` interrupts, `sh` traps it),
//! which keeps the session; if the interpreter does not come back within a grace period, the
//! group is killed and the session is lost (the result says so).
//!
//! The marker is not a secret from the code (it runs in the same interpreter and could find
//! it); a program that forges it only garbles its own session's output.

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

const PYTHON_DRIVER: &str = r#"
import sys, ast, traceback
M = sys.argv[1]
del sys.argv[1:]
g = {"__name__": "__main__", "__builtins__": __builtins__}
inp = sys.stdin.buffer
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
        tree = ast.parse(src, "<run_code>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<run_code>", "exec"), g)
        if last is not None:
            v = eval(compile(last, "<run_code>", "eval"), g)
            if v is not None:
                print(repr(v))
    except KeyboardInterrupt:
        status = "interrupted"
        traceback.print_exc()
    except SystemExit:
        status = "exit"
    except BaseException:
        status = "error"
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.write("\n" + M + "\n")
    sys.stderr.flush()
    sys.stdout.write("\n" + M + " " + status + "\n")
    sys.stdout.flush()
"#;

// `sh`: blocks arrive as lines ended by a line holding only the marker. A syntax error would
// make a non-interactive shell exit, so each block is checked with `sh -n` first.
const SH_DRIVER: &str = r#"M="$1"; SH="$2"; shift 2
trap ':' INT
while :; do
  __mcpd_c=''; __mcpd_got=0
  while IFS= read -r __mcpd_l; do
    if [ "$__mcpd_l" = "$M" ]; then __mcpd_got=1; break; fi
    __mcpd_c="$__mcpd_c$__mcpd_l
"
  done
  [ "$__mcpd_got" = 1 ] || exit 0
  if __mcpd_e=$(printf '%s' "$__mcpd_c" | "$SH" -n 2>&1); then
    eval "$__mcpd_c"
    __mcpd_rc=$?
    __mcpd_st=ok; [ "$__mcpd_rc" = 0 ] || __mcpd_st="exit:$__mcpd_rc"
  else
    printf '%s\n' "$__mcpd_e" >&2
    __mcpd_st=error
  fi
  printf '\n%s\n' "$M" >&2
  printf '\n%s %s\n' "$M" "$__mcpd_st"
done
"#;

const NODE_DRIVER: &str = r#"
const vm = require('vm'), util = require('util');
const M = process.argv[process.argv.length - 1];
let buf = Buffer.alloc(0);
process.on('SIGINT', () => {});
process.stdin.on('data', (d) => { buf = Buffer.concat([buf, d]); pump(); });
process.stdin.on('end', () => process.exit(0));
function pump() {
  for (;;) {
    const nl = buf.indexOf(10);
    if (nl < 0) return;
    const n = parseInt(buf.subarray(0, nl).toString(), 10);
    if (!(n >= 0)) process.exit(0);
    if (buf.length < nl + 1 + n) return;
    const code = buf.subarray(nl + 1, nl + 1 + n).toString();
    buf = buf.subarray(nl + 1 + n);
    run(code);
  }
}
function run(code) {
  let st = 'ok';
  try {
    const v = vm.runInThisContext(code, { filename: 'run_code', breakOnSigint: true });
    if (v !== undefined) process.stdout.write(util.inspect(v) + '\n');
  } catch (e) {
    st = (e && e.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') ? 'interrupted' : 'error';
    process.stderr.write(((e && e.stack) ? e.stack : String(e)) + '\n');
  }
  process.stderr.write('\n' + M + '\n');
  process.stdout.write('\n' + M + ' ' + st + '\n');
}
"#;

/// How a language's driver is started and fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `<length>\n<bytes>`
    Length,
    /// lines, then a line holding only the marker
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

/// A 128-bit random marker.
fn marker() -> String {
    let mut b = [0u8; 16];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        // getrandom cannot fail for 16 bytes once the pool is initialised; fall back to time.
        let t = Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id());
        b = t.to_le_bytes();
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("__mcpd_{hex}__")
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
    for fd in [stdout.as_fd(), stderr.as_fd()] {
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

/// Scans a stream for the end-of-block marker while keeping output under the cap.
#[derive(Debug, Default)]
struct Scanner {
    tail: Vec<u8>,
    done: Option<String>,
}

impl Scanner {
    /// Feed bytes; returns the part that is output (before the marker), and remembers the
    /// status text after it once the marker line is complete.
    fn feed(&mut self, data: &[u8], marker: &[u8]) -> Vec<u8> {
        if self.done.is_some() {
            return Vec::new();
        }
        self.tail.extend_from_slice(data);
        // Look for "\n<marker>" followed by a full line.
        let mut pat = Vec::with_capacity(marker.len() + 1);
        pat.push(b'\n');
        pat.extend_from_slice(marker);
        if let Some(pos) = find(&self.tail, &pat) {
            let after = &self.tail[pos + pat.len()..];
            if let Some(nl) = after.iter().position(|b| *b == b'\n') {
                let status = String::from_utf8_lossy(&after[..nl]).trim().to_string();
                self.done = Some(status);
                let out = self.tail[..pos].to_vec();
                self.tail.clear();
                return out;
            }
            // Marker seen, line incomplete: emit what precedes it, keep the rest.
            let out = self.tail[..pos].to_vec();
            self.tail.drain(..pos);
            return out;
        }
        // Keep enough to match a marker split across reads.
        let keep = pat.len().min(self.tail.len());
        let cut = self.tail.len() - keep;
        let out = self.tail[..cut].to_vec();
        self.tail.drain(..cut);
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
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
    let framed = match it.framing {
        Framing::Length => format!("{}\n{}", code.len(), code),
        Framing::MarkerLine => {
            let mut c = code.to_string();
            if !c.ends_with('\n') {
                c.push('\n');
            }
            format!("{c}{}\n", it.marker)
        }
    };
    // The interpreter reads its input as it runs; a blocking write of a large block is fine
    // on this thread (stdin stays blocking), but bounded by the same deadline via SIGINT below.
    if it.stdin.write_all(framed.as_bytes()).is_err() || it.stdin.flush().is_err() {
        return BlockEnd::Lost("the interpreter exited");
    }
    it.runs += 1;
    let marker = it.marker.clone().into_bytes();
    let mut out_scan = Scanner::default();
    let mut err_scan = Scanner::default();
    let started = Instant::now();
    let mut deadline = started + timeout;
    let mut interrupted = false;
    let mut last_progress = started;
    let mut out_open = true;
    let mut err_open = true;
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
            return BlockEnd::Lost("the interpreter exited");
        }
        let now = Instant::now();
        if (ctx.is_cancelled() || cap.flooding()) && !interrupted {
            // Treat like a timeout: interrupt, keep the session if the interpreter comes back.
            deadline = now;
        }
        if now >= deadline {
            if interrupted {
                return BlockEnd::Lost(
                    "the interpreter did not stop after an interrupt and was killed",
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
            let mut fds = Vec::with_capacity(2);
            if out_open {
                fds.push(PollFd::new(&it.stdout, PollFlags::IN));
            }
            if err_open {
                fds.push(PollFd::new(&it.stderr, PollFlags::IN));
            }
            let _ = poll(&mut fds, Some(&ts));
        }
        if out_open {
            let r = process::drain(&mut it.stdout, &mut |d| {
                let o = out_scan.feed(d, &marker);
                cap.push(false, &o);
            });
            if !matches!(r, Ok(true)) {
                out_open = false;
            }
        }
        if err_open {
            let r = process::drain(&mut it.stderr, &mut |d| {
                let o = err_scan.feed(d, &marker);
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
        let m = b"__mcpd_abc__";
        let mut s = Scanner::default();
        let mut out = Vec::new();
        for chunk in [&b"hello\nwor"[..], b"ld\n\n__mcp", b"d_abc__ o", b"k\n"] {
            out.extend(s.feed(chunk, m));
        }
        assert_eq!(out, b"hello\nworld\n");
        assert_eq!(s.done.as_deref(), Some("ok"));
        let mut s = Scanner::default();
        assert!(s.feed(b"no marker here\n", m).len() < 16);
        assert!(s.done.is_none());
    }
}
