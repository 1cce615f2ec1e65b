//! File tools, drop-in compatible with `@modelcontextprotocol/server-filesystem`.
//! (being written)

/// Register the file tools.
pub fn register(_r: &mut super::Registry) {}
