//! The MCP engine: protocol constants and both eras, JSON-RPC framing, the session engine (one
//! module per method family), the relay of server→client requests, the validation of worker
//! results, and the audit record that is written before any reply leaves.
//!
//! Sans transport: it takes typed [`jsonrpc::Incoming`] messages from a transport and answers
//! through the session's bounded outbox. Trusts nothing it is given: client messages and worker
//! answers are both hostile input.
#![forbid(unsafe_code)]

pub mod backend;
mod client_requests;
#[cfg(test)]
mod engine_tests;
#[cfg(test)]
pub(crate) mod fake_worker;
pub mod jsonrpc;
mod lifecycle;
pub mod protocol;
mod providers;
pub mod quota;
mod record;
pub(crate) mod results;
pub mod seal;
pub mod session;
pub mod stateless;
mod stateless_requests;
mod subscriptions;
mod task_requests;
pub mod tasks;
mod tools;

/// A client- or worker-supplied string made safe to echo in a message or a log: control
/// characters removed, at most 128 characters.
pub fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(128).collect()
}
