//! Bad input gets a clear error, changes nothing, and the server keeps answering.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mcpd_e2e::{alive, signal, wait_until, Server};
use serde_json::{json, Value};

fn server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.txt"), "content").unwrap();
    let mut s = Server::start(&["--allow-write", dir.path().to_str().unwrap()]);
    s.initialize();
    (s, dir)
}

fn still_answers(s: &mut Server) {
    assert_eq!(s.result("ping", json!({})), json!({}));
}

fn error_of(m: &Value) -> (i64, String) {
    (
        m["error"]["code"].as_i64().unwrap(),
        m["error"]["message"].as_str().unwrap().to_string(),
    )
}

#[test]
fn malformed_json_is_a_parse_error() {
    let (mut s, _d) = server();
    s.send_raw(b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \n");
    let m = s.recv();
    assert_eq!(m["id"], Value::Null);
    assert_eq!(error_of(&m), (-32700, "Parse error: invalid JSON".into()));
    still_answers(&mut s);
}

#[test]
fn non_objects_and_batches_are_invalid_requests() {
    let (mut s, _d) = server();
    s.send_raw(b"42\n");
    assert_eq!(
        error_of(&s.recv()),
        (-32600, "Invalid Request: expected a JSON object".into())
    );
    s.send_raw(b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]\n");
    assert_eq!(
        error_of(&s.recv()),
        (-32600, "Invalid Request: batches are not supported".into())
    );
    s.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"ping\"}\n");
    assert_eq!(error_of(&s.recv()).0, -32600);
    still_answers(&mut s);
}

#[test]
fn unknown_method_is_method_not_found() {
    let (mut s, _d) = server();
    let m = s.request("no/such/method", json!({}));
    assert_eq!(
        error_of(&m),
        (-32601, "Method not found: no/such/method".into())
    );
    // an unknown notification gets no answer at all
    s.send(&json!({"jsonrpc": "2.0", "method": "notifications/whatever"}));
    still_answers(&mut s);
}

#[test]
fn missing_and_ill_typed_params() {
    let (mut s, dir) = server();
    let m = s.request("tools/call", json!({}));
    assert_eq!(
        error_of(&m),
        (-32602, "Invalid params: name must be a string".into())
    );
    let m = s.request("tools/call", json!({"name": 5}));
    assert_eq!(error_of(&m).0, -32602);
    let m = s.request(
        "tools/call",
        json!({"name": "read_text_file", "arguments": [1]}),
    );
    assert_eq!(
        error_of(&m),
        (-32602, "Invalid params: arguments must be an object".into())
    );
    let m = s.request(
        "tools/call",
        json!({"name": "read_text_file", "arguments": {}}),
    );
    assert_eq!(error_of(&m).0, -32602, "missing path: {m}");
    let m = s.request(
        "tools/call",
        json!({"name": "read_text_file", "arguments": {"path": 12}}),
    );
    assert_eq!(error_of(&m).0, -32602, "ill-typed path: {m}");
    let m = s.request(
        "tools/call",
        json!({"name": "read_multiple_files", "arguments": {"paths": [1, 2]}}),
    );
    assert_eq!(error_of(&m).0, -32602);
    s.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":77,\"method\":\"tools/list\",\"params\":[]}\n");
    let m = s.response(&json!(77));
    assert_eq!(
        error_of(&m),
        (-32602, "Invalid params: params must be an object".into())
    );
    // nothing changed on disk
    assert_eq!(
        std::fs::read_to_string(dir.path().join("f.txt")).unwrap(),
        "content"
    );
    still_answers(&mut s);
}

#[test]
fn oversized_line_is_refused_without_buffering_it() {
    let (mut s, _d) = server();
    let mut big = vec![b'x'; 5 * 1024 * 1024];
    big.push(b'\n');
    s.send_raw(&big);
    let m = s.recv();
    assert_eq!(m["id"], Value::Null);
    assert_eq!(
        error_of(&m),
        (
            -32600,
            "Invalid Request: message exceeds the limit of 4194304 bytes".into()
        )
    );
    still_answers(&mut s);
}

#[test]
fn invalid_utf8_is_a_parse_error() {
    let (mut s, _d) = server();
    s.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\xff\"}\n");
    assert_eq!(
        error_of(&s.recv()),
        (-32700, "Parse error: message is not valid UTF-8".into())
    );
    still_answers(&mut s);
}

#[test]
fn requests_before_initialize_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&["--allow-read", dir.path().to_str().unwrap()]);
    let m = s.request("tools/list", json!({}));
    assert_eq!(
        error_of(&m),
        (
            -32600,
            "Invalid Request: the session is not initialized; send initialize first".into()
        )
    );
    let m = s.request("tools/call", json!({"name": "list_allowed_directories"}));
    assert_eq!(error_of(&m).0, -32600);
    assert!(s.worker_pids().is_empty(), "no worker before initialize");
    s.initialize();
    let m = s.request("initialize", json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}));
    assert_eq!(
        error_of(&m),
        (-32600, "Invalid Request: already initialized".into())
    );
    still_answers(&mut s);
}

