//! The listener over real sockets, with an authenticator of the test's own (a principal by
//! source address) and an in-process fake worker behind [`Workers`]: sessions belong to their
//! principal, a refused peer is audited, and a client that never reads a chatty call's stream
//! holds bounded queues while its session serves other requests. Over a Unix socket pair, the
//! Unix listener's service: principals from the peer's credentials, its Host rule, its
//! `auth.failure` records.
//!
//! No process is spawned. Trusts nothing but the responses it reads.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcpd_ipc::ToolAccess;
use mcpd_policy::{AuditSettings, ClientId, Policy, QuickStart};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::routes::lock;
use super::sse::{REPLAY_BYTES, REPLAY_EVENTS};
use super::*;
use crate::auth::{AuthError, Credentials};
use crate::mcp::fake_worker::{text, tool, FakeWorker, Script};
use crate::worker::supervisor::CallEvent;

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
        Ok(Principal::new(
            ClientId::parse(client).unwrap(),
            "test (source address)",
        ))
    }
}

/// A worker with one tool, `chatty`: `events` progress reports of `message_bytes` each as
/// fast as the engine takes them, then a text result (`finished` is set once all are handed
/// over).
fn chatty(events: usize, message_bytes: usize) -> FakeWorker {
    let script: Script = Arc::new(move |_| {
        let message = "m".repeat(message_bytes);
        let reports = (1..=events)
            .map(|i| CallEvent::Progress {
                progress: i as f64,
                total: None,
                message: Some(message.clone()),
            })
            .collect();
        (reports, text("chatty done"))
    });
    FakeWorker::new(vec![tool("chatty", ToolAccess::FileRead, None)], script)
}

struct Listener {
    addr: SocketAddr,
    app: Arc<App>,
    log: PathBuf,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Listener {
    /// Shut down as the daemon does (every session closed and recorded) before the audit
    /// log's directory goes.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.served)
            .await
            .expect("the listener stops")
            .unwrap()
            .unwrap();
    }
}

/// The principals' policy of the session tests: alice and mallory.
fn two_clients() -> Policy {
    Policy::from_toml(
        "test.toml",
        "[clients.alice]\n[clients.mallory]\n",
        &|p: &Path| Ok(p.to_path_buf()),
    )
    .unwrap()
}

