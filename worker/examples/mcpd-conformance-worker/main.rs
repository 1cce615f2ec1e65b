//! `mcpd-conformance-worker`: the built-in worker plus the `conformance` tool set, the fixtures
//! the official MCP conformance suite expects (`fixtures.rs`). A test binary, never installed:
//! the production `mcpd-worker` does not contain the fixtures and refuses `--toolset
//! conformance` at start-up.
//!
//! ```text
//! cargo build --example mcpd-conformance-worker
//! ./target/debug/mcpd serve --http 127.0.0.1:8080 --toolset conformance \
//!     --worker ./target/debug/examples/mcpd-conformance-worker
//! ```
//!
//! It confines itself exactly like `mcpd-worker` (same library run loop); it trusts the
//! broker's `Confine` message and nothing a client sends.
#![forbid(unsafe_code)]

mod fixtures;

fn main() -> std::process::ExitCode {
    let mut registry = mcpd_worker::Registry::builtin();
    registry.add_toolset("conformance", fixtures::register);
    mcpd_worker::serve::run(registry)
}
