//! The policy's types: [`Policy`] and what it holds (clients' [`Permissions`], [`Limits`],
//! [`ClientId`], the uid range, audit settings, the quick-start flags), the documented defaults
//! and ceilings, and the read-only views (permissions, prompts, per-client uid, `describe`).
//! Builds nothing (see `build`), decides nothing (see `crate::decide`), does no I/O. Trusts
//! that a `Policy` was produced by `build`, which validated every value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use mcpd_ipc::{CommandLimits, ResourceLimits, ToolLimits};

use super::http::HttpSettings;
use crate::exec::{ExecGrant, OperatorTool};

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
/// Default `server.stop_grace_secs`: how long a stopping broker lets in-flight calls finish
/// (below systemd's default `TimeoutStopSec=` of 90 s, and the units' 30 s).
pub const DEFAULT_STOP_GRACE_SECS: u64 = 10;
/// Upper bound of `server.stop_grace_secs`.
pub const MAX_STOP_GRACE_SECS: u64 = 3600;
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
pub(super) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Resolves a configured path to its canonical absolute form (realpath). Supplied by the
/// caller so the policy crate does no I/O itself. An error means the path does not exist.
pub type Canonicalize<'a> = &'a dyn Fn(&Path) -> std::io::Result<PathBuf>;

/// A client identity. Syntax: `[A-Za-z0-9_.@-]{1,128}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub(super) String);

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

/// Sessions a client may have open at once unless its limits say otherwise.
pub const DEFAULT_MAX_SESSIONS_PER_CLIENT: u64 = 32;

/// Effective limits of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Calls in flight at once.
    pub max_concurrent_calls: u64,
    /// Wall-clock limit of one call, seconds.
    pub call_timeout_secs: u64,
    /// Tool calls per minute (0 = unlimited), shared by every session of the client.
    pub calls_per_minute: u64,
    /// Sessions the client may have open at once, over every transport.
    pub max_sessions: u64,
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
            max_sessions: DEFAULT_MAX_SESSIONS_PER_CLIENT,
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
    pub(super) clients: BTreeMap<ClientId, Permissions>,
    /// Role views (`[auth.jwt] roles_claim`): a client narrowed to some of its roles, by view
    /// id (`CLIENT+ROLE...`, see `role_views`). Empty without a roles claim.
    pub(super) role_views: BTreeMap<ClientId, Permissions>,
    /// Each client's roles, for [`Policy::role_view`] (only with a roles claim).
    pub(super) client_roles: BTreeMap<ClientId, BTreeSet<String>>,
    pub(super) stdio_client: Option<ClientId>,
    /// Worker executable override (`server.worker`, `--worker`): [`Policy::worker_path`].
    pub(crate) worker_path: Option<PathBuf>,
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
    /// Warnings to print loudly at load (e.g. global write): [`Policy::warnings`].
    pub(crate) warnings: Vec<String>,
    /// The audit log, when configured (`[audit]`, `--audit-log`): [`Policy::audit`].
    pub(crate) audit: Option<AuditSettings>,
    /// Operator-defined tools.
    pub operator_tools: BTreeMap<String, OperatorTool>,
    /// Per-worker control groups.
    pub cgroup: CgroupSetting,
    /// How long the broker polls a worker's socket after a send before sleeping, µs (0 = never).
    pub ipc_spin_us: u64,
    /// How long a stop (`SIGTERM`, `SIGINT`) lets in-flight calls finish before the rest are
    /// cancelled and the workers ended, seconds.
    pub stop_grace_secs: u64,
    /// This instance's name among identical ones (`server.instance`, `--instance`): session
    /// ids are `NAME.` followed by 128 random bits, so a balancer can route by it.
    pub instance: Option<String>,
    /// The uids a root broker's workers run as (one per client).
    pub worker_uids: UidRange,
    /// Size of each worker's private `/tmp` and `/dev/shm`, bytes.
    pub worker_tmp_bytes: u64,
    /// The Streamable HTTP transport settings (`[http]`, `--http`, `--http-session-idle-secs`):
    /// [`Policy::http`].
    pub(crate) http: HttpSettings,
    /// Extra tool sets (`--toolset NAME`), e.g. `conformance`. Never set by a default policy:
    /// [`Policy::toolsets`].
    pub(crate) toolsets: Vec<String>,
    /// Operator-defined prompts.
    pub prompts: BTreeMap<String, crate::prompts::Prompt>,
    /// Which prompts each client may use.
    pub(super) prompt_grants: BTreeMap<ClientId, BTreeSet<String>>,
    /// Which verified identities speak for which client: [`Policy::client_for`].
    pub(crate) identities: crate::identity::IdentityRules,
    /// `[auth.jwt]` / `--jwt-*`: bearer tokens on the HTTP listener: [`Policy::jwt`].
    pub(crate) jwt: Option<super::jwt::JwtSettings>,
    /// The Unix-socket listener (`[unix]`, `--unix`, `--unix-systemd`, `--unix-protocol`):
    /// [`Policy::unix`].
    pub(crate) unix: super::unix::UnixSettings,
    /// The D-Bus transport (`[dbus]`, `--dbus`, `--dbus-address`): [`Policy::dbus`].
    pub(crate) dbus: super::dbus::DbusSettings,
    /// The metrics listener (`[metrics]`, `--metrics`): [`Policy::metrics`].
    pub(crate) metrics: super::metrics::MetricsSettings,
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
    /// Longest time a record stays without a checkpoint, seconds (0 = by count only).
    pub checkpoint_secs: u64,
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
            checkpoint_secs: 60,
            preview_args: false,
            fail_open: false,
            journald: false,
        }
    }
}

