//! Worker self-confinement: process hygiene, rlimits, `no_new_privs`, Landlock, seccomp-bpf.
//!
//! # What it does
//!
//! The worker calls, in this fixed order (docs/ARCHITECTURE.md "Worker start-up"):
//!
//! 1. [`sanitize_process`]: close every inherited fd but 0–3 (`close_range`), clear the
//!    environment, `PR_SET_DUMPABLE=0`, `RLIMIT_CORE=0`;
//! 2. (in `serve.rs`) read exactly one bounded `Confine` message from fd 3;
//!    2b. [`isolate`]: namespaces, the private filesystem view ([`view`]) and the identity
//!    switch (`identity`: uid, capabilities, securebits), in PID 1 of the worker's own PID
//!    namespace, which then forks the serving worker;
//! 3. [`confine`]: resource limits from the spec, never above the inherited hard limit;
//! 4. `PR_SET_NO_NEW_PRIVS`;
//! 5. Landlock ([`landlock_rules`]): every filesystem right of the pinned ABI is handled, only the
//!    spec's read / write / exec paths get rules; TCP bind/connect is denied (unless the spec
//!    grants network); abstract Unix sockets and signals are scoped to the sandbox;
//! 6. seccomp-bpf ([`seccomp`]), last: a reviewed deny list (kernel attack surface, namespace
//!    creation, other processes' memory, socket families) and an x32-ABI kill switch.
//!
//! The result ([`Enforcement`]) is reported to the broker in `Ready` and audited there.
//!
//! # What it does not do
//!
//! * It does not decide what the client may touch: the broker derives the [`SandboxSpec`] from
//!   policy. This module only makes the kernel enforce it.
//! * It does not check tool paths; the tools do (`tools::paths`, `openat2` beneath a root).
//!   Landlock is the backstop that holds even if that code is wrong.
//! * It is a deny list, not an allow list: syscalls not named in [`seccomp`] stay allowed, so
//!   interpreters and commands the worker runs keep working. Landlock, not seccomp, is what
//!   confines the filesystem and TCP.
//! * Memory and process-count limits by cgroup v2 are the broker's / systemd's job; the rlimits
//!   here are the documented fallback (`RLIMIT_NPROC` counts every process of the uid,
//!   `RLIMIT_AS` breaks runtimes that reserve address space).
//! * Landlock ABI < 9 cannot restrict `connect(2)` to a *named* (filesystem) Unix socket:
//!   only abstract sockets are scoped. The private view is what keeps the worker off
//!   `/run/*.sock`: those paths do not exist in it.
//! * The original environment strings stay in the process's initial stack (visible in
//!   `/proc/PID/environ` to root only, since the process is not dumpable); the broker must not
//!   put secrets in a worker's environment in the first place.
//!
//! # What it trusts
//!
//! * The broker's `Confine` message (the broker is the parent that created the socketpair).
//! * The running kernel's answers (Landlock ABI detection, `prctl` results).
//! * That it runs at process start-up, single-threaded (see the invariants on
//!   [`sanitize_process`] and [`confine`]).

pub mod child;
pub mod exec_domain;
mod identity;
mod isolate;
pub mod landlock_rules;
mod process;
pub mod seccomp;
pub mod view;

pub use isolate::{isolate, Isolated};
use mcpd_ipc::{Enforcement, LandlockStatus, SandboxSpec};

/// Why confinement failed. Operator-facing (sent to the broker in `ConfineFailed` and logged);
/// never sent to a client. Paths in these messages come from the broker's own spec.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfineError {
    /// A start-up step failed (used by [`take_ipc_fd`]).
    #[error("{step}: {message}")]
    Step {
        /// which step
        step: &'static str,
        /// what happened
        message: String,
    },
    /// Process hygiene (step 1) failed.
    #[error("sanitize: {what}: {source}")]
    Sanitize {
        /// which part of step 1
        what: &'static str,
        /// the OS error
        source: std::io::Error,
    },
    /// A resource limit could not be set (step 3).
    #[error("rlimit {resource}: {source}")]
    Rlimit {
        /// e.g. `RLIMIT_NOFILE`
        resource: &'static str,
        /// the OS error
        source: std::io::Error,
    },
    /// `PR_SET_NO_NEW_PRIVS` failed or did not stick (step 4).
    #[error("no_new_privs: {message}")]
    NoNewPrivs {
        /// what happened
        message: String,
    },
    /// A path of the spec cannot become a Landlock rule (missing, not absolute, ...): an
    /// error, never a silently smaller sandbox.
    #[error("landlock: {kind} path {path:?}: {message}")]
    LandlockPath {
        /// `read`, `write` or `exec`
        kind: &'static str,
        /// the path from the spec
        path: String,
        /// why it was refused
        message: String,
    },
    /// The Landlock ruleset could not be built or enforced (step 5).
    #[error("landlock: {context}: {message}")]
    Landlock {
        /// which operation
        context: &'static str,
        /// the crate's error
        message: String,
    },
    /// Landlock is not fully enforced on this kernel and the operator did not opt into a
    /// degraded mode.
    #[error(
        "landlock is {status:?} (kernel ABI {abi}, mcpd needs ABI >= {needed}) and \
         allow_degraded is off"
    )]
    LandlockDegraded {
        /// what the kernel achieved
        status: LandlockStatus,
        /// the kernel's Landlock ABI (0 = none)
        abi: u32,
        /// the ABI mcpd pins
        needed: u32,
    },
    /// The namespaces could not be created (step 2b).
    #[error("namespaces: {message}")]
    Namespaces {
        /// what happened
        message: String,
    },
    /// The private filesystem view could not be built (step 2b).
    #[error("view: {message}")]
    View {
        /// what happened
        message: String,
    },
    /// Privileges could not be dropped (step 2b).
    #[error("identity: {message}")]
    Identity {
        /// what happened
        message: String,
    },
    /// The seccomp filter could not be built or installed (step 6).
    #[error("seccomp: {context}: {message}")]
    Seccomp {
        /// which operation
        context: &'static str,
        /// what happened
        message: String,
    },
}

