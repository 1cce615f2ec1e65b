//! A custom worker: the built-in tools plus one tool of your own, `word_count`.
//!
//! Build it and point the broker at it:
//!
//! ```text
//! cargo build --release --example custom_worker
//! ./target/release/mcpd serve --stdio --allow-read ~/notes \
//!     --worker ./target/release/examples/custom_worker
//! ```
//!
//! The tool runs inside the same confined worker as the built-in ones: `serve::run` sanitizes
//! the process, reads the broker's sandbox spec, applies rlimits, no_new_privs, Landlock and
//! seccomp *before* any request is read. The broker lists `word_count` only to clients whose
//! policy grants file reads (its access class) and checks its `path` argument against the
//! client's read paths before dispatch; the tool still opens the path beneath an allowed root.
#![forbid(unsafe_code)]

use std::io::Read;

use mcpd_ipc::{PathArg, ToolAccess, ToolAnnotations, ToolDescriptor, ToolResult};
use mcpd_worker::tools::paths::Access;
use mcpd_worker::tools::{error_result, invalid_args, text_result};
use mcpd_worker::{Registry, Tool, ToolContext};
use serde_json::{json, Value};

/// Counts lines, words and bytes of a text file, like `wc`.
struct WordCount;

impl Tool for WordCount {
    fn descriptor(&self) -> ToolDescriptor {
        ToolDescriptor {
            name: "word_count".into(),
            title: Some("Count words".into()),
            description:
                "Count the lines, words and bytes of a text file inside an allowed directory."
                    .into(),
            input_schema_json: json!({
                "type": "object",
                "properties": {"path": {"type": "string", "description": "The file"}},
                "required": ["path"],
                "additionalProperties": false
            })
            .to_string(),
            output_schema_json: Some(
                json!({
                    "type": "object",
                    "properties": {
                        "lines": {"type": "integer"},
                        "words": {"type": "integer"},
                        "bytes": {"type": "integer"}
                    },
                    "required": ["lines", "words", "bytes"]
                })
                .to_string(),
            ),
            annotations: ToolAnnotations {
                read_only: true,
                idempotent: true,
                ..ToolAnnotations::default()
            },
            access: ToolAccess::FileRead,
            path_args: vec![PathArg {
                name: "path".into(),
                many: false,
                write: false,
            }],
            exec_args: None,
            client_capabilities: vec![],
            task_support: mcpd_ipc::TaskSupport::Forbidden,
        }
    }

    fn call(&self, ctx: &ToolContext, args: Value) -> Result<ToolResult, mcpd_ipc::CallError> {
        let path = args
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid_args("path must be a string"))?;
        let (mut file, _) = match ctx.roots.open_regular(path, Access::Read) {
            Ok(f) => f,
            Err(e) => return Ok(error_result(e.to_string())),
        };
        let mut text = String::new();
        let limit = ctx.limits.max_read_bytes;
        if let Err(e) = file.by_ref().take(limit).read_to_string(&mut text) {
            return Ok(error_result(format!("Cannot read {path}: {}", e.kind())));
        }
        let counts = json!({
            "lines": text.lines().count(),
            "words": text.split_whitespace().count(),
            "bytes": text.len(),
        });
        let mut r = text_result(counts.to_string());
        r.structured_json = Some(counts.to_string());
        Ok(r)
    }
}

fn main() -> std::process::ExitCode {
    let mut tools = Registry::builtin();
    tools.register(WordCount);
    mcpd_worker::serve::run(tools)
}
