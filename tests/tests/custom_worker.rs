//! The Rust API for custom tools: `worker/examples/custom_worker.rs` builds a worker with the
//! built-in tools plus `word_count`; the real broker runs it (`--worker`) and a client calls it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mcpd_e2e::{bin_dir, proc_status, Server};
use serde_json::json;

#[test]
fn a_custom_worker_serves_its_extra_tool_confined() {
    let example = bin_dir().join("examples").join("custom_worker");
    assert!(
        example.exists(),
        "{} missing: `cargo test --workspace` builds the examples",
        example.display()
    );
    let top = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(top.path()).unwrap();
    std::fs::write(root.join("poem.txt"), "one two three\nfour five\n").unwrap();
    let mut srv = Server::start(&[
        "--allow-read",
        root.to_str().unwrap(),
        "--worker",
        example.to_str().unwrap(),
    ]);
    srv.initialize();
    let names = srv.tool_names();
    assert!(names.contains(&"word_count".to_string()), "{names:?}");
    assert!(names.contains(&"read_text_file".to_string()));
    let r = srv.call(
        "word_count",
        json!({"path": root.join("poem.txt").to_str().unwrap()}),
    );
    assert_eq!(
        r["structuredContent"],
        json!({"lines": 2, "words": 5, "bytes": 24}),
        "{r}"
    );
    // The broker checks the path argument it declared, like a built-in tool's.
    let (t, err) = srv.call_text("word_count", json!({"path": "/etc/passwd"}));
    assert!(err);
    assert_eq!(t, "Access denied - path outside allowed directories");
    // And it is confined like the built-in worker.
    let pid = *srv.worker_pids().first().unwrap();
    assert_eq!(proc_status(pid, "Seccomp").as_deref(), Some("2"));
    assert_eq!(proc_status(pid, "NoNewPrivs").as_deref(), Some("1"));
}
