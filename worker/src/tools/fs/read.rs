//! Read tools (`read_text_file`, `read_media_file`, `read_multiple_files`) and their bounded
//! reading helpers (whole file, head, tail, MIME type by extension). Does not write, list or
//! walk. Trusts [`crate::tools::paths::Roots`] to open every client path beneath a root; the
//! file contents and sizes are untrusted and every read is held to the tool limits.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;

use mcpd_ipc::{Content, ResourceBody, ToolResult};
use serde::Deserialize;
use serde_json::Value;

use super::file_uri;
use super::{cancelled, opt_count, parse, text, Fail, Outcome, PathArgs, TAIL_CHUNK};
use crate::tools::paths::{self, Access};
use crate::tools::{invalid_args, ToolContext};

/// Read the whole file, refusing more than `max` bytes. `size` is the file's size when it was
/// opened (its `fstat`, from [`paths::Roots::open_regular`]).
///
/// The buffer is sized from `size`, so a small file is read in one read(2), and a read that
/// comes back short with `size` bytes in hand ends it: on a regular file that is its end, and
/// the probe read(2) `read_to_end` makes for the 0 would only confirm it. A file that grows
/// meanwhile is read on, still bounded by `max`.
pub(super) fn read_limited(path: &str, file: &File, size: u64, max: u64) -> Result<Vec<u8>, Fail> {
    let over = usize::try_from(max.saturating_add(1)).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX).min(over - 1) + 1];
    let mut len = 0;
    loop {
        if len == buf.len() {
            if len >= over {
                break;
            }
            buf.resize(len.saturating_mul(2).clamp(len + 1, over), 0);
        }
        let asked = buf.len() - len;
        match (&*file).read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if n < asked && len as u64 == size {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(paths::io_to_path_err(path, &e).into()),
        }
    }
    if len as u64 > max {
        return Err(too_large(path, None, max));
    }
    buf.truncate(len);
    Ok(buf)
}

/// The bytes as text, invalid UTF-8 replaced by U+FFFD. Valid text (the usual case) becomes the
/// `String` in place: no copy, and no second pass over it.
pub(super) fn text_of(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

pub(super) fn too_large(path: &str, size: Option<u64>, max: u64) -> Fail {
    let size = size.map(|s| format!(" ({s} bytes)")).unwrap_or_default();
    Fail::Tool(format!(
        "File too large: {path}{size} exceeds the read limit of {max} bytes. Use head or tail to read part of it."
    ))
}

/// The first `n` lines (joined by `\n`), reading at most `max` bytes. Returns whether the read
/// limit cut the result.
pub(super) fn head_lines(file: &File, n: u64, max: u64) -> std::io::Result<(String, bool)> {
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
    Ok((text_of(joined), truncated))
}

/// The last `n` lines (joined by `\n`, CRLF normalised), reading backwards at most about `max`
/// bytes. Returns whether the read limit cut the result.
pub(super) fn tail_lines(
    file: &File,
    size: u64,
    n: u64,
    max: u64,
) -> std::io::Result<(String, bool)> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadTextArgs {
    path: String,
    #[serde(default, deserialize_with = "opt_count")]
    head: Option<u64>,
    #[serde(default, deserialize_with = "opt_count")]
    tail: Option<u64>,
}

pub(super) fn read_text_file(ctx: &ToolContext, args: Value) -> Outcome {
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
        text_of(read_limited(&a.path, &file, size, max)?)
    };
    Ok(text(ctx, content))
}

pub(super) fn mark_cut(mut s: String, cut: bool, max: u64) -> String {
    if cut {
        s.push_str(&format!("\n[truncated: read limit of {max} bytes reached]"));
    }
    s
}

pub(super) fn read_media_file(ctx: &ToolContext, args: Value) -> Outcome {
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
    let data = read_limited(&a.path, &file, size, max)?;
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
pub(super) struct ReadManyArgs {
    paths: Vec<String>,
}

pub(super) fn read_multiple_files(ctx: &ToolContext, args: Value) -> Outcome {
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
                    read_limited(p, &f, size, max)
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
