//! Step 2b (sandbox v2): namespaces, the private filesystem view and the identity switch,
//! between reading `Confine` and the rlimits.
//!
//! # Processes
//!
//! ```text
//!  broker ── mcpd-worker [outer]  host PID namespace; waits, relays the exit status, holds no
//!               │                  fd of the broker, no capability, no_new_privs + seccomp
//!               └─ [init]  PID 1 of the worker's PID namespace: builds the view, then only
//!                    │      reaps orphans; exits (and so kills the namespace) when the
//!                    │      worker exits
//!                    └─ [worker]  PID 2: Landlock, seccomp, serves the session (fd 3)
//! ```
//!
//! The outer process is the one the broker started, put in the cgroup and kills; each level
//! dies with its parent (`PR_SET_PDEATHSIG`, armed again after every credential change,
//! which clears it), and the kernel kills the whole PID namespace when its init exits.
//!
//! # Order (in [`isolate`])
//!
//! 1. plan the view with the host tree in sight (`view::plan`: a missing path is an error);
//! 2. root only: one user namespace per owner of an idmapped root (helper child, maps
//!    `owner → worker uid`);
//! 3. `unshare(NEWNS | NEWPID | NEWIPC | NEWUTS [| NEWNET unless network] [| NEWUSER unless
//!    root])`; unprivileged: `setgroups deny`, identity uid/gid maps;
//! 4. fork → init: view (`view::build`, `pivot_root`), own `/proc`, `vm.memfd_noexec = 2`
//!    (root only: the kernel refuses it to a user namespace), hostname, root tmpfs sealed
//!    read-only, privileges dropped (`identity`), fork → worker (returns from here);
//! 5. outer: closes fd 3, drops privileges, no_new_privs + seccomp, waits.
//!
//! # What it trusts
//!
//! The broker's spec and the kernel. Single-threaded (it forks; credentials are per thread).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use mcpd_ipc::{IsolationReport, SandboxSpec};
use rustix::process::{Pid, WaitOptions};

use super::identity::{self, DeathCheck};
use super::{seccomp, view, ConfineError};

/// The worker's host name inside its UTS namespace.
const HOSTNAME: &str = "mcpd-worker";

/// What the worker (the process that returns from [`isolate`]) gets.
#[derive(Debug, Default)]
pub struct Isolated {
    /// For `Ready` and the audit log.
    pub report: IsolationReport,
    /// The view's extra paths (for Landlock), when there is a view.
    pub view: Option<view::Built>,
}

fn ns_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ConfineError {
    let what = what.into();
    move |e| ConfineError::Namespaces {
        message: format!("{what}: {e}"),
    }
}

fn errno(e: rustix::io::Errno) -> std::io::Error {
    e.into()
}

/// The forks of this module (the process is single-threaded: see the module docs).
enum Forked {
    Parent(i32),
    Child,
}

