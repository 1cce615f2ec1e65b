//! `run_command` and operator-defined tools: allow-listed programs run inside the client's
//! sandbox.
//!
//! The broker has already decided the call against policy (program allow-list, argument
//! patterns, shell grant). The worker checks the program again against its spec, but the
//! boundary is the kernel: Landlock lets only the spec's exec paths be executed and only the
//! client's paths be read or written, seccomp removes the dangerous syscall families, and no
//! argument check here is presented as security.

use std::time::Duration;

use mcpd_ipc::{
    CallError, Content, ExecArgs, ExecSpec, OperatorToolSpec, PathArg, ProgramGrant, ToolAccess,
    ToolAnnotations, ToolDescriptor, ToolResult,
};
use serde_json::{json, Map, Value};

use super::output;
use super::paths::Access;
use super::process::{self, Finished, Spawn, Stopped, Termination};
use super::{error_result, invalid_args, Registry, Tool, ToolContext};

/// Most arguments a command may get.
pub const MAX_ARGS: usize = 1024;
/// Largest stdin, bytes.
pub const MAX_STDIN: usize = 4 * 1024 * 1024;
/// Most client-set environment variables.
pub const MAX_ENV: usize = 64;
/// The `PATH` of every command.
pub const COMMAND_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Register `run_command`.
pub fn register(r: &mut Registry) {
    r.register(RunCommand);
}

/// The base environment of every process the worker starts: fixed values, the operator's
/// fixed variables, then what the client may set. Never the broker's or the worker's own.
pub(crate) fn base_env(ctx: &ToolContext) -> Vec<(String, String)> {
    let roots = ctx.roots.list();
    let home = roots
        .iter()
        .find(|r| r.writable && !r.is_file)
        .or_else(|| roots.iter().find(|r| !r.is_file))
        .map_or_else(|| "/".to_string(), |r| r.path.clone());
    let mut env = vec![
        ("PATH".to_string(), COMMAND_PATH.to_string()),
        ("HOME".to_string(), home),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ];
    for (k, v) in &ctx.exec.env_fixed {
        set_env(&mut env, k, v);
    }
    env
}

fn set_env(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    match env.iter_mut().find(|(n, _)| n == k) {
        Some(slot) => slot.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    }
}

/// Add the client's variables (only names the policy lists).
fn client_env(
    ctx: &ToolContext,
    env: &mut Vec<(String, String)>,
    asked: Option<&Value>,
) -> Result<(), CallError> {
    let Some(asked) = asked else { return Ok(()) };
    let Value::Object(m) = asked else {
        return Err(invalid_args("env must be an object of strings".to_string()));
    };
    if m.len() > MAX_ENV {
        return Err(invalid_args(format!("env: at most {MAX_ENV} variables")));
    }
    let mut refused = Vec::new();
    for (k, v) in m {
        let Some(v) = v.as_str() else {
            return Err(invalid_args(format!("env.{k} must be a string")));
        };
        if v.contains('\0') || v.len() > 32 * 1024 {
            return Err(invalid_args(format!("env.{k}: invalid value")));
        }
        if ctx.exec.env_allow.iter().any(|a| a == k) {
            set_env(env, k, v);
        } else {
            refused.push(k.chars().take(64).collect::<String>());
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(invalid_args(format!(
            "env: the policy does not let the client set {}",
            refused.join(", ")
        )))
    }
}

/// An allow-listed program (its absolute path, as the policy resolved it, and its exec set).
pub(crate) fn allowed_program<'a>(exec: &'a ExecSpec, asked: &str) -> Option<&'a ProgramGrant> {
    exec.programs
        .iter()
        .find(|p| p.name == asked || p.path == asked)
}

fn timeout_of(ctx: &ToolContext, args: &Map<String, Value>) -> Result<Duration, CallError> {
    let l = &ctx.exec.limits;
    let secs = match args.get("timeout_secs") {
        None | Some(Value::Null) => l.timeout_secs,
        Some(v) => v
            .as_u64()
            .filter(|s| *s >= 1)
            .ok_or_else(|| invalid_args("timeout_secs must be a positive integer"))?,
    };
    Ok(Duration::from_secs(secs.min(l.max_lifetime_secs).max(1)))
}

