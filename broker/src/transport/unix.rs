//! The Unix-socket transport: a listening Unix stream socket whose connections speak, as
//! `[unix] protocol` (`--unix-protocol`) says, either Streamable HTTP (`"http"`, the default:
//! the TCP listener's service, [`UnixHttp`], with its own session tables) or newline-delimited
//! JSON-RPC (`"lines"`: exactly the stdio protocol, [`stdio::serve_lines`], one session per
//! connection). Either way the principal comes from the kernel's `SO_PEERCRED`, read at accept,
//! through [`PeerCredentials`] (the policy's `unix_uid` / `unix_gid` identity rules): once per
//! connection for lines, for every request over HTTP (no header can choose it).
//!
//! The socket is bound at `[unix] path` (`--unix PATH`) or taken from systemd
//! (`--unix-systemd`, `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`). Binding refuses a path whose
//! directories another user could change (writable by others without the sticky bit, or owned
//! by a uid that is neither root nor the broker's), a non-socket file at the path, and a live
//! socket; it replaces a stale socket of the broker's uid. The socket is created under umask
//! 0177 (owner only: never connectable by others before its mode and group are set), then given
//! its group and mode.
//!
//! Bounds: `[unix] max_connections` in total and `max_connections_per_uid` per peer uid, counted
//! before authentication; a peer over a cap gets one JSON-RPC error line (lines) or a `503`
//! with the JSON-RPC error as body (HTTP) and is closed, audited as `connection.refused`; at
//! most [`MAX_REFUSALS`] such answers are written at once, each within [`REFUSAL_TIMEOUT`]
//! (beyond, a refused connection is closed at once, unanswered). A peer no rule names is
//! refused (lines: one `-32040` line, then closed; HTTP: each request a 403 with a JSON-RPC
//! error body, as on TCP), audited as `auth.failure`. HTTP requests are bounded as on TCP (header-read deadline, body size).
//!
//! Does not parse MCP (the session engine and the HTTP service do). Trusts the kernel's peer
//! credentials and the policy; nothing a peer sends.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpd_policy::{UnixGroup, UnixProtocol, UnixSettings};
use serde_json::{json, Map};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

use crate::auditing::Audit;
use crate::auth::peercred::PeerCredentials;
use crate::auth::{Authenticator, Credentials, Origin};
use crate::transport::http::{HttpConfig, Listen, UnixHttp, UnixPeer, UNIX_HTTP_TRANSPORT};
use crate::transport::stdio;
use crate::worker::supervisor::Supervisor;

/// The transport's name in the audit log (lines; over HTTP it is [`UNIX_HTTP_TRANSPORT`]).
pub const TRANSPORT: &str = "unix";
/// JSON-RPC error code of a peer whose uid/gid name no client.
pub const PEER_REFUSED: i64 = -32040;
/// JSON-RPC error code of a connection over `[unix] max_connections` or
/// `max_connections_per_uid`.
pub const TOO_MANY_CONNECTIONS: i64 = -32041;
/// The `FileDescriptorName=` mcpd looks for when systemd passes several sockets.
pub const SYSTEMD_FD_NAME: &str = "mcpd-unix";
/// How long open connections may take to close at shutdown beyond the stop grace
/// (`server.stop_grace_secs`) their in-flight calls get.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// Most refusals (connections over a cap) answered at once; beyond, closed unanswered.
pub const MAX_REFUSALS: usize = 64;
/// Time a refusal has to be written (and, over HTTP, for the peer's request to be drained).
pub const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a refused HTTP peer's request read (and dropped) before the close, so that
/// the close does not reset the connection before the peer read the answer.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// A listening socket, bound or inherited, not yet served; or the one connection systemd
/// accepted for this process (`Accept=yes`).
#[derive(Debug)]
pub struct Bound {
    socket: Socket,
    /// The path mcpd bound (removed at shutdown); `None` for a socket from systemd.
    owned_path: Option<PathBuf>,
    /// Where peers connect, for the log.
    describe: String,
}

