//! Resolution of client paths beneath open root directories (openat2 RESOLVE_BENEATH).
//! (being written)

/// The client's allowed roots.
#[derive(Debug, Default)]
pub struct Roots {}

impl Roots {
    /// Open the roots named by the spec.
    pub fn open(_spec: &mcpd_ipc::SandboxSpec) -> std::io::Result<Self> {
        Ok(Self {})
    }
}
