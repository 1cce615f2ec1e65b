//! The validated, immutable policy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use mcpd_ipc::{
    CommandLimits, ExecSpec, LanguageGrant, ProgramGrant, ResourceLimits, SandboxSpec, ToolLimits,
};
use toml::Spanned;

use crate::config::{self, ConfigError, RawConfig, RawGrant, RawLimits, Source};
use crate::exec::{self as exec_grant, ExecGrant, Language, OperatorTool, Program};

/// The client id quick-start flags and the embedded default create, and stdio uses by default.
pub const DEFAULT_CLIENT: &str = "local";

/// Largest client message accepted by default (JSON-RPC line or HTTP body), bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 4 * 1024 * 1024;
/// Hard ceiling for `max_message_bytes`.
pub const MAX_MESSAGE_BYTES_CEILING: u64 = 64 * 1024 * 1024;
/// Ceiling of `max_read_bytes` / `max_output_bytes` (a larger configured value is lowered
/// to it): a result must fit one IPC frame ([`mcpd_ipc::MAX_FRAME`]) with room for framing.
/// A result is at most `max_output_bytes` plus [`mcpd_ipc::RESULT_ENVELOPE_BYTES`] (text
/// and `structuredContent` together), so at the ceiling it still fits a frame with 4 MiB to
/// spare for the message and its encoding.
pub const MAX_RESULT_BYTES_CEILING: u64 = (mcpd_ipc::MAX_FRAME as u64) * 3 / 4;
const _: () = assert!(
    MAX_RESULT_BYTES_CEILING + mcpd_ipc::RESULT_ENVELOPE_BYTES + 64 * 1024
        <= mcpd_ipc::MAX_FRAME as u64
);
/// Default of `max_output_bytes` (every result: a command's stdout + stderr as text and as
/// `structuredContent` together, a file tool's content): 10 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = mcpd_ipc::DEFAULT_MAX_OUTPUT_BYTES;
/// Default idle time before a session's worker is reaped, seconds.
pub const DEFAULT_WORKER_IDLE_SECS: u64 = 600;
/// Default `server.ipc_spin_us`: covers a quick tool's answer (a wake-up and a few tens of µs of
/// work), so such a call costs the broker no sleep and wake-up cycle (docs/ARCHITECTURE.md).
pub const DEFAULT_IPC_SPIN_US: u64 = 100;
/// Upper bound of `server.ipc_spin_us`.
pub const MAX_IPC_SPIN_US: u64 = 10_000;
/// Default `server.worker_uids`: a range systemd leaves unused (between the `systemd-homed`
/// and host-user ranges and the `DynamicUser=` range, docs "Users, Groups, UIDs and GIDs on
/// systemd Systems"), below 65534 so 16-bit tools show it.
pub const DEFAULT_WORKER_UIDS: UidRange = UidRange {
    start: 60578,
    end: 61183,
};
/// Default `server.worker_tmp_bytes`: the worker's private `/tmp` (and `/dev/shm`).
pub const DEFAULT_WORKER_TMP_BYTES: u64 = 64 * 1024 * 1024;
/// Ceiling of `server.worker_tmp_bytes` (tmpfs pages are charged to the worker's memory).
pub const MAX_WORKER_TMP_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// An inclusive range of uids (and the gids of the same numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// First uid.
    pub start: u32,
    /// Last uid (inclusive).
    pub end: u32,
}

impl UidRange {
    /// Parse `"START-END"`; refuses ranges holding 0 (root), 65534/65535 (nobody, 16-bit -1)
    /// or anything from 2^31 on (negative in 32-bit signed tools; -1 is "unchanged").
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("'{s}' is not START-END"))?;
        let num = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| format!("'{t}' is not a uid"))
        };
        let r = Self {
            start: num(a)?,
            end: num(b)?,
        };
        if r.start == 0 || r.start > r.end {
            return Err(format!("'{s}': START must be at least 1 and at most END"));
        }
        if r.end >= 1 << 31 {
            return Err(format!("'{s}': uids from 2147483648 on are not allowed"));
        }
        if r.start <= 65535 && r.end >= 65534 {
            return Err(format!("'{s}' holds 65534 (nobody) or 65535"));
        }
        Ok(r)
    }
    /// How many uids the range holds.
    pub fn len(&self) -> u64 {
        u64::from(self.end - self.start) + 1
    }
    /// Never empty (parse refuses START > END); for clippy's len-without-is-empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// FNV-1a, 64 bits: a stable (across versions and hosts) spread of client ids over the uid
/// range. Not a security function: collisions are resolved by probing.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Resolves a configured path to its canonical absolute form (realpath). Supplied by the
/// caller so the policy crate does no I/O itself. An error means the path does not exist.
pub type Canonicalize<'a> = &'a dyn Fn(&Path) -> std::io::Result<PathBuf>;

/// A client identity. Syntax: `[A-Za-z0-9_.@-]{1,128}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(String);

impl ClientId {
    /// Parse a client id.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'));
        ok.then(|| Self(s.to_string()))
    }
    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which tools a client may use (besides what its permissions allow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolSet {
    /// Every tool its permissions allow.
    All,
    /// Only these names.
    Only(BTreeSet<String>),
}

impl ToolSet {
    /// Whether `name` is in the set.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            ToolSet::All => true,
            ToolSet::Only(s) => s.contains(name),
        }
    }
}

/// Effective limits of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Calls in flight at once.
    pub max_concurrent_calls: u64,
    /// Wall-clock limit of one call, seconds.
    pub call_timeout_secs: u64,
    /// Tool calls per minute (0 = unlimited).
    pub calls_per_minute: u64,
    /// Limits tools apply.
    pub tool: ToolLimits,
    /// Kernel limits of the worker.
    pub rlimits: ResourceLimits,
    /// Limits of each process the worker starts.
    pub command: CommandLimits,
    /// Memory of the worker and everything it starts (cgroup), bytes.
    pub memory_bytes: Option<u64>,
    /// Processes of the worker and everything it starts (cgroup; RLIMIT_NPROC fallback).
    pub max_processes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 8,
            call_timeout_secs: 120,
            calls_per_minute: 0,
            tool: ToolLimits::default(),
            rlimits: ResourceLimits {
                max_open_files: Some(256),
                max_file_size: Some(1024 * 1024 * 1024),
                cpu_seconds: None,
                address_space: None,
                max_processes: None,
            },
            command: CommandLimits::default(),
            memory_bytes: Some(2 * 1024 * 1024 * 1024),
            max_processes: Some(128),
        }
    }
}

