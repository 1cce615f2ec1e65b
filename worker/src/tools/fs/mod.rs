//! File tools, drop-in compatible with `@modelcontextprotocol/server-filesystem`.
//!
//! Same tool names, argument names and result text shapes as the reference server
//! (`read_text_file`, `read_media_file`, `read_multiple_files`, `write_file`, `edit_file`,
//! `create_directory`, `list_directory`, `list_directory_with_sizes`, `directory_tree`,
//! `move_file`, `search_files`, `get_file_info`, `list_allowed_directories`), plus
//! `delete_file` and `grep`. Every path goes through [`super::paths::Roots`], so it is resolved
//! beneath an open root with `RESOLVE_BENEATH`; walks never follow symlinks.
//!
//! Known differences from the reference, all deliberate:
//! - Paths in results and messages are the client's own path (made absolute lexically under
//!   the first root when relative), never a resolved real path.
//! - `tail` returns the last N lines without counting the final newline as an empty line.
//! - Reads, listings, walks and output are bounded by [`mcpd_ipc::ToolLimits`]; truncation is
//!   marked in the text.
//! - `outputSchema`/`structuredContent` are only offered by `get_file_info` and
//!   `list_allowed_directories` (typed), not mirrored for every tool, so large text results are
//!   not sent twice.
//! - `list_directory_with_sizes` reports the size of a symlink itself (symlinks are not
//!   followed), and non-UTF-8 names are shown lossily.
//! - `search_files` applies `excludePatterns` like `directory_tree` does (a pattern without `*`
//!   also matches that name at any depth).
//!
//! One file per part: `schema` (descriptors), `read`, `list`, `walk` (the bounded walk and
//! `directory_tree`), `search` (`search_files`, `grep`), `info`, `write`, `edit`; this file holds
//! the limits, the shared plumbing (argument parsing, errors, output caps) and [`register`].

use mcpd_ipc::{CallError, CallErrorKind, ToolDescriptor, ToolResult};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::paths::PathError;
use super::{error_result, invalid_args, text_result, Registry, Tool, ToolContext};

mod edit;
mod info;
mod list;
mod read;
mod schema;
mod search;
mod walk;
mod write;

use edit::edit_file;
use info::{get_file_info, list_allowed_directories};
use list::{list_directory, list_directory_with_sizes};
use read::{read_media_file, read_multiple_files, read_text_file};
use schema::{
    d_create_directory, d_delete_file, d_directory_tree, d_edit_file, d_get_file_info, d_grep,
    d_list_allowed_directories, d_list_directory, d_list_directory_with_sizes, d_move_file,
    d_read_media_file, d_read_multiple_files, d_read_text_file, d_search_files, d_write_file,
};
use search::{grep, search_files};
use walk::directory_tree;
use write::{create_directory, delete_file, move_file, write_file};

pub(crate) use mcpd_ipc::text::file_uri;
pub(crate) use read::mime_for;

/// Deepest directory nesting a walk descends into.
const MAX_WALK_DEPTH: usize = 128;
/// Most entries of one directory a walk reads.
const MAX_DIR_ENTRIES: usize = 100_000;
/// How many visited entries between two progress reports.
const PROGRESS_EVERY: u64 = 1000;
/// Longest line text `grep` returns, in characters.
const MAX_GREP_LINE_CHARS: usize = 500;
/// Bytes inspected to decide that a file is binary (`grep` skips binary files).
const BINARY_SNIFF_BYTES: usize = 8192;
/// Chunk size for reading a file backwards (`tail`).
const TAIL_CHUNK: u64 = 8192;
/// Unified diff context lines (same as the reference's `diff` package).
const DIFF_CONTEXT: usize = 4;

// ----------------------------------------------------------------------------------------
// Plumbing

/// Failure of a handler: a protocol error, or a tool-level error text (`isError: true`).
enum Fail {
    Call(CallError),
    Tool(String),
}

impl From<PathError> for Fail {
    fn from(e: PathError) -> Self {
        Fail::Tool(e.to_string())
    }
}

impl From<CallError> for Fail {
    fn from(e: CallError) -> Self {
        Fail::Call(e)
    }
}

type Outcome = Result<ToolResult, Fail>;

/// The parsers of the file tools' untrusted arguments, for [`crate::fuzzing`]: the glob of
/// `search_files`/`grep`, the exclusion set of `directory_tree`/`search_files`, the text edits
/// of `edit_file` and its diff. Errors are flattened to their text.
pub(crate) mod for_fuzzing {
    use super::{edit, walk, Fail};

