//! The broker's only raw system calls: the worker's `pre_exec` hook and kernel feature probes
//! for `mcpd doctor`, and taking ownership of a socket systemd passed (`LISTEN_FDS`). Everything
//! else in the broker is safe Rust.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// Install the code that runs in the forked child between `fork` and `exec`.
///
/// Only async-signal-safe calls are made there (setsid, prctl, getppid, fcntl, dup2, _exit):
/// the broker is multithreaded and the child of `fork` may only do such calls, and nothing
/// allocates on any path (errors are errno values).
pub fn install_worker_pre_exec(
    cmd: &mut tokio::process::Command,
    child_fd: RawFd,
    broker_pid: i32,
) {
    let hook = move || -> std::io::Result<()> {
        // Every step is one async-signal-safe call on integers that touches only this child's
        // own state (its session, its death signal, its fd table); errors are errno values
        // (`last_os_error` and `from_raw_os_error` do not allocate).
        let check = |rc: libc::c_int| {
            if rc < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // A session of its own: terminal signals for the broker's group do not reach it.
        // SAFETY: setsid takes no argument and changes only this child's session.
        check(unsafe { libc::setsid() })?;
        // Die with the broker: the spawning thread is the broker's long-lived spawner.
        // SAFETY: prctl(PR_SET_PDEATHSIG, SIGKILL) takes integers only and sets this child's
        // own death signal.
        check(unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        })?;
        // The broker may already have died between fork and prctl.
        // SAFETY: getppid takes no argument and cannot fail.
        if unsafe { libc::getppid() } != broker_pid {
            // SAFETY: _exit ends this forked child at once, without running any of the
            // parent's atexit handlers or destructors (which would not be fork-safe).
            unsafe { libc::_exit(1) };
        }
        if child_fd == mcpd_ipc::WORKER_FD {
            // Already on fd 3: only clear close-on-exec.
            // SAFETY: fcntl(F_SETFD, 0) on `child_fd`, which is open in the child because it
            // was open in the parent at fork time (the parent closes it only after `spawn`
            // returns); it changes only that fd's flags in this child's own fd table.
            check(unsafe { libc::fcntl(child_fd, libc::F_SETFD, 0) })?;
        } else {
            // dup2 leaves the new fd without FD_CLOEXEC, so fd 3 survives exec.
            // SAFETY: `child_fd` is open in the child (see above); dup2 replaces fd 3 of this
            // child's own fd table, which no Rust object of the child uses before exec.
            check(unsafe { libc::dup2(child_fd, mcpd_ipc::WORKER_FD) })?;
        }
        Ok(())
    };
    // SAFETY: `pre_exec` runs the hook in the forked child of a multithreaded process; the
    // hook only performs async-signal-safe calls on integers captured by value, takes no lock
    // and allocates nothing on any path (errors are errno values), as such code must.
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

/// Whether a child of this process can create the namespaces a worker builds (`flags`:
/// `CLONE_NEW*`), tried for real in a forked child that exits at once. `Err` carries the
/// kernel's answer. For `mcpd doctor`, which is single-threaded.
pub fn probe_unshare(flags: libc::c_int) -> Result<(), std::io::Error> {
    // SAFETY: the child makes only async-signal-safe calls (unshare, _exit) before it exits,
    // so forking is sound even if other threads existed; nothing is shared with the parent.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: unshare takes an integer flag only and changes only this child.
        let rc = unsafe { libc::unshare(flags) };
        let code = if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(255)
        };
        // SAFETY: _exit ends the child at once with the errno of unshare (0 on success),
        // without running the parent's atexit handlers or destructors.
        unsafe { libc::_exit(code.clamp(0, 255)) };
    }
    let mut status = 0;
    // SAFETY: waitpid writes one int into the valid local `status`.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(0) => Ok(()),
        Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
        None => Err(std::io::Error::other("probe child ended by a signal")),
    }
}

/// Whether `path`'s filesystem accepts an idmapped mount (what a root broker's worker makes of
/// each root): a detached copy of its mount gets `MOUNT_ATTR_IDMAP` with a user namespace made
/// by a helper child. Nothing is attached anywhere; the copy is dropped. Root only.
pub fn probe_idmap(path: &std::path::Path) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, OwnedFd};
    let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
    let (ready_rd, ready_wr) = pipe().map_err(|e| e.to_string())?;
    let (hold_rd, hold_wr) = pipe().map_err(|e| e.to_string())?;
    // SAFETY: the doctor is single-threaded (it runs before any runtime exists), so the child
    // is a complete copy and may run ordinary code; it only unshares, writes and reads pipes,
    // and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if pid == 0 {
        drop(ready_rd);
        drop(hold_wr);
        // SAFETY: unshare takes an integer flag only.
        let ok = unsafe { libc::unshare(libc::CLONE_NEWUSER) } == 0;
        let _ = std::fs::File::from(ready_wr).write_all(if ok { b"1" } else { b"0" });
        let _ = std::fs::File::from(hold_rd).read(&mut [0u8; 1]);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    drop(ready_wr);
    drop(hold_rd);
    let result = (|| {
        let mut b = [0u8; 1];
        std::fs::File::from(ready_rd)
            .read_exact(&mut b)
            .map_err(|e| e.to_string())?;
        if b[0] != b'1' {
            return Err("cannot create a user namespace".to_string());
        }
        for map in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{map}"), "0 60578 1\n")
                .map_err(|e| format!("{map}: {e}"))?;
        }
        let ns: OwnedFd = std::fs::File::open(format!("/proc/{pid}/ns/user"))
            .map_err(|e| e.to_string())?
            .into();
        use rustix::mount::OpenTreeFlags as F;
        let tree = rustix::mount::open_tree(
            rustix::fs::CWD,
            path,
            F::OPEN_TREE_CLONE | F::OPEN_TREE_CLOEXEC | F::AT_RECURSIVE,
        )
        .map_err(|e| format!("open_tree: {e}"))?;
        let attr: [u64; 4] = [0x0010_0000, 0, 0, ns.as_raw_fd() as u64]; // MOUNT_ATTR_IDMAP
        const AT_EMPTY_PATH: libc::c_uint = 0x1000;
        const AT_RECURSIVE: libc::c_uint = 0x8000;
        // SAFETY: mount_setattr reads 32 bytes (struct mount_attr: attr_set, attr_clr,
        // propagation, userns_fd) from the valid local array and the empty C string; the two
        // fds are open for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                AT_EMPTY_PATH | AT_RECURSIVE,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().to_string())
        }
    })();
    drop(hold_wr);
    let mut status = 0;
    // SAFETY: waitpid writes one int into the valid local `status`.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    result
}

/// Take ownership of a descriptor this process inherited to own (systemd socket activation:
/// `LISTEN_FDS` descriptors from 3 on, once `LISTEN_PID` named this process). `None` if no
/// such descriptor is open. Call once per descriptor, at start, before anything else could
/// open or close descriptors of that number.
pub fn take_inherited_fd(fd: RawFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if fd < 3 {
        return None;
    }
    // SAFETY: fcntl(F_GETFD) on an integer only reads the descriptor's flags (EBADF if none).
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: `fd` is open (checked above) and was passed to this process by its service
    // manager for it to own; nothing else in the broker refers to it (taken once, at start),
    // so the `OwnedFd` is its only owner and closes it exactly once.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
