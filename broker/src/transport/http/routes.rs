//! Routing of one session's output to its HTTP streams, with a bound on every queue.
//!
//! A session queues what it sends in its [`crate::transport::Outbox`] (bounded there:
//! responses wait for a place, notifications are dropped and counted). [`dispatch`] takes each
//! message to the stream of the request it belongs to ([`Routes::open`]: one bounded queue of
//! [`ROUTE_QUEUE`] per request in progress), else to the session's GET stream
//! ([`STREAM_QUEUE`]), else drops it (the client opened no stream for it). On a full queue:
//! * a notification or a server→client request is dropped and counted (logged once per
//!   session, the count in the session's close line); it never takes the last
//!   [`ROUTE_RESERVE`] places of a request's queue, which are its response's;
//! * a response waits for a place at most [`ROUTE_WAIT`]; then the request's stream is
//!   detached (its queue closed: the stream ends after what it holds, and the request ends as
//!   if its client went away). Dispatch never waits longer than that for one slow client, so
//!   the session's other streams keep flowing.
//!
//! Knows nothing of HTTP or of the session engine (it moves JSON values); trusts the session
//! to send at most one response per request.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::mcp::jsonrpc::Id;
use crate::transport::Outgoing;

/// Messages waiting on one request's stream for its client to read them.
pub(super) const ROUTE_QUEUE: usize = 32;
/// Places of a request's queue that only its response may take.
pub(super) const ROUTE_RESERVE: usize = 1;
/// Messages waiting on a session's GET stream.
pub(super) const STREAM_QUEUE: usize = 64;
/// The longest dispatch waits for a place for a response before it detaches the stream.
pub(super) const ROUTE_WAIT: Duration = Duration::from_secs(5);
const _: () = assert!(ROUTE_RESERVE >= 1 && ROUTE_RESERVE < ROUTE_QUEUE);

/// Whether `msg` is a JSON-RPC response (the last message of a request's stream).
pub(super) fn is_response(msg: &Value) -> bool {
    msg.get("method").is_none() && (msg.get("result").is_some() || msg.get("error").is_some())
}

/// The maps below stay consistent whatever a panicking holder did (each change is one
/// insert or remove), so a poisoned lock is simply taken over.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The open streams of one session and what could not be delivered to them.
pub(super) struct Routes {
    /// The session id, for logs.
    session: String,
    /// Response streams of the requests in progress.
    requests: Mutex<HashMap<Id, mpsc::Sender<Value>>>,
    /// The GET stream, if open.
    standalone: Mutex<Option<mpsc::Sender<Value>>>,
    /// Messages dropped because a stream was full.
    dropped: AtomicU64,
    /// [`ROUTE_WAIT`] (shorter in tests).
    wait: Duration,
}

impl Routes {
    /// The routes of session `session` (its id, for logs).
    pub(super) fn new(session: &str) -> Self {
        Self::with_wait(session, ROUTE_WAIT)
    }

    fn with_wait(session: &str, wait: Duration) -> Self {
        Self {
            session: session.to_string(),
            requests: Mutex::default(),
            standalone: Mutex::default(),
            dropped: AtomicU64::new(0),
            wait,
        }
    }

    /// Open the stream of request `id`; `None` if a request with this id is in progress.
    pub(super) fn open(&self, id: &Id) -> Option<mpsc::Receiver<Value>> {
        let mut r = lock(&self.requests);
        if r.contains_key(id) {
            return None;
        }
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        r.insert(id.clone(), tx);
        Some(rx)
    }

    /// The request is over (answered, or its client went away).
    pub(super) fn close(&self, id: &Id) {
        lock(&self.requests).remove(id);
    }

