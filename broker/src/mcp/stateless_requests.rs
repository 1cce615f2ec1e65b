//! Stateless-era dispatch (2026-07-28): `server/discover`, `resultType` and cache hints on
//! every result, input-required rounds (`inputResponses`, and the sealed `requestState` that
//! only this broker can open), and the header-mapped schema the HTTP transport checks.
//!
//! Trusts no `requestState` it did not seal for this principal and scope, and no input request
//! list a worker produces without checking its shape.
#![forbid(unsafe_code)]

use serde_json::{json, Map, Value};
use std::sync::Arc;

use crate::mcp::jsonrpc::{self, Id, METHOD_NOT_FOUND};
use crate::mcp::printable;
use crate::mcp::protocol::RpcError;
use crate::mcp::protocol::STATELESS_VERSIONS;
use crate::mcp::record::Rec;
use crate::mcp::results::short;
use crate::mcp::session::Session;
use crate::mcp::stateless::{stateless_meta, Stateless};
use mcpd_policy::Policy;

/// Cache hint of list, read and discover results: not cacheable across principals, no TTL.
pub(super) const TTL_MS: u64 = 0;

impl Session {
    /// A stateless-era request: no session state, `_meta` per request, `resultType` on every
    /// result, cache hints on lists, reads and discover.
    pub(super) async fn stateless_request(
        &self,
        policy: &Arc<Policy>,
        id: &Id,
        method: &str,
        params: Map<String, Value>,
        rec: Rec,
    ) -> (Rec, Value) {
        let st = match stateless_meta(&params) {
            Ok(st) => st,
            Err(e) => return (rec.deny("invalid_meta"), e.to_response(id.to_value())),
        };
        let (rec, mut response) = match method {
            "server/discover" => (
                rec.allow("protocol"),
                jsonrpc::response(id, self.discover()),
            ),
            "tools/list" => self.tools_list(policy, id, params, rec).await,
            "tools/call" => self.call_or_task(policy, id, params, rec, &st).await,
            "tasks/get" | "tasks/update" | "tasks/cancel" => {
                self.tasks_request(policy, id, method, &params, rec, &st)
            }
            "subscriptions/listen" => return self.listen(id, &params, rec).await,
            "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "prompts/list"
            | "prompts/get"
            | "completion/complete" => {
                self.provider_request(policy, id, method, params, rec, Some(&st))
                    .await
            }
            _ => {
                let e = RpcError::new(
                    METHOD_NOT_FOUND,
                    format!("Method not found: {}", printable(method)),
                )
                .with_data(json!(printable(method)));
                return (rec, e.to_response(id.to_value()));
            }
        };
        if let Some(r) = response.get_mut("result").and_then(Value::as_object_mut) {
            r.remove("_inTask");
            r.entry("resultType").or_insert_with(|| json!("complete"));
            if matches!(
                method,
                "tools/list"
                    | "resources/list"
                    | "resources/templates/list"
                    | "resources/read"
                    | "prompts/list"
            ) {
                r.insert("ttlMs".into(), json!(TTL_MS));
                r.insert("cacheScope".into(), json!("private"));
            }
        }
        (rec, response)
    }

    /// The input schema of a tool this client may see, when it mirrors arguments into headers
    /// (`x-mcp-header`, checked by the HTTP transport); `None` otherwise, so the common call
    /// does not parse a schema.
    pub async fn header_mapped_schema(&self, name: &str) -> Option<Value> {
        let policy = self.inner.policy();
        let worker = self.worker(&policy).await.ok()?;
        let t = self.visible_tool(&policy, worker.as_ref(), name)?;
        if !t.input_schema_json.contains("x-mcp-header") {
            return None;
        }
        serde_json::from_str(&t.input_schema_json).ok()
    }

    /// The client's answers and the verified state of an input-required retry.
    pub(super) fn input_round(
        &self,
        scope: &str,
        params: &Map<String, Value>,
        st: &Stateless,
    ) -> Result<mcpd_ipc::InputRound, &'static str> {
        const NOT_AN_OBJECT: &str = "Invalid params: inputResponses must be an object";
        let responses_json = match params.get("inputResponses") {
            None | Some(Value::Null) => None,
            // Serialised once: the string that is checked is the string that is sent.
            Some(v @ Value::Object(m)) if m.len() <= 64 => match v.to_string() {
                s if s.len() <= 1024 * 1024 => Some(s),
                _ => return Err(NOT_AN_OBJECT),
            },
            Some(_) => return Err(NOT_AN_OBJECT),
        };
        let state = match params.get("requestState") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(
                crate::mcp::seal::open(self.inner.client.as_str(), scope, t)
                    .ok_or("Invalid params: requestState failed verification")?,
            ),
            Some(_) => return Err("Invalid params: requestState must be a string"),
        };
        Ok(mcpd_ipc::InputRound {
            client_caps_json: st.caps.to_string(),
            responses_json,
            state,
        })
    }

    /// An `InputRequiredResult` from a (hostile) worker's request list and state, sealed.
    pub(super) fn input_required_json(
        &self,
        scope: &str,
        ir: &mcpd_ipc::InputRequired,
    ) -> Option<Value> {
        let requests: Value = serde_json::from_str(&ir.requests_json).ok()?;
        let m = requests.as_object()?;
        let ok = !m.is_empty()
            && m.len() <= 16
            && m.iter().all(|(k, v)| {
                short(k, 128)
                    && matches!(
                        v.get("method").and_then(Value::as_str),
                        Some("elicitation/create" | "sampling/createMessage" | "roots/list")
                    )
                    && v.get("params").is_none_or(Value::is_object)
            });
        if !ok
            || ir
                .state
                .as_ref()
                .is_some_and(|s| s.len() > crate::mcp::seal::MAX_STATE / 2)
        {
            return None;
        }
        let mut v = json!({"resultType": "input_required", "inputRequests": requests});
        if ir.in_task {
            // Internal marker for the task runner (removed before anything reaches a client).
            v["_inTask"] = json!(true);
        }
        if let Some(state) = &ir.state {
            // `None` only without a key (the keys are put in force at broker start): fail closed.
            v["requestState"] = json!(crate::mcp::seal::seal(
                self.inner.client.as_str(),
                scope,
                state
            )?);
        }
        Some(v)
    }

    /// The `server/discover` result.
    pub(super) fn discover(&self) -> Value {
        json!({
            "resultType": "complete",
            "supportedVersions": STATELESS_VERSIONS,
            "capabilities": {
                "tools": {"listChanged": true},
                "resources": {"listChanged": true, "subscribe": true},
                "prompts": {"listChanged": true},
                "completions": {},
                "logging": {},
                "extensions": {crate::mcp::tasks::TASKS_EXT: {}}
            },
            "instructions": "Tools run in a per-client sandbox. Paths must lie within the directories listed by list_allowed_directories.",
            "ttlMs": TTL_MS,
            "cacheScope": "private",
            "_meta": {crate::mcp::protocol::META_SERVER_INFO: {"name": "mcpd", "title": "mcpd (confined MCP server)", "version": env!("CARGO_PKG_VERSION")}}
        })
    }
}

/// An input round before any work starts (not a task's question): `input_required` without the
/// task runner's internal marker.
pub(super) fn is_input_round(resp: &Value) -> bool {
    let r = &resp["result"];
    r.get("resultType").and_then(Value::as_str) == Some("input_required")
        && r.get("_inTask").is_none()
}
