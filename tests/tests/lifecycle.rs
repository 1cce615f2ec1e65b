//! Session lifecycle over stdio against the real binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mcpd_e2e::{alive, proc_status, wait_until, Server};
use serde_json::json;

#[test]
fn initialize_negotiates_session_era_versions() {
    for (asked, expect) in [
        ("2025-11-25", "2025-11-25"),
        ("2025-06-18", "2025-06-18"),
        ("2025-03-26", "2025-03-26"),
        ("2024-01-01", "2025-11-25"),
        ("2099-01-01", "2025-11-25"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server::start(&["--allow-read", dir.path().to_str().unwrap()]);
        let r = s.result("initialize", json!({"protocolVersion": asked, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}));
        assert_eq!(r["protocolVersion"], expect, "asked {asked}");
        assert_eq!(r["serverInfo"]["name"], "mcpd");
        assert!(r["capabilities"]["tools"].is_object());
        assert!(
            r.get("resultType").is_none(),
            "session-era results must not carry resultType"
        );
        assert!(s.finish().success());
    }
}

#[test]
fn ping_and_empty_results_are_exactly_empty_objects() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&["--allow-read", dir.path().to_str().unwrap()]);
    // ping is allowed before initialize
    assert_eq!(s.result("ping", json!({})), json!({}));
    s.initialize();
    assert_eq!(s.result("ping", json!({})), json!({}));
    assert_eq!(
        s.result("logging/setLevel", json!({"level": "debug"})),
        json!({})
    );
}

#[test]
fn both_eras_on_one_stdio_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&["--allow-read", dir.path().to_str().unwrap()]);
    let t = Instant::now();
    // A discover without the _meta envelope: a prompt -32602 (clients fall back or fix it).
    let r = s.request("server/discover", json!({}));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(r["error"]["code"], -32602);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let d = s.result("server/discover", json!({"_meta": meta}));
    assert_eq!(d["supportedVersions"], json!(["2026-07-28"]));
    assert_eq!(d["resultType"], "complete");
    assert_eq!(
        d["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "mcpd"
    );
    assert!(d["ttlMs"].is_u64() && d["cacheScope"] == "private");
    // Stateless requests need no initialize; every result says resultType, lists carry cache hints.
    let l = s.result("tools/list", json!({"_meta": meta}));
    assert_eq!(l["resultType"], "complete");
    assert!(l["ttlMs"].is_u64());
    let v = s.request(
        "server/discover",
        json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "v999", "io.modelcontextprotocol/clientCapabilities": {}}}),
    );
    assert_eq!(v["error"]["code"], -32022);
    assert_eq!(v["error"]["data"]["requested"], "v999");
    // Session-era methods do not exist in the stateless era.
    let p = s.request("ping", json!({"_meta": meta}));
    assert_eq!(p["error"]["code"], -32601);
    // And the session era still works on the same connection, without resultType.
    s.initialize();
    assert!(!s.tool_names().is_empty());
    assert_eq!(s.result("ping", json!({})), json!({}));
}

#[test]
fn tools_list_follows_permissions() {
    let ro = tempfile::tempdir().unwrap();
    let mut s = Server::start(&["--allow-read", ro.path().to_str().unwrap()]);
    s.initialize();
    let names = s.tool_names();
    for t in [
        "read_text_file",
        "read_media_file",
        "read_multiple_files",
        "list_directory",
        "list_directory_with_sizes",
        "directory_tree",
        "search_files",
        "get_file_info",
        "list_allowed_directories",
        "grep",
    ] {
        assert!(names.contains(&t.to_string()), "{t} missing from {names:?}");
    }
    for t in [
        "write_file",
        "edit_file",
        "create_directory",
        "move_file",
        "delete_file",
    ] {
        assert!(
            !names.contains(&t.to_string()),
            "write tool {t} listed for a read-only client"
        );
    }
    let tools = s.result("tools/list", json!({}));
    for t in tools["tools"].as_array().unwrap() {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert!(t["description"].as_str().is_some_and(|d| !d.is_empty()));
    }
    drop(s);
    let rw = tempfile::tempdir().unwrap();
    let mut s = Server::start(&["--allow-write", rw.path().to_str().unwrap()]);
    s.initialize();
    let names = s.tool_names();
    for t in [
        "write_file",
        "edit_file",
        "create_directory",
        "move_file",
        "delete_file",
        "read_text_file",
    ] {
        assert!(
            names.contains(&t.to_string()),
            "{t} missing for a read-write client"
        );
    }
    // A tool hidden by policy is reported exactly like a tool that does not exist.
    drop(s);
    let mut s = Server::start(&["--allow-read", ro.path().to_str().unwrap()]);
    s.initialize();
    let hidden = s.request(
        "tools/call",
        json!({"name": "write_file", "arguments": {"path": "x", "content": "y"}}),
    );
    let missing = s.request(
        "tools/call",
        json!({"name": "no_such_tool", "arguments": {}}),
    );
    assert_eq!(hidden["error"]["code"], -32602);
    assert_eq!(missing["error"]["code"], -32602);
    assert_eq!(hidden["error"]["message"], "Unknown tool: write_file");
    assert_eq!(missing["error"]["message"], "Unknown tool: no_such_tool");
}

