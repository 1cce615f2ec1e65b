//! Streamable HTTP (session era) end to end: the real `mcpd serve --http`, raw HTTP/1.1 from the
//! test so that every header can be wrong on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mcpd_e2e::http::{read_head, HttpServer};
use mcpd_e2e::{alive, children_of, wait_until};
use serde_json::{json, Value};

struct Dirs {
    _top: tempfile::TempDir,
    root: PathBuf,
}

fn dirs() -> Dirs {
    let top = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(top.path()).unwrap().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "hello over http\n").unwrap();
    Dirs { _top: top, root }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const JSON: (&str, &str) = ("Content-Type", "application/json");
const ACCEPT: (&str, &str) = ("Accept", "application/json, text/event-stream");

#[test]
fn session_lifecycle_json_and_sse() {
    let d = dirs();
    let srv = HttpServer::start(&["--allow-read", s(&d.root), "--allow-exec", "python3"]);
    let sid = srv.initialize();
    assert_eq!(sid.len(), 32);
    assert!(sid.bytes().all(|b| b.is_ascii_hexdigit()), "{sid}");
    // A plain request: one JSON response.
    let r = srv.post(
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let names: Vec<String> = r.json()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"read_text_file".to_string()));
    assert_eq!(
        srv.rpc(&sid, 3, "ping", json!({})),
        json!({"jsonrpc": "2.0", "id": 3, "result": {}})
    );
    // A call answered at once: one JSON body.
    let r = srv.post(
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
            "name": "read_text_file", "arguments": {"path": s(&d.root.join("hello.txt"))}}}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["id"], 4);
    assert_eq!(
        r.json()["result"]["content"][0]["text"],
        "hello over http\n"
    );
    // A call still running after the JSON window answers on an SSE stream: the priming event
    // (id, retry, empty data) first.
    let r = srv.post(
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {
            "name": "run_command", "arguments": {"command": "python3", "args": ["-c", "import time; time.sleep(0.4); print('slow')"]}}}),
    );
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(body.starts_with("id: "), "{body}");
    assert!(body.contains("retry: 1000\ndata: \n\n"), "{body}");
    let data = r.sse_data();
    assert_eq!(data[0], "");
    let resp: Value = serde_json::from_str(&data[1]).unwrap();
    assert_eq!(resp["id"], 6);
    assert_eq!(resp["result"]["structuredContent"]["stdout"], "slow\n");
    // DELETE ends the session and its worker; the id is then unknown.
    let worker = *children_of(srv.child.id() as i32).first().expect("worker");
    let del = srv.request("DELETE", &[("Mcp-Session-Id", &sid)], b"");
    assert_eq!(del.status, 200);
    assert!(wait_until(Duration::from_secs(5), || !alive(worker)));
    let r = srv.post(
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], -32001);
}

#[test]
fn progress_notifications_arrive_on_the_request_stream_before_the_result() {
    let d = dirs();
    let srv = HttpServer::start(&["--allow-read", s(&d.root), "--allow-exec", "python3"]);
    let sid = srv.initialize();
    let r = srv.post(
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
            "name": "run_command", "arguments": {"command": "python3", "args": ["-c", "import time; time.sleep(1.5); print('done')"]},
            "_meta": {"progressToken": 77}}}),
    );
    let msgs = r.messages();
    assert!(msgs.len() >= 2, "{msgs:?}");
    assert_eq!(msgs[0]["method"], "notifications/progress");
    assert_eq!(msgs[0]["params"]["progressToken"], 77); // echoed with its JSON type
    let last = msgs.last().unwrap();
    assert_eq!(last["id"], 9);
    assert_eq!(last["result"]["structuredContent"]["stdout"], "done\n");
}

