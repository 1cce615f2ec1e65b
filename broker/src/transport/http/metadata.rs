//! OAuth 2.0 Protected Resource Metadata (RFC 9728), as the MCP authorization spec asks of a
//! resource server: `GET /.well-known/oauth-protected-resource` and the same with the
//! resource's path appended (`…/mcp`), naming the resource (the `[auth.jwt]` audience), its
//! authorization servers, the scopes it knows and that tokens travel only in the header.
//!
//! Served without authentication (a client reads it to learn how to get a token) but through
//! the Host/Origin gate; 404 when the policy in force has no `[auth.jwt]`. Public data only.
#![forbid(unsafe_code)]

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::gate::{self, json_response};
use super::App;

/// The well-known path of the metadata.
pub const PRM_PATH: &str = "/.well-known/oauth-protected-resource";

async fn document(State(app): State<Arc<App>>) -> Response {
    let policy = app.policy.get();
    let Some(j) = policy.jwt() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut r = json_response(
        StatusCode::OK,
        &json!({
            "resource": j.audience,
            "authorization_servers": j.authorization_servers,
            "scopes_supported": j.challenge_scopes(),
            "bearer_methods_supported": ["header"],
            "resource_name": "mcpd",
        }),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("max-age=300"),
    );
    r
}

/// `…/oauth-protected-resource/<path>`: the document when `<path>` is the audience's path
/// (RFC 9728 §3.1), else 404.
async fn document_at(
    State(app): State<Arc<App>>,
    axum::extract::Path(rest): axum::extract::Path<String>,
) -> Response {
    let wanted = app.policy.get().jwt().map(|j| j.resource_metadata_url());
    let suffix = format!("{PRM_PATH}/{rest}");
    if wanted.is_some_and(|w| w.ends_with(&suffix)) {
        return document(State(app)).await;
    }
    StatusCode::NOT_FOUND.into_response()
}

/// The metadata routes, behind the Host/Origin gate (not behind authentication).
pub(super) fn router(app: &Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route(PRM_PATH, get(document))
        .route(&format!("{PRM_PATH}{}", super::ENDPOINT), get(document))
        .route(&format!("{PRM_PATH}/{{*rest}}"), get(document_at))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            gate::gate,
        ))
}
