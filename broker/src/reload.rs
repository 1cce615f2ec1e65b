//! The live policy and its reload (`SIGHUP`): every session reads the current policy for each
//! decision; a reload validates the new configuration completely first (a broken file changes
//! nothing), then swaps it in and tells every session, which announces `list_changed` to its
//! client and restarts its worker under the new sandbox at the next call.
#![forbid(unsafe_code)]

use std::sync::{Arc, RwLock};

use mcpd_policy::Policy;
use tokio::sync::broadcast;

/// The current policy, shared by every session.
#[derive(Debug, Clone)]
pub struct PolicyCell {
    current: Arc<RwLock<Arc<Policy>>>,
    reloads: broadcast::Sender<()>,
}

impl PolicyCell {
    /// A cell holding `p`.
    pub fn new(p: Policy) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(p))),
            reloads: broadcast::channel(16).0,
        }
    }

    /// The policy now.
    pub fn get(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replace the policy and tell the sessions.
    pub fn replace(&self, p: Policy) {
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(p),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(p),
        }
        let _ = self.reloads.send(());
    }

    /// Reload notifications.
    pub fn subscribe(&self) -> broadcast::Receiver<()> {
        self.reloads.subscribe()
    }
}
