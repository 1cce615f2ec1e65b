//! Worker supervision: spawning confined `mcpd-worker` processes (one per session), the sandbox
//! spec they are given, the cgroups that bound them, and the typed IPC to them. Trusts no
//! message a worker sends: every one is bounded and validated before the engine sees it.
//!
//! Files, in reading order:
//! * `supervisor.rs`: [`supervisor::Supervisor`] starts a worker (one spawner thread), puts it
//!   into its cgroup, runs the `Confine` → `Ready` handshake, and reaps it; the zone's public
//!   names are re-exported there;
//! * `handle.rs`: the live [`supervisor::Worker`], its calls and the routing of what it sends;
//! * `validate.rs`: the checks on what a worker says (descriptors, enforcement, requests);
//! * `sandbox.rs`: completing the sandbox spec the policy derived;
//! * `probe.rs`: the worker executable's start-up check (`--version` handshake);
//! * `cgroup/`: per-worker control groups (one trait, a v1 and a v2 implementation).
#![forbid(unsafe_code)]

pub mod cgroup;
mod handle;
pub mod probe;
pub mod sandbox;
pub mod supervisor;
pub(crate) mod validate;
