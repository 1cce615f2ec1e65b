//! TLS and mTLS on the HTTP listener, end to end: the real `mcpd serve --http`, real rustls
//! handshakes, certificate authorities made with rcgen in each test. Also the listener's
//! survival rules (connection caps, header deadline, one Host, absolute-form targets), the
//! non-loopback rule, `check-config` and `mcpd doctor` on TLS files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mcpd_e2e::http::{read_response, HttpServer};
use mcpd_e2e::tls::{client_config, connect, post, Ca, Leaf};
use mcpd_e2e::{mcpd_bin, wait_until};
use rustls::version::{TLS12, TLS13};
use serde_json::{json, Value};

const SPIFFE_ALICE: &str = "spiffe://mcpd.test/alice";

/// A directory with a CA, the server's certificate and key, two client roots and an audit log.
struct Pki {
    _top: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    server: Leaf,
    cert: PathBuf,
    key: PathBuf,
    ca_file: PathBuf,
    root_a: PathBuf,
    root_b: PathBuf,
    audit: PathBuf,
}

fn pki() -> Pki {
    let top = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(top.path()).unwrap();
    let ca = Ca::new("mcpd test CA");
    let server = ca.server(1);
    let (cert, key) = server.write(&dir, "server");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let root_a = dir.join("alice-root");
    let root_b = dir.join("bob-root");
    for (r, who) in [(&root_a, "alice"), (&root_b, "bob")] {
        std::fs::create_dir(r).unwrap();
        std::fs::write(r.join("owner.txt"), who).unwrap();
    }
    Pki {
        audit: dir.join("audit.jsonl"),
        _top: top,
        dir,
        ca,
        server,
        cert,
        key,
        ca_file,
        root_a,
        root_b,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

impl Pki {
    /// The two-client configuration: alice by SAN URI, bob by CN; mTLS when `mtls`.
    fn config(&self, mtls: bool, extra_tls: &str) -> PathBuf {
        let ca = if mtls {
            format!("client_ca = \"{}\"\n", s(&self.ca_file))
        } else {
            String::new()
        };
        let text = format!(
            r#"[stdio]
client = "alice"
[clients.alice]
read = ["{a}"]
[clients.alice.identity]
x509_san_uri = ["{SPIFFE_ALICE}"]
[clients.bob]
read = ["{b}"]
[clients.bob.identity]
x509_cn = ["bob"]
[audit]
path = "{log}"
[http]
listen = "127.0.0.1:0"
[http.tls]
cert = "{cert}"
key = "{key}"
{ca}{extra_tls}"#,
            a = s(&self.root_a),
            b = s(&self.root_b),
            log = s(&self.audit),
            cert = s(&self.cert),
            key = s(&self.key),
        );
        let p = self.dir.join("mcpd.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn serve(&self, config: &Path) -> HttpServer {
        HttpServer::start_with(&["--config", s(config)], &[])
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Wait for an audit record of `event` that satisfies `f`.
    fn wait_record(&self, event: &str, f: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            found = self
                .records()
                .into_iter()
                .find(|r| r["event"] == event && f(r));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no {event} record; log: {:#?}", self.records()))
    }
}

fn init_msg() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "tls-e2e", "version": "0"}}})
}

