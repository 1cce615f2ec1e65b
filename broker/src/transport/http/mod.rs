//! Streamable HTTP transport (MCP 2025-11-25 session era, negotiating 2025-06-18 / 2025-03-26,
//! and the 2026-07-28 stateless era on the same endpoint).
//!
//! One endpoint, `/mcp`:
//! * `POST` a JSON-RPC message. A request gets either `application/json` (one response) or
//!   `text/event-stream` (the request's progress/log notifications, then its response; chosen
//!   for `tools/call` when the client accepts SSE). A notification or a client response gets
//!   `202`. `initialize` without a session creates one: `Mcp-Session-Id` (128 random bits) in the
//!   response; every later message must carry it (missing → 400, unknown, ended or another
//!   principal's → 404).
//! * `GET` with `Accept: text/event-stream`: the session's stream for messages not tied to a
//!   request (one at a time; a second → 409), or with `Last-Event-ID` the resumption of a
//!   request's stream.
//! * `DELETE`: ends the session (its worker is shut down and reaped).
//!
//! On TCP, `GET /mcp/ws` is the WebSocket transport ([`ws`]): behind the same layers, one
//! session per socket, one message per text frame.
//!
//! Every request passes, in this order: the reject auditor ([`gate::audit_rejects`]), the
//! authenticator (a [`Principal`] for every request, before anything touches a session), the
//! Host/Origin gate (DNS-rebinding protection), then the method's handler, which checks media
//! types, sizes and versions ([`gate`]) and classifies the body exactly once
//! ([`crate::mcp::jsonrpc::classify`], [`post`]).
//!
//! One worker per session, exactly as over stdio (`Session` is transport-independent).
//! Sessions are keyed by (principal, session id) ([`sessions`]); everything between a session
//! and its HTTP client is a bounded queue ([`routes`], [`sse`]).
//!
//! Two listeners serve it, each with an [`App`] of its own (session tables, authenticator)
//! sharing the policy, the supervisor and the audit log: the TCP listener ([`serve`]: TLS,
//! mTLS, bearer tokens or the listener's client) and the Unix-socket listener
//! ([`UnixHttp`], connections accepted by `transport::unix`: every request's principal from the
//! connection's `SO_PEERCRED` through [`PeerCredentials`], never from a header; a peer no
//! identity rule names gets 403 and an `auth.failure` record; Host `localhost` with any port,
//! or `[http] allowed_hosts`; no Protected Resource Metadata, since tokens are not accepted
//! there). Each request carries its connection's [`Peer`].
//!
//! This module holds the configuration, the shared state ([`App`]), the router, [`serve`] and
//! [`UnixHttp`]; it decides nothing about messages. It trusts the policy, the authenticator and
//! the kernel's view of the peer (socket address, peer credentials); nothing the peer sends.
//!
//! Without client certificates or bearer tokens, every TCP peer speaks for one configured
//! client (`[http] client`, default the stdio client), and listening on a non-loopback address
//! needs an explicit, loudly logged opt-in.
#![forbid(unsafe_code)]
// Helpers return a finished `Response` as their error (the early answer to the client); it
// is moved once per request, so boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod forwarded;
mod gate;
mod health;
mod listener;
mod metadata;
mod peer;
mod post;
mod routes;
mod sessions;
mod sse;
pub(crate) mod stateless;
pub mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use mcpd_policy::ClientId;

use crate::auditing::Audit;
use crate::auth::jwt::HttpAuthenticator;
use crate::auth::peercred::PeerCredentials;
use crate::auth::x509::ClientCertificate;
use crate::auth::{Authenticator, Both, Principal};
use crate::mcp::backend::Workers;
use crate::mcp::protocol::SESSION_NOT_FOUND;
use crate::worker::supervisor::Supervisor;
pub use listener::passed_listeners;
pub use listener::HEADER_READ_TIMEOUT;
pub use peer::{Peer, UnixPeer};
use sessions::{HttpSession, SessionKey, Table};

/// The MCP endpoint path.
pub const ENDPOINT: &str = "/mcp";

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// The Unix listener's Streamable HTTP in the audit log (`transport`; its stateless-era
/// sessions are `unix-http-stateless`).
pub const UNIX_HTTP_TRANSPORT: &str = "unix-http";

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A bound TCP address.
    Tcp(SocketAddr),
    /// A Unix socket (its description, for the log): peers are who `SO_PEERCRED` says.
    Unix(String),
}