#[derive(Debug)]
enum Socket {
    Listening(StdListener),
    Accepted(std::os::unix::net::UnixStream),
}

impl Bound {
    /// Where peers connect (the socket's path), for the log.
    pub fn describe(&self) -> &str {
        &self.describe
    }
}

/// Why the directory holding a socket path is unsafe, or `Ok` with a description. Every
/// ancestor of the (canonical) parent directory is checked: none may be writable by others
/// without the sticky bit, and each must belong to root or to this process's uid.
pub fn check_dir(path: &Path) -> Result<String, String> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| format!("{}: no parent directory", path.display()))?;
    let canon = std::fs::canonicalize(parent)
        .map_err(|e| format!("directory {}: {e}", parent.display()))?;
    let me = rustix::process::geteuid().as_raw();
    for dir in canon.ancestors() {
        let md = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !md.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        let mode = md.permissions().mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(format!(
                "{} is writable by every user without the sticky bit (mode {:04o}): another user could replace the socket",
                dir.display(),
                mode & 0o7777
            ));
        }
        if md.uid() != 0 && md.uid() != me {
            return Err(format!(
                "{} belongs to uid {}, neither root nor mcpd's uid {me}: that user could replace the socket",
                dir.display(),
                md.uid()
            ));
        }
    }
    Ok(format!("directory {} is safe", canon.display()))
}

/// The gid of `[unix] group`: a number, or a name looked up in `/etc/group`.
fn resolve_group(g: &UnixGroup) -> std::io::Result<u32> {
    match g {
        UnixGroup::Gid(n) => Ok(*n),
        UnixGroup::Name(name) => {
            let text = std::fs::read_to_string("/etc/group")?;
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    let n = f.next()?;
                    let gid = f.nth(1)?.parse::<u32>().ok()?;
                    (n == name).then_some(gid)
                })
                .next()
                .ok_or_else(|| {
                    std::io::Error::other(format!("unix.group: no group '{name}' in /etc/group"))
                })
        }
    }
}

fn err(path: &Path, msg: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("unix listener {}: {msg}", path.display()))
}

/// [`bind_path`] for another listener of the broker (the metrics socket): the same directory
/// checks, stale-socket rule and owner-only creation. Called once the runtime runs (before any
/// transport): a file another thread created during the short umask 0177 window would only be
/// more restricted than asked, never less.
pub(crate) fn bind_socket(path: &Path, s: &UnixSettings) -> std::io::Result<StdListener> {
    bind_path(path, s)
}

/// Bind `path` with the configured mode and group (see the module documentation).
fn bind_path(path: &Path, s: &UnixSettings) -> std::io::Result<StdListener> {
    check_dir(path).map_err(|m| err(path, m))?;
    let gid = s.group.as_ref().map(resolve_group).transpose()?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(path, e)),
        Ok(md) if !md.file_type().is_socket() => {
            return Err(err(
                path,
                "exists and is not a socket: refusing to replace it",
            ))
        }
        Ok(md) => {
            let me = rustix::process::geteuid().as_raw();
            if md.uid() != me {
                return Err(err(
                    path,
                    format!(
                        "a socket of uid {} (not mcpd's uid {me}) exists: refusing to replace it",
                        md.uid()
                    ),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(path, "another server is listening on it"));
            }
            std::fs::remove_file(path).map_err(|e| err(path, format!("stale socket: {e}")))?;
            tracing::info!("unix listener {}: removed a stale socket", path.display());
        }
    }
    // Owner-only from the moment the socket exists; the process is still single-threaded here
    // (the runtime is not built yet), so the umask change affects nothing else.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = StdListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.map_err(|e| err(path, e))?;
    let cwd = rustix::fs::CWD;
    if let Some(g) = gid {
        rustix::fs::chownat(
            cwd,
            path,
            None,
            Some(rustix::fs::Gid::from_raw(g)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| err(path, format!("chown to gid {g}: {e}")))?;
    }
    rustix::fs::chmodat(
        cwd,
        path,
        rustix::fs::Mode::from_raw_mode(s.mode),
        rustix::fs::AtFlags::empty(),
    )
    .map_err(|e| err(path, format!("chmod {:04o}: {e}", s.mode)))?;
    Ok(listener)
}

