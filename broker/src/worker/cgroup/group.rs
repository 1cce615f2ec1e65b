//! One worker session's control group ([`WorkerGroup`]): its directory in every hierarchy in
//! use, and what the supervisor does with it: add the worker's pid, read its counters, and at
//! session end kill everything in it (daemonized processes and fork bombs included) and remove
//! it. The version-specific steps go through [`Hierarchy`]; what spans all hierarchies of the
//! group (the kill loop, membership) is here.
//!
//! Does not choose names or limits (that is [`super::Cgroups::create`]). Trusts the kernel's
//! cgroupfs and procfs, not the pids it lists: a pid read from `cgroup.procs` is signalled only
//! through a pidfd and after `/proc/<pid>/cgroup` confirmed it is still in the group, so a pid
//! recycled by an unrelated process is never signalled. Every loop is bounded in rounds and
//! time; blocking I/O and sleeps: call from a blocking context.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};

use super::files::{read_bounded, subtree, MAX_POLL_DELAY, PROCS_MAX, SMALL_FILE_MAX};
use super::hierarchy::Hierarchy;
use super::parse::{parse_proc_cgroup, rel_within};
use super::{CgroupError, GroupStats, Limits};

/// Upper bound on the time `kill_all` spends signalling and waiting.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on the kill passes of `kill_all`.
const KILL_MAX_ROUNDS: u32 = 1000;

/// One worker's directory in one hierarchy.
#[derive(Debug)]
pub(super) struct GroupDir {
    /// The hierarchy the directory is in; every version-specific step goes through it.
    pub(super) hierarchy: Arc<dyn Hierarchy>,
    pub(super) path: PathBuf,
    /// `path` as a cgroup path, as `/proc/<pid>/cgroup` shows it to the broker.
    pub(super) rel: String,
}

/// The control group of one worker session, in every hierarchy in use.
///
/// Dropping it without [`WorkerGroup::remove`] removes it anyway (best effort, logged).
#[derive(Debug)]
pub struct WorkerGroup {
    pub(super) dirs: Vec<GroupDir>,
    pub(super) removed: bool,
}

