//! The broker under a service manager, end to end with the real binaries: the `sd_notify`
//! protocol as systemd speaks it (this test plays the notify socket: `READY=1`, `RELOADING=1`
//! with `MONOTONIC_USEC=` then `READY=1` around `SIGHUP`, `WATCHDOG=1` at half `WATCHDOG_USEC`,
//! `STOPPING=1` on `SIGTERM`); the stop itself (a call in flight at `SIGTERM` is answered, one
//! that outlives `server.stop_grace_secs` is cancelled with an error saying so, and the audit
//! chain verifies either way); and socket activation through systemd's own
//! `systemd-socket-activate` (a TCP listener for `--http-systemd`, and `Accept=yes`: one broker
//! per Unix connection, ended when the connection closes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcpd_e2e::{
    audit_records, audit_verify, children_of, free_port, mcpd_bin, require, signal, wait_until,
    Server,
};
use serde_json::{json, Value};

/// Datagrams received on the notify socket, each split into its `KEY=VALUE` lines.
struct Notify {
    sock: UnixDatagram,
    seen: Vec<Vec<String>>,
}

impl Notify {
    fn bind(dir: &Path) -> (Self, String) {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        (
            Self {
                sock,
                seen: Vec::new(),
            },
            path.to_str().unwrap().to_string(),
        )
    }

    /// The next datagram holding `line` (within `t`); the ones before it are kept in `seen`.
    fn expect(&mut self, line: &str, t: Duration) -> Vec<String> {
        let deadline = Instant::now() + t;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg: Vec<String> = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string)
                    .collect();
                self.seen.push(msg.clone());
                if msg.iter().any(|l| l == line) {
                    return msg;
                }
            }
        }
        panic!("no {line} within {t:?}; received {:?}", self.seen);
    }
}

fn exit_within(s: &mut Server, t: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + t;
    loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "mcpd did not exit within {t:?}; stderr:\n{}",
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_service_manager_hears_ready_reloading_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let (mut notify, path) = Notify::bind(dir.path());
    let cfg = dir.path().join("mcpd.toml");
    std::fs::write(&cfg, "[clients.local]\nread = [\"/usr/share\"]\n").unwrap();
    let mut s = Server::start_configured(&["--config", cfg.to_str().unwrap()], |c| {
        c.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "400000");
    });
    let ready = notify.expect("READY=1", Duration::from_secs(20));
    assert!(
        ready.iter().any(|l| l == "STATUS=serving stdio"),
        "{ready:?}"
    );
    // The watchdog: a ping at half of WATCHDOG_USEC (200 ms), so several within a second.
    notify.expect("WATCHDOG=1", Duration::from_secs(2));
    notify.expect("WATCHDOG=1", Duration::from_secs(2));
    // The service still answers while it is being watched.
    s.initialize();
    // SIGHUP: RELOADING=1 with the monotonic time systemd 253+ wants, then READY=1 again.
    signal(s.child.id() as i32, libc::SIGHUP);
    let reloading = notify.expect("RELOADING=1", Duration::from_secs(10));
    assert!(
        reloading.iter().any(|l| l.starts_with("MONOTONIC_USEC=")
            && l["MONOTONIC_USEC=".len()..].parse::<u64>().unwrap() > 0),
        "{reloading:?}"
    );
    let reloaded = notify.expect("READY=1", Duration::from_secs(10));
    assert!(
        reloaded
            .iter()
            .any(|l| l == "STATUS=serving; policy reloaded"),
        "{reloaded:?}"
    );
    // A broken file: refused, and the status says so.
    std::fs::write(&cfg, "[clients.local\n").unwrap();
    signal(s.child.id() as i32, libc::SIGHUP);
    notify.expect("RELOADING=1", Duration::from_secs(10));
    let refused = notify.expect("READY=1", Duration::from_secs(10));
    assert!(
        refused.iter().any(|l| l.contains("reload was refused")),
        "{refused:?}"
    );
    // SIGTERM: STOPPING=1, then a clean exit.
    signal(s.child.id() as i32, libc::SIGTERM);
    notify.expect("STOPPING=1", Duration::from_secs(10));
    let st = exit_within(&mut s, Duration::from_secs(20));
    assert!(st.success(), "{st:?}\n{}", s.stderr());
    // The broker's environment never reaches a worker (cleared at spawn): nothing to check
    // here beyond the worker tests; but the notify socket must not have been inherited as a
    // descriptor either.
}

