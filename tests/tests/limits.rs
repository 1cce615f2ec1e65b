//! Resource limits of what a client runs: fork bomb, memory bomb, CPU spin, fd exhaustion.
//! Each is stopped within its limit, the client gets a clear error, and the broker and a
//! second, concurrent client session on the same broker (over HTTP, its own worker) keep working.
//!
//! Process-count and memory limits need a per-worker cgroup (v2 delegated, or v1 pids+memory
//! hierarchies as on this machine); the broker logs which one it uses, and these tests print it.
//! Without one (and as root, where RLIMIT_NPROC does not apply) a fork bomb would not be
//! contained: that test then skips LOUDLY instead of endangering the host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use mcpd_e2e::{wait_until, Server};
use serde_json::{json, Value};

struct Dirs {
    _top: tempfile::TempDir,
    root: PathBuf,
}

fn dirs() -> Dirs {
    let top = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(top.path()).unwrap().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("inside.txt"), "inside\n").unwrap();
    Dirs { _top: top, root }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const LIMITS: &str = r#"
[clients.local.limits]
max_processes = 48
memory_bytes = 268435456
cpu_seconds = 2
max_open_files = 64
"#;

fn start(d: &Dirs) -> Server {
    let cfg = d.root.parent().unwrap().join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clients.local]\nwrite = [\"{}\"]\nexec = [\"sh\", \"python3\", \"sleep\"]\nshell = true\n{LIMITS}",
            s(&d.root)
        ),
    )
    .unwrap();
    // stdio for the misbehaving session, and HTTP on the same broker for a second, concurrent
    // session (its own worker, its own cgroup).
    let mut srv = Server::start(&["--config", s(&cfg), "--http", "127.0.0.1:0"]);
    srv.initialize();
    srv
}

/// Which cgroup layout the broker uses (from its log), if any.
fn cgroup_in_use(srv: &Server) -> Option<String> {
    assert!(wait_until(Duration::from_secs(5), || srv
        .stderr()
        .contains("worker limits:")));
    let log = srv.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("worker limits:"))?
        .to_string();
    (!line.contains("no usable cgroup")).then_some(line)
}

fn structured(r: &Value) -> &Value {
    &r["structuredContent"]
}

/// The HTTP address of the broker (it listens beside stdio).
fn http_addr(srv: &Server) -> std::net::SocketAddr {
    assert!(wait_until(Duration::from_secs(10), || srv
        .stderr()
        .contains("listening on http://")));
    let log = srv.stderr();
    let rest = log.split("listening on http://").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// One POST to the broker's /mcp: the JSON-RPC response and the session id header.
fn post(addr: std::net::SocketAddr, sid: Option<&str>, msg: &Value) -> (Value, Option<String>) {
    let r = mcpd_e2e::http::post_at(addr, sid, msg);
    (
        r.response_to(&msg["id"]),
        r.header("mcp-session-id").map(str::to_string),
    )
}

/// A second client session on the same broker (over HTTP) that runs calls while the first one
/// misbehaves; returns how many calls succeeded.
fn neighbour(
    d: &Dirs,
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<usize> {
    let root = d.root.clone();
    thread::spawn(move || {
        let (_, sid) = post(
            addr,
            None,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "neighbour", "version": "0"}}}),
        );
        let sid = sid.expect("session id");
        let mut ok = 0;
        let mut id = 2;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            id += 1;
            let (r, _) = post(
                addr,
                Some(&sid),
                &json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
                    "name": "read_text_file", "arguments": {"path": s(&root.join("inside.txt"))}}}),
            );
            let t = r["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert_eq!(t, "inside\n", "neighbour failed: {r}");
            ok += 1;
            thread::sleep(Duration::from_millis(50));
        }
        ok
    })
}

fn still_serving(srv: &mut Server, d: &Dirs) {
    assert_eq!(srv.result("ping", json!({})), json!({}));
    let (t, err) = srv.call_text(
        "read_text_file",
        json!({"path": s(&d.root.join("inside.txt"))}),
    );
    assert!(!err, "{t}");
    // And the client can still run things after its limit was hit.
    let r = srv.call(
        "run_command",
        json!({"command": "sh", "args": ["-c", "echo alive"]}),
    );
    assert_eq!(structured(&r)["stdout"], "alive\n", "{r}");
}

fn with_neighbour(d: &Dirs, addr: std::net::SocketAddr, f: impl FnOnce()) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let n = neighbour(d, addr, stop.clone());
    f();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls = n.join().expect("the neighbouring session failed");
    assert!(calls > 0, "the neighbouring session made no progress");
}

