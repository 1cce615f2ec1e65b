//! The D-Bus transport, end to end: a private `dbus-daemon` (its configuration written here:
//! every uid may connect, a small `max_message_size`), the real `mcpd serve --dbus session
//! --dbus-address ...` owning `org.mcpd.Server1`, and callers: `busctl` and `gdbus` (one call
//! per connection), and the zbus client helper `mcpd-dbus-client` (one connection held open,
//! started as another uid with `Command::uid`). Each caller is mapped to its client by the bus's
//! credentials (`unix_uid` rules), gets its own session and worker, and ends them by leaving
//! the bus.
//!
//! Needs root (callers of other uids), `dbus-daemon`, `busctl`, `gdbus` and `setpriv`
//! (tests/setup.sh installs them). With `CI=true` a missing one fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use mcpd_e2e::{alive, is_root, mcpd_bin, signal, wait_until, RESPONSE_TIMEOUT};
use serde_json::{json, Value};

const NAME: &str = "org.mcpd.Server1";
const PATH: &str = "/org/mcpd/Server1";
// dbus-daemon admits only uids with a passwd entry (it looks up their groups): Debian's base
// users `nobody` and `daemon` serve as the second caller and the unmapped one.
const UID_B: u32 = 65_534;
const UID_UNMAPPED: u32 = 1;
/// The bus's own limit (`max_message_size`).
const BUS_MAX: usize = 256 * 1024;
/// mcpd's limit in these tests (`[dbus] max_message_bytes`).
const MCPD_MAX: usize = 8192;

fn preconditions() -> bool {
    for (p, arg) in [
        ("dbus-daemon", "--version"),
        ("busctl", "--version"),
        ("gdbus", "help"),
        ("setpriv", "--version"),
    ] {
        if !mcpd_e2e::require_program(p, arg, "the D-Bus transport tests call mcpd over a bus") {
            return false;
        }
    }
    if !mcpd_e2e::require(
        is_root(),
        "root",
        "the D-Bus tests run callers of other uids",
    ) {
        return false;
    }
    if let Err(e) = mcpd_e2e::check_runs_as(UID_B, UID_B) {
        panic!("callers of other uids cannot run the test binaries: {e}");
    }
    true
}

/// A private bus and an mcpd serving on it, in one directory (readable by every uid).
struct Setup {
    dir: tempfile::TempDir,
    bus: Child,
    mcpd: Option<Child>,
    address: String,
}

const POLICY: &str = r#"
[dbus]
max_message_bytes = MCPD_MAX

[clients.root]
read = ["ROOT/root"]
exec = ["sleep"]
tools = ["list_allowed_directories", "read_text_file", "run_command"]
[clients.root.identity]
unix_uid = [0]

[clients.b]
read = ["ROOT/b"]
tools = ["list_allowed_directories", "read_text_file"]
[clients.b.identity]
unix_uid = [65534]
"#;

impl Setup {
    fn start() -> Self {
        Self::start_with("")
    }

