//! Command and code execution grants and operator-defined tools: their validation at load and
//! the checks [`crate::Policy::decide`] applies to a command or code request.
//!
//! Programs are allow-listed and resolved to canonical absolute paths when the policy loads
//! (a name is looked up in a fixed, trusted search path, never in the broker's `PATH`).
//! Argument patterns are an allow-list too: with patterns, every argument must fully match one
//! of them. None of this is the security boundary on its own: Landlock grants `Execute` only on
//! the resolved paths, so a program that is not listed cannot run whatever a tool does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mcpd_ipc::{OperatorToolSpec, PathArg};
use toml::Spanned;

use crate::config::{ConfigError, RawTool, Source};
use crate::model::{canonical, Canonicalize};

/// Where program names without a slash are looked up, in order. Fixed: the broker's own
/// `PATH` is operator environment, not policy.
pub const TRUSTED_SEARCH_PATH: [&str; 3] = ["/usr/local/bin", "/usr/bin", "/bin"];

/// Most argument patterns per program.
pub const MAX_ARG_PATTERNS: usize = 64;
/// Longest argv template of an operator tool.
pub const MAX_TEMPLATE_ARGS: usize = 64;

/// An argument pattern (a regular expression anchored at both ends).
#[derive(Debug, Clone)]
pub struct ArgPattern(regex::Regex);

impl PartialEq for ArgPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}
impl Eq for ArgPattern {}

impl ArgPattern {
    /// Whether `arg` matches entirely.
    pub fn matches(&self, arg: &str) -> bool {
        self.0.is_match(arg)
    }
    /// The pattern as written (with the anchors mcpd added).
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// One allow-listed program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// As the operator wrote it.
    pub name: String,
    /// Canonical absolute path.
    pub path: PathBuf,
    /// Argument allow-list; empty means any argument.
    pub arg_patterns: Vec<ArgPattern>,
    /// Canonical helper files or directories it may execute (`exec_helpers`), sorted.
    pub helpers: Vec<PathBuf>,
}

impl Program {
    /// What the program's own exec domain allows before the broker adds `#!` interpreters and
    /// the loader: the program and its helpers.
    pub fn exec_set(&self) -> Vec<String> {
        std::iter::once(&self.path)
            .chain(&self.helpers)
            .filter_map(|p| p.to_str().map(str::to_string))
            .collect()
    }
}

/// A code-session language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Language {
    /// Canonical language name (`python3`, `sh`, `node`).
    pub name: String,
    /// Canonical interpreter path.
    pub interpreter: PathBuf,
}

/// Command and code execution granted to one client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecGrant {
    /// Allow-listed programs.
    pub programs: Vec<Program>,
    /// Canonical `/bin/sh` when shell command lines are allowed.
    pub shell: Option<PathBuf>,
    /// Code-session languages.
    pub languages: Vec<Language>,
    /// Variables the client may set.
    pub env_allow: BTreeSet<String>,
    /// Variables the operator fixed.
    pub env_fixed: BTreeMap<String, String>,
    /// TCP/UDP allowed.
    pub network: bool,
}

impl ExecGrant {
    /// The program a client's `program` string names: an allow-listed name, its absolute
    /// spelling as configured, or its canonical path.
    pub fn program(&self, asked: &str) -> Option<&Program> {
        self.programs
            .iter()
            .find(|p| p.name == asked || p.path.to_str() == Some(asked))
    }

    /// The language a client names (aliases: `python` → `python3`).
    pub fn language(&self, asked: &str) -> Option<&Language> {
        let canonical = language_alias(asked)?;
        self.languages.iter().find(|l| l.name == canonical)
    }
}

/// The canonical name of a supported language.
pub fn language_alias(asked: &str) -> Option<&'static str> {
    Some(match asked {
        "python3" | "python" => "python3",
        "sh" | "shell" => "sh",
        "bash" => "bash",
        "node" | "javascript" | "js" => "node",
        _ => return None,
    })
}

/// An operator-defined tool, validated.
#[derive(Clone)]
pub struct OperatorTool {
    /// What the worker receives.
    pub spec: OperatorToolSpec,
    /// The compiled input schema.
    validator: Arc<jsonschema::Validator>,
    /// Clients and roles allowed to call it.
    pub clients: BTreeSet<String>,
    /// Roles allowed to call it.
    pub roles: BTreeSet<String>,
    /// No `timeout_secs` was configured: each client's command timeout applies.
    pub timeout_defaulted: bool,
}

impl std::fmt::Debug for OperatorTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorTool")
            .field("spec", &self.spec)
            .field("clients", &self.clients)
            .field("roles", &self.roles)
            .finish()
    }
}