#[test]
fn fork_bomb_is_contained() {
    let d = dirs();
    let mut srv = start(&d);
    let Some(cg) = cgroup_in_use(&srv) else {
        mcpd_e2e::require(
            false,
            "a pids cgroup",
            "a fork bomb cannot be contained by rlimits as root",
        );
        return;
    };
    eprintln!("fork_bomb_is_contained exercised: {cg}");
    with_neighbour(&d, http_addr(&srv), || {
        let started = Instant::now();
        let r = srv.call(
            "run_command",
            json!({"command": "b() { b | b & }; b; sleep 3; echo done", "shell": true, "timeout_secs": 6}),
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        // The shell reports the refused forks; the limit held (the call returned, and the
        // whole group was killed at its end).
        let err = structured(&r)["stderr"].as_str().unwrap().to_string();
        assert!(err.contains("Cannot fork"), "{r}");
    });
    still_serving(&mut srv, &d);
}

#[test]
fn memory_bomb_is_stopped() {
    let d = dirs();
    let mut srv = start(&d);
    let cg = cgroup_in_use(&srv);
    eprintln!(
        "memory_bomb_is_stopped exercised: {}",
        cg.as_deref().unwrap_or("NO CGROUP: RLIMIT_AS is not set by default, so only the policy's address_space limit would apply")
    );
    if !mcpd_e2e::require(cg.is_some(), "a cgroup memory controller", "none in use") {
        return;
    }
    with_neighbour(&d, http_addr(&srv), || {
        let r = srv.call(
            "run_command",
            json!({"command": "python3", "args": ["-c", "x = []\nwhile True: x.append(b'x' * (16 << 20))"], "timeout_secs": 30}),
        );
        assert_eq!(r["isError"], true, "{r}");
        let sc = structured(&r);
        // Killed by the cgroup OOM killer (SIGKILL) or refused (MemoryError): either way stopped.
        assert!(
            sc["signal"] == "SIGKILL" || sc["stderr"].as_str().unwrap().contains("MemoryError"),
            "{r}"
        );
    });
    still_serving(&mut srv, &d);
}

#[test]
fn cpu_spin_is_stopped_by_its_cpu_limit() {
    let d = dirs();
    let mut srv = start(&d);
    with_neighbour(&d, http_addr(&srv), || {
        let started = Instant::now();
        let r = srv.call(
            "run_command",
            json!({"command": "python3", "args": ["-c", "while True: pass"], "timeout_secs": 60}),
        );
        // RLIMIT_CPU = 2 s: SIGXCPU long before the 60 s timeout.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(structured(&r)["signal"], "SIGXCPU", "{r}");
        assert!(r["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Killed by SIGXCPU"));
    });
    still_serving(&mut srv, &d);
}

#[test]
fn fd_exhaustion_is_refused() {
    let d = dirs();
    let mut srv = start(&d);
    with_neighbour(&d, http_addr(&srv), || {
        let r = srv.call(
            "run_command",
            json!({"command": "python3", "args": ["-c", "import os\nfds = []\ntry:\n    while True: fds.append(os.open('inside.txt', os.O_RDONLY))\nexcept OSError as e:\n    print(len(fds), e.strerror)"]}),
        );
        let out = structured(&r)["stdout"].as_str().unwrap().to_string();
        let (n, why) = out.trim().split_once(' ').unwrap();
        assert!(n.parse::<usize>().unwrap() < 64, "{out}");
        assert_eq!(why, "Too many open files");
    });
    still_serving(&mut srv, &d);
}

#[test]
fn cgroups_of_a_killed_broker_are_removed_by_the_next_one() {
    let d = dirs();
    let mut srv = start(&d);
    let Some(cg) = cgroup_in_use(&srv) else {
        mcpd_e2e::require(false, "a cgroup", "none in use");
        return;
    };
    eprintln!("exercised: {cg}");
    srv.tool_names(); // the worker (and its group) exists
    let pid = srv.child.id();
    let groups = || -> Vec<String> {
        std::fs::read_dir("/sys/fs/cgroup/pids")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.starts_with(&format!("mcpd-{pid}-")))
                    .collect()
            })
            .unwrap_or_default()
    };
    let v1_pids = std::path::Path::new("/sys/fs/cgroup/pids").is_dir();
    if !mcpd_e2e::require(v1_pids, "a v1 pids hierarchy", "no /sys/fs/cgroup/pids") {
        return;
    }
    assert_eq!(groups().len(), 1, "the worker's group");
    srv.child.kill().unwrap(); // no cleanup possible
    srv.child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }));
    assert_eq!(groups().len(), 1, "left behind by the killed broker");
    let next = start(&d);
    assert!(
        wait_until(Duration::from_secs(10), || groups().is_empty()),
        "not reaped"
    );
    drop(next);
}
