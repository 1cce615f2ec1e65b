//! The TOML configuration format (raw, as written by the operator) and its parser.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

/// A configuration error, located in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file name (as given by the operator), or `<flags>` for quick-start flags.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.file, l, c, self.message),
            (Some(l), None) => write!(f, "{}:{}: {}", self.file, l, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Locates byte offsets of one source text as line/column.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) file: String,
    text: String,
}

impl Source {
    pub(crate) fn new(file: &str, text: &str) -> Self {
        Self {
            file: file.to_string(),
            text: text.to_string(),
        }
    }

    pub(crate) fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = match span {
            Some(s) if !self.text.is_empty() => {
                let at = s.start.min(self.text.len());
                let before = &self.text[..self.text.floor_char_boundary_compat(at)];
                let line = before.matches('\n').count() + 1;
                let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                (Some(line), Some(col))
            }
            _ => (None, None),
        };
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        }
    }
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for String {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// The configuration file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Server-wide settings.
    #[serde(default)]
    pub server: RawServer,
    /// Which client the stdio transport speaks for.
    #[serde(default)]
    pub stdio: RawStdio,
    /// Clients by id.
    #[serde(default)]
    pub clients: BTreeMap<String, Spanned<RawGrant>>,
    /// Roles by name.
    #[serde(default)]
    pub roles: BTreeMap<String, Spanned<RawGrant>>,
    /// The audit log.
    pub audit: Option<RawAudit>,
    /// Operator-defined tools by name.
    #[serde(default)]
    pub tools: BTreeMap<String, Spanned<RawTool>>,
    /// The Streamable HTTP listener.
    pub http: Option<RawHttp>,
    /// Operator-defined prompts by name.
    #[serde(default)]
    pub prompts: BTreeMap<String, Spanned<crate::prompts::RawPrompt>>,
    /// `[auth]`: how HTTP peers authenticate (`[auth.jwt]`: bearer tokens).
    pub auth: Option<crate::model::RawAuth>,
    /// The Unix-socket listener.
    pub unix: Option<crate::model::RawUnix>,
    /// `[metrics]`: the Prometheus metrics listener (off by default).
    pub metrics: Option<crate::model::RawMetrics>,
    /// `[dbus]`: the D-Bus transport (off by default).
    pub dbus: Option<crate::model::RawDbus>,
}

/// `[http]`: the Streamable HTTP transport.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address to listen on (`127.0.0.1:8080`). Non-loopback needs `insecure_non_loopback`.
    pub listen: Option<Spanned<String>>,
    /// Client id HTTP sessions speak for (until authentication exists: every HTTP peer).
    pub client: Option<Spanned<String>>,
    /// Extra `Host` header values accepted (besides the listen address and localhost forms).
    #[serde(default)]
    pub allowed_hosts: Vec<Spanned<String>>,
    /// Seconds an HTTP session may stay idle before it and its worker are reaped.
    pub session_idle_secs: Option<u64>,
    /// Most HTTP sessions at once.
    pub max_sessions: Option<u64>,
    /// Listen on a non-loopback address although no authentication exists yet. Loud.
    #[serde(default)]
    pub insecure_non_loopback: bool,
    /// `[http.tls]`: TLS (and mTLS) on the listener.
    pub tls: Option<Spanned<crate::model::RawTls>>,
    /// Most open connections in total (capped below the descriptor limit).
    pub max_connections: Option<u64>,
    /// Most open connections per source IP address.
    pub max_connections_per_ip: Option<u64>,
    /// The `requestState` sealing key file (32 bytes, or 64 hex digits), shared by every
    /// instance of a deployment; mode 0600 or stricter.
    pub state_key_file: Option<Spanned<String>>,
    /// The previous sealing key, accepted (verification only) for `state_ttl_secs` after a
    /// start or reload: a key rotation.
    pub state_key_previous_file: Option<Spanned<String>>,
    /// A sealed `requestState` older than this many seconds is refused (default 600).
    pub state_ttl_secs: Option<Spanned<u64>>,
    /// Proxies (IP addresses or CIDR networks) whose `forwarded_header` names the client's
    /// address; empty (the default): no header is ever believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// The header trusted proxies set: `x-forwarded-for` (default) or `forwarded` (RFC 7239).
    pub forwarded_header: Option<Spanned<String>>,
    /// WebSocket (`GET /mcp/ws`) keep-alive: seconds between Pings (default 30, 1 to 3600).
    pub ws_ping_secs: Option<u64>,
}

