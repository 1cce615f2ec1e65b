//! The client's allowed files as MCP resources: `file://` URIs of the files beneath its roots
//! (listed breadth-first, bounded, symlinks not followed), a `file://{+path}` template, and
//! reads (text when the content is UTF-8 and not a known binary type, else base64 blob), every
//! path resolved beneath an open root like the file tools'.

use std::collections::VecDeque;
use std::io::Read;

use base64::Engine as _;
use mcpd_ipc::CallError;
use serde_json::{json, Value};

use super::fs::{file_uri, mime_for};
use super::paths::{self, Access, EntryKind};
use super::{invalid_args, Provider, ToolContext};

/// Most resources listed.
pub const MAX_RESOURCES: usize = 1000;
/// Deepest directory level listed below a root.
pub const MAX_DEPTH: usize = 8;

/// The file resource provider.
#[derive(Debug)]
pub struct FileResources;

pub use mcpd_ipc::text::file_uri_path as uri_path;

fn not_found(uri: &str) -> CallError {
    invalid_args(format!(
        "Resource not found: {}",
        uri.chars().take(256).collect::<String>()
    ))
}

impl Provider for FileResources {
    fn list_resources(&self, ctx: &ToolContext) -> Vec<Value> {
        let max =
            MAX_RESOURCES.min(usize::try_from(ctx.limits.max_entries).unwrap_or(MAX_RESOURCES));
        let mut out = Vec::new();
        for root in ctx.roots.list() {
            if root.is_file {
                out.push(entry(&root.path));
                continue;
            }
            let mut queue = VecDeque::from([(root.path.clone(), 0usize)]);
            while let Some((dir, depth)) = queue.pop_front() {
                if out.len() >= max {
                    return out;
                }
                let Ok(fd) = ctx.roots.open_dir(&dir, Access::Read) else {
                    continue;
                };
                let Ok((entries, _)) = paths::read_dir(std::os::fd::AsFd::as_fd(&fd), max) else {
                    continue;
                };
                let mut entries = entries;
                entries.sort_by(|a, b| a.name.cmp(&b.name));
                for e in entries {
                    let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
                    match e.kind {
                        EntryKind::File if out.len() < max => out.push(entry(&path)),
                        EntryKind::Dir if depth < MAX_DEPTH => queue.push_back((path, depth + 1)),
                        _ => {}
                    }
                }
            }
        }
        out
    }

    fn resource_templates(&self) -> Vec<Value> {
        vec![json!({
            "uriTemplate": "file://{+path}",
            "name": "file",
            "description": "A file inside the allowed directories, by absolute path"
        })]
    }

    fn complete(
        &self,
        ctx: &ToolContext,
        reference: &Value,
        argument: &Value,
    ) -> Option<Vec<String>> {
        // The file template's `path` variable: entries beneath the roots that extend the prefix.
        if reference.get("uri").and_then(Value::as_str) != Some("file://{+path}")
            || argument.get("name").and_then(Value::as_str) != Some("path")
        {
            return None;
        }
        let prefix = argument.get("value").and_then(Value::as_str).unwrap_or("");
        let (dir, start) = match prefix.rfind('/') {
            Some(i) => (&prefix[..=i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        if dir.is_empty() {
            // Nothing typed yet: the roots themselves.
            return Some(
                ctx.roots
                    .list()
                    .into_iter()
                    .map(|r| r.path)
                    .take(100)
                    .collect(),
            );
        }
        let Ok(fd) = ctx.roots.open_dir(dir, Access::Read) else {
            return Some(Vec::new());
        };
        let (entries, _) = paths::read_dir(std::os::fd::AsFd::as_fd(&fd), 1000).unwrap_or_default();
        let mut out: Vec<String> = entries
            .into_iter()
            .filter(|e| e.name.starts_with(start))
            .map(|e| {
                let slash = if matches!(e.kind, EntryKind::Dir) {
                    "/"
                } else {
                    ""
                };
                format!("{dir}{}{slash}", e.name)
            })
            .collect();
        out.sort();
        out.truncate(100);
        Some(out)
    }

    fn read_resource(&self, ctx: &ToolContext, uri: &str) -> Option<Result<Value, CallError>> {
        if !uri.starts_with("file://") {
            return None;
        }
        let Some(path) = uri_path(uri) else {
            return Some(Err(not_found(uri)));
        };
        // Outside the roots, missing, or not a regular file: all the same "not found".
        let Ok((file, stat)) = ctx.roots.open_regular(&path, Access::Read) else {
            return Some(Err(not_found(uri)));
        };
        let max = ctx.limits.max_read_bytes;
        if u64::try_from(stat.st_size).unwrap_or(u64::MAX) > max {
            return Some(Err(invalid_args(format!(
                "Resource too large: exceeds the read limit of {max} bytes"
            ))));
        }
        let mut data = Vec::new();
        if file.take(max).read_to_end(&mut data).is_err() {
            return Some(Err(not_found(uri)));
        }
        let guessed = mime_for(&path);
        let binary_type = guessed != "application/octet-stream";
        let content = match (binary_type, String::from_utf8(data)) {
            (false, Ok(text)) => json!({"uri": uri, "mimeType": "text/plain", "text": text}),
            (_, Ok(text)) => json!({"uri": uri, "mimeType": guessed,
                "blob": base64::engine::general_purpose::STANDARD.encode(text.as_bytes())}),
            (_, Err(e)) => json!({"uri": uri, "mimeType": guessed,
                "blob": base64::engine::general_purpose::STANDARD.encode(e.as_bytes())}),
        };
        // The answer crosses the IPC as JSON text, where a control character takes 6 bytes
        // and base64 4 per 3: refuse what would not fit one frame (sending it would end the
        // worker) rather than the worker.
        let size = serde_json::to_string(&content).map_or(u64::MAX, |t| t.len() as u64);
        if size > super::output::MAX_RESULT_FRAME {
            return Some(Err(invalid_args(format!(
                "Resource too large: its encoding ({size} bytes) exceeds what one result can carry"
            ))));
        }
        Some(Ok(json!({"contents": [content]})))
    }
}

fn entry(path: &str) -> Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    let mime = match mime_for(path) {
        "application/octet-stream" => "text/plain",
        m => m,
    };
    json!({"uri": file_uri(path), "name": name, "title": path, "mimeType": mime})
}
