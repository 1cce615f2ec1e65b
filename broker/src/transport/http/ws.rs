//! The WebSocket transport (`GET /mcp/ws`, subprotocol `mcp`) on the TCP HTTP listener: one
//! session and one worker per socket, one JSON-RPC message per text frame, both ways. The
//! session era exactly as over stdio or a Unix "lines" connection: the same engine
//! ([`Session`]), fed one [`jsonrpc::classify`] per frame, writing through an [`Outbox`];
//! server→client requests (sampling, elicitation, roots, ping) and notifications go down the
//! same socket.
//!
//! The upgrade request passes the listener's layers like `POST /mcp`: the reject auditor, the
//! authenticator (bearer JWT, mTLS or the listener's client: the socket's [`Principal`], fixed
//! for its lifetime), the Host/Origin gate (a foreign Origin is 403, never upgraded). Then,
//! before `101 Switching Protocols`: the client must offer the subprotocol `mcp` (else 400: a
//! client that did not ask for MCP framing gets no socket), a place among `[http]
//! max_sessions` (shared with the HTTP sessions: an idle one may be closed to make room; 429
//! if every one is busy), and the session is opened (`auth.success`, `session.open` with
//! transport `websocket`; the client's own `limits.max_sessions` → 429). The connection keeps
//! its place under the listener's connection caps until the socket closes.
//!
//! Bounds: a frame longer than `server.max_message_bytes` is refused from its header, before
//! its payload is read, a fragmented message once its fragments exceed it (close 1009); binary frames close with 1003, text that is
//! not UTF-8 with 1007, framing errors with 1002. Invalid JSON in a text frame is a JSON-RPC
//! parse error reply, like a bad line; policy and protocol errors stay JSON-RPC errors. A Ping
//! goes out every `[http] ws_ping_secs`; no Pong by the next one closes the socket (1001); no
//! message for `[http] session_idle_secs` with nothing in flight closes it (1000); after a
//! write the peer does not take within the ping interval nothing more is written (the missing
//! Pong then closes it). When the broker stops, in-flight calls
//! get `server.stop_grace_secs`, then the socket closes with 1001. However it ends, the
//! session is closed (`session.close`) and its worker reaped.
//!
//! Trusts the principal the layers established and nothing the peer sends.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::gate::{rpc_error, RejectReason};
use super::listener::ConnHold;
use super::sessions::too_many;
use super::{App, Peer};
use crate::auth::{Origin, Principal};
use crate::mcp::jsonrpc::{self, INTERNAL_ERROR, INVALID_REQUEST};
use crate::mcp::session::Session;
use crate::transport::{Outbox, Outgoing};

/// The WebSocket endpoint.
pub const WS_ENDPOINT: &str = "/mcp/ws";
/// The subprotocol a client must offer (`Sec-WebSocket-Protocol: mcp`).
pub const SUBPROTOCOL: &str = "mcp";
/// The transport's name in the audit log and the metrics (plain and TLS alike, as `http`).
pub const WEBSOCKET_TRANSPORT: &str = "websocket";
/// How long a closing socket waits for the peer's Close (and flushes ours).
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The listener's open sockets: the stop signal they watch, and how many are open.
pub(super) struct Sockets {
    stop: watch::Sender<bool>,
    live: watch::Sender<usize>,
}

impl Sockets {
    pub(super) fn new() -> Self {
        Self {
            stop: watch::Sender::new(false),
            live: watch::Sender::new(0),
        }
    }

    /// The broker stops: every socket lets its in-flight calls finish (the stop grace), closes
    /// with 1001, and closes its session. Resolves when all have, at most `wait`.
    pub(super) async fn stop_all(&self, wait: Duration) {
        self.stop.send_replace(true);
        let mut live = self.live.subscribe();
        let _ = tokio::time::timeout(wait, live.wait_for(|n| *n == 0)).await;
    }

    fn enter(&self) -> Live {
        self.live.send_modify(|n| *n += 1);
        Live(self.live.clone())
    }
}

/// Counts one open socket while alive.
struct Live(watch::Sender<usize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Whether the client offered the `mcp` subprotocol (a comma-separated token list, in any
/// number of headers; tokens compare exactly).
fn offers_mcp(h: &HeaderMap) -> bool {
    h.get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == SUBPROTOCOL)
}

/// A session opened for an upgrade that has not happened yet: closed (audited) if the
/// upgrade never completes.
struct Opened(Option<Session>);

impl Opened {
    fn take(mut self) -> Option<Session> {
        self.0.take()
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            tokio::spawn(async move {
                tracing::info!(session = %s.id(), "websocket upgrade failed; session closed");
                s.close().await;
            });
        }
    }
}

