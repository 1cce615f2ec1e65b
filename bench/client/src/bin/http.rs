//! `mcpd-http-bench`: closed-loop Streamable HTTP load (session era, 2025-11-25) for
//! `bench/http_bench.py`.
//!
//! N sessions, each on a thread of its own with one keep-alive connection: `initialize`,
//! `notifications/initialized`, then `tools/call read_text_file` as fast as the answers come,
//! for `--warmup-secs` (not counted) and `--secs` (counted: every call that started in the
//! window). A session that is set up keeps its connection in use with an MCP `ping` every 2 s
//! until all are (a server may end an idle keep-alive connection: mcpd does after 10 s), so
//! that the load starts on live sessions. Requests are pre-serialized; a response counts when
//! its status is 200 and its body holds a `"result"` and no `"error"` (JSON or SSE), so the
//! client spends little CPU of the two cores the servers share with it. With `--pid`, the CPU
//! time of that process and of all its descendants (mcpd: the broker and its workers) over the
//! window, and their PSS at its end, read from /proc.
//!
//! `--cold-runs K` instead: K sessions one after the other, each `initialize` → first result →
//! `DELETE`; prints the median and minimum of those times (a session's cold start: for mcpd
//! the worker's spawn and confinement).
//!
//! Prints one JSON object.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

struct Opts {
    addr: SocketAddr,
    path: String,
    sessions: usize,
    secs: f64,
    warmup_secs: f64,
    file: String,
    pid: Option<u32>,
    cold_runs: usize,
}

/// One keep-alive connection speaking for one session.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    host: String,
    path: String,
    session: Option<String>,
}

struct Reply {
    status: u16,
    session: Option<String>,
    body: Vec<u8>,
}

impl Conn {
    fn open(o: &Opts) -> Result<Self, String> {
        let s = TcpStream::connect(o.addr).map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let r = BufReader::with_capacity(64 * 1024, s.try_clone().map_err(|e| e.to_string())?);
        Ok(Self {
            w: s,
            r,
            host: o.addr.to_string(),
            path: o.path.clone(),
            session: None,
        })
    }

    /// The bytes of one request (with this connection's session id once it has one).
    fn request_bytes(&self, method: &str, body: &[u8]) -> Vec<u8> {
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-11-25\r\n",
            self.path, self.host
        );
        if let Some(s) = &self.session {
            head.push_str(&format!("Mcp-Session-Id: {s}\r\n"));
        }
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut b = head.into_bytes();
        b.extend_from_slice(body);
        b
    }

    fn send(&mut self, bytes: &[u8]) -> Result<Reply, String> {
        self.w.write_all(bytes).map_err(|e| format!("write: {e}"))?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> Result<Reply, String> {
        let mut line = String::new();
        self.r
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let (mut len, mut chunked, mut session) = (None, false, None);
        loop {
            line.clear();
            self.r
                .read_line(&mut line)
                .map_err(|e| format!("read: {e}"))?;
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((k, v)) = h.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            } else if k.eq_ignore_ascii_case("mcp-session-id") {
                session = Some(v.to_string());
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.r
                    .read_line(&mut line)
                    .map_err(|e| format!("read: {e}"))?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| format!("bad chunk size {line:?}"))?;
                if size == 0 {
                    // Trailers (none expected), then the empty line.
                    loop {
                        line.clear();
                        self.r.read_line(&mut line).map_err(|e| e.to_string())?;
                        if line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let at = body.len();
                body.resize(at + size + 2, 0);
                self.r
                    .read_exact(&mut body[at..])
                    .map_err(|e| format!("read: {e}"))?;
                body.truncate(at + size);
            }
        } else if let Some(n) = len {
            body.resize(n, 0);
            self.r
                .read_exact(&mut body)
                .map_err(|e| format!("read: {e}"))?;
        }
        Ok(Reply {
            status,
            session,
            body,
        })
    }

    fn initialize(&mut self) -> Result<(), String> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "mcpd-http-bench", "version": "1"}}})
        .to_string();
        let r = self.send(&self.request_bytes("POST", init.as_bytes()))?;
        if r.status != 200 {
            return Err(format!(
                "initialize: HTTP {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        self.session = r.session;
        let n = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let r = self.send(&self.request_bytes("POST", n))?;
        if r.status != 202 {
            return Err(format!("notifications/initialized: HTTP {}", r.status));
        }
        Ok(())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A call's reply is a success: 200, a result, no error.
fn ok(r: &Reply) -> bool {
    r.status == 200 && contains(&r.body, b"\"result\"") && !contains(&r.body, b"\"error\"")
}

fn call_body(file: &str, id: u64) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "read_text_file", "arguments": {"path": file}}})
    .to_string()
    .into_bytes()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// CPU seconds (user + system) of `pid` and, separately, of all its descendants; their PSS
