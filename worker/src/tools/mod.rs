//! The tool API of the worker: the [`Tool`] trait, the [`Registry`], and the per-call
//! [`ToolContext`].
//!
//! Tools run *inside* the confined worker: everything they do is already bounded by the
//! kernel sandbox (Landlock, seccomp, rlimits). They still resolve every client path beneath
//! an open root directory (see [`paths`]) so that the kernel is the backstop, not the only check.
//! A custom worker (see `examples/`) builds its own [`Registry`] with extra tools.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mcpd_ipc::{
    CallError, CallErrorKind, ClientReplyOutcome, ClientRequestKind, Content, ExecSpec, LogLevel,
    ToolDescriptor, ToolLimits, ToolResult,
};

pub mod code;
pub mod exec;
pub mod fs;
pub(crate) mod output;
pub mod paths;
pub mod process;
pub mod resources;

/// What a progress report carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressUpdate {
    /// Progress so far.
    pub progress: f64,
    /// Total, when known.
    pub total: Option<f64>,
    /// Status text.
    pub message: Option<String>,
}

/// Sink for progress reports of one call (no-op when the client did not ask for progress).
pub type ProgressFn = Arc<dyn Fn(ProgressUpdate) + Send + Sync>;

/// What a tool can say to the client while it runs, besides progress: log messages and
/// requests (sampling, elicitation, roots) that the broker relays.
pub trait ClientLink: Send + Sync {
    /// A `notifications/message` for the client (the broker filters by the client's level).
    fn log(&self, level: LogLevel, data: serde_json::Value);
    /// Tell the client that something changed (list_changed, resources/updated).
    fn changed(&self, change: mcpd_ipc::Change);
    /// Ask the client; blocks until it answers, the call is cancelled, or `timeout` passes.
    fn request(
        &self,
        request: ClientRequestKind,
        cancelled: &AtomicBool,
        timeout: std::time::Duration,
    ) -> ClientReplyOutcome;
}

/// Everything a tool call may use.
#[derive(Clone)]
pub struct ToolContext {
    /// The client's allowed roots, opened once at start-up.
    pub roots: Arc<paths::Roots>,
    /// Limits that tools apply themselves.
    pub limits: ToolLimits,
    /// What the client may execute (empty unless the policy grants execution).
    pub exec: Arc<ExecSpec>,
    cancelled: Arc<AtomicBool>,
    progress: Option<ProgressFn>,
    link: Option<Arc<dyn ClientLink>>,
    input: Option<Arc<mcpd_ipc::InputRound>>,
}

