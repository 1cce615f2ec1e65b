//! Fault injection against the real binaries: processes killed mid-way (worker mid-call,
//! mid-code-session, mid-stream; the broker mid-stream), a hostile worker that breaks the IPC
//! protocol (`worker/examples/mcpd-hostile-worker.rs`), the audit log on a full disk, and
//! clients that vanish mid-call. Each test asserts what SECURITY.md and ARCHITECTURE.md
//! promise: a worker's death fails its calls only (-32603) and the next call gets a new
//! worker; a broker killed mid-way leaves a verifiable log holding a record of every answer the
//! client got, and no worker or cgroup once the next broker has started; a protocol violation
//! ends that worker only, answered, never a hang; a full audit disk refuses requests and
//! dispatches nothing; a vanished client leaves no zombie, no process and no fd behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcpd_e2e::http::{open_at, HttpServer};
use mcpd_e2e::{
    alive, audit_records, audit_verify, bin_dir, children_of, mcpd_bin, require, serving_pid,
    signal, wait_until, Server,
};
use serde_json::{json, Value};

/// The broker's uid and gid when it runs unprivileged.
const UNPRIV: (u32, u32) = (4243, 4243);
const WORKER_DIED: i64 = -32603;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Root,
    Unprivileged,
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A client root with one file, a config next to it, the audit log in its own directory.
struct Fx {
    _top: tempfile::TempDir,
    top: PathBuf,
    root: PathBuf,
    log: PathBuf,
    cfg: PathBuf,
    mode: Mode,
}

fn chown(p: &Path, ids: (u32, u32)) {
    std::os::unix::fs::chown(p, Some(ids.0), Some(ids.1)).unwrap();
}

impl Fx {
    /// `extra` is appended to `[clients.local]` (which has the root as its write root).
    fn new(mode: Mode, extra: &str) -> Fx {
        use std::os::unix::fs::PermissionsExt;
        let top = tempfile::Builder::new()
            .prefix("mcpd-faults-")
            .tempdir_in("/tmp")
            .unwrap();
        let base = std::fs::canonicalize(top.path()).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = base.join("root");
        let logdir = base.join("log");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&logdir).unwrap();
        std::fs::write(root.join("a.txt"), "alpha").unwrap();
        let server = if mode == Mode::Unprivileged {
            for p in [&root, &root.join("a.txt"), &logdir] {
                chown(p, UNPRIV);
            }
            // The unprivileged broker cannot write the machine's cgroup tree.
            "[server]\ncgroup = \"off\"\n"
        } else {
            ""
        };
        let cfg = base.join("mcpd.toml");
        std::fs::write(
            &cfg,
            format!(
                "[stdio]\nclient = \"local\"\n[http]\nclient = \"local\"\n{server}[clients.local]\nwrite = [\"{}\"]\n{extra}\n",
                s(&root)
            ),
        )
        .unwrap();
        Fx {
            _top: top,
            log: logdir.join("audit.jsonl"),
            top: base,
            root,
            cfg,
            mode,
        }
    }

    fn args(&self) -> Vec<&str> {
        vec!["--config", s(&self.cfg), "--audit-log", s(&self.log)]
    }

    /// An initialized stdio session whose worker serves.
    fn stdio(&self) -> Server {
        let args = self.args();
        let mut srv = match self.mode {
            Mode::Root => Server::start(&args),
            Mode::Unprivileged => Server::start_as(UNPRIV.0, UNPRIV.1, &args, &self.top),
        };
        srv.initialize();
        read_a(&mut srv);
        srv
    }
}

fn read_a(srv: &mut Server) {
    let (t, err) = srv.call_text("read_text_file", json!({"path": "a.txt"}));
    assert!(!err && t == "alpha", "{t}");
}

/// A process as first seen: pid and start time, so that a recycled pid is not taken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Proc(i32, u64);

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn snapshot(pids: &[i32]) -> Vec<Proc> {
    pids.iter()
        .filter_map(|p| start_time(*p).map(|t| Proc(*p, t)))
        .collect()
}

/// Whether that process (not a later one with its pid) is alive and not a zombie.
fn lives(p: Proc) -> bool {
    alive(p.0) && start_time(p.0) == Some(p.1)
}

