//! Sandbox v2, attacked end to end: a python3 code session and allow-listed programs, run by the
//! real `mcpd` in the client's worker, try to escape the worker's namespaces, private
//! filesystem view, identity, seccomp filter and Landlock domains. Every attack asserts the
//! exact failure *and*, on the host, that nothing changed.
//!
//! Each class runs in two modes:
//! * `root_broker`: the broker runs as root (the test process), the worker as the client's
//!   uid from `server.worker_uids` (the one `mcpd check-config` shows), roots idmapped;
//! * `unprivileged_broker`: the broker runs as uid/gid 4242 with no supplementary groups, the
//!   worker in a user namespace of its own that maps only 4242.
//!
//! Both modes need the test process to be root (mode B starts the broker as another user):
//! they fail, never skip, when it is not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcpd_e2e::{alive, is_root, proc_status, set_xattr, wait_until, xattrs, Server};
use serde_json::{json, Value};

/// The broker's uid and gid in mode B.
const UNPRIV: (u32, u32) = (4242, 4242);
/// The owner of a file in a read root that belongs to neither the worker nor the broker.
const FOREIGN_UID: u32 = 1234;
/// The outside file's mtime (seconds since the epoch).
const MTIME: u64 = 1_000_000_000;
/// The kernel's overflow uid: how an unmapped owner appears in a user namespace or idmapped
/// mount.
const OVERFLOW_UID: u32 = 65534;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// (A) the broker runs as root.
    Root,
    /// (B) the broker runs as [`UNPRIV`].
    Unprivileged,
}

/// Run one attack class as `root_broker` and `unprivileged_broker`.
macro_rules! both_modes {
    ($($class:ident),* $(,)?) => {$(
        mod $class {
            #[test]
            fn root_broker() {
                super::$class(super::Mode::Root)
            }
            #[test]
            fn unprivileged_broker() {
                super::$class(super::Mode::Unprivileged)
            }
        }
    )*};
}

both_modes!(
    capabilities_and_identity,
    device_nodes,
    metadata_outside_every_root,
    stat_is_no_oracle,
    named_unix_sockets,
    anonymous_file_exec,
    processes,
    network,
    ownership,
    private_tmp,
    isolation_is_reported,
);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A name no other test (or run) uses.
fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "mcpd-e2e-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The uid/gid `mcpd check-config` shows for client `local` under a root broker.
fn check_config_worker_uid(cfg: &Path) -> u32 {
    let out = std::process::Command::new(mcpd_e2e::mcpd_bin())
        .args(["check-config", "--config", s(cfg)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "check-config failed: {text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("client local:"))
        .unwrap_or_else(|| panic!("no `client local:` line in:\n{text}"));
    let uid: u32 = line
        .split("worker uid/gid ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no worker uid in {line:?}"));
    assert!(
        (60578..=61183).contains(&uid),
        "worker uid {uid} is outside the default server.worker_uids"
    );
    uid
}

/// One test's directories and policy.
///
/// ```text
/// /tmp/mcpd-sandbox-XXXX/   0755 root
///   mcpd.toml               the policy (outside every root)
///   w/                      write root, 0700; own.txt 0600 (root in mode A, 4242 in mode B)
///   r/                      read root, 0755; pub.txt 0644, secret.txt 0600 owned by 1234
///   outside/                sibling of the roots, owned by the worker's host uid
///     target.txt            0640, worker's host uid, user.mark=orig, mtime 1e9
/// ```
///
/// The outside directory and file belong to the uid the worker runs as on the host: only the
/// view (not file permissions) stands between the worker and them.
struct Fx {
    mode: Mode,
    _top: tempfile::TempDir,
    top: PathBuf,
    cfg: PathBuf,
    w: PathBuf,
    r: PathBuf,
    outside: PathBuf,
    target: PathBuf,
    /// The uid (and gid) the worker runs as, on the host.
    uid: u32,
}

impl Fx {
    /// `exec`: programs for `run_command`; `extra`: more lines of `[clients.local]`.
    fn new(mode: Mode, exec: &[&str], extra: &str) -> Fx {
        assert!(
            is_root(),
            "the sandbox e2e tests must run as root: mode A is a root broker, and mode B \
             starts the broker as {}:{} (they never skip)",
            UNPRIV.0,
            UNPRIV.1
        );
        let top = tempfile::Builder::new()
            .prefix("mcpd-sandbox-")
            .tempdir_in("/tmp")
            .unwrap();
        let base = std::fs::canonicalize(top.path()).unwrap();
        chmod(&base, 0o755);
        let w = base.join("w");
        let r = base.join("r");
        let outside = base.join("outside");
        for d in [&w, &r, &outside] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(w.join("own.txt"), "own\n").unwrap();
        chmod(&w.join("own.txt"), 0o600);
        chmod(&w, 0o700);
        std::fs::write(r.join("pub.txt"), "pub\n").unwrap();
        std::fs::write(r.join("secret.txt"), "secret\n").unwrap();
        chmod(&r.join("secret.txt"), 0o600);
        chown(&r.join("secret.txt"), FOREIGN_UID, FOREIGN_UID);
        if mode == Mode::Unprivileged {
            for p in [w.clone(), w.join("own.txt"), r.clone(), r.join("pub.txt")] {
                chown(&p, UNPRIV.0, UNPRIV.1);
            }
        }
        let exec_list = exec
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let server = if mode == Mode::Unprivileged {
            // The unprivileged broker cannot write the machine's cgroup tree.
            "[server]\ncgroup = \"off\"\n"
        } else {
            ""
        };
        let toml = format!(
            "[stdio]\nclient = \"local\"\n{server}[clients.local]\nwrite = [\"{}\"]\nread = [\"{}\"]\ncode = [\"python3\"]\nexec = [{exec_list}]\n{extra}",
            s(&w),
            s(&r)
        );
        let cfg = base.join("mcpd.toml");
        std::fs::write(&cfg, toml).unwrap();
        chmod(&cfg, 0o644);
        let uid = match mode {
            Mode::Root => check_config_worker_uid(&cfg),
            Mode::Unprivileged => UNPRIV.0,
        };
        let target = outside.join("target.txt");
        std::fs::write(&target, "outside\n").unwrap();
        chmod(&target, 0o640);
        chown(&target, uid, uid);
        set_xattr(&target, "user.mark", b"orig");
        std::fs::File::options()
            .write(true)
            .open(&target)
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(MTIME))
            .unwrap();
        chown(&outside, uid, uid);
        chmod(&outside, 0o755);
        Fx {
            mode,
            _top: top,
            top: base,
            cfg,
            w,
            r,
            outside,
            target,
            uid,
        }
    }

    /// A new session: `mcpd serve --stdio --config …`, initialized, its worker started.
    fn start(&self) -> Server {
        let args = ["--config", s(&self.cfg)];
        let mut srv = match self.mode {
            Mode::Root => Server::start(&args),
            Mode::Unprivileged => Server::start_as(UNPRIV.0, UNPRIV.1, &args, &self.top),
        };
        srv.initialize();
        // A first call starts the worker (and tells the session is usable at all).
        let r = srv.call("run_code", json!({"language": "python3", "code": "1"}));
        assert_eq!(
            structured(&r)["stdout"],
            "1\n",
            "{r}\nstderr:\n{}",
            srv.stderr()
        );
        srv
    }

    /// Python assignments of the fixture's paths (W, R, O, T) for the probes.
    fn py_vars(&self) -> String {
        let q = |p: &Path| Value::from(s(p)).to_string();
        format!(
            "W = {}\nR = {}\nO = {}\nT = {}\n",
            q(&self.w),
            q(&self.r),
            q(&self.outside),
            q(&self.target)
        )
    }

    /// The host state of the outside file and directory.
    fn outside_state(&self) -> OutsideState {
        let md = std::fs::symlink_metadata(&self.target).unwrap();
        OutsideState {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            xattrs: xattrs(&self.target),
            content: std::fs::read(&self.target).unwrap(),
            entries: entries(&self.outside),
        }
    }
}

