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
//! This module holds the configuration, the shared state ([`App`]), the router and [`serve`];
//! it decides nothing about messages. It trusts the policy, the authenticator and the
//! kernel's socket address of the peer; nothing the peer sends.
//!
//! Until HTTP authentication exists, every HTTP peer speaks for one configured client
//! (`[http] client`, default the stdio client), and listening on a non-loopback address needs
//! an explicit, loudly logged opt-in.
#![forbid(unsafe_code)]
// Helpers return a finished `Response` as their error (the early answer to the client); it
// is moved once per request, so boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod gate;
mod listener;
mod metadata;
mod post;
mod routes;
mod sessions;
mod sse;
pub(crate) mod stateless;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Extension, Router};
use mcpd_policy::ClientId;

use crate::auditing::Audit;
use crate::auth::jwt::HttpAuthenticator;
use crate::auth::x509::ClientCertificate;
use crate::auth::{Authenticator, Both, Principal};
use crate::mcp::backend::Workers;
use crate::mcp::protocol::SESSION_NOT_FOUND;
use crate::worker::supervisor::Supervisor;
use sessions::{HttpSession, SessionKey, Table};

/// The MCP endpoint path.
pub const ENDPOINT: &str = "/mcp";

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// What the listener needs.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The bound address.
    pub addr: SocketAddr,
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
    /// TLS (`None`: plaintext).
    pub tls: Option<Arc<tls::Tls>>,
    /// Most open connections (further capped below the descriptor limit).
    pub max_connections: usize,
    /// Most open connections per source IP address.
    pub max_connections_per_ip: usize,
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
}

async fn mcp(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(principal): Extension<Principal>,
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

/// Serve Streamable HTTP on `listener` until `shutdown` resolves; then close every session.
/// With client certificates (mTLS) each peer speaks for the client its certificate names
/// ([`ClientCertificate`]); otherwise every peer speaks for `cfg.client` (the listener's
/// client). With TLS, every policy reload loads the TLS files again (a bad one keeps the old).
pub async fn serve(
    listener: tokio::net::TcpListener,
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
    run(listener, app, shutdown).await
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
            cfg,
        })
    }
}

/// The endpoint behind its layers. Layers run outermost last-added first: audit_rejects →
/// authenticate → gate → mcp.
fn router(app: &Arc<App>) -> Router {
    Router::new()
        .route(ENDPOINT, any(mcp))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            gate::gate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            gate::authenticate,
        ))
        .merge(metadata::router(app))
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

async fn run(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::spawn(sessions::reaper(Arc::downgrade(&app), app.cfg.idle));
    tracing::info!(addr = %app.cfg.addr, endpoint = ENDPOINT, tls = app.cfg.tls.is_some(), "Streamable HTTP listening");
    let end = {
        let app = app.clone();
        async move {
            let all: Vec<Arc<HttpSession>> = app
                .sessions
                .drain()
                .into_iter()
                .chain(app.stateless.drain())
                .collect();
            for hs in all {
                sessions::end_session(hs, "server shutting down").await;
            }
        }
    };
    listener::accept_loop(listener, app.clone(), router(&app), shutdown, end).await
}

#[cfg(test)]
mod tests;
