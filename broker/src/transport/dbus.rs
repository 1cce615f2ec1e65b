//! The D-Bus transport (`--dbus system|session`, `[dbus]`): mcpd owns a well-known name
//! (`[dbus] name`, default `org.mcpd.Server1`) and serves the interface [`INTERFACE`] at
//! [`OBJECT_PATH`] (docs/dbus.md, packaging/dbus/org.mcpd.Server1.xml):
//! * `Call(s message) -> (s response)`: one JSON-RPC message of the caller; a request is
//!   answered with its response (calls run concurrently: each waits for its own response), a
//!   notification or a response with an empty string;
//! * signal `Message(s message)`, sent *unicast* to the caller's unique name: the session's
//!   notifications and server→client requests (sampling, roots, elicitation);
//! * `Reply(s message)`: the caller's answer (a JSON-RPC response) to such a request.
//!
//! The principal: for each caller unique name, once (a bus never reuses unique names), the bus
//! daemon's `GetConnectionCredentials` (uid, groups, pid, security label), mapped by
//! [`BusCredentials`] (`[clients.NAME.identity] unix_uid` / `unix_gid`); a caller no rule
//! maps is refused (`org.mcpd.Error.AccessDenied`, audited as `auth.failure`). Each caller has
//! one session and worker, opened by its first `initialize` (or stateless-era request: a
//! one-shot caller such as `busctl call` needs no handshake), ended when the bus reports the
//! unique name gone (`NameOwnerChanged`): in-flight calls are cancelled, the worker reaped,
//! `session.close` recorded.
//!
//! A request the caller cancels (`notifications/cancelled`) ends its `Call` with
//! `org.mcpd.Error.Failed` (MCP sends no response to a cancelled request).
//!
//! Bounds: `[dbus] max_message_bytes` (or `server.max_message_bytes`, if smaller) per
//! `Call`/`Reply` string (`org.mcpd.Error.TooLarge`;
//! the bus daemon's `max_message_size` bounds what is read at all), `[dbus] max_callers`
//! callers at once (`org.mcpd.Error.LimitsExceeded`), [`MAX_PENDING_PER_CALLER`] calls waiting
//! per caller; the session's outbox and limits as on every transport. Errors name no path.
//!
//! Trusts the bus daemon's credentials and message headers (the sender is set by the bus) and
//! the policy; nothing a caller sends.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use mcpd_policy::{DbusBus, DbusSettings};
use serde_json::{json, Map, Value};
use tokio::sync::{oneshot, watch};
use zbus::message::Header;
use zbus::names::BusName;
use zbus::Connection;

use crate::auditing::Audit;
use crate::auth::buscred::{BusCredentials, BusPeer, MAX_GROUPS};
use crate::auth::{Authenticator, Credentials, Origin, Principal};
use crate::mcp::jsonrpc::{self, Id, Incoming, INVALID_REQUEST};
use crate::mcp::protocol::{RpcError, INTERNAL_ERROR, RATE_LIMITED};
use crate::mcp::session::{OpenError, Session};
use crate::mcp::stateless::is_stateless;
use crate::transport::Outbox;
use crate::worker::supervisor::Supervisor;

/// The transport's name in the audit log.
pub const TRANSPORT: &str = "dbus";
/// The object served.
pub const OBJECT_PATH: &str = "/org/mcpd/Server1";
/// The interface served.
pub const INTERFACE: &str = "org.mcpd.Server1";
/// Calls of one caller waiting for their responses at once.
pub const MAX_PENDING_PER_CALLER: usize = 64;
/// How long connecting to the bus and owning the name may take at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long mcpd's own calls to the bus daemon (credentials, name owner) may take.
const BUS_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `Call` waits beyond the client's call timeout for its response.
const RESPONSE_SLACK: Duration = Duration::from_secs(10);

/// The errors callers get (D-Bus error names `org.mcpd.Error.*`); never a path.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.mcpd.Error")]
pub enum DbusError {
    /// A bus error.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No rule maps the caller to a client.
    AccessDenied(String),
    /// The message is longer than `[dbus] max_message_bytes`.
    TooLarge(String),
    /// Too many callers, or too many calls of this caller waiting.
    LimitsExceeded(String),
    /// The call is not one this method takes.
    InvalidArgs(String),
    /// The server could not answer (it is stopping, the audit log failed).
    Failed(String),
}

