//! The Unix-socket listener, end to end: the real `mcpd serve --unix` (and socket activation),
//! peers of different uids (the relay helper started with `Command::uid`), each mapped to its
//! client by `SO_PEERCRED` and the policy's `unix_uid` / `unix_gid` rules. The first tests speak
//! newline-delimited JSON-RPC (`--unix-protocol lines`); those from
//! `streamable_http_over_the_socket_…` on speak Streamable HTTP, the default protocol, with
//! raw HTTP/1.1 requests written through the relay (every header under the test's control).
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

use mcpd_e2e::http::{raw_request, read_response, Response};
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
    mcpd_e2e::require(
        false,
        "root",
        "the Unix-socket tests connect as peers of other uids",
    )
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

    /// Start with `extra` prepended to the base configuration, speaking lines
    /// (`--unix-protocol lines`); `Err(stderr)` if mcpd exits instead of listening.
    fn try_start(dir: tempfile::TempDir, extra: &str) -> Result<Self, (String, tempfile::TempDir)> {
        Self::try_start_with(dir, extra, &["--unix-protocol", "lines"])
    }

    /// Start with `extra` and the extra arguments `args`.
    fn try_start_with(
        dir: tempfile::TempDir,
        extra: &str,
        args: &[&str],
    ) -> Result<Self, (String, tempfile::TempDir)> {
        let cfg = Self::config(dir.path(), extra);
        let sock = dir.path().join("mcpd.sock");
        let mut cmd = Command::new(mcpd_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg)
            .arg("--unix")
            .arg(&sock)
            .arg("--audit-log")
            .arg(dir.path().join("audit.jsonl"))
            .args(args);
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

    /// Start speaking Streamable HTTP: no protocol flag, no `protocol` key (the default).
    fn start_http(extra: &str) -> Self {
        match Self::try_start_with(layout(), extra, &[]) {
            Ok(b) => b,
            Err((e, _)) => panic!("mcpd refused to start: {e}"),
        }
    }

    /// An HTTP client connecting as `uid`:`gid`.
    fn http(&self, uid: u32, gid: u32) -> HttpPeer<'_> {
        HttpPeer {
            sock: &self.sock,
            uid,
            gid,
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

/// The relay helper connected to `sock` as `uid`:`gid`, its stdin and stdout piped.
fn relay(sock: &Path, uid: u32, gid: u32) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new(env!("CARGO_BIN_EXE_mcpd-unix-relay"))
        .arg(sock)
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay")
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
        let mut child = relay(sock, uid, gid);
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
        self.try_send_raw(b).unwrap();
    }

    /// Write to the relay; an error when it has exited (its connection closed by the server).
    fn try_send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        let w = self.stdin.as_mut().unwrap();
        w.write_all(b)?;
        w.flush()
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
        // Until the place is given back the server refuses a3 and closes, and its relay exits:
        // the write can fail (EPIPE) before a3 reads the refusal. Both are "not yet".
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}});
        a3.try_send_raw(format!("{init}\n").as_bytes()).is_ok()
            && a3.recv().is_some_and(|m| m.get("result").is_some())
    }));
}

/// Spawn mcpd through `sh` so that `LISTEN_PID` is the pid mcpd will have (`exec`), with the
/// pre-bound listener as fd 3 (handed in as stdin and moved by the shell), speaking lines.
fn activated(
    dir: tempfile::TempDir,
    listen_pid: &str,
) -> Result<Broker, (String, tempfile::TempDir)> {
    activated_with(dir, listen_pid, "lines")
}

