//! The stateless era (2026-07-28): a request selects it with `_meta`, carries its own
//! protocol version, capabilities and log level, and leaves no state behind. This module
//! validates that envelope (the transport-independent part; HTTP checks its headers against it
//! first).
//!
//! Trusts nothing in the envelope: every key is checked, unknown versions are refused.
#![forbid(unsafe_code)]

use mcpd_ipc::LogLevel;
use serde_json::{json, Map, Value};

use crate::mcp::protocol::{
    RpcError, INVALID_PARAMS, META_CAPS, META_LOG_LEVEL, META_VERSION, STATELESS_VERSIONS,
    UNSUPPORTED_VERSION,
};

/// Per-request context of a stateless-era (2026-07-28) request.
#[derive(Debug, Clone)]
pub struct Stateless {
    /// Log level the request asked for (`None`: no log notifications at all).
    pub log_level: Option<LogLevel>,
    /// The client's capabilities for this request.
    pub caps: Value,
}

/// Validate the `_meta` envelope of a stateless request (transport-independent part):
/// the error to answer with.
pub fn stateless_meta(params: &Map<String, Value>) -> Result<Stateless, RpcError> {
    let meta = params.get("_meta").and_then(Value::as_object);
    let version = meta
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str);
    let caps = meta
        .and_then(|m| m.get(META_CAPS))
        .filter(|c| c.is_object());
    let (Some(version), Some(caps)) = (version, caps) else {
        return Err(RpcError::new(
            INVALID_PARAMS,
            format!("Invalid params: _meta must carry {META_VERSION} and {META_CAPS}"),
        ));
    };
    if !STATELESS_VERSIONS.contains(&version) {
        return Err(
            RpcError::new(UNSUPPORTED_VERSION, "Unsupported protocol version").with_data(
                json!({"supported": STATELESS_VERSIONS, "requested": crate::mcp::printable(version)}),
            ),
        );
    }
    let log_level = meta
        .and_then(|m| m.get(META_LOG_LEVEL))
        .and_then(Value::as_str)
        .and_then(LogLevel::parse);
    Ok(Stateless {
        log_level,
        caps: caps.clone(),
    })
}

/// Whether a request selects the stateless era.
pub fn is_stateless(method: &str, params: &Map<String, Value>) -> bool {
    method == "server/discover"
        || params
            .get("_meta")
            .and_then(Value::as_object)
            .is_some_and(|m| m.contains_key(META_VERSION))
}