/// Quick-start flags: a one-client policy without a config file ([`Policy::quick_start`]).
/// The grant part of an [`super::Overlay`], which is how `mcpd serve` gives them.
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
    /// The worker executable the operator chose (`server.worker` or `--worker`); `None`: the
    /// `mcpd-worker` next to `mcpd`.
    pub fn worker_path(&self) -> Option<&Path> {
        self.worker_path.as_deref()
    }

    /// Warnings to print loudly at load (global write, degraded sandbox, unauthenticated
    /// non-loopback HTTP, test tool sets...).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The audit log settings, when a log is configured.
    pub fn audit(&self) -> Option<&AuditSettings> {
        self.audit.as_ref()
    }

    /// The Streamable HTTP transport settings.
    pub fn http(&self) -> &HttpSettings {
        &self.http
    }

    /// Extra tool sets (`--toolset NAME`); empty unless a flag asked for one.
    pub fn toolsets(&self) -> &[String] {
        &self.toolsets
    }

    /// The client the stdio transport speaks for, if any. Without one, stdio is refused.
    pub fn stdio_client(&self) -> Option<&ClientId> {
        self.stdio_client.as_ref()
    }

    /// The operator prompts a client may use (deny by default).
    pub fn prompts_for(&self, client: &ClientId) -> Vec<&crate::prompts::Prompt> {
        self.prompt_grants
            .get(&client.tenant())
            .map(|names| names.iter().filter_map(|n| self.prompts.get(n)).collect())
            .unwrap_or_default()
    }

    /// An operator-defined tool by name.
    pub fn operator_tool(&self, name: &str) -> Option<&OperatorTool> {
        self.operator_tools.get(name)
    }

    /// A client's (or a role view's) permissions (`None`: unknown client, which is denied
    /// everything).
    pub fn permissions(&self, client: &ClientId) -> Option<&Permissions> {
        self.clients
            .get(client)
            .or_else(|| self.role_views.get(client))
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
        // A role view is its client's tenant: the same uid.
        let client = &client.tenant();
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

    /// A human-readable rendering of the effective policy (for `mcpd check-config`).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for w in &self.warnings {
            out.push_str(&format!("WARNING: {w}\n"));
        }
        out.push_str(&format!(
            "server: {}max_message_bytes {}, worker idle {}, ipc spin {} µs, stop grace {}, degraded sandbox {}, worker uids {}, worker tmp {}, worker {}\n",
            self.instance.as_ref().map_or(String::new(), |i| format!("instance {i}, ")),
            units::bytes(self.max_message_bytes),
            units::secs(self.worker_idle_secs),
            self.ipc_spin_us,
            units::secs(self.stop_grace_secs),
            if self.allow_degraded_sandbox { "ALLOWED" } else { "no" },
            self.worker_uids,
            units::bytes(self.worker_tmp_bytes),
            self.worker_path
                .as_ref()
                .map_or("next to mcpd".into(), |p| p.display().to_string())
        ));
        out.push_str(&format!(
            "stdio client: {}\n",
            self.stdio_client
                .as_ref()
                .map_or("<none: stdio refused>".into(), |c| c.to_string())
        ));
        out.push_str(&self.describe_jwt());
        out.push_str(&self.unix.describe());
        out.push_str(&self.dbus.describe());
        out.push_str(&self.metrics.describe());
        match &self.audit {
            None => out.push_str("audit: off\n"),
            Some(a) => out.push_str(&format!(
                "audit: {} mode={} rotate={}B checkpoints={} preview_args={} fail_open={} journald={}\n",
                a.path.display(),
                if a.strict { "strict" } else { "batch" },
                a.rotate_bytes,
                a.checkpoint_key.as_ref().map_or("OFF (no checkpoint_key)".to_string(), |k| format!("every {} records{}, key {}", a.checkpoint_every, if a.checkpoint_secs > 0 { format!(" or {}s", a.checkpoint_secs) } else { String::new() }, k.display())),
                a.preview_args,
                a.fail_open,
                a.journald
            )),
        }
        out.push_str(&self.describe_tls());
        if self.clients.is_empty() {
            out.push_str("no clients: every request is denied\n");
        }
        for (id, p) in &self.clients {
            out.push_str(&format!(
                "client {id}: (worker uid/gid {} under a root broker)\n",
                self.worker_uid(id)
            ));
            for (kind, value) in self.identities.of(id) {
                out.push_str(&format!("  identity {} = {value}\n", kind.key()));
            }
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
                "  command timeout {}, lifetime {}, cpu {}, memory {}, processes {}\n",
                units::secs(l.command.timeout_secs),
                units::secs(l.command.max_lifetime_secs),
                units::opt(l.command.cpu_seconds, units::secs),
                units::opt(l.memory_bytes, units::bytes),
                units::opt(l.max_processes, |n| n.to_string()),
            ));
            out.push_str(&format!(
                "  limits  concurrent calls {}, call timeout {}, rate {}, sessions {}, read {}, output {}, entries {}, matches {}, open files {}, file size {}, address space {}\n",
                l.max_concurrent_calls,
                units::secs(l.call_timeout_secs),
                units::rate(l.calls_per_minute),
                l.max_sessions,
                units::bytes(l.tool.max_read_bytes),
                units::bytes(l.tool.max_output_bytes),
                l.tool.max_entries,
                l.tool.max_matches,
                units::opt(l.rlimits.max_open_files, |n| n.to_string()),
                units::opt(l.rlimits.max_file_size, units::bytes),
                units::opt(l.rlimits.address_space, units::bytes),
            ));
        }
        out
    }
}

