//! A minimal HTTP/1.1 client for the Streamable HTTP tests: raw requests over `TcpStream`
//! (so every header, including hostile ones, is under the test's control; [`raw_request`]
//! writes one for any stream, e.g. a Unix socket), and a running
//! `mcpd serve --http 127.0.0.1:0`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::mcpd_bin;

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A header value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    /// The JSON-RPC messages of the body: every non-empty `data:` line of an SSE body, in
    /// order, or the one JSON body.
    pub fn messages(&self) -> Vec<Value> {
        if self
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
        {
            self.sse_data()
                .iter()
                .filter(|d| !d.is_empty())
                .map(|d| serde_json::from_str(d).unwrap())
                .collect()
        } else {
            vec![self.json()]
        }
    }

    /// The response to the request with this id (from a JSON or an SSE body).
    pub fn response_to(&self, id: &Value) -> Value {
        self.messages()
            .into_iter()
            .find(|m| m.get("id") == Some(id))
            .unwrap_or_else(|| {
                panic!(
                    "no response to {id} in {}",
                    String::from_utf8_lossy(&self.body)
                )
            })
    }

    /// The `data:` payloads of an SSE body, in order (empty ones included).
    pub fn sse_data(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .filter_map(|l| l.strip_prefix("data:").map(|d| d.trim_start().to_string()))
            .collect()
    }
}

/// A running `mcpd serve --http` (plus any other arguments).
pub struct HttpServer {
    pub child: Child,
    pub addr: SocketAddr,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl HttpServer {
    /// Start `mcpd serve --http 127.0.0.1:0 <args>` and wait until it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(&["--http", "127.0.0.1:0"], args)
    }

    /// Start `mcpd serve --http 127.0.0.1:0 --toolset conformance <args>` with the test worker
    /// that has the conformance fixtures.
    pub fn conformance(args: &[&str]) -> Self {
        let worker = crate::conformance_worker();
        let worker = worker.to_str().expect("utf-8 path");
        let mut all = vec!["--toolset", "conformance", "--worker", worker];
        all.extend_from_slice(args);
        Self::start(&all)
    }

    /// Start `mcpd serve <listen args> <args>`.
    pub fn start_with(listen: &[&str], args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stderr_path = dir.path().join("stderr.log");
        let err = std::fs::File::create(&stderr_path).unwrap();
        let child = Command::new(mcpd_bin())
            .arg("serve")
            .args(crate::no_default_config(&[listen, args].concat()))
            .args(listen)
            .args(args)
            .env("MCPD_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn mcpd");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            // `http://` or, with TLS, `https://`.
            let at = log
                .split("listening on http://")
                .nth(1)
                .or_else(|| log.split("listening on https://").nth(1));
            if let Some(rest) = at {
                let a = rest.split('/').next().unwrap();
                break a.parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "mcpd did not start listening:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            addr,
            stderr_path,
            _dir: dir,
        }
    }

    /// What mcpd wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The `Host` value of this server.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Send one request; `headers` are added to `Host`, `Content-Length` and
    /// `Connection: close` (a `Host` in `headers` replaces the default).
    pub fn request(&self, method: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request_at(self.addr, method, headers, body)
    }

    /// Send a request and return the connection, positioned before the response.
    pub fn open(&self, method: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
        open_at(self.addr, method, headers, body)
    }

    /// POST a JSON-RPC message with the standard MCP headers (and a session id if given).
    pub fn post(&self, session: Option<&str>, msg: &Value) -> Response {
        post_at(self.addr, session, msg)
    }

    /// initialize + notifications/initialized; returns the session id.
    pub fn initialize(&self) -> String {
        let r = self.post(
            None,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "0"}}}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let sid = r.header("mcp-session-id").expect("session id").to_string();
        let n = self.post(
            Some(&sid),
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        );
        assert_eq!(n.status, 202);
        sid
    }

    /// The JSON-RPC response to a request, from a JSON or an SSE body.
    pub fn rpc(&self, session: &str, id: i64, method: &str, params: Value) -> Value {
        let r = self.post(
            Some(session),
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.response_to(&json!(id))
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bytes of one HTTP/1.1 request to `/mcp`: `headers` (in order, repeated names kept),
/// then `Content-Length` and `Connection: close`, then `body`. No `Host` is added.
pub fn raw_request(method: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} /mcp HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Send a request to the `/mcp` endpoint at `addr` and return the connection, positioned
/// before the response. `headers` are added to `Host`, `Content-Length` and
/// `Connection: close` (a `Host` in `headers` replaces the default).
pub fn open_at(addr: SocketAddr, method: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
    send(
        TcpStream::connect(addr).unwrap(),
        addr,
        method,
        headers,
        body,
    )
}

/// [`open_at`] from the local address `src` (another loopback address, e.g. 127.0.0.2: another
/// client, as far as the server or a proxy can tell).
pub fn open_from(
    src: IpAddr,
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    send(sock.into(), addr, method, headers, body)
}

/// [`request_at`] from the local address `src`.
pub fn request_from(
    src: IpAddr,
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    read_response(&mut open_from(src, addr, method, headers, body))
}

fn send(
    mut s: TcpStream,
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} /mcp HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

/// One request to the `/mcp` endpoint at `addr`, read to the end.
pub fn request_at(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = open_at(addr, method, headers, body);
    read_response(&mut s)
}

/// POST a JSON-RPC message to `addr` with the standard MCP headers (and a session id).
pub fn post_at(addr: SocketAddr, session: Option<&str>, msg: &Value) -> Response {
    request_at(
        addr,
        "POST",
        &mcp_headers(session),
        msg.to_string().as_bytes(),
    )
}

/// [`post_at`] from the local address `src`.
pub fn post_from(src: IpAddr, addr: SocketAddr, session: Option<&str>, msg: &Value) -> Response {
    request_from(
        src,
        addr,
        "POST",
        &mcp_headers(session),
        msg.to_string().as_bytes(),
    )
}

/// The standard MCP headers of a session-era POST (and the session id, if any).
fn mcp_headers(session: Option<&str>) -> Vec<(&str, &str)> {
    let mut h = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    if let Some(sid) = session {
        h.push(("Mcp-Session-Id", sid));
    }
    h
}

/// Read a whole response (the server closes the connection: `Connection: close`), decoding a
/// chunked body. Any byte stream: a TCP connection, a TLS stream, a Unix-socket relay's stdout.
pub fn read_response(s: &mut impl Read) -> Response {
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            if r.read_line(&mut size).unwrap_or(0) == 0 {
                break;
            }
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let _ = r.read_to_end(&mut body);
    }
    Response {
        status,
        headers,
        body,
    }
}

/// Read the status line and headers.
pub fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}
