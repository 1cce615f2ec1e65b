//! Protocol constants, in one place: the protocol versions of both eras, the `_meta` keys of
//! the stateless era, every JSON-RPC and MCP error code, and [`RpcError`], the one type every
//! JSON-RPC error the broker sends is built from.
//!
//! Data only: no I/O, no state, trusts nothing (it validates nothing either).
#![forbid(unsafe_code)]

use serde_json::{json, Value};

/// Session-era protocol versions, newest first.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
/// Stateless-era protocol versions (selected per request by `_meta`).
pub const STATELESS_VERSIONS: [&str; 1] = ["2026-07-28"];

/// `_meta` key carrying the protocol version of a stateless request.
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key carrying the client's capabilities.
pub const META_CAPS: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key carrying the log level of a stateless request.
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
/// `_meta` key naming the `subscriptions/listen` stream a notification belongs to.
pub const META_SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";
/// `_meta` key carrying the server's name and version in `server/discover`.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// JSON-RPC: invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: not a valid request object (including batches, which MCP removed).
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: unknown method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC: bad params (including an unknown tool).
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC: internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// The code the SDKs use for an unknown (or foreign) HTTP session.
pub const SESSION_NOT_FOUND: i64 = -32001;
/// Stateless era: a header does not match the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// Stateless era: the client lacks a capability the request needs.
pub const MISSING_CAPABILITY: i64 = -32021;
/// Stateless era: unsupported protocol version.
pub const UNSUPPORTED_VERSION: i64 = -32022;
/// mcpd: the session's bearer token lacks the scope a tool's access class needs
/// (`error.data.scope` names it; HTTP answers 403 `insufficient_scope`).
pub const INSUFFICIENT_SCOPE: i64 = -32040;
/// mcpd: a per-client quota is spent — the tool-call rate (`limits.calls_per_minute`) or the
/// sessions (`limits.max_sessions`); `data.retryAfterSecs` says when to try again (HTTP
/// answers 429 with `Retry-After`).
pub const RATE_LIMITED: i64 = -32029;

/// One JSON-RPC error: code, message, optional data. Every error response is built from one.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The JSON-RPC error code.
    pub code: i64,
    /// The message (never a path or a fact outside the client's scope).
    pub message: String,
    /// `error.data`, `Null` for none.
    pub data: Value,
}

impl RpcError {
    /// An error without data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: Value::Null,
        }
    }

    /// The same error with `data`.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    /// The error response to the request `id` (`Null` when no id could be recovered).
    pub fn to_response(&self, id: Value) -> Value {
        let mut e = json!({"jsonrpc": "2.0", "id": id, "error": {"code": self.code, "message": self.message}});
        if !self.data.is_null() {
            e["error"]["data"] = self.data.clone();
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_data_only_when_given() {
        let plain = RpcError::new(INVALID_PARAMS, "bad").to_response(json!(1));
        assert_eq!(plain["error"]["code"], INVALID_PARAMS);
        assert!(plain["error"].get("data").is_none());
        let with = RpcError::new(HEADER_MISMATCH, "h")
            .with_data(json!({"header": "Mcp-Name"}))
            .to_response(Value::Null);
        assert_eq!(with["error"]["data"]["header"], "Mcp-Name");
        assert!(with["id"].is_null());
    }
}