/// `[tools.NAME]`: an operator-defined tool, a fixed command template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    /// Description shown to the model.
    pub description: String,
    /// argv template: `["/usr/bin/du", "-sh", "--", "{path}"]`; each element stays one argument.
    pub command: Vec<Spanned<String>>,
    /// JSON Schema of the arguments (a TOML table; root `type = "object"`).
    pub input_schema: Option<Spanned<toml::Value>>,
    /// JSON Schema of the result: stdout must be a JSON object matching it.
    pub output_schema: Option<Spanned<toml::Value>>,
    /// Wall-clock timeout, seconds (default: the client's command timeout).
    pub timeout_secs: Option<u64>,
    /// Roles whose clients may call the tool.
    #[serde(default)]
    pub roles: Vec<Spanned<String>>,
    /// Clients that may call the tool.
    #[serde(default)]
    pub clients: Vec<Spanned<String>>,
    /// Arguments that name paths the tool reads (checked against the client's read paths).
    #[serde(default)]
    pub read_path_args: Vec<Spanned<String>>,
    /// Arguments that name paths the tool writes (checked against the client's write paths).
    #[serde(default)]
    pub write_path_args: Vec<Spanned<String>>,
    /// Helper files or directories the tool's program may execute (see `exec_helpers`).
    #[serde(default)]
    pub helpers: Vec<Spanned<String>>,
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// The log file (absolute; its directory must exist and lie outside every client's roots).
    pub path: Spanned<String>,
    /// `"batch"` (default) or `"strict"` (fdatasync before every response, group-committed).
    pub mode: Option<Spanned<String>>,
    /// Batch mode: longest time between syncs, milliseconds (default 1000).
    pub batch_interval_ms: Option<u64>,
    /// Rotate the file beyond this size, bytes (default 64 MiB; 0 = never).
    pub rotate_bytes: Option<u64>,
    /// Ed25519 private key for signed checkpoints.
    pub checkpoint_key: Option<Spanned<String>>,
    /// A signed checkpoint every this many records (default 1000).
    pub checkpoint_every: Option<u64>,
    /// And at the latest this many seconds after a record no checkpoint covers yet (default 60;
    /// 0 = by count only).
    pub checkpoint_secs: Option<u64>,
    /// Record a redacted preview of tool arguments (default false: only their digest).
    #[serde(default)]
    pub preview_args: bool,
    /// Keep serving when the log cannot be written (default false: fail closed). Loud.
    #[serde(default)]
    pub fail_open: bool,
    /// Also forward records to journald.
    #[serde(default)]
    pub journald: bool,
}

/// `[server]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// This instance's name among identical ones behind a balancer: session ids start with
    /// it (`NAME.…`), so a balancer can route a session to the instance that holds it.
    pub instance: Option<Spanned<String>>,
    /// Path of the `mcpd-worker` executable (default: next to `mcpd`).
    pub worker: Option<String>,
    /// Accept workers whose Landlock is not fully enforced (loud, off by default).
    #[serde(default)]
    pub allow_degraded_sandbox: bool,
    /// Largest JSON-RPC message accepted from a client, bytes.
    pub max_message_bytes: Option<u64>,
    /// Seconds a session's worker may sit idle before it is reaped (it is restarted on demand).
    pub worker_idle_secs: Option<u64>,
    /// Seconds the broker waits for the client to answer a server→client request (sampling,
    /// elicitation, roots) before the tool is told it will not come (default 60).
    pub client_request_timeout_secs: Option<u64>,
    /// Session era: ping the client after this many idle seconds (0 = never; default 60).
    pub client_ping_secs: Option<u64>,
    /// Per-worker control groups: `"auto"` (default), `"off"`, or the absolute path of a
    /// delegated cgroup v2 directory.
    pub cgroup: Option<Spanned<String>>,
    /// Microseconds the broker keeps polling a worker's socket after sending it a request,
    /// before it sleeps in the reactor (default 100, at most 10000; 0 = never poll).
    pub ipc_spin_us: Option<Spanned<u64>>,
    /// Seconds a stopping broker lets in-flight calls finish before cancelling the rest
    /// (default 10, at most 3600).
    pub stop_grace_secs: Option<Spanned<u64>>,
    /// `"START-END"`: the uids (and gids) a root broker's workers run as, one per client
    /// (default `"60578-61183"`).
    pub worker_uids: Option<Spanned<String>>,
    /// Size of each worker's private `/tmp` and `/dev/shm`, bytes (default 64 MiB).
    pub worker_tmp_bytes: Option<Spanned<u64>>,
}

/// `[stdio]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStdio {
    /// Client id the stdio transport authenticates as (the local user who started mcpd).
    pub client: Option<Spanned<String>>,
}