    /// Open the GET stream; `None` if one is open already.
    pub(super) fn open_standalone(&self) -> Option<mpsc::Receiver<Value>> {
        let mut s = lock(&self.standalone);
        if s.as_ref().is_some_and(|t| !t.is_closed()) {
            return None;
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        *s = Some(tx);
        Some(rx)
    }

    /// End the GET stream (the session ends).
    pub(super) fn close_standalone(&self) {
        lock(&self.standalone).take();
    }

    /// Count one message a full stream could not take (the first one of a session is logged).
    pub(super) fn count_drop(&self) {
        if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                session = %self.session,
                "a client is not reading its stream: messages to it are dropped (counted when the session ends)"
            );
        }
    }

    /// Messages dropped because a stream was full.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Send `msg` on the GET stream if one is open and has a place; otherwise drop it.
    pub(super) fn to_standalone(&self, msg: Value) {
        let tx = lock(&self.standalone).clone();
        let Some(tx) = tx else {
            tracing::debug!("no stream for an outgoing message; dropped");
            return;
        };
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(m)) => {
                if is_response(&m) {
                    tracing::warn!(session = %self.session, "a response whose request stream is gone found the GET stream full; dropped");
                }
                self.count_drop();
            }
            Err(TrySendError::Closed(_)) => tracing::debug!("the GET stream closed; dropped"),
        }
    }

    /// Deliver one message of the session: to its request's stream, else to the GET stream.
    pub(super) async fn deliver(&self, out: Outgoing) {
        let route = out
            .related
            .as_ref()
            .and_then(|id| lock(&self.requests).get(id).cloned().map(|tx| (id, tx)));
        let Some((id, tx)) = route else {
            return self.to_standalone(out.msg);
        };
        if !is_response(&out.msg) {
            // Progress, log, server→client requests: never the response's places.
            if tx.capacity() <= ROUTE_RESERVE {
                self.count_drop();
            } else if let Err(TrySendError::Full(_)) = tx.try_send(out.msg) {
                self.count_drop();
            }
            return;
        }
        let msg = match tx.try_send(out.msg) {
            Ok(()) => return,
            Err(TrySendError::Closed(_)) => {
                tracing::info!(session = %self.session, "the request's stream closed before its response; response dropped");
                return;
            }
            Err(TrySendError::Full(m)) => m,
        };
        if tokio::time::timeout(self.wait, tx.send(msg)).await.is_err() {
            tracing::warn!(
                session = %self.session,
                "a client left its response unread for {:?}: its stream is detached and the request ended",
                self.wait
            );
            let mut r = lock(&self.requests);
            if r.get(id).is_some_and(|cur| cur.same_channel(&tx)) {
                r.remove(id);
            }
        }
    }
}

