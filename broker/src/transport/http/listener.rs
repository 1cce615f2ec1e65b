//! The accept loop of the HTTP listener: a connection cap (in total and per source address,
//! kept below the descriptor limit so the broker keeps descriptors for its workers, audit log
//! and reloads), the TLS handshake under a deadline (its failures audited as `auth.failure`),
//! then HTTP/1.1 by hyper with a header-read deadline that also bounds an idle keep-alive
//! connection, and a graceful shutdown. Connections may be upgraded (WebSocket, `GET
//! /mcp/ws`): an upgraded connection keeps its place under the caps ([`ConnHold`]) until its
//! socket ends, and is stopped by its session's shutdown, not by the HTTP one.
//! [`Connections`] is the same HTTP/1.1 and shutdown for connections accepted elsewhere (the
//! Unix-socket listener, which counts its own).
//!
//! A peer over a cap is closed at once, before a byte is read. Every request of a connection
//! carries the kernel's view of the peer ([`Peer`]: its address, or a Unix peer's
//! credentials) and, with mTLS, the verified client certificate ([`PeerCertificate`]); nothing
//! else the peer says is trusted here.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use super::tls::{self, PeerCertificate};
use super::{App, Peer, RouteResponse, Routes};

/// Time a peer has to send a whole request head, counted from when the connection waits for
/// one: after the handshake, and after each response (so also the idle time of a keep-alive
/// connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a peer has to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors kept for the broker's own work (workers and their pipes, the audit log, policy
/// reloads, TLS files) below `RLIMIT_NOFILE`: the connection cap never reaches into them.
pub const RESERVED_DESCRIPTORS: u64 = 256;
/// Pause after a failed accept (e.g. `EMFILE`), so a full table does not spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a shutdown waits for open connections, before and after sessions end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The `FileDescriptorName=` of the TCP listening sockets systemd passes (`--http-systemd`).
pub const SYSTEMD_FD_NAME: &str = "mcpd-http";

/// The TCP listening sockets systemd passed for `--http-systemd`, and the address the
/// policy's rules see (`[http] listen`: loopback unless authentication is configured, and
/// the Host header gate).
#[derive(Debug)]
pub struct Passed {
    /// The sockets (blocking; the caller makes them non-blocking on the runtime).
    pub listeners: Vec<std::net::TcpListener>,
    /// The first socket's address.
    pub addr: SocketAddr,
    /// The two sockets are `127.0.0.1:PORT` and `[::1]:PORT` (as `localhost:PORT`).
    pub localhost: bool,
}