/// None of these processes lives (waits up to 10 s); fails naming those left.
fn all_gone(procs: &[Proc]) {
    assert!(
        wait_until(Duration::from_secs(10), || !procs.iter().any(|p| lives(*p))),
        "left behind: {:?}",
        procs.iter().filter(|p| lives(**p)).collect::<Vec<_>>()
    );
}

/// Every process beneath `pid` (children first found, then theirs).
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = vec![];
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// Zombie children of `pid` (children_of leaves them out).
fn zombies_of(pid: i32) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.first() == Some(&"Z") && f.get(1).and_then(|x| x.parse().ok()) == Some(pid) {
                out.push(p);
            }
        }
    }
    out
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn call_msg(id: i64, name: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": name, "arguments": args, "_meta": {"progressToken": id}}})
}

/// Wait until the serving worker under `outer` runs a command (its child), bounded.
fn command_running(serving: i32) -> i32 {
    let mut cmd = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            cmd = descendants(serving).first().copied();
            cmd.is_some()
        }),
        "the command never started"
    );
    cmd.unwrap()
}

// ---------------------------------------------------------------------------------------
// SIGKILL of the worker
// ---------------------------------------------------------------------------------------

fn worker_killed_mid_call(mode: Mode) {
    let fx = Fx::new(mode, "exec = [\"sleep\"]");
    let mut srv = fx.stdio();
    let w = srv.serving_pids()[0];
    srv.send(&call_msg(
        100,
        "run_command",
        json!({"command": "sleep", "args": ["30"]}),
    ));
    let sleep = command_running(w);
    // Another request in flight at the same time is not a call on the worker: it is answered.
    assert_eq!(srv.result("ping", json!({})), json!({}));
    let procs = snapshot(&[w, sleep]);
    let t = Instant::now();
    signal(w, libc::SIGKILL);
    let r = srv.response(&json!(100));
    assert_eq!(r["error"]["code"], WORKER_DIED, "{r}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The worker's command died with its PID namespace; nothing is left unreaped.
    all_gone(&procs);
    let broker = srv.child.id() as i32;
    assert!(wait_until(Duration::from_secs(5), || zombies_of(broker).is_empty()));
    // The next call works, on a new worker.
    read_a(&mut srv);
    let w2 = srv.serving_pids();
    assert_eq!(w2.len(), 1, "{w2:?}");
    assert_ne!(w2[0], w);
    let st = srv.finish();
    assert!(st.success(), "{st:?}");
    audit_verify(&fx.log);
    let recs = audit_records(&fx.log);
    let r100 = recs
        .iter()
        .find(|r| r["event"] == "request" && r["request_id"] == 100)
        .expect("a record of the call");
    assert_eq!(r100["outcome"], "worker_crash", "{r100}");
}

fn worker_killed_mid_code_session(mode: Mode) {
    let fx = Fx::new(mode, "code = [\"python3\", \"sh\"]");
    let mut srv = fx.stdio();
    let r = srv.call(
        "run_code",
        json!({"language": "python3", "code": "kept = 41"}),
    );
    assert_ne!(r["isError"], true, "{r}");
    let r = srv.call("run_code", json!({"language": "sh", "code": "v=1"}));
    assert_ne!(r["isError"], true, "{r}");
    let w = srv.serving_pids()[0];
    let interpreters = snapshot(&descendants(w));
    assert!(interpreters.len() >= 2, "{interpreters:?}");
    srv.send(&call_msg(
        200,
        "run_code",
        json!({"language": "python3", "code": "import time\ntime.sleep(30)"}),
    ));
    std::thread::sleep(Duration::from_millis(300));
    signal(w, libc::SIGKILL);
    let r = srv.response(&json!(200));
    assert_eq!(r["error"]["code"], WORKER_DIED, "{r}");
    // Both interpreters (the busy one and the idle sh) are gone with the worker.
    all_gone(&interpreters);
    // The session's state is lost with its worker (said, not hidden); a new session works.
    let r = srv.call(
        "run_code",
        json!({"language": "python3", "code": "print(kept + 1)"}),
    );
    assert_eq!(r["isError"], true, "{r}");
    assert!(
        r["structuredContent"]["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("NameError"),
        "{r}"
    );
    let r = srv.call(
        "run_code",
        json!({"language": "python3", "code": "print(6 * 7)"}),
    );
    assert_eq!(r["structuredContent"]["stdout"], "42\n", "{r}");
    let r = srv.call("run_code", json!({"language": "sh", "code": "echo ok"}));
    assert_eq!(r["structuredContent"]["stdout"], "ok\n", "{r}");
    assert!(srv.finish().success());
}

mod worker_killed_mid_call {
    #[test]
    fn root_broker() {
        super::worker_killed_mid_call(super::Mode::Root)
    }
    #[test]
    fn unprivileged_broker() {
        super::worker_killed_mid_call(super::Mode::Unprivileged)
    }
}

mod worker_killed_mid_code_session {
    #[test]
    fn root_broker() {
        super::worker_killed_mid_code_session(super::Mode::Root)
    }
    #[test]
    fn unprivileged_broker() {
        super::worker_killed_mid_code_session(super::Mode::Unprivileged)
    }
}

// ---------------------------------------------------------------------------------------
// HTTP streams
// ---------------------------------------------------------------------------------------

/// An HTTP broker for `fx` (root only: the HTTP harness has no `start_as`).
fn http(fx: &Fx) -> HttpServer {
    HttpServer::start(&fx.args())
}

/// POST a `tools/call` that accepts SSE and return the open connection.
fn open_call(srv: &HttpServer, sid: &str, msg: &Value) -> TcpStream {
    let body = msg.to_string();
    open_at(
        srv.addr,
        "POST",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("MCP-Protocol-Version", "2025-11-25"),
            ("Mcp-Session-Id", sid),
        ],
        body.as_bytes(),
    )
}

/// Read from `s` until the text read so far contains `what` (bounded); returns that text.
fn read_until(s: &mut TcpStream, seen: &mut String, what: &str) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 4096];
    while !seen.contains(what) {
        assert!(
            Instant::now() < deadline,
            "no {what:?} on the stream; got:\n{seen}"
        );
        match s.read(&mut buf) {
            Ok(0) => panic!("stream ended before {what:?}; got:\n{seen}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
}

/// The serving worker of the (only) session of an HTTP broker.
/// `read_text_file a.txt` on the HTTP session `sid` answers the fixture's text.
fn reads_alpha(srv: &HttpServer, sid: &str, id: i64) {
    let r = srv.rpc(
        sid,
        id,
        "tools/call",
        json!({"name": "read_text_file", "arguments": {"path": "a.txt"}}),
    );
    assert_eq!(r["result"]["content"][0]["text"], "alpha", "{r}");
}

fn http_serving(srv: &HttpServer) -> i32 {
    let outer = children_of(srv.child.id() as i32);
    assert_eq!(outer.len(), 1, "{outer:?}");
    serving_pid(outer[0]).unwrap()
}

#[test]
fn worker_killed_mid_sse_stream() {
    let fx = Fx::new(Mode::Root, "exec = [\"sleep\"]");
    let srv = http(&fx);
    let sid = srv.initialize();
    reads_alpha(&srv, &sid, 2);
    let w = http_serving(&srv);
    let worker = snapshot(&[w]);
    let mut st = open_call(
        &srv,
        &sid,
        &call_msg(
            3,
            "run_command",
            json!({"command": "sleep", "args": ["30"]}),
        ),
    );
    let mut seen = String::new();
    read_until(&mut st, &mut seen, "text/event-stream");
    read_until(&mut st, &mut seen, "notifications/progress");
    signal(w, libc::SIGKILL);
    read_until(&mut st, &mut seen, "\"id\":3");
    let line = seen
        .lines()
        .find(|l| l.starts_with("data:") && l.contains("\"id\":3"))
        .unwrap();
    let resp: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(resp["error"]["code"], WORKER_DIED, "{resp}");
    all_gone(&worker);
    // The session goes on with a new worker.
    reads_alpha(&srv, &sid, 4);
    assert_ne!(http_serving(&srv), w);
}

// ---------------------------------------------------------------------------------------
// SIGKILL of the broker
// ---------------------------------------------------------------------------------------

#[test]
fn broker_killed_mid_stream_leaves_a_verifiable_log_and_nothing_behind() {
    let fx = Fx::new(Mode::Root, "exec = [\"sleep\"]\ncode = [\"python3\"]");
    let mut srv = http(&fx);
    let sid = srv.initialize();
    let mut answered = vec![1];
    for id in 2..8 {
        reads_alpha(&srv, &sid, id);
        answered.push(id);
    }
    // A code session with a block running and a command streaming progress, both mid-way.
    let mut code = open_call(
        &srv,
        &sid,
        &call_msg(
            50,
            "run_code",
            json!({"language": "python3", "code": "import time\ntime.sleep(30)"}),
        ),
    );
    let mut stream = open_call(
        &srv,
        &sid,
        &call_msg(
            51,
            "run_command",
            json!({"command": "sleep", "args": ["30"]}),
        ),
    );
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "notifications/progress");
    let mut seen_code = String::new();
    read_until(&mut code, &mut seen_code, "text/event-stream");
    let broker = srv.child.id() as i32;
    let mut procs = vec![];
    assert!(
        wait_until(Duration::from_secs(10), || {
            procs = snapshot(&descendants(broker));
            procs.len() >= 5
        }),
        "outer, init, worker, sleep, python3: {procs:?}"
    );
    let before = audit_records(&fx.log);
    let groups: Vec<String> = before
        .iter()
        .filter(|r| r["event"] == "worker.spawn")
        .filter_map(|r| r["cgroup"].as_str().map(String::from))
        .collect();
    require(
        !groups.is_empty(),
        "per-worker cgroups",
        "cgroup v1 pids/memory or a delegated v2 subtree (root)",
    );
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    // The log verifies, and every answer the client got has its record.
    audit_verify(&fx.log);
    let recs = audit_records(&fx.log);
    for id in &answered {
        assert!(
            recs.iter()
                .any(|r| r["event"] == "request" && r["request_id"] == *id),
            "no record of answered request {id}"
        );
    }
    // The next broker starts, removes the killed broker's cgroups; no process is left.
    let next = http(&fx);
    all_gone(&procs);
    assert!(
        wait_until(Duration::from_secs(10), || groups
            .iter()
            .all(|g| !Path::new(g).exists())),
        "cgroups left behind: {groups:?}\n{}",
        next.stderr()
    );
    // It appends to the same chain, which still verifies.
    let sid = next.initialize();
    reads_alpha(&next, &sid, 2);
    audit_verify(&fx.log);
}

// ---------------------------------------------------------------------------------------
// A hostile worker
// ---------------------------------------------------------------------------------------

fn hostile_worker() -> PathBuf {
    let w = bin_dir().join("examples").join("mcpd-hostile-worker");
    assert!(
        w.exists(),
        "{} missing: `cargo build --examples` builds it",
        w.display()
    );
    w
}

/// A stdio broker whose workers are the hostile worker in `mode`.
fn hostile(mode: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::write(root.join(".hostile-mode"), mode).unwrap();
    let worker = hostile_worker();
    let mut srv = Server::start(&["--allow-read", s(&root), "--worker", s(&worker)]);
    srv.initialize();
    (srv, dir)
}

fn list_dirs(srv: &mut Server) -> Value {
    srv.request(
        "tools/call",
        json!({"name": "list_allowed_directories", "arguments": {}}),
    )
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn a_worker_that_breaks_the_protocol_is_ended_and_the_call_answered() {
    for (mode, why) in [
        ("garbage", "invalid ipc from worker"),
        ("oversized", "invalid ipc from worker"),
        ("unknown-id", "answer to call 1001, which is not in flight"),
    ] {
        let (mut srv, _d) = hostile(mode);
        for round in 1..=2 {
            let t = Instant::now();
            let r = list_dirs(&mut srv);
            assert_eq!(r["error"]["code"], WORKER_DIED, "{mode}: {r}");
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{mode}: {:?}",
                t.elapsed()
            );
            // That worker is ended (and reaped), the broker serves on.
            assert!(
                wait_until(Duration::from_secs(5), || srv.worker_pids().is_empty()),
                "{mode}: worker not ended"
            );
            let err = srv.stderr();
            assert_eq!(
                count(&err, &format!("ending worker: {why}")),
                round,
                "{mode}:\n{err}"
            );
            assert_eq!(srv.result("ping", json!({})), json!({}));
        }
        // Each call got a fresh worker.
        assert!(count(&srv.stderr(), "worker confined and ready") >= 2);
        let broker = srv.child.id() as i32;
        assert!(
            wait_until(Duration::from_secs(5), || zombies_of(broker).is_empty()),
            "{mode}: zombies {:?}",
            zombies_of(broker)
        );
        assert!(srv.finish().success(), "{mode}");
    }
}

#[test]
fn a_duplicate_answer_ends_the_worker_after_the_call_was_answered() {
    let (mut srv, _d) = hostile("duplicate");
    for round in 1..=2 {
        let r = list_dirs(&mut srv);
        assert_eq!(
            r["result"]["content"][0]["text"], "hostile duplicate list_allowed_directories 1",
            "{r}"
        );
        assert!(
            wait_until(Duration::from_secs(5), || srv.worker_pids().is_empty()),
            "worker not ended after its duplicate answer"
        );
        let err = srv.stderr();
        assert_eq!(
            count(
                &err,
                "ending worker: answer to call 1, which is not in flight"
            ),
            round,
            "{err}"
        );
    }
    assert!(srv.finish().success());
}

#[test]
fn a_first_message_other_than_ready_fails_the_start_and_the_broker_serves_on() {
    let (mut srv, _d) = hostile("early");
    for _ in 0..2 {
        let t = Instant::now();
        let r = list_dirs(&mut srv);
        assert_eq!(r["error"]["code"], -32603, "{r}");
        assert_eq!(
            r["error"]["message"], "The tool sandbox could not be started (see the server log)",
            "{r}"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(wait_until(Duration::from_secs(5), || srv
            .worker_pids()
            .is_empty()));
        assert_eq!(srv.result("ping", json!({})), json!({}));
    }
    assert!(
        srv.stderr().contains("unexpected first message"),
        "{}",
        srv.stderr()
    );
    assert!(srv.finish().success());
}

#[test]
fn answers_out_of_order_are_matched_by_id() {
    let (mut srv, _d) = hostile("reverse");
    for id in [10, 11] {
        srv.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "list_allowed_directories", "arguments": {}}}));
    }
    // The worker answers the second call first; each response carries its own call's answer.
    let first = srv.recv();
    let second = srv.recv();
    assert_eq!(first["id"], 11, "{first}");
    assert_eq!(second["id"], 10, "{second}");
    assert_eq!(
        first["result"]["content"][0]["text"],
        "hostile reverse list_allowed_directories 2"
    );
    assert_eq!(
        second["result"]["content"][0]["text"],
        "hostile reverse list_allowed_directories 1"
    );
    // A legal order does not end the worker: one worker served both.
    assert_eq!(srv.worker_pids().len(), 1);
    let err = srv.stderr();
    assert_eq!(count(&err, "worker confined and ready"), 1, "{err}");
    assert!(!err.contains("ending worker"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The audit log on a full disk
// ---------------------------------------------------------------------------------------

#[test]
fn a_full_audit_disk_refuses_requests_and_dispatches_nothing() {
    let fx = Fx::new(Mode::Root, "exec = [\"touch\"]");
    let mnt = fx.top.join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs", s(&mnt)])
        .status()
        .is_ok_and(|st| st.success());
    if !require(ok, "a tmpfs mount", "mounting needs root") {
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    let log = mnt.join("audit.jsonl");
    let mut srv = Server::start(&["--config", s(&fx.cfg), "--audit-log", s(&log)]);
    srv.initialize();
    const REFUSED: &str = "The audit log cannot be written; the request was refused";
    let mut served = 0;
    let refused = loop {
        let r = srv.request(
            "tools/call",
            json!({"name": "read_text_file", "arguments": {"path": "a.txt"}}),
        );
        if r.get("error").is_some() {
            break r;
        }
        assert_eq!(r["result"]["content"][0]["text"], "alpha", "{r}");
        served += 1;
        assert!(served < 2000, "the 64 KiB log never filled");
    };
    assert_eq!(refused["error"]["code"], -32603, "{refused}");
    assert_eq!(refused["error"]["message"], REFUSED);
    assert!(served > 0);
    // From now on nothing reaches a worker: neither a write, nor a command.
    let w = fx.root.join("written.txt");
    let t = fx.root.join("touched");
    for (name, args) in [
        ("write_file", json!({"path": s(&w), "content": "x"})),
        ("run_command", json!({"command": "touch", "args": [s(&t)]})),
        ("read_text_file", json!({"path": "a.txt"})),
    ] {
        let r = srv.request("tools/call", json!({"name": name, "arguments": args}));
        assert_eq!(r["error"]["message"], REFUSED, "{name}: {r}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !w.exists() && !t.exists(),
        "a call was dispatched after the log failed"
    );
    assert!(
        srv.stderr().contains("AUDIT LOG FAILURE"),
        "{}",
        srv.stderr()
    );
    drop(srv);
    audit_verify(&log);
}

// ---------------------------------------------------------------------------------------
// Clients that vanish mid-call
// ---------------------------------------------------------------------------------------

#[test]
fn a_stdio_client_that_vanishes_mid_call_leaves_nothing_behind() {
    let fx = Fx::new(Mode::Root, "exec = [\"sleep\"]");
    let mut child = Command::new(mcpd_bin())
        .args(["serve", "--stdio"])
        .args(fx.args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "0"}}});
    let msgs = [
        init,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        call_msg(2, "run_command", json!({"command": "sleep", "args": ["3"]})),
    ];
    for m in msgs {
        writeln!(stdin, "{m}").unwrap();
    }
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap(); // the initialize response has started
    let broker = child.id() as i32;
    let mut serving = None;
    assert!(wait_until(Duration::from_secs(10), || {
        serving = children_of(broker).first().copied().and_then(serving_pid);
        serving.is_some()
    }));
    let serving = serving.unwrap();
    command_running(serving);
    let procs = snapshot(&descendants(broker));
    // The client goes away: both pipes close.
    drop(stdin);
    drop(stdout);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "mcpd did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.code().is_some(),
        "mcpd ended by a signal: {status:?}"
    );
    all_gone(&procs);
    audit_verify(&fx.log);
}

