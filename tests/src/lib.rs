//! Test harness for mcpd's end-to-end tests: locates the real `mcpd` and `mcpd-worker`
//! binaries, starts `mcpd serve --stdio` as a child process, and speaks MCP to it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod http;
pub mod jwt;
pub mod tls;

/// How long any single response may take in tests before the test fails.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);

/// The directory holding the built binaries (target/debug or target/release).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MCPD_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for b in ["mcpd", "mcpd-worker"] {
        assert!(
            dir.join(b).exists(),
            "{} not found in {}: run `cargo build --workspace` (or `cargo test --workspace`) first",
            b,
            dir.display()
        );
    }
    dir
}

/// `--no-config` unless `args` name a configuration: a test's broker never reads the host's
/// `/etc/mcpd/mcpd.toml` (or `$MCPD_CONFIG`).
pub fn no_default_config(args: &[&str]) -> Option<&'static str> {
    let named = args
        .iter()
        .any(|a| *a == "--config" || *a == "-c" || a.starts_with("--config="));
    (!named).then_some("--no-config")
}

/// Path of the `mcpd` binary.
pub fn mcpd_bin() -> PathBuf {
    bin_dir().join("mcpd")
}

/// Path of the test worker that has the conformance fixtures (`--toolset conformance`), an
/// example of `mcpd-worker` that `cargo test --workspace` builds.
pub fn conformance_worker() -> PathBuf {
    let w = bin_dir().join("examples").join("mcpd-conformance-worker");
    assert!(
        w.exists(),
        "{} missing: `cargo test --workspace` builds the examples",
        w.display()
    );
    w
}

/// A running `mcpd serve --stdio` with an MCP client attached to its stdin/stdout.
pub struct Server {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    next_id: i64,
    /// Notifications received while waiting for responses.
    pub notifications: Vec<Value>,
    pub stderr_path: PathBuf,
    _stderr_dir: tempfile::TempDir,
}

impl Server {
    /// Start `mcpd serve --stdio <args>`.
    pub fn start(args: &[&str]) -> Self {
        Self::start_in(args, None)
    }

    /// Start in a given working directory.
    pub fn start_in(args: &[&str], cwd: Option<&Path>) -> Self {
        Self::start_with(args, cwd, None)
    }

    /// Start mcpd as the unprivileged user `uid`:`gid` with no supplementary groups (the
    /// test process must be root), in `cwd`. Fails the test with a clear message if that user
    /// cannot run the built binaries (see [`check_runs_as`]).
    pub fn start_as(uid: u32, gid: u32, args: &[&str], cwd: &Path) -> Self {
        if let Err(e) = check_runs_as(uid, gid) {
            panic!("cannot start mcpd as {uid}:{gid}: {e}");
        }
        Self::start_with(args, Some(cwd), Some((uid, gid)))
    }

    /// Start in `cwd` (if given), as `ids` (uid, gid; if given: the test process must be root,
    /// and std drops the supplementary groups when a root parent sets a uid).
    pub fn start_with(args: &[&str], cwd: Option<&Path>, ids: Option<(u32, u32)>) -> Self {
        Self::start_configured(args, |cmd| {
            if let Some(c) = cwd {
                cmd.current_dir(c);
            }
            if let Some((uid, gid)) = ids {
                use std::os::unix::process::CommandExt;
                cmd.uid(uid).gid(gid);
            }
        })
    }

    /// Start with `configure` applied to the command last (e.g. a `pre_exec` hook).
    pub fn start_configured(args: &[&str], configure: impl FnOnce(&mut Command)) -> Self {
        let errdir = tempfile::tempdir().unwrap();
        let stderr_path = errdir.path().join("stderr.log");
        let err = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(mcpd_bin());
        cmd.arg("serve")
            .arg("--stdio")
            .args(no_default_config(args))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        cmd.env("MCPD_LOG", "debug");
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("spawn mcpd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            next_id: 1,
            notifications: vec![],
            stderr_path,
            _stderr_dir: errdir,
        }
    }

