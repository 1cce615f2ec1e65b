//! HTTP sessions: the transport-independent [`Session`] with its routes ([`HttpSession`]), and
//! the tables that find them.
//!
//! * A session-era session is found by (principal, `Mcp-Session-Id`) ([`SessionKey`]): a
//!   session id presented by another principal is not found, exactly like an unknown one (the
//!   same 404: no oracle). A stateless-era session is found by its principal alone (one per
//!   principal). Both tables are bounded: at the limit the least recently used session with
//!   nothing in flight is closed to make room; if every one is busy the new one is refused.
//! * [`reaper`] closes sessions idle longer than `http.session_idle_secs` with nothing in
//!   flight (clients often never send DELETE); [`Busy`] marks a session in use,
//!   [`PendingRequest`] cancels a request whose client went away.
//!
//! Does not authenticate (the principal comes from `gate::authenticate`) and decides nothing
//! about messages. Trusts the principal it is given; a session id is only a lookup key.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mcpd_policy::ClientId;
use serde_json::Value;

use super::gate::{header_str, rpc_error, stateless_405};
use super::routes::{self, lock, Routes};
use super::sse::Replay;
use super::{App, Peer, SESSION_HEADER, SESSION_NOT_FOUND};
use crate::auth::{Origin, Principal};
use crate::mcp::jsonrpc::{Id, INTERNAL_ERROR, INVALID_REQUEST};
use crate::mcp::session::{OpenError, Session};
use crate::transport::Outbox;

/// A session-era session's key: whose it is, and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SessionKey {
    client: ClientId,
    /// The scopes of the token that opened it: a token with other scopes does not find it.
    scopes: Option<Vec<String>>,
    sid: String,
}

/// A stateless-era session's key: its principal and its token's scopes.
pub(super) type StatelessKey = (ClientId, Option<Vec<String>>);

fn stateless_key(principal: &Principal) -> StatelessKey {
    (principal.client.clone(), principal.scopes.clone())
}

impl SessionKey {
    pub(super) fn new(principal: &Principal, sid: &str) -> Self {
        Self {
            client: principal.client.clone(),
            scopes: principal.scopes.clone(),
            sid: sid.to_string(),
        }
    }
}

/// One HTTP session: the transport-independent [`Session`] plus routing of its output.
pub(super) struct HttpSession {
    pub(super) session: Session,
    pub(super) routes: Arc<Routes>,
    last_seen: Mutex<Instant>,
    /// Requests and streams in progress (a busy session is never reaped).
    active: AtomicUsize,
    /// SSE event ids.
    pub(super) next_event: AtomicU64,
    /// Recent events of request streams, for `Last-Event-ID` resumption (session era).
    pub(super) replay: Mutex<Replay>,
}

impl HttpSession {
    pub(super) fn touch(&self) {
        *lock(&self.last_seen) = Instant::now();
    }
    pub(super) fn event_id(&self) -> String {
        format!("{}", self.next_event.fetch_add(1, Ordering::Relaxed))
    }
}

/// What a table needs to know of its entries.
pub(super) trait Entry {
    /// Something is in flight (never evicted, never reaped).
    fn in_use(&self) -> bool;
    /// Time since the last activity.
    fn idle_for(&self) -> Duration;
}

impl Entry for HttpSession {
    fn in_use(&self) -> bool {
        self.active.load(Ordering::SeqCst) != 0
    }
    fn idle_for(&self) -> Duration {
        lock(&self.last_seen).elapsed()
    }
}

/// Every entry is in use and the table is full.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Full;

/// A bounded table of sessions.
pub(super) struct Table<K, V> {
    map: Mutex<HashMap<K, Arc<V>>>,
    cap: usize,
    /// Sessions counted against `cap` that live outside the map (WebSocket sessions: each is
    /// its socket's own, found by no key).
    outside: Arc<AtomicUsize>,
}

/// A place in a [`Table`] taken by a session outside its map ([`Table::take_outside`]); given
/// back when dropped.
pub(super) struct OutsidePlace(Arc<AtomicUsize>);