/// Render a finished command as text + structured content. stdout and stderr appear in both,
/// cut together to `budget` bytes (the client's `max_output_bytes`, see [`output::fit`]); the
/// rest of the result stays within [`mcpd_ipc::RESULT_ENVELOPE_BYTES`].
pub(crate) fn render(f: &Finished, timeout: Duration, budget: u64) -> ToolResult {
    let (exit_code, signal) = match f.termination {
        Termination::Exited(c) => (Some(c), None),
        Termination::Signaled(s) => (None, Some(process::signal_name(s))),
    };
    let stopped = f.stopped.map(|s| match s {
        Stopped::Timeout => "timeout",
        Stopped::Cancelled => "cancelled",
        Stopped::OutputFlood => "output_limit",
    });
    let output::Fitted {
        stdout,
        stderr,
        cut,
    } = output::fit(&f.stdout, &f.stderr, budget);
    let discarded = f.dropped.saturating_add(cut);
    let mut text = String::new();
    match (f.stopped, exit_code, &signal) {
        (Some(Stopped::Timeout), _, _) => text.push_str(&format!(
            "Timed out after {} s: the command and its process group were killed.\n",
            timeout.as_secs()
        )),
        (Some(Stopped::Cancelled), _, _) => {
            text.push_str("Cancelled: the command and its process group were killed.\n")
        }
        (Some(Stopped::OutputFlood), _, _) => text.push_str(&format!(
            "Output limit exceeded: the command kept writing ({} bytes discarded) and was killed.\n",
            f.dropped
        )),
        (None, Some(c), _) => text.push_str(&format!("Exit code {c}\n")),
        (None, None, Some(s)) => text.push_str(&format!("Killed by {s}\n")),
        _ => {}
    }
    if !stdout.is_empty() {
        text.push_str("--- stdout ---\n");
        text.push_str(&stdout);
        if !stdout.ends_with('\n') {
            text.push('\n');
        }
    }
    if !stderr.is_empty() {
        text.push_str("--- stderr ---\n");
        text.push_str(&stderr);
        if !stderr.ends_with('\n') {
            text.push('\n');
        }
    }
    if discarded > 0 {
        text.push_str(&format!(
            "[output truncated: {discarded} bytes discarded]\n"
        ));
    }
    let structured = json!({
        "exit_code": exit_code,
        "signal": signal,
        "stopped": stopped,
        "stdout": stdout,
        "stderr": stderr,
        "truncated": discarded > 0,
        "discarded_bytes": discarded,
        "duration_ms": u64::try_from(f.elapsed.as_millis()).unwrap_or(u64::MAX),
    });
    ToolResult {
        content: vec![Content::Text { text }],
        structured_json: Some(structured.to_string()),
        is_error: f.stopped.is_some() || exit_code != Some(0),
        input_required: None,
    }
}

/// JSON Schema of the structured result of `run_command` and operator tools without an
/// output schema.
pub(crate) fn command_output_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "exit_code": {"type": ["integer", "null"], "description": "Exit status, when the program exited"},
            "signal": {"type": ["string", "null"], "description": "Signal that killed it, if any"},
            "stopped": {"type": ["string", "null"], "enum": ["timeout", "cancelled", "output_limit", null], "description": "Why mcpd stopped it, if it did"},
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "truncated": {"type": "boolean", "description": "Output beyond the limit was discarded"},
            "discarded_bytes": {"type": "integer"},
            "duration_ms": {"type": "integer"}
        },
        "required": ["exit_code", "signal", "stopped", "stdout", "stderr", "truncated", "discarded_bytes", "duration_ms"]
    })
}

/// Open the working directory: `cwd` beneath the roots, else the base root.
fn working_dir(
    ctx: &ToolContext,
    cwd: Option<&Value>,
) -> Result<Option<std::os::fd::OwnedFd>, ToolResult> {
    match cwd {
        None | Some(Value::Null) => {
            if ctx.roots.is_empty() {
                return Ok(None);
            }
            Ok(ctx.roots.open_dir(".", Access::Read).ok())
        }
        Some(Value::String(p)) => ctx
            .roots
            .open_dir(p, Access::Read)
            .map(Some)
            .map_err(|e| error_result(e.to_string())),
        Some(_) => Err(error_result("cwd must be a string")),
    }
}

/// `run_command`.
#[derive(Debug)]
pub struct RunCommand;

