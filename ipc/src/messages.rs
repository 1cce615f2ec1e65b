//! The message catalogue. One enum per direction; every field is plain data.
//!
//! Tool arguments and structured results cross as JSON *text* (`*_json: String`) because
//! postcard cannot carry `serde_json::Value`; content blocks are typed.

use serde::{Deserialize, Serialize};

/// Identifier of one tool call, chosen by the broker, unique within a worker's life.
pub type CallId = u64;

/// Messages from the broker to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum BrokerToWorker {
    /// The first and only message a worker reads before it confines itself.
    Confine {
        /// Must equal [`crate::PROTOCOL_VERSION`].
        version: u32,
        /// What the kernel must enforce for this client (boxed: it is by far the largest
        /// message and is sent once).
        spec: Box<SandboxSpec>,
    },
    /// Run a tool. Answered by exactly one `Result` or `Failed` with the same id.
    Call {
        /// Broker-chosen call id.
        id: CallId,
        /// Tool name, as advertised by the worker in `Ready`.
        tool: String,
        /// The arguments object, as JSON text.
        arguments_json: String,
        /// Whether the client asked for progress notifications.
        progress: bool,
        /// Stateless era: the client's capabilities and its answers to an earlier
        /// input-required round (`None` in the session era).
        input: Option<InputRound>,
    },
    /// Ask the worker's resource, prompt or completion providers. Answered by exactly one
    /// `Answer` or `Failed` with the same id (ids share the space of `Call` ids).
    Query {
        /// Broker-chosen id.
        id: CallId,
        /// What is asked.
        query: Query,
    },
    /// The client cancelled this call (or the broker gave up on it): stop the work.
    Cancel {
        /// The call to stop.
        id: CallId,
    },
    /// The answer of the MCP client to a [`WorkerToBroker::ClientRequest`].
    ClientReply {
        /// The id of the worker's request.
        id: u64,
        /// The client's result (JSON text) or an error.
        outcome: ClientReplyOutcome,
    },
    /// The `file://` resources the client subscribed to (the whole set, replacing the last):
    /// the worker reports changes with [`WorkerToBroker::Changed`].
    Watch {
        /// Resource URIs.
        uris: Vec<String>,
    },
    /// End of session: finish or abandon calls and exit.
    Shutdown,
}

/// Messages from a worker to the broker. All hostile until validated by the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum WorkerToBroker {
    /// Confinement is in place; the worker now serves calls.
    Ready {
        /// Must equal [`crate::PROTOCOL_VERSION`].
        version: u32,
        /// What the kernel actually enforces.
        enforcement: Enforcement,
        /// The tools this worker can run (the broker filters them by policy).
        tools: Vec<ToolDescriptor>,
    },
    /// Confinement could not be established; the worker exits after sending this.
    ConfineFailed {
        /// Operator-facing reason (never sent to a client).
        reason: String,
    },
    /// Progress of a running call.
    Progress {
        /// The call.
        id: CallId,
        /// Progress so far (the broker enforces that it never decreases).
        progress: f64,
        /// Total, when known.
        total: Option<f64>,
        /// Human-readable status.
        message: Option<String>,
    },
    /// A log message for the client (`notifications/message`).
    Log {
        /// The call it belongs to, if any.
        id: Option<CallId>,
        /// Severity.
        level: LogLevel,
        /// Logger name.
        logger: Option<String>,
        /// The data, as JSON text.
        data_json: String,
    },
    /// The outcome of a call that ran (possibly as a tool error, `is_error`).
    Result {
        /// The call.
        id: CallId,
        /// What the tool produced.
        result: ToolResult,
    },
    /// The answer to a [`BrokerToWorker::Query`]: the MCP result object, as JSON text (hostile:
    /// the broker validates its shape).
    Answer {
        /// The query.
        id: CallId,
        /// The result object.
        result_json: String,
    },
    /// A call that could not run: unknown tool, invalid arguments, internal failure.
    Failed {
        /// The call.
        id: CallId,
        /// Why.
        error: CallError,
    },
    /// Something the client may want to hear about changed (rate-limited by the broker).
    Changed {
        /// What changed.
        change: Change,
    },
    /// A running tool asks the MCP client for something (sampling, elicitation, roots).
    ClientRequest {
        /// Worker-chosen id, echoed in [`BrokerToWorker::ClientReply`].
        id: u64,
        /// The call this request belongs to.
        call: CallId,
        /// What is asked.
        request: ClientRequestKind,
    },
}