/// The Unix socket systemd passed (named [`SYSTEMD_FD_NAME`], or the only one): a listening
/// stream socket (`Accept=no`) or one accepted connection (`Accept=yes`).
fn from_systemd(fds: Option<&crate::systemd::ListenFds>) -> std::io::Result<Socket> {
    let e = |m: String| std::io::Error::other(format!("unix listener from systemd: {m}"));
    let mut named = fds.map(|f| f.named(SYSTEMD_FD_NAME)).unwrap_or_default();
    if named.len() != 1 {
        return Err(e(format!(
            "{} descriptors named {SYSTEMD_FD_NAME} (FileDescriptorName=); exactly one is served",
            named.len()
        )));
    }
    let fd: OwnedFd = named.remove(0);
    use rustix::net::sockopt;
    let stream = sockopt::socket_type(fd.as_fd()).ok() == Some(rustix::net::SocketType::STREAM);
    let listening = sockopt::socket_acceptconn(fd.as_fd()).unwrap_or(false);
    let unix = rustix::net::getsockname(fd.as_fd())
        .ok()
        .is_some_and(|a| a.address_family() == rustix::net::AddressFamily::UNIX);
    if !(stream && unix) {
        return Err(e(
            "the descriptor is not a Unix stream socket (ListenStream=/path)".into(),
        ));
    }
    Ok(if listening {
        Socket::Listening(StdListener::from(fd))
    } else {
        Socket::Accepted(std::os::unix::net::UnixStream::from(fd))
    })
}

/// The configured listener, bound (or taken from systemd) before the runtime starts; `None`
/// when no Unix listener is configured.
pub fn open(
    s: &UnixSettings,
    fds: Option<&crate::systemd::ListenFds>,
) -> std::io::Result<Option<Bound>> {
    let bound = if s.systemd {
        let socket = from_systemd(fds)?;
        let (at, how) = match &socket {
            Socket::Listening(l) => (l.local_addr().ok(), "from systemd"),
            Socket::Accepted(c) => (c.local_addr().ok(), "one connection accepted by systemd"),
        };
        let at = at
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "?".into());
        Bound {
            socket,
            owned_path: None,
            describe: format!("{at} ({how})"),
        }
    } else if let Some(path) = &s.path {
        Bound {
            socket: Socket::Listening(bind_path(path, s)?),
            owned_path: Some(path.clone()),
            describe: path.display().to_string(),
        }
    } else {
        return Ok(None);
    };
    match &bound.socket {
        Socket::Listening(l) => l.set_nonblocking(true)?,
        Socket::Accepted(c) => c.set_nonblocking(true)?,
    }
    Ok(Some(bound))
}

/// A serving Unix listener (or connection).
#[derive(Debug)]
pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Turns true when the serving task ends by itself (the one accepted connection closed).
    done: watch::Receiver<bool>,
}

impl Running {
    /// Completes when serving ended by itself: the one connection systemd accepted was
    /// closed. A listener serves until [`Running::stop`].
    pub async fn ended(&self) {
        let mut done = self.done.clone();
        if done.wait_for(|d| *d).await.is_err() {
            // The serving task is gone without saying so (it panicked): that is an end too.
            tracing::error!("unix listener: the serving task ended unexpectedly");
        }
    }

    /// Stop accepting, end every connection's session (in-flight calls drained), remove the
    /// socket file mcpd bound.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Counts open connections per peer uid; a slot is given back when its guard drops.
#[derive(Debug, Default)]
struct PerUid(Mutex<HashMap<u32, u64>>);

struct UidSlot(Arc<PerUid>, u32);

impl Drop for UidSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0 .0.lock() {
            if let Some(n) = m.get_mut(&self.1) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.1);
                }
            }
        }
    }
}

impl PerUid {
    fn take(self: &Arc<Self>, uid: u32, max: u64) -> Option<UidSlot> {
        let mut m = self.0.lock().ok()?;
        let n = m.entry(uid).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UidSlot(self.clone(), uid))
    }
}

