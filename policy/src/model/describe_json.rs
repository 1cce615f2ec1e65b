//! `mcpd check-config --json`: the effective policy as one JSON document, for tools and
//! reviews (the same facts as [`Policy::describe`]; numbers in base units, `null` for
//! unlimited). Does no I/O; decides nothing.

use serde_json::{json, Value};

use super::types::{Policy, ToolSet};

impl Policy {
    /// The effective policy as JSON.
    pub fn describe_json(&self) -> Value {
        let clients: serde_json::Map<String, Value> = self
            .clients
            .iter()
            .map(|(id, p)| {
                let l = &p.limits;
                let e = &p.exec;
                let paths = |v: &[std::path::PathBuf]| -> Vec<String> {
                    v.iter().map(|x| x.display().to_string()).collect()
                };
                (
                    id.to_string(),
                    json!({
                        "read": paths(&p.read),
                        "write": paths(&p.write),
                        "global_write": p.global_write,
                        "tools": match &p.tools {
                            ToolSet::All => json!("*"),
                            ToolSet::Only(s) => json!(s),
                        },
                        "operator_tools": p.operator_tools,
                        "exec": {
                            "programs": e.programs.iter().map(|g| json!({
                                "name": g.name,
                                "path": g.path.display().to_string(),
                                "arg_patterns": g.arg_patterns.len(),
                            })).collect::<Vec<_>>(),
                            "shell": e.shell.as_ref().map(|s| s.display().to_string()),
                            "languages": e.languages.iter().map(|x| x.name.clone()).collect::<Vec<_>>(),
                            "network": e.network,
                        },
                        "worker_uid": self.worker_uid(id),
                        "limits": {
                            "command_timeout_secs": l.command.timeout_secs,
                            "max_lifetime_secs": l.command.max_lifetime_secs,
                            "cpu_seconds": l.command.cpu_seconds,
                            "memory_bytes": l.memory_bytes,
                            "max_processes": l.max_processes,
                            "max_concurrent_calls": l.max_concurrent_calls,
                            "call_timeout_secs": l.call_timeout_secs,
                            "calls_per_minute": (l.calls_per_minute > 0).then_some(l.calls_per_minute),
                            "max_sessions": l.max_sessions,
                            "max_read_bytes": l.tool.max_read_bytes,
                            "max_output_bytes": l.tool.max_output_bytes,
                            "max_entries": l.tool.max_entries,
                            "max_matches": l.tool.max_matches,
                            "max_open_files": l.rlimits.max_open_files,
                            "max_file_size": l.rlimits.max_file_size,
                            "address_space": l.rlimits.address_space,
                        },
                    }),
                )
            })
            .collect();
        let h = &self.http;
        json!({
            "warnings": self.warnings,
            "server": {
                "max_message_bytes": self.max_message_bytes,
                "worker_idle_secs": self.worker_idle_secs,
                "ipc_spin_us": self.ipc_spin_us,
                "stop_grace_secs": self.stop_grace_secs,
                "instance": self.instance,
                "allow_degraded_sandbox": self.allow_degraded_sandbox,
                "worker_uids": self.worker_uids.to_string(),
                "worker_tmp_bytes": self.worker_tmp_bytes,
                "worker": self.worker_path.as_ref().map(|p| p.display().to_string()),
            },
            "stdio_client": self.stdio_client.as_ref().map(ToString::to_string),
            "http": h.listen.map(|addr| json!({
                "listen": addr.to_string(),
                "client": h.client.as_ref().map(ToString::to_string),
                "session_idle_secs": h.session_idle_secs,
                "max_sessions": h.max_sessions,
                "max_connections": h.max_connections,
                "max_connections_per_ip": h.max_connections_per_ip,
                "allowed_hosts": h.allowed_hosts,
                "state_key_file": h.state_key_file.as_ref().map(|p| p.display().to_string()),
                "state_key_previous_file": h.state_key_previous_file.as_ref().map(|p| p.display().to_string()),
                "state_ttl_secs": h.state_ttl_secs,
                "trusted_proxies": h.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "forwarded_header": h.forwarded_header.name(),
                "ws_ping_secs": h.ws_ping_secs,
                "tls": h.tls.as_ref().map(|t| json!({
                    "cert": t.cert.display().to_string(),
                    "min_version": t.min_version.as_str(),
                    "client_ca": t.client_ca.as_ref().map(|c| c.display().to_string()),
                })),
            })),
            "auth_jwt": self.jwt.as_ref().map(|j| json!({
                "issuer": j.issuer,
                "audience": j.audience,
                "principal_claim": j.principal_claim,
                "roles_claim": j.roles_claim,
                "leeway_secs": j.leeway_secs,
                "jwks": j.jwks.as_ref().map(|p| p.display().to_string()),
                "keys": j.keys.iter().map(|k| json!({"kid": k.kid, "alg": k.alg})).collect::<Vec<_>>(),
            })),
            "unix": {
                "path": self.unix.path.as_ref().map(|p| p.display().to_string()),
                "systemd": self.unix.systemd,
                "mode": format!("{:04o}", self.unix.mode),
                "max_connections": self.unix.max_connections,
                "max_connections_per_uid": self.unix.max_connections_per_uid,
            },
            "dbus": {
                "bus": self.dbus.bus.map(super::DbusBus::as_str),
                "address": self.dbus.address,
                "name": self.dbus.name,
                "max_message_bytes": self.dbus.max_message_bytes,
                "max_callers": self.dbus.max_callers,
            },
            "metrics": {
                "listen": self.metrics.listen.as_ref().map(ToString::to_string),
                "allow_non_loopback": self.metrics.allow_non_loopback,
            },
            "audit": self.audit.as_ref().map(|a| json!({
                "path": a.path.display().to_string(),
                "strict": a.strict,
                "rotate_bytes": a.rotate_bytes,
                "checkpoint_key": a.checkpoint_key.as_ref().map(|p| p.display().to_string()),
                "fail_open": a.fail_open,
                "journald": a.journald,
            })),
            "clients": clients,
        })
    }
}