/// `GET /mcp/ws`: the checks, the session, then the upgrade (see the module docs).
pub(super) async fn upgrade(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Extension(principal): Extension<Principal>,
    hold: Option<Extension<ConnHold>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if app.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            Value::Null,
            INTERNAL_ERROR,
            "The server is shutting down",
        );
    }
    if !offers_mcp(&headers) {
        let mut r = rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            INVALID_REQUEST,
            "Bad Request: a WebSocket for MCP needs Sec-WebSocket-Protocol: mcp",
        );
        r.extensions_mut().insert(RejectReason("no_subprotocol"));
        return r;
    }
    let place = match app.sessions.take_outside() {
        Ok((place, evicted)) => {
            if let Some(old) = evicted {
                super::sessions::end_session(
                    old,
                    "session limit reached: least recently used idle session closed",
                )
                .await;
            }
            place
        }
        Err(_) => return too_many(),
    };
    let (tx, rx) = Outbox::channel();
    let origin = Origin {
        transport: WEBSOCKET_TRANSPORT,
        peer: peer.describe().to_string(),
    };
    let session = match Session::open_with(
        principal.clone(),
        &origin,
        app.policy.clone(),
        app.workers.clone(),
        app.audit.clone(),
        tx,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return App::refusal(WEBSOCKET_TRANSPORT, e),
    };
    tracing::info!(session = %session.id(), peer = %origin.peer, principal = %principal.client.as_str(), method = principal.method, "websocket session open");
    let max = app.max_body;
    let opened = Opened(Some(session));
    let live = app.sockets.enter();
    let hold = hold.map(|Extension(h)| h);
    ws.protocols([SUBPROTOCOL])
        .max_frame_size(max)
        .max_message_size(max)
        .on_failed_upgrade(|e| tracing::info!("websocket upgrade failed: {e}"))
        .on_upgrade(move |socket| async move {
            let _held = (hold, place, live);
            if let Some(session) = opened.take() {
                run(app, socket, session, rx, origin.peer).await;
            }
        })
}

