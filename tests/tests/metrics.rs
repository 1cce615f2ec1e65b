//! The metrics listener end to end: the real `mcpd serve --http 127.0.0.1:0 --metrics ...`,
//! tool calls over HTTP, then `GET /metrics` parsed by the official Python Prometheus client's
//! OpenMetrics parser (`prometheus_client.openmetrics.parser`): the counters move by exactly
//! the calls made, and the exposition holds no client data. Also: no metrics listener unless
//! one is asked for, a non-loopback address refused, and the Unix-socket form.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcpd_e2e::http::HttpServer;
use mcpd_e2e::{mcpd_bin, wait_until};
use serde_json::{json, Value};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every sample: `name{label="value",...}` (labels sorted) → value.
type Samples = BTreeMap<String, f64>;

/// The official parser, as a scraper would read the exposition; a text it rejects fails here.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out["%s{%s}" % (s.name, labels)] = s.value
print(json.dumps(out))
"#;

fn parse(py: &str, text: &str) -> Samples {
    let mut child = Command::new(py)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter()
        .map(|(k, v)| (k, v.as_f64().unwrap()))
        .collect()
}

/// One HTTP/1.1 request on `stream`: status, headers (lower-case names), body.
fn http_get(
    mut stream: impl Read + Write,
    method: &str,
    path: &str,
) -> (u16, Vec<(String, String)>, String) {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Where the broker said its metrics listener is.
fn metrics_addr(srv: &HttpServer) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = srv.stderr();
        if let Some(rest) = log.split("mcpd: metrics on http://").nth(1) {
            let (addr, path) = rest.split_once('/').unwrap();
            assert!(path.starts_with("metrics\n"), "{log}");
            return addr.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no metrics listener:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scrape(py: &str, at: SocketAddr) -> (Samples, String) {
    let (status, headers, body) =
        http_get(std::net::TcpStream::connect(at).unwrap(), "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "content-type"), Some(CONTENT_TYPE));
    (parse(py, &body), body)
}

/// A sample's value, 0 when the series does not exist yet.
fn value(s: &Samples, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

fn delta(before: &Samples, after: &Samples, key: &str) -> f64 {
    value(after, key) - value(before, key)
}

/// The inodes of TCP sockets in LISTEN state (`/proc/net/tcp{,6}`, state 0A).
fn listening_inodes() -> HashSet<String> {
    let mut out = HashSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for l in text.lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" {
                out.insert(cols[9].to_string());
            }
        }
    }
    out
}

/// How many listening TCP sockets process `pid` holds.
fn listening_sockets_of(pid: u32) -> usize {
    let listening = listening_inodes();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?.to_string();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .filter(|inode| listening.contains(inode))
        .count()
}

struct Dirs {
    _top: tempfile::TempDir,
    top: PathBuf,
    root: PathBuf,
}

fn dirs() -> Dirs {
    let t = tempfile::tempdir().unwrap();
    let top = std::fs::canonicalize(t.path()).unwrap();
    let root = top.join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "hello metrics\n").unwrap();
    std::fs::write(top.join("secret.txt"), "outside\n").unwrap();
    Dirs { _top: t, top, root }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn call(srv: &HttpServer, sid: &str, id: i64, tool: &str, args: Value) -> Value {
    srv.rpc(
        sid,
        id,
        "tools/call",
        json!({"name": tool, "arguments": args}),
    )
}

#[test]
fn the_counters_move_by_exactly_the_calls_made() {
    let Some(py) = mcpd_e2e::python_prometheus() else {
        return;
    };
    let d = dirs();
    let audit = d.top.join("audit.jsonl");
    let srv = HttpServer::start(&[
        "--allow-read",
        s(&d.root),
        "--audit-log",
        s(&audit),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let at = metrics_addr(&srv);
    assert!(at.ip().is_loopback());
    // The HTTP listener and the metrics listener, nothing else.
    assert_eq!(listening_sockets_of(srv.child.id()), 2);
    let (before, _) = scrape(&py, at);
    assert_eq!(
        value(&before, "mcpd_sessions_open{transport=\"http\"}"),
        0.0
    );
    assert!(before.contains_key("mcpd_sessions_started_total{transport=\"stdio\"}"));

    let sid = srv.initialize();
    let hello = s(&d.root.join("hello.txt")).to_string();
    for id in [2, 3] {
        let r = call(&srv, &sid, id, "read_text_file", json!({"path": hello}));
        assert_eq!(r["result"]["content"][0]["text"], "hello metrics\n", "{r}");
    }
    let secret = s(&d.top.join("secret.txt")).to_string();
    let r = call(&srv, &sid, 4, "read_text_file", json!({"path": secret}));
    assert_eq!(r["result"]["isError"], true, "{r}");
    let r = call(&srv, &sid, 5, "no_such_tool_x", json!({"path": secret}));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Unknown tool"),
        "{r}"
    );

    let (after, text) = scrape(&py, at);
    let calls = |tool: &str, outcome: &str| {
        format!("mcpd_tool_calls_total{{outcome=\"{outcome}\",tool=\"{tool}\"}}")
    };
    assert_eq!(
        delta(&before, &after, &calls("read_text_file", "success")),
        2.0,
        "{text}"
    );
    assert_eq!(
        delta(&before, &after, &calls("read_text_file", "denied")),
        1.0,
        "{text}"
    );
    // A name no tool has is counted as `other`, never under the name the client sent.
    assert_eq!(
        delta(&before, &after, &calls("other", "error")),
        1.0,
        "{text}"
    );
    let total_calls: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("mcpd_tool_calls_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total_calls, 4.0, "{text}");
    assert_eq!(
        delta(
            &before,
            &after,
            "mcpd_tool_call_duration_seconds_count{tool=\"read_text_file\"}"
        ),
        3.0
    );
    assert!(
        value(
            &after,
            "mcpd_tool_call_duration_seconds_sum{tool=\"read_text_file\"}"
        ) > 0.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "mcpd_denials_total{reason=\"path_outside_scope\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "mcpd_denials_total{reason=\"unknown_tool\"}"
        ),
        1.0,
        "{text}"
    );
    let denials: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("mcpd_denials_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(denials, 2.0, "{text}");
    assert_eq!(value(&after, "mcpd_sessions_open{transport=\"http\"}"), 1.0);
    assert_eq!(
        delta(
            &before,
            &after,
            "mcpd_sessions_started_total{transport=\"http\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&after, "mcpd_workers_running{transport=\"http\"}"),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "mcpd_workers_started_total{transport=\"http\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(&before, &after, "mcpd_worker_start_seconds_count{}"),
        1.0
    );
    assert!(value(&after, "mcpd_worker_start_seconds_sum{}") > 0.0);
    assert!(after.contains_key("mcpd_audit_queue_depth{}"), "{text}");
    // Nothing a client sent, and no session id, is in the exposition.
    for private in [
        sid.as_str(),
        s(&d.root),
        "secret",
        "hello",
        "no_such_tool_x",
    ] {
        assert!(!text.contains(private), "{private} in:\n{text}");
    }

    // The audit log syncs (batch mode: within its interval); every sync is observed.
    let mut synced = after;
    assert!(
        wait_until(Duration::from_secs(10), || {
            synced = scrape(&py, at).0;
            value(&synced, "mcpd_audit_fsync_seconds_count{}") >= 1.0
        }),
        "no fdatasync observed"
    );

    // The session ends: it and its worker no longer count as open and running.
    let del = srv.request("DELETE", &[("Mcp-Session-Id", &sid)], b"");
    assert_eq!(del.status, 200);
    let mut last = Samples::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = scrape(&py, at).0;
            value(&last, "mcpd_sessions_open{transport=\"http\"}") == 0.0
                && value(&last, "mcpd_workers_running{transport=\"http\"}") == 0.0
        }),
        "{last:?}"
    );
    assert_eq!(
        value(&last, "mcpd_sessions_started_total{transport=\"http\"}"),
        1.0
    );

    // Only GET /metrics is served there.
    let (status, _, _) = http_get(std::net::TcpStream::connect(at).unwrap(), "GET", "/mcp");
    assert_eq!(status, 404);
    let (status, headers, _) = http_get(
        std::net::TcpStream::connect(at).unwrap(),
        "POST",
        "/metrics",
    );
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));

    // At most 8 connections: a 9th is closed before it is read; once they go, scrapes work.
    let idle: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(at).unwrap())
        .collect();
    // The accept loop takes them in order: once one more idle connection was accepted after
    // them, the 8 places are taken.
    std::thread::sleep(Duration::from_millis(300));
    let mut ninth = std::net::TcpStream::connect(at).unwrap();
    ninth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = write!(ninth, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut buf = Vec::new();
    let n = ninth.read_to_end(&mut buf);
    assert!(
        matches!(n, Ok(0))
            || matches!(&n, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the 9th connection was served: {n:?} {}",
        String::from_utf8_lossy(&buf)
    );
    drop(idle);
    // Until the broker has seen them close, a new connection may still be over the cap.
    let status = || -> std::io::Result<bool> {
        let mut c = std::net::TcpStream::connect(at)?;
        write!(
            c,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        c.read_to_end(&mut raw)?;
        Ok(raw.starts_with(b"HTTP/1.1 200 "))
    };
    assert!(wait_until(Duration::from_secs(5), || status().unwrap_or(false)));
}

#[test]
fn no_metrics_listener_unless_asked_for() {
    let d = dirs();
    let srv = HttpServer::start(&["--allow-read", s(&d.root)]);
    let sid = srv.initialize();
    let r = call(
        &srv,
        &sid,
        2,
        "read_text_file",
        json!({"path": s(&d.root.join("hello.txt"))}),
    );
    assert_eq!(r["result"]["content"][0]["text"], "hello metrics\n", "{r}");
    assert!(!srv.stderr().contains("metrics on"), "{}", srv.stderr());
    // Only the MCP listener.
    assert_eq!(listening_sockets_of(srv.child.id()), 1);
    // check-config says so, for a configuration without [metrics].
    let cfg = d.top.join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clients.c]\nread = [\"{}\"]\n[stdio]\nclient = \"c\"\n",
            s(&d.root)
        ),
    )
    .unwrap();
    let out = Command::new(mcpd_bin())
        .args(["check-config", "--config", s(&cfg)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("metrics: off\n"), "{text}");
}

#[test]
fn a_non_loopback_metrics_address_is_refused() {
    let d = dirs();
    // The flag.
    let out = Command::new(mcpd_bin())
        .args([
            "serve",
            "--no-config",
            "--allow-read",
            s(&d.root),
            "--http",
            "127.0.0.1:0",
            "--metrics",
            "0.0.0.0:0",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--metrics: 0.0.0.0:0 is not a loopback address"),
        "{err}"
    );
    assert!(!err.contains("metrics on"), "{err}");
    // The file, with its line.
    let cfg = d.top.join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clients.c]\nread = [\"{}\"]\n[stdio]\nclient = \"c\"\n[metrics]\nlisten = \"192.0.2.1:9464\"\n",
            s(&d.root)
        ),
    )
    .unwrap();
    let out = Command::new(mcpd_bin())
        .args(["check-config", "--config", s(&cfg)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(":6:10: metrics.listen: 192.0.2.1:9464 is not a loopback address"),
        "{err}"
    );
}

#[test]
fn metrics_on_a_unix_socket() {
    let Some(py) = mcpd_e2e::python_prometheus() else {
        return;
    };
    let d = dirs();
    let sock = d.top.join("metrics.sock");
    let srv = HttpServer::start(&[
        "--allow-read",
        s(&d.root),
        "--metrics",
        &format!("unix:{}", s(&sock)),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv.stderr().contains("mcpd: metrics on unix:") {
        assert!(Instant::now() < deadline, "{}", srv.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(srv.stderr().contains(&format!(
        "mcpd: metrics on unix:{} (GET /metrics)",
        s(&sock)
    )));
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let md = std::fs::metadata(&sock).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o600, "owner only");
    let sid = srv.initialize();
    let r = call(
        &srv,
        &sid,
        2,
        "read_text_file",
        json!({"path": s(&d.root.join("hello.txt"))}),
    );
    assert_eq!(r["result"]["content"][0]["text"], "hello metrics\n", "{r}");
    let (status, headers, body) = http_get(
        std::os::unix::net::UnixStream::connect(&sock).unwrap(),
        "GET",
        "/metrics",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "content-type"), Some(CONTENT_TYPE));
    let m = parse(&py, &body);
    assert_eq!(
        value(
            &m,
            "mcpd_tool_calls_total{outcome=\"success\",tool=\"read_text_file\"}"
        ),
        1.0,
        "{body}"
    );
    assert_eq!(value(&m, "mcpd_sessions_open{transport=\"http\"}"), 1.0);
}

/// `[metrics]` from the file, and a limit: a call over `calls_per_minute` counts as a limit hit
/// and as a `rate_limited` call of its tool.
#[test]
fn rate_limit_refusals_are_counted() {
    let Some(py) = mcpd_e2e::python_prometheus() else {
        return;
    };
    let d = dirs();
    let cfg = d.top.join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clients.c]\nread = [\"{}\"]\n[clients.c.limits]\ncalls_per_minute = 1\n[stdio]\nclient = \"c\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            s(&d.root)
        ),
    )
    .unwrap();
    let srv = HttpServer::start(&["--config", s(&cfg)]);
    let at = metrics_addr(&srv);
    let sid = srv.initialize();
    let hello = s(&d.root.join("hello.txt")).to_string();
    let r = call(&srv, &sid, 2, "read_text_file", json!({"path": hello}));
    assert_eq!(r["result"]["content"][0]["text"], "hello metrics\n", "{r}");
    // A spent rate: 429 with Retry-After (a call refused at once is a JSON answer).
    let r = srv.post(
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "read_text_file", "arguments": {"path": hello}}}),
    );
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some());
    assert!(
        String::from_utf8_lossy(&r.body).contains("Rate limit reached"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let (m, text) = scrape(&py, at);
    assert_eq!(
        value(&m, "mcpd_limit_hits_total{limit=\"calls_per_minute\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &m,
            "mcpd_tool_calls_total{outcome=\"rate_limited\",tool=\"read_text_file\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &m,
            "mcpd_tool_calls_total{outcome=\"success\",tool=\"read_text_file\"}"
        ),
        1.0,
        "{text}"
    );
}
