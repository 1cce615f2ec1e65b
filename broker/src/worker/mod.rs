//! Worker supervision: spawning confined `mcpd-worker` processes (one per session), the sandbox
//! spec they are given, the cgroups that bound them, and the typed IPC to them. Trusts no
//! message a worker sends: every one is bounded and validated before the engine sees it.
#![forbid(unsafe_code)]

pub mod cgroup;
pub mod sandbox;
pub mod supervisor;
