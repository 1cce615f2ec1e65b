//! `mcpd-worker`: one process per client session. It confines itself before it reads any
//! request, then runs that client's tools and answers over the IPC socket on fd 3.
//!
//! What it trusts: the `Confine` message from the broker (its parent, which spawned it with
//! the socket). What it does not trust: tool arguments (client-controlled), and the files it
//! touches. It links no TLS, HTTP or policy code.
#![deny(unsafe_code)] // exceptions: `confine` (raw syscalls), each block with a SAFETY comment

pub mod confine;
pub mod serve;
pub mod tools;

pub use tools::{Registry, Tool, ToolContext};
