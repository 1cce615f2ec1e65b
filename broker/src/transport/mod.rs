//! Transports: bytes ⇄ typed messages. Each one turns what it reads into one
//! [`crate::mcp::jsonrpc::Incoming`] per message and hands it, with the session of the
//! authenticated principal, to the engine; it writes what the engine queues in the session's
//! [`Outbox`]. A transport knows no tools and decides nothing about them.
//!
//! Trusts nothing a peer sends: every size is bounded before a message is classified.
#![forbid(unsafe_code)]

pub mod dbus;
pub mod http;
pub mod stdio;
pub mod unix;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::mcp::jsonrpc::Id;

/// Messages queued from one session to its transport's writer. A client that does not read
/// holds back the session's responses (each waits for a place: backpressure), never memory.
pub const OUTBOX_QUEUE: usize = 256;
/// Notifications (progress, log, list changes) are dropped, and counted, once only this many
/// places are left: they may never take the places responses need.
pub const NOTIFY_RESERVE: usize = 64;

/// One message for the client, with the request it belongs to (if any), so that a transport
/// with one stream per request (Streamable HTTP) can route it; stdio ignores `related`.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The client request this message answers or reports on.
    pub related: Option<Id>,
    /// The JSON-RPC message.
    pub msg: Value,
}

/// The sending side of a session's bounded queue to its transport.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    dropped: Arc<AtomicU64>,
}

impl Outbox {
    /// A new queue: the outbox for the session, the receiver for the transport's writer.
    pub fn channel() -> (Self, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(OUTBOX_QUEUE);
        (
            Self {
                tx,
                dropped: Arc::default(),
            },
            rx,
        )
    }

    /// Queue a response: waits for a place while the client is not reading. `false` if the
    /// transport is gone.
    pub async fn reply(&self, related: Option<&Id>, msg: Value) -> bool {
        self.tx
            .send(Outgoing {
                related: related.cloned(),
                msg,
            })
            .await
            .is_ok()
    }

    /// Queue a notification if more than [`NOTIFY_RESERVE`] places are left; otherwise drop
    /// it and count it. `false` if it was not queued.
    pub fn notify(&self, related: Option<&Id>, msg: Value) -> bool {
        if self.tx.capacity() <= NOTIFY_RESERVE {
            self.count_drop();
            return false;
        }
        self.offer(related, msg)
    }

    /// Queue a server→client request if there is any place; `false` (the caller gives up on
    /// it) if the queue is full or the transport gone.
    pub fn request(&self, related: Option<&Id>, msg: Value) -> bool {
        self.offer(related, msg)
    }

    fn offer(&self, related: Option<&Id>, msg: Value) -> bool {
        match self.tx.try_send(Outgoing {
            related: related.cloned(),
            msg,
        }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.count_drop();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn count_drop(&self) {
        if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                "a client is not reading: notifications are dropped (counted in session.close)"
            );
        }
    }

    /// Messages dropped because the client did not read.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn notifications_never_take_the_places_responses_need() {
        let (out, mut rx) = Outbox::channel();
        let mut queued = 0;
        for _ in 0..OUTBOX_QUEUE * 2 {
            if out.notify(None, json!({"n": 1})) {
                queued += 1;
            }
        }
        assert_eq!(queued, OUTBOX_QUEUE - NOTIFY_RESERVE);
        assert_eq!(out.dropped(), (OUTBOX_QUEUE * 2 - queued) as u64);
        // Every reserved place still takes a response without waiting.
        for i in 0..NOTIFY_RESERVE {
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                out.reply(Some(&Id::Num(i as i64)), json!({"r": i})),
            )
            .await;
            assert_eq!(r.ok(), Some(true));
        }
        // Full: a server->client request is refused at once, a response waits for the reader.
        assert!(!out.request(None, json!({})));
        let pending = out.reply(None, json!({"last": true}));
        tokio::pin!(pending);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut pending)
                .await
                .is_err()
        );
        rx.recv().await.unwrap();
        assert!(pending.await);
        drop(rx);
        assert!(!out.reply(None, json!({})).await);
    }
}
