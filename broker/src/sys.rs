//! The broker's only raw system calls: the worker's `pre_exec` hook and kernel feature probes
//! for `mcpd doctor`. Everything else in the broker is safe Rust.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// Install the code that runs in the forked child between `fork` and `exec`.
///
/// Only async-signal-safe calls are made there (setsid, prctl, getppid, fcntl, dup2, _exit):
/// the broker is multithreaded and the child of `fork` may only do such calls.
pub fn install_worker_pre_exec(
    cmd: &mut tokio::process::Command,
    child_fd: RawFd,
    broker_pid: i32,
) {
    let hook = move || -> std::io::Result<()> {
        // SAFETY: every call below is async-signal-safe and touches only this child's own
        // state (its session, its death signal, its fd table); `child_fd` is open in the child
        // because it was open in the parent at fork time (it is closed in the parent only after
        // `spawn` returns).
        unsafe {
            // A session of its own: terminal signals for the broker's group do not reach it.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Die with the broker: the spawning thread is the broker's long-lived spawner.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The broker may already have died between fork and prctl.
            if libc::getppid() != broker_pid {
                libc::_exit(1);
            }
            if child_fd == mcpd_ipc::WORKER_FD {
                // Already on fd 3: only clear close-on-exec.
                if libc::fcntl(child_fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(child_fd, mcpd_ipc::WORKER_FD) < 0 {
                // dup2 leaves the new fd without FD_CLOEXEC, so fd 3 survives exec.
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only performs async-signal-safe operations (see above) and allocates
    // nothing, as required for code run between fork and exec in a multithreaded process.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// The Landlock ABI version the running kernel offers (0 = none or disabled).
pub fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI version; it reads
    // no memory (the attribute pointer is NULL and the size 0).
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        0
    } else {
        r
    }
}

/// Whether this process may install seccomp filters (`PR_GET_SECCOMP` answers).
pub fn seccomp_mode() -> Option<i32> {
    // SAFETY: PR_GET_SECCOMP takes no pointer arguments and only reads this thread's state.
    let r = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    (r >= 0).then_some(r)
}
