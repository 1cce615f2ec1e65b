//! The command line of `mcpd`: the clap types ([`Cli`], [`Command`], [`AuditCommand`],
//! [`ServeArgs`]). Their doc comments are the `--help` text.
//!
//! What it does: declares subcommands, flags and their types, so clap parses and rejects
//! malformed input (exit code 2, clap's usage message) before anything runs.
//! What it does not do: validate what the flags mean (the policy crate does that, through
//! `mcpd_policy::Overlay`), read files, or run anything (`daemon`, `commands`).
//! What it trusts: nothing; every value it yields is checked again where it is used.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

/// Where `serve`, `check-config` and `doctor` look for a configuration file when none is named:
/// `$MCPD_CONFIG` if set, else this path (when it exists).
pub const DEFAULT_CONFIG: &str = "/etc/mcpd/mcpd.toml";

/// The configuration file to use when `--config` names none: `$MCPD_CONFIG` (set and
/// non-empty: used whether or not it exists, so a typo is an error, not a silent default),
/// else [`DEFAULT_CONFIG`] when it exists, else none (the embedded default).
pub fn default_config() -> Option<PathBuf> {
    match std::env::var_os("MCPD_CONFIG") {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => Path::new(DEFAULT_CONFIG)
            .exists()
            .then(|| PathBuf::from(DEFAULT_CONFIG)),
    }
}

/// `--http ADDR`: `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT` (127.0.0.1 and ::1), checked
/// by the policy crate's rule (no other host name is resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenArg {
    /// The address bound.
    pub addr: std::net::SocketAddr,
    /// Written as `localhost:PORT`: `[::1]:PORT` too.
    pub localhost: bool,
}

fn parse_listen(s: &str) -> Result<ListenArg, String> {
    mcpd_policy::parse_listen(s).map(|(addr, localhost)| ListenArg { addr, localhost })
}

/// How log lines on stderr are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log collectors.
    Json,
    /// The systemd journal's native protocol: one entry per event, its fields as journal
    /// fields (PRIORITY from the level, SYSLOG_IDENTIFIER=mcpd). The default when stderr is
    /// the journal (systemd's JOURNAL_STREAM names it).
    Journal,
}

#[derive(Parser, Debug)]
#[command(
    name = "mcpd",
    version,
    about = "A confined, privilege-separated MCP server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
// Parsed once at start; the size of `ServeArgs` costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Serve MCP. With no flags and no config: stdio, current directory read-only.
    Serve(ServeArgs),
    /// Validate a configuration file and print the effective policy.
    CheckConfig {
        /// The configuration file (default: $MCPD_CONFIG, else /etc/mcpd/mcpd.toml).
        #[arg(short = 'c', long)]
        config: Option<PathBuf>,
        /// Print the effective policy as one JSON document instead.
        #[arg(long)]
        json: bool,
    },
    /// Print what this kernel offers for confinement, and what each client's worker view
    /// will hold (the embedded default, or --config).
    Doctor {
        /// The configuration file whose clients' views are shown (default: $MCPD_CONFIG, else
        /// /etc/mcpd/mcpd.toml when it exists, else the embedded default).
        #[arg(short = 'c', long)]
        config: Option<PathBuf>,
    },
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the shell completion script for SHELL on stdout.
    ///
    /// E.g. `mcpd completions bash > /etc/bash_completion.d/mcpd`; for zsh, a file `_mcpd` in a
    /// directory on $fpath; for fish, ~/.config/fish/completions/mcpd.fish.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Write the man pages (mcpd.8, one mcpd-COMMAND.8 per subcommand, mcpd.toml.5) into DIR:
    /// how packaging/man/ is made (`cargo run -p mcpd -- manpages packaging/man`).
    #[command(hide = true)]
    Manpages {
        /// The directory (created if missing); existing pages of the same names are replaced.
        dir: PathBuf,
    },
}