/// (KiB) likewise; and how many descendants there are.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    cpu_self: f64,
    cpu_desc: f64,
    pss_self_kib: u64,
    pss_desc_kib: u64,
    descendants: usize,
}

fn stat_of(pid: u32) -> Option<(u32, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis: state ppid ...
    let rest = &s[s.rfind(')')? + 2..];
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, cpu_secs(pid)))
}

/// CPU time of every thread of `pid`, seconds, from `/proc/PID/task/*/schedstat` (the
/// scheduler's own nanoseconds: exact, where `stat`'s utime/stime are tick samples that miss
/// the short bursts of a thousand mostly idle workers).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut ns = 0u64;
    for t in tasks.flatten() {
        let mut p = t.path();
        p.push("schedstat");
        if let Some(v) = std::fs::read_to_string(p).ok().and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        }) {
            ns += v;
        }
    }
    ns as f64 / 1e9
}

fn pss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn usage(root: u32, with_pss: bool) -> Usage {
    let mut parent = std::collections::HashMap::new();
    let mut cpu = std::collections::HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, c)) = stat_of(pid) {
                parent.insert(pid, ppid);
                cpu.insert(pid, c);
            }
        }
    }
    let mut u = Usage::default();
    for (&pid, &c) in &cpu {
        if pid == root {
            u.cpu_self += c;
            if with_pss {
                u.pss_self_kib += pss_of(pid);
            }
            continue;
        }
        let mut p = pid;
        let mut depth = 0;
        while let Some(&pp) = parent.get(&p) {
            if pp == root {
                u.cpu_desc += c;
                u.descendants += 1;
                if with_pss {
                    u.pss_desc_kib += pss_of(pid);
                }
                break;
            }
            if pp <= 1 || depth > 64 {
                break;
            }
            p = pp;
            depth += 1;
        }
    }
    u
}

