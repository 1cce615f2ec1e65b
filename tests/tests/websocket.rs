//! The WebSocket transport (`GET /mcp/ws`, subprotocol `mcp`) end to end: the real `mcpd
//! serve --http` and a real WebSocket client (tungstenite) over ws:// and wss:// (rcgen
//! certificates, a JWT bearer token): the session era (initialize, tools/list, a read in the
//! client's root, a denied read, a parse error), a sampling round trip on the same socket,
//! the refusals before the upgrade (foreign Origin 403, no token 401, no subprotocol 400) and
//! after it (binary frame 1003, an oversized frame header 1009 with no payload ever sent, idle
//! 1000, broker stop 1001), the session closed and its worker reaped when the client closes,
//! and the audit records (transport `websocket`, principal, authentication method).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcpd_e2e::http::HttpServer;
use mcpd_e2e::jwt::Key;
use mcpd_e2e::tls::{client_config, Ca};
use mcpd_e2e::{alive, audit_records_so_far, children_of, signal, wait_until};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The client's side of one socket.
struct Ws<S: Read + Write>(WebSocket<S>);

/// What the upgrade request carries besides the required headers.
#[derive(Default)]
struct Opts<'a> {
    token: Option<&'a str>,
    origin: Option<&'a str>,
    no_subprotocol: bool,
}

