//! `mcpd-worker`: one process per client session. It confines itself before it reads any
//! request, then runs that client's tools and answers over the IPC socket on fd 3.
//!
//! What it trusts: the `Confine` message from the broker (its parent, which spawned it with
//! the socket). What it does not trust: tool arguments (client-controlled), and the files it
//! touches. It links no TLS, HTTP or policy code.
// Exceptions, each block with a SAFETY comment: `confine` (raw syscalls) and the one call of
// the unsafe `confine::sanitize_process` in `serve::run` (the caller owns its precondition).
#![deny(unsafe_code)]

pub mod confine;
pub mod fuzzing;
pub mod serve;
pub mod tools;

pub use tools::{Registry, Tool, ToolContext};
