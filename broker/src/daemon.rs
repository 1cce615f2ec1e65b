//! `mcpd serve`: start-up, serving and shutdown of the broker.
//!
//! What it does, in order: logging; the policy (configuration file plus the command-line
//! [`Overlay`], validated by the policy crate); the worker path; the `requestState` key
//! (`seal`, read with the policy); the async runtime (current-thread for stdio alone, multi-threaded with
//! HTTP); the audit log and its `broker.start` / `config.load` records; cgroup detection; the
//! worker supervisor; the transports (stdio, HTTP); `SIGHUP` reload; `SIGTERM`/`SIGINT`; the
//! `broker.stop` record. Every start-up failure is a [`BrokerError`] returned to `main`,
//! before any client is served.
//! What it does not do: interpret flags (it only copies them into an [`Overlay`]), decide
//! requests (sessions do, against the policy), or speak MCP (the transports and `mcp::session`).
//! What it trusts: the policy crate's validation of the configuration and flags, and the
//! audit log to refuse (fail closed) when it cannot record the start.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use mcpd_policy::{CgroupSetting, Overlay, Policy};

use crate::cli::ServeArgs;
use crate::error::{BrokerError, LoadError};
use crate::{auditing, commands, mcp, reload, transport, worker};

/// The log target of start-up and shutdown lines: the crate's, as when they were written
/// from `main.rs` (`MCPD_LOG` filters and log readers see the same lines as before).
const LOG: &str = "mcpd";

/// Where the policy comes from: the configuration file (if any) and the flags. Loaded at start
/// and again on every `SIGHUP`.
#[derive(Debug, Clone)]
struct PolicySource {
    config: Option<PathBuf>,
    overlay: Overlay,
}

impl PolicySource {
    fn new(args: &ServeArgs) -> Self {
        let config = match (&args.config, args.no_config) {
            (Some(c), _) => Some(c.clone()),
            (None, true) => None,
            (None, false) => crate::cli::default_config(),
        };
        Self {
            config,
            overlay: Overlay {
                read: args.allow_read.clone(),
                write: args.allow_write.clone(),
                exec: args.allow_exec.clone(),
                code: args.allow_code.clone(),
                worker: args.worker.clone(),
                http_listen: args.http.map(|l| l.addr),
                http_localhost: args.http.is_some_and(|l| l.localhost),
                insecure_non_loopback: args.insecure_non_loopback,
                toolsets: args.toolsets.clone(),
                http_idle_secs: args.http_idle,
                audit_log: args.audit_log.clone(),
                jwt_jwks: args.jwt_jwks.clone(),
                jwt_issuer: args.jwt_issuer.clone(),
                jwt_audience: args.jwt_audience.clone(),
                unix: args.unix.clone(),
                unix_systemd: args.unix_systemd,
                unix_protocol: args.unix_protocol.clone(),
                dbus: args.dbus.clone(),
                dbus_address: args.dbus_address.clone(),
                metrics: args.metrics.clone(),
                instance: args.instance.clone(),
                tls: mcpd_policy::TlsOverlay {
                    cert: args.tls_cert.clone(),
                    key: args.tls_key.clone(),
                    client_ca: args.tls_client_ca.clone(),
                },
            },
        }
    }

    /// Read the file (if any) and load the policy, with the `requestState` keys it names read
    /// and checked (put in force by the caller, once the policy is); relative flag paths
    /// resolve against the current directory at the time of the call.
    fn load(&self) -> Result<(Policy, mcp::seal::Prepared), LoadError> {
        let cwd = std::env::current_dir().map_err(LoadError::CurrentDir)?;
        let text = match &self.config {
            Some(path) => Some((path.display().to_string(), commands::read_config(path)?)),
            None => None,
        };
        let config = text.as_ref().map(|(n, t)| (n.as_str(), t.as_str()));
        let policy = Policy::load(config, &self.overlay, &cwd, &commands::canon)?;
        if let Some(j) = policy.jwt() {
            crate::auth::jwt::load_keys(j).map_err(LoadError::JwtKeys)?;
        }
        let keys =
            mcp::seal::prepare(policy.http()).map_err(|e| LoadError::StateKey(e.to_string()))?;
        Ok((policy, keys))
    }

    /// How the audit log names the policy's source.
    fn describe(&self) -> String {
        self.config
            .as_ref()
            .map_or("<flags>".to_string(), |p| p.display().to_string())
    }
}