impl Listen {
    /// The transport's name in the audit log (session era).
    pub fn transport(&self) -> &'static str {
        match self {
            Self::Tcp(_) => "http",
            Self::Unix(_) => UNIX_HTTP_TRANSPORT,
        }
    }

    /// The transport's name in the audit log for the stateless era's sessions.
    pub fn stateless_transport(&self) -> &'static str {
        match self {
            Self::Tcp(_) => "http-stateless",
            Self::Unix(_) => "unix-http-stateless",
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

/// What the listener needs.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where it listens.
    pub listen: Listen,
    /// The client unauthenticated HTTP peers speak for (`None`: only peers with a verified
    /// credential, e.g. a bearer token, are served).
    pub client: Option<ClientId>,
    /// Extra accepted Host values (lower case).
    pub extra_hosts: Vec<String>,
    /// Idle time before a session is reaped.
    pub idle: Duration,
    /// Most sessions at once (session era; the stateless era's per-principal sessions have a
    /// table of the same size of their own).
    pub max_sessions: usize,
    /// TLS (`None`: plaintext; always for a Unix socket).
    pub tls: Option<Arc<tls::Tls>>,
    /// Most open connections (TCP: further capped below the descriptor limit; the Unix
    /// listener counts its own, `[unix] max_connections`).
    pub max_connections: usize,
    /// Most open connections per source IP address (TCP); for a trusted proxy's clients,
    /// most requests in flight per client address.
    pub max_connections_per_ip: usize,
    /// Proxies whose forwarded header names the client (TCP; empty: none).
    pub trusted_proxies: Vec<mcpd_policy::ProxyNet>,
    /// The header they name it in.
    pub forwarded_header: mcpd_policy::ForwardedHeader,
}

/// The TLS state of the policy's `[http.tls]`, its files read (start-up: an error refuses it).
pub fn load_tls(policy: &mcpd_policy::Policy) -> Result<Option<Arc<tls::Tls>>, String> {
    policy
        .http_tls()
        .map(|s| tls::Tls::load(s).map(Arc::new))
        .transpose()
}

/// The listener's shared state.
struct App {
    policy: crate::reload::PolicyCell,
    /// Starts the sessions' workers (the supervisor; a fake in tests).
    workers: Arc<dyn Workers>,
    audit: Audit,
    /// Who a request speaks for; asked for every request.
    auth: Arc<dyn Authenticator>,
    cfg: HttpConfig,
    hosts: Vec<String>,
    max_body: usize,
    /// Session-era sessions, by (principal, `Mcp-Session-Id`).
    sessions: Table<SessionKey, HttpSession>,
    /// Each principal's stateless-era session (no `Mcp-Session-Id`; one worker, reaped when
    /// idle).
    stateless: Table<sessions::StatelessKey, HttpSession>,
    /// Held while a stateless session is opened, so that one principal gets one.
    stateless_open: tokio::sync::Mutex<()>,
    /// A stop has begun: `/readyz` answers 503.
    draining: std::sync::atomic::AtomicBool,
    /// Requests in flight per client address of a trusted proxy.
    relayed: Arc<listener::Counter>,
    /// The open WebSockets (TCP only).
    sockets: ws::Sockets,
}

/// [`ENDPOINT`]'s handler, behind the three layers ([`Routes::endpoint`]).
async fn mcp(
    app: Arc<App>,
    peer: &Peer,
    principal: Principal,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match method {
        Method::POST => post::post(app, peer, principal, headers, body).await,
        Method::GET => sse::get(app, &principal, headers).await,
        Method::DELETE => sessions::delete(app, &principal, headers).await,
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, POST, DELETE")],
        )
            .into_response(),
    }
}

/// Serve Streamable HTTP on `listeners` (one address, or `localhost`'s two) until `shutdown`
/// resolves; then close every session.
/// With client certificates (mTLS) each peer speaks for the client its certificate names
/// ([`ClientCertificate`]); otherwise every peer speaks for `cfg.client` (the listener's
/// client). With TLS, every policy reload loads the TLS files again (a bad one keeps the old).
pub async fn serve(
    listeners: Vec<tokio::net::TcpListener>,
    cfg: HttpConfig,
    policy: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // mTLS alone: the certificate names the client. Bearer tokens (or the listener's client)
    // otherwise. Both configured: both must verify and name the same client.
    let mtls = cfg.tls.as_ref().is_some_and(|t| t.mtls());
    let tokens = policy.get().jwt().is_some();
    let auth: Arc<dyn Authenticator> = match (mtls, tokens) {
        (true, true) => Arc::new(Both(
            ClientCertificate,
            HttpAuthenticator::new(cfg.client.clone(), &policy),
        )),
        (true, false) => Arc::new(ClientCertificate),
        (false, _) => Arc::new(HttpAuthenticator::new(cfg.client.clone(), &policy)),
    };
    if let Some(t) = cfg.tls.clone() {
        tokio::spawn(reload_tls(t, policy.clone()));
    }
    let app = App::new(cfg, auth, policy, Arc::new(supervisor), audit);
    run(listeners, app, shutdown).await
}