/// Numbers as `check-config` prints them: binary byte units, durations, "unlimited".
pub(crate) mod units {
    /// `8 MiB`, `2 GiB`, `1536 B` (a unit only when the value is a whole number of it).
    pub fn bytes(n: u64) -> String {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        UNITS
            .iter()
            .find(|(u, _)| n >= *u && n.is_multiple_of(*u))
            .map_or_else(|| format!("{n} B"), |(u, name)| format!("{} {name}", n / u))
    }

    /// `2 h`, `10 min`, `90 s`.
    pub fn secs(n: u64) -> String {
        match n {
            0 => "0 s".into(),
            n if n.is_multiple_of(3600) => format!("{} h", n / 3600),
            n if n.is_multiple_of(60) => format!("{} min", n / 60),
            n => format!("{n} s"),
        }
    }

    /// A calls-per-minute rate (0: unlimited).
    pub fn rate(n: u64) -> String {
        if n == 0 {
            "unlimited".into()
        } else {
            format!("{n} calls/min")
        }
    }

    /// An optional limit: `unlimited` when unset.
    pub fn opt(v: Option<u64>, f: impl Fn(u64) -> String) -> String {
        v.map_or_else(|| "unlimited".into(), f)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn human_units() {
            assert_eq!(bytes(2 * 1024 * 1024 * 1024), "2 GiB");
            assert_eq!(bytes(8 * 1024 * 1024), "8 MiB");
            assert_eq!(bytes(1536), "1536 B");
            assert_eq!(bytes(0), "0 B");
            assert_eq!(secs(3600), "1 h");
            assert_eq!(secs(120), "2 min");
            assert_eq!(secs(90), "90 s");
            assert_eq!(rate(0), "unlimited");
            assert_eq!(rate(120), "120 calls/min");
            assert_eq!(opt(None, bytes), "unlimited");
        }
    }
}
