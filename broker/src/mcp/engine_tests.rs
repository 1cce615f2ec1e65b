//! The engine's in-process tier: a real [`Session`] under a real policy, with a fake worker
//! behind [`Workers`]/[`ToolWorker`] — method logic, decisions, validation of worker answers and
//! the outbox's bounds, tested without spawning a process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpd_ipc::{Content, LogLevel, ToolAccess, ToolResult};
use mcpd_policy::{Policy, QuickStart};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::auditing::Audit;
use crate::auth::{Origin, Principal};
use crate::mcp::fake_worker::{text, tool, FakeWorker, Script};
use crate::mcp::jsonrpc::{classify, Incoming};
use crate::mcp::session::Session;
use crate::reload::PolicyCell;
use crate::transport::{Outbox, Outgoing, NOTIFY_RESERVE, OUTBOX_QUEUE};
use crate::worker::supervisor::{CallEvent, CallOutcome};

fn read_only(dir: &std::path::Path) -> Policy {
    let q = QuickStart {
        read: vec![dir.to_path_buf()],
        ..QuickStart::default()
    };
    Policy::quick_start(&q, dir, &|p| std::fs::canonicalize(p)).unwrap()
}

struct Engine {
    session: Session,
    rx: mpsc::Receiver<Outgoing>,
    fake: FakeWorker,
    cell: PolicyCell,
    dir: tempfile::TempDir,
}

async fn engine_with(script: Script, on_start: Option<Arc<dyn Fn() + Send + Sync>>) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let policy = read_only(dir.path());
    engine_under(dir, policy, script, on_start).await
}

async fn engine_under(
    dir: tempfile::TempDir,
    policy: Policy,
    script: Script,
    on_start: Option<Arc<dyn Fn() + Send + Sync>>,
) -> Engine {
    let client = policy.stdio_client().cloned().unwrap();
    let cell = PolicyCell::new(policy);
    let mut fake = FakeWorker::new(
        vec![
            tool("read_file", ToolAccess::FileRead, Some(("path", false))),
            tool("write_file", ToolAccess::FileWrite, Some(("path", true))),
        ],
        script,
    );
    if let Some(hook) = on_start {
        fake = fake.on_start(hook);
    }
    let (out, rx) = Outbox::channel();
    let session = Session::open_with(
        Principal::new(client, "test"),
        &Origin {
            transport: "test",
            peer: "in-process".into(),
        },
        cell.clone(),
        Arc::new(fake.clone()),
        Audit::off(),
        out,
    )
    .await
    .unwrap();
    Engine {
        session,
        rx,
        fake,
        cell,
        dir,
    }
}

async fn engine() -> Engine {
    engine_with(Arc::new(|_| (vec![], text("ok"))), None).await
}

impl Engine {
    /// `tools/call` of the fake's `read_file` on `path`.
    async fn read(&mut self, id: i64, path: &str) -> Value {
        self.call(
            id,
            "tools/call",
            json!({"name": "read_file", "arguments": {"path": path}}),
        )
        .await
    }
    fn send(&self, msg: Value) {
        self.session.handle(classify(&msg.to_string()));
    }
    /// The next message for the client.
    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("the engine answered")
            .expect("the outbox is open")
            .msg
    }
    /// Messages up to and including the response to `id`.
    async fn until_response(&mut self, id: i64) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let m = self.next().await;
            let done = m.get("id") == Some(&json!(id)) && m.get("method").is_none();
            all.push(m);
            if done {
                return all;
            }
        }
    }
    async fn call(&mut self, id: i64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.until_response(id).await.pop().unwrap()
    }
    async fn initialize(&mut self) {
        let r = self
            .call(
                0,
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
            )
            .await;
        assert_eq!(r["result"]["protocolVersion"], "2025-11-25");
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    }
    fn path(&self, name: &str) -> String {
        std::fs::canonicalize(self.dir.path())
            .unwrap()
            .join(name)
            .display()
            .to_string()
    }
}

