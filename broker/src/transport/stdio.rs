//! The stdio transport: newline-delimited JSON-RPC on stdin/stdout. stdout carries only MCP
//! messages (logs go to stderr); the process ends on stdin EOF after in-flight calls answer
//! and the worker is reaped.
#![forbid(unsafe_code)]

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::auditing::Audit;
use crate::auth::{Authenticator, Credentials, LocalProcess, Origin, Principal};
use crate::mcp::jsonrpc::{self, Incoming, INVALID_REQUEST, PARSE_ERROR};
use crate::mcp::protocol::{RpcError, INTERNAL_ERROR, RATE_LIMITED};
use crate::mcp::session::{OpenError, Session};
use crate::transport::Outbox;
use crate::worker::supervisor::Supervisor;

/// Boxed async input.
pub type Input = Box<dyn AsyncRead + Unpin + Send>;
/// Boxed async output.
pub type Output = Box<dyn AsyncWrite + Unpin + Send>;

/// The process's stdin and stdout as async streams. Pipes and sockets (the usual case: an MCP
/// client's pipes, or a systemd-accepted connection) are driven by the reactor directly; any
/// other kind (a terminal, a regular file) falls back to tokio's thread-backed stdio. The
/// reactor path avoids a blocking-pool round trip per read and per write.
pub fn process_stdio() -> (Input, Output) {
    use std::os::fd::AsFd;
    fn kind(fd: std::os::fd::BorrowedFd<'_>) -> Option<rustix::fs::FileType> {
        rustix::fs::fstat(fd)
            .ok()
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode))
    }
    let stdin = std::io::stdin();
    let input: Input = match (kind(stdin.as_fd()), stdin.as_fd().try_clone_to_owned()) {
        (Some(rustix::fs::FileType::Fifo), Ok(fd)) => {
            match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                Ok(r) => Box::new(r),
                Err(_) => Box::new(tokio::io::stdin()),
            }
        }
        (Some(rustix::fs::FileType::Socket), Ok(fd)) => match unix_stream(fd) {
            Some(s) => Box::new(s),
            None => Box::new(tokio::io::stdin()),
        },
        _ => Box::new(tokio::io::stdin()),
    };
    let stdout = std::io::stdout();
    let output: Output = match (kind(stdout.as_fd()), stdout.as_fd().try_clone_to_owned()) {
        (Some(rustix::fs::FileType::Fifo), Ok(fd)) => {
            match tokio::net::unix::pipe::Sender::from_owned_fd(fd) {
                Ok(w) => Box::new(w),
                Err(_) => Box::new(tokio::io::stdout()),
            }
        }
        (Some(rustix::fs::FileType::Socket), Ok(fd)) => match unix_stream(fd) {
            Some(s) => Box::new(s),
            None => Box::new(tokio::io::stdout()),
        },
        _ => Box::new(tokio::io::stdout()),
    };
    (input, output)
}

fn unix_stream(fd: std::os::fd::OwnedFd) -> Option<tokio::net::UnixStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true).ok()?;
    tokio::net::UnixStream::from_std(std).ok()
}

/// One line read from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line (without the newline).
    Text(String),
    /// A line longer than the limit (discarded up to its newline).
    TooLong,
    /// A line that is not UTF-8.
    NotUtf8,
    /// End of input.
    Eof,
}

/// Reads newline-delimited messages with a hard bound on line length: an oversized line is
/// discarded as it streams in, never buffered whole.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader that accepts lines of at most `max` bytes.
    pub fn new(r: R, max: usize) -> Self {
        Self {
            inner: BufReader::with_capacity(64 * 1024, r),
            max,
        }
    }

    /// The next line.
    pub async fn next(&mut self) -> std::io::Result<Line> {
        let mut buf = Vec::new();
        let mut too_long = false;
        loop {
            let avail = self.inner.fill_buf().await?;
            if avail.is_empty() {
                if buf.is_empty() && !too_long {
                    return Ok(Line::Eof);
                }
                break; // last line without a newline
            }
            let (chunk, found) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (&avail[..i], Some(i + 1)),
                None => (avail, None),
            };
            if !too_long {
                if buf.len() + chunk.len() > self.max {
                    too_long = true;
                    buf = Vec::new();
                } else {
                    buf.extend_from_slice(chunk);
                }
            }
            let consumed = found.unwrap_or(avail.len());
            self.inner.consume(consumed);
            if found.is_some() {
                break;
            }
        }
        if too_long {
            return Ok(Line::TooLong);
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        match String::from_utf8(buf) {
            Ok(s) => Ok(Line::Text(s)),
            Err(_) => Ok(Line::NotUtf8),
        }
    }
}