/// Lock a map whose every change is one insert or remove: a poisoned lock is taken over.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One caller unique name: its principal (established once), its session once it sent
/// `initialize`, the calls waiting for their responses.
struct Caller {
    principal: Principal,
    origin: Origin,
    session: tokio::sync::Mutex<Option<Session>>,
    /// The caller left the bus: no more sessions.
    gone: std::sync::atomic::AtomicBool,
    /// `None` sent: the caller cancelled the request (`notifications/cancelled`): no response.
    pending: Mutex<HashMap<Id, oneshot::Sender<Option<Value>>>>,
    /// Calls whose message had no usable id (their error response comes with a null id).
    unkeyed: Mutex<VecDeque<oneshot::Sender<Option<Value>>>>,
}

struct Shared {
    cell: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
    callers: Mutex<HashMap<String, Arc<Caller>>>,
    /// Credential look-ups in progress (counted against `max_callers`).
    opening: std::sync::atomic::AtomicUsize,
    stopping: std::sync::atomic::AtomicBool,
}

/// The object at [`OBJECT_PATH`].
struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dbus::Server")
    }
}

#[zbus::interface(name = "org.mcpd.Server1")]
impl Server {
    /// One JSON-RPC message; a request's response, or "" for a notification or a response.
    async fn call(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        message: String,
    ) -> Result<String, DbusError> {
        let sender = sender(&header)?;
        self.shared.call(conn, &sender, message).await
    }

    /// The caller's answer (a JSON-RPC response) to a request mcpd sent it in a `Message`.
    async fn reply(
        &self,
        #[zbus(header)] header: Header<'_>,
        message: String,
    ) -> Result<(), DbusError> {
        let sender = sender(&header)?;
        self.shared.reply(&sender, message).await
    }

    /// A notification or a server→client request for one caller (sent to its unique name).
    #[zbus(signal)]
    async fn message(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        message: &str,
    ) -> zbus::Result<()>;
}

fn sender(header: &Header<'_>) -> Result<String, DbusError> {
    header
        .sender()
        .map(ToString::to_string)
        .ok_or_else(|| DbusError::AccessDenied("the message has no sender".into()))
}

fn too_large(len: usize, max: usize) -> DbusError {
    DbusError::TooLarge(format!(
        "the message has {len} bytes; the limit is {max} bytes ([dbus] max_message_bytes)"
    ))
}

impl Shared {
    fn settings(&self) -> DbusSettings {
        self.cell.get().dbus().clone()
    }

    /// `[dbus] max_message_bytes`, or `server.max_message_bytes` if that is smaller.
    fn check_size(&self, message: &str) -> Result<(), DbusError> {
        let policy = self.cell.get();
        let limit = policy
            .dbus()
            .max_message_bytes
            .min(policy.max_message_bytes);
        let max = usize::try_from(limit).unwrap_or(usize::MAX);
        if message.len() > max {
            tracing::warn!(
                "dbus: a message of {} bytes refused (limit {max})",
                message.len()
            );
            return Err(too_large(message.len(), max));
        }
        Ok(())
    }