/// Route a session's output until the session (its routes) or its outbox is gone.
pub(super) async fn dispatch(mut rx: mpsc::Receiver<Outgoing>, routes: Weak<Routes>) {
    while let Some(out) = rx.recv().await {
        let Some(r) = routes.upgrade() else { break };
        r.deliver(out).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::transport::Outbox;
    use serde_json::json;
    use std::sync::Arc;
    use std::time::Instant;

    fn progress(id: i64, n: usize) -> Value {
        json!({"jsonrpc": "2.0", "method": "notifications/progress",
               "params": {"progressToken": id, "progress": n}})
    }
    fn result(id: i64) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "result": {}})
    }
    fn drain(rx: &mut mpsc::Receiver<Value>) -> Vec<Value> {
        let mut v = Vec::new();
        while let Ok(m) = rx.try_recv() {
            v.push(m);
        }
        v
    }

    /// A client that never reads the stream of its call while the tool reports progress
    /// without end: the queue between session and stream stays at its bound, the surplus is
    /// counted, the session's other requests are answered at once, and the stuck call still
    /// gets its response (the reserved place).
    #[tokio::test]
    async fn a_client_that_never_reads_holds_a_bounded_queue_and_blocks_nobody() {
        let routes = Arc::new(Routes::new("test"));
        let (out, orx) = Outbox::channel();
        let task = tokio::spawn(dispatch(orx, Arc::downgrade(&routes)));
        let stuck = Id::Num(1);
        let mut stuck_rx = routes.open(&stuck).unwrap();
        let busy = Id::Num(2);
        let mut busy_rx = routes.open(&busy).unwrap();
        assert!(routes.open(&stuck).is_none(), "one stream per request id");
        let mut queued_by_outbox = 0u64;
        for n in 0..10_000 {
            if out.notify(Some(&stuck), progress(1, n)) {
                queued_by_outbox += 1;
            }
            if n % 1000 == 0 {
                tokio::task::yield_now().await;
            }
        }
        // Another request of the same session is served while the stuck stream is full.
        assert!(out.reply(Some(&busy), result(2)).await);
        let r = tokio::time::timeout(Duration::from_secs(1), busy_rx.recv())
            .await
            .unwrap();
        assert_eq!(r.unwrap()["id"], 2);
        // The stuck call's response takes the reserved place without waiting.
        let started = Instant::now();
        assert!(out.reply(Some(&stuck), result(1)).await);
        tokio::time::timeout(Duration::from_secs(1), async {
            while stuck_rx.len() < ROUTE_QUEUE {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert!(started.elapsed() < ROUTE_WAIT);
        let got = drain(&mut stuck_rx);
        assert_eq!(got.len(), ROUTE_QUEUE, "the bound held");
        assert_eq!(got.last().unwrap()["id"], 1, "the response is last");
        assert!(got[..ROUTE_QUEUE - 1]
            .iter()
            .all(|m| m["method"] == "notifications/progress"));
        // Every notification was either dropped by the outbox, or queued, or dropped (counted)
        // at the full stream.
        assert_eq!(out.dropped() + queued_by_outbox, 10_000);
        assert_eq!(
            queued_by_outbox,
            routes.dropped() + (ROUTE_QUEUE - ROUTE_RESERVE) as u64
        );
        assert!(routes.dropped() > 0);
        drop(out);
        task.await.unwrap();
    }

    /// A response that finds no place (here a second one for the same id, which the session
    /// never sends) waits [`Routes::wait`] at most; then the stream is detached: it ends after
    /// what it holds, and dispatch goes on with the other streams.
    #[tokio::test]
    async fn a_response_waits_a_bounded_time_then_the_stream_is_detached() {
        let wait = Duration::from_millis(100);
        let routes = Arc::new(Routes::with_wait("test", wait));
        let (out, orx) = Outbox::channel();
        let task = tokio::spawn(dispatch(orx, Arc::downgrade(&routes)));
        let stuck = Id::Num(1);
        let mut stuck_rx = routes.open(&stuck).unwrap();
        let other = Id::Num(2);
        let mut other_rx = routes.open(&other).unwrap();
        for n in 0..ROUTE_QUEUE * 2 {
            out.notify(Some(&stuck), progress(1, n));
        }
        assert!(out.reply(Some(&stuck), result(1)).await);
        assert!(out.reply(Some(&stuck), result(1)).await); // no place left
        assert!(out.reply(Some(&other), result(2)).await);
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(2), other_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r["id"], 2);
        assert!(started.elapsed() < Duration::from_secs(1));
        // Detached: the stuck stream yields what it holds, then ends.
        let mut n = 0;
        while let Some(_m) = stuck_rx.recv().await {
            n += 1;
        }
        assert_eq!(n, ROUTE_QUEUE);
        assert!(lock(&routes.requests).get(&stuck).is_none());
        drop(out);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_get_stream_is_bounded_and_unique() {
        let routes = Routes::new("test");
        routes.to_standalone(progress(0, 0)); // no stream: dropped, not counted
        assert_eq!(routes.dropped(), 0);
        let mut rx = routes.open_standalone().unwrap();
        assert!(routes.open_standalone().is_none());
        for n in 0..STREAM_QUEUE + 10 {
            routes.to_standalone(progress(0, n));
        }
        assert_eq!(rx.len(), STREAM_QUEUE);
        assert_eq!(routes.dropped(), 10);
        // Messages for a request without a stream go to the GET stream.
        drain(&mut rx);
        routes
            .deliver(Outgoing {
                related: Some(Id::Num(9)),
                msg: progress(9, 0),
            })
            .await;
        assert_eq!(drain(&mut rx).len(), 1);
        drop(rx);
        assert!(
            routes.open_standalone().is_some(),
            "a closed stream can be replaced"
        );
        routes.close_standalone();
        assert!(lock(&routes.standalone).is_none());
    }
}