/// What one client may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Canonical paths readable (FILE_READ).
    pub read: Vec<PathBuf>,
    /// Canonical paths writable (FILE_WRITE); also readable.
    pub write: Vec<PathBuf>,
    /// FILE_WRITE_GLOBAL granted (then `write` contains `/`).
    pub global_write: bool,
    /// Tool allow-list.
    pub tools: ToolSet,
    /// Limits.
    pub limits: Limits,
    /// Command and code execution (SYSTEM_COMMAND, CODE_EXECUTION).
    pub exec: ExecGrant,
    /// Operator-defined tools the client may call.
    pub operator_tools: BTreeSet<String>,
}

/// Per-worker control groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CgroupSetting {
    /// Use a delegated cgroup v2 subtree or writable v1 pids/memory hierarchies when present.
    #[default]
    Auto,
    /// Never (rlimit fallbacks only).
    Off,
    /// This delegated cgroup v2 directory.
    Path(PathBuf),
}

/// The whole validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    clients: BTreeMap<ClientId, Permissions>,
    stdio_client: Option<ClientId>,
    /// Worker executable override.
    pub worker_path: Option<PathBuf>,
    /// Operator accepted a degraded sandbox.
    pub allow_degraded_sandbox: bool,
    /// Largest client message, bytes.
    pub max_message_bytes: u64,
    /// Worker idle time before reaping, seconds.
    pub worker_idle_secs: u64,
    /// How long the client may take to answer a server→client request, seconds.
    pub client_request_timeout_secs: u64,
    /// Idle seconds before the broker pings a session-era client (0 = never).
    pub client_ping_secs: u64,
    /// Warnings to print loudly at load (e.g. global write).
    pub warnings: Vec<String>,
    /// The audit log, when configured.
    pub audit: Option<AuditSettings>,
    /// Operator-defined tools.
    pub operator_tools: BTreeMap<String, OperatorTool>,
    /// Per-worker control groups.
    pub cgroup: CgroupSetting,
    /// How long the broker polls a worker's socket after a send before sleeping, µs (0 = never).
    pub ipc_spin_us: u64,
    /// The uids a root broker's workers run as (one per client).
    pub worker_uids: UidRange,
    /// Size of each worker's private `/tmp` and `/dev/shm`, bytes.
    pub worker_tmp_bytes: u64,
    /// The Streamable HTTP transport settings.
    pub http: HttpSettings,
    /// Extra tool sets (`--toolset NAME`), e.g. `conformance`. Never set by a default policy.
    pub toolsets: Vec<String>,
    /// Operator-defined prompts.
    pub prompts: BTreeMap<String, crate::prompts::Prompt>,
    /// Which prompts each client may use.
    prompt_grants: BTreeMap<ClientId, BTreeSet<String>>,
}

/// Streamable HTTP transport settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Where to listen (`None`: no HTTP unless `--http` is given).
    pub listen: Option<std::net::SocketAddr>,
    /// The client HTTP sessions speak for.
    pub client: Option<ClientId>,
    /// Extra accepted `Host` values.
    pub allowed_hosts: Vec<String>,
    /// Idle time before a session is reaped, seconds.
    pub session_idle_secs: u64,
    /// Most sessions at once.
    pub max_sessions: u64,
    /// Non-loopback listening without authentication was explicitly allowed.
    pub insecure_non_loopback: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: None,
            client: None,
            allowed_hosts: Vec::new(),
            session_idle_secs: 300,
            max_sessions: 64,
            insecure_non_loopback: false,
        }
    }
}

/// Audit log settings (validated: the path lies outside every client's roots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// The log file.
    pub path: PathBuf,
    /// fdatasync before every response (group-committed) instead of periodically.
    pub strict: bool,
    /// Batch mode: longest time between syncs, milliseconds.
    pub batch_interval_ms: u64,
    /// Rotation size in bytes (0 = never).
    pub rotate_bytes: u64,
    /// Ed25519 private key for signed checkpoints.
    pub checkpoint_key: Option<PathBuf>,
    /// Checkpoint interval in records.
    pub checkpoint_every: u64,
    /// Record redacted argument previews.
    pub preview_args: bool,
    /// Keep serving when the log cannot be written.
    pub fail_open: bool,
    /// Forward to journald.
    pub journald: bool,
}

impl AuditSettings {
    /// Defaults for a log at `path` (quick-start `--audit-log`).
    pub fn at(path: PathBuf) -> Self {
        Self {
            path,
            strict: false,
            batch_interval_ms: 1000,
            rotate_bytes: 64 * 1024 * 1024,
            checkpoint_key: None,
            checkpoint_every: 1000,
            preview_args: false,
            fail_open: false,
            journald: false,
        }
    }
}

/// Quick-start flags: a one-client policy without a config file.
#[derive(Debug, Clone, Default)]
pub struct QuickStart {
    /// `--allow-read DIR`
    pub read: Vec<PathBuf>,
    /// `--allow-write DIR`
    pub write: Vec<PathBuf>,
    /// `--allow-exec PROGRAM`
    pub exec: Vec<String>,
    /// `--allow-code LANGUAGE`
    pub code: Vec<String>,
}

impl Policy {
    /// Parse and validate a configuration file's text.
    pub fn from_toml(file: &str, text: &str, canon: Canonicalize<'_>) -> Result<Self, ConfigError> {
        let raw = config::parse(file, text)?;
        Self::build(&Source::new(file, text), raw, canon)
    }