#[test]
fn an_http_client_that_vanishes_mid_call_leaks_no_process_and_no_fd() {
    let fx = Fx::new(Mode::Root, "exec = [\"sleep\"]");
    let srv = http(&fx);
    let broker = srv.child.id() as i32;
    let sid = srv.initialize();
    reads_alpha(&srv, &sid, 2);
    let serving = http_serving(&srv);
    std::thread::sleep(Duration::from_millis(200));
    let fds = fd_count(broker);
    for id in 10..15 {
        let mut st = open_call(
            &srv,
            &sid,
            &call_msg(
                id,
                "run_command",
                json!({"command": "sleep", "args": ["30"]}),
            ),
        );
        let mut seen = String::new();
        read_until(&mut st, &mut seen, "notifications/progress");
        let sleep = snapshot(&[command_running(serving)]);
        drop(st);
        // The dropped connection cancels the call: the command's group is killed.
        all_gone(&sleep);
    }
    assert!(
        wait_until(Duration::from_secs(5), || fd_count(broker) <= fds),
        "broker fds {} > {fds} before",
        fd_count(broker)
    );
    // A killed command counts as gone once it is a zombie: its reaping may follow a moment
    // later, and must.
    assert!(
        wait_until(Duration::from_secs(5), || zombies_of(broker).is_empty()
            && zombies_of(serving).is_empty()),
        "zombies left: broker {:?}, worker {:?}",
        zombies_of(broker),
        zombies_of(serving)
    );
    assert!(alive(serving), "the session and its worker live on");
    // The session still serves; ending it reaps its worker.
    reads_alpha(&srv, &sid, 20);
    let del = srv.request(
        "DELETE",
        &[
            ("Mcp-Session-Id", &sid),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        b"",
    );
    assert!(del.status < 300, "{}", del.status);
    assert!(wait_until(Duration::from_secs(5), || descendants(broker).is_empty()));
    assert!(zombies_of(broker).is_empty());
    assert!(wait_until(Duration::from_secs(5), || fd_count(broker) < fds));
}
