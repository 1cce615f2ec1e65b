//! The stateless-era (2026-07-28) `Mcp-Param-*` headers: a tool whose `inputSchema` mirrors
//! arguments into headers (`"x-mcp-header": "<Name>"`, on properties reached through a chain of
//! `properties`), a `tools/call`'s arguments, and the header lines of the request, through the
//! HTTP transport's `check_param_headers` (`mcpd::fuzzing`); and any header value through its
//! decoder `param_header_value`.
//!
//! Differential, against the specification's rules written here:
//! * decoding: `=?base64?X?=` decodes iff X is valid standard base64 (the `base64` crate's
//!   `STANDARD` engine, which takes only canonical encodings: padded, no stray bits) of UTF-8;
//!   anything else is the literal value; every string survives the encoding a client applies;
//! * matching: every annotated argument with a string, integer or boolean value must have
//!   exactly one header line, of header-safe characters, whose value (trimmed, decoded) is the
//!   argument (decimal for an integer, `true`/`false`); then the call is accepted, and if any
//!   is missing, repeated, unreadable or different it is refused. Left open (either outcome):
//!   a tool whose annotations the specification makes invalid (bad or duplicate header names,
//!   types other than string/integer/boolean, a non-string `x-mcp-header`), float or
//!   out-of-range integer values, an integer header that is equal only numerically (`42.0`), a
//!   header sent for an absent or null argument.
#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use mcpd::fuzzing::{check_param_headers, param_header_value};
use serde_json::{json, Map, Value};

const NAMES: &[&str] = &["region", "count", "flag", "query", "tenant", "a", "nested"];
const HEADERS: &[&str] = &[
    "Region",
    "region",
    "Count",
    "Flag",
    "Tenant-Id",
    "X",
    "",
    "Re gion",
    "Région",
    "a:b",
];
const VALUES: &[&str] = &[
    "eu-west",
    "us-west1",
    " padded ",
    "Hello, 世界",
    "line1\nline2",
    "=?base64?literal?=",
    "=?base64?ZXUtd2VzdA==?=",
    "",
    "a,b",
    "\t",
    "SGVsbG8=",
];
const MAX_SAFE: i64 = (1 << 53) - 1;

/// The reference decoder: the sentinel form is standard base64 of UTF-8, else a literal.
fn reference_decode(v: &str) -> Option<String> {
    if v.len() >= 11 && v.starts_with("=?base64?") && v.ends_with("?=") {
        let inner = &v[9..v.len() - 2];
        let bytes = STANDARD.decode(inner).ok()?;
        // Valid standard base64 is exactly what encoding some bytes gives.
        assert_eq!(
            STANDARD.encode(&bytes),
            inner,
            "STANDARD took a non-canonical encoding"
        );
        String::from_utf8(bytes).ok()
    } else {
        Some(v.to_string())
    }
}

fn check_decode(v: &str) {
    assert_eq!(param_header_value(v), reference_decode(v), "decoding {v:?}");
}

/// The client's encoding of a header value (the specification's Value Encoding).
fn client_encode(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !s.starts_with(' ')
        && !s.ends_with(' ')
        && !(s.starts_with("=?base64?") && s.ends_with("?="));
    if plain || s.is_empty() {
        s.to_string()
    } else {
        format!("=?base64?{}?=", STANDARD.encode(s))
    }
}

#[derive(Arbitrary, Debug)]
enum Name {
    Pick(u8),
    Any(String),
}

