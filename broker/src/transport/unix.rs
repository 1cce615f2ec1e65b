//! The Unix-socket transport: newline-delimited JSON-RPC (exactly the stdio protocol,
//! [`stdio::serve_lines`]) on a listening Unix stream socket, one session per connection, the
//! principal of each connection from the kernel's `SO_PEERCRED` through
//! [`PeerCredentials`] (the policy's `unix_uid` / `unix_gid` identity rules).
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
//! before authentication; a refused peer gets one JSON-RPC error line and is closed, audited.
//! Streamable HTTP over a Unix socket is not served here (yet).
//!
//! Trusts the kernel's peer credentials and the policy; nothing a peer sends.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpd_policy::{UnixGroup, UnixSettings};
use serde_json::{json, Map};
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Semaphore};

use crate::auditing::Audit;
use crate::auth::peercred::PeerCredentials;
use crate::auth::{Authenticator, Credentials, Origin};
use crate::transport::stdio;
use crate::worker::supervisor::Supervisor;

/// The transport's name in the audit log.
pub const TRANSPORT: &str = "unix";
/// JSON-RPC error code of a peer whose uid/gid name no client.
pub const PEER_REFUSED: i64 = -32040;
/// JSON-RPC error code of a connection over `[unix] max_connections` or
/// `max_connections_per_uid`.
pub const TOO_MANY_CONNECTIONS: i64 = -32041;
/// The `FileDescriptorName=` mcpd looks for when systemd passes several sockets.
pub const SYSTEMD_FD_NAME: &str = "mcpd-unix";
/// How long open connections may take to close at shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// A listening socket, bound or inherited, not yet served.
#[derive(Debug)]
pub struct Bound {
    listener: StdListener,
    /// The path mcpd bound (removed at shutdown); `None` for a socket from systemd.
    owned_path: Option<PathBuf>,
    /// Where peers connect, for the log.
    pub describe: String,
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

/// The listening socket systemd passed (`LISTEN_PID` must be this process; with several
/// descriptors, the one named [`SYSTEMD_FD_NAME`]). The variables are removed.
fn from_systemd() -> std::io::Result<StdListener> {
    let e = |m: String| std::io::Error::other(format!("unix listener from systemd: {m}"));
    let var = |k: &str| std::env::var(k).ok();
    let pid = var("LISTEN_PID").and_then(|v| v.parse::<u32>().ok());
    let fds = var("LISTEN_FDS").and_then(|v| v.parse::<i32>().ok());
    let names = var("LISTEN_FDNAMES").unwrap_or_default();
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    if pid != Some(std::process::id()) {
        return Err(e(format!(
            "LISTEN_PID is {pid:?}, not this process ({}): no socket was passed to mcpd",
            std::process::id()
        )));
    }
    let n = fds
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(|| e("LISTEN_FDS names no descriptor".into()))?;
    let index = if n == 1 {
        0
    } else {
        let found = names.split(':').position(|x| x == SYSTEMD_FD_NAME);
        i32::try_from(found.ok_or_else(|| {
            e(format!(
                "{n} descriptors and none named {SYSTEMD_FD_NAME} (FileDescriptorName=)"
            ))
        })?)
        .map_err(|_| e("descriptor index".into()))?
    };
    let fd: OwnedFd = crate::sys::take_inherited_fd(3 + index)
        .ok_or_else(|| e(format!("descriptor {} is not open", 3 + index)))?;
    use rustix::net::sockopt;
    let stream = sockopt::socket_type(fd.as_fd()).ok() == Some(rustix::net::SocketType::STREAM);
    let listening = sockopt::socket_acceptconn(fd.as_fd()).unwrap_or(false);
    let unix = rustix::net::getsockname(fd.as_fd())
        .ok()
        .is_some_and(|a| a.address_family() == rustix::net::AddressFamily::UNIX);
    if !(stream && listening && unix) {
        return Err(e(format!(
            "descriptor {} is not a listening Unix stream socket (ListenStream=/path)",
            3 + index
        )));
    }
    rustix::io::fcntl_setfd(fd.as_fd(), rustix::io::FdFlags::CLOEXEC)
        .map_err(|x| e(x.to_string()))?;
    Ok(StdListener::from(fd))
}

/// The configured listener, bound (or taken from systemd) before the runtime starts; `None`
/// when no Unix listener is configured.
pub fn open(s: &UnixSettings) -> std::io::Result<Option<Bound>> {
    let bound = if s.systemd {
        let l = from_systemd()?;
        let at = l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "?".into());
        Bound {
            listener: l,
            owned_path: None,
            describe: format!("{at} (from systemd)"),
        }
    } else if let Some(path) = &s.path {
        Bound {
            listener: bind_path(path, s)?,
            owned_path: Some(path.clone()),
            describe: path.display().to_string(),
        }
    } else {
        return Ok(None);
    };
    bound.listener.set_nonblocking(true)?;
    Ok(Some(bound))
}

