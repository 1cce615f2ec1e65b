//! The Unix-socket listener, end to end: the real `mcpd serve --unix` (and socket activation),
//! peers of different uids (the relay helper started with `Command::uid`), each mapped to its
//! client by `SO_PEERCRED` and the policy's `unix_uid` / `unix_gid` rules.
//!
//! Needs root (to create peers of other uids). With `CI=true` a missing precondition fails the
//! test; otherwise it is skipped with a note.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use mcpd_e2e::{children_of, is_root, mcpd_bin, signal, wait_until, RESPONSE_TIMEOUT};
use serde_json::{json, Value};

const UID_A: u32 = 60_401;
const UID_B: u32 = 60_402;
const UID_C: u32 = 60_403;
const UID_NOBODY: u32 = 60_409;
const GID_C: u32 = 60_450;

fn preconditions() -> bool {
    if is_root() {
        if let Err(e) = mcpd_e2e::check_runs_as(UID_A, UID_A) {
            panic!("peers of other uids cannot run the test binaries: {e}");
        }
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the Unix-socket tests need root (peers of other uids); CI=true makes this a failure"
    );
    eprintln!("SKIPPED: not root");
    false
}

/// A running `mcpd serve` with a Unix listener, in its own directory.
struct Broker {
    child: Child,
    dir: tempfile::TempDir,
    sock: PathBuf,
    err: PathBuf,
}

const BASE: &str = r#"
[clients.a]
read = ["ROOT/a"]
tools = ["list_allowed_directories", "read_text_file"]
[clients.a.identity]
unix_uid = [60401]

[clients.b]
read = ["ROOT/b"]
tools = ["list_allowed_directories", "list_directory", "read_text_file"]
[clients.b.identity]
unix_uid = [60402]

[clients.c]
read = ["ROOT/c"]
tools = ["list_allowed_directories"]
[clients.c.identity]
unix_gid = [60450]
"#;

fn layout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for c in ["a", "b", "c"] {
        let d = dir.path().join(c);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("f.txt"), format!("secret of {c}")).unwrap();
    }
    dir
}

impl Broker {
    fn config(dir: &Path, extra: &str) -> PathBuf {
        let cfg = dir.join("mcpd.toml");
        // Peers of other uids must be able to connect: mode 0666 unless the test sets one.
        let extra = if !extra.contains("[unix]") {
            format!("[unix]\nmode = \"0666\"\n{extra}")
        } else if !extra.contains("mode") {
            extra.replace("[unix]\n", "[unix]\nmode = \"0666\"\n")
        } else {
            extra.to_string()
        };
        let text = format!("{extra}\n{}", BASE.replace("ROOT", dir.to_str().unwrap()));
        std::fs::write(&cfg, text).unwrap();
        cfg
    }

    /// Start with `extra` prepended to the base configuration; `Err(stderr)` if mcpd exits
    /// instead of listening.
    fn try_start(dir: tempfile::TempDir, extra: &str) -> Result<Self, (String, tempfile::TempDir)> {
        let cfg = Self::config(dir.path(), extra);
        let sock = dir.path().join("mcpd.sock");
        let mut cmd = Command::new(mcpd_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg)
            .arg("--unix")
            .arg(&sock)
            .arg("--audit-log")
            .arg(dir.path().join("audit.jsonl"));
        Self::spawn(dir, cmd, sock)
    }