/// A broker with an audit log, `run_command` of `sleep`, and `stop_grace_secs = grace`.
fn sleeper(dir: &Path, grace: u64) -> (Server, std::path::PathBuf) {
    let log = dir.join("audit.jsonl");
    let cfg = dir.join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nstop_grace_secs = {grace}\n[audit]\npath = \"{}\"\nmode = \"strict\"\n[clients.local]\nread = [\"/usr/share\"]\nexec = [\"sleep\"]\n[clients.local.limits]\ncall_timeout_secs = 120\n",
            log.display()
        ),
    )
    .unwrap();
    let mut s = Server::start(&["--config", cfg.to_str().unwrap()]);
    s.initialize();
    (s, log)
}

fn call_sleep(s: &mut Server, id: i64, secs: &str) {
    s.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "run_command", "arguments": {"command": "sleep", "args": [secs]}}}));
}

/// The worker of the session has started the command (so the call is really in flight).
fn wait_for_sleep(s: &Server) {
    let pid = s.child.id() as i32;
    assert!(
        wait_until(Duration::from_secs(20), || {
            descendants(pid).iter().any(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
        }),
        "sleep never started; stderr:\n{}",
        s.stderr()
    );
}

fn descendants(pid: i32) -> Vec<i32> {
    let mut all = vec![];
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            all.push(c);
            todo.push(c);
        }
    }
    all
}

/// A `sleep SECS` call in flight when the broker (`stop_grace_secs = grace`) gets `SIGTERM`:
/// its answer, how long the stop took, and the call's audit record, once the broker exited
/// cleanly, the chain verified and ended with `session.close` … `broker.stop`.
fn stop_with_call_in_flight(grace: u64, secs: &str) -> (Value, Duration, Value) {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, log) = sleeper(dir.path(), grace);
    call_sleep(&mut s, 7, secs);
    wait_for_sleep(&s);
    let sent = Instant::now();
    signal(s.child.id() as i32, libc::SIGTERM);
    let r = s
        .recv_timeout(Duration::from_secs(30))
        .expect("the call in flight is answered");
    assert_eq!(r["id"], 7, "{r}");
    let st = exit_within(&mut s, Duration::from_secs(30));
    assert!(st.success(), "{st:?}\n{}", s.stderr());
    let took = sent.elapsed();
    audit_verify(&log);
    let recs = audit_records(&log);
    let call = recs
        .iter()
        .find(|r| r["event"] == "request" && r["method"] == "tools/call")
        .expect("the call's record")
        .clone();
    assert!(
        recs.iter().any(|r| r["event"] == "session.close"),
        "{recs:?}"
    );
    let stop = recs.last().unwrap();
    assert_eq!(stop["event"], "broker.stop", "{stop}");
    assert_eq!(stop["clean"], true, "{stop}");
    (r, took, call)
}

#[test]
fn sigterm_lets_the_call_in_flight_finish_and_the_chain_verifies() {
    let (r, _, call) = stop_with_call_in_flight(20, "2");
    assert_ne!(r["result"]["isError"], true, "{r}");
    assert_eq!(r["result"]["structuredContent"]["exit_code"], 0, "{r}");
    assert_eq!(call["outcome"], "success", "{call}");
}

#[test]
fn a_call_that_outlives_the_stop_grace_is_cancelled_with_an_error_that_says_so() {
    let (r, took, call) = stop_with_call_in_flight(1, "60");
    assert_eq!(r["result"]["isError"], true, "{r}");
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("mcpd is stopping"), "{text}");
    // Cut short by the grace (1 s) and the cancellation, not left to the command's 60 s.
    assert!(took < Duration::from_secs(40), "{took:?}");
    assert_eq!(call["outcome"], "stopped", "{call}");
}

fn socket_activate() -> bool {
    mcpd_e2e::require_program(
        "systemd-socket-activate",
        "--version",
        "socket activation is tested with systemd's own tool (Debian package systemd)",
    )
}