#[test]
fn embedded_default_serves_the_current_directory_read_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hi there").unwrap();
    let mut s = Server::start_in(&[], Some(dir.path()));
    s.initialize();
    let (text, err) = s.call_text(
        "read_text_file",
        json!({"path": dir.path().join("hello.txt")}),
    );
    assert!(!err, "{text}");
    assert_eq!(text, "hi there");
    let (text, err) = s.call_text("list_allowed_directories", json!({}));
    assert!(!err);
    assert!(
        text.contains(
            &std::fs::canonicalize(dir.path())
                .unwrap()
                .display()
                .to_string()
        ),
        "{text}"
    );
    assert!(!s.tool_names().contains(&"write_file".to_string()));
}

#[test]
fn stdin_eof_exits_cleanly_and_reaps_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&["--allow-read", dir.path().to_str().unwrap()]);
    s.initialize();
    s.tool_names();
    let workers = s.worker_pids();
    assert_eq!(
        workers.len(),
        1,
        "exactly one worker per session: {workers:?}"
    );
    let w = workers[0];
    let st = s.finish();
    assert!(st.success(), "exit status {st:?}");
    assert!(
        wait_until(Duration::from_secs(5), || !alive(w)),
        "worker {w} still alive (or a zombie) after mcpd exited"
    );
}

#[test]
fn worker_is_confined_by_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&["--allow-read", dir.path().to_str().unwrap()]);
    s.initialize();
    s.tool_names();
    let w = s.worker_pids()[0];
    assert_eq!(
        proc_status(w, "Seccomp").as_deref(),
        Some("2"),
        "worker must run under a seccomp filter"
    );
    assert_eq!(proc_status(w, "NoNewPrivs").as_deref(), Some("1"));
    // The worker's environment was cleared and it holds only fds 0-3 (+ what it opened itself:
    // root dirs, epoll/eventfd of its runtime). In particular no broker fd leaked.
    let env = std::fs::read(format!("/proc/{w}/environ")).unwrap_or_default();
    assert!(env.is_empty(), "worker environment not empty");
    let stderr = s.stderr();
    assert!(
        stderr.contains("worker confined and ready"),
        "enforcement level is logged:\n{stderr}"
    );
    assert!(stderr.contains("FullyEnforced"), "{stderr}");
}

#[test]
fn the_server_pings_an_idle_session_era_client() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nclient_ping_secs = 1\n[clients.local]\nread = [\"{}\"]\n",
            dir.path().to_str().unwrap()
        ),
    )
    .unwrap();
    let mut s = Server::start(&["--config", cfg.to_str().unwrap()]);
    s.initialize();
    let ping = (0..40)
        .find_map(|_| {
            s.recv_timeout(Duration::from_millis(100))
                .filter(|m| m["method"] == "ping")
        })
        .expect("a ping from the server");
    assert!(ping["id"].as_str().unwrap().starts_with("mcpd-ping-"));
    // The client answers; the session goes on.
    s.send(&json!({"jsonrpc": "2.0", "id": ping["id"], "result": {}}));
    assert_eq!(s.result("ping", json!({})), json!({}));
}

#[test]
fn a_clean_session_logs_no_warning() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("f.txt"), "x").unwrap();
    let root = std::fs::canonicalize(d.path()).unwrap();
    let mut s = Server::start(&["--allow-read", root.to_str().unwrap()]);
    s.initialize();
    let (t, err) = s.call_text(
        "read_text_file",
        json!({"path": root.join("f.txt").to_str().unwrap()}),
    );
    assert!(!err && t == "x", "{t}");
    let (st, log) = s.finish_with_log();
    assert!(st.success());
    // A normal start, session, worker and end: INFO and DEBUG only; WARN means look.
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
    assert!(log.contains("INFO"), "{log}");
}
