//! Step 6: the seccomp-bpf filter (installed last).
//!
//! # Shape
//!
//! Default action **allow**, with a reviewed deny list kept as data ([`DENIED_SYSCALLS`], one
//! reason per syscall). A deny list, not an allow list, because the worker runs arbitrary
//! allow-listed programs and interpreters; what confines files and TCP is Landlock. The deny
//! list removes kernel attack surface and the syscalls that could undo or escape the sandbox.
//!
//! | syscall(s)                                      | action            |
//! |-------------------------------------------------|-------------------|
//! | everything in [`DENIED_SYSCALLS`]               | `EPERM`           |
//! | `clone` with any `CLONE_NEW*` flag (one rule per flag: NS, CGROUP, UTS, IPC, USER, PID, NET) | `EPERM` |
//! | `personality` other than `PER_LINUX` (0) or the query `0xffffffff` | `EPERM` |
//! | `ioctl` `TIOCSTI` / `TIOCLINUX` (typing into a terminal)           | `EPERM` |
//! | `memfd_create` without `MFD_NOEXEC_SEAL`, or with `MFD_EXEC` (an executable anonymous file) | `EPERM` |
//! | `execveat` with `AT_EMPTY_PATH` in its flags (`fexecve`: execute an open fd) | `EPERM` |
//! | `clone3`                                        | `ENOSYS`          |
//! | `socket` with a family other than `AF_UNIX` (+ `AF_INET`, `AF_INET6` when the spec grants network) | `EACCES` |
//! | `socketpair` with a family other than `AF_UNIX` | `EACCES`          |
//! | a foreign architecture (i386 `int 0x80`, arm32) | kill process (seccompiler's arch check) |
//! | x86_64: any number with `__X32_SYSCALL_BIT`     | kill process (our prefix) |
//!
//! Denials return an errno rather than killing, so a program that probes a feature (e.g.
//! `io_uring`, user namespaces) falls back instead of crashing the session. The two kill
//! cases are not probes but ABI confusion: nothing legitimate in the worker uses them.
//!
//! * `clone3` gets `ENOSYS`, not `EPERM`: its flags live in a struct in memory that BPF cannot
//!   read, so it cannot be inspected; `ENOSYS` makes glibc (and Go, Rust std) fall back to
//!   `clone`, whose flags we can check. `CLONE_NEWTIME` exists only for `clone3` (in `clone`,
//!   bit 0x80 is part of the exit signal), and `unshare` is denied entirely.
//! * Netlink (`AF_NETLINK`), packet, and every other family stay denied even when network is
//!   granted: the network grant is for TCP/UDP clients. glibc's `getaddrinfo(AI_ADDRCONFIG)`
//!   falls back to "IPv4 and IPv6 available" when its netlink socket fails.
//! * `personality`: `ADDR_NO_RANDOMIZE` / `READ_IMPLIES_EXEC` weaken ASLR/NX for what the
//!   worker executes; the query form and `PER_LINUX` are allowed because some runtimes call
//!   them.
//! * `execveat(fd, "", ..., AT_EMPTY_PATH)` (glibc's `fexecve`, Python's `os.execve(fd, ...)`)
//!   executes whatever file an fd refers to, chosen by no path: a `memfd`, an `O_TMPFILE`, or a
//!   file opened before a rename. Landlock exempts files on internal kernel mounts (memfd,
//!   pipes) from its path rules, so this is the way to run an anonymous or unlisted file
//!   despite the per-program exec domains. Nothing the worker runs needs it (glibc's
//!   `execv*`/`posix_spawn`, Python, Node, Go and Rust std use `execve`). `execveat` with a
//!   path (a directory fd + a name, or `AT_FDCWD`) stays allowed: it resolves the path like
//!   `execve`, and Landlock checks the result. Denied with `EPERM` (not `ENOSYS`): glibc's
//!   `fexecve` falls back to `/proc/self/fd/N` only on `ENOSYS` (and `/proc` is outside every
//!   sandbox anyway). `vm.memfd_noexec` (set for the worker's pid namespace) covers
//!   `execve("/proc/self/fd/N")` of a memfd.
//! * Arguments the kernel truncates to 32 bits (`clone` flags via `lower_32_bits`, `socket`
//!   family `int`, `ioctl` cmd `unsigned int`, `personality` `unsigned int`) are compared as
//!   32-bit words on purpose: comparing 64 bits would let junk in the upper half slip past a
//!   rule while the kernel ignores it.
//!
//! # x32
//!
//! On x86_64 the kernel reports x32 syscalls with `AUDIT_ARCH_X86_64` and the number ORed with
//! `__X32_SYSCALL_BIT` (0x4000_0000). seccompiler's arch check passes them and none of its
//! per-number comparisons match, so they would hit the default *allow*: an x32 `ptrace` would
//! bypass the whole deny list on kernels built with `CONFIG_X86_X32_ABI`. We therefore prepend
//! five instructions to the first program: if arch is x86_64 and `nr >= 0x4000_0000`, return
//! `SECCOMP_RET_KILL_PROCESS`; otherwise fall through to seccompiler's program, which starts by
//! reloading the arch. BPF jumps are relative and forward-only, so prepending does not disturb
//! the offsets inside seccompiler's program, and our jumps only target our own instructions or
//! the first instruction after them.
//!
//! # Installation
//!
//! seccompiler compiles one match action per filter, so the three actions (`EPERM`,
//! `EACCES`, `ENOSYS`) are three filters, installed one after the other. The kernel runs every
//! installed filter and keeps the most severe verdict; each syscall number appears in only one
//! filter, so they do not interact. They are installed with `TSYNC` (all threads). Step 6
//! runs while the worker is still single-threaded, so plain `seccomp(SET_MODE_FILTER)` would
//! suffice (tokio's threads, created later, inherit the filter); TSYNC costs nothing and keeps
//! the filter process-wide even if that invariant were broken.
//!
//! Architectures: x86_64 and aarch64 (same deny list; the x86-only entries and the x32 prefix
//! are compiled only on x86_64). Any other target fails to compile.

