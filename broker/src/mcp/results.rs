//! Validation of what a (hostile) worker returns before it reaches a client: tool descriptors
//! as MCP JSON, tool results (content types, MIME types, URIs, structured content), provider
//! list entries. Everything malformed is refused (`None`), never repaired.
//!
//! Pure functions; trusts nothing.
#![forbid(unsafe_code)]

use mcpd_ipc::ToolDescriptor;
use serde_json::{json, Value};

use base64::Engine as _;
use mcpd_ipc::{Content, ResourceBody, ToolResult};

pub(super) fn short(s: &str, n: usize) -> bool {
    !s.is_empty() && s.len() <= n
}

/// Keep only well-formed entries of a (hostile) worker's list: objects whose `keys` are
/// non-empty strings of bounded length.
pub(super) fn valid_entries(v: &Value, list: &str, keys: &[&str]) -> Option<Vec<Value>> {
    let items = v.get(list)?.as_array()?;
    Some(
        items
            .iter()
            .take(10_000)
            .filter(|e| {
                e.is_object()
                    && keys.iter().all(|k| {
                        e.get(*k)
                            .and_then(Value::as_str)
                            .is_some_and(|x| short(x, 8192))
                    })
                    && crate::mcp::jsonrpc::json_len(e) <= 64 * 1024
            })
            .cloned()
            .collect(),
    )
}

pub(super) fn tool_json(t: &ToolDescriptor) -> Value {
    let mut v = json!({
        "name": t.name,
        "description": t.description,
        "inputSchema": serde_json::from_str::<Value>(&t.input_schema_json).unwrap_or_else(|_| json!({"type": "object"})),
        "annotations": {
            "readOnlyHint": t.annotations.read_only,
            "destructiveHint": t.annotations.destructive,
            "idempotentHint": t.annotations.idempotent,
            "openWorldHint": t.annotations.open_world,
        },
    });
    if let Some(title) = &t.title {
        v["title"] = json!(title);
    }
    match t.task_support {
        mcpd_ipc::TaskSupport::Forbidden => {}
        mcpd_ipc::TaskSupport::Optional => v["execution"] = json!({"taskSupport": "optional"}),
        mcpd_ipc::TaskSupport::Required => v["execution"] = json!({"taskSupport": "required"}),
    }
    if let Some(o) = t
        .output_schema_json
        .as_deref()
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    {
        v["outputSchema"] = o;
    }
    v
}

pub(super) fn mime_ok(m: &str) -> bool {
    !m.is_empty() && m.len() <= 255 && m.bytes().all(|b| b.is_ascii_graphic())
}

/// A JSON object of these entries, moved in (`json!` would copy every value, deeply: a
/// result's text once per level).
fn obj<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

/// Convert a (hostile) worker result to MCP JSON; `None` if it is malformed.
pub(crate) fn result_json(r: ToolResult) -> Option<Value> {
    let b64 = |d: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(d));
    let mut content = Vec::with_capacity(r.content.len());
    for c in r.content {
        content.push(match c {
            Content::Text { text } => obj([("type", "text".into()), ("text", text.into())]),
            Content::Image { data, mime_type } if mime_ok(&mime_type) => obj([
                ("type", "image".into()),
                ("data", b64(&data)),
                ("mimeType", mime_type.into()),
            ]),
            Content::Audio { data, mime_type } if mime_ok(&mime_type) => obj([
                ("type", "audio".into()),
                ("data", b64(&data)),
                ("mimeType", mime_type.into()),
            ]),
            Content::Resource {
                uri,
                mime_type,
                body,
            } if uri.len() <= 8192 && mime_type.as_deref().is_none_or(mime_ok) => {
                let mut res = serde_json::Map::new();
                res.insert("uri".into(), uri.into());
                if let Some(m) = mime_type {
                    res.insert("mimeType".into(), m.into());
                }
                match body {
                    ResourceBody::Text(t) => res.insert("text".into(), t.into()),
                    ResourceBody::Blob(b) => res.insert("blob".into(), b64(&b)),
                };
                obj([
                    ("type", "resource".into()),
                    ("resource", Value::Object(res)),
                ])
            }
            Content::ResourceLink {
                uri,
                name,
                description,
                mime_type,
            } if uri.len() <= 8192
                && name.len() <= 1024
                && mime_type.as_deref().is_none_or(mime_ok) =>
            {
                let mut l = obj([
                    ("type", "resource_link".into()),
                    ("uri", uri.into()),
                    ("name", name.into()),
                ]);
                if let Some(d) = description {
                    l["description"] = d.into();
                }
                if let Some(m) = mime_type {
                    l["mimeType"] = m.into();
                }
                l
            }
            _ => return None,
        });
    }
    let mut v = obj([("content", Value::Array(content))]);
    if let Some(s) = r.structured_json {
        match serde_json::from_str::<Value>(&s) {
            Ok(o @ Value::Object(_)) => v["structuredContent"] = o,
            _ => return None,
        }
    }
    if r.is_error {
        v["isError"] = Value::Bool(true);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn malformed_worker_results_are_refused() {
        let ok = ToolResult {
            content: vec![Content::Image {
                data: vec![1, 2, 3],
                mime_type: "image/png".into(),
            }],
            structured_json: Some(r#"{"a":1}"#.into()),
            is_error: false,
            input_required: None,
        };
        let v = result_json(ok).unwrap();
        assert_eq!(v["content"][0]["data"], "AQID");
        assert_eq!(v["structuredContent"]["a"], 1);
        assert!(v.get("isError").is_none());
        let bad_mime = ToolResult {
            content: vec![Content::Image {
                data: vec![],
                mime_type: "image/png\r\nX: y".into(),
            }],
            structured_json: None,
            is_error: false,
            input_required: None,
        };
        assert!(result_json(bad_mime).is_none());
        let bad_structured = ToolResult {
            content: vec![],
            structured_json: Some("[1]".into()),
            is_error: false,
            input_required: None,
        };
        assert!(result_json(bad_structured).is_none());
    }
}