/// What an attack on the outside file could change.
#[derive(Debug, PartialEq, Eq)]
struct OutsideState {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    xattrs: Vec<(String, Vec<u8>)>,
    content: Vec<u8>,
    entries: Vec<String>,
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn structured(r: &Value) -> &Value {
    &r["structuredContent"]
}

/// Defines `t(name, f)`: runs `f` and prints `name: ok [repr]` or `name: <OSError subclass>
/// <ERRNO NAME>`, one line per probe.
const PRELUDE: &str = r#"
import os, sys, errno, socket, ctypes, shutil, stat
def t(name, f):
    try:
        r = f()
    except OSError as e:
        print(f"{name}: {type(e).__name__} {errno.errorcode.get(e.errno, e.errno)}")
    else:
        print(f"{name}: ok" if r is None else f"{name}: ok {r!r}")
"#;

/// The lines `name: result` a python probe printed.
struct Probe {
    out: String,
    lines: BTreeMap<String, String>,
}

impl Probe {
    fn get(&self, name: &str) -> &str {
        self.lines
            .get(name)
            .unwrap_or_else(|| panic!("probe {name:?} printed nothing; output:\n{}", self.out))
    }

    /// Assert probe `name` printed exactly `want`.
    fn expect(&self, name: &str, want: &str) {
        assert_eq!(
            self.get(name),
            want,
            "probe {name:?}; whole output:\n{}",
            self.out
        );
    }
}

/// Run `code` (after [`PRELUDE`] and the fixture's path variables) in the session's python3.
fn probe(srv: &mut Server, fx: &Fx, code: &str) -> Probe {
    let full = format!("{PRELUDE}{}{code}", fx.py_vars());
    let r = srv.call("run_code", json!({"language": "python3", "code": full}));
    let st = structured(&r);
    assert_eq!(st["status"], "ok", "run_code failed: {r}");
    let out = st["stdout"].as_str().unwrap().to_string();
    let lines = out
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Probe { out, lines }
}

/// What a `run_command` call ended with.
struct Ran {
    exit: i64,
    stdout: String,
    stderr: String,
    raw: Value,
}

fn run(srv: &mut Server, program: &str, args: &[&str]) -> Ran {
    let r = srv.call("run_command", json!({"command": program, "args": args}));
    let st = structured(&r);
    Ran {
        exit: st["exit_code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no exit code: {r}")),
        stdout: st["stdout"].as_str().unwrap_or_default().to_string(),
        stderr: st["stderr"].as_str().unwrap_or_default().to_string(),
        raw: r,
    }
}

/// Run a program that must fail with `exit` and `why` on stderr.
fn run_fails(srv: &mut Server, program: &str, args: &[&str], exit: i64, why: &str) {
    let r = run(srv, program, args);
    assert_eq!(r.exit, exit, "{program} {args:?}: {}", r.raw);
    assert!(
        r.stderr.contains(why),
        "{program} {args:?}: expected {why:?} on stderr: {}",
        r.raw
    );
}

fn run_ok(srv: &mut Server, program: &str, args: &[&str]) -> String {
    let r = run(srv, program, args);
    assert_eq!(r.exit, 0, "{program} {args:?}: {}", r.raw);
    r.stdout
}

/// Fields of a /proc/PID/status text, whitespace normalised.
fn status_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

fn assert_no_privilege(f: &BTreeMap<String, String>, uid: u32, who: &str) {
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            f.get(cap).map(String::as_str),
            Some("0000000000000000"),
            "{who}: {cap} in {f:?}"
        );
    }
    let ids = format!("{uid} {uid} {uid} {uid}");
    assert_eq!(f.get("Uid"), Some(&ids), "{who}: Uid in {f:?}");
    assert_eq!(f.get("Gid"), Some(&ids), "{who}: Gid in {f:?}");
    assert_eq!(
        f.get("Groups").map(String::as_str),
        Some(""),
        "{who}: Groups"
    );
    assert_eq!(
        f.get("NoNewPrivs").map(String::as_str),
        Some("1"),
        "{who}: NoNewPrivs"
    );
    assert_eq!(
        f.get("Seccomp").map(String::as_str),
        Some("2"),
        "{who}: Seccomp"
    );
}