    /// The caller of `name`: known, or authenticated now (credentials from the bus).
    async fn caller(&self, conn: &Connection, name: &str) -> Result<Arc<Caller>, DbusError> {
        use std::sync::atomic::Ordering;
        if let Some(c) = lock(&self.callers).get(name) {
            return Ok(c.clone());
        }
        if self.stopping.load(Ordering::Relaxed) {
            return Err(DbusError::Failed("mcpd is stopping".into()));
        }
        let max = usize::try_from(self.settings().max_callers).unwrap_or(usize::MAX);
        let over = || {
            crate::metrics::limit_hit("dbus_max_callers");
            DbusError::LimitsExceeded(format!(
                "too many callers ([dbus] max_callers = {max}); retry later"
            ))
        };
        // A place among the callers while the bus is asked (given back however this ends).
        struct Opening<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Opening<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let opening = Opening(&self.opening);
        if lock(&self.callers).len() + self.opening.fetch_add(1, Ordering::Relaxed) >= max {
            return Err(over());
        }
        let peer = credentials(conn, name).await;
        drop(opening);
        let peer = peer?;
        let origin = Origin {
            transport: TRANSPORT,
            peer: peer.describe(),
        };
        let creds = Credentials::new(TRANSPORT, &origin.peer).with_bus_peer(&peer);
        let principal = match BusCredentials.authenticate(&self.cell.get(), &creds) {
            Ok(p) => p,
            Err(e) => {
                let mut f = Map::new();
                f.insert("transport".into(), json!(TRANSPORT));
                f.insert("peer".into(), json!(origin.peer));
                f.insert("method".into(), json!(crate::auth::buscred::METHOD));
                f.insert("bus_name".into(), json!(peer.name));
                f.insert("uid".into(), json!(peer.uid));
                f.insert("pid".into(), json!(peer.pid));
                f.insert("security_label".into(), json!(peer.label));
                f.insert("reason".into(), json!(e.to_string()));
                if let Err(e) = self.audit.record("auth.failure", f).await {
                    tracing::error!("audit log: auth.failure not recorded: {e}");
                }
                tracing::warn!(peer = %origin.peer, "dbus: caller refused: {e}");
                return Err(DbusError::AccessDenied(
                    "no client of this server is mapped to your uid or groups".into(),
                ));
            }
        };
        let caller = Arc::new(Caller {
            principal,
            origin,
            session: tokio::sync::Mutex::new(None),
            gone: std::sync::atomic::AtomicBool::new(false),
            pending: Mutex::default(),
            unkeyed: Mutex::default(),
        });
        {
            let mut callers = lock(&self.callers);
            if let Some(c) = callers.get(name) {
                return Ok(c.clone());
            }
            if callers.len() >= max {
                return Err(over());
            }
            callers.insert(name.to_string(), caller.clone());
        }
        // The caller may have left before the watch saw it arrive: then it is gone now.
        let alive = match zbus::fdo::DBusProxy::new(conn).await {
            Ok(p) => match BusName::try_from(name) {
                Ok(n) => p.name_has_owner(n).await.unwrap_or(false),
                Err(_) => false,
            },
            Err(_) => false,
        };
        if !alive {
            self.gone(name).await;
            return Err(DbusError::Failed("the caller left the bus".into()));
        }
        Ok(caller)
    }