fn activated_with(
    dir: tempfile::TempDir,
    listen_pid: &str,
    protocol: &str,
) -> Result<Broker, (String, tempfile::TempDir)> {
    let sock = dir.path().join("activated.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let cfg = Broker::config(dir.path(), "");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "exec 3<&0 0</dev/null; LISTEN_PID={listen_pid} LISTEN_FDS=1 LISTEN_FDNAMES=mcpd-unix exec \"$0\" serve --unix-systemd --unix-protocol {protocol} --config \"$1\" --audit-log \"$2\""
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

// ---- Streamable HTTP over the socket (the default protocol) ----

/// Read everything `out` yields within `limit` (the relay's stdout: it ends when mcpd closes
/// the connection); `None` if it did not end in time.
fn read_all_within(
    mut out: impl std::io::Read + Send + 'static,
    limit: Duration,
) -> Option<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = out.read_to_end(&mut all);
        let _ = tx.send(all);
    });
    rx.recv_timeout(limit).ok()
}

const JSON: (&str, &str) = ("Content-Type", "application/json");
const ACCEPT: (&str, &str) = ("Accept", "application/json, text/event-stream");

/// Raw HTTP/1.1 over the Unix socket as `uid`:`gid`, one relay (one connection) per request.
struct HttpPeer<'a> {
    sock: &'a Path,
    uid: u32,
    gid: u32,
}