    /// With `dbus_extra` added to the policy's `[dbus]` section.
    fn start_with(dbus_extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for c in ["root", "b"] {
            let d = dir.path().join(c);
            std::fs::create_dir_all(d.join("inner")).unwrap();
            std::fs::write(d.join("f.txt"), format!("secret of {c}")).unwrap();
            std::fs::write(d.join("inner/g.txt"), format!("inner of {c}")).unwrap();
        }
        let sock = dir.path().join("bus");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <limit name="max_message_size">{BUS_MAX}</limit>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                sock.display()
            ),
        )
        .unwrap();
        let mut bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .arg("--print-address")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dbus-daemon");
        let mut line = String::new();
        BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_string();
        assert!(address.starts_with("unix:path="), "bus address: {address}");
        // Every uid may reach the socket (the bus decides who may connect: every user).
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut s = Self {
            dir,
            bus,
            mcpd: None,
            address,
        };
        s.start_mcpd(dbus_extra);
        s
    }

    fn start_mcpd(&mut self, dbus_extra: &str) {
        let cfg = self.dir.path().join("mcpd.toml");
        let text = POLICY
            .replace("ROOT", self.dir.path().to_str().unwrap())
            .replace(
                "max_message_bytes = MCPD_MAX",
                &format!("max_message_bytes = {MCPD_MAX}\n{dbus_extra}"),
            );
        std::fs::write(&cfg, text).unwrap();
        let err = self.dir.path().join("stderr.log");
        let mut child = Command::new(mcpd_bin())
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .args(["--dbus", "session", "--dbus-address", &self.address])
            .arg("--audit-log")
            .arg(self.dir.path().join("audit.jsonl"))
            .env("MCPD_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
            .spawn()
            .expect("spawn mcpd");
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        loop {
            let log = std::fs::read_to_string(&err).unwrap_or_default();
            if log.contains("mcpd: serving dbus session bus") {
                break;
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!("mcpd exited ({st}) instead of serving: {log}");
            }
            assert!(Instant::now() < deadline, "mcpd did not serve: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.mcpd = Some(child);
    }

    fn root(&self, c: &str) -> String {
        self.dir.path().join(c).display().to_string()
    }

    fn audit(&self) -> Vec<Value> {
        mcpd_e2e::audit_records_so_far(&self.dir.path().join("audit.jsonl"))
    }

    fn audit_has(&self, f: impl Fn(&Value) -> bool) -> bool {
        wait_until(Duration::from_secs(10), || self.audit().iter().any(&f))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// `busctl call ... Call s MESSAGE` as root: the response string (busctl prints it as
    /// `s "<escaped>"`; `--json=short` gives it as JSON).
    fn busctl_call(&self, message: &Value) -> Value {
        let out = Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args(["--json=short", "call", NAME, PATH, NAME, "Call", "s"])
            .arg(message.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "busctl: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["type"], "s", "{v}");
        serde_json::from_str(v["data"][0].as_str().unwrap()).unwrap()
    }

    /// `gdbus call ... METHOD STRING` as `uid` (root: none): its output.
    fn gdbus(&self, uid: Option<u32>, method: &str, arg: &str) -> Output {
        let mut cmd = match uid {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={u}"))
                    .arg(format!("--regid={u}"))
                    .arg("--clear-groups")
                    .arg("gdbus");
                c
            }
            None => Command::new("gdbus"),
        };
        // gdbus reads a GVariant text argument: a quoted string.
        let quoted = format!("'{}'", arg.replace('\\', "\\\\").replace('\'', "\\'"));
        cmd.args(["call", "--address", &self.address, "--dest", NAME])
            .args(["--object-path", PATH, "--method"])
            .arg(format!("{NAME}.{method}"))
            .arg(quoted)
            .current_dir("/")
            .output()
            .unwrap()
    }

    /// The zbus client helper as `uid`:`uid`, connected (its unique name read).
    fn client(&self, uid: u32) -> Client {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcpd-dbus-client"))
            .arg(&self.address)
            .uid(uid)
            .gid(uid)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mcpd-dbus-client");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                let Ok(v) = serde_json::from_str::<Value>(&l) else {
                    continue;
                };
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let first = rx.recv_timeout(RESPONSE_TIMEOUT).expect("client connected");
        let name = first["unique_name"].as_str().unwrap().to_string();
        assert!(name.starts_with(':'), "{first}");
        Client {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            kept: Vec::new(),
            name,
            next_id: 1,
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut m) = self.mcpd.take() {
            signal(m.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && m.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = m.kill();
            let _ = m.wait();
        }
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One connection to the bus (the helper), one unique name.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    /// Lines read but not yet asked for.
    kept: Vec<Value>,
    name: String,
    next_id: i64,
}

impl Client {
    /// Write one raw line to the helper (`&`: do not wait for the calls before it).
    fn send_line(&mut self, line: &str) {
        let s = self.stdin.as_mut().unwrap();
        writeln!(s, "{line}").unwrap();
        s.flush().unwrap();
    }

    fn send(&mut self, v: &Value) {
        let s = self.stdin.as_mut().unwrap();
        writeln!(s, "{v}").unwrap();
        s.flush().unwrap();
    }

    /// The next line the helper prints that satisfies `f`; the others are kept, in order, for
    /// later calls (a signal may come before the answer to the call that caused it).
    fn next(&mut self, mut f: impl FnMut(&Value) -> bool) -> Value {
        if let Some(i) = self.kept.iter().position(&mut f) {
            return self.kept.remove(i);
        }
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no matching line from the client {}; kept: {:?}",
                    self.name, self.kept
                )
            });
            if f(&v) {
                return v;
            }
            self.kept.push(v);
        }
    }

    /// Call `method`: the JSON-RPC response.
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let v = self.next(|v| v["call"]["id"] == json!(id));
        assert!(v.get("error").is_none(), "{v}");
        serde_json::from_str(v["response"].as_str().unwrap()).unwrap()
    }

    fn initialize(&mut self, caps: Value) -> Value {
        let r = self.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": caps, "clientInfo": {"name": "dbus-e2e", "version": "0"}}),
        );
        assert!(r["result"]["protocolVersion"].is_string(), "{r}");
        let n = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.send(&n);
        self.next(|v| v["call"] == n);
        r
    }

    /// `tools/call read_text_file PATH`: (text, isError).
    fn read(&mut self, path: &str) -> (String, bool) {
        let r = self.request(
            "tools/call",
            json!({"name": "read_text_file", "arguments": {"path": path}}),
        );
        let res = &r["result"];
        (
            res["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            res["isError"] == json!(true),
        )
    }

    /// Leave the bus: stdin EOF, the helper closes its connection and exits.
    fn leave(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the client did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stateless(method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params})
}

