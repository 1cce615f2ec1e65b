//! Prometheus metrics (`[metrics] listen`, `--metrics`): the registry of the broker's counters,
//! gauges and histograms (prometheus-client), the hooks the engine, the supervisor and the
//! audit log call, and the listener that serves `GET /metrics` in the OpenMetrics text format.
//!
//! One registry per process, installed once by `daemon::run` when a listener is configured
//! ([`start`]); until then (and always when metrics are off) every hook is one atomic load of
//! an empty [`OnceLock`] and returns. The hooks are free functions (or [`get`] and a method)
//! so that the code that calls them needs no handle threaded through it; the request hook is
//! `Session::finish` (`mcp/record.rs`), which every answer passes.
//!
//! What the metrics may name (label values): transports (fixed names), tools the worker or the
//! operator's policy defines (a name no tool has is `other`; at most [`MAX_TOOL_LABELS`]
//! names, the rest `other`), outcomes and denial reasons (the audit log's fixed vocabulary),
//! and limit names. Never arguments, paths, tokens, peers or session ids.
//!
//! The listener serves only `GET /metrics` (404 otherwise), at most [`MAX_CONNECTIONS`]
//! connections at once (others are closed at once), each under the HTTP header-read deadline.
//! It trusts nothing a scraper sends.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mcpd_policy::{MetricsListen, MetricsSettings};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::auditing::Audit;

/// The path the metrics are served at; the listener serves nothing else.
pub const PATH: &str = "/metrics";
/// The content type of the exposition (prometheus-client encodes OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Most distinct tool names used as labels; calls of further tools count as `other`.
pub const MAX_TOOL_LABELS: usize = 256;
/// The label value of a tool that is not known (or beyond [`MAX_TOOL_LABELS`]), and of a
/// reason or limit name that is not a plain identifier.
pub const OTHER: &str = "other";
/// Most open connections on the metrics listener; one more is closed before it is read.
pub const MAX_CONNECTIONS: usize = 8;
/// The transports (`Origin::transport`), whose series exist from the start at zero.
pub const TRANSPORTS: [&str; 7] = [
    "stdio",
    "http",
    "http-stateless",
    "unix",
    "unix-http",
    "unix-http-stateless",
    "websocket",
];
/// Longest label value taken from a reason or limit name (they are fixed identifiers).
const MAX_NAME_LABEL: usize = 64;

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics, once a listener is configured and started.
pub fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    tool: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabel {
    tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Call latency buckets: 100 µs to ~52 s.
fn call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Worker start buckets (spawn to `Ready`): 1 ms to ~16 s.
fn start_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// fdatasync buckets: 10 µs to ~5 s.
fn sync_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.00001, 2.0, 20))
}