/// What the worker's kernel confinement actually achieved, reported in `Ready` and audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct Enforcement {
    /// Landlock ABI version the kernel offers (0 = none).
    pub landlock_abi: u32,
    /// Landlock status.
    pub landlock: LandlockStatus,
    /// TCP bind/connect is denied by Landlock (ABI ≥ 4).
    pub landlock_net: bool,
    /// Abstract Unix sockets and signals are scoped by Landlock (ABI ≥ 6).
    pub landlock_scoped: bool,
    /// A seccomp-bpf filter is installed.
    pub seccomp: bool,
    /// `PR_SET_NO_NEW_PRIVS` is set.
    pub no_new_privs: bool,
    /// The namespaces and identity the worker runs in (sandbox v2).
    pub isolation: IsolationReport,
}

/// What the namespace and identity steps achieved (see [`Isolation`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct IsolationReport {
    /// Own mount, PID, IPC and UTS namespaces, and a private root holding only the spec's
    /// paths (the rest of the host's filesystem does not exist for the worker).
    pub namespaces: bool,
    /// Own (empty) network namespace: no network at all.
    pub network_namespace: bool,
    /// Own user namespace (the broker is unprivileged).
    pub user_namespace: bool,
    /// The worker's uid as the host sees it.
    pub uid: u32,
    /// Every capability set (bounding, ambient, inheritable, permitted, effective) is empty,
    /// supplementary groups are dropped where the kernel allows it, securebits are locked.
    pub capabilities_cleared: bool,
    /// Roots mounted idmapped (their host owner appears as the worker's uid).
    pub idmapped: Vec<String>,
    /// Roots whose filesystem refused an idmapped mount: the documented fallback applies (the
    /// worker runs as the owner of the first such root, capabilities still cleared).
    pub not_idmapped: Vec<String>,
    /// `vm.memfd_noexec = 2` in the worker's PID namespace (no executable memfd).
    pub memfd_noexec: bool,
    /// The view has a `/proc` of the worker's own PID namespace. A user namespace may mount
    /// procfs only where a fully visible one exists, so under a service manager that
    /// over-mounts parts of `/proc` (`ProtectKernelTunables=`, `ProcSubset=`) the view has no
    /// `/proc` at all.
    pub proc: bool,
    /// Why the namespaces are missing, when the operator's degraded mode let the worker start
    /// without them.
    pub degraded: Option<String>,
}

/// The namespaces, filesystem view and identity a worker builds before it reads any request
/// (sandbox v2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct Isolation {
    /// Build the private view: mount, PID, IPC, UTS namespaces (and a network namespace unless
    /// [`SandboxSpec::allow_network`]), a user namespace when the worker is not root. Always on
    /// in a spec the broker derives from policy; off only in tests of the other layers.
    pub namespaces: bool,
    /// The uid (and gid) the worker runs as when it starts as root (`server.worker_uids`).
    /// A root worker without one refuses to start.
    pub uid: Option<u32>,
    /// Size of the private `/tmp` (and `/dev/shm`), bytes.
    pub tmp_bytes: u64,
    /// Paths as programs spell them (the ELF loader, `#!` interpreters, program names) whose
    /// host symlink chains the view reproduces, so `/lib64/ld-linux-x86-64.so.2` or `/bin/sh`
    /// resolve inside the view to the (canonical) files that are mounted there.
    pub aliases: Vec<String>,
}

/// Landlock enforcement level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum LandlockStatus {
    /// Every requested right is enforced.
    FullyEnforced,
    /// Some rights are not supported by this kernel (only with the degraded opt-in).
    PartiallyEnforced,
    /// Nothing is enforced (only with the degraded opt-in).
    NotEnforced,
}

