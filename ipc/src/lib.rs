//! Typed broker ⇄ worker IPC for mcpd.
//!
//! What it does: defines the two message enums ([`BrokerToWorker`], [`WorkerToBroker`]), the
//! sandbox specification the broker sends first ([`SandboxSpec`]), a sans-IO length-prefixed
//! codec with frames bounded by [`MAX_FRAME`] (checked before any allocation), and — behind
//! the `channel` feature — an async channel over an `AF_UNIX`/`SOCK_SEQPACKET` socket plus a
//! blocking one-shot API for the worker's confinement handshake.
//!
//! What it does not do: decide anything. It does not trust its peer: every decoded value is
//! only well-formed, not meaningful; the broker still treats every worker message as hostile
//! and validates it (sizes, ids, state) before acting on it.
//!
//! Wire format: each frame is `u32` little-endian payload length followed by the `postcard`
//! encoding of one message. Frames may span several packets; packets are at most
//! [`MAX_PACKET`] bytes.
#![deny(unsafe_code)] // one audited exception: `channel::register` (tokio fd registration)

pub mod codec;
pub mod messages;
pub mod text;

#[cfg(feature = "channel")]
pub mod channel;

pub use codec::{decode, encode, CodecError, FrameDecoder, FRAME_HEADER, MAX_FRAME, MAX_PACKET};
pub use messages::*;

/// Version of this IPC protocol. The broker sends it in [`BrokerToWorker::Confine`]; a worker
/// built for another version refuses to start (reply [`WorkerToBroker::ConfineFailed`]).
pub const PROTOCOL_VERSION: u32 = 6;

/// The file descriptor number on which a worker finds its end of the socketpair.
pub const WORKER_FD: i32 = 3;