impl Tool for RunCommand {
    fn descriptor(&self) -> ToolDescriptor {
        ToolDescriptor {
            name: "run_command".into(),
            title: Some("Run a command".into()),
            description: "Run an allow-listed program with arguments (no shell unless the policy allows one) inside the client's sandbox. Returns exit code or signal, stdout and stderr (capped; truncation is marked). The program can only read and write the client's allowed directories; network access is denied unless granted.".into(),
            input_schema_json: json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The program: an allow-listed name (e.g. \"git\") or its absolute path. With shell=true: a shell command line."},
                    "args": {"type": "array", "items": {"type": "string"}, "description": "Arguments, each passed as one argv element (never through a shell)."},
                    "cwd": {"type": "string", "description": "Working directory, inside an allowed directory (default: the first one)."},
                    "stdin": {"type": "string", "description": "Text written to the program's standard input."},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Environment variables the policy lets the client set."},
                    "timeout_secs": {"type": "integer", "minimum": 1, "description": "Wall-clock timeout in seconds (capped by policy)."},
                    "shell": {"type": "boolean", "description": "Run `command` with /bin/sh -c (only if the policy allows a shell); `args` become $1, $2, ..."}
                },
                "required": ["command"],
                "additionalProperties": false
            })
            .to_string(),
            output_schema_json: Some(command_output_schema().to_string()),
            annotations: ToolAnnotations {
                read_only: false,
                destructive: true,
                idempotent: false,
                open_world: true,
            },
            access: ToolAccess::Command,
            path_args: vec![PathArg {
                name: "cwd".into(),
                many: false,
                write: false,
            }],
            exec_args: Some(ExecArgs {
                program: Some("command".into()),
                args: Some("args".into()),
                shell: Some("shell".into()),
                language: None,
            }),
            client_capabilities: vec![],
            task_support: mcpd_ipc::TaskSupport::Forbidden,
        }
    }

    fn call(&self, ctx: &ToolContext, args: Value) -> Result<ToolResult, CallError> {
        let Value::Object(args) = args else {
            return Err(invalid_args("arguments must be an object"));
        };
        let command = args
            .get("command")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty() && c.len() <= 64 * 1024 && !c.contains('\0'))
            .ok_or_else(|| invalid_args("command must be a non-empty string"))?;
        let list: Vec<String> = match args.get("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) if a.len() <= MAX_ARGS => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .filter(|s| !s.contains('\0'))
                        .map(str::to_string)
                        .ok_or_else(|| invalid_args("args must be strings without NUL"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(invalid_args(format!(
                    "args must be an array of at most {MAX_ARGS} strings"
                )))
            }
        };
        let shell = match args.get("shell") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid_args("shell must be a boolean")),
        };
        let stdin = match args.get("stdin") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) if s.len() <= MAX_STDIN => s.as_bytes().to_vec(),
            Some(_) => {
                return Err(invalid_args(format!(
                    "stdin must be a string of at most {MAX_STDIN} bytes"
                )))
            }
        };
        let timeout = timeout_of(ctx, &args)?;
        let (program, exec_set, argv) = if shell {
            let Some(sh) = ctx.exec.shell.clone() else {
                return Ok(error_result(
                    "Shell command lines are not allowed by policy",
                ));
            };
            let mut v = vec!["-c".to_string(), command.to_string(), "sh".to_string()];
            v.extend(list);
            (sh, ctx.exec.shell_exec_set.clone(), v)
        } else {
            let Some(p) = allowed_program(&ctx.exec, command) else {
                return Ok(error_result(format!(
                    "Program not allowed by policy: {}",
                    command.chars().take(256).collect::<String>()
                )));
            };
            (p.path.clone(), p.exec_set.clone(), list)
        };
        let mut env = base_env(ctx);
        client_env(ctx, &mut env, args.get("env"))?;
        let cwd = match working_dir(ctx, args.get("cwd")) {
            Ok(c) => c,
            Err(r) => return Ok(r),
        };
        let spawn = Spawn {
            program,
            exec_set,
            args: argv,
            cwd,
            env,
            stdin,
            timeout,
            limits: ctx.exec.limits.clone(),
        };
        match process::run(ctx, spawn) {
            Ok(f) => Ok(render(&f, timeout, ctx.exec.limits.max_output_bytes)),
            Err(e) => Ok(error_result(e.to_string())),
        }
    }
}

/// An operator-defined tool.
#[derive(Debug)]
pub struct OperatorTool {
    spec: OperatorToolSpec,
}

impl OperatorTool {
    /// Wrap a spec from the broker.
    pub fn new(spec: OperatorToolSpec) -> Self {
        Self { spec }
    }
}