#[test]
fn bad_requests_get_the_right_status() {
    let d = dirs();
    let cfg = d.root.parent().unwrap().join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nmax_message_bytes = 4096\n[clients.local]\nread = [\"{}\"]\n",
            s(&d.root)
        ),
    )
    .unwrap();
    let srv = HttpServer::start(&["--config", s(&cfg)]);
    let sid = srv.initialize();
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
    let sid_h = ("Mcp-Session-Id", sid.as_str());
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        ("no session id", vec![JSON, ACCEPT], ping.clone().into_bytes(), 400),
        ("unknown session", vec![JSON, ACCEPT, ("Mcp-Session-Id", "0123456789abcdef0123456789abcdef")], ping.clone().into_bytes(), 404),
        ("foreign Host", vec![JSON, ACCEPT, sid_h, ("Host", "evil.example.com")], ping.clone().into_bytes(), 403),
        ("foreign Origin", vec![JSON, ACCEPT, sid_h, ("Origin", "http://evil.example.com")], ping.clone().into_bytes(), 403),
        ("wrong content type", vec![("Content-Type", "text/plain"), ACCEPT, sid_h], ping.clone().into_bytes(), 415),
        ("nothing acceptable", vec![JSON, ("Accept", "text/html"), sid_h], ping.clone().into_bytes(), 406),
        ("batch", vec![JSON, ACCEPT, sid_h], format!("[{ping}]").into_bytes(), 400),
        ("invalid JSON", vec![JSON, ACCEPT, sid_h], b"{\"jsonrpc\":".to_vec(), 400),
        ("body over the limit", vec![JSON, ACCEPT, sid_h], format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{{\"pad\":\"{}\"}}}}", "x".repeat(5000)).into_bytes(), 413),
        ("unsupported protocol version", vec![JSON, ACCEPT, sid_h, ("MCP-Protocol-Version", "1999-01-01")], ping.clone().into_bytes(), 400),
        ("method not a string", vec![JSON, ACCEPT, sid_h], br#"{"jsonrpc":"2.0","id":1,"method":5}"#.to_vec(), 400),
        ("jsonrpc not 2.0", vec![JSON, ACCEPT, sid_h], br#"{"jsonrpc":"1.0","id":2,"method":"ping"}"#.to_vec(), 400),
        // Without an id an invalid message is refused all the same (its error has a null id).
        ("invalid notification", vec![JSON, ACCEPT, sid_h], br#"{"jsonrpc":"1.0","method":"notifications/initialized"}"#.to_vec(), 400),
        ("not UTF-8", vec![JSON, ACCEPT, sid_h], b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xffng\"}".to_vec(), 400),
        ("not an object", vec![JSON, ACCEPT, sid_h], b"42".to_vec(), 400),
        // What a message is, is decided before whose session it names.
        ("invalid, unknown session", vec![JSON, ACCEPT, ("Mcp-Session-Id", "0123456789abcdef0123456789abcdef")], b"[]".to_vec(), 400),
    ];
    for (what, headers, body, want) in cases {
        let r = srv.request("POST", &headers, &body);
        assert_eq!(
            r.status,
            want,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if r.status != 405 {
            let e = r.json();
            assert!(e["error"]["code"].is_i64(), "{what}: {e}");
            // An invalid request with a usable id gets its error back under that id.
            if what == "method not a string" {
                assert_eq!(e["id"], 1, "{e}");
                assert_eq!(e["error"]["code"], -32600, "{e}");
            }
            let want_code = match what {
                "invalid JSON" | "not UTF-8" => Some(-32700),
                "batch" | "not an object" | "invalid notification" | "jsonrpc not 2.0" => {
                    Some(-32600)
                }
                _ => None,
            };
            if let Some(c) = want_code {
                assert_eq!(e["error"]["code"], c, "{what}: {e}");
            }
            if what == "jsonrpc not 2.0" {
                assert_eq!(e["id"], 2, "{e}");
            }
            if what == "invalid notification" {
                assert!(e["id"].is_null(), "{e}");
            }
        }
    }
    assert_eq!(srv.request("PUT", &[], b"").status, 405);
    // The own origin is fine, as is any supported protocol version.
    let ok_origin = format!("http://{}", srv.host());
    let r = srv.request(
        "POST",
        &[
            JSON,
            ACCEPT,
            sid_h,
            ("Origin", &ok_origin),
            ("MCP-Protocol-Version", "2025-03-26"),
        ],
        ping.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // GET needs SSE in Accept; one GET stream per session.
    assert_eq!(
        srv.request("GET", &[("Accept", "application/json"), sid_h], b"")
            .status,
        406
    );
    let stream = srv.open("GET", &[("Accept", "text/event-stream"), sid_h], b"");
    let mut reader = BufReader::new(stream);
    let (status, _) = read_head(&mut reader);
    assert_eq!(status, 200);
    // (chunked transfer encoding: skip the chunk-size line)
    let mut first = String::new();
    for _ in 0..3 {
        first.clear();
        reader.read_line(&mut first).unwrap();
        if first.starts_with("id: ") {
            break;
        }
    }
    assert!(first.starts_with("id: "), "{first:?}");
    assert_eq!(
        srv.request("GET", &[("Accept", "text/event-stream"), sid_h], b"")
            .status,
        409
    );
    // A non-initialize request without a session, and notifications, are handled as such.
    let r = srv.post(
        Some(&sid),
        &json!({"jsonrpc": "2.0", "method": "notifications/whatever"}),
    );
    assert_eq!(r.status, 202);
}

#[test]
fn idle_sessions_and_their_workers_are_reaped() {
    let d = dirs();
    let srv = HttpServer::start(&["--allow-read", s(&d.root), "--http-session-idle-secs", "1"]);
    let sid = srv.initialize();
    srv.rpc(&sid, 2, "tools/list", json!({}));
    let workers = children_of(srv.child.id() as i32);
    assert_eq!(workers.len(), 1);
    assert!(
        wait_until(Duration::from_secs(10), || workers
            .iter()
            .all(|w| !alive(*w))),
        "the idle session's worker was not reaped"
    );
    let r = srv.post(
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}),
    );
    assert_eq!(r.status, 404);
    assert!(srv.stderr().contains("idle session reaped"));
}

#[test]
fn a_client_that_disconnects_mid_call_cancels_it() {
    let d = dirs();
    let srv = HttpServer::start(&["--allow-write", s(&d.root), "--allow-exec", "python3"]);
    let sid = srv.initialize();
    let body = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
        "name": "run_command", "arguments": {"command": "python3", "args": ["-c", "import os, time; open('leader.pid', 'w').write('%d\\n' % os.getpid()); time.sleep(300)"], "cwd": s(&d.root)}}})
    .to_string();
    let stream = srv.open(
        "POST",
        &[
            JSON,
            ACCEPT,
            ("Mcp-Session-Id", &sid),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        body.as_bytes(),
    );
    let pidfile = d.root.join("leader.pid");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|t| t.ends_with('\n'))
    }));
    let leader_ns: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let leader =
        mcpd_e2e::host_pid_under(srv.child.id() as i32, leader_ns).expect("leader on the host");
    assert!(alive(leader));
    drop(stream); // the client goes away
    assert!(
        wait_until(Duration::from_secs(10), || !alive(leader)),
        "the command outlived its disconnected client"
    );
    assert!(srv.stderr().contains("client went away during a request"));
    // The session itself is fine.
    assert_eq!(srv.rpc(&sid, 6, "ping", json!({}))["result"], json!({}));
}