/// The session ids of `principal`'s `session.open` records.
fn sessions_of(records: &[Value], principal: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["event"] == "session.open" && r["principal"] == principal)
        .map(|r| r["session"].as_str().unwrap().to_string())
        .collect()
}

fn worker_pid(records: &[Value], session: &str) -> Option<i32> {
    records
        .iter()
        .find(|r| r["event"] == "worker.spawn" && r["session"] == session)
        .and_then(|r| r["pid"].as_i64())
        .map(|p| p as i32)
}

#[test]
fn busctl_and_gdbus_call_the_interface() {
    if !preconditions() {
        return;
    }
    let s = Setup::start();
    // The interface as introspection shows it.
    let out = Command::new("busctl")
        .arg(format!("--address={}", s.address))
        .args(["introspect", NAME, PATH, NAME])
        .output()
        .unwrap();
    let intro = text(&out);
    assert!(out.status.success(), "{intro}");
    for member in [".Call", ".Reply", ".Message"] {
        assert!(intro.contains(member), "{intro}");
    }
    // initialize (its own connection: one session, ended when busctl leaves the bus).
    let r = s.busctl_call(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "busctl", "version": "0"}}}));
    assert_eq!(r["id"], 1, "{r}");
    assert_eq!(r["result"]["serverInfo"]["name"], "mcpd", "{r}");
    // A one-shot caller without a handshake: a request before initialize is refused...
    let r = s.busctl_call(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    assert_eq!(r["error"]["code"], -32600, "{r}");
    // ...and stateless-era requests carry their version: tools/list, then a read.
    let r = s.busctl_call(&stateless("tools/list", json!({})));
    let names: Vec<&str> = r["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"read_text_file"), "{names:?}");
    assert!(!names.contains(&"write_file"), "{names:?}");
    let f = format!("{}/f.txt", s.root("root"));
    let r = s.busctl_call(&stateless(
        "tools/call",
        json!({"name": "read_text_file", "arguments": {"path": f}}),
    ));
    assert_eq!(r["result"]["content"][0]["text"], "secret of root", "{r}");
    let other = format!("{}/f.txt", s.root("b"));
    let r = s.busctl_call(&stateless(
        "tools/call",
        json!({"name": "read_text_file", "arguments": {"path": other}}),
    ));
    assert_eq!(r["result"]["isError"], true, "{r}");
    // gdbus: the same interface, a notification answered with an empty string.
    let out = s.gdbus(
        None,
        "Call",
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "('',)");
    // Reply without a session is refused by name.
    let out = s.gdbus(None, "Reply", r#"{"jsonrpc":"2.0","id":"x","result":{}}"#);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("org.mcpd.Error.InvalidArgs"),
        "{}",
        text(&out)
    );
    // The audit log: the bus's credentials, the transport, the method; every busctl session
    // closed when its connection left the bus.
    assert!(s.audit_has(|r| r["event"] == "auth.success"
        && r["transport"] == "dbus"
        && r["method"] == "dbus-credentials"
        && r["principal"] == "root"
        && r["uid"] == "0"
        && r["bus_name"].as_str().is_some_and(|n| n.starts_with(':'))));
    let records = s.audit();
    let opened = sessions_of(&records, "root");
    assert_eq!(
        opened.len(),
        4,
        "initialize and three stateless calls: {opened:?}"
    );
    for id in &opened {
        assert!(
            s.audit_has(|r| r["event"] == "session.close" && r["session"] == id.as_str()),
            "session {id} not closed"
        );
    }
    assert!(
        records
            .iter()
            .filter(|r| r["event"] == "tools/call" || r["method"] == "tools/call")
            .all(|r| r["transport"].is_null() || r["transport"] == "dbus"),
        "{records:?}"
    );
    mcpd_e2e::audit_verify(&s.dir.path().join("audit.jsonl"));
}

#[test]
fn a_zbus_client_gets_server_requests_as_unicast_signals_and_answers_with_reply() {
    if !preconditions() {
        return;
    }
    let s = Setup::start();
    let mut c = s.client(0);
    // Declaring roots, the session asks for them (roots/list): a Message signal addressed
    // to this caller's unique name.
    c.initialize(json!({"roots": {"listChanged": true}}));
    let sig = c.next(|v| v.get("signal").is_some());
    assert_eq!(sig["destination"], json!(c.name), "unicast: {sig}");
    let ask: Value = serde_json::from_str(sig["signal"].as_str().unwrap()).unwrap();
    assert_eq!(ask["method"], "roots/list", "{ask}");
    // The answer goes back with Reply: the roots narrow what the client may read.
    let inner = format!("{}/inner", s.root("root"));
    let answer = json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"roots": [
        {"uri": format!("file://{inner}"), "name": "inner"}]}});
    c.send(&answer);
    let done = c.next(|v| v.get("reply").is_some());
    assert!(done.get("error").is_none(), "{done}");
    // The narrowing takes effect once the session has the answer.
    let outside = format!("{}/f.txt", s.root("root"));
    assert!(
        wait_until(RESPONSE_TIMEOUT, || c.read(&outside).1),
        "the reported roots did not narrow the client's paths"
    );
    let (t, err) = c.read(&format!("{inner}/g.txt"));
    assert!(!err, "{t}");
    assert_eq!(t, "inner of root");
    // Reply takes only responses.
    c.send_line(&format!(
        "!{}",
        json!({"jsonrpc": "2.0", "id": 99, "method": "ping"})
    ));
    let v = c.next(|v| v.get("reply").is_some_and(|m| m["id"] == 99));
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("org.mcpd.Error.InvalidArgs")),
        "{v}"
    );
    assert!(s.audit_has(|r| r["event"] == "session.open"
        && r["transport"] == "dbus"
        && r["principal"] == "root"));
    c.leave();
}