#[allow(unsafe_code)]
fn fork() -> Result<Forked, ConfineError> {
    // SAFETY: the worker is single-threaded during start-up (the invariant of
    // `sanitize_process`/`confine`: no runtime, no thread exists yet), so the child of fork
    // is a complete copy and may run ordinary Rust code (allocate, take locks).
    match unsafe { libc::fork() } {
        -1 => Err(ns_err("fork")(std::io::Error::last_os_error())),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

#[allow(unsafe_code)]
fn unshare(flags: rustix::thread::UnshareFlags) -> Result<(), ConfineError> {
    // SAFETY: `unshare_unsafe` is unsafe because unsharing the file table or fs info under
    // other threads breaks assumptions of code running there; none of CLONE_FILES/CLONE_FS is
    // asked, and the process is single-threaded.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(|e| ns_err("unshare")(errno(e)))
}

/// Close a descriptor that no Rust object owns (fd 3 in the processes that must not keep it).
#[allow(unsafe_code)]
fn close_raw(fd: i32) {
    // SAFETY: called only in the outer and init processes for fd 3, whose `OwnedFd` lives in
    // the caller's frame that these processes never return to (they exit from this module),
    // so no owner can use or close it again.
    unsafe {
        libc::close(fd);
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ConfineError> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| ns_err("pipe")(errno(e)))
}

/// Exit with the status a child ended with: its code, or (for a signal, which the PID
/// namespace's init cannot raise on itself) `128 + signal`, which the outer process turns
/// back into the signal.
fn exit_like(status: rustix::process::WaitStatus) -> ! {
    if let Some(code) = status.exit_status() {
        std::process::exit(code);
    }
    if let Some(sig) = status.terminating_signal() {
        std::process::exit(128 + sig);
    }
    std::process::exit(1)
}

/// Build the namespaces, view and identity of `spec`. Returns in the worker process only;
/// the outer and init processes end inside. `ipc_fd` is closed in those two.
pub fn isolate(spec: &SandboxSpec, ipc_fd: i32) -> Result<Isolated, ConfineError> {
    let iso = &spec.isolation;
    let root = rustix::process::geteuid().is_root();
    let target = if root {
        match iso.uid {
            // uid 0 keeps root's uid with every capability cleared: only the layer tests
            // ask for it (the broker's `server.worker_uids` cannot hold 0).
            Some(u) if u != u32::MAX => Some((u, u)),
            _ => {
                return Err(ConfineError::Identity {
                    message: "started as root without a worker uid (server.worker_uids)".into(),
                })
            }
        }
    } else {
        None
    };
    let broker = rustix::process::getppid().map_or(0, |p| p.as_raw_pid());
    if !iso.namespaces {
        return without_namespaces(target, broker, None);
    }

    // 1. The plan, with the host tree in sight.
    let plan = view::plan(spec, root)?;
    // 2. Idmap user namespaces (root only).
    let mut userns = Vec::new();
    if let Some((uid, gid)) = target {
        for &(owner, group) in &plan.idmap_owners {
            match idmap_userns(owner, group, uid, gid) {
                Ok(fd) => userns.push(fd),
                Err(e) => {
                    // No user namespaces (e.g. user.max_user_namespaces = 0): no root can be
                    // idmapped; the view marks them all and the documented fallback applies.
                    eprintln!("mcpd-worker: idmapped mounts unavailable: {e}");
                    userns.clear();
                    break;
                }
            }
        }
    }
    // 3. The namespaces.
    use rustix::thread::UnshareFlags as F;
    let mut flags = F::NEWNS | F::NEWPID | F::NEWIPC | F::NEWUTS;
    if !spec.allow_network {
        flags |= F::NEWNET;
    }
    if !root {
        flags |= F::NEWUSER;
    }
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    if let Err(e) = unshare(flags) {
        let e = match e {
            ConfineError::Namespaces { message } => message,
            other => other.to_string(),
        };
        let why = format!(
            "namespaces unavailable ({e}): user namespaces may be disabled \
             (user.max_user_namespaces, kernel.unprivileged_userns_clone) or refused by the \
             service manager (RestrictNamespaces=)"
        );
        if !spec.allow_degraded {
            return Err(ConfineError::Namespaces {
                message: format!(
                    "{why}; server.allow_degraded_sandbox = true runs workers without them"
                ),
            });
        }
        // The operator's degraded mode: no namespaces, no private view; identity, Landlock,
        // seccomp and cgroups still hold (reported and audited).
        return without_namespaces(target, broker, Some(why));
    }
    if !root {
        // Only our own ids, mapped to themselves: files keep their owners. A non-dumpable
        // process's /proc/self files belong to root, so it is dumpable for these three writes
        // (nothing else runs meanwhile: single-threaded, no child yet).
        use rustix::process::{set_dumpable_behavior, DumpableBehavior};
        let dumpable =
            |b| set_dumpable_behavior(b).map_err(|e| ns_err("PR_SET_DUMPABLE")(errno(e)));
        dumpable(DumpableBehavior::Dumpable)?;
        let mapped = write_file("/proc/self/setgroups", "deny")
            .and_then(|()| write_file("/proc/self/uid_map", &format!("{uid} {uid} 1\n")))
            .and_then(|()| write_file("/proc/self/gid_map", &format!("{gid} {gid} 1\n")));
        dumpable(DumpableBehavior::NotDumpable)?;
        mapped?;
    }
    // 4./5. Outer and init.
    let filters = seccomp::build(spec)?;
    let (alive_rd, alive_wr) = pipe()?;
    match fork()? {
        Forked::Parent(init) => {
            drop(alive_rd);
            outer(init, ipc_fd, target, broker, &filters, alive_wr)
        }
        Forked::Child => {
            drop(alive_wr);
            init(spec, &plan, userns, target, root, ipc_fd, alive_rd)
        }
    }
}

/// No namespaces (the layer tests' specs, or the operator's degraded mode with the reason):
/// only the identity step, in the process the broker started.
fn without_namespaces(
    target: Option<(u32, u32)>,
    broker: i32,
    degraded: Option<String>,
) -> Result<Isolated, ConfineError> {
    let d = identity::drop_privileges(target, Some(DeathCheck::Parent(broker)))?;
    Ok(Isolated {
        report: IsolationReport {
            uid: d.uid,
            capabilities_cleared: d.cleared,
            degraded,
            ..IsolationReport::default()
        },
        view: None,
    })
}

/// The outer process: closes the broker's socket, drops every privilege, confines itself
/// (no_new_privs, seccomp) and waits for init; exits as init did.
fn outer(
    init: i32,
    ipc_fd: i32,
    target: Option<(u32, u32)>,
    broker: i32,
    filters: &seccomp::Filters,
    alive: OwnedFd,
) -> ! {
    close_raw(ipc_fd);
    let confined = identity::drop_privileges(target, Some(DeathCheck::Parent(broker)))
        .and_then(|_| super::process::set_no_new_privs())
        .and_then(|()| seccomp::install(filters));
    if let Err(e) = confined {
        eprintln!("mcpd-worker[outer]: {e}");
        let _ = rustix::process::kill_process(
            Pid::from_raw(init).unwrap_or(Pid::INIT),
            rustix::process::Signal::KILL,
        );
    }
    let pid = Pid::from_raw(init);
    let status = loop {
        match rustix::process::waitpid(pid, WaitOptions::empty()) {
            Ok(Some((_, st))) => break st,
            Ok(None) | Err(rustix::io::Errno::INTR) => continue,
            Err(_) => std::process::exit(1),
        }
    };
    drop(alive);
    if let Some(code) = status.exit_status() {
        if (129..=192).contains(&code) {
            reraise(code - 128);
        }
        std::process::exit(code);
    }
    if let Some(sig) = status.terminating_signal() {
        reraise(sig);
    }
    std::process::exit(1)
}

/// End this process by signal `sig` (default action), as the worker did.
#[allow(unsafe_code)]
fn reraise(sig: i32) -> ! {
    // SAFETY: resetting a disposition to SIG_DFL installs no handler code, so no handler can
    // run in a state it does not expect; the call takes integers only.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
    // SAFETY: raise takes an integer and sends the signal to this (single-threaded) process;
    // with the default disposition just restored it ends the process, touching no memory.
    unsafe {
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

fn write_file(path: &str, text: &str) -> Result<(), ConfineError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(ns_err(format!("writing {path}")))
}

/// Init of the worker's PID namespace. Returns (as the worker, PID 2) or an error (which the
/// caller reports on fd 3, still open here); otherwise reaps and exits.
fn init(
    spec: &SandboxSpec,
    plan: &view::Plan,
    userns: Vec<OwnedFd>,
    target: Option<(u32, u32)>,
    root: bool,
    ipc_fd: i32,
    alive: OwnedFd,
) -> Result<Isolated, ConfineError> {
    let alive_fd = alive.as_raw_fd();
    DeathCheck::Pipe(alive_fd).arm()?;
    let built = view::build(plan, &userns)?;
    drop(userns);
    let memfd_noexec = root && write_file("/proc/sys/vm/memfd_noexec", "2").is_ok();
    rustix::system::sethostname(HOSTNAME.as_bytes())
        .map_err(|e| ns_err("sethostname")(errno(e)))?;
    view::seal_root()?;
    // The documented fallback: a root that could not be idmapped makes the worker run as
    // that root's owner (capabilities still cleared), so it can use its files.
    let to = match (target, built.not_idmapped.first()) {
        (Some(_), Some((_, owner, group))) => Some((*owner, *group)),
        (t, _) => t,
    };
    let dropped = identity::drop_privileges(to, Some(DeathCheck::Pipe(alive_fd)))?;
    let host_uid = to.map_or(dropped.uid, |(u, _)| u);
    match fork()? {
        Forked::Child => {
            DeathCheck::Parent(1).arm()?;
            drop(alive);
            Ok(Isolated {
                report: IsolationReport {
                    namespaces: true,
                    network_namespace: !spec.allow_network,
                    user_namespace: !root,
                    uid: host_uid,
                    capabilities_cleared: dropped.cleared,
                    idmapped: built.idmapped.clone(),
                    not_idmapped: built
                        .not_idmapped
                        .iter()
                        .map(|(p, _, _)| p.clone())
                        .collect(),
                    memfd_noexec,
                    proc: built.proc,
                    degraded: None,
                },
                view: Some(built),
            })
        }
        Forked::Parent(worker) => {
            close_raw(ipc_fd);
            drop(alive);
            reap(worker)
        }
    }
}

/// PID 1's loop: reap every child (orphans of the worker's commands are re-parented here);
/// exit when the worker exits (the kernel then kills what is left in the namespace).
fn reap(worker: i32) -> ! {
    loop {
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(Some((pid, st))) if pid.as_raw_nonzero().get() == worker => exit_like(st),
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(_) => std::process::exit(1),
        }
    }
}

/// A user namespace whose only mapping is `owner → uid` (and `group → gid`), for an
/// idmapped mount that shows a root owned by `owner` as owned by the worker. Made by a
/// helper child that unshares its user namespace and waits while we write its maps.
fn idmap_userns(owner: u32, group: u32, uid: u32, gid: u32) -> Result<OwnedFd, ConfineError> {
    let (ready_rd, ready_wr) = pipe()?;
    let (hold_rd, hold_wr) = pipe()?;
    match fork()? {
        Forked::Child => {
            drop(ready_rd);
            drop(hold_wr);
            let ok = unshare(rustix::thread::UnshareFlags::NEWUSER).is_ok();
            let mut w = std::fs::File::from(ready_wr);
            let _ = w.write_all(if ok { b"1" } else { b"0" });
            drop(w);
            let mut buf = [0u8; 1];
            let _ = std::fs::File::from(hold_rd).read(&mut buf);
            std::process::exit(0)
        }
        Forked::Parent(helper) => {
            drop(ready_wr);
            drop(hold_rd);
            let mut buf = [0u8; 1];
            let n = std::fs::File::from(ready_rd)
                .read(&mut buf)
                .map_err(ns_err("idmap helper"))?;
            let made = (|| {
                if n != 1 || buf[0] != b'1' {
                    return Err(ConfineError::Namespaces {
                        message: "idmap helper could not create a user namespace".into(),
                    });
                }
                write_file(
                    &format!("/proc/{helper}/uid_map"),
                    &format!("{owner} {uid} 1\n"),
                )?;
                write_file(
                    &format!("/proc/{helper}/gid_map"),
                    &format!("{group} {gid} 1\n"),
                )?;
                std::fs::File::open(format!("/proc/{helper}/ns/user"))
                    .map(OwnedFd::from)
                    .map_err(ns_err("opening the idmap user namespace"))
            })();
            drop(hold_wr);
            if let Some(pid) = Pid::from_raw(helper) {
                let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
            }
            made
        }
    }
}