impl Drop for OutsidePlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<K: Eq + Hash + Clone, V: Entry> Table<K, V> {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            map: Mutex::default(),
            cap,
            outside: Arc::default(),
        }
    }
    pub(super) fn get(&self, k: &K) -> Option<Arc<V>> {
        lock(&self.map).get(k).cloned()
    }
    pub(super) fn insert(&self, k: K, v: Arc<V>) {
        lock(&self.map).insert(k, v);
    }
    pub(super) fn remove(&self, k: &K) -> Option<Arc<V>> {
        lock(&self.map).remove(k)
    }
    /// Room for one more: at the limit the least recently used entry with nothing in flight
    /// is removed (returned: the caller closes it); `Err` if every entry is in use.
    pub(super) fn make_room(&self) -> Result<Option<Arc<V>>, Full> {
        let mut m = lock(&self.map);
        if m.len() + self.outside.load(Ordering::SeqCst) < self.cap {
            return Ok(None);
        }
        let lru = m
            .iter()
            .filter(|(_, s)| !s.in_use())
            .max_by_key(|(_, s)| s.idle_for())
            .map(|(k, _)| k.clone());
        lru.and_then(|k| m.remove(&k)).map(Some).ok_or(Full)
    }
    /// Room for one more entry that `mine` selects, when such entries may number at most
    /// `per_owner`: at that count the least recently used of *those* with nothing in flight is
    /// removed (returned: the caller closes it), so one owner's leaked sessions never push out
    /// another's; then the table-wide [`Table::make_room`]. `Err` if nothing can go.
    pub(super) fn make_room_for(
        &self,
        mine: impl Fn(&K) -> bool,
        per_owner: usize,
    ) -> Result<Option<Arc<V>>, Full> {
        {
            let mut m = lock(&self.map);
            let own: Vec<(&K, &Arc<V>)> = m.iter().filter(|(k, _)| mine(k)).collect();
            if own.len() >= per_owner {
                let lru = own
                    .into_iter()
                    .filter(|(_, s)| !s.in_use())
                    .max_by_key(|(_, s)| s.idle_for())
                    .map(|(k, _)| k.clone());
                return lru.and_then(|k| m.remove(&k)).map(Some).ok_or(Full);
            }
        }
        self.make_room()
    }
    /// A place for a session that lives outside the map (a WebSocket's), made like
    /// [`Table::make_room`]'s (an evicted entry is returned: the caller closes it). `Err` if
    /// every entry is in use, or if the places outside the map fill the table.
    pub(super) fn take_outside(&self) -> Result<(OutsidePlace, Option<Arc<V>>), Full> {
        let mut m = lock(&self.map);
        let outside = self.outside.load(Ordering::SeqCst);
        if outside >= self.cap {
            return Err(Full);
        }
        let evicted = if m.len() + outside < self.cap {
            None
        } else {
            let lru = m
                .iter()
                .filter(|(_, s)| !s.in_use())
                .max_by_key(|(_, s)| s.idle_for())
                .map(|(k, _)| k.clone());
            Some(lru.and_then(|k| m.remove(&k)).ok_or(Full)?)
        };
        // Taken under the map's lock: two sockets cannot both take the last place.
        self.outside.fetch_add(1, Ordering::SeqCst);
        Ok((OutsidePlace(self.outside.clone()), evicted))
    }
    /// Remove and return the entries idle for `idle` or longer with nothing in flight.
    pub(super) fn take_idle(&self, idle: Duration) -> Vec<Arc<V>> {
        let mut m = lock(&self.map);
        let stale: Vec<K> = m
            .iter()
            .filter(|(_, s)| !s.in_use() && s.idle_for() >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        stale.iter().filter_map(|k| m.remove(k)).collect()
    }
    /// Remove and return every entry.
    pub(super) fn drain(&self) -> Vec<Arc<V>> {
        lock(&self.map).drain().map(|(_, v)| v).collect()
    }
}

/// Counts a session as busy while alive; on drop, records the activity time.
pub(super) struct Busy(Arc<HttpSession>);

