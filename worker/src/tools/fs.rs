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

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use mcpd_ipc::{
    CallError, CallErrorKind, Content, PathArg, ResourceBody, ToolAccess, ToolAnnotations,
    ToolDescriptor, ToolResult,
};
use rustix::fs::{self as rfs, AtFlags, FileType, StatxFlags};
use rustix::io::Errno;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use super::paths::{self, Access, DirEntryInfo, EntryKind, PathError};
use super::{error_result, invalid_args, text_result, Registry, Tool, ToolContext};

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

// ----------------------------------------------------------------------------------------
// Descriptors

fn object_schema(properties: Value, required: &[&str]) -> String {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
    .to_string()
}

const WITHIN: &str = "Only works within allowed directories.";

fn read_annotations() -> ToolAnnotations {
    ToolAnnotations {
        read_only: true,
        destructive: false,
        idempotent: true,
        open_world: false,
    }
}

fn write_annotations(destructive: bool, idempotent: bool) -> ToolAnnotations {
    ToolAnnotations {
        read_only: false,
        destructive,
        idempotent,
        open_world: false,
    }
}

fn path_arg(name: &str, many: bool, write: bool) -> PathArg {
    PathArg {
        name: name.into(),
        many,
        write,
    }
}

#[allow(clippy::too_many_arguments)]
fn descriptor(
    name: &str,
    title: &str,
    description: String,
    input: String,
    output: Option<String>,
    annotations: ToolAnnotations,
    access: ToolAccess,
    path_args: Vec<PathArg>,
) -> ToolDescriptor {
    ToolDescriptor {
        name: name.into(),
        title: Some(title.into()),
        description,
        input_schema_json: input,
        output_schema_json: output,
        annotations,
        access,
        path_args,
        exec_args: None,
        client_capabilities: vec![],
        task_support: mcpd_ipc::TaskSupport::Forbidden,
    }
}

fn path_prop() -> Value {
    json!({"type": "string", "description": "Path inside an allowed directory (absolute, or relative to the first allowed directory)"})
}

fn read_tool(name: &str, title: &str, description: String, input: String) -> ToolDescriptor {
    descriptor(
        name,
        title,
        description,
        input,
        None,
        read_annotations(),
        ToolAccess::FileRead,
        vec![path_arg("path", false, false)],
    )
}

fn d_read_text_file() -> ToolDescriptor {
    read_tool(
        "read_text_file",
        "Read Text File",
        format!(
            "Read the complete contents of a file from the file system as text (invalid UTF-8 \
             is replaced). Use this tool when you need to examine the contents of a single \
             file. Use the 'head' parameter to read only the first N lines of a file, or the \
             'tail' parameter to read only the last N lines (not both). Operates on the file \
             as text regardless of extension. Files larger than the read limit must be read \
             with head or tail. {WITHIN}"
        ),
        object_schema(
            json!({
                "path": path_prop(),
                "tail": {"type": "integer", "minimum": 0, "description": "If provided, returns only the last N lines of the file"},
                "head": {"type": "integer", "minimum": 0, "description": "If provided, returns only the first N lines of the file"},
            }),
            &["path"],
        ),
    )
}

fn d_read_media_file() -> ToolDescriptor {
    read_tool(
        "read_media_file",
        "Read Media File",
        format!(
            "Read an image or audio file. Returns the data (base64 encoded on the wire) and \
             its MIME type, as an image or audio content block; other files are returned as \
             an embedded binary resource. {WITHIN}"
        ),
        object_schema(json!({"path": path_prop()}), &["path"]),
    )
}

fn d_read_multiple_files() -> ToolDescriptor {
    descriptor(
        "read_multiple_files",
        "Read Multiple Files",
        format!(
            "Read the contents of multiple files simultaneously. This is more efficient than \
             reading files one by one when you need to analyze or compare multiple files. \
             Each file's content is returned with its path as a reference. Failed reads for \
             individual files won't stop the entire operation. {WITHIN}"
        ),
        object_schema(
            json!({
                "paths": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "description": "Array of file paths to read. Each path must be a string pointing to a valid file within allowed directories.",
                },
            }),
            &["paths"],
        ),
        None,
        read_annotations(),
        ToolAccess::FileRead,
        vec![path_arg("paths", true, false)],
    )
}

fn d_write_file() -> ToolDescriptor {
    descriptor(
        "write_file",
        "Write File",
        format!(
            "Create a new file or completely overwrite an existing file with new content. \
             Use with caution as it will overwrite existing files without warning. Handles \
             text content with proper encoding (UTF-8). The parent directory must exist. \
             Requires a writable allowed directory. {WITHIN}"
        ),
        object_schema(
            json!({"path": path_prop(), "content": {"type": "string"}}),
            &["path", "content"],
        ),
        None,
        write_annotations(true, true),
        ToolAccess::FileWrite,
        vec![path_arg("path", false, true)],
    )
}

fn d_edit_file() -> ToolDescriptor {
    descriptor(
        "edit_file",
        "Edit File",
        format!(
            "Make line-based edits to a text file. Each edit replaces exact line sequences \
             with new content (falling back to whitespace-insensitive line matching). Returns \
             a git-style diff showing the changes made. With dryRun the file is not changed. \
             Requires a writable allowed directory. {WITHIN}"
        ),
        object_schema(
            json!({
                "path": path_prop(),
                "edits": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "oldText": {"type": "string", "description": "Text to search for - must match exactly"},
                            "newText": {"type": "string", "description": "Text to replace with"},
                        },
                        "required": ["oldText", "newText"],
                        "additionalProperties": false,
                    },
                },
                "dryRun": {"type": "boolean", "default": false, "description": "Preview changes using git-style diff format"},
            }),
            &["path", "edits"],
        ),
        None,
        write_annotations(true, false),
        ToolAccess::FileWrite,
        vec![path_arg("path", false, true)],
    )
}

fn d_create_directory() -> ToolDescriptor {
    descriptor(
        "create_directory",
        "Create Directory",
        format!(
            "Create a new directory or ensure a directory exists. Can create multiple nested \
             directories in one operation. If the directory already exists, this operation \
             will succeed silently. Perfect for setting up directory structures for projects \
             or ensuring required paths exist. Requires a writable allowed directory. {WITHIN}"
        ),
        object_schema(json!({"path": path_prop()}), &["path"]),
        None,
        write_annotations(false, true),
        ToolAccess::FileWrite,
        vec![path_arg("path", false, true)],
    )
}

fn d_list_directory() -> ToolDescriptor {
    read_tool(
        "list_directory",
        "List Directory",
        format!(
            "Get a detailed listing of all files and directories in a specified path. Results \
             clearly distinguish between files and directories with [FILE] and [DIR] \
             prefixes. This tool is essential for understanding directory structure and \
             finding specific files within a directory. {WITHIN}"
        ),
        object_schema(json!({"path": path_prop()}), &["path"]),
    )
}

fn d_list_directory_with_sizes() -> ToolDescriptor {
    read_tool(
        "list_directory_with_sizes",
        "List Directory with Sizes",
        format!(
            "Get a detailed listing of all files and directories in a specified path, \
             including sizes. Results clearly distinguish between files and directories with \
             [FILE] and [DIR] prefixes. This tool is useful for understanding directory \
             structure and finding specific files within a directory. {WITHIN}"
        ),
        object_schema(
            json!({
                "path": path_prop(),
                "sortBy": {"type": "string", "enum": ["name", "size"], "default": "name", "description": "Sort entries by name or size"},
            }),
            &["path"],
        ),
    )
}

fn d_directory_tree() -> ToolDescriptor {
    read_tool(
        "directory_tree",
        "Directory Tree",
        format!(
            "Get a recursive tree view of files and directories as a JSON structure. Each \
             entry includes 'name', 'type' (file/directory), and 'children' for directories. \
             Files have no children array, while directories always have a children array \
             (which may be empty). The output is formatted with 2-space indentation for \
             readability. Symlinks are listed as files and never followed. Use \
             excludePatterns (glob patterns) to skip entries. {WITHIN}"
        ),
        object_schema(
            json!({
                "path": path_prop(),
                "excludePatterns": {"type": "array", "items": {"type": "string"}, "default": []},
            }),
            &["path"],
        ),
    )
}

fn d_move_file() -> ToolDescriptor {
    descriptor(
        "move_file",
        "Move File",
        format!(
            "Move or rename files and directories. Can move files between directories and \
             rename them in a single operation. If the destination exists, the operation \
             will fail. Works across different directories and can be used for simple \
             renaming within the same directory. Both source and destination must be within \
             writable allowed directories. {WITHIN}"
        ),
        object_schema(
            json!({"source": path_prop(), "destination": path_prop()}),
            &["source", "destination"],
        ),
        None,
        write_annotations(true, false),
        ToolAccess::FileWrite,
        vec![
            path_arg("source", false, true),
            path_arg("destination", false, true),
        ],
    )
}

fn d_search_files() -> ToolDescriptor {
    read_tool(
        "search_files",
        "Search Files",
        format!(
            "Recursively search for files and directories matching a pattern. The patterns \
             should be glob-style patterns that match paths relative to the given path. Use \
             pattern like '*.ext' to match files in that directory, and '**/*.ext' to match \
             files in all subdirectories. Returns full paths to all matching items. Great for \
             finding files when you don't know their exact location. Symlinks are not \
             followed. {WITHIN}"
        ),
        object_schema(
            json!({
                "path": path_prop(),
                "pattern": {"type": "string"},
                "excludePatterns": {"type": "array", "items": {"type": "string"}, "default": []},
            }),
            &["path", "pattern"],
        ),
    )
}

fn d_get_file_info() -> ToolDescriptor {
    descriptor(
        "get_file_info",
        "Get File Info",
        format!(
            "Retrieve detailed metadata about a file or directory. Returns comprehensive \
             information including size, creation time, last modified time, permissions, and \
             type. This tool is perfect for understanding file characteristics without \
             reading the actual content. {WITHIN}"
        ),
        object_schema(json!({"path": path_prop()}), &["path"]),
        Some(
            json!({
                "type": "object",
                "properties": {
                    "content": {"type": "string"},
                    "size": {"type": "integer"},
                    "created": {"type": "string", "description": "ISO 8601"},
                    "modified": {"type": "string", "description": "ISO 8601"},
                    "accessed": {"type": "string", "description": "ISO 8601"},
                    "isDirectory": {"type": "boolean"},
                    "isFile": {"type": "boolean"},
                    "permissions": {"type": "string"},
                },
                "required": ["content", "size", "created", "modified", "accessed", "isDirectory", "isFile", "permissions"],
            })
            .to_string(),
        ),
        read_annotations(),
        ToolAccess::FileRead,
        vec![path_arg("path", false, false)],
    )
}