impl HttpPeer<'_> {
    /// One request; `Host: localhost` unless `headers` has a Host (or several).
    fn request(&self, method: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut all = Vec::new();
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            all.push(("Host", "localhost"));
        }
        all.extend_from_slice(headers);
        let mut child = relay(self.sock, self.uid, self.gid);
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&raw_request(method, &all, body)).unwrap();
        stdin.flush().unwrap();
        let out = child.stdout.take().unwrap();
        let bytes = read_all_within(out, RESPONSE_TIMEOUT);
        drop(stdin);
        let _ = child.kill();
        let _ = child.wait();
        let bytes = bytes.unwrap_or_else(|| panic!("no complete response to {method}"));
        assert!(
            !bytes.is_empty(),
            "the connection closed without a response"
        );
        read_response(&mut bytes.as_slice())
    }

    /// POST a JSON-RPC message with the standard MCP headers (and a session id if given).
    fn post(&self, session: Option<&str>, msg: &Value) -> Response {
        let mut h = vec![JSON, ACCEPT, ("MCP-Protocol-Version", "2025-11-25")];
        if let Some(sid) = session {
            h.push(("Mcp-Session-Id", sid));
        }
        self.request("POST", &h, msg.to_string().as_bytes())
    }

    /// initialize + notifications/initialized; the session id.
    fn initialize(&self) -> String {
        let r = self.post(
            None,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "unix-http-e2e", "version": "0"}}}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["result"]["protocolVersion"], "2025-11-25");
        let sid = r
            .header("mcp-session-id")
            .expect("Mcp-Session-Id")
            .to_string();
        let n = self.post(
            Some(&sid),
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        );
        assert_eq!(n.status, 202);
        sid
    }

    /// A request on session `sid`: the HTTP response and the JSON-RPC response in it.
    fn rpc(&self, sid: &str, id: i64, method: &str, params: Value) -> (Response, Value) {
        let r = self.post(
            Some(sid),
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        assert_eq!(
            r.status,
            200,
            "{method}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let m = r.response_to(&json!(id));
        (r, m)
    }

    fn tools(&self, sid: &str) -> Vec<String> {
        let (_, m) = self.rpc(sid, 2, "tools/list", json!({}));
        let mut t: Vec<String> = m["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{m}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        t.sort();
        t
    }

    /// `tools/call`: the first text block and `isError`.
    fn call_text(&self, sid: &str, name: &str, args: Value) -> (String, bool) {
        let (_, m) = self.rpc(
            sid,
            3,
            "tools/call",
            json!({"name": name, "arguments": args}),
        );
        let r = &m["result"];
        (
            r["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            r["isError"] == json!(true),
        )
    }
}

#[test]
fn streamable_http_over_the_socket_serves_each_uid_its_own_client() {
    if !preconditions() {
        return;
    }
    let b = Broker::start_http("");
    assert!(
        b.stderr()
            .contains("protocol http: Streamable HTTP on /mcp"),
        "{}",
        b.stderr()
    );
    let a = b.http(UID_A, UID_A);
    let sid = a.initialize();
    assert_eq!(sid.len(), 32, "{sid}");
    assert_eq!(
        a.tools(&sid),
        ["list_allowed_directories", "read_text_file"]
    );
    // A tools/call (answered at once: one JSON body) reads the client's own file...
    let fa = format!("{}/f.txt", b.root("a"));
    let (r, m) = a.rpc(
        &sid,
        5,
        "tools/call",
        json!({"name": "read_text_file", "arguments": {"path": fa}}),
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    assert_eq!(m["result"]["content"][0]["text"], "secret of a", "{m}");
    assert!(m["result"].get("resultType").is_none(), "session era: {m}");
    // ... and not another client's.
    let fb = format!("{}/f.txt", b.root("b"));
    let (t, err) = a.call_text(&sid, "read_text_file", json!({"path": fb}));
    assert!(err && !t.contains("secret"), "{t}");
    // A second uid: its own client, its own tools; the first uid's session id is not found.
    let pb = b.http(UID_B, UID_B);
    let sid_b = pb.initialize();
    assert_eq!(
        pb.tools(&sid_b),
        [
            "list_allowed_directories",
            "list_directory",
            "read_text_file"
        ]
    );
    assert_eq!(
        pb.call_text(&sid_b, "read_text_file", json!({"path": fb}))
            .0,
        "secret of b"
    );
    let stolen = pb.post(
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {}}),
    );
    assert_eq!(
        stolen.status,
        404,
        "{}",
        String::from_utf8_lossy(&stolen.body)
    );
    let stolen_delete = pb.request("DELETE", &[("Mcp-Session-Id", &sid)], b"");
    assert_eq!(stolen_delete.status, 404);
    // A header cannot choose the identity: a bearer token and forwarding headers change
    // nothing (uid A stays client a).
    let r = a.request(
        "POST",
        &[
            JSON,
            ACCEPT,
            ("Mcp-Session-Id", &sid),
            ("Authorization", "Bearer not-a-token"),
            ("X-Forwarded-For", "127.0.0.2"),
        ],
        json!({"jsonrpc": "2.0", "id": 11, "method": "tools/list", "params": {}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.response_to(&json!(11))["result"]["tools"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // DELETE ends the session (its worker reaped); the id is then unknown.
    let d = a.request("DELETE", &[("Mcp-Session-Id", &sid)], b"");
    assert_eq!(d.status, 200);
    let after = a.post(
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 12, "method": "tools/list", "params": {}}),
    );
    assert_eq!(after.status, 404);
    assert!(b.audit_has(|r| r["event"] == "session.close" && r["principal"] == "a"));
    // The audit log names the transport and the kernel's credentials, never an address.
    for (uid, client) in [(UID_A, "a"), (UID_B, "b")] {
        assert!(
            b.audit_has(|r| r["event"] == "auth.success"
                && r["principal"] == client
                && r["transport"] == "unix-http"
                && r["method"] == "unix-peer-credentials"
                && r["uid"].as_str().and_then(|s| s.parse::<u32>().ok()) == Some(uid)
                && r["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&format!("uid={uid} gid={uid} pid=")))),
            "{:?}",
            b.audit()
        );
    }
    assert!(b.audit_has(|r| r["event"] == "session.open"
        && r["transport"] == "unix-http"
        && r["principal"] == "a"));
    // The refused lookups were audited as rejects of client b, with its peer.
    assert!(b.audit_has(|r| r["event"] == "request"
        && r["http_status"] == 404
        && r["principal"] == "b"
        && r["transport"] == "unix-http"
        && r["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with(&format!("uid={UID_B} ")))));
}

#[test]
fn the_stateless_era_is_served_over_the_socket() {
    if !preconditions() {
        return;
    }
    let b = Broker::start_http("");
    let a = b.http(UID_A, UID_A);
    let fa = format!("{}/f.txt", b.root("a"));
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let call = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
        "name": "read_text_file", "arguments": {"path": fa}, "_meta": meta}});
    let r = a.request(
        "POST",
        &[
            JSON,
            ACCEPT,
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "read_text_file"),
        ],
        call.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("mcp-session-id").is_none());
    let m = r.response_to(&json!(4));
    assert_eq!(m["result"]["resultType"], "complete", "{m}");
    assert_eq!(m["result"]["content"][0]["text"], "secret of a", "{m}");
    // Another uid's stateless requests run as its own client.
    let list =
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {"_meta": meta}});
    let headers = [
        JSON,
        ACCEPT,
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/list"),
    ];
    let r = b
        .http(UID_B, UID_B)
        .request("POST", &headers, list.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["result"]["tools"].as_array().unwrap().len(), 3);
    for client in ["a", "b"] {
        assert!(b.audit_has(|r| r["event"] == "session.open"
            && r["transport"] == "unix-http-stateless"
            && r["principal"] == client));
    }
}

#[test]
fn an_unmapped_uid_gets_403_over_http_and_an_auth_failure_record() {
    if !preconditions() {
        return;
    }
    let b = Broker::start_http("");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}});
    for (uid, gid) in [(UID_NOBODY, UID_NOBODY), (0, 0)] {
        let p = b.http(uid, gid);
        let r = p.post(None, &init);
        assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
        let j = r.json();
        assert_eq!(j["jsonrpc"], "2.0");
        assert_eq!(j["id"], Value::Null);
        assert_eq!(j["error"]["code"], -32600, "{j}");
        let msg = j["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with("Forbidden: "), "{msg}");
        assert!(msg.contains(&format!("uid={uid} gid={gid}")), "{msg}");
        assert!(
            !msg.contains(b.dir.path().to_str().unwrap()),
            "a path leaked: {msg}"
        );
        // A header naming another identity changes nothing.
        let r = p.request(
            "POST",
            &[
                JSON,
                ACCEPT,
                ("Authorization", "Bearer x"),
                ("X-Remote-User", "a"),
            ],
            init.to_string().as_bytes(),
        );
        assert_eq!(r.status, 403);
        assert!(
            b.audit_has(|r| r["event"] == "auth.failure"
                && r["transport"] == "unix-http"
                && r["method"] == "unix-peer-credentials"
                && r["principal"] == "<unauthenticated>"
                && r["uid"] == uid
                && r["gid"] == gid
                && r["pid"].as_i64().is_some_and(|p| p > 0)),
            "{:?}",
            b.audit()
        );
    }
    // One record per refusal: the auth.failure carries the HTTP status and the peer.
    assert!(b.audit_has(|r| r["event"] == "auth.failure"
        && r["http_status"] == 403
        && r["principal"] == "<unauthenticated>"
        && r["transport"] == "unix-http"
        && r["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with(&format!("uid={UID_NOBODY} ")))));
    // ... and nobody got a session.
    assert!(!b.audit().iter().any(|r| r["event"] == "session.open"));
}

#[test]
fn the_host_gate_applies_over_the_socket() {
    if !preconditions() {
        return;
    }
    let b = Broker::start_http("[http]\nallowed_hosts = [\"mcp.sock.internal\"]\n");
    let a = b.http(UID_A, UID_A);
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}})
    .to_string();
    let status = |headers: &[(&str, &str)]| {
        let mut h = vec![JSON, ACCEPT];
        h.extend_from_slice(headers);
        a.request("POST", &h, ping.as_bytes()).status
    };
    // Two Host headers (request smuggling), or none: 400.
    assert_eq!(status(&[("Host", "localhost"), ("Host", "localhost")]), 400);
    assert_eq!(
        status(&[("Host", "localhost"), ("Host", "evil.example")]),
        400
    );
    // localhost with or without a port, and the configured extra host: served.
    for host in [
        "localhost",
        "localhost:8080",
        "LOCALHOST:1",
        "mcp.sock.internal",
    ] {
        assert_eq!(status(&[("Host", host)]), 200, "{host}");
    }
    // Anything else: 403 (DNS rebinding), and a foreign Origin too.
    for host in [
        "evil.example",
        "127.0.0.1",
        "localhost:",
        "localhost:123456",
        "localhost.evil",
    ] {
        assert_eq!(status(&[("Host", host)]), 403, "{host}");
    }
    assert_eq!(status(&[("Origin", "http://evil.example")]), 403);
    assert_eq!(status(&[("Origin", "http://localhost:3000")]), 200);
    assert_eq!(status(&[("Origin", "https://localhost")]), 200);
    assert!(b.audit_has(|r| r["event"] == "request"
        && r["http_status"] == 400
        && r["principal"] == "a"
        && r["transport"] == "unix-http"));
}

/// An HTTP/1.1 connection kept open (keep-alive) after one answered request, through the
/// relay: proof that mcpd accepted and counts it.
struct Held {
    child: Child,
    _stdin: ChildStdin,
}

impl Held {
    fn open(sock: &Path, uid: u32, gid: u32) -> Self {
        let mut child = relay(sock, uid, gid);
        let mut stdin = child.stdin.take().unwrap();
        // No session: a complete 400 answer, and the connection stays open.
        stdin
            .write_all(b"GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
            .unwrap();
        stdin.flush().unwrap();
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while let Ok(n) = std::io::Read::read(&mut out, &mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let _ = tx.send(got.clone());
                }
            }
        });
        let head = rx
            .recv_timeout(RESPONSE_TIMEOUT)
            .expect("an answer on the held connection");
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        Self {
            child,
            _stdin: stdin,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn http_connections_are_capped_in_total_and_per_uid() {
    if !preconditions() {
        return;
    }
    let b = Broker::start_http("[unix]\nmax_connections = 2\nmax_connections_per_uid = 1\n");
    let a1 = Held::open(&b.sock, UID_A, UID_A);
    // A second connection of uid A: 503 with the JSON-RPC error, before authentication.
    let r = b
        .http(UID_A, UID_A)
        .post(None, &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}));
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("1"));
    let j = r.json();
    assert_eq!(j["error"]["code"], -32041, "{j}");
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unix.max_connections_per_uid"),
        "{j}"
    );
    let _b1 = Held::open(&b.sock, UID_B, UID_B);
    // Two open: a third peer (even an unknown one) is refused before authentication.
    let r = b.http(UID_NOBODY, UID_NOBODY).request("GET", &[], b"");
    assert_eq!(r.status, 503);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(unix.max_connections)"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(b.audit_has(|r| r["event"] == "connection.refused"
        && r["transport"] == "unix-http"
        && r["uid"] == UID_NOBODY));
    assert!(!b.audit().iter().any(|r| r["event"] == "auth.failure"));
    // A closed connection gives its places back.
    drop(a1);
    assert!(wait_until(Duration::from_secs(10), || {
        b.http(UID_A, UID_A)
            .post(
                None,
                &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}}),
            )
            .status
            == 200
    }));
}

#[test]
fn a_socket_from_systemd_serves_http_too() {
    if !preconditions() {
        return;
    }
    let b = activated_with(layout(), "$$", "http")
        .map_err(|e| e.0)
        .unwrap();
    assert!(b.stderr().contains("(from systemd)"), "{}", b.stderr());
    let a = b.http(UID_A, UID_A);
    let sid = a.initialize();
    assert_eq!(
        a.tools(&sid),
        ["list_allowed_directories", "read_text_file"]
    );
    let r = b.http(UID_NOBODY, UID_NOBODY).request("GET", &[], b"");
    assert_eq!(r.status, 403);
}