    /// The policy quick-start flags describe: one client, [`DEFAULT_CLIENT`], used by stdio.
    /// With no paths at all, `cwd` is served read-only (the embedded default).
    pub fn quick_start(
        q: &QuickStart,
        cwd: &Path,
        canon: Canonicalize<'_>,
    ) -> Result<Self, ConfigError> {
        let to_spanned = |v: &[PathBuf]| -> Result<Vec<Spanned<String>>, ConfigError> {
            v.iter()
                .map(|p| {
                    let p = if p.is_absolute() {
                        p.clone()
                    } else {
                        cwd.join(p)
                    };
                    p.to_str()
                        .map(|s| Spanned::new(0..0, s.to_string()))
                        .ok_or_else(|| {
                            Source::new("<flags>", "")
                                .error(None, format!("path is not UTF-8: {}", p.display()))
                        })
                })
                .collect()
        };
        let mut read = to_spanned(&q.read)?;
        let write = to_spanned(&q.write)?;
        if read.is_empty() && write.is_empty() {
            read = to_spanned(&[cwd.to_path_buf()])?;
        }
        let mut raw = RawConfig::default();
        let names = |v: &[String]| v.iter().map(|n| Spanned::new(0..0, n.clone())).collect();
        raw.clients.insert(
            DEFAULT_CLIENT.to_string(),
            Spanned::new(
                0..0,
                RawGrant {
                    read,
                    write,
                    exec: names(&q.exec),
                    code: names(&q.code),
                    ..RawGrant::default()
                },
            ),
        );
        Self::build(&Source::new("<flags>", ""), raw, canon)
    }

    /// Merge quick-start flags into a loaded policy: the paths are added to the stdio client.
    pub fn add_quick_start(
        &mut self,
        q: &QuickStart,
        cwd: &Path,
        canon: Canonicalize<'_>,
    ) -> Result<(), ConfigError> {
        let extra = Self::quick_start(q, cwd, canon)?;
        let id = self
            .stdio_client
            .clone()
            .unwrap_or_else(|| ClientId(DEFAULT_CLIENT.into()));
        let add = extra.clients.get(&ClientId(DEFAULT_CLIENT.into())).cloned();
        let Some(add) = add else { return Ok(()) };
        let entry = self
            .clients
            .entry(id.clone())
            .or_insert_with(|| Permissions {
                read: vec![],
                write: vec![],
                global_write: false,
                tools: ToolSet::All,
                limits: Limits::default(),
                exec: ExecGrant::default(),
                operator_tools: BTreeSet::new(),
            });
        if !q.read.is_empty() {
            entry.read.extend(add.read);
        }
        entry.write.extend(add.write);
        for p in add.exec.programs {
            if !entry.exec.programs.iter().any(|e| e.path == p.path) {
                entry.exec.programs.push(p);
            }
        }
        for l in add.exec.languages {
            if !entry.exec.languages.iter().any(|e| e.name == l.name) {
                entry.exec.languages.push(l);
            }
        }
        dedup(&mut entry.read);
        dedup(&mut entry.write);
        if self.http.client.is_none() {
            self.http.client = Some(id.clone());
        }
        self.stdio_client = Some(id);
        Ok(())
    }