#[tokio::test]
async fn requests_before_initialize_are_refused_and_unreadable_input_is_answered() {
    let mut e = engine().await;
    let r = e.call(1, "tools/list", json!({})).await;
    assert_eq!(r["error"]["code"], crate::mcp::protocol::INVALID_REQUEST);
    e.session.handle(Incoming::unreadable(
        crate::mcp::protocol::PARSE_ERROR,
        "Parse error: message is not valid UTF-8",
    ));
    let r = e.next().await;
    assert!(r["id"].is_null());
    assert_eq!(r["error"]["code"], crate::mcp::protocol::PARSE_ERROR);
    assert!(e.fake.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_policy_decides_what_is_listed_and_what_reaches_the_worker() {
    let mut e = engine().await;
    e.initialize().await;
    // Read-only client: the write tool is not listed.
    let r = e.call(1, "tools/list", json!({})).await;
    let names: Vec<&str> = r["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["read_file"]);
    // Calling it anyway looks exactly like calling a tool that does not exist.
    let hidden = e
        .call(
            2,
            "tools/call",
            json!({"name": "write_file", "arguments": {"path": e.path("x")}}),
        )
        .await;
    let absent = e
        .call(3, "tools/call", json!({"name": "nope", "arguments": {}}))
        .await;
    assert_eq!(hidden["error"]["code"], absent["error"]["code"]);
    assert_eq!(
        hidden["error"]["message"]
            .as_str()
            .unwrap()
            .replace("write_file", "X"),
        absent["error"]["message"]
            .as_str()
            .unwrap()
            .replace("nope", "X")
    );
    // A path outside the roots is denied in the broker: the worker never sees the call.
    let out = e
        .call(
            4,
            "tools/call",
            json!({"name": "read_file", "arguments": {"path": "/etc/passwd"}}),
        )
        .await;
    assert_eq!(out["result"]["isError"], true);
    assert_eq!(
        out["result"]["content"][0]["text"],
        crate::mcp::tools::ACCESS_DENIED
    );
    assert!(e.fake.calls.lock().unwrap().is_empty());
    // Inside: the worker gets the call, with the client's arguments.
    let inside = e.path("a.txt");
    let ok = e
        .call(
            5,
            "tools/call",
            json!({"name": "read_file", "arguments": {"path": inside}}),
        )
        .await;
    assert_eq!(ok["result"]["content"][0]["text"], "ok");
    let calls = e.fake.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].tool, "read_file");
    assert_eq!(calls[0].args["path"], json!(inside));
}

#[tokio::test]
async fn a_malformed_worker_result_is_refused_and_the_worker_ended() {
    let script: Script = Arc::new(|_| {
        (
            vec![],
            CallOutcome::Done(ToolResult {
                content: vec![Content::Image {
                    data: vec![1],
                    mime_type: "image/png\r\nX-Injected: 1".into(),
                }],
                structured_json: None,
                is_error: false,
                input_required: None,
            }),
        )
    });
    let mut e = engine_with(script, None).await;
    e.initialize().await;
    let r = e
        .call(
            1,
            "tools/call",
            json!({"name": "read_file", "arguments": {"path": e.path("a")}}),
        )
        .await;
    assert_eq!(r["error"]["code"], crate::mcp::protocol::INTERNAL_ERROR);
    assert!(!r.to_string().contains("X-Injected"));
    assert!(e.fake.is_killed(), "the worker was ended");
}

#[tokio::test]
async fn progress_precedes_the_response_and_logs_follow_the_level() {
    let script: Script = Arc::new(|_| {
        let log = |level, m: &str| CallEvent::Log {
            level,
            logger: None,
            data: json!(m),
        };
        (
            vec![
                CallEvent::Progress {
                    progress: 1.0,
                    total: Some(2.0),
                    message: None,
                },
                // Not increasing: dropped.
                CallEvent::Progress {
                    progress: 1.0,
                    total: Some(2.0),
                    message: None,
                },
                log(LogLevel::Debug, "too fine"),
                log(LogLevel::Warning, "kept"),
                CallEvent::Progress {
                    progress: 2.0,
                    total: Some(2.0),
                    message: Some("done".into()),
                },
            ],
            text("ok"),
        )
    });
    let mut e = engine_with(script, None).await;
    e.initialize().await;
    let p = e.path("a");
    e.send(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "read_file", "arguments": {"path": p}, "_meta": {"progressToken": "tok"}}}));
    let all = e.until_response(7).await;
    let methods: Vec<&str> = all
        .iter()
        .map(|m| m["method"].as_str().unwrap_or("response"))
        .collect();
    assert_eq!(
        methods,
        [
            "notifications/progress",
            "notifications/message",
            "notifications/progress",
            "response"
        ]
    );
    assert_eq!(all[0]["params"]["progressToken"], "tok");
    assert_eq!(all[1]["params"]["data"], "kept");
    assert_eq!(all[2]["params"]["progress"], 2.0);
}