/// Take the sockets named [`SYSTEMD_FD_NAME`] (or the only one passed): each must be a
/// listening TCP stream socket; one address, or localhost's two on one port.
pub fn passed_listeners(fds: &crate::systemd::ListenFds) -> std::io::Result<Passed> {
    use rustix::net::sockopt;
    use std::os::fd::AsFd;
    let e = |m: String| std::io::Error::other(format!("HTTP listener from systemd: {m}"));
    let mut listeners = Vec::new();
    for fd in fds.named(SYSTEMD_FD_NAME) {
        let stream = sockopt::socket_type(fd.as_fd()).ok() == Some(rustix::net::SocketType::STREAM);
        let listening = sockopt::socket_acceptconn(fd.as_fd()).unwrap_or(false);
        let l = std::net::TcpListener::from(fd);
        match l.local_addr() {
            Ok(_) if stream && listening => listeners.push(l),
            _ => return Err(e(
                "a descriptor is not a listening TCP socket (ListenStream=ADDR:PORT, Accept=no)"
                    .into(),
            )),
        }
    }
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let Some(&addr) = addrs.first() else {
        return Err(e(format!(
            "no descriptor named {SYSTEMD_FD_NAME} (FileDescriptorName=) was passed"
        )));
    };
    let localhost = addrs.len() == 2
        && addrs
            .iter()
            .all(|a| a.port() == addr.port() && a.ip().is_loopback())
        && addrs.iter().any(SocketAddr::is_ipv4)
        && addrs.iter().any(SocketAddr::is_ipv6);
    if addrs.len() > 1 && !localhost {
        return Err(e(format!(
            "{} sockets ({}): mcpd serves one address, or 127.0.0.1 and [::1] on one port",
            addrs.len(),
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let addr = addrs
        .iter()
        .copied()
        .find(SocketAddr::is_ipv4)
        .unwrap_or(addr);
    Ok(Passed {
        listeners,
        addr,
        localhost,
    })
}

/// The cap on open connections: `max_connections` (policy) below the descriptor limit.
pub fn effective_cap(configured: usize) -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let room =
        usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS).max(16)).unwrap_or(usize::MAX);
    configured.min(room)
}

/// Open connections (or a trusted proxy's requests in flight), in total and per source
/// address.
#[derive(Debug)]
pub(super) struct Counter {
    cap: usize,
    per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection (or relayed request); dropping it frees its place.
#[derive(Debug)]
pub(super) struct Slot {
    counter: Arc<Counter>,
    ip: IpAddr,
}

impl Counter {
    pub(super) fn new(cap: usize, per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            per_ip,
            open: Mutex::default(),
        })
    }

    /// A place for `ip`, if the total and its own count are below the caps (`per_source`:
    /// false for a trusted proxy, whose connections carry many clients: only the total).
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr, per_source: bool) -> Option<Slot> {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_ip) = &mut *g;
        let here = by_ip.get(&ip).copied().unwrap_or(0);
        if *total >= self.cap || (per_source && here >= self.per_ip) {
            return None;
        }
        *total += 1;
        by_ip.insert(ip, here + 1);
        Some(Slot {
            counter: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.counter.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_ip) = &mut *g;
        *total = total.saturating_sub(1);
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Accept connections until `shutdown` resolves, then let open ones finish (bounded).
pub(super) async fn accept_loop(
    listeners: Vec<tokio::net::TcpListener>,
    app: Arc<App>,
    routes: Routes,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    end_sessions: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let cap = effective_cap(app.cfg.max_connections);
    if cap < app.cfg.max_connections {
        tracing::warn!(
            "http: max_connections {} lowered to {cap}: RLIMIT_NOFILE leaves room for that many, keeping {RESERVED_DESCRIPTORS} for the broker",
            app.cfg.max_connections
        );
    }
    let counter = Counter::new(cap, app.cfg.max_connections_per_ip.min(cap));
    let graceful = Graceful::new();
    let http = http1();
    // The first address is accepted here; any other (`localhost:PORT`: ::1 beside 127.0.0.1)
    // by a task of its own that hands its connections over, so one cap and one session table
    // serve them all.
    let mut listeners = listeners.into_iter();
    let first = listeners
        .next()
        .ok_or_else(|| std::io::Error::other("no listener"))?;
    let (more_tx, mut more) = tokio::sync::mpsc::channel(64);
    let mut forwarders = tokio::task::JoinSet::new();
    for l in listeners {
        let tx = more_tx.clone();
        forwarders.spawn(async move {
            loop {
                let r = l.accept().await;
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(more_tx);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = first.accept() => r,
            Some(r) = more.recv() => r,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("http accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let proxy = super::forwarded::is_trusted(&app.cfg.trusted_proxies, peer.ip());
        let Some(slot) = counter.admit(peer.ip(), !proxy) else {
            tracing::debug!(%peer, "http connection refused: connection cap reached");
            drop(tcp);
            continue;
        };
        // Without it, SSE replies written in pieces stall ~40 ms on delayed ACKs.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let app = app.clone();
        let routes = routes.clone();
        let http = http.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // Held by the connection, and by its WebSocket if it is upgraded to one.
            let hold = ConnHold(Arc::new(slot));
            let Some(tls) = app.cfg.tls.clone() else {
                let conn = http
                    .serve_connection(
                        TokioIo::new(tcp),
                        service(routes, Peer::tcp(peer), None, Some(hold)),
                    )
                    .with_upgrades();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, "http connection: {e}");
                }
                return;
            };
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(tcp)).await
                {
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                    Ok(Err(e)) => {
                        handshake_failed(&app, tls.mtls(), peer, &e).await;
                        return;
                    }
                    Ok(Ok(s)) => s,
                };
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| PeerCertificate(Arc::new(c.to_vec())));
            let conn = http
                .serve_connection(
                    TokioIo::new(stream),
                    service(routes, Peer::tcp(peer), cert, Some(hold)),
                )
                .with_upgrades();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, "https connection: {e}");
            }
        });
    }
    drop(first);
    forwarders.abort_all();
    drain(graceful, end_sessions).await;
    Ok(())
}