#[test]
fn http_on_a_socket_systemd_passed() {
    if !socket_activate() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr.log");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new("systemd-socket-activate")
        .args(["-l", &addr, "--fdname=mcpd-http", "-E", "MCPD_LOG=debug"])
        .arg(mcpd_bin())
        .args([
            "serve",
            "--http-systemd",
            "--no-config",
            "--allow-read",
            "/usr/share",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&err).unwrap_or_default();
    // systemd-socket-activate listens first and starts mcpd at the first connection.
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
            sock
        )
        .is_ok()),
        "{}",
        log()
    );
    let mut session = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let r = mcpd_e2e::http::post_at(
                sock,
                None,
                &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "0"}}}),
            );
            session = r.header("mcp-session-id").map(str::to_string);
            r.status == 200
        }),
        "{}",
        log()
    );
    assert!(session.is_some());
    let l = log();
    assert!(
        l.contains(&format!("listening on http://{addr}/mcp")),
        "{l}"
    );
    // The socket was passed, not bound by mcpd: no bind error, and mcpd's own socket table
    // holds the listener systemd-socket-activate created.
    assert!(!l.contains("HTTP listener 127.0.0.1"), "{l}");
    signal(child.id() as i32, libc::SIGTERM);
    let _ = child.wait();
}

#[test]
fn accept_yes_serves_one_unix_connection_per_broker_and_ends_with_it() {
    if !socket_activate() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mcpd.sock");
    let cfg = dir.path().join("mcpd.toml");
    // Our own uid: the owner of the directory this test just created.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.path()).unwrap());
    std::fs::write(
        &cfg,
        format!(
            "[clients.me]\nread = [\"/usr/share\"]\n[clients.me.identity]\nunix_uid = [{uid}]\n"
        ),
    )
    .unwrap();
    let err = dir.path().join("stderr.log");
    let mut child = Command::new("systemd-socket-activate")
        .args(["-a", "-l", sock.to_str().unwrap(), "--fdname=mcpd-unix"])
        .arg(mcpd_bin())
        .args([
            "serve",
            "--unix-systemd",
            "--unix-protocol",
            "lines",
            "--config",
        ])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || sock.exists()),
        "{}",
        log()
    );
    let talk = |id: i64| {
        let c = UnixStream::connect(&sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        writeln!(w, "{}", json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "0"}}})).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}\n{}", log()));
        (v, w, r)
    };
    let (a, wa, _ra) = talk(1);
    assert_eq!(a["result"]["serverInfo"]["name"], "mcpd", "{a}");
    let (b, wb, _rb) = talk(2);
    assert!(b.get("result").is_some(), "{b}");
    // Two connections: two brokers, each a child of systemd-socket-activate.
    let brokers = children_of(child.id() as i32);
    assert_eq!(brokers.len(), 2, "{brokers:?}\n{}", log());
    assert!(
        log().contains("one connection accepted by systemd"),
        "{}",
        log()
    );
    // The peer closes: that broker ends (its session closed, its worker reaped); the other stays.
    drop(wa);
    drop(_ra);
    assert!(
        wait_until(Duration::from_secs(20), || children_of(child.id() as i32)
            .len()
            == 1),
        "{}",
        log()
    );
    drop(wb);
    drop(_rb);
    assert!(
        wait_until(Duration::from_secs(20), || children_of(child.id() as i32)
            .is_empty()),
        "{}",
        log()
    );
    signal(child.id() as i32, libc::SIGTERM);
    let _ = child.wait();
}