impl OperatorTool {
    /// Validate call arguments against the input schema. The error lists at most a few
    /// problems, each naming the argument's JSON pointer (never a value).
    pub fn validate(&self, args: &serde_json::Value) -> Result<(), String> {
        let errors: Vec<String> = self
            .validator
            .iter_errors(args)
            .take(5)
            .map(|e| {
                let at = e.instance_path().to_string();
                let what = match e.kind() {
                    jsonschema::error::ValidationErrorKind::Required { .. } => {
                        "a required property is missing".to_string()
                    }
                    jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                        format!("unexpected properties {unexpected:?}")
                    }
                    jsonschema::error::ValidationErrorKind::Type { .. } => "wrong type".to_string(),
                    _ => "does not match the schema".to_string(),
                };
                if at.is_empty() {
                    what
                } else {
                    format!("{at}: {what}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Resolve a program as the operator wrote it: an absolute path, or a bare name looked up in
/// [`TRUSTED_SEARCH_PATH`]. Relative paths with a slash are refused.
pub(crate) fn resolve_program(
    src: &Source,
    span: Option<std::ops::Range<usize>>,
    who: &str,
    name: &str,
    canon: Canonicalize<'_>,
) -> Result<PathBuf, ConfigError> {
    let bad = |m: String| src.error(span.clone(), format!("{who}: {m}"));
    if name.is_empty() || name.len() > 4096 || name.contains('\0') {
        return Err(bad(format!("invalid program '{name}'")));
    }
    let found = if name.starts_with('/') {
        canon(Path::new(name)).map_err(|e| bad(format!("program '{name}': {e}")))?
    } else if name.contains('/') {
        return Err(bad(format!(
            "program '{name}' must be a bare name or an absolute path"
        )));
    } else {
        TRUSTED_SEARCH_PATH
            .iter()
            .find_map(|d| canon(&Path::new(d).join(name)).ok())
            .ok_or_else(|| {
                bad(format!(
                    "program '{name}' not found in {}",
                    TRUSTED_SEARCH_PATH.join(":")
                ))
            })?
    };
    if found.to_str().is_none() {
        return Err(bad(format!(
            "program path is not UTF-8: {}",
            found.display()
        )));
    }
    Ok(found)
}

/// Compile one argument pattern, anchored at both ends.
pub(crate) fn arg_pattern(
    src: &Source,
    who: &str,
    p: &Spanned<String>,
) -> Result<ArgPattern, ConfigError> {
    let anchored = format!("^(?:{})$", p.get_ref());
    regex::RegexBuilder::new(&anchored)
        .size_limit(1 << 20)
        .build()
        .map(ArgPattern)
        .map_err(|e| {
            src.error(
                Some(p.span()),
                format!("{who}: invalid argument pattern: {e}"),
            )
        })
}

/// Valid environment variable name for `env`.
fn env_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !n.as_bytes()[0].is_ascii_digit()
}

/// Names that would let a client change what a program loads or runs: never settable by a
/// client, even if listed (the operator may still fix a value).
pub const ENV_NEVER_FROM_CLIENT: &[&str] = &[
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "PATH",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "NODE_OPTIONS",
    "NODE_PATH",
    "BASH_ENV",
    "ENV",
    "IFS",
];

/// Parse one `env` entry into the grant.
pub(crate) fn env_entry(
    src: &Source,
    who: &str,
    e: &Spanned<String>,
    grant: &mut ExecGrant,
) -> Result<(), ConfigError> {
    let text = e.get_ref();
    let (name, value) = match text.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (text.as_str(), None),
    };
    if !env_name_ok(name) || value.is_some_and(|v| v.len() > 4096 || v.contains('\0')) {
        return Err(src.error(
            Some(e.span()),
            format!("{who}: invalid env entry '{text}' (NAME or NAME=value)"),
        ));
    }
    match value {
        Some(v) => {
            grant.env_fixed.insert(name.to_string(), v.to_string());
        }
        None => {
            if ENV_NEVER_FROM_CLIENT.contains(&name) {
                return Err(src.error(
                    Some(e.span()),
                    format!("{who}: env '{name}' cannot be left to the client (it changes what programs load); fix a value with {name}=..."),
                ));
            }
            grant.env_allow.insert(name.to_string());
        }
    }
    Ok(())
}

/// Convert a TOML value (an operator's schema) to JSON.
fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

pub use mcpd_ipc::text::template_placeholders;

const TOOL_NAME_MAX: usize = 64;

fn tool_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= TOOL_NAME_MAX
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Validate one `[tools.NAME]` table.
pub(crate) fn operator_tool(
    src: &Source,
    name: &str,
    t: &Spanned<RawTool>,
    canon: Canonicalize<'_>,
    default_timeout: u64,
) -> Result<OperatorTool, ConfigError> {
    let who = format!("tools.{name}");
    let raw = t.get_ref();
    let at = |m: String| src.error(Some(t.span()), format!("{who}: {m}"));
    if !tool_name_ok(name) {
        return Err(at(
            "invalid tool name (A-Z a-z 0-9 _ - ., at most 64)".into()
        ));
    }
    if raw.description.trim().is_empty() || raw.description.len() > 8192 {
        return Err(at("description must be 1..8192 bytes".into()));
    }
    if raw.command.is_empty() || raw.command.len() > MAX_TEMPLATE_ARGS {
        return Err(at(format!(
            "command must have 1..{MAX_TEMPLATE_ARGS} elements"
        )));
    }
    let first = &raw.command[0];
    if !template_placeholders(first.get_ref())
        .map_err(|e| src.error(Some(first.span()), format!("{who}: {e}")))?
        .is_empty()
    {
        return Err(src.error(
            Some(first.span()),
            format!("{who}: the program (command[0]) cannot be a placeholder"),
        ));
    }
    let program = resolve_program(src, Some(first.span()), &who, first.get_ref(), canon)?;
    let mut argv = vec![program.to_str().unwrap_or_default().to_string()];
    let schema = match &raw.input_schema {
        Some(s) => toml_to_json(s.get_ref()),
        None => {
            serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false})
        }
    };
    let schema_span = raw.input_schema.as_ref().map(Spanned::span);
    if schema.get("type").and_then(serde_json::Value::as_str) != Some("object") {
        return Err(src.error(
            schema_span.clone(),
            format!("{who}: input_schema must have type = \"object\""),
        ));
    }
    let validator = jsonschema::validator_for(&schema).map_err(|e| {
        src.error(
            schema_span.clone(),
            format!("{who}: input_schema is not a valid JSON Schema: {e}"),
        )
    })?;
    let props: BTreeSet<String> = schema
        .get("properties")
        .and_then(serde_json::Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for el in &raw.command[1..] {
        let names = template_placeholders(el.get_ref())
            .map_err(|e| src.error(Some(el.span()), format!("{who}: {e}")))?;
        for n in names {
            if !props.contains(&n) {
                return Err(src.error(
                    Some(el.span()),
                    format!("{who}: placeholder {{{n}}} is not a property of input_schema"),
                ));
            }
        }
        argv.push(el.get_ref().clone());
    }
    let output_schema_json = match &raw.output_schema {
        None => None,
        Some(s) => {
            let v = toml_to_json(s.get_ref());
            if v.get("type").and_then(serde_json::Value::as_str) != Some("object") {
                return Err(src.error(
                    Some(s.span()),
                    format!("{who}: output_schema must have type = \"object\""),
                ));
            }
            jsonschema::validator_for(&v).map_err(|e| {
                src.error(
                    Some(s.span()),
                    format!("{who}: output_schema is not a valid JSON Schema: {e}"),
                )
            })?;
            Some(v.to_string())
        }
    };
    let mut path_args = Vec::new();
    for (list, write) in [(&raw.read_path_args, false), (&raw.write_path_args, true)] {
        for a in list {
            if !props.contains(a.get_ref()) {
                return Err(src.error(
                    Some(a.span()),
                    format!(
                        "{who}: path argument '{}' is not a property of input_schema",
                        a.get_ref()
                    ),
                ));
            }
            path_args.push(PathArg {
                name: a.get_ref().clone(),
                many: false,
                write,
            });
        }
    }
    let mut exec_set = vec![argv[0].clone()];
    for h in &raw.helpers {
        let c = canonical(src, &who, h, canon)?;
        exec_set.push(c.to_str().unwrap_or_default().to_string());
    }
    exec_set.sort();
    exec_set.dedup();
    if raw.roles.is_empty() && raw.clients.is_empty() {
        return Err(at(
            "no roles or clients may call it (deny by default): add roles = [...] or clients = [...]".into(),
        ));
    }
    Ok(OperatorTool {
        spec: OperatorToolSpec {
            name: name.to_string(),
            description: raw.description.clone(),
            input_schema_json: schema.to_string(),
            output_schema_json,
            argv,
            timeout_secs: raw.timeout_secs.unwrap_or(default_timeout).max(1),
            path_args,
            exec_set,
        },
        validator: Arc::new(validator),
        clients: raw.clients.iter().map(|c| c.get_ref().clone()).collect(),
        roles: raw.roles.iter().map(|r| r.get_ref().clone()).collect(),
        timeout_defaulted: raw.timeout_secs.is_none(),
    })
}
