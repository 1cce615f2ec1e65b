//! Health endpoints for a load balancer: `GET /healthz` (liveness: the listener's runtime
//! answers) and `GET /readyz` (readiness: 200 while serving, 503 once a stop has begun, so a
//! balancer stops sending new work while in-flight calls drain).
//!
//! Behind the Host/Origin gate, not behind authentication: they say nothing but `ok`, `ready`
//! or `draining`. TCP listener only (like the resource metadata).
#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{gate, App};

/// Liveness.
pub const HEALTHZ: &str = "/healthz";
/// Readiness.
pub const READYZ: &str = "/readyz";

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.draining.load(Ordering::Relaxed) {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        text(StatusCode::OK, "ready\n")
    }
}

/// The health routes, behind the Host/Origin gate.
pub(super) fn router(app: &Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route(HEALTHZ, get(healthz))
        .route(READYZ, get(readyz))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            gate::gate,
        ))
}