impl WorkerGroup {
    /// Move a process (all its threads) into the group, in every hierarchy (`cgroup.procs`).
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        if i32::try_from(pid).ok().and_then(Pid::from_raw).is_none() {
            return Err(CgroupError::InvalidPid(pid));
        }
        for d in &self.dirs {
            d.hierarchy.add_process(&d.path, pid)?;
        }
        Ok(())
    }

    /// The group's directories, one per hierarchy (for logs and tests).
    pub fn paths(&self) -> Vec<&Path> {
        self.dirs.iter().map(|d| d.path.as_path()).collect()
    }

    /// Kill every process in the group, including daemonized ones and a fork bomb.
    ///
    /// First the group stops accepting new processes (`pids.max` 0 where the pids controller is
    /// present). Then v2 uses `cgroup.kill` (5.14+), or freezes the group (`cgroup.freeze`) when
    /// that file is missing; then, on every version, `cgroup.procs` (and that of any sub-group)
    /// is read and each process killed with `SIGKILL` until the group is empty, for at most a few
    /// seconds. Afterwards the group is meant to be removed: it accepts no new processes.
    /// Zombies waiting for their parent to reap them no longer count as members.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        self.kill_all_with(true)
    }

    /// [`WorkerGroup::kill_all`]; `use_kill_file: false` exercises the freeze path in tests.
    pub(super) fn kill_all_with(&self, use_kill_file: bool) -> Result<(), CgroupError> {
        for d in &self.dirs {
            d.hierarchy.stop_forks(&d.path);
        }
        let frozen: Vec<&GroupDir> = self
            .dirs
            .iter()
            .filter(|d| d.hierarchy.kill_or_freeze(&d.path, use_kill_file))
            .collect();
        let result = self.kill_loop();
        for d in frozen {
            d.hierarchy.thaw(&d.path);
        }
        result
    }

    /// Read the members and kill them until none is left, bounded in rounds and time.
    fn kill_loop(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        let mut delay = Duration::from_millis(1);
        let mut rounds = 0u32;
        loop {
            let pids = self.member_pids();
            if pids.is_empty() {
                return Ok(());
            }
            if rounds >= KILL_MAX_ROUNDS || Instant::now() >= deadline {
                return Err(CgroupError::NotEmpty {
                    path: self.first_path(),
                    remaining: pids.len(),
                });
            }
            rounds += 1;
            for pid in pids {
                self.kill_member(pid);
            }
            sleep(delay);
            delay = (delay * 2).min(MAX_POLL_DELAY);
        }
    }

    /// The pids listed in `cgroup.procs` of the group and its sub-groups, in every hierarchy,
    /// without the broker's own pid.
    pub(super) fn member_pids(&self) -> BTreeSet<u32> {
        let own = rustix::process::getpid().as_raw_nonzero().get();
        let mut pids = BTreeSet::new();
        for d in &self.dirs {
            for dir in subtree(&d.path) {
                let file = dir.join("cgroup.procs");
                match read_bounded(&file, PROCS_MAX) {
                    Ok(text) => pids.extend(
                        text.lines()
                            .filter_map(|l| l.trim().parse::<u32>().ok())
                            .filter(|p| i32::try_from(*p).is_ok_and(|p| p != own)),
                    ),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %file.display(), "cannot read: {e}")
                    }
                }
            }
        }
        pids
    }

    /// `SIGKILL` one pid read from `cgroup.procs`, through a pidfd, after checking it still
    /// belongs to the group (the pid may have been recycled by an unrelated process).
    fn kill_member(&self, pid: u32) {
        let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return;
        };
        match rustix::process::pidfd_open(p, PidfdFlags::empty()) {
            Ok(fd) => {
                // The pidfd pins the process; if it is still alive after this check, the check
                // read its own /proc entry.
                if self.is_member(pid) == Some(false) {
                    return;
                }
                match rustix::process::pidfd_send_signal(&fd, Signal::KILL) {
                    Ok(()) | Err(Errno::SRCH) => {}
                    Err(e) => {
                        tracing::warn!(pid, "cannot kill: {e}")
                    }
                }
            }
            Err(Errno::SRCH) => {}
            Err(open_err) => {
                // No pidfd (kernel before 5.3, or out of fds): plain kill after the membership
                // check; the recycling window is then the time between the check and the kill.
                if self.is_member(pid) == Some(false) {
                    return;
                }
                match rustix::process::kill_process(p, Signal::KILL) {
                    Ok(()) | Err(Errno::SRCH) => {}
                    Err(e) => {
                        tracing::warn!(pid, "cannot kill (pidfd_open: {open_err}): {e}")
                    }
                }
            }
        }
    }

    /// Whether `/proc/<pid>/cgroup` puts the process in this group (or a sub-group) in any
    /// hierarchy; `Some(false)` also when the process is gone, `None` when unreadable.
    pub(super) fn is_member(&self, pid: u32) -> Option<bool> {
        let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = match read_bounded(&file, SMALL_FILE_MAX) {
            Ok(text) => text,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                return Some(false)
            }
            Err(_) => return None,
        };
        let lines = parse_proc_cgroup(&text);
        Some(self.dirs.iter().any(|d| {
            lines
                .iter()
                .any(|l| d.hierarchy.is_own_line(l) && rel_within(&d.rel, &l.path))
        }))
    }

    /// Limit hits, OOM events, current and peak usage (see [`GroupStats`]).
    pub fn stats(&self) -> GroupStats {
        let mut s = GroupStats::default();
        for d in &self.dirs {
            d.hierarchy.read_stats(&d.path, &mut s);
        }
        s
    }

    /// [`WorkerGroup::kill_all`], then remove the group's directories (sub-groups first) in
    /// every hierarchy, retrying briefly while the kernel reports them busy. Returns the first
    /// error; the directories that could be removed are removed regardless.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let mut first_err = self.kill_all().err();
        for d in &self.dirs {
            if let Err(e) = d.hierarchy.remove_group(&d.path) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn first_path(&self) -> PathBuf {
        self.dirs
            .first()
            .map(|d| d.path.clone())
            .unwrap_or_default()
    }

    /// Write the limits into every hierarchy that carries the controller.
    pub(super) fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        for d in &self.dirs {
            d.hierarchy.set_limits(&d.path, limits)?;
        }
        Ok(())
    }
}

