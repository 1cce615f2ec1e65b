//! Output budgets: how much of a program's stdout and stderr a result may carry.
//!
//! A command, code or operator-tool result carries the program's output twice: in the text
//! content (the bytes as UTF-8, invalid sequences replaced by U+FFFD) and in
//! `structuredContent` (the same text as JSON strings, where `"`, `\` and control characters
//! are escaped: a NUL byte takes 1 byte in the text and 6 in the JSON). The client's
//! `max_output_bytes` bounds the two together, so [`fit`] keeps the longest prefix of each
//! stream whose cost (text bytes + JSON bytes) fits the budget. What a result adds around the
//! output (status lines, field names, numbers) is bounded by
//! [`mcpd_ipc::RESULT_ENVELOPE_BYTES`]; tests below hold every renderer to it.
//!
//! [`frame_guard`] is the last line: whatever a tool returns, a result that would not fit one
//! IPC frame is replaced by an error, so an oversized result can never end the worker.

use mcpd_ipc::{Content, ResourceBody, ToolResult, MAX_FRAME};

/// The output a result may carry, cut to a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fitted {
    /// stdout as text (a prefix of the captured bytes).
    pub stdout: String,
    /// stderr as text (a prefix of the captured bytes).
    pub stderr: String,
    /// Captured bytes left out to fit the budget.
    pub cut: u64,
}

/// Bytes `c` takes in a JSON string as serde_json writes it.
fn json_len(c: char) -> u64 {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8() as u64,
    }
}

/// Bytes `c` costs in a result: once as text, once in JSON.
fn char_cost(c: char) -> u64 {
    c.len_utf8() as u64 + json_len(c)
}

/// The most any captured byte can cost (a control character: 1 + 6).
const MAX_COST_PER_BYTE: u64 = 7;

/// Cost of a replacement character (an invalid UTF-8 sequence): 3 bytes as text, 3 in JSON.
const REPLACEMENT_COST: u64 = 6;

/// The longest prefix of `raw` (as lossy UTF-8) costing at most `budget`: its text, its cost
/// and how many raw bytes it used.
fn prefix_within(raw: &[u8], budget: u64) -> (String, u64, usize) {
    let mut text = String::new();
    let mut cost = 0u64;
    let mut used = 0usize;
    if (raw.len() as u64).saturating_mul(MAX_COST_PER_BYTE) <= budget {
        // Fits whatever the bytes are: no need to look at them.
        let text = String::from_utf8_lossy(raw).into_owned();
        let cost = text.chars().map(char_cost).sum();
        return (text, cost, raw.len());
    }
    for chunk in raw.utf8_chunks() {
        let valid = chunk.valid();
        for (i, c) in valid.char_indices() {
            let k = char_cost(c);
            if cost + k > budget {
                text.push_str(&valid[..i]);
                return (text, cost, used + i);
            }
            cost += k;
        }
        text.push_str(valid);
        used += valid.len();
        let bad = chunk.invalid();
        if !bad.is_empty() {
            if cost + REPLACEMENT_COST > budget {
                return (text, cost, used);
            }
            cost += REPLACEMENT_COST;
            used += bad.len();
            text.push(char::REPLACEMENT_CHARACTER);
        }
    }
    (text, cost, used)
}

/// Cost of all of `raw`.
fn stream_cost(raw: &[u8]) -> u64 {
    prefix_within(raw, u64::MAX).1
}

/// Fit stdout and stderr into `budget` bytes of result (text + JSON). When both do not fit,
/// the budget is shared fairly: a stream that needs less than half keeps all of it and the
/// other gets the rest; otherwise each gets half. Each stream keeps its beginning.
pub(crate) fn fit(stdout: &[u8], stderr: &[u8], budget: u64) -> Fitted {
    let (co, ce) = (stream_cost(stdout), stream_cost(stderr));
    if co.saturating_add(ce) <= budget {
        return Fitted {
            stdout: String::from_utf8_lossy(stdout).into_owned(),
            stderr: String::from_utf8_lossy(stderr).into_owned(),
            cut: 0,
        };
    }
    let half = budget / 2;
    let (bo, be) = if ce <= half {
        (budget - ce, ce)
    } else if co <= half {
        (co, budget - co)
    } else {
        (budget - half, half)
    };
    let (out, _, used_out) = prefix_within(stdout, bo);
    let (err, _, used_err) = prefix_within(stderr, be);
    Fitted {
        stdout: out,
        stderr: err,
        cut: ((stdout.len() - used_out) + (stderr.len() - used_err)) as u64,
    }
}