    /// What mcpd wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Write raw bytes (a newline is not added).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let w = self.stdin.as_mut().expect("stdin open");
        w.write_all(bytes).unwrap();
        w.flush().unwrap();
    }

    /// Send one JSON message.
    pub fn send(&mut self, v: &Value) {
        let mut s = v.to_string();
        s.push('\n');
        self.send_raw(s.as_bytes());
    }

    /// Next line from stdout, parsed as JSON (every line must be JSON: stdout is MCP only).
    pub fn recv(&mut self) -> Value {
        self.recv_timeout(RESPONSE_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "no message within {RESPONSE_TIMEOUT:?}; stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// Next message, or `None` after `t`.
    pub fn recv_timeout(&mut self, t: Duration) -> Option<Value> {
        let line = self.lines.recv_timeout(t).ok()?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}")),
        )
    }

    /// Wait for the response with this id, keeping notifications aside.
    pub fn response(&mut self, id: &Value) -> Value {
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .recv_timeout(left)
                .unwrap_or_else(|| panic!("no response to id {id}; stderr:\n{}", self.stderr()));
            if m.get("id") == Some(id) && (m.get("result").is_some() || m.get("error").is_some()) {
                return m;
            }
            self.notifications.push(m);
        }
    }

    /// Send a request and return the whole response message.
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.response(&id)
    }

    /// Send a request and return its `result`, failing the test on an error response.
    pub fn result(&mut self, method: &str, params: Value) -> Value {
        let r = self.request(method, params);
        match r.get("result") {
            Some(v) => v.clone(),
            None => panic!("{method} failed: {r}"),
        }
    }

    /// initialize + notifications/initialized.
    pub fn initialize(&mut self) -> Value {
        let r = self.result(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "0"}}),
        );
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        r
    }

    /// Call a tool; returns the `result` object (which may carry isError).
    pub fn call(&mut self, name: &str, args: Value) -> Value {
        self.result("tools/call", json!({"name": name, "arguments": args}))
    }

    /// The text of the first content block of a tool result.
    pub fn call_text(&mut self, name: &str, args: Value) -> (String, bool) {
        let r = self.call(name, args);
        let text = r["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (text, r.get("isError") == Some(&json!(true)))
    }

    /// Names of the listed tools.
    pub fn tool_names(&mut self) -> Vec<String> {
        let r = self.result("tools/list", json!({}));
        r["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Pids of mcpd's child processes (its workers' outer processes: what the broker started,
    /// placed in a cgroup and kills).
    pub fn worker_pids(&self) -> Vec<i32> {
        children_of(self.child.id() as i32)
    }

    /// Host pids of the processes that serve the sessions (PID 2 of each worker's PID
    /// namespace, beneath the outer process and the namespace's init).
    pub fn serving_pids(&self) -> Vec<i32> {
        self.worker_pids()
            .into_iter()
            .filter_map(serving_pid)
            .collect()
    }

    /// The host pid of the process that is `ns_pid` in the PID namespace of this server's
    /// first worker (commands print their pids as their namespace sees them).
    pub fn host_pid(&self, ns_pid: i32) -> Option<i32> {
        host_pid_under(self.child.id() as i32, ns_pid)
    }

    /// Close stdin and wait for mcpd to exit (bounded).
    pub fn finish(mut self) -> ExitStatus {
        self.wait_exit()
    }

    /// [`Self::finish`], and everything mcpd wrote on stderr.
    pub fn finish_with_log(mut self) -> (ExitStatus, String) {
        let st = self.wait_exit();
        (st, self.stderr())
    }

    fn wait_exit(&mut self) -> ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "mcpd did not exit after stdin EOF; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Direct children of a process, from /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'
            if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.get(1).and_then(|s| s.parse::<i32>().ok()) == Some(pid)
                    && f.first() != Some(&"Z")
                {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// The host pid of the process that is `ns_pid` in the PID namespace of the first worker of
/// the mcpd process `mcpd`.
pub fn host_pid_under(mcpd: i32, ns_pid: i32) -> Option<i32> {
    let outer = *children_of(mcpd).first()?;
    let init = *children_of(outer).first()?;
    host_pid_in(init, ns_pid)
}

/// The serving worker beneath a worker's outer process: the child of its PID namespace's init
/// that is PID 2 there.
pub fn serving_pid(outer: i32) -> Option<i32> {
    let init = *children_of(outer).first()?;
    host_pid_in(init, 2)
}

/// The host pid of the process that has pid `ns_pid` in the PID namespace `member` (a host
/// pid) belongs to, from `/proc/*/ns/pid` and the `NSpid:` line of `/proc/*/status`.
pub fn host_pid_in(member: i32, ns_pid: i32) -> Option<i32> {
    let ns = std::fs::read_link(format!("/proc/{member}/ns/pid")).ok()?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{p}/ns/pid"))
            .ok()
            .as_ref()
            != Some(&ns)
        {
            continue;
        }
        let inner = proc_status(p, "NSpid").and_then(|v| {
            v.split_whitespace()
                .last()
                .and_then(|x| x.parse::<i32>().ok())
        });
        if inner == Some(ns_pid) {
            return Some(p);
        }
    }
    None
}

/// A field of /proc/PID/status, e.g. "Seccomp".
pub fn proc_status(pid: i32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_string())
    })
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .map(|x| x.1.trim_start().starts_with('Z'))
                == Some(false)
        }
        Err(_) => false,
    }
}

/// Wait until `f` holds, at most `t`.
pub fn wait_until(t: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Send a signal.
pub fn signal(pid: i32, sig: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) takes plain integers and touches no memory of this process.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig}) failed");
}