#[test]
fn non_loopback_listening_needs_the_loud_flag() {
    let out = std::process::Command::new(mcpd_e2e::mcpd_bin())
        .args(["serve", "--http", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--insecure-non-loopback-without-auth"),
        "{err}"
    );
    let srv = HttpServer::start_with(
        &[
            "--http",
            "0.0.0.0:0",
            "--insecure-non-loopback-without-auth",
        ],
        &["--allow-read", "/tmp"],
    );
    assert!(srv.stderr().contains("unauthenticated MCP over HTTP"));
}

#[test]
fn stdio_and_http_in_one_process() {
    let d = dirs();
    let mut srv = HttpServer::start_with(
        &["--stdio", "--http", "127.0.0.1:0"],
        &["--allow-read", s(&d.root)],
    );
    let sid = srv.initialize();
    assert_eq!(srv.rpc(&sid, 2, "ping", json!({}))["result"], json!({}));
    // SIGTERM ends both cleanly.
    mcpd_e2e::signal(srv.child.id() as i32, libc::SIGTERM);
    let st = (0..500)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            srv.child.try_wait().unwrap()
        })
        .expect("mcpd did not exit on SIGTERM");
    assert!(st.success(), "{st:?}\n{}", srv.stderr());
}

fn stateless_headers<'a>(method: &'a str, name: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        JSON,
        ACCEPT,
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", method),
    ];
    if let Some(n) = name {
        h.push(("Mcp-Name", n));
    }
    h
}