    fn spawn(
        dir: tempfile::TempDir,
        mut cmd: Command,
        sock: PathBuf,
    ) -> Result<Self, (String, tempfile::TempDir)> {
        let err = dir.path().join("stderr.log");
        let f = std::fs::File::create(&err).unwrap();
        cmd.env("MCPD_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(f));
        if cmd.get_program() == "sh" {
            // the socket-activation wrapper brings its own stdin
        } else {
            cmd.stdin(Stdio::null());
        }
        let mut child = cmd.spawn().expect("spawn mcpd");
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        loop {
            let log = std::fs::read_to_string(&err).unwrap_or_default();
            if log.contains("listening on unix:") {
                return Ok(Self {
                    child,
                    dir,
                    sock,
                    err,
                });
            }
            if let Some(st) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&err).unwrap_or_default();
                return Err((format!("{st}: {log}"), dir));
            }
            assert!(Instant::now() < deadline, "mcpd did not listen: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start(extra: &str) -> Self {
        match Self::try_start(layout(), extra) {
            Ok(b) => b,
            Err((e, _)) => panic!("mcpd refused to start: {e}"),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn audit_has(&self, f: impl Fn(&Value) -> bool) -> bool {
        wait_until(Duration::from_secs(10), || self.audit().iter().any(&f))
    }

    fn peer(&self, uid: u32, gid: u32) -> Peer {
        Peer::connect(&self.sock, uid, gid)
    }

    fn root(&self, c: &str) -> String {
        self.dir.path().join(c).display().to_string()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An MCP client connected to the listener as `uid`:`gid` (through the relay helper).
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    next_id: i64,
}

impl Peer {
    fn connect(sock: &Path, uid: u32, gid: u32) -> Self {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcpd-unix-relay"))
            .arg(sock)
            .uid(uid)
            .gid(gid)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn relay");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            next_id: 1,
        }
    }

    fn send_raw(&mut self, b: &[u8]) {
        let w = self.stdin.as_mut().unwrap();
        w.write_all(b).unwrap();
        w.flush().unwrap();
    }

    fn send(&mut self, v: &Value) {
        let mut s = v.to_string();
        s.push('\n');
        self.send_raw(s.as_bytes());
    }

    /// The next message, or `None` when the connection closed or nothing came in time.
    fn recv(&mut self) -> Option<Value> {
        let l = self.lines.recv_timeout(RESPONSE_TIMEOUT).ok()?;
        Some(serde_json::from_str(&l).unwrap())
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let m = self
                .recv()
                .unwrap_or_else(|| panic!("no response to {method}"));
            if m.get("id") == Some(&id) {
                return m;
            }
        }
    }

    fn result(&mut self, method: &str, params: Value) -> Value {
        let r = self.request(method, params);
        r.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("{method} failed: {r}"))
    }

    fn initialize(&mut self) {
        self.result(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "unix-e2e", "version": "0"}}),
        );
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    }

    fn tools(&mut self) -> Vec<String> {
        let mut t: Vec<String> = self.result("tools/list", json!({}))["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        t.sort();
        t
    }

    fn call_text(&mut self, name: &str, args: Value) -> (String, bool) {
        let r = self.result("tools/call", json!({"name": name, "arguments": args}));
        (
            r["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            r["isError"] == json!(true),
        )
    }

    /// The connection was closed by mcpd: the relay exits on its own.
    fn closed_by_server(&mut self) -> bool {
        wait_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten().is_some()
        })
    }

    fn stderr(mut self) -> String {
        drop(self.stdin.take());
        let _ = self.child.wait();
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    }

    /// Close the connection (stdin EOF: the relay shuts the socket down and exits).
    fn close(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn error_of(m: &Value) -> (i64, String) {
    (
        m["error"]["code"].as_i64().unwrap_or_default(),
        m["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn two_uids_get_their_own_clients_at_the_same_time() {
    if !preconditions() {
        return;
    }
    let b = Broker::start("");
    let mut pa = b.peer(UID_A, UID_A);
    let mut pb = b.peer(UID_B, UID_B);
    pa.initialize();
    pb.initialize();
    assert_eq!(pa.tools(), ["list_allowed_directories", "read_text_file"]);
    assert_eq!(
        pb.tools(),
        [
            "list_allowed_directories",
            "list_directory",
            "read_text_file"
        ]
    );
    let (ra, _) = pa.call_text("list_allowed_directories", json!({}));
    let (rb, _) = pb.call_text("list_allowed_directories", json!({}));
    assert!(
        ra.contains(&b.root("a")) && !ra.contains(&b.root("b")),
        "{ra}"
    );
    assert!(
        rb.contains(&b.root("b")) && !rb.contains(&b.root("a")),
        "{rb}"
    );
    let fa = format!("{}/f.txt", b.root("a"));
    let fb = format!("{}/f.txt", b.root("b"));
    assert_eq!(
        pa.call_text("read_text_file", json!({"path": fa})),
        ("secret of a".to_string(), false)
    );
    let (t, err) = pa.call_text("read_text_file", json!({"path": fb}));
    assert!(err && !t.contains("secret"), "{t}");
    assert_eq!(
        pb.call_text("read_text_file", json!({"path": fb})).0,
        "secret of b"
    );
    // auth.success names the uid, gid and pid the kernel reported.
    for (uid, client) in [(UID_A, "a"), (UID_B, "b")] {
        assert!(
            b.audit_has(|r| r["event"] == "auth.success"
                && r["principal"] == client
                && r["transport"] == "unix"
                && r["method"] == "unix-peer-credentials"
                && r["uid"].as_str().and_then(|s| s.parse::<u32>().ok()) == Some(uid)
                && r["gid"].as_str().and_then(|s| s.parse::<u32>().ok()) == Some(uid)
                && r["pid"]
                    .as_str()
                    .is_some_and(|p| p.parse::<i32>().unwrap() > 0)),
            "{:?}",
            b.audit()
        );
    }
}

#[test]
fn an_unmapped_uid_is_refused_and_audited() {
    if !preconditions() {
        return;
    }
    let b = Broker::start("");
    let mut p = b.peer(UID_NOBODY, UID_NOBODY);
    let m = p.recv().expect("one error line");
    let (code, msg) = error_of(&m);
    assert_eq!(code, -32040, "{m}");
    assert!(
        msg.contains("Unauthorized") && msg.contains("uid=60409"),
        "{msg}"
    );
    assert_eq!(m["id"], Value::Null);
    assert!(p.closed_by_server(), "the connection stays open");
    assert!(b.audit_has(|r| r["event"] == "auth.failure"
        && r["transport"] == "unix"
        && r["uid"] == UID_NOBODY
        && r["gid"] == UID_NOBODY
        && r["pid"].as_i64().is_some_and(|p| p > 0)));
    // Root is not special: no rule names uid 0, so it is refused too.
    let mut r = b.peer(0, 0);
    assert_eq!(error_of(&r.recv().unwrap()).0, -32040);
    // ... and nobody got a session.
    assert!(!b.audit().iter().any(|r| r["event"] == "session.open"));
}

#[test]
fn a_gid_rule_maps_a_peer_without_a_uid_rule() {
    if !preconditions() {
        return;
    }
    let b = Broker::start("");
    let mut p = b.peer(UID_C, GID_C);
    p.initialize();
    assert_eq!(p.tools(), ["list_allowed_directories"]);
    let (t, _) = p.call_text("list_allowed_directories", json!({}));
    assert!(t.contains(&b.root("c")), "{t}");
    // The uid rule wins over the gid rule: uid A in group C is client a.
    let mut q = b.peer(UID_A, GID_C);
    q.initialize();
    assert_eq!(q.tools(), ["list_allowed_directories", "read_text_file"]);
}

#[test]
fn the_socket_file_has_the_configured_mode_and_group() {
    if !preconditions() {
        return;
    }
    let b = Broker::start("[unix]\nmode = \"0660\"\ngroup = 60450\n");
    let md = std::fs::symlink_metadata(&b.sock).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o7777, 0o660);
    assert_eq!((md.uid(), md.gid()), (0, GID_C));
    // A peer of the group connects; one that is neither owner nor in the group cannot.
    let mut p = b.peer(UID_C, GID_C);
    p.initialize();
    let q = b.peer(UID_A, UID_A);
    let e = q.stderr();
    assert!(e.contains("Permission denied"), "{e}");
    drop(b);
    // The socket mcpd bound is removed when it stops.
    let b2 = Broker::start("[unix]\nmode = \"0600\"\n");
    let md = std::fs::symlink_metadata(&b2.sock).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o600);
    let path = b2.sock.clone();
    drop(b2);
    assert!(!path.exists(), "socket left behind");
}

#[test]
fn a_stale_socket_is_replaced_and_other_files_are_refused() {
    if !preconditions() {
        return;
    }
    // Stale: a socket nobody listens on.
    let dir = layout();
    let sock = dir.path().join("mcpd.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let b = Broker::try_start(dir, "").map_err(|e| e.0).unwrap();
    assert!(
        b.stderr().contains("removed a stale socket"),
        "{}",
        b.stderr()
    );
    let mut p = b.peer(UID_A, UID_A);
    p.initialize();
    // A live socket (this broker's) is not taken over by a second one.
    let dir2 = layout();
    let mut cmd = Command::new(mcpd_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(Broker::config(dir2.path(), ""))
        .arg("--unix")
        .arg(&b.sock);
    let e = Broker::spawn(dir2, cmd, b.sock.clone()).err().unwrap().0;
    assert!(e.contains("another server is listening"), "{e}");
    // A regular file: refused, left alone.
    let dir = layout();
    std::fs::write(dir.path().join("mcpd.sock"), "precious").unwrap();
    let (e, dir) = Broker::try_start(dir, "").err().unwrap();
    assert!(e.contains("exists and is not a socket"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("mcpd.sock")).unwrap(),
        "precious"
    );
    // A directory every user may write without the sticky bit: refused.
    let dir = layout();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (e, _) = Broker::try_start(dir, "").err().unwrap();
    assert!(e.contains("without the sticky bit"), "{e}");
}

#[test]
fn a_disconnect_closes_the_session_and_reaps_the_worker() {
    if !preconditions() {
        return;
    }
    let b = Broker::start("");
    let mut p = b.peer(UID_A, UID_A);
    p.initialize();
    let (t, _) = p.call_text("list_allowed_directories", json!({}));
    assert!(t.contains(&b.root("a")));
    assert!(
        !children_of(b.pid()).is_empty(),
        "a tool call runs in a worker"
    );
    p.close();
    assert!(
        wait_until(Duration::from_secs(15), || children_of(b.pid()).is_empty()),
        "worker left after the peer disconnected: {:?}",
        children_of(b.pid())
    );
    assert!(b.audit_has(|r| r["event"] == "session.close" && r["principal"] == "a"));
    // The listener keeps serving.
    let mut q = b.peer(UID_B, UID_B);
    q.initialize();
    assert_eq!(q.result("ping", json!({})), json!({}));
}

#[test]
fn lines_are_bounded_as_on_stdio() {
    if !preconditions() {
        return;
    }
    let b = Broker::start("[server]\nmax_message_bytes = 1024\n");
    let mut p = b.peer(UID_A, UID_A);
    p.initialize();
    let mut big = vec![b'x'; 5000];
    big.push(b'\n');
    p.send_raw(&big);
    let m = p.recv().unwrap();
    assert_eq!(m["id"], Value::Null);
    assert_eq!(
        error_of(&m),
        (
            -32600,
            "Invalid Request: message exceeds the limit of 1024 bytes".into()
        )
    );
    p.send_raw(b"\xff\xfe\n");
    assert_eq!(error_of(&p.recv().unwrap()).0, -32700);
    assert_eq!(p.result("ping", json!({})), json!({}));
}

#[test]
fn connections_are_capped_in_total_and_per_uid() {
    if !preconditions() {
        return;
    }
    let b = Broker::start("[unix]\nmax_connections = 2\nmax_connections_per_uid = 1\n");
    let mut a1 = b.peer(UID_A, UID_A);
    a1.initialize();
    let mut a2 = b.peer(UID_A, UID_A);
    let (code, msg) = error_of(&a2.recv().unwrap());
    assert_eq!(code, -32041);
    assert!(msg.contains("max_connections_per_uid"), "{msg}");
    assert!(a2.closed_by_server());
    let mut pb = b.peer(UID_B, UID_B);
    pb.initialize();
    // Two open: a third peer (even an unknown one) is refused before authentication.
    let mut pc = b.peer(UID_C, GID_C);
    let (code, msg) = error_of(&pc.recv().unwrap());
    assert_eq!(code, -32041);
    assert!(msg.contains("unix.max_connections)"), "{msg}");
    assert!(b.audit_has(|r| r["event"] == "connection.refused" && r["uid"] == UID_C));
    // A closed connection gives its places back.
    a1.close();
    assert!(wait_until(Duration::from_secs(10), || {
        let mut a3 = b.peer(UID_A, UID_A);
        a3.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}}));
        a3.recv().is_some_and(|m| m.get("result").is_some())
    }));
}

