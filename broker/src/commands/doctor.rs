//! `mcpd doctor`: what this kernel offers for confinement, read from (and tried on) the kernel
//! itself, what each client's worker view will hold, and whether the TLS and JWT key files the
//! policy names are usable.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

fn read(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Print the report. Exits non-zero when the worker could not be confined on this kernel
/// (no Landlock, or no seccomp filter support).
pub fn run(policy: &mcpd_policy::Policy) -> ExitCode {
    let abi = crate::sys::landlock_abi();
    let mut ok = true;
    println!("mcpd doctor ({})", env!("CARGO_PKG_VERSION"));
    println!(
        "kernel: {}",
        read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "?".into())
    );
    if abi > 0 {
        let mut feats = vec!["filesystem"];
        if abi >= 4 {
            feats.push("TCP bind/connect");
        }
        if abi >= 6 {
            feats.push("abstract-socket and signal scoping");
        }
        println!("landlock: ABI {abi} ({})", feats.join(", "));
        if abi < 6 {
            println!("  note: workers need server.allow_degraded_sandbox below ABI 6 (mcpd pins ABI 6 rights)");
        }
    } else {
        ok = false;
        println!("landlock: NOT AVAILABLE (workers refuse to start unless server.allow_degraded_sandbox = true)");
    }
    let actions = read("/proc/sys/kernel/seccomp/actions_avail");
    match (crate::sys::seccomp_mode(), actions) {
        (Some(mode), Some(a)) => {
            println!("seccomp: filters available (this process: mode {mode}; actions: {a})")
        }
        (Some(mode), None) => println!("seccomp: available (this process: mode {mode})"),
        (None, _) => {
            ok = false;
            println!("seccomp: NOT AVAILABLE");
        }
    }
    let userns = read("/proc/sys/user/max_user_namespaces").unwrap_or_else(|| "?".into());
    let unpriv = read("/proc/sys/kernel/unprivileged_userns_clone");
    println!(
        "user namespaces: max_user_namespaces={userns}{}",
        unpriv
            .map(|u| format!(", unprivileged_userns_clone={u}"))
            .unwrap_or_default()
    );
    // The executable first: `serve` refuses to start without a usable one.
    let worker_ok = match crate::daemon::worker_path(policy)
        .map_err(|e| e.to_string())
        .and_then(|w| crate::worker::probe::check(&w).map(|about| (w, about)))
    {
        Ok((w, about)) => {
            println!("worker: {} ({about})", w.display());
            true
        }
        Err(e) => {
            println!("worker: PROBLEM: {e}");
            println!("verdict: the worker executable is NOT usable: mcpd serve refuses to start");
            false
        }
    };
    if !namespaces_report(policy) {
        ok = false;
    }
    println!("{}", crate::transport::unix::doctor_report(policy.unix()));
    println!("cgroups: {}", cgroup_report());
    let mut notes = Vec::new();
    match crate::worker::cgroup::Cgroups::detect_with_notes(&crate::worker::cgroup::Mode::Auto, &mut notes) {
        Ok(Some(c)) => println!(
            "worker limits: cgroup v{} per worker: {}",
            c.version(),
            c.describe()
        ),
        _ => println!(
            "worker limits: no usable cgroup ({}): memory and process-count limits fall back to rlimits (RLIMIT_NPROC is per uid and ignored for root; see docs/cgroups.md)",
            notes.join("; ")
        ),
    }
    let tls_ok = tls_report(policy) & jwt_report(policy) & worker_ok;
    if ok {
        println!("verdict: workers can be fully confined on this kernel");
    } else {
        println!("verdict: workers CANNOT be fully confined on this kernel");
        return ExitCode::from(1);
    }
    if tls_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The HTTP listener's TLS files (`[http.tls]`): readable, parseable, within their validity,
/// the key readable by its owner only. False when one of them would refuse the start or fail
/// handshakes.
fn tls_report(policy: &mcpd_policy::Policy) -> bool {
    let Some(s) = policy.http_tls() else {
        if policy.http().listen.is_some() {
            println!("tls: off (plaintext HTTP on a loopback address)");
        }
        return true;
    };
    let mut ok = true;
    for (good, line) in crate::transport::http::tls::inspect(s) {
        ok &= good;
        println!("tls: {}{line}", if good { "" } else { "PROBLEM: " });
    }
    println!(
        "verdict: the TLS files {}",
        if ok { "are usable" } else { "are NOT usable" }
    );
    ok
}

/// The bearer-token keys (`[auth.jwt]`): each file trustworthy, readable and holding usable
/// keys. False when one would refuse the start.
fn jwt_report(policy: &mcpd_policy::Policy) -> bool {
    let Some(j) = policy.jwt() else {
        return true;
    };
    let mut ok = true;
    for (good, line) in crate::auth::jwt::inspect(j) {
        ok &= good;
        println!("jwt: {}{line}", if good { "" } else { "PROBLEM: " });
    }
    println!(
        "verdict: the JWT key files {}",
        if ok { "are usable" } else { "are NOT usable" }
    );
    ok
}

/// The namespaces a worker needs, tried for real; then each client's view. False when a
/// worker could not build its namespaces (it then refuses to start unless degraded mode).
fn namespaces_report(policy: &mcpd_policy::Policy) -> bool {
    let root = rustix::process::geteuid().is_root();
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    flags |= libc::CLONE_NEWNET;
    let (who, names) = if root {
        ("root broker", "mount, PID, IPC, UTS, network")
    } else {
        flags |= libc::CLONE_NEWUSER;
        ("unprivileged broker", "user, mount, PID, IPC, UTS, network")
    };
    let usable = match crate::sys::probe_unshare(flags) {
        Ok(()) => {
            println!("worker namespaces ({who}): {names}: available (tried)");
            true
        }
        Err(e) => {
            println!(
                "worker namespaces ({who}): {names}: NOT AVAILABLE ({e}): workers refuse to start \
                 unless server.allow_degraded_sandbox = true (then without namespaces or a private view)"
            );
            false
        }
    };
    if root {
        println!(
            "worker identity: per-client uid/gid from server.worker_uids = {} (every capability cleared, securebits locked)",
            policy.worker_uids
        );
    } else {
        println!(
            "worker identity: the broker's uid {} inside the worker's user namespace (every capability cleared); \
             supplementary groups cannot be dropped there",
            rustix::process::getuid().as_raw()
        );
    }
    for (id, _) in policy.clients() {
        let mut spec = policy.sandbox_spec(id);
        crate::worker::sandbox::complete(&mut spec);
        println!("view of client {id}:");
        if root {
            println!("  uid/gid {}", policy.worker_uid(id));
        }
        for (kind, paths) in [("ro", &spec.read_paths), ("rw", &spec.write_paths)] {
            for p in paths {
                let idmap = if root {
                    match crate::sys::probe_idmap(Path::new(p)) {
                        Ok(()) => ", idmapped (its owner appears as the worker)".to_string(),
                        Err(e) => format!(
                            ", NOT idmappable ({e}): the worker runs as this root's owner (fallback)"
                        ),
                    }
                } else {
                    String::new()
                };
                println!("  {p} ({kind},nosuid,nodev,noexec{idmap})");
            }
        }
        for p in &spec.exec_paths {
            println!("  {p} (program: ro,nosuid,nodev)");
        }
        for p in &spec.exec.system_read_paths {
            println!("  {p} (system: ro,nosuid,nodev)");
        }
        println!(
            "  /dev: null zero full random urandom; /dev/shm and /tmp private ({} bytes each); /proc of its own PID namespace{}",
            policy.worker_tmp_bytes,
            if spec.allow_network { "; the host's network" } else { "; no network (own empty network namespace)" }
        );
    }
    usable
}

fn cgroup_report() -> String {
    let own = read("/proc/self/cgroup").unwrap_or_default();
    let v2_path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string);
    let mount = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        Some(("unified (v2 only)", "/sys/fs/cgroup"))
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        Some((
            "hybrid (v1 controllers + v2 at /sys/fs/cgroup/unified)",
            "/sys/fs/cgroup/unified",
        ))
    } else {
        None
    };
    let Some((kind, root)) = mount else {
        return "v1 only (no cgroup v2 hierarchy): memory/pids limits fall back to rlimits".into();
    };
    let Some(rel) = v2_path else {
        return format!("{kind}; this process is not in a v2 cgroup");
    };
    let dir = format!("{root}{rel}");
    let controllers = read(&format!("{dir}/cgroup.controllers")).unwrap_or_default();
    let writable = rustix::fs::access(
        Path::new(&format!("{dir}/cgroup.subtree_control")),
        rustix::fs::Access::WRITE_OK,
    )
    .is_ok();
    let delegated = writable && controllers.contains("memory") && controllers.contains("pids");
    format!(
        "{kind}; own v2 cgroup {rel}; controllers [{controllers}]; v2 delegation usable for memory+pids: {}",
        if delegated { "yes" } else { "no" }
    )
}