// 1. ------------------------------------------------------------------------------------------

fn capabilities_and_identity(mode: Mode) {
    let fx = Fx::new(mode, &["cat"], "");
    let mut srv = fx.start();
    if mode == Mode::Root {
        assert_ne!(fx.uid, 0);
    }
    let code = r#"
st = open('/proc/self/status').read()
print("STATUS<<")
print(st)
print(">>STATUS")
libc = ctypes.CDLL(None, use_errno=True)
hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)   # _LINUX_CAPABILITY_VERSION_3, this thread
data = (ctypes.c_uint32 * 6)()               # two __user_cap_data_struct
rc = libc.capget(hdr, data)
print(f"capget: {rc} {list(data)}")
print(f"securebits: {libc.prctl(27, 0, 0, 0, 0)}")   # PR_GET_SECUREBITS
print(f"ambient cap 21: {libc.prctl(47, 1, 21, 0, 0)}")  # PR_CAP_AMBIENT_IS_SET CAP_SYS_ADMIN
print(f"ids: {os.getresuid()} {os.getresgid()} {os.getgroups()}")
print(f"pid: {os.getpid()}")
"#;
    let p = probe(&mut srv, &fx, code);
    let status = p
        .out
        .split_once("STATUS<<\n")
        .and_then(|(_, r)| r.split_once(">>STATUS"))
        .unwrap()
        .0;
    let uid = fx.uid;
    // The user namespace of mode B maps only 4242 to itself: the uid is the same inside.
    assert_no_privilege(&status_fields(status), uid, "python3 in run_code");
    p.expect("capget", "0 [0, 0, 0, 0, 0, 0]");
    // SECBIT_NOROOT(_LOCKED), NO_SETUID_FIXUP(_LOCKED), KEEP_CAPS_LOCKED,
    // NO_CAP_AMBIENT_RAISE(_LOCKED): 0x01|0x02|0x04|0x08|0x20|0x40|0x80.
    p.expect("securebits", "239");
    p.expect("ambient cap 21", "0");
    p.expect(
        "ids",
        &format!("({uid}, {uid}, {uid}) ({uid}, {uid}, {uid}) []"),
    );
    // The same, seen from the host: the interpreter and the serving worker.
    let ns_pid: i32 = p.get("pid").parse().unwrap();
    let host_py = srv.host_pid(ns_pid).expect("host pid of the python3");
    let host_status = std::fs::read_to_string(format!("/proc/{host_py}/status")).unwrap();
    assert_no_privilege(
        &status_fields(&host_status),
        uid,
        "python3 seen from the host",
    );
    for pid in srv.serving_pids() {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert_no_privilege(
            &status_fields(&st),
            uid,
            "serving worker seen from the host",
        );
    }
    // A command.
    let out = run_ok(&mut srv, "cat", &["/proc/self/status"]);
    assert_no_privilege(&status_fields(&out), uid, "cat in run_command");
}

// 2. ------------------------------------------------------------------------------------------

fn device_nodes(mode: Mode) {
    let fx = Fx::new(mode, &["mknod", "cat"], "");
    let mut srv = fx.start();
    let before = entries(&fx.w);
    let code = r#"
for where in (W, "/tmp", "/dev/shm"):
    t(f"mknod kmsg in {where}", lambda: os.mknod(where + "/kmsg", 0o666 | stat.S_IFCHR, os.makedev(1, 11)))
    t(f"mknod mem in {where}", lambda: os.mknod(where + "/mem", 0o666 | stat.S_IFCHR, os.makedev(1, 1)))
    t(f"mknod vda in {where}", lambda: os.mknod(where + "/vda", 0o666 | stat.S_IFBLK, os.makedev(254, 0)))
for dev in ("/dev/kmsg", "/dev/mem", "/dev/kvm", "/dev/userfaultfd", "/dev/port", "/dev/vda", "/dev/tty"):
    t(f"stat {dev}", lambda: os.stat(dev))
    t(f"open {dev}", lambda: os.open(dev, os.O_RDONLY))
t("read /dev/null", lambda: open("/dev/null", "rb").read())
t("read /dev/zero", lambda: open("/dev/zero", "rb").read(8))
t("read /dev/urandom", lambda: len(open("/dev/urandom", "rb").read(16)))
t("write /dev/null", lambda: open("/dev/null", "wb").write(b"x"))
"#;
    let p = probe(&mut srv, &fx, code);
    // Landlock grants no MakeChar/MakeBlock right anywhere, and its hook runs before the
    // kernel's CAP_MKNOD check: EACCES (the mounts are nodev besides).
    for place in [s(&fx.w), "/tmp", "/dev/shm"] {
        for node in ["kmsg", "mem", "vda"] {
            p.expect(
                &format!("mknod {node} in {place}"),
                "PermissionError EACCES",
            );
        }
    }
    for dev in [
        "/dev/kmsg",
        "/dev/mem",
        "/dev/kvm",
        "/dev/userfaultfd",
        "/dev/port",
        "/dev/vda",
        "/dev/tty",
    ] {
        p.expect(&format!("stat {dev}"), "FileNotFoundError ENOENT");
        p.expect(&format!("open {dev}"), "FileNotFoundError ENOENT");
    }
    p.expect("read /dev/null", "ok b''");
    p.expect("read /dev/zero", r"ok b'\x00\x00\x00\x00\x00\x00\x00\x00'");
    p.expect("read /dev/urandom", "ok 16");
    p.expect("write /dev/null", "ok 1");

    run_fails(
        &mut srv,
        "mknod",
        &[s(&fx.w.join("cmd-kmsg")), "c", "1", "11"],
        1,
        "Permission denied",
    );
    run_fails(
        &mut srv,
        "cat",
        &["/dev/kmsg"],
        1,
        "No such file or directory",
    );
    assert_eq!(run_ok(&mut srv, "cat", &["/dev/null"]), "");
    // No node appeared on the host.
    assert_eq!(entries(&fx.w), before, "the write root changed");
    for n in ["kmsg", "mem", "vda", "cmd-kmsg"] {
        assert!(
            std::fs::symlink_metadata(fx.w.join(n)).is_err(),
            "{n} exists on the host"
        );
    }
}