    fn build(src: &Source, raw: RawConfig, canon: Canonicalize<'_>) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        let server = &raw.server;
        let max_message_bytes = server
            .max_message_bytes
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if max_message_bytes == 0 || max_message_bytes > MAX_MESSAGE_BYTES_CEILING {
            return Err(src.error(
                None,
                format!(
                    "server.max_message_bytes must be between 1 and {MAX_MESSAGE_BYTES_CEILING}"
                ),
            ));
        }
        if server.allow_degraded_sandbox {
            warnings.push("server.allow_degraded_sandbox = true: workers may run without full Landlock enforcement".into());
        }
        for (name, role) in &raw.roles {
            if !role.get_ref().roles.is_empty() {
                return Err(src.error(
                    Some(role.span()),
                    format!("role '{name}': roles cannot include other roles"),
                ));
            }
        }
        let mut clients = BTreeMap::new();
        for (name, grant) in &raw.clients {
            let id = ClientId::parse(name).ok_or_else(|| {
                src.error(
                    Some(grant.span()),
                    format!(
                        "invalid client id '{name}' (allowed: A-Z a-z 0-9 _ . @ -, at most 128)"
                    ),
                )
            })?;
            let mut parts: Vec<(&str, &Spanned<RawGrant>)> = vec![(name.as_str(), grant)];
            for r in &grant.get_ref().roles {
                let role = raw.roles.get(r.get_ref()).ok_or_else(|| {
                    src.error(
                        Some(r.span()),
                        format!("client '{name}': unknown role '{}'", r.get_ref()),
                    )
                })?;
                parts.push((r.get_ref().as_str(), role));
            }
            let perms = merge(src, name, &parts, canon, &mut warnings)?;
            clients.insert(id, perms);
        }
        let stdio_client = match &raw.stdio.client {
            Some(c) => {
                let id = ClientId::parse(c.get_ref())
                    .filter(|id| clients.contains_key(id))
                    .ok_or_else(|| {
                        src.error(
                            Some(c.span()),
                            format!("stdio.client: unknown client '{}'", c.get_ref()),
                        )
                    })?;
                Some(id)
            }
            None => {
                let d = ClientId(DEFAULT_CLIENT.into());
                clients.contains_key(&d).then_some(d)
            }
        };
        let audit = match &raw.audit {
            None => None,
            Some(a) => Some(audit_settings(src, a, canon, &mut warnings)?),
        };
        let mut operator_tools = BTreeMap::new();
        for (name, t) in &raw.tools {
            let tool = exec_grant::operator_tool(
                src,
                name,
                t,
                canon,
                CommandLimits::default().timeout_secs,
            )?;
            for r in &t.get_ref().roles {
                if !raw.roles.contains_key(r.get_ref()) {
                    return Err(src.error(
                        Some(r.span()),
                        format!("tools.{name}: unknown role '{}'", r.get_ref()),
                    ));
                }
            }
            for c in &t.get_ref().clients {
                if !raw.clients.contains_key(c.get_ref()) {
                    return Err(src.error(
                        Some(c.span()),
                        format!("tools.{name}: unknown client '{}'", c.get_ref()),
                    ));
                }
            }
            operator_tools.insert(name.clone(), tool);
        }
        for (name, grant) in &raw.clients {
            let Some(id) = ClientId::parse(name) else {
                continue;
            };
            let Some(perms) = clients.get_mut(&id) else {
                continue;
            };
            for (tname, tool) in &operator_tools {
                let by_role = grant
                    .get_ref()
                    .roles
                    .iter()
                    .any(|r| tool.roles.contains(r.get_ref()));
                if tool.clients.contains(name) || by_role {
                    perms.operator_tools.insert(tname.clone());
                }
            }
        }
        let http = http_settings(
            src,
            raw.http.as_ref(),
            &clients,
            &stdio_client,
            &mut warnings,
        )?;
        let cgroup = match raw
            .server
            .cgroup
            .as_ref()
            .map(|c| (c.get_ref().as_str(), c.span()))
        {
            None | Some(("auto", _)) => CgroupSetting::Auto,
            Some(("off", _)) => {
                warnings.push("server.cgroup = \"off\": memory and process limits fall back to rlimits (see docs/cgroups.md)".into());
                CgroupSetting::Off
            }
            Some((p, _)) if p.starts_with('/') => CgroupSetting::Path(PathBuf::from(p)),
            Some((other, span)) => {
                return Err(src.error(
                    Some(span),
                    format!("server.cgroup must be \"auto\", \"off\" or an absolute path, not '{other}'"),
                ));
            }
        };
        let ipc_spin_us = match &raw.server.ipc_spin_us {
            None => DEFAULT_IPC_SPIN_US,
            Some(v) if *v.get_ref() <= MAX_IPC_SPIN_US => *v.get_ref(),
            Some(v) => {
                return Err(src.error(
                    Some(v.span()),
                    format!("server.ipc_spin_us must be at most {MAX_IPC_SPIN_US}"),
                ));
            }
        };
        let worker_uids = match &raw.server.worker_uids {
            None => DEFAULT_WORKER_UIDS,
            Some(v) => UidRange::parse(v.get_ref())
                .map_err(|m| src.error(Some(v.span()), format!("server.worker_uids: {m}")))?,
        };
        // One uid per client, and one for requests of unknown clients.
        if worker_uids.len() < clients.len() as u64 + 1 {
            return Err(src.error(
                raw.server.worker_uids.as_ref().map(|v| v.span()),
                format!(
                    "server.worker_uids ({worker_uids}) holds {} uids: {} clients need {}",
                    worker_uids.len(),
                    clients.len(),
                    clients.len() + 1
                ),
            ));
        }
        let worker_tmp_bytes = match &raw.server.worker_tmp_bytes {
            None => DEFAULT_WORKER_TMP_BYTES,
            Some(v) if (1024 * 1024..=MAX_WORKER_TMP_BYTES).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                return Err(src.error(
                    Some(v.span()),
                    format!(
                        "server.worker_tmp_bytes must be between 1048576 and {MAX_WORKER_TMP_BYTES}"
                    ),
                ));
            }
        };
        let mut policy = Self {
            clients,
            stdio_client,
            worker_uids,
            worker_tmp_bytes,
            worker_path: server.worker.as_ref().map(PathBuf::from),
            allow_degraded_sandbox: server.allow_degraded_sandbox,
            max_message_bytes,
            worker_idle_secs: server
                .worker_idle_secs
                .unwrap_or(DEFAULT_WORKER_IDLE_SECS)
                .max(1),
            client_request_timeout_secs: server
                .client_request_timeout_secs
                .unwrap_or(60)
                .clamp(1, 3600),
            client_ping_secs: server.client_ping_secs.unwrap_or(60),
            warnings,
            audit: None,
            operator_tools,
            cgroup,
            ipc_spin_us,
            http,
            toolsets: Vec::new(),
            prompts: BTreeMap::new(),
            prompt_grants: BTreeMap::new(),
        };
        for (name, p) in &raw.prompts {
            let prompt = crate::prompts::prompt(src, name, p)?;
            for r in &p.get_ref().roles {
                if !raw.roles.contains_key(r.get_ref()) {
                    return Err(src.error(
                        Some(r.span()),
                        format!("prompts.{name}: unknown role '{}'", r.get_ref()),
                    ));
                }
            }
            for c in &p.get_ref().clients {
                if !raw.clients.contains_key(c.get_ref()) {
                    return Err(src.error(
                        Some(c.span()),
                        format!("prompts.{name}: unknown client '{}'", c.get_ref()),
                    ));
                }
            }
            for (cname, grant) in &raw.clients {
                let by_role = grant
                    .get_ref()
                    .roles
                    .iter()
                    .any(|r| prompt.roles.contains(r.get_ref()));
                if prompt.clients.contains(cname) || by_role {
                    if let Some(id) = ClientId::parse(cname) {
                        policy
                            .prompt_grants
                            .entry(id)
                            .or_default()
                            .insert(name.clone());
                    }
                }
            }
            policy.prompts.insert(name.clone(), prompt);
        }
        if let Some(a) = audit {
            policy
                .check_audit_reach(&a.path)
                .map_err(|m| src.error(raw.audit.as_ref().map(|r| r.path.span()), m))?;
            policy.audit = Some(a);
        }
        Ok(policy)
    }

    /// Use an audit log at `path` (quick-start `--audit-log`), keeping other settings if a
    /// config file set them. The path must lie outside every client's roots.
    pub fn set_audit_path(
        &mut self,
        path: &Path,
        canon: Canonicalize<'_>,
    ) -> Result<(), ConfigError> {
        let src = Source::new("<flags>", "");
        let path = canonical_log_path(&src, None, path, canon)?;
        self.check_audit_reach(&path)
            .map_err(|m| src.error(None, m))?;
        let mut a = self
            .audit
            .take()
            .unwrap_or_else(|| AuditSettings::at(path.clone()));
        a.path = path;
        self.audit = Some(a);
        Ok(())
    }

    /// The audit log must be out of every worker's reach: not inside any client's read or write
    /// roots (Landlock rules are derived from those roots).
    fn check_audit_reach(&self, log: &Path) -> Result<(), String> {
        for (id, p) in &self.clients {
            if let Some(root) = p
                .read
                .iter()
                .chain(p.write.iter())
                .find(|r| log.starts_with(r))
            {
                return Err(format!(
                    "audit log {} lies inside {} which client '{id}' may access: move the log out of every client's roots",
                    log.display(),
                    root.display()
                ));
            }
        }
        Ok(())
    }

    /// The client the stdio transport speaks for, if any. Without one, stdio is refused.
    pub fn stdio_client(&self) -> Option<&ClientId> {
        self.stdio_client.as_ref()
    }

    /// The operator prompts a client may use (deny by default).
    pub fn prompts_for(&self, client: &ClientId) -> Vec<&crate::prompts::Prompt> {
        self.prompt_grants
            .get(client)
            .map(|names| names.iter().filter_map(|n| self.prompts.get(n)).collect())
            .unwrap_or_default()
    }

    /// An operator-defined tool by name.
    pub fn operator_tool(&self, name: &str) -> Option<&OperatorTool> {
        self.operator_tools.get(name)
    }

    /// A client's permissions (`None`: unknown client, which is denied everything).
    pub fn permissions(&self, client: &ClientId) -> Option<&Permissions> {
        self.clients.get(client)
    }

    /// Every client, sorted by id.
    pub fn clients(&self) -> impl Iterator<Item = (&ClientId, &Permissions)> {
        self.clients.iter()
    }

    /// The uid (and gid) a root broker runs `client`'s workers as: stable for a client as
    /// long as the set of clients keeps its hash slots (FNV-1a of the id over
    /// `server.worker_uids`, collisions probed in the order of client ids), and never shared
    /// by two clients. An unknown client gets a slot of its own after all known ones.
    pub fn worker_uid(&self, client: &ClientId) -> u32 {
        let size = self.worker_uids.len();
        let mut taken = BTreeSet::new();
        let known = self.clients.contains_key(client);
        let order = self.clients.keys().chain((!known).then_some(client));
        for id in order {
            let mut slot = fnv1a(id.as_str()) % size;
            // The range holds more uids than clients (checked at load); bounded anyway.
            let mut probes = 0;
            while taken.contains(&slot) && probes < size {
                slot = (slot + 1) % size;
                probes += 1;
            }
            taken.insert(slot);
            if id == client {
                // slot < size <= 2^31: fits.
                return self.worker_uids.start + u32::try_from(slot).unwrap_or(0);
            }
        }
        self.worker_uids.end
    }

    /// The namespaces and identity part of a client's sandbox.
    fn isolation(&self, client: &ClientId) -> mcpd_ipc::Isolation {
        mcpd_ipc::Isolation {
            namespaces: true,
            uid: Some(self.worker_uid(client)),
            tmp_bytes: self.worker_tmp_bytes,
            aliases: Vec::new(),
        }
    }

    /// The sandbox a client's worker must enforce, derived from the same permissions the
    /// broker decides with. Unknown clients get an empty sandbox (no paths at all).
    pub fn sandbox_spec(&self, client: &ClientId) -> SandboxSpec {
        let Some(p) = self.clients.get(client) else {
            return SandboxSpec {
                allow_degraded: self.allow_degraded_sandbox,
                isolation: self.isolation(client),
                ..SandboxSpec::default()
            };
        };
        let s = |v: &[PathBuf]| {
            v.iter()
                .filter_map(|p| p.to_str().map(str::to_string))
                .collect()
        };
        let path_str = |p: &Path| p.to_str().map(str::to_string);
        let operator_tools: Vec<_> = p
            .operator_tools
            .iter()
            .filter_map(|n| self.operator_tools.get(n))
            .map(|t| {
                let mut spec = t.spec.clone();
                if t.timeout_defaulted {
                    spec.timeout_secs = p.limits.command.timeout_secs;
                }
                spec
            })
            .collect();
        // Each program, shell command line, interpreter and operator tool runs in a nested
        // exec domain of its own (`exec_set`); the worker's outer domain executes their union.
        let programs: Vec<ProgramGrant> = p
            .exec
            .programs
            .iter()
            .filter_map(|g| {
                Some(ProgramGrant {
                    name: g.name.clone(),
                    path: path_str(&g.path)?,
                    exec_set: g.exec_set(),
                })
            })
            .collect();
        let languages: Vec<LanguageGrant> = p
            .exec
            .languages
            .iter()
            .filter_map(|l| {
                let interpreter = path_str(&l.interpreter)?;
                Some(LanguageGrant {
                    name: l.name.clone(),
                    exec_set: vec![interpreter.clone()],
                    interpreter,
                })
            })
            .collect();
        let shell = p.exec.shell.as_deref().and_then(path_str);
        // A command line cannot be argument-checked: it may run every listed program (with any
        // arguments), and nothing else; never the code-session interpreters or operator tools.
        let mut shell_exec_set: Vec<String> = match &shell {
            None => Vec::new(),
            Some(sh) => std::iter::once(sh.clone())
                .chain(programs.iter().flat_map(|g| g.exec_set.iter().cloned()))
                .collect(),
        };
        shell_exec_set.sort();
        shell_exec_set.dedup();
        let mut exec_paths: Vec<String> = programs
            .iter()
            .flat_map(|g| &g.exec_set)
            .chain(&shell_exec_set)
            .chain(languages.iter().flat_map(|l| &l.exec_set))
            .chain(operator_tools.iter().flat_map(|t| &t.exec_set))
            .cloned()
            .collect();
        exec_paths.sort();
        exec_paths.dedup();
        SandboxSpec {
            read_paths: s(&p.read),
            write_paths: s(&p.write),
            exec_paths,
            allow_network: p.exec.network,
            allow_degraded: self.allow_degraded_sandbox,
            rlimits: p.limits.rlimits.clone(),
            tool_limits: p.limits.tool.clone(),
            toolsets: self.toolsets.clone(),
            isolation: self.isolation(client),
            exec: ExecSpec {
                programs,
                shell,
                shell_exec_set,
                languages,
                env_allow: p.exec.env_allow.iter().cloned().collect(),
                env_fixed: p
                    .exec
                    .env_fixed
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                operator_tools,
                system_read_paths: Vec::new(),
                device_paths: Vec::new(),
                limits: p.limits.command.clone(),
            },
        }
    }

    /// A human-readable rendering of the effective policy (for `mcpd check-config`).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for w in &self.warnings {
            out.push_str(&format!("WARNING: {w}\n"));
        }
        out.push_str(&format!(
            "server: max_message_bytes={} worker_idle_secs={} ipc_spin_us={} degraded_sandbox={} worker_uids={} worker_tmp_bytes={} worker={}\n",
            self.max_message_bytes,
            self.worker_idle_secs,
            self.ipc_spin_us,
            self.allow_degraded_sandbox,
            self.worker_uids,
            self.worker_tmp_bytes,
            self.worker_path
                .as_ref()
                .map_or("<next to mcpd>".into(), |p| p.display().to_string())
        ));
        out.push_str(&format!(
            "stdio client: {}\n",
            self.stdio_client
                .as_ref()
                .map_or("<none: stdio refused>".into(), |c| c.to_string())
        ));
        match &self.audit {
            None => out.push_str("audit: off\n"),
            Some(a) => out.push_str(&format!(
                "audit: {} mode={} rotate={}B checkpoints={} preview_args={} fail_open={} journald={}\n",
                a.path.display(),
                if a.strict { "strict" } else { "batch" },
                a.rotate_bytes,
                a.checkpoint_key.as_ref().map_or("off".to_string(), |k| format!("every {} records, key {}", a.checkpoint_every, k.display())),
                a.preview_args,
                a.fail_open,
                a.journald
            )),
        }
        if self.clients.is_empty() {
            out.push_str("no clients: every request is denied\n");
        }
        for (id, p) in &self.clients {
            out.push_str(&format!(
                "client {id}: (worker uid/gid {} under a root broker)\n",
                self.worker_uid(id)
            ));
            for r in &p.read {
                out.push_str(&format!("  read   {}\n", r.display()));
            }
            for w in &p.write {
                out.push_str(&format!(
                    "  write  {}{}\n",
                    w.display(),
                    if p.global_write && w == Path::new("/") {
                        "   (GLOBAL WRITE)"
                    } else {
                        ""
                    }
                ));
            }
            match &p.tools {
                ToolSet::All => out.push_str("  tools  * (all that the permissions allow)\n"),
                ToolSet::Only(s) => out.push_str(&format!(
                    "  tools  {}\n",
                    s.iter().cloned().collect::<Vec<_>>().join(", ")
                )),
            }
            for g in &p.exec.programs {
                let pats: Vec<&str> = g.arg_patterns.iter().map(|a| a.as_str()).collect();
                out.push_str(&format!(
                    "  exec   {} -> {}{}{}\n",
                    g.name,
                    g.path.display(),
                    if pats.is_empty() {
                        String::new()
                    } else {
                        format!("   args: {}", pats.join(" | "))
                    },
                    if g.helpers.is_empty() {
                        String::new()
                    } else {
                        let h: Vec<String> =
                            g.helpers.iter().map(|h| h.display().to_string()).collect();
                        format!("   helpers: {}", h.join(", "))
                    }
                ));
            }
            if let Some(sh) = &p.exec.shell {
                out.push_str(&format!("  shell  {}\n", sh.display()));
            }
            for l in &p.exec.languages {
                out.push_str(&format!(
                    "  code   {} -> {}\n",
                    l.name,
                    l.interpreter.display()
                ));
            }
            if !p.exec.env_allow.is_empty() || !p.exec.env_fixed.is_empty() {
                out.push_str(&format!(
                    "  env    client may set: {:?}; fixed: {:?}\n",
                    p.exec.env_allow,
                    p.exec.env_fixed.keys().collect::<Vec<_>>()
                ));
            }
            if p.exec.network {
                out.push_str("  network TCP/UDP allowed\n");
            }
            for t in &p.operator_tools {
                out.push_str(&format!("  operator tool {t}\n"));
            }
            let l = &p.limits;
            out.push_str(&format!(
                "  command timeout={}s lifetime={}s cpu={:?}s memory={:?}B processes={:?} output={}B\n",
                l.command.timeout_secs,
                l.command.max_lifetime_secs,
                l.command.cpu_seconds,
                l.memory_bytes,
                l.max_processes,
                l.command.max_output_bytes
            ));
            out.push_str(&format!(
                "  limits concurrent={} timeout={}s calls/min={} read={}B output={}B entries={} matches={} nofile={:?} fsize={:?} worker-cpu={:?}s as={:?}\n",
                l.max_concurrent_calls, l.call_timeout_secs, l.calls_per_minute, l.tool.max_read_bytes,
                l.tool.max_output_bytes, l.tool.max_entries, l.tool.max_matches, l.rlimits.max_open_files,
                l.rlimits.max_file_size, l.rlimits.cpu_seconds, l.rlimits.address_space
            ));
        }
        out
    }
}

