//! The parsers the broker runs on hostile input, for the fuzz targets in `fuzz/` (a separate
//! cargo workspace). Not an API: nothing else may use it, and it may change with the targets.
//!
//! Each entry point is a thin wrapper around the code path the broker itself runs:
//! * client bytes: [`classify`] (the one JSON-RPC classifier of every transport),
//!   [`to_json_bytes`] and [`json_len`] (how every JSON answer is written and measured),
//!   [`stateless_meta`] (the stateless-era `_meta` envelope), [`read_lines`] (the stdio framing,
//!   [`LineReader`] over a byte slice delivered in chunks);
//! * client-carried state: [`seal`] / [`open`] (the HMAC-sealed `requestState`, keyed as at
//!   broker start with a random key drawn on first use);
//! * worker messages after decoding: [`result_json`], [`validate_tools`], [`change_ok`],
//!   [`client_request_ok`];
//! * HTTP credentials: [`jwt_verifier`] (the listener's [`JwtVerifier`]: a policy with
//!   `[auth.jwt]` loaded from TOML as at start, then `Authorization` header values through
//!   [`JwtVerifier::authenticate`]);
//! * stateless-era HTTP headers: [`param_header_value`] (one `Mcp-Param-*` value decoded) and
//!   [`check_param_headers`] (a tool's `x-mcp-header` arguments against the request headers).
#![forbid(unsafe_code)]

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, ReadBuf};

pub use crate::auth::Principal;
pub use crate::mcp::jsonrpc::{classify, json_len, to_json_bytes, Id, Incoming};
pub use crate::transport::stdio::{Line, LineReader};

/// The stateless-era envelope check: `Ok` with the request's log level, or the JSON-RPC error
/// code it is refused with.
pub fn stateless_meta(params: &Map<String, Value>) -> Result<Option<mcpd_ipc::LogLevel>, i64> {
    crate::mcp::stateless::stateless_meta(params)
        .map(|s| s.log_level)
        .map_err(|e| e.code)
}

/// Whether a request selects the stateless era.
pub fn is_stateless(method: &str, params: &Map<String, Value>) -> bool {
    crate::mcp::stateless::is_stateless(method, params)
}

/// A reader over a byte slice that returns at most `chunk` bytes per read (at least one), so
/// that line boundaries fall anywhere relative to the reads.
#[derive(Debug)]
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.max(1).min(self.data.len()).min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Every line [`LineReader`] (bounded to `max` bytes) reads from `data` delivered `chunk` bytes
/// per read, up to and including the final [`Line::Eof`]. The reader never waits (the slice is
/// always ready), so it is driven without a runtime; a read that would wait is a bug and panics.
pub fn read_lines(data: &[u8], max: usize, chunk: usize) -> Vec<Line> {
    let mut reader = LineReader::new(Chunked { data, chunk }, max);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    // Each line consumes at least one byte, so there are at most len + 1 of them.
    for _ in 0..=data.len() {
        let mut next = std::pin::pin!(reader.next());
        let line = match next.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(line)) => line,
            Poll::Ready(Err(e)) => panic!("reading a byte slice failed: {e}"),
            Poll::Pending => panic!("reading a byte slice would wait"),
        };
        let eof = line == Line::Eof;
        out.push(line);
        if eof {
            return out;
        }
    }
    panic!("more lines than bytes");
}

/// Seal `payload` for `principal` and `scope`, as the broker does (the key is drawn once).
pub fn seal(principal: &str, scope: &str, payload: &[u8]) -> Option<String> {
    crate::mcp::seal::ensure().ok()?;
    crate::mcp::seal::seal(principal, scope, payload)
}

/// Open a sealed `requestState`, as the broker does; `None` for anything it did not seal for
/// this principal and scope.
pub fn open(principal: &str, scope: &str, token: &str) -> Option<Vec<u8>> {
    crate::mcp::seal::ensure().ok()?;
    crate::mcp::seal::open(principal, scope, token)
}