/// Whether `uid`:`gid` (with no supplementary groups) can run the built `mcpd` (the binaries
/// and every directory above them must be executable for it): runs `mcpd --version` as that
/// user. The error says what failed.
pub fn check_runs_as(uid: u32, gid: u32) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    if !is_root() {
        return Err(
            "the test process is not root, so it cannot start a process as another user".into(),
        );
    }
    let bin = mcpd_bin();
    let out = Command::new(&bin)
        .arg("--version")
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {} as {uid}:{gid}: {e} (is it executable for that user, and every directory above it searchable?)", bin.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} --version as {uid}:{gid} failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A test's need for a kernel, cgroup or host feature, or an installed tool: `present` passes
/// through. A missing one fails the test — under CI (`CI` set and non-empty) always, because CI
/// provides everything and a test that did not run must not pass; elsewhere unless
/// `MCPD_ALLOW_SKIP=1`, which makes it print `SKIPPED:` (visible with `--nocapture`), note it
/// in `$MCPD_SKIP_LOG` (the summary line of `bash tests/run.sh`) and return false, so the test
/// returns early.
pub fn require(present: bool, feature: &str, why: &str) -> bool {
    if present {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{test}: {feature} is required when CI is set: {why}");
    }
    if std::env::var("MCPD_ALLOW_SKIP").as_deref() != Ok("1") {
        panic!(
            "{test}: {feature} unavailable: {why}. Install the test prerequisites with \
             `bash tests/setup.sh`, or set MCPD_ALLOW_SKIP=1 to skip the tests this machine \
             cannot run (`bash tests/run.sh` lists them at the end)"
        );
    }
    eprintln!("SKIPPED: {test}: {feature} unavailable: {why}");
    if let Some(log) = std::env::var_os("MCPD_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
        {
            // One line per skip; appends of one short line are atomic between test processes.
            let _ = writeln!(f, "{test} ({feature})");
        }
    }
    false
}

/// The records of an audit log the broker has finished writing (none if there is no file):
/// every line must be a JSON record.
pub fn audit_records(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record ({e}): {l}")))
        .collect()
}

/// The records so far of an audit log a running broker is writing: a line still being
/// written (not yet JSON) is left out.
pub fn audit_records_so_far(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `mcpd audit verify LOG` must pass (the chain, and no record cut short).
pub fn audit_verify(log: &Path) {
    let out = Command::new(mcpd_bin())
        .arg("audit")
        .arg("verify")
        .arg(log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit verify failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`require`] a program that answers `program arg` successfully (e.g. `nginx -v`).
pub fn require_program(program: &str, arg: &str, why: &str) -> bool {
    let present = Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success());
    require(present, program, why)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then released), for a server
/// the test does not start itself (nginx, systemd-socket-activate).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The Python interpreter with the official MCP SDK `mcp==2.3.0` (`MCPD_TEST_PYTHON`, default
/// `python3`), through [`require`]: `None` only when skipping is allowed.
pub fn python_sdk() -> Option<String> {
    let py = std::env::var("MCPD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args([
            "-c",
            "import mcp, importlib.metadata as m; assert m.version('mcp') == '2.3.0', m.version('mcp')",
        ])
        .status()
        .is_ok_and(|s| s.success());
    let why = format!(
        "`{py}` cannot import it (bash tests/setup.sh installs it: pip install mcp==2.3.0)"
    );
    require(ok, "the Python MCP SDK mcp==2.3.0", &why).then_some(py)
}

/// The Python interpreter (`MCPD_TEST_PYTHON`, default `python3`) with the official Prometheus
/// client `prometheus_client` (its OpenMetrics parser reads the broker's `/metrics`), through
/// [`require`]: `None` only when skipping is allowed.
pub fn python_prometheus() -> Option<String> {
    let py = std::env::var("MCPD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .status()
        .is_ok_and(|s| s.success());
    let why = format!(
        "`{py}` cannot import it (bash tests/setup.sh installs it: pip install prometheus-client==0.26.0)"
    );
    require(ok, "the Python Prometheus client prometheus_client", &why).then_some(py)
}

/// Whether this process runs as root (euid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn c_path(path: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

/// The extended attributes of `path` (not following a final symlink), sorted by name, with
/// their values: read on the host with `llistxattr`/`lgetxattr`.
pub fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let p = c_path(path);
    let mut names = vec![0u8; 4096];
    // SAFETY: `p` is a NUL-terminated path; the kernel writes at most `names.len()` bytes
    // into the buffer, which is valid and exclusively borrowed for the call.
    let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "llistxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    names.truncate(n as usize);
    let mut out = vec![];
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        // SAFETY: both strings are NUL-terminated; the kernel writes at most `value.len()`
        // bytes into the valid, exclusively borrowed buffer.
        let v = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(
            v >= 0,
            "lgetxattr {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        value.truncate(v as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out.sort();
    out
}

/// Set an extended attribute of `path` (e.g. `user.mark`) on the host.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = c_path(path);
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated; the kernel reads `value.len()` bytes from the
    // valid slice. No memory of ours is written.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {} {name}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}
