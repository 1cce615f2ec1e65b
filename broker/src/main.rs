//! The `mcpd` binary: everything is in the library ([`mcpd::main`]).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    mcpd::main()
}