impl Busy {
    pub(super) fn new(s: &Arc<HttpSession>) -> Self {
        s.active.fetch_add(1, Ordering::SeqCst);
        s.touch();
        Self(s.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// While alive, the request has not been answered: dropping it early (the client went away)
/// cancels the request in the worker. Either way its route is closed.
pub(super) struct PendingRequest {
    hs: Arc<HttpSession>,
    id: Id,
    pub(super) answered: bool,
    /// The route was closed already ([`Self::answer`]): the id may belong to a new request.
    closed: bool,
}

impl PendingRequest {
    pub(super) fn new(hs: &Arc<HttpSession>, id: Id) -> Self {
        Self {
            hs: hs.clone(),
            id,
            answered: false,
            closed: false,
        }
    }

    /// The response is about to leave: the request is answered and its id free again, before
    /// the client can read the response and send its next request (it may reuse the id).
    pub(super) fn answer(&mut self) {
        self.answered = true;
        if !self.closed {
            self.closed = true;
            self.hs.routes.close(&self.id);
        }
    }
}

impl Drop for PendingRequest {
    fn drop(&mut self) {
        if !self.closed {
            self.hs.routes.close(&self.id);
        }
        if !self.answered {
            tracing::info!(session = %self.hs.session.id(), "client went away during a request; cancelling it");
            self.hs.session.cancel(&self.id);
        }
    }
}

fn not_found(message: &str) -> Response {
    rpc_error(
        StatusCode::NOT_FOUND,
        Value::Null,
        SESSION_NOT_FOUND,
        message,
    )
}

/// Every session that could make room is busy: 429, try again shortly.
pub(super) fn too_many() -> Response {
    let mut r = rpc_error(
        StatusCode::TOO_MANY_REQUESTS,
        Value::Null,
        INTERNAL_ERROR,
        "Too many sessions: every open session is busy; retry shortly",
    );
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    r
}

impl App {
    /// The principal's session named by `Mcp-Session-Id`: `Ok(None)` without the header, 404
    /// for an id that is unknown, ended, or another principal's.
    pub(super) fn lookup(
        &self,
        principal: &Principal,
        h: &HeaderMap,
    ) -> Result<Option<Arc<HttpSession>>, Response> {
        let Some(sid) = header_str(h, SESSION_HEADER) else {
            return Ok(None);
        };
        match self.sessions.get(&SessionKey::new(principal, sid)) {
            Some(s) => {
                s.touch();
                Ok(Some(s))
            }
            None => Err(not_found(
                "Session not found: it ended or never existed; start a new one with initialize",
            )),
        }
    }

    /// A session for an `initialize` (entered in the table once it succeeded).
    pub(super) async fn new_session(
        &self,
        peer: &Peer,
        principal: &Principal,
    ) -> Result<Arc<HttpSession>, Response> {
        // Clients that never send DELETE are common: the least recently used idle session
        // makes room — the client's own when it is at its `limits.max_sessions`, else any. It
        // is closed before the new one opens, so its place among the client's sessions is free.
        let per_client = self
            .policy
            .get()
            .permissions(&principal.client)
            .map_or(1, |p| {
                usize::try_from(p.limits.max_sessions).unwrap_or(usize::MAX)
            });
        match self
            .sessions
            .make_room_for(|k| k.client == principal.client, per_client)
        {
            Ok(Some(old)) => {
                end_session(
                    old,
                    "session limit reached: least recently used idle session closed",
                )
                .await;
            }
            Ok(None) => {}
            Err(Full) => return Err(too_many()),
        }
        self.open_session(self.cfg.listen.transport(), peer, principal)
            .await
    }

    /// The [`OpenError`] of a session as the HTTP answer (429 at a limit, 503 without audit).
    pub(super) fn refusal(transport: &str, e: OpenError) -> Response {
        tracing::error!("{transport} session refused: {e}");
        match e {
            OpenError::TooManySessions { .. } => too_many(),
            OpenError::Audit(_) => rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                Value::Null,
                INTERNAL_ERROR,
                "The audit log cannot be written; the session was refused",
            ),
        }
    }

    /// Open a `Session` for `principal` (audited: `auth.success`, `session.open`) and start
    /// routing its output.
    async fn open_session(
        &self,
        transport: &'static str,
        peer: &Peer,
        principal: &Principal,
    ) -> Result<Arc<HttpSession>, Response> {
        let (tx, rx) = Outbox::channel();
        let origin = Origin {
            transport,
            peer: peer.describe().to_string(),
        };
        let session = Session::open_with(
            principal.clone(),
            &origin,
            self.policy.clone(),
            self.workers.clone(),
            self.audit.clone(),
            tx,
        )
        .await
        .map_err(|e| Self::refusal(transport, e))?;
        let routes = Arc::new(Routes::new(session.id()));
        tokio::spawn(routes::dispatch(rx, Arc::downgrade(&routes)));
        Ok(Arc::new(HttpSession {
            session,
            routes,
            last_seen: Mutex::new(Instant::now()),
            active: AtomicUsize::new(0),
            next_event: AtomicU64::new(1),
            replay: Mutex::default(),
        }))
    }

    /// The principal's stateless-era session (created on first use, again after it was
    /// reaped).
    pub(super) async fn stateless_session(
        &self,
        peer: &Peer,
        principal: &Principal,
    ) -> Result<Arc<HttpSession>, Response> {
        let key = stateless_key(principal);
        if let Some(s) = self.stateless.get(&key) {
            s.touch();
            return Ok(s);
        }
        let _one_at_a_time = self.stateless_open.lock().await;
        if let Some(s) = self.stateless.get(&key) {
            return Ok(s);
        }
        match self.stateless.make_room() {
            Ok(Some(old)) => {
                tokio::spawn(end_session(
                    old,
                    "stateless session limit reached: least recently used idle one closed",
                ));
            }
            Ok(None) => {}
            Err(Full) => return Err(too_many()),
        }
        let hs = self
            .open_session(self.cfg.listen.stateless_transport(), peer, principal)
            .await?;
        tracing::info!(session = %hs.session.id(), %peer, principal = %principal.client.as_str(), "http stateless session open");
        self.stateless.insert(key, hs.clone());
        Ok(hs)
    }
}

/// Close a session: its GET stream ends, its worker is shut down (`session.close`).
pub(super) async fn end_session(hs: Arc<HttpSession>, why: &str) {
    tracing::info!(
        session = %hs.session.id(),
        stream_messages_dropped = hs.routes.dropped(),
        "{why}"
    );
    hs.routes.close_standalone();
    hs.session.close().await;
}

/// `DELETE`: the principal ends one of its sessions.
pub(super) async fn delete(app: Arc<App>, principal: &Principal, headers: HeaderMap) -> Response {
    if let Some(r) = stateless_405(&headers) {
        return r;
    }
    let Some(sid) = header_str(&headers, SESSION_HEADER) else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header is required",
        );
    };
    match app.sessions.remove(&SessionKey::new(principal, sid)) {
        Some(hs) => {
            end_session(hs, "session ended by the client (DELETE)").await;
            StatusCode::OK.into_response()
        }
        None => not_found("Session not found"),
    }
}