/// The Streamable HTTP service's settings for the Unix listener at `describe`: sessions as
/// `[http]` says (idle time, table size, extra Host values), no TLS, no listener client.
fn http_config(describe: &str, policy: &mcpd_policy::Policy) -> HttpConfig {
    let (h, u) = (policy.http(), policy.unix());
    HttpConfig {
        listen: Listen::Unix(describe.to_string()),
        client: None,
        extra_hosts: h.allowed_hosts.clone(),
        idle: Duration::from_secs(h.session_idle_secs),
        max_sessions: usize::try_from(h.max_sessions).unwrap_or(64),
        tls: None,
        max_connections: usize::try_from(u.max_connections).unwrap_or(64),
        max_connections_per_ip: usize::try_from(u.max_connections_per_uid).unwrap_or(8),
        // A Unix peer is who SO_PEERCRED says: no header names it.
        trusted_proxies: Vec::new(),
        forwarded_header: mcpd_policy::ForwardedHeader::XForwardedFor,
    }
}

/// Serve `bound` on the runtime until [`Running::stop`], in the protocol of `[unix] protocol`.
pub fn start(
    bound: Bound,
    cell: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
) -> std::io::Result<Running> {
    let protocol = cell.get().unix().protocol;
    let http = (protocol == UnixProtocol::Http).then(|| {
        UnixHttp::new(
            http_config(&bound.describe, &cell.get()),
            cell.clone(),
            supervisor.clone(),
            audit.clone(),
        )
    });
    eprintln!(
        "mcpd: listening on unix:{} ({})",
        bound.describe,
        describe_protocol(protocol)
    );
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, done) = watch::channel(false);
    let task = match bound.socket {
        Socket::Listening(l) => {
            let served = accept_loop(
                tokio::net::UnixListener::from_std(l)?,
                bound.owned_path,
                http,
                cell,
                supervisor,
                audit,
                stop_rx,
            );
            tokio::spawn(async move {
                let r = served.await;
                let _ = done_tx.send(true);
                r
            })
        }
        Socket::Accepted(c) => {
            let stream = tokio::net::UnixStream::from_std(c)?;
            tokio::spawn(async move {
                accepted(stream, http, cell, supervisor, audit, stop_rx).await;
                let _ = done_tx.send(true);
                Ok(())
            })
        }
    };
    Ok(Running { stop, task, done })
}

