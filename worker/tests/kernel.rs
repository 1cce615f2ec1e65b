//! Kernel-level tests of the worker's confinement: real processes, the real kernel.
//!
//! Two kinds:
//!
//! * **Worker tests** start the real `mcpd-worker` binary with a `SOCK_SEQPACKET` socketpair
//!   end on fd 3, speak the IPC handshake to it, and inspect it from outside
//!   (`/proc/PID/status`, `/proc/PID/fd`, exit status).
//! * **Probe tests** prove that the kernel itself denies, independent of any path-checking
//!   code: this test binary re-executes itself (`--exact child_probe`) with a request in
//!   `MCPD_CONFINE_PROBE`; the child confines itself with the worker's own
//!   `mcpd_worker::confine::confine(&spec)` and then tries raw operations, reporting the exact
//!   errno of each (see `kernel/probe.rs`).
//!
//! Requirements: Landlock ABI ≥ 6 and seccomp filters (this machine and CI: ABI 7, root).
//! A test whose kernel feature is missing fails when `CI` is set (CI has every feature) and
//! otherwise prints `SKIPPED: <why>` and returns (see `require`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "kernel/probe.rs"]
mod probe;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcpd_ipc::channel::{recv_blocking, send_blocking, socketpair};
use mcpd_ipc::{
    BrokerToWorker, LandlockStatus, ResourceLimits, SandboxSpec, WorkerToBroker, MAX_FRAME,
    PROTOCOL_VERSION,
};
use mcpd_worker::serve::exit;
use probe::{Outcome, Probe, ProbeRequest, ProbeRun, PROBE_ENV};

const WORKER: &str = env!("CARGO_BIN_EXE_mcpd-worker");
/// How long any child may take before it is killed and the test fails.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);
/// Where the Ready test leaves an inherited, non-CLOEXEC descriptor for the worker to close.
const MARKER_FD: i32 = 57;
/// The unprivileged uid/gid the Ready test runs the worker as (when the test runs as root).
const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------------------
// The helper entry point of the probe tests.
// ---------------------------------------------------------------------------------------

/// Child side of the probe tests. When run directly (no `MCPD_CONFINE_PROBE`), does nothing.
#[test]
fn child_probe() {
    match std::env::var(PROBE_ENV) {
        Ok(json) => probe::run_child(&json),
        Err(_) => println!(
            "child_probe: HELPER ENTRY POINT of the probe tests (re-executed with \
             {PROBE_ENV} set) -- nothing to do when run directly"
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Kernel feature detection.
// ---------------------------------------------------------------------------------------

/// The kernel's Landlock ABI (0 = none), asked directly of the kernel.
#[allow(unsafe_code)]
fn kernel_landlock_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: with a null attr, size 0 and the VERSION flag, landlock_create_ruleset reads
    // no memory and creates no fd: it returns the ABI version or -1 (ENOSYS/EOPNOTSUPP).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0 as libc::size_t,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).unwrap_or(0)
}

fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(":\t").map(str::to_string))
}

fn kernel_has_seccomp_filters() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status_field(&status, "Seccomp").is_some()
}

/// Whether this kernel can run test `test`, which needs Landlock ABI `min` and seccomp
/// ([`require`]: a failure under CI, a loud SKIPPED line elsewhere).
fn kernel_supports(test: &str, min_landlock: u32) -> bool {
    let abi = kernel_landlock_abi();
    require(
        abi >= min_landlock,
        &format!("Landlock ABI >= {min_landlock}"),
        &format!("{test}: the kernel's Landlock ABI is {abi}"),
    ) && require(
        kernel_has_seccomp_filters(),
        "seccomp filters",
        &format!("{test}: no Seccomp: in /proc/self/status"),
    )
}

use mcpd_e2e::require;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

// ---------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------

/// A temporary directory others can traverse (the worker may run as nobody).
fn tempdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}

/// Wait for a child with a deadline (SIGKILL after `CHILD_TIMEOUT`), collecting its output.
fn wait_output(child: Child) -> std::process::Output {
    let pid = rustix::process::Pid::from_child(&child);
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < CHILD_TIMEOUT {
            if done2.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !done2.load(Ordering::SeqCst) {
            eprintln!("child {pid:?} timed out; killing it");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    });
    let out = child.wait_with_output().expect("wait for child");
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    out
}

/// Run probes in a child confined with `spec`.
fn run_probes(spec: &SandboxSpec, probes: &[Probe]) -> ProbeRun {
    run_probes_with(spec, probes, false, None)
}