    fn text(f: Fail) -> String {
        match f {
            Fail::Call(e) => e.message,
            Fail::Tool(t) => t,
        }
    }

    /// The glob matcher `search_files` and `grep` build from a client pattern.
    pub(crate) fn glob(pattern: &str) -> Result<globset::GlobMatcher, String> {
        walk::glob(pattern).map_err(text)
    }

    /// The exclusion set built from client patterns.
    pub(crate) fn exclude_set(patterns: &[String]) -> Result<globset::GlobSet, String> {
        walk::exclude_set(patterns).map_err(text)
    }

    /// `edit_file`'s replacement of `(old_text, new_text)` pairs in `content`.
    pub(crate) fn apply_edits(content: &str, edits: &[(String, String)]) -> Result<String, String> {
        let edits: Vec<edit::Edit> = edits
            .iter()
            .map(|(o, n)| edit::Edit {
                old_text: o.clone(),
                new_text: n.clone(),
            })
            .collect();
        edit::apply_edits(content, &edits)
    }

    /// `edit_file`'s unified diff.
    pub(crate) fn unified_diff(old: &str, new: &str, name: &str) -> String {
        edit::unified_diff(old, new, name)
    }
}
type Handler = fn(&ToolContext, Value) -> Outcome;

/// One file tool: a descriptor and a handler.
struct FsTool {
    descriptor: fn() -> ToolDescriptor,
    handler: Handler,
    quick: bool,
}

impl Tool for FsTool {
    fn descriptor(&self) -> ToolDescriptor {
        (self.descriptor)()
    }

    fn call(&self, ctx: &ToolContext, args: Value) -> Result<ToolResult, CallError> {
        match (self.handler)(ctx, args) {
            Ok(r) => Ok(r),
            Err(Fail::Tool(msg)) => Ok(error_result(msg)),
            Err(Fail::Call(e)) => Err(e),
        }
    }

    fn is_quick(&self) -> bool {
        self.quick
    }
}

/// Register the file tools.
pub fn register(r: &mut Registry) {
    let tools: [(fn() -> ToolDescriptor, Handler); 15] = [
        (d_read_text_file, read_text_file),
        (d_read_media_file, read_media_file),
        (d_read_multiple_files, read_multiple_files),
        (d_write_file, write_file),
        (d_edit_file, edit_file),
        (d_create_directory, create_directory),
        (d_list_directory, list_directory),
        (d_list_directory_with_sizes, list_directory_with_sizes),
        (d_directory_tree, directory_tree),
        (d_move_file, move_file),
        (d_search_files, search_files),
        (d_get_file_info, get_file_info),
        (d_list_allowed_directories, list_allowed_directories),
        (d_delete_file, delete_file),
        (d_grep, grep),
    ];
    for (descriptor, handler) in tools {
        // Bounded single-file reads and stats run inline when the worker is otherwise idle.
        let name = descriptor().name;
        let quick = matches!(
            name.as_str(),
            "read_text_file" | "get_file_info" | "list_allowed_directories"
        );
        r.register(FsTool {
            descriptor,
            handler,
            quick,
        });
    }
}

fn parse<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T, Fail> {
    let args = if args.is_null() { json!({}) } else { args };
    serde_json::from_value(args)
        .map_err(|e| Fail::Call(invalid_args(format!("Invalid arguments for {tool}: {e}"))))
}

fn cancelled() -> Fail {
    Fail::Call(CallError {
        kind: CallErrorKind::Cancelled,
        message: "Cancelled".into(),
    })
}

/// Cut `text` to at most `max` bytes (on a character boundary), marking the cut.
fn cap_output(mut text: String, max: u64) -> String {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if text.len() <= max {
        return text;
    }
    let note = format!("\n[output truncated: exceeded the limit of {max} bytes]");
    let mut cut = max.saturating_sub(note.len());
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&note);
    text
}

fn text(ctx: &ToolContext, s: String) -> ToolResult {
    text_result(cap_output(s, ctx.limits.max_output_bytes))
}

/// A count argument: a non-negative integer (an integral float such as `5.0` is accepted).
fn opt_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v: Option<Value> = Option::deserialize(d)?;
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                return Ok(Some(u));
            }
            match n.as_f64() {
                Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => {
                    Ok(Some(f as u64))
                }
                _ => Err(serde::de::Error::custom("expected a non-negative integer")),
            }
        }
        Some(_) => Err(serde::de::Error::custom("expected a non-negative integer")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathArgs {
    path: String,
}

#[cfg(test)]
mod tests;