fn http_settings(
    src: &Source,
    raw: Option<&crate::config::RawHttp>,
    clients: &BTreeMap<ClientId, Permissions>,
    stdio_client: &Option<ClientId>,
    warnings: &mut Vec<String>,
) -> Result<HttpSettings, ConfigError> {
    let d = HttpSettings::default();
    let Some(raw) = raw else {
        return Ok(HttpSettings {
            client: stdio_client.clone(),
            ..d
        });
    };
    let listen = match &raw.listen {
        None => None,
        Some(l) => Some(l.get_ref().parse::<std::net::SocketAddr>().map_err(|_| {
            src.error(
                Some(l.span()),
                format!("http.listen: '{}' is not an address:port", l.get_ref()),
            )
        })?),
    };
    let client = match &raw.client {
        Some(c) => Some(
            ClientId::parse(c.get_ref())
                .filter(|id| clients.contains_key(id))
                .ok_or_else(|| {
                    src.error(
                        Some(c.span()),
                        format!("http.client: unknown client '{}'", c.get_ref()),
                    )
                })?,
        ),
        None => stdio_client.clone(),
    };
    if let Some(addr) = listen {
        if !addr.ip().is_loopback() && !raw.insecure_non_loopback {
            return Err(src.error(
                raw.listen.as_ref().map(Spanned::span),
                format!("http.listen: {addr} is not a loopback address and mcpd has no HTTP authentication yet; set http.insecure_non_loopback = true to accept the risk"),
            ));
        }
    }
    if raw.insecure_non_loopback {
        warnings.push("http.insecure_non_loopback = true: unauthenticated MCP over HTTP may be reachable from the network".into());
    }
    let mut allowed_hosts = Vec::new();
    for h in &raw.allowed_hosts {
        let v = h.get_ref().to_ascii_lowercase();
        if v.is_empty() || v.len() > 255 || !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(src.error(Some(h.span()), "http.allowed_hosts: invalid host"));
        }
        allowed_hosts.push(v);
    }
    Ok(HttpSettings {
        listen,
        client,
        allowed_hosts,
        session_idle_secs: raw.session_idle_secs.unwrap_or(d.session_idle_secs).max(1),
        max_sessions: raw.max_sessions.unwrap_or(d.max_sessions).clamp(1, 10_000),
        insecure_non_loopback: raw.insecure_non_loopback,
    })
}