fn meta(caps: Value) -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
           "io.modelcontextprotocol/clientCapabilities": caps})
}

#[test]
fn stateless_requests_are_checked_in_order_and_get_http_statuses() {
    let srv = HttpServer::conformance(&[]);
    let post = |headers: Vec<(&str, &str)>, body: Value| {
        let r = srv.request("POST", &headers, body.to_string().as_bytes());
        let j = r.json();
        (r.status, j)
    };
    let disc = |m: Value| json!({"jsonrpc": "2.0", "id": 7, "method": "server/discover", "params": {"_meta": m}});
    // The envelope first (even when headers are also wrong)...
    let (st, j) = post(
        stateless_headers("server/discover", None),
        json!({"jsonrpc": "2.0", "id": 7, "method": "server/discover", "params": {}}),
    );
    assert_eq!(
        (st, j["error"]["code"].as_i64(), j["id"].as_i64()),
        (400, Some(-32602), Some(7))
    );
    // ...then header vs envelope (-32020) before version support (-32022).
    let (st, j) = post(
        stateless_headers("server/discover", None),
        disc(
            json!({"io.modelcontextprotocol/protocolVersion": "v999", "io.modelcontextprotocol/clientCapabilities": {}}),
        ),
    );
    assert_eq!((st, j["error"]["code"].as_i64()), (400, Some(-32020)));
    let mut h = stateless_headers("server/discover", None);
    h[2] = ("MCP-Protocol-Version", "v999");
    let (st, j) = post(
        h,
        disc(
            json!({"io.modelcontextprotocol/protocolVersion": "v999", "io.modelcontextprotocol/clientCapabilities": {}}),
        ),
    );
    assert_eq!((st, j["error"]["code"].as_i64()), (400, Some(-32022)));
    assert_eq!(j["error"]["data"]["requested"], "v999");
    assert_eq!(j["error"]["data"]["supported"], json!(["2026-07-28"]));
    // Mcp-Method must match, exactly.
    let (st, j) = post(
        stateless_headers("SERVER/DISCOVER", None),
        disc(meta(json!({}))),
    );
    assert_eq!((st, j["error"]["code"].as_i64()), (400, Some(-32020)));
    let (st, j) = post(
        stateless_headers("server/discover", None),
        disc(meta(json!({}))),
    );
    assert_eq!(st, 200, "{j}");
    assert_eq!(j["result"]["resultType"], "complete");
    // An invalid message is refused as such (400, its id echoed), whatever its era.
    let (st, j) = post(
        stateless_headers("server/discover", None),
        json!({"jsonrpc": "1.0", "id": 7, "method": "server/discover", "params": {"_meta": meta(json!({}))}}),
    );
    assert_eq!(
        (st, j["error"]["code"].as_i64(), j["id"].as_i64()),
        (400, Some(-32600), Some(7))
    );
    // Session-era methods are gone: 404 + -32601.
    let (st, j) = post(
        stateless_headers("ping", None),
        json!({"jsonrpc": "2.0", "id": 8, "method": "ping", "params": {"_meta": meta(json!({}))}}),
    );
    assert_eq!((st, j["error"]["code"].as_i64()), (404, Some(-32601)));
    // A tool that needs an undeclared capability: 400 + -32021, with what is missing.
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "test_missing_capability", "arguments": {}, "_meta": meta(json!({}))}});
    let (st, j) = post(
        stateless_headers("tools/call", Some("test_missing_capability")),
        call.clone(),
    );
    assert_eq!((st, j["error"]["code"].as_i64()), (400, Some(-32021)));
    assert!(
        j["error"]["data"]["requiredCapabilities"]["sampling"].is_object(),
        "{j}"
    );
    let (st, j) = post(stateless_headers("tools/call", Some("another_tool")), call);
    assert_eq!((st, j["error"]["code"].as_i64()), (400, Some(-32020)));
    // GET and DELETE belong to sessions.
    for m in ["GET", "DELETE"] {
        let r = srv.request(
            m,
            &[
                ("Accept", "text/event-stream"),
                ("MCP-Protocol-Version", "2026-07-28"),
            ],
            b"",
        );
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("POST"));
    }
}

