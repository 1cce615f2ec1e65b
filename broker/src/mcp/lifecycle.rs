//! Session lifecycle methods: `initialize` (version negotiation, capabilities, the worker
//! started early), `ping`, `logging/setLevel`, `resources/(un)subscribe` bookkeeping, and the
//! client's notifications (`initialized`, `roots/list_changed`, `cancelled`).
//!
//! Trusts nothing in the client's params: versions are matched against the supported list,
//! capabilities kept only if they are an object.
#![forbid(unsafe_code)]

use mcpd_ipc::LogLevel;
use serde_json::{json, Map, Value};

use crate::mcp::jsonrpc::{self, Id, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST};
use crate::mcp::protocol::SUPPORTED_VERSIONS;
use crate::mcp::record::Rec;
use crate::mcp::session::Session;
use crate::mcp::subscriptions::MAX_SUBSCRIPTIONS;

impl Session {
    pub(super) fn initialize(
        &self,
        id: &Id,
        params: &Map<String, Value>,
        rec: Rec,
    ) -> (Rec, Value) {
        let Some(asked) = params.get("protocolVersion").and_then(Value::as_str) else {
            return (
                rec,
                jsonrpc::error(
                    id.to_value(),
                    INVALID_PARAMS,
                    "Invalid params: protocolVersion is required",
                ),
            );
        };
        let version = SUPPORTED_VERSIONS
            .iter()
            .copied()
            .find(|v| *v == asked)
            .unwrap_or(SUPPORTED_VERSIONS[0]);
        {
            let Ok(mut s) = self.inner.state.lock() else {
                return (
                    rec,
                    jsonrpc::error(id.to_value(), INTERNAL_ERROR, "Internal error"),
                );
            };
            if s.version.is_some() {
                drop(s);
                return (
                    rec,
                    jsonrpc::error(
                        id.to_value(),
                        INVALID_REQUEST,
                        "Invalid Request: already initialized",
                    ),
                );
            }
            s.version = Some(version);
            s.client_caps = params
                .get("capabilities")
                .filter(|c| c.is_object())
                .cloned()
                .unwrap_or_else(|| json!({}));
        }
        // Start the worker now, while the client finishes its handshake.
        let s = self.clone();
        tokio::spawn(async move {
            let _ = s.worker(&s.inner.policy()).await;
        });
        (
            rec.allow("protocol"),
            jsonrpc::response(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {
                        "tools": {"listChanged": true},
                        "resources": {"subscribe": true, "listChanged": true},
                        "prompts": {"listChanged": true},
                        "completions": {},
                        "logging": {}
                    },
                    "serverInfo": {"name": "mcpd", "title": "mcpd (confined MCP server)", "version": env!("CARGO_PKG_VERSION")},
                    "instructions": "Tools run in a per-session sandbox. Paths must lie within the directories listed by list_allowed_directories."
                }),
            ),
        )
    }

    pub(super) fn notification(&self, method: &str, params: &Map<String, Value>) {
        match method {
            "notifications/initialized" => {
                if let Ok(mut s) = self.inner.state.lock() {
                    if s.version.is_some() {
                        s.initialized = true;
                    }
                }
                self.ask_roots();
            }
            "notifications/roots/list_changed" => self.ask_roots(),
            "notifications/cancelled" => {
                let Some(id) = params.get("requestId").and_then(|v| match v {
                    Value::String(s) => Some(Id::Str(s.clone())),
                    Value::Number(n) => n.as_i64().map(Id::Num),
                    _ => None,
                }) else {
                    return;
                };
                self.cancel(&id);
            }
            _ => {} // unknown notifications are ignored, as JSON-RPC requires
        }
    }

    /// `resources/subscribe` and `resources/unsubscribe` (session era): bounded
    /// ([`MAX_SUBSCRIPTIONS`]), the worker told which URIs to watch.
    pub(super) async fn subscription(
        &self,
        id: &Id,
        method: &str,
        params: &Map<String, Value>,
        rec: Rec,
    ) -> (Rec, Value) {
        let err = |code, msg: &str| jsonrpc::error(id.to_value(), code, msg);
        let Some(uri) = params
            .get("uri")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty() && u.len() <= 8192)
        else {
            return (
                rec,
                err(INVALID_PARAMS, "Invalid params: uri must be a string"),
            );
        };
        let updated: Result<(), &str> = match self.inner.state.lock() {
            Err(_) => Err("Internal error"),
            Ok(mut s) => {
                if method == "resources/subscribe" {
                    if s.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                        Err("Invalid params: too many subscriptions")
                    } else {
                        s.subscriptions.insert(uri.to_string());
                        Ok(())
                    }
                } else {
                    s.subscriptions.remove(uri);
                    Ok(())
                }
            }
        };
        if let Err(m) = updated {
            return (rec.outcome("limit"), err(INVALID_PARAMS, m));
        }
        self.update_watch().await;
        (rec.allow("protocol"), jsonrpc::response(id, json!({})))
    }

    /// `logging/setLevel` (session era).
    pub(super) fn set_level(&self, id: &Id, params: &Map<String, Value>, rec: Rec) -> (Rec, Value) {
        let err = |code, msg: &str| jsonrpc::error(id.to_value(), code, msg);
        match params
            .get("level")
            .and_then(Value::as_str)
            .and_then(LogLevel::parse)
        {
            Some(l) => {
                if let Ok(mut s) = self.inner.state.lock() {
                    s.log_level = Some(l);
                }
                (rec.allow("protocol"), jsonrpc::response(id, json!({})))
            }
            None => (
                rec,
                err(
                    INVALID_PARAMS,
                    "Invalid params: level must be a log level name",
                ),
            ),
        }
    }
}
