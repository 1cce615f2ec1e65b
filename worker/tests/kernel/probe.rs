//! The probe protocol between a kernel test (parent) and its confined child.
//!
//! The parent re-executes this test binary with `--exact child_probe` and the request (a
//! sandbox spec and a list of probes, as JSON) in [`PROBE_ENV`]. The child calls the worker's
//! real `confine::confine(&spec)`, runs each probe with raw syscalls (no path checking of
//! ours is involved: whatever is denied is denied by the kernel), and prints one
//! `PROBE-RESULT <index> <json>` line per probe. The parent parses those lines.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime};

use mcpd_ipc::{Enforcement, SandboxSpec};
use serde::{Deserialize, Serialize};

/// Environment variable carrying the JSON [`ProbeRequest`].
pub const PROBE_ENV: &str = "MCPD_CONFINE_PROBE";

/// What the child must do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeRequest {
    /// Call `confine::sanitize_process()` first (step 1), as the worker does.
    pub sanitize: bool,
    /// Passed to `confine::confine`.
    pub spec: SandboxSpec,
    /// Run in order after confinement.
    pub probes: Vec<Probe>,
}

/// One operation attempted after confinement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// `open(path, O_RDONLY)` and read it.
    OpenRead(String),
    /// `open(path, O_WRONLY)` on an existing file.
    OpenWrite(String),
    /// `open(path, O_WRONLY|O_CREAT|O_EXCL)`.
    Create(String),
    /// `opendir` + `getdents64`.
    ListDir(String),
    /// Spawn this program (no arguments) and wait for it.
    Exec(String),
    /// TCP connect to 127.0.0.1:port; the socket is created before confinement if asked
    /// (so that only Landlock can stop the connect), else after (where seccomp stops it).
    TcpConnect {
        /// loopback port of a listener the parent opened
        port: u16,
        /// create the socket before `confine`
        socket_before_confine: bool,
    },
    /// TCP bind to 127.0.0.1:0 with a socket created before confinement.
    TcpBindPreCreated,
    /// A raw syscall. `scratch_arg`: index of an argument replaced by a pointer to a zeroed
    /// 256-byte buffer.
    Syscall {
        /// for messages
        name: String,
        /// syscall number
        nr: i64,
        /// arguments
        args: [u64; 6],
        /// which argument (if any) points at scratch memory
        scratch_arg: Option<usize>,
    },
    /// `clone(CLONE_NEWNS | SIGCHLD)` as a raw syscall.
    CloneNewns,
    /// `kill(pid, 0)`; 0 means the probing process itself.
    Kill(i32),
    /// Connect to an abstract Unix socket (name without the leading NUL).
    ConnectAbstract(String),
    /// Bind an abstract Unix socket inside the sandbox and connect to it.
    AbstractInside,
    /// Report the resource limits.
    Limits,
    /// Write `len` bytes to a new file.
    WriteBytes {
        /// the file
        path: String,
        /// how many bytes
        len: usize,
    },
    /// Threads, time, tokio (current_thread + blocking pool + timer), std::fs reads, and
    /// openat2 / mkdirat / statx / renameat2 / getdents64 / unlinkat in `write_dir`.
    Everyday {
        /// a file inside a read root
        read_file: String,
        /// a directory inside a write root
        write_dir: String,
    },
    /// Spawn `program` with `args` in a nested exec domain that may execute only `domain`
    /// (the worker's own `ExecDomain` + `ChildSetup`), report its exit code.
    ExecInDomain {
        /// the exec set
        domain: Vec<String>,
        /// absolute path
        program: String,
        /// arguments
        args: Vec<String>,
    },
    /// In a forked child, `execveat` `path`: by an fd with `AT_EMPTY_PATH` (fexecve), or by
    /// the path itself (`AT_FDCWD`, no flags). Reports the errno or the exit code.
    Execveat {
        /// absolute path of a program that exits 0
        path: String,
        /// execute an open fd instead of the path
        by_fd: bool,
    },
    /// `syscall(__X32_SYSCALL_BIT | SYS_getpid)`: must kill the process.
    X32Getpid,
    /// Report step 1's effects from inside: environment size, open fds, dumpable, core limit.
    Hygiene,
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// It worked (with a detail).
    Ok(String),
    /// The kernel said no.
    Errno {
        /// which call failed (`socket`, `connect`, `open`, ...)
        stage: String,
        /// errno
        errno: i32,
    },
    /// Anything else (a probe bug, an unexpected value).
    Error(String),
}