/// Per-worker cgroups as the policy asks; logs which layout is used, or why none is.
fn detect_cgroups(setting: &CgroupSetting) -> Result<Option<worker::cgroup::Cgroups>, BrokerError> {
    let mode = match setting {
        CgroupSetting::Auto => worker::cgroup::Mode::Auto,
        CgroupSetting::Off => worker::cgroup::Mode::Off,
        CgroupSetting::Path(p) => worker::cgroup::Mode::Path(p.clone()),
    };
    let mut notes = Vec::new();
    match worker::cgroup::Cgroups::detect_with_notes(&mode, &mut notes) {
        Ok(Some(c)) => {
            tracing::info!(target: LOG, "worker limits: {}", c.describe());
            let stale = c.reap_stale();
            if stale > 0 {
                tracing::info!(target: LOG, "removed {stale} cgroup(s) left behind by brokers that were killed");
            }
            Ok(Some(c))
        }
        Ok(None) => {
            tracing::warn!(
                target: LOG,
                "worker limits: no usable cgroup ({}); memory and process-count limits fall back to rlimits (docs/cgroups.md)",
                notes.join("; ")
            );
            Ok(None)
        }
        Err(e) => Err(BrokerError::Cgroup(e)),
    }
}

/// `SIGHUP`: load the configuration again (same file and flags); if it is valid, it takes
/// effect for every following decision, sessions announce `list_changed` and restart their
/// workers under the new sandbox. A broken configuration changes nothing. Listener addresses,
/// the audit log, the worker path and cgroups are read at start only.
async fn reload_on_sighup(source: PolicySource, cell: reload::PolicyCell, audit: auditing::Audit) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        crate::systemd::reloading();
        match source.load() {
            Ok((p, keys)) => {
                for w in p.warnings() {
                    tracing::warn!(target: LOG, "{w}");
                }
                let digest = mcpd_audit::args_digest(&serde_json::Value::String(p.describe()));
                let mut f = serde_json::Map::new();
                f.insert("policy_digest".into(), digest.into());
                f.insert("reload".into(), true.into());
                f.insert("clients".into(), p.clients().count().into());
                if let Err(e) = audit.record("config.load", f).await {
                    tracing::error!(target: LOG, "policy reload refused: the audit log cannot record it: {e}");
                    crate::systemd::reloaded(
                        "serving; the last policy reload was refused (audit log)",
                    );
                    continue;
                }
                cell.replace(p);
                // The requestState keys follow the policy: a new key file seals from now on,
                // the key it replaces still verifies for the state ttl.
                if let Err(e) = keys.apply() {
                    tracing::error!(target: LOG, "requestState keys not replaced: {e}");
                }
                tracing::info!(target: LOG, "policy reloaded (SIGHUP)");
                crate::systemd::reloaded("serving; policy reloaded");
            }
            Err(e) => {
                tracing::error!(target: LOG, "policy reload refused, the previous policy stays in force: {e}");
                crate::systemd::reloaded(
                    "serving; the last policy reload was refused (see the log)",
                );
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

/// The worker executable: the policy's choice, else `mcpd-worker` next to `mcpd` (a build
/// tree), else `../libexec/mcpd/mcpd-worker` from `mcpd`'s directory (the package:
/// `/usr/bin/mcpd`, `/usr/libexec/mcpd/mcpd-worker`).
pub(crate) fn worker_path(policy: &Policy) -> Result<PathBuf, BrokerError> {
    if let Some(p) = policy.worker_path() {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(BrokerError::LocateSelf)?;
    let dir = exe.parent().ok_or(BrokerError::NoExeDir)?;
    let beside = dir.join("mcpd-worker");
    if beside.exists() {
        return Ok(beside);
    }
    let libexec = dir.join("../libexec/mcpd/mcpd-worker");
    match (dir.parent(), libexec.exists()) {
        (Some(prefix), true) => Ok(prefix.join("libexec/mcpd/mcpd-worker")),
        _ => Ok(beside),
    }
}

fn init_logging(filter: &str, format: Option<crate::cli::LogFormat>) {
    use crate::cli::LogFormat;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = std::env::var("MCPD_LOG").unwrap_or_else(|_| filter.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = format.unwrap_or(if stderr_is_journal() {
        LogFormat::Journal
    } else {
        LogFormat::Text
    });
    if format == LogFormat::Journal {
        match tracing_journald::layer() {
            Ok(j) => {
                let j = j.with_syslog_identifier("mcpd".into());
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(j)
                    .try_init();
                return;
            }
            Err(e) => eprintln!("mcpd: the journal cannot be reached ({e}); logging to stderr"),
        }
    }
    let fmt = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => fmt.json().flatten_event(true).try_init(),
        LogFormat::Text | LogFormat::Journal => fmt.try_init(),
    };
}

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM=DEV:INODE` for
/// the stream it gives a service, which must still be stderr (not redirected since).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    match rustix::fs::fstat(std::io::stderr()) {
        Ok(st) => {
            dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
        }
        Err(_) => false,
    }
}

/// One stdio session needs no worker threads: a current-thread runtime keeps every hop of a
/// call (stdin → session → worker IPC → stdout) on one thread, without cross-thread wake-ups.
/// HTTP serves many sessions: a multi-threaded runtime of [`network_threads`].
fn runtime(http: bool) -> Result<tokio::runtime::Runtime, BrokerError> {
    let built = if http {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(network_threads(cpus))
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    built.map_err(BrokerError::Runtime)
}

/// The network runtime's threads on a machine (or CPU set: `available_parallelism` follows the
/// affinity mask and the cgroup's CPU quota) of `cpus` CPUs: one CPU is left to the workers,
/// which run every tool call. Measured on two vCPUs (BENCHMARKS.md), one runtime thread served
/// up to 29% more calls/s than two at 1 and 64 sessions: with a thread per CPU, a call's wake-ups
/// (the connection task, the worker socket's reader) cross threads and compete with the worker
/// for the same CPUs.
fn network_threads(cpus: usize) -> usize {
    cpus.saturating_sub(1).max(1)
}

/// The configured audit log (or none), with its `broker.start` and `config.load` records
/// written: a log that cannot take them refuses the start.
fn open_audit(policy: &Policy, source: &PolicySource) -> Result<auditing::Audit, BrokerError> {
    let audit = match policy.audit() {
        None => auditing::Audit::off(),
        Some(s) => auditing::Audit::open(s).map_err(|source| BrokerError::AuditOpen {
            path: s.path.clone(),
            source,
        })?,
    };
    let digest = mcpd_audit::args_digest(&serde_json::Value::String(policy.describe()));
    let mut f = serde_json::Map::new();
    f.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    f.insert("pid".into(), std::process::id().into());
    let mut c = serde_json::Map::new();
    c.insert("policy_digest".into(), digest.into());
    c.insert("source".into(), source.describe().into());
    c.insert("clients".into(), policy.clients().count().into());
    audit
        .record_blocking("broker.start", f)
        .and_then(|()| audit.record_blocking("config.load", c))
        .map_err(|_| BrokerError::AuditWrite)?;
    Ok(audit)
}

/// Serve MCP until stdin ends (stdio alone), the one connection systemd passed ends
/// (`Accept=yes`), or `SIGTERM`/`SIGINT`. Returns once `broker.stop` is recorded and the
/// runtime is shut down.
pub fn serve(args: ServeArgs) -> Result<(), BrokerError> {
    init_logging(&args.log, args.log_format);
    // Socket activation first: the passed descriptors are taken before anything else can
    // open descriptors of their numbers.
    let fds = if args.unix_systemd || args.http_systemd {
        Some(crate::systemd::ListenFds::take().map_err(BrokerError::Listen)?)
    } else {
        None
    };
    let mut source = PolicySource::new(&args);
    let http_passed = match (&fds, args.http_systemd) {
        (Some(f), true) => {
            let passed = transport::http::passed_listeners(f).map_err(BrokerError::Listen)?;
            source.overlay.http_listen = Some(passed.addr);
            source.overlay.http_localhost = passed.localhost;
            Some(passed.listeners)
        }
        _ => None,
    };
    if let (Some(c), None) = (&source.config, &args.config) {
        tracing::info!(target: LOG, "configuration: {} (the default; --no-config ignores it)", c.display());
    }
    let (policy, state_keys) = source.load().map_err(BrokerError::Config)?;
    for w in policy.warnings() {
        tracing::warn!(target: LOG, "{w}");
    }
    let worker = worker_path(&policy)?;
    // Before any client: a missing or mismatched worker refuses the start, not the first call.
    let about = worker::probe::check(&worker).map_err(BrokerError::Worker)?;
    tracing::debug!(target: LOG, worker = %worker.display(), "{about}");
    // The requestState key, before any request can need it: a CSPRNG failure ends the start.
    state_keys.apply().map_err(BrokerError::Key)?;
    let http_addr = policy.http().listen;
    // Bound before the runtime (and its threads) exist: the socket is created under a umask.
    let unix = transport::unix::open(policy.unix(), fds.as_ref()).map_err(BrokerError::Listen)?;
    if let Some(f) = &fds {
        let left = f.left_over();
        if !left.is_empty() {
            tracing::warn!(target: LOG, "socket activation: descriptor(s) {} not served (FileDescriptorName= mcpd-unix for --unix-systemd, mcpd-http for --http-systemd)", left.join(", "));
        }
    }
    let dbus = policy.dbus().enabled();
    let serve_stdio = args.stdio || (http_addr.is_none() && unix.is_none() && !dbus);
    let rt = runtime(http_addr.is_some() || unix.is_some() || dbus)?;
    let audit = open_audit(&policy, &source)?;
    let cgroups = detect_cgroups(&policy.cgroup)?;
    let cell = reload::PolicyCell::new(policy);
    let result = rt.block_on(run(
        source,
        cell,
        audit.clone(),
        Started {
            worker,
            cgroups,
            http_addr,
            http_passed,
            serve_stdio,
            unix,
        },
    ));
    let mut f = serde_json::Map::new();
    f.insert("pid".into(), std::process::id().into());
    f.insert("clean".into(), result.is_ok().into());
    let _ = audit.record_blocking("broker.stop", f);
    audit.close();
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// What the synchronous part of the start settled for the async part.
struct Started {
    worker: PathBuf,
    cgroups: Option<worker::cgroup::Cgroups>,
    http_addr: Option<std::net::SocketAddr>,
    /// The HTTP listening sockets systemd passed (`--http-systemd`), instead of binding.
    http_passed: Option<Vec<std::net::TcpListener>>,
    serve_stdio: bool,
    unix: Option<transport::unix::Bound>,
}

/// The HTTP listeners: the sockets systemd passed, or bound at `addr` (and `[::1]` on the same
/// port for `localhost:PORT`).
async fn http_listeners(
    addr: std::net::SocketAddr,
    localhost: bool,
    passed: Option<Vec<std::net::TcpListener>>,
) -> Result<Vec<tokio::net::TcpListener>, BrokerError> {
    if let Some(passed) = passed {
        return passed
            .into_iter()
            .map(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(BrokerError::Listen);
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => ": another process listens there (ss -ltnp)",
            std::io::ErrorKind::PermissionDenied => ": ports below 1024 need CAP_NET_BIND_SERVICE",
            std::io::ErrorKind::AddrNotAvailable => ": no interface of this host has that address",
            _ => "",
        };
        BrokerError::Listen(std::io::Error::new(
            e.kind(),
            format!("HTTP listener {addr}: {e}{hint}"),
        ))
    })?;
    let bound = listener.local_addr().map_err(BrokerError::Listen)?;
    let mut listeners = vec![listener];
    if localhost {
        // `localhost:PORT`: the IPv6 loopback too, on the port the IPv4 one got.
        let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, bound.port()));
        match tokio::net::TcpListener::bind(v6).await {
            Ok(l) => listeners.push(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                tracing::info!(target: LOG, "localhost: no IPv6 loopback on this host; listening on {bound} only");
            }
            Err(e) => {
                return Err(BrokerError::Listen(std::io::Error::new(
                    e.kind(),
                    format!("HTTP listener {v6} (localhost): {e}"),
                )))
            }
        }
    }
    Ok(listeners)
}

/// Start the Streamable HTTP transport on `listeners`; it stops when `stop` turns true.
fn start_http(
    listeners: Vec<tokio::net::TcpListener>,
    cell: &reload::PolicyCell,
    sup: &worker::supervisor::Supervisor,
    audit: &auditing::Audit,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, BrokerError> {
    let policy = cell.get();
    let http = policy.http();
    let client = http.client.clone();
    if client.is_none() && policy.jwt().is_none() {
        return Err(BrokerError::HttpNoClient);
    }
    let bound = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .or(http.listen)
        .ok_or_else(|| BrokerError::Listen(std::io::Error::other("no HTTP listener")))?;
    let tls = transport::http::load_tls(&policy).map_err(BrokerError::Tls)?;
    // Tests and scripts ask for port 0: say where we are, on stderr.
    for l in &listeners {
        eprintln!(
            "mcpd: listening on {}://{}{}",
            if tls.is_some() { "https" } else { "http" },
            l.local_addr().map_or(bound, |a| a),
            transport::http::ENDPOINT
        );
    }
    let cfg = transport::http::HttpConfig {
        listen: transport::http::Listen::Tcp(bound),
        client,
        extra_hosts: http.allowed_hosts.clone(),
        idle: Duration::from_secs(http.session_idle_secs),
        max_sessions: usize::try_from(http.max_sessions).unwrap_or(64),
        tls,
        max_connections: usize::try_from(http.max_connections).unwrap_or(usize::MAX),
        max_connections_per_ip: usize::try_from(http.max_connections_per_ip).unwrap_or(usize::MAX),
        trusted_proxies: http.trusted_proxies.clone(),
        forwarded_header: http.forwarded_header,
    };
    Ok(tokio::spawn(transport::http::serve(
        listeners,
        cfg,
        cell.clone(),
        sup.clone(),
        audit.clone(),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    )))
}

/// The supervisor and the transports, on the runtime; `READY=1` once they serve; the stop
/// (signal, end of stdin, end of the one passed connection) with `STOPPING=1`: in-flight calls
/// get `server.stop_grace_secs`, then the rest are cancelled, sessions closed, workers reaped.
async fn run(
    source: PolicySource,
    cell: reload::PolicyCell,
    audit: auditing::Audit,
    started: Started,
) -> Result<(), BrokerError> {
    let policy = cell.get();
    tokio::spawn(reload_on_sighup(source, cell.clone(), audit.clone()));
    let sup = worker::supervisor::Supervisor::start(
        started.worker,
        policy.allow_degraded_sandbox,
        started.cgroups,
        Duration::from_micros(policy.ipc_spin_us),
    )
    .map_err(BrokerError::Supervisor)?;
    let _metrics = crate::metrics::start(policy.metrics(), &audit)
        .await
        .map_err(BrokerError::Listen)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut serving = Vec::new();
    let unix = match started.unix {
        Some(b) => {
            serving.push(b.describe().to_string());
            Some(
                transport::unix::start(b, cell.clone(), sup.clone(), audit.clone())
                    .map_err(BrokerError::Listen)?,
            )
        }
        None => None,
    };
    let dbus = transport::dbus::start(cell.clone(), sup.clone(), audit.clone())
        .await
        .map_err(BrokerError::Listen)?;
    if dbus.is_some() {
        serving.push(transport::dbus::describe(policy.dbus()));
    }
    let http_task = match started.http_addr {
        Some(addr) => {
            let listeners =
                http_listeners(addr, policy.http().localhost, started.http_passed).await?;
            serving.push(format!("http {addr}"));
            Some(start_http(listeners, &cell, &sup, &audit, stop_rx.clone())?)
        }
        None => None,
    };
    let mut stdio_task = started.serve_stdio.then(|| {
        serving.push("stdio".into());
        let (input, output) = transport::stdio::process_stdio();
        let mut stop = stop_rx.clone();
        tokio::spawn(transport::stdio::serve(
            cell.clone(),
            sup.clone(),
            audit.clone(),
            input,
            output,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ))
    });
    crate::systemd::ready(&format!("serving {}", serving.join(", ")));
    if let Some(interval) = crate::systemd::watchdog_interval() {
        tracing::info!(target: LOG, "systemd watchdog: a ping every {} ms", interval.as_millis() / 2);
        tokio::spawn(crate::systemd::watchdog(interval));
    }
    // What ends the service: a signal; with stdio alone, the end of stdin; with the one
    // connection systemd accepted (`Accept=yes`), its end.
    let alone = http_task.is_none() && unix.is_none() && dbus.is_none();
    let mut stdio_result = None;
    tokio::select! {
        () = wait_for_termination() => {
            tracing::info!(target: LOG, "terminating: finishing in-flight calls (at most {} s), then closing sessions", cell.get().stop_grace_secs);
        }
        r = async { match stdio_task.as_mut() { Some(t) => t.await, None => std::future::pending().await } }, if alone => {
            stdio_result = Some(r);
            stdio_task = None;
        }
        () = async { match &unix { Some(u) => u.ended().await, None => std::future::pending().await } } => {}
        () = async { match &dbus { Some(d) => d.ended().await, None => std::future::pending().await } } => {}
    }
    crate::systemd::stopping("stopping: finishing in-flight calls");
    let _ = stop_tx.send(true);
    let mut result: Result<(), BrokerError> = Ok(());
    if let Some(u) = unix {
        if let Err(e) = u.stop().await {
            result = Err(BrokerError::Transport(e));
        }
    }
    if let Some(d) = dbus {
        if let Err(e) = d.stop().await {
            result = Err(BrokerError::Transport(e));
        }
    }
    if let Some(t) = http_task {
        let r = t
            .await
            .map_err(|e| BrokerError::Transport(std::io::Error::other(e)))
            .and_then(|r| r.map_err(BrokerError::Transport));
        if result.is_ok() {
            result = r;
        }
    }
    if let Some(t) = stdio_task {
        stdio_result = Some(t.await);
    }
    if let Some(r) = stdio_result {
        let r = r
            .map_err(|e| BrokerError::Transport(std::io::Error::other(e)))
            .and_then(|r| r.map_err(BrokerError::Transport));
        if result.is_ok() {
            result = r;
        }
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(argv: &[&str]) -> ServeArgs {
        let mut all = vec!["mcpd", "serve"];
        all.extend_from_slice(argv);
        match crate::cli::Cli::try_parse_from(all).map(|c| c.command) {
            Ok(crate::cli::Command::Serve(a)) => a,
            other => panic!("not a serve command line: {other:?}"),
        }
    }

    #[test]
    fn the_network_runtime_leaves_one_cpu_to_the_workers() {
        assert_eq!(network_threads(0), 1);
        assert_eq!(network_threads(1), 1);
        assert_eq!(network_threads(2), 1);
        assert_eq!(network_threads(4), 3);
        assert_eq!(network_threads(64), 63);
    }

    #[test]
    fn every_serve_flag_reaches_the_overlay() {
        let s = PolicySource::new(&args(&[
            "--allow-read=r",
            "--allow-write=w",
            "--allow-exec=git",
            "--allow-code=python3",
            "--worker=/w",
            "--http=127.0.0.1:0",
            "--insecure-non-loopback-without-auth",
            "--toolset=conformance",
            "--http-session-idle-secs=7",
            "--audit-log=a.jsonl",
            "--config=c.toml",
            "--unix=/run/m.sock",
            "--unix-systemd",
            "--unix-protocol=lines",
            "--dbus=session",
            "--dbus-address=unix:path=/b",
            "--tls-cert=s.pem",
            "--tls-key=s.key",
            "--tls-client-ca=ca.pem",
            "--metrics=127.0.0.1:0",
            "--instance=a-1",
        ]));
        assert_eq!(s.config, Some(PathBuf::from("c.toml")));
        assert_eq!(s.describe(), "c.toml");
        assert_eq!(
            s.overlay,
            Overlay {
                read: vec!["r".into()],
                write: vec!["w".into()],
                exec: vec!["git".into()],
                code: vec!["python3".into()],
                worker: Some("/w".into()),
                http_listen: Some("127.0.0.1:0".parse().unwrap()),
                http_localhost: false,
                insecure_non_loopback: true,
                toolsets: vec!["conformance".into()],
                http_idle_secs: Some(7),
                audit_log: Some("a.jsonl".into()),
                jwt_jwks: None,
                jwt_issuer: None,
                jwt_audience: None,
                unix: Some("/run/m.sock".into()),
                unix_systemd: true,
                unix_protocol: Some("lines".into()),
                dbus: Some("session".into()),
                dbus_address: Some("unix:path=/b".into()),
                metrics: Some("127.0.0.1:0".into()),
                instance: Some("a-1".into()),
                tls: mcpd_policy::TlsOverlay {
                    cert: Some("s.pem".into()),
                    key: Some("s.key".into()),
                    client_ca: Some("ca.pem".into()),
                },
            }
        );
        let none = PolicySource::new(&args(&[]));
        assert_eq!(none.overlay, Overlay::default());
        assert_eq!(none.describe(), "<flags>");
    }

    #[test]
    fn a_missing_config_file_is_a_configuration_error() {
        let s = PolicySource::new(&args(&["--config=/definitely/missing/mcpd.toml"]));
        let e = BrokerError::Config(s.load().err().unwrap());
        assert!(
            e.to_string()
                .starts_with("mcpd: configuration error: /definitely/missing/mcpd.toml: "),
            "{e}"
        );
        assert_eq!(e.code(), BrokerError::CONFIG);
    }
}