/// What a client or a role grants. A client's grants are the union of its own and its roles'.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrant {
    /// Roles (clients only).
    #[serde(default)]
    pub roles: Vec<Spanned<String>>,
    /// Directories or files the client may read (FILE_READ).
    #[serde(default)]
    pub read: Vec<Spanned<String>>,
    /// Directories or files the client may read and write (FILE_WRITE).
    #[serde(default)]
    pub write: Vec<Spanned<String>>,
    /// FILE_WRITE_GLOBAL: write anywhere the OS lets the worker. Explicit and loud.
    #[serde(default)]
    pub global_write: bool,
    /// CODE_EXECUTION_SUDO: refused by design (SECURITY.md); present only to give a clear error.
    pub sudo: Option<Spanned<bool>>,
    /// Tool allow-list (`"*"` = every tool the other permissions allow). A client's list is the
    /// union of the lists its grants specify; when none specifies one, every tool is allowed.
    pub tools: Option<Vec<Spanned<String>>>,
    /// SYSTEM_COMMAND: programs `run_command` may start (names looked up in
    /// `/usr/local/bin:/usr/bin:/bin`, or absolute paths), resolved when the policy loads.
    #[serde(default)]
    pub exec: Vec<Spanned<String>>,
    /// Optional argument patterns per program (as written in `exec`): every argument must
    /// fully match one of the regular expressions.
    #[serde(default)]
    pub exec_args: BTreeMap<String, Vec<Spanned<String>>>,
    /// Helper files or directories a program (as written in `exec`) may execute besides itself,
    /// its `#!` interpreters and the dynamic loader, e.g. `git = ["/usr/lib/git-core"]`.
    /// Canonicalised at load; each program otherwise runs in an exec domain of its own.
    #[serde(default)]
    pub exec_helpers: BTreeMap<String, Vec<Spanned<String>>>,
    /// `run_command` may run a shell command line with `/bin/sh -c`. The shell may execute
    /// only itself and the programs in `exec` (with any arguments: `exec_args` cannot hold
    /// for a command line).
    #[serde(default)]
    pub shell: bool,
    /// CODE_EXECUTION: languages of persistent code sessions (`python3`, `sh`, `node`).
    #[serde(default)]
    pub code: Vec<Spanned<String>>,
    /// Environment of commands: `NAME` (the client may set it) or `NAME=value` (fixed).
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    /// Commands may open TCP/UDP sockets (off: the kernel denies them).
    #[serde(default)]
    pub network: bool,
    /// Limits.
    pub limits: Option<RawLimits>,
    /// Who speaks for this client (clients only): certificate, token and Unix-peer identities.
    pub identity: Option<Spanned<crate::identity::RawIdentity>>,
}

/// `limits` tables. Every field optional; unset fields fall back to roles, then defaults.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Calls in flight at once.
    pub max_concurrent_calls: Option<u64>,
    /// Wall-clock limit of one call, seconds.
    pub call_timeout_secs: Option<u64>,
    /// Largest file a read returns, bytes.
    pub max_read_bytes: Option<u64>,
    /// Largest result, bytes.
    pub max_output_bytes: Option<u64>,
    /// Most entries in listings, trees and searches.
    pub max_entries: Option<u64>,
    /// Most grep matches.
    pub max_matches: Option<u64>,
    /// RLIMIT_NOFILE of the worker.
    pub max_open_files: Option<u64>,
    /// RLIMIT_FSIZE of the worker, bytes.
    pub max_file_size: Option<u64>,
    /// RLIMIT_CPU of the worker, seconds.
    pub cpu_seconds: Option<u64>,
    /// RLIMIT_AS of the worker, bytes.
    pub address_space: Option<u64>,
    /// Tool calls per minute.
    pub calls_per_minute: Option<u64>,
    /// Sessions open at once (all transports).
    pub max_sessions: Option<u64>,
    /// Default wall-clock timeout of one command or code run, seconds.
    pub command_timeout_secs: Option<u64>,
    /// Longest any process started for the client may live, seconds.
    pub max_lifetime_secs: Option<u64>,
    /// Memory of the worker and everything it starts (cgroup memory.max), bytes.
    pub memory_bytes: Option<u64>,
    /// Processes of the worker and everything it starts (cgroup pids.max).
    pub max_processes: Option<u64>,
}

/// Parse configuration text. `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<RawConfig, ConfigError> {
    let src = Source::new(file, text);
    toml::from_str::<RawConfig>(text).map_err(|e| src.error(e.span(), e.message().to_string()))
}
