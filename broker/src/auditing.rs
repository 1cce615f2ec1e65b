//! The broker's view of the audit log: an optional [`mcpd_audit::AuditLog`] plus the
//! operator's choices (argument previews). With no log configured every call succeeds and
//! records nothing.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use mcpd_audit::{AuditConfig, AuditLog, SyncMode};
use mcpd_policy::AuditSettings;
use serde_json::{Map, Value};

/// Path of journald's native socket.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// Handle used by sessions and the supervisor.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    log: Option<AuditLog>,
    preview: bool,
}

impl Audit {
    /// No audit log.
    pub fn off() -> Self {
        Self::default()
    }

    /// Open the configured log.
    pub fn open(s: &AuditSettings) -> Result<Self, mcpd_audit::AuditError> {
        let cfg = AuditConfig {
            path: s.path.clone(),
            mode: if s.strict {
                SyncMode::Strict
            } else {
                SyncMode::Batch {
                    interval: Duration::from_millis(s.batch_interval_ms),
                }
            },
            rotate_bytes: (s.rotate_bytes > 0).then_some(s.rotate_bytes),
            checkpoint_key: s.checkpoint_key.clone(),
            checkpoint_every: s.checkpoint_every,
            checkpoint_interval: (s.checkpoint_secs > 0)
                .then(|| Duration::from_secs(s.checkpoint_secs)),
            fail_open: s.fail_open,
            journald_socket: s.journald.then(|| Path::new(JOURNALD_SOCKET).to_path_buf()),
        };
        Ok(Self {
            log: Some(AuditLog::open(cfg)?),
            preview: s.preview_args,
        })
    }

    /// Whether a log is configured (records are built only then).
    pub fn enabled(&self) -> bool {
        self.log.is_some()
    }

    /// The log, when one is configured (the metrics listener observes its fdatasyncs).
    pub fn log(&self) -> Option<&AuditLog> {
        self.log.as_ref()
    }

    /// Records waiting for the writer thread (0 without a log): the metrics' queue depth.
    pub fn queued(&self) -> u64 {
        self.log.as_ref().map_or(0, AuditLog::queued)
    }

    /// Whether argument previews are recorded.
    pub fn preview_args(&self) -> bool {
        self.preview
    }

    /// False when the log cannot be written (requests are then refused).
    pub fn healthy(&self) -> bool {
        self.log.as_ref().is_none_or(AuditLog::is_healthy)
    }

    /// Append a record; resolves once it is written (and synced in strict mode).
    pub async fn record(
        &self,
        event: &str,
        fields: Map<String, Value>,
    ) -> Result<(), mcpd_audit::AuditError> {
        match &self.log {
            Some(l) => l.append(event, fields).await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// Append from synchronous code.
    pub fn record_blocking(
        &self,
        event: &str,
        fields: Map<String, Value>,
    ) -> Result<(), mcpd_audit::AuditError> {
        match &self.log {
            Some(l) => l.append_blocking(event, fields).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Flush, checkpoint and stop the writer.
    pub fn close(&self) {
        if let Some(l) = &self.log {
            l.close();
        }
    }
}

/// 128 random bits as hex (session ids).
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        // getrandom(2) cannot fail for 16 bytes once the pool is initialised; fall back to
        // time and pid, which stay unique per process even if not secret.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = (t ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
