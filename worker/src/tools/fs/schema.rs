//! The file tools' descriptors: names, titles, descriptions, input/output JSON Schemas,
//! annotations and which arguments are paths (the broker checks those). Pure data: no I/O, no
//! argument parsing (the handlers parse with serde). Trusts nothing; it is only advertised.

use mcpd_ipc::{PathArg, ToolAccess, ToolAnnotations, ToolDescriptor};
use serde_json::{json, Value};

pub(super) fn object_schema(properties: Value, required: &[&str]) -> String {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
    .to_string()
}

pub(super) const WITHIN: &str = "Only works within allowed directories.";

pub(super) fn read_annotations() -> ToolAnnotations {
    ToolAnnotations {
        read_only: true,
        destructive: false,
        idempotent: true,
        open_world: false,
    }
}

pub(super) fn write_annotations(destructive: bool, idempotent: bool) -> ToolAnnotations {
    ToolAnnotations {
        read_only: false,
        destructive,
        idempotent,
        open_world: false,
    }
}

pub(super) fn path_arg(name: &str, many: bool, write: bool) -> PathArg {
    PathArg {
        name: name.into(),
        many,
        write,
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn descriptor(
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

pub(super) fn path_prop() -> Value {
    json!({"type": "string", "description": "Path inside an allowed directory (absolute, or relative to the first allowed directory)"})
}

pub(super) fn read_tool(
    name: &str,
    title: &str,
    description: String,
    input: String,
) -> ToolDescriptor {
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

pub(super) fn d_read_text_file() -> ToolDescriptor {
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

pub(super) fn d_read_media_file() -> ToolDescriptor {
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

pub(super) fn d_read_multiple_files() -> ToolDescriptor {
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

pub(super) fn d_write_file() -> ToolDescriptor {
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

pub(super) fn d_edit_file() -> ToolDescriptor {
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

pub(super) fn d_create_directory() -> ToolDescriptor {
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

pub(super) fn d_list_directory() -> ToolDescriptor {
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

pub(super) fn d_list_directory_with_sizes() -> ToolDescriptor {
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

pub(super) fn d_directory_tree() -> ToolDescriptor {
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

pub(super) fn d_move_file() -> ToolDescriptor {
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

pub(super) fn d_search_files() -> ToolDescriptor {
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

pub(super) fn d_get_file_info() -> ToolDescriptor {
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

pub(super) fn d_list_allowed_directories() -> ToolDescriptor {
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

pub(super) fn d_delete_file() -> ToolDescriptor {
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

pub(super) fn d_grep() -> ToolDescriptor {
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
