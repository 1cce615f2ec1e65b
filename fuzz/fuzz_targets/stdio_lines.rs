//! Differential: the stdio transport's bounded line framing (`LineReader` over the input
//! delivered in chunks of any size) against a reference written here: split on `\n`, a line
//! longer than the limit (counting a trailing `\r`) is `TooLong`, else it loses one trailing
//! `\r` and is `Text` if UTF-8, else `NotUtf8`; a final piece without `\n` is a line if it is
//! not empty; then `Eof`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpd::fuzzing::{read_lines, Line};

fn reference(data: &[u8], max: usize) -> Vec<Line> {
    let mut out = Vec::new();
    let mut pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let last = pieces.pop().unwrap_or_default();
    let mut one = |p: &[u8]| {
        if p.len() > max {
            out.push(Line::TooLong);
            return;
        }
        let p = p.strip_suffix(b"\r").unwrap_or(p);
        out.push(match String::from_utf8(p.to_vec()) {
            Ok(s) => Line::Text(s),
            Err(_) => Line::NotUtf8,
        });
    };
    for p in pieces {
        one(p);
    }
    if !last.is_empty() {
        one(last);
    }
    out.push(Line::Eof);
    out
}

fuzz_target!(|data: &[u8]| {
    let [a, b, rest @ ..] = data else {
        return;
    };
    let max = usize::from(*a % 64);
    let chunk = usize::from(*b % 32) + 1;
    assert_eq!(
        read_lines(rest, max, chunk),
        reference(rest, max),
        "max {max} chunk {chunk}"
    );
});