/// The size of a result as a client sees it, counted as `max_output_bytes` counts: text
/// content plus `structuredContent` as serialised (binary content as its raw bytes).
#[cfg(test)]
pub(crate) fn result_size(r: &ToolResult) -> u64 {
    let content: usize = r
        .content
        .iter()
        .map(|c| match c {
            Content::Text { text } => text.len(),
            Content::Image { data, .. } | Content::Audio { data, .. } => data.len(),
            Content::Resource { body, .. } => match body {
                ResourceBody::Text(t) => t.len(),
                ResourceBody::Blob(b) => b.len(),
            },
            Content::ResourceLink { .. } => 0,
        })
        .sum();
    (content + r.structured_json.as_ref().map_or(0, String::len)) as u64
}

/// An upper bound of the encoded size of a `Result` message carrying `r` (postcard: each
/// string or byte string is a varint length, at most 10 bytes, and its bytes).
fn encoded_bound(r: &ToolResult) -> u64 {
    let s = |x: &str| x.len() as u64 + 10;
    let o = |x: &Option<String>| x.as_deref().map_or(1, |x| 1 + s(x));
    let blocks: u64 = r
        .content
        .iter()
        .map(|c| {
            10 + match c {
                Content::Text { text } => s(text),
                Content::Image { data, mime_type } | Content::Audio { data, mime_type } => {
                    data.len() as u64 + 10 + s(mime_type)
                }
                Content::Resource {
                    uri,
                    mime_type,
                    body,
                } => {
                    s(uri)
                        + o(mime_type)
                        + 10
                        + match body {
                            ResourceBody::Text(t) => s(t),
                            ResourceBody::Blob(b) => b.len() as u64 + 10,
                        }
                }
                Content::ResourceLink {
                    uri,
                    name,
                    description,
                    mime_type,
                } => s(uri) + s(name) + o(description) + o(mime_type),
            }
        })
        .sum();
    let input = r.input_required.as_ref().map_or(1, |i| {
        1 + s(&i.requests_json) + i.state.as_ref().map_or(1, |st| 1 + st.len() as u64 + 10) + 1
    });
    // Message tag, call id, block count, flags.
    64 + blocks + o(&r.structured_json) + input
}

/// Largest encoded result the worker sends: one frame, with room for the message around it.
pub(crate) const MAX_RESULT_FRAME: u64 = MAX_FRAME as u64 - 4096;

