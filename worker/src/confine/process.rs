//! Steps 1, 3 and 4: process hygiene, resource limits, `no_new_privs`.

use std::io;

use mcpd_ipc::ResourceLimits;
use rustix::process::{Resource, Rlimit};

use super::ConfineError;

/// First descriptor closed by step 1: 0–2 are stdio, 3 is the broker's socket.
const FIRST_CLOSED_FD: u32 = (mcpd_ipc::WORKER_FD + 1) as u32;

fn sanitize_err(what: &'static str) -> impl FnOnce(io::Error) -> ConfineError {
    move |source| ConfineError::Sanitize { what, source }
}

/// Close every descriptor ≥ 4 with `close_range(2)`; on kernels without it (< 5.9, ENOSYS),
/// close what `/proc/self/fd` lists.
pub(super) fn close_inherited_fds() -> Result<(), ConfineError> {
    match close_range_from(FIRST_CLOSED_FD) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => close_listed_fds(),
        Err(e) => Err(sanitize_err("close_range")(e)),
    }
}

#[allow(unsafe_code)]
fn close_range_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes three integers and touches no memory of ours. The I/O-safety
    // precondition (no live Rust owner of a descriptor we close) is the documented invariant
    // of `sanitize_process`: it runs first thing in `main`, before anything opened a file, so
    // every descriptor ≥ 4 is an inherited one that nothing in this process owns.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn close_listed_fds() -> Result<(), ConfineError> {
    // Collect first, then close: the directory stream holds an fd of its own, which is
    // closed (dropped) before the loop; closing its number again just fails with EBADF.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(sanitize_err(
            "listing /proc/self/fd (close_range unavailable)",
        ))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd: &i32| *fd >= FIRST_CLOSED_FD as i32)
        .collect();
    for fd in fds {
        close_unowned(fd);
    }
    Ok(())
}

#[allow(unsafe_code)]
fn close_unowned(fd: i32) {
    // SAFETY: same precondition as `close_range_from`: at start-up no Rust object owns a
    // descriptor ≥ 4, so closing one cannot invalidate a live `OwnedFd`/`File`. Errors
    // (EBADF for the already-closed directory fd) are irrelevant: the fd is closed either way.
    unsafe {
        libc::close(fd);
    }
}

/// Remove every environment variable. `clearenv(3)` rather than `remove_var` in a loop:
/// it also drops entries `std::env` cannot name (a key containing `=`), and cannot panic.
#[allow(unsafe_code)]
pub(super) fn clear_environment() -> Result<(), ConfineError> {
    // SAFETY: clearenv is not thread-safe (nor is any environment mutation). The invariant of
    // `sanitize_process` is that it runs before any thread exists, so nothing reads `environ`
    // concurrently. No pointer into the environment is held across this call.
    let rc = unsafe { libc::clearenv() };
    if rc != 0 || std::env::vars_os().next().is_some() {
        return Err(ConfineError::Sanitize {
            what: "clearing the environment",
            source: io::Error::other("environment not empty after clearenv"),
        });
    }
    Ok(())
}

/// `PR_SET_DUMPABLE=0`: same-uid processes cannot ptrace us or read `/proc/PID/mem`,
/// `environ`, `fd/`; no core file.
pub(super) fn set_not_dumpable() -> Result<(), ConfineError> {
    use rustix::process::{dumpable_behavior, set_dumpable_behavior, DumpableBehavior};
    set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(|e| ConfineError::Sanitize {
        what: "PR_SET_DUMPABLE",
        source: e.into(),
    })?;
    match dumpable_behavior() {
        Ok(DumpableBehavior::NotDumpable) => Ok(()),
        Ok(other) => Err(ConfineError::Sanitize {
            what: "PR_SET_DUMPABLE",
            source: io::Error::other(format!("still {other:?} after set")),
        }),
        Err(e) => Err(ConfineError::Sanitize {
            what: "PR_GET_DUMPABLE",
            source: e.into(),
        }),
    }
}

/// `RLIMIT_CORE=0` (soft and hard): no core dump, ever, from this process or its children.
pub(super) fn disable_core_dumps() -> Result<(), ConfineError> {
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    rustix::process::setrlimit(Resource::Core, zero).map_err(|e| ConfineError::Sanitize {
        what: "RLIMIT_CORE",
        source: e.into(),
    })
}

/// Step 3: each limit that is `Some` becomes both the soft and the hard limit (so confined
/// code cannot raise it back), clamped to the inherited hard limit (an unprivileged process
/// could not raise it anyway, and a privileged one must not).
pub(super) fn apply_rlimits(limits: &ResourceLimits) -> Result<(), ConfineError> {
    let wanted = [
        (Resource::Nofile, "RLIMIT_NOFILE", limits.max_open_files),
        (Resource::Fsize, "RLIMIT_FSIZE", limits.max_file_size),
        (Resource::Cpu, "RLIMIT_CPU", limits.cpu_seconds),
        (Resource::As, "RLIMIT_AS", limits.address_space),
        (Resource::Nproc, "RLIMIT_NPROC", limits.max_processes),
    ];
    for (resource, name, value) in wanted {
        let Some(value) = value else { continue };
        let hard = rustix::process::getrlimit(resource).maximum; // None = unlimited
        let value = hard.map_or(value, |hard| value.min(hard));
        let new = Rlimit {
            current: Some(value),
            maximum: Some(value),
        };
        rustix::process::setrlimit(resource, new).map_err(|e| ConfineError::Rlimit {
            resource: name,
            source: e.into(),
        })?;
    }
    if limits.max_file_size.is_some() {
        ignore_sigxfsz()?;
    }
    Ok(())
}

/// With `RLIMIT_FSIZE` set, a write past the limit raises SIGXFSZ, whose default action
/// kills the whole worker (every session call in flight). Ignored, the write fails with
/// EFBIG instead and the tool reports an error. The ignored disposition is inherited by
/// the commands the worker runs (they see EFBIG too).
#[allow(unsafe_code)]
fn ignore_sigxfsz() -> Result<(), ConfineError> {
    // SAFETY: SIG_IGN installs no handler code, so there is no async-signal-safety concern;
    // signal dispositions are process-wide and nothing else in the worker manages SIGXFSZ.
    let previous = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if previous == libc::SIG_ERR {
        return Err(ConfineError::Rlimit {
            resource: "RLIMIT_FSIZE (ignoring SIGXFSZ)",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Step 4: `PR_SET_NO_NEW_PRIVS`, then read it back.
pub(super) fn set_no_new_privs() -> Result<(), ConfineError> {
    rustix::thread::set_no_new_privs(true).map_err(|e| ConfineError::NoNewPrivs {
        message: format!("PR_SET_NO_NEW_PRIVS: {e}"),
    })?;
    match rustix::thread::no_new_privs() {
        Ok(true) => Ok(()),
        Ok(false) => Err(ConfineError::NoNewPrivs {
            message: "not set after PR_SET_NO_NEW_PRIVS".into(),
        }),
        Err(e) => Err(ConfineError::NoNewPrivs {
            message: format!("PR_GET_NO_NEW_PRIVS: {e}"),
        }),
    }
}