fn d_list_allowed_directories() -> ToolDescriptor {
    descriptor(
        "list_allowed_directories",
        "List Allowed Directories",
        "Returns the list of directories that this server is allowed to access. \
         Subdirectories within these allowed directories are also accessible. Use this to \
         understand which directories and their nested paths are available before trying to \
         access files. Relative paths are resolved against the first one."
            .into(),
        object_schema(json!({}), &[]),
        Some(
            json!({
                "type": "object",
                "properties": {
                    "content": {"type": "string"},
                    "directories": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "path": {"type": "string"},
                                "writable": {"type": "boolean"},
                            },
                            "required": ["path", "writable"],
                        },
                    },
                },
                "required": ["content", "directories"],
            })
            .to_string(),
        ),
        read_annotations(),
        ToolAccess::None,
        vec![],
    )
}

fn d_delete_file() -> ToolDescriptor {
    descriptor(
        "delete_file",
        "Delete File",
        format!(
            "Delete a file, a symlink (the link itself, never its target) or an empty \
             directory. Non-empty directories are refused; an allowed directory itself cannot \
             be deleted. Requires a writable allowed directory. {WITHIN}"
        ),
        object_schema(json!({"path": path_prop()}), &["path"]),
        None,
        write_annotations(true, true),
        ToolAccess::FileWrite,
        vec![path_arg("path", false, true)],
    )
}

fn d_grep() -> ToolDescriptor {
    read_tool(
        "grep",
        "Grep",
        format!(
            "Search file contents for a literal text (not a regular expression) in a file or \
             recursively in a directory. Returns one line per match as 'file:line: text'. \
             Binary files and symlinks are skipped. Use 'include' (a glob matched against the \
             file name, or against the relative path if it contains '/') to limit which files \
             are searched, 'caseInsensitive' to ignore case, and 'maxResults' to limit the \
             number of matches (capped by the server). {WITHIN}"
        ),
        object_schema(
            json!({
                "path": path_prop(),
                "pattern": {"type": "string", "minLength": 1, "description": "Literal text to search for"},
                "caseInsensitive": {"type": "boolean", "default": false},
                "include": {"type": "string", "description": "Glob of files to search, e.g. '*.rs'"},
                "maxResults": {"type": "integer", "minimum": 1},
            }),
            &["path", "pattern"],
        ),
    )
}

// ----------------------------------------------------------------------------------------
// Reading helpers

/// Read the whole file, refusing more than `max` bytes.
fn read_limited(path: &str, file: &File, max: u64) -> Result<Vec<u8>, Fail> {
    // Size the buffer from the file (bounded by the limit) so a small file is read in one or
    // two read(2) calls instead of a doubling series starting at 32 bytes.
    let hint = file.metadata().map_or(0, |m| m.len()).min(max);
    let mut buf = Vec::with_capacity(usize::try_from(hint).unwrap_or(0).saturating_add(1));
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| paths::io_to_path_err(path, &e))?;
    if buf.len() as u64 > max {
        return Err(too_large(path, None, max));
    }
    Ok(buf)
}

fn too_large(path: &str, size: Option<u64>, max: u64) -> Fail {
    let size = size.map(|s| format!(" ({s} bytes)")).unwrap_or_default();
    Fail::Tool(format!(
        "File too large: {path}{size} exceeds the read limit of {max} bytes. Use head or tail to read part of it."
    ))
}

/// The first `n` lines (joined by `\n`), reading at most `max` bytes. Returns whether the read
/// limit cut the result.
fn head_lines(file: &File, n: u64, max: u64) -> std::io::Result<(String, bool)> {
    let mut r = BufReader::new(file.take(max));
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut total = 0u64;
    let mut truncated = false;
    while (lines.len() as u64) < n {
        let mut line = Vec::new();
        let got = r.read_until(b'\n', &mut line)?;
        if got == 0 {
            break;
        }
        total += got as u64;
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if total >= max {
            truncated = true;
        }
        lines.push(line);
    }
    let joined = lines.join(&b'\n');
    Ok((String::from_utf8_lossy(&joined).into_owned(), truncated))
}

/// The last `n` lines (joined by `\n`, CRLF normalised), reading backwards at most about `max`
/// bytes. Returns whether the read limit cut the result.
fn tail_lines(file: &File, size: u64, n: u64, max: u64) -> std::io::Result<(String, bool)> {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut pos = size;
    let mut newlines = 0u64;
    let mut total = 0u64;
    while pos > 0 && newlines <= n {
        if total >= max {
            break;
        }
        let len = TAIL_CHUNK.min(pos).min(max - total);
        pos -= len;
        let mut chunk = vec![0u8; usize::try_from(len).unwrap_or(0)];
        match file.read_exact_at(&mut chunk, pos) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        newlines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        total += len;
        chunks.push(chunk);
    }
    let bytes: Vec<u8> = chunks.into_iter().rev().flatten().collect();
    let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let lines: Vec<&str> = body.split('\n').collect();
    let keep = usize::try_from(n).unwrap_or(usize::MAX).min(lines.len());
    // The first line is partial if we stopped before the start of the file.
    let truncated = pos > 0 && keep == lines.len();
    Ok((lines[lines.len() - keep..].join("\n"), truncated))
}

pub(crate) fn mime_for(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = match name.rfind('.') {
        Some(i) if i > 0 => name[i..].to_ascii_lowercase(),
        _ => String::new(),
    };
    match ext.as_str() {
        ".png" => "image/png",
        ".jpg" | ".jpeg" => "image/jpeg",
        ".gif" => "image/gif",
        ".webp" => "image/webp",
        ".bmp" => "image/bmp",
        ".svg" => "image/svg+xml",
        ".mp3" => "audio/mpeg",
        ".wav" => "audio/wav",
        ".ogg" => "audio/ogg",
        ".flac" => "audio/flac",
        _ => "application/octet-stream",
    }
}

pub(crate) use mcpd_ipc::text::file_uri;

// ----------------------------------------------------------------------------------------
// Read tools

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadTextArgs {
    path: String,
    #[serde(default, deserialize_with = "opt_count")]
    head: Option<u64>,
    #[serde(default, deserialize_with = "opt_count")]
    tail: Option<u64>,
}

fn read_text_file(ctx: &ToolContext, args: Value) -> Outcome {
    let a: ReadTextArgs = parse("read_text_file", args)?;
    // As in the reference, 0 means "not given".
    let head = a.head.filter(|&n| n > 0);
    let tail = a.tail.filter(|&n| n > 0);
    if head.is_some() && tail.is_some() {
        return Err(Fail::Tool(
            "Cannot specify both head and tail parameters simultaneously".into(),
        ));
    }
    let max = ctx.limits.max_read_bytes;
    let (file, st) = ctx.roots.open_regular(&a.path, Access::Read)?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let io = |e: std::io::Error| Fail::from(paths::io_to_path_err(&a.path, &e));
    let content = if let Some(n) = tail {
        let (s, cut) = tail_lines(&file, size, n, max).map_err(io)?;
        mark_cut(s, cut, max)
    } else if let Some(n) = head {
        let (s, cut) = head_lines(&file, n, max).map_err(io)?;
        mark_cut(s, cut, max)
    } else {
        if size > max {
            return Err(too_large(&a.path, Some(size), max));
        }
        String::from_utf8_lossy(&read_limited(&a.path, &file, max)?).into_owned()
    };
    Ok(text(ctx, content))
}