/// Step 1: close inherited fds but 0–3, clear the environment, make the process non-dumpable
/// (no ptrace by same-uid processes, `/proc/PID/*` owned by root), no core dumps.
///
/// # Safety
///
/// The caller guarantees the single-threaded start: no other thread exists (the environment
/// is rewritten with `clearenv`, which is not thread-safe), and nothing in the process owns a
/// descriptor ≥ 4 (every one is closed, so a live `OwnedFd`/`File` would be invalidated).
/// Call it first thing in `main`, before anything spawns a thread or opens a file, as
/// `serve::run` does.
#[allow(unsafe_code)]
pub unsafe fn sanitize_process() -> Result<(), ConfineError> {
    process::close_inherited_fds()?;
    process::clear_environment()?;
    process::set_not_dumpable()?;
    process::disable_core_dumps()?;
    Ok(())
}

/// Steps 3–6: rlimits, `no_new_privs`, Landlock, seccomp (last). Returns what the kernel
/// actually enforces.
///
/// # Invariant (caller)
///
/// The process is single-threaded when this runs. `no_new_privs` and the Landlock domain are
/// per-thread attributes inherited only by threads (and processes) created *afterwards*; the
/// tokio runtime and its blocking pool are built after this returns, so every thread of the
/// worker is confined. (The seccomp filter is additionally installed with TSYNC, so it covers
/// every thread even if this invariant were broken; Landlock at ABI < 8 cannot.)
///
/// On error the process is left partly confined; the caller reports `ConfineFailed` and exits.
pub fn confine(spec: &SandboxSpec, isolated: Isolated) -> Result<Enforcement, ConfineError> {
    // Built before anything is applied: a bug in the filter tables fails here, with the
    // process untouched.
    let filters = seccomp::build(spec)?;

    // INVARIANT (confinement order; docs/ARCHITECTURE.md "Worker start-up", steps 3–6):
    //   3. rlimits  →  4. PR_SET_NO_NEW_PRIVS  →  5. Landlock  →  6. seccomp (LAST).
    // * rlimits first: they bound everything that follows, including children.
    // * no_new_privs before Landlock and seccomp: both require it for an unprivileged caller,
    //   and it guarantees that nothing exec'd later regains privileges (setuid, file caps).
    // * Landlock before seccomp: Landlock needs its own syscalls and prctl; seccomp is last so
    //   that its deny list never has to allow anything for the steps above, and so that
    //   nothing after it can loosen the configuration.
    // Do not reorder, and do not add steps after seccomp.
    process::apply_rlimits(&spec.rlimits)?; // 3
    process::set_no_new_privs()?; // 4
    let landlock = landlock_rules::apply(spec, isolated.view.as_ref())?; // 5
    seccomp::install(&filters)?; // 6

    Ok(Enforcement {
        landlock_abi: landlock.kernel_abi,
        landlock: landlock.status,
        landlock_net: landlock.net,
        landlock_scoped: landlock.scoped,
        seccomp: true,
        no_new_privs: true,
        isolation: isolated.report,
    })
}

/// Set by the first [`take_ipc_fd`]: fd 3 gets at most one owner in this process.
static IPC_FD_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Take ownership of the IPC socket the broker placed on fd 3, after checking that fd 3 is
/// an open socket. Only the first call can succeed: every later one is an error (two
/// `OwnedFd`s for one descriptor would close it twice), even if the first call failed.
#[allow(unsafe_code)]
pub fn take_ipc_fd() -> Result<std::os::fd::OwnedFd, ConfineError> {
    use std::os::fd::{BorrowedFd, FromRawFd};
    use std::sync::atomic::Ordering;
    let fd = mcpd_ipc::WORKER_FD;
    if IPC_FD_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(ConfineError::Step {
            step: "ipc fd",
            message: format!("fd {fd} was already taken"),
        });
    }
    // SAFETY: fd 3 is only borrowed for the duration of the fstat call; if it is not open,
    // fstat fails with EBADF and we never take ownership.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let st = rustix::fs::fstat(borrowed).map_err(|e| ConfineError::Step {
        step: "ipc fd",
        message: format!("fd {fd} is not open ({e}); mcpd-worker is started by mcpd"),
    })?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Err(ConfineError::Step {
            step: "ipc fd",
            message: format!("fd {fd} is not a socket; mcpd-worker is started by mcpd"),
        });
    }
    // SAFETY: fd 3 is open (fstat succeeded), and nothing else in this process owns it: only
    // the first call of this function gets here (`IPC_FD_TAKEN`), and nothing else in the
    // worker takes fd 3.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fd 3 has at most one owner: a second `take_ipc_fd` is refused whatever the first did
    /// (in the test process fd 3 is rarely the broker's socket, so the first call usually
    /// fails its fstat/socket check; it still uses up the one take).
    #[test]
    fn take_ipc_fd_runs_only_once() {
        let first = take_ipc_fd();
        let second = take_ipc_fd();
        let Err(e) = second else {
            panic!("a second take_ipc_fd succeeded");
        };
        assert_eq!(e.to_string(), "ipc fd: fd 3 was already taken");
        // Do not close a descriptor of the test harness that merely happened to be a socket.
        if let Ok(fd) = first {
            std::mem::forget(fd);
        }
    }
}