/// The text of one argument value in a template (strings as they are, other JSON as JSON).
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Fill an argv template. Each element stays exactly one argument, whatever the values
/// contain (no shell, no word splitting); an element that is only `{name}` with an array value
/// becomes one argument per item; an element naming an absent argument is left out.
pub fn expand_template(
    template: &[String],
    args: &Map<String, Value>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for el in template {
        let names = mcpd_ipc::text::template_placeholders(el)?;
        if names.len() == 1 && el == &format!("{{{}}}", names[0]) {
            match args.get(&names[0]) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(items)) => {
                    out.extend(items.iter().map(value_text));
                    continue;
                }
                Some(v) => {
                    out.push(value_text(v));
                    continue;
                }
            }
        }
        if names
            .iter()
            .any(|n| matches!(args.get(n), None | Some(Value::Null)))
        {
            continue;
        }
        out.push(mcpd_ipc::text::fill_template(el, |name| {
            args.get(name).map(value_text).unwrap_or_default()
        }));
    }
    if out.iter().any(|a| a.contains('\0')) {
        return Err("arguments must not contain NUL".into());
    }
    Ok(out)
}

/// Whether `p` has the form the broker gives checked paths: absolute, without `.`, `..` or
/// empty components (other than a lone `/`).
fn is_checked_path(p: &str) -> bool {
    p == "/"
        || (p.starts_with('/')
            && p[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."))
}

impl Tool for OperatorTool {
    fn descriptor(&self) -> ToolDescriptor {
        ToolDescriptor {
            name: self.spec.name.clone(),
            title: None,
            description: self.spec.description.clone(),
            input_schema_json: self.spec.input_schema_json.clone(),
            output_schema_json: Some(
                self.spec
                    .output_schema_json
                    .clone()
                    .unwrap_or_else(|| command_output_schema().to_string()),
            ),
            annotations: ToolAnnotations {
                read_only: false,
                destructive: true,
                idempotent: false,
                open_world: true,
            },
            access: ToolAccess::Operator,
            path_args: self.spec.path_args.clone(),
            exec_args: None,
            client_capabilities: vec![],
            task_support: mcpd_ipc::TaskSupport::Forbidden,
        }
    }

    fn call(&self, ctx: &ToolContext, args: Value) -> Result<ToolResult, CallError> {
        let Value::Object(args) = args else {
            return Err(invalid_args("arguments must be an object"));
        };
        let Some((program, template)) = self.spec.argv.split_first() else {
            return Ok(error_result("Tool is misconfigured"));
        };
        // The broker replaced each path argument by the absolute, normalised path it checked
        // (see `rewrite_path_args` in the broker's session.rs): that is the one place where
        // paths are rewritten. Here only refuse a value that did not go through it, so that
        // a client string can never reach argv where a path is expected.
        for pa in &self.spec.path_args {
            let ok = match args.get(&pa.name) {
                None | Some(Value::Null) => true,
                Some(Value::String(p)) => is_checked_path(p),
                Some(_) => false,
            };
            if !ok {
                return Err(invalid_args(format!(
                    "{}: a path argument must be an absolute, normalised path",
                    pa.name
                )));
            }
        }
        let argv = expand_template(template, &args).map_err(invalid_args)?;
        let timeout = Duration::from_secs(
            self.spec
                .timeout_secs
                .min(ctx.exec.limits.max_lifetime_secs)
                .max(1),
        );
        let cwd = match working_dir(ctx, None) {
            Ok(c) => c,
            Err(r) => return Ok(r),
        };
        let spawn = Spawn {
            program: program.clone(),
            exec_set: self.spec.exec_set.clone(),
            args: argv,
            cwd,
            env: base_env(ctx),
            stdin: Vec::new(),
            timeout,
            limits: ctx.exec.limits.clone(),
        };
        let f = match process::run(ctx, spawn) {
            Ok(f) => f,
            Err(e) => return Ok(error_result(e.to_string())),
        };
        let budget = ctx.exec.limits.max_output_bytes;
        let mut result = render(&f, timeout, budget);
        if self.spec.output_schema_json.is_some() && !result.is_error {
            // The tool promises structured output: stdout must be one JSON object. It goes
            // out twice (text and structuredContent), so twice its size must fit the budget:
            // a JSON object cannot be cut.
            match serde_json::from_slice::<Value>(&f.stdout) {
                Ok(v @ Value::Object(_)) if f.dropped == 0 => {
                    let json = v.to_string();
                    if (json.len() as u64).saturating_mul(2) > budget {
                        return Ok(error_result(format!(
                            "The tool's JSON output ({} bytes, returned as text and as structuredContent) exceeds the output limit of {budget} bytes",
                            json.len()
                        )));
                    }
                    result.content = vec![Content::Text { text: json.clone() }];
                    result.structured_json = Some(json);
                }
                _ => {
                    return Ok(error_result(
                        "The tool's output is not the JSON object its output schema promises",
                    ))
                }
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn templates_keep_each_element_one_argument() {
        let args = json!({"path": "a b; rm -rf / $(x) `y` 'z'", "n": 3, "flags": ["-a", "-b c"], "none": null});
        let Value::Object(args) = args else { panic!() };
        let out = expand_template(
            &t(&[
                "-s",
                "{path}",
                "--count={n}",
                "{flags}",
                "{none}",
                "--opt={none}",
                "{{lit}}",
            ]),
            &args,
        )
        .unwrap();
        assert_eq!(
            out,
            t(&[
                "-s",
                "a b; rm -rf / $(x) `y` 'z'",
                "--count=3",
                "-a",
                "-b c",
                "{lit}"
            ])
        );
        assert!(expand_template(&t(&["{bad"]), &args).is_err());
    }

    fn finished(stdout: &[u8], stderr: &[u8], dropped: u64) -> Finished {
        Finished {
            stdout: stdout.to_vec(),
            stderr: stderr.to_vec(),
            dropped,
            termination: Termination::Exited(0),
            stopped: None,
            elapsed: Duration::from_millis(5),
            pid: 1,
        }
    }

    fn structured(r: &ToolResult) -> Value {
        serde_json::from_str(r.structured_json.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn rendered_output_stays_within_the_budget() {
        let x = vec![b'x'; 100_000];
        // Everything fits: nothing is cut.
        let r = render(&finished(b"hi\n", b"", 0), Duration::from_secs(1), 1000);
        assert_eq!(structured(&r)["stdout"], "hi\n");
        assert_eq!(structured(&r)["truncated"], false);
        // stdout counts twice (text and structuredContent): 65536 bytes of budget keep 32768
        // of 65536 captured bytes; the capture had already dropped 34464.
        let r = render(
            &finished(&x[..65536], b"", 34464),
            Duration::from_secs(1),
            65536,
        );
        let v = structured(&r);
        assert_eq!(v["stdout"].as_str().unwrap().len(), 32768);
        assert_eq!(
            (v["truncated"].clone(), v["discarded_bytes"].clone()),
            (json!(true), json!(67232))
        );
        let Content::Text { text } = &r.content[0] else {
            panic!()
        };
        assert!(
            text.ends_with("[output truncated: 67232 bytes discarded]\n"),
            "{text}"
        );
        // Whatever the bytes and however the command ended, output + envelope stay bounded.
        let nul = vec![0u8; 50_000];
        let bad = vec![0xffu8; 50_000];
        let quotes = "\"\\".repeat(20_000).into_bytes();
        for (out, err) in [
            (&x[..], &b""[..]),
            (&nul, &bad),
            (&quotes, &x[..]),
            (b"", b""),
        ] {
            for budget in [0u64, 100, 4096, 65536, 1 << 20] {
                for (termination, stopped) in [
                    (Termination::Exited(i32::MIN), None),
                    (Termination::Signaled(12345), Some(Stopped::OutputFlood)),
                    (Termination::Signaled(9), Some(Stopped::Timeout)),
                    (Termination::Signaled(9), Some(Stopped::Cancelled)),
                ] {
                    let f = Finished {
                        termination,
                        stopped,
                        elapsed: Duration::MAX,
                        ..finished(out, err, u64::MAX)
                    };
                    let r = render(&f, Duration::from_secs(u64::MAX), budget);
                    let size = output::result_size(&r);
                    assert!(
                        size <= budget + mcpd_ipc::RESULT_ENVELOPE_BYTES,
                        "{size} > {budget} + envelope"
                    );
                    assert_eq!(structured(&r)["truncated"], true);
                }
            }
        }
    }

    #[test]
    fn only_checked_paths_pass_as_path_arguments() {
        for ok in [
            "/",
            "/srv/data",
            "/srv/data/-rf",
            "/srv/data/--files0-from=/etc/passwd",
        ] {
            assert!(is_checked_path(ok), "{ok}");
        }
        for bad in [
            "",
            "-rf",
            "--files0-from=/etc/passwd",
            "rel/x",
            "/srv/../etc",
            "/srv/./x",
            "/srv//x",
            "/srv/x/",
            "-",
        ] {
            assert!(!is_checked_path(bad), "{bad}");
        }
    }
}
