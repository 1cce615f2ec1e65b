//! The operator's TOML policy through `Policy::from_toml` with a fake canonicalisation (no
//! file-system access: `/missing…` does not exist, every other path is its own canonical form).
//! Never panics; a policy that loads can be described, and every client's permissions, sandbox
//! spec and prompts can be derived and decided against.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use mcpd_ipc::ToolAccess;
use mcpd_policy::{Policy, Request};

fn fake_canon(p: &Path) -> std::io::Result<PathBuf> {
    if p.starts_with("/missing") {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    } else {
        Ok(p.to_path_buf())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::from_toml("fuzz.toml", text, &fake_canon) else {
        return;
    };
    let _ = policy.describe();
    let _ = policy.warnings();
    let _ = policy.stdio_client();
    let ids: Vec<_> = policy.clients().map(|(id, _)| id.clone()).collect();
    for id in &ids {
        let _ = policy.sandbox_spec(id);
        let _ = policy.prompts_for(id);
        for access in [
            ToolAccess::FileRead,
            ToolAccess::FileWrite,
            ToolAccess::Command,
        ] {
            let _ = policy.decide(
                id,
                &Request::SeeTool {
                    tool: "read_text_file",
                    access,
                },
            );
            let _ = policy.decide(
                id,
                &Request::CallTool {
                    tool: "read_text_file",
                    access,
                    paths: vec![("/srv/data/x", false), ("../y", true)],
                    exec: None,
                },
            );
        }
        let _ = policy.decide(
            id,
            &Request::ReadResource {
                path: "/etc/passwd",
            },
        );
    }
});