/// What the writer is asked besides the session's messages.
enum Control {
    Ping,
    /// Send this Close (then discard what the session still writes); acknowledged once sent
    /// (or given up on).
    Close(u16, &'static str, oneshot::Sender<()>),
}

/// How the reading side ended.
enum End {
    /// The connection is gone (reset, end of stream without a Close).
    Gone,
    /// The peer sent a Close (answered by the protocol layer; flushed while lingering).
    PeerClosed,
    /// Close with this code and reason; linger for the peer's Close afterwards (not after a
    /// frame error: the stream can no longer be read).
    Close(u16, &'static str, bool),
}

fn frame_error(e: axum::Error) -> End {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(
            close_code::SIZE,
            "message too big: over the server's limit",
            false,
        ),
        Some(tungstenite::Error::Utf8(_)) => {
            End::Close(close_code::INVALID, "text frame is not UTF-8", false)
        }
        Some(tungstenite::Error::Protocol(_)) => {
            End::Close(close_code::PROTOCOL, "WebSocket protocol error", false)
        }
        _ => {
            tracing::debug!("websocket read: {inner}");
            End::Gone
        }
    }
}

/// Serve one session over `socket` until it ends; then close the session.
async fn run(
    app: Arc<App>,
    socket: WebSocket,
    session: Session,
    rx: mpsc::Receiver<Outgoing>,
    peer: String,
) {
    let policy = app.policy.get();
    let ping_every = Duration::from_secs(policy.http().ws_ping_secs.max(1));
    let grace = Duration::from_secs(policy.stop_grace_secs);
    let idle = app.cfg.idle;
    drop(policy);
    let (sink, mut stream) = socket.split();
    let (ctl, ctl_rx) = mpsc::channel(4);
    let writer = tokio::spawn(write(sink, rx, ctl_rx, ping_every));
    let mut stop = app.sockets.stop.subscribe();
    drop(app);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let tick = (idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
    let mut idle_check = tokio::time::interval_at(Instant::now() + tick, tick);
    let mut last_message = Instant::now();
    let mut awaiting_pong = false;
    let mut stopping: Option<oneshot::Receiver<()>> = None;
    let end = loop {
        tokio::select! {
            m = stream.next() => match m {
                None => break End::Gone,
                Some(Ok(Message::Text(t))) => {
                    last_message = Instant::now();
                    session.handle(jsonrpc::classify(t.as_str()));
                }
                Some(Ok(Message::Binary(_))) => break End::Close(
                    close_code::UNSUPPORTED,
                    "binary frames are not accepted: one JSON-RPC message per text frame",
                    true,
                ),
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                // Answered by the protocol layer.
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(Message::Close(_))) => break End::PeerClosed,
                Some(Err(e)) => break frame_error(e),
            },
            _ = ping.tick() => {
                if awaiting_pong {
                    break End::Close(close_code::AWAY, "keep-alive: no Pong to the last Ping", true);
                }
                awaiting_pong = true;
                let _ = ctl.try_send(Control::Ping);
            }
            _ = idle_check.tick() => {
                if stopping.is_none() && last_message.elapsed() >= idle && session.in_flight() == 0 {
                    break End::Close(close_code::NORMAL, "idle: no message for the session idle time", true);
                }
            }
            _ = stop.wait_for(|s| *s), if stopping.is_none() => {
                // In-flight calls get the grace (their client requests still answered on this
                // socket), then the rest are cancelled; then the socket closes.
                tracing::info!(session = %session.id(), %peer, "stopping; finishing in-flight calls (at most {} s)", grace.as_secs());
                let (done, done_rx) = oneshot::channel();
                let s = session.clone();
                tokio::spawn(async move {
                    s.stop(grace).await;
                    let _ = done.send(());
                });
                stopping = Some(done_rx);
            }
            _ = async { if let Some(d) = stopping.as_mut() { let _ = d.await; } }, if stopping.is_some() => {
                break End::Close(close_code::AWAY, "server shutting down", true);
            }
        }
    };
    let linger = match end {
        End::Gone => false,
        End::PeerClosed => true,
        End::Close(code, reason, linger) => {
            tracing::info!(session = %session.id(), %peer, code, "closing websocket: {reason}");
            let (sent, sent_rx) = oneshot::channel();
            if ctl.send(Control::Close(code, reason, sent)).await.is_ok() {
                let _ = tokio::time::timeout(ping_every + CLOSE_LINGER, sent_rx).await;
            }
            linger
        }
    };
    if linger {
        // Until the peer's Close (ours, or our answer to its, is flushed meanwhile).
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
    drop(stream);
    if stopping.is_none() {
        tracing::info!(session = %session.id(), %peer, "websocket closed; finishing in-flight calls");
        session
            .drain(session.call_timeout() + Duration::from_secs(1))
            .await;
    }
    session.close().await;
    drop(session);
    drop(ctl);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// The socket's writer: the session's messages as text frames (in order, before any Close
/// asked after them), Pings, and the Close. A write the peer does not take within
/// `write_timeout` ends the writing; what the session still sends is then discarded, so it
/// never waits on a dead socket. Ends when the session is gone.
async fn write(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outgoing>,
    mut ctl: mpsc::Receiver<Control>,
    write_timeout: Duration,
) {
    let mut open = true;
    let mut ctl_open = true;
    loop {
        tokio::select! {
            biased;
            m = rx.recv() => match m {
                None => break,
                Some(o) if open => {
                    let frame = Message::Text(o.msg.to_string().into());
                    if !matches!(tokio::time::timeout(write_timeout, sink.send(frame)).await, Ok(Ok(()))) {
                        tracing::debug!("websocket write failed or timed out; discarding the rest");
                        open = false;
                    }
                }
                Some(_) => {}
            },
            c = ctl.recv(), if ctl_open => match c {
                None => ctl_open = false,
                Some(Control::Ping) if open => {
                    if !matches!(tokio::time::timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await, Ok(Ok(()))) {
                        open = false;
                    }
                }
                Some(Control::Ping) => {}
                Some(Control::Close(code, reason, sent)) => {
                    if open {
                        let frame = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
                        let _ = tokio::time::timeout(write_timeout, sink.send(frame)).await;
                        open = false;
                    }
                    let _ = sent.send(());
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_mcp_subprotocol_must_be_offered() {
        let mut h = HeaderMap::new();
        assert!(!offers_mcp(&h));
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("chat, mcp"),
        );
        assert!(offers_mcp(&h));
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("MCP, mcp2"),
        );
        assert!(!offers_mcp(&h), "tokens compare exactly");
        h.append("sec-websocket-protocol", HeaderValue::from_static("mcp"));
        assert!(offers_mcp(&h));
    }
}