/// The sandbox a worker must build, derived by the broker from the client's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct SandboxSpec {
    /// Absolute, canonical directories (or files) the client may read.
    pub read_paths: Vec<String>,
    /// Absolute, canonical directories (or files) the client may read and write.
    pub write_paths: Vec<String>,
    /// Absolute paths that may be read and executed (programs, interpreters, their libraries).
    /// Empty unless the policy grants command or code execution.
    pub exec_paths: Vec<String>,
    /// Whether TCP and non-Unix sockets stay allowed (the policy granted network).
    pub allow_network: bool,
    /// Whether a Landlock that is not fully enforced is acceptable (operator opt-in).
    pub allow_degraded: bool,
    /// Kernel resource limits for the worker and everything it starts.
    pub rlimits: ResourceLimits,
    /// Limits the tools apply themselves.
    pub tool_limits: ToolLimits,
    /// Extra tool sets the operator enabled by name (e.g. `conformance`: the official MCP
    /// conformance suite's fixtures). Never in a default policy.
    pub toolsets: Vec<String>,
    /// Command and code execution, operator-defined tools (empty: nothing may be executed).
    pub exec: ExecSpec,
    /// Namespaces, private filesystem view and identity.
    pub isolation: Isolation,
}

/// What the worker may execute, derived from the client's command, code and operator-tool
/// grants. Landlock grants `Execute` only on [`SandboxSpec::exec_paths`], which the broker
/// derives from the same grants: a program missing there cannot run whatever a tool tries.
/// Each program, shell command line and interpreter additionally runs in its own nested
/// Landlock domain that may execute only its `exec_set` (a subset of `exec_paths`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct ExecSpec {
    /// Allow-listed programs (`run_command`).
    pub programs: Vec<ProgramGrant>,
    /// `/bin/sh`, canonical, when the client may run shell command lines.
    pub shell: Option<String>,
    /// What a shell command line may execute (its own exec domain): the shell and the exec
    /// sets of every allow-listed program (a command line cannot be argument-checked, so it may
    /// run any listed program with any arguments). Empty without a shell grant.
    pub shell_exec_set: Vec<String>,
    /// Languages of persistent code sessions (`run_code`).
    pub languages: Vec<LanguageGrant>,
    /// Environment variables the client may set (names).
    pub env_allow: Vec<String>,
    /// Environment variables the operator fixed (`NAME`, `value`), set for every command.
    pub env_fixed: Vec<(String, String)>,
    /// Operator-defined tools this client may call.
    pub operator_tools: Vec<OperatorToolSpec>,
    /// Read-only paths that programs need to run (libraries, the loader's cache); Landlock
    /// only, never reachable through the file tools.
    pub system_read_paths: Vec<String>,
    /// Device files commands may read and write (`/dev/null`, `/dev/zero`, `/dev/urandom`).
    pub device_paths: Vec<String>,
    /// Limits of every process the worker starts.
    pub limits: CommandLimits,
}

/// One allow-listed program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct ProgramGrant {
    /// The name the operator wrote (`git`, or an absolute path).
    pub name: String,
    /// Canonical absolute path, resolved when the policy was loaded.
    pub path: String,
    /// What this program may execute (its own nested Landlock domain, `Execute` only):
    /// canonical paths of the program, its `#!` interpreter chain, the dynamic loader and the
    /// helper files or directories the operator declared for it (`exec_helpers`). The policy
    /// fills in the program and its helpers; the broker adds interpreters and loaders.
    pub exec_set: Vec<String>,
}

/// One code-session language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct LanguageGrant {
    /// `python3`, `sh`, `bash` or `node`.
    pub name: String,
    /// Canonical absolute path of the interpreter.
    pub interpreter: String,
    /// What the session's interpreter may execute: itself, its `#!` chain and the loader
    /// (see [`ProgramGrant::exec_set`]). Never the client's other programs.
    pub exec_set: Vec<String>,
}

/// An operator-defined tool: a fixed argv template filled with the call's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct OperatorToolSpec {
    /// Tool name.
    pub name: String,
    /// Description.
    pub description: String,
    /// JSON Schema of the arguments (validated by the broker before dispatch), JSON text.
    pub input_schema_json: String,
    /// JSON Schema of the result: stdout must then be a JSON object matching it.
    pub output_schema_json: Option<String>,
    /// argv template; `argv[0]` is a canonical absolute path. `{name}` placeholders are
    /// replaced by argument values, each element staying one argument (no shell).
    pub argv: Vec<String>,
    /// Wall-clock timeout, seconds.
    pub timeout_secs: u64,
    /// Arguments that name paths (checked by the broker like file-tool paths).
    pub path_args: Vec<PathArg>,
    /// What the tool's program may execute: `argv[0]`, its `#!` chain, the loader and the
    /// tool's declared `helpers` (see [`ProgramGrant::exec_set`]).
    pub exec_set: Vec<String>,
}

