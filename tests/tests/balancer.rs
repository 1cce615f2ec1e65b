//! Several identical instances behind off-the-shelf load balancers: nginx (Debian package
//! `nginx-light`) runs `docs/deploy/nginx-mcpd.conf` and HAProxy (`haproxy`) runs
//! `docs/deploy/haproxy-mcpd.cfg`, both installed by tests/setup.sh, with their addresses
//! replaced, in front of two real `mcpd serve --http` instances that share the policy and the
//! `requestState` key file.
//! * Stateless (2026-07-28): discover, tool calls and an input-required round whose two halves
//!   nginx sends to different instances; then one instance is killed: calls keep succeeding
//!   through the other, and the killed instance's audit log verifies, with a record for every
//!   call it answered.
//! * Sessions (2025-11-25), behind each balancer: every session's requests reach the instance
//!   that holds it (its audit log has all of them); once that instance is killed, the session
//!   gets 404 from the other and initializes again there, while the other's sessions go on.
//! * Trusted proxies: the audit log and the per-source limit see the client's address (a
//!   loopback alias per client), not the balancer's; the balancer's own connections are not
//!   capped per address; a forged `X-Forwarded-For` from an untrusted peer is ignored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufReader;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mcpd_e2e::http::{open_from, post_from, read_head, request_at, request_from, HttpServer};
use mcpd_e2e::{audit_records_so_far, audit_verify, free_port, signal, wait_until};
use serde_json::{json, Value};

fn nginx() -> bool {
    mcpd_e2e::require_program(
        "nginx",
        "-v",
        "the load-balancer test runs the deployment's nginx configuration (Debian nginx-light)",
    )
}

fn haproxy() -> bool {
    mcpd_e2e::require_program(
        "haproxy",
        "-v",
        "the load-balancer test runs the deployment's HAProxy configuration (Debian haproxy)",
    )
}

/// A balancer (nginx or HAProxy) running the shipped configuration in a directory of its
/// own, in front of two instances.
struct Balancer {
    child: Child,
    addr: SocketAddr,
    /// What ends it (nginx: SIGQUIT, a graceful stop; HAProxy: SIGTERM).
    stop: i32,
}

/// The shipped configuration `file` (under docs/deploy) with its instance addresses
/// 127.0.0.1:8081/8082 replaced by `a` and `b` (`count` times each) and its own 127.0.0.1:8080
/// by `port`.
fn shipped(file: &str, a: SocketAddr, b: SocketAddr, port: u16, count: usize) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/deploy")
            .join(file),
    )
    .unwrap();
    let text = text
        .replace("127.0.0.1:8081", &a.to_string())
        .replace("127.0.0.1:8082", &b.to_string())
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    assert_eq!(text.matches(&a.to_string()).count(), count, "{text}");
    assert_eq!(text.matches(&b.to_string()).count(), count, "{text}");
    text
}

fn wait_listening(addr: SocketAddr, what: &str, logs: &[PathBuf]) {
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
            addr
        )
        .is_ok()),
        "{what} did not start: {}",
        logs.iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect::<String>()
    );
}

impl Balancer {
    /// nginx with the shipped site configuration.
    fn nginx(dir: &Path, port: u16, a: SocketAddr, b: SocketAddr) -> Self {
        let site = shipped("nginx-mcpd.conf", a, b, port, 3);
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n access_log {d}/access.log;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{site}\n}}\n"
        );
        let conf = if mcpd_e2e::is_root() {
            format!("user root;\n{conf}")
        } else {
            conf
        };
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(
            addr,
            "nginx",
            &[dir.join("stderr.log"), dir.join("error.log")],
        );
        Self {
            child,
            addr,
            stop: libc::SIGQUIT,
        }
    }

    /// HAProxy with the shipped configuration, in the foreground (`-db`).
    fn haproxy(dir: &Path, port: u16, a: SocketAddr, b: SocketAddr) -> Self {
        let cfg = shipped("haproxy-mcpd.cfg", a, b, port, 1);
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr, "haproxy", &[dir.join("stderr.log")]);
        Self {
            child,
            addr,
            stop: libc::SIGTERM,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        signal(self.child.id() as i32, self.stop);
        if !wait_until(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten().is_some()
        }) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Two instances, named 8081 and 8082 (the names the shipped configurations route by), that