async fn listen(
    policy: Policy,
    auth: Arc<dyn Authenticator>,
    workers: Arc<dyn Workers>,
) -> Listener {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let audit = Audit::open(&AuditSettings::at(log.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = HttpConfig {
        listen: Listen::Tcp(addr),
        client: ClientId::parse("alice"),
        extra_hosts: Vec::new(),
        idle: Duration::from_secs(600),
        max_sessions: 8,
        tls: None,
        max_connections: 64,
        max_connections_per_ip: 64,
        trusted_proxies: Vec::new(),
        forwarded_header: mcpd_policy::ForwardedHeader::XForwardedFor,
    };
    let app = App::new(
        cfg,
        auth,
        crate::reload::PolicyCell::new(policy),
        workers,
        audit,
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(run(vec![listener], app.clone(), async move {
        let _ = stopped.await;
    }));
    Listener {
        addr,
        app,
        log,
        stop,
        served,
        _dir: dir,
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

/// Send one HTTP/1.1 request from `from` (a loopback address; with a receive buffer of
/// `rcvbuf` bytes if given) and return the connection, unread.
async fn open(
    l: &Listener,
    from: Ipv4Addr,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
    rcvbuf: Option<u32>,
) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).unwrap();
    }
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
    s
}

/// Read a response to the end (the server closes: `Connection: close`).
async fn read_reply(mut s: impl tokio::io::AsyncRead + Unpin, limit: Duration) -> Reply {
    let mut raw = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut raw))
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

/// One HTTP/1.1 request from `from` (a loopback address), read to the end.
async fn request(
    l: &Listener,
    from: Ipv4Addr,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let s = open(l, from, method, headers, body, None).await;
    read_reply(s, Duration::from_secs(10)).await
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

async fn initialize(l: &Listener, from: Ipv4Addr) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let r = post(l, from, None, &init).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.header("mcp-session-id").unwrap().to_string()
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
    let l = listen(
        two_clients(),
        Arc::new(BySourceAddress),
        Arc::new(chatty(0, 0)),
    )
    .await;
    let sid = initialize(&l, ALICE).await;
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
        l.app.stateless.get(&(alice, None)).unwrap(),
        l.app.stateless.get(&(mallory, None)).unwrap(),
    );
    assert_ne!(a.session.id(), m.session.id());
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
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_principal_is_refused_and_audited_as_unauthenticated() {
    let l = listen(
        two_clients(),
        Arc::new(BySourceAddress),
        Arc::new(chatty(0, 0)),
    )
    .await;
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
        .filter(|r| r["event"] == "auth.failure" && r["http_status"] == 403)
        .collect();
    assert_eq!(refused.len(), 2, "{recs:?}");
    for r in refused {
        assert_eq!(r["principal"], "<unauthenticated>", "{r}");
        assert_eq!(r["stage"], "http-request", "{r}");
        assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.3:"), "{r}");
    }
    assert!(l.app.sessions.drain().is_empty());
    l.stop().await;
}

const STATELESS_META: &str = r#"{"io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {}, "progressToken": 1}"#;

/// A client that never reads the stream of a call that reports progress without pause: what
/// the broker holds for that stream stays within its bounds (the surplus is dropped and
/// counted), the session answers other requests at once, and when the client reads at last
/// its response is there, last. Session era: the resumable relay's stream; stateless era: the
/// request's route.
async fn a_client_that_never_reads(stateless: bool) {
    const EVENTS: usize = 10_000;
    const MESSAGE_BYTES: usize = 1024; // ~10 MiB of events in all: more than any socket holds
    let dir = tempfile::tempdir().unwrap();
    let q = QuickStart {
        read: vec![dir.path().to_path_buf()],
        ..QuickStart::default()
    };
    let policy = Policy::quick_start(&q, dir.path(), &|p| std::fs::canonicalize(p)).unwrap();
    let principal = Principal::new(
        policy.stdio_client().cloned().unwrap(),
        "none (loopback listener)",
    );
    let chatty = chatty(EVENTS, MESSAGE_BYTES);
    let done = chatty.finished.clone();
    let auth = Arc::new(crate::auth::ListenerClient::new(principal.client.clone()));
    let l = listen(policy, auth, Arc::new(chatty)).await;
    let meta: Value = serde_json::from_str(STATELESS_META).unwrap();
    let sid = if stateless {
        String::new()
    } else {
        initialize(&l, ALICE).await
    };
    let mut h = POST_JSON.to_vec();
    let call = if stateless {
        h.extend([
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "chatty"),
        ]);
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "chatty", "arguments": {}, "_meta": meta}})
    } else {
        h.push(("Mcp-Session-Id", &sid));
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "chatty", "arguments": {}, "_meta": {"progressToken": 1}}})
    };
    // A small receive window: the broker feels the client's silence after a few KiB.
    let stuck = open(&l, ALICE, "POST", &h, &call.to_string(), Some(4096)).await;
    let started = Instant::now();
    let hs = loop {
        let hs = if stateless {
            l.app.stateless.get(&(principal.client.clone(), None))
        } else {
            l.app.sessions.get(&SessionKey::new(&principal, &sid))
        };
        if let Some(hs) = hs.filter(|hs| done.load(Ordering::SeqCst) && hs.routes.dropped() > 0) {
            break hs;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the tool did not finish, or nothing was dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The session serves other requests meanwhile.
    let asked = Instant::now();
    let r = if stateless {
        let mut h = POST_JSON.to_vec();
        h.extend([
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "server/discover"),
        ]);
        let discover = json!({"jsonrpc": "2.0", "id": 8, "method": "server/discover",
                              "params": {"_meta": meta}});
        request(&l, ALICE, "POST", &h, &discover.to_string()).await
    } else {
        let ping = json!({"jsonrpc": "2.0", "id": 8, "method": "ping"});
        post(&l, ALICE, Some(&sid), &ping).await
    };
    assert_eq!(
        (r.status, r.json()["id"].clone()),
        (200, json!(8)),
        "{}",
        r.body
    );
    assert!(r.json()["result"].is_object(), "{}", r.body);
    assert!(asked.elapsed() < Duration::from_secs(2));
    // What the broker keeps for the stream is bounded.
    let (events, bytes) = lock(&hs.replay).held();
    assert!(
        events <= REPLAY_EVENTS && bytes <= REPLAY_BYTES,
        "{events} {bytes}"
    );
    // Reading at last: the response is there, after what the stream could hold.
    let r = read_reply(stuck, Duration::from_secs(30)).await;
    assert_eq!(r.status, 200);
    let data: Vec<Value> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: {").map(|d| format!("{{{d}")))
        .map(|d| serde_json::from_str(&d).unwrap())
        .collect();
    let last = data.last().unwrap();
    assert_eq!(last["id"], 7, "{last}");
    assert_eq!(last["result"]["content"][0]["text"], "chatty done");
    let progress = data
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .count();
    assert!(progress > 0 && progress < EVENTS, "{progress}");
    drop(hs);
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_reads_its_resumable_stream_holds_bounded_queues() {
    a_client_that_never_reads(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_reads_its_stateless_stream_holds_bounded_queues() {
    a_client_that_never_reads(true).await;
}

/// 127.0.0.1 is `carol`, 127.0.0.2 `dave` (names of their own: the session count per client is
/// process-wide, and other tests open sessions for alice and mallory).
#[derive(Debug)]
struct CarolAndDave;

impl Authenticator for CarolAndDave {
    fn authenticate(&self, _: &Policy, c: &Credentials<'_>) -> Result<Principal, AuthError> {
        let client = if c.peer.starts_with("127.0.0.1:") {
            "carol"
        } else {
            "dave"
        };
        Ok(Principal::new(ClientId::parse(client).unwrap(), "test"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_its_session_limit_pushes_out_its_own_oldest_idle_session_only() {
    let policy = Policy::from_toml(
        "test.toml",
        "[clients.carol]\nlimits = { max_sessions = 2 }\n[clients.dave]\n",
        &|p: &Path| Ok(p.to_path_buf()),
    )
    .unwrap();
    let l = listen(policy, Arc::new(CarolAndDave), Arc::new(chatty(0, 0))).await;
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    let dave = initialize(&l, MALLORY).await;
    let first = initialize(&l, ALICE).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = initialize(&l, ALICE).await;
    assert_eq!(post(&l, ALICE, Some(&first), &ping).await.status, 200);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A third session of carol: her least recently used idle one (`second`) goes, not dave's.
    let third = initialize(&l, ALICE).await;
    assert_eq!(post(&l, ALICE, Some(&second), &ping).await.status, 404);
    assert_eq!(post(&l, ALICE, Some(&first), &ping).await.status, 200);
    assert_eq!(post(&l, ALICE, Some(&third), &ping).await.status, 200);
    assert_eq!(post(&l, MALLORY, Some(&dave), &ping).await.status, 200);
    assert_eq!(
        crate::mcp::quota::open_sessions(&ClientId::parse("carol").unwrap()),
        2,
        "the engine counts carol's open sessions"
    );
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_call_rate_is_a_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    // A client name of its own: the rate table is process-wide.
    let policy = Policy::from_toml(
        "test.toml",
        &format!(
            "[clients.erin]\nread = [\"{}\"]\nlimits = {{ calls_per_minute = 1 }}\n",
            root.display()
        ),
        &|p: &Path| Ok(p.to_path_buf()),
    )
    .unwrap();
    let auth = Arc::new(crate::auth::ListenerClient::new(
        ClientId::parse("erin").unwrap(),
    ));
    let l = listen(policy, auth, Arc::new(chatty(0, 0))).await;
    let sid = initialize(&l, ALICE).await;
    let call = |id: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "chatty", "arguments": {}}})
    };
    let json_only = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("Mcp-Session-Id", sid.as_str()),
    ];
    let first = request(&l, ALICE, "POST", &json_only, &call(2).to_string()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["result"]["content"][0]["text"], "chatty done");
    let second = request(&l, ALICE, "POST", &json_only, &call(3).to_string()).await;
    assert_eq!(second.status, 429, "{}", second.body);
    let retry: u64 = second.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        second.json()["error"]["code"],
        crate::mcp::protocol::RATE_LIMITED
    );
    let log = records(&l.log);
    assert!(log
        .iter()
        .any(|r| r["event"] == "limit.hit" && r["limit"] == "calls_per_minute"));
    l.stop().await;
}

/// The Unix listener's service over a socket pair: the principal is the peer's uid (this
/// process's), established again for every request under the policy in force; `localhost`
/// with any port is this server; an unmapped uid is a 403 with an `auth.failure` record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_unix_socket_the_principal_is_the_peer_uid_for_every_request() {
    use std::os::fd::AsFd;
    let uid = rustix::process::geteuid().as_raw();
    // Client names of their own: session counts are process-wide.
    let mapped = |rule: &str| {
        Policy::from_toml(
            "test.toml",
            &format!("[clients.uma]\n[clients.uma.identity]\n{rule}\n[clients.ulrich]\n"),
            &|p: &Path| Ok(p.to_path_buf()),
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let audit = Audit::open(&AuditSettings::at(log.clone())).unwrap();
    let cell = crate::reload::PolicyCell::new(mapped(&format!("unix_uid = [{uid}]")));
    let cfg = HttpConfig {
        listen: Listen::Unix("test.sock".into()),
        client: None,
        extra_hosts: Vec::new(),
        idle: Duration::from_secs(600),
        max_sessions: 8,
        tls: None,
        max_connections: 8,
        max_connections_per_ip: 8,
        trusted_proxies: Vec::new(),
        forwarded_header: mcpd_policy::ForwardedHeader::XForwardedFor,
    };
    let app = App::new(
        cfg,
        Arc::new(PeerCredentials),
        cell.clone(),
        Arc::new(chatty(0, 0)),
        audit,
    );
    let conns = listener::Connections::new(Routes::new(&app));
    let exchange = |host: &'static str, sid: Option<String>, msg: Value| {
        let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
        let cred = rustix::net::sockopt::socket_peercred(server.as_fd()).unwrap();
        let peer = UnixPeer {
            uid: cred.uid.as_raw(),
            gid: cred.gid.as_raw(),
            pid: cred.pid.as_raw_nonzero().get(),
        };
        tokio::spawn(conns.serve(server, Peer::unix(peer)));
        async move {
            let body = msg.to_string();
            let mut req = format!(
                "POST {ENDPOINT} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n",
                body.len()
            );
            if let Some(s) = sid {
                req.push_str(&format!("Mcp-Session-Id: {s}\r\n"));
            }
            req.push_str("\r\n");
            req.push_str(&body);
            client.write_all(req.as_bytes()).await.unwrap();
            read_reply(client, Duration::from_secs(10)).await
        }
    };
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    let r = exchange("localhost:4711", None, init.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sid = r.header("mcp-session-id").unwrap().to_string();
    let r = exchange("localhost", Some(sid.clone()), ping.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        exchange("127.0.0.1:4711", None, init.clone()).await.status,
        403
    );
    // The rule now names another uid: the same peer's next request is refused.
    cell.replace(mapped(&format!("unix_uid = [{}]", uid.wrapping_add(1))));
    let r = exchange("localhost", Some(sid), ping).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        r.json()["error"]["code"],
        crate::mcp::jsonrpc::INVALID_REQUEST
    );
    let recs = records(&log);
    let me = format!("uid={uid} ");
    let open = recs
        .iter()
        .find(|r| r["event"] == "session.open")
        .expect("session.open");
    assert_eq!(open["transport"], "unix-http");
    assert_eq!(open["principal"], "uma");
    assert!(open["peer"].as_str().unwrap().starts_with(&me), "{open}");
    let failure = recs
        .iter()
        .find(|r| r["event"] == "auth.failure")
        .expect("auth.failure");
    assert_eq!(failure["transport"], "unix-http");
    assert_eq!(failure["uid"], uid);
    assert_eq!(failure["principal"], super::gate::UNAUTHENTICATED);
    assert_eq!(
        recs.iter().filter(|r| r["event"] == "auth.failure").count(),
        1,
        "a foreign Host is no authentication failure"
    );
    assert!(recs.iter().any(|r| r["event"] == "request"
        && r["http_status"] == 403
        && r["transport"] == "unix-http"
        && r["peer"].as_str().is_some_and(|p| p.starts_with(&me))));
    conns.shutdown(app.clone().end_all_sessions()).await;
}

/// A call answered on an SSE stream that the client read to its end is not kept for a
/// resumption: after many calls the session's replay buffer is empty (it held every finished
/// call's events, up to 4 MiB per session, before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_read_to_their_end_leave_nothing_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let policy = Policy::from_toml(
        "test.toml",
        &format!("[clients.alice]\nread = [\"{}\"]\n", root.display()),
        &|p: &Path| Ok(p.to_path_buf()),
    )
    .unwrap();
    let auth = Arc::new(crate::auth::ListenerClient::new(
        ClientId::parse("alice").unwrap(),
    ));
    let l = listen(policy, auth, Arc::new(chatty(2, 1000))).await;
    let sid = initialize(&l, ALICE).await;
    // Every call reuses id 2 as soon as the previous one's stream has ended (a client may).
    for n in 0..48 {
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                          "params": {"name": "chatty", "arguments": {}, "_meta": {"progressToken": n}}});
        let r = post(&l, ALICE, Some(&sid), &call).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        assert!(r.body.contains("chatty done"), "{:?}", r.body);
    }
    let principal = Principal::new(ClientId::parse("alice").unwrap(), "test");
    let hs = l
        .app
        .sessions
        .get(&SessionKey::new(&principal, &sid))
        .unwrap();
    let mut held = (usize::MAX, usize::MAX);
    for _ in 0..100 {
        held = lock(&hs.replay).held();
        if held == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(held, (0, 0), "events and bytes still held");
    l.stop().await;
}

/// `text` with each client port (the digits after `127.0.0.N:`) replaced by `PORT`.
fn unport(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("127.0.0.") {
        let (head, tail) = rest.split_at(i + "127.0.0.".len());
        out.push_str(head);
        let host_digits = tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        out.push_str(&tail[..host_digits]);
        rest = &tail[host_digits..];
        if let Some(after) = rest.strip_prefix(':') {
            let port = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            out.push_str(":PORT");
            rest = &after[port..];
        }
    }
    out.push_str(rest);
    out
}

/// `GET target` from `from` with the given Host and headers, read to its end.
async fn get_raw(
    l: &Listener,
    from: Ipv4Addr,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((from, 0))).unwrap();
    let mut s = sock.connect(l.addr).await.unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    read_reply(s, Duration::from_secs(10)).await
}

