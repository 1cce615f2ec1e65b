//! Worker self-confinement: process hygiene, rlimits, no_new_privs, Landlock, seccomp-bpf.
//! (being written)

use mcpd_ipc::{Enforcement, SandboxSpec};

/// Why confinement failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// A step failed.
    #[error("{step}: {message}")]
    Step {
        /// which step
        step: &'static str,
        /// what happened
        message: String,
    },
}

/// Step 1: close inherited fds but 0-3, clear the environment, non-dumpable, no core dumps.
pub fn sanitize_process() -> Result<(), ConfineError> {
    Ok(())
}

/// Steps 3-6: rlimits, no_new_privs, Landlock, seccomp (last).
pub fn confine(_spec: &SandboxSpec) -> Result<Enforcement, ConfineError> {
    Err(ConfineError::Step {
        step: "confine",
        message: "not implemented".into(),
    })
}

/// Take ownership of the IPC socket the broker placed on fd 3, after checking that fd 3 is
/// an open socket.
#[allow(unsafe_code)]
pub fn take_ipc_fd() -> Result<std::os::fd::OwnedFd, ConfineError> {
    use std::os::fd::{BorrowedFd, FromRawFd};
    let fd = mcpd_ipc::WORKER_FD;
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
    // SAFETY: fd 3 is open (fstat succeeded), and nothing else in this process owns it: the
    // worker's start-up code takes it exactly once, here.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