/// The handshake on `stream` to `url`; the server's HTTP refusal (status) on failure.
fn handshake<S: Read + Write>(
    stream: S,
    url: &str,
    o: &Opts<'_>,
) -> Result<(Ws<S>, tungstenite::handshake::client::Response), u16> {
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    if !o.no_subprotocol {
        h.insert("Sec-WebSocket-Protocol", "mcp".parse().unwrap());
    }
    if let Some(t) = o.token {
        h.insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    if let Some(or) = o.origin {
        h.insert("Origin", or.parse().unwrap());
    }
    match tungstenite::client(req, stream) {
        Ok((ws, resp)) => Ok((Ws(ws), resp)),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

fn tcp(srv: &HttpServer) -> TcpStream {
    let t = TcpStream::connect(srv.addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    t
}

fn ws_url(srv: &HttpServer) -> String {
    format!("ws://{}/mcp/ws", srv.addr)
}

fn connect(srv: &HttpServer) -> Ws<TcpStream> {
    let (ws, resp) = handshake(tcp(srv), &ws_url(srv), &Opts::default()).unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mcp"),
        "the server selects the mcp subprotocol"
    );
    ws
}

impl<S: Read + Write> Ws<S> {
    fn send(&mut self, v: &Value) {
        self.0.send(Message::text(v.to_string())).unwrap();
    }

    /// The next JSON-RPC message (Pings are answered by tungstenite while reading).
    fn recv(&mut self) -> Value {
        loop {
            match self.0.read().unwrap() {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The response to request `id`; `on_request` answers server→client requests met on the
    /// way (and notifications are skipped).
    fn response(&mut self, id: i64, mut on_request: impl FnMut(&Value) -> Value) -> Value {
        loop {
            let m = self.recv();
            if m["id"] == json!(id) && m.get("method").is_none() {
                return m;
            }
            if m.get("method").is_some() && m.get("id").is_some() {
                let answer = on_request(&m);
                self.send(&answer);
            }
        }
    }

    fn request(&mut self, id: i64, method: &str, params: Value) -> Value {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.response(id, |m| {
            json!({"jsonrpc": "2.0", "id": m["id"], "error": {"code": -32601, "message": "not here"}})
        })
    }

    fn initialize(&mut self, capabilities: Value) -> Value {
        let r = self.request(
            1,
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": capabilities,
                   "clientInfo": {"name": "ws-e2e", "version": "0"}}),
        );
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        r
    }

    /// Read until the server's Close; its code and reason.
    fn closed(&mut self) -> (CloseCode, String) {
        loop {
            match self.0.read() {
                Ok(Message::Close(Some(f))) => return (f.code, f.reason.to_string()),
                Ok(Message::Close(None)) => panic!("a Close without a code"),
                Ok(_) => {}
                Err(e) => panic!("the socket ended without a Close: {e}"),
            }
        }
    }
}

struct Dirs {
    _top: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    log: PathBuf,
}

fn dirs() -> Dirs {
    let top = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(top.path()).unwrap();
    let (root, outside, logdir) = (base.join("root"), base.join("outside"), base.join("log"));
    for d in [&root, &outside, &logdir] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(root.join("hello.txt"), "hello over a websocket\n").unwrap();
    std::fs::write(outside.join("secret.txt"), "not for the client\n").unwrap();
    Dirs {
        _top: top,
        root,
        outside,
        log: logdir.join("audit.jsonl"),
    }
}

fn audited(log: &Path, f: impl Fn(&Value) -> bool) -> bool {
    wait_until(Duration::from_secs(10), || {
        audit_records_so_far(log).iter().any(&f)
    })
}

fn text_of(r: &Value) -> String {
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_session_era_runs_over_ws_and_closing_the_socket_reaps_the_worker() {
    let d = dirs();
    let srv = HttpServer::start(&["--allow-read", s(&d.root), "--audit-log", s(&d.log)]);
    let mut ws = connect(&srv);
    let init = ws.initialize(json!({}));
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25", "{init}");
    let tools = ws.request(2, "tools/list", json!({}));
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"read_text_file"), "{tools}");
    let read = ws.request(
        3,
        "tools/call",
        json!({"name": "read_text_file", "arguments": {"path": s(&d.root.join("hello.txt"))}}),
    );
    assert_eq!(text_of(&read), "hello over a websocket\n", "{read}");
    // Outside the client's root: denied (a JSON-RPC error or an error result), nothing read.
    let denied = ws.request(
        4,
        "tools/call",
        json!({"name": "read_text_file", "arguments": {"path": s(&d.outside.join("secret.txt"))}}),
    );
    assert!(
        denied.get("error").is_some() || denied["result"]["isError"] == true,
        "{denied}"
    );
    assert!(
        !denied.to_string().contains("not for the client"),
        "{denied}"
    );
    // Invalid JSON in a text frame: a parse error reply, and the socket stays open.
    ws.0.send(Message::text("{not json")).unwrap();
    let e = ws.recv();
    assert_eq!(e["error"]["code"], -32700, "{e}");
    assert_eq!(ws.request(5, "ping", json!({}))["result"], json!({}));
    // The session's worker runs under the broker; closing the socket ends the session.
    let workers = children_of(srv.child.id() as i32);
    assert_eq!(workers.len(), 1, "one worker for the socket's session");
    ws.0.close(None).unwrap();
    // Read until the server answers the Close (or the connection ends).
    while ws.0.read().is_ok() {}
    assert!(
        wait_until(Duration::from_secs(10), || workers
            .iter()
            .all(|w| !alive(*w))),
        "the socket's worker was not reaped"
    );
    let records = audit_records_so_far(&d.log);
    let open = records
        .iter()
        .find(|r| r["event"] == "session.open")
        .expect("session.open");
    assert_eq!(open["transport"], "websocket", "{open}");
    let sid = open["session"].clone();
    let principal = open["principal"].clone();
    assert!(principal.is_string());
    assert!(
        records.iter().any(|r| r["event"] == "auth.success"
            && r["session"] == sid
            && r["transport"] == "websocket"
            && r["method"].is_string()),
        "no auth.success with the method"
    );
    assert!(records
        .iter()
        .any(|r| r["event"] == "request" && r["session"] == sid && r["principal"] == principal));
    assert!(
        audited(&d.log, |r| r["event"] == "session.close"
            && r["session"] == sid),
        "no session.close for the socket's session"
    );
    mcpd_e2e::audit_verify(&d.log);
}

#[test]
fn a_sampling_request_goes_to_the_client_over_the_same_socket() {
    let srv = HttpServer::conformance(&[]);
    let mut ws = connect(&srv);
    ws.initialize(json!({"sampling": {}}));
    ws.send(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "test_sampling", "arguments": {"prompt": "The capital of France?"}}}));
    let mut asked = Vec::new();
    let r = ws.response(7, |m| {
        asked.push(m.clone());
        json!({"jsonrpc": "2.0", "id": m["id"], "result": {
            "role": "assistant", "content": {"type": "text", "text": "Paris"},
            "model": "ws-e2e-model", "stopReason": "endTurn"}})
    });
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["method"], "sampling/createMessage");
    assert_eq!(
        asked[0]["params"]["messages"][0]["content"]["text"],
        "The capital of France?"
    );
    assert_eq!(text_of(&r), "LLM response: Paris", "{r}");
}