#[test]
fn a_tampered_request_state_is_rejected() {
    let srv = HttpServer::conformance(&[]);
    let tool = "test_input_required_result_request_state";
    let call = |extra: Value| {
        let mut params =
            json!({"name": tool, "arguments": {}, "_meta": meta(json!({"elicitation": {}}))});
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params});
        let r = srv.request(
            "POST",
            &stateless_headers("tools/call", Some(tool)),
            body.to_string().as_bytes(),
        );
        r.response_to(&json!(1))
    };
    let first = call(json!({}));
    assert_eq!(first["result"]["resultType"], "input_required", "{first}");
    let state = first["result"]["requestState"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = json!({"confirm": {"action": "accept", "content": {"ok": true}}});
    let ok = call(json!({"inputResponses": answer, "requestState": state}));
    assert!(
        ok["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("state-ok"),
        "{ok}"
    );
    // Any change to the state, or a state made for another tool, is refused.
    let mut flipped = state.clone().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    for bad in [
        format!("{state}-TAMPERED"),
        String::from_utf8(flipped).unwrap(),
        "x.y".into(),
    ] {
        let r = call(json!({"inputResponses": answer, "requestState": bad}));
        assert_eq!(r["error"]["code"], -32602, "{r}");
    }
    // With the genuine state, answers that are not an object, more than 64 of them, or more
    // than 1 MiB of JSON (the body limit is 4 MiB: this reaches the check) are refused.
    let many: serde_json::Map<String, Value> = (0..65)
        .map(|i| (format!("q{i}"), json!({"action": "decline"})))
        .collect();
    let huge = json!({"confirm": {"action": "accept", "content": {"t": "y".repeat(1100 * 1024)}}});
    for bad in [json!("accept"), Value::Object(many), huge] {
        let r = call(json!({"inputResponses": bad, "requestState": state}));
        assert_eq!(r["error"]["code"], -32602, "{}", r["error"]);
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("inputResponses must be an object")),
            "{}",
            r["error"]
        );
    }
}

