//! The validated, immutable policy: its types, how it is built and merged from a parsed
//! configuration, the quick-start (CLI) overlay, the HTTP transport settings, and the sandbox
//! spec derived from it.
//!
//! One file per part: `types` (the model, defaults, read-only views), `build` (validation and
//! canonicalisation), `merge` (grants and limits of a client and its roles), `quick_start`,
//! `http`, `sandbox`. Does no I/O (paths go through the caller's `Canonicalize`); decisions are
//! in `crate::decide`. Trusts the operator's configuration only after `build`'s checks.

mod build;
mod http;
mod merge;
mod quick_start;
mod sandbox;
mod types;

pub(crate) use build::canonical;
pub use types::*;
