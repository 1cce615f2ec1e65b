//! Server-sent event streams: the framing (priming event, one `data:` line per message,
//! keep-alive comments), a stateless-era request's stream, a session-era request's resumable
//! stream (a relay that records each event for `Last-Event-ID` and forwards it to whichever
//! HTTP stream is attached), resumption, and the session's `GET` stream.
//!
//! Every queue here is bounded: a relay hands events to its HTTP stream through
//! [`RELAY_QUEUE`] places (a notification that finds none is dropped from the live stream and
//! counted — it stays in the replay buffer; a response waits `routes::ROUTE_WAIT`, then the
//! stream is detached and the response left to the replay buffer for resumption), and the
//! replay buffer keeps at most [`REPLAY_EVENTS`] events and [`REPLAY_BYTES`] bytes per session.
//!
//! Does not decide which requests stream (that is `post`) nor route messages to requests
//! (`routes`). Trusts the session's messages to be JSON values; `Last-Event-ID` is hostile (an
//! unknown id resumes nothing).
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt as _};
use serde_json::Value;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::gate::{accepts, header_str, rpc_error, stateless_405, version_ok};
use super::routes::{is_response, lock, ROUTE_WAIT};
use super::sessions::{Busy, HttpSession, PendingRequest};
use super::App;
use crate::auth::Principal;
use crate::mcp::jsonrpc::INVALID_REQUEST;

/// `retry:` sent in the priming event of every SSE stream, milliseconds.
pub(super) const SSE_RETRY: Duration = Duration::from_millis(1000);
/// Keep-alive comment interval on SSE streams.
pub(super) const SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a request whose client disconnected waits for a `Last-Event-ID` resumption before
/// it is cancelled (session era; in the stateless era a closed stream cancels at once).
pub(super) const RESUME_GRACE: Duration = Duration::from_secs(3);
/// Most events kept for resumption per session.
pub(super) const REPLAY_EVENTS: usize = 1024;
/// Most bytes kept for resumption per session.
pub(super) const REPLAY_BYTES: usize = 4 * 1024 * 1024;
/// Events waiting between a relay and the HTTP stream attached to it.
pub(super) const RELAY_QUEUE: usize = 64;
/// How often a relay with nothing to send checks that its stream is still attached.
const RELAY_TICK: Duration = Duration::from_millis(250);

const KEEPALIVE: &[u8] = b":\n\n";

/// Events of request streams and the live relays, by stream (the priming event's id).
#[derive(Default)]
pub(super) struct Replay {
    events: VecDeque<(u64, u64, Bytes)>,
    bytes: usize,
    /// Streams whose request is still running: where their next events go, if anywhere.
    live: HashMap<u64, Option<mpsc::Sender<Bytes>>>,
}