/// Close sessions idle longer than the limit (nothing in flight, no open stream).
pub(super) async fn reaper(app: Weak<App>, idle: Duration) {
    let tick = (idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        tokio::time::sleep(tick).await;
        let Some(app) = app.upgrade() else { return };
        for hs in app.sessions.take_idle(idle) {
            tokio::spawn(end_session(hs, "idle session reaped"));
        }
        for hs in app.stateless.take_idle(idle) {
            tokio::spawn(end_session(hs, "idle stateless worker reaped"));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct Fake {
        busy: AtomicBool,
        idle: Duration,
    }
    impl Entry for Fake {
        fn in_use(&self) -> bool {
            self.busy.load(Ordering::SeqCst)
        }
        fn idle_for(&self) -> Duration {
            self.idle
        }
    }
    fn fake(idle_secs: u64) -> Arc<Fake> {
        Arc::new(Fake {
            busy: AtomicBool::new(false),
            idle: Duration::from_secs(idle_secs),
        })
    }
    fn principal(name: &str) -> Principal {
        Principal::new(ClientId::parse(name).unwrap(), "test")
    }

    #[test]
    fn a_session_id_is_found_only_for_its_principal() {
        let t: Table<SessionKey, Fake> = Table::new(8);
        let (alice, mallory) = (principal("alice"), principal("mallory"));
        let sid = "0123456789abcdef0123456789abcdef";
        let s = fake(0);
        t.insert(SessionKey::new(&alice, sid), s.clone());
        assert!(Arc::ptr_eq(
            &t.get(&SessionKey::new(&alice, sid)).unwrap(),
            &s
        ));
        // Another principal with the same id: not found, exactly like an unknown id.
        assert!(t.get(&SessionKey::new(&mallory, sid)).is_none());
        assert!(t.get(&SessionKey::new(&alice, "ffff")).is_none());
        assert!(t.remove(&SessionKey::new(&mallory, sid)).is_none());
        assert!(
            t.get(&SessionKey::new(&alice, sid)).is_some(),
            "still there"
        );
        assert!(t.remove(&SessionKey::new(&alice, sid)).is_some());
        assert!(t.get(&SessionKey::new(&alice, sid)).is_none());
    }

    #[test]
    fn at_the_limit_the_least_recently_used_idle_session_makes_room() {
        let t: Table<SessionKey, Fake> = Table::new(3);
        let p = principal("alice");
        let (young, old, oldest_busy) = (fake(1), fake(5), fake(9));
        oldest_busy.busy.store(true, Ordering::SeqCst);
        t.insert(SessionKey::new(&p, "young"), young.clone());
        assert_eq!(t.make_room().map(|e| e.is_some()), Ok(false), "room left");
        t.insert(SessionKey::new(&p, "old"), old.clone());
        t.insert(SessionKey::new(&p, "busy"), oldest_busy.clone());
        let evicted = t.make_room().unwrap().unwrap();
        assert!(Arc::ptr_eq(&evicted, &old), "the busy one is never evicted");
        assert!(t.get(&SessionKey::new(&p, "old")).is_none());
        t.insert(SessionKey::new(&p, "new"), fake(0));
        young.busy.store(true, Ordering::SeqCst);
        let all_busy: Table<ClientId, Fake> = Table::new(1);
        all_busy.insert(p.client.clone(), young);
        assert_eq!(all_busy.make_room().map(|_| ()), Err(Full));
    }

    #[test]
    fn places_outside_the_map_count_against_the_same_limit() {
        let t: Table<ClientId, Fake> = Table::new(2);
        let idle = fake(5);
        t.insert(principal("a").client, idle.clone());
        // Room left: no eviction.
        let (one, evicted) = t.take_outside().unwrap();
        assert!(evicted.is_none());
        // Full (one entry, one place): the idle entry makes room.
        let (two, evicted) = t.take_outside().unwrap();
        assert!(Arc::ptr_eq(&evicted.unwrap(), &idle));
        // Both places outside: nothing more, not even an entry.
        assert!(t.take_outside().is_err());
        assert_eq!(t.make_room().map(|_| ()), Err(Full));
        drop(one);
        assert_eq!(t.make_room().map(|e| e.is_none()), Ok(true));
        // A busy entry is never evicted for a place.
        let busy = fake(9);
        busy.busy.store(true, Ordering::SeqCst);
        t.insert(principal("b").client, busy);
        assert!(t.take_outside().is_err());
        drop(two);
        assert!(t.take_outside().is_ok());
    }

    #[test]
    fn the_reaper_takes_only_idle_sessions_with_nothing_in_flight() {
        let t: Table<ClientId, Fake> = Table::new(8);
        let busy = fake(100);
        busy.busy.store(true, Ordering::SeqCst);
        t.insert(principal("a").client, fake(100));
        t.insert(principal("b").client, busy);
        t.insert(principal("c").client, fake(1));
        let taken = t.take_idle(Duration::from_secs(10));
        assert_eq!(taken.len(), 1);
        assert!(t.get(&principal("a").client).is_none());
        assert!(t.get(&principal("b").client).is_some());
        assert!(t.get(&principal("c").client).is_some());
        assert_eq!(t.drain().len(), 2);
        assert!(t.get(&principal("c").client).is_none());
    }
}
