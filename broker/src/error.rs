//! Every way `mcpd` can fail before or while serving, or in a one-shot subcommand: one
//! [`BrokerError`], whose `Display` is the line printed on stderr (`mcpd: ...`) and whose
//! [`BrokerError::exit_code`] is the documented exit status (docs/ARCHITECTURE.md, "Exit
//! codes").
//!
//! What it does: names each failure (configuration, worker path, runtime, audit log, key,
//! transport) and maps it to CONFIG (2), RUNTIME (3), TRANSPORT (4) or AUDIT (5).
//! What it does not do: print, log or exit (`main` prints it and turns it into the exit
//! status), or describe a failure of one request (those are JSON-RPC errors, never this type).
//! What it trusts: the messages of the errors it wraps, printed as they are.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use mcpd_policy::PolicyError;

/// Why no policy could be loaded: the part of the message after `mcpd: ` (or after
/// `mcpd: configuration error: ` when serving). Also the reason a `SIGHUP` reload is refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The working directory, against which relative flag paths are resolved, is unknown.
    #[error("current directory: {0}")]
    CurrentDir(#[source] std::io::Error),
    /// The configuration file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file as the operator named it.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration (file or flags) is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A key file of `[auth.jwt]` cannot be read or holds no usable key.
    #[error("auth.jwt keys: {0}")]
    JwtKeys(String),
    /// The `requestState` key file(s) of `[http]` cannot be used.
    #[error("{0}")]
    StateKey(String),
}