    async fn call(
        &self,
        conn: &Connection,
        name: &str,
        message: String,
    ) -> Result<String, DbusError> {
        self.check_size(&message)?;
        let caller = self.caller(conn, name).await?;
        let incoming = jsonrpc::classify(&message);
        drop(message);
        // What this call waits for: the response to its request id, or (an unreadable
        // message) the error response with a null id.
        let wait = match &incoming {
            Incoming::Request { id, .. } => Some(Some(id.clone())),
            Incoming::Invalid { id, .. } => Some(match id {
                Value::String(s) if s.len() <= jsonrpc::MAX_ID_LEN => Some(Id::Str(s.clone())),
                Value::Number(n) => n.as_i64().map(Id::Num),
                _ => None,
            }),
            _ => None,
        };
        let mut slot = caller.session.lock().await;
        if caller.gone.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(DbusError::Failed("the caller left the bus".into()));
        }
        if slot.is_none() {
            match &incoming {
                Incoming::Request { id, method, params }
                    if method == "initialize" || is_stateless(method, params) =>
                {
                    match self.open(conn, name, &caller).await {
                        Ok(s) => *slot = Some(s),
                        Err(refusal) => return Ok(refusal.to_response(id.to_value()).to_string()),
                    }
                }
                Incoming::Request { id, .. } => {
                    return Ok(jsonrpc::error(
                        id.to_value(),
                        INVALID_REQUEST,
                        "Invalid Request: the session is not initialized; send initialize first",
                    )
                    .to_string())
                }
                Incoming::Invalid { id, code, message } => {
                    return Ok(jsonrpc::error(id.clone(), *code, message).to_string())
                }
                // Nothing to answer, and no session to tell.
                _ => return Ok(String::new()),
            }
        }
        let Some(session) = slot.clone() else {
            return Err(DbusError::Failed("no session".into()));
        };
        let rx = match &wait {
            None => None,
            Some(key) => {
                let (tx, rx) = oneshot::channel();
                match key {
                    Some(id) => {
                        let mut p = lock(&caller.pending);
                        if p.contains_key(id) {
                            return Err(DbusError::InvalidArgs(
                                "a request with this id is in progress".into(),
                            ));
                        }
                        if p.len() >= MAX_PENDING_PER_CALLER {
                            return Err(DbusError::LimitsExceeded(format!(
                                "at most {MAX_PENDING_PER_CALLER} calls of one caller wait at once"
                            )));
                        }
                        p.insert(id.clone(), tx);
                    }
                    None => {
                        let mut u = lock(&caller.unkeyed);
                        if u.len() >= MAX_PENDING_PER_CALLER {
                            return Err(DbusError::LimitsExceeded(format!(
                                "at most {MAX_PENDING_PER_CALLER} calls of one caller wait at once"
                            )));
                        }
                        u.push_back(tx);
                    }
                }
                Some(rx)
            }
        };
        if let Incoming::Notification { method, params } = &incoming {
            // A cancelled request gets no response: its Call ends now, with an error.
            if method == "notifications/cancelled" {
                let id = match params.get("requestId") {
                    Some(Value::String(s)) => Some(Id::Str(s.clone())),
                    Some(Value::Number(n)) => n.as_i64().map(Id::Num),
                    _ => None,
                };
                if let Some(w) = id.and_then(|id| lock(&caller.pending).remove(&id)) {
                    let _ = w.send(None);
                }
            }
        }
        session.handle(incoming);
        drop(slot);
        let Some(rx) = rx else {
            return Ok(String::new());
        };
        let limit = session.call_timeout() + RESPONSE_SLACK;
        drop(session);
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(Some(v))) => Ok(v.to_string()),
            Ok(Ok(None)) => Err(DbusError::Failed("the request was cancelled".into())),
            Ok(Err(_)) => Err(DbusError::Failed(
                "the session ended before the request was answered".into(),
            )),
            Err(_) => {
                if let Some(Some(id)) = &wait {
                    lock(&caller.pending).remove(id);
                }
                Err(DbusError::Failed("no response in time".into()))
            }
        }
    }

    async fn reply(&self, name: &str, message: String) -> Result<(), DbusError> {
        self.check_size(&message)?;
        let caller = lock(&self.callers).get(name).cloned();
        let session = match caller {
            Some(c) => c.session.lock().await.clone(),
            None => None,
        };
        let Some(session) = session else {
            return Err(DbusError::InvalidArgs(
                "no session: send initialize with Call first".into(),
            ));
        };
        match jsonrpc::classify(&message) {
            r @ Incoming::Response { .. } => {
                session.handle(r);
                Ok(())
            }
            _ => Err(DbusError::InvalidArgs(
                "Reply takes a JSON-RPC response; send requests and notifications with Call".into(),
            )),
        }
    }

    /// The caller's session, with the task taking its output to the waiting calls (responses)
    /// and to the caller as `Message` signals (the rest).
    async fn open(
        &self,
        conn: &Connection,
        name: &str,
        caller: &Arc<Caller>,
    ) -> Result<Session, RpcError> {
        let (out, mut rx) = Outbox::channel();
        let session = Session::open(
            caller.principal.clone(),
            &caller.origin,
            self.cell.clone(),
            self.supervisor.clone(),
            self.audit.clone(),
            out,
        )
        .await
        .map_err(|e| {
            tracing::warn!(peer = %caller.origin.peer, "dbus: session refused: {e}");
            match e {
                OpenError::TooManySessions { .. } => RpcError::new(
                    RATE_LIMITED,
                    "Too many sessions: this client has its limit of sessions open",
                )
                .with_data(json!({"retryAfterSecs": 1})),
                OpenError::Audit(_) => RpcError::new(
                    INTERNAL_ERROR,
                    "The audit log cannot be written; the session was refused",
                ),
            }
        })?;
        tracing::info!(client = %caller.principal.client, peer = %caller.origin.peer, "dbus session open");
        let conn = conn.clone();
        let dest = name.to_string();
        let router = Arc::downgrade(caller);
        tokio::spawn(async move {
            while let Some(o) = rx.recv().await {
                let Some(caller) = router.upgrade() else {
                    break;
                };
                if is_response(&o.msg) {
                    let waiter = match &o.related {
                        Some(id) => lock(&caller.pending).remove(id),
                        None => lock(&caller.unkeyed).pop_front(),
                    };
                    if let Some(w) = waiter {
                        let _ = w.send(Some(o.msg));
                    }
                    continue;
                }
                let text = o.msg.to_string();
                if let Err(e) = conn
                    .emit_signal(
                        Some(dest.as_str()),
                        OBJECT_PATH,
                        INTERFACE,
                        "Message",
                        &(text.as_str(),),
                    )
                    .await
                {
                    tracing::debug!(peer = %dest, "dbus: Message signal not sent: {e}");
                }
            }
        });
        Ok(session)
    }

    /// The caller left the bus: its session ends (calls cancelled, worker reaped,
    /// `session.close`).
    async fn gone(&self, name: &str) {
        let Some(caller) = lock(&self.callers).remove(name) else {
            return;
        };
        caller
            .gone
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let session = caller.session.lock().await.take();
        if let Some(s) = session {
            tracing::info!(peer = %caller.origin.peer, "dbus: the caller left the bus; ending its session");
            s.stop(Duration::ZERO).await;
            s.close().await;
        }
        lock(&caller.pending).clear();
        lock(&caller.unkeyed).clear();
    }

    /// The broker stops: every session gets the stop grace for its calls, then ends.
    async fn stop_all(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let grace = Duration::from_secs(self.cell.get().stop_grace_secs);
        let callers: Vec<Arc<Caller>> = lock(&self.callers).drain().map(|(_, c)| c).collect();
        let mut ending = tokio::task::JoinSet::new();
        for c in callers {
            ending.spawn(async move {
                c.gone.store(true, std::sync::atomic::Ordering::Relaxed);
                let session = c.session.lock().await.take();
                if let Some(s) = session {
                    s.stop(grace).await;
                    s.close().await;
                }
            });
        }
        while ending.join_next().await.is_some() {}
    }
}