/// The MCP JSON of a (hostile) worker tool result; `None` if it is malformed.
pub fn result_json(r: mcpd_ipc::ToolResult) -> Option<Value> {
    crate::mcp::results::result_json(r)
}

/// The well-formed descriptors among those a (hostile) worker advertised.
pub fn validate_tools(tools: Vec<mcpd_ipc::ToolDescriptor>) -> Vec<mcpd_ipc::ToolDescriptor> {
    crate::worker::validate::validate_tools(tools)
}

/// Whether a worker's change notification is acceptable.
pub fn change_ok(change: &mcpd_ipc::Change) -> bool {
    crate::worker::validate::change_ok(change)
}

/// Whether a worker's request to the client is acceptable.
pub fn client_request_ok(request: &mcpd_ipc::ClientRequestKind) -> bool {
    crate::worker::validate::client_request_ok(request)
}

/// The HTTP listener's bearer-token authenticator over one policy, built as `serve` builds it.
#[derive(Debug)]
pub struct JwtVerifier {
    policy: crate::reload::PolicyCell,
    auth: crate::auth::jwt::HttpAuthenticator,
    /// `HttpAuthenticator::new` spawns its reload listener on the runtime it is made in.
    _runtime: tokio::runtime::Runtime,
}

/// A verifier for the policy `toml` (named `name`): loaded as the broker loads its file (paths
/// canonicalised on the real file system, the `[auth.jwt]` key files read and checked), then
/// the listener's `HttpAuthenticator` over it (no `[http] client`: every peer needs a token).
/// `Err` with the loader's message if the policy or its keys are refused.
pub fn jwt_verifier(name: &str, toml: &str) -> Result<JwtVerifier, String> {
    let policy = mcpd_policy::Policy::from_toml(name, toml, &crate::commands::canon)
        .map_err(|e| e.to_string())?;
    if let Some(j) = policy.jwt() {
        crate::auth::jwt::load_keys(j)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    let policy = crate::reload::PolicyCell::new(policy);
    let auth = {
        let _in = runtime.enter();
        crate::auth::jwt::HttpAuthenticator::new(None, &policy)
    };
    Ok(JwtVerifier {
        policy,
        auth,
        _runtime: runtime,
    })
}

impl JwtVerifier {
    /// The principal an HTTP request with this `Authorization` header (`None`: no header)
    /// speaks for, or the short reason it is refused (`InvalidToken`'s reason code;
    /// `missing_token`, `no_client` for the other refusals).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, &'static str> {
        use crate::auth::{AuthError, Authenticator as _, Credentials};
        let mut creds = Credentials::new("http", "192.0.2.1:40000");
        creds.authorization = authorization;
        self.auth
            .authenticate(&self.policy.get(), &creds)
            .map_err(|e| match e {
                AuthError::InvalidToken { reason, .. } => reason,
                AuthError::MissingToken { .. } => "missing_token",
                AuthError::NoClient { .. } => "no_client",
                AuthError::Certificate { .. } => "certificate",
            })
    }
}

/// One `Mcp-Param-*` header value decoded as the stateless transport decodes it (the
/// `=?base64?…?=` form or a literal); `None` when the base64 form does not decode.
pub fn param_header_value(v: &str) -> Option<String> {
    crate::transport::http::stateless::param_header_value(v).ok()
}

/// The stateless transport's check of a tool's `x-mcp-header` arguments against the request
/// headers, each `(name, value)` pair appended in order as hyper would deliver them (pairs
/// that are not a valid header name or value are dropped, as hyper refuses them). `Err` with
/// the header named in the -32020 mismatch.
pub fn check_param_headers(
    schema: &Value,
    args: Option<&Map<String, Value>>,
    headers: &[(&[u8], &[u8])],
) -> Result<(), String> {
    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    crate::transport::http::stateless::check_param_headers(schema, args, &map)
}
