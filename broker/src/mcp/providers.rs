//! `resources/*`, `prompts/*`, `completion/complete`: operator prompts served by the broker,
//! everything else asked of the worker's providers; `file://` resources decided by the policy
//! like paths; every answer validated (the worker is hostile) and paged.
//!
//! Trusts nothing the worker answers: a malformed answer ends the worker.
#![forbid(unsafe_code)]

use mcpd_ipc::CallErrorKind;
use mcpd_policy::{Decision, Request};
use serde_json::{json, Map, Value};
use std::sync::Arc;

use crate::mcp::jsonrpc::{self, Id, INTERNAL_ERROR, INVALID_PARAMS};
use crate::mcp::printable;
use crate::mcp::protocol::RpcError;
use crate::mcp::record::Rec;
use crate::mcp::results::{short, valid_entries};
use crate::mcp::session::Session;
use crate::mcp::stateless::Stateless;
use crate::mcp::tools::{SANDBOX_UNAVAILABLE, WORKER_DIED};
use crate::worker::supervisor::CallOutcome;
use base64::Engine as _;
use mcpd_ipc::text::file_uri_path;
use mcpd_policy::Policy;

/// Resources and prompts per list page.
pub const LIST_PAGE_SIZE: usize = 100;

impl Session {
    /// resources/*, prompts/*, completion/complete: asked of the worker's providers, answers
    /// validated (the worker is hostile), file:// resources checked against the policy.
    pub(super) async fn provider_request(
        &self,
        policy: &Arc<Policy>,
        id: &Id,
        method: &str,
        params: Map<String, Value>,
        rec: Rec,
        stateless: Option<&Stateless>,
    ) -> (Rec, Value) {
        let err = |code, msg: &str| jsonrpc::error(id.to_value(), code, msg);
        let str_param = |k: &str| {
            params
                .get(k)
                .and_then(Value::as_str)
                .filter(|v| short(v, 8192))
                .map(str::to_string)
        };
        // Operator prompts (from the policy) are served by the broker itself.
        let operator_prompts = policy.prompts_for(&self.inner.client);
        let operator_prompt = |n: &str| operator_prompts.iter().find(|p| p.name == n).copied();
        if method == "prompts/get" {
            if let Some(p) = str_param("name").as_deref().and_then(operator_prompt) {
                let args = params
                    .get("arguments")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                return match p.render(&args) {
                    Ok(v) => (rec.allow("prompts"), jsonrpc::response(id, v)),
                    Err(m) => (rec, err(INVALID_PARAMS, &format!("Invalid params: {m}"))),
                };
            }
        }
        if method == "completion/complete" {
            let r = params.get("ref");
            let prompt = (r.and_then(|r| r.get("type")).and_then(Value::as_str)
                == Some("ref/prompt"))
            .then(|| r.and_then(|r| r.get("name")).and_then(Value::as_str))
            .flatten()
            .and_then(operator_prompt);
            if let Some(p) = prompt {
                let a = params.get("argument");
                let values = p.complete(
                    a.and_then(|a| a.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    a.and_then(|a| a.get("value"))
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                );
                return (
                    rec.allow("prompts"),
                    jsonrpc::response(
                        id,
                        json!({"completion": {"values": values, "total": values.len(), "hasMore": false}}),
                    ),
                );
            }
        }
        let query = match method {
            "resources/list" => mcpd_ipc::Query::ListResources,
            "resources/templates/list" => mcpd_ipc::Query::ListResourceTemplates,
            "prompts/list" => mcpd_ipc::Query::ListPrompts,
            "resources/read" => {
                let Some(uri) = str_param("uri") else {
                    return (
                        rec,
                        err(INVALID_PARAMS, "Invalid params: uri must be a string"),
                    );
                };
                if let Some(path) = file_uri_path(&uri) {
                    let d =
                        policy.decide(&self.inner.client, &Request::ReadResource { path: &path });
                    match d {
                        Decision::Allow(_) => {}
                        Decision::Deny(r) => {
                            let e = RpcError::new(INVALID_PARAMS, "Resource not found")
                                .with_data(json!({"uri": uri}));
                            return (
                                rec.deny(r.code()).outcome("denied"),
                                e.to_response(id.to_value()),
                            );
                        }
                    }
                }
                mcpd_ipc::Query::ReadResource { uri }
            }
            "prompts/get" => {
                let Some(name) = str_param("name") else {
                    return (
                        rec,
                        err(INVALID_PARAMS, "Invalid params: name must be a string"),
                    );
                };
                let arguments = match params.get("arguments") {
                    None | Some(Value::Null) => json!({}),
                    Some(a @ Value::Object(_)) => a.clone(),
                    Some(_) => {
                        return (
                            rec,
                            err(
                                INVALID_PARAMS,
                                "Invalid params: arguments must be an object",
                            ),
                        )
                    }
                };
                let input = match stateless {
                    None => None,
                    Some(st) => match self.input_round(&format!("prompt:{name}"), &params, st) {
                        Ok(i) => Some(i),
                        Err(m) => {
                            return (rec.deny("invalid_request_state"), err(INVALID_PARAMS, m))
                        }
                    },
                };
                mcpd_ipc::Query::GetPrompt {
                    name,
                    arguments_json: arguments.to_string(),
                    input,
                }
            }
            _ => {
                let (Some(r @ Value::Object(_)), Some(a @ Value::Object(_))) =
                    (params.get("ref"), params.get("argument"))
                else {
                    return (
                        rec,
                        err(
                            INVALID_PARAMS,
                            "Invalid params: ref and argument must be objects",
                        ),
                    );
                };
                mcpd_ipc::Query::Complete {
                    reference_json: r.to_string(),
                    argument_json: a.to_string(),
                }
            }
        };
        let uri_for_error = str_param("uri");
        let Ok(worker) = self.worker(policy).await else {
            return (
                rec.outcome("worker_unavailable"),
                err(INTERNAL_ERROR, SANDBOX_UNAVAILABLE),
            );
        };
        let answer = match worker.query(query).await {
            CallOutcome::Answer(json) => match serde_json::from_str::<Value>(&json) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    worker.kill().await;
                    return (
                        rec.outcome("killed"),
                        err(INTERNAL_ERROR, "Internal error: malformed answer"),
                    );
                }
            },
            CallOutcome::Failed(e) => {
                return match e.kind {
                    CallErrorKind::InvalidArguments | CallErrorKind::UnknownTool => {
                        let r = RpcError::new(INVALID_PARAMS, printable(&e.message))
                            .with_data(uri_for_error.map_or(Value::Null, |u| json!({"uri": u})));
                        (rec.outcome("not_found"), r.to_response(id.to_value()))
                    }
                    _ => (rec, err(INTERNAL_ERROR, "Internal error")),
                }
            }
            CallOutcome::WorkerDied => {
                return (
                    rec.outcome("worker_crash"),
                    err(INTERNAL_ERROR, WORKER_DIED),
                )
            }
            CallOutcome::Done(_) => {
                worker.kill().await;
                return (
                    rec.outcome("killed"),
                    err(INTERNAL_ERROR, "Internal error: malformed answer"),
                );
            }
        };
        let malformed = || (INTERNAL_ERROR, "Internal error: malformed answer");
        let result: Result<Value, (i64, &str)> = match method {
            "resources/list" => valid_entries(&answer, "resources", &["uri", "name"])
                .ok_or_else(malformed)
                .and_then(|items| {
                    let visible: Vec<Value> = items
                        .into_iter()
                        .filter(|r| match r["uri"].as_str().and_then(file_uri_path) {
                            None => true,
                            Some(p) => matches!(
                                policy.decide(
                                    &self.inner.client,
                                    &Request::ReadResource { path: &p }
                                ),
                                Decision::Allow(_)
                            ),
                        })
                        .collect();
                    let (items, next) = page(visible, params.get("cursor"))
                        .map_err(|()| (INVALID_PARAMS, "Invalid params: invalid cursor"))?;
                    let mut v = json!({"resources": items});
                    if let Some(n) = next {
                        v["nextCursor"] = json!(n);
                    }
                    Ok(v)
                }),
            "resources/templates/list" => {
                valid_entries(&answer, "resourceTemplates", &["uriTemplate", "name"])
                    .map(|t| json!({"resourceTemplates": t}))
                    .ok_or_else(malformed)
            }
            "prompts/list" => valid_entries(&answer, "prompts", &["name"])
                .map(|p| {
                    let mut all: Vec<Value> =
                        operator_prompts.iter().map(|op| op.listing()).collect();
                    all.extend(p.into_iter().filter(|w| {
                        !operator_prompts
                            .iter()
                            .any(|op| Some(op.name.as_str()) == w["name"].as_str())
                    }));
                    json!({"prompts": all})
                })
                .ok_or_else(malformed),
            "resources/read" => {
                let ok = answer["contents"].as_array().is_some_and(|c| {
                    c.iter().all(|x| {
                        x["uri"].as_str().is_some_and(|u| short(u, 8192))
                            && (x["text"].is_string() || x["blob"].is_string())
                    })
                });
                if ok {
                    Ok(json!({"contents": answer["contents"]}))
                } else {
                    Err(malformed())
                }
            }
            "prompts/get" if stateless.is_some() && answer.get("inputRequests").is_some() => {
                let name = str_param("name").unwrap_or_default();
                let state = match answer.get("requestState") {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(b)) => base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map(Some)
                        .map_err(|_| ()),
                    Some(_) => Err(()),
                };
                let ir = state.ok().map(|state| mcpd_ipc::InputRequired {
                    requests_json: answer["inputRequests"].to_string(),
                    state,
                    in_task: false,
                });
                ir.and_then(|ir| self.input_required_json(&format!("prompt:{name}"), &ir))
                    .ok_or_else(malformed)
            }
            "prompts/get" => {
                let ok = answer["messages"].as_array().is_some_and(|m| {
                    m.iter()
                        .all(|x| x["role"].is_string() && x["content"].is_object())
                });
                if ok {
                    let mut v = json!({"messages": answer["messages"]});
                    if let Some(d) = answer.get("description").filter(|d| d.is_string()) {
                        v["description"] = d.clone();
                    }
                    Ok(v)
                } else {
                    Err(malformed())
                }
            }
            _ => {
                let c = &answer["completion"];
                let ok = c["values"]
                    .as_array()
                    .is_some_and(|v| v.len() <= 100 && v.iter().all(Value::is_string));
                if ok {
                    let mut v = json!({"completion": {"values": c["values"]}});
                    if let Some(t) = c.get("total").filter(|t| t.is_u64()) {
                        v["completion"]["total"] = t.clone();
                    }
                    if let Some(h) = c.get("hasMore").filter(|h| h.is_boolean()) {
                        v["completion"]["hasMore"] = h.clone();
                    }
                    Ok(v)
                } else {
                    Err(malformed())
                }
            }
        };
        match result {
            Ok(v) => (rec.allow("protocol"), jsonrpc::response(id, v)),
            Err((code, m)) => {
                if code == INTERNAL_ERROR {
                    tracing::warn!(
                        pid = worker.pid(),
                        method,
                        "worker answered a query with a malformed result; ending it"
                    );
                    worker.kill().await;
                }
                (rec, err(code, m))
            }
        }
    }
}

pub(super) fn page(
    items: Vec<Value>,
    cursor: Option<&Value>,
) -> Result<(Vec<Value>, Option<String>), ()> {
    let start = match cursor {
        None | Some(Value::Null) => 0,
        Some(Value::String(c)) => c
            .strip_prefix("offset:")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= items.len())
            .ok_or(())?,
        Some(_) => return Err(()),
    };
    let end = (start + LIST_PAGE_SIZE).min(items.len());
    let next = (end < items.len()).then(|| format!("offset:{end}"));
    Ok((items[start..end].to_vec(), next))
}