/// A start-up, serve or subcommand failure of the broker. `Display` is the whole stderr line.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// `serve` (at start): the configuration file and flags give no valid policy.
    #[error("mcpd: configuration error: {0}")]
    Config(#[source] LoadError),
    /// `check-config`, `doctor`: the file (or, for `doctor`'s default policy, the working
    /// directory) cannot be read, or (`doctor`) the policy is invalid.
    #[error("mcpd: {0}")]
    ConfigFile(#[source] LoadError),
    /// `check-config`'s verdict on an invalid file, exactly as the policy crate renders it
    /// (`FILE:LINE:COL: message`), without a prefix.
    #[error("{0}")]
    ConfigInvalid(#[source] PolicyError),
    /// `check-config` without `--config`, and no default configuration file exists.
    #[error("mcpd: no configuration file: name one with --config FILE (or MCPD_CONFIG); {} does not exist", crate::cli::DEFAULT_CONFIG)]
    NoConfig,
    /// The worker executable's default location (next to `mcpd`) cannot be found.
    #[error("mcpd: locating mcpd: {0}")]
    LocateSelf(#[source] std::io::Error),
    /// `mcpd`'s own path has no parent directory to find `mcpd-worker` in.
    #[error("mcpd: mcpd has no parent directory")]
    NoExeDir,
    /// The worker executable is missing, not executable, or speaks another IPC protocol
    /// (`worker::probe`); the message says how to fix it.
    #[error("mcpd: {0}")]
    Worker(String),
    /// `server.cgroup` names a cgroup that cannot be used.
    #[error("mcpd: server.cgroup: {0}")]
    Cgroup(#[source] crate::worker::cgroup::CgroupError),
    /// The `requestState` key cannot be created (no CSPRNG) or put in force.
    #[error("mcpd: {0}")]
    Key(#[source] crate::mcp::seal::KeyError),
    /// The async runtime cannot be built.
    #[error("mcpd: runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The configured audit log cannot be opened.
    #[error("mcpd: audit log {}: {source}", path.display())]
    AuditOpen {
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: mcpd_audit::AuditError,
    },
    /// The audit log does not take the start records (`broker.start`, `config.load`).
    #[error("mcpd: the audit log cannot be written; refusing to serve")]
    AuditWrite,
    /// The worker supervisor (its spawner thread) cannot be started.
    #[error("mcpd: {0}")]
    Supervisor(#[source] std::io::Error),
    /// HTTP is asked for but the policy names no client for it.
    #[error("mcpd: the policy names no client for HTTP ([http] client = ...): HTTP is refused")]
    HttpNoClient,
    /// The HTTP listener cannot be bound (or its address read back).
    #[error("mcpd: {0}")]
    Listen(#[source] std::io::Error),
    /// The TLS files of the HTTP listener cannot be used (read, parsed, permissions).
    #[error("mcpd: TLS: {0}")]
    Tls(String),
    /// A transport ended with an error (stdio, HTTP, or a transport task that failed).
    #[error("mcpd: {0}")]
    Transport(#[source] std::io::Error),
    /// `mcpd audit ...`: a log cannot be found or read, or a key pair cannot be written.
    #[error("mcpd audit: {0}")]
    AuditTool(#[source] mcpd_audit::AuditError),
    /// `mcpd audit ...`: a named log file does not exist (nor rotated files of it).
    #[error("mcpd audit: {}: no such audit log", .0.display())]
    NoAuditLog(PathBuf),
    /// `mcpd completions`, `mcpd manpages`: the output (stdout, a directory, a page) cannot be
    /// written.
    #[error("mcpd: writing {what}: {source}")]
    Output {
        /// What was being written: `stdout`, or a path.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl BrokerError {
    /// Configuration error (also what clap uses for a malformed command line).
    pub const CONFIG: u8 = 2;
    /// Runtime: the async runtime, no CSPRNG for the `requestState` key, or the output of
    /// `completions`/`manpages` cannot be written.
    pub const RUNTIME: u8 = 3;
    /// Transport: a listener, a transport, or the worker supervisor failed.
    pub const TRANSPORT: u8 = 4;
    /// Audit: the log cannot be opened or written (`serve`), or read (`mcpd audit`).
    pub const AUDIT: u8 = 5;

    /// The process exit status for this failure.
    pub fn code(&self) -> u8 {
        match self {
            Self::Config(_)
            | Self::ConfigFile(_)
            | Self::ConfigInvalid(_)
            | Self::NoConfig
            | Self::LocateSelf(_)
            | Self::NoExeDir
            | Self::Worker(_)
            | Self::Cgroup(_)
            | Self::Tls(_) => Self::CONFIG,
            Self::Key(_) | Self::Runtime(_) | Self::Output { .. } => Self::RUNTIME,
            Self::Supervisor(_) | Self::HttpNoClient | Self::Listen(_) | Self::Transport(_) => {
                Self::TRANSPORT
            }
            Self::AuditOpen { .. }
            | Self::AuditWrite
            | Self::AuditTool(_)
            | Self::NoAuditLog(_) => Self::AUDIT,
        }
    }

    /// [`Self::code`] as the `ExitCode` `main` returns.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(msg: &str) -> std::io::Error {
        std::io::Error::other(msg.to_string())
    }

    #[test]
    fn messages_and_exit_codes_are_the_documented_ones() {
        let cases: Vec<(BrokerError, &str, u8)> = vec![
            (
                BrokerError::Config(LoadError::CurrentDir(io("gone"))),
                "mcpd: configuration error: current directory: gone",
                2,
            ),
            (
                BrokerError::Config(LoadError::Read {
                    path: "/etc/mcpd.toml".into(),
                    source: io("denied"),
                }),
                "mcpd: configuration error: /etc/mcpd.toml: denied",
                2,
            ),
            (
                BrokerError::Config(LoadError::Policy(PolicyError::UnknownToolset("x".into()))),
                "mcpd: configuration error: --toolset x: unknown tool set (known: conformance)",
                2,
            ),
            (
                BrokerError::ConfigFile(LoadError::Read {
                    path: "a.toml".into(),
                    source: io("missing"),
                }),
                "mcpd: a.toml: missing",
                2,
            ),
            (
                BrokerError::ConfigFile(LoadError::CurrentDir(io("gone"))),
                "mcpd: current directory: gone",
                2,
            ),
            (
                BrokerError::ConfigInvalid(PolicyError::UnknownToolset("y".into())),
                "--toolset y: unknown tool set (known: conformance)",
                2,
            ),
            (
                BrokerError::LocateSelf(io("no /proc")),
                "mcpd: locating mcpd: no /proc",
                2,
            ),
            (
                BrokerError::NoExeDir,
                "mcpd: mcpd has no parent directory",
                2,
            ),
            (
                BrokerError::Runtime(io("no threads")),
                "mcpd: runtime: no threads",
                3,
            ),
            (
                BrokerError::Key(crate::mcp::seal::KeyError::Random("short".into())),
                "mcpd: getrandom: cannot create the requestState key: short",
                3,
            ),
            (
                BrokerError::AuditWrite,
                "mcpd: the audit log cannot be written; refusing to serve",
                5,
            ),
            (
                BrokerError::AuditOpen {
                    path: "/var/log/a".into(),
                    source: mcpd_audit::AuditError::Io(io("full")),
                },
                "mcpd: audit log /var/log/a: audit log i/o: full",
                5,
            ),
            (
                BrokerError::NoAuditLog("x.jsonl".into()),
                "mcpd audit: x.jsonl: no such audit log",
                5,
            ),
            (
                BrokerError::AuditTool(mcpd_audit::AuditError::Io(io("eof"))),
                "mcpd audit: audit log i/o: eof",
                5,
            ),
            (BrokerError::Supervisor(io("spawner")), "mcpd: spawner", 4),
            (
                BrokerError::Output {
                    what: "stdout".into(),
                    source: io("Broken pipe"),
                },
                "mcpd: writing stdout: Broken pipe",
                3,
            ),
            (
                BrokerError::HttpNoClient,
                "mcpd: the policy names no client for HTTP ([http] client = ...): HTTP is refused",
                4,
            ),
            (
                BrokerError::Listen(io("Address already in use")),
                "mcpd: Address already in use",
                4,
            ),
            (BrokerError::Transport(io("broken")), "mcpd: broken", 4),
        ];
        for (e, msg, code) in cases {
            assert_eq!(e.to_string(), msg);
            assert_eq!(e.code(), code, "{e}");
        }
    }
}
