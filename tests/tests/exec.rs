//! Command execution, code sessions and operator tools, end to end through `mcpd serve --stdio`:
//! the program runs for real inside the client's worker sandbox, and the *kernel* refuses
//! what the policy did not grant even to an allow-listed program.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mcpd_e2e::{alive, wait_until, Server};
use serde_json::{json, Value};

struct Dirs {
    _top: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn dirs() -> Dirs {
    let top = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(top.path()).unwrap();
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(root.join("inside.txt"), "inside\n").unwrap();
    std::fs::write(outside.join("secret.txt"), "outside secret\n").unwrap();
    Dirs {
        _top: top,
        root,
        outside,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Start with a config file (written next to the roots, outside them).
fn start_with_config(d: &Dirs, toml: &str) -> Server {
    let cfg = d.root.parent().unwrap().join("mcpd.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut srv = Server::start(&["--config", s(&cfg)]);
    srv.initialize();
    srv
}

/// A client with a shell grant and `sleep`: a command line may run the listed programs (a
/// program granted on its own, such as `sh` in `exec`, may not: it runs in its own exec domain).
fn start_shell(d: &Dirs) -> Server {
    let toml = format!(
        "[clients.local]\nwrite = [\"{}\"]\nexec = [\"sleep\"]\nshell = true\n",
        s(&d.root)
    );
    start_with_config(d, &toml)
}

fn structured(r: &Value) -> &Value {
    &r["structuredContent"]
}

fn text(r: &Value) -> String {
    r["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The broker still answers, and file tools still work.
fn still_serving(srv: &mut Server, d: &Dirs) {
    assert_eq!(srv.result("ping", json!({})), json!({}));
    let (t, err) = srv.call_text(
        "read_text_file",
        json!({"path": s(&d.root.join("inside.txt"))}),
    );
    assert!(!err, "{t}");
    assert_eq!(t, "inside\n");
}

#[test]
fn an_allowed_program_still_cannot_read_outside_the_client_paths() {
    let d = dirs();
    let mut srv = Server::start(&["--allow-write", s(&d.root), "--allow-exec", "cat"]);
    srv.initialize();
    assert!(srv.tool_names().contains(&"run_command".to_string()));
    let ok = srv.call(
        "run_command",
        json!({"command": "cat", "args": ["inside.txt"]}),
    );
    assert_eq!(structured(&ok)["exit_code"], 0, "{ok}");
    assert_eq!(structured(&ok)["stdout"], "inside\n");
    // `cat` is allowed; /etc/hostname and the sibling directory are not: they do not exist in
    // the worker's view (Landlock's EACCES behind it is tested in worker/tests/kernel.rs).
    for target in [
        "/etc/hostname".to_string(),
        d.outside.join("secret.txt").display().to_string(),
    ] {
        let r = srv.call("run_command", json!({"command": "cat", "args": [target]}));
        assert_eq!(r["isError"], true, "{r}");
        assert_eq!(structured(&r)["exit_code"], 1, "{r}");
        assert!(
            structured(&r)["stderr"]
                .as_str()
                .unwrap()
                .contains("No such file or directory"),
            "{r}"
        );
        assert!(!text(&r).contains("outside secret"));
    }
    // A program that is not allow-listed is refused by the broker's policy...
    let r = srv.call("run_command", json!({"command": "ls", "args": ["/"]}));
    assert_eq!(r["isError"], true);
    assert_eq!(text(&r), "Program not allowed by policy");
    // ...and a shell is not available without a shell grant.
    let r = srv.call(
        "run_command",
        json!({"command": "cat /etc/hostname", "shell": true}),
    );
    assert_eq!(text(&r), "Shell command lines are not allowed by policy");
    // cwd outside the roots is refused like any other path.
    let r = srv.call(
        "run_command",
        json!({"command": "cat", "args": ["secret.txt"], "cwd": s(&d.outside)}),
    );
    assert_eq!(text(&r), "Access denied - path outside allowed directories");
    still_serving(&mut srv, &d);
}

#[test]
fn writes_outside_the_write_paths_fail_in_the_kernel() {
    let d = dirs();
    let ro = d.root.parent().unwrap().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mut srv = Server::start(&[
        "--allow-write",
        s(&d.root),
        "--allow-read",
        s(&ro),
        "--allow-exec",
        "touch",
    ]);
    srv.initialize();
    // The first read root is the default cwd: creating a file there is refused by the kernel.
    let r = srv.call(
        "run_command",
        json!({"command": "touch", "args": ["made.txt"]}),
    );
    assert_eq!(structured(&r)["exit_code"], 1, "{r}");
    assert!(!ro.join("made.txt").exists());
    let r = srv.call(
        "run_command",
        json!({"command": "touch", "args": ["made.txt"], "cwd": s(&d.root)}),
    );
    assert_eq!(structured(&r)["exit_code"], 0, "{r}");
    assert!(d.root.join("made.txt").exists());
    // Outside every root: the path does not exist in the view. In the read-only root: the
    // mount is read-only (and Landlock would refuse it too).
    for (target, why) in [
        (d.outside.join("x.txt"), "No such file or directory"),
        (ro.join("x.txt"), "Read-only file system"),
    ] {
        let r = srv.call(
            "run_command",
            json!({"command": "touch", "args": [s(&target)]}),
        );
        assert_eq!(structured(&r)["exit_code"], 1, "{r}");
        assert!(text(&r).contains(why), "{why}: {r}");
        assert!(!target.exists(), "{} was created", target.display());
    }
    // /tmp is the worker's own: a file made there never appears on the host.
    let target = PathBuf::from("/tmp/mcpd-e2e-should-not-exist");
    let r = srv.call(
        "run_command",
        json!({"command": "touch", "args": [s(&target)]}),
    );
    assert_eq!(structured(&r)["exit_code"], 0, "{r}");
    assert!(
        !target.exists(),
        "{} was created on the host",
        target.display()
    );
}

#[test]
fn network_is_denied_unless_granted() {
    let d = dirs();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n    print('CONNECTED')\nexcept OSError as e:\n    print('DENIED', e.errno)\n"
    );
    let mut srv = Server::start(&["--allow-write", s(&d.root), "--allow-exec", "python3"]);
    srv.initialize();
    let r = srv.call(
        "run_command",
        json!({"command": "python3", "args": ["-c", code]}),
    );
    assert_eq!(structured(&r)["stdout"], "DENIED 13\n", "{r}"); // EACCES
    assert!(listener.accept().is_err(), "the listener saw a connection");
    drop(srv);

    let toml = format!(
        "[clients.local]\nwrite = [\"{}\"]\nexec = [\"python3\"]\nnetwork = true\n",
        s(&d.root)
    );
    let mut srv = start_with_config(&d, &toml);
    let r = srv.call(
        "run_command",
        json!({"command": "python3", "args": ["-c", code]}),
    );
    assert_eq!(structured(&r)["stdout"], "CONNECTED\n", "{r}");
    assert!(wait_until(Duration::from_secs(5), || listener
        .accept()
        .is_ok()));
}

#[test]
fn commands_inherit_the_seccomp_filter_and_cannot_touch_other_workers() {
    let d = dirs();
    let mut victim = Server::start(&["--allow-read", s(&d.root)]);
    victim.initialize();
    victim.tool_names();
    let victim_worker = *victim.worker_pids().first().expect("victim worker");
    let mut srv = Server::start(&[
        "--allow-write",
        s(&d.root),
        "--allow-exec",
        "python3",
        "--allow-exec",
        "kill",
    ]);
    srv.initialize();
    // kill(2) of another client's worker: it is not in this worker's PID namespace (Landlock's
    // signal scope behind it is tested in worker/tests/kernel.rs).
    let r = srv.call(
        "run_command",
        json!({"command": "kill", "args": ["-9", victim_worker.to_string()]}),
    );
    assert_ne!(structured(&r)["exit_code"], 0, "{r}");
    assert!(text(&r).contains("No such process"), "{r}");
    // ptrace, process_vm_readv, unshare(CLONE_NEWUSER), io_uring_setup, bpf: EPERM from seccomp.
    let code = format!(
        r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def res(rc):
    return "ok" if rc == 0 else os.strerror(ctypes.get_errno())
print("ptrace", res(libc.ptrace(16, {victim_worker}, 0, 0)))
print("unshare", res(libc.unshare(0x10000000)))
print("io_uring_setup", res(libc.syscall(425, 8, ctypes.create_string_buffer(120))))
print("bpf", res(libc.syscall(321, 0, 0, 0)))
print("mount", res(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)))
"#
    );
    let r = srv.call(
        "run_command",
        json!({"command": "python3", "args": ["-c", code]}),
    );
    let out = structured(&r)["stdout"].as_str().unwrap().to_string();
    for line in [
        "ptrace Operation not permitted",
        "unshare Operation not permitted",
        "io_uring_setup Operation not permitted",
        "bpf Operation not permitted",
        "mount Operation not permitted",
    ] {
        assert!(out.contains(line), "missing '{line}' in:\n{out}\n{r}");
    }
    assert!(alive(victim_worker), "the other client's worker was hurt");
    assert_eq!(victim.result("ping", json!({})), json!({}));
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let d = dirs();
    let mut srv = start_shell(&d);
    let started = Instant::now();
    let r = srv.call(
        "run_command",
        json!({"command": "sleep 300 & echo $!; sleep 300", "shell": true, "timeout_secs": 1}),
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(r["isError"], true);
    assert_eq!(structured(&r)["stopped"], "timeout", "{r}");
    assert!(text(&r).starts_with("Timed out after 1 s"), "{r}");
    let bg_ns: i32 = structured(&r)["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The pid the command printed is its PID namespace's; the host's is looked up (none left
    // means it is gone already).
    let bg = srv.host_pid(bg_ns).unwrap_or(-1);
    assert!(
        wait_until(Duration::from_secs(5), || !alive(bg)),
        "background process {bg} survived the timeout"
    );
    still_serving(&mut srv, &d);
}

#[test]
fn cancellation_kills_the_whole_process_group() {
    let d = dirs();
    let mut srv = start_shell(&d);
    srv.send(&json!({"jsonrpc": "2.0", "id": "long", "method": "tools/call", "params": {
        "name": "run_command",
        "arguments": {"command": "sleep 300 & echo $! > bg.pid; echo $$ > leader.pid; sleep 300", "shell": true}
    }}));
    let pidfile = d.root.join("bg.pid");
    let leaderfile = d.root.join("leader.pid");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|t| t.ends_with('\n'))
            && std::fs::read_to_string(&leaderfile).is_ok_and(|t| t.ends_with('\n'))
    }));
    let ns_pid =
        |f: &PathBuf| -> i32 { std::fs::read_to_string(f).unwrap().trim().parse().unwrap() };
    let bg = srv
        .host_pid(ns_pid(&pidfile))
        .expect("background sleep on the host");
    let leader = srv
        .host_pid(ns_pid(&leaderfile))
        .expect("leader on the host");
    assert!(alive(bg) && alive(leader));
    srv.send(&json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "long", "reason": "test"}}));
    assert!(
        wait_until(Duration::from_secs(5), || !alive(bg) && !alive(leader)),
        "processes survived cancellation"
    );
    // No response for a cancelled request; the session goes on.
    still_serving(&mut srv, &d);
}

