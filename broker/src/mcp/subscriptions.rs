//! Change notifications: `list_changed` and `resources/updated` on the session's own stream
//! (session era) and on every `subscriptions/listen` stream (stateless era) whose filter asks
//! for them, rate-limited per session; the set of URIs the worker is asked to watch.
//!
//! Trusts no filter a client sends: URIs are bounded in length and number, streams per session
//! are bounded ([`MAX_LISTENERS`]).
#![forbid(unsafe_code)]

use serde_json::{json, Map, Value};

use crate::mcp::jsonrpc::{self, Id, INVALID_REQUEST};
use crate::mcp::record::Rec;
use crate::mcp::results::short;
use crate::mcp::session::Session;

/// Most resource subscriptions per session.
pub const MAX_SUBSCRIPTIONS: usize = 1024;

/// Most `subscriptions/listen` streams per session.
pub const MAX_LISTENERS: usize = 32;

/// Most change notifications forwarded per second per session.
pub(super) const MAX_CHANGES_PER_SEC: u32 = 20;

/// One `subscriptions/listen` stream.
#[derive(Debug)]
pub(super) struct Listener {
    pub(super) id: Id,
    pub(super) tools: bool,
    pub(super) prompts: bool,
    pub(super) resources: bool,
    pub(super) uris: std::collections::BTreeSet<String>,
}

impl Session {
    /// Tell the client about a change: on the session's own stream (session era) and on every
    /// `subscriptions/listen` stream whose filter asks for it.
    pub(super) fn notify_changed(&self, change: &mcpd_ipc::Change) {
        use mcpd_ipc::Change;
        let (method, uri) = match change {
            Change::Tools => ("notifications/tools/list_changed", None),
            Change::Prompts => ("notifications/prompts/list_changed", None),
            Change::Resources => ("notifications/resources/list_changed", None),
            Change::ResourceUpdated { uri } => {
                ("notifications/resources/updated", Some(uri.as_str()))
            }
        };
        let params = |sub: Option<&Id>| {
            let mut p = json!({});
            if let Some(u) = uri {
                p["uri"] = json!(u);
            }
            if let Some(id) = sub {
                p["_meta"] = json!({crate::mcp::protocol::META_SUBSCRIPTION: id.to_value()});
            }
            p
        };
        let (session_era, subscribed) = self
            .inner
            .state
            .lock()
            .map(|s| {
                (
                    s.version.is_some(),
                    uri.is_none_or(|u| s.subscriptions.contains(u)),
                )
            })
            .unwrap_or((false, false));
        if session_era && subscribed {
            self.inner
                .out
                .notify(None, jsonrpc::notification(method, params(None)));
        }
        let targets: Vec<Id> = self
            .inner
            .listeners
            .lock()
            .map(|ls| {
                ls.iter()
                    .filter(|l| match change {
                        Change::Tools => l.tools,
                        Change::Prompts => l.prompts,
                        Change::Resources => l.resources,
                        Change::ResourceUpdated { uri } => l.uris.contains(uri),
                    })
                    .map(|l| l.id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for id in targets {
            self.inner
                .out
                .notify(Some(&id), jsonrpc::notification(method, params(Some(&id))));
        }
    }

    /// Report a change (e.g. after a policy reload).
    pub fn changed(&self, change: mcpd_ipc::Change) {
        let _ = self.inner.changes.send(change);
    }

    /// Every resource URI someone in this session watches, for the worker.
    pub(super) fn watched_uris(&self) -> Vec<String> {
        let mut all: std::collections::BTreeSet<String> = self
            .inner
            .state
            .lock()
            .map(|s| s.subscriptions.clone())
            .unwrap_or_default();
        if let Ok(ls) = self.inner.listeners.lock() {
            for l in ls.iter() {
                all.extend(l.uris.iter().cloned());
            }
        }
        all.into_iter()
            .filter(|u| u.starts_with("file://"))
            .collect()
    }

    pub(super) async fn update_watch(&self) {
        let uris = self.watched_uris();
        let w = self.inner.worker.lock().await.clone();
        if let Some(w) = w {
            w.watch(uris).await;
        }
    }

    /// `subscriptions/listen`: acknowledge the honoured filter on the request's stream, then
    /// keep sending matching notifications there until the client closes it (no response).
    pub(super) async fn listen(
        &self,
        id: &Id,
        params: &Map<String, Value>,
        rec: Rec,
    ) -> (Rec, Value) {
        let n = params.get("notifications").and_then(Value::as_object);
        let flag = |k: &str| {
            n.and_then(|n| n.get(k))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let uris: std::collections::BTreeSet<String> = n
            .and_then(|n| n.get("resourceSubscriptions"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter(|u| short(u, 8192))
                    .take(MAX_SUBSCRIPTIONS)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let listener = Listener {
            id: id.clone(),
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
            uris,
        };
        let mut honoured = json!({});
        for (k, on) in [
            ("toolsListChanged", listener.tools),
            ("promptsListChanged", listener.prompts),
            ("resourcesListChanged", listener.resources),
        ] {
            if on {
                honoured[k] = json!(true);
            }
        }
        if !listener.uris.is_empty() {
            honoured["resourceSubscriptions"] = json!(listener.uris);
        }
        let watch = !listener.uris.is_empty();
        let added = self.inner.listeners.lock().is_ok_and(|mut ls| {
            if ls.len() >= MAX_LISTENERS || ls.iter().any(|l| &l.id == id) {
                return false;
            }
            ls.push(listener);
            true
        });
        if !added {
            return (
                rec.outcome("limit"),
                jsonrpc::error(
                    id.to_value(),
                    INVALID_REQUEST,
                    "Too many subscriptions streams",
                ),
            );
        }
        if watch {
            self.update_watch().await;
        }
        self.inner.out.reply(
            Some(id),
            jsonrpc::notification(
                "notifications/subscriptions/acknowledged",
                json!({"notifications": honoured, "_meta": {crate::mcp::protocol::META_SUBSCRIPTION: id.to_value()}}),
            ),
        ).await;
        (rec.allow("protocol"), Value::Null)
    }
}