impl Drop for WorkerGroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove_inner() {
            tracing::warn!("worker group not fully removed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::thread::sleep;
    use std::time::{Duration, Instant};

    use crate::worker::cgroup::testutil::{
        assert_gone, host, release, spawn_sh, start_daemon_in, unique, wait_bounded,
    };
    use crate::worker::cgroup::Limits;

    #[test]
    fn pids_limit_contains_background_jobs() {
        let Some(cg) = host("pids_limit_contains_background_jobs") else {
            return;
        };
        let limits = Limits {
            max_processes: Some(8),
            memory_bytes: None,
        };
        let g = cg.create(&unique("pids"), &limits).unwrap();
        // dash exits with "Cannot fork" at the first refused fork; each "started" line is
        // printed by the shell after a successful fork.
        let mut child = spawn_sh(
            "read x; i=0; while [ $i -lt 20 ]; do i=$((i+1)); \
             sleep 5 </dev/null >/dev/null 2>&1 & echo started; done",
        );
        g.add(child.id()).unwrap();
        release(&mut child);
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = wait_bounded(&mut child, Duration::from_secs(20));
        let started = out.lines().filter(|l| *l == "started").count();
        let stats = g.stats();
        eprintln!(
            "pids test: {started} of 20 background sleeps started; shell {status}; {stats:?}"
        );
        assert!(started >= 1, "the limit must still allow some processes");
        assert!(
            started < 8,
            "shell + {started} sleeps exceed pids.max 8 ({stats:?})"
        );
        assert!(
            !status.success(),
            "the shell should have hit a refused fork"
        );
        assert!(stats.pids_limit_hit(), "{stats:?}");
        assert!(stats.pids_current.is_some_and(|n| n <= 8), "{stats:?}");
        g.remove().unwrap();
    }

    #[test]
    fn memory_limit_stops_a_large_allocation() {
        let Some(cg) = host("memory_limit_stops_a_large_allocation") else {
            return;
        };
        let limits = Limits {
            max_processes: Some(64),
            memory_bytes: Some(32 * 1024 * 1024),
        };
        let g = cg.create(&unique("mem"), &limits).unwrap();
        // GNU tail keeps the whole newline-free input in memory: 200 MiB.
        let mut child = spawn_sh("read x; head -c 200M /dev/zero | tail > /dev/null");
        g.add(child.id()).unwrap();
        release(&mut child);
        let status = wait_bounded(&mut child, Duration::from_secs(60));
        let stats = g.stats();
        eprintln!("memory test: child {status}; {stats:?}");
        assert!(
            !status.success(),
            "a 200 MiB allocation succeeded under a 32 MiB limit"
        );
        assert!(stats.memory_limit_hit(), "{stats:?}");
        assert!(
            stats.memory_peak.is_none_or(|p| p <= 33 * 1024 * 1024),
            "{stats:?}"
        );
        g.remove().unwrap();
    }

    #[test]
    fn kill_all_reaches_a_daemonized_grandchild() {
        let Some(cg) = host("kill_all_reaches_a_daemonized_grandchild") else {
            return;
        };
        let g = cg.create(&unique("daemon"), &Limits::default()).unwrap();
        let (daemon, start) = start_daemon_in(&g);
        let paths: Vec<PathBuf> = g.paths().iter().map(|p| p.to_path_buf()).collect();
        g.remove().unwrap();
        assert_gone(daemon, start);
        for p in paths {
            assert!(!p.exists(), "{} left behind", p.display());
        }
        eprintln!("daemon test: setsid grandchild {daemon} killed, group removed");
    }

    #[test]
    fn fork_bomb_is_contained_and_cleaned_up() {
        let Some(cg) = host("fork_bomb_is_contained_and_cleaned_up") else {
            return;
        };
        let limits = Limits {
            max_processes: Some(16),
            memory_bytes: Some(256 * 1024 * 1024),
        };
        let g = cg.create(&unique("bomb"), &limits).unwrap();
        // Every process forks forever and survives refused forks (a shell would exit on
        // "Cannot fork" and the bomb would die out by itself).
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let mut child = spawn_sh(&format!(
            "read x; exec {python} -c '\nimport os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.001)\n'"
        ));
        g.add(child.id()).unwrap();
        release(&mut child);
        sleep(Duration::from_millis(800));
        let stats = g.stats();
        let live = g.member_pids().len();
        eprintln!("fork bomb test: after 0.8 s {live} live processes, {stats:?}");
        assert!(stats.pids_current.is_some_and(|n| n <= 16), "{stats:?}");
        assert!(live >= 8, "the bomb should be running ({live} processes)");
        assert!(stats.pids_limit_hit(), "{stats:?}");
        let paths: Vec<PathBuf> = g.paths().iter().map(|p| p.to_path_buf()).collect();
        let started = Instant::now();
        g.remove().unwrap();
        let took = started.elapsed();
        eprintln!("fork bomb test: kill_all + remove took {took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        let status = wait_bounded(&mut child, Duration::from_secs(5));
        assert!(!status.success());
        for p in paths {
            assert!(!p.exists(), "{} left behind", p.display());
        }
    }
}