/// The broker's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions_open: Family<TransportLabel, Gauge>,
    sessions_started: Family<TransportLabel, Counter>,
    workers_running: Family<TransportLabel, Gauge>,
    workers_started: Family<TransportLabel, Counter>,
    worker_start: Histogram,
    calls: Family<CallLabels, Counter>,
    call_duration: HistogramFamily<ToolLabel>,
    denials: Family<ReasonLabel, Counter>,
    limit_hits: Family<LimitLabel, Counter>,
    audit_queue: Gauge,
    audit_sync: Histogram,
    tools: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mcpd");
        let m = Self {
            registry: Registry::default(),
            sessions_open: Family::default(),
            sessions_started: Family::default(),
            workers_running: Family::default(),
            workers_started: Family::default(),
            worker_start: start_buckets(),
            calls: Family::default(),
            call_duration: Family::new_with_constructor(call_buckets),
            denials: Family::default(),
            limit_hits: Family::default(),
            audit_queue: Gauge::default(),
            audit_sync: sync_buckets(),
            tools: Mutex::default(),
        };
        registry.register(
            "sessions_open",
            "MCP sessions open now, by transport",
            m.sessions_open.clone(),
        );
        registry.register(
            "sessions_started",
            "MCP sessions opened since start, by transport",
            m.sessions_started.clone(),
        );
        registry.register(
            "workers_running",
            "Confined workers running now, by the transport of their session",
            m.workers_running.clone(),
        );
        registry.register(
            "workers_started",
            "Workers started (confined and Ready) since start, by transport",
            m.workers_started.clone(),
        );
        registry.register(
            "worker_start_seconds",
            "Time from spawning a worker to its Ready message",
            m.worker_start.clone(),
        );
        registry.register(
            "tool_calls",
            "tools/call requests answered, by tool and outcome (the audit log's outcome)",
            m.calls.clone(),
        );
        registry.register(
            "tool_call_duration_seconds",
            "Time from a tools/call request to its answer, by tool",
            m.call_duration.clone(),
        );
        registry.register(
            "denials",
            "Requests the policy denied, by reason",
            m.denials.clone(),
        );
        registry.register(
            "limit_hits",
            "Requests refused or ended by a limit (rate, concurrency, timeout), by limit",
            m.limit_hits.clone(),
        );
        registry.register(
            "audit_queue_depth",
            "Audit records waiting for the writer thread",
            m.audit_queue.clone(),
        );
        registry.register(
            "audit_fsync_seconds",
            "Duration of each fdatasync of the audit log",
            m.audit_sync.clone(),
        );
        for transport in TRANSPORTS {
            let l = TransportLabel { transport };
            drop(m.sessions_open.get_or_create(&l));
            drop(m.sessions_started.get_or_create(&l));
            drop(m.workers_running.get_or_create(&l));
            drop(m.workers_started.get_or_create(&l));
        }
        Self { registry, ..m }
    }

    /// The tool label: the name of a known tool while fewer than [`MAX_TOOL_LABELS`] names
    /// are in use (or it already is one), else [`OTHER`].
    fn tool_label(&self, tool: Option<&str>, known: bool) -> String {
        let Some(t) = tool.filter(|_| known) else {
            return OTHER.into();
        };
        let Ok(mut seen) = self.tools.lock() else {
            return OTHER.into();
        };
        if seen.contains(t) {
            return t.to_string();
        }
        if seen.len() >= MAX_TOOL_LABELS || t == OTHER {
            return OTHER.into();
        }
        seen.insert(t.to_string());
        t.to_string()
    }

    /// A session opened; it counts as open until the returned guard is dropped.
    pub fn session_opened(&self, transport: &'static str) -> Running {
        let l = TransportLabel { transport };
        self.sessions_started.get_or_create(&l).inc();
        Running::up(self.sessions_open.get_or_create_owned(&l))
    }

    /// A worker reported `Ready` `took` after it was spawned; it counts as running until the
    /// returned guard is dropped.
    pub fn worker_started(&self, transport: &'static str, took: Duration) -> Running {
        let l = TransportLabel { transport };
        self.workers_started.get_or_create(&l).inc();
        self.worker_start.observe(took.as_secs_f64());
        Running::up(self.workers_running.get_or_create_owned(&l))
    }

    /// A `tools/call` was answered with `outcome` after `took`; `known`: the name is a tool's.
    pub fn tool_call(
        &self,
        tool: Option<&str>,
        known: bool,
        outcome: &'static str,
        took: Duration,
    ) {
        let tool = self.tool_label(tool, known);
        self.call_duration
            .get_or_create(&ToolLabel { tool: tool.clone() })
            .observe(took.as_secs_f64());
        self.calls
            .get_or_create(&CallLabels { tool, outcome })
            .inc();
    }

    /// A request was denied for `reason` (a fixed code).
    pub fn denied(&self, reason: &str) {
        self.denials
            .get_or_create(&ReasonLabel {
                reason: name_label(reason),
            })
            .inc();
    }

    /// A limit refused or ended a request.
    pub fn limit_hit(&self, limit: &str) {
        self.limit_hits
            .get_or_create(&LimitLabel {
                limit: name_label(limit),
            })
            .inc();
    }

    /// One fdatasync of the audit log took `took`.
    pub fn audit_synced(&self, took: Duration) {
        self.audit_sync.observe(took.as_secs_f64());
    }

    /// The exposition, with the audit queue depth as of now.
    pub fn encode(&self, audit_queue: u64) -> Result<String, std::fmt::Error> {
        self.audit_queue
            .set(i64::try_from(audit_queue).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// A reason or limit name as a label: a plain identifier (they are fixed codes), else
/// [`OTHER`].
fn name_label(s: &str) -> String {
    let plain = !s.is_empty()
        && s.len() <= MAX_NAME_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        s.to_string()
    } else {
        OTHER.into()
    }
}

/// Something counted as open or running while this guard lives.
#[derive(Debug)]
pub struct Running(Gauge);

impl Running {
    fn up(g: Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// [`Metrics::session_opened`], if metrics are on.
pub fn session_opened(transport: &'static str) -> Option<Running> {
    get().map(|m| m.session_opened(transport))
}

/// [`Metrics::worker_started`], if metrics are on.
pub fn worker_started(transport: &'static str, took: Duration) -> Option<Running> {
    get().map(|m| m.worker_started(transport, took))
}

/// [`Metrics::limit_hit`], if metrics are on.
pub fn limit_hit(limit: &str) {
    if let Some(m) = get() {
        m.limit_hit(limit);
    }
}

/// The audit log's fdatasync observer (a plain function: the audit crate knows no metrics).
fn audit_synced(took: Duration) {
    if let Some(m) = get() {
        m.audit_synced(took);
    }
}

/// The running metrics listener; dropping it stops the listener.
#[derive(Debug)]
pub struct Listener {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn listen_error(at: &MetricsListen, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("metrics listener {at}: {e}"))
}

/// Install the registry and start the listener, if `[metrics] listen` (or `--metrics`) is set;
/// says where it listens on stderr (`mcpd: metrics on http://ADDR/metrics`, or `unix:PATH`).
/// `None` when metrics are off.
pub async fn start(s: &MetricsSettings, audit: &Audit) -> std::io::Result<Option<Listener>> {
    let Some(at) = &s.listen else {
        return Ok(None);
    };
    let listener = match at {
        MetricsListen::Tcp(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| listen_error(at, e))?;
            let bound = l.local_addr().map_err(|e| listen_error(at, e))?;
            eprintln!("mcpd: metrics on http://{bound}{PATH}");
            Accept::Tcp(l)
        }
        MetricsListen::Unix(p) => {
            let settings = mcpd_policy::UnixSettings {
                mode: 0o600,
                ..mcpd_policy::UnixSettings::default()
            };
            let std = crate::transport::unix::bind_socket(p, &settings)?;
            std.set_nonblocking(true).map_err(|e| listen_error(at, e))?;
            let l = tokio::net::UnixListener::from_std(std).map_err(|e| listen_error(at, e))?;
            eprintln!("mcpd: metrics on unix:{} (GET {PATH})", p.display());
            Accept::Unix(l)
        }
    };
    let metrics = METRICS.get_or_init(Metrics::new);
    if let Some(log) = audit.log() {
        log.on_sync(audit_synced);
    }
    let audit = audit.clone();
    let task = tokio::spawn(serve(listener, metrics, audit));
    Ok(Some(Listener { task }))
}

enum Accept {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Pause after a failed accept (e.g. `EMFILE`), so a full table does not spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

async fn serve(listener: Accept, metrics: &'static Metrics, audit: Audit) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = match &listener {
            Accept::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
            Accept::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        };
        let conn = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("metrics listener: accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Over the cap: closed at once (dropped), before a byte is read.
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let audit = audit.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let r = respond(&req, metrics, &audit);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let r = match conn {
                Conn::Tcp(s) => {
                    http1()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                        .await
                }
                Conn::Unix(s) => {
                    http1()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                        .await
                }
            };
            if let Err(e) = r {
                tracing::debug!("metrics connection: {e}");
            }
            drop(permit);
        });
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

fn http1() -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(crate::transport::http::HEADER_READ_TIMEOUT)
        .keep_alive(true);
    http
}

/// `GET /metrics` (or `HEAD`): the exposition; any other path 404, any other method 405.
fn respond<B>(
    req: &hyper::Request<B>,
    metrics: &Metrics,
    audit: &Audit,
) -> hyper::Response<axum::body::Body> {
    use axum::http::{header, Method, StatusCode};
    let status = |s: StatusCode| {
        let mut r = hyper::Response::new(axum::body::Body::empty());
        *r.status_mut() = s;
        r
    };
    if req.uri().path() != PATH {
        return status(StatusCode::NOT_FOUND);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = status(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match metrics.encode(audit.queued()) {
        Ok(text) => {
            let mut r = hyper::Response::new(axum::body::Body::from(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..].trim())
    }

    #[test]
    fn every_metric_is_exposed_and_moves() {
        let m = Metrics::new();
        let text = m.encode(0).unwrap();
        for name in [
            "mcpd_sessions_open",
            "mcpd_sessions_started",
            "mcpd_workers_running",
            "mcpd_workers_started",
            "mcpd_worker_start_seconds",
            "mcpd_audit_queue_depth",
            "mcpd_audit_fsync_seconds",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        for t in TRANSPORTS {
            let open = format!("mcpd_sessions_open{{transport=\"{t}\"}}");
            assert_eq!(line(&text, &open), Some("0"), "{t}");
        }
        // Series with a tool, reason or limit appear with their first event.
        assert!(!text.contains("mcpd_tool_calls"), "{text}");
        let s = m.session_opened("http");
        let w = m.worker_started("http", Duration::from_millis(30));
        m.tool_call(
            Some("read_text_file"),
            true,
            "success",
            Duration::from_millis(2),
        );
        m.tool_call(
            Some("read_text_file"),
            true,
            "success",
            Duration::from_millis(3),
        );
        m.tool_call(
            Some("read_text_file"),
            true,
            "denied",
            Duration::from_millis(1),
        );
        m.denied("outside_client_roots");
        m.limit_hit("calls_per_minute");
        m.audit_synced(Duration::from_micros(200));
        let text = m.encode(3).unwrap();
        assert_eq!(
            line(&text, "mcpd_sessions_open{transport=\"http\"}"),
            Some("1")
        );
        assert_eq!(
            line(&text, "mcpd_sessions_started_total{transport=\"http\"}"),
            Some("1")
        );
        assert_eq!(
            line(&text, "mcpd_workers_running{transport=\"http\"}"),
            Some("1")
        );
        assert_eq!(line(&text, "mcpd_worker_start_seconds_count"), Some("1"));
        assert_eq!(
            line(
                &text,
                "mcpd_tool_calls_total{tool=\"read_text_file\",outcome=\"success\"}"
            ),
            Some("2")
        );
        assert_eq!(
            line(
                &text,
                "mcpd_tool_calls_total{tool=\"read_text_file\",outcome=\"denied\"}"
            ),
            Some("1")
        );
        assert_eq!(
            line(
                &text,
                "mcpd_tool_call_duration_seconds_count{tool=\"read_text_file\"}"
            ),
            Some("3")
        );
        assert_eq!(
            line(&text, "mcpd_denials_total{reason=\"outside_client_roots\"}"),
            Some("1")
        );
        assert_eq!(
            line(&text, "mcpd_limit_hits_total{limit=\"calls_per_minute\"}"),
            Some("1")
        );
        assert_eq!(line(&text, "mcpd_audit_queue_depth"), Some("3"));
        assert_eq!(line(&text, "mcpd_audit_fsync_seconds_count"), Some("1"));
        drop((s, w));
        let text = m.encode(0).unwrap();
        assert_eq!(
            line(&text, "mcpd_sessions_open{transport=\"http\"}"),
            Some("0")
        );
        assert_eq!(
            line(&text, "mcpd_workers_running{transport=\"http\"}"),
            Some("0")
        );
        assert_eq!(
            line(&text, "mcpd_sessions_started_total{transport=\"http\"}"),
            Some("1")
        );
    }

    #[test]
    fn label_values_are_bounded() {
        let m = Metrics::new();
        // A name no tool has is `other`, whatever the client sent.
        m.tool_call(Some("../../etc/passwd"), false, "error", Duration::ZERO);
        m.tool_call(None, false, "error", Duration::ZERO);
        for i in 0..MAX_TOOL_LABELS + 10 {
            m.tool_call(Some(&format!("t{i}")), true, "success", Duration::ZERO);
        }
        m.denied("Not A Code\n");
        m.limit_hit(&"x".repeat(100));
        let text = m.encode(0).unwrap();
        assert!(!text.contains("passwd"), "{text}");
        assert_eq!(
            line(
                &text,
                "mcpd_tool_calls_total{tool=\"other\",outcome=\"error\"}"
            ),
            Some("2")
        );
        assert_eq!(
            line(
                &text,
                "mcpd_tool_calls_total{tool=\"other\",outcome=\"success\"}"
            ),
            Some("10")
        );
        assert!(text.contains("tool=\"t0\""));
        assert!(!text.contains(&format!("tool=\"t{MAX_TOOL_LABELS}\"")));
        assert_eq!(
            line(&text, "mcpd_denials_total{reason=\"other\"}"),
            Some("1")
        );
        assert_eq!(
            line(&text, "mcpd_limit_hits_total{limit=\"other\"}"),
            Some("1")
        );
    }

    #[test]
    fn only_get_metrics_is_served() {
        let m = Metrics::new();
        let audit = Audit::off();
        let req = |method: &str, path: &str| {
            hyper::Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap()
        };
        let r = respond(&req("GET", "/metrics"), &m, &audit);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], CONTENT_TYPE);
        assert_eq!(respond(&req("GET", "/mcp"), &m, &audit).status(), 404);
        assert_eq!(respond(&req("GET", "/metrics/x"), &m, &audit).status(), 404);
        assert_eq!(respond(&req("POST", "/metrics"), &m, &audit).status(), 405);
    }

    #[test]
    fn off_costs_nothing_and_records_nothing() {
        // No listener was started in this test process: every hook is a no-op.
        assert!(get().is_none());
        assert!(session_opened("stdio").is_none());
        assert!(worker_started("stdio", Duration::ZERO).is_none());
        limit_hit("calls_per_minute");
        audit_synced(Duration::ZERO);
        assert!(get().is_none());
    }
}