/// Serve one session over a reader/writer pair (stdin/stdout in production), for the
/// process that started mcpd ([`LocalProcess`]: the policy's stdio client), until end of input
/// or `stop` (the broker stops: in-flight calls get `server.stop_grace_secs`).
pub async fn serve<R, W>(
    cell: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
    input: R,
    output: W,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let policy = cell.get();
    let origin = Origin {
        transport: "stdio",
        peer: format!(
            "ppid={}",
            rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
        ),
    };
    let principal = LocalProcess
        .authenticate(&policy, &Credentials::new(origin.transport, &origin.peer))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    serve_lines(
        cell, supervisor, audit, input, output, principal, &origin, stop,
    )
    .await
}

/// One session of an authenticated `principal` over newline-delimited JSON-RPC: the stdio
/// transport and every connection of a Unix listener with `protocol = "lines"`. Lines are bounded by `max_message_bytes` (an
/// oversized line is answered `-32600` and discarded while it streams in); the session ends at
/// end of input (the peer closed) or when `stop` completes: in-flight calls are drained, the
/// session closed (`session.close`) and its worker reaped.
#[allow(clippy::too_many_arguments)]
pub async fn serve_lines<R, W>(
    cell: crate::reload::PolicyCell,
    supervisor: Supervisor,
    audit: Audit,
    input: R,
    mut output: W,
    principal: Principal,
    origin: &Origin,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let policy = cell.get();
    let max = usize::try_from(policy.max_message_bytes).unwrap_or(usize::MAX);
    let (tx, mut rx) = Outbox::channel();
    let writer = tokio::spawn(async move {
        while let Some(v) = rx.recv().await {
            let mut line = crate::mcp::jsonrpc::to_json_bytes(&v.msg);
            line.push(b'\n');
            if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                break;
            }
        }
    });
    tracing::info!(client = %principal.client, transport = origin.transport, peer = %origin.peer, "session open");
    let notice = tx.clone();
    let session = match Session::open(principal, origin, cell, supervisor, audit, tx).await {
        Ok(s) => s,
        Err(e) => {
            // The peer learns why before the connection closes (the log has the details).
            let refusal = match &e {
                OpenError::TooManySessions { .. } => RpcError::new(
                    RATE_LIMITED,
                    "Too many sessions: this client has its limit of sessions open",
                )
                .with_data(serde_json::json!({"retryAfterSecs": 1})),
                OpenError::Audit(_) => RpcError::new(
                    INTERNAL_ERROR,
                    "The audit log cannot be written; the session was refused",
                ),
            };
            notice
                .reply(None, refusal.to_response(serde_json::Value::Null))
                .await;
            drop(notice);
            let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
            return Err(std::io::Error::other(format!("session refused: {e}")));
        }
    };
    drop(notice);
    let mut reader = LineReader::new(input, max);
    tokio::pin!(stop);
    let mut stopped = false;
    loop {
        let next = tokio::select! {
            l = reader.next() => l,
            () = &mut stop => {
                stopped = true;
                break;
            }
        };
        match next {
            Ok(Line::Text(t)) if t.trim().is_empty() => {}
            Ok(Line::Text(t)) => session.handle(jsonrpc::classify(&t)),
            Ok(Line::TooLong) => session.handle(Incoming::unreadable(
                INVALID_REQUEST,
                &format!("Invalid Request: message exceeds the limit of {max} bytes"),
            )),
            Ok(Line::NotUtf8) => session.handle(Incoming::unreadable(
                PARSE_ERROR,
                "Parse error: message is not valid UTF-8",
            )),
            Ok(Line::Eof) => break,
            Err(e) => {
                tracing::warn!("{} input: {e}", origin.transport);
                break;
            }
        }
    }
    if stopped {
        // The broker stops: in-flight calls get the stop grace, then are cancelled.
        let grace = Duration::from_secs(policy.stop_grace_secs);
        tracing::info!(transport = origin.transport, peer = %origin.peer, "stopping; finishing in-flight calls (at most {} s)", grace.as_secs());
        session.stop(grace).await;
    } else {
        tracing::info!(
            transport = origin.transport,
            peer = %origin.peer,
            "input closed; finishing in-flight calls"
        );
        session
            .drain(session.call_timeout() + Duration::from_secs(1))
            .await;
    }
    session.close().await;
    drop(session);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_checked() {
        let input: &[u8] = b"{\"a\":1}\r\n\nxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n\xff\xfe\nlast";
        let mut r = LineReader::new(input, 16);
        assert_eq!(r.next().await.unwrap(), Line::Text("{\"a\":1}".into()));
        assert_eq!(r.next().await.unwrap(), Line::Text(String::new()));
        assert_eq!(r.next().await.unwrap(), Line::TooLong);
        assert_eq!(r.next().await.unwrap(), Line::NotUtf8);
        assert_eq!(r.next().await.unwrap(), Line::Text("last".into()));
        assert_eq!(r.next().await.unwrap(), Line::Eof);
    }
}