impl Outcome {
    fn errno(stage: &str, e: impl Into<std::io::Error>) -> Self {
        let e: std::io::Error = e.into();
        match e.raw_os_error() {
            Some(errno) => Outcome::Errno {
                stage: stage.into(),
                errno,
            },
            None => Outcome::Error(format!("{stage}: {e}")),
        }
    }
}

/// Lines printed by the child.
pub const CONFINED_PREFIX: &str = "PROBE-CONFINED ";
/// The child could not confine itself.
pub const CONFINE_FAILED_PREFIX: &str = "PROBE-CONFINE-FAILED ";
/// One probe result.
pub const RESULT_PREFIX: &str = "PROBE-RESULT ";

fn emit(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// State prepared before confinement, per probe.
enum Prepared {
    Nothing,
    Socket(OwnedFd),
    HardNofileBefore(Option<u64>),
}

/// Child side: confine with the worker's own function, then run the probes.
pub fn run_child(request_json: &str) {
    let request: ProbeRequest = match serde_json::from_str(request_json) {
        Ok(r) => r,
        Err(e) => {
            emit(format!("{CONFINE_FAILED_PREFIX}bad probe request: {e}"));
            return;
        }
    };
    if request.sanitize {
        // Step 1 as the worker runs it.
        // SAFETY: not literally the single-threaded start the function requires, so here is
        // why its two conditions hold: libtest's main thread exists, but this child runs one
        // test (`--exact child_probe --test-threads=1`) and that thread is parked joining this
        // test thread, touching neither the environment nor descriptors >= 4 until it returns
        // (with --nocapture it writes to fd 1 only); no other thread exists, and no object of
        // this child owns a descriptor >= 4 (the request was read from the environment).
        #[allow(unsafe_code)]
        let sanitized = unsafe { mcpd_worker::confine::sanitize_process() };
        if let Err(e) = sanitized {
            emit(format!("{CONFINE_FAILED_PREFIX}sanitize: {e}"));
            return;
        }
    }
    let prepared: Vec<Prepared> = request.probes.iter().map(prepare).collect();
    // Namespaces are off in these specs (a multi-threaded test process cannot unshare a
    // mount namespace); the identity step clears capabilities (uid 0 stays 0).
    let isolated = match mcpd_worker::confine::isolate(&request.spec, -1) {
        Ok(i) => i,
        Err(e) => {
            emit(format!("{CONFINE_FAILED_PREFIX}{e}"));
            return;
        }
    };
    match mcpd_worker::confine::confine(&request.spec, isolated) {
        Ok(enforcement) => emit(format!("{CONFINED_PREFIX}{}", to_json(&enforcement))),
        Err(e) => {
            emit(format!("{CONFINE_FAILED_PREFIX}{e}"));
            return;
        }
    }
    for (i, (probe, prep)) in request.probes.iter().zip(prepared).enumerate() {
        let outcome = run(probe, prep);
        emit(format!("{RESULT_PREFIX}{i} {}", to_json(&outcome)));
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("\"unserializable: {e}\""))
}

fn prepare(probe: &Probe) -> Prepared {
    use rustix::net::{socket, AddressFamily, SocketType};
    match probe {
        Probe::TcpConnect {
            socket_before_confine: true,
            ..
        }
        | Probe::TcpBindPreCreated => match socket(AddressFamily::INET, SocketType::STREAM, None) {
            Ok(fd) => Prepared::Socket(fd),
            Err(_) => Prepared::Nothing,
        },
        Probe::Limits => Prepared::HardNofileBefore(
            rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
        ),
        _ => Prepared::Nothing,
    }
}

fn loopback(port: u16) -> std::net::SocketAddrV4 {
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port)
}