fn mark_cut(mut s: String, cut: bool, max: u64) -> String {
    if cut {
        s.push_str(&format!("\n[truncated: read limit of {max} bytes reached]"));
    }
    s
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathArgs {
    path: String,
}

fn read_media_file(ctx: &ToolContext, args: Value) -> Outcome {
    let a: PathArgs = parse("read_media_file", args)?;
    // Base64 grows data by 4/3; keep the encoded result within the output limit.
    let max = ctx
        .limits
        .max_read_bytes
        .min(ctx.limits.max_output_bytes / 4 * 3);
    let (file, st) = ctx.roots.open_regular(&a.path, Access::Read)?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size > max {
        return Err(Fail::Tool(format!(
            "File too large: {} ({size} bytes) exceeds the limit of {max} bytes",
            a.path
        )));
    }
    let data = read_limited(&a.path, &file, max)?;
    let mime = mime_for(&a.path).to_owned();
    let content = if mime.starts_with("image/") {
        Content::Image {
            data,
            mime_type: mime,
        }
    } else if mime.starts_with("audio/") {
        Content::Audio {
            data,
            mime_type: mime,
        }
    } else {
        Content::Resource {
            uri: file_uri(&ctx.roots.display_path(&a.path)),
            mime_type: Some(mime),
            body: ResourceBody::Blob(data),
        }
    };
    Ok(ToolResult {
        content: vec![content],
        structured_json: None,
        is_error: false,
        input_required: None,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadManyArgs {
    paths: Vec<String>,
}

fn read_multiple_files(ctx: &ToolContext, args: Value) -> Outcome {
    let a: ReadManyArgs = parse("read_multiple_files", args)?;
    if a.paths.is_empty() {
        return Err(invalid_args("At least one file path must be provided").into());
    }
    if a.paths.len() as u64 > ctx.limits.max_entries {
        return Err(invalid_args(format!(
            "Too many paths: at most {} per call",
            ctx.limits.max_entries
        ))
        .into());
    }
    let max_out = usize::try_from(ctx.limits.max_output_bytes).unwrap_or(usize::MAX);
    let mut used = 0usize;
    let mut parts = Vec::with_capacity(a.paths.len());
    for p in &a.paths {
        if ctx.is_cancelled() {
            return Err(cancelled());
        }
        let part = if used >= max_out {
            format!("{p}: Error - skipped, output limit of {max_out} bytes reached")
        } else {
            let budget = (max_out - used) as u64;
            let max = ctx.limits.max_read_bytes.min(budget);
            let read = ctx
                .roots
                .open_regular(p, Access::Read)
                .map_err(Fail::from)
                .and_then(|(f, st)| {
                    let size = u64::try_from(st.st_size).unwrap_or(0);
                    if size > max {
                        return Err(too_large(p, Some(size), max));
                    }
                    read_limited(p, &f, max)
                });
            match read {
                Ok(bytes) => format!("{p}:\n{}\n", String::from_utf8_lossy(&bytes)),
                Err(Fail::Tool(m)) => format!("{p}: Error - {m}"),
                Err(f) => return Err(f),
            }
        };
        used += part.len() + 5;
        parts.push(part);
    }
    Ok(text(ctx, parts.join("\n---\n")))
}

fn list_directory(ctx: &ToolContext, args: Value) -> Outcome {
    let a: PathArgs = parse("list_directory", args)?;
    let dir = ctx.roots.open_dir(&a.path, Access::Read)?;
    let max = usize::try_from(ctx.limits.max_entries).unwrap_or(usize::MAX);
    let (entries, more) =
        paths::read_dir(dir.as_fd(), max).map_err(|e| PathError::io(&a.path, e))?;
    let mut out = entries
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                if e.kind == EntryKind::Dir {
                    "[DIR]"
                } else {
                    "[FILE]"
                },
                e.name
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    if more {
        out.push_str(&format!("\n[truncated: showing the first {max} entries]"));
    }
    Ok(text(ctx, out))
}

/// Human-readable size, as the reference formats it.
fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    if bytes == 0 {
        return "0 B".into();
    }
    let mut i = 0usize;
    while i + 1 < UNITS.len() && bytes >= 1024u64.pow(i as u32 + 1) {
        i += 1;
    }
    if i == 0 {
        return format!("{bytes} B");
    }
    format!("{:.2} {}", bytes as f64 / 1024f64.powi(i as i32), UNITS[i])
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum SortBy {
    #[default]
    Name,
    Size,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListSizesArgs {
    path: String,
    #[serde(default)]
    sort_by: Option<SortBy>,
}

fn list_directory_with_sizes(ctx: &ToolContext, args: Value) -> Outcome {
    let a: ListSizesArgs = parse("list_directory_with_sizes", args)?;
    let dir = ctx.roots.open_dir(&a.path, Access::Read)?;
    let max = usize::try_from(ctx.limits.max_entries).unwrap_or(usize::MAX);
    let (entries, more) =
        paths::read_dir(dir.as_fd(), max).map_err(|e| PathError::io(&a.path, e))?;
    let mut detailed: Vec<(String, bool, u64)> = entries
        .iter()
        .map(|e| {
            let size = paths::stat_child(dir.as_fd(), &e.raw)
                .map(|st| u64::try_from(st.st_size).unwrap_or(0))
                .unwrap_or(0);
            (e.name.clone(), e.kind == EntryKind::Dir, size)
        })
        .collect();
    if a.sort_by.unwrap_or_default() == SortBy::Size {
        detailed.sort_by_key(|e| std::cmp::Reverse(e.2));
    } else {
        detailed.sort_by(|x, y| x.0.cmp(&y.0));
    }
    let mut lines: Vec<String> = detailed
        .iter()
        .map(|(name, is_dir, size)| {
            if *is_dir {
                format!("[DIR] {name:<30} ")
            } else {
                format!("[FILE] {name:<30} {:>10}", format_size(*size))
            }
        })
        .collect();
    let files = detailed.iter().filter(|e| !e.1).count();
    let dirs = detailed.len() - files;
    let total: u64 = detailed.iter().filter(|e| !e.1).map(|e| e.2).sum();
    lines.push(String::new());
    lines.push(format!("Total: {files} files, {dirs} directories"));
    lines.push(format!("Combined size: {}", format_size(total)));
    if more {
        lines.push(format!("[truncated: showing the first {max} entries]"));
    }
    Ok(text(ctx, lines.join("\n")))
}

// ----------------------------------------------------------------------------------------
// Walks

fn glob(pattern: &str) -> Result<GlobMatcher, Fail> {
    Ok(build_glob(pattern)?.compile_matcher())
}

fn build_glob(pattern: &str) -> Result<globset::Glob, Fail> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| Fail::Call(invalid_args(format!("Invalid glob pattern: {e}"))))
}

/// Exclusion patterns as the reference's `directory_tree` applies them: a pattern with `*` is
/// matched against the relative path; one without also matches that name at any depth and
/// anything beneath it.
fn exclude_set(patterns: &[String]) -> Result<GlobSet, Fail> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        if p.is_empty() {
            continue;
        }
        b.add(build_glob(p)?);
        if !p.contains('*') {
            b.add(build_glob(&format!("**/{p}"))?);
            b.add(build_glob(&format!("**/{p}/**"))?);
        }
    }
    b.build()
        .map_err(|e| Fail::Call(invalid_args(format!("Invalid glob pattern: {e}"))))
}

/// Bookkeeping shared by the recursive walks.
struct Walk<'a> {
    ctx: &'a ToolContext,
    visited: u64,
    max_visits: u64,
    truncated: bool,
}

/// Callback of [`Walk::walk`]: the walk, the entry's directory, its relative path, the entry.
type VisitFn<'f, 'a> =
    dyn FnMut(&mut Walk<'a>, BorrowedFd<'_>, &str, &DirEntryInfo) -> Result<Visit, Fail> + 'f;

enum Visit {
    Descend,
    Skip,
    Stop,
}

impl<'a> Walk<'a> {
    fn new(ctx: &'a ToolContext) -> Self {
        Self {
            ctx,
            visited: 0,
            max_visits: ctx.limits.max_entries.saturating_mul(100).max(100_000),
            truncated: false,
        }
    }

    /// Account for one entry; false when the walk must stop.
    fn tick(&mut self) -> Result<bool, Fail> {
        if self.ctx.is_cancelled() {
            return Err(cancelled());
        }
        self.visited += 1;
        if self.visited.is_multiple_of(PROGRESS_EVERY) {
            self.ctx.progress(
                self.visited as f64,
                None,
                Some(format!("{} entries scanned", self.visited)),
            );
        }
        if self.visited > self.max_visits {
            self.truncated = true;
            return Ok(false);
        }
        Ok(true)
    }

    /// Visit every entry below `dir` (depth first, sorted by name). `rel` is the relative path
    /// of `dir` ("" at the start). Returns true if the walk was stopped.
    fn walk(
        &mut self,
        dir: BorrowedFd<'_>,
        rel: &str,
        depth: usize,
        f: &mut VisitFn<'_, 'a>,
    ) -> Result<bool, Fail> {
        let Ok((entries, more)) = paths::read_dir(dir, MAX_DIR_ENTRIES) else {
            return Ok(false);
        };
        self.truncated |= more;
        for e in &entries {
            if !self.tick()? {
                return Ok(true);
            }
            let child_rel = join_rel(rel, &e.name);
            match f(self, dir, &child_rel, e)? {
                Visit::Stop => return Ok(true),
                Visit::Skip => {}
                Visit::Descend => {
                    if e.kind != EntryKind::Dir {
                        continue;
                    }
                    if depth + 1 >= MAX_WALK_DEPTH {
                        self.truncated = true;
                        continue;
                    }
                    if let Ok(child) = paths::open_child_dir(dir, &e.raw) {
                        if self.walk(child.as_fd(), &child_rel, depth + 1, f)? {
                            return Ok(true);
                        }
                    }
                }
            }
        }
        Ok(false)
    }
}

fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

fn join_display(base: &str, rel: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{rel}")
    } else {
        format!("{base}/{rel}")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TreeArgs {
    path: String,
    #[serde(default)]
    exclude_patterns: Vec<String>,
}

#[derive(Serialize)]
struct TreeEntry {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    children: Option<Vec<TreeEntry>>,
}

struct TreeState<'a> {
    walk: Walk<'a>,
    exclude: GlobSet,
    entries: u64,
    max_entries: u64,
}

fn build_tree(
    st: &mut TreeState<'_>,
    dir: BorrowedFd<'_>,
    rel: &str,
    depth: usize,
) -> Result<Vec<TreeEntry>, Fail> {
    let mut out = Vec::new();
    let Ok((entries, more)) = paths::read_dir(dir, MAX_DIR_ENTRIES) else {
        return Ok(out);
    };
    st.walk.truncated |= more;
    for e in &entries {
        if !st.walk.tick()? || st.entries >= st.max_entries {
            st.walk.truncated = true;
            break;
        }
        let child_rel = join_rel(rel, &e.name);
        if st.exclude.is_match(&child_rel) {
            continue;
        }
        st.entries += 1;
        let is_dir = e.kind == EntryKind::Dir;
        let children = if is_dir {
            let mut kids = Vec::new();
            if depth + 1 >= MAX_WALK_DEPTH {
                st.walk.truncated = true;
            } else if let Ok(child) = paths::open_child_dir(dir, &e.raw) {
                kids = build_tree(st, child.as_fd(), &child_rel, depth + 1)?;
            }
            Some(kids)
        } else {
            None
        };
        out.push(TreeEntry {
            name: e.name.clone(),
            kind: if is_dir { "directory" } else { "file" },
            children,
        });
    }
    Ok(out)
}