impl App {
    fn new(
        cfg: HttpConfig,
        auth: Arc<dyn Authenticator>,
        policy: crate::reload::PolicyCell,
        workers: Arc<dyn Workers>,
        audit: Audit,
    ) -> Arc<Self> {
        let max_body = usize::try_from(policy.get().max_message_bytes).unwrap_or(usize::MAX);
        Arc::new(App {
            policy,
            workers,
            audit,
            auth,
            hosts: gate::allowed_hosts(&cfg),
            max_body,
            sessions: Table::new(cfg.max_sessions),
            stateless: Table::new(cfg.max_sessions),
            stateless_open: tokio::sync::Mutex::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
            relayed: listener::Counter::new(usize::MAX, cfg.max_connections_per_ip),
            sockets: ws::Sockets::new(),
            cfg,
        })
    }
}

/// A listener's routes: requests for [`ENDPOINT`] itself go straight through the three layers
/// to [`mcp`] ([`Routes::endpoint`]); every other path through the [`router`], whose layers
/// are the same functions.
///
/// The direct path exists for speed: through the router, each request took 3 `from_fn`
/// middlewares, each cloning and boxing the service behind it, and route lookups, about 4% of
/// the broker's time per call at 16 sessions (perf), for nothing the endpoint needs. It calls
/// the same [`gate::audit_rejects_around`], [`gate::authenticate_around`] and
/// [`gate::gate_around`] in the same order, so the checks cannot differ between the paths.
#[derive(Clone)]
pub(super) struct Routes {
    app: Arc<App>,
    router: Router,
}

/// What [`Routes::call`] answers with.
pub(super) type RouteResponse = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
>;

impl Routes {
    fn new(app: &Arc<App>) -> Self {
        Self {
            app: app.clone(),
            router: router(app),
        }
    }

    /// Answer one request (already tagged with its connection's extensions).
    pub(super) fn call(&self, req: axum::http::Request<hyper::body::Incoming>) -> RouteResponse {
        if req.uri().path() == ENDPOINT {
            let app = self.app.clone();
            return Box::pin(async move { Ok(Self::endpoint(app, req.map(Body::new)).await) });
        }
        let mut r = self.router.clone();
        Box::pin(tower_service::Service::call(&mut r, req))
    }

    /// [`ENDPOINT`]: audit_rejects → authenticate → gate → [`mcp`], as the router's layers.
    async fn endpoint(app: Arc<App>, req: Request) -> Response {
        let app = &app;
        gate::audit_rejects_around(app, req, |req| {
            gate::authenticate_around(app, req, |req| {
                gate::gate_around(app, req, |req| async move {
                    let (parts, body) = req.into_parts();
                    let peer = parts.extensions.get::<Peer>().cloned();
                    let principal = parts.extensions.get::<Principal>().cloned();
                    match (peer, principal) {
                        (Some(peer), Some(principal)) => {
                            mcp(
                                app.clone(),
                                &peer,
                                principal,
                                parts.method,
                                parts.headers,
                                body,
                            )
                            .await
                        }
                        // Not reachable: the connection tags every request with its peer and
                        // `authenticate` with its principal. A 500, as axum's extractors give.
                        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                })
            })
        })
        .await
    }
}

/// Every path but [`ENDPOINT`] (which [`Routes`] serves directly through the same layers):
/// the WebSocket endpoint behind the endpoint's layers, and on TCP beside them the metadata
/// and health routes. Layers run outermost last-added first: audit_rejects → authenticate →
/// gate → handler; they also wrap the fallback, so an unknown path is refused or answered 404
/// after them. A refused authentication is audit_rejects' `auth.failure` record (a Unix peer's
/// with its uid, gid and pid).
fn router(app: &Arc<App>) -> Router {
    // WebSockets (`GET /mcp/ws`) are served on TCP only (an upgraded connection keeps its
    // place under the TCP caps), behind the same layers as the endpoint.
    let mut endpoint = Router::new();
    if let Listen::Tcp(_) = app.cfg.listen {
        endpoint = endpoint.route(ws::WS_ENDPOINT, axum::routing::get(ws::upgrade));
    }
    let endpoint = endpoint
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            gate::gate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            gate::authenticate,
        ));
    // Tokens are not accepted on a Unix socket: no resource metadata there.
    let routes = match app.cfg.listen {
        Listen::Tcp(_) => endpoint
            .merge(metadata::router(app))
            .merge(health::router(app)),
        Listen::Unix(_) => endpoint,
    };
    routes
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            gate::audit_rejects,
        ))
        .with_state(app.clone())
}