fn run(probe: &Probe, prep: Prepared) -> Outcome {
    use std::io::Read;
    match probe {
        Probe::OpenRead(path) => {
            let mut buf = Vec::new();
            match std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buf)) {
                Ok(n) => Outcome::Ok(format!("read {n} bytes")),
                Err(e) => Outcome::errno("open", e),
            }
        }
        Probe::OpenWrite(path) => match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(_) => Outcome::Ok("opened for writing".into()),
            Err(e) => Outcome::errno("open", e),
        },
        Probe::Create(path) => match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| f.write_all(b"created inside the sandbox\n"))
        {
            Ok(()) => Outcome::Ok("created".into()),
            Err(e) => Outcome::errno("open", e),
        },
        Probe::ListDir(path) => match std::fs::read_dir(path) {
            Ok(entries) => Outcome::Ok(format!("{} entries", entries.count())),
            Err(e) => Outcome::errno("opendir", e),
        },
        // Inherited stdio: `Stdio::null()` would open /dev/null, which the sandbox denies
        // unless the spec grants it, and the EACCES would not be exec's.
        Probe::Exec(program) => match std::process::Command::new(program)
            .stdin(std::process::Stdio::inherit())
            .stdout(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit())
            .status()
        {
            Ok(status) if status.success() => Outcome::Ok("exit 0".into()),
            Ok(status) => Outcome::Error(format!("{program}: {status}")),
            Err(e) => Outcome::errno("spawn", e),
        },
        Probe::TcpConnect { port, .. } => {
            let fd = match prep {
                Prepared::Socket(fd) => fd,
                _ => match rustix::net::socket(
                    rustix::net::AddressFamily::INET,
                    rustix::net::SocketType::STREAM,
                    None,
                ) {
                    Ok(fd) => fd,
                    Err(e) => return Outcome::errno("socket", e),
                },
            };
            match rustix::net::connect(&fd, &loopback(*port)) {
                Ok(()) => Outcome::Ok("connected".into()),
                Err(e) => Outcome::errno("connect", e),
            }
        }
        Probe::TcpBindPreCreated => {
            let Prepared::Socket(fd) = prep else {
                return Outcome::Error("no pre-created socket".into());
            };
            match rustix::net::bind(&fd, &loopback(0)) {
                Ok(()) => Outcome::Ok("bound".into()),
                Err(e) => Outcome::errno("bind", e),
            }
        }
        Probe::Syscall {
            name,
            nr,
            args,
            scratch_arg,
        } => raw_syscall(name, *nr, *args, *scratch_arg),
        Probe::CloneNewns => clone_newns(),
        Probe::Kill(pid) => {
            let pid = if *pid == 0 {
                rustix::process::getpid().as_raw_nonzero().get()
            } else {
                *pid
            };
            let Some(pid) = rustix::process::Pid::from_raw(pid) else {
                return Outcome::Error("bad pid".into());
            };
            match rustix::process::test_kill_process(pid) {
                Ok(()) => Outcome::Ok("signal 0 delivered".into()),
                Err(e) => Outcome::errno("kill", e),
            }
        }
        Probe::ConnectAbstract(name) => connect_abstract(name),
        Probe::AbstractInside => {
            use std::os::linux::net::SocketAddrExt;
            use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
            let name = format!("mcpd-probe-inside-{}", std::process::id());
            let addr = match SocketAddr::from_abstract_name(name.as_bytes()) {
                Ok(a) => a,
                Err(e) => return Outcome::Error(e.to_string()),
            };
            let _listener = match UnixListener::bind_addr(&addr) {
                Ok(l) => l,
                Err(e) => return Outcome::errno("bind", e),
            };
            match UnixStream::connect_addr(&addr) {
                Ok(_) => Outcome::Ok("connected to own abstract socket".into()),
                Err(e) => Outcome::errno("connect", e),
            }
        }
        Probe::Limits => limits(prep),
        Probe::WriteBytes { path, len } => {
            let data = vec![b'x'; *len];
            match std::fs::File::create(path).and_then(|mut f| f.write_all(&data)) {
                Ok(()) => Outcome::Ok(format!("wrote {len} bytes")),
                Err(e) => Outcome::errno("write", e),
            }
        }
        Probe::Everyday {
            read_file,
            write_dir,
        } => match everyday(read_file, write_dir) {
            Ok(detail) => Outcome::Ok(detail),
            Err(e) => Outcome::Error(e),
        },
        Probe::ExecInDomain {
            domain,
            program,
            args,
        } => exec_in_domain(domain, program, args),
        Probe::Execveat { path, by_fd } => execveat(path, *by_fd),
        Probe::X32Getpid => x32_getpid(),
        Probe::Hygiene => hygiene(),
    }
}