#[tokio::test]
async fn a_request_is_decided_under_the_policy_it_started_with() {
    // The second worker start happens inside tools/call, after the request took its policy
    // snapshot and before the decision; it reloads a policy that grants nothing under this
    // directory. The call is still validated, decided and limited under its own snapshot.
    type Armed = Option<(PolicyCell, Policy, FakeWorker)>;
    let slot: Arc<Mutex<Armed>> = Arc::default();
    let hook_slot = slot.clone();
    let hook: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        if let Some((cell, p, fake)) = hook_slot.lock().unwrap().take() {
            fake.set_killed(false);
            cell.replace(p);
        }
    });
    let mut e = engine_with(Arc::new(|_| (vec![], text("ok"))), Some(hook)).await;
    e.initialize().await;
    let p = e.path("a");
    let r = e.read(1, &p).await;
    assert_eq!(r["result"]["content"][0]["text"], "ok", "{r}");
    let elsewhere = tempfile::tempdir().unwrap();
    *slot.lock().unwrap() = Some((e.cell.clone(), read_only(elsewhere.path()), e.fake.clone()));
    // The worker died: the next call starts another one, and that start reloads the policy.
    e.fake.set_killed(true);
    let before = e.fake.starts();
    let r = e.read(2, &p).await;
    assert_eq!(e.fake.starts(), before + 1, "the call started a worker");
    assert!(
        slot.lock().unwrap().is_none(),
        "the reload happened during the call"
    );
    assert_eq!(r["result"]["content"][0]["text"], "ok", "{r}");
    // The next request takes the new snapshot: the same path is now outside the roots.
    let r = e.read(3, &p).await;
    assert_eq!(
        r["result"]["content"][0]["text"],
        crate::mcp::tools::ACCESS_DENIED
    );
}

#[tokio::test]
async fn a_client_that_does_not_read_loses_notifications_not_responses() {
    // Twice as many progress events as the outbox holds, and nobody reads until the end.
    let script: Script = Arc::new(|_| {
        let n = OUTBOX_QUEUE * 2;
        (
            (1..=n)
                .map(|i| CallEvent::Progress {
                    progress: i as f64,
                    total: None,
                    message: None,
                })
                .collect(),
            text("ok"),
        )
    });
    let mut e = engine_with(script, None).await;
    e.initialize().await;
    let p = e.path("a");
    e.send(json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "read_file", "arguments": {"path": p}, "_meta": {"progressToken": 1}}}));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = e.until_response(9).await;
    let progress = all
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .count();
    // All 2 x OUTBOX_QUEUE events reached the session; only what the outbox holds short of its
    // reserve was queued, and the response still got its place.
    assert_eq!(
        progress,
        OUTBOX_QUEUE - NOTIFY_RESERVE,
        "{progress} notifications queued"
    );
    assert_eq!(all.last().unwrap()["result"]["content"][0]["text"], "ok");
}