use std::collections::BTreeMap;

use mcpd_ipc::SandboxSpec;
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::ConfineError;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "mcpd-worker's seccomp filter is written and reviewed for x86_64 and aarch64 only; \
     refusing to build a worker that would run unfiltered"
);

#[cfg(target_arch = "x86_64")]
const TARGET_ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET_ARCH: TargetArch = TargetArch::aarch64;

/// One unconditionally denied syscall (`EPERM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedSyscall {
    /// The syscall's name.
    pub name: &'static str,
    /// Its number on the build target.
    pub nr: i64,
    /// Why it is denied.
    pub why: &'static str,
}

const fn deny(name: &'static str, nr: i64, why: &'static str) -> DeniedSyscall {
    DeniedSyscall { name, nr, why }
}

/// `open_tree_attr` (Linux 6.15): same number on x86_64 and aarch64 (new syscalls share the
/// generic table), not yet in `libc`.
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// The reviewed deny list: every entry returns `EPERM`.
#[rustfmt::skip]
pub const DENIED_SYSCALLS: &[DeniedSyscall] = &[
    // Other processes: read/write their memory, registers, file descriptors.
    deny("ptrace", libc::SYS_ptrace, "debugging / controlling other processes (and being controlled: PTRACE_TRACEME)"),
    deny("process_vm_readv", libc::SYS_process_vm_readv, "reads another process's memory"),
    deny("process_vm_writev", libc::SYS_process_vm_writev, "writes another process's memory"),
    deny("pidfd_getfd", libc::SYS_pidfd_getfd, "steals a file descriptor from another process"),
    deny("kcmp", libc::SYS_kcmp, "compares kernel objects of other processes (kernel pointer ordering leak)"),
    deny("process_madvise", libc::SYS_process_madvise, "acts on another process's memory"),
    // Kernel attack surface with a history of privilege escalations.
    deny("io_uring_setup", libc::SYS_io_uring_setup, "io_uring: large attack surface; its operations bypass seccomp"),
    deny("io_uring_enter", libc::SYS_io_uring_enter, "io_uring (see io_uring_setup)"),
    deny("io_uring_register", libc::SYS_io_uring_register, "io_uring (see io_uring_setup)"),
    deny("bpf", libc::SYS_bpf, "eBPF programs and maps: verifier bugs, kernel memory"),
    deny("perf_event_open", libc::SYS_perf_event_open, "performance counters: side channels, frequent CVEs"),
    deny("userfaultfd", libc::SYS_userfaultfd, "pauses the kernel at chosen faults (race-exploit primitive)"),
    // Mount namespace and filesystem topology.
    deny("mount", libc::SYS_mount, "changes the mount table"),
    deny("umount2", libc::SYS_umount2, "changes the mount table"),
    deny("pivot_root", libc::SYS_pivot_root, "changes the root mount"),
    deny("fsopen", libc::SYS_fsopen, "new mount API"),
    deny("fsconfig", libc::SYS_fsconfig, "new mount API"),
    deny("fsmount", libc::SYS_fsmount, "new mount API"),
    deny("move_mount", libc::SYS_move_mount, "new mount API"),
    deny("open_tree", libc::SYS_open_tree, "new mount API (clones mount trees)"),
    deny("open_tree_attr", SYS_OPEN_TREE_ATTR, "new mount API (open_tree with attributes)"),
    deny("fspick", libc::SYS_fspick, "new mount API (reconfigures a superblock)"),
    deny("mount_setattr", libc::SYS_mount_setattr, "changes mount attributes"),
    // Namespaces: the sandbox is built for this namespace set; user namespaces unlock
    // capability-gated kernel code to unprivileged users.
    deny("unshare", libc::SYS_unshare, "new namespaces (user namespaces expose root-only kernel code)"),
    deny("setns", libc::SYS_setns, "joins other namespaces"),
    // Replacing or controlling the kernel.
    deny("kexec_load", libc::SYS_kexec_load, "loads a new kernel"),
    deny("kexec_file_load", libc::SYS_kexec_file_load, "loads a new kernel"),
    deny("reboot", libc::SYS_reboot, "reboots / halts the host"),
    deny("init_module", libc::SYS_init_module, "loads kernel code"),
    deny("finit_module", libc::SYS_finit_module, "loads kernel code"),
    deny("delete_module", libc::SYS_delete_module, "unloads kernel code"),
    deny("swapon", libc::SYS_swapon, "host memory configuration"),
    deny("swapoff", libc::SYS_swapoff, "host memory configuration"),
    deny("acct", libc::SYS_acct, "host process accounting"),
    deny("quotactl", libc::SYS_quotactl, "filesystem quota administration"),
    deny("quotactl_fd", libc::SYS_quotactl_fd, "filesystem quota administration"),
    deny("syslog", libc::SYS_syslog, "kernel log buffer (addresses, other tenants' events)"),
    // Kernel keyrings: shared state across processes of a user; frequent CVEs.
    deny("keyctl", libc::SYS_keyctl, "kernel keyrings"),
    deny("add_key", libc::SYS_add_key, "kernel keyrings"),
    deny("request_key", libc::SYS_request_key, "kernel keyrings"),
    // Host clock.
    deny("settimeofday", libc::SYS_settimeofday, "sets the host clock"),
    deny("clock_settime", libc::SYS_clock_settime, "sets the host clock"),
    deny("adjtimex", libc::SYS_adjtimex, "adjusts the host clock"),
    deny("clock_adjtime", libc::SYS_clock_adjtime, "adjusts the host clock"),
    // Path-less file access.
    deny("lookup_dcookie", libc::SYS_lookup_dcookie, "turns a kernel cookie into a path (oprofile; removed in 6.9)"),
    deny("name_to_handle_at", libc::SYS_name_to_handle_at, "file handles (see open_by_handle_at)"),
    deny("open_by_handle_at", libc::SYS_open_by_handle_at, "opens a file by handle, bypassing path resolution and Landlock path rules"),
];

