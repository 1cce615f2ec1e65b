//! The audit record of a request, and the one way a reply leaves: [`Session::finish`] writes
//! the record (write(2), fdatasync in strict mode) *before* the reply is queued. If the record
//! cannot be written the reply is replaced by an error (fail closed); a limit hit gets its own
//! `limit.hit` record.
//!
//! Decides nothing; trusts the engine for the facts it records, and bounds every
//! client-supplied string it copies (method, tool, paths, command).
#![forbid(unsafe_code)]

use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::mcp::jsonrpc::{self, Id, INTERNAL_ERROR};
use crate::mcp::session::Session;

pub(super) const AUDIT_UNAVAILABLE: &str =
    "The audit log cannot be written; the request was refused";

/// What the audit record of one request says, besides the envelope.
#[derive(Debug, Default)]
pub(super) struct Rec {
    pub(super) method: String,
    pub(super) tool: Option<String>,
    pub(super) args_digest: Option<String>,
    pub(super) args_preview: Option<Value>,
    pub(super) decision: Option<(&'static str, String)>,
    pub(super) outcome: &'static str,
    pub(super) paths: Vec<String>,
    pub(super) command: Option<String>,
    pub(super) limit: Option<&'static str>,
    /// `tool` names a tool the worker or the policy defines (the metrics label it by name;
    /// any other name is `other`).
    pub(super) tool_known: bool,
}

impl Rec {
    pub(super) fn new(method: &str) -> Self {
        Self {
            method: method.chars().take(128).collect(),
            outcome: "success",
            ..Self::default()
        }
    }
    pub(super) fn allow(mut self, rule: &str) -> Self {
        self.decision = Some(("allow", rule.to_string()));
        self
    }
    pub(super) fn deny(mut self, reason: &str) -> Self {
        self.decision = Some(("deny", reason.to_string()));
        self
    }
    pub(super) fn outcome(mut self, o: &'static str) -> Self {
        self.outcome = o;
        self
    }
}

impl Session {
    pub(super) fn base_fields(&self) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("session".into(), json!(self.inner.id));
        f.insert("principal".into(), json!(self.inner.client.as_str()));
        f
    }

    /// Record a limit hit.
    pub(super) async fn limit_hit(&self, limit: &'static str, tool: Option<&str>) {
        let mut f = self.base_fields();
        f.insert("limit".into(), json!(limit));
        if let Some(t) = tool {
            f.insert("tool".into(), json!(t));
        }
        let _ = self.inner.audit.record("limit.hit", f).await;
        crate::metrics::limit_hit(limit);
    }

    /// Write the request's audit record, then queue the response (fail closed).
    pub(super) async fn finish(
        &self,
        id: Option<&Id>,
        started: Instant,
        rec: Rec,
        response: Value,
    ) {
        if let Some(m) = crate::metrics::get() {
            if let Some(("deny", reason)) = rec.decision.as_ref().map(|(d, r)| (*d, r.as_str())) {
                m.denied(reason);
            }
            if rec.method == "tools/call" {
                let outcome = match response.get("error") {
                    Some(_) if rec.outcome == "success" => "error",
                    _ => rec.outcome,
                };
                m.tool_call(
                    rec.tool.as_deref(),
                    rec.tool_known,
                    outcome,
                    started.elapsed(),
                );
            }
        }
        if !self.inner.audit.enabled() {
            if let Ok(mut s) = self.inner.state.lock() {
                s.requests += 1;
            }
            if !response.is_null() {
                self.inner.out.reply(id, response).await;
            }
            return;
        }
        let mut f = self.base_fields();
        f.insert("method".into(), json!(rec.method));
        if let Some(id) = id {
            f.insert("request_id".into(), id.to_value());
        }
        if let Some(t) = rec.tool {
            f.insert("tool".into(), json!(t));
        }
        if let Some(d) = rec.args_digest {
            f.insert("args_digest".into(), json!(d));
        }
        if let Some(p) = rec.args_preview {
            f.insert("args_preview".into(), p);
        }
        if let Some((decision, why)) = rec.decision {
            f.insert("decision".into(), json!(decision));
            f.insert(
                if decision == "allow" {
                    "rule"
                } else {
                    "reason"
                }
                .into(),
                json!(why),
            );
        }
        let outcome = match response.get("error") {
            Some(_) if rec.outcome == "success" => "error",
            _ => rec.outcome,
        };
        f.insert("outcome".into(), json!(outcome));
        if let Some(code) = response.get("error").and_then(|e| e.get("code")) {
            f.insert("error_code".into(), code.clone());
        }
        if !rec.paths.is_empty() {
            f.insert("paths".into(), json!(rec.paths));
        }
        if let Some(c) = rec.command {
            f.insert("command".into(), json!(c));
        }
        if let Some(l) = rec.limit {
            f.insert("limit".into(), json!(l));
        }
        f.insert(
            "duration_us".into(),
            json!(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
        );
        let bytes = response.get("result").map_or(0, jsonrpc::json_len);
        f.insert("result_bytes".into(), json!(bytes));
        if let Ok(mut s) = self.inner.state.lock() {
            s.requests += 1;
        }
        match self.inner.audit.record("request", f).await {
            Ok(()) if response.is_null() => {}
            Ok(()) => {
                self.inner.out.reply(id, response).await;
            }
            Err(e) => {
                tracing::error!("audit: {e}");
                let rid = id.map_or(Value::Null, Id::to_value);
                self.inner
                    .out
                    .reply(id, jsonrpc::error(rid, INTERNAL_ERROR, AUDIT_UNAVAILABLE))
                    .await;
            }
        }
    }
}