#[test]
fn worker_dying_mid_call_fails_that_call_only() {
    let (mut s, dir) = server();
    s.tool_names();
    // The serving process (beneath the outer process and its PID namespace's init).
    let w = s.serving_pids()[0];
    // Freeze the worker so the call is certainly in flight when it dies.
    signal(w, libc::SIGSTOP);
    s.send(&json!({"jsonrpc": "2.0", "id": 900, "method": "tools/call", "params": {"name": "read_text_file", "arguments": {"path": dir.path().join("f.txt")}}}));
    std::thread::sleep(Duration::from_millis(200));
    signal(w, libc::SIGKILL);
    let m = s.response(&json!(900));
    let (code, msg) = error_of(&m);
    assert_eq!(code, -32603, "{msg}\n{}", s.stderr());
    assert!(msg.contains("worker terminated unexpectedly"), "{msg}");
    assert!(
        wait_until(Duration::from_secs(5), || !alive(w)),
        "dead worker reaped"
    );
    // The broker lives on, and the next call gets a fresh worker.
    still_answers(&mut s);
    let (text, err) = s.call_text("read_text_file", json!({"path": dir.path().join("f.txt")}));
    assert!(!err, "{text}");
    assert_eq!(text, "content");
    let now = s.serving_pids();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], w);
}

#[test]
fn a_hostile_worker_cannot_take_the_broker_down() {
    // A "worker" that answers the handshake with garbage on fd 3, and one that exits at once.
    let d = tempfile::tempdir().unwrap();
    let real = mcpd_e2e::bin_dir().join("mcpd-worker");
    let real = real.to_str().unwrap();
    let garbage = d.path().join("garbage-worker");
    std::fs::write(
        &garbage,
        format!("#!/usr/bin/env python3\nimport os, sys\nif sys.argv[1:] == ['--version']:\n    os.execv({real:?}, [{real:?}, '--version'])\nos.write(3, b'\\xff\\xff\\xff\\x7f' + b'A' * 60)\nos.read(3, 100)\n"),
    )
    .unwrap();
    // Both pass the start-up check (they answer `--version` as the real worker does) and
    // fail only when a session starts one.
    let quitter = d.path().join("quitter-worker");
    std::fs::write(
        &quitter,
        format!("#!/bin/sh\n[ \"$1\" = --version ] && exec {real:?} --version\nexit 3\n"),
    )
    .unwrap();
    for w in [&garbage, &quitter] {
        std::fs::set_permissions(w, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut s = Server::start(&[
            "--allow-read",
            d.path().to_str().unwrap(),
            "--worker",
            w.to_str().unwrap(),
        ]);
        s.initialize();
        let m = s.request("tools/list", json!({}));
        assert_eq!(
            error_of(&m),
            (
                -32603,
                "The tool sandbox could not be started (see the server log)".into()
            )
        );
        let m = s.request(
            "tools/call",
            json!({"name": "read_text_file", "arguments": {"path": "x"}}),
        );
        assert_eq!(error_of(&m).0, -32603);
        still_answers(&mut s);
        let log = s.stderr();
        assert!(log.contains("worker start failed"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
        assert!(s.finish().success());
    }
}

#[test]
fn the_production_worker_has_no_conformance_fixtures() {
    // `mcpd-worker` refuses a tool set it does not have at start-up; the broker logs why, the
    // client gets the generic sandbox error, and the server keeps answering.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&[
        "--allow-read",
        dir.path().to_str().unwrap(),
        "--toolset",
        "conformance",
    ]);
    s.initialize();
    let m = s.request("tools/list", json!({}));
    assert_eq!(
        error_of(&m),
        (
            -32603,
            "The tool sandbox could not be started (see the server log)".into()
        )
    );
    still_answers(&mut s);
    let log = s.stderr();
    assert!(log.contains("worker start failed"), "{log}");
    assert!(log.contains("unknown tool set 'conformance'"), "{log}");
    assert!(s.finish().success());
}

#[test]
fn serve_and_doctor_refuse_a_missing_or_foreign_worker() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_str().unwrap();
    let serve = |worker: &std::path::Path| {
        let out = std::process::Command::new(mcpd_e2e::mcpd_bin())
            .args(["serve", "--stdio", "--allow-read", root, "--worker"])
            .arg(worker)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let doctor = |worker: &std::path::Path| {
        let cfg = d.path().join("doctor.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nworker = {:?}\n[clients.local]\nread = [{root:?}]\n",
                worker.to_str().unwrap()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(mcpd_e2e::mcpd_bin())
            .args(["doctor", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let missing = d.path().join("no-such-worker");
    let (code, e) = serve(&missing);
    assert_eq!(code, Some(2), "{e}");
    assert!(
        e.contains(&format!(
            "worker executable {} does not exist",
            missing.display()
        )) && e.contains("--worker PATH"),
        "{e}"
    );
    let (code, out) = doctor(&missing);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("worker: PROBLEM: worker executable") && out.contains("NOT usable"),
        "{out}"
    );
    // Not executable.
    let plain = d.path().join("plain");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, e) = serve(&plain);
    assert_eq!(code, Some(2));
    assert!(e.contains("is not executable"), "{e}");
    // An executable that is not a worker, and a worker of another IPC protocol.
    let foreign = d.path().join("foreign");
    std::fs::write(&foreign, "#!/bin/sh\necho hello\n").unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, e) = serve(&foreign);
    assert_eq!(code, Some(2));
    assert!(e.contains("did not answer the version handshake"), "{e}");
    std::fs::write(&foreign, "#!/bin/sh\necho mcpd-worker 0.0.1 ipc 1\n").unwrap();
    let (code, e) = serve(&foreign);
    assert_eq!(code, Some(2));
    assert!(
        e.contains("speaking ipc protocol 1") && e.contains("same release"),
        "{e}"
    );
    // The real one passes, and doctor says which.
    let real = mcpd_e2e::bin_dir().join("mcpd-worker");
    let (_, out) = doctor(&real);
    assert!(
        out.contains(&format!("worker: {} (mcpd-worker ", real.display())),
        "{out}"
    );
}