// 3. ------------------------------------------------------------------------------------------

fn metadata_outside_every_root(mode: Mode) {
    let fx = Fx::new(mode, &["chmod", "chown", "touch", "ln", "mv"], "");
    let before = fx.outside_state();
    assert_eq!(before.mtime, (MTIME as i64, 0));
    assert_eq!(
        before.xattrs,
        vec![("user.mark".to_string(), b"orig".to_vec())]
    );
    let mut srv = fx.start();
    let code = r#"
t("chmod", lambda: os.chmod(T, 0o777))
t("chown", lambda: os.chown(T, os.getuid(), os.getgid()))
t("lchown", lambda: os.lchown(T, os.getuid(), os.getgid()))
t("setxattr", lambda: os.setxattr(T, "user.x", b"1"))
t("removexattr", lambda: os.removexattr(T, "user.mark"))
t("listxattr", lambda: os.listxattr(T))
t("utime", lambda: os.utime(T, (0, 0)))
t("truncate", lambda: os.truncate(T, 0))
t("open for writing", lambda: open(T, "w"))
t("link outside into root", lambda: os.link(T, W + "/link"))
t("link root file outside", lambda: os.link(W + "/own.txt", O + "/link"))
t("rename outside into root", lambda: os.rename(T, W + "/moved"))
t("rename root file outside", lambda: os.rename(W + "/own.txt", O + "/moved"))
t("mkdir outside", lambda: os.mkdir(O + "/made"))
t("symlink to outside", lambda: os.symlink(T, W + "/sym"))
t("chmod through symlink", lambda: os.chmod(W + "/sym", 0o777))
t("setxattr through symlink", lambda: os.setxattr(W + "/sym", "user.x", b"1"))
t("utime through symlink", lambda: os.utime(W + "/sym", (0, 0)))
"#;
    let p = probe(&mut srv, &fx, code);
    for name in [
        "chmod",
        "chown",
        "lchown",
        "setxattr",
        "removexattr",
        "listxattr",
        "utime",
        "truncate",
        "open for writing",
        "link outside into root",
        "link root file outside",
        "rename outside into root",
        "rename root file outside",
        "mkdir outside",
        "chmod through symlink",
        "setxattr through symlink",
        "utime through symlink",
    ] {
        p.expect(name, "FileNotFoundError ENOENT");
    }
    // A symlink in the write root may point anywhere: it resolves inside the view.
    p.expect("symlink to outside", "ok");

    let t = s(&fx.target);
    let nf = "No such file or directory";
    run_fails(&mut srv, "chmod", &["0777", t], 1, nf);
    run_fails(&mut srv, "chown", &[&fx.uid.to_string(), t], 1, nf);
    run_fails(&mut srv, "touch", &["-d", "@0", t], 1, nf);
    run_fails(&mut srv, "ln", &[t, s(&fx.w.join("cmd-link"))], 1, nf);
    run_fails(&mut srv, "mv", &[t, s(&fx.w.join("cmd-moved"))], 1, nf);
    run_fails(
        &mut srv,
        "mv",
        &[s(&fx.w.join("own.txt")), s(&fx.outside.join("cmd-moved"))],
        1,
        nf,
    );

    // Nothing changed on the host: mode, owner, size, mtime, xattrs, content, siblings.
    assert_eq!(fx.outside_state(), before, "the outside file changed");
    assert_eq!(entries(&fx.w), ["own.txt", "sym"], "write root");
    assert_eq!(std::fs::read(fx.w.join("own.txt")).unwrap(), b"own\n");
}

// 4. ------------------------------------------------------------------------------------------

fn stat_is_no_oracle(mode: Mode) {
    let fx = Fx::new(mode, &["stat"], "");
    let mut srv = fx.start();
    let code = r#"
for p in ("/etc/shadow", "/etc/passwd", "/root", "/home", "/var/log", "/run", O, T,
          W + "/does-not-exist"):
    t(f"stat {p}", lambda: os.stat(p))
    t(f"lstat {p}", lambda: os.lstat(p))
    t(f"exists {p}", lambda: os.path.exists(p))
"#;
    let p = probe(&mut srv, &fx, code);
    let missing_in_root = fx.w.join("does-not-exist");
    let targets = [
        "/etc/shadow",
        "/etc/passwd",
        "/root",
        "/home",
        "/var/log",
        "/run",
        s(&fx.outside),
        s(&fx.target),
        // The reference: a path that does not exist inside a root answers the same.
        s(&missing_in_root),
    ];
    for t in targets {
        p.expect(&format!("stat {t}"), "FileNotFoundError ENOENT");
        p.expect(&format!("lstat {t}"), "FileNotFoundError ENOENT");
        p.expect(&format!("exists {t}"), "ok False");
    }
    for t in targets {
        run_fails(&mut srv, "stat", &[t], 1, "No such file or directory");
    }
    // Control: inside a root, stat works.
    assert_eq!(
        run_ok(&mut srv, "stat", &["-c", "%s", s(&fx.r.join("pub.txt"))]),
        "4\n"
    );
}

// 5. ------------------------------------------------------------------------------------------

/// A listening socket the test removes again.
struct Listener {
    path: PathBuf,
    l: UnixListener,
}