fn hygiene() -> Outcome {
    let env = std::env::vars_os().count();
    let mut fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        // /proc is outside every sandbox path: the listing itself must be denied.
        Ok(d) => d
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) => return Outcome::errno("opendir /proc/self/fd", e),
    };
    fds.sort_unstable();
    let dumpable = match rustix::process::dumpable_behavior() {
        Ok(d) => format!("{d:?}"),
        Err(e) => format!("error {e}"),
    };
    let core = rustix::process::getrlimit(rustix::process::Resource::Core);
    Outcome::Ok(format!(
        "env={env} fds={fds:?} dumpable={dumpable} core={:?}/{:?}",
        core.current, core.maximum
    ))
}

#[allow(unsafe_code)]
fn raw_syscall(name: &str, nr: i64, args: [u64; 6], scratch_arg: Option<usize>) -> Outcome {
    let mut scratch = [0u64; 32];
    let mut a = args;
    if let Some(i) = scratch_arg {
        if let Some(slot) = a.get_mut(i) {
            *slot = scratch.as_mut_ptr() as u64;
        }
    }
    // SAFETY: the parent only sends argument sets that are integers, null pointers (which the
    // kernel rejects with EFAULT without touching our memory) or the pointer to `scratch`, a
    // live, writable 256-byte buffer that outlives the call; every such set is harmless for
    // the process even if the call were allowed (see the table in kernel.rs).
    let rc = unsafe {
        libc::syscall(
            nr as libc::c_long,
            a[0] as libc::c_long,
            a[1] as libc::c_long,
            a[2] as libc::c_long,
            a[3] as libc::c_long,
            a[4] as libc::c_long,
            a[5] as libc::c_long,
        )
    };
    if rc < 0 {
        Outcome::errno(name, std::io::Error::last_os_error())
    } else {
        Outcome::Ok(format!("{name} returned {rc}"))
    }
}

#[allow(unsafe_code)]
fn clone_newns() -> Outcome {
    let flags = (libc::CLONE_NEWNS | libc::SIGCHLD) as libc::c_long;
    // SAFETY: clone without CLONE_VM and with a null stack behaves like fork: the child gets
    // a copy of our address space and its own stack copy. If it is ever created (the filter
    // failed), it immediately calls `_exit`, which is async-signal-safe and touches no Rust
    // state, so the copied locks of the other threads do not matter.
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0 as libc::c_long, 0, 0, 0) };
    if rc == 0 {
        // SAFETY: see above; `_exit` never returns and runs no destructors.
        unsafe { libc::_exit(0) };
    }
    if rc < 0 {
        return Outcome::errno("clone", std::io::Error::last_os_error());
    }
    if let Some(pid) = rustix::process::Pid::from_raw(rc as i32) {
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    }
    Outcome::Ok("cloned into a new mount namespace".into())
}