/// x86-only syscalls, denied on x86_64.
#[cfg(target_arch = "x86_64")]
const DENIED_SYSCALLS_X86: &[DeniedSyscall] = &[
    deny("iopl", libc::SYS_iopl, "raw I/O port access"),
    deny("ioperm", libc::SYS_ioperm, "raw I/O port access"),
    deny(
        "modify_ldt",
        libc::SYS_modify_ldt,
        "16-bit segments: legacy attack surface",
    ),
    deny("uselib", libc::SYS_uselib, "legacy a.out library loading"),
];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_SYSCALLS_X86: &[DeniedSyscall] = &[];

/// Every unconditionally denied syscall on this target.
pub fn denied_syscalls() -> impl Iterator<Item = &'static DeniedSyscall> {
    DENIED_SYSCALLS.iter().chain(DENIED_SYSCALLS_X86.iter())
}

/// `clone` flags that create namespaces (one `MaskedEq` rule each).
const CLONE_NAMESPACE_FLAGS: &[(&str, libc::c_int)] = &[
    ("CLONE_NEWNS", libc::CLONE_NEWNS),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
    ("CLONE_NEWPID", libc::CLONE_NEWPID),
    ("CLONE_NEWNET", libc::CLONE_NEWNET),
];

/// `personality(2)` values that stay allowed: `PER_LINUX` and the query.
const PERSONALITY_PER_LINUX: u64 = 0;
const PERSONALITY_QUERY: u64 = 0xffff_ffff;