/// Two instances behind a load balancer: with one `[http] state_key_file`, an input-required
/// round started on one is finished on the other; with another deployment's key, or with no
/// key file (a random key per instance), the other instance refuses the state.
#[test]
fn a_request_state_verifies_on_every_instance_sharing_the_key_file() {
    let d = dirs();
    let base = d.root.parent().unwrap();
    let key = |name: &str, byte: u8| {
        let p = base.join(name);
        std::fs::write(&p, [byte; 32]).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        p
    };
    let config = |name: &str, key: Option<&Path>| {
        let p = base.join(name);
        let http = key.map_or(String::new(), |k| {
            format!("[http]\nstate_key_file = \"{}\"\n", k.display())
        });
        std::fs::write(&p, format!("{http}[clients.local]\n")).unwrap();
        p
    };
    let shared = key("shared.key", 1);
    let foreign = key("foreign.key", 2);
    let a = HttpServer::conformance(&["--config", s(&config("a.toml", Some(&shared)))]);
    let b = HttpServer::conformance(&["--config", s(&config("b.toml", Some(&shared)))]);
    let c = HttpServer::conformance(&["--config", s(&config("c.toml", Some(&foreign)))]);
    let r = HttpServer::conformance(&["--config", s(&config("r.toml", None))]);
    let tool = "test_input_required_result_request_state";
    let call = |srv: &HttpServer, extra: Value| {
        let mut params =
            json!({"name": tool, "arguments": {}, "_meta": meta(json!({"elicitation": {}}))});
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params});
        srv.request(
            "POST",
            &stateless_headers("tools/call", Some(tool)),
            body.to_string().as_bytes(),
        )
        .response_to(&json!(1))
    };
    let first = call(&a, json!({}));
    assert_eq!(first["result"]["resultType"], "input_required", "{first}");
    let state = first["result"]["requestState"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = json!({"confirm": {"action": "accept", "content": {"ok": true}}});
    let retry = json!({"inputResponses": answer, "requestState": state});
    let on_b = call(&b, retry.clone());
    assert!(
        on_b["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .starts_with("state-ok"),
        "{on_b}"
    );
    for other in [&c, &r] {
        let refused = call(other, retry.clone());
        assert_eq!(refused["error"]["code"], -32602, "{refused}");
    }
    // A key file others may read is refused at start (a configuration error).
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(mcpd_e2e::mcpd_bin())
        .args(["check-config", "--config", s(&base.join("a.toml"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("state_key_file") && err.contains("mode 0644"),
        "{err}"
    );
}

#[test]
fn an_elicitation_the_client_never_answers_times_out() {
    let d = dirs();
    let cfg = d.root.parent().unwrap().join("mcpd.toml");
    std::fs::write(
        &cfg,
        "[server]\nclient_request_timeout_secs = 1\n[clients.local]\n",
    )
    .unwrap();
    let srv = HttpServer::conformance(&["--config", s(&cfg)]);
    let r = srv.post(
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}}, "clientInfo": {"name": "e2e", "version": "0"}}}),
    );
    let sid = r.header("mcp-session-id").unwrap().to_string();
    let started = std::time::Instant::now();
    let r = srv.post(
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "test_elicitation", "arguments": {"message": "Who?"}}}),
    );
    let msgs = r.messages();
    // The request reached the client on the call's stream...
    assert_eq!(msgs[0]["method"], "elicitation/create", "{msgs:?}");
    // ...which never answered: the tool was told, and the call ended.
    let last = msgs.last().unwrap();
    assert_eq!(last["id"], 2);
    assert_eq!(last["result"]["isError"], true);
    assert!(
        last["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("did not answer in time"),
        "{last}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A client's answer to a server request must be a JSON object of at most 1 MiB: anything else
/// reaches the tool as a failed request, never as an answer.
#[test]
fn a_client_answer_that_is_not_a_valid_result_fails_the_request() {
    let srv = HttpServer::conformance(&[]);
    let r = srv.post(
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}}, "clientInfo": {"name": "e2e", "version": "0"}}}),
    );
    let sid = r.header("mcp-session-id").unwrap().to_string();
    let huge =
        json!({"action": "accept", "content": {"username": "y".repeat(1100 * 1024), "email": "e"}});
    for (n, bad) in [json!("accept"), huge].into_iter().enumerate() {
        let id = 20 + n;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "test_elicitation", "arguments": {"message": "Who?"}}})
        .to_string();
        let stream = srv.open(
            "POST",
            &[
                JSON,
                ACCEPT,
                ("Mcp-Session-Id", &sid),
                ("MCP-Protocol-Version", "2025-11-25"),
            ],
            body.as_bytes(),
        );
        let mut reader = BufReader::new(stream);
        assert_eq!(read_head(&mut reader).0, 200);
        let mut next = || loop {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
            // The priming event has empty data.
            match line.strip_prefix("data: ").map(str::trim) {
                Some(m) if !m.is_empty() => return serde_json::from_str::<Value>(m).unwrap(),
                _ => {}
            }
        };
        let ask = next();
        assert_eq!(ask["method"], "elicitation/create", "{ask}");
        let answer = json!({"jsonrpc": "2.0", "id": ask["id"], "result": bad});
        assert_eq!(srv.post(Some(&sid), &answer).status, 202);
        let done = next();
        // Failure messages show the start only: an accepted answer echoes 1 MiB.
        let shown: String = done.to_string().chars().take(300).collect();
        assert_eq!(done["id"], id, "{shown}");
        assert_eq!(done["result"]["isError"], true, "{shown}");
        let text = done["result"]["content"][0]["text"].as_str().unwrap_or("");
        assert!(text.contains("not a valid result"), "{shown}");
    }
}