#[test]
fn callers_of_two_uids_get_their_own_clients_and_workers_and_leaving_ends_the_worker() {
    if !preconditions() {
        return;
    }
    let s = Setup::start();
    let mut a = s.client(0);
    let mut b = s.client(UID_B);
    a.initialize(json!({}));
    b.initialize(json!({}));
    let (t, err) = a.read(&format!("{}/f.txt", s.root("root")));
    assert!(!err, "{t}");
    assert_eq!(t, "secret of root");
    let (t, err) = b.read(&format!("{}/f.txt", s.root("b")));
    assert!(!err, "{t}");
    assert_eq!(t, "secret of b");
    // Each caller is its own client: b cannot read root's files.
    let (_, err) = b.read(&format!("{}/f.txt", s.root("root")));
    assert!(err, "client b read client root's file");
    let records = s.audit();
    let (sa, sb) = (sessions_of(&records, "root"), sessions_of(&records, "b"));
    assert_eq!((sa.len(), sb.len()), (1, 1), "{records:?}");
    assert!(records.iter().any(|r| r["event"] == "auth.success"
        && r["principal"] == "b"
        && r["uid"] == json!(UID_B.to_string())
        && r["bus_name"] == json!(b.name)
        && r["method"] == "dbus-credentials"
        && r["transport"] == "dbus"));
    let (wa, wb) = (
        worker_pid(&records, &sa[0]).expect("a worker for root's session"),
        worker_pid(&records, &sb[0]).expect("a worker for b's session"),
    );
    assert_ne!(wa, wb);
    assert!(alive(wa) && alive(wb));
    // b leaves the bus: its session closes and its worker is reaped; root's goes on.
    b.leave();
    assert!(
        s.audit_has(|r| r["event"] == "session.close" && r["session"] == sb[0].as_str()),
        "b's session was not closed: {}",
        s.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(10), || !alive(wb)),
        "b's worker {wb} lives on"
    );
    assert!(alive(wa));
    assert!(!s
        .audit()
        .iter()
        .any(|r| r["event"] == "session.close" && r["session"] == sa[0].as_str()));
    let (t, _) = a.read(&format!("{}/f.txt", s.root("root")));
    assert_eq!(t, "secret of root");
    a.leave();
    assert!(s.audit_has(|r| r["event"] == "session.close" && r["session"] == sa[0].as_str()));
    assert!(wait_until(Duration::from_secs(10), || !alive(wa)));
}