/// Whether `msg` is a JSON-RPC response (it goes to the waiting `Call`, not out as a signal).
fn is_response(msg: &Value) -> bool {
    msg.get("method").is_none() && (msg.get("result").is_some() || msg.get("error").is_some())
}

/// What the bus daemon says of the owner of `name`.
async fn credentials(conn: &Connection, name: &str) -> Result<BusPeer, DbusError> {
    let failed = |e: zbus::Error| {
        tracing::warn!("dbus: credentials of {name}: {e}");
        DbusError::AccessDenied("the bus gave no credentials for the caller".into())
    };
    let proxy = zbus::fdo::DBusProxy::new(conn).await.map_err(failed)?;
    let bus_name =
        BusName::try_from(name).map_err(|_| DbusError::AccessDenied("not a bus name".into()))?;
    let c = proxy
        .get_connection_credentials(bus_name)
        .await
        .map_err(|e| failed(e.into()))?;
    Ok(BusPeer {
        name: name.to_string(),
        uid: c.unix_user_id(),
        gids: c
            .unix_group_ids()
            .map(|g| g.iter().take(MAX_GROUPS).copied().collect())
            .unwrap_or_default(),
        pid: c.process_id(),
        label: c
            .linux_security_label()
            .and_then(|l| BusPeer::label_from_bytes(l)),
    })
}

/// The D-Bus transport, serving.
#[derive(Debug)]
pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    done: watch::Receiver<bool>,
}

impl Running {
    /// Completes when the connection to the bus ended by itself (the bus went away).
    pub async fn ended(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Release the name, end every caller's session (in-flight calls get the stop grace).
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.map_err(std::io::Error::other)
    }
}

