//! `mcpd-stdio-bench`: a compiled MCP client for stdio latency benchmarks.
//!
//! The Python client of `bench/stdio_bench.py` spends ~25 µs of its own per round trip (JSON
//! encode/decode, interpreter dispatch), which is a large share of a ~100 µs call and blurs the
//! comparison between servers. This client pre-serializes the request, writes it with one
//! `write(2)`, reads the response line and parses it with serde_json, so what it measures is
//! (almost only) the server and the pipes.
//!
//! Usage: `mcpd-stdio-bench --calls N --warmup N --cold-runs N --file PATH -- SERVER ARGV...`
//! Prints one JSON object: p50/p99/mean latency (µs), calls/s, cold-start median/min (ms), and
//! the p50 of `ping` round trips (the transport floor, no tool run).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
    line: String,
}

impl Client {
    fn start(argv: &[String]) -> Result<Self, String> {
        let (prog, args) = argv.split_first().ok_or("no server command")?;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{prog}: {e}"))?;
        let stdin = child.stdin.take().ok_or("stdin")?;
        let stdout = BufReader::with_capacity(1 << 16, child.stdout.take().ok_or("stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
            next_id: 1,
            line: String::new(),
        })
    }

    fn send(&mut self, msg: &[u8]) -> Result<(), String> {
        self.stdin.write_all(msg).map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())
    }

    /// Send a request line built from `method`/`params`, wait for the response with its id.
    fn request(&mut self, method: &str, params: &Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )
        .map_err(|e| e.to_string())?;
        msg.push(b'\n');
        self.send(&msg)?;
        self.wait(id)
    }

    fn wait(&mut self, id: u64) -> Result<Value, String> {
        loop {
            self.line.clear();
            let n = self
                .stdout
                .read_line(&mut self.line)
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("server closed stdout".into());
            }
            let v: Value = serde_json::from_str(&self.line).map_err(|e| e.to_string())?;
            if v.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(e) = v.get("error") {
                    return Err(format!("error response: {e}"));
                }
                return Ok(v);
            }
        }
    }

    fn initialize(&mut self) -> Result<(), String> {
        self.request(
            "initialize",
            &json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}),
        )?;
        self.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
    }

    fn close(mut self) {
        drop(self.stdin);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .ok_or("missing -- SERVER ARGV")?;
    let (opts, server) = (&args[..split], &args[split + 1..]);
    let mut calls = 2000usize;
    let mut warmup = 200usize;
    let mut cold_runs = 20usize;
    let mut file = None;
    let mut it = opts.iter();
    while let Some(o) = it.next() {
        let v = it.next().ok_or(format!("{o} needs a value"))?;
        match o.as_str() {
            "--calls" => calls = v.parse().map_err(|_| "bad --calls")?,
            "--warmup" => warmup = v.parse().map_err(|_| "bad --warmup")?,
            "--cold-runs" => cold_runs = v.parse().map_err(|_| "bad --cold-runs")?,
            "--file" => file = Some(v.clone()),
            _ => return Err(format!("unknown option {o}")),
        }
    }
    let file = file.ok_or("--file is required")?;
    let params = json!({"name": "read_text_file", "arguments": {"path": file}});

    // Steady state: one server, sequential calls.
    let mut c = Client::start(server)?;
    c.initialize()?;
    let first = c.request("tools/call", &params)?;
    if first["result"]["content"][0]["text"].as_str().map(str::len) != Some(4096) {
        return Err(format!("unexpected result: {first}"));
    }
    for _ in 0..warmup {
        c.request("tools/call", &params)?;
    }
    let mut lat = Vec::with_capacity(calls);
    let started = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        c.request("tools/call", &params)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = started.elapsed().as_secs_f64();
    // The transport floor: `ping` round trips, which a server answers without running a tool
    // (mcpd: the broker alone, no worker hop).
    let mut ping = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        c.request("ping", &json!({}))?;
        ping.push(t.elapsed().as_secs_f64() * 1e6);
    }
    ping.sort_by(f64::total_cmp);
    c.close();
    lat.sort_by(f64::total_cmp);

    // Cold start: spawn → initialize → first result.
    let mut cold = Vec::with_capacity(cold_runs);
    for _ in 0..cold_runs {
        let t = Instant::now();
        let mut c = Client::start(server)?;
        c.initialize()?;
        c.request("tools/call", &params)?;
        cold.push(t.elapsed().as_secs_f64() * 1e3);
        c.close();
    }
    cold.sort_by(f64::total_cmp);
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    println!(
        "{}",
        json!({
            "p50_us": percentile(&lat, 0.5),
            "p99_us": percentile(&lat, 0.99),
            "mean_us": mean,
            "ping_p50_us": percentile(&ping, 0.5),
            "calls_per_s": calls as f64 / total,
            "cold_median_ms": percentile(&cold, 0.5),
            "cold_min_ms": cold.first().copied().unwrap_or(0.0),
        })
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcpd-stdio-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
