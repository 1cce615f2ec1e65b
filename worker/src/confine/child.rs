//! The `pre_exec` hook of every process the worker starts (commands, interpreters, operator
//! tools): working directory from an already-opened directory fd, per-process resource limits,
//! death with the worker, and last the program's own exec domain
//! ([`super::exec_domain`]).
//!
//! The child inherits all of the worker's confinement (no_new_privs, Landlock, seccomp: filters
//! and rulesets only stack) and its rlimits; this hook can only *lower* limits further and add
//! a nested Landlock domain. It runs between `fork` and `exec` in the child of a multi-threaded
//! process, so it makes only async-signal-safe system calls (`fchdir`, `setrlimit`, `prctl`,
//! `getppid`, `landlock_restrict_self`) and never allocates: everything it needs is computed
//! before the fork.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;

use mcpd_ipc::CommandLimits;

/// Most limits the hook sets.
const MAX_LIMITS: usize = 6;

/// What the hook does, computed before the fork (plain integers only).
#[derive(Debug, Clone, Copy)]
pub struct ChildSetup {
    cwd: Option<i32>,
    limits: [(libc::__rlimit_resource_t, u64); MAX_LIMITS],
    count: usize,
    die_with_parent: bool,
    parent: libc::pid_t,
    exec_domain: Option<i32>,
}

impl ChildSetup {
    /// Limits from the client's command limits. `die_with_parent`: `PR_SET_PDEATHSIG(SIGKILL)`,
    /// which fires when the *thread* that spawned the child exits, so only for children waited
    /// on by the spawning thread (not long-lived interpreters).
    pub fn new(limits: &CommandLimits, die_with_parent: bool) -> Self {
        let mut s = Self {
            cwd: None,
            limits: [(libc::RLIMIT_CORE, 0); MAX_LIMITS],
            count: 1, // RLIMIT_CORE = 0 (already inherited; kept explicit)
            die_with_parent,
            parent: std::process::id().try_into().unwrap_or(0),
            exec_domain: None,
        };
        let wanted = [
            (libc::RLIMIT_CPU, limits.cpu_seconds),
            (libc::RLIMIT_AS, limits.address_space),
            (libc::RLIMIT_NPROC, limits.max_processes),
            (libc::RLIMIT_NOFILE, limits.max_open_files),
            (libc::RLIMIT_FSIZE, limits.max_file_size),
        ];
        for (resource, value) in wanted {
            if let Some(v) = value {
                s.limits[s.count] = (resource, v);
                s.count += 1;
            }
        }
        s
    }

    /// Start in this directory (an fd opened beneath an allowed root). The fd must stay open
    /// until the child was spawned.
    pub fn cwd(mut self, dir: BorrowedFd<'_>) -> Self {
        self.cwd = Some(dir.as_raw_fd());
        self
    }

    /// Enter this Landlock ruleset (an [`super::exec_domain::ExecDomain`]'s fd) as the very last
    /// step before exec. The fd must stay open until the child was spawned.
    pub fn exec_domain(mut self, ruleset: BorrowedFd<'_>) -> Self {
        self.exec_domain = Some(ruleset.as_raw_fd());
        self
    }

    /// Install the hook on `cmd`.
    #[allow(unsafe_code)]
    pub fn install(self, cmd: &mut std::process::Command) {
        let hook = move || -> std::io::Result<()> { self.run() };
        // SAFETY: `pre_exec` runs the closure in the forked child before exec. The closure
        // only calls `ChildSetup::run`, which makes async-signal-safe system calls on integers
        // captured by value (`Copy`), allocates nothing, takes no lock, and touches no state
        // shared with other threads of the parent.
        unsafe {
            cmd.pre_exec(hook);
        }
    }

    #[allow(unsafe_code)]
    fn run(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        if let Some(fd) = self.cwd {
            // SAFETY: fchdir takes an integer fd (kept open by the parent's owner until the
            // spawn returns, and inherited across fork); async-signal-safe.
            check(unsafe { libc::fchdir(fd) })?;
        }
        for &(resource, value) in &self.limits[..self.count] {
            // Lower only: never above the inherited hard limit (which we could not raise).
            let mut cur = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes one `rlimit` into the valid, exclusively borrowed local.
            check(unsafe { libc::getrlimit(resource, &mut cur) })?;
            let v = value.min(cur.rlim_max);
            // CPU: the soft limit sends SIGXCPU (a clear "CPU time limit exceeded"), the hard
            // limit one second later SIGKILL for a program that ignores it.
            let hard = if resource == libc::RLIMIT_CPU {
                v.saturating_add(1).min(cur.rlim_max)
            } else {
                v
            };
            let new = libc::rlimit {
                rlim_cur: v,
                rlim_max: hard,
            };
            // SAFETY: setrlimit reads one valid `rlimit` from a local; async-signal-safe.
            check(unsafe { libc::setrlimit(resource, &new) })?;
        }
        if self.die_with_parent {
            // SAFETY: prctl(PR_SET_PDEATHSIG, SIGKILL) takes integers only.
            check(unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            })?;
            // The parent may have died between fork and prctl: then no signal would come.
            // SAFETY: getppid takes no argument and cannot fail.
            if unsafe { libc::getppid() } != self.parent {
                // An errno, not `Error::other(..)`: that would allocate in the forked child.
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        if let Some(ruleset) = self.exec_domain {
            // Last, so that nothing above runs restricted (none of it executes anything, but
            // the order keeps that obvious). no_new_privs is inherited from the worker.
            // SAFETY: landlock_restrict_self takes an integer fd (a Landlock ruleset kept open
            // by the parent until the spawn returns, inherited across fork) and integer flags;
            // it reads no memory of ours and is async-signal-safe (a plain system call).
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_landlock_restrict_self,
                    ruleset as libc::c_long,
                    0 as libc::c_long,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}