/// Default of the `max_output_bytes` limit ([`ToolLimits::max_output_bytes`] and
/// [`CommandLimits::max_output_bytes`]: one policy key sets both): 10 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 10 * 1024 * 1024;

/// The most bytes a command, code or operator-tool result adds around the output it carries,
/// counted like `max_output_bytes` (text content plus `structuredContent` as serialised):
/// status lines, notes, field names and numbers. Such a result is at most
/// `max_output_bytes + RESULT_ENVELOPE_BYTES`.
pub const RESULT_ENVELOPE_BYTES: u64 = 2048;

/// Limits of the processes a worker starts (commands, interpreters, operator tools).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct CommandLimits {
    /// Default wall-clock timeout of one command, seconds.
    pub timeout_secs: u64,
    /// Longest a process may live, seconds: the ceiling of a requested timeout, and the age at
    /// which a code-session interpreter is recycled.
    pub max_lifetime_secs: u64,
    /// RLIMIT_CPU of each process, seconds.
    pub cpu_seconds: Option<u64>,
    /// RLIMIT_AS of each process, bytes.
    pub address_space: Option<u64>,
    /// RLIMIT_NPROC of each process (caveat: per uid, ignored for root; cgroups do better).
    pub max_processes: Option<u64>,
    /// RLIMIT_NOFILE of each process.
    pub max_open_files: Option<u64>,
    /// RLIMIT_FSIZE of each process, bytes.
    pub max_file_size: Option<u64>,
    /// Most bytes a call returns for stdout + stderr, counted as they appear in the result:
    /// once in the text content and once in `structuredContent` (JSON-escaped). The rest is
    /// discarded and marked.
    pub max_output_bytes: u64,
}

impl Default for CommandLimits {
    fn default() -> Self {
        Self {
            timeout_secs: 60,
            max_lifetime_secs: 3600,
            cpu_seconds: None,
            address_space: None,
            max_processes: None,
            max_open_files: Some(256),
            max_file_size: None,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// Kernel resource limits (`setrlimit`). `None` leaves the inherited value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct ResourceLimits {
    /// RLIMIT_NOFILE.
    pub max_open_files: Option<u64>,
    /// RLIMIT_FSIZE, bytes.
    pub max_file_size: Option<u64>,
    /// RLIMIT_CPU, seconds.
    pub cpu_seconds: Option<u64>,
    /// RLIMIT_AS, bytes (documented caveat: breaks some runtimes that reserve address space).
    pub address_space: Option<u64>,
    /// RLIMIT_NPROC (caveat: counts every process of the uid).
    pub max_processes: Option<u64>,
}

/// Limits applied by the tools themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct ToolLimits {
    /// Largest file a read tool returns, bytes.
    pub max_read_bytes: u64,
    /// Largest total content of one result, bytes.
    pub max_output_bytes: u64,
    /// Most entries a listing, tree or search returns.
    pub max_entries: u64,
    /// Most matches `grep` returns.
    pub max_matches: u64,
}

impl Default for ToolLimits {
    fn default() -> Self {
        Self {
            max_read_bytes: 8 * 1024 * 1024,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_entries: 10_000,
            max_matches: 1_000,
        }
    }
}

/// A tool as a worker advertises it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct ToolDescriptor {
    /// Unique name (`[A-Za-z0-9_.-]{1,64}`, checked by the broker).
    pub name: String,
    /// Optional display title.
    pub title: Option<String>,
    /// Description for the model.
    pub description: String,
    /// JSON Schema of the arguments (root `type: "object"`), as JSON text.
    pub input_schema_json: String,
    /// JSON Schema of `structuredContent`, when the tool returns it.
    pub output_schema_json: Option<String>,
    /// MCP tool annotations.
    pub annotations: ToolAnnotations,
    /// What the tool needs from the policy to be listed and called.
    pub access: ToolAccess,
    /// Arguments that name filesystem paths, so the broker can check them against policy.
    pub path_args: Vec<PathArg>,
    /// For command and code tools: which arguments name the program, its arguments, the shell
    /// switch and the language, so the broker can decide them against policy.
    pub exec_args: Option<ExecArgs>,
    /// Client capabilities the tool needs (`sampling`, `elicitation`, `roots`); a stateless
    /// request whose client lacks one is refused with -32021 before the worker is asked.
    pub client_capabilities: Vec<String>,
    /// Whether a call may run as a task (tasks extension, stateless era).
    pub task_support: TaskSupport,
}

