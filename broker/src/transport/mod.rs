//! Transports: bytes ⇄ typed messages. Each one turns what it reads into one
//! [`crate::mcp::jsonrpc::Incoming`] per message and hands it, with the session of the
//! authenticated principal, to the engine; it writes what the engine queues. A transport knows
//! no tools and decides nothing about them.
#![forbid(unsafe_code)]

pub mod http;
pub mod stdio;