fn connect_abstract(name: &str) -> Outcome {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let addr = match SocketAddr::from_abstract_name(name.as_bytes()) {
        Ok(a) => a,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    match UnixStream::connect_addr(&addr) {
        Ok(_) => Outcome::Ok("connected".into()),
        Err(e) => Outcome::errno("connect", e),
    }
}

fn limits(prep: Prepared) -> Outcome {
    use rustix::process::{getrlimit, Resource};
    let show = |v: Option<u64>| v.map_or("inf".to_string(), |v| v.to_string());
    let before = match prep {
        Prepared::HardNofileBefore(v) => show(v),
        _ => "?".into(),
    };
    let mut parts = vec![format!("nofile_hard_before={before}")];
    for (name, r) in [
        ("nofile", Resource::Nofile),
        ("fsize", Resource::Fsize),
        ("cpu", Resource::Cpu),
        ("as", Resource::As),
        ("nproc", Resource::Nproc),
        ("core", Resource::Core),
    ] {
        let l = getrlimit(r);
        parts.push(format!("{name}={}/{}", show(l.current), show(l.maximum)));
    }
    Outcome::Ok(parts.join(" "))
}

fn everyday(read_file: &str, write_dir: &str) -> Result<String, String> {
    use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, StatxFlags};
    let mut done = Vec::new();

    // Threads (clone3 → ENOSYS → clone fallback in glibc).
    let answer = std::thread::spawn(|| 6 * 7)
        .join()
        .map_err(|_| "thread panicked".to_string())?;
    if answer != 42 {
        return Err("thread returned garbage".into());
    }
    done.push("thread");

    // Time.
    let start = Instant::now();
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| format!("clock: {e}"))?;
    if since_epoch.as_secs() < 1_600_000_000 {
        return Err("wall clock looks wrong".into());
    }
    std::thread::sleep(Duration::from_millis(2));
    if start.elapsed() < Duration::from_millis(2) {
        return Err("monotonic clock did not advance".into());
    }
    done.push("time");

    // std::fs inside a read root.
    let content = std::fs::read(read_file).map_err(|e| format!("read {read_file}: {e}"))?;
    let parent = std::path::Path::new(read_file)
        .parent()
        .ok_or("read_file has no parent")?;
    let listed = std::fs::read_dir(parent)
        .map_err(|e| format!("read_dir: {e}"))?
        .count();
    if listed == 0 {
        return Err("read root listed empty".into());
    }
    done.push("std::fs");

    // tokio: current_thread runtime, timer, blocking pool (a new thread under the filter).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .max_blocking_threads(4)
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let file = read_file.to_string();
    let from_pool = rt
        .block_on(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tokio::task::spawn_blocking(move || std::fs::read(file)).await
        })
        .map_err(|e| format!("spawn_blocking: {e}"))?
        .map_err(|e| format!("read on blocking pool: {e}"))?;
    if from_pool != content {
        return Err("blocking pool read differs".into());
    }
    done.push("tokio");

    // The file tools' syscalls, in a write root.
    let dir = rustix::fs::open(
        write_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open write dir: {e}"))?;
    let file = rustix::fs::openat2(
        &dir,
        "everyday.txt",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| format!("openat2: {e}"))?;
    rustix::io::write(&file, b"hello").map_err(|e| format!("write: {e}"))?;
    drop(file);
    // A path escaping the directory must still fail (openat2's own check, not ours).
    match rustix::fs::openat2(
        &dir,
        "../escape.txt",
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
        ResolveFlags::BENEATH,
    ) {
        Err(rustix::io::Errno::XDEV) => {}
        other => return Err(format!("openat2 ../ gave {other:?}, want EXDEV")),
    }
    rustix::fs::mkdirat(&dir, "sub", Mode::from_raw_mode(0o700))
        .map_err(|e| format!("mkdirat: {e}"))?;
    let st = rustix::fs::statx(&dir, "everyday.txt", AtFlags::empty(), StatxFlags::SIZE)
        .map_err(|e| format!("statx: {e}"))?;
    if st.stx_size != 5 {
        return Err(format!("statx size {}", st.stx_size));
    }
    rustix::fs::renameat_with(
        &dir,
        "everyday.txt",
        &dir,
        "sub/moved.txt",
        RenameFlags::NOREPLACE,
    )
    .map_err(|e| format!("renameat2: {e}"))?;
    let names: Vec<String> = std::fs::read_dir(format!("{write_dir}/sub"))
        .map_err(|e| format!("getdents64: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    if names != ["moved.txt"] {
        return Err(format!("listing after rename: {names:?}"));
    }
    rustix::fs::unlinkat(&dir, "sub/moved.txt", AtFlags::empty())
        .map_err(|e| format!("unlinkat: {e}"))?;
    rustix::fs::unlinkat(&dir, "sub", AtFlags::REMOVEDIR)
        .map_err(|e| format!("unlinkat dir: {e}"))?;
    let _ = dir.as_fd().as_raw_fd();
    done.push("openat2/mkdirat/statx/renameat2/getdents64/unlinkat");

    Ok(done.join(", "))
}

fn exec_in_domain(domain: &[String], program: &str, args: &[String]) -> Outcome {
    use mcpd_worker::confine::{child::ChildSetup, exec_domain::ExecDomain};
    let d = match ExecDomain::build(domain) {
        Ok(d) => d,
        Err(e) => return Outcome::Error(format!("exec domain: {e}")),
    };
    let Some(fd) = d.fd() else {
        return Outcome::Error("exec domain not enforced on this kernel".into());
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit());
    ChildSetup::new(&mcpd_ipc::CommandLimits::default(), false)
        .exec_domain(fd)
        .install(&mut cmd);
    match cmd.status() {
        Ok(st) => Outcome::Ok(format!("exit {:?}", st.code())),
        Err(e) => Outcome::errno("spawn", e),
    }
}

/// [`Probe::Execveat`] by fd, without confinement (the control of the kernel test).
pub fn unconfined_execveat(path: &str) -> Outcome {
    execveat(path, true)
}

#[allow(unsafe_code)]
fn execveat(path: &str, by_fd: bool) -> Outcome {
    use std::os::unix::process::CommandExt;
    let Ok(c_path) = std::ffi::CString::new(path) else {
        return Outcome::Error("path with NUL".into());
    };
    let fd = if by_fd {
        match rustix::fs::open(
            path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => Some(fd),
            Err(e) => return Outcome::errno("open", e),
        }
    } else {
        None
    };
    let argv: [*const libc::c_char; 2] = [c_path.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let (dirfd, name, flags) = match &fd {
        Some(fd) => (fd.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH),
        None => (libc::AT_FDCWD, c_path.as_ptr(), 0),
    };
    // Plain integers, so that the hook is Send + Sync; they point into `c_path`, `argv` and
    // `envp`, which outlive `status()` (and are copied into the forked child).
    let (name, argv_p, envp_p) = (
        name as usize,
        argv.as_ptr() as usize,
        envp.as_ptr() as usize,
    );
    let mut cmd = std::process::Command::new(path);
    cmd.stdin(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit());
    let hook = move || {
        // SAFETY: the pointers are to NUL-terminated strings and NULL-terminated arrays that
        // are valid in the child's copy of our memory (see above); execveat only reads them.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                dirfd as libc::c_long,
                name as *const libc::c_char,
                argv_p as *const *const libc::c_char,
                envp_p as *const *const libc::c_char,
                flags as libc::c_long,
            );
        }
        // Only reached if execveat failed: its errno is the hook's error.
        Err(std::io::Error::last_os_error())
    };
    // SAFETY: the hook runs in the forked child and makes one raw execveat; it allocates
    // nothing and takes no lock, as code between fork and exec must.
    unsafe {
        cmd.pre_exec(hook);
    }
    let r = cmd.status();
    drop(fd);
    match r {
        Ok(st) => Outcome::Ok(format!("exit {:?}", st.code())),
        Err(e) => Outcome::errno("execveat", e),
    }
}