/// A serving Unix listener.
#[derive(Debug)]
pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
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

/// Serve `bound` on the runtime until [`Running::stop`].
pub fn start(
    bound: Bound,
    cell: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
) -> std::io::Result<Running> {
    let listener = tokio::net::UnixListener::from_std(bound.listener)?;
    eprintln!("mcpd: listening on unix:{}", bound.describe);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(
        listener,
        bound.owned_path,
        cell,
        supervisor,
        audit,
        stop_rx,
    ));
    Ok(Running { stop, task })
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    owned_path: Option<PathBuf>,
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
        let cred = match rustix::net::sockopt::socket_peercred(stream.as_fd()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("unix listener: SO_PEERCRED: {e}; connection closed");
                continue;
            }
        };
        let peer = Peer {
            uid: cred.uid.as_raw(),
            gid: cred.gid.as_raw(),
            pid: cred.pid.as_raw_nonzero().get(),
        };
        let slots = match (
            total.clone().try_acquire_owned(),
            per_uid.take(peer.uid, settings.max_connections_per_uid),
        ) {
            (Ok(t), Some(u)) => Ok((t, u)),
            (Err(_), _) => Err("max_connections"),
            (Ok(_), None) => Err("max_connections_per_uid"),
        };
        let ctx = (cell.clone(), supervisor.clone(), audit.clone());
        let stop_rx = stop.clone();
        conns.spawn(async move {
            let (cell, supervisor, audit) = ctx;
            let _slots = match slots {
                Ok(s) => s,
                Err(which) => {
                    refuse(
                        stream,
                        &audit,
                        "connection.refused",
                        &peer,
                        TOO_MANY_CONNECTIONS,
                        &format!("too many connections (unix.{which})"),
                    )
                    .await;
                    return;
                }
            };
            connection(stream, peer, cell, supervisor, audit, stop_rx).await;
        });
    }
    drop(listener);
    if let Some(p) = &owned_path {
        let _ = std::fs::remove_file(p);
    }
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// The kernel's credentials of a connection.
#[derive(Debug, Clone, Copy)]
struct Peer {
    uid: u32,
    gid: u32,
    pid: i32,
}

impl Peer {
    fn describe(&self) -> String {
        format!("uid={} gid={} pid={}", self.uid, self.gid, self.pid)
    }
}

/// One error line to the peer, an audit record, and the connection closed.
async fn refuse(
    mut stream: tokio::net::UnixStream,
    audit: &Audit,
    event: &str,
    peer: &Peer,
    code: i64,
    message: &str,
) {
    tracing::warn!(peer = %peer.describe(), "unix connection refused: {message}");
    let mut f = Map::new();
    f.insert("transport".into(), json!(TRANSPORT));
    f.insert("peer".into(), json!(peer.describe()));
    f.insert("uid".into(), json!(peer.uid));
    f.insert("gid".into(), json!(peer.gid));
    f.insert("pid".into(), json!(peer.pid));
    f.insert("reason".into(), json!(message));
    if let Err(e) = audit.record(event, f).await {
        tracing::error!("audit log: {event} not recorded: {e}");
    }
    let mut line =
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}})
            .to_string();
    line.push('\n');
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn connection(
    stream: tokio::net::UnixStream,
    peer: Peer,
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
            refuse(
                stream,
                &audit,
                "auth.failure",
                &peer,
                PEER_REFUSED,
                &format!("Unauthorized: {e}"),
            )
            .await;
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

/// `mcpd doctor`: the listener's settings and its directory's safety.
pub fn doctor_report(s: &UnixSettings) -> String {
    if s.systemd {
        return "unix listener: socket from systemd (mode and group are the socket unit's)".into();
    }
    let Some(p) = &s.path else {
        return "unix listener: off".into();
    };
    match check_dir(p) {
        Ok(d) => format!("unix listener: {} mode {:04o}: {d}", p.display(), s.mode),
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
        let l = bind_path(&sock, &s).unwrap();
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