/// The shells `mcpd completions` writes a script for (the ones packaging/completions/ ships).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// bash (bash-completion).
    Bash,
    /// zsh (a `_mcpd` file on $fpath).
    Zsh,
    /// fish.
    Fish,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the hash chain (and signed checkpoints with --key); names the first broken record.
    Verify {
        /// Ed25519 public key of the checkpoint signer (enables tail-truncation detection:
        /// the signed head file `<log>.head` must then exist and name the log's last checkpoint).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The signed head file to check against (default `<log>.head`), e.g. a copy kept where
        /// whoever can write the log cannot.
        #[arg(long, requires = "key", conflicts_with = "no_head")]
        head: Option<PathBuf>,
        /// Verify with --key but without any head file, for a log whose head is knowingly lost:
        /// records cut off the end of the log are then NOT detected (the report says so).
        #[arg(long, requires = "key")]
        no_head: bool,
        /// Log files (a base path also brings in its rotated files).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the last records: one aligned line each (time, event, principal, details), or
    /// the records themselves with --json.
    Tail {
        /// How many records.
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
        /// One JSON record per line, as logged.
        #[arg(long)]
        json: bool,
        /// Log files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the records of one client, one event and/or a time window: one aligned line each,
    /// or the records themselves with --json.
    Query {
        /// Principal (client id).
        #[arg(long)]
        client: Option<String>,
        /// Records at or after this time: RFC 3339 (2026-11-25T08:00:00Z, offsets allowed), a
        /// date (2026-11-25, midnight UTC), or a time ago (90s, 15m, 1h, 2d, 1w).
        #[arg(long, value_parser = crate::commands::audit::parse_time)]
        since: Option<String>,
        /// Records at or before this time (the same forms as --since).
        #[arg(long, value_parser = crate::commands::audit::parse_time)]
        until: Option<String>,
        /// Event name (e.g. request, session.open).
        #[arg(long)]
        event: Option<String>,
        /// One JSON record per line, as logged.
        #[arg(long)]
        json: bool,
        /// Log files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Generate an Ed25519 key pair for signed checkpoints.
    Keygen {
        /// Private key output (keep it readable by the mcpd user only).
        #[arg(long)]
        private: PathBuf,
        /// Public key output (for `mcpd audit verify --key`).
        #[arg(long)]
        public: PathBuf,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Serve on stdin/stdout (the default transport when no HTTP listener is asked for).
    #[arg(long)]
    pub stdio: bool,
    /// Serve Streamable HTTP on ADDR (127.0.0.1:8080, [::1]:8080, or localhost:8080 for both),
    /// endpoint /mcp. Loopback only
    /// unless --insecure-non-loopback-without-auth.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub http: Option<ListenArg>,
    /// Allow the HTTP listener on a non-loopback address although mcpd has no HTTP
    /// authentication yet: anyone who can reach it acts as the HTTP client. Dangerous.
    #[arg(long = "insecure-non-loopback-without-auth")]
    pub insecure_non_loopback: bool,
    /// Enable an extra tool set (repeatable). `conformance`: the official MCP conformance
    /// suite's fixtures, replacing every other tool (for testing mcpd itself; never in production).
    /// Only the test worker has them: `--worker target/debug/examples/mcpd-conformance-worker`.
    #[arg(long = "toolset", value_name = "NAME")]
    pub toolsets: Vec<String>,
    /// Seconds an HTTP session may stay idle before it and its worker are reaped.
    #[arg(long = "http-session-idle-secs", value_name = "SECS")]
    pub http_idle: Option<u64>,
    /// A directory the stdio client may read (repeatable).
    #[arg(long = "allow-read", value_name = "DIR")]
    pub allow_read: Vec<PathBuf>,
    /// A directory the stdio client may read and write (repeatable).
    #[arg(long = "allow-write", value_name = "DIR")]
    pub allow_write: Vec<PathBuf>,
    /// A program the stdio client may run with run_command (repeatable): a name looked up in
    /// /usr/local/bin:/usr/bin:/bin, or an absolute path. Runs inside the client's sandbox.
    #[arg(long = "allow-exec", value_name = "PROGRAM")]
    pub allow_exec: Vec<String>,
    /// A language the stdio client may use for persistent code sessions (run_code):
    /// python3, sh, bash or node (repeatable).
    #[arg(long = "allow-code", value_name = "LANGUAGE")]
    pub allow_code: Vec<String>,
    /// Configuration file (TOML). Default: $MCPD_CONFIG if set, else /etc/mcpd/mcpd.toml when
    /// it exists, else the embedded default (stdio, the current directory read-only).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Ignore the default configuration file: serve the embedded default plus these flags.
    #[arg(long = "no-config", conflicts_with = "config")]
    pub no_config: bool,
    /// Path of the mcpd-worker executable (default: next to mcpd).
    #[arg(long)]
    pub worker: Option<PathBuf>,
    /// Write the tamper-evident audit log to this file (outside every client's roots).
    #[arg(long = "audit-log", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Log filter for stderr (tracing syntax, e.g. info, mcpd=debug). Also: MCPD_LOG.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Log format: text lines on stderr (the default), json lines on stderr, or journal
    /// entries (the default under systemd, when stderr is the journal).
    #[arg(long = "log-format", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Accept OAuth bearer JWTs on the HTTP listener, verified with the keys of this JWKS file
    /// (each key pins its algorithm); needs --jwt-issuer and --jwt-audience unless the
    /// configuration has [auth.jwt]. Token subjects map to clients by
    /// [clients.NAME.identity] jwt_sub.
    #[arg(long = "jwt-jwks", value_name = "FILE")]
    pub jwt_jwks: Option<PathBuf>,
    /// The one accepted token issuer (`iss`).
    #[arg(long = "jwt-issuer", value_name = "URL")]
    pub jwt_issuer: Option<String>,
    /// The one accepted token audience (`aud`): this server's canonical URL, e.g.
    /// https://mcp.example.org/mcp (RFC 8707).
    #[arg(long = "jwt-audience", value_name = "URL")]
    pub jwt_audience: Option<String>,
    /// Serve MCP on a Unix socket at PATH: Streamable HTTP (endpoint /mcp) unless
    /// --unix-protocol lines. Each peer's client comes from its uid/gid (SO_PEERCRED):
    /// `[clients.NAME.identity] unix_uid`/`unix_gid`.
    #[arg(long, value_name = "PATH")]
    pub unix: Option<PathBuf>,
    /// Serve the Unix socket systemd passed (socket activation: LISTEN_FDS, the descriptor
    /// named mcpd-unix or the only one): a listening socket (Accept=no), or one accepted
    /// connection (Accept=yes: mcpd serves it and exits when it closes).
    #[arg(long = "unix-systemd")]
    pub unix_systemd: bool,
    /// Serve Streamable HTTP on the TCP listening socket(s) systemd passed (the descriptors
    /// named mcpd-http, or the only one) instead of binding --http; [http] settings apply.
    #[arg(long = "http-systemd", conflicts_with = "http")]
    pub http_systemd: bool,
    /// What the Unix listener speaks: http (Streamable HTTP, the default) or lines
    /// (newline-delimited JSON-RPC as on stdio, one session per connection).
    #[arg(long = "unix-protocol", value_name = "PROTOCOL")]
    pub unix_protocol: Option<String>,
    /// Serve MCP on D-Bus: own the well-known name of [dbus] name (org.mcpd.Server1) on the
    /// system or session bus; interface org.mcpd.Server1 (docs/dbus.md). Each caller's client
    /// comes from the bus's credentials of its unique name (uid, groups):
    /// `[clients.NAME.identity] unix_uid`/`unix_gid`.
    #[arg(long, value_name = "BUS", value_parser = ["system", "session"])]
    pub dbus: Option<String>,
    /// Connect to the bus at this D-Bus address (e.g. unix:path=/run/test/bus) instead of the
    /// bus's usual one; needs --dbus or [dbus] bus.
    #[arg(long = "dbus-address", value_name = "ADDR")]
    pub dbus_address: Option<String>,
    /// Serve Prometheus metrics (GET /metrics) at ADDR: 127.0.0.1:PORT, [::1]:PORT,
    /// localhost:PORT or unix:PATH; replaces `[metrics] listen`. Loopback or a Unix socket only.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// This instance's name among identical ones behind a balancer (replaces
    /// `server.instance`): session ids start with NAME and a dot, so the balancer can send a
    /// session's requests to the instance that holds it. 1 to 32 of a-z, 0-9 and '-'.
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// Serve HTTPS: the PEM certificate chain of the listener (with --tls-key). TLS 1.3 only
    /// unless [http.tls] min_version = "1.2". Reloaded on SIGHUP.
    #[arg(long = "tls-cert", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (mode 600: a key others may read is refused).
    #[arg(long = "tls-key", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates chaining to this PEM CA bundle (mTLS); each certificate's
    /// SAN/CN names a client through [clients.NAME.identity].
    #[arg(long = "tls-client-ca", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
}