#[test]
fn oversized_messages_and_unmapped_callers_are_refused() {
    if !preconditions() {
        return;
    }
    let s = Setup::start();
    // Over [dbus] max_message_bytes: refused by name, before it is parsed.
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x".repeat(MCPD_MAX)}})
        .to_string();
    let out = s.gdbus(None, "Call", &big);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("org.mcpd.Error.TooLarge"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(s.dir.path().to_str().unwrap()));
    let out = s.gdbus(None, "Reply", &big);
    assert!(
        text(&out).contains("org.mcpd.Error.TooLarge"),
        "{}",
        text(&out)
    );
    // Over the bus's max_message_size: the bus refuses it (a message this size cannot even
    // be a command-line argument: the zbus client sends it); mcpd serves on.
    let mut c = s.client(0);
    let huge = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x".repeat(BUS_MAX + 1024)}});
    c.send(&huge);
    let v = c.next(|v| v.get("call").is_some());
    assert!(
        v.get("error").is_some(),
        "the bus took a message over its limit"
    );
    drop(c);
    let r = s.busctl_call(&stateless("tools/list", json!({})));
    assert!(r["result"]["tools"].is_array(), "{r}");
    // A message within the limit is served.
    let ok = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}, "pad": "x".repeat(MCPD_MAX / 2)}})
    .to_string();
    let out = s.gdbus(None, "Call", &ok);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("protocolVersion"));
    // A caller no rule maps: refused by name, audited, no session.
    let out = s.gdbus(
        Some(UID_UNMAPPED),
        "Call",
        &stateless("tools/list", json!({})).to_string(),
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("org.mcpd.Error.AccessDenied"),
        "{}",
        text(&out)
    );
    assert!(s.audit_has(|r| r["event"] == "auth.failure"
        && r["transport"] == "dbus"
        && r["method"] == "dbus-credentials"
        && r["uid"] == UID_UNMAPPED));
    // The zbus client as that uid: refused too.
    let mut c = s.client(UID_UNMAPPED);
    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}));
    let v = c.next(|v| v.get("call").is_some());
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("org.mcpd.Error.AccessDenied")),
        "{v}"
    );
    c.leave();
    let records = s.audit();
    assert!(!records
        .iter()
        .any(|r| r["event"] == "auth.success" && r["uid"] == json!(UID_UNMAPPED.to_string())));
}