fn directory_tree(ctx: &ToolContext, args: Value) -> Outcome {
    let a: TreeArgs = parse("directory_tree", args)?;
    let exclude = exclude_set(&a.exclude_patterns)?;
    let dir = ctx.roots.open_dir(&a.path, Access::Read)?;
    let mut st = TreeState {
        walk: Walk::new(ctx),
        exclude,
        entries: 0,
        max_entries: ctx.limits.max_entries,
    };
    let tree = build_tree(&mut st, dir.as_fd(), "", 0)?;
    let mut out = serde_json::to_string_pretty(&tree)
        .map_err(|e| Fail::Tool(format!("Cannot format the tree: {e}")))?;
    if st.walk.truncated {
        out.push_str(&format!(
            "\n[truncated: the tree has more entries than the limit of {}; narrow the path or add excludePatterns]",
            ctx.limits.max_entries
        ));
    }
    Ok(text(ctx, out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SearchArgs {
    path: String,
    pattern: String,
    #[serde(default)]
    exclude_patterns: Vec<String>,
}

fn search_files(ctx: &ToolContext, args: Value) -> Outcome {
    let a: SearchArgs = parse("search_files", args)?;
    let matcher = glob(&a.pattern)?;
    let exclude = exclude_set(&a.exclude_patterns)?;
    let dir = ctx.roots.open_dir(&a.path, Access::Read)?;
    let base = ctx.roots.display_path(&a.path);
    let max = ctx.limits.max_entries;
    let mut results: Vec<String> = Vec::new();
    let mut walk = Walk::new(ctx);
    walk.walk(dir.as_fd(), "", 0, &mut |w, _dir, rel, _e| {
        if exclude.is_match(rel) {
            return Ok(Visit::Skip);
        }
        if matcher.is_match(rel) {
            if results.len() as u64 >= max {
                w.truncated = true;
                return Ok(Visit::Stop);
            }
            results.push(join_display(&base, rel));
        }
        Ok(Visit::Descend)
    })?;
    let mut out = if results.is_empty() {
        "No matches found".to_owned()
    } else {
        results.join("\n")
    };
    if walk.truncated {
        out.push_str(&format!(
            "\n[truncated: stopped after {} results or {} scanned entries]",
            results.len(),
            walk.visited
        ));
    }
    Ok(text(ctx, out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GrepArgs {
    path: String,
    pattern: String,
    #[serde(default)]
    case_insensitive: bool,
    #[serde(default)]
    include: Option<String>,
    #[serde(default, deserialize_with = "opt_count")]
    max_results: Option<u64>,
}

struct Grep {
    needle: String,
    case_insensitive: bool,
    max_read: u64,
    max_results: u64,
    results: Vec<String>,
    truncated: bool,
}

impl Grep {
    /// Search one open file; returns false once the result limit is reached.
    fn file(&mut self, display: &str, file: &File) -> bool {
        let mut buf = Vec::new();
        if file.take(self.max_read).read_to_end(&mut buf).is_err() {
            return true;
        }
        if buf[..buf.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
            return true;
        }
        let text = String::from_utf8_lossy(&buf);
        for (i, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let hit = if self.case_insensitive {
                line.to_lowercase().contains(&self.needle)
            } else {
                line.contains(&self.needle)
            };
            if !hit {
                continue;
            }
            if self.results.len() as u64 >= self.max_results {
                self.truncated = true;
                return false;
            }
            let shown: String = if line.chars().count() > MAX_GREP_LINE_CHARS {
                let mut s: String = line.chars().take(MAX_GREP_LINE_CHARS).collect();
                s.push('…');
                s
            } else {
                line.to_owned()
            };
            self.results.push(format!("{display}:{}: {shown}", i + 1));
        }
        true
    }
}

fn grep(ctx: &ToolContext, args: Value) -> Outcome {
    let a: GrepArgs = parse("grep", args)?;
    if a.pattern.is_empty() {
        return Err(invalid_args("pattern must not be empty").into());
    }
    let include = a.include.as_deref().map(glob).transpose()?;
    let include_path = a.include.as_deref().is_some_and(|p| p.contains('/'));
    let cap = ctx.limits.max_matches.max(1);
    let max_results = a.max_results.filter(|&n| n > 0).unwrap_or(cap).min(cap);
    let mut g = Grep {
        needle: if a.case_insensitive {
            a.pattern.to_lowercase()
        } else {
            a.pattern.clone()
        },
        case_insensitive: a.case_insensitive,
        max_read: ctx.limits.max_read_bytes,
        max_results,
        results: Vec::new(),
        truncated: false,
    };
    let target = ctx.roots.open_path(&a.path, Access::Read)?;
    let st = rfs::fstat(&target).map_err(|e| PathError::io(&a.path, e))?;
    let base = ctx.roots.display_path(&a.path);
    let mut walk_truncated = false;
    match paths::file_type(&st) {
        FileType::Directory => {
            let dir = ctx.roots.open_dir(&a.path, Access::Read)?;
            let mut walk = Walk::new(ctx);
            walk.walk(dir.as_fd(), "", 0, &mut |_w, dir, rel, e| {
                if e.kind != EntryKind::File {
                    return Ok(Visit::Descend);
                }
                if let Some(m) = &include {
                    let subject = if include_path { rel } else { e.name.as_str() };
                    if !m.is_match(subject) {
                        return Ok(Visit::Skip);
                    }
                }
                if let Ok((f, _)) = paths::open_child_regular(dir, &e.raw) {
                    if !g.file(&join_display(&base, rel), &f) {
                        return Ok(Visit::Stop);
                    }
                }
                Ok(Visit::Skip)
            })?;
            walk_truncated = walk.truncated;
        }
        FileType::RegularFile => {
            let (f, _) = ctx.roots.open_regular(&a.path, Access::Read)?;
            g.file(&base, &f);
        }
        _ => return Err(PathError::Other(format!("Not a regular file: {}", a.path)).into()),
    }
    let mut out = if g.results.is_empty() {
        "No matches found".to_owned()
    } else {
        g.results.join("\n")
    };
    if g.truncated {
        out.push_str(&format!(
            "\n[truncated: showing the first {} matches]",
            g.results.len()
        ));
    } else if walk_truncated {
        out.push_str("\n[truncated: not every file was searched (walk limit reached)]");
    }
    Ok(text(ctx, out))
}

// ----------------------------------------------------------------------------------------
// Metadata

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

struct Civil {
    year: i64,
    month: u32,
    day: u32,
    weekday: usize,
    h: i64,
    mi: i64,
    s: i64,
}

fn civil(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        weekday: usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0),
        h: rem / 3600,
        mi: rem % 3600 / 60,
        s: rem % 60,
    }
}

/// A time the way JavaScript's `Date.prototype.toString` shows it (in UTC).
fn js_date_string(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = civil(secs);
    format!(
        "{} {} {:02} {:04} {:02}:{:02}:{:02} GMT+0000 (Coordinated Universal Time)",
        DAYS[c.weekday % 7],
        MONTHS[(c.month as usize + 11) % 12],
        c.day,
        c.year,
        c.h,
        c.mi,
        c.s
    )
}

/// ISO 8601 with milliseconds, like `Date.prototype.toISOString`.
fn iso_date(secs: i64, nanos: u32) -> String {
    let c = civil(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year,
        c.month,
        c.day,
        c.h,
        c.mi,
        c.s,
        nanos / 1_000_000
    )
}

fn get_file_info(ctx: &ToolContext, args: Value) -> Outcome {
    let a: PathArgs = parse("get_file_info", args)?;
    let fd = ctx.roots.open_path(&a.path, Access::Read)?;
    let sx = rfs::statx(
        &fd,
        "",
        AtFlags::EMPTY_PATH,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )
    .map_err(|e| PathError::io(&a.path, e))?;
    let ft = FileType::from_raw_mode(u32::from(sx.stx_mode) as _);
    let (bsec, bnsec) = if sx.stx_mask & StatxFlags::BTIME.bits() != 0 {
        (sx.stx_btime.tv_sec, sx.stx_btime.tv_nsec)
    } else {
        (0, 0)
    };
    let times = [
        ("created", bsec, bnsec),
        ("modified", sx.stx_mtime.tv_sec, sx.stx_mtime.tv_nsec),
        ("accessed", sx.stx_atime.tv_sec, sx.stx_atime.tv_nsec),
    ];
    let perms = format!("{:03o}", sx.stx_mode & 0o777);
    let is_dir = ft == FileType::Directory;
    let is_file = ft == FileType::RegularFile;
    let mut lines = vec![format!("size: {}", sx.stx_size)];
    for (k, s, _) in &times {
        lines.push(format!("{k}: {}", js_date_string(*s)));
    }
    lines.push(format!("isDirectory: {is_dir}"));
    lines.push(format!("isFile: {is_file}"));
    lines.push(format!("permissions: {perms}"));
    let content = lines.join("\n");
    let structured = json!({
        "content": content,
        "size": sx.stx_size,
        "created": iso_date(times[0].1, times[0].2),
        "modified": iso_date(times[1].1, times[1].2),
        "accessed": iso_date(times[2].1, times[2].2),
        "isDirectory": is_dir,
        "isFile": is_file,
        "permissions": perms,
    });
    let mut r = text_result(content);
    r.structured_json = Some(structured.to_string());
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

fn list_allowed_directories(ctx: &ToolContext, args: Value) -> Outcome {
    let _: NoArgs = parse("list_allowed_directories", args)?;
    let list = ctx.roots.list();
    let content = format!(
        "Allowed directories:\n{}",
        list.iter()
            .map(|r| r.path.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let dirs: Vec<Value> = list
        .iter()
        .map(|r| json!({"path": r.path, "writable": r.writable}))
        .collect();
    let structured = json!({"content": content, "directories": dirs});
    let mut r = text_result(content);
    r.structured_json = Some(structured.to_string());
    Ok(r)
}

// ----------------------------------------------------------------------------------------
// Write tools

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    path: String,
    content: String,
}

fn write_file(ctx: &ToolContext, args: Value) -> Outcome {
    let a: WriteArgs = parse("write_file", args)?;
    ctx.roots.write_file(&a.path, a.content.as_bytes())?;
    Ok(text_result(format!("Successfully wrote to {}", a.path)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Edit {
    old_text: String,
    new_text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EditArgs {
    path: String,
    edits: Vec<Edit>,
    #[serde(default)]
    dry_run: bool,
}

fn leading_ws(s: &str) -> &str {
    &s[..s.len() - s.trim_start().len()]
}

/// Apply the edits in order, as the reference does: an exact (first) occurrence, else a
/// window of lines equal after trimming, re-indented to the first matched line.
fn apply_edits(content: &str, edits: &[Edit]) -> Result<String, String> {
    let mut modified = content.to_owned();
    for edit in edits {
        let old = edit.old_text.replace("\r\n", "\n");
        let new = edit.new_text.replace("\r\n", "\n");
        if modified.contains(&old) {
            modified = modified.replacen(&old, &new, 1);
            continue;
        }
        let old_lines: Vec<&str> = old.split('\n').collect();
        let mut content_lines: Vec<String> = modified.split('\n').map(String::from).collect();
        let mut found = false;
        if old_lines.len() <= content_lines.len() {
            for i in 0..=(content_lines.len() - old_lines.len()) {
                let window = &content_lines[i..i + old_lines.len()];
                if !old_lines
                    .iter()
                    .zip(window)
                    .all(|(o, c)| o.trim() == c.trim())
                {
                    continue;
                }
                let original_indent = leading_ws(&content_lines[i]).to_owned();
                let new_lines: Vec<String> = new
                    .split('\n')
                    .enumerate()
                    .map(|(j, line)| {
                        if j == 0 {
                            return format!("{original_indent}{}", line.trim_start());
                        }
                        let old_indent = old_lines.get(j).map(|l| leading_ws(l)).unwrap_or("");
                        let new_indent = leading_ws(line);
                        if !old_indent.is_empty() && !new_indent.is_empty() {
                            let rel = new_indent
                                .chars()
                                .count()
                                .saturating_sub(old_indent.chars().count());
                            format!("{original_indent}{}{}", " ".repeat(rel), line.trim_start())
                        } else {
                            line.to_owned()
                        }
                    })
                    .collect();
                content_lines.splice(i..i + old_lines.len(), new_lines);
                modified = content_lines.join("\n");
                found = true;
                break;
            }
        }
        if !found {
            return Err(format!(
                "Could not find exact match for edit:\n{}",
                edit.old_text
            ));
        }
    }
    Ok(modified)
}

/// A unified diff in the format of the `diff` package's `createTwoFilesPatch(name, name, old,
/// new, 'original', 'modified')`.
fn unified_diff(old: &str, new: &str, name: &str) -> String {
    let diff = similar::TextDiff::from_lines(old, new);
    let mut out = format!(
        "Index: {name}\n===================================================================\n--- {name}\toriginal\n+++ {name}\tmodified\n"
    );
    for group in diff.grouped_ops(DIFF_CONTEXT) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let (o0, o1) = (first.old_range().start, last.old_range().end);
        let (n0, n1) = (first.new_range().start, last.new_range().end);
        let start = |s: usize, len: usize| if len == 0 { s } else { s + 1 };
        out.push_str(&format!(
            "@@ -{},{} +{},{} @@\n",
            start(o0, o1 - o0),
            o1 - o0,
            start(n0, n1 - n0),
            n1 - n0
        ));
        for op in &group {
            for change in diff.iter_changes(op) {
                let sign = match change.tag() {
                    similar::ChangeTag::Equal => ' ',
                    similar::ChangeTag::Delete => '-',
                    similar::ChangeTag::Insert => '+',
                };
                let value = change.value();
                out.push(sign);
                out.push_str(value.strip_suffix('\n').unwrap_or(value));
                out.push('\n');
                if change.missing_newline() {
                    out.push_str("\\ No newline at end of file\n");
                }
            }
        }
    }
    out
}

fn fenced_diff(diff: &str) -> String {
    let mut n = 3;
    while diff.contains(&"`".repeat(n)) {
        n += 1;
    }
    let fence = "`".repeat(n);
    format!("{fence}diff\n{diff}{fence}\n\n")
}

fn edit_file(ctx: &ToolContext, args: Value) -> Outcome {
    let a: EditArgs = parse("edit_file", args)?;
    let max = ctx.limits.max_read_bytes;
    let (file, st) = ctx.roots.open_regular(&a.path, Access::Write)?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size > max {
        return Err(too_large(&a.path, Some(size), max));
    }
    let bytes = read_limited(&a.path, &file, max)?;
    drop(file);
    let original = String::from_utf8(bytes)
        .map_err(|_| Fail::Tool(format!("File is not valid UTF-8 text: {}", a.path)))?
        .replace("\r\n", "\n");
    let modified = apply_edits(&original, &a.edits).map_err(Fail::Tool)?;
    let diff = unified_diff(&original, &modified, &ctx.roots.display_path(&a.path));
    if !a.dry_run {
        ctx.roots.write_file(&a.path, modified.as_bytes())?;
    }
    Ok(text(ctx, fenced_diff(&diff)))
}

fn create_directory(ctx: &ToolContext, args: Value) -> Outcome {
    let a: PathArgs = parse("create_directory", args)?;
    ctx.roots.create_dir_all(&a.path)?;
    Ok(text_result(format!(
        "Successfully created directory {}",
        a.path
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveArgs {
    source: String,
    destination: String,
}

fn exists_at(dir: BorrowedFd<'_>, name: &str) -> bool {
    !matches!(
        rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
        Err(Errno::NOENT)
    )
}

fn move_file(ctx: &ToolContext, args: Value) -> Outcome {
    let a: MoveArgs = parse("move_file", args)?;
    let src = ctx.roots.parent(&a.source, Access::Write)?;
    let dst = ctx.roots.parent(&a.destination, Access::Write)?;
    if src.is_root {
        return Err(Fail::Tool(format!(
            "Cannot move an allowed directory itself: {}",
            a.source
        )));
    }
    let exists = || Fail::Tool(format!("Destination already exists: {}", a.destination));
    if dst.is_root || exists_at(dst.dir.as_fd(), &dst.name) {
        return Err(exists());
    }
    let r = rfs::renameat_with(
        &src.dir,
        src.name.as_str(),
        &dst.dir,
        dst.name.as_str(),
        rfs::RenameFlags::NOREPLACE,
    );
    let r = match r {
        // File systems without RENAME_NOREPLACE: the existence check above has to do.
        Err(Errno::INVAL | Errno::NOSYS) => {
            if exists_at(dst.dir.as_fd(), &dst.name) {
                return Err(exists());
            }
            rfs::renameat(&src.dir, src.name.as_str(), &dst.dir, dst.name.as_str())
        }
        r => r,
    };
    match r {
        Ok(()) => Ok(text_result(format!(
            "Successfully moved {} to {}",
            a.source, a.destination
        ))),
        Err(Errno::EXIST) => Err(exists()),
        Err(e @ Errno::NOENT) => Err(PathError::io(&a.source, e).into()),
        Err(e) => Err(Fail::Tool(format!(
            "Cannot move {} to {}: {}",
            a.source,
            a.destination,
            paths::errno_text(e)
        ))),
    }
}

fn delete_file(ctx: &ToolContext, args: Value) -> Outcome {
    let a: PathArgs = parse("delete_file", args)?;
    let p = ctx.roots.parent(&a.path, Access::Write)?;
    if p.is_root {
        return Err(Fail::Tool(format!(
            "Cannot delete an allowed directory itself: {}",
            a.path
        )));
    }
    let st = rfs::statat(&p.dir, p.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| PathError::io(&a.path, e))?;
    let flags = if paths::file_type(&st) == FileType::Directory {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    rfs::unlinkat(&p.dir, p.name.as_str(), flags).map_err(|e| PathError::io(&a.path, e))?;
    Ok(text_result(format!("Successfully deleted {}", a.path)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mcpd_ipc::{SandboxSpec, ToolLimits};
    use std::os::unix::fs::symlink;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    struct Fx {
        _tmp: tempfile::TempDir,
        base: String,
        ro: String,
        rw: String,
        ctx: ToolContext,
        reg: Registry,
    }

    fn fx_with(limits: ToolLimits) -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let ro = format!("{base}/ro");
        let rw = format!("{base}/rw");
        for d in [
            &ro,
            &rw,
            &format!("{base}/rw-evil"),
            &format!("{base}/outside"),
        ] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(format!("{base}/outside/secret.txt"), "secret\n").unwrap();
        std::fs::write(format!("{base}/rw-evil/secret.txt"), "secret\n").unwrap();
        std::fs::write(format!("{ro}/ro.txt"), "read only\n").unwrap();
        std::fs::create_dir(format!("{rw}/sub")).unwrap();
        std::fs::write(format!("{rw}/a.txt"), "alpha\nbeta\ngamma\n").unwrap();
        std::fs::write(format!("{rw}/sub/b.md"), "Hello World\nhello again\n").unwrap();
        let spec = SandboxSpec {
            read_paths: vec![ro.clone()],
            write_paths: vec![rw.clone()],
            ..Default::default()
        };
        let roots = paths::Roots::open(&spec).unwrap();
        let ctx = ToolContext::new(
            Arc::new(roots),
            limits,
            Arc::new(AtomicBool::new(false)),
            None,
        );
        let mut reg = Registry::new();
        register(&mut reg);
        Fx {
            _tmp: tmp,
            base,
            ro,
            rw,
            ctx,
            reg,
        }
    }

    fn fx() -> Fx {
        fx_with(ToolLimits::default())
    }

    impl Fx {
        fn call(&self, tool: &str, args: Value) -> Result<ToolResult, CallError> {
            self.reg.get(tool).unwrap().call(&self.ctx, args)
        }
        /// Successful text.
        fn ok(&self, tool: &str, args: Value) -> String {
            let r = self.call(tool, args.clone()).unwrap();
            assert!(!r.is_error, "{tool} {args}: {:?}", r.content);
            only_text(&r)
        }
        /// Tool-level error text.
        fn err(&self, tool: &str, args: Value) -> String {
            let r = self.call(tool, args.clone()).unwrap();
            assert!(
                r.is_error,
                "{tool} {args}: expected an error, got {:?}",
                r.content
            );
            only_text(&r)
        }
        fn p(&self, rel: &str) -> String {
            format!("{}/{rel}", self.rw)
        }
    }

    fn only_text(r: &ToolResult) -> String {
        match r.content.as_slice() {
            [Content::Text { text }] => text.clone(),
            other => panic!("not a single text block: {other:?}"),
        }
    }

    const ALL: [&str; 15] = [
        "create_directory",
        "delete_file",
        "directory_tree",
        "edit_file",
        "get_file_info",
        "grep",
        "list_allowed_directories",
        "list_directory",
        "list_directory_with_sizes",
        "move_file",
        "read_media_file",
        "read_multiple_files",
        "read_text_file",
        "search_files",
        "write_file",
    ];

    #[test]
    fn descriptors_are_well_formed() {
        let f = fx();
        let ds = f.reg.descriptors();
        let mut names: Vec<_> = ds.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ALL);
        for d in &ds {
            let schema: Value = serde_json::from_str(&d.input_schema_json).unwrap();
            assert_eq!(schema["type"], "object", "{}", d.name);
            assert_eq!(schema["additionalProperties"], false, "{}", d.name);
            assert!(schema["properties"].is_object(), "{}", d.name);
            for req in schema["required"].as_array().unwrap() {
                assert!(schema["properties"].get(req.as_str().unwrap()).is_some());
            }
            for pa in &d.path_args {
                assert!(schema["properties"].get(&pa.name).is_some(), "{}", d.name);
            }
            if let Some(o) = &d.output_schema_json {
                let o: Value = serde_json::from_str(o).unwrap();
                assert_eq!(o["type"], "object");
            }
            let write = matches!(
                d.name.as_str(),
                "write_file" | "edit_file" | "create_directory" | "move_file" | "delete_file"
            );
            assert_eq!(d.annotations.read_only, !write, "{}", d.name);
            assert_eq!(d.access == ToolAccess::FileWrite, write, "{}", d.name);
            assert!(d.path_args.iter().all(|p| p.write == write), "{}", d.name);
            if d.name == "list_allowed_directories" {
                assert_eq!(d.access, ToolAccess::None);
                assert!(d.path_args.is_empty());
            } else {
                assert!(!d.path_args.is_empty(), "{}", d.name);
                assert!(d.description.contains("allowed directories"), "{}", d.name);
            }
            if matches!(
                d.name.as_str(),
                "write_file" | "edit_file" | "move_file" | "delete_file"
            ) {
                assert!(d.annotations.destructive, "{}", d.name);
            }
        }
        let mv = ds.iter().find(|d| d.name == "move_file").unwrap();
        assert_eq!(
            mv.path_args,
            vec![
                path_arg("source", false, true),
                path_arg("destination", false, true)
            ]
        );
        let many = ds.iter().find(|d| d.name == "read_multiple_files").unwrap();
        assert_eq!(many.path_args, vec![path_arg("paths", true, false)]);
    }

    #[test]
    fn invalid_arguments_are_protocol_errors() {
        let f = fx();
        for (tool, args) in [
            ("read_text_file", json!({})),
            ("read_text_file", json!({"path": 3})),
            ("read_text_file", json!({"path": "a.txt", "bogus": 1})),
            ("read_text_file", json!({"path": "a.txt", "head": -1})),
            ("read_text_file", json!({"path": "a.txt", "head": 1.5})),
            ("read_multiple_files", json!({"paths": []})),
            (
                "edit_file",
                json!({"path": "a", "edits": [{"oldText": "x"}]}),
            ),
            (
                "list_directory_with_sizes",
                json!({"path": "a", "sortBy": "date"}),
            ),
            ("search_files", json!({"path": "a", "pattern": "[bad"})),
            ("grep", json!({"path": "a", "pattern": ""})),
            ("list_allowed_directories", json!({"x": 1})),
            ("write_file", Value::Null),
        ] {
            let e = f.call(tool, args.clone()).unwrap_err();
            assert_eq!(e.kind, CallErrorKind::InvalidArguments, "{tool} {args}");
        }
        // Integral floats are accepted as counts.
        let t = f.ok("read_text_file", json!({"path": f.p("a.txt"), "head": 1.0}));
        assert_eq!(t, "alpha");
    }

    #[test]
    fn read_text_file_full_head_tail() {
        let f = fx();
        let p = f.p("a.txt");
        assert_eq!(
            f.ok("read_text_file", json!({"path": p})),
            "alpha\nbeta\ngamma\n"
        );
        assert_eq!(
            f.ok("read_text_file", json!({"path": p, "head": 2})),
            "alpha\nbeta"
        );
        assert_eq!(
            f.ok("read_text_file", json!({"path": p, "head": 10})),
            "alpha\nbeta\ngamma"
        );
        assert_eq!(
            f.ok("read_text_file", json!({"path": p, "tail": 2})),
            "beta\ngamma"
        );
        assert_eq!(
            f.ok("read_text_file", json!({"path": p, "tail": 10})),
            "alpha\nbeta\ngamma"
        );
        assert_eq!(
            f.err("read_text_file", json!({"path": p, "head": 1, "tail": 1})),
            "Cannot specify both head and tail parameters simultaneously"
        );
        // Relative paths resolve against the first root (read-only `ro`).
        assert_eq!(
            f.ok("read_text_file", json!({"path": "ro.txt"})),
            "read only\n"
        );
        // Invalid UTF-8 is replaced, not refused.
        std::fs::write(f.p("bin"), b"a\xffb").unwrap();
        assert_eq!(
            f.ok("read_text_file", json!({"path": f.p("bin")})),
            "a\u{fffd}b"
        );
        // A directory is not a file.
        assert!(f
            .err("read_text_file", json!({"path": f.rw}))
            .starts_with("Is a directory"));
    }

    #[test]
    fn read_limits_and_partial_reads() {
        let f = fx_with(ToolLimits {
            max_read_bytes: 64,
            ..Default::default()
        });
        let big: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(f.p("big.txt"), &big).unwrap();
        let p = f.p("big.txt");
        let e = f.err("read_text_file", json!({"path": p}));
        assert!(e.starts_with(&format!("File too large: {p}")), "{e}");
        assert_eq!(
            f.ok("read_text_file", json!({"path": p, "head": 3})),
            "line 0\nline 1\nline 2"
        );
        assert_eq!(
            f.ok("read_text_file", json!({"path": p, "tail": 2})),
            "line 98\nline 99"
        );
        // More lines than the read limit allows: cut and marked.
        let t = f.ok("read_text_file", json!({"path": p, "head": 50}));
        assert!(
            t.ends_with("[truncated: read limit of 64 bytes reached]"),
            "{t}"
        );
        let t = f.ok("read_text_file", json!({"path": p, "tail": 50}));
        assert!(
            t.ends_with("line 99\n[truncated: read limit of 64 bytes reached]")
                || t.contains("[truncated"),
            "{t}"
        );
        // read_multiple_files reports per file.
        let t = f.ok("read_multiple_files", json!({"paths": [p, f.p("a.txt")]}));
        assert!(
            t.starts_with(&format!("{p}: Error - File too large")),
            "{t}"
        );
        assert!(
            t.ends_with(&format!("{}:\nalpha\nbeta\ngamma\n\n", f.p("a.txt"))),
            "{t}"
        );
    }

    #[test]
    fn output_is_capped() {
        let f = fx_with(ToolLimits {
            max_output_bytes: 100,
            ..Default::default()
        });
        std::fs::write(f.p("big.txt"), "x".repeat(1000)).unwrap();
        let t = f.ok("read_text_file", json!({"path": f.p("big.txt")}));
        assert!(t.len() <= 100, "{}", t.len());
        assert!(t.contains("[output truncated"), "{t}");
    }

    #[test]
    fn fifo_is_refused_promptly() {
        let f = fx();
        let p = f.p("fifo");
        rfs::mkfifoat(rfs::CWD, p.as_str(), rfs::Mode::from_raw_mode(0o644)).unwrap();
        let start = std::time::Instant::now();
        for tool in ["read_text_file", "read_media_file", "edit_file"] {
            let args = if tool == "edit_file" {
                json!({"path": p, "edits": []})
            } else {
                json!({"path": p})
            };
            assert_eq!(f.err(tool, args), format!("Not a regular file: {p}"));
        }
        let t = f.ok("read_multiple_files", json!({"paths": [p]}));
        assert_eq!(t, format!("{p}: Error - Not a regular file: {p}"));
        assert!(f
            .err("write_file", json!({"path": p, "content": "x"}))
            .contains("Not a regular file"));
        // grep over a directory with a FIFO skips it.
        assert_eq!(
            f.ok("grep", json!({"path": f.rw, "pattern": "zzz-none"})),
            "No matches found"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn read_media_file_blocks() {
        let f = fx();
        std::fs::write(f.p("pic.PNG"), b"\x89PNG").unwrap();
        std::fs::write(f.p("snd.wav"), b"RIFF").unwrap();
        std::fs::write(f.p("data.bin"), b"\x00\x01").unwrap();
        let r = f
            .call("read_media_file", json!({"path": f.p("pic.PNG")}))
            .unwrap();
        assert_eq!(
            r.content,
            vec![Content::Image {
                data: b"\x89PNG".to_vec(),
                mime_type: "image/png".into()
            }]
        );
        let r = f
            .call("read_media_file", json!({"path": f.p("snd.wav")}))
            .unwrap();
        assert_eq!(
            r.content,
            vec![Content::Audio {
                data: b"RIFF".to_vec(),
                mime_type: "audio/wav".into()
            }]
        );
        let r = f
            .call("read_media_file", json!({"path": f.p("data.bin")}))
            .unwrap();
        assert_eq!(
            r.content,
            vec![Content::Resource {
                uri: format!("file://{}", f.p("data.bin")),
                mime_type: Some("application/octet-stream".into()),
                body: ResourceBody::Blob(vec![0, 1]),
            }]
        );
    }

    #[test]
    fn read_multiple_files_inline_errors() {
        let f = fx();
        let missing = f.p("missing.txt");
        let outside = format!("{}/outside/secret.txt", f.base);
        let t = f.ok(
            "read_multiple_files",
            json!({"paths": [f.p("a.txt"), missing, outside, format!("{}/ro.txt", f.ro)]}),
        );
        let r = format!("{}/ro.txt", f.ro);
        let expected = format!(
            "{a}:\nalpha\nbeta\ngamma\n\n\n---\n{m}: Error - No such file or directory: {m}\n---\n{o}: Error - {OUT}\n---\n{r}:\nread only\n\n",
            a = f.p("a.txt"),
            m = missing,
            o = outside,
            OUT = paths::OUTSIDE_ALLOWED,
        );
        assert_eq!(t, expected);
    }

    #[test]
    fn write_file_create_overwrite_and_refusals() {
        let f = fx();
        let p = f.p("sub/new.txt");
        assert_eq!(
            f.ok("write_file", json!({"path": p, "content": "one"})),
            format!("Successfully wrote to {p}")
        );
        f.ok("write_file", json!({"path": p, "content": "two"}));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        let ro = format!("{}/new.txt", f.ro);
        assert_eq!(
            f.err("write_file", json!({"path": ro, "content": "x"})),
            format!("Access denied - {ro} is in a read-only directory")
        );
        assert!(!std::path::Path::new(&ro).exists());
        // Missing parent directory.
        assert!(f
            .err(
                "write_file",
                json!({"path": f.p("nodir/x.txt"), "content": "x"})
            )
            .starts_with("No such file or directory"));
        // A final-component symlink pointing out is not followed.
        symlink(format!("{}/outside/secret.txt", f.base), f.p("out-link")).unwrap();
        assert_eq!(
            f.err(
                "write_file",
                json!({"path": f.p("out-link"), "content": "pwned"})
            ),
            paths::OUTSIDE_ALLOWED
        );
        assert_eq!(
            std::fs::read_to_string(format!("{}/outside/secret.txt", f.base)).unwrap(),
            "secret\n"
        );
    }

    #[test]
    fn edit_file_exact_flexible_and_dry_run() {
        let f = fx();
        let p = f.p("code.py");
        std::fs::write(&p, "def f():\n    x = 1\n    return x\n").unwrap();
        let out = f.ok(
            "edit_file",
            json!({"path": p, "edits": [{"oldText": "x = 1", "newText": "x = 2"}], "dryRun": true}),
        );
        let expected = format!(
            "```diff\nIndex: {p}\n===================================================================\n--- {p}\toriginal\n+++ {p}\tmodified\n@@ -1,3 +1,3 @@\n def f():\n-    x = 1\n+    x = 2\n     return x\n```\n\n"
        );
        assert_eq!(out, expected);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "def f():\n    x = 1\n    return x\n",
            "dryRun leaves the file unchanged"
        );
        let out2 = f.ok(
            "edit_file",
            json!({"path": p, "edits": [{"oldText": "x = 1", "newText": "x = 2"}]}),
        );
        assert_eq!(out2, expected);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "def f():\n    x = 2\n    return x\n"
        );
        // Whitespace-flexible: indentation differs in oldText.
        f.ok(
            "edit_file",
            json!({"path": p, "edits": [{"oldText": "x = 2\nreturn x", "newText": "y = 3\n  return y"}]}),
        );
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "def f():\n    y = 3\n  return y\n"
        );
        let e = f.err(
            "edit_file",
            json!({"path": p, "edits": [{"oldText": "nope", "newText": "x"}]}),
        );
        assert_eq!(e, "Could not find exact match for edit:\nnope");
        // Read-only root.
        let ro = format!("{}/ro.txt", f.ro);
        assert!(f
            .err(
                "edit_file",
                json!({"path": ro, "edits": [], "dryRun": true})
            )
            .contains("read-only"));
    }

    #[test]
    fn unified_diff_format_details() {
        // No trailing newline on either side.
        let d = unified_diff("a\nb", "a\nc", "f");
        assert_eq!(
            d,
            "Index: f\n===================================================================\n--- f\toriginal\n+++ f\tmodified\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n"
        );
        // Insertion into an empty file: zero-length range quirk.
        let d = unified_diff("", "x\n", "f");
        assert!(d.ends_with("@@ -0,0 +1,1 @@\n+x\n"), "{d}");
        // Unchanged: headers only.
        assert!(unified_diff("a\n", "a\n", "f").ends_with("+++ f\tmodified\n"));
        // Far-apart changes make two hunks with 4 lines of context.
        let old: String = (0..30).map(|i| format!("l{i}\n")).collect();
        let new = old
            .replace("l2\n", "two\n")
            .replace("l25\n", "twenty-five\n");
        let d = unified_diff(&old, &new, "f");
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("@@ -1,7 +1,7 @@"), "{d}");
        // Fences grow past backticks in the diff.
        assert!(fenced_diff("```x\n").starts_with("````diff\n"));
    }

    #[test]
    fn apply_edits_matches_reference_rules() {
        let c = "  a\n  b\n";
        assert_eq!(
            apply_edits(
                c,
                &[Edit {
                    old_text: "a\nb".into(),
                    new_text: "x\n    y".into()
                }]
            )
            .unwrap(),
            "  x\n    y\n"
        );
        assert_eq!(
            apply_edits(
                "a a",
                &[Edit {
                    old_text: "a".into(),
                    new_text: "$&b".into()
                }]
            )
            .unwrap(),
            "$&b a"
        );
    }

    #[test]
    fn create_directory_and_list() {
        let f = fx();
        let p = f.p("x/y/z");
        assert_eq!(
            f.ok("create_directory", json!({"path": p})),
            format!("Successfully created directory {p}")
        );
        f.ok("create_directory", json!({"path": p}));
        assert!(std::path::Path::new(&p).is_dir());
        assert!(f
            .err("create_directory", json!({"path": format!("{}/d", f.ro)}))
            .contains("read-only"));
        let t = f.ok("list_directory", json!({"path": f.rw}));
        assert_eq!(t, "[FILE] a.txt\n[DIR] sub\n[DIR] x");
        assert_eq!(f.ok("list_directory", json!({"path": p})), "");
    }

    #[test]
    fn list_directory_with_sizes_format() {
        let f = fx();
        std::fs::write(f.p("big.bin"), vec![0u8; 2048]).unwrap();
        let t = f.ok("list_directory_with_sizes", json!({"path": f.rw}));
        let expected = [
            format!("[FILE] {:<30} {:>10}", "a.txt", "17 B"),
            format!("[FILE] {:<30} {:>10}", "big.bin", "2.00 KB"),
            format!("[DIR] {:<30} ", "sub"),
            String::new(),
            "Total: 2 files, 1 directories".into(),
            "Combined size: 2.02 KB".into(),
        ]
        .join("\n");
        assert_eq!(t, expected);
        let t = f.ok(
            "list_directory_with_sizes",
            json!({"path": f.rw, "sortBy": "size"}),
        );
        // Directories have a size too (as with the reference's stat), and sort by it.
        let order: Vec<_> = t
            .lines()
            .take(3)
            .map(|l| l.split_whitespace().nth(1).unwrap())
            .collect();
        assert_eq!(order, ["sub", "big.bin", "a.txt"], "{t}");
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.00 KB");
        assert_eq!(format_size(1536 * 1024), "1.50 MB");
    }

    #[test]
    fn listing_truncation_is_marked() {
        let f = fx_with(ToolLimits {
            max_entries: 2,
            ..Default::default()
        });
        for i in 0..5 {
            std::fs::write(f.p(&format!("f{i}.txt")), "x").unwrap();
        }
        let t = f.ok("list_directory", json!({"path": f.rw}));
        assert_eq!(t.lines().count(), 3);
        assert!(
            t.ends_with("[truncated: showing the first 2 entries]"),
            "{t}"
        );
        let t = f.ok("list_directory_with_sizes", json!({"path": f.rw}));
        assert!(t.contains("[truncated"), "{t}");
        let t = f.ok("directory_tree", json!({"path": f.rw}));
        assert!(t.contains("[truncated"), "{t}");
        let t = f.ok("search_files", json!({"path": f.rw, "pattern": "*.txt"}));
        assert!(t.contains("[truncated"), "{t}");
        assert_eq!(t.lines().filter(|l| l.ends_with(".txt")).count(), 2);
    }

    #[test]
    fn directory_tree_json_excludes_and_symlinks() {
        let f = fx();
        std::fs::create_dir(f.p("sub/empty")).unwrap();
        std::fs::create_dir(f.p("node_modules")).unwrap();
        std::fs::write(f.p("node_modules/m.js"), "").unwrap();
        symlink(format!("{}/outside", f.base), f.p("out")).unwrap();
        let t = f.ok(
            "directory_tree",
            json!({"path": f.rw, "excludePatterns": ["node_modules", "*.txt"]}),
        );
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            v,
            json!([
                {"name": "out", "type": "file"},
                {"name": "sub", "type": "directory", "children": [
                    {"name": "b.md", "type": "file"},
                    {"name": "empty", "type": "directory", "children": []},
                ]},
            ])
        );
        assert!(
            t.starts_with("[\n  {\n    \"name\": \"out\",\n    \"type\": \"file\"\n  },"),
            "{t}"
        );
        assert!(!t.contains("secret"));
    }

    #[test]
    fn move_file_rules() {
        let f = fx();
        let src = f.p("a.txt");
        let dst = f.p("sub/moved.txt");
        assert_eq!(
            f.ok("move_file", json!({"source": src, "destination": dst})),
            format!("Successfully moved {src} to {dst}")
        );
        assert_eq!(
            std::fs::read_to_string(&dst).unwrap(),
            "alpha\nbeta\ngamma\n"
        );
        // Existing destination refused, both files untouched.
        let other = f.p("sub/b.md");
        assert_eq!(
            f.err("move_file", json!({"source": dst, "destination": other})),
            format!("Destination already exists: {other}")
        );
        assert_eq!(
            std::fs::read_to_string(&other).unwrap(),
            "Hello World\nhello again\n"
        );
        assert!(std::path::Path::new(&dst).exists());
        // Out of scope destination, read-only source.
        let out = format!("{}/outside/moved.txt", f.base);
        assert_eq!(
            f.err("move_file", json!({"source": dst, "destination": out})),
            paths::OUTSIDE_ALLOWED
        );
        assert!(!std::path::Path::new(&out).exists());
        let ro = format!("{}/ro.txt", f.ro);
        assert!(f
            .err(
                "move_file",
                json!({"source": ro, "destination": f.p("r.txt")})
            )
            .contains("read-only"));
        assert!(f
            .err(
                "move_file",
                json!({"source": f.rw, "destination": f.p("r")})
            )
            .starts_with("Cannot move an allowed directory"));
        assert!(f
            .err(
                "move_file",
                json!({"source": f.p("nope"), "destination": f.p("r")})
            )
            .starts_with("No such file or directory"));
    }

    #[test]
    fn search_files_globs() {
        let f = fx();
        std::fs::create_dir(f.p("sub/deep")).unwrap();
        std::fs::write(f.p("sub/deep/c.txt"), "").unwrap();
        std::fs::write(f.p(".hidden.txt"), "").unwrap();
        symlink(format!("{}/outside", f.base), f.p("out")).unwrap();
        let t = f.ok("search_files", json!({"path": f.rw, "pattern": "*.txt"}));
        assert_eq!(t, format!("{}\n{}", f.p(".hidden.txt"), f.p("a.txt")));
        let t = f.ok("search_files", json!({"path": f.rw, "pattern": "**/*.txt"}));
        assert_eq!(
            t,
            [f.p(".hidden.txt"), f.p("a.txt"), f.p("sub/deep/c.txt")].join("\n")
        );
        let t = f.ok(
            "search_files",
            json!({"path": f.rw, "pattern": "**/*.txt", "excludePatterns": ["deep"]}),
        );
        assert!(!t.contains("c.txt"), "{t}");
        assert_eq!(
            f.ok(
                "search_files",
                json!({"path": f.rw, "pattern": "**/secret*"})
            ),
            "No matches found"
        );
        // Relative base.
        let t = f.ok("search_files", json!({"path": ".", "pattern": "*.txt"}));
        assert_eq!(t, format!("{}/ro.txt", f.ro));
    }

    #[test]
    fn get_file_info_and_allowed_directories() {
        let f = fx();
        let r = f
            .call("get_file_info", json!({"path": f.p("a.txt")}))
            .unwrap();
        let t = only_text(&r);
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines[0], "size: 17");
        assert!(lines[1].starts_with("created: "));
        assert!(
            lines[2].starts_with("modified: ")
                && lines[2].ends_with("GMT+0000 (Coordinated Universal Time)")
        );
        assert!(lines[3].starts_with("accessed: "));
        assert_eq!(lines[4], "isDirectory: false");
        assert_eq!(lines[5], "isFile: true");
        assert!(lines[6].starts_with("permissions: "));
        let s: Value = serde_json::from_str(r.structured_json.as_deref().unwrap()).unwrap();
        assert_eq!(s["size"], 17);
        assert_eq!(s["isFile"], true);
        assert_eq!(s["content"], t);
        assert!(s["modified"].as_str().unwrap().ends_with('Z'));
        let t = f.ok("get_file_info", json!({"path": f.rw}));
        assert!(t.contains("isDirectory: true"));

        let r = f.call("list_allowed_directories", json!({})).unwrap();
        assert_eq!(
            only_text(&r),
            format!("Allowed directories:\n{}\n{}", f.ro, f.rw)
        );
        let s: Value = serde_json::from_str(r.structured_json.as_deref().unwrap()).unwrap();
        assert_eq!(
            s["directories"],
            json!([{"path": f.ro, "writable": false}, {"path": f.rw, "writable": true}])
        );
        // Also without arguments at all.
        assert!(f.call("list_allowed_directories", Value::Null).is_ok());
    }

    #[test]
    fn dates_format_like_javascript() {
        assert_eq!(
            js_date_string(0),
            "Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(
            js_date_string(1_709_647_381),
            "Tue Mar 05 2024 14:03:01 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(iso_date(951_782_400, 5_000_000), "2000-02-29T00:00:00.005Z");
    }

    #[test]
    fn delete_file_rules() {
        let f = fx();
        std::fs::create_dir(f.p("empty")).unwrap();
        symlink(format!("{}/outside/secret.txt", f.base), f.p("link")).unwrap();
        for p in ["a.txt", "empty", "link"] {
            let p = f.p(p);
            assert_eq!(
                f.ok("delete_file", json!({"path": p})),
                format!("Successfully deleted {p}")
            );
            assert!(std::fs::symlink_metadata(&p).is_err());
        }
        // The symlink target survived.
        assert!(std::path::Path::new(&format!("{}/outside/secret.txt", f.base)).exists());
        assert!(f
            .err("delete_file", json!({"path": f.p("sub")}))
            .starts_with("Directory not empty"));
        assert!(f
            .err("delete_file", json!({"path": f.rw}))
            .starts_with("Cannot delete an allowed directory"));
        assert!(f
            .err("delete_file", json!({"path": format!("{}/ro.txt", f.ro)}))
            .contains("read-only"));
        assert!(f
            .err("delete_file", json!({"path": f.p("sub/..")}))
            .starts_with("Invalid path"));
        assert!(f
            .err("delete_file", json!({"path": f.p("missing")}))
            .starts_with("No such file or directory"));
    }

    #[test]
    fn grep_literal_search() {
        let f = fx();
        std::fs::write(f.p("bin.dat"), b"hello\0world").unwrap();
        symlink(format!("{}/outside", f.base), f.p("out")).unwrap();
        std::fs::write(format!("{}/outside/h.txt", f.base), "hello outside").unwrap();
        let t = f.ok("grep", json!({"path": f.rw, "pattern": "hello"}));
        assert_eq!(t, format!("{}:2: hello again", f.p("sub/b.md")));
        let t = f.ok(
            "grep",
            json!({"path": f.rw, "pattern": "HELLO", "caseInsensitive": true}),
        );
        assert_eq!(
            t,
            format!("{0}:1: Hello World\n{0}:2: hello again", f.p("sub/b.md"))
        );
        assert_eq!(
            f.ok(
                "grep",
                json!({"path": f.rw, "pattern": "a", "include": "*.txt"})
            ),
            format!("{0}:1: alpha\n{0}:2: beta\n{0}:3: gamma", f.p("a.txt"))
        );
        let t = f.ok(
            "grep",
            json!({"path": f.rw, "pattern": "a", "maxResults": 2}),
        );
        assert_eq!(t.lines().count(), 3);
        assert!(
            t.ends_with("[truncated: showing the first 2 matches]"),
            "{t}"
        );
        // A single file.
        assert_eq!(
            f.ok("grep", json!({"path": f.p("a.txt"), "pattern": "mm"})),
            format!("{}:3: gamma", f.p("a.txt"))
        );
        assert_eq!(
            f.ok("grep", json!({"path": f.rw, "pattern": "secret"})),
            "No matches found"
        );
    }

    #[test]
    fn grep_respects_max_matches_limit() {
        let f = fx_with(ToolLimits {
            max_matches: 1,
            ..Default::default()
        });
        let t = f.ok(
            "grep",
            json!({"path": f.rw, "pattern": "a", "maxResults": 100}),
        );
        assert_eq!(t.lines().count(), 2, "{t}");
    }

    /// Every path-taking tool answers every escape with the same text, whether or not the
    /// outside target exists.
    #[test]
    fn escapes_are_identical_for_every_tool() {
        let f = fx();
        let outside = format!("{}/outside", f.base);
        symlink(format!("{outside}/secret.txt"), f.p("abs-existing")).unwrap();
        symlink(format!("{outside}/missing.txt"), f.p("abs-missing")).unwrap();
        symlink("../outside/secret.txt", f.p("rel-existing")).unwrap();
        symlink("../outside/missing.txt", f.p("rel-missing")).unwrap();
        symlink("../outside", f.p("dir-link")).unwrap();
        // (existing target, missing target, the final component itself is a symlink)
        let pairs: Vec<(String, String)> = vec![
            (f.p("../outside/secret.txt"), f.p("../outside/missing.txt")),
            (
                "../outside/secret.txt".into(),
                "../outside/missing.txt".into(),
            ),
            (
                format!("{outside}/secret.txt"),
                format!("{outside}/missing.txt"),
            ),
            (
                format!("{}/rw-evil/secret.txt", f.base),
                format!("{}/rw-evil/missing.txt", f.base),
            ),
            (f.p("abs-existing"), f.p("abs-missing")),
            (f.p("rel-existing"), f.p("rel-missing")),
            (f.p("dir-link/secret.txt"), f.p("dir-link/missing.txt")),
            (
                format!("/proc/self/root{}/../outside/secret.txt", f.rw),
                format!("/proc/self/root{}/../outside/missing.txt", f.rw),
            ),
            (
                format!("/proc/self/root{}/..", f.rw),
                format!("/proc/self/root{}/../nope", f.rw),
            ),
            ("/etc/passwd".into(), "/etc/definitely-missing".into()),
        ];
        let calls = |p: &str| -> Vec<(&'static str, Value)> {
            vec![
                ("read_text_file", json!({"path": p})),
                ("read_text_file", json!({"path": p, "head": 1})),
                ("read_media_file", json!({"path": p})),
                ("write_file", json!({"path": p, "content": "x"})),
                ("edit_file", json!({"path": p, "edits": [], "dryRun": true})),
                ("create_directory", json!({"path": p})),
                ("list_directory", json!({"path": p})),
                ("list_directory_with_sizes", json!({"path": p})),
                ("directory_tree", json!({"path": p})),
                ("search_files", json!({"path": p, "pattern": "*"})),
                ("get_file_info", json!({"path": p})),
                ("delete_file", json!({"path": p})),
                ("grep", json!({"path": p, "pattern": "secret"})),
                (
                    "move_file",
                    json!({"source": p, "destination": f.p("dest")}),
                ),
                (
                    "move_file",
                    json!({"source": f.p("sub/b.md"), "destination": p}),
                ),
            ]
        };
        for (existing, missing) in &pairs {
            // delete_file and move_file act on a final-component symlink itself (which lives
            // inside the root, so that is in scope); they are checked on the links below.
            let final_link = existing.ends_with("-existing");
            for ((tool, a1), (_, a2)) in calls(existing).into_iter().zip(calls(missing)) {
                if final_link && matches!(tool, "delete_file" | "move_file") {
                    continue;
                }
                let t1 = f.err(tool, a1.clone());
                let t2 = f.err(tool, a2);
                assert_eq!(t1, paths::OUTSIDE_ALLOWED, "{tool} {a1}");
                assert_eq!(t1, t2, "{tool} {a1}");
            }
            let t = f.ok("read_multiple_files", json!({"paths": [existing, missing]}));
            assert_eq!(
                t,
                format!(
                    "{existing}: Error - {o}\n---\n{missing}: Error - {o}",
                    o = paths::OUTSIDE_ALLOWED
                )
            );
        }
        // Final-component links: moved/deleted as links, same answer whatever the target.
        for kind in ["abs", "rel"] {
            let (e, m) = (
                f.p(&format!("{kind}-existing")),
                f.p(&format!("{kind}-missing")),
            );
            assert_eq!(
                f.err(
                    "move_file",
                    json!({"source": f.p("sub/b.md"), "destination": e})
                ),
                format!("Destination already exists: {e}")
            );
            assert_eq!(
                f.err(
                    "move_file",
                    json!({"source": f.p("sub/b.md"), "destination": m})
                ),
                format!("Destination already exists: {m}")
            );
            for p in [e, m] {
                f.ok(
                    "move_file",
                    json!({"source": p, "destination": format!("{p}-moved")}),
                );
                f.ok("delete_file", json!({"path": format!("{p}-moved")}));
            }
        }
        // Nothing outside changed; the in-scope source of the moves is still there.
        assert_eq!(
            std::fs::read_to_string(format!("{outside}/secret.txt")).unwrap(),
            "secret\n"
        );
        assert!(!std::path::Path::new(&format!("{outside}/missing.txt")).exists());
        assert!(std::path::Path::new(&f.p("sub/b.md")).exists());
    }

    #[test]
    fn swapped_directory_between_calls() {
        let f = fx();
        let p = f.p("sub/b.md");
        f.ok("read_text_file", json!({"path": p}));
        std::fs::rename(f.p("sub"), f.p("sub-old")).unwrap();
        std::fs::write(format!("{}/outside/b.md", f.base), "outside").unwrap();
        symlink(format!("{}/outside", f.base), f.p("sub")).unwrap();
        assert_eq!(
            f.err("read_text_file", json!({"path": p})),
            paths::OUTSIDE_ALLOWED
        );
        assert_eq!(
            f.err("write_file", json!({"path": p, "content": "x"})),
            paths::OUTSIDE_ALLOWED
        );
        assert_eq!(
            f.err("list_directory", json!({"path": f.p("sub")})),
            paths::OUTSIDE_ALLOWED
        );
        assert_eq!(
            std::fs::read_to_string(format!("{}/outside/b.md", f.base)).unwrap(),
            "outside"
        );
    }

    #[test]
    fn walks_honour_cancellation_and_report_progress() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let base = base.to_str().unwrap().to_owned();
        for i in 0..2500 {
            std::fs::write(format!("{base}/f{i}.txt"), "needle\n").unwrap();
        }
        let spec = SandboxSpec {
            read_paths: vec![base.clone()],
            ..Default::default()
        };
        let roots = Arc::new(paths::Roots::open(&spec).unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let progress: super::super::ProgressFn =
            Arc::new(move |u| seen2.lock().unwrap().push(u.progress));
        let ctx = ToolContext::new(
            roots.clone(),
            ToolLimits::default(),
            Arc::new(AtomicBool::new(false)),
            Some(progress),
        );
        let r = search_files(&ctx, json!({"path": base, "pattern": "*.txt"}));
        assert!(r.is_ok());
        let seen = seen.lock().unwrap().clone();
        assert!(seen.len() >= 2, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]));

        let cancelled = Arc::new(AtomicBool::new(true));
        let ctx = ToolContext::new(roots, ToolLimits::default(), cancelled, None);
        let mut reg = Registry::new();
        register(&mut reg);
        for (tool, args) in [
            ("search_files", json!({"path": base, "pattern": "*"})),
            ("directory_tree", json!({"path": base})),
            ("grep", json!({"path": base, "pattern": "needle"})),
        ] {
            let e = reg.get(tool).unwrap().call(&ctx, args).unwrap_err();
            assert_eq!(e.kind, CallErrorKind::Cancelled, "{tool}");
        }
    }
}