/// Canonicalise a log file path: absolute, its directory must exist (the file may not).
fn canonical_log_path(
    src: &Source,
    span: Option<std::ops::Range<usize>>,
    p: &Path,
    canon: Canonicalize<'_>,
) -> Result<PathBuf, ConfigError> {
    if !p.is_absolute() {
        return Err(src.error(
            span,
            format!("audit path must be absolute: '{}'", p.display()),
        ));
    }
    let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(src.error(span, format!("audit path names no file: '{}'", p.display())));
    };
    let dir = canon(dir).map_err(|e| {
        src.error(
            span.clone(),
            format!("audit directory '{}': {e}", dir.display()),
        )
    })?;
    Ok(dir.join(name))
}

fn audit_settings(
    src: &Source,
    a: &crate::config::RawAudit,
    canon: Canonicalize<'_>,
    warnings: &mut Vec<String>,
) -> Result<AuditSettings, ConfigError> {
    let path = canonical_log_path(src, Some(a.path.span()), Path::new(a.path.get_ref()), canon)?;
    let strict = match a.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("batch", _)) => false,
        Some(("strict", _)) => true,
        Some((other, span)) => {
            return Err(src.error(
                Some(span),
                format!("audit.mode must be \"batch\" or \"strict\", not '{other}'"),
            ))
        }
    };
    let checkpoint_key = match &a.checkpoint_key {
        None => None,
        Some(k) => {
            let kp = Path::new(k.get_ref());
            if !kp.is_absolute() {
                return Err(src.error(
                    Some(k.span()),
                    "audit.checkpoint_key must be an absolute path",
                ));
            }
            Some(
                canon(kp)
                    .map_err(|e| src.error(Some(k.span()), format!("audit.checkpoint_key: {e}")))?,
            )
        }
    };
    if a.fail_open {
        warnings.push(
            "audit.fail_open = true: requests are served even when the audit log cannot be written"
                .into(),
        );
    }
    let d = AuditSettings::at(path.clone());
    Ok(AuditSettings {
        path,
        strict,
        batch_interval_ms: a.batch_interval_ms.unwrap_or(d.batch_interval_ms).max(1),
        rotate_bytes: a.rotate_bytes.unwrap_or(d.rotate_bytes),
        checkpoint_key,
        checkpoint_every: a.checkpoint_every.unwrap_or(d.checkpoint_every).max(1),
        preview_args: a.preview_args,
        fail_open: a.fail_open,
        journald: a.journald,
    })
}