#[test]
fn end_of_session_kills_running_commands() {
    let d = dirs();
    let mut srv = start_shell(&d);
    srv.send(
        &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "run_command",
            "arguments": {"command": "echo $$ > leader.pid; sleep 300", "shell": true}
        }}),
    );
    let leaderfile = d.root.join("leader.pid");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&leaderfile).is_ok_and(|t| t.ends_with('\n'))
    }));
    let leader_ns: i32 = std::fs::read_to_string(&leaderfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let leader = srv.host_pid(leader_ns).expect("leader on the host");
    srv.child.kill().unwrap(); // the broker dies: its worker and the worker's commands follow
    assert!(
        wait_until(Duration::from_secs(10), || !alive(leader)),
        "command {leader} outlived its session"
    );
}

/// The default of `max_output_bytes` (`mcpd_ipc::DEFAULT_MAX_OUTPUT_BYTES`; this crate links
/// neither the ipc nor the policy crate).
const DEFAULT_MAX_OUTPUT_BYTES: usize = 10 * 1024 * 1024;
/// What a command or code result may add around its output (`mcpd_ipc::RESULT_ENVELOPE_BYTES`).
const RESULT_ENVELOPE_BYTES: usize = 2048;

/// The size of a result as `max_output_bytes` counts it: the text content plus
/// `structuredContent` as serialised.
fn result_size(r: &Value) -> usize {
    let text: usize = r["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().map_or(0, str::len))
        .sum();
    text + r
        .get("structuredContent")
        .map_or(0, |v| v.to_string().len())
}

/// A capped result: marked truncated, stdout a prefix of `fill` of exactly `kept` bytes, and
/// no larger than `cap` plus the envelope.
fn assert_capped(r: &Value, fill: char, kept: usize, cap: usize) {
    assert_eq!(structured(r)["truncated"], true, "{}", &text(r)[..200]);
    let out = structured(r)["stdout"].as_str().unwrap();
    assert_eq!(out.len(), kept);
    assert!(out.chars().all(|c| c == fill));
    let size = result_size(r);
    assert!(
        size <= cap + RESULT_ENVELOPE_BYTES,
        "result of {size} bytes exceeds {cap} + {RESULT_ENVELOPE_BYTES}"
    );
    assert!(
        size > cap - RESULT_ENVELOPE_BYTES,
        "{size}: the cap was not used"
    );
}

#[test]
fn output_is_capped_and_a_flood_is_stopped() {
    let d = dirs();
    let toml = format!(
        "[clients.local]\nwrite = [\"{}\"]\nexec = [\"python3\"]\n[clients.local.limits]\nmax_output_bytes = 65536\n",
        s(&d.root)
    );
    let mut srv = start_with_config(&d, &toml);
    let r = srv.call(
        "run_command",
        json!({"command": "python3", "args": ["-c", "import sys; sys.stdout.write('x' * 100000)"]}),
    );
    assert_eq!(structured(&r)["exit_code"], 0, "{r}");
    // stdout is returned twice (text and structuredContent): 65536 bytes of result hold
    // 32768 of it; the capture kept 65536 and had already discarded 34464.
    assert_capped(&r, 'x', 32768, 65536);
    assert_eq!(structured(&r)["discarded_bytes"], 67232);
    assert!(text(&r).ends_with("[output truncated: 67232 bytes discarded]\n"));
    let started = Instant::now();
    let r = srv.call(
        "run_command",
        json!({"command": "python3", "args": ["-c", "import sys\nwhile True: sys.stdout.write('y' * 65536)"], "timeout_secs": 60}),
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(structured(&r)["stopped"], "output_limit", "{r}");
    assert!(
        text(&r).starts_with("Output limit exceeded"),
        "{}",
        text(&r)
    );
    still_serving(&mut srv, &d);
}

#[test]
fn a_9_mib_command_output_ends_as_a_capped_result_and_the_worker_lives() {
    let d = dirs();
    let toml = format!(
        r#"
[clients.local]
roles = ["ops"]
write = ["{root}"]
exec = ["python3", "head"]
[roles.ops]
[tools.zeros]
description = "NUL bytes"
command = ["/usr/bin/head", "-c", "{{n}}", "/dev/zero"]
input_schema = {{ type = "object", properties = {{ n = {{ type = "integer" }} }}, required = ["n"] }}
roles = ["ops"]
"#,
        root = s(&d.root)
    );
    let mut srv = start_with_config(&d, &toml);
    // The worker starts at initialize; tools/list waits until it is ready.
    srv.tool_names();
    let workers = srv.worker_pids();
    assert_eq!(workers.len(), 1, "{workers:?}");
    let cap = DEFAULT_MAX_OUTPUT_BYTES;
    // 9 MiB of 'x': each byte costs 2 (text + JSON), so half the default cap is kept.
    let r = srv.call(
        "run_command",
        json!({"command": "python3", "args": ["-c", "import sys; sys.stdout.write('x' * 9437184)"]}),
    );
    assert_eq!(structured(&r)["exit_code"], 0, "{}", &text(&r)[..200]);
    assert_capped(&r, 'x', 5 * 1024 * 1024, cap);
    assert_eq!(structured(&r)["discarded_bytes"], 9437184 - 5 * 1024 * 1024);
    assert!(text(&r).ends_with("[output truncated: 4194304 bytes discarded]\n"));
    // 9 MiB of NUL bytes: 1 byte each in the text, 6 (`\u0000`) in structuredContent, so a
    // seventh of the cap is kept (this used to be 9 MiB twice, one of them escaped to 54 MiB).
    let nul_kept = cap / 7;
    for r in [
        srv.call(
            "run_command",
            json!({"command": "head", "args": ["-c", "9437184", "/dev/zero"]}),
        ),
        srv.call("zeros", json!({"n": 9437184})),
    ] {
        assert_eq!(
            structured(&r)["exit_code"],
            0,
            "{}",
            structured(&r)["stderr"]
        );
        assert_capped(&r, '\0', nul_kept, cap);
        assert_eq!(structured(&r)["discarded_bytes"], 9437184 - nul_kept);
    }
    // Same worker, still serving.
    assert_eq!(srv.worker_pids(), workers);
    still_serving(&mut srv, &d);
    let r = srv.call(
        "run_command",
        json!({"command": "python3", "args": ["-c", "print('small')"]}),
    );
    assert_eq!(structured(&r)["stdout"], "small\n", "{r}");
    assert_eq!(structured(&r)["truncated"], false);
}

#[test]
fn a_9_mib_print_in_a_code_session_is_capped_and_the_session_lives() {
    let d = dirs();
    let mut srv = Server::start(&["--allow-write", s(&d.root), "--allow-code", "python3"]);
    srv.initialize();
    let r = srv.call(
        "run_code",
        json!({"language": "python3", "code": "kept = 'set before'"}),
    );
    assert_eq!(structured(&r)["status"], "ok", "{r}");
    let workers = srv.worker_pids();
    let r = srv.call(
        "run_code",
        json!({"language": "python3", "code": "print('x' * 9*1024*1024)"}),
    );
    assert_eq!(structured(&r)["status"], "ok", "{}", &text(&r)[..200]);
    assert_eq!(structured(&r)["session_kept"], true);
    // print adds a newline: 9 MiB + 1 bytes, of which the first 5 MiB fit the default cap.
    assert_capped(&r, 'x', 5 * 1024 * 1024, DEFAULT_MAX_OUTPUT_BYTES);
    assert!(
        text(&r).ends_with("\n[output truncated: 4194305 bytes discarded]\n"),
        "{}",
        &text(&r)[text(&r).len() - 100..]
    );
    // The session (and its worker) lived: the variable is still there.
    let r = srv.call("run_code", json!({"language": "python3", "code": "kept"}));
    assert_eq!(structured(&r)["stdout"], "'set before'\n", "{r}");
    assert_eq!(structured(&r)["session_runs"], 3);
    assert_eq!(srv.worker_pids(), workers);
    still_serving(&mut srv, &d);
}

#[test]
fn stdin_environment_and_literal_arguments() {
    let d = dirs();
    let toml = format!(
        "[clients.local]\nwrite = [\"{}\"]\nexec = [\"python3\", \"printf\"]\nenv = [\"GREETING\", \"FIXED=operator\"]\n",
        s(&d.root)
    );
    let mut srv = start_with_config(&d, &toml);
    let r = srv.call(
        "run_command",
        json!({"command": "python3", "args": ["-c", "import os, sys; print(sys.stdin.read().upper(), os.environ.get('GREETING'), os.environ.get('FIXED'), os.environ.get('MCPD_LOG'), sorted(os.environ))"],
               "stdin": "piped in", "env": {"GREETING": "hi"}}),
    );
    assert_eq!(
        structured(&r)["stdout"],
        "PIPED IN hi operator None ['FIXED', 'GREETING', 'HOME', 'LANG', 'PATH']\n",
        "{r}"
    );
    let r = srv.request(
        "tools/call",
        json!({"name": "run_command", "arguments": {"command": "python3", "args": ["-c", "1"], "env": {"LD_PRELOAD": "/tmp/x.so"}}}),
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r.to_string()
            .contains("does not let the client set LD_PRELOAD"),
        "{r}"
    );
    // Shell metacharacters are just bytes in an argv element.
    let r = srv.call(
        "run_command",
        json!({"command": "printf", "args": ["%s|", "a; touch pwned", "$(touch pwned2)", "`touch pwned3`"]}),
    );
    assert_eq!(
        structured(&r)["stdout"],
        "a; touch pwned|$(touch pwned2)|`touch pwned3`|"
    );
    assert!(!d.root.join("pwned").exists() && !d.root.join("pwned2").exists());
}

#[test]
fn argument_patterns_are_an_allow_list() {
    let d = dirs();
    let toml = format!(
        "[clients.local]\nwrite = [\"{}\"]\nexec = [\"printf\"]\n[clients.local.exec_args]\nprintf = [\"%s\", \"[a-z]+\"]\n",
        s(&d.root)
    );
    let mut srv = start_with_config(&d, &toml);
    let r = srv.call(
        "run_command",
        json!({"command": "printf", "args": ["%s", "abc"]}),
    );
    assert_eq!(structured(&r)["stdout"], "abc", "{r}");
    let r = srv.call(
        "run_command",
        json!({"command": "printf", "args": ["%s", "abc1"]}),
    );
    assert_eq!(
        text(&r),
        "An argument is not allowed by policy for this program"
    );
}

#[test]
fn code_sessions_persist_per_client_and_reset() {
    let d = dirs();
    let mut a = Server::start(&[
        "--allow-write",
        s(&d.root),
        "--allow-code",
        "python3",
        "--allow-code",
        "sh",
    ]);
    a.initialize();
    let names = a.tool_names();
    assert!(
        names.contains(&"run_code".to_string())
            && names.contains(&"reset_code_session".to_string())
    );
    assert!(!names.contains(&"run_command".to_string()));
    let r = a.call(
        "run_code",
        json!({"language": "python3", "code": "secret = 6 * 7\nsecret"}),
    );
    assert_eq!(structured(&r)["stdout"], "42\n", "{r}");
    let r = a.call(
        "run_code",
        json!({"language": "python", "code": "print(secret + 1)"}),
    );
    assert_eq!(structured(&r)["stdout"], "43\n", "{r}");
    assert_eq!(structured(&r)["session_runs"], 2);
    // sh sessions keep their variables too, and survive a syntax error.
    let r = a.call(
        "run_code",
        json!({"language": "sh", "code": "v=kept; echo $v"}),
    );
    assert_eq!(structured(&r)["stdout"], "kept\n", "{r}");
    let r = a.call("run_code", json!({"language": "sh", "code": "if then"}));
    assert_eq!(structured(&r)["status"], "error", "{r}");
    let r = a.call("run_code", json!({"language": "sh", "code": "echo $v"}));
    assert_eq!(structured(&r)["stdout"], "kept\n", "{r}");

    // Another client session (another worker) does not see it.
    let mut b = Server::start(&["--allow-write", s(&d.root), "--allow-code", "python3"]);
    b.initialize();
    let r = b.call(
        "run_code",
        json!({"language": "python3", "code": "print(secret)"}),
    );
    assert_eq!(r["isError"], true);
    assert!(
        structured(&r)["stderr"]
            .as_str()
            .unwrap()
            .contains("NameError"),
        "{r}"
    );

    // A timeout interrupts the code and keeps the session.
    let r = a.call("run_code", json!({"language": "python3", "code": "import time\nwhile True: time.sleep(0.05)", "timeout_secs": 1}));
    assert_eq!(structured(&r)["status"], "interrupted", "{r}");
    assert_eq!(structured(&r)["session_kept"], true);
    let r = a.call("run_code", json!({"language": "python3", "code": "secret"}));
    assert_eq!(structured(&r)["stdout"], "42\n", "{r}");

    // The sandbox holds for code too.
    let r = a.call(
        "run_code",
        json!({"language": "python3", "code": "open('/etc/hostname').read()"}),
    );
    assert!(
        structured(&r)["stderr"]
            .as_str()
            .unwrap()
            .contains("FileNotFoundError"),
        "{r}"
    );

    // reset_code_session clears it.
    let r = a.call("reset_code_session", json!({"language": "python3"}));
    assert_eq!(text(&r), "Reset 1 session(s).");
    let r = a.call(
        "run_code",
        json!({"language": "python3", "code": "print(secret)"}),
    );
    assert!(
        structured(&r)["stderr"]
            .as_str()
            .unwrap()
            .contains("NameError"),
        "{r}"
    );
    assert_eq!(structured(&r)["session_runs"], 1);
    // A language the policy does not grant.
    let r = a.call("run_code", json!({"language": "node", "code": "1"}));
    assert_eq!(text(&r), "Language not allowed by policy");
}

#[test]
fn node_code_sessions_when_node_is_installed() {
    let node = Path::new("/usr/bin/node").exists() || Path::new("/usr/local/bin/node").exists();
    if !mcpd_e2e::require(node, "node", "not installed in /usr/bin or /usr/local/bin") {
        return;
    }
    let d = dirs();
    let mut a = Server::start(&["--allow-write", s(&d.root), "--allow-code", "node"]);
    a.initialize();
    let r = a.call(
        "run_code",
        json!({"language": "node", "code": "let n = 20; n + 1"}),
    );
    assert_eq!(structured(&r)["stdout"], "21\n", "{r}");
    let r = a.call(
        "run_code",
        json!({"language": "js", "code": "console.log(n * 2)"}),
    );
    assert_eq!(structured(&r)["stdout"], "40\n", "{r}");
    let r = a.call(
        "run_code",
        json!({"language": "node", "code": "require('fs').readFileSync('/etc/hostname')"}),
    );
    assert!(
        structured(&r)["stderr"]
            .as_str()
            .unwrap()
            .contains("ENOENT"),
        "{r}"
    );
}

#[test]
fn operator_tools_validate_before_running_and_pass_arguments_literally() {
    let d = dirs();
    let toml = format!(
        r#"
[clients.local]
roles = ["ops"]
write = ["{root}"]

[roles.ops]

[tools.make_note]
description = "Create an empty note file"
command = ["/usr/bin/touch", "--", "note-{{name}}.txt"]
input_schema = {{ type = "object", properties = {{ name = {{ type = "string", pattern = "^[a-z]+$" }} }}, required = ["name"], additionalProperties = false }}
roles = ["ops"]

[tools.echo]
description = "Echo a message"
command = ["/usr/bin/printf", "%s", "{{message}}"]
input_schema = {{ type = "object", properties = {{ message = {{ type = "string", maxLength = 200 }} }}, required = ["message"] }}
roles = ["ops"]

[tools.stats]
description = "JSON stats"
command = ["/usr/bin/printf", "{{{{\"count\": %s}}}}", "{{n}}"]
input_schema = {{ type = "object", properties = {{ n = {{ type = "integer" }} }}, required = ["n"] }}
output_schema = {{ type = "object", properties = {{ count = {{ type = "integer" }} }}, required = ["count"] }}
roles = ["ops"]
"#,
        root = s(&d.root)
    );
    let mut srv = start_with_config(&d, &toml);
    let list = srv.result("tools/list", json!({}));
    let make = list["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "make_note")
        .expect("make_note listed")
        .clone();
    assert_eq!(
        make["inputSchema"]["properties"]["name"]["pattern"],
        "^[a-z]+$"
    );
    let r = srv.call("make_note", json!({"name": "hello"}));
    assert_eq!(structured(&r)["exit_code"], 0, "{r}");
    assert!(d.root.join("note-hello.txt").exists());
    // Schema-invalid arguments are refused before anything runs.
    for bad in [
        json!({"name": "../../x"}),
        json!({"name": 5}),
        json!({}),
        json!({"name": "a", "extra": 1}),
    ] {
        let r = srv.call("make_note", bad.clone());
        assert_eq!(r["isError"], true, "{bad}");
        assert!(text(&r).starts_with("Invalid arguments:"), "{r}");
    }
    let made: Vec<_> = std::fs::read_dir(&d.root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(made.len(), 2, "{made:?}"); // inside.txt and note-hello.txt only
                                           // Metacharacters reach the program as one literal argument.
    let msg = "a; touch pwned && $(touch pwned2) | `id` > out.txt 'q' \"d\" \\ *";
    let r = srv.call("echo", json!({"message": msg}));
    assert_eq!(structured(&r)["stdout"], msg, "{r}");
    assert!(!d.root.join("pwned").exists() && !d.root.join("out.txt").exists());
    // An output schema turns stdout into structuredContent.
    let r = srv.call("stats", json!({"n": 3}));
    assert_eq!(r["structuredContent"], json!({"count": 3}), "{r}");
}

#[test]
fn operator_tool_path_arguments_reach_the_program_as_checked_absolute_paths() {
    let d = dirs();
    let root = s(&d.root).to_string();
    // Files whose names look like options, so that what a program opened is visible.
    std::fs::create_dir_all(d.root.join("--files0-from=/etc")).unwrap();
    std::fs::write(d.root.join("--files0-from=/etc/passwd"), "decoy\n").unwrap();
    std::fs::write(d.root.join("-"), "a file named dash\n").unwrap();
    std::fs::write(d.root.join("-n"), "a file named -n\n").unwrap();
    std::fs::create_dir(d.root.join("sub")).unwrap();
    let toml = format!(
        r#"
[clients.local]
roles = ["ops"]
read = ["{root}"]

[roles.ops]

[tools.show]
description = "Print the argument the program received"
command = ["/usr/bin/printf", "[%s]\n", "{{file}}", "in={{file}}"]
input_schema = {{ type = "object", properties = {{ file = {{ type = "string" }} }}, required = ["file"] }}
read_path_args = ["file"]
roles = ["ops"]

[tools.count]
description = "Count bytes"
command = ["/usr/bin/wc", "-c", "{{file}}"]
input_schema = {{ type = "object", properties = {{ file = {{ type = "string" }} }}, required = ["file"] }}
read_path_args = ["file"]
roles = ["ops"]

[tools.show_file]
description = "Print a file"
command = ["/usr/bin/cat", "{{file}}"]
input_schema = {{ type = "object", properties = {{ file = {{ type = "string" }} }}, required = ["file"] }}
read_path_args = ["file"]
roles = ["ops"]
"#
    );
    let mut srv = start_with_config(&d, &toml);
    // printf echoes its argv: each value arrived as the absolute, normalised path beneath
    // the root, also inside a larger template element.
    for (given, arrived) in [
        ("inside.txt", format!("{root}/inside.txt")),
        ("./sub/../inside.txt", format!("{root}/inside.txt")),
        (&format!("{root}//sub/./"), format!("{root}/sub")),
        ("-rf", format!("{root}/-rf")),
        ("-", format!("{root}/-")),
        (
            "--files0-from=/etc/passwd",
            format!("{root}/--files0-from=/etc/passwd"),
        ),
    ] {
        let r = srv.call("show", json!({ "file": given }));
        assert_eq!(structured(&r)["exit_code"], 0, "{given}: {r}");
        assert_eq!(
            structured(&r)["stdout"],
            format!("[{arrived}]\n[in={arrived}]\n"),
            "{given}: {r}"
        );
    }
    // wc counts the literal file beneath the root instead of reading a file list from
    // /etc/passwd; cat prints the file named `-` instead of reading stdin, and `-n` is a
    // file, not the option that numbers lines.
    let r = srv.call("count", json!({"file": "--files0-from=/etc/passwd"}));
    assert_eq!(
        structured(&r)["stdout"],
        format!("6 {root}/--files0-from=/etc/passwd\n"),
        "{r}"
    );
    assert_eq!(structured(&r)["stderr"], "", "{r}");
    let r = srv.call("count", json!({"file": "inside.txt"}));
    assert_eq!(
        structured(&r)["stdout"],
        format!("7 {root}/inside.txt\n"),
        "{r}"
    );
    let r = srv.call("show_file", json!({"file": "-"}));
    assert_eq!(structured(&r)["stdout"], "a file named dash\n", "{r}");
    let r = srv.call("show_file", json!({"file": "-n"}));
    assert_eq!(structured(&r)["stdout"], "a file named -n\n", "{r}");
    // A value outside the roots is refused before anything runs, whatever its spelling.
    for outside in [
        "/etc/passwd".to_string(),
        "../outside/secret.txt".to_string(),
        format!("{root}/../outside/secret.txt"),
        s(&d.outside.join("secret.txt")).to_string(),
    ] {
        let r = srv.call("show_file", json!({ "file": outside }));
        assert_eq!(r["isError"], true, "{outside}: {r}");
        assert_eq!(
            text(&r),
            "Access denied - path outside allowed directories",
            "{outside}"
        );
        assert!(r.get("structuredContent").is_none(), "{outside}: ran: {r}");
    }
    still_serving(&mut srv, &d);
}

#[test]
fn operator_tools_are_only_for_their_roles() {
    let d = dirs();
    let toml = format!(
        r#"
[stdio]
client = "guest"
[clients.guest]
read = ["{root}"]
[clients.admin]
roles = ["ops"]
[roles.ops]
[tools.echo]
description = "Echo"
command = ["/usr/bin/printf", "%s", "{{m}}"]
input_schema = {{ type = "object", properties = {{ m = {{ type = "string" }} }} }}
roles = ["ops"]
"#,
        root = s(&d.root)
    );
    let mut srv = start_with_config(&d, &toml);
    let names = srv.tool_names();
    assert!(!names.contains(&"echo".to_string()), "{names:?}");
    assert!(!names.contains(&"run_command".to_string()));
    let r = srv.request(
        "tools/call",
        json!({"name": "echo", "arguments": {"m": "x"}}),
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
}

#[test]
fn audit_records_name_the_command() {
    let d = dirs();
    let log = d.root.parent().unwrap().join("audit.log");
    let mut srv = Server::start(&[
        "--allow-write",
        s(&d.root),
        "--allow-exec",
        "printf",
        "--audit-log",
        s(&log),
    ]);
    srv.initialize();
    srv.call(
        "run_command",
        json!({"command": "printf", "args": ["%s", "hi"]}),
    );
    srv.call(
        "run_command",
        json!({"command": "rm", "args": ["-rf", "/"]}),
    );
    srv.finish();
    let mut text = String::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let calls: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "request" && r["tool"] == "run_command")
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["decision"], "allow");
    assert_eq!(calls[0]["command"], "printf %s hi");
    assert!(
        calls[0]["rule"]
            .as_str()
            .unwrap()
            .contains("exec:/usr/bin/printf"),
        "{}",
        calls[0]
    );
    assert_eq!(calls[1]["decision"], "deny");
    assert_eq!(calls[1]["reason"], "program_not_allowed");
    assert_eq!(calls[1]["command"], "rm -rf /");
}

#[test]
fn long_commands_report_progress() {
    let d = dirs();
    let mut srv = start_shell(&d);
    let r = srv.result(
        "tools/call",
        json!({"name": "run_command", "arguments": {"command": "sleep 2.5; echo done", "shell": true},
               "_meta": {"progressToken": "tok-1"}}),
    );
    assert_eq!(structured(&r)["stdout"], "done\n", "{r}");
    let progress: Vec<f64> = srv
        .notifications
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .map(|n| {
            assert_eq!(n["params"]["progressToken"], "tok-1");
            assert!(n["params"]["message"]
                .as_str()
                .unwrap()
                .starts_with("running for"));
            n["params"]["progress"].as_f64().unwrap()
        })
        .collect();
    assert!(progress.len() >= 2, "{:?}", srv.notifications);
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
}

// ---------------------------------------------------------------------------------------
// Only listed programs run: each program runs in its own exec domain.
// ---------------------------------------------------------------------------------------

/// The git the policy resolves (`/usr/local/bin`, then `/usr/bin`, then `/bin`), canonical.
fn resolved_git() -> Option<PathBuf> {
    ["/usr/local/bin/git", "/usr/bin/git", "/bin/git"]
        .iter()
        .find_map(|p| std::fs::canonicalize(p).ok())
}

/// Run the test's own (unconfined) git.
fn git(git: &Path, dir: &Path, args: &[&str]) {
    let out = std::process::Command::new(git)
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

fn stderr_of(r: &Value) -> String {
    structured(r)["stderr"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn git_status_cannot_run_a_repository_fsmonitor_hook() {
    let Some(gitp) = resolved_git() else {
        mcpd_e2e::require(false, "git", "not installed");
        return;
    };
    let out = std::process::Command::new(&gitp)
        .arg("--exec-path")
        .output()
        .unwrap();
    let git_core = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let d = dirs();
    let repo = d.root.join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&gitp, &repo, &["init", "-q"]);
    std::fs::write(repo.join("tracked.txt"), "tracked\n").unwrap();
    git(&gitp, &repo, &["add", "tracked.txt"]);
    // fsmonitor protocol: the hook runs as `HOOK <version> <token>` in the worktree, so with
    // python3 as the hook, python3 executes the file named `2` (then `1`): the payload.
    for v in ["1", "2"] {
        std::fs::write(repo.join(v), "open('pwned', 'w').write('hook ran')\n").unwrap();
    }
    git(
        &gitp,
        &repo,
        &["config", "core.fsmonitor", python.to_str().unwrap()],
    );
    // git, python3 and sh are all granted, so the worker's own domain lets all three execute:
    // only git's own exec domain stands between `git status` and the hook.
    let toml = format!(
        r#"[clients.local]
write = ["{root}"]
exec = ["git", "python3", "sh"]
env = ["GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=safe.directory", "GIT_CONFIG_VALUE_0=*"]
[clients.local.exec_args]
git = ["status", "--porcelain", "--short"]
[clients.local.exec_helpers]
git = ["{git_core}"]
"#,
        root = s(&d.root)
    );
    let mut srv = start_with_config(&d, &toml);
    // Control: the payload works when python3 is what the client runs.
    let r = srv.call(
        "run_command",
        json!({"command": "python3", "args": ["2"], "cwd": s(&repo)}),
    );
    assert_eq!(structured(&r)["exit_code"], 0, "{r}");
    assert_eq!(
        std::fs::read_to_string(repo.join("pwned")).unwrap(),
        "hook ran"
    );
    std::fs::remove_file(repo.join("pwned")).unwrap();

    // The hook as a program (git execs it directly)...
    let r = srv.call(
        "run_command",
        json!({"command": "git", "args": ["status", "--porcelain"], "cwd": s(&repo)}),
    );
    let err = stderr_of(&r);
    assert!(!repo.join("pwned").exists(), "the fsmonitor hook ran: {r}");
    assert!(
        err.contains(&format!(
            "cannot exec '{}': Permission denied",
            python.display()
        )),
        "{r}"
    );
    // ...git itself still works (the hook's failure is not fatal to status).
    assert_eq!(structured(&r)["exit_code"], 0, "{r}");
    assert!(
        structured(&r)["stdout"]
            .as_str()
            .unwrap()
            .contains("A  tracked.txt"),
        "{r}"
    );

    // The hook as a command line: git runs it with /bin/sh -c, and sh is not git's.
    git(
        &gitp,
        &repo,
        &[
            "config",
            "core.fsmonitor",
            "python3 -c \"open('pwned', 'w')\"",
        ],
    );
    let r = srv.call(
        "run_command",
        json!({"command": "git", "args": ["status", "--porcelain"], "cwd": s(&repo)}),
    );
    assert!(!repo.join("pwned").exists(), "the fsmonitor hook ran: {r}");
    assert!(
        stderr_of(&r)
            .contains(r#"cannot exec 'python3 -c "open('pwned', 'w')"': Permission denied"#),
        "{r}"
    );
    assert_eq!(structured(&r)["exit_code"], 0, "{r}");
}

#[test]
fn a_code_session_cannot_run_the_clients_commands() {
    let Some(gitp) = resolved_git() else {
        mcpd_e2e::require(false, "git", "not installed");
        return;
    };
    let d = dirs();
    let toml = format!(
        "[clients.local]\nwrite = [\"{}\"]\nexec = [\"git\", \"cat\"]\ncode = [\"python3\"]\n[clients.local.exec_args]\ngit = [\"--version\"]\n",
        s(&d.root)
    );
    let mut srv = start_with_config(&d, &toml);
    // git is granted to run_command (with exec_args), and runs there.
    let r = srv.call(
        "run_command",
        json!({"command": "git", "args": ["--version"]}),
    );
    assert_eq!(structured(&r)["exit_code"], 0, "{r}");
    // From python3, neither git (past its exec_args) nor any other granted program starts;
    // the interpreter may start itself (its exec set is its own).
    let code = format!(
        r#"
import subprocess
for argv in (["{git}", "log"], ["/usr/bin/cat", "inside.txt"], ["/usr/bin/python3", "-c", "1"]):
    try:
        subprocess.run(argv)
        print("RAN", argv[0])
    except PermissionError as e:
        print("DENIED", e.errno)
"#,
        git = gitp.display()
    );
    let r = srv.call("run_code", json!({"language": "python3", "code": code}));
    assert_eq!(
        structured(&r)["stdout"],
        "DENIED 13\nDENIED 13\nRAN /usr/bin/python3\n",
        "{r}"
    );
}

#[test]
fn a_program_cannot_start_another_granted_program() {
    let d = dirs();
    // A granted script (outside the roots: they are never executable) that runs `cat`.
    let script = d.root.parent().unwrap().join("show.sh");
    std::fs::write(&script, "#!/bin/sh\ncat inside.txt\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let toml = format!(
        r#"[clients.local]
write = ["{root}"]
exec = ["env", "cat", "{script}", "printf"]
code = ["python3"]
shell = true
[clients.local.exec_helpers]
printf = ["/usr/bin/cat"]
"#,
        root = s(&d.root),
        script = s(&script)
    );
    let mut srv = start_with_config(&d, &toml);
    let r = srv.call(
        "run_command",
        json!({"command": "cat", "args": ["inside.txt"]}),
    );
    assert_eq!(structured(&r)["stdout"], "inside\n", "{r}");
    // env may execute env, not cat.
    let r = srv.call(
        "run_command",
        json!({"command": "env", "args": ["cat", "inside.txt"]}),
    );
    assert_eq!(structured(&r)["exit_code"], 126, "{r}");
    assert_eq!(
        stderr_of(&r),
        "/usr/bin/env: ‘cat’: Permission denied\n",
        "{r}"
    );
    // The script may execute itself and its interpreter, not cat.
    let r = srv.call("run_command", json!({"command": s(&script)}));
    assert_eq!(structured(&r)["exit_code"], 126, "{r}");
    assert_eq!(
        stderr_of(&r),
        format!("{}: 2: cat: Permission denied\n", script.display()),
        "{r}"
    );
    assert_eq!(structured(&r)["stdout"], "", "{r}");
    // A shell command line may run every listed program...
    let r = srv.call(
        "run_command",
        json!({"command": "cat inside.txt | env cat", "shell": true}),
    );
    assert_eq!(structured(&r)["stdout"], "inside\n", "{r}");
    // ...but not a code-session interpreter (granted, so the worker's domain allows it).
    let r = srv.call(
        "run_command",
        json!({"command": "python3 -c 'print(1)'", "shell": true}),
    );
    assert_eq!(structured(&r)["exit_code"], 126, "{r}");
    assert!(
        stderr_of(&r).ends_with("python3: Permission denied\n"),
        "{r}"
    );
}

#[test]
fn exec_helpers_extend_one_programs_domain() {
    let d = dirs();
    let toml = format!(
        r#"[clients.local]
write = ["{root}"]
exec = ["env", "cat"]
[clients.local.exec_helpers]
env = ["/usr/bin/printf"]
"#,
        root = s(&d.root)
    );
    let mut srv = start_with_config(&d, &toml);
    // printf is not a program of the client, but env's declared helper.
    let r = srv.call(
        "run_command",
        json!({"command": "env", "args": ["printf", "%s", "helped"]}),
    );
    assert_eq!(structured(&r)["stdout"], "helped", "{r}");
    let r = srv.call(
        "run_command",
        json!({"command": "env", "args": ["cat", "inside.txt"]}),
    );
    assert_eq!(
        stderr_of(&r),
        "/usr/bin/env: ‘cat’: Permission denied\n",
        "{r}"
    );
    // It is not the client's program: run_command refuses it.
    let r = srv.call("run_command", json!({"command": "printf", "args": ["x"]}));
    assert_eq!(text(&r), "Program not allowed by policy");
    // A missing helper is a configuration error with file and line.
    let cfg = d.root.parent().unwrap().join("bad.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clients.local]\nwrite = [\"{}\"]\nexec = [\"env\"]\n[clients.local.exec_helpers]\nenv = [\"/nonexistent/mcpd-helper\"]\n",
            s(&d.root)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(mcpd_e2e::mcpd_bin())
        .args(["check-config", "--config", s(&cfg)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:5:", cfg.display())) && err.contains("/nonexistent/mcpd-helper"),
        "{err}"
    );
}

#[test]
fn fexecve_is_refused_and_the_session_survives() {
    let d = dirs();
    let mut srv = Server::start(&["--allow-write", s(&d.root), "--allow-code", "python3"]);
    srv.initialize();
    // The interpreter's own file: its exec domain allows it, so only seccomp stands in the way
    // of executing it by fd (the way to run an anonymous or unlisted file).
    let code = r#"
import os, sys
fd = os.open(sys.executable, os.O_RDONLY)
try:
    os.execve(fd, [sys.executable, "-c", "print('replaced')"], {})
except PermissionError as e:
    print("DENIED", e.errno)
alive = os.getpid()
alive
"#;
    let r = srv.call("run_code", json!({"language": "python3", "code": code}));
    let out = structured(&r)["stdout"].as_str().unwrap().to_string();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("DENIED 1"), "{r}");
    let pid: i64 = lines.next().unwrap().parse().unwrap();
    // The same interpreter is still there, session intact.
    let r = srv.call("run_code", json!({"language": "python3", "code": "alive"}));
    assert_eq!(structured(&r)["stdout"], format!("{pid}\n"), "{r}");
    assert_eq!(structured(&r)["session_runs"], 2, "{r}");
    // execveat with a path is still the ordinary, Landlock-checked exec: the loader cache is
    // in the view (read-only, no Execute right), so Landlock, not the view, refuses it.
    let r = srv.call(
        "run_code",
        json!({"language": "python3", "code": "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nrc = libc.syscall(322, -100, b'/etc/ld.so.cache', None, None, 0)\nprint(rc, os.strerror(ctypes.get_errno()))"}),
    );
    assert_eq!(structured(&r)["stdout"], "-1 Permission denied\n", "{r}");
}

/// Code that prints the start of its session's marker line and never ends that line: the
/// worker's scanner holds back at most one marker line's worth, the rest is output (capped and
/// counted as usual), the block ends with the driver's status, and the worker does not grow.
#[test]
fn a_forged_marker_line_that_never_ends_is_output_not_a_growing_buffer() {
    let d = dirs();
    let toml = format!(
        "[clients.local]\nwrite = [\"{}\"]\ncode = [\"python3\"]\n[clients.local.limits]\nmax_output_bytes = 65536\n",
        s(&d.root)
    );
    let mut srv = start_with_config(&d, &toml);
    let r = srv.call(
        "run_code",
        json!({"language": "python3", "code": "warm = 1"}),
    );
    assert_eq!(structured(&r)["status"], "ok", "{r}");
    let serving = srv.serving_pids();
    assert_eq!(serving.len(), 1);
    let hwm = |pid| -> u64 {
        let v = mcpd_e2e::proc_status(pid, "VmHWM").unwrap();
        v.trim_end_matches(" kB").trim().parse::<u64>().unwrap() * 1024
    };
    let before = hwm(serving[0]);
    // 7 MiB after the forged marker, no newline (below the flood threshold of 8 MiB dropped).
    let total = 7 * 1024 * 1024;
    let code = format!(
        "import __main__, sys\nsys.stdout.write('\\n' + __main__.M)\nfor _ in range({}): sys.stdout.write('x' * 65536)",
        total / 65536
    );
    let r = srv.call("run_code", json!({"language": "python3", "code": code}));
    assert_eq!(structured(&r)["status"], "ok", "{:.300}", r.to_string());
    assert_eq!(structured(&r)["truncated"], true, "{:.300}", r.to_string());
    assert_eq!(structured(&r)["session_kept"], true);
    let out = structured(&r)["stdout"].as_str().unwrap();
    assert!(
        out.starts_with("\n__mcpd_") && out.ends_with("xxxx"),
        "{out:.100}"
    );
    assert!(result_size(&r) <= 65536 + RESULT_ENVELOPE_BYTES);
    let grown = hwm(serving[0]).saturating_sub(before);
    assert!(grown < 4 * 1024 * 1024, "the worker grew by {grown} bytes");
    // The session is still in step.
    let r = srv.call(
        "run_code",
        json!({"language": "python3", "code": "warm + 1"}),
    );
    assert_eq!(structured(&r)["stdout"], "2\n", "{r}");
    assert_eq!(structured(&r)["session_runs"], 3);
}

/// Code that prints its session's marker lines (all of them: it can read the marker) does not
/// end its block early: the end of a block carries a nonce the driver learns only after the
/// code returned, so the late output stays in its own call and the next call gets its own.
#[test]
fn forged_end_markers_do_not_desynchronise_a_code_session() {
    let d = dirs();
    let node = Path::new("/usr/bin/node").exists() || Path::new("/usr/local/bin/node").exists();
    let mut args = vec![
        "--allow-write",
        s(&d.root),
        "--allow-code",
        "python3",
        "--allow-code",
        "sh",
    ];
    if node {
        args.extend(["--allow-code", "node"]);
    }
    let mut srv = Server::start(&args);
    srv.initialize();
    let python = r#"
import __main__, sys, time
M = __main__.M
sys.stdout.write("\n" + M + "\n"); sys.stdout.flush()
sys.stderr.write("\n" + M + "\n"); sys.stderr.flush()
sys.stdout.write("\n" + M + " ok\n"); sys.stdout.flush()
sys.stderr.write("\n" + M + " 0123456789abcdef0123456789abcdef\n"); sys.stderr.flush()
sys.stdout.write("\n" + M + " 0123456789abcdef0123456789abcdef ok\n"); sys.stdout.flush()
time.sleep(0.5)
print("late")
"#;
    let sh = r#"M=$__mcpd_m; printf '\n%s\n' "$M"; printf '\n%s\n' "$M" >&2; printf '\n%s ok\n' "$M"
i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done
echo late"#;
    let js = r#"const M = process.argv[process.argv.length - 1];
process.stdout.write('\n' + M + '\n'); process.stderr.write('\n' + M + '\n');
process.stdout.write('\n' + M + ' ok\n');
const t = Date.now(); while (Date.now() - t < 500) {}
console.log('late')"#;
    let mut langs = vec![
        ("python3", python, "print('second')"),
        ("sh", sh, "echo second"),
    ];
    if node {
        // The driver's names are not the code's: `M` above, `out` here are free.
        langs.push(("node", js, "const out = 'second'; console.log(out)"));
    }
    for (lang, forge, second) in langs {
        let r = srv.call("run_code", json!({"language": lang, "code": forge}));
        assert_eq!(structured(&r)["status"], "ok", "{lang}: {r}");
        let out = structured(&r)["stdout"].as_str().unwrap();
        assert!(out.ends_with("late\n"), "{lang}: {r}");
        let r = srv.call("run_code", json!({"language": lang, "code": second}));
        assert_eq!(structured(&r)["stdout"], "second\n", "{lang}: {r}");
        assert_eq!(structured(&r)["stderr"], "", "{lang}: {r}");
        assert_eq!(structured(&r)["session_runs"], 2, "{lang}: {r}");
    }
    // A shell block is not cut at a line holding the session's marker (which the client can
    // learn): each block has its own terminator.
    let r = srv.call(
        "run_code",
        json!({"language": "sh", "code": "echo \"$__mcpd_m\""}),
    );
    let m = structured(&r)["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .to_string();
    assert!(m.starts_with("__mcpd_"), "{r}");
    let r = srv.call(
        "run_code",
        json!({"language": "sh", "code": format!("echo one\n{m}\necho two")}),
    );
    assert_eq!(structured(&r)["stdout"], "one\ntwo\n", "{r}");
    let r = srv.call("run_code", json!({"language": "sh", "code": "echo three"}));
    assert_eq!(structured(&r)["stdout"], "three\n", "{r}");
    assert_eq!(structured(&r)["session_runs"], 5, "{r}");
}

#[test]
fn a_python_traceback_shows_the_clients_frames_only() {
    let d = dirs();
    let mut a = Server::start(&["--allow-write", s(&d.root), "--allow-code", "python3"]);
    a.initialize();
    let stderr = |r: &Value| structured(r)["stderr"].as_str().unwrap().to_string();
    // An error two frames deep in the client's code: both frames, nothing of the driver.
    let r = a.call(
        "run_code",
        json!({"language": "python3", "code": "def inner():\n    return 1 / 0\n\ndef outer():\n    return inner()\n\nouter()\n"}),
    );
    assert_eq!(structured(&r)["status"], "error", "{r}");
    let e = stderr(&r);
    assert!(e.starts_with("Traceback (most recent call last):"), "{e}");
    assert!(
        e.contains("File \"<run_code>\", line 7, in <module>"),
        "{e}"
    );
    assert!(e.contains("File \"<run_code>\", line 5, in outer"), "{e}");
    assert!(e.contains("File \"<run_code>\", line 2, in inner"), "{e}");
    assert!(
        e.trim_end()
            .ends_with("ZeroDivisionError: division by zero"),
        "{e}"
    );
    assert!(!e.contains("<string>"), "the driver's frame: {e}");
    // A syntax error: where in the client's code, no traceback of the parser.
    let r = a.call(
        "run_code",
        json!({"language": "python3", "code": "x = (1,\n"}),
    );
    let e = stderr(&r);
    assert!(
        e.contains("File \"<run_code>\", line 1") && e.contains("SyntaxError"),
        "{e}"
    );
    assert!(!e.contains("<string>") && !e.contains("Traceback"), "{e}");
    // A chained exception keeps both parts, neither with the driver's frame.
    let r = a.call(
        "run_code",
        json!({"language": "python3", "code": "try:\n    {}['k']\nexcept KeyError as k:\n    raise ValueError('bad') from k\n"}),
    );
    let e = stderr(&r);
    assert!(
        e.contains("KeyError: 'k'") && e.contains("ValueError: bad"),
        "{e}"
    );
    assert!(e.contains("direct cause"), "{e}");
    assert!(!e.contains("<string>"), "{e}");
    // An interrupt (timeout): the client's frame, not the driver's signal handler.
    let r = a.call(
        "run_code",
        json!({"language": "python3", "code": "import time\nwhile True:\n    time.sleep(0.05)\n", "timeout_secs": 1}),
    );
    assert_eq!(structured(&r)["status"], "interrupted", "{r}");
    let e = stderr(&r);
    assert!(
        e.contains("KeyboardInterrupt") && e.contains("<run_code>"),
        "{e}"
    );
    assert!(!e.contains("<string>"), "{e}");
}
