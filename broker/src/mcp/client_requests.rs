//! Server→client requests: the broker's own (`roots/list`, and the client roots that narrow —
//! never widen — the configured paths) and those a running tool makes (sampling, elicitation,
//! roots), relayed on the stream of the call that asked, bounded in number
//! ([`MAX_CLIENT_REQUESTS`]) and in time (`client_request_timeout_secs`).
//!
//! Trusts neither side: a worker may only ask for what the client declared, and the client's
//! answer is size-checked before it reaches the worker.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::mcp::backend::ToolWorker;
use crate::mcp::jsonrpc::Id;
use crate::mcp::printable;
use crate::mcp::session::Session;
use mcpd_ipc::text::file_uri_path;
use mcpd_policy::lexical_normalize as lexical;
use mcpd_policy::Policy;

/// Most server→client requests waiting for an answer per session.
pub const MAX_CLIENT_REQUESTS: usize = 64;

/// A server→client request waiting for the client's answer.
pub(super) struct ClientPending {
    pub(super) worker: Arc<dyn ToolWorker>,
    pub(super) worker_request: u64,
    pub(super) call: u64,
}

impl Session {
    /// The client answered one of our requests: pass the answer to the worker that asked.
    pub(super) fn client_response(&self, id: Option<Id>, outcome: Result<Value, Value>) {
        let Some(id) = id else { return };
        // The answer to the broker's own roots/list?
        let own = self.inner.state.lock().ok().is_some_and(|mut s| {
            if s.roots_request.as_ref() == Some(&id) {
                s.roots_request = None;
                true
            } else {
                false
            }
        });
        if own {
            self.set_client_roots(outcome.ok());
            return;
        }
        let Some(p) = self
            .inner
            .client_pending
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&id))
        else {
            return; // unknown or already answered: ignored
        };
        let reply = match outcome {
            // Serialised once: the string that is checked is the string that is sent.
            Ok(v) => match v.is_object().then(|| v.to_string()) {
                Some(result_json) if result_json.len() <= 1024 * 1024 => {
                    mcpd_ipc::ClientReplyOutcome::Ok { result_json }
                }
                _ => mcpd_ipc::ClientReplyOutcome::Err {
                    message: "the client's answer was not a valid result".into(),
                },
            },
            Err(e) => mcpd_ipc::ClientReplyOutcome::Err {
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .map_or_else(|| "the client refused".to_string(), printable),
            },
        };
        tokio::spawn(async move { p.worker.client_reply(p.worker_request, reply).await });
    }

    /// Ask the client for its roots (session era, if it declared the capability).
    pub(super) fn ask_roots(&self) {
        let id = {
            let Ok(mut s) = self.inner.state.lock() else {
                return;
            };
            if s.version.is_none() || s.client_caps.get("roots").is_none() {
                return;
            }
            let id = self.next_request_id("roots");
            s.roots_request = Some(id.clone());
            id
        };
        let queued = self.inner.out.request(
            None,
            json!({"jsonrpc": "2.0", "id": id.to_value(), "method": "roots/list", "params": {}}),
        );
        if !queued {
            if let Ok(mut s) = self.inner.state.lock() {
                s.roots_request = None;
            }
        }
    }

    /// Record the client's roots: `file://` directories, lexically normalised. A malformed
    /// answer leaves the previous roots in place.
    pub(super) fn set_client_roots(&self, result: Option<Value>) {
        let Some(list) = result
            .as_ref()
            .and_then(|r| r.get("roots"))
            .and_then(Value::as_array)
        else {
            return;
        };
        let roots: Vec<std::path::PathBuf> = list
            .iter()
            .take(256)
            .filter_map(|r| r.get("uri").and_then(Value::as_str))
            .filter_map(file_uri_path)
            .filter_map(|p| lexical(std::path::Path::new(&p)))
            .collect();
        tracing::info!(client = %self.inner.client, roots = roots.len(), "client roots narrow the configured paths");
        if let Ok(mut s) = self.inner.state.lock() {
            // No usable roots (an empty list, or none that is a file:// URI) narrow nothing.
            s.client_roots = (!roots.is_empty()).then_some(roots);
        }
    }

    /// With client roots: whether every path lies inside one of them (resolved like the
    /// policy resolves it). Without: true.
    pub(super) fn inside_client_roots(&self, policy: &Policy, paths: &[&str]) -> bool {
        let roots = self
            .inner
            .state
            .lock()
            .ok()
            .and_then(|s| s.client_roots.clone());
        let Some(roots) = roots else { return true };
        let base = policy
            .permissions(&self.inner.client)
            .and_then(mcpd_policy::base_dir)
            .map(std::path::Path::to_path_buf);
        paths.iter().all(|p| {
            let given = std::path::Path::new(p);
            let abs = if given.is_absolute() {
                given.to_path_buf()
            } else {
                match &base {
                    Some(b) => b.join(given),
                    None => return false,
                }
            };
            lexical(&abs).is_some_and(|n| roots.iter().any(|r| n.starts_with(r)))
        })
    }

    /// Relay a worker's request to the client, on the stream of the call that made it.
    pub(super) async fn client_request(
        &self,
        policy: &Policy,
        related: &Id,
        worker: &Arc<dyn ToolWorker>,
        call: u64,
        worker_request: u64,
        request: mcpd_ipc::ClientRequestKind,
    ) {
        let refuse = |m: &str| mcpd_ipc::ClientReplyOutcome::Err { message: m.into() };
        let (method, params, cap) = match &request {
            mcpd_ipc::ClientRequestKind::Sampling { params_json } => (
                "sampling/createMessage",
                serde_json::from_str::<Value>(params_json).unwrap_or(Value::Null),
                "sampling",
            ),
            mcpd_ipc::ClientRequestKind::Elicitation { params_json } => (
                "elicitation/create",
                serde_json::from_str::<Value>(params_json).unwrap_or(Value::Null),
                "elicitation",
            ),
            mcpd_ipc::ClientRequestKind::Roots => ("roots/list", json!({}), "roots"),
        };
        let declared = self
            .inner
            .state
            .lock()
            .map(|s| s.client_caps.get(cap).is_some())
            .unwrap_or(false);
        if !declared {
            worker
                .client_reply(
                    worker_request,
                    refuse(&format!("the client does not support {cap}")),
                )
                .await;
            return;
        }
        let id = self.next_request_id("req");
        let registered = match self.inner.client_pending.lock() {
            Ok(mut m) if m.len() < MAX_CLIENT_REQUESTS => {
                m.insert(
                    id.clone(),
                    ClientPending {
                        worker: worker.clone(),
                        worker_request,
                        call,
                    },
                );
                true
            }
            _ => false,
        };
        if !registered {
            worker
                .client_reply(
                    worker_request,
                    refuse("too many requests waiting for the client"),
                )
                .await;
            return;
        }
        let queued = self.inner.out.request(
            Some(related),
            json!({"jsonrpc": "2.0", "id": id.to_value(), "method": method, "params": params}),
        );
        if !queued {
            if let Some(p) = self
                .inner
                .client_pending
                .lock()
                .ok()
                .and_then(|mut m| m.remove(&id))
            {
                p.worker
                    .client_reply(p.worker_request, refuse("the client is not reading"))
                    .await;
            }
            return;
        }
        // Give up after a while: the worker is told, and a late answer is ignored.
        let s = self.clone();
        let wait = Duration::from_secs(policy.client_request_timeout_secs);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let gone = s
                .inner
                .client_pending
                .lock()
                .ok()
                .and_then(|mut m| m.remove(&id));
            if let Some(p) = gone {
                p.worker
                    .client_reply(
                        p.worker_request,
                        mcpd_ipc::ClientReplyOutcome::Err {
                            message: "the client did not answer in time".into(),
                        },
                    )
                    .await;
            }
        });
    }

    /// Forget the client requests of a call that ended.
    pub(super) fn forget_client_requests(&self, call: u64) {
        if let Ok(mut m) = self.inner.client_pending.lock() {
            m.retain(|_, p| p.call != call);
        }
    }
}