/// `ioctl(2)` requests denied: `TIOCSTI` (push input into a terminal: commands typed into the
/// operator's shell if a tty ever leaks in) and `TIOCLINUX` (same, via the console selection).
const DENIED_IOCTLS: &[(&str, u64)] = &[("TIOCSTI", libc::TIOCSTI), ("TIOCLINUX", libc::TIOCLINUX)];

/// `memfd_create(2)` flags (uapi `linux/memfd.h`, Linux 6.3).
const MFD_NOEXEC_SEAL: u64 = 0x0008;
const MFD_EXEC: u64 = 0x0010;
/// `AT_EMPTY_PATH`: with it, `execveat` executes the fd itself (see the module docs).
const AT_EMPTY_PATH: u64 = libc::AT_EMPTY_PATH.unsigned_abs() as u64;

/// `__X32_SYSCALL_BIT`.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The compiled filters, ready to install.
#[derive(Debug)]
pub(super) struct Filters {
    programs: Vec<BpfProgram>,
}

fn build_err(context: &'static str) -> impl FnOnce(seccompiler::BackendError) -> ConfineError {
    move |e| ConfineError::Seccomp {
        context,
        message: e.to_string(),
    }
}

/// A condition on the low 32 bits of argument `arg` (see the module docs on truncation).
fn arg32(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, ConfineError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(build_err("condition"))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, ConfineError> {
    SeccompRule::new(conditions).map_err(build_err("rule"))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_match: SeccompAction,
    context: &'static str,
) -> Result<BpfProgram, ConfineError> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, on_match, TARGET_ARCH)
        .map_err(build_err(context))?;
    BpfProgram::try_from(filter).map_err(build_err(context))
}

fn errno(e: i32) -> SeccompAction {
    // errno values are small positive integers; the kernel keeps the low 16 bits.
    SeccompAction::Errno(e.unsigned_abs())
}