/// initialize over an open TLS connection: the session id.
fn initialize(c: &mut mcpd_e2e::tls::TlsStream, port: u16) -> String {
    let r = post(c, port, None, &init_msg()).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sid = r.header("mcp-session-id").unwrap().to_string();
    let n = post(
        c,
        port,
        Some(&sid),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .unwrap();
    assert_eq!(n.status, 202);
    sid
}

/// A request that should never get an HTTP answer: the handshake (or, in TLS 1.3, the first
/// read after it) fails. Returns the error the client saw.
fn refused(addr: SocketAddr, cfg: std::sync::Arc<rustls::ClientConfig>) -> String {
    let mut c = match connect(addr, cfg) {
        Err(e) => return e.to_string(),
        Ok(c) => c,
    };
    match post(&mut c, addr.port(), None, &init_msg()) {
        Ok(r) => panic!(
            "an HTTP answer over a connection that should be refused: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tls13_only_by_default_tls12_on_opt_in_alpn_http11() {
    let p = pki();
    let root = s(&p.root_a).to_string();
    let srv = HttpServer::start_with(
        &["--http", "127.0.0.1:0"],
        &[
            "--tls-cert",
            s(&p.cert),
            "--tls-key",
            s(&p.key),
            "--allow-read",
            &root,
        ],
    );
    assert!(
        srv.stderr().contains("listening on https://"),
        "{}",
        srv.stderr()
    );
    let port = srv.addr.port();
    let mut c = connect(srv.addr, client_config(&p.ca.der, None, &[&TLS13])).unwrap();
    assert_eq!(
        c.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(c.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let sid = initialize(&mut c, port);
    let r = post(
        &mut c,
        port,
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "list_allowed_directories", "arguments": {}}}),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains(&root));
    // A TLS 1.2-only client is refused by default.
    let e = connect(srv.addr, client_config(&p.ca.der, None, &[&TLS12])).err();
    assert!(e.is_some(), "TLS 1.2 handshake accepted by default");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(srv.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /mcp HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!buf.starts_with(b"HTTP/"), "plaintext answered over TLS");
    drop(srv);

    // min_version = "1.2": TLS 1.2 is accepted.
    let cfg = p.config(false, "min_version = \"1.2\"\n");
    let srv = p.serve(&cfg);
    let c = connect(srv.addr, client_config(&p.ca.der, None, &[&TLS12])).unwrap();
    assert_eq!(
        c.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[test]
fn mtls_refuses_missing_foreign_expired_and_revoked_certificates_audited() {
    let p = pki();
    let revoked = p.ca.client("alice", Some(SPIFFE_ALICE), 66);
    let crl = p.dir.join("ca.crl");
    std::fs::write(&crl, p.ca.crl(&[&revoked.serial])).unwrap();
    let cfg = p.config(true, &format!("crls = [\"{}\"]\n", s(&crl)));
    let srv = p.serve(&cfg);
    let other = Ca::new("another CA");
    let cases: Vec<(&str, Option<Leaf>, &str)> = vec![
        ("none", None, "no client certificate"),
        (
            "foreign",
            Some(other.client("alice", Some(SPIFFE_ALICE), 7)),
            "UnknownIssuer",
        ),
        (
            "expired",
            Some(p.ca.client_valid(
                "alice",
                Some(SPIFFE_ALICE),
                8,
                Some(((2020, 1, 1), (2021, 1, 1))),
            )),
            "Expired",
        ),
        ("revoked", Some(revoked), "Revoked"),
    ];
    for (name, leaf, reason) in &cases {
        let e = refused(srv.addr, client_config(&p.ca.der, leaf.as_ref(), &[&TLS13]));
        let rec = p.wait_record("auth.failure", |r| {
            r["reason"].as_str().is_some_and(|x| x.contains(reason))
        });
        assert_eq!(rec["principal"], "<unauthenticated>", "{name}");
        assert_eq!(rec["transport"], "http", "{name}");
        assert_eq!(rec["stage"], "tls-handshake", "{name}");
        assert!(
            rec["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{name}: {rec}"
        );
        assert!(!e.is_empty(), "{name}");
    }
    // No session was opened by any of them.
    assert!(!p.records().iter().any(|r| r["event"] == "session.open"));
    // A good certificate still works on the same listener.
    let alice = p.ca.client("alice", Some(SPIFFE_ALICE), 9);
    let mut c = connect(srv.addr, client_config(&p.ca.der, Some(&alice), &[&TLS13])).unwrap();
    initialize(&mut c, srv.addr.port());
}

fn allowed_dirs(c: &mut mcpd_e2e::tls::TlsStream, port: u16, sid: &str) -> String {
    let r = post(
        c,
        port,
        Some(sid),
        &json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
            "name": "list_allowed_directories", "arguments": {}}}),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn each_certificate_speaks_for_its_own_client_and_an_unmapped_one_is_403() {
    let p = pki();
    let cfg = p.config(true, "");
    let srv = p.serve(&cfg);
    let port = srv.addr.port();
    let alice = p.ca.client("alice-device", Some(SPIFFE_ALICE), 21);
    let bob = p.ca.client("bob", None, 22);
    let mut ca_conn = connect(srv.addr, client_config(&p.ca.der, Some(&alice), &[&TLS13])).unwrap();
    let mut cb_conn = connect(srv.addr, client_config(&p.ca.der, Some(&bob), &[&TLS13])).unwrap();
    // Both sessions at the same time.
    let sa = initialize(&mut ca_conn, port);
    let sb = initialize(&mut cb_conn, port);
    let da = allowed_dirs(&mut ca_conn, port, &sa);
    let db = allowed_dirs(&mut cb_conn, port, &sb);
    assert!(
        da.contains(s(&p.root_a)) && !da.contains(s(&p.root_b)),
        "{da}"
    );
    assert!(
        db.contains(s(&p.root_b)) && !db.contains(s(&p.root_a)),
        "{db}"
    );
    // Bob cannot use alice's session id.
    let r = post(
        &mut cb_conn,
        port,
        Some(&sa),
        &json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list"}),
    )
    .unwrap();
    assert_eq!(r.status, 404);
    // auth.success names the certificate, never holds it.
    let ok = p.wait_record("auth.success", |r| r["principal"] == "alice");
    assert_eq!(ok["method"], "mtls");
    assert!(ok["cert_subject"]
        .as_str()
        .unwrap()
        .contains("alice-device"));
    assert_eq!(ok["cert_serial"], "15");
    assert!(ok["cert_issuer"].as_str().unwrap().contains("mcpd test CA"));
    assert!(!ok.to_string().contains("BEGIN CERTIFICATE"));
    let okb = p.wait_record("auth.success", |r| r["principal"] == "bob");
    assert_eq!(okb["method"], "mtls");
    // A certificate of the right CA that names no client: 403, audited.
    let mallory =
        p.ca.client("mallory", Some("spiffe://mcpd.test/mallory"), 23);
    let mut cm = connect(
        srv.addr,
        client_config(&p.ca.der, Some(&mallory), &[&TLS13]),
    )
    .unwrap();
    let r = post(&mut cm, port, None, &init_msg()).unwrap();
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("names no client"));
    let rec = p.wait_record("auth.failure", |r| r["http_status"] == 403);
    assert_eq!(rec["principal"], "<unauthenticated>");
    assert_eq!(rec["method"], "mtls");
    assert_eq!(rec["stage"], "http-request");
    assert_eq!(rec["reason"], "certificate");
    assert!(rec["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[test]
fn sighup_reloads_the_certificate_and_open_connections_keep_working() {
    let p = pki();
    let cfg = p.config(false, "");
    let srv = p.serve(&cfg);
    let port = srv.addr.port();
    let tls = client_config(&p.ca.der, None, &[&TLS13]);
    let mut old = connect(srv.addr, tls.clone()).unwrap();
    let peer_cert =
        |c: &mcpd_e2e::tls::TlsStream| c.conn.peer_certificates().unwrap()[0].as_ref().to_vec();
    assert_eq!(peer_cert(&old), p.server.der.as_ref());
    let sid = initialize(&mut old, port);
    // A new certificate (another key, another serial), then SIGHUP.
    let fresh = p.ca.server(2);
    fresh.write(&p.dir, "server");
    let hup = |n: usize| {
        let pid = srv.child.id() as i32;
        // SAFETY: kill(2) takes plain integers; the pid is our own live child.
        let sent = unsafe { libc::kill(pid, libc::SIGHUP) };
        assert_eq!(sent, 0);
        assert!(
            wait_until(Duration::from_secs(10), || srv
                .stderr()
                .matches("policy reloaded")
                .count()
                >= n),
            "{}",
            srv.stderr()
        );
    };
    hup(1);
    assert!(wait_until(Duration::from_secs(10), || srv
        .stderr()
        .contains("TLS: certificate and key reloaded")));
    let new = connect(srv.addr, tls.clone()).unwrap();
    assert_eq!(peer_cert(&new), fresh.der.as_ref());
    // The connection opened before the reload still answers, on its own certificate.
    let r = post(
        &mut old,
        port,
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"], json!({}));
    assert_eq!(peer_cert(&old), p.server.der.as_ref());
    // A broken certificate file: the reload keeps the last good certificate.
    std::fs::write(&p.cert, "not a certificate\n").unwrap();
    hup(2);
    assert!(wait_until(Duration::from_secs(10), || srv
        .stderr()
        .contains(
            "TLS reload refused, the previous certificate stays in force"
        )));
    let again = connect(srv.addr, tls).unwrap();
    assert_eq!(peer_cert(&again), fresh.der.as_ref());
}

/// A TCP connection to `addr` from the loopback address `from`.
fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local = SocketAddr::from((from, 0));
    sock.bind(&local.into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.into()
}

#[test]
fn slow_header_flood_does_not_starve_a_well_behaved_client() {
    const FLOOD: usize = 2000;
    let top = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(top.path()).unwrap();
    let srv = HttpServer::start(&["--allow-read", s(&root)]);
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut c = TcpStream::connect(srv.addr).unwrap();
        // A request head that never ends.
        let _ = c.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
        flood.push(c);
    }
    // Another client (another source address) is answered at once. On a machine whose CPUs
    // are busy elsewhere, the flood can overflow the listen queue before the broker drains it,
    // and the kernel may then reset a new connection: a client connects again, as this one
    // does once (the time bound below covers both attempts).
    let started = Instant::now();
    let body = init_msg().to_string();
    let attempt = |from: [u8; 4]| -> std::io::Result<mcpd_e2e::http::Response> {
        let mut ok = connect_from(from, srv.addr);
        ok.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            ok,
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            srv.addr,
            body.len()
        )?;
        let mut peek = [0u8; 1];
        ok.peek(&mut peek)?;
        Ok(read_response(&mut ok))
    };
    let r = match attempt([127, 0, 0, 2]) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            eprintln!("the first connection was reset ({e}); connecting again");
            attempt([127, 0, 0, 2]).unwrap()
        }
        r => r.unwrap(),
    };
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered only after {:?}",
        started.elapsed()
    );
    // The flood's source got at most max_connections_per_ip (64) connections; the rest were
    // closed at once, and the held ones go when the header deadline (10 s) passes.
    let closed = |c: &mut TcpStream, wait: Duration| {
        c.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 64];
        match c.read(&mut b) {
            // EOF, or what hyper says before it closes: either way the server let go.
            Ok(_n) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };
    let mut closed_now = 0;
    for c in flood.iter_mut().skip(100) {
        if closed(c, Duration::from_millis(200)) {
            closed_now += 1;
        }
        if closed_now >= 50 {
            break;
        }
    }
    assert_eq!(
        closed_now, 50,
        "connections over the per-address cap stay open"
    );
    let held = flood.iter_mut().take(64);
    let deadline = Instant::now() + Duration::from_secs(20);
    for c in held {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            closed(c, left.max(Duration::from_millis(1))),
            "a slow header outlived the header deadline"
        );
    }
    drop(flood);
    // The broker is still fine, for the flood's own address too, once it has seen the flood's
    // connections close (until then a new one from 127.0.0.1 is over that address's cap and
    // closed at once, which the client sees as a reset).
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        match attempt([127, 0, 0, 1]) {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                eprintln!("127.0.0.1 not served yet ({e}); the flood's connections are closing");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the broker no longer answers the flood's address: {e}"),
        }
    };
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn duplicate_host_and_a_foreign_absolute_target_are_400_audited() {
    let top = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(top.path()).unwrap();
    let root = dir.join("root");
    std::fs::create_dir(&root).unwrap();
    let log = dir.join("audit.jsonl");
    let srv = HttpServer::start(&["--allow-read", s(&root), "--audit-log", s(&log)]);
    let host = srv.host();
    let body = init_msg().to_string();
    let h = [
        ("Host", host.as_str()),
        ("Host", "evil.example"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    let r = srv.request("POST", &h, body.as_bytes());
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("exactly one Host"));
    let raw = |target: &str, host: &str| {
        let mut c = TcpStream::connect(srv.addr).unwrap();
        write!(
            c,
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        read_response(&mut c)
    };
    let r = raw("http://evil.example/mcp", &host);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("another authority"));
    let r = raw(&format!("https://{host}/mcp"), &host);
    assert_eq!(r.status, 400, "wrong scheme for a plaintext listener");
    // Absolute form naming this server, as Host does: served.
    let r = raw(&format!("http://{host}/mcp"), &host);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let n400 = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["event"] == "request" && r["http_status"] == 400)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || n400() >= 3),
        "{}",
        n400()
    );
}