/// HTTP/1.1 as every listener serves it: keep-alive, and the header-read deadline
/// ([`HEADER_READ_TIMEOUT`]) that also ends an idle keep-alive connection.
fn http1() -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    http
}

/// The shutdown of open connections: each is told to finish (hyper's graceful shutdown,
/// bounded by [`SHUTDOWN_GRACE`]); open streams (SSE) end with their sessions, so if
/// connections remain, the sessions are ended first, then they get the grace again.
async fn drain(graceful: Graceful, end_sessions: impl std::future::Future<Output = ()>) {
    let done = graceful.shutdown();
    tokio::pin!(done);
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut done)
        .await
        .is_err()
    {
        end_sessions.await;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, done).await;
    } else {
        end_sessions.await;
    }
}

/// HTTP/1.1 on connections accepted elsewhere (the Unix-socket listener: it counts them,
/// reads their peer credentials and refuses those over its caps), with the same deadlines and
/// graceful shutdown as [`accept_loop`]'s.
pub(super) struct Connections {
    routes: Routes,
    http: hyper::server::conn::http1::Builder,
    graceful: Graceful,
}

impl Connections {
    pub(super) fn new(routes: Routes) -> Self {
        Self {
            routes,
            http: http1(),
            graceful: Graceful::new(),
        }
    }

    /// Serve one connection of `peer` (every request tagged with it) until it ends.
    pub(super) fn serve<S>(
        &self,
        io: S,
        peer: Peer,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let described = peer.describe().to_string();
        let conn = self
            .http
            .serve_connection(
                TokioIo::new(io),
                service(self.routes.clone(), peer, None, None),
            )
            .with_upgrades();
        let watched = self.graceful.watcher().watch(conn);
        async move {
            if let Err(e) = watched.await {
                tracing::debug!(peer = %described, "http connection: {e}");
            }
        }
    }

    /// Stop: [`drain`] the open connections, ending the sessions with `end_sessions`.
    pub(super) async fn shutdown(self, end_sessions: impl std::future::Future<Output = ()>) {
        drain(self.graceful, end_sessions).await;
    }
}

/// The graceful shutdown of HTTP/1.1 connections that may be upgraded (hyper-util's
/// `GracefulShutdown` does not take them): each connection watches a stop signal and is
/// told to finish when it comes; [`Graceful::shutdown`] waits until every watched
/// connection has ended (an upgraded one ends, as HTTP, at its upgrade).
struct Graceful {
    stop: tokio::sync::watch::Sender<bool>,
    live_tx: tokio::sync::mpsc::Sender<()>,
    live_rx: tokio::sync::mpsc::Receiver<()>,
}

/// One connection's view of [`Graceful`].
struct Watcher {
    stop: tokio::sync::watch::Receiver<bool>,
    _live: tokio::sync::mpsc::Sender<()>,
}

impl Graceful {
    fn new() -> Self {
        let (live_tx, live_rx) = tokio::sync::mpsc::channel(1);
        Self {
            stop: tokio::sync::watch::Sender::new(false),
            live_tx,
            live_rx,
        }
    }