const ISS: &str = "https://idp.example.test";
const AUD: &str = "https://mcp.example.test/mcp";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn wss_with_a_bearer_token_and_a_refusal_without_one() {
    let d = dirs();
    let base = d.root.parent().unwrap().to_path_buf();
    let ca = Ca::new("mcpd ws test CA");
    let (cert, key) = ca.server(1).write(&base, "server");
    let k = Key::new("k1");
    let jwks = base.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [k.jwk()]}).to_string()).unwrap();
    let cfg = base.join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[auth.jwt]
issuer = "{ISS}"
audience = "{AUD}"
jwks = "{jwks}"
[audit]
path = "{log}"
[clients.alice]
read = ["{root}"]
[clients.alice.identity]
jwt_sub = ["alice"]
[http]
listen = "127.0.0.1:0"
[http.tls]
cert = "{cert}"
key = "{key}"
"#,
            jwks = s(&jwks),
            log = s(&d.log),
            root = s(&d.root),
            cert = s(&cert),
            key = s(&key),
        ),
    )
    .unwrap();
    let srv = HttpServer::start_with(&["--config", s(&cfg)], &[]);
    let tls = client_config(&ca.der, None, &[&rustls::version::TLS13]);
    let url = format!("wss://localhost:{}/mcp/ws", srv.addr.port());
    let tls_stream = || {
        let t = tcp(&srv);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(tls.clone(), name).unwrap();
        rustls::StreamOwned::new(conn, t)
    };
    // No token: 401, never upgraded, audited.
    let refused = handshake(tls_stream(), &url, &Opts::default()).err();
    assert_eq!(refused, Some(401));
    assert!(audited(&d.log, |r| r["event"] == "auth.failure"
        && r["method"] == "jwt-bearer"
        && r["reason"] == "missing_token"
        && r["http_status"] == 401));
    let token =
        k.sign(&json!({"iss": ISS, "aud": AUD, "sub": "alice", "iat": now(), "exp": now() + 600}));
    let (mut ws, resp) = handshake(
        tls_stream(),
        &url,
        &Opts {
            token: Some(&token),
            ..Opts::default()
        },
    )
    .unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    ws.initialize(json!({}));
    let read = ws.request(
        2,
        "tools/call",
        json!({"name": "read_text_file", "arguments": {"path": s(&d.root.join("hello.txt"))}}),
    );
    assert_eq!(text_of(&read), "hello over a websocket\n", "{read}");
    ws.0.close(None).unwrap();
    while ws.0.read().is_ok() {}
    assert!(audited(&d.log, |r| r["event"] == "auth.success"
        && r["transport"] == "websocket"
        && r["principal"] == "alice"
        && r["method"] == "jwt-bearer"));
    assert!(audited(&d.log, |r| r["event"] == "session.open"
        && r["transport"] == "websocket"
        && r["principal"] == "alice"));
    assert!(audited(&d.log, |r| r["event"] == "session.close"
        && r["principal"] == "alice"));
    // The token never reaches the log.
    assert!(!std::fs::read_to_string(&d.log).unwrap().contains(&token));
}