/// share the `requestState` key and accept the balancer's address (`127.0.0.1:lb_port`) as
/// Host, with `http_extra` in their `[http]`; each with its own strict audit log.
fn instances(base: &Path, lb_port: u16, http_extra: &str) -> [(HttpServer, PathBuf); 2] {
    let key = base.join("state.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    ["8081", "8082"].map(|name| {
        let log = base.join(format!("{name}.jsonl"));
        let cfg = base.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[server]\ninstance = \"{name}\"\n[http]\nstate_key_file = \"{}\"\nallowed_hosts = [\"127.0.0.1:{lb_port}\"]\n{http_extra}\n[audit]\npath = \"{}\"\nmode = \"strict\"\n[clients.local]\n",
                key.display(),
                log.display()
            ),
        )
        .unwrap();
        (
            HttpServer::conformance(&["--config", cfg.to_str().unwrap()]),
            log,
        )
    })
}

fn balancer_dir(base: &Path) -> PathBuf {
    let d = base.join("balancer");
    std::fs::create_dir(&d).unwrap();
    d
}

fn meta(caps: Value) -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
           "io.modelcontextprotocol/clientCapabilities": caps})
}

/// One stateless request through `at`: the JSON-RPC response (JSON or SSE body).
fn stateless(at: SocketAddr, id: i64, method: &str, name: Option<&str>, params: Value) -> Value {
    let mut h = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", method),
    ];
    if let Some(n) = name {
        h.push(("Mcp-Name", n));
    }
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let r = request_at(at, "POST", &h, body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.response_to(&json!(id))
}

/// The calls of `tool` an instance recorded.
fn calls(log: &Path, tool: &str) -> usize {
    audit_records_so_far(log)
        .iter()
        .filter(|r| r["event"] == "request" && r["tool"] == tool)
        .count()
}

/// A plain tool call through `at` that must succeed.
fn simple_call(at: SocketAddr, id: i64) {
    let r = stateless(
        at,
        id,
        "tools/call",
        Some("test_simple_text"),
        json!({"name": "test_simple_text", "arguments": {}, "_meta": meta(json!({}))}),
    );
    assert!(r["result"]["content"].is_array(), "{r}");
}

#[test]
fn two_instances_behind_nginx_share_the_state_key_and_survive_one_dying() {
    if !nginx() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let lb_port = free_port();
    let [(a, log_a), (b, log_b)] = instances(&base, lb_port, "");
    let lb = Balancer::nginx(&balancer_dir(&base), lb_port, a.addr, b.addr);

    // Discovery and plain calls, spread over both instances.
    let d = stateless(
        lb.addr,
        1,
        "server/discover",
        None,
        json!({"_meta": meta(json!({}))}),
    );
    assert!(d["result"]["capabilities"].is_object(), "{d}");
    for id in 2..6 {
        simple_call(lb.addr, id);
    }
    assert!(
        wait_until(Duration::from_secs(10), || calls(
            &log_a,
            "test_simple_text"
        ) + calls(
            &log_b,
            "test_simple_text"
        ) == 4),
        "the four calls are not all recorded"
    );
    assert!(calls(&log_a, "test_simple_text") >= 1 && calls(&log_b, "test_simple_text") >= 1);

    // An input-required round: nginx alternates, so its second half reaches the other
    // instance, which verifies the state the first one sealed (the shared key file).
    let tool = "test_input_required_result_request_state";
    let params = |extra: Value| {
        let mut p =
            json!({"name": tool, "arguments": {}, "_meta": meta(json!({"elicitation": {}}))});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let first = stateless(lb.addr, 10, "tools/call", Some(tool), params(json!({})));
    assert_eq!(first["result"]["resultType"], "input_required", "{first}");
    let state = first["result"]["requestState"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = json!({"confirm": {"action": "accept", "content": {"ok": true}}});
    let done = stateless(
        lb.addr,
        11,
        "tools/call",
        Some(tool),
        params(json!({"inputResponses": answer, "requestState": state})),
    );
    assert!(
        done["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .starts_with("state-ok"),
        "{done}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || calls(&log_a, tool) == 1
            && calls(&log_b, tool) == 1),
        "the two halves of the round did not reach different instances: a {} b {}",
        calls(&log_a, tool),
        calls(&log_b, tool)
    );

    // One instance dies: every later call succeeds through the other (nginx passes a request
    // that could not reach an instance to the next one; none is resent once started).
    let answered_by_a = calls(&log_a, "test_simple_text");
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    for id in 20..26 {
        simple_call(lb.addr, id);
    }
    assert!(wait_until(Duration::from_secs(10), || calls(
        &log_b,
        "test_simple_text"
    ) >= 6));
    // Nothing the killed instance answered is missing from its log (strict mode: each record
    // was on disk before its answer left), and the log verifies.
    assert_eq!(calls(&log_a, "test_simple_text"), answered_by_a);
    audit_verify(&log_a);
    drop(b);
}

/// A loopback alias as a client's address: what a proxy sees a client connect from.
fn client(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// initialize + notifications/initialized through `lb`: the session id.
fn open_session(src: IpAddr, lb: SocketAddr) -> String {
    let r = post_from(
        src,
        lb,
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "balancer-e2e", "version": "0"}}}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sid = r.header("mcp-session-id").expect("session id").to_string();
    let n = post_from(
        src,
        lb,
        Some(&sid),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    assert_eq!(n.status, 202, "{}", String::from_utf8_lossy(&n.body));
    sid
}

/// A tools/call of `test_simple_text` in session `sid` through `lb`: its HTTP status (200
/// with a result, or 404 for a session the instance does not have).
fn session_call(src: IpAddr, lb: SocketAddr, sid: &str, id: i64) -> u16 {
    let r = post_from(
        src,
        lb,
        Some(sid),
        &json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "test_simple_text", "arguments": {}}}),
    );
    if r.status == 200 {
        let v = r.response_to(&json!(id));
        assert!(v["result"]["content"].is_array(), "{v}");
    }
    r.status
}

