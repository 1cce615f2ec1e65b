//! Roots a client reports narrow the configured paths and never widen them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mcpd_e2e::Server;
use serde_json::{json, Value};

#[test]
fn client_roots_only_narrow() {
    let top = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(top.path()).unwrap();
    std::fs::create_dir(root.join("project")).unwrap();
    std::fs::write(root.join("project/in.txt"), "inside the client root\n").unwrap();
    std::fs::write(
        root.join("elsewhere.txt"),
        "configured, but outside the client root\n",
    )
    .unwrap();
    let mut s = Server::start(&["--allow-read", root.to_str().unwrap()]);
    s.result(
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {"roots": {"listChanged": true}}, "clientInfo": {"name": "e2e", "version": "0"}}),
    );
    s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    // The server asks for the client's roots.
    let ask: Value = (0..50)
        .find_map(|_| {
            s.recv_timeout(Duration::from_millis(100))
                .filter(|m| m["method"] == "roots/list")
        })
        .expect("roots/list request");
    s.send(
        &json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"roots": [
            {"uri": format!("file://{}/project", root.to_str().unwrap()), "name": "project"},
            {"uri": "file:///etc", "name": "not configured: must not widen"}
        ]}}),
    );
    std::thread::sleep(Duration::from_millis(200));
    let inside = root.join("project/in.txt");
    let (t, err) = s.call_text("read_text_file", json!({"path": inside.to_str().unwrap()}));
    assert!(!err, "{t}");
    assert_eq!(t, "inside the client root\n");
    let outside = root.join("elsewhere.txt");
    let (t, err) = s.call_text("read_text_file", json!({"path": outside.to_str().unwrap()}));
    assert!(err);
    assert_eq!(t, "Access denied - path outside allowed directories");
    let (t, err) = s.call_text("read_text_file", json!({"path": "/etc/hostname"}));
    assert!(err);
    assert_eq!(t, "Access denied - path outside allowed directories");
}