#[tokio::test]
async fn the_call_rate_is_the_clients_and_a_spent_rate_says_when_to_retry() {
    // Its own client id: the rate table is process-wide, shared with the other tests.
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let toml = format!(
        "[stdio]\nclient = \"rate-test\"\n[clients.rate-test]\nread = [\"{}\"]\nlimits = {{ calls_per_minute = 2 }}\n",
        root.display()
    );
    let policy = Policy::from_toml("t.toml", &toml, &|p| std::fs::canonicalize(p)).unwrap();
    let mut e = engine_under(dir, policy, Arc::new(|_| (vec![], text("ok"))), None).await;
    e.initialize().await;
    let p = e.path("a");
    for id in 1..=2 {
        let r = e.read(id, &p).await;
        assert_eq!(r["result"]["content"][0]["text"], "ok", "{r}");
    }
    let r = e.read(3, &p).await;
    assert_eq!(
        r["error"]["code"],
        crate::mcp::protocol::RATE_LIMITED,
        "{r}"
    );
    let secs = r["error"]["data"]["retryAfterSecs"].as_u64().unwrap();
    assert!((1..=30).contains(&secs), "{secs}");
    assert_eq!(
        e.fake.calls.lock().unwrap().len(),
        2,
        "the refused call never reached the worker"
    );
    // A second session of the same client shares the spent rate.
    let mut other = engine_under(
        tempfile::tempdir().unwrap(),
        e.cell.get().as_ref().clone(),
        Arc::new(|_| (vec![], text("ok"))),
        None,
    )
    .await;
    other.initialize().await;
    let r = other.read(1, &p).await;
    assert_eq!(
        r["error"]["code"],
        crate::mcp::protocol::RATE_LIMITED,
        "{r}"
    );
}

#[tokio::test]
async fn a_client_may_hold_only_its_sessions_limit() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy::from_toml(
        "t.toml",
        "[stdio]\nclient = \"session-cap\"\n[clients.session-cap]\nlimits = { max_sessions = 1 }\n",
        &|p| std::fs::canonicalize(p),
    )
    .unwrap();
    let one = engine_under(
        dir,
        policy.clone(),
        Arc::new(|_| (vec![], text("ok"))),
        None,
    )
    .await;
    let (out, _rx) = Outbox::channel();
    let refused = Session::open_with(
        Principal::new(policy.stdio_client().cloned().unwrap(), "test"),
        &Origin {
            transport: "test",
            peer: "in-process".into(),
        },
        PolicyCell::new(policy.clone()),
        Arc::new(one.fake.clone()),
        Audit::off(),
        out,
    )
    .await;
    assert!(matches!(
        refused,
        Err(crate::mcp::session::OpenError::TooManySessions { max: 1 })
    ));
    // Closing the first gives its place back.
    one.session.close().await;
    let again = engine_under(
        tempfile::tempdir().unwrap(),
        policy,
        Arc::new(|_| (vec![], text("ok"))),
        None,
    )
    .await;
    assert!(again.session.id() != one.session.id());
}

#[tokio::test]
async fn an_ended_session_leaves_no_task_behind() {
    // One policy cell for all, as in the daemon (its reload broadcast outlives every session).
    let e = engine().await;
    let open = || async {
        let (out, rx) = Outbox::channel();
        let s = Session::open_with(
            Principal::new(e.cell.get().stdio_client().cloned().unwrap(), "test"),
            &Origin {
                transport: "test",
                peer: "in-process".into(),
            },
            e.cell.clone(),
            Arc::new(e.fake.clone()),
            Audit::off(),
            out,
        )
        .await
        .unwrap();
        (s, rx)
    };
    let metrics = tokio::runtime::Handle::current().metrics();
    let (warm, _rx) = open().await;
    warm.close().await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = metrics.num_alive_tasks();
    for _ in 0..50 {
        let (s, rx) = open().await;
        s.close().await;
        drop((s, rx));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = metrics.num_alive_tasks();
    assert!(
        after <= before + 5,
        "{before} tasks before, {after} after 50 sessions came and went"
    );
}
