//! Where a worker cannot create its namespaces (a service manager's `RestrictNamespaces=`, a
//! kernel without user namespaces), it refuses to start and says which layer is missing —
//! unless the operator set `server.allow_degraded_sandbox`, and then the other layers still
//! hold. The missing layer is made missing for real: mcpd runs under a seccomp filter (installed
//! by the test before exec, inherited by every worker) that answers `unshare` with EPERM, as
//! systemd's `RestrictNamespaces=yes` does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;

use mcpd_e2e::{proc_status, Server};
use serde_json::json;

/// A classic-BPF filter: `unshare` → `EPERM` (all of it, or only when its flags hold one of
/// `mask`'s bits), everything else allowed (the number is compared on the native
/// architecture, which is what mcpd runs).
fn deny_unshare(cmd: &mut std::process::Command) {
    install_filter(cmd, None);
}

/// Only user namespaces are refused (`user.max_user_namespaces = 0` does the same).
fn deny_user_namespaces(cmd: &mut std::process::Command) {
    install_filter(cmd, Some(libc::CLONE_NEWUSER as u32));
}

fn install_filter(cmd: &mut std::process::Command, mask: Option<u32>) {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JEQ_K: u16 = 0x15;
    const BPF_JSET_K: u16 = 0x45;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let nr = u32::try_from(libc::SYS_unshare).unwrap();
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let eperm = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let filter: Vec<libc::sock_filter> = match mask {
        None => vec![
            op(BPF_LD_W_ABS, 0, 0, 0), // A = seccomp_data.nr
            op(BPF_JEQ_K, 0, 1, nr),
            op(BPF_RET_K, 0, 0, eperm),
            op(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        ],
        Some(bits) => vec![
            op(BPF_LD_W_ABS, 0, 0, 0),
            op(BPF_JEQ_K, 0, 3, nr),
            op(BPF_LD_W_ABS, 0, 0, 16), // A = low word of args[0] (flags; little endian)
            op(BPF_JSET_K, 0, 1, bits),
            op(BPF_RET_K, 0, 0, eperm),
            op(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        ],
    };
    // Leaked: the hook runs in the child after fork and must not allocate or free.
    let filter: &'static [libc::sock_filter] = Box::leak(filter.into_boxed_slice());
    let prog: &'static libc::sock_fprog = Box::leak(Box::new(libc::sock_fprog {
        len: u16::try_from(filter.len()).unwrap(),
        filter: filter.as_ptr().cast_mut(),
    }));
    let prog_addr = prog as *const libc::sock_fprog as usize;
    let hook = move || -> std::io::Result<()> {
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integers only; async-signal-safe.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: prctl(PR_SET_SECCOMP) reads the leaked, immutable `sock_fprog` (and the
        // filter it points to), valid for the program's lifetime; async-signal-safe.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                prog_addr,
                0,
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the hook only makes the two async-signal-safe prctl calls above.
    unsafe {
        cmd.pre_exec(hook);
    }
}

fn dirs() -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("f.txt"), "content").unwrap();
    let p = std::fs::canonicalize(d.path())
        .unwrap()
        .display()
        .to_string();
    (d, p)
}

#[test]
fn without_namespaces_the_worker_refuses_and_names_the_missing_layer() {
    let (_d, root) = dirs();
    let mut s = Server::start_configured(&["--allow-read", &root], deny_unshare);
    s.initialize();
    let r = s.request(
        "tools/call",
        json!({"name": "read_text_file", "arguments": {"path": format!("{root}/f.txt")}}),
    );
    assert_eq!(r["error"]["code"], -32603, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sandbox could not be started"),
        "{r}"
    );
    let err = s.stderr();
    assert!(
        err.contains("namespaces unavailable (unshare: Operation not permitted")
            && err.contains("RestrictNamespaces=")
            && err.contains("server.allow_degraded_sandbox = true runs workers without them"),
        "{err}"
    );
    // The client hears nothing of it beyond the generic error.
    assert!(!r.to_string().contains("unshare"), "{r}");
}

#[test]
fn in_degraded_mode_the_other_layers_still_hold() {
    let (d, root) = dirs();
    let cfg = d.path().join("mcpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nallow_degraded_sandbox = true\n[clients.local]\nwrite = [\"{root}\"]\ncode = [\"python3\"]\n"
        ),
    )
    .unwrap();
    let mut s = Server::start_configured(&["--config", cfg.to_str().unwrap()], deny_unshare);
    s.initialize();
    let (text, err) = s.call_text("read_text_file", json!({"path": format!("{root}/f.txt")}));
    assert!(!err, "{text}");
    assert_eq!(text, "content");
    let stderr = s.stderr();
    assert!(
        stderr.contains("DEGRADED SANDBOX") && stderr.contains("namespaces unavailable"),
        "{stderr}"
    );
    assert!(stderr.contains("namespaces=false"), "{stderr}");
    // No namespaces, so no view: /etc exists, but Landlock refuses it (EACCES, not ENOENT);
    // the worker runs as its per-client uid with every capability cleared all the same.
    let r = s.call(
        "run_code",
        json!({"language": "python3", "code": "import os\ntry:\n    open('/etc/hostname').read()\nexcept OSError as e:\n    print(type(e).__name__, e.errno)\nprint(os.getuid() != 0, os.getpid())"}),
    );
    let out = r["structuredContent"]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(out.starts_with("PermissionError 13\nTrue "), "{r}");
    // Without a PID namespace the pid it prints is the host's.
    let py: i32 = out.split_whitespace().last().unwrap().parse().unwrap();
    for field in ["CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"] {
        assert_eq!(
            proc_status(py, field).as_deref(),
            Some("0000000000000000"),
            "{field}"
        );
    }
    let w = s.worker_pids()[0];
    assert_eq!(proc_status(w, "Seccomp").as_deref(), Some("2"));
    assert_eq!(proc_status(py, "Seccomp").as_deref(), Some("2"));
}

/// A root broker whose workers cannot create user namespaces cannot idmap the roots: the view
/// is still built, the roots are reported as not idmapped, and the documented fallback applies
/// (the worker runs as the roots' owner — root here — with every capability cleared).
#[test]
fn without_idmapped_mounts_the_worker_runs_as_the_roots_owner_without_capabilities() {
    assert!(
        mcpd_e2e::is_root(),
        "this test needs a root broker (CI runs as root)"
    );
    let (_d, root) = dirs();
    let mut s = Server::start_configured(
        &["--allow-write", &root, "--allow-code", "python3"],
        deny_user_namespaces,
    );
    s.initialize();
    let code = format!(
        "import os\nprint(os.getuid(), os.path.exists('/etc/hostname'))\n\
         st = open('/proc/self/status').read()\n\
         print(sorted({{l.split()[1] for l in st.splitlines() if l.startswith('Cap')}}))\n\
         open('{root}/made.txt', 'w').write('x')"
    );
    let r = s.call("run_code", json!({"language": "python3", "code": code}));
    let out = r["structuredContent"]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    // uid 0 (the root's owner), inside the private view (no /etc/hostname), no capability.
    assert_eq!(out, "0 False\n['0000000000000000']\n1\n", "{r}"); // 1: write()'s value
    let stderr = s.stderr();
    assert!(
        stderr.contains("refused an idmapped mount") && stderr.contains(&root),
        "{stderr}"
    );
    assert!(
        stderr.contains("namespaces=true") && stderr.contains("uid=0 "),
        "{stderr}"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(format!("{root}/made.txt")).unwrap().uid(),
        0
    );
}