fn cold(o: &Opts) -> Result<serde_json::Value, String> {
    let mut times = Vec::with_capacity(o.cold_runs);
    let body = call_body(&o.file, 1);
    for _ in 0..o.cold_runs {
        let t = Instant::now();
        let mut c = Conn::open(o)?;
        c.initialize()?;
        let r = c.send(&c.request_bytes("POST", &body))?;
        if !ok(&r) {
            return Err(format!(
                "first call: HTTP {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let _ = c.send(&c.request_bytes("DELETE", b""));
    }
    times.sort_by(f64::total_cmp);
    Ok(json!({
        "cold_runs": o.cold_runs,
        "cold_median_ms": percentile(&times, 0.5),
        "cold_min_ms": times.first().copied().unwrap_or(0.0),
    }))
}

fn load(o: Arc<Opts>) -> Result<serde_json::Value, String> {
    // Sessions set up (or failed to), and the start signal once all are.
    let ready = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::with_capacity(o.sessions);
    for _ in 0..o.sessions {
        let (o, ready, go, measuring, stop, errors) = (
            o.clone(),
            ready.clone(),
            go.clone(),
            measuring.clone(),
            stop.clone(),
            errors.clone(),
        );
        let t = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || -> Result<(Vec<f64>, f64), String> {
                let t0 = Instant::now();
                let setup = (|| {
                    let mut c = Conn::open(&o)?;
                    c.initialize()?;
                    let req = c.request_bytes("POST", &call_body(&o.file, 1));
                    let ping =
                        c.request_bytes("POST", br#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#);
                    let r = c.send(&req)?;
                    if !ok(&r) || r.body.len() < 4096 {
                        return Err(format!(
                            "first call: HTTP {}: {}",
                            r.status,
                            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
                        ));
                    }
                    Ok((c, req, ping))
                })();
                let setup_ms = t0.elapsed().as_secs_f64() * 1e3;
                ready.fetch_add(1, Ordering::SeqCst);
                let (mut c, req, ping) = setup?;
                // Until every session is set up (with 1 000 sessions on a busy machine that
                // can take longer than a server's idle timeout: mcpd ends a keep-alive
                // connection idle for 10 s), keep this one in use with an MCP ping.
                let mut last = Instant::now();
                while !go.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    if last.elapsed() >= Duration::from_secs(2) {
                        let r = c.send(&ping)?;
                        if r.status != 200 || !contains(&r.body, b"\"result\"") {
                            return Err(format!("ping: HTTP {}", r.status));
                        }
                        last = Instant::now();
                    }
                }
                let mut lat = Vec::with_capacity(4096);
                while !stop.load(Ordering::Relaxed) {
                    let counted = measuring.load(Ordering::Relaxed);
                    let t = Instant::now();
                    match c.send(&req) {
                        Ok(r) if ok(&r) => {
                            if counted && !stop.load(Ordering::Relaxed) {
                                lat.push(t.elapsed().as_secs_f64() * 1e6);
                            }
                        }
                        other => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                match &other {
                                    Ok(r) => eprintln!(
                                        "mcpd-http-bench: first failed call: HTTP {}: {}",
                                        r.status,
                                        String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
                                    ),
                                    Err(e) => eprintln!("mcpd-http-bench: first failed call: {e}"),
                                }
                            }
                            // A broken connection: open a new session and go on.
                            match Conn::open(&o).and_then(|mut n| n.initialize().map(|()| n)) {
                                Ok(n) => c = n,
                                Err(_) => std::thread::sleep(Duration::from_millis(10)),
                            }
                        }
                    }
                }
                Ok((lat, setup_ms))
            })
            .map_err(|e| format!("thread: {e}"))?;
        threads.push(t);
    }
    while ready.load(Ordering::SeqCst) < threads.len() {
        std::thread::sleep(Duration::from_millis(10));
    }
    go.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs_f64(o.warmup_secs));
    let before = o.pid.map(|p| usage(p, false));
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(o.secs));
    stop.store(true, Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let after = o.pid.map(|p| usage(p, true));
    let mut lat = Vec::new();
    let mut setups = Vec::new();
    let mut failed = None;
    for t in threads {
        match t.join() {
            Ok(Ok((l, s))) => {
                lat.extend(l);
                setups.push(s);
            }
            Ok(Err(e)) => failed = Some(e),
            Err(_) => failed = Some("a session thread panicked".into()),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    lat.sort_by(f64::total_cmp);
    setups.sort_by(f64::total_cmp);
    let calls = lat.len() as f64;
    let mut out = json!({
        "sessions": o.sessions,
        "window_s": window,
        "calls": lat.len(),
        "calls_per_s": calls / window,
        "p50_us": percentile(&lat, 0.5),
        "p99_us": percentile(&lat, 0.99),
        "max_us": lat.last().copied().unwrap_or(0.0),
        "errors": errors.load(Ordering::Relaxed),
        "setup_median_ms": percentile(&setups, 0.5),
        "setup_max_ms": setups.last().copied().unwrap_or(0.0),
    });
    if let (Some(b), Some(a)) = (before, after) {
        let per_call = |x: f64| if calls > 0.0 { x / calls * 1e6 } else { 0.0 };
        out["server_cpu_us_per_call"] = json!(per_call(a.cpu_self - b.cpu_self));
        out["children_cpu_us_per_call"] = json!(per_call(a.cpu_desc - b.cpu_desc));
        out["server_pss_kib"] = json!(a.pss_self_kib);
        out["children_pss_kib"] = json!(a.pss_desc_kib);
        out["children"] = json!(a.descendants);
    }
    Ok(out)
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        addr: "127.0.0.1:8080".parse().map_err(|_| "addr")?,
        path: "/mcp".into(),
        sessions: 1,
        secs: 4.0,
        warmup_secs: 1.0,
        file: String::new(),
        pid: None,
        cold_runs: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        match k.as_str() {
            "--addr" => o.addr = v.parse().map_err(|_| "bad --addr")?,
            "--path" => o.path = v.clone(),
            "--sessions" => o.sessions = v.parse().map_err(|_| "bad --sessions")?,
            "--secs" => o.secs = v.parse().map_err(|_| "bad --secs")?,
            "--warmup-secs" => o.warmup_secs = v.parse().map_err(|_| "bad --warmup-secs")?,
            "--file" => o.file = v.clone(),
            "--pid" => o.pid = Some(v.parse().map_err(|_| "bad --pid")?),
            "--cold-runs" => o.cold_runs = v.parse().map_err(|_| "bad --cold-runs")?,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if o.file.is_empty() {
        return Err("--file is required".into());
    }
    Ok(o)
}

fn main() -> std::process::ExitCode {
    let r = parse().and_then(|o| {
        if o.cold_runs > 0 {
            cold(&o)
        } else {
            load(Arc::new(o))
        }
    });
    match r {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcpd-http-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