impl std::fmt::Debug for ToolContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolContext")
            .field("roots", &self.roots)
            .field("limits", &self.limits)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl ToolContext {
    /// A context for one call.
    pub fn new(
        roots: Arc<paths::Roots>,
        limits: ToolLimits,
        cancelled: Arc<AtomicBool>,
        progress: Option<ProgressFn>,
    ) -> Self {
        Self {
            roots,
            limits,
            exec: Arc::new(ExecSpec::default()),
            cancelled,
            progress,
            link: None,
            input: None,
        }
    }

    /// The same context for a stateless-era request (capabilities, answers of the last round).
    pub fn with_input(mut self, input: Option<mcpd_ipc::InputRound>) -> Self {
        self.input = input.map(Arc::new);
        self
    }

    /// Whether this is a stateless-era request: the tool cannot ask the client directly and
    /// returns [`input_required`] instead.
    pub fn is_stateless(&self) -> bool {
        self.input.is_some()
    }

    /// Stateless era: whether the client declared a capability for this request.
    pub fn client_has(&self, capability: &str) -> bool {
        self.input.as_ref().is_some_and(|i| {
            serde_json::from_str::<serde_json::Value>(&i.client_caps_json)
                .ok()
                .is_some_and(|c| c.get(capability).is_some())
        })
    }

    /// Stateless era: the client's answers (`inputResponses`) of the last round.
    pub fn input_responses(&self) -> serde_json::Map<String, serde_json::Value> {
        self.input
            .as_ref()
            .and_then(|i| i.responses_json.as_deref())
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| match v {
                serde_json::Value::Object(m) => Some(m),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Stateless era: the state this tool asked to get back (integrity already verified).
    pub fn request_state(&self) -> Option<&[u8]> {
        self.input.as_ref().and_then(|i| i.state.as_deref())
    }

    /// The same context, able to log to and ask the client.
    pub fn with_link(mut self, link: Arc<dyn ClientLink>) -> Self {
        self.link = Some(link);
        self
    }

    /// Send a log message to the client (dropped if the context has no link).
    pub fn log(&self, level: LogLevel, data: serde_json::Value) {
        if let Some(l) = &self.link {
            l.log(level, data);
        }
    }

    /// Tell the client that something changed (dropped if the context has no link).
    pub fn notify_changed(&self, change: mcpd_ipc::Change) {
        if let Some(l) = &self.link {
            l.changed(change);
        }
    }

    /// Ask the client (sampling, elicitation, roots); an error outcome if the context has no
    /// link, the client refuses or does not answer within `timeout`, or the call is cancelled.
    pub fn ask_client(
        &self,
        request: ClientRequestKind,
        timeout: std::time::Duration,
    ) -> ClientReplyOutcome {
        match &self.link {
            Some(l) => l.request(request, &self.cancelled, timeout),
            None => ClientReplyOutcome::Err {
                message: "no client link".into(),
            },
        }
    }

    /// The same context with the client's execution grant.
    pub fn with_exec(mut self, exec: Arc<ExecSpec>) -> Self {
        self.exec = exec;
        self
    }

    /// True once the client cancelled the call; long loops should check it and stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Report progress (ignored if the client did not ask for it).
    pub fn progress(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        if let Some(p) = &self.progress {
            p(ProgressUpdate {
                progress,
                total,
                message,
            });
        }
    }

    /// Whether the client asked for progress.
    pub fn wants_progress(&self) -> bool {
        self.progress.is_some()
    }
}

/// A tool the worker can run. Calls run on a blocking thread, one per call.
pub trait Tool: Send + Sync {
    /// How the tool is advertised (name, schema, annotations, access class, path arguments).
    fn descriptor(&self) -> ToolDescriptor;
    /// Run the tool. `Ok` with `is_error: true` is a tool-level failure the model sees;
    /// `Err` is a protocol-level failure (invalid arguments, internal error).
    fn call(&self, ctx: &ToolContext, args: serde_json::Value) -> Result<ToolResult, CallError>;

    /// A quick, bounded tool (a small read, a stat): when nothing else is in flight, the worker
    /// runs it on its own event thread instead of handing it to a tool thread, which saves two
    /// thread wake-ups per call. Only for work that cannot wait on anything but the local disk
    /// and is bounded by the tool limits. Default: no.
    fn is_quick(&self) -> bool {
        false
    }
}

/// Resources, prompts and completions a worker offers (each method: `None` = not mine).
/// Results are MCP JSON objects; the broker validates their shape.
pub trait Provider: Send + Sync {
    /// Resources (`{uri, name, ...}` objects).
    fn list_resources(&self, _ctx: &ToolContext) -> Vec<serde_json::Value> {
        Vec::new()
    }
    /// Resource templates (`{uriTemplate, name, ...}` objects).
    fn resource_templates(&self) -> Vec<serde_json::Value> {
        Vec::new()
    }
    /// Read a resource: `{"contents": [...]}`.
    fn read_resource(
        &self,
        _ctx: &ToolContext,
        _uri: &str,
    ) -> Option<Result<serde_json::Value, CallError>> {
        None
    }
    /// Prompts (`{name, description, arguments}` objects).
    fn prompts(&self) -> Vec<serde_json::Value> {
        Vec::new()
    }
    /// Get a prompt: `{"description"?, "messages": [...]}`.
    fn get_prompt(
        &self,
        _ctx: &ToolContext,
        _name: &str,
        _args: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<Result<serde_json::Value, CallError>> {
        None
    }
    /// Completion values for an argument of a prompt or resource template.
    fn complete(
        &self,
        _ctx: &ToolContext,
        _reference: &serde_json::Value,
        _argument: &serde_json::Value,
    ) -> Option<Vec<String>> {
        None
    }
}

/// What enabling a tool set does to the registry (see [`Registry::add_toolset`]).
pub type EnableToolset = fn(&mut Registry);

/// The set of tools (and providers) a worker offers, by name.
#[derive(Default)]
pub struct Registry {
    /// In registration order (the order clients see in `tools/list`: deterministic, and chosen
    /// by whoever builds the registry).
    tools: Vec<(String, Arc<dyn Tool>)>,
    providers: Vec<Arc<dyn Provider>>,
    /// Tool sets this worker can enable by name (`--toolset NAME`): none in `mcpd-worker`;
    /// a test worker adds its own (the conformance fixtures: `examples/mcpd-conformance-worker`).
    toolsets: Vec<(String, EnableToolset)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.tools.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in tools: files, `run_command`, `run_code` and `reset_code_session` (the
    /// broker lists each only to clients whose policy grants it).
    pub fn builtin() -> Self {
        let mut r = Self::new();
        fs::register(&mut r);
        exec::register(&mut r);
        code::register(&mut r);
        r.add_provider(resources::FileResources);
        r
    }

    /// Add the operator-defined tools of the sandbox spec. A name that collides with a tool
    /// already registered is refused (an operator tool never shadows a built-in one).
    pub fn add_operator_tools(&mut self, spec: &ExecSpec) -> Result<(), String> {
        for t in &spec.operator_tools {
            if self.tools.iter().any(|(k, _)| *k == t.name) {
                return Err(format!(
                    "operator tool '{}' has the name of a built-in tool",
                    t.name
                ));
            }
            self.register(exec::OperatorTool::new(t.clone()));
        }
        Ok(())
    }

    /// Add a tool; a later tool with the same name replaces the earlier one. Every tool's
    /// results pass [`output::frame_guard`]: one that would not fit an IPC frame is replaced
    /// by an error instead of ending the worker.
    pub fn register(&mut self, tool: impl Tool + 'static) {
        let name = tool.descriptor().name;
        let tool: Arc<dyn Tool> = Arc::new(FrameGuarded(tool));
        match self.tools.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = tool,
            None => self.tools.push((name, tool)),
        }
    }

    /// Add a resource / prompt / completion provider (asked in registration order).
    pub fn add_provider(&mut self, p: impl Provider + 'static) {
        self.providers.push(Arc::new(p));
    }

    /// The providers, in order.
    pub fn providers(&self) -> &[Arc<dyn Provider>] {
        &self.providers
    }

    /// Offer a tool set under `name`: [`Registry::enable_toolsets`] calls `enable` when the
    /// sandbox spec names it (a later set with the same name replaces the earlier one).
    pub fn add_toolset(&mut self, name: &str, enable: EnableToolset) {
        self.toolsets.retain(|(k, _)| k != name);
        self.toolsets.push((name.to_string(), enable));
    }

    /// Enable the tool sets the spec names (unknown names are an error: the operator asked
    /// for something this worker does not have).
    pub fn enable_toolsets(&mut self, names: &[String]) -> Result<(), String> {
        let known = self.toolsets.clone();
        for n in names {
            match known.iter().find(|(k, _)| k == n) {
                Some((_, enable)) => enable(self),
                None => {
                    return Err(format!(
                        "unknown tool set '{n}': this worker does not have it (the conformance \
                         fixtures are in the test worker mcpd-conformance-worker, passed with --worker)"
                    ))
                }
            }
        }
        self.toolsets = known;
        Ok(())
    }

    /// Look a tool up by name.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, t)| t.clone())
    }

    /// Every tool's descriptor, in registration order.
    pub fn descriptors(&self) -> Vec<ToolDescriptor> {
        self.tools.iter().map(|(_, t)| t.descriptor()).collect()
    }
}

/// A tool whose results are held to one IPC frame.
struct FrameGuarded<T>(T);

impl<T: Tool> Tool for FrameGuarded<T> {
    fn descriptor(&self) -> ToolDescriptor {
        self.0.descriptor()
    }
    fn call(&self, ctx: &ToolContext, args: serde_json::Value) -> Result<ToolResult, CallError> {
        self.0.call(ctx, args).map(output::frame_guard)
    }
    fn is_quick(&self) -> bool {
        self.0.is_quick()
    }
}

/// A successful text result.
pub fn text_result(text: impl Into<String>) -> ToolResult {
    ToolResult {
        content: vec![Content::Text { text: text.into() }],
        structured_json: None,
        is_error: false,
        input_required: None,
    }
}

/// A tool-level error result (`isError: true`) with a client-safe message.
pub fn error_result(text: impl Into<String>) -> ToolResult {
    ToolResult {
        content: vec![Content::Text { text: text.into() }],
        structured_json: None,
        is_error: true,
        input_required: None,
    }
}

/// A stateless-era "input required" result: the client answers `requests` (an object of
/// `{method, params}`) and retries, bringing `state` back (sealed by the broker).
pub fn input_required(requests: serde_json::Value, state: Option<Vec<u8>>) -> ToolResult {
    ToolResult {
        content: Vec::new(),
        structured_json: None,
        is_error: false,
        input_required: Some(mcpd_ipc::InputRequired {
            requests_json: requests.to_string(),
            state,
            in_task: false,
        }),
    }
}

/// Input needed by work that runs as a task: the task goes `input_required` and the tool runs
/// again with the answers the client sends with `tasks/update`.
pub fn task_input_required(requests: serde_json::Value, state: Option<Vec<u8>>) -> ToolResult {
    let mut r = input_required(requests, state);
    if let Some(i) = r.input_required.as_mut() {
        i.in_task = true;
    }
    r
}

/// An invalid-arguments error.
pub fn invalid_args(message: impl Into<String>) -> CallError {
    CallError {
        kind: CallErrorKind::InvalidArguments,
        message: message.into(),
    }
}
