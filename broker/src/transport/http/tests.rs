//! The listener with an authenticator of the test's own (a principal by source address), over
//! real sockets: sessions belong to their principal, a refused peer is audited.
//!
//! No worker is ever started (the supervisor's worker path does not exist; nothing here
//! calls a tool). Trusts nothing but the responses it reads.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mcpd_policy::{AuditSettings, ClientId, Policy};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::auth::{AuthError, Credentials};

const ALICE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const MALLORY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// 127.0.0.1 is alice, 127.0.0.2 mallory, anyone else is refused.
#[derive(Debug)]
struct BySourceAddress;

impl Authenticator for BySourceAddress {
    fn authenticate(&self, _: &Policy, c: &Credentials<'_>) -> Result<Principal, AuthError> {
        let client = match c.peer.split(':').next() {
            Some("127.0.0.1") => "alice",
            Some("127.0.0.2") => "mallory",
            _ => {
                return Err(AuthError::NoClient {
                    transport: c.transport,
                    setting: "test",
                    peer: c.peer.to_string(),
                })
            }
        };
        Ok(Principal {
            client: ClientId::parse(client).unwrap(),
            method: "test (source address)",
        })
    }
}

struct Listener {
    addr: SocketAddr,
    app: Arc<App>,
    log: PathBuf,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn listen() -> Listener {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let policy = Policy::from_toml(
        "test.toml",
        "[clients.alice]\n[clients.mallory]\n",
        &|p: &Path| Ok(p.to_path_buf()),
    )
    .unwrap();
    let audit = Audit::open(&AuditSettings::at(log.clone())).unwrap();
    let supervisor = Supervisor::start(
        dir.path().join("no-such-worker"),
        false,
        None,
        Duration::ZERO,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = HttpConfig {
        addr,
        client: ClientId::parse("alice").unwrap(),
        extra_hosts: Vec::new(),
        idle: Duration::from_secs(600),
        max_sessions: 8,
    };
    let app = App::new(
        cfg,
        Arc::new(BySourceAddress),
        crate::reload::PolicyCell::new(policy),
        supervisor,
        audit,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run(listener, app.clone(), async move {
        let _ = stopped.await;
    }));
    Listener {
        addr,
        app,
        log,
        _dir: dir,
        _stop: stop,
    }
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// One HTTP/1.1 request from `from` (a loopback address), read to the end.
async fn request(
    l: &Listener,
    from: Ipv4Addr,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((from, 0))).unwrap();
    let mut s = sock.connect(l.addr).await.unwrap();
    let mut req = format!(
        "{method} {ENDPOINT} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        l.addr.port(),
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

const POST_JSON: [(&str, &str); 2] = [
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
];

async fn post(l: &Listener, from: Ipv4Addr, sid: Option<&str>, msg: &Value) -> Reply {
    let mut h = POST_JSON.to_vec();
    if let Some(s) = sid {
        h.push(("Mcp-Session-Id", s));
    }
    request(l, from, "POST", &h, &msg.to_string()).await
}

fn records(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_belongs_to_its_principal_and_no_one_else_learns_it_exists() {
    let l = listen().await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let r = post(&l, ALICE, None, &init).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sid = r.header("mcp-session-id").unwrap().to_string();
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    let r = post(&l, ALICE, Some(&sid), &ping).await;
    assert_eq!((r.status, r.json()["result"].clone()), (200, json!({})));
    // Mallory presents alice's session id: exactly the answer to an id that never existed.
    let foreign = post(&l, MALLORY, Some(&sid), &ping).await;
    let unknown = post(&l, MALLORY, Some("0123456789abcdef0123456789abcdef"), &ping).await;
    let unknown_alice = post(&l, ALICE, Some("0123456789abcdef0123456789abcdef"), &ping).await;
    assert_eq!(foreign.status, 404);
    assert_eq!(foreign.body, unknown.body);
    assert_eq!(foreign.body, unknown_alice.body);
    assert_eq!(foreign.json()["error"]["code"], SESSION_NOT_FOUND);
    let sid_h = ("Mcp-Session-Id", sid.as_str());
    let get = request(
        &l,
        MALLORY,
        "GET",
        &[("Accept", "text/event-stream"), sid_h],
        "",
    )
    .await;
    assert_eq!(get.status, 404);
    let del = request(&l, MALLORY, "DELETE", &[sid_h], "").await;
    assert_eq!(del.status, 404);
    // ...and alice's session is untouched by all that.
    let r = post(&l, ALICE, Some(&sid), &ping).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The stateless era: one session per principal.
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let discover =
        json!({"jsonrpc": "2.0", "id": 3, "method": "server/discover", "params": {"_meta": meta}});
    let mut h = POST_JSON.to_vec();
    h.extend([
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "server/discover"),
    ]);
    for from in [ALICE, MALLORY, ALICE] {
        let r = request(&l, from, "POST", &h, &discover.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let alice = ClientId::parse("alice").unwrap();
    let mallory = ClientId::parse("mallory").unwrap();
    let (a, m) = (
        l.app.stateless.get(&alice).unwrap(),
        l.app.stateless.get(&mallory).unwrap(),
    );
    assert_ne!(a.session.id(), m.session.id());
    assert_eq!(l.app.stateless.drain().len(), 2);
    // The rejects were audited under the principal that made them.
    let recs = records(&l.log);
    let rejects: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "request" && r["outcome"] == "invalid")
        .collect();
    let who: Vec<(&str, u64)> = rejects
        .iter()
        .map(|r| {
            (
                r["principal"].as_str().unwrap(),
                r["http_status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            ("mallory", 404),
            ("mallory", 404),
            ("alice", 404),
            ("mallory", 404),
            ("mallory", 404)
        ]
    );
    let r = request(&l, ALICE, "DELETE", &[sid_h], "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_principal_is_refused_and_audited_as_unauthenticated() {
    let l = listen().await;
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let r = post(&l, STRANGER, None, &ping).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        r.json()["error"]["code"],
        crate::mcp::jsonrpc::INVALID_REQUEST
    );
    // Refused before anything else looked at the request (here: a method that is not one).
    let r = request(&l, STRANGER, "PUT", &[], "").await;
    assert_eq!(r.status, 403);
    let recs = records(&l.log);
    let refused: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "request" && r["http_status"] == 403)
        .collect();
    assert_eq!(refused.len(), 2, "{recs:?}");
    for r in refused {
        assert_eq!(r["principal"], "<unauthenticated>", "{r}");
        assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.3:"), "{r}");
    }
    assert!(l.app.sessions.drain().is_empty());
}