/// Task support of a tool (`io.modelcontextprotocol/tasks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum TaskSupport {
    /// Always synchronous.
    #[default]
    Forbidden,
    /// A task when the client declares the extension, else synchronous.
    Optional,
    /// Only as a task: without the extension the call is refused (-32021).
    Required,
}

/// Names of the arguments of a command or code tool that the policy decides on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct ExecArgs {
    /// String argument naming the program (or the shell script when `shell` is true).
    pub program: Option<String>,
    /// Array-of-strings argument with the program's arguments.
    pub args: Option<String>,
    /// Boolean argument that asks for `/bin/sh -c`.
    pub shell: Option<String>,
    /// String argument naming the code-session language.
    pub language: Option<String>,
}

/// MCP tool annotations (hints only; never trusted for security).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct ToolAnnotations {
    /// readOnlyHint
    pub read_only: bool,
    /// destructiveHint
    pub destructive: bool,
    /// idempotentHint
    pub idempotent: bool,
    /// openWorldHint
    pub open_world: bool,
}

/// The permission class a tool needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum ToolAccess {
    /// Needs no filesystem access (e.g. `list_allowed_directories`).
    None,
    /// Reads files.
    FileRead,
    /// Writes files.
    FileWrite,
    /// Runs allow-listed programs.
    Command,
    /// Runs code in an allow-listed interpreter.
    Code,
    /// An operator-defined tool (allowed by the tool's own role/client list).
    Operator,
}

/// One argument that carries a path (or a list of paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct PathArg {
    /// Top-level argument name.
    pub name: String,
    /// The argument is an array of paths.
    pub many: bool,
    /// The path is written (created, modified, moved, deleted), not only read.
    pub write: bool,
}

/// The result of a tool that ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct ToolResult {
    /// Content blocks.
    pub content: Vec<Content>,
    /// `structuredContent`, as JSON text.
    pub structured_json: Option<String>,
    /// Tool-level failure (`isError: true`).
    pub is_error: bool,
    /// Stateless era: the tool needs answers from the client first (an `InputRequiredResult`).
    pub input_required: Option<InputRequired>,
}

/// Stateless era, broker → worker: what the client declared and answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct InputRound {
    /// The request's client capabilities, JSON text.
    pub client_caps_json: String,
    /// `inputResponses` of the retry, JSON text (an object), if any.
    pub responses_json: Option<String>,
    /// The state the worker asked to get back, after the broker verified its integrity seal.
    pub state: Option<Vec<u8>>,
}

/// Stateless era, worker → broker: ask the client for input, then retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct InputRequired {
    /// `inputRequests`: an object of `{method, params}` requests, JSON text.
    pub requests_json: String,
    /// Opaque state to receive back with the retry; the broker seals it (HMAC, bound to the
    /// principal and the tool) so the client can carry it but not alter it.
    pub state: Option<Vec<u8>>,
    /// The input is needed by running work (a task goes `input_required` and is resumed by
    /// `tasks/update`), not before the work starts (an `InputRequiredResult` round).
    pub in_task: bool,
}