#[test]
fn non_loopback_needs_tls_and_client_certificates() {
    let p = pki();
    let run = |extra: &[&str]| {
        let out = Command::new(mcpd_bin())
            .args(["serve", "--http", "0.0.0.0:0", "--allow-read", s(&p.root_a)])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&[]);
    assert!(e.contains("needs TLS"), "{e}");
    let e = run(&["--tls-cert", s(&p.cert), "--tls-key", s(&p.key)]);
    assert!(e.contains("--tls-client-ca"), "{e}");
    let e = run(&["--tls-cert", s(&p.cert)]);
    assert!(e.contains("go together"), "{e}");
}

#[test]
fn check_config_doctor_and_start_check_the_tls_files() {
    use std::os::unix::fs::PermissionsExt;
    let p = pki();
    let cfg = p.config(true, "");
    let out = Command::new(mcpd_bin())
        .args(["check-config", "--config", s(&cfg)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("http.tls: cert {}", s(&p.cert))),
        "{text}"
    );
    assert!(text.contains("min_version 1.3"), "{text}");
    assert!(
        text.contains("client certificates required (mTLS)"),
        "{text}"
    );
    assert!(
        text.contains("connections at most 1024 in total, 64 per source address"),
        "{text}"
    );
    let doctor = || {
        let out = Command::new(mcpd_bin())
            .args(["doctor", "--config", s(&cfg)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let d = doctor();
    assert!(d.contains("tls: certificate"), "{d}");
    assert!(d.contains("days left"), "{d}");
    assert!(d.contains("owner-only permissions"), "{d}");
    assert!(d.contains("the TLS files are usable"), "{d}");
    // A key others can read: doctor says so, and the start is refused.
    std::fs::set_permissions(&p.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = doctor();
    assert!(d.contains("PROBLEM: key:"), "{d}");
    assert!(d.contains("are NOT usable"), "{d}");
    let out = Command::new(mcpd_bin())
        .args(["serve", "--config", s(&cfg)])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("readable by others"), "{e}");
    // An expired server certificate: doctor names it.
    std::fs::set_permissions(&p.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let old =
        p.ca.client_valid("old server", None, 5, Some(((2020, 1, 1), (2021, 1, 1))));
    old.write(&p.dir, "server");
    let d = doctor();
    assert!(d.contains("EXPIRED"), "{d}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_header_deadline() {
    let top = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(top.path()).unwrap();
    let srv = HttpServer::start(&["--allow-read", s(&root)]);
    let mut c = TcpStream::connect(srv.addr).unwrap();
    let body = init_msg().to_string();
    write!(
        c,
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        srv.addr,
        body.len()
    )
    .unwrap();
    let r = mcpd_e2e::tls::read_one(&mut c).unwrap();
    assert_eq!(r.status, 200);
    let idle_from = Instant::now();
    c.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
    let mut b = [0u8; 16];
    let n = c.read(&mut b);
    let idle = idle_from.elapsed();
    assert!(
        matches!(n, Ok(0)) || n.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the idle connection was not closed"
    );
    assert!(
        idle >= Duration::from_secs(8) && idle < Duration::from_secs(20),
        "closed after {idle:?}"
    );
}

#[test]
fn a_silent_tls_peer_is_dropped_after_the_handshake_deadline() {
    let p = pki();
    let cfg = p.config(false, "");
    let srv = p.serve(&cfg);
    let mut silent: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(srv.addr).unwrap())
        .collect();
    // A real client meanwhile completes its handshake and is served.
    let mut c = connect(srv.addr, client_config(&p.ca.der, None, &[&TLS13])).unwrap();
    initialize(&mut c, srv.addr.port());
    let started = Instant::now();
    for t in &mut silent {
        t.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
        let mut b = [0u8; 16];
        let n = t.read(&mut b);
        assert!(
            matches!(n, Ok(0)) || n.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "a silent peer was not dropped"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// The official Python SDK (`mcp==2.3.0`, `tests/python/sdk_bearer.py`) over HTTPS with a
/// bearer token, both eras' client modes (HTTPS alone and mTLS: `python_sdk.rs`).
#[test]
fn python_sdk_over_https_with_a_bearer_token() {
    let Some(py) = mcpd_e2e::python_sdk() else {
        return;
    };
    let p = pki();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/sdk_bearer.py");
    let file = p.root_a.join("owner.txt");
    let run = |srv: &HttpServer, token: &str| {
        let url = format!("https://localhost:{}/mcp", srv.addr.port());
        for mode in ["legacy", "auto"] {
            let out = Command::new(&py)
                .arg(&script)
                .args([&url, token, s(&file), mode, "alice"])
                .env("MCPD_CA", &p.ca_file)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("ok ("),
                "python SDK over https ({mode}, {:?}):\n{stdout}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                srv.stderr()
            );
        }
    };
    // A bearer token over TLS (no client certificate).
    let signer = mcpd_e2e::jwt::Key::new("k1");
    let jwks = p.dir.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [signer.jwk()]}).to_string()).unwrap();
    let cfg = p.config(false, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("x509_san_uri = [\"{SPIFFE_ALICE}\"]"),
        &format!("x509_san_uri = [\"{SPIFFE_ALICE}\"]\njwt_sub = [\"alice\"]"),
    );
    let (iss, aud) = ("https://idp.tls.test", "https://mcp.tls.test/mcp");
    std::fs::write(
        &cfg,
        format!(
            "{text}\n[auth.jwt]\nissuer = \"{iss}\"\naudience = \"{aud}\"\njwks = \"{}\"\n",
            s(&jwks)
        ),
    )
    .unwrap();
    let srv = p.serve(&cfg);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = signer.sign(&json!({"iss": iss, "aud": aud, "sub": "alice", "exp": now + 600}));
    run(&srv, &token);
    let rec = p.wait_record("auth.success", |r| r["method"] == "jwt-bearer");
    assert_eq!(rec["principal"], "alice");
}
