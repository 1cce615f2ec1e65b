//! The `mcpd-worker` executable: the built-in tools, served by the library's run loop.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    mcpd_worker::serve::run(mcpd_worker::Registry::builtin())
}