fn dedup(v: &mut Vec<PathBuf>) {
    v.sort();
    v.dedup();
}

/// A configured path, absolute and without `..`, canonicalised (a missing path is an error
/// naming the file and line).
pub(crate) fn canonical(
    src: &Source,
    who: &str,
    p: &Spanned<String>,
    canon: Canonicalize<'_>,
) -> Result<PathBuf, ConfigError> {
    let raw = Path::new(p.get_ref());
    if !raw.is_absolute() {
        return Err(src.error(
            Some(p.span()),
            format!("{who}: path must be absolute: '{}'", p.get_ref()),
        ));
    }
    if raw.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(src.error(
            Some(p.span()),
            format!("{who}: path must not contain '..': '{}'", p.get_ref()),
        ));
    }
    let c = canon(raw).map_err(|e| {
        src.error(
            Some(p.span()),
            format!("{who}: cannot resolve '{}': {e}", p.get_ref()),
        )
    })?;
    if c.to_str().is_none() {
        return Err(src.error(
            Some(p.span()),
            format!("{who}: path is not UTF-8: '{}'", c.display()),
        ));
    }
    Ok(c)
}

fn merge(
    src: &Source,
    client: &str,
    parts: &[(&str, &Spanned<RawGrant>)],
    canon: Canonicalize<'_>,
    warnings: &mut Vec<String>,
) -> Result<Permissions, ConfigError> {
    let mut read = Vec::new();
    let mut write = Vec::new();
    let mut global_write = false;
    let mut tools: Option<BTreeSet<String>> = None;
    let mut any_all = false;
    let mut any_specified = false;
    // One entry per part, the client's own first, so that a client without a `[limits]`
    // table does not take its first role's values as its own.
    let mut limits: Vec<Option<&RawLimits>> = Vec::new();
    let mut exec = ExecGrant::default();
    for (who, g) in parts {
        let g = g.get_ref();
        for name in &g.exec {
            let path =
                exec_grant::resolve_program(src, Some(name.span()), who, name.get_ref(), canon)?;
            let mut arg_patterns = Vec::new();
            if let Some(pats) = g.exec_args.get(name.get_ref()) {
                if pats.len() > exec_grant::MAX_ARG_PATTERNS {
                    return Err(src.error(
                        Some(name.span()),
                        format!(
                            "{who}: at most {} argument patterns per program",
                            exec_grant::MAX_ARG_PATTERNS
                        ),
                    ));
                }
                for p in pats {
                    arg_patterns.push(exec_grant::arg_pattern(src, who, p)?);
                }
            }
            let mut helpers = Vec::new();
            for h in g.exec_helpers.get(name.get_ref()).into_iter().flatten() {
                helpers.push(canonical(
                    src,
                    &format!("{who}: exec_helpers.{}", name.get_ref()),
                    h,
                    canon,
                )?);
            }
            match exec.programs.iter_mut().find(|p| p.path == path) {
                // The same program from two grants: the union of what they allow (an
                // unrestricted grant wins).
                Some(existing) => {
                    if existing.arg_patterns.is_empty() || arg_patterns.is_empty() {
                        existing.arg_patterns.clear();
                    } else {
                        existing.arg_patterns.extend(arg_patterns);
                    }
                    existing.helpers.extend(helpers);
                    dedup(&mut existing.helpers);
                }
                None => {
                    dedup(&mut helpers);
                    exec.programs.push(Program {
                        name: name.get_ref().clone(),
                        path,
                        arg_patterns,
                        helpers,
                    });
                }
            }
        }
        for key in g.exec_args.keys() {
            if !g.exec.iter().any(|e| e.get_ref() == key) {
                return Err(src.error(
                    None,
                    format!("{who}: exec_args.{key} names a program that is not in exec"),
                ));
            }
        }
        for (key, paths) in &g.exec_helpers {
            if !g.exec.iter().any(|e| e.get_ref() == key) {
                return Err(src.error(
                    paths.first().map(Spanned::span),
                    format!("{who}: exec_helpers.{key} names a program that is not in exec"),
                ));
            }
        }
        if g.shell && exec.shell.is_none() {
            exec.shell = Some(exec_grant::resolve_program(
                src, None, who, "/bin/sh", canon,
            )?);
            warnings.push(format!("client '{client}' may run shell command lines via '{who}' (only programs listed in exec can be executed from them)"));
        }
        for lang in &g.code {
            let Some(canonical) = exec_grant::language_alias(lang.get_ref()) else {
                return Err(src.error(
                    Some(lang.span()),
                    format!(
                        "{who}: unknown code language '{}' (python3, sh, bash, node)",
                        lang.get_ref()
                    ),
                ));
            };
            if exec.languages.iter().any(|l| l.name == canonical) {
                continue;
            }
            let interpreter =
                exec_grant::resolve_program(src, Some(lang.span()), who, canonical, canon)?;
            exec.languages.push(Language {
                name: canonical.to_string(),
                interpreter,
            });
        }
        for e in &g.env {
            exec_grant::env_entry(src, who, e, &mut exec)?;
        }
        if g.network {
            exec.network = true;
            warnings.push(format!("client '{client}' has network access via '{who}'"));
        }
        if let Some(s) = &g.sudo {
            if *s.get_ref() {
                return Err(src.error(Some(s.span()), format!(
                    "{who}: sudo (CODE_EXECUTION_SUDO) is refused by design: mcpd never runs anything with more privilege than the worker; see SECURITY.md")));
            }
        }
        for p in &g.read {
            read.push(canonical(src, who, p, canon)?);
        }
        for p in &g.write {
            write.push(canonical(src, who, p, canon)?);
        }
        if g.global_write {
            global_write = true;
            warnings.push(format!("client '{client}' has global_write (FILE_WRITE_GLOBAL) via '{who}': it may write anywhere the OS lets the worker"));
        }
        match &g.tools {
            // Unspecified contributes nothing; if no grant specifies tools at all, all are allowed.
            None => {}
            Some(list) => {
                any_specified = true;
                for t in list {
                    if t.get_ref() == "*" {
                        any_all = true;
                    } else if t.get_ref().is_empty() || t.get_ref().len() > 64 {
                        return Err(src.error(
                            Some(t.span()),
                            format!("{who}: invalid tool name '{}'", t.get_ref()),
                        ));
                    } else {
                        tools
                            .get_or_insert_with(BTreeSet::new)
                            .insert(t.get_ref().clone());
                    }
                }
            }
        }
        limits.push(g.limits.as_ref());
    }
    if global_write {
        write.push(PathBuf::from("/"));
    }
    dedup(&mut read);
    dedup(&mut write);
    let tools = if any_all || !any_specified {
        ToolSet::All
    } else {
        ToolSet::Only(tools.unwrap_or_default())
    };
    Ok(Permissions {
        read,
        write,
        global_write,
        tools,
        limits: merge_limits(&limits),
        exec,
        operator_tools: BTreeSet::new(),
    })
}