/// The one connection systemd accepted (`Accept=yes`, a broker per connection): served like
/// an accepted one, without the listener's connection caps (systemd's `MaxConnections=` and
/// `MaxConnectionsPerSource=` count them).
async fn accepted(
    stream: tokio::net::UnixStream,
    http: Option<UnixHttp>,
    cell: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
    stop: watch::Receiver<bool>,
) {
    let Some(peer) = peer_of(&stream) else {
        return;
    };
    match http {
        Some(h) => {
            let mut stopped = stop.clone();
            tokio::select! {
                () = h.connection(stream, peer) => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
            h.shutdown().await;
        }
        None => connection(stream, peer, cell, supervisor, audit, stop).await,
    }
}

/// The peer's credentials (`SO_PEERCRED`, read by the kernel at connect); `None` (logged) if
/// they cannot be read: the connection is then closed unserved.
fn peer_of(stream: &tokio::net::UnixStream) -> Option<UnixPeer> {
    match rustix::net::sockopt::socket_peercred(stream.as_fd()) {
        Ok(c) => Some(UnixPeer {
            uid: c.uid.as_raw(),
            gid: c.gid.as_raw(),
            pid: c.pid.as_raw_nonzero().get(),
        }),
        Err(e) => {
            tracing::warn!("unix listener: SO_PEERCRED: {e}; connection closed");
            None
        }
    }
}

fn describe_protocol(p: UnixProtocol) -> String {
    match p {
        UnixProtocol::Http => format!(
            "protocol http: Streamable HTTP on {}",
            crate::transport::http::ENDPOINT
        ),
        UnixProtocol::Lines => "protocol lines: newline-delimited JSON-RPC".into(),
    }
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    owned_path: Option<PathBuf>,
    http: Option<UnixHttp>,
    cell: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let settings = cell.get().unix().clone();
    let total = Arc::new(Semaphore::new(
        usize::try_from(settings.max_connections).unwrap_or(64),
    ));
    let per_uid = Arc::new(PerUid::default());
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let protocol = if http.is_some() {
        UnixProtocol::Http
    } else {
        UnixProtocol::Lines
    };
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        while conns.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays.
                tracing::warn!("unix listener: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(peer) = peer_of(&stream) else {
            continue;
        };
        let slots = match (
            total.clone().try_acquire_owned(),
            per_uid.take(peer.uid, settings.max_connections_per_uid),
        ) {
            (Ok(t), Some(u)) => Ok((t, u)),
            (Err(_), _) => Err("max_connections"),
            (Ok(_), None) => Err("max_connections_per_uid"),
        };
        let slots = match slots {
            Ok(s) => s,
            Err(which) => {
                let Ok(answering) = refusals.clone().try_acquire_owned() else {
                    tracing::debug!(peer = %peer.describe(), "unix connection over unix.{which} closed unanswered: {MAX_REFUSALS} refusals in progress");
                    continue;
                };
                let audit = audit.clone();
                conns.spawn(async move {
                    let _answering = answering;
                    let message = format!("too many connections (unix.{which})");
                    let refusal = Refusal {
                        event: "connection.refused",
                        code: TOO_MANY_CONNECTIONS,
                        message: &message,
                    };
                    refuse(stream, &audit, &peer, protocol, &refusal).await;
                });
                continue;
            }
        };
        if let Some(h) = &http {
            let served = h.connection(stream, peer);
            conns.spawn(async move {
                let _slots = slots;
                served.await;
            });
            continue;
        }
        let ctx = (cell.clone(), supervisor.clone(), audit.clone());
        let stop_rx = stop.clone();
        conns.spawn(async move {
            let (cell, supervisor, audit) = ctx;
            let _slots = slots;
            connection(stream, peer, cell, supervisor, audit, stop_rx).await;
        });
    }
    drop(listener);
    if let Some(p) = &owned_path {
        let _ = std::fs::remove_file(p);
    }
    if let Some(h) = http {
        h.shutdown().await;
    }
    let wait = SHUTDOWN_WAIT + Duration::from_secs(cell.get().stop_grace_secs);
    let _ = tokio::time::timeout(wait, async { while conns.join_next().await.is_some() {} }).await;
    Ok(())
}

/// Why a connection is refused before it is served.
struct Refusal<'a> {
    /// The audit event (`connection.refused`, `auth.failure`).
    event: &'static str,
    /// The JSON-RPC error code.
    code: i64,
    /// The error message (to the peer and in the audit record).
    message: &'a str,
}

/// What a refused peer is sent: one JSON-RPC error line, or over HTTP a `503` whose body is
/// the JSON-RPC error (`Connection: close`).
fn refusal_bytes(protocol: UnixProtocol, code: i64, message: &str) -> Vec<u8> {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}})
        .to_string();
    match protocol {
        UnixProtocol::Lines => format!("{body}\n").into_bytes(),
        UnixProtocol::Http => format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    }
}