#[test]
fn calls_run_concurrently_and_a_cancelled_call_ends() {
    if !preconditions() {
        return;
    }
    let s = Setup::start();
    let mut c = s.client(0);
    c.initialize(json!({}));
    // A call that runs until cancelled, sent without waiting for it...
    let long = json!({"jsonrpc": "2.0", "id": "long", "method": "tools/call", "params": {
        "name": "run_command", "arguments": {"command": "sleep", "args": ["300"]}}});
    c.send_line(&format!("&{long}"));
    // ...does not hold up the caller's other calls (nor the bus connection).
    let (t, err) = c.read(&format!("{}/f.txt", s.root("root")));
    assert!(!err, "{t}");
    assert_eq!(t, "secret of root");
    // Cancelled: no response comes, the Call ends with an error now.
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "long"}});
    c.send_line(&format!("&{cancel}"));
    let v = c.next(|v| v["call"]["id"] == "long");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("org.mcpd.Error.Failed") && e.contains("cancelled")),
        "{v}"
    );
    c.leave();
}

#[test]
fn callers_are_bounded_and_a_stop_closes_every_session() {
    if !preconditions() {
        return;
    }
    let mut s = Setup::start_with("max_callers = 1");
    let mut a = s.client(0);
    a.initialize(json!({}));
    // A second caller is over [dbus] max_callers: refused by name, no session.
    let out = s.gdbus(
        None,
        "Call",
        &stateless("tools/list", json!({})).to_string(),
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("org.mcpd.Error.LimitsExceeded"),
        "{}",
        text(&out)
    );
    assert_eq!(sessions_of(&s.audit(), "root").len(), 1);
    // The broker stops (SIGTERM) with the caller still connected: its session is closed, its
    // worker reaped, and the stop is clean.
    let (t, _) = a.read(&format!("{}/f.txt", s.root("root")));
    assert_eq!(t, "secret of root");
    let records = s.audit();
    let sa = sessions_of(&records, "root");
    let wa = worker_pid(&records, &sa[0]).expect("a worker");
    let mut m = s.mcpd.take().unwrap();
    signal(m.id() as i32, libc::SIGTERM);
    let st = m.wait().unwrap();
    assert!(st.success(), "{st}: {}", s.stderr());
    let records = mcpd_e2e::audit_records(&s.dir.path().join("audit.jsonl"));
    assert!(records
        .iter()
        .any(|r| r["event"] == "session.close" && r["session"] == sa[0].as_str()));
    assert!(records
        .iter()
        .any(|r| r["event"] == "broker.stop" && r["clean"] == true));
    assert!(!alive(wa), "the worker {wa} outlived the broker");
    a.leave();
}

/// The shipped bus policy (packaging/dbus/org.mcpd.Server1.conf) is one the bus daemon loads,
/// and it lets no one but user `mcpd` own the name: mcpd as root is refused the name and does
/// not start.
#[test]
fn the_shipped_bus_policy_loads_and_only_mcpd_may_own_the_name() {
    if !preconditions() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/dbus/org.mcpd.Server1.conf"
    );
    let sock = dir.path().join("bus");
    let conf = dir.path().join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
  <include>{shipped}</include>
</busconfig>
"#,
            sock.display()
        ),
    )
    .unwrap();
    let mut bus = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dbus-daemon");
    let mut line = String::new();
    BufReader::new(bus.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line.trim().to_string();
    assert!(
        address.starts_with("unix:path="),
        "the bus did not start with the shipped policy: {address}"
    );
    let cfg = dir.path().join("mcpd.toml");
    std::fs::write(
        &cfg,
        "[clients.root]\n[clients.root.identity]\nunix_uid = [0]\n",
    )
    .unwrap();
    let out = Command::new(mcpd_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--dbus", "system", "--dbus-address", &address])
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = bus.kill();
    let _ = bus.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mcpd owned the name as root: {err}");
    assert!(
        err.contains("cannot connect or own the name") && err.contains("not allowed to own"),
        "{err}"
    );
}