impl Listener {
    /// Bind at `path`, connectable on the host by anyone (mode 0777).
    fn bind(path: PathBuf) -> Listener {
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        chmod(&path, 0o777);
        l.set_nonblocking(true).unwrap();
        Listener { path, l }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `accept` succeeds within `t` (a non-blocking listener).
fn saw_connection(accept: impl Fn() -> std::io::Result<()>, t: Duration) -> bool {
    let deadline = Instant::now() + t;
    loop {
        match accept() {
            Ok(()) => return true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn named_unix_sockets(mode: Mode) {
    let fx = Fx::new(mode, &["cat"], "");
    let listeners = [
        Listener::bind(fx.outside.join("agent.sock")),
        Listener::bind(PathBuf::from(format!("/tmp/{}.sock", unique("sock")))),
        Listener::bind(PathBuf::from(format!("/run/{}.sock", unique("sock")))),
    ];
    for l in &listeners {
        chown(&l.path, fx.uid, fx.uid);
    }
    let mut srv = fx.start();
    let paths: Vec<&str> = listeners.iter().map(|l| s(&l.path)).collect();
    let code = format!(
        r#"
for p in {paths:?} + ["/run/dbus/system_bus_socket", "/run/systemd/private", "/var/run/docker.sock"]:
    t(f"connect {{p}}", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(p))
    t(f"sendto {{p}}", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"x", p))
"#
    );
    let p = probe(&mut srv, &fx, &code);
    for path in paths.iter().copied().chain([
        "/run/dbus/system_bus_socket",
        "/run/systemd/private",
        "/var/run/docker.sock",
    ]) {
        p.expect(&format!("connect {path}"), "FileNotFoundError ENOENT");
        p.expect(&format!("sendto {path}"), "FileNotFoundError ENOENT");
    }
    for path in &paths {
        // On the host, open(2) of a socket is ENXIO; in the view the path does not exist.
        run_fails(&mut srv, "cat", &[path], 1, "No such file or directory");
    }
    for l in &listeners {
        assert!(
            !saw_connection(|| l.l.accept().map(drop), Duration::from_secs(1)),
            "{} saw a connection from the worker",
            l.path.display()
        );
    }
    // Control: the listeners do accept (the test itself connects, on the host).
    for l in &listeners {
        let _c = UnixStream::connect(&l.path).unwrap();
        assert!(
            saw_connection(|| l.l.accept().map(drop), Duration::from_secs(2)),
            "{}: the control connection was not seen",
            l.path.display()
        );
    }
}

// 6. ------------------------------------------------------------------------------------------

fn anonymous_file_exec(mode: Mode) {
    let fx = Fx::new(mode, &["cp", "env", "true"], "");
    let mut srv = fx.start();
    let code = r#"
marker = "still-here"
MFD_CLOEXEC, MFD_ALLOW_SEALING, MFD_NOEXEC_SEAL, MFD_EXEC = 1, 2, 8, 0x10
ARGV = ["payload", "-c", "print('ESCAPED')"]
t("memfd plain", lambda: os.memfd_create("plain", 0))
t("memfd exec", lambda: os.memfd_create("exec", MFD_EXEC | MFD_ALLOW_SEALING))
fd = os.memfd_create("payload", MFD_NOEXEC_SEAL | MFD_ALLOW_SEALING)
print(f"sealed memfd: ok")
with open(sys.executable, "rb") as f:
    image = f.read()
t("fill sealed memfd", lambda: os.write(fd, image) == len(image))
t("fchmod sealed memfd", lambda: os.fchmod(fd, 0o755))
t("exec sealed memfd by path", lambda: os.execv(f"/proc/self/fd/{fd}", ARGV))
t("fexecve sealed memfd", lambda: os.execve(fd, ARGV, {}))
ifd = os.open(sys.executable, os.O_RDONLY)
t("fexecve interpreter", lambda: os.execve(ifd, ARGV, {}))
for where in (W, "/tmp", "/dev/shm"):
    t(f"copy to {where}", lambda: shutil.copyfile(sys.executable, where + "/payload") and None)
    t(f"chmod in {where}", lambda: os.chmod(where + "/payload", 0o755))
    t(f"exec from {where}", lambda: os.execv(where + "/payload", ARGV))
# The loader may run (every dynamic program needs it), but it cannot map a copy the client
# wrote: the mounts are noexec, which refuses mmap(PROT_EXEC) too.
import subprocess
ld = next(p for p in ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"] if os.path.exists(p))
for where in (W, "/tmp", "/dev/shm"):
    r = subprocess.run([ld, where + "/payload", "-c", "print('ESCAPED')"], capture_output=True, text=True)
    print(f"loader maps copy in {where}: {r.returncode} {'failed to map segment' in r.stderr}")
r = subprocess.run([ld, sys.executable, "-c", "print('listed')"], capture_output=True, text=True)
print(f"loader runs the listed interpreter: {r.returncode} {r.stdout.strip()}")
print(f"pid: {os.getpid()}")
"#;
    let p = probe(&mut srv, &fx, code);
    assert!(!p.out.contains("ESCAPED"), "{}", p.out);
    // seccomp: memfd_create only with MFD_NOEXEC_SEAL.
    p.expect("memfd plain", "PermissionError EPERM");
    p.expect("memfd exec", "PermissionError EPERM");
    p.expect("sealed memfd", "ok");
    p.expect("fill sealed memfd", "ok True");
    // F_SEAL_EXEC: the mode's exec bits can never be set.
    p.expect("fchmod sealed memfd", "PermissionError EPERM");
    // No exec bit: the kernel refuses to execute it by path.
    p.expect("exec sealed memfd by path", "PermissionError EACCES");
    // seccomp: execveat(fd, "", AT_EMPTY_PATH).
    p.expect("fexecve sealed memfd", "PermissionError EPERM");
    p.expect("fexecve interpreter", "PermissionError EPERM");
    for place in [s(&fx.w), "/tmp", "/dev/shm"] {
        p.expect(&format!("copy to {place}"), "ok");
        p.expect(&format!("chmod in {place}"), "ok");
        // noexec mount (and no Landlock Execute right there).
        p.expect(&format!("exec from {place}"), "PermissionError EACCES");
        p.expect(&format!("loader maps copy in {place}"), "127 True");
    }
    p.expect("loader runs the listed interpreter", "0 listed");
    // The session lives: same interpreter, same variables.
    let r = srv.call(
        "run_code",
        json!({"language": "python3", "code": "print(marker, os.getpid())"}),
    );
    assert_eq!(
        structured(&r)["stdout"],
        format!("still-here {}\n", p.get("pid")),
        "{r}"
    );
    // The copy in the write root is there on the host (only it cannot run).
    let md = std::fs::metadata(fx.w.join("payload")).unwrap();
    assert_eq!(md.mode() & 0o777, 0o755);

    // The same with commands: a copied program does not run from the write root or /tmp.
    let copy_w = fx.w.join("true-copy");
    for dst in [s(&copy_w), "/tmp/true-copy"] {
        run_ok(&mut srv, "cp", &["/usr/bin/true", dst]);
        run_fails(&mut srv, "env", &[dst], 126, "Permission denied");
    }
    assert!(copy_w.exists());
    run_ok(&mut srv, "true", &[]);
    let r = srv.call("run_code", json!({"language": "python3", "code": "marker"}));
    assert_eq!(structured(&r)["stdout"], "'still-here'\n", "{r}");
}

// 7. ------------------------------------------------------------------------------------------

fn processes(mode: Mode) {
    let fx = Fx::new(mode, &["kill", "cat"], "");
    let victim = fx.start();
    let victim_serving = *victim.serving_pids().first().expect("victim's serving pid");
    let victim_outer = *victim.worker_pids().first().expect("victim's outer pid");
    let mut srv = fx.start();
    let broker = srv.child.id() as i32;
    let own_outer = *srv.worker_pids().first().unwrap();
    let me = std::process::id() as i32;
    let code = format!(
        r#"
me = os.getpid()
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print(f"pids: {{pids}}")
for p in pids:
    try:
        exe = open(f"/proc/{{p}}/cmdline", "rb").read().split(b"\0")[0].decode()
    except OSError as e:
        exe = f"gone {{e.errno}}"
    print(f"cmdline {{p}}: {{exe}}")
print(f"me: {{me}}")
for name, pid, sig in (("broker", {broker}, 9), ("test", {me}, 0), ("victim serving", {victim_serving}, 9),
                       ("victim outer", {victim_outer}, 9), ("own outer", {own_outer}, 9)):
    t(f"proc {{name}}", lambda: os.stat(f"/proc/{{pid}}"))
    t(f"kill {{name}}", lambda: os.kill(pid, sig))
t("killpg broker", lambda: os.killpg({broker}, 9))
"#
    );
    let p = probe(&mut srv, &fx, &code);
    let pids: Vec<i32> = serde_json::from_str(p.get("pids")).unwrap();
    let me_ns: i32 = p.get("me").parse().unwrap();
    let worker_bin = mcpd_e2e::bin_dir().join("mcpd-worker");
    let worker_bin = s(&worker_bin);
    // Only the worker's PID namespace: its init (1), the serving worker (2), the session's
    // python3, and at most a short-lived helper.
    assert!(
        pids.contains(&1) && pids.contains(&2) && pids.contains(&me_ns),
        "{}",
        p.out
    );
    assert!(
        pids.len() <= 4,
        "more processes than the worker's: {}",
        p.out
    );
    assert_eq!(p.get("cmdline 1"), worker_bin);
    assert_eq!(p.get("cmdline 2"), worker_bin);
    for pid in &pids {
        let exe = p.get(&format!("cmdline {pid}"));
        assert!(
            exe == worker_bin || exe.starts_with("/usr/bin/python3") || exe.starts_with("gone"),
            "process {pid} ({exe}) is not the worker's: {}",
            p.out
        );
    }
    for host in [broker, me, victim_serving, victim_outer, own_outer] {
        assert!(
            !pids.contains(&host),
            "host pid {host} is listed: {}",
            p.out
        );
    }
    for name in [
        "broker",
        "test",
        "victim serving",
        "victim outer",
        "own outer",
    ] {
        p.expect(&format!("proc {name}"), "FileNotFoundError ENOENT");
        p.expect(&format!("kill {name}"), "ProcessLookupError ESRCH");
    }
    p.expect("killpg broker", "ProcessLookupError ESRCH");
    // The session's python3 is the host process the test finds through NSpid.
    let host_py = srv.host_pid(me_ns).expect("host pid of the python3");
    let cmdline = std::fs::read(format!("/proc/{host_py}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"/usr/bin/python3"), "{cmdline:?}");

    let nsp = "No such process";
    run_fails(
        &mut srv,
        "kill",
        &["-9", &victim_serving.to_string()],
        1,
        nsp,
    );
    run_fails(&mut srv, "kill", &["-0", &broker.to_string()], 1, nsp);
    run_fails(
        &mut srv,
        "cat",
        &[&format!("/proc/{broker}/cmdline")],
        1,
        "No such file or directory",
    );
    for pid in [victim_serving, victim_outer, broker, own_outer] {
        assert!(alive(pid), "{pid} was hurt");
    }
    let mut victim = victim;
    assert_eq!(victim.result("ping", json!({})), json!({}));
    assert_eq!(srv.result("ping", json!({})), json!({}));
}

// 8. ------------------------------------------------------------------------------------------

fn abstract_listener(name: &str) -> UnixListener {
    use std::os::linux::net::SocketAddrExt;
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let l = UnixListener::bind_addr(&addr).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

const NET_PROBE: &str = r#"
t("socket AF_INET", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
t("socket AF_INET6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close())
t("socket AF_NETLINK", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
t("connect tcp", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=3).close())
t("connect abstract", lambda: socket.socket(socket.AF_UNIX).connect("\0" + ABSTRACT))
t("interfaces", lambda: sorted(l.split(":")[0].strip() for l in open("/proc/self/net/dev").read().splitlines()[2:]))
"#;

fn network(mode: Mode) {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let port = tcp.local_addr().unwrap().port();
    let name = unique("abstract");
    let abs = abstract_listener(&name);
    let vars = format!("PORT = {port}\nABSTRACT = {}\n", Value::from(name.as_str()));
    let code = format!("{vars}{NET_PROBE}");

    // No network grant: an empty network namespace, and seccomp allows only AF_UNIX sockets.
    let fx = Fx::new(mode, &[], "");
    let mut srv = fx.start();
    let p = probe(&mut srv, &fx, &code);
    p.expect("socket AF_INET", "PermissionError EACCES");
    p.expect("socket AF_INET6", "PermissionError EACCES");
    p.expect("socket AF_NETLINK", "PermissionError EACCES");
    p.expect("connect tcp", "PermissionError EACCES");
    // The abstract namespace belongs to the network namespace: the host's name is not there.
    p.expect("connect abstract", "ConnectionRefusedError ECONNREFUSED");
    p.expect("interfaces", "ok ['lo']");
    assert!(
        !saw_connection(|| tcp.accept().map(drop), Duration::from_secs(1)),
        "the TCP listener saw a connection"
    );
    assert!(
        !saw_connection(|| abs.accept().map(drop), Duration::from_millis(200)),
        "the abstract listener saw a connection"
    );
    drop(srv);

    // network = true: the host's network namespace; TCP works.
    let fx = Fx::new(mode, &[], "network = true\n");
    let mut srv = fx.start();
    let p = probe(&mut srv, &fx, &code);
    p.expect("socket AF_INET", "ok");
    p.expect("socket AF_INET6", "ok");
    p.expect("connect tcp", "ok");
    assert!(
        saw_connection(|| tcp.accept().map(drop), Duration::from_secs(5)),
        "the TCP listener saw no connection with network = true: {}",
        p.out
    );
    assert_ne!(p.get("interfaces"), "ok ['lo']", "{}", p.out);
    // The host's abstract socket is in reach now, but Landlock scopes abstract Unix sockets
    // to the worker's own domain (ABI >= 6): EPERM.
    p.expect("connect abstract", "PermissionError EPERM");
    assert!(
        !saw_connection(|| abs.accept().map(drop), Duration::from_millis(200)),
        "the abstract listener saw a connection"
    );
}

// 9. ------------------------------------------------------------------------------------------

fn ownership(mode: Mode) {
    let fx = Fx::new(mode, &["touch", "cat", "stat"], "");
    let w_md = std::fs::metadata(&fx.w).unwrap();
    let host_owner = match mode {
        // The write root belongs to root on the host, mode 0700.
        Mode::Root => 0,
        Mode::Unprivileged => UNPRIV.0,
    };
    assert_eq!((w_md.uid(), w_md.gid()), (host_owner, host_owner));
    assert_eq!(w_md.mode() & 0o777, 0o700);
    let mut srv = fx.start();
    let code = r#"
t("my ids", lambda: (os.getuid(), os.getgid()))
t("write new file", lambda: open(W + "/new.txt", "w").write("new"))
t("list write root", lambda: sorted(os.listdir(W)))
t("read own 0600 file", lambda: open(W + "/own.txt").read())
t("write root owner", lambda: (os.stat(W).st_uid, os.stat(W).st_gid))
t("new file owner", lambda: (os.stat(W + "/new.txt").st_uid, os.stat(W + "/new.txt").st_gid))
t("read public file", lambda: open(R + "/pub.txt").read())
t("foreign file owner", lambda: os.stat(R + "/secret.txt").st_uid)
t("read foreign 0600 file", lambda: open(R + "/secret.txt").read())
"#;
    let p = probe(&mut srv, &fx, code);
    let uid = fx.uid;
    p.expect("my ids", &format!("ok ({uid}, {uid})"));
    p.expect("write new file", "ok 3");
    p.expect("list write root", "ok ['new.txt', 'own.txt']");
    p.expect("read own 0600 file", "ok 'own\\n'");
    // In mode A the root's host owner (root) appears as the worker's uid (idmapped mount); in
    // mode B the owner is the broker's uid, which the user namespace maps to itself.
    p.expect("write root owner", &format!("ok ({uid}, {uid})"));
    p.expect("new file owner", &format!("ok ({uid}, {uid})"));
    p.expect("read public file", "ok 'pub\\n'");
    // Uid 1234 is mapped by neither the idmapped mount (mode A: only root → worker uid) nor
    // the user namespace (mode B: only 4242): it appears as the overflow uid, so only the
    // file's "other" bits apply to the worker, and 0600 grants nothing. The worker has no
    // CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH to bypass that: EACCES.
    p.expect("foreign file owner", &format!("ok {OVERFLOW_UID}"));
    p.expect("read foreign 0600 file", "PermissionError EACCES");

    let cmd_file = fx.w.join("cmd.txt");
    run_ok(&mut srv, "touch", &[s(&cmd_file)]);
    assert_eq!(
        run_ok(&mut srv, "stat", &["-c", "%u %g", s(&cmd_file)]),
        format!("{uid} {uid}\n")
    );
    assert_eq!(
        run_ok(&mut srv, "cat", &[s(&fx.w.join("own.txt"))]),
        "own\n"
    );
    run_fails(
        &mut srv,
        "cat",
        &[s(&fx.r.join("secret.txt"))],
        1,
        "Permission denied",
    );

    // On the host, what the worker created belongs to the root's owner (mode A: root, through
    // the idmapped mount, not the worker uid; mode B: the broker's uid).
    for f in ["new.txt", "cmd.txt"] {
        let md = std::fs::metadata(fx.w.join(f)).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (host_owner, host_owner),
            "{f} on the host"
        );
    }
    assert_eq!(std::fs::read(fx.w.join("new.txt")).unwrap(), b"new");
    let secret = std::fs::metadata(fx.r.join("secret.txt")).unwrap();
    assert_eq!((secret.uid(), secret.mode() & 0o777), (FOREIGN_UID, 0o600));
}

// 10. -----------------------------------------------------------------------------------------

fn private_tmp(mode: Mode) {
    let fx = Fx::new(mode, &["touch", "cat"], "");
    let name = unique("tmp");
    let host_file = PathBuf::from(format!("/tmp/{name}-host"));
    std::fs::write(&host_file, "host\n").unwrap();
    chmod(&host_file, 0o644);
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(host_file.clone());
    let mut one = fx.start();
    let mut two = fx.start();
    let vars = format!("N = {}\n", Value::from(name.as_str()));
    let write = format!(
        r#"{vars}
t("write tmp", lambda: open(f"/tmp/{{N}}", "w").write("one"))
t("write shm", lambda: open(f"/dev/shm/{{N}}", "w").write("one"))
t("host file", lambda: os.stat(f"/tmp/{{N}}-host"))
"#
    );
    let p = probe(&mut one, &fx, &write);
    p.expect("write tmp", "ok 3");
    p.expect("write shm", "ok 3");
    p.expect("host file", "FileNotFoundError ENOENT");
    run_ok(&mut one, "touch", &[&format!("/tmp/{name}-cmd")]);
    // The worker's commands and code share its /tmp, across calls.
    let read = format!(
        r#"{vars}
t("read tmp", lambda: open(f"/tmp/{{N}}").read())
t("read shm", lambda: open(f"/dev/shm/{{N}}").read())
t("cmd file", lambda: os.path.exists(f"/tmp/{{N}}-cmd"))
t("listing", lambda: sorted(n for n in os.listdir("/tmp") if n.startswith(N)))
"#
    );
    let p = probe(&mut one, &fx, &read);
    p.expect("read tmp", "ok 'one'");
    p.expect("read shm", "ok 'one'");
    p.expect("cmd file", "ok True");
    p.expect("listing", &format!("ok ['{name}', '{name}-cmd']"));
    assert_eq!(run_ok(&mut one, "cat", &[&format!("/tmp/{name}")]), "one");
    // Not on the host...
    for f in [
        format!("/tmp/{name}"),
        format!("/tmp/{name}-cmd"),
        format!("/dev/shm/{name}"),
    ] {
        assert!(
            std::fs::symlink_metadata(&f).is_err(),
            "{f} appeared on the host"
        );
    }
    // ...and not in another session's worker.
    let p = probe(&mut two, &fx, &read);
    p.expect("read tmp", "FileNotFoundError ENOENT");
    p.expect("read shm", "FileNotFoundError ENOENT");
    p.expect("cmd file", "ok False");
    p.expect("listing", "ok []");
    run_fails(
        &mut two,
        "cat",
        &[&format!("/tmp/{name}")],
        1,
        "No such file or directory",
    );
}

// 11. -----------------------------------------------------------------------------------------

/// The `key=value` fields of the broker's "worker confined and ready" line.
fn ready_fields(srv: &Server) -> BTreeMap<String, String> {
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .stderr()
            .contains("worker confined and ready")),
        "no 'worker confined and ready' line:\n{}",
        srv.stderr()
    );
    let err = srv.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("worker confined and ready"))
        .unwrap();
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn isolation_is_reported(mode: Mode) {
    let fx = Fx::new(mode, &[], "");
    let memfd_noexec_before = std::fs::read_to_string("/proc/sys/vm/memfd_noexec").unwrap();
    let srv = fx.start();
    // The broker itself runs as the mode says (mode B: 4242, no supplementary groups).
    let broker = status_fields(
        &std::fs::read_to_string(format!("/proc/{}/status", srv.child.id())).unwrap(),
    );
    let broker_uid = match mode {
        Mode::Root => 0,
        Mode::Unprivileged => UNPRIV.0,
    };
    let ids = format!("{broker_uid} {broker_uid} {broker_uid} {broker_uid}");
    assert_eq!(broker.get("Uid"), Some(&ids), "broker: {broker:?}");
    assert_eq!(broker.get("Gid"), Some(&ids), "broker: {broker:?}");
    if mode == Mode::Unprivileged {
        assert_eq!(broker.get("Groups").map(String::as_str), Some(""));
    }
    let f = ready_fields(&srv);
    let want = |k: &str, v: &str| {
        assert_eq!(
            f.get(k).map(String::as_str),
            Some(v),
            "{k} in the ready line: {f:?}"
        )
    };
    want("namespaces", "true");
    want("network_namespace", "true");
    want("capabilities_cleared", "true");
    want("seccomp", "true");
    want("no_new_privs", "true");
    want("landlock", "FullyEnforced");
    want("uid", &fx.uid.to_string());
    match mode {
        Mode::Root => {
            want("user_namespace", "false");
            want("memfd_noexec", "true");
            // The write and read roots are both root-owned: idmapped.
            want("idmapped", "2");
        }
        Mode::Unprivileged => {
            want("user_namespace", "true");
            // The kernel refuses vm.memfd_noexec to a user namespace: seccomp holds instead.
            want("memfd_noexec", "false");
            want("idmapped", "0");
        }
    }
    // The same, seen from the host: the serving worker's namespaces are not the test's; the
    // outer process stays in the host's PID namespace.
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    let serving = srv.serving_pids()[0].to_string();
    for kind in ["mnt", "pid", "net", "ipc", "uts"] {
        assert_ne!(ns(&serving, kind), ns("self", kind), "{kind} namespace");
    }
    let same_user = ns(&serving, "user") == ns("self", "user");
    assert_eq!(same_user, mode == Mode::Root, "user namespace");
    let outer = srv.worker_pids()[0].to_string();
    assert_eq!(ns(&outer, "pid"), ns("self", "pid"), "outer process");
    assert_eq!(
        proc_status(srv.serving_pids()[0], "NSpid")
            .unwrap()
            .split_whitespace()
            .last(),
        Some("2")
    );
    // vm.memfd_noexec was set in the worker's PID namespace only.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/memfd_noexec").unwrap(),
        memfd_noexec_before
    );
}