/// An audit record, the refusal sent to the peer (within [`REFUSAL_TIMEOUT`]), and the
/// connection closed.
async fn refuse(
    mut stream: tokio::net::UnixStream,
    audit: &Audit,
    peer: &UnixPeer,
    protocol: UnixProtocol,
    r: &Refusal<'_>,
) {
    let (event, message) = (r.event, r.message);
    tracing::warn!(peer = %peer.describe(), "unix connection refused: {message}");
    let mut f = Map::new();
    f.insert(
        "transport".into(),
        json!(match protocol {
            UnixProtocol::Lines => TRANSPORT,
            UnixProtocol::Http => UNIX_HTTP_TRANSPORT,
        }),
    );
    f.insert("peer".into(), json!(peer.describe()));
    f.insert("uid".into(), json!(peer.uid));
    f.insert("gid".into(), json!(peer.gid));
    f.insert("pid".into(), json!(peer.pid));
    f.insert("reason".into(), json!(message));
    if let Err(e) = audit.record(event, f).await {
        tracing::error!("audit log: {event} not recorded: {e}");
    }
    let answer = refusal_bytes(protocol, r.code, message);
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
        if protocol == UnixProtocol::Http {
            // The request the peer sent (or is sending) is read and dropped, bounded, so the
            // close does not reset the connection before the peer has read the answer.
            let mut buf = [0u8; 4096];
            let mut left = REFUSAL_DRAIN_BYTES;
            while left > 0 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        }
    })
    .await;
}

async fn connection(
    stream: tokio::net::UnixStream,
    peer: UnixPeer,
    cell: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
    mut stop: watch::Receiver<bool>,
) {
    let origin = Origin {
        transport: TRANSPORT,
        peer: peer.describe(),
    };
    let creds =
        Credentials::new(TRANSPORT, &origin.peer).with_unix_peer(peer.uid, peer.gid, peer.pid);
    let principal = match PeerCredentials.authenticate(&cell.get(), &creds) {
        Ok(p) => p,
        Err(e) => {
            let message = format!("Unauthorized: {e}");
            let refusal = Refusal {
                event: "auth.failure",
                code: PEER_REFUSED,
                message: &message,
            };
            refuse(stream, &audit, &peer, UnixProtocol::Lines, &refusal).await;
            return;
        }
    };
    let (r, w) = stream.into_split();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) =
        stdio::serve_lines(cell, supervisor, audit, r, w, principal, &origin, stopped).await
    {
        tracing::error!(peer = %origin.peer, "unix session: {e}");
    }
}

/// `mcpd doctor`: the listener's settings (protocol included) and its directory's safety.
pub fn doctor_report(s: &UnixSettings) -> String {
    let protocol = describe_protocol(s.protocol);
    if s.systemd {
        return format!(
            "unix listener: socket from systemd (mode and group are the socket unit's), {protocol}"
        );
    }
    let Some(p) = &s.path else {
        return "unix listener: off".into();
    };
    match check_dir(p) {
        Ok(d) => format!(
            "unix listener: {} mode {:04o}, {protocol}: {d}",
            p.display(),
            s.mode
        ),
        Err(m) => format!("unix listener: {}: REFUSED at start: {m}", p.display()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unsafe_directories_and_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_dir(&open.join("s.sock")).unwrap_err();
        assert!(e.contains("without the sticky bit"), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_dir(&open.join("s.sock")).is_ok());
        let s = UnixSettings {
            path: Some(d.path().join("f")),
            ..UnixSettings::default()
        };
        std::fs::write(d.path().join("f"), "x").unwrap();
        let e = bind_path(&d.path().join("f"), &s).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        // A live socket is not replaced; a stale one is.
        let sock = d.path().join("s");
        let live = StdListener::bind(&sock).unwrap();
        let e = bind_path(&sock, &s).unwrap_err();
        assert!(e.to_string().contains("another server"), "{e}");
        drop(live);
        // A process another test forks at this moment holds a copy of the listener until its
        // exec (close-on-exec closes it only then), and a connect to it still succeeds: retry
        // for a while before calling the stale socket live.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let l = loop {
            match bind_path(&sock, &s) {
                Err(e)
                    if e.to_string().contains("another server")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                r => break r.unwrap(),
            }
        };
        let md = std::fs::symlink_metadata(&sock).unwrap();
        assert!(md.file_type().is_socket());
        assert_eq!(md.permissions().mode() & 0o7777, 0o660);
        drop(l);
    }

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(resolve_group(&UnixGroup::Gid(7)).unwrap(), 7);
        assert_eq!(resolve_group(&UnixGroup::Name("root".into())).unwrap(), 0);
        assert!(resolve_group(&UnixGroup::Name("no-such-group-x".into())).is_err());
    }
}
