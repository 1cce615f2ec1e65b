//! Test support for the cgroup unit tests: unique group names, whether this host *must* offer
//! cgroups (so a missing hierarchy fails loudly instead of skipping), and small shell children
//! that wait on stdin until they are in their group, double-fork daemons, and bounded waits.
//!
//! Test code only (`#[cfg(test)]`); it starts real processes in real groups, and trusts the
//! host's `/proc` to report on them.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::files::{read_bounded, writable_group, MOUNTINFO_MAX};
use super::parse::{controller_listed, parse_mountinfo};
use super::{Cgroups, Mode, WorkerGroup};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub(super) fn unique(tag: &str) -> String {
    format!(
        "mcpd-test-{}-{tag}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Whether this host must offer cgroups to the tests: `MCPD_REQUIRE_CGROUPS` is set, or we
/// are root and a writable v1 pids/memory hierarchy is mounted (this machine and CI).
pub(super) fn must_not_skip() -> bool {
    if std::env::var_os("MCPD_REQUIRE_CGROUPS").is_some() {
        return true;
    }
    let root = rustix::process::geteuid().is_root();
    let text = read_bounded(Path::new("/proc/self/mountinfo"), MOUNTINFO_MAX).unwrap();
    root && parse_mountinfo(&text).iter().any(|m| {
        m.fstype == "cgroup"
            && (controller_listed(&m.super_opts, "pids")
                || controller_listed(&m.super_opts, "memory"))
            && writable_group(&m.mount_point).is_ok()
    })
}

/// Like [`must_not_skip`] for the v2 core test: a writable cgroup2 mount as root.
pub(super) fn must_not_skip_v2() -> bool {
    if std::env::var_os("MCPD_REQUIRE_CGROUPS").is_some() {
        return true;
    }
    let root = rustix::process::geteuid().is_root();
    let text = read_bounded(Path::new("/proc/self/mountinfo"), MOUNTINFO_MAX).unwrap();
    root && parse_mountinfo(&text)
        .iter()
        .any(|m| m.fstype == "cgroup2" && writable_group(&m.mount_point).is_ok())
}

pub(super) fn host(test: &str) -> Option<Cgroups> {
    let mut notes = Vec::new();
    let found = Cgroups::detect_with_notes(&Mode::Auto, &mut notes).unwrap();
    match found {
        Some(cg) => {
            eprintln!(
                "cgroup test exercised ({test}): {} [controllers {}]",
                cg.describe(),
                cg.controllers().names()
            );
            Some(cg)
        }
        None => {
            assert!(
                !must_not_skip(),
                "no usable cgroups on a host that has them: {notes:?}"
            );
            eprintln!(
                "\n!!!!!!!! SKIP {test}: no usable cgroup hierarchy on this host: {notes:?} !!!!!!!!\n"
            );
            None
        }
    }
}

pub(super) fn spawn_sh(script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Let a child blocked in `read x` go on.
pub(super) fn release(child: &mut Child) {
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
}

pub(super) fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child did not exit within {limit:?}");
        }
        sleep(Duration::from_millis(20));
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3, the state, comes
/// first), `None` when the process is gone.
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// `(state, starttime)` from `/proc/<pid>/stat`, `None` when the process is gone.
fn proc_state(pid: u32) -> Option<(char, u64)> {
    let fields = stat_fields(&pid.to_string())?;
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// The session id field of `/proc/<pid>/stat` (0 when the leader is in another pid namespace).
fn proc_session(pid: &str) -> Option<i64> {
    stat_fields(pid)?.get(3)?.parse().ok()
}

/// Start `sh` in the group; it double-forks a `sleep 60` into a new session and exits.
/// Returns the daemon's pid and start time, after checking it runs, in the group.
pub(super) fn start_daemon_in(g: &WorkerGroup) -> (u32, u64) {
    let mut child =
        spawn_sh("read x; setsid sh -c 'sleep 60 </dev/null >/dev/null 2>&1 & echo $!'");
    g.add(child.id()).unwrap();
    release(&mut child);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(10));
    assert!(status.success());
    let daemon: u32 = line.trim().parse().unwrap();
    let (state, start) = proc_state(daemon).expect("daemon running");
    assert_ne!(state, 'Z');
    assert_eq!(g.is_member(daemon), Some(true), "daemon is in the group");
    // From /proc, not getsid(2): our own session reads as 0 when its leader is outside our
    // pid namespace (a CI runner's children), and getsid wrappers refuse a 0 pid.
    let own_sid = proc_session("self").expect("own session");
    let daemon_sid = proc_session(&daemon.to_string()).expect("daemon session");
    assert_ne!(daemon_sid, 0, "daemon leads or joins a visible session");
    assert_ne!(daemon_sid, own_sid, "daemon left our session");
    (daemon, start)
}

/// The process is gone, a zombie, or its pid now names another process.
pub(super) fn assert_gone(pid: u32, start: u64) {
    if let Some((state, same_start)) = proc_state(pid) {
        assert!(
            state == 'Z' || same_start != start,
            "process {pid} survived (state {state})"
        );
    }
}