/// The instance (0 or 1) whose log opened session `sid`, and the tool calls each log has
/// recorded for it.
fn session_home(logs: &[PathBuf; 2], sid: &str) -> (usize, [usize; 2]) {
    let recs = logs.clone().map(|l| audit_records_so_far(&l));
    let opened: Vec<usize> = (0..2)
        .filter(|i| {
            recs[*i]
                .iter()
                .any(|r| r["event"] == "session.open" && r["session"] == sid)
        })
        .collect();
    assert_eq!(opened.len(), 1, "session {sid} opened on {opened:?}");
    let calls = [0, 1].map(|i| {
        recs[i]
            .iter()
            .filter(|r| {
                r["event"] == "request" && r["session"] == sid && r["tool"] == "test_simple_text"
            })
            .count()
    });
    (opened[0], calls)
}

/// Sessions through `lb` in front of the instances of `logs`: each session's requests all
/// reach the instance that opened it; once instance 0 is killed (`kill`), its sessions get
/// 404 and open again on instance 1, whose own sessions carry on.
fn sessions_stay_home(lb: SocketAddr, logs: &[PathBuf; 2], kill: impl FnOnce()) {
    let src = client(2);
    let sessions: Vec<String> = (0..4).map(|_| open_session(src, lb)).collect();
    for (i, sid) in sessions.iter().enumerate() {
        let id = 100 + 10 * i as i64;
        for k in 0..3 {
            assert_eq!(session_call(src, lb, sid, id + k), 200, "session {sid}");
        }
        assert!(
            sid.starts_with("8081.") || sid.starts_with("8082."),
            "the instance's name starts the id: {sid}"
        );
    }
    let mut homes = Vec::new();
    for sid in &sessions {
        let (home, calls) = session_home(logs, sid);
        assert_eq!(
            calls[home], 3,
            "every call of {sid} reached its instance: {calls:?}"
        );
        assert_eq!(calls[1 - home], 0, "{sid}: {calls:?}");
        // The name says where it lives.
        assert!(sid.starts_with(["8081.", "8082."][home]), "{sid} on {home}");
        homes.push(home);
    }
    assert!(
        homes.contains(&0) && homes.contains(&1),
        "initialize is balanced over both instances: {homes:?}"
    );
    // The sessions were opened as the client's address, not the balancer's.
    let opened: Vec<Value> = logs
        .iter()
        .flat_map(|l| audit_records_so_far(l))
        .filter(|r| r["event"] == "session.open")
        .collect();
    assert_eq!(opened.len(), 4);
    for r in &opened {
        let peer = r["peer"].as_str().unwrap_or("");
        assert!(peer.starts_with("127.0.0.2 via 127.0.0.1:"), "{r}");
    }

    kill();
    for (i, sid) in sessions.iter().enumerate() {
        let id = 500 + 10 * i as i64;
        if homes[i] == 1 {
            assert_eq!(session_call(src, lb, sid, id), 200, "{sid} lives on");
            continue;
        }
        // Its instance is gone: the other one does not know it.
        assert_eq!(session_call(src, lb, sid, id), 404, "{sid}");
        let again = open_session(src, lb);
        assert!(
            again.starts_with("8082."),
            "re-initialized on the survivor: {again}"
        );
        assert_eq!(session_call(src, lb, &again, id + 1), 200);
        let (home, calls) = session_home(logs, &again);
        assert_eq!((home, calls), (1, [0, 1]));
    }
}

#[test]
fn sessions_behind_nginx_stay_on_their_instance_and_move_when_it_dies() {
    if !nginx() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let lb_port = free_port();
    let [(a, log_a), (b, log_b)] = instances(&base, lb_port, "trusted_proxies = [\"127.0.0.1\"]");
    let lb = Balancer::nginx(&balancer_dir(&base), lb_port, a.addr, b.addr);
    let mut a = a;
    sessions_stay_home(lb.addr, &[log_a, log_b], || {
        a.child.kill().unwrap();
        a.child.wait().unwrap();
    });
    drop(b);
}

