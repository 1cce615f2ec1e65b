//! mcpd's tamper-evident audit log (API skeleton; implementation in progress).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

/// Version of the record format.
pub const SCHEMA_VERSION: u32 = 1;

/// When records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// write(2) then fdatasync before `append` resolves; concurrent appends share one sync.
    Strict,
    /// write(2) before `append` resolves; fdatasync at most every `interval`.
    Batch {
        /// sync interval
        interval: Duration,
    },
}

/// Audit log configuration.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The log file.
    pub path: PathBuf,
    /// Durability mode.
    pub mode: SyncMode,
    /// Rotate when the file grows beyond this many bytes.
    pub rotate_bytes: Option<u64>,
    /// Ed25519 signing key file for checkpoints.
    pub checkpoint_key: Option<PathBuf>,
    /// Write a signed checkpoint every this many records (with a key).
    pub checkpoint_every: u64,
    /// Keep serving when the log cannot be written (explicit operator choice; default false).
    pub fail_open: bool,
    /// Forward events to journald at this socket path (None = off).
    pub journald_socket: Option<PathBuf>,
}

/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// I/O failure.
    #[error("audit log i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The log is unusable.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
}

/// What `append` returns.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// Sequence number of the record.
    pub seq: u64,
}

/// A handle on the open audit log (cheap to clone).
#[derive(Debug, Clone)]
pub struct AuditLog {}

impl AuditLog {
    /// Open (or continue) the log.
    pub fn open(_cfg: AuditConfig) -> Result<Self, AuditError> {
        Ok(Self {})
    }
    /// Append one event (fields are merged into the record envelope).
    pub async fn append(&self, _event: &str, _fields: Map<String, Value>) -> Result<Receipt, AuditError> {
        Ok(Receipt { seq: 0 })
    }
    /// Append from synchronous code (blocks the calling thread).
    pub fn append_blocking(&self, _event: &str, _fields: Map<String, Value>) -> Result<Receipt, AuditError> {
        Ok(Receipt { seq: 0 })
    }
    /// False once a write has failed (the broker then fails closed).
    pub fn is_healthy(&self) -> bool {
        true
    }
    /// Flush, write a final checkpoint when a key is configured, sync, and stop the writer.
    pub fn close(&self) {}
}

/// SHA-256 (hex) of the RFC 8785 canonical JSON of `v`.
pub fn args_digest(_v: &Value) -> String {
    String::new()
}

/// A redacted preview of arguments: structure kept, strings shortened, bounded total size.
pub fn redacted_preview(v: &Value) -> Value {
    v.clone()
}