/// Replace a result that would not fit one IPC frame (sending it would end the worker) by an
/// error saying so. Built-in tools stay far below it (they honour `max_output_bytes`, at most
/// 3/4 of a frame); this holds for every tool, including custom and fixture tools.
pub(crate) fn frame_guard(r: ToolResult) -> ToolResult {
    let size = encoded_bound(&r);
    if size <= MAX_RESULT_FRAME {
        return r;
    }
    super::error_result(format!(
        "The tool's result (about {size} bytes) is larger than mcpd can return (at most {MAX_RESULT_FRAME} bytes) and was discarded"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What the result actually costs: the text plus its JSON string form.
    fn real_cost(s: &str) -> u64 {
        (s.len() + serde_json::to_string(s).unwrap().len() - 2) as u64
    }

    #[test]
    fn the_cost_model_is_serde_jsons() {
        let mut all = String::new();
        for c in (0u32..0x800).filter_map(char::from_u32) {
            all.push(c);
            assert_eq!(char_cost(c), real_cost(&c.to_string()), "{c:?}");
        }
        for c in ['\u{2028}', '\u{fffd}', '\u{10ffff}', '😀'] {
            assert_eq!(char_cost(c), real_cost(&c.to_string()), "{c:?}");
        }
        assert_eq!(stream_cost(all.as_bytes()), real_cost(&all));
        let lossy = b"a\xffb\xf0\x9f\x98c\x00\"";
        assert_eq!(
            stream_cost(lossy),
            real_cost(&String::from_utf8_lossy(lossy))
        );
    }

    #[test]
    fn streams_that_fit_are_kept_whole() {
        let f = fit(b"hello\n", b"warn\x01\n", 100);
        assert_eq!(f.stdout, "hello\n");
        assert_eq!(f.stderr, "warn\u{1}\n");
        assert_eq!(f.cut, 0);
        // Letters cost 2, `\n` 3 and `\x01` 7: stdout needs 13, stderr 18.
        let f = fit(b"hello\n", b"warn\x01\n", 13 + 18);
        assert_eq!(f.cut, 0);
        let f = fit(b"hello\n", b"warn\x01\n", 13 + 18 - 1);
        assert_eq!((f.stderr.as_str(), f.cut), ("warn\u{1}", 1));
    }

    #[test]
    fn the_budget_is_shared_and_each_stream_keeps_its_beginning() {
        let out = vec![b'x'; 1000];
        // stderr needs little: it keeps all, stdout gets the rest (2 bytes per 'x').
        let f = fit(&out, b"err", 206);
        assert_eq!((f.stdout.len(), f.stderr.as_str()), (100, "err"));
        assert_eq!(f.cut, 900);
        // Both need more than half: half each.
        let err = vec![b'e'; 1000];
        let f = fit(&out, &err, 200);
        assert_eq!((f.stdout.len(), f.stderr.len(), f.cut), (50, 50, 1900));
        // Control characters cost 7, invalid bytes 6 (one U+FFFD per invalid sequence), and
        // a character is never split.
        let f = fit(&[0u8; 100], b"", 70);
        assert_eq!((f.stdout.len(), f.cut), (10, 90));
        let f = fit(&[0xffu8; 100], b"", 60);
        assert_eq!((f.stdout.chars().count(), f.cut), (10, 90));
        let f = fit("ééé".as_bytes(), b"", 9);
        assert_eq!((f.stdout.as_str(), f.cut), ("éé", 2));
        let f = fit(b"", b"", 0);
        assert_eq!((f.stdout.as_str(), f.stderr.as_str(), f.cut), ("", "", 0));
    }

    #[test]
    fn a_fitted_result_never_exceeds_its_budget() {
        let samples: Vec<Vec<u8>> = vec![
            vec![b'x'; 5000],
            vec![0u8; 5000],
            vec![0xfe; 5000],
            "\"\\\n\té😀".repeat(700).into_bytes(),
            (0..5000u32).map(|i| (i * 7919 % 256) as u8).collect(),
        ];
        for out in &samples {
            for err in &samples {
                for budget in [0u64, 1, 7, 100, 1000, 4096, 9999, 100_000] {
                    let f = fit(out, err, budget);
                    let total = real_cost(&f.stdout) + real_cost(&f.stderr);
                    assert!(total <= budget, "{total} > {budget}");
                    assert!(out.starts_with(f.stdout.as_bytes()) || f.stdout.contains('\u{fffd}'));
                    assert!(f.cut <= (out.len() + err.len()) as u64);
                }
            }
        }
    }

    #[test]
    fn results_too_large_for_a_frame_are_replaced() {
        let small = super::super::text_result("x".repeat(1000));
        assert_eq!(frame_guard(small.clone()), small);
        let big = ToolResult {
            content: vec![Content::Text {
                text: "x".repeat(MAX_FRAME / 2),
            }],
            structured_json: Some(format!("\"{}\"", "y".repeat(MAX_FRAME / 2))),
            is_error: false,
            input_required: None,
        };
        let r = frame_guard(big);
        assert!(r.is_error);
        assert!(result_size(&r) < 256, "{r:?}");
        // The bound is an upper bound of the real encoding.
        for r in [
            super::super::text_result("abc"),
            ToolResult {
                content: vec![Content::Image {
                    data: vec![1; 300],
                    mime_type: "image/png".into(),
                }],
                structured_json: Some("{}".into()),
                is_error: true,
                input_required: None,
            },
        ] {
            let msg = mcpd_ipc::WorkerToBroker::Result {
                id: u64::MAX,
                result: r.clone(),
            };
            let real = mcpd_ipc::encode(&msg).unwrap().len() as u64;
            assert!(real <= encoded_bound(&r), "{real} > {}", encoded_bound(&r));
        }
    }
}