impl Name {
    fn get(&self, list: &[&str]) -> String {
        match self {
            Name::Pick(i) => list[usize::from(*i) % list.len()].to_string(),
            Name::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Arg {
    Str(String),
    Pick(u8),
    Int(i64),
    Small(i8),
    Bool(bool),
    Float(f64),
    Null,
    Array,
}

impl Arg {
    fn value(&self) -> Value {
        match self {
            Arg::Str(s) => json!(s),
            Arg::Pick(i) => json!(VALUES[usize::from(*i) % VALUES.len()]),
            Arg::Int(i) => json!(i),
            Arg::Small(i) => json!(i),
            Arg::Bool(b) => json!(b),
            Arg::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Arg::Null => Value::Null,
            Arg::Array => json!(["x"]),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Ty {
    Absent,
    String,
    Integer,
    Boolean,
    Number,
    Object,
}

/// How a header value is written.
#[derive(Arbitrary, Debug)]
enum Enc {
    /// As a conforming client writes it.
    Client,
    /// Always the base64 form (standard, padded).
    Base64,
    /// Base64 without padding, or in the URL alphabet.
    NoPad,
    UrlAlphabet,
    /// The canonical text as it is, whatever it contains.
    Literal,
    /// The client's value with spaces or tabs around it.
    Wrapped(bool),
    /// An integer written otherwise (`42.0`, `+42`, `042`, `4.2e1`).
    Numeric(u8),
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Send {
    Omit,
    Once(Enc),
    Twice(Enc, Enc),
}

#[derive(Arbitrary, Debug)]
struct Prop {
    name: Name,
    header: Option<Name>,
    /// `x-mcp-header` given as a non-string.
    header_not_string: bool,
    ty: Ty,
    value: Option<Arg>,
    send: Send,
    /// Header name case: mcp-param-x, Mcp-Param-X, MCP-PARAM-X, as written.
    case: u8,
    children: Vec<Prop>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    decode: Vec<String>,
    roundtrip: Vec<String>,
    props: Vec<Prop>,
    /// `arguments` absent (or not an object).
    no_args: bool,
    noise: Vec<(Name, Vec<u8>)>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Want {
    Accept,
    Either,
    Refuse,
}

struct Built {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    want: Want,
    /// The annotated header names (lower case), to tell invalid (duplicate) annotations.
    annotated: Vec<String>,
    invalid: bool,
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The text a value mirrors as (string as is, integer in decimal, boolean), if it is one of
/// those.
fn canonical(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => n.as_i64().map(|i| i.to_string()),
        _ => None,
    }
}

fn encode(e: &Enc, text: &str) -> Vec<u8> {
    match e {
        Enc::Client => client_encode(text).into_bytes(),
        Enc::Base64 => format!("=?base64?{}?=", STANDARD.encode(text)).into_bytes(),
        Enc::NoPad => format!("=?base64?{}?=", STANDARD_NO_PAD.encode(text)).into_bytes(),
        Enc::UrlAlphabet => format!("=?base64?{}?=", URL_SAFE.encode(text)).into_bytes(),
        Enc::Literal => text.as_bytes().to_vec(),
        Enc::Wrapped(tab) => {
            let pad = if *tab { "\t" } else { "  " };
            format!("{pad}{}{pad}", client_encode(text)).into_bytes()
        }
        Enc::Numeric(k) => match text.parse::<i64>() {
            Ok(i) => match k % 4 {
                0 => format!("{i}.0"),
                1 => format!("+{i}"),
                2 => format!("0{i}"),
                _ => format!("{i}e0"),
            }
            .into_bytes(),
            Err(_) => text.as_bytes().to_vec(),
        },
        Enc::Text(t) => t.as_bytes().to_vec(),
        Enc::Bytes(b) => b.clone(),
    }
}

/// What a header value hyper delivers reads as: `None` if hyper refuses it (a control
/// character), `Some(None)` if it is not header-safe text.
fn delivered(value: &[u8]) -> Option<Option<String>> {
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return None;
    }
    if value.iter().any(|&b| b >= 0x80) {
        return Some(None);
    }
    Some(Some(String::from_utf8_lossy(value).into_owned()))
}

/// How one annotated argument with canonical text `text` fares against the delivered lines
/// `lines` of its header.
fn judge(value: &Value, text: &str, lines: &[Option<String>]) -> Want {
    let [line] = lines else {
        return Want::Refuse; // missing, or repeated
    };
    let Some(line) = line else {
        return Want::Refuse; // not header-safe
    };
    let Some(got) = reference_decode(line.trim_matches([' ', '\t'])) else {
        return Want::Refuse;
    };
    if got == text {
        return Want::Accept;
    }
    if let Some(i) = value.as_i64() {
        let numeric = got.parse::<f64>().is_ok_and(|f| f == i as f64)
            || got.parse::<i64>().is_ok_and(|g| g == i);
        if numeric {
            return Want::Either;
        }
    }
    Want::Refuse
}

/// Add `props` (first of each name wins) to `schema`/`args`, their header lines to `b`.
fn build(
    props: &[Prop],
    depth: usize,
    schema: &mut Map<String, Value>,
    args: Option<&mut Map<String, Value>>,
    b: &mut Built,
    pending: &mut Vec<(String, Option<Value>, bool)>,
) {
    let mut args = args;
    for p in props.iter().take(8) {
        let name = p.name.get(NAMES);
        if schema.contains_key(&name) {
            continue;
        }
        let mut def = Map::new();
        let ty = match p.ty {
            Ty::Absent => None,
            Ty::String => Some("string"),
            Ty::Integer => Some("integer"),
            Ty::Boolean => Some("boolean"),
            Ty::Number => Some("number"),
            Ty::Object => Some("object"),
        };
        if let Some(t) = ty {
            def.insert("type".into(), json!(t));
        }
        let value = p.value.as_ref().map(Arg::value);
        let nested = depth < 3 && !p.children.is_empty();
        let mut child_args = (value.is_none() && nested && args.is_some()).then(Map::new);
        if nested {
            let mut child_schema = Map::new();
            build(
                &p.children,
                depth + 1,
                &mut child_schema,
                child_args.as_mut(),
                b,
                pending,
            );
            def.insert("properties".into(), Value::Object(child_schema));
        }
        let present = value
            .clone()
            .or_else(|| child_args.clone().map(Value::Object));
        if let Some(h) = &p.header {
            let hname = h.get(HEADERS);
            if p.header_not_string {
                def.insert("x-mcp-header".into(), json!(hname.len()));
                b.invalid = true;
            } else {
                def.insert("x-mcp-header".into(), json!(hname));
                let bad_name = hname.is_empty() || !hname.bytes().all(tchar);
                let bad_type =
                    !matches!(p.ty, Ty::Absent | Ty::String | Ty::Integer | Ty::Boolean) || nested;
                if bad_name || bad_type {
                    b.invalid = true;
                }
                b.annotated.push(hname.to_ascii_lowercase());
                let header = match p.case % 4 {
                    0 => format!("mcp-param-{}", hname.to_ascii_lowercase()),
                    1 => format!("Mcp-Param-{hname}"),
                    2 => format!("MCP-PARAM-{}", hname.to_ascii_uppercase()),
                    _ => format!("mCP-pARAM-{hname}"),
                };
                let text = present.as_ref().and_then(canonical).unwrap_or_default();
                let encs: Vec<&Enc> = match &p.send {
                    Send::Omit => vec![],
                    Send::Once(e) => vec![e],
                    Send::Twice(e, f) => vec![e, f],
                };
                for e in encs {
                    b.headers
                        .push((header.clone().into_bytes(), encode(e, &text)));
                }
                pending.push((hname.to_ascii_lowercase(), present.clone(), args.is_some()));
            }
        }
        schema.insert(name.clone(), Value::Object(def));
        if let Some(a) = args.as_deref_mut() {
            if let Some(v) = present {
                a.insert(name, v);
            }
        }
    }
}

fn expected(input: &Input) -> (Value, Option<Map<String, Value>>, Built) {
    let mut b = Built {
        headers: Vec::new(),
        want: Want::Accept,
        annotated: Vec::new(),
        invalid: false,
    };
    let mut props = Map::new();
    let mut args = Map::new();
    let mut pending = Vec::new();
    build(
        &input.props,
        0,
        &mut props,
        (!input.no_args).then_some(&mut args),
        &mut b,
        &mut pending,
    );
    for (n, v) in &input.noise {
        b.headers.push((n.get(HEADERS).into_bytes(), v.clone()));
        let n = n.get(&[
            "mcp-param-region",
            "Mcp-Param-Count",
            "x-other",
            "mcp-param-",
        ]);
        b.headers.push((n.into_bytes(), v.clone()));
    }
    // The delivered lines of each header name (lower case), as hyper would pass them on.
    let lines_of = |hname: &str| -> Vec<Option<String>> {
        let want = format!("mcp-param-{hname}");
        b.headers
            .iter()
            .filter(|(n, _)| {
                String::from_utf8_lossy(n).to_ascii_lowercase() == want
                    && n.iter().all(|&c| tchar(c))
            })
            .filter_map(|(_, v)| delivered(v))
            .collect()
    };
    let mut want = Want::Accept;
    for (hname, value, with_args) in &pending {
        let value = value.as_ref().filter(|_| *with_args);
        let w = match value {
            None | Some(Value::Null) if lines_of(hname).is_empty() => Want::Accept,
            None | Some(Value::Null) => Want::Either,
            Some(v @ Value::Number(n)) => match n.as_i64() {
                Some(i) if (-MAX_SAFE..=MAX_SAFE).contains(&i) => {
                    judge(v, &i.to_string(), &lines_of(hname))
                }
                _ => Want::Either,
            },
            Some(v @ (Value::String(_) | Value::Bool(_))) => {
                let text = canonical(v).unwrap_or_default();
                judge(v, &text, &lines_of(hname))
            }
            Some(_) => Want::Either,
        };
        want = want.max(w);
    }
    let distinct: BTreeSet<&String> = b.annotated.iter().collect();
    if distinct.len() != b.annotated.len() {
        b.invalid = true;
    }
    if b.invalid {
        want = Want::Either;
    }
    b.want = want;
    let schema = json!({"type": "object", "properties": props});
    (schema, (!input.no_args).then_some(args), b)
}

fuzz_target!(|input: Input| {
    for v in &input.decode {
        check_decode(v);
    }
    for s in &input.roundtrip {
        let enc = format!("=?base64?{}?=", STANDARD.encode(s));
        assert_eq!(param_header_value(&enc).as_deref(), Some(s.as_str()));
        check_decode(&enc);
        check_decode(&client_encode(s));
    }
    let (schema, args, b) = expected(&input);
    for (_, v) in &b.headers {
        if let Some(Some(text)) = delivered(v) {
            check_decode(text.trim_matches([' ', '\t']));
        }
    }
    let headers: Vec<(&[u8], &[u8])> = b
        .headers
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect();
    let got = check_param_headers(&schema, args.as_ref(), &headers);
    match (b.want, &got) {
        (Want::Accept, Err(h)) => panic!(
            "refused ({h}) headers that match their arguments: {schema} {args:?} {:?}",
            b.headers
        ),
        (Want::Refuse, Ok(())) => panic!(
            "accepted a header that does not match its argument: {schema} {args:?} {:?}",
            b.headers
        ),
        (Want::Refuse, Err(h)) => assert!(
            h.strip_prefix("Mcp-Param-")
                .is_some_and(|n| b.annotated.contains(&n.to_ascii_lowercase())),
            "{h} names no annotated header"
        ),
        _ => {}
    }
});
