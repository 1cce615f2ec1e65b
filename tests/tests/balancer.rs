//! Several identical instances behind an off-the-shelf load balancer: nginx (Debian package
//! `nginx-light`, installed by tests/setup.sh) runs `docs/deploy/nginx-mcpd.conf`, with its
//! ports replaced, in front of two real `mcpd serve --http` instances that share the policy and
//! the `requestState` key file. A stateless client (2026-07-28) runs discover, tool calls and
//! an input-required round whose two halves nginx sends to different instances; then one
//! instance is killed: calls keep succeeding through the other, and the killed instance's
//! audit log verifies, with a record for every call it answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mcpd_e2e::http::{request_at, HttpServer};
use mcpd_e2e::{audit_records_so_far, audit_verify, free_port, signal, wait_until};
use serde_json::{json, Value};

fn nginx() -> bool {
    mcpd_e2e::require_program(
        "nginx",
        "-v",
        "the load-balancer test runs the deployment's nginx configuration (Debian nginx-light)",
    )
}

/// nginx with the shipped site configuration in `dir`, in front of `a` and `b`.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    fn start(dir: &Path, port: u16, a: SocketAddr, b: SocketAddr) -> Self {
        let site = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/deploy/nginx-mcpd.conf"
        ))
        .unwrap();
        let site = site
            .replace("127.0.0.1:8081", &a.to_string())
            .replace("127.0.0.1:8082", &b.to_string())
            .replace("listen 127.0.0.1:8080", &format!("listen 127.0.0.1:{port}"));
        assert_eq!(site.matches(&a.to_string()).count(), 1, "{site}");
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
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
                addr
            )
            .is_ok()),
            "nginx did not start: {}{}",
            std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        Self { child, addr }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        signal(self.child.id() as i32, libc::SIGQUIT);
        if !wait_until(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten().is_some()
        }) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
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
    let key = base.join("state.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // The balancer's address is the public one: every instance accepts it as Host.
    let lb_port = free_port();
    let instance = |name: &str| {
        let log = base.join(format!("{name}.jsonl"));
        let cfg = base.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[http]\nstate_key_file = \"{}\"\nallowed_hosts = [\"127.0.0.1:{lb_port}\"]\n[audit]\npath = \"{}\"\nmode = \"strict\"\n[clients.local]\n",
                key.display(),
                log.display()
            ),
        )
        .unwrap();
        (
            HttpServer::conformance(&["--config", cfg.to_str().unwrap()]),
            log,
        )
    };
    let (a, log_a) = instance("a");
    let (b, log_b) = instance("b");
    let ngx_dir = base.join("nginx");
    std::fs::create_dir(&ngx_dir).unwrap();
    let lb = Nginx::start(&ngx_dir, lb_port, a.addr, b.addr);

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