/// Run probes in a child confined with `spec`, after `sanitize_process` if asked, with
/// `marker` (if any) inherited without CLOEXEC on `MARKER_FD`.
fn run_probes_with(
    spec: &SandboxSpec,
    probes: &[Probe],
    sanitize: bool,
    marker: Option<&std::fs::File>,
) -> ProbeRun {
    let request = ProbeRequest {
        sanitize,
        spec: spec.clone(),
        probes: probes.to_vec(),
    };
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(["--exact", "child_probe", "--nocapture", "--test-threads=1"])
        .env(
            PROBE_ENV,
            serde_json::to_string(&request).expect("request json"),
        )
        .env("MCPD_TEST_SECRET", "must-not-survive-sanitize")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let marker_hi = marker.map(|f| rustix::io::fcntl_dupfd_cloexec(f, 100).expect("dup"));
    if let Some(m) = &marker_hi {
        inherit_fd(&mut cmd, m.as_raw_fd(), MARKER_FD);
    }
    let child = cmd.spawn().expect("re-exec the test binary");
    drop(marker_hi);
    let out = wait_output(child);
    probe::parse(
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Make `source` (a CLOEXEC fd >= 100 of ours) appear as `target`, without CLOEXEC, in the
/// child `cmd` will start.
#[allow(unsafe_code)]
fn inherit_fd(cmd: &mut Command, source: i32, target: i32) {
    let hook = move || {
        // dup2 clears FD_CLOEXEC on `target`, so it survives exec; `source` (CLOEXEC) does
        // not. `source` >= 100 cannot be clobbered by another dup2 onto a small target.
        // SAFETY: dup2 takes two integers and changes only the child's own fd table; `source`
        // is open in the child (it was open in the parent at fork time).
        if unsafe { libc::dup2(source, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and calls only dup2, which is
    // async-signal-safe; it captures two integers, allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Assert each probe's outcome; `expect` pairs a probe with a predicate description.
fn check(run: &ProbeRun, probes: &[(Probe, Expect)]) {
    assert!(
        run.confine_failed.is_none(),
        "confine failed in the child: {:?}\nstdout:\n{}\nstderr:\n{}",
        run.confine_failed,
        run.stdout,
        run.stderr
    );
    assert_eq!(
        run.outcomes.len(),
        probes.len(),
        "child reported {} of {} probes (status {:?})\nstdout:\n{}\nstderr:\n{}",
        run.outcomes.len(),
        probes.len(),
        run.status,
        run.stdout,
        run.stderr
    );
    let mut failures = Vec::new();
    for ((probe, expect), got) in probes.iter().zip(&run.outcomes) {
        let ok = match (expect, got) {
            (Expect::Ok, Outcome::Ok(_)) => true,
            (Expect::OkWith(want), Outcome::Ok(got)) => got == want,
            (Expect::Errno(stage, errno), Outcome::Errno { stage: s, errno: e }) => {
                s == stage && e == errno
            }
            _ => false,
        };
        println!("{} {probe:?} -> {got:?}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failures.push(format!("{probe:?}: expected {expect:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "probe failures:\n{}",
        failures.join("\n")
    );
    assert!(run.status.success(), "child exited with {:?}", run.status);
}

#[derive(Debug, Clone)]
enum Expect {
    Ok,
    /// It worked, with exactly this detail (e.g. an exit code).
    OkWith(&'static str),
    Errno(&'static str, i32),
}

fn eacces(stage: &'static str) -> Expect {
    Expect::Errno(stage, libc::EACCES)
}

fn eperm(stage: &'static str) -> Expect {
    Expect::Errno(stage, libc::EPERM)
}

/// The isolation of these layer tests: no namespaces (tested end to end with the real
/// broker), and a root worker keeps uid 0 with every capability cleared, so each test
/// attacks Landlock or seccomp on its own.
fn layer_isolation() -> mcpd_ipc::Isolation {
    mcpd_ipc::Isolation {
        uid: Some(0),
        ..mcpd_ipc::Isolation::default()
    }
}

/// A spec with the given read and write paths, nothing else.
fn fs_spec(read: &[&Path], write: &[&Path]) -> SandboxSpec {
    SandboxSpec {
        read_paths: read.iter().map(|p| path_str(p)).collect(),
        write_paths: write.iter().map(|p| path_str(p)).collect(),
        isolation: layer_isolation(),
        ..SandboxSpec::default()
    }
}

fn assert_full_enforcement(run: &ProbeRun, net: bool) {
    let e = run
        .enforcement
        .as_ref()
        .unwrap_or_else(|| panic!("no enforcement reported\n{}\n{}", run.stdout, run.stderr));
    assert_eq!(e.landlock, LandlockStatus::FullyEnforced);
    assert_eq!(e.landlock_abi, kernel_landlock_abi());
    assert!(e.landlock_abi >= 6);
    assert_eq!(e.landlock_net, net);
    assert!(e.landlock_scoped && e.seccomp && e.no_new_privs, "{e:?}");
}

// ---------------------------------------------------------------------------------------
// Worker tests: the real binary, the real handshake.
// ---------------------------------------------------------------------------------------

struct Worker {
    child: Child,
    broker: OwnedFd,
}

/// Start `mcpd-worker` with its socket end on fd 3 (and `marker`, if any, left open without
/// CLOEXEC on `MARKER_FD`), optionally as another uid/gid.
fn spawn_worker(marker: Option<&std::fs::File>, run_as: Option<u32>) -> Worker {
    let (broker, child_end) = socketpair().expect("socketpair");
    // Move the sources to fds >= 100 first, so the dup2s cannot clobber them.
    let child_hi = rustix::io::fcntl_dupfd_cloexec(&child_end, 100).expect("dup");
    drop(child_end);
    let marker_hi = marker.map(|f| rustix::io::fcntl_dupfd_cloexec(f, 100).expect("dup"));
    let mut cmd = Command::new(WORKER);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(id) = run_as {
        cmd.uid(id).gid(id);
    }
    inherit_fd(&mut cmd, child_hi.as_raw_fd(), mcpd_ipc::WORKER_FD);
    if let Some(m) = &marker_hi {
        inherit_fd(&mut cmd, m.as_raw_fd(), MARKER_FD);
    }
    let child = cmd.spawn().expect("spawn mcpd-worker");
    drop(child_hi);
    drop(marker_hi);
    rustix::net::sockopt::set_socket_timeout(
        &broker,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(30)),
    )
    .expect("SO_RCVTIMEO");
    Worker { child, broker }
}

impl Worker {
    fn send(&self, msg: &BrokerToWorker) {
        send_blocking(self.broker.as_fd(), msg).expect("send to worker");
    }

    fn recv(&self) -> Option<WorkerToBroker> {
        recv_blocking(self.broker.as_fd(), MAX_FRAME).expect("receive from worker")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Close our end and wait: exit status and stderr.
    fn finish(self) -> (ExitStatus, String) {
        drop(self.broker);
        let out = wait_output(self.child);
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn confine_msg(spec: SandboxSpec) -> BrokerToWorker {
    BrokerToWorker::Confine {
        version: PROTOCOL_VERSION,
        spec: Box::new(spec),
    }
}

#[test]
fn worker_confines_itself_then_reports_ready() {
    if !kernel_supports("worker_confines_itself_then_reports_ready", 6) {
        return;
    }
    let root = tempdir();
    std::fs::write(root.path().join("hello.txt"), b"hello\n").unwrap();
    // An inherited descriptor the worker must close in step 1.
    let marker_dir = tempdir();
    let marker_path = marker_dir.path().join("inherited-marker");
    let marker = std::fs::File::create(&marker_path).unwrap();
    let run_as = is_root().then_some(NOBODY);
    if run_as.is_none() {
        println!("note: not root, the worker runs under the test's own uid");
    }
    let worker = spawn_worker(Some(&marker), run_as);

    // The broker sends the spec and nothing else until Ready: no client byte reaches the
    // worker before it is confined.
    worker.send(&confine_msg(fs_spec(&[root.path()], &[])));
    let ready = worker.recv();
    let Some(WorkerToBroker::Ready {
        version,
        enforcement,
        tools: _,
    }) = ready
    else {
        let (status, stderr) = worker.finish();
        panic!("expected Ready, got {ready:?} (worker {status:?}: {stderr})");
    };
    assert_eq!(version, PROTOCOL_VERSION);
    assert_eq!(enforcement.landlock, LandlockStatus::FullyEnforced);
    assert_eq!(enforcement.landlock_abi, kernel_landlock_abi());
    assert!(enforcement.landlock_abi >= 6, "{enforcement:?}");
    assert!(enforcement.landlock_net, "{enforcement:?}");
    assert!(enforcement.landlock_scoped, "{enforcement:?}");
    assert!(
        enforcement.seccomp && enforcement.no_new_privs,
        "{enforcement:?}"
    );

    // What the kernel says about the running worker.
    let pid = worker.pid();
    let proc_dir = format!("/proc/{pid}");
    let status = std::fs::read_to_string(format!("{proc_dir}/status")).unwrap();
    assert_eq!(
        status_field(&status, "Seccomp").as_deref(),
        Some("2"),
        "{status}"
    );
    assert_eq!(
        status_field(&status, "NoNewPrivs").as_deref(),
        Some("1"),
        "{status}"
    );
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let filters = |s: &str| -> u32 {
        status_field(s, "Seccomp_filters")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        filters(&status),
        filters(&own) + 3,
        "three filters: EPERM, EACCES, ENOSYS"
    );

    // Non-dumpable: the kernel makes /proc/PID/* owned by root instead of the task's uid.
    // Only informative when the worker's uid is not root itself.
    match run_as {
        Some(uid) => {
            assert_eq!(
                status_field(&status, "Uid").map(|u| u.split('\t').next().map(str::to_string)),
                Some(Some(uid.to_string()))
            );
            let meta = std::fs::metadata(format!("{proc_dir}/status")).unwrap();
            assert_eq!(
                meta.uid(),
                0,
                "worker (uid {uid}) is dumpable: /proc/{pid} not root-owned"
            );
        }
        None => {
            require(
                false,
                "root",
                "the dumpable check runs the worker as another uid (the rest of the test ran)",
            );
        }
    }

    // Step 1 closed the inherited descriptor.
    match std::fs::read_dir(format!("{proc_dir}/fd")) {
        Ok(entries) => {
            let mut fds = Vec::new();
            for entry in entries.flatten() {
                let target = std::fs::read_link(entry.path()).unwrap_or_default();
                assert_ne!(
                    target,
                    marker_path,
                    "inherited fd {:?} still open in the worker",
                    entry.file_name()
                );
                fds.push(entry.file_name().to_string_lossy().into_owned());
            }
            assert!(
                !fds.contains(&MARKER_FD.to_string()),
                "fd {MARKER_FD} open: {fds:?}"
            );
            assert!(fds.contains(&"3".to_string()), "ipc fd 3 missing: {fds:?}");
        }
        Err(e) => {
            let why = format!("cannot list /proc/{pid}/fd: {e} (the rest of the test ran)");
            require(false, "reading the worker's /proc/PID/fd", &why);
        }
    }
    // The environment: /proc/PID/environ shows the initial stack copy, which clearenv does
    // not (and need not) scrub, so it cannot prove step 1 from outside; the probe-free unit
    // of that step is `clearenv` + the check in `sanitize_process` itself.

    worker.send(&BrokerToWorker::Shutdown);
    let (status, stderr) = worker.finish();
    assert_eq!(status.code(), Some(i32::from(exit::OK)), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn worker_refuses_wrong_protocol_version() {
    let root = tempdir();
    let worker = spawn_worker(None, None);
    worker.send(&BrokerToWorker::Confine {
        version: PROTOCOL_VERSION + 1,
        spec: Box::new(fs_spec(&[root.path()], &[])),
    });
    let reply = worker.recv();
    assert!(
        matches!(&reply, Some(WorkerToBroker::ConfineFailed { reason }) if reason.contains("version")),
        "{reply:?}"
    );
    let (status, stderr) = worker.finish();
    assert_eq!(status.code(), Some(i32::from(exit::HANDSHAKE)), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn worker_refuses_a_missing_read_path() {
    if !kernel_supports("worker_refuses_a_missing_read_path", 1) {
        return;
    }
    let root = tempdir();
    let missing = root.path().join("does-not-exist");
    let worker = spawn_worker(None, None);
    worker.send(&confine_msg(fs_spec(&[root.path(), &missing], &[])));
    let reply = worker.recv();
    assert!(
        matches!(&reply, Some(WorkerToBroker::ConfineFailed { reason })
            if reason.contains("does-not-exist") && reason.contains("landlock")),
        "a missing path must be an error, not a smaller sandbox: {reply:?}"
    );
    let (status, stderr) = worker.finish();
    assert_eq!(status.code(), Some(i32::from(exit::CONFINE)), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn worker_survives_garbage_on_fd3() {
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("oversized length prefix", vec![vec![0xff; 16]]),
        (
            "valid length, invalid postcard",
            vec![vec![
                8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef,
            ]],
        ),
        ("half a frame then close", vec![vec![200, 0, 0]]),
        ("nothing then close", vec![]),
        (
            "a valid message that is not Confine",
            vec![mcpd_ipc::encode(&BrokerToWorker::Shutdown).unwrap()],
        ),
    ];
    for (name, packets) in cases {
        let worker = spawn_worker(None, None);
        for p in &packets {
            rustix::net::send(&worker.broker, p, rustix::net::SendFlags::NOSIGNAL).unwrap();
        }
        let (status, stderr) = worker.finish();
        println!("{name}: {status:?}: {}", stderr.trim());
        assert_eq!(
            status.code(),
            Some(i32::from(exit::HANDSHAKE)),
            "{name}: worker must exit non-zero (handshake), got {status:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------
// Probe tests: the kernel denies, whatever our user-space code does.
// ---------------------------------------------------------------------------------------

#[test]
fn landlock_enforces_the_filesystem_rules() {
    if !kernel_supports("landlock_enforces_the_filesystem_rules", 6) {
        return;
    }
    let ro = tempdir();
    let rw = tempdir();
    let outside = tempdir();
    std::fs::write(ro.path().join("file.txt"), b"readable\n").unwrap();
    std::fs::write(outside.path().join("secret.txt"), b"secret\n").unwrap();
    // An executable inside a read-only root: readable, not executable.
    let program = ro.path().join("true");
    std::fs::copy("/bin/true", &program).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();

    let p = |d: &tempfile::TempDir, name: &str| path_str(&d.path().join(name));
    let probes = [
        (Probe::OpenRead(p(&ro, "file.txt")), Expect::Ok),
        (Probe::ListDir(path_str(ro.path())), Expect::Ok),
        (Probe::OpenRead(p(&outside, "secret.txt")), eacces("open")),
        (Probe::ListDir(path_str(outside.path())), eacces("opendir")),
        (Probe::OpenRead("/etc/passwd".into()), eacces("open")),
        (Probe::ListDir("/".into()), eacces("opendir")),
        (Probe::OpenWrite(p(&ro, "file.txt")), eacces("open")),
        (Probe::Create(p(&ro, "new.txt")), eacces("open")),
        (Probe::Create(p(&outside, "new.txt")), eacces("open")),
        (Probe::Exec(path_str(&program)), eacces("spawn")),
        (Probe::Create(p(&rw, "new.txt")), Expect::Ok),
        (Probe::OpenRead(p(&rw, "new.txt")), Expect::Ok),
        (Probe::OpenWrite(p(&rw, "new.txt")), Expect::Ok),
    ];
    let list: Vec<Probe> = probes.iter().map(|(p, _)| p.clone()).collect();
    let run = run_probes(&fs_spec(&[ro.path()], &[rw.path()]), &list);
    assert_full_enforcement(&run, true);
    check(&run, &probes);
    assert!(!outside.path().join("new.txt").exists());
    assert!(!ro.path().join("new.txt").exists());
    assert!(rw.path().join("new.txt").exists());
}

#[test]
fn exec_paths_grant_execution() {
    if !kernel_supports("exec_paths_grant_execution", 6) {
        return;
    }
    let ro = tempdir();
    let program = ro.path().join("true");
    std::fs::copy("/bin/true", &program).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The program, its libraries and the dynamic loader (on merged-/usr systems /lib and
    // /lib64 resolve into /usr; PathFd follows the symlinks).
    let mut spec = fs_spec(&[ro.path()], &[]);
    spec.exec_paths = ["/usr", "/lib", "/lib64", "/bin"]
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| p.to_string())
        .collect();
    let probes = [
        (Probe::Exec("/usr/bin/true".into()), Expect::Ok),
        (Probe::OpenRead("/usr/bin/true".into()), Expect::Ok),
        // Execute is per-path: the copy under a read-only root stays non-executable.
        (Probe::Exec(path_str(&program)), eacces("spawn")),
        // exec paths are read-only.
        (
            Probe::Create("/usr/mcpd-probe-must-not-exist".into()),
            eacces("open"),
        ),
    ];
    let list: Vec<Probe> = probes.iter().map(|(p, _)| p.clone()).collect();
    let run = run_probes(&spec, &list);
    assert_full_enforcement(&run, true);
    check(&run, &probes);
}

/// The worker's outer exec rules of the exec-domain tests: everything under /usr (merged /usr:
/// /bin, /lib and /lib64 resolve into it).
fn usr_exec_spec(ro: &Path) -> SandboxSpec {
    let mut spec = fs_spec(&[ro], &[]);
    spec.exec_paths = ["/usr", "/lib", "/lib64", "/bin"]
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| p.to_string())
        .collect();
    spec
}

fn canonical(p: &str) -> String {
    path_str(&std::fs::canonicalize(p).unwrap())
}

#[test]
fn a_nested_exec_domain_executes_only_its_set() {
    if !kernel_supports("a_nested_exec_domain_executes_only_its_set", 6) {
        return;
    }
    let ro = tempdir();
    let loader = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"]
        .iter()
        .find(|l| Path::new(l).exists())
        .map(|l| canonical(l))
        .expect("a dynamic loader");
    let t = canonical("/usr/bin/true");
    let sh = canonical("/bin/sh");
    let in_domain = |domain: &[&str], program: &str, args: &[&str]| Probe::ExecInDomain {
        domain: domain.iter().map(|s| s.to_string()).collect(),
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
    };
    let probes = [
        // The outer domain executes all of /usr...
        (Probe::Exec("/usr/bin/echo".into()), Expect::Ok),
        // ...a nested one only its set: the program and the loader.
        (
            in_domain(&[&t, &loader], "/usr/bin/true", &[]),
            Expect::OkWith("exit Some(0)"),
        ),
        (
            in_domain(&[&t, &loader], "/usr/bin/echo", &[]),
            eacces("spawn"),
        ),
        // The loader is executed by the kernel too: without it nothing dynamic starts.
        (in_domain(&[&t], "/usr/bin/true", &[]), eacces("spawn")),
        // What runs in the domain cannot leave it: sh may not exec true (126).
        (
            in_domain(&[&sh, &loader], "/bin/sh", &["-c", "exec /usr/bin/true"]),
            Expect::OkWith("exit Some(126)"),
        ),
        (
            in_domain(&[&sh, &loader], "/bin/sh", &["-c", "exec /bin/sh -c true"]),
            Expect::OkWith("exit Some(0)"),
        ),
        // A directory in the set (a helper directory) covers everything beneath it.
        (
            in_domain(&["/usr/bin", &loader], "/usr/bin/true", &[]),
            Expect::OkWith("exit Some(0)"),
        ),
        // Domains stack: a nested set cannot grant what the outer domain denies.
        (
            in_domain(
                &[&path_str(ro.path()), &loader],
                &path_str(&ro.path().join("true")),
                &[],
            ),
            eacces("spawn"),
        ),
        // The prober itself is still in the outer domain only.
        (Probe::Exec("/usr/bin/true".into()), Expect::Ok),
    ];
    std::fs::copy("/usr/bin/true", ro.path().join("true")).unwrap();
    std::fs::set_permissions(
        ro.path().join("true"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let list: Vec<Probe> = probes.iter().map(|(p, _)| p.clone()).collect();
    let run = run_probes(&usr_exec_spec(ro.path()), &list);
    assert_full_enforcement(&run, true);
    check(&run, &probes);
}

#[test]
fn seccomp_refuses_fexecve_but_not_execveat_by_path() {
    if !kernel_supports("seccomp_refuses_fexecve_but_not_execveat_by_path", 6) {
        return;
    }
    let ro = tempdir();
    let t = canonical("/usr/bin/true");
    let probes = [
        // Executing an open fd (AT_EMPTY_PATH): EPERM, although Landlock allows the file.
        (
            Probe::Execveat {
                path: t.clone(),
                by_fd: true,
            },
            eperm("execveat"),
        ),
        // execveat by path is an ordinary exec.
        (
            Probe::Execveat {
                path: t.clone(),
                by_fd: false,
            },
            Expect::OkWith("exit Some(0)"),
        ),
        (Probe::Exec(t.clone()), Expect::Ok),
    ];
    let list: Vec<Probe> = probes.iter().map(|(p, _)| p.clone()).collect();
    let run = run_probes(&usr_exec_spec(ro.path()), &list);
    assert_full_enforcement(&run, true);
    check(&run, &probes);
}

/// Control for the probe above: unconfined, fexecve of the same file works.
#[test]
fn unconfined_fexecve_works() {
    let run = probe::unconfined_execveat(&canonical("/usr/bin/true"));
    assert_eq!(run, probe::Outcome::Ok("exit Some(0)".into()));
}

#[test]
fn network_is_denied_by_landlock_and_by_seccomp() {
    if !kernel_supports("network_is_denied_by_landlock_and_by_seccomp", 6) {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ro = tempdir();
    let sys = |name: &str, nr: i64, args: [u64; 6], scratch: Option<usize>| Probe::Syscall {
        name: name.into(),
        nr,
        args,
        scratch_arg: scratch,
    };
    let af = |f: i32| u64::from(f.unsigned_abs());
    let st = |t: i32| u64::from((t | libc::SOCK_CLOEXEC).unsigned_abs());
    let probes = [
        // Landlock layer: a socket created before confinement cannot connect or bind.
        (
            Probe::TcpConnect {
                port,
                socket_before_confine: true,
            },
            eacces("connect"),
        ),
        (Probe::TcpBindPreCreated, eacces("bind")),
        // seccomp layer: no new IP socket at all (TCP, UDP, v6, netlink, packet).
        (
            Probe::TcpConnect {
                port,
                socket_before_confine: false,
            },
            eacces("socket"),
        ),
        (
            sys(
                "socket",
                libc::SYS_socket,
                [af(libc::AF_INET), st(libc::SOCK_DGRAM), 0, 0, 0, 0],
                None,
            ),
            eacces("socket"),
        ),
        (
            sys(
                "socket",
                libc::SYS_socket,
                [af(libc::AF_INET6), st(libc::SOCK_STREAM), 0, 0, 0, 0],
                None,
            ),
            eacces("socket"),
        ),
        (
            sys(
                "socket",
                libc::SYS_socket,
                [af(libc::AF_NETLINK), st(libc::SOCK_RAW), 0, 0, 0, 0],
                None,
            ),
            eacces("socket"),
        ),
        (
            sys(
                "socket",
                libc::SYS_socket,
                [af(libc::AF_PACKET), st(libc::SOCK_RAW), 0, 0, 0, 0],
                None,
            ),
            eacces("socket"),
        ),
        // The upper 32 bits of the family are ignored by the kernel and by the filter.
        (
            sys(
                "socket",
                libc::SYS_socket,
                [
                    (1 << 32) | af(libc::AF_INET),
                    st(libc::SOCK_STREAM),
                    0,
                    0,
                    0,
                    0,
                ],
                None,
            ),
            eacces("socket"),
        ),
        (
            sys(
                "socketpair",
                libc::SYS_socketpair,
                [af(libc::AF_INET), st(libc::SOCK_STREAM), 0, 0, 0, 0],
                Some(3),
            ),
            eacces("socketpair"),
        ),
        // Unix sockets stay available.
        (
            sys(
                "socket",
                libc::SYS_socket,
                [af(libc::AF_UNIX), st(libc::SOCK_STREAM), 0, 0, 0, 0],
                None,
            ),
            Expect::Ok,
        ),
        (
            sys(
                "socketpair",
                libc::SYS_socketpair,
                [af(libc::AF_UNIX), st(libc::SOCK_SEQPACKET), 0, 0, 0, 0],
                Some(3),
            ),
            Expect::Ok,
        ),
    ];
    let list: Vec<Probe> = probes.iter().map(|(p, _)| p.clone()).collect();
    let run = run_probes(&fs_spec(&[ro.path()], &[]), &list);
    assert_full_enforcement(&run, true);
    check(&run, &probes);
    drop(listener);
}

#[test]
fn granted_network_allows_tcp_but_not_other_families() {
    if !kernel_supports("granted_network_allows_tcp_but_not_other_families", 6) {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ro = tempdir();
    let mut spec = fs_spec(&[ro.path()], &[]);
    spec.allow_network = true;
    let sys = |nr: i64, family: i32, ty: i32, scratch: Option<usize>| Probe::Syscall {
        name: if nr == libc::SYS_socket {
            "socket"
        } else {
            "socketpair"
        }
        .into(),
        nr,
        args: [
            u64::from(family.unsigned_abs()),
            u64::from((ty | libc::SOCK_CLOEXEC).unsigned_abs()),
            0,
            0,
            0,
            0,
        ],
        scratch_arg: scratch,
    };
    let probes = [
        (
            Probe::TcpConnect {
                port,
                socket_before_confine: false,
            },
            Expect::Ok,
        ),
        (
            Probe::TcpConnect {
                port,
                socket_before_confine: true,
            },
            Expect::Ok,
        ),
        (
            sys(libc::SYS_socket, libc::AF_INET6, libc::SOCK_DGRAM, None),
            Expect::Ok,
        ),
        // Netlink and packet sockets stay denied even with network granted.
        (
            sys(libc::SYS_socket, libc::AF_NETLINK, libc::SOCK_RAW, None),
            eacces("socket"),
        ),
        (
            sys(libc::SYS_socket, libc::AF_PACKET, libc::SOCK_RAW, None),
            eacces("socket"),
        ),
        (
            sys(
                libc::SYS_socketpair,
                libc::AF_INET,
                libc::SOCK_STREAM,
                Some(3),
            ),
            eacces("socketpair"),
        ),
    ];
    let list: Vec<Probe> = probes.iter().map(|(p, _)| p.clone()).collect();
    let run = run_probes(&spec, &list);
    assert_full_enforcement(&run, false);
    check(&run, &probes);
    drop(listener);
}

#[test]
fn landlock_scopes_signals_and_abstract_unix_sockets() {
    if !kernel_supports("landlock_scopes_signals_and_abstract_unix_sockets", 6) {
        return;
    }
    use std::os::linux::net::SocketAddrExt;
    let name = format!(
        "mcpd-kernel-test-{}-{:?}",
        std::process::id(),
        Instant::now()
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    // Control: unconfined, the socket accepts connections.
    std::os::unix::net::UnixStream::connect_addr(&addr).expect("control connect");
    let ro = tempdir();
    let parent = i32::try_from(std::process::id()).unwrap();
    let probes = [
        // The test process is outside the child's Landlock domain.
        (Probe::Kill(parent), eperm("kill")),
        // Own process: same domain.
        (Probe::Kill(0), Expect::Ok),
        (Probe::ConnectAbstract(name.clone()), eperm("connect")),
        (Probe::AbstractInside, Expect::Ok),
    ];
    let list: Vec<Probe> = probes.iter().map(|(p, _)| p.clone()).collect();
    let run = run_probes(&fs_spec(&[ro.path()], &[]), &list);
    assert_full_enforcement(&run, true);
    check(&run, &probes);
    drop(listener);
}

/// The arguments used for each denied syscall: chosen so that, even if the filter were
/// missing, the call would fail harmlessly or be a no-op (null pointers → EFAULT, bad fds →
/// EBADF, invalid commands → EINVAL). `None`: not probed because no argument set is
/// harmless enough to risk on the test host without the filter.
fn harmless_args(name: &str) -> Option<([u64; 6], Option<usize>)> {
    const BAD_FD: u64 = u64::MAX; // -1
    let a = |v: [u64; 6]| Some((v, None));
    match name {
        "ptrace" => a([libc::PTRACE_TRACEME as u64, 0, 0, 0, 0, 0]),
        "process_vm_readv" | "process_vm_writev" => {
            a([u64::from(std::process::id()), 0, 0, 0, 0, 0])
        }
        "pidfd_getfd" => a([BAD_FD, BAD_FD, 0, 0, 0, 0]),
        "kcmp" => a([0, 0, 0xff, 0, 0, 0]),
        "process_madvise" => a([BAD_FD, 0, 0, 0, 0, 0]),
        "io_uring_setup" => Some(([0, 0, 0, 0, 0, 0], Some(1))),
        "io_uring_enter" | "io_uring_register" => a([BAD_FD, 0, 0, 0, 0, 0]),
        "bpf" => a([0xffff, 0, 0, 0, 0, 0]),
        "perf_event_open" => a([0, 0, BAD_FD, BAD_FD, 0, 0]),
        "userfaultfd" => a([0xffff_ffff, 0, 0, 0, 0, 0]),
        "mount" | "umount2" | "pivot_root" | "fsopen" => a([0; 6]),
        "fsconfig" | "fsmount" | "fspick" | "open_tree" | "open_tree_attr" | "mount_setattr"
        | "move_mount" => a([BAD_FD, 0, 0, 0, 0, 0]),
        "unshare" => a([libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]),
        "setns" => a([BAD_FD, 0, 0, 0, 0, 0]),
        "reboot" => a([0; 6]), // bad magic → EINVAL
        "init_module" | "delete_module" | "swapon" | "swapoff" => a([0; 6]),
        "finit_module" | "quotactl_fd" => a([BAD_FD, 0, 0, 0, 0, 0]),
        "quotactl" => a([0; 6]),
        "syslog" => a([10, 0, 0, 0, 0, 0]), // SYSLOG_ACTION_SIZE_BUFFER: read-only
        "keyctl" => a([9999, 0, 0, 0, 0, 0]),
        "add_key" | "request_key" => a([0; 6]),
        "settimeofday" => a([0; 6]), // both null: a no-op
        "clock_settime" | "adjtimex" | "clock_adjtime" => a([0; 6]),
        "lookup_dcookie" => a([0; 6]),
        "name_to_handle_at" | "open_by_handle_at" => a([BAD_FD, 0, 0, 0, 0, 0]),
        "iopl" => a([0; 6]),                                 // level 0: a no-op
        "ioperm" => a([0; 6]),                               // zero ports: a no-op
        "modify_ldt" => Some(([0, 0, 0, 0, 0, 0], Some(1))), // read 0 bytes
        "uselib" => a([0; 6]),
        // kexec_load with zero segments *unloads* the host's kexec image; kexec_file_load
        // and acct(NULL) have similar host-wide side effects without the filter.
        "kexec_load" | "kexec_file_load" | "acct" => None,
        _ => None,
    }
}

const NOT_PROBED: &[&str] = &["kexec_load", "kexec_file_load", "acct"];

#[test]
fn seccomp_denies_the_reviewed_syscalls() {
    if !kernel_supports("seccomp_denies_the_reviewed_syscalls", 6) {
        return;
    }
    let mut probes = Vec::new();
    for d in mcpd_worker::confine::seccomp::denied_syscalls() {
        match harmless_args(d.name) {
            Some((args, scratch_arg)) => probes.push((
                Probe::Syscall {
                    name: d.name.into(),
                    nr: d.nr,
                    args,
                    scratch_arg,
                },
                Expect::Errno(d.name, libc::EPERM),
            )),
            None => {
                assert!(
                    NOT_PROBED.contains(&d.name),
                    "no probe arguments for {}",
                    d.name
                );
                println!(
                    "not probed (host side effects without the filter): {}",
                    d.name
                );
            }
        }
    }
    let sys =
        |name: &'static str, nr: i64, args: [u64; 6], scratch: Option<usize>| Probe::Syscall {
            name: name.into(),
            nr,
            args,
            scratch_arg: scratch,
        };
    let conditional = [
        // Namespaces through clone: refused (raw syscall, so glibc cannot paper over it).
        (Probe::CloneNewns, eperm("clone")),
        // clone3 cannot be inspected: ENOSYS so that callers fall back to clone.
        (
            sys("clone3", libc::SYS_clone3, [0; 6], None),
            Expect::Errno("clone3", libc::ENOSYS),
        ),
        // personality: query and PER_LINUX allowed, ASLR-disabling flags not.
        (
            sys(
                "personality",
                libc::SYS_personality,
                [0xffff_ffff, 0, 0, 0, 0, 0],
                None,
            ),
            Expect::Ok,
        ),
        (
            sys(
                "personality",
                libc::SYS_personality,
                [0, 0, 0, 0, 0, 0],
                None,
            ),
            Expect::Ok,
        ),
        (
            sys(
                "personality",
                libc::SYS_personality,
                [libc::ADDR_NO_RANDOMIZE as u64, 0, 0, 0, 0, 0],
                None,
            ),
            eperm("personality"),
        ),
        // Typing into a terminal.
        (
            sys(
                "ioctl",
                libc::SYS_ioctl,
                [0, libc::TIOCSTI, 0, 0, 0, 0],
                Some(2),
            ),
            eperm("ioctl"),
        ),
        // Ordinary syscalls are untouched.
        (sys("getpid", libc::SYS_getpid, [0; 6], None), Expect::Ok),
        (
            sys(
                "ioctl",
                libc::SYS_ioctl,
                [0, libc::FIONREAD, 0, 0, 0, 0],
                Some(2),
            ),
            Expect::Errno("ioctl", libc::ENOTTY),
        ),
    ];
    probes.extend(conditional);
    let list: Vec<Probe> = probes.iter().map(|(p, _)| p.clone()).collect();
    let ro = tempdir();
    let run = run_probes(&fs_spec(&[ro.path()], &[]), &list);
    assert_full_enforcement(&run, true);
    check(&run, &probes);
}

/// Control for the probe above: unconfined, the same harmless calls do not say EPERM, so the
/// EPERM seen in the child is the filter's.
#[test]
#[allow(unsafe_code)]
fn unconfined_control_calls_are_not_eperm() {
    for (name, nr, args) in [
        ("bpf", libc::SYS_bpf, [0xffff_u64, 0, 0]),
        ("setns", libc::SYS_setns, [u64::MAX, 0, 0]),
        ("io_uring_enter", libc::SYS_io_uring_enter, [u64::MAX, 0, 0]),
        ("clone3", libc::SYS_clone3, [0, 0, 0]),
        ("mount", libc::SYS_mount, [0, 0, 0]),
    ] {
        // SAFETY: integer arguments and null pointers only; each call fails with EINVAL,
        // EBADF or EFAULT without side effects.
        let rc = unsafe {
            libc::syscall(
                nr,
                args[0] as libc::c_long,
                args[1] as libc::c_long,
                args[2] as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        println!("unconfined {name} -> {rc} {errno:?}");
        assert!(
            rc < 0 && errno != Some(libc::EPERM),
            "{name}: {rc} {errno:?}"
        );
    }
}

#[test]
#[cfg_attr(not(target_arch = "x86_64"), ignore = "x32 exists only on x86_64")]
fn x32_syscall_kills_the_process() {
    if !kernel_supports("x32_syscall_kills_the_process", 6) {
        return;
    }
    let ro = tempdir();
    let list = [
        Probe::Syscall {
            name: "getpid".into(),
            nr: libc::SYS_getpid,
            args: [0; 6],
            scratch_arg: None,
        },
        Probe::X32Getpid,
    ];
    let run = run_probes(&fs_spec(&[ro.path()], &[]), &list);
    assert!(run.confine_failed.is_none(), "{:?}", run.confine_failed);
    assert!(
        matches!(run.outcomes.as_slice(), [Outcome::Ok(_)]),
        "only the native getpid may report: {:?}\n{}",
        run.outcomes,
        run.stdout
    );
    assert_eq!(
        run.status.signal(),
        Some(libc::SIGSYS),
        "x32 syscall must kill the process with SIGSYS, got {:?}",
        run.status
    );
}

/// Step 1 seen from inside the process (the worker's environment and dumpable flag cannot be
/// observed from outside: /proc/PID/environ shows the initial stack copy, and as root
/// /proc ownership says nothing): a child runs `sanitize_process` + `confine` and reports.
#[test]
fn sanitize_process_closes_fds_clears_env_and_disables_dumps() {
    if !kernel_supports(
        "sanitize_process_closes_fds_clears_env_and_disables_dumps",
        6,
    ) {
        return;
    }
    let marker_dir = tempdir();
    let marker = std::fs::File::create(marker_dir.path().join("marker")).unwrap();
    // /proc readable so that the child can list its own fds.
    let spec = SandboxSpec {
        read_paths: vec!["/proc".into()],
        isolation: layer_isolation(),
        ..SandboxSpec::default()
    };
    // Control: without step 1, the marker fd and the environment are there.
    let control = run_probes_with(&spec, &[Probe::Hygiene], false, Some(&marker));
    check(&control, &[(Probe::Hygiene, Expect::Ok)]);
    let Outcome::Ok(report) = &control.outcomes[0] else {
        unreachable!()
    };
    println!("control (no sanitize): {report}");
    let fds = report
        .split_once("fds=[")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list.split(", ").map(str::to_string).collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(fds.contains(&MARKER_FD.to_string()), "{report}");
    assert!(!report.starts_with("env=0 "), "{report}");

    let run = run_probes_with(&spec, &[Probe::Hygiene], true, Some(&marker));
    check(&run, &[(Probe::Hygiene, Expect::Ok)]);
    let Outcome::Ok(report) = &run.outcomes[0] else {
        unreachable!()
    };
    println!("hygiene: {report}");
    // fds: stdio plus the /proc/self/fd directory being listed (lowest free number, 3).
    assert_eq!(
        report,
        "env=0 fds=[0, 1, 2, 3] dumpable=NotDumpable core=Some(0)/Some(0)"
    );
}

#[test]
fn rlimits_are_applied_and_never_raised() {
    if !kernel_supports("rlimits_are_applied_and_never_raised", 6) {
        return;
    }
    let rw = tempdir();
    let mut spec = fs_spec(&[], &[rw.path()]);
    // The child inherits our limits; a value above the hard limit must be clamped to it.
    let hard = |r| rustix::process::getrlimit(r).maximum.unwrap_or(u64::MAX);
    let nproc_wanted = 1000_u64.min(hard(rustix::process::Resource::Nproc));
    spec.rlimits = ResourceLimits {
        max_open_files: Some(1 << 40), // above any hard limit: clamped, not raised
        max_file_size: Some(4096),
        cpu_seconds: Some(3600),
        address_space: Some(1 << 44),
        max_processes: Some(nproc_wanted),
    };
    let probes = [
        (Probe::Limits, Expect::Ok),
        (
            Probe::WriteBytes {
                path: path_str(&rw.path().join("small")),
                len: 1000,
            },
            Expect::Ok,
        ),
        // Past RLIMIT_FSIZE: EFBIG (SIGXFSZ is ignored, so the worker is not killed).
        (
            Probe::WriteBytes {
                path: path_str(&rw.path().join("big")),
                len: 8192,
            },
            Expect::Errno("write", libc::EFBIG),
        ),
    ];
    let list: Vec<Probe> = probes.iter().map(|(p, _)| p.clone()).collect();
    let run = run_probes(&spec, &list);
    check(&run, &probes);
    let Outcome::Ok(limits) = &run.outcomes[0] else {
        unreachable!()
    };
    println!("limits: {limits}");
    let field = |k: &str| {
        limits
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    let hard_before = field("nofile_hard_before");
    assert_eq!(field("nofile"), format!("{hard_before}/{hard_before}"));
    assert_eq!(field("fsize"), "4096/4096");
    assert_eq!(field("cpu"), "3600/3600");
    assert_eq!(field("as"), format!("{0}/{0}", 1u64 << 44));
    assert_eq!(field("nproc"), format!("{nproc_wanted}/{nproc_wanted}"));
    assert_eq!(
        std::fs::metadata(rw.path().join("big")).unwrap().len(),
        4096
    );
}

#[test]
fn everyday_operations_still_work_when_confined() {
    if !kernel_supports("everyday_operations_still_work_when_confined", 6) {
        return;
    }
    let ro = tempdir();
    let rw = tempdir();
    std::fs::write(ro.path().join("data.txt"), b"some data\n").unwrap();
    let probes = [(
        Probe::Everyday {
            read_file: path_str(&ro.path().join("data.txt")),
            write_dir: path_str(rw.path()),
        },
        Expect::Ok,
    )];
    let list: Vec<Probe> = probes.iter().map(|(p, _)| p.clone()).collect();
    let run = run_probes(&fs_spec(&[ro.path()], &[rw.path()]), &list);
    assert_full_enforcement(&run, true);
    check(&run, &probes);
    println!("{:?}", run.outcomes);
}

#[test]
fn confine_refuses_relative_and_missing_paths() {
    if !kernel_supports("confine_refuses_relative_and_missing_paths", 1) {
        return;
    }
    let ro = tempdir();
    for (spec, needle) in [
        (
            SandboxSpec {
                read_paths: vec!["relative/dir".into()],
                isolation: layer_isolation(),
                ..SandboxSpec::default()
            },
            "not an absolute path",
        ),
        (
            SandboxSpec {
                write_paths: vec![path_str(&ro.path().join("gone"))],
                isolation: layer_isolation(),
                ..SandboxSpec::default()
            },
            "write path",
        ),
        (
            SandboxSpec {
                exec_paths: vec![path_str(&ro.path().join("gone"))],
                isolation: layer_isolation(),
                ..SandboxSpec::default()
            },
            "exec path",
        ),
    ] {
        let run = run_probes(&spec, &[Probe::Kill(0)]);
        let reason = run
            .confine_failed
            .as_deref()
            .unwrap_or_else(|| panic!("confine accepted {spec:?}\n{}\n{}", run.stdout, run.stderr));
        assert!(reason.contains(needle), "{reason}");
        assert!(run.outcomes.is_empty());
    }
}

/// `take_ipc_fd` refuses a worker started without a socket on fd 3 (e.g. by hand).
#[test]
fn worker_without_ipc_socket_exits_cleanly() {
    let mut child = Command::new(WORKER)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(i32::from(exit::HANDSHAKE)), "{stderr}");
    assert!(stderr.contains("fd 3"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