impl Replay {
    fn push(&mut self, event: u64, stream: u64, b: Bytes) {
        self.bytes += b.len();
        self.events.push_back((event, stream, b));
        while self.events.len() > REPLAY_EVENTS || self.bytes > REPLAY_BYTES {
            match self.events.pop_front() {
                Some((_, _, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
    fn stream_of(&self, event: u64) -> Option<u64> {
        self.events
            .iter()
            .find(|(e, _, _)| *e == event)
            .map(|(_, s, _)| *s)
    }
    fn after(&self, stream: u64, event: u64) -> Vec<Bytes> {
        self.events
            .iter()
            .filter(|(e, s, _)| *s == stream && *e > event)
            .map(|(_, _, b)| b.clone())
            .collect()
    }
    /// `stream` was delivered to its end, its response included: nothing of it is kept for
    /// a resumption (the client has it all). Without this every finished call's events stayed
    /// until [`REPLAY_EVENTS`]/[`REPLAY_BYTES`] pushed them out: up to 4 MiB per idle session.
    fn forget(&mut self, stream: u64) {
        let mut bytes = self.bytes;
        self.events.retain(|(_, s, b)| {
            let keep = *s != stream;
            if !keep {
                bytes -= b.len();
            }
            keep
        });
        self.bytes = bytes;
    }
    /// Events and bytes held.
    #[cfg(test)]
    pub(super) fn held(&self) -> (usize, usize) {
        (self.events.len(), self.bytes)
    }
    /// Where `stream`'s next events go.
    fn attached(&self, stream: u64) -> Option<mpsc::Sender<Bytes>> {
        self.live.get(&stream).cloned().flatten()
    }
    /// `tx` failed: detach it (unless a resumption attached another stream meanwhile).
    fn detach(&mut self, stream: u64, tx: &mpsc::Sender<Bytes>) {
        if let Some(slot) = self.live.get_mut(&stream) {
            if slot.as_ref().is_some_and(|cur| cur.same_channel(tx)) {
                *slot = None;
            }
        }
    }
}

/// The first event of every stream: an id to resume from, the reconnection delay, and an
/// empty `data:` line (parsers drop events without one; clients skip empty data).
fn priming(hs: &HttpSession) -> Bytes {
    Bytes::from(format!(
        "id: {}\nretry: {}\ndata: \n\n",
        hs.event_id(),
        SSE_RETRY.as_millis()
    ))
}

/// One message as an SSE event. JSON text never contains a raw newline, so it is one `data:`
/// line (some clients parse SSE line by line).
fn event(hs: &HttpSession, msg: &Value) -> Bytes {
    let mut s = String::with_capacity(64);
    let _ = write!(s, "id: {}\ndata: {}\n\n", hs.event_id(), msg);
    Bytes::from(s)
}

fn sse<S>(stream: S) -> Response
where
    S: Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Stateless era: a priming event, then the request's messages as the client reads them
/// (`early`: one already received), ending with its response. A stream the client drops
/// cancels the request.
pub(super) fn request_stream(
    hs: Arc<HttpSession>,
    rx: mpsc::Receiver<Value>,
    mut pending: PendingRequest,
    busy: Busy,
    early: Option<Value>,
) -> Response {
    let mut first = priming(&hs).to_vec();
    let mut done = false;
    if let Some(m) = early {
        done = is_response(&m);
        first.extend_from_slice(&event(&hs, &m));
        if done {
            pending.answer();
        }
    }
    let stream = futures_util::stream::unfold(
        (Some(Bytes::from(first)), rx, pending, busy, done),
        move |(first, mut rx, mut pending, busy, done)| {
            let hs = hs.clone();
            async move {
                if let Some(f) = first {
                    return Some((Ok::<Bytes, Infallible>(f), (None, rx, pending, busy, done)));
                }
                if done {
                    return None;
                }
                let m = match tokio::time::timeout(SSE_KEEPALIVE, rx.recv()).await {
                    Ok(m) => m?,
                    Err(_) => {
                        return Some((
                            Ok(Bytes::from_static(KEEPALIVE)),
                            (None, rx, pending, busy, done),
                        ))
                    }
                };
                let last = is_response(&m);
                if last {
                    pending.answer();
                }
                Some((Ok(event(&hs, &m)), (None, rx, pending, busy, last)))
            }
        },
    );
    sse(stream)
}

/// Session era: the request's messages go through a relay that records every event for
/// resumption and forwards it to whichever HTTP stream is attached: first this POST's
/// response, after a disconnect a `GET` with `Last-Event-ID`. With nobody attached for
/// [`RESUME_GRACE`], the request is cancelled. `early`: a message of the request received
/// already (the first one), relayed first.
pub(super) fn resumable_stream(
    hs: Arc<HttpSession>,
    mut rx: mpsc::Receiver<Value>,
    mut pending: PendingRequest,
    busy: Busy,
    mut early: Option<Value>,
) -> Response {
    let stream_id = hs.next_event.fetch_add(1, Ordering::Relaxed);
    let priming = Bytes::from(format!(
        "id: {stream_id}\nretry: {}\ndata: \n\n",
        SSE_RETRY.as_millis()
    ));
    let (btx, brx) = mpsc::channel::<Bytes>(RELAY_QUEUE);
    // The response went into this (the first) stream's queue: once the body has been sent to
    // its end, the client has every event and none is kept (`Delivered`).
    let first = btx.downgrade();
    let delivered = Delivered {
        hs: hs.clone(),
        stream: stream_id,
        final_queued: Arc::default(),
        ended: false,
    };
    let final_queued = delivered.final_queued.clone();
    {
        let mut r = lock(&hs.replay);
        r.push(stream_id, stream_id, priming.clone());
        r.live.insert(stream_id, Some(btx));
    }
    let relay_hs = hs.clone();
    tokio::spawn(async move {
        let hs = relay_hs;
        let _busy = busy;
        let to_first =
            |tx: &mpsc::Sender<Bytes>| first.upgrade().is_some_and(|f| f.same_channel(tx));
        let mut detached_since: Option<Instant> = None;
        loop {
            let got = match early.take() {
                Some(m) => Ok(Some(m)),
                None => tokio::time::timeout(RELAY_TICK, rx.recv()).await,
            };
            match got {
                Ok(Some(m)) => {
                    let last = is_response(&m);
                    if last {
                        // Before the response can reach the client (its next request may
                        // reuse the id).
                        pending.answer();
                    }
                    let eid = hs.next_event.fetch_add(1, Ordering::Relaxed);
                    let b = Bytes::from(format!("id: {eid}\ndata: {m}\n\n"));
                    // Recorded and offered to the attached stream under one lock, under which
                    // a resumption also replays and attaches: it sees every event once.
                    let offered = {
                        let mut r = lock(&hs.replay);
                        r.push(eid, stream_id, b.clone());
                        r.attached(stream_id).map(|tx| (tx.try_send(b), tx))
                    };
                    match offered {
                        Some((Ok(()), tx)) if last && to_first(&tx) => {
                            final_queued.store(true, Ordering::Relaxed);
                        }
                        None | Some((Ok(()), _)) => {}
                        Some((Err(TrySendError::Closed(_)), tx)) => {
                            lock(&hs.replay).detach(stream_id, &tx);
                        }
                        Some((Err(TrySendError::Full(_)), _)) if !last => hs.routes.count_drop(),
                        Some((Err(TrySendError::Full(b)), tx)) => {
                            let sent = tokio::time::timeout(ROUTE_WAIT, tx.send(b)).await;
                            if matches!(sent, Ok(Ok(()))) && to_first(&tx) {
                                final_queued.store(true, Ordering::Relaxed);
                            }
                            if sent.is_err() {
                                tracing::warn!(
                                    session = %hs.session.id(),
                                    "a client left its response unread for {ROUTE_WAIT:?}: its stream is detached (the response waits for a Last-Event-ID resumption)"
                                );
                                lock(&hs.replay).detach(stream_id, &tx);
                            }
                        }
                    }
                    if last {
                        break;
                    }
                }
                Ok(None) => break, // cancelled: no response exists
                Err(_) => {
                    // Keep-alive doubles as a liveness probe of the attached stream (a full
                    // stream is slow, not gone).
                    let tx = lock(&hs.replay).attached(stream_id);
                    let alive = match tx {
                        None => false,
                        Some(tx) => match tx.try_send(Bytes::from_static(KEEPALIVE)) {
                            Ok(()) | Err(TrySendError::Full(_)) => true,
                            Err(TrySendError::Closed(_)) => {
                                lock(&hs.replay).detach(stream_id, &tx);
                                false
                            }
                        },
                    };
                    if alive {
                        detached_since = None;
                    } else {
                        let since = *detached_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= RESUME_GRACE {
                            break; // `pending` drops unanswered: the request is cancelled
                        }
                    }
                }
            }
        }
        lock(&hs.replay).live.remove(&stream_id);
        drop(pending);
    });
    sse_bytes(vec![priming], brx, delivered)
}

/// Held by a request stream's body. Its [`Held::ended`] is called when the body has been sent to
/// its end; if the response was queued to it (`final_queued`), the stream's events are
/// dropped from the replay buffer then. A body dropped early (the client went away) keeps
/// them for a `Last-Event-ID` resumption.
struct Delivered {
    hs: Arc<HttpSession>,
    stream: u64,
    final_queued: Arc<std::sync::atomic::AtomicBool>,
    ended: bool,
}

impl Drop for Delivered {
    fn drop(&mut self) {
        if self.ended && self.final_queued.load(Ordering::Relaxed) {
            lock(&self.hs.replay).forget(self.stream);
        }
    }
}

/// What a stream body holds while the client reads it, told when the body has ended.
trait Held: Send + 'static {
    /// Every byte of the body has been handed on.
    fn ended(&mut self) {}
}

impl Held for Delivered {
    fn ended(&mut self) {
        self.ended = true;
    }
}

impl Held for Busy {}

/// An SSE response of ready-made event bytes: `initial`, then what arrives on `rx` until its
/// sender is gone, holding `keep` (a guard) for as long as the client reads.
fn sse_bytes<G: Held>(initial: Vec<Bytes>, rx: mpsc::Receiver<Bytes>, keep: G) -> Response {
    let head = futures_util::stream::iter(initial.into_iter().map(Ok::<Bytes, Infallible>));
    let tail = futures_util::stream::unfold((rx, keep), |(mut rx, mut keep)| async move {
        let Some(b) = rx.recv().await else {
            keep.ended();
            return None;
        };
        Some((Ok::<Bytes, Infallible>(b), (rx, keep)))
    });
    sse(head.chain(tail))
}

/// `GET` with `Last-Event-ID` naming an event of a request stream: replay what followed it,
/// then (if the request is still running) attach to its relay.
fn resume(hs: &Arc<HttpSession>, last: u64) -> Option<Response> {
    let (replayed, brx) = {
        let mut r = lock(&hs.replay);
        let stream = r.stream_of(last)?;
        let replayed = r.after(stream, last);
        let (btx, brx) = mpsc::channel::<Bytes>(RELAY_QUEUE);
        if let Some(slot) = r.live.get_mut(&stream) {
            *slot = Some(btx); // (a finished stream: `btx` drops, the replay is all)
        }
        (replayed, brx)
    };
    Some(sse_bytes(replayed, brx, Busy::new(hs)))
}

/// `GET`: the session's stream for messages not tied to a request, or a resumption.
pub(super) async fn get(app: Arc<App>, principal: &Principal, headers: HeaderMap) -> Response {
    if let Some(r) = stateless_405(&headers) {
        return r;
    }
    let (_, sse_ok) = accepts(&headers);
    if !sse_ok {
        return rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            Value::Null,
            INVALID_REQUEST,
            "Not Acceptable: GET opens an SSE stream; accept text/event-stream",
        );
    }
    if !version_ok(&headers) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            INVALID_REQUEST,
            "Bad Request: unsupported MCP-Protocol-Version",
        );
    }
    let hs = match app.lookup(principal, &headers) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                INVALID_REQUEST,
                "Bad Request: Mcp-Session-Id header is required",
            )
        }
        Err(r) => return r,
    };
    if let Some(last) =
        header_str(&headers, "last-event-id").and_then(|v| v.trim().parse::<u64>().ok())
    {
        if let Some(r) = resume(&hs, last) {
            tracing::info!(session = %hs.session.id(), last, "stream resumed with Last-Event-ID");
            return r;
        }
    }
    let Some(rx) = hs.routes.open_standalone() else {
        return rpc_error(
            StatusCode::CONFLICT,
            Value::Null,
            INVALID_REQUEST,
            "Conflict: this session already has an open GET stream",
        );
    };
    let guard = Busy::new(&hs);
    let first = priming(&hs);
    let stream =
        futures_util::stream::unfold((Some(first), rx, guard), move |(first, mut rx, guard)| {
            let hs = hs.clone();
            async move {
                if let Some(f) = first {
                    return Some((Ok::<Bytes, Infallible>(f), (None, rx, guard)));
                }
                let m = match tokio::time::timeout(SSE_KEEPALIVE, rx.recv()).await {
                    Ok(m) => m?,
                    Err(_) => return Some((Ok(Bytes::from_static(KEEPALIVE)), (None, rx, guard))),
                };
                Some((Ok(event(&hs, &m)), (None, rx, guard)))
            }
        });
    sse(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_buffer_is_bounded_and_detaches_only_the_failed_stream() {
        let mut r = Replay::default();
        for e in 0..(REPLAY_EVENTS as u64 + 10) {
            r.push(e, 0, Bytes::from_static(b"id: x\ndata: {}\n\n"));
        }
        assert_eq!(r.events.len(), REPLAY_EVENTS);
        assert!(r.stream_of(5).is_none(), "the oldest are gone");
        assert_eq!(r.after(0, REPLAY_EVENTS as u64 + 5).len(), 4);
        let big = Bytes::from(vec![b'x'; REPLAY_BYTES / 2 + 1]);
        r.push(10_000, 1, big.clone());
        r.push(10_001, 1, big);
        assert!(r.bytes <= REPLAY_BYTES);
        let (old, _orx) = mpsc::channel::<Bytes>(1);
        let (new, _nrx) = mpsc::channel::<Bytes>(1);
        r.live.insert(7, Some(new.clone()));
        r.detach(7, &old);
        assert!(r.attached(7).is_some_and(|t| t.same_channel(&new)));
        r.detach(7, &new);
        assert!(r.attached(7).is_none());
    }
}