/// Where the settings say to connect, for the log.
pub fn describe(s: &DbusSettings) -> String {
    let bus = s.bus.map_or("?", DbusBus::as_str);
    match &s.address {
        Some(a) => format!("dbus {bus} bus at {a} name {}", s.name),
        None => format!("dbus {bus} bus name {}", s.name),
    }
}

/// Connect to the bus, serve [`OBJECT_PATH`], own the name (refused if another owns it), and
/// watch callers leave; `Ok(None)` when no D-Bus transport is configured.
pub async fn start(
    cell: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
) -> std::io::Result<Option<Running>> {
    let s = cell.get().dbus().clone();
    let Some(bus) = s.bus else {
        return Ok(None);
    };
    let e = |m: String| std::io::Error::other(format!("{}: {m}", describe(&s)));
    let builder = match (&s.address, bus) {
        (Some(a), _) => zbus::connection::Builder::address(a.as_str()),
        (None, DbusBus::System) => zbus::connection::Builder::system(),
        (None, DbusBus::Session) => zbus::connection::Builder::session(),
    }
    .map_err(|x| e(x.to_string()))?;
    let shared = Arc::new(Shared {
        cell,
        supervisor,
        audit,
        callers: Mutex::default(),
        opening: std::sync::atomic::AtomicUsize::new(0),
        stopping: std::sync::atomic::AtomicBool::new(false),
    });
    let conn = builder
        .method_timeout(BUS_CALL_TIMEOUT)
        .serve_at(
            OBJECT_PATH,
            Server {
                shared: shared.clone(),
            },
        )
        .and_then(|b| b.name(s.name.as_str()))
        .map_err(|x| e(x.to_string()))?
        .build();
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, conn)
        .await
        .map_err(|_| {
            e(format!(
                "no answer from the bus in {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|x| e(format!("cannot connect or own the name: {x}")))?;
    let proxy = zbus::fdo::DBusProxy::new(&conn)
        .await
        .map_err(|x| e(x.to_string()))?;
    let mut leaving = proxy
        .receive_name_owner_changed()
        .await
        .map_err(|x| e(x.to_string()))?;
    eprintln!(
        "mcpd: serving {} as {} ({INTERFACE} at {OBJECT_PATH})",
        describe(&s),
        conn.unique_name().map_or("?".into(), ToString::to_string)
    );
    let (stop, mut stop_rx) = watch::channel(false);
    let (done_tx, done) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                sig = leaving.next() => {
                    let Some(sig) = sig else {
                        tracing::error!("dbus: the connection to the bus ended");
                        break;
                    };
                    let Ok(args) = sig.args() else { continue };
                    let name = args.name().to_string();
                    if args.new_owner().is_none() && lock(&shared.callers).contains_key(&name) {
                        let sh = shared.clone();
                        tokio::spawn(async move { sh.gone(&name).await });
                    }
                }
                _ = stop_rx.wait_for(|s| *s) => break,
            }
        }
        let _ = conn.release_name(s.name.as_str()).await;
        shared.stop_all().await;
        drop(conn);
        let _ = done_tx.send(true);
    });
    Ok(Some(Running { stop, task, done }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn responses_go_to_calls_and_the_rest_out_as_signals() {
        assert!(is_response(
            &json!({"jsonrpc": "2.0", "id": 1, "result": {}})
        ));
        assert!(is_response(
            &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700}})
        ));
        // A server->client request and a notification are signals.
        assert!(!is_response(
            &json!({"jsonrpc": "2.0", "id": "mcpd-roots-1", "method": "roots/list"})
        ));
        assert!(!is_response(
            &json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}})
        ));
        let d = DbusSettings {
            bus: Some(DbusBus::Session),
            address: Some("unix:path=/b".into()),
            ..DbusSettings::default()
        };
        assert_eq!(
            describe(&d),
            "dbus session bus at unix:path=/b name org.mcpd.Server1"
        );
        assert_eq!(
            too_large(10, 5).to_string(),
            "org.mcpd.Error.TooLarge: the message has 10 bytes; the limit is 5 bytes ([dbus] max_message_bytes)"
        );
    }
}