#[test]
fn sessions_behind_haproxy_stay_on_their_instance_and_move_when_it_dies() {
    if !haproxy() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let lb_port = free_port();
    let [(a, log_a), (b, log_b)] = instances(&base, lb_port, "trusted_proxies = [\"127.0.0.1\"]");
    let lb = Balancer::haproxy(&balancer_dir(&base), lb_port, a.addr, b.addr);
    // Servers start up; wait until HAProxy forwards at all (anything but its own 503).
    assert!(
        wait_until(Duration::from_secs(10), || request_at(
            lb.addr,
            "POST",
            &[("Host", "127.0.0.1")],
            b""
        )
        .status
            != 503),
        "haproxy has no server up"
    );
    let mut a = a;
    sessions_stay_home(lb.addr, &[log_a, log_b], || {
        a.child.kill().unwrap();
        a.child.wait().unwrap();
    });
    drop(b);
}

/// An SSE stream (GET) of session `sid` from `src` through `lb`, held open: its status.
fn hold_stream(src: IpAddr, lb: SocketAddr, sid: &str) -> (u16, std::net::TcpStream) {
    let s = open_from(
        src,
        lb,
        "GET",
        &[
            ("Accept", "text/event-stream"),
            ("MCP-Protocol-Version", "2025-11-25"),
            ("Mcp-Session-Id", sid),
        ],
        b"",
    );
    let mut r = BufReader::new(s.try_clone().unwrap());
    let (status, _) = read_head(&mut r);
    (status, s)
}

#[test]
fn a_trusted_proxy_names_the_client_for_the_audit_log_and_the_per_source_limit() {
    if !nginx() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let lb_port = free_port();
    // Two requests in flight per client address; the balancer itself is not capped per
    // address (it holds more than two connections to the instance below).
    let [(a, log_a), (b, _log_b)] = instances(
        &base,
        lb_port,
        "trusted_proxies = [\"127.0.0.1\"]\nmax_connections_per_ip = 2",
    );
    let lb = Balancer::nginx(&balancer_dir(&base), lb_port, a.addr, b.addr);
    // A session on instance a (8081), whose streams the map routes there.
    let sid = loop {
        let s = open_session(client(2), lb.addr);
        if s.starts_with("8081.") {
            break s;
        }
    };
    let (s1, c1) = hold_stream(client(2), lb.addr, &sid);
    assert_eq!(s1, 200);
    // The second place: a stream of a second session (one standalone stream per session).
    let sid2 = loop {
        let s = open_session(client(2), lb.addr);
        if s.starts_with("8081.") {
            break s;
        }
    };
    let (s2, c2) = hold_stream(client(2), lb.addr, &sid2);
    assert_eq!(s2, 200);
    // Third request of 127.0.0.2 while two are in flight: 429, recorded as that client.
    let r = post_from(
        client(2),
        lb.addr,
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}),
    );
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("1"));
    // Another client (127.0.0.3) is not held back by 127.0.0.2's requests.
    let other = open_session(client(3), lb.addr);
    assert!(!other.is_empty());
    // A place comes back when a stream ends.
    drop((c1, c2));
    assert!(
        wait_until(Duration::from_secs(10), || post_from(
            client(2),
            lb.addr,
            Some(&sid),
            &json!({"jsonrpc": "2.0", "id": 8, "method": "ping"}),
        )
        .status
            == 200),
        "127.0.0.2 was not let in again"
    );
    let recs = audit_records_so_far(&log_a);
    let refused: Vec<&Value> = recs
        .iter()
        .filter(|r| r["reason"] == "max_connections_per_ip")
        .collect();
    // The refusal above (and any the wait for a free place met), each recorded as the
    // client's.
    assert!(!refused.is_empty());
    for r in &refused {
        assert_eq!(r["http_status"], 429);
        assert!(
            r["peer"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.2 via 127.0.0.1:"),
            "{r}"
        );
    }

    // Directly, from a peer that is not a trusted proxy: its forged header is ignored.
    let forged = request_from(
        client(4),
        a.addr,
        "POST",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("X-Forwarded-For", "192.0.2.99"),
        ],
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "direct", "version": "0"}}})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(forged.status, 200);
    let sid = forged.header("mcp-session-id").unwrap().to_string();
    let open = audit_records_so_far(&log_a)
        .into_iter()
        .find(|r| r["event"] == "session.open" && r["session"] == sid.as_str())
        .unwrap();
    let peer = open["peer"].as_str().unwrap();
    assert!(peer.starts_with("127.0.0.4:"), "{open}");
    assert!(!peer.contains("192.0.2.99"), "{open}");
    drop(lb);
}