#[test]
fn a_dropped_stream_resumes_with_last_event_id() {
    let d = dirs();
    let srv = HttpServer::start(&["--allow-read", s(&d.root), "--allow-exec", "python3"]);
    let sid = srv.initialize();
    let body = json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {
        "name": "run_command", "arguments": {"command": "python3", "args": ["-c", "import time; time.sleep(1); print('resumed-ok')"]}}})
    .to_string();
    let stream = srv.open(
        "POST",
        &[
            JSON,
            ACCEPT,
            ("Mcp-Session-Id", &sid),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        body.as_bytes(),
    );
    let mut reader = BufReader::new(stream);
    let (status, _) = read_head(&mut reader);
    assert_eq!(status, 200);
    let mut last_id = None;
    for _ in 0..6 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some(v) = line.strip_prefix("id: ") {
            last_id = Some(v.trim().to_string());
            break;
        }
    }
    let last_id = last_id.expect("priming event id");
    drop(reader); // the connection drops before the result
    let r = srv.request(
        "GET",
        &[
            ("Accept", "text/event-stream"),
            ("Mcp-Session-Id", &sid),
            ("Last-Event-ID", &last_id),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let msgs = r.messages();
    let result = msgs
        .iter()
        .find(|m| m["id"] == 11)
        .expect("result replayed on the resumed stream");
    assert_eq!(
        result["result"]["structuredContent"]["stdout"],
        "resumed-ok\n"
    );
    assert!(srv.stderr().contains("stream resumed with Last-Event-ID"));
}

#[test]
fn subscriptions_listen_streams_matching_notifications() {
    let srv = HttpServer::conformance(&[]);
    let listen = json!({"jsonrpc": "2.0", "id": 42, "method": "subscriptions/listen", "params": {
        "notifications": {"toolsListChanged": true}, "_meta": meta(json!({}))}})
    .to_string();
    let stream = srv.open(
        "POST",
        &stateless_headers("subscriptions/listen", None),
        listen.as_bytes(),
    );
    let mut reader = BufReader::new(stream);
    let (status, _) = read_head(&mut reader);
    assert_eq!(status, 200);
    let mut next_data = || loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
        if let Some(d) = line.strip_prefix("data: ") {
            if !d.trim().is_empty() {
                return serde_json::from_str::<Value>(d.trim()).unwrap();
            }
        }
    };
    let ack = next_data();
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true})
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        42
    );
    for tool in ["test_trigger_prompt_change", "test_trigger_tool_change"] {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}, "_meta": meta(json!({}))}});
        let r = srv.request(
            "POST",
            &stateless_headers("tools/call", Some(tool)),
            call.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200);
    }
    // Only the tool change reaches this stream (the filter), tagged with the subscription.
    let n = next_data();
    assert_eq!(n["method"], "notifications/tools/list_changed", "{n}");
    assert_eq!(
        n["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        42
    );
}