/// Spawn mcpd through `sh` so that `LISTEN_PID` is the pid mcpd will have (`exec`), with the
/// pre-bound listener as fd 3 (handed in as stdin and moved by the shell).
fn activated(
    dir: tempfile::TempDir,
    listen_pid: &str,
) -> Result<Broker, (String, tempfile::TempDir)> {
    let sock = dir.path().join("activated.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let cfg = Broker::config(dir.path(), "");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "exec 3<&0 0</dev/null; LISTEN_PID={listen_pid} LISTEN_FDS=1 LISTEN_FDNAMES=mcpd-unix exec \"$0\" serve --unix-systemd --config \"$1\" --audit-log \"$2\""
        ))
        .arg(mcpd_bin())
        .arg(&cfg)
        .arg(dir.path().join("audit.jsonl"))
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(l)));
    Broker::spawn(dir, cmd, sock)
}

#[test]
fn a_socket_from_systemd_is_served() {
    if !preconditions() {
        return;
    }
    let b = activated(layout(), "$$").map_err(|e| e.0).unwrap();
    assert!(b.stderr().contains("(from systemd)"), "{}", b.stderr());
    let mut pa = b.peer(UID_A, UID_A);
    let mut pb = b.peer(UID_B, UID_B);
    pa.initialize();
    pb.initialize();
    assert_eq!(pa.tools(), ["list_allowed_directories", "read_text_file"]);
    assert_eq!(pb.tools().len(), 3);
    let mut n = b.peer(UID_NOBODY, UID_NOBODY);
    assert_eq!(error_of(&n.recv().unwrap()).0, -32040);
    // A socket meant for another process (LISTEN_PID not ours) is not taken.
    let (e, _) = activated(layout(), "1").err().unwrap();
    assert!(e.contains("LISTEN_PID"), "{e}");
}

#[test]
fn a_peer_over_its_clients_session_limit_is_told_why() {
    if !preconditions() {
        return;
    }
    let b = Broker::start("[clients.a.limits]\nmax_sessions = 1\n");
    let mut first = b.peer(UID_A, UID_A);
    first.initialize();
    // A second connection of the same client: refused by the engine's per-client count, with
    // a JSON-RPC error line (not a silent close).
    let mut second = b.peer(UID_A, UID_A);
    let refusal = second.recv().expect("an error line before the close");
    let (code, msg) = error_of(&refusal);
    assert_eq!(code, -32029, "{refusal}");
    assert!(msg.contains("Too many sessions"), "{msg}");
    assert_eq!(refusal["error"]["data"]["retryAfterSecs"], 1);
    assert!(second.closed_by_server());
    // Another client is not affected; the first peer's session still works.
    let mut other = b.peer(UID_B, UID_B);
    other.initialize();
    let r = first.request("tools/list", json!({}));
    assert!(r.get("result").is_some(), "{r}");
}