#[test]
fn refusals_before_the_upgrade_and_close_codes_after_it() {
    let d = dirs();
    let srv = HttpServer::start(&["--allow-read", s(&d.root), "--audit-log", s(&d.log)]);
    // A foreign Origin: 403 before any upgrade, and no session.
    let r = handshake(
        tcp(&srv),
        &ws_url(&srv),
        &Opts {
            origin: Some("https://evil.example"),
            ..Opts::default()
        },
    );
    assert_eq!(r.err(), Some(403));
    // The same server's own Origin is fine.
    let own = format!("http://{}", srv.addr);
    let (mut ws, _) = handshake(
        tcp(&srv),
        &ws_url(&srv),
        &Opts {
            origin: Some(&own),
            ..Opts::default()
        },
    )
    .unwrap();
    drop(ws.0.close(None));
    // Without the mcp subprotocol: 400.
    let r = handshake(
        tcp(&srv),
        &ws_url(&srv),
        &Opts {
            no_subprotocol: true,
            ..Opts::default()
        },
    );
    assert_eq!(r.err(), Some(400));
    assert!(audited(&d.log, |r| r["event"] == "request"
        && r["http_status"] == 403
        && r["http_method"] == "GET"));
    // A binary frame: 1003.
    let mut ws = connect(&srv);
    ws.0.send(Message::binary(b"{}".to_vec())).unwrap();
    assert_eq!(ws.closed().0, CloseCode::Unsupported);
    // A frame whose header claims one byte over `server.max_message_bytes` (4 MiB): 1009 at
    // once, though no payload byte was sent (so the limit is checked from the header, before
    // buffering, and it is mcpd's limit, not the library's larger default).
    let mut ws = connect(&srv);
    ws.initialize(json!({}));
    let mut header = vec![0x81u8, 0x80 | 127];
    header.extend_from_slice(&((4u64 << 20) + 1).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]); // the mask key
    ws.0.get_mut().write_all(&header).unwrap();
    ws.0.get_mut().flush().unwrap();
    let (code, reason) = ws.closed();
    assert_eq!(code, CloseCode::Size, "{reason}");
    // Idle (no message for the session idle time, nothing in flight): 1000.
    let idle = HttpServer::start(&["--allow-read", s(&d.root), "--http-session-idle-secs", "1"]);
    let mut ws = connect(&idle);
    ws.initialize(json!({}));
    let (code, reason) = ws.closed();
    assert_eq!(code, CloseCode::Normal, "{reason}");
    assert!(reason.contains("idle"), "{reason}");
    // The broker stops: 1001.
    let mut ws = connect(&srv);
    ws.initialize(json!({}));
    assert_eq!(ws.request(2, "ping", json!({}))["result"], json!({}));
    signal(srv.child.id() as i32, libc::SIGTERM);
    let (code, reason) = ws.closed();
    assert_eq!(code, CloseCode::Away, "{reason}");
    // Every socket's session was closed.
    let records = audit_records_so_far(&d.log);
    let opened = records
        .iter()
        .filter(|r| r["event"] == "session.open" && r["transport"] == "websocket")
        .count();
    assert_eq!(opened, 4, "no session for the refused upgrades");
    assert!(wait_until(Duration::from_secs(10), || {
        audit_records_so_far(&d.log)
            .iter()
            .filter(|r| r["event"] == "session.close")
            .count()
            == opened
    }));
}

#[test]
fn pings_keep_an_answering_socket_open_and_close_a_silent_one() {
    let d = dirs();
    let cfg = d.root.parent().unwrap().join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clients.local]\nread = [\"{}\"]\n[http]\nlisten = \"127.0.0.1:0\"\nclient = \"local\"\nws_ping_secs = 2\n",
            s(&d.root)
        ),
    )
    .unwrap();
    let srv = HttpServer::start_with(&["--config", s(&cfg)], &[]);
    // A client that keeps reading answers every Ping (tungstenite does): the socket stays.
    let mut ws = connect(&srv);
    ws.initialize(json!({}));
    let mut pinged = 0;
    for id in 10..20 {
        std::thread::sleep(Duration::from_millis(300));
        ws.send(&json!({"jsonrpc": "2.0", "id": id, "method": "ping"}));
        loop {
            match ws.0.read().unwrap() {
                Message::Ping(_) => pinged += 1,
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["id"] == json!(id) {
                        assert_eq!(v["result"], json!({}), "{v}");
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(pinged >= 1, "the server sends Pings");
    // A client that reads nothing sends no Pong: closed with 1001.
    let mut silent = connect(&srv);
    silent.initialize(json!({}));
    std::thread::sleep(Duration::from_millis(5000));
    let (code, reason) = silent.closed();
    assert_eq!(code, CloseCode::Away, "{reason}");
    assert!(reason.contains("Pong"), "{reason}");
}

#[test]
fn sockets_count_against_the_listeners_session_limit() {
    let d = dirs();
    let cfg = d.root.parent().unwrap().join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clients.local]\nread = [\"{}\"]\n[clients.local.limits]\nmax_sessions = 8\n[http]\nlisten = \"127.0.0.1:0\"\nclient = \"local\"\nmax_sessions = 1\n",
            s(&d.root)
        ),
    )
    .unwrap();
    let srv = HttpServer::start_with(&["--config", s(&cfg)], &[]);
    let mut first = connect(&srv);
    first.initialize(json!({}));
    // The one place is the socket's: another socket and an HTTP session are refused (429).
    assert_eq!(
        handshake(tcp(&srv), &ws_url(&srv), &Opts::default()).err(),
        Some(429)
    );
    let r = srv.post(
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "0"}}}),
    );
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    // Closing the socket gives the place back.
    first.0.close(None).unwrap();
    while first.0.read().is_ok() {}
    assert!(wait_until(Duration::from_secs(10), || handshake(
        tcp(&srv),
        &ws_url(&srv),
        &Opts::default()
    )
    .is_ok()));
}