/// The endpoint's requests take `Routes`' direct path through the three layers; the
/// WebSocket endpoint beside it still goes through the router's middleware of the same
/// functions. Every layer's refusal (the authenticator's for a peer without a client and for a
/// token in the URL, the gate's for a foreign Host) must come out the same on both paths:
/// same status, same body, and an audit record with the same contents (but for its envelope
/// and the peer's port). A refusal the direct path skipped, or audited otherwise, fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_and_the_router_refuse_alike() {
    let l = listen(
        two_clients(),
        Arc::new(BySourceAddress),
        Arc::new(chatty(0, 0)),
    )
    .await;
    let host = format!("127.0.0.1:{}", l.addr.port());
    let upgrade: [(&str, &str); 5] = [
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Protocol", "mcp"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let cases: [(&str, Ipv4Addr, &str, &str, u16); 3] = [
        ("no client for the peer", STRANGER, "", host.as_str(), 403),
        (
            "token in the URL",
            ALICE,
            "?access_token=x",
            host.as_str(),
            400,
        ),
        ("foreign Host", ALICE, "", "evil.example", 403),
    ];
    let envelope = ["seq", "ts", "id", "prev", "hash", "peer"];
    for (what, from, query, host, status) in cases {
        let before = records(&l.log).len();
        // The same request to both (closed after the answer: `Connection: close`).
        let direct = get_raw(&l, from, &format!("{ENDPOINT}{query}"), host, &upgrade[1..]).await;
        let routed = get_raw(
            &l,
            from,
            &format!("{}{query}", ws::WS_ENDPOINT),
            host,
            &upgrade[1..],
        )
        .await;
        assert_eq!(direct.status, status, "{what}: {}", direct.body);
        assert_eq!(routed.status, status, "{what}: {}", routed.body);
        assert_eq!(unport(&direct.body), unport(&routed.body), "{what}");
        assert_eq!(
            direct.header("www-authenticate"),
            routed.header("www-authenticate"),
            "{what}"
        );
        let recs = records(&l.log);
        let new: Vec<Value> = recs[before..]
            .iter()
            .map(|r| {
                let mut r = r.as_object().unwrap().clone();
                for k in envelope {
                    r.remove(k);
                }
                Value::Object(r)
            })
            .collect();
        assert_eq!(new.len(), 2, "{what}: one record per refusal: {new:?}");
        assert_eq!(new[0], new[1], "{what}");
    }
    // And what passes the layers reaches each path's handler: the endpoint answers a GET
    // without a session (400), the WebSocket endpoint upgrades (101).
    let direct = get_raw(
        &l,
        ALICE,
        ENDPOINT,
        &host,
        &[("Accept", "text/event-stream")],
    )
    .await;
    assert_eq!(direct.status, 400, "{}", direct.body);
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((ALICE, 0))).unwrap();
    let mut s = sock.connect(l.addr).await.unwrap();
    let mut req = format!("GET {} HTTP/1.1\r\nHost: {host}\r\n", ws::WS_ENDPOINT);
    for (k, v) in upgrade {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("the upgrade answer in time")
            .unwrap();
        assert_eq!(n, 1, "closed before the head's end: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    drop(s);
    l.stop().await;
}