    fn watcher(&self) -> Watcher {
        Watcher {
            stop: self.stop.subscribe(),
            _live: self.live_tx.clone(),
        }
    }

    /// Tell every connection to finish; resolves once all have ended.
    async fn shutdown(self) {
        let Self {
            stop,
            live_tx,
            mut live_rx,
        } = self;
        stop.send_replace(true);
        drop(live_tx);
        // `None` once every watcher (each holds a sender) is gone.
        let _ = live_rx.recv().await;
    }
}

type Upgradeable<I> = hyper::server::conn::http1::UpgradeableConnection<TokioIo<I>, ConnService>;

impl Watcher {
    /// Serve `conn` until it ends, telling it to finish (keep-alive off, the request in
    /// progress answered) once the stop signal comes.
    async fn watch<I>(mut self, conn: Upgradeable<I>) -> Result<(), hyper::Error>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = self.stop.wait_for(|s| *s) => {}
        }
        conn.as_mut().graceful_shutdown();
        conn.await
    }
}

/// Keeps an accepted connection's place under the listener's caps while alive: the
/// connection holds one, and a WebSocket its connection was upgraded to holds a clone (a
/// request extension) until the socket closes.
#[derive(Clone)]
pub(super) struct ConnHold(#[allow(dead_code)] Arc<Slot>);

/// The router for one connection's requests, each tagged with the peer, the verified
/// client certificate, and the connection's place under the caps.
#[derive(Clone)]
pub(super) struct ConnService {
    routes: Routes,
    peer: Peer,
    cert: Option<PeerCertificate>,
    hold: Option<ConnHold>,
}

fn service(
    routes: Routes,
    peer: Peer,
    cert: Option<PeerCertificate>,
    hold: Option<ConnHold>,
) -> ConnService {
    ConnService {
        routes,
        peer,
        cert,
        hold,
    }
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = RouteResponse;

    fn call(&self, mut req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        if let Some(c) = &self.cert {
            req.extensions_mut().insert(c.clone());
        }
        if let Some(h) = &self.hold {
            req.extensions_mut().insert(h.clone());
        }
        self.routes.call(req)
    }
}

/// A refused handshake: logged, and audited as `auth.failure` (peer, reason) when it is about
/// the client's certificate or mTLS is on; other failures (scanners, wrong protocol versions)
/// only logged.
async fn handshake_failed(app: &App, mtls: bool, peer: SocketAddr, e: &std::io::Error) {
    let reason = tls::handshake_reason(e);
    tracing::info!(%peer, "TLS handshake refused: {reason}");
    if !(mtls || tls::is_certificate_failure(e)) || !app.audit.enabled() {
        return;
    }
    let mut f = serde_json::Map::new();
    f.insert("principal".into(), json!(super::gate::UNAUTHENTICATED));
    f.insert("transport".into(), json!("http"));
    f.insert("method".into(), json!("mtls"));
    f.insert("stage".into(), json!("tls-handshake"));
    f.insert("peer".into(), json!(peer.to_string()));
    f.insert("reason".into(), json!(reason));
    if let Err(e) = app.audit.record("auth.failure", f).await {
        tracing::error!("audit: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_caps_in_total_and_per_address() {
        let c = Counter::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let s1 = c.admit(a, true);
        let s2 = c.admit(a, true);
        assert!(s1.is_some() && s2.is_some());
        assert!(c.admit(a, true).is_none(), "per address");
        let s3 = c.admit(b, true);
        assert!(s3.is_some());
        assert!(c.admit(b, true).is_none(), "in total");
        drop(s1);
        assert!(c.admit(b, true).is_some());
        assert!(effective_cap(usize::MAX) < usize::MAX);
        // A trusted proxy: past the per-address cap, never past the total.
        let p = Counter::new(3, 1);
        let held: Vec<_> = (0..3).map(|_| p.admit(a, false)).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(p.admit(a, false).is_none(), "in total");
    }
}