#[allow(unsafe_code)]
fn x32_getpid() -> Outcome {
    #[cfg(target_arch = "x86_64")]
    {
        const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
        // SAFETY: getpid takes no arguments and touches no memory, in either ABI.
        let rc = unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) };
        if rc < 0 {
            Outcome::errno("x32 getpid", std::io::Error::last_os_error())
        } else {
            Outcome::Ok(format!(
                "x32 getpid returned {rc}: the process was NOT killed"
            ))
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Outcome::Error("x32 exists only on x86_64".into())
    }
}

/// The parent's view of a finished child.
#[derive(Debug)]
pub struct ProbeRun {
    /// How the child ended.
    pub status: std::process::ExitStatus,
    /// What confine returned, if it succeeded.
    pub enforcement: Option<Enforcement>,
    /// Why confine failed, if it did.
    pub confine_failed: Option<String>,
    /// One per probe that ran (a killed child has fewer).
    pub outcomes: Vec<Outcome>,
    /// Raw output, for assertion messages.
    pub stdout: String,
    /// Raw output, for assertion messages.
    pub stderr: String,
}

/// Parse the child's stdout.
pub fn parse(status: std::process::ExitStatus, stdout: String, stderr: String) -> ProbeRun {
    let mut run = ProbeRun {
        status,
        enforcement: None,
        confine_failed: None,
        outcomes: Vec::new(),
        stdout: String::new(),
        stderr,
    };
    // libtest prints `test child_probe ... ` without a newline before the test's own output,
    // so a marker may start mid-line.
    let after = |line: &'_ str, prefix: &str| -> Option<String> {
        line.find(prefix)
            .map(|i| line[i + prefix.len()..].to_string())
    };
    for line in stdout.lines() {
        if let Some(json) = after(line, CONFINED_PREFIX) {
            run.enforcement = serde_json::from_str(&json).ok();
        } else if let Some(reason) = after(line, CONFINE_FAILED_PREFIX) {
            run.confine_failed = Some(reason);
        } else if let Some(rest) = after(line, RESULT_PREFIX) {
            let (index, json) = rest.split_once(' ').unwrap_or((rest.as_str(), ""));
            let outcome = serde_json::from_str(json)
                .unwrap_or_else(|e| Outcome::Error(format!("unparsable result {json:?}: {e}")));
            if index.parse::<usize>().ok() == Some(run.outcomes.len()) {
                run.outcomes.push(outcome);
            } else {
                run.outcomes
                    .push(Outcome::Error(format!("out-of-order result {index}")));
            }
        }
    }
    run.stdout = stdout;
    run
}