#[test]
fn sigterm_over_http_answers_the_call_in_flight_then_closes_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let cfg = dir.path().join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nstop_grace_secs = 20\n[audit]\npath = \"{}\"\n[http]\nclient = \"local\"\n[clients.local]\nread = [\"/usr/share\"]\nexec = [\"sleep\"]\n",
            log.display()
        ),
    )
    .unwrap();
    let srv = mcpd_e2e::http::HttpServer::start(&["--config", cfg.to_str().unwrap()]);
    let sid = srv.initialize();
    let body = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "run_command", "arguments": {"command": "sleep", "args": ["2"]}}})
    .to_string();
    let host = srv.addr.to_string();
    let mut conn = srv.open(
        "POST",
        &[
            ("Host", &host),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("MCP-Protocol-Version", "2025-11-25"),
            ("Mcp-Session-Id", &sid),
        ],
        body.as_bytes(),
    );
    let pid = srv.child.id() as i32;
    assert!(wait_until(Duration::from_secs(20), || {
        descendants(pid).iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
    }));
    signal(pid, libc::SIGTERM);
    let r = mcpd_e2e::http::read_response(&mut conn);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.response_to(&json!(5));
    assert_eq!(
        answer["result"]["structuredContent"]["exit_code"], 0,
        "{answer}"
    );
    let mut srv = srv;
    assert!(
        wait_until(Duration::from_secs(20), || srv
            .child
            .try_wait()
            .unwrap()
            .is_some()),
        "mcpd did not exit"
    );
    audit_verify(&log);
    let recs = audit_records(&log);
    assert!(
        recs.iter().any(|r| r["event"] == "session.close"),
        "{recs:?}"
    );
    assert_eq!(recs.last().unwrap()["event"], "broker.stop");
}

/// Under systemd, stderr is the journal (`JOURNAL_STREAM` names it): the broker then logs
/// native journal entries, with the event's fields, to journald's socket. A private mount
/// namespace puts this test's datagram socket where journald's would be.
#[test]
fn under_systemd_the_log_goes_to_the_journal_as_structured_entries() {
    if !require(
        mcpd_e2e::is_root(),
        "root",
        "a private mount namespace puts the test's socket at /run/systemd/journal/socket",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    std::fs::create_dir(&jdir).unwrap();
    let journal = UnixDatagram::bind(jdir.join("socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let err = dir.path().join("stderr.log");
    let errf = std::fs::File::create(&err).unwrap();
    let st = std::fs::metadata(&err).unwrap();
    let stream = format!(
        "{}:{}",
        std::os::unix::fs::MetadataExt::dev(&st),
        std::os::unix::fs::MetadataExt::ino(&st)
    );
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal && mount --bind \"$1\" /run/systemd/journal && exec \"$0\" serve --stdio --no-config --allow-read /usr/share")
        .arg(mcpd_bin())
        .arg(&jdir)
        .env("JOURNAL_STREAM", &stream)
        .env("MCPD_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(errf)
        .spawn()
        .unwrap();
    let mut entries: Vec<Vec<(String, String)>> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(20);
    let field = |e: &[(String, String)], k: &str| {
        e.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    };
    while Instant::now() < deadline
        && !entries
            .iter()
            .any(|e| field(e, "MESSAGE").as_deref() == Some("session open"))
    {
        if let Ok(n) = journal.recv(&mut buf) {
            entries.push(journal_fields(&buf[..n]));
        }
    }
    drop(child.stdin.take());
    let _ = child.wait();
    let e = entries
        .iter()
        .find(|e| field(e, "MESSAGE").as_deref() == Some("session open"))
        .unwrap_or_else(|| {
            panic!(
                "no 'session open' journal entry; entries {entries:?}; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            )
        });
    // A native entry: the identifier, the level as a syslog PRIORITY, the target, and the
    // event's own fields as journal fields.
    assert_eq!(
        field(e, "SYSLOG_IDENTIFIER").as_deref(),
        Some("mcpd"),
        "{e:?}"
    );
    assert!(
        field(e, "PRIORITY").is_some_and(|p| ["5", "6"].contains(&p.as_str())),
        "{e:?}"
    );
    assert_eq!(
        field(e, "TARGET").as_deref(),
        Some("mcpd::transport::stdio"),
        "{e:?}"
    );
    assert_eq!(field(e, "F_CLIENT").as_deref(), Some("local"), "{e:?}");
    assert_eq!(field(e, "F_TRANSPORT").as_deref(), Some("stdio"), "{e:?}");
    // Nothing went to stderr as text lines meanwhile (the journal replaced them).
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(!text.contains(" INFO "), "{text}");
}

/// The fields of one journal native-protocol datagram: `KEY=value\n`, or `KEY\n` followed by
/// a little-endian u64 length, the value and `\n`.
fn journal_fields(mut b: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let Some(nl) = b.iter().position(|&c| c == b'\n') else {
            break;
        };
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            b = &b[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &b[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            out.push((key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned()));
            b = &rest[8 + len + 1..];
        }
    }
    out
}