/// Field by field: the client's own value wins (it comes first), else the smallest value any
/// role sets, else the default.
fn merge_limits(parts: &[Option<&RawLimits>]) -> Limits {
    let d = Limits::default();
    let pick = |f: &dyn Fn(&RawLimits) -> Option<u64>| -> Option<u64> {
        match parts.first().copied().flatten().and_then(f) {
            Some(v) => Some(v),
            None => parts.iter().skip(1).flatten().filter_map(|r| f(r)).min(),
        }
    };
    let dc = &d.command;
    let cpu_seconds = pick(&|l| l.cpu_seconds).or(d.rlimits.cpu_seconds);
    let address_space = pick(&|l| l.address_space).or(d.rlimits.address_space);
    let max_open_files = pick(&|l| l.max_open_files).or(d.rlimits.max_open_files);
    let max_file_size = pick(&|l| l.max_file_size).or(d.rlimits.max_file_size);
    let max_output_bytes = pick(&|l| l.max_output_bytes)
        .unwrap_or(d.tool.max_output_bytes)
        .min(MAX_RESULT_BYTES_CEILING);
    let max_lifetime_secs = pick(&|l| l.max_lifetime_secs)
        .unwrap_or(dc.max_lifetime_secs)
        .max(1);
    let max_processes = pick(&|l| l.max_processes).or(d.max_processes);
    Limits {
        command: CommandLimits {
            timeout_secs: pick(&|l| l.command_timeout_secs)
                .unwrap_or(dc.timeout_secs)
                .clamp(1, max_lifetime_secs),
            max_lifetime_secs,
            cpu_seconds,
            address_space,
            max_processes: pick(&|l| l.max_processes),
            max_open_files,
            max_file_size,
            // One key bounds command output and every other result alike.
            max_output_bytes,
        },
        memory_bytes: pick(&|l| l.memory_bytes).or(d.memory_bytes),
        max_processes,
        max_concurrent_calls: pick(&|l| l.max_concurrent_calls)
            .unwrap_or(d.max_concurrent_calls)
            .max(1),
        call_timeout_secs: pick(&|l| l.call_timeout_secs)
            .unwrap_or(d.call_timeout_secs)
            .max(1),
        calls_per_minute: pick(&|l| l.calls_per_minute).unwrap_or(d.calls_per_minute),
        tool: ToolLimits {
            max_read_bytes: pick(&|l| l.max_read_bytes)
                .unwrap_or(d.tool.max_read_bytes)
                .min(MAX_RESULT_BYTES_CEILING),
            max_output_bytes,
            max_entries: pick(&|l| l.max_entries).unwrap_or(d.tool.max_entries),
            max_matches: pick(&|l| l.max_matches).unwrap_or(d.tool.max_matches),
        },
        // The worker's own RLIMIT_CPU would count its whole session; CPU time is limited per
        // process it starts (`command.cpu_seconds`), and its own work by call timeouts.
        rlimits: ResourceLimits {
            max_open_files,
            max_file_size,
            cpu_seconds: None,
            address_space,
            max_processes: None,
        },
    }
}
