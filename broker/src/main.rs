//! `mcpd`: the broker. Terminates MCP transports, decides every request against the policy,
//! and runs each session's tools in a confined `mcpd-worker` process.
// Unsafe code is structurally contained: every module but `sys` (the pre_exec hook and the
// kernel probes, each block with its own SAFETY comment) declares `#![forbid(unsafe_code)]`,
// and this crate root, which cannot forbid what `sys` allows, denies it.
#![deny(unsafe_code)]

mod auditing;
mod auth;
mod commands;
mod mcp;
mod reload;
mod sys;
mod transport;
mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mcpd_policy::{Policy, QuickStart};

/// Exit codes (documented in docs/ARCHITECTURE.md).
#[forbid(unsafe_code)]
mod exit {
    pub const CONFIG: u8 = 2;
    pub const RUNTIME: u8 = 3;
    pub const TRANSPORT: u8 = 4;
    pub const AUDIT: u8 = 5;
}

#[derive(Parser, Debug)]
#[command(
    name = "mcpd",
    version,
    about = "A confined, privilege-separated MCP server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve MCP. With no flags and no config: stdio, current directory read-only.
    Serve(ServeArgs),
    /// Validate a configuration file and print the effective policy.
    CheckConfig {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print what this kernel offers for confinement, and what each client's worker view
    /// will hold (the embedded default, or --config).
    Doctor {
        /// The configuration file whose clients' views are shown.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Verify the hash chain (and signed checkpoints with --key); names the first broken record.
    Verify {
        /// Ed25519 public key of the checkpoint signer (enables tail-truncation detection).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Log files (a base path also brings in its rotated files).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the last records.
    Tail {
        /// How many records.
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
        /// Log files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the records of one client and/or since a time.
    Query {
        /// Principal (client id).
        #[arg(long)]
        client: Option<String>,
        /// RFC 3339 time (or a prefix such as 2026-11-25).
        #[arg(long)]
        since: Option<String>,
        /// Event name (e.g. request, session.open).
        #[arg(long)]
        event: Option<String>,
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

fn audit_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out: Vec<PathBuf> = Vec::new();
    for a in args {
        let found = mcpd_audit::discover_files(a).map_err(|e| e.to_string())?;
        if found.is_empty() {
            return Err(format!("{}: no such audit log", a.display()));
        }
        for f in found {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

fn print_records(records: &[serde_json::Value]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for r in records {
        let _ = writeln!(out, "{r}");
    }
}

fn audit_cmd(cmd: AuditCommand) -> ExitCode {
    let fail = |e: String| {
        eprintln!("mcpd audit: {e}");
        ExitCode::from(exit::AUDIT)
    };
    match cmd {
        AuditCommand::Verify { key, files } => {
            let files = match audit_files(&files) {
                Ok(f) => f,
                Err(e) => return fail(e),
            };
            let report = mcpd_audit::verify(&files, key.as_deref());
            print!("{report}");
            if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        AuditCommand::Tail { n, files } => match audit_files(&files).and_then(|f| {
            let q = mcpd_audit::Query {
                limit: Some(n),
                ..Default::default()
            };
            mcpd_audit::query(&f, &q).map_err(|e| e.to_string())
        }) {
            Ok(r) => {
                print_records(&r);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        AuditCommand::Query {
            client,
            since,
            event,
            files,
        } => match audit_files(&files).and_then(|f| {
            let q = mcpd_audit::Query {
                principal: client,
                since,
                event,
                limit: None,
            };
            mcpd_audit::query(&f, &q).map_err(|e| e.to_string())
        }) {
            Ok(r) => {
                print_records(&r);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        AuditCommand::Keygen { private, public } => {
            match mcpd_audit::generate_key(&private, &public) {
                Ok(()) => {
                    println!(
                        "wrote {} (private) and {} (public)",
                        private.display(),
                        public.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.to_string()),
            }
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
struct ServeArgs {
    /// Serve on stdin/stdout (the default transport when no HTTP listener is asked for).
    #[arg(long)]
    stdio: bool,
    /// Serve Streamable HTTP on ADDR (e.g. 127.0.0.1:8080), endpoint /mcp. Loopback only
    /// unless --insecure-non-loopback-without-auth.
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// Allow the HTTP listener on a non-loopback address although mcpd has no HTTP
    /// authentication yet: anyone who can reach it acts as the HTTP client. Dangerous.
    #[arg(long = "insecure-non-loopback-without-auth")]
    insecure_non_loopback: bool,
    /// Enable an extra tool set (repeatable). `conformance`: the official MCP conformance
    /// suite's fixtures, replacing every other tool (for testing mcpd itself; never in production).
    /// Only the test worker has them: `--worker target/debug/examples/mcpd-conformance-worker`.
    #[arg(long = "toolset", value_name = "NAME")]
    toolsets: Vec<String>,
    /// Seconds an HTTP session may stay idle before it and its worker are reaped.
    #[arg(long = "http-session-idle-secs", value_name = "SECS")]
    http_idle: Option<u64>,
    /// A directory the stdio client may read (repeatable).
    #[arg(long = "allow-read", value_name = "DIR")]
    allow_read: Vec<PathBuf>,
    /// A directory the stdio client may read and write (repeatable).
    #[arg(long = "allow-write", value_name = "DIR")]
    allow_write: Vec<PathBuf>,
    /// A program the stdio client may run with run_command (repeatable): a name looked up in
    /// /usr/local/bin:/usr/bin:/bin, or an absolute path. Runs inside the client's sandbox.
    #[arg(long = "allow-exec", value_name = "PROGRAM")]
    allow_exec: Vec<String>,
    /// A language the stdio client may use for persistent code sessions (run_code):
    /// python3, sh, bash or node (repeatable).
    #[arg(long = "allow-code", value_name = "LANGUAGE")]
    allow_code: Vec<String>,
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Path of the mcpd-worker executable (default: next to mcpd).
    #[arg(long)]
    worker: Option<PathBuf>,
    /// Write the tamper-evident audit log to this file (outside every client's roots).
    #[arg(long = "audit-log", value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Log filter for stderr (tracing syntax, e.g. info, mcpd=debug). Also: MCPD_LOG.
    #[arg(long, default_value = "info")]
    log: String,
}

/// Per-worker cgroups as the policy asks; logs which layout is used, or why none is.
fn detect_cgroups(
    setting: &mcpd_policy::CgroupSetting,
) -> Result<Option<worker::cgroup::Cgroups>, String> {
    let mode = match setting {
        mcpd_policy::CgroupSetting::Auto => worker::cgroup::Mode::Auto,
        mcpd_policy::CgroupSetting::Off => worker::cgroup::Mode::Off,
        mcpd_policy::CgroupSetting::Path(p) => worker::cgroup::Mode::Path(p.clone()),
    };
    let mut notes = Vec::new();
    match worker::cgroup::Cgroups::detect_with_notes(&mode, &mut notes) {
        Ok(Some(c)) => {
            tracing::info!("worker limits: {}", c.describe());
            let stale = c.reap_stale();
            if stale > 0 {
                tracing::info!("removed {stale} cgroup(s) left behind by brokers that were killed");
            }
            Ok(Some(c))
        }
        Ok(None) => {
            tracing::warn!(
                "worker limits: no usable cgroup ({}); memory and process-count limits fall back to rlimits (docs/cgroups.md)",
                notes.join("; ")
            );
            Ok(None)
        }
        Err(e) => Err(format!("server.cgroup: {e}")),
    }
}

/// `SIGHUP`: load the configuration again (same file and flags); if it is valid, it takes
/// effect for every following decision, sessions announce `list_changed` and restart their
/// workers under the new sandbox. A broken configuration changes nothing. Listener addresses,
/// the audit log, the worker path and cgroups are read at start only.
async fn reload_on_sighup(args: ServeArgs, cell: reload::PolicyCell, audit: auditing::Audit) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match load_policy(&args) {
            Ok(p) => {
                for w in &p.warnings {
                    tracing::warn!("{w}");
                }
                let digest = mcpd_audit::args_digest(&serde_json::Value::String(p.describe()));
                let mut f = serde_json::Map::new();
                f.insert("policy_digest".into(), digest.into());
                f.insert("reload".into(), true.into());
                f.insert("clients".into(), p.clients().count().into());
                if let Err(e) = audit.record("config.load", f).await {
                    tracing::error!("policy reload refused: the audit log cannot record it: {e}");
                    continue;
                }
                cell.replace(p);
                tracing::info!("policy reloaded (SIGHUP)");
            }
            Err(e) => {
                tracing::error!("policy reload refused, the previous policy stays in force: {e}")
            }
        }
    }
}

/// SIGTERM or SIGINT.
async fn wait_for_termination() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn canon(p: &Path) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(p)
}

fn load_policy(args: &ServeArgs) -> Result<Policy, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let q = QuickStart {
        read: args.allow_read.clone(),
        write: args.allow_write.clone(),
        exec: args.allow_exec.clone(),
        code: args.allow_code.clone(),
    };
    let mut policy = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut p = Policy::from_toml(&path.display().to_string(), &text, &canon)
                .map_err(|e| e.to_string())?;
            if !q.read.is_empty() || !q.write.is_empty() || !q.exec.is_empty() || !q.code.is_empty()
            {
                p.add_quick_start(&q, &cwd, &canon)
                    .map_err(|e| e.to_string())?;
            }
            p
        }
        None => Policy::quick_start(&q, &cwd, &canon).map_err(|e| e.to_string())?,
    };
    if let Some(w) = &args.worker {
        policy.worker_path = Some(w.clone());
    }
    if let Some(addr) = args.http {
        if !addr.ip().is_loopback() && !args.insecure_non_loopback {
            return Err(format!("--http {addr}: not a loopback address, and mcpd has no HTTP authentication yet; pass --insecure-non-loopback-without-auth to accept that anyone who reaches it acts as the HTTP client"));
        }
        if args.insecure_non_loopback {
            policy.warnings.push(format!(
                "--insecure-non-loopback-without-auth: unauthenticated MCP over HTTP on {addr}"
            ));
        }
        policy.http.listen = Some(addr);
    }
    for t in &args.toolsets {
        if t != "conformance" {
            return Err(format!(
                "--toolset {t}: unknown tool set (known: conformance)"
            ));
        }
        policy.warnings.push(format!(
            "--toolset {t}: test fixtures are served to clients"
        ));
        policy.toolsets.push(t.clone());
    }
    if let Some(secs) = args.http_idle {
        policy.http.session_idle_secs = secs.max(1);
    }
    if let Some(a) = &args.audit_log {
        let a = if a.is_absolute() {
            a.clone()
        } else {
            cwd.join(a)
        };
        policy
            .set_audit_path(&a, &canon)
            .map_err(|e| e.to_string())?;
    }
    Ok(policy)
}

fn worker_path(policy: &Policy) -> Result<PathBuf, String> {
    if let Some(p) = &policy.worker_path {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().map_err(|e| format!("locating mcpd: {e}"))?;
    let dir = exe.parent().ok_or("mcpd has no parent directory")?;
    Ok(dir.join("mcpd-worker"))
}

fn init_logging(filter: &str) {
    let filter = std::env::var("MCPD_LOG").unwrap_or_else(|_| filter.to_string());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(&args.log);
    let policy = match load_policy(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mcpd: configuration error: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    for w in &policy.warnings {
        tracing::warn!("{w}");
    }
    let worker = match worker_path(&policy) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("mcpd: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    // The requestState key, before any request can need it: a CSPRNG failure ends the start.
    if let Err(e) = mcp::seal::init() {
        eprintln!("mcpd: {e}");
        return ExitCode::from(exit::RUNTIME);
    }
    let http_addr = policy.http.listen;
    let serve_stdio = args.stdio || http_addr.is_none();
    // One stdio session needs no worker threads: a current-thread runtime keeps every hop of a
    // call (stdin → session → worker IPC → stdout) on one thread, without cross-thread wake-ups.
    // HTTP serves many sessions: a multi-threaded runtime.
    let built = if http_addr.is_some() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcpd: runtime: {e}");
            return ExitCode::from(exit::RUNTIME);
        }
    };
    let audit = match &policy.audit {
        None => auditing::Audit::off(),
        Some(s) => match auditing::Audit::open(s) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("mcpd: audit log {}: {e}", s.path.display());
                return ExitCode::from(exit::AUDIT);
            }
        },
    };
    let digest = mcpd_audit::args_digest(&serde_json::Value::String(policy.describe()));
    let mut f = serde_json::Map::new();
    f.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    f.insert("pid".into(), std::process::id().into());
    let mut c = serde_json::Map::new();
    c.insert("policy_digest".into(), digest.into());
    c.insert(
        "source".into(),
        args.config
            .as_ref()
            .map_or("<flags>".to_string(), |p| p.display().to_string())
            .into(),
    );
    c.insert("clients".into(), policy.clients().count().into());
    if audit
        .record_blocking("broker.start", f)
        .and_then(|()| audit.record_blocking("config.load", c))
        .is_err()
    {
        eprintln!("mcpd: the audit log cannot be written; refusing to serve");
        return ExitCode::from(exit::AUDIT);
    }
    let cgroups = match detect_cgroups(&policy.cgroup) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mcpd: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let cell = reload::PolicyCell::new(policy);
    let policy = cell.get();
    let serve_audit = audit.clone();
    let reload_args = args.clone();
    let result = rt.block_on(async move {
        tokio::spawn(reload_on_sighup(
            reload_args,
            cell.clone(),
            serve_audit.clone(),
        ));
        let sup = worker::supervisor::Supervisor::start(
            worker,
            policy.allow_degraded_sandbox,
            cgroups,
            std::time::Duration::from_micros(policy.ipc_spin_us),
        )?;
        let Some(addr) = http_addr else {
            let (input, output) = transport::stdio::process_stdio();
            return transport::stdio::serve(cell, sup, serve_audit, input, output).await;
        };
        let Some(client) = policy.http.client.clone() else {
            return Err(std::io::Error::other(
                "the policy names no client for HTTP ([http] client = ...): HTTP is refused",
            ));
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        // Tests and scripts ask for port 0: say where we are, on stderr.
        eprintln!(
            "mcpd: listening on http://{bound}{}",
            transport::http::ENDPOINT
        );
        let cfg = transport::http::HttpConfig {
            addr: bound,
            client,
            extra_hosts: policy.http.allowed_hosts.clone(),
            idle: std::time::Duration::from_secs(policy.http.session_idle_secs),
            max_sessions: usize::try_from(policy.http.max_sessions).unwrap_or(64),
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut http_stop = stop_rx.clone();
        let http_task = tokio::spawn(transport::http::serve(
            listener,
            cfg,
            cell.clone(),
            sup.clone(),
            serve_audit.clone(),
            async move {
                let _ = http_stop.wait_for(|s| *s).await;
            },
        ));
        let stdio_task = serve_stdio.then(|| {
            let (input, output) = transport::stdio::process_stdio();
            tokio::spawn(transport::stdio::serve(
                cell.clone(),
                sup.clone(),
                serve_audit.clone(),
                input,
                output,
            ))
        });
        wait_for_termination().await;
        tracing::info!("terminating: closing sessions");
        let _ = stop_tx.send(true);
        let r = http_task.await.map_err(std::io::Error::other)?;
        if let Some(t) = stdio_task {
            t.abort();
        }
        r
    });
    let mut f = serde_json::Map::new();
    f.insert("pid".into(), std::process::id().into());
    f.insert("clean".into(), result.is_ok().into());
    let _ = audit.record_blocking("broker.stop", f);
    audit.close();
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcpd: {e}");
            ExitCode::from(exit::TRANSPORT)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::CheckConfig { config } => {
            let text = match std::fs::read_to_string(&config) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("mcpd: {}: {e}", config.display());
                    return ExitCode::from(exit::CONFIG);
                }
            };
            match Policy::from_toml(&config.display().to_string(), &text, &canon) {
                Ok(p) => {
                    print!("{}", p.describe());
                    println!("configuration OK");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(exit::CONFIG)
                }
            }
        }
        Command::Doctor { config } => {
            let policy = match &config {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))
                    .and_then(|t| {
                        Policy::from_toml(&path.display().to_string(), &t, &canon)
                            .map_err(|e| e.to_string())
                    }),
                None => std::env::current_dir()
                    .map_err(|e| format!("current directory: {e}"))
                    .and_then(|cwd| {
                        Policy::quick_start(&QuickStart::default(), &cwd, &canon)
                            .map_err(|e| e.to_string())
                    }),
            };
            match policy {
                Ok(p) => commands::doctor::run(&p),
                Err(e) => {
                    eprintln!("mcpd: {e}");
                    ExitCode::from(exit::CONFIG)
                }
            }
        }
        Command::Audit(cmd) => audit_cmd(cmd),
    }
}