#[test]
fn localhost_listens_on_both_loopback_addresses_with_one_set_of_sessions() {
    let d = dirs();
    let srv = HttpServer::start_with(&["--http", "localhost:0"], &["--allow-read", s(&d.root)]);
    let v4 = srv.addr;
    assert!(v4.ip().is_loopback() && v4.is_ipv4(), "{v4}");
    let log = srv.stderr();
    let v6: std::net::SocketAddr = format!("[::1]:{}", v4.port()).parse().unwrap();
    assert!(
        log.contains(&format!("listening on http://{v6}/mcp")),
        "{log}"
    );
    // A session opened over IPv4 is the same session over IPv6 (one listener, one table).
    let sid = srv.initialize();
    let r = mcpd_e2e::http::post_at(
        v6,
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["id"], 9);
}

/// `GET path` on a fresh connection with `host`: the status line's code and the body.
fn get_path(addr: std::net::SocketAddr, path: &str, method: &str, host: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// The balancer's probes: liveness and readiness, through the Host gate, without a token.
#[test]
fn health_and_readiness_answer_a_balancer() {
    let d = dirs();
    let srv = HttpServer::start(&["--allow-read", s(&d.root)]);
    let host = srv.addr.to_string();
    assert_eq!(
        get_path(srv.addr, "/healthz", "GET", &host),
        (200, "ok\n".to_string())
    );
    assert_eq!(
        get_path(srv.addr, "/readyz", "GET", &host),
        (200, "ready\n".to_string())
    );
    // Another Host: the gate's 403, as for /mcp (DNS-rebinding protection).
    assert_eq!(get_path(srv.addr, "/healthz", "GET", "evil.example").0, 403);
    // Only GET (and HEAD).
    assert_eq!(get_path(srv.addr, "/readyz", "POST", &host).0, 405);
}

/// A client may reuse a request id once it has the response. On one keep-alive connection,
/// each call is sent the moment the previous response has ended: the id must already be free
/// (the route of a request closes before its response leaves, not after). The broker unit
/// test `streams_read_to_their_end_leave_nothing_to_replay` does the same over SSE streams.
#[test]
fn an_id_is_free_again_as_soon_as_its_response_has_arrived() {
    use std::io::{Read, Write};
    let d = dirs();
    let srv = HttpServer::start(&["--allow-read", s(&d.root)]);
    let sid = srv.initialize();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "read_text_file", "arguments": {"path": d.root.join("hello.txt")}}})
    .to_string();
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-11-25\r\nMcp-Session-Id: {sid}\r\nContent-Length: {}\r\n\r\n{body}",
        srv.host(),
        body.len()
    );
    let mut w = std::net::TcpStream::connect(srv.addr).unwrap();
    w.set_nodelay(true).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(w.try_clone().unwrap());
    for n in 0..2000 {
        w.write_all(req.as_bytes()).unwrap();
        let (status, headers) = read_head(&mut r);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        // A JSON body (the call answered at once), or a chunked SSE body to its end.
        let mut text = Vec::new();
        if let Some(len) = header("content-length") {
            text.resize(len.parse().unwrap(), 0);
            r.read_exact(&mut text).unwrap();
        } else {
            assert_eq!(
                header("transfer-encoding").as_deref(),
                Some("chunked"),
                "{headers:?}"
            );
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let size = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                r.read_exact(&mut chunk).unwrap();
                if size == 0 {
                    break;
                }
                text.extend_from_slice(&chunk[..size]);
            }
        }
        let text = String::from_utf8(text).unwrap();
        assert_eq!(status, 200, "call {n}: {text}");
        assert!(text.contains("hello over http"), "call {n}: {text}");
    }
}
