//! The audit log, end to end: the real broker writes it, `mcpd audit verify` checks it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mcpd_e2e::{alive, mcpd_bin, signal, wait_until, Server};
use serde_json::{json, Value};

fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record ({e}): {l}")))
        .collect()
}

fn of<'a>(recs: &'a [Value], event: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["event"] == event).collect()
}

fn mcpd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(mcpd_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Fx {
    _t: tempfile::TempDir,
    data: PathBuf,
    logdir: PathBuf,
    log: PathBuf,
}

fn fx() -> Fx {
    let t = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(t.path()).unwrap();
    let data = base.join("data");
    let logdir = base.join("log");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&logdir).unwrap();
    std::fs::write(data.join("a.txt"), "alpha").unwrap();
    let log = logdir.join("audit.jsonl");
    Fx {
        _t: t,
        data,
        logdir,
        log,
    }
}

#[test]
fn a_scripted_session_records_every_kind_of_event() {
    let f = fx();
    let mut s = Server::start(&[
        "--allow-read",
        f.data.to_str().unwrap(),
        "--audit-log",
        f.log.to_str().unwrap(),
    ]);
    s.initialize();
    s.tool_names();
    let ok = s.call("read_text_file", json!({"path": f.data.join("a.txt")}));
    assert_eq!(ok["content"][0]["text"], "alpha");
    let denied = s.call("read_text_file", json!({"path": "/etc/passwd"}));
    assert_eq!(denied["isError"], true);
    let unknown = s.request("tools/call", json!({"name": "nope", "arguments": {}}));
    assert_eq!(unknown["error"]["code"], -32602);
    s.send_raw(b"{not json\n");
    s.recv();
    // worker crash: freeze, call, kill
    // The serving process (beneath the outer process and its PID namespace's init).
    let w = s.serving_pids()[0];
    signal(w, libc::SIGSTOP);
    s.send(&json!({"jsonrpc": "2.0", "id": 4242, "method": "tools/call", "params": {"name": "read_text_file", "arguments": {"path": f.data.join("a.txt")}}}));
    std::thread::sleep(Duration::from_millis(200));
    signal(w, libc::SIGKILL);
    assert_eq!(s.response(&json!(4242))["error"]["code"], -32603);
    assert!(wait_until(Duration::from_secs(5), || !alive(w)));
    let again = s.call("read_text_file", json!({"path": f.data.join("a.txt")}));
    assert_eq!(again["content"][0]["text"], "alpha");
    assert!(s.finish().success());

    let recs = records(&f.log);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["schema_version"], 1, "{r}");
        assert!(
            r["ts"].is_string()
                && r["id"].is_string()
                && r["hash"].is_string()
                && r["prev"].is_string(),
            "{r}"
        );
        if i > 0 {
            assert_eq!(
                r["seq"].as_u64().unwrap(),
                recs[i - 1]["seq"].as_u64().unwrap() + 1,
                "seq is consecutive"
            );
            assert_eq!(
                r["prev"],
                recs[i - 1]["hash"],
                "each record carries the previous hash"
            );
        }
    }
    for e in [
        "broker.start",
        "config.load",
        "auth.success",
        "session.open",
        "worker.spawn",
        "worker.exit",
        "session.close",
        "broker.stop",
    ] {
        assert!(!of(&recs, e).is_empty(), "no {e} record in {recs:#?}");
    }
    let cfg = of(&recs, "config.load")[0];
    assert_eq!(cfg["policy_digest"].as_str().unwrap().len(), 64);
    let spawn = of(&recs, "worker.spawn")[0];
    assert_eq!(spawn["landlock"], "FullyEnforced");
    assert_eq!(spawn["seccomp"], true);
    let session = of(&recs, "session.open")[0]["session"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(of(&recs, "session.open")[0]["principal"], "local");
    assert_eq!(of(&recs, "session.open")[0]["transport"], "stdio");
    let reqs = of(&recs, "request");
    assert!(reqs
        .iter()
        .all(|r| r["session"] == session.as_str() && r["principal"] == "local"));
    let calls: Vec<_> = reqs
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .collect();
    let allowed = calls.iter().find(|r| r["outcome"] == "success").unwrap();
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["tool"], "read_text_file");
    assert_eq!(allowed["args_digest"].as_str().unwrap().len(), 64);
    assert!(
        allowed["rule"]
            .as_str()
            .unwrap()
            .starts_with("clients.local tools=* read:"),
        "{allowed}"
    );
    assert_eq!(allowed["paths"][0], f.data.join("a.txt").to_str().unwrap());
    assert!(allowed["duration_us"].is_u64() && allowed["result_bytes"].as_u64().unwrap() > 0);
    assert!(
        allowed.get("args_preview").is_none(),
        "previews are off unless enabled"
    );
    let den = calls
        .iter()
        .find(|r| r["decision"] == "deny" && r["reason"] == "path_outside_scope")
        .unwrap();
    assert_eq!(den["outcome"], "denied");
    assert!(calls.iter().any(|r| r["reason"] == "unknown_tool"));
    assert!(calls
        .iter()
        .any(|r| r["outcome"] == "worker_crash" && r["request_id"] == 4242));
    assert!(reqs
        .iter()
        .any(|r| r["outcome"] == "invalid" && r["error_code"] == -32700));
    assert!(
        of(&recs, "worker.exit").iter().any(|r| r["signal"] == 9),
        "the killed worker's exit is recorded"
    );

    let (code, out, err) = mcpd(&["audit", "verify", f.log.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn verify_names_the_first_tampered_record() {
    let f = fx();
    let mut s = Server::start(&[
        "--allow-read",
        f.data.to_str().unwrap(),
        "--audit-log",
        f.log.to_str().unwrap(),
    ]);
    s.initialize();
    for _ in 0..3 {
        s.call("read_text_file", json!({"path": f.data.join("a.txt")}));
    }
    assert!(s.finish().success());
    let good = std::fs::read_to_string(&f.log).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    assert!(lines.len() > 8);
    let tampered = f.logdir.join("tampered.jsonl");
    // Modify record 5 (line 5): the outcome of a request.
    let mut l = lines.clone();
    let modified = l[4].replacen("\"principal\":\"local\"", "\"principal\":\"mallory\"", 1);
    assert_ne!(modified, l[4], "line 5 names the principal");
    l[4] = &modified;
    std::fs::write(&tampered, l.join("\n") + "\n").unwrap();
    let (code, out, err) = mcpd(&["audit", "verify", tampered.to_str().unwrap()]);
    assert_ne!(code, 0);
    let msg = format!("{out}{err}");
    assert!(
        msg.contains(&format!("{}:5 ", tampered.display())) && msg.contains("BROKEN: modified"),
        "{msg}"
    );
    // Delete line 3.
    let mut l = lines.clone();
    l.remove(2);
    std::fs::write(&tampered, l.join("\n") + "\n").unwrap();
    let (code, out, err) = mcpd(&["audit", "verify", tampered.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").to_lowercase().contains("deleted"),
        "{out}{err}"
    );
    // Swap lines 4 and 5.
    let mut l = lines.clone();
    l.swap(3, 4);
    std::fs::write(&tampered, l.join("\n") + "\n").unwrap();
    let (code, _, _) = mcpd(&["audit", "verify", tampered.to_str().unwrap()]);
    assert_ne!(code, 0);
    // The untouched log still verifies, and tail/query read it.
    let (code, out, err) = mcpd(&["audit", "verify", f.log.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = mcpd(&["audit", "tail", "-n", "2", f.log.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    let (code, out, _) = mcpd(&[
        "audit",
        "query",
        "--client",
        "local",
        "--since",
        "2000-01-01T00:00:00Z",
        f.log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        out.lines().count() >= 5 && out.lines().all(|l| l.contains("local")),
        "{out}"
    );
    let (code, out, _) = mcpd(&[
        "audit",
        "query",
        "--client",
        "nobody",
        f.log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(out.trim().is_empty(), "{out}");
    // Human lines by default: time, event and principal in aligned columns, then the fields.
    let log = f.log.to_str().unwrap();
    let (_, out, _) = mcpd(&["audit", "query", "--event", "request", log]);
    let first = out.lines().next().unwrap();
    assert_eq!(&first[27..29], "  ", "{out}");
    assert!(
        first[29..].starts_with("request         local             method="),
        "{out}"
    );
    assert!(
        out.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "{out}"
    );
    // --json: the records as logged.
    let (_, out, _) = mcpd(&["audit", "query", "--event", "request", "--json", log]);
    let recs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!recs.is_empty() && recs.iter().all(|r| r["event"] == "request"));
    let (_, out, _) = mcpd(&["audit", "tail", "-n", "1", "--json", log]);
    assert!(serde_json::from_str::<Value>(out.trim()).is_ok(), "{out}");
    // Relative times and --until: the last hour holds everything, the time before 2000 nothing.
    let all = records(&f.log).len();
    let (_, out, _) = mcpd(&["audit", "query", "--since", "1h", "--until", "0s", log]);
    assert_eq!(out.lines().count(), all, "{out}");
    let (code, out, _) = mcpd(&["audit", "query", "--until", "2000-01-01", log]);
    assert_eq!(code, 0);
    assert!(out.trim().is_empty(), "{out}");
    // Anything else is refused, with the accepted forms, before a file is read.
    for bad in ["yesterday", "2026-02-30", "5 minutes"] {
        let (code, _, err) = mcpd(&["audit", "query", "--since", bad, log]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(
            err.contains("is not a time") && err.contains("RFC 3339"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn every_answered_call_survives_kill_9_of_the_broker() {
    let f = fx();
    for round in 0..5u64 {
        let mut s = Server::start(&[
            "--allow-read",
            f.data.to_str().unwrap(),
            "--audit-log",
            f.log.to_str().unwrap(),
        ]);
        s.initialize();
        let mut answered = Vec::new();
        // Pipeline a burst of calls and kill the broker while they are being answered.
        let n = 40 + round * 7;
        for i in 0..n {
            let id = 10_000 + round * 1000 + i;
            s.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "read_text_file", "arguments": {"path": f.data.join("a.txt")}}}));
        }
        while answered.len() < (n as usize) / 2 {
            let m = s.recv();
            if let Some(id) = m.get("id").and_then(Value::as_u64) {
                answered.push(id);
            }
        }
        signal(s.child.id() as i32, libc::SIGKILL);
        // Whatever else was already on the pipe also counts as seen by the client.
        while let Some(m) = s.recv_timeout(Duration::from_millis(300)) {
            if let Some(id) = m.get("id").and_then(Value::as_u64) {
                answered.push(id);
            }
        }
        let text = std::fs::read_to_string(&f.log).unwrap();
        let logged: std::collections::HashSet<u64> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["event"] == "request")
            .filter_map(|r| r["request_id"].as_u64())
            .collect();
        for id in &answered {
            assert!(
                logged.contains(id),
                "round {round}: call {id} was answered but has no audit record"
            );
        }
        let (code, out, err) = mcpd(&["audit", "verify", f.log.to_str().unwrap()]);
        assert_eq!(
            code, 0,
            "round {round}: the chain must verify up to the last complete line:\n{out}{err}"
        );
    }
}

#[test]
fn the_worker_cannot_reach_the_audit_log() {
    let f = fx();
    std::os::unix::fs::symlink(&f.log, f.data.join("audit-link")).unwrap();
    std::os::unix::fs::symlink(&f.logdir, f.data.join("logdir-link")).unwrap();
    let mut s = Server::start(&[
        "--allow-write",
        f.data.to_str().unwrap(),
        "--audit-log",
        f.log.to_str().unwrap(),
    ]);
    s.initialize();
    for (tool, args) in [
        ("read_text_file", json!({"path": f.log})),
        ("read_text_file", json!({"path": f.data.join("audit-link")})),
        (
            "read_text_file",
            json!({"path": f.data.join("logdir-link/audit.jsonl")}),
        ),
        (
            "write_file",
            json!({"path": f.data.join("audit-link"), "content": "forged"}),
        ),
        (
            "write_file",
            json!({"path": f.data.join("logdir-link/audit.jsonl"), "content": "forged"}),
        ),
        ("list_directory", json!({"path": f.logdir})),
        ("delete_file", json!({"path": f.log})),
    ] {
        let r = s.call(tool, args.clone());
        assert_eq!(r["isError"], true, "{tool} {args}: {r}");
        assert_eq!(
            r["content"][0]["text"],
            "Access denied - path outside allowed directories"
        );
    }
    // The broker's log descriptor does not leak into the worker.
    let w = s.worker_pids()[0];
    for fd in std::fs::read_dir(format!("/proc/{w}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        assert!(
            !target.starts_with(&f.logdir),
            "worker holds {}",
            target.display()
        );
    }
    assert!(s.finish().success());
    let text = std::fs::read_to_string(&f.log).unwrap();
    assert!(!text.contains("forged"));
    // An audit log inside a client's roots is refused at start-up.
    let (code, _, err) = mcpd(&[
        "serve",
        "--stdio",
        "--allow-read",
        f.data.to_str().unwrap(),
        "--audit-log",
        f.data.join("x.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("lies inside"), "{err}");
}

#[test]
fn a_full_disk_fails_closed_without_breaking_the_chain() {
    let f = fx();
    let mnt = f.logdir.join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=24k",
            "tmpfs",
            mnt.to_str().unwrap(),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mcpd_e2e::require(ok, "a tmpfs mount", "mounting needs root") {
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    let log = mnt.join("audit.jsonl");
    let mut s = Server::start(&[
        "--allow-read",
        f.data.to_str().unwrap(),
        "--audit-log",
        log.to_str().unwrap(),
    ]);
    s.initialize();
    let mut refused = 0;
    let mut served = 0;
    for _ in 0..400 {
        let r = s.request(
            "tools/call",
            json!({"name": "read_text_file", "arguments": {"path": f.data.join("a.txt")}}),
        );
        if r.get("error").is_some() {
            assert_eq!(
                r["error"]["message"], "The audit log cannot be written; the request was refused",
                "{r}"
            );
            refused += 1;
            if refused > 5 {
                break;
            }
        } else {
            assert_eq!(r["result"]["content"][0]["text"], "alpha");
            assert!(refused == 0, "no call is served after the log failed");
            served += 1;
        }
    }
    assert!(
        served > 0 && refused > 0,
        "served {served}, refused {refused}"
    );
    assert!(s.stderr().contains("AUDIT LOG FAILURE"), "{}", s.stderr());
    drop(s);
    let (code, out, err) = mcpd(&["audit", "verify", log.to_str().unwrap()]);
    assert_eq!(code, 0, "no partial record breaks the chain:\n{out}{err}");
}

/// HTTP rejects (403 foreign Host, 415 media type, 400 malformed, 404 unknown session, 405
/// method) are audited like stdio's, before their response; requests the engine answered are
/// recorded once, by the engine.
#[test]
fn http_transport_rejects_are_audited() {
    use mcpd_e2e::http::HttpServer;
    let f = fx();
    let srv = HttpServer::start(&[
        "--allow-read",
        f.data.to_str().unwrap(),
        "--audit-log",
        f.log.to_str().unwrap(),
    ]);
    let sid = srv.initialize();
    let json = ("Content-Type", "application/json");
    let accept = ("Accept", "application/json, text/event-stream");
    let sid_h = ("Mcp-Session-Id", sid.as_str());
    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    /// Headers, HTTP method, body, expected status.
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a [u8], u16);
    let cases: Vec<Case> = vec![
        (
            vec![json, accept, sid_h, ("Host", "evil.example")],
            "POST",
            ping,
            403,
        ),
        (
            vec![("Content-Type", "text/plain"), accept, sid_h],
            "POST",
            ping,
            415,
        ),
        (
            vec![json, accept, sid_h],
            "POST",
            br#"{"jsonrpc":"2.0","id":9,"method":5}"#,
            400,
        ),
        (
            vec![
                json,
                accept,
                ("Mcp-Session-Id", "0123456789abcdef0123456789abcdef"),
            ],
            "POST",
            ping,
            404,
        ),
        (vec![], "PUT", b"", 405),
    ];
    for (headers, method, body, want) in &cases {
        assert_eq!(srv.request(method, headers, body).status, *want);
    }
    // The engine answers this one (and records it as a request of its own).
    assert_eq!(srv.rpc(&sid, 2, "ping", json!({}))["result"], json!({}));
    let recs = records(&f.log);
    let rejects: Vec<&Value> = of(&recs, "request")
        .into_iter()
        .filter(|r| r["outcome"] == "invalid" && r["transport"] == "http")
        .collect();
    let statuses: Vec<u64> = rejects
        .iter()
        .map(|r| r["http_status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![403, 415, 400, 404, 405], "{rejects:?}");
    for r in &rejects {
        assert_eq!(r["principal"], "local", "{r}");
        assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
    }
    let pings = of(&recs, "request")
        .into_iter()
        .filter(|r| r["method"] == "ping")
        .count();
    assert_eq!(pings, 1, "the engine's answer is recorded once");
    let out = Command::new(mcpd_bin())
        .args(["audit", "verify", f.log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A keyed configuration: client `c` reads `data`, the log at `log` signed with `sk`.
fn keyed_config(f: &Fx, sk: &Path, every: u64) -> PathBuf {
    let cfg = f.logdir.parent().unwrap().join("keyed.toml");
    std::fs::write(
        &cfg,
        format!(
            "[stdio]\nclient = \"c\"\n[clients.c]\nread = [\"{}\"]\n[audit]\npath = \"{}\"\ncheckpoint_key = \"{}\"\ncheckpoint_every = {every}\n",
            f.data.display(),
            f.log.display(),
            sk.display()
        ),
    )
    .unwrap();
    cfg
}

fn keys(f: &Fx) -> (PathBuf, PathBuf) {
    let dir = f.logdir.parent().unwrap().join("keys");
    std::fs::create_dir(&dir).unwrap();
    let (sk, pk) = (dir.join("audit.key"), dir.join("audit.pub"));
    let (code, out, err) = mcpd(&[
        "audit",
        "keygen",
        "--private",
        sk.to_str().unwrap(),
        "--public",
        pk.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    (sk, pk)
}

fn session(cfg: &Path, f: &Fx, calls: usize) {
    let mut s = Server::start(&["--config", cfg.to_str().unwrap()]);
    s.initialize();
    for _ in 0..calls {
        let r = s.call("read_text_file", json!({"path": f.data.join("a.txt")}));
        assert_eq!(r["content"][0]["text"], "alpha", "{r}");
    }
    assert!(s.finish().success());
}

#[test]
fn with_a_key_verify_fails_when_the_head_is_deleted_or_rolled_back() {
    let f = fx();
    let (sk, pk) = keys(&f);
    let cfg = keyed_config(&f, &sk, 4);
    let (code, out, err) = mcpd(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("checkpoint_key is not set"), "{out}");
    let head = f.logdir.join("audit.jsonl.head");
    session(&cfg, &f, 3);
    let old_head = std::fs::read_to_string(&head).unwrap();
    session(&cfg, &f, 6);
    let new_head = std::fs::read_to_string(&head).unwrap();
    assert_ne!(old_head, new_head);
    let (log, key) = (f.log.to_str().unwrap(), pk.to_str().unwrap());
    let verify = |extra: &[&str]| {
        let mut a = vec!["audit", "verify", "--key", key];
        a.extend_from_slice(extra);
        a.push(log);
        mcpd(&a)
    };
    // Intact: passes, head checked.
    let (code, out, err) = verify(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("head checked"), "{out}");
    // `audit.jsonl*` also names the head file: it is not taken for a log file.
    let (code, out, err) = mcpd(&["audit", "verify", "--key", key, log, head.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("in 1 file(s)") && out.contains("head checked"),
        "{out}"
    );
    // Head deleted: a failure, saying what that means.
    std::fs::remove_file(&head).unwrap();
    let (code, out, err) = verify(&[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("BROKEN: head file missing")
            && out.contains(head.to_str().unwrap())
            && out.contains("records cut off the end of the log cannot be detected"),
        "{out}"
    );
    // ... unless the operator knowingly verifies without one, which the report says loudly.
    let (code, out, err) = verify(&["--no-head"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("HEAD FILE NOT CHECKED"), "{out}");
    let (code, _, err) = mcpd(&["audit", "verify", "--no-head", log]);
    assert_eq!(code, 2, "--no-head needs --key: {err}");
    // The log cut at a later checkpoint than the old head names, the old head put back.
    let full = std::fs::read_to_string(&f.log).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    let old: Value = serde_json::from_str(&old_head).unwrap();
    let old_seq = old["checkpoint_seq"].as_u64().unwrap();
    let cut = lines
        .iter()
        .position(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            r["event"] == "log.checkpoint" && r["seq"].as_u64().unwrap() > old_seq
        })
        .unwrap();
    assert!(cut + 4 < lines.len(), "a real tail is cut");
    std::fs::write(&f.log, lines[..=cut].join("\n") + "\n").unwrap();
    std::fs::write(&head, &old_head).unwrap();
    let (code, out, err) = verify(&[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("BROKEN: head file stale") && out.contains("rolled back"),
        "{out}"
    );
    // A copy of the real head kept elsewhere names the cut (--head FILE).
    let copy = f.logdir.parent().unwrap().join("head-copy");
    std::fs::write(&copy, &new_head).unwrap();
    let (code, out, err) = verify(&["--head", copy.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("BROKEN: truncated"), "{out}");
    // The broker does not sign on top of a log cut below its head.
    std::fs::write(&head, &new_head).unwrap();
    let (code, _, err) = mcpd(&["serve", "--stdio", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("cut off or replaced"), "{err}");
    // The whole log and its head restored: passes again, and the broker continues it.
    std::fs::write(&f.log, &full).unwrap();
    let (code, out, err) = verify(&[]);
    assert_eq!(code, 0, "{out}{err}");
    session(&cfg, &f, 1);
    let (code, out, err) = verify(&[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn an_audit_path_through_a_symlink_into_a_client_root_is_refused() {
    let f = fx();
    let data = f.data.to_str().unwrap();
    // The log path itself a link to a file in the client's write root.
    std::fs::write(f.data.join("stolen.jsonl"), "").unwrap();
    let link = f.logdir.join("audit.jsonl");
    std::os::unix::fs::symlink(f.data.join("stolen.jsonl"), &link).unwrap();
    let (code, _, err) = mcpd(&[
        "serve",
        "--stdio",
        "--allow-write",
        data,
        "--audit-log",
        link.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "audit log {} lies inside {data}",
            f.data.join("stolen.jsonl").display()
        )),
        "{err}"
    );
    // The same in a configuration file: check-config refuses it.
    let cfg = f.logdir.parent().unwrap().join("link.toml");
    std::fs::write(
        &cfg,
        format!(
            "[stdio]\nclient = \"c\"\n[clients.c]\nwrite = [\"{data}\"]\n[audit]\npath = \"{}\"\n",
            link.display()
        ),
    )
    .unwrap();
    let (code, _, err) = mcpd(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("lies inside"), "{err}");
    // The log's directory a link into the write root.
    let dirlink = f.logdir.join("dir");
    std::os::unix::fs::symlink(&f.data, &dirlink).unwrap();
    let (code, _, err) = mcpd(&[
        "serve",
        "--stdio",
        "--allow-write",
        data,
        "--audit-log",
        dirlink.join("audit.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("lies inside"), "{err}");
    assert!(!f.data.join("audit.jsonl").exists());
    // A link planted at the log path to a file that does not exist yet (nothing to resolve at
    // load): refused when the log is opened, never created through.
    let dangling = f.logdir.join("planted.jsonl");
    std::os::unix::fs::symlink(f.data.join("created.jsonl"), &dangling).unwrap();
    let (code, _, err) = mcpd(&[
        "serve",
        "--stdio",
        "--allow-write",
        data,
        "--audit-log",
        dangling.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("is a symbolic link: refused"), "{err}");
    assert!(!f.data.join("created.jsonl").exists());
    assert_eq!(
        std::fs::read_to_string(f.data.join("stolen.jsonl")).unwrap(),
        ""
    );
}

#[test]
fn check_config_is_loud_about_an_audit_log_without_a_checkpoint_key() {
    let f = fx();
    let cfg = f.logdir.parent().unwrap().join("nokey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[stdio]\nclient = \"c\"\n[clients.c]\nread = [\"{}\"]\n[audit]\npath = \"{}\"\n",
            f.data.display(),
            f.log.display()
        ),
    )
    .unwrap();
    let (code, out, err) = mcpd(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("WARNING: audit.checkpoint_key is not set: anyone who can write the audit log can rewrite it")
            && first.contains("mcpd audit keygen"),
        "{out}"
    );
    assert!(out.contains("configuration OK"), "{out}");
}