/// On every policy reload, the TLS files again: new connections get the new certificate,
/// open ones keep theirs; a file that does not load keeps the previous configuration.
async fn reload_tls(tls: Arc<tls::Tls>, policy: crate::reload::PolicyCell) {
    let mut reloads = policy.subscribe();
    loop {
        match reloads.recv().await {
            Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
        let p = policy.get();
        match tls.reload(p.http_tls()) {
            Ok(()) => tracing::info!("TLS: certificate and key reloaded"),
            Err(e) => {
                tracing::error!("TLS reload refused, the previous certificate stays in force: {e}")
            }
        }
    }
}

impl App {
    /// Close every session of both eras (shutdown): standalone streams end at once, calls in
    /// progress get `server.stop_grace_secs` to answer (all sessions at the same time), the
    /// rest are cancelled and answered so ([`crate::mcp::session::Session::stop`]), then each
    /// session is closed and its worker reaped.
    async fn end_all_sessions(self: Arc<Self>) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let all: Vec<Arc<HttpSession>> = self
            .sessions
            .drain()
            .into_iter()
            .chain(self.stateless.drain())
            .collect();
        let grace = Duration::from_secs(self.policy.get().stop_grace_secs);
        for hs in &all {
            hs.routes.close_standalone();
        }
        // WebSockets stop likewise, each closing its own session (1001).
        let sockets = self.sockets.stop_all(grace + Duration::from_secs(10));
        let http = futures_util::future::join_all(all.iter().map(|hs| hs.session.stop(grace)));
        futures_util::future::join(sockets, http).await;
        for hs in all {
            sessions::end_session(hs, "server shutting down").await;
        }
    }
}

async fn run(
    listeners: Vec<tokio::net::TcpListener>,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::spawn(sessions::reaper(Arc::downgrade(&app), app.cfg.idle));
    tracing::info!(addr = %app.cfg.listen, endpoint = ENDPOINT, tls = app.cfg.tls.is_some(), "Streamable HTTP listening");
    let end = app.clone().end_all_sessions();
    listener::accept_loop(listeners, app.clone(), Routes::new(&app), shutdown, end).await
}

/// Streamable HTTP on the connections the Unix-socket listener accepts (`transport::unix`,
/// which counts them and reads their `SO_PEERCRED`): an [`App`] of its own (its own session
/// tables; the policy, supervisor and audit log shared), [`PeerCredentials`] for every
/// request, hyper HTTP/1.1 with the TCP listener's header-read deadline and keep-alive, and the
/// same graceful shutdown.
pub struct UnixHttp {
    app: Arc<App>,
    conns: listener::Connections,
}

impl UnixHttp {
    /// Start serving (the session reaper runs from now on): `cfg.listen` is
    /// [`Listen::Unix`]; `cfg.client` and `cfg.tls` are not used.
    pub fn new(
        cfg: HttpConfig,
        policy: crate::reload::PolicyCell,
        supervisor: Supervisor,
        audit: Audit,
    ) -> Self {
        let cfg = HttpConfig {
            client: None,
            tls: None,
            ..cfg
        };
        let app = App::new(
            cfg,
            Arc::new(PeerCredentials),
            policy,
            Arc::new(supervisor),
            audit,
        );
        tokio::spawn(sessions::reaper(Arc::downgrade(&app), app.cfg.idle));
        tracing::info!(addr = %app.cfg.listen, endpoint = ENDPOINT, "Streamable HTTP listening");
        let conns = listener::Connections::new(Routes::new(&app));
        Self { app, conns }
    }

    /// Serve one accepted connection of `peer` until it ends (or the shutdown ends it).
    pub fn connection(
        &self,
        stream: tokio::net::UnixStream,
        peer: UnixPeer,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.conns.serve(stream, Peer::unix(peer))
    }

    /// Stop: open connections get the shutdown (bounded, as on TCP), then every session is
    /// closed and its worker reaped.
    pub async fn shutdown(self) {
        let end = self.app.clone().end_all_sessions();
        self.conns.shutdown(end).await;
    }
}

#[cfg(test)]
mod tests;