/// Compile the filters for this spec (pure: nothing is applied).
pub(super) fn build(spec: &SandboxSpec) -> Result<Filters, ConfineError> {
    // Filter 1 (EPERM): the deny list, namespace flags of clone, personality, tty ioctls.
    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for d in denied_syscalls() {
        // An empty rule chain matches unconditionally.
        if eperm.insert(d.nr, Vec::new()).is_some() {
            return Err(ConfineError::Seccomp {
                context: "deny list",
                message: format!("{} listed twice", d.name),
            });
        }
    }
    let clone_rules = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|&(_, flag)| {
            let flag = u64::from(flag.unsigned_abs());
            rule(vec![arg32(0, SeccompCmpOp::MaskedEq(flag), flag)?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    eperm.insert(libc::SYS_clone, clone_rules);
    eperm.insert(
        libc::SYS_personality,
        vec![rule(vec![
            arg32(0, SeccompCmpOp::Ne, PERSONALITY_PER_LINUX)?,
            arg32(0, SeccompCmpOp::Ne, PERSONALITY_QUERY)?,
        ])?],
    );
    let ioctl_rules = DENIED_IOCTLS
        .iter()
        .map(|&(_, request)| rule(vec![arg32(1, SeccompCmpOp::Eq, request)?]))
        .collect::<Result<Vec<_>, _>>()?;
    eperm.insert(libc::SYS_ioctl, ioctl_rules);
    // memfd_create: only sealed non-executable memfds (MFD_NOEXEC_SEAL set, MFD_EXEC not):
    // an executable memfd is a program that no exec rule lists. Under a root broker the PID
    // namespace's `vm.memfd_noexec = 2` says the same; a user namespace cannot set it, so this
    // is the layer that holds there.
    eperm.insert(
        libc::SYS_memfd_create,
        vec![
            rule(vec![arg32(1, SeccompCmpOp::MaskedEq(MFD_NOEXEC_SEAL), 0)?])?,
            rule(vec![arg32(1, SeccompCmpOp::MaskedEq(MFD_EXEC), MFD_EXEC)?])?,
        ],
    );
    // execveat(dirfd, path, argv, envp, flags): fexecve of an fd bypasses path rules.
    eperm.insert(
        libc::SYS_execveat,
        vec![rule(vec![arg32(
            4,
            SeccompCmpOp::MaskedEq(AT_EMPTY_PATH),
            AT_EMPTY_PATH,
        )?])?],
    );
    let mut eperm = compile(eperm, errno(libc::EPERM), "EPERM filter")?;
    #[cfg(target_arch = "x86_64")]
    {
        let mut guarded = x32_guard();
        guarded.append(&mut eperm);
        eperm = guarded;
    }

    // Filter 2 (EACCES): socket families.
    let mut families = vec![libc::AF_UNIX];
    if spec.allow_network {
        families.extend([libc::AF_INET, libc::AF_INET6]);
    }
    let not_allowed = families
        .iter()
        .map(|&f| arg32(0, SeccompCmpOp::Ne, u64::from(f.unsigned_abs())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut eacces: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    eacces.insert(libc::SYS_socket, vec![rule(not_allowed)?]);
    eacces.insert(
        libc::SYS_socketpair,
        vec![rule(vec![arg32(
            0,
            SeccompCmpOp::Ne,
            u64::from(libc::AF_UNIX.unsigned_abs()),
        )?])?],
    );
    let eacces = compile(eacces, errno(libc::EACCES), "EACCES filter")?;

    // Filter 3 (ENOSYS): clone3, so that callers fall back to the inspectable clone.
    let mut enosys: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    enosys.insert(libc::SYS_clone3, Vec::new());
    let enosys = compile(enosys, errno(libc::ENOSYS), "ENOSYS filter")?;

    Ok(Filters {
        programs: vec![eperm, eacces, enosys],
    })
}

/// The x32 kill switch prepended to the first program (see the module docs).
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> Vec<sock_filter> {
    // Classic BPF encodings (linux/bpf_common.h, linux/seccomp.h, linux/audit.h).
    const BPF_LD: u16 = 0x00;
    const BPF_W: u16 = 0x00;
    const BPF_ABS: u16 = 0x20;
    const BPF_JMP: u16 = 0x05;
    const BPF_JEQ: u16 = 0x10;
    const BPF_JGE: u16 = 0x30;
    const BPF_K: u16 = 0x00;
    const BPF_RET: u16 = 0x06;
    const LD_W_ABS: u16 = BPF_LD | BPF_W | BPF_ABS;
    const JEQ_K: u16 = BPF_JMP | BPF_JEQ | BPF_K;
    const JGE_K: u16 = BPF_JMP | BPF_JGE | BPF_K;
    const RET_K: u16 = BPF_RET | BPF_K;
    const SECCOMP_DATA_NR: u32 = 0; // offsetof(struct seccomp_data, nr)
    const SECCOMP_DATA_ARCH: u32 = 4; // offsetof(struct seccomp_data, arch)
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000; // EM_X86_64 | 64BIT | LE
    const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        // 0: A = arch
        insn(LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        // 1: not x86_64 → 5 (seccompiler's own arch check kills foreign arches)
        insn(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        // 2: A = nr
        insn(LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        // 3: nr < X32 bit → 5
        insn(JGE_K, 0, 1, X32_SYSCALL_BIT),
        // 4: x32 syscall: kill the process
        insn(RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        // 5: seccompiler's program follows
    ]
}

/// Install the filters on every thread of the process, then check the mode.
pub(super) fn install(filters: &Filters) -> Result<(), ConfineError> {
    for program in &filters.programs {
        seccompiler::apply_filter_all_threads(program).map_err(|e| ConfineError::Seccomp {
            context: "installing the filter",
            message: e.to_string(),
        })?;
    }
    match rustix::thread::secure_computing_mode() {
        Ok(rustix::thread::SecureComputingMode::Filter) => Ok(()),
        Ok(other) => Err(ConfineError::Seccomp {
            context: "PR_GET_SECCOMP",
            message: format!("mode is {other:?} after installing the filter"),
        }),
        Err(e) => Err(ConfineError::Seccomp {
            context: "PR_GET_SECCOMP",
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[test]
    fn deny_list_has_no_duplicates_and_no_conditional_syscalls() {
        let mut seen = std::collections::BTreeSet::new();
        for d in denied_syscalls() {
            assert!(seen.insert(d.nr), "{} listed twice", d.name);
            assert!(!d.why.is_empty());
        }
        for nr in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_personality,
            libc::SYS_ioctl,
            libc::SYS_execveat,
            libc::SYS_socket,
            libc::SYS_socketpair,
        ] {
            assert!(!seen.contains(&nr), "{nr} has its own rule");
        }
    }

    #[test]
    fn filters_compile_for_both_network_modes() {
        for allow_network in [false, true] {
            let spec = SandboxSpec {
                allow_network,
                ..SandboxSpec::default()
            };
            let filters = build(&spec).expect("filters compile");
            assert_eq!(filters.programs.len(), 3);
            for p in &filters.programs {
                assert!(p.len() < 4096);
            }
        }
    }
}
