//! What a worker says about itself and its calls, checked before the broker believes any of it:
//! the tool descriptors of its `Ready` (names, sizes, schemas, path and exec arguments; a bad
//! one is dropped, not the worker), the enforcement it reports (a worker confined less than the
//! policy requires is refused), and the shape of change reports and client requests. Also the
//! bounds (`MAX_*`) and [`truncate`] for the strings it sends.
//!
//! Pure checks: no I/O, no state, no decision about what a client may call (the policy makes
//! that from names and access classes). Trusts nothing the worker sends; a lying worker gains
//! nothing here, because its kernel sandbox was derived from the policy, not from these reports.
#![forbid(unsafe_code)]

use mcpd_ipc::{Enforcement, LandlockStatus, ToolDescriptor};

use super::supervisor::SpawnError;

/// Most tools a worker may advertise.
pub const MAX_TOOLS: usize = 256;
/// Largest tool description accepted from a worker, bytes.
pub const MAX_DESCRIPTION: usize = 8 * 1024;
/// Largest tool schema accepted from a worker, bytes.
pub const MAX_SCHEMA: usize = 64 * 1024;
/// Most path arguments a tool may declare.
pub const MAX_PATH_ARGS: usize = 16;

/// At most `max` characters of `s` (a worker's string, for messages and logs).
pub(super) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A name a worker sends (tool, argument, capability): 1-64 characters from `[A-Za-z0-9_.-]`.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A JSON schema a worker sends: at most [`MAX_SCHEMA`] bytes, an object schema.
fn schema_ok(s: &str) -> bool {
    s.len() <= MAX_SCHEMA
        && serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .is_some_and(|v| v.get("type").and_then(|t| t.as_str()) == Some("object"))
}

/// Keep only well-formed descriptors from a (hostile) worker.
pub(crate) fn validate_tools(tools: Vec<ToolDescriptor>) -> Vec<ToolDescriptor> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for t in tools.into_iter().take(MAX_TOOLS) {
        let ok = valid_name(&t.name)
            && t.description.len() <= MAX_DESCRIPTION
            && t.title.as_ref().is_none_or(|x| x.len() <= 256)
            && schema_ok(&t.input_schema_json)
            && t.output_schema_json.as_deref().is_none_or(schema_ok)
            && t.path_args.len() <= MAX_PATH_ARGS
            && t.path_args.iter().all(|a| valid_name(&a.name))
            && t.exec_args.as_ref().is_none_or(|e| {
                [&e.program, &e.args, &e.shell, &e.language]
                    .iter()
                    .all(|n| n.as_deref().is_none_or(valid_name))
            })
            && t.client_capabilities.len() <= 8
            && t.client_capabilities.iter().all(|c| valid_name(c))
            && seen.insert(t.name.clone());
        if ok {
            out.push(t);
        } else {
            tracing::warn!(tool = %truncate(&t.name, 64), "worker advertised an invalid tool descriptor; ignored");
        }
    }
    out
}

/// Whether the enforcement a worker reports in `Ready` is enough: Landlock fully enforced,
/// namespaces and cleared capabilities (both unless `allow_degraded`), seccomp and
/// no_new_privs (always). `Err` says why not; the caller kills the worker.
pub(super) fn check_enforcement(
    enforcement: &Enforcement,
    allow_degraded: bool,
) -> Result<(), SpawnError> {
    if enforcement.landlock != LandlockStatus::FullyEnforced && !allow_degraded {
        return Err(SpawnError::Degraded(enforcement.landlock));
    }
    let iso = &enforcement.isolation;
    if (!iso.namespaces || !iso.capabilities_cleared) && !allow_degraded {
        return Err(SpawnError::Confine(format!(
            "worker runs without {} and degraded mode is not enabled",
            if iso.namespaces {
                "cleared capabilities"
            } else {
                "namespaces"
            }
        )));
    }
    if !enforcement.seccomp || !enforcement.no_new_privs {
        return Err(SpawnError::Confine(
            "worker reports no seccomp or no_new_privs".into(),
        ));
    }
    Ok(())
}

/// Whether a worker's change report is well-formed (a resource URI of at most 8 KiB).
pub(crate) fn change_ok(change: &mcpd_ipc::Change) -> bool {
    match change {
        mcpd_ipc::Change::ResourceUpdated { uri } => uri.len() <= 8192,
        _ => true,
    }
}

/// Whether the parameters of a worker's client request are a JSON object of at most 1 MiB.
pub(crate) fn client_request_ok(request: &mcpd_ipc::ClientRequestKind) -> bool {
    match request {
        mcpd_ipc::ClientRequestKind::Sampling { params_json }
        | mcpd_ipc::ClientRequestKind::Elicitation { params_json } => {
            params_json.len() <= 1024 * 1024
                && matches!(
                    serde_json::from_str::<serde_json::Value>(params_json),
                    Ok(serde_json::Value::Object(_))
                )
        }
        mcpd_ipc::ClientRequestKind::Roots => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mcpd_ipc::{ToolAccess, ToolAnnotations};

    fn desc(name: &str, schema: &str) -> ToolDescriptor {
        ToolDescriptor {
            name: name.into(),
            title: None,
            description: "d".into(),
            input_schema_json: schema.into(),
            output_schema_json: None,
            annotations: ToolAnnotations::default(),
            access: ToolAccess::FileRead,
            path_args: vec![],
            exec_args: None,
            client_capabilities: vec![],
            task_support: mcpd_ipc::TaskSupport::Forbidden,
        }
    }

    #[test]
    fn hostile_descriptors_are_dropped() {
        let ok = r#"{"type":"object"}"#;
        let tools = vec![
            desc("good", ok),
            desc("good", ok),
            desc("bad name!", ok),
            desc("arr", r#"{"type":"array"}"#),
            desc("notjson", "{"),
            desc(&"x".repeat(65), ok),
        ];
        let v = validate_tools(tools);
        assert_eq!(
            v.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            vec!["good"]
        );
    }
}