/// MCP content blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum Content {
    /// Text.
    Text {
        /// the text
        text: String,
    },
    /// An image; the broker base64-encodes `data`.
    Image {
        /// raw bytes
        data: Vec<u8>,
        /// e.g. `image/png`
        mime_type: String,
    },
    /// Audio; the broker base64-encodes `data`.
    Audio {
        /// raw bytes
        data: Vec<u8>,
        /// e.g. `audio/wav`
        mime_type: String,
    },
    /// An embedded resource.
    Resource {
        /// resource URI
        uri: String,
        /// MIME type
        mime_type: Option<String>,
        /// text or binary contents
        body: ResourceBody,
    },
    /// A link to a resource.
    ResourceLink {
        /// resource URI
        uri: String,
        /// name
        name: String,
        /// description
        description: Option<String>,
        /// MIME type
        mime_type: Option<String>,
    },
}

/// Contents of an embedded resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum ResourceBody {
    /// UTF-8 text.
    Text(String),
    /// Bytes (base64-encoded by the broker).
    Blob(Vec<u8>),
}

/// Why a call could not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct CallError {
    /// The class of error (maps to a JSON-RPC code).
    pub kind: CallErrorKind,
    /// Client-safe message (the worker never puts paths outside the client's scope here).
    pub message: String,
}

/// Classes of [`CallError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum CallErrorKind {
    /// No such tool (JSON-RPC -32602).
    UnknownTool,
    /// Arguments do not fit the schema (JSON-RPC -32602).
    InvalidArguments,
    /// The call was cancelled.
    Cancelled,
    /// Anything else (JSON-RPC -32603).
    Internal,
}

/// MCP log levels (RFC 5424 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum LogLevel {
    /// debug
    Debug,
    /// info
    Info,
    /// notice
    Notice,
    /// warning
    Warning,
    /// error
    Error,
    /// critical
    Critical,
    /// alert
    Alert,
    /// emergency
    Emergency,
}

impl LogLevel {
    /// The MCP wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Notice => "notice",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
            LogLevel::Alert => "alert",
            LogLevel::Emergency => "emergency",
        }
    }

    /// Parse the MCP wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "notice" => LogLevel::Notice,
            "warning" => LogLevel::Warning,
            "error" => LogLevel::Error,
            "critical" => LogLevel::Critical,
            "alert" => LogLevel::Alert,
            "emergency" => LogLevel::Emergency,
            _ => return None,
        })
    }
}

/// Questions for the worker's providers (resources, prompts, completions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum Query {
    /// `resources/list` (the broker paginates): `{"resources": [...]}`.
    ListResources,
    /// `resources/templates/list`: `{"resourceTemplates": [...]}`.
    ListResourceTemplates,
    /// `resources/read`: `{"contents": [...]}`; an unknown URI fails with `InvalidArguments`.
    ReadResource {
        /// The URI.
        uri: String,
    },
    /// `prompts/list`: `{"prompts": [...]}`.
    ListPrompts,
    /// `prompts/get`: `{"description"?, "messages": [...]}`, or (stateless era)
    /// `{"inputRequests": {...}, "requestState"?: <base64 of the state bytes>}`.
    GetPrompt {
        /// Prompt name.
        name: String,
        /// Arguments object, JSON text.
        arguments_json: String,
        /// Stateless era: capabilities and answers of an earlier round.
        input: Option<InputRound>,
    },
    /// `completion/complete`: `{"completion": {"values": [...], ...}}`.
    Complete {
        /// The `ref` object, JSON text.
        reference_json: String,
        /// The `argument` object, JSON text.
        argument_json: String,
    },
}

/// A change the client is told about (`notifications/*/list_changed`,
/// `notifications/resources/updated`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum Change {
    /// The tool list changed.
    Tools,
    /// The prompt list changed.
    Prompts,
    /// The resource list changed.
    Resources,
    /// A subscribed resource changed.
    ResourceUpdated {
        /// Its URI.
        uri: String,
    },
}

/// What a worker may ask the MCP client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum ClientRequestKind {
    /// `sampling/createMessage` with these params (JSON text).
    Sampling {
        /// params
        params_json: String,
    },
    /// `elicitation/create` with these params (JSON text).
    Elicitation {
        /// params
        params_json: String,
    },
    /// `roots/list`.
    Roots,
}

/// The client's answer to a worker's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum ClientReplyOutcome {
    /// The result object, as JSON text.
    Ok {
        /// result
        result_json: String,
    },
    /// The client answered with an error, or never answered in time.
    Err {
        /// error message
        message: String,
    },
}
