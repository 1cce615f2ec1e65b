//! Per-worker control groups: kernel-enforced process-count and memory limits for a worker *and
//! everything it starts*, and a reliable way to kill every process of a session at its end, even
//! the ones that double-forked and called `setsid` (see `docs/cgroups.md`).
//!
//! Life cycle, driven by the supervisor:
//! 1. [`Cgroups::detect`] once at broker start (`Ok(None)`: no usable hierarchy, use the rlimit
//!    fallbacks);
//! 2. per session, [`Cgroups::create`] a group (the name includes the broker pid and a counter),
//!    spawn the worker, [`WorkerGroup::add`] its pid **before** sending it the `Confine` message:
//!    until it has read that message the worker runs only its own start-up code and forks nothing,
//!    so nothing it starts can be born outside the group;
//! 3. at session end [`WorkerGroup::remove`] (or drop): kill every process in the group, then
//!    remove its directories.
//!
//! Layouts:
//! * cgroup v2 (production: systemd with `Delegate=pids memory` and `DelegateSubgroup=broker`):
//!   the broker sits in the leaf `<service>/broker`, worker groups are its siblings
//!   `<service>/<name>`. v2's "no internal processes" rule forbids enabling controllers for the
//!   children of a cgroup that holds processes, so the broker's own cgroup cannot be the parent.
//!   Fallback: `<own cgroup>/mcpd-workers/<name>` when controllers can be enabled there (only
//!   possible when the broker's own cgroup is exempt, i.e. the root). Nothing is ever moved.
//! * cgroup v1 (hybrid hosts): `<own group in the pids hierarchy>/<name>` and the same in the
//!   memory hierarchy.
//! * [`Mode::Path`]: an empty v2 directory the operator delegated; groups are `<path>/<name>`.
//!
//! The files of this module, in reading order:
//! * `mod.rs` (this file): the public API: [`Cgroups`] (detection, creation, stale groups),
//!   [`Limits`], [`Mode`], [`Controllers`], [`GroupStats`], [`CgroupError`];
//! * `hierarchy.rs`: the `Hierarchy` trait, one cgroup hierarchy and what can be done to a
//!   group directory in it; [`Cgroups`] and [`WorkerGroup`] only ever go through it;
//! * `v2.rs` / `v1.rs`: its two implementations, and how each is detected;
//! * `group.rs`: [`WorkerGroup`], one session's group across its hierarchies, and the kill loop;
//! * `parse.rs`: `/proc/<pid>/cgroup`, `/proc/self/mountinfo` and cgroup path arithmetic;
//! * `files.rs`: bounded reads and writes, the sub-group walk, `rmdir` with retries.
//!
//! Every function here does blocking file-system I/O on cgroupfs and may sleep (kill and removal
//! are bounded to a few seconds): call them from a blocking context (`spawn_blocking` or the
//! supervisor's spawner thread), not from an async task.
//!
//! Does not decide the limits (the policy does, through the session) and does not confine the
//! worker (`mcpd-worker` does that itself). Trusts the kernel's cgroupfs and procfs, and the
//! operator's configuration; not the worker, nor anything it could have written. Security notes:
//! group names are validated (`[A-Za-z0-9_.-]`, no `.`/`..`), the only other component created
//! is the constant `mcpd-workers`; every other path comes from the kernel (`/proc/self/cgroup`,
//! `/proc/self/mountinfo`) or the operator's configuration. Processes read from `cgroup.procs`
//! are signalled through a pidfd after re-checking, through `/proc/<pid>/cgroup`, that the pid
//! still belongs to the group, so a pid recycled by an unrelated process between the read and
//! the kill is never signalled. The worker must have no access to cgroupfs (its Landlock rules
//! grant none): the group's files are owned by the broker's user, which is also the worker's.
#![forbid(unsafe_code)]

mod files;
mod group;
mod hierarchy;
mod parse;
#[cfg(test)]
mod testutil;
mod v1;
mod v2;

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use group::WorkerGroup;

use files::{read_bounded, MOUNTINFO_MAX, SMALL_FILE_MAX};
use group::GroupDir;
use hierarchy::Hierarchy;
use parse::{join_rel, parse_mountinfo, parse_proc_cgroup};

/// Whether a process with this pid exists. Conservative on purpose: a recycled pid keeps a
/// dead broker's groups (a harmless leak until the pid is free), never the reverse.
fn broker_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Longest accepted group name.
const MAX_NAME_LEN: usize = 64;

/// Kernel-enforced limits for one worker group: the worker and every process it starts.
///
/// `None` leaves the controller's default (`max`, i.e. only the parent's limit applies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most processes (and threads) alive in the group at once (`pids.max`).
    pub max_processes: Option<u64>,
    /// Memory limit in bytes (v2 `memory.max` with `memory.swap.max` 0; v1
    /// `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes`).
    pub memory_bytes: Option<u64>,
}

/// How the broker finds the cgroups it creates worker groups in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mode {
    /// Detect: a delegated cgroup v2 subtree, else writable cgroup v1 pids/memory hierarchies,
    /// else nothing (rlimit fallbacks).
    #[default]
    Auto,
    /// Do not use cgroups.
    Off,
    /// An empty cgroup v2 directory delegated to the broker's user by the operator; worker groups
    /// are created directly inside it. Unusable is an error, not a fallback.
    Path(PathBuf),
}

/// Errors of cgroup detection and management.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A group name outside `[A-Za-z0-9_.-]{1,64}`, or `.` / `..`.
    #[error("invalid cgroup name {0:?}: 1-64 characters from [A-Za-z0-9_.-], not \".\" or \"..\"")]
    InvalidName(String),
    /// The directory configured with [`Mode::Path`] cannot be used.
    #[error("cgroup directory {path}: {reason}")]
    Unusable {
        /// The configured directory.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A limit was requested for a controller the detected setup does not offer.
    #[error("a {0} limit was requested but the {0} controller is not available for worker groups")]
    MissingController(&'static str),
    /// A pid that names no process (0, or larger than `i32::MAX`).
    #[error("invalid pid {0}")]
    InvalidPid(u32),
    /// A cgroupfs operation failed.
    #[error("cgroup {op} {path}: {source}")]
    Io {
        /// The operation (`mkdir`, `write pids.max`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Processes were still in the group when the bounded kill loop gave up.
    #[error("{remaining} process(es) still in cgroup {path} after the kill loop")]
    NotEmpty {
        /// The group directory (first hierarchy).
        path: PathBuf,
        /// How many processes were left.
        remaining: usize,
    },
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The resource controllers worker groups get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Controllers {
    /// `pids`: process-count limit and fork refusal during kill.
    pub pids: bool,
    /// `memory`: memory limit.
    pub memory: bool,
}

impl Controllers {
    fn any(self) -> bool {
        self.pids || self.memory
    }

    fn and(self, other: Controllers) -> Controllers {
        Controllers {
            pids: self.pids && other.pids,
            memory: self.memory && other.memory,
        }
    }

    fn names(self) -> String {
        match (self.pids, self.memory) {
            (true, true) => "pids+memory",
            (true, false) => "pids",
            (false, true) => "memory",
            (false, false) => "none",
        }
        .to_string()
    }
}

/// Counters and gauges of one worker group; `None` where this kernel does not expose the value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Processes (and threads) in the group now, zombies included (`pids.current`).
    pub pids_current: Option<u64>,
    /// Forks refused because the group reached its `pids.max` (`pids.events` `max`).
    pub pids_limit_hits: Option<u64>,
    /// Memory charged to the group now (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub memory_current: Option<u64>,
    /// Highest memory charge (v2 `memory.peak`, 5.19+; v1 `memory.max_usage_in_bytes`).
    pub memory_peak: Option<u64>,
    /// Times usage hit the memory limit (v2 `memory.events` `max`; v1 `memory.failcnt`).
    pub memory_limit_hits: Option<u64>,
    /// Times the group ran out of memory (v2 `memory.events` `oom`; not counted by v1).
    pub oom_events: Option<u64>,
    /// Processes killed by the OOM killer in the group (v2 `memory.events` `oom_kill`; v1
    /// `memory.oom_control` `oom_kill`, 4.13+).
    pub oom_kills: Option<u64>,
}

impl GroupStats {
    /// Whether a fork was refused because of the process limit.
    pub fn pids_limit_hit(&self) -> bool {
        self.pids_limit_hits.is_some_and(|n| n > 0)
    }

    /// Whether the group hit its memory limit, ran out of memory, or had a process OOM-killed.
    pub fn memory_limit_hit(&self) -> bool {
        [self.memory_limit_hits, self.oom_events, self.oom_kills]
            .iter()
            .any(|v| v.is_some_and(|n| n > 0))
    }
}

/// The cgroup setup detected at broker start; cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// Which layout detection chose (for [`Cgroups::describe`]).
    layout: &'static str,
    /// The hierarchies worker groups are created in: one on v2, one per controller on v1; never
    /// empty, all of the same version.
    hierarchies: Vec<Arc<dyn Hierarchy>>,
}

impl Cgroups {
    /// Detect what this host offers (see the module documentation for the layouts).
    ///
    /// `Ok(None)`: nothing usable (or [`Mode::Off`]); the caller then uses rlimit fallbacks.
    /// `Err` only for a [`Mode::Path`] that cannot be used. The reasons why a layout was
    /// rejected are logged at info level; [`Cgroups::detect_with_notes`] returns them.
    #[cfg_attr(not(test), allow(dead_code))] // the broker uses `detect_with_notes`
    pub fn detect(mode: &Mode) -> Result<Option<Cgroups>, CgroupError> {
        let mut notes = Vec::new();
        let found = Self::detect_with_notes(mode, &mut notes);
        for note in &notes {
            tracing::info!("{note}");
        }
        found
    }

    /// [`Cgroups::detect`], appending to `notes` why each layout that was tried was rejected
    /// (for `mcpd doctor`).
    pub fn detect_with_notes(
        mode: &Mode,
        notes: &mut Vec<String>,
    ) -> Result<Option<Cgroups>, CgroupError> {
        match mode {
            Mode::Off => {
                notes.push("cgroups disabled by configuration".to_string());
                Ok(None)
            }
            Mode::Path(path) => v2::detect_path(path).map(Some),
            Mode::Auto => Ok(detect_auto(notes)),
        }
    }

    /// One line for logs and `mcpd doctor`, e.g.
    /// `cgroup v1 (pids: /sys/fs/cgroup/pids, memory: /sys/fs/cgroup/memory/x)`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .hierarchies
            .iter()
            .map(|h| format!("{}: {}", h.controllers().names(), h.base().display()))
            .collect();
        format!(
            "cgroup v{} {} ({})",
            self.version(),
            self.layout,
            parts.join(", ")
        )
    }

    /// The cgroup version in use: 1 or 2.
    pub fn version(&self) -> u8 {
        // Detection never makes a `Cgroups` without a hierarchy, nor one of mixed versions.
        self.hierarchies.first().map_or(0, |h| h.version())
    }

    /// The controllers worker groups get; a limit for a missing one makes [`Cgroups::create`]
    /// fail, so the caller applies the rlimit fallback for it instead.
    pub fn controllers(&self) -> Controllers {
        let mut c = Controllers::default();
        for h in &self.hierarchies {
            let hc = h.controllers();
            c.pids |= hc.pids;
            c.memory |= hc.memory;
        }
        c
    }

    /// Remove the groups a broker that died without cleaning up (SIGKILL, crash) left behind:
    /// `mcpd-<pid>-<n>` directories whose broker pid no longer exists. Their processes (if any
    /// survived) are killed first, exactly as at a session's end. Returns how many were removed.
    /// Bounded: at most `MAX_STALE` groups per call.
    pub fn reap_stale(&self) -> usize {
        const MAX_STALE: usize = 10_000;
        let own = std::process::id();
        let mut names = BTreeSet::new();
        for h in &self.hierarchies {
            for name in h.entry_names(MAX_STALE * 2) {
                let Some(pid) = name
                    .strip_prefix("mcpd-")
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(p, n)| n.parse::<u64>().ok().and(p.parse::<u32>().ok()))
                else {
                    continue;
                };
                if pid != own && !broker_alive(pid) && validate_name(&name).is_ok() {
                    names.insert(name);
                }
            }
        }
        let mut removed = 0;
        for name in names.into_iter().take(MAX_STALE) {
            let group = WorkerGroup {
                dirs: self
                    .hierarchies
                    .iter()
                    .filter(|h| h.base().join(&name).is_dir())
                    .map(|h| GroupDir {
                        hierarchy: Arc::clone(h),
                        path: h.base().join(&name),
                        rel: join_rel(h.base_rel(), &name),
                    })
                    .collect(),
                removed: false,
            };
            if group.remove().is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Create the group of one worker (in every hierarchy) and apply `limits`.
    ///
    /// `name` must be unique per broker and host (include the broker pid and a counter) and
    /// match `[A-Za-z0-9_.-]{1,64}`; an existing group of that name is an error, never adopted.
    /// On error, whatever was created is removed again.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<WorkerGroup, CgroupError> {
        validate_name(name)?;
        let available = self.controllers();
        if limits.max_processes.is_some() && !available.pids {
            return Err(CgroupError::MissingController("pids"));
        }
        if limits.memory_bytes.is_some() && !available.memory {
            return Err(CgroupError::MissingController("memory"));
        }
        let mut group = WorkerGroup {
            dirs: Vec::with_capacity(self.hierarchies.len()),
            removed: false,
        };
        for h in &self.hierarchies {
            let path = h.make_group(name)?;
            group.dirs.push(GroupDir {
                hierarchy: Arc::clone(h),
                path,
                rel: join_rel(h.base_rel(), name),
            });
        }
        // On error `group` is dropped here, which removes the directories made so far.
        group.apply(limits)?;
        Ok(group)
    }
}

/// [`Mode::Auto`]: a usable v2 subtree, else v1 hierarchies, else `None`; every rejection is
/// a note.
fn detect_auto(notes: &mut Vec<String>) -> Option<Cgroups> {
    let own = match read_bounded(Path::new("/proc/self/cgroup"), SMALL_FILE_MAX) {
        Ok(text) => parse_proc_cgroup(&text),
        Err(e) => {
            notes.push(format!("cannot read /proc/self/cgroup: {e}"));
            return None;
        }
    };
    let mounts = match read_bounded(Path::new("/proc/self/mountinfo"), MOUNTINFO_MAX) {
        Ok(text) => parse_mountinfo(&text),
        Err(e) => {
            notes.push(format!("cannot read /proc/self/mountinfo: {e}"));
            return None;
        }
    };
    match v2::detect(&own, &mounts, notes) {
        Ok(found) => return Some(found),
        Err(why) => notes.push(format!("cgroup v2 not usable: {why}")),
    }
    match v1::detect(&own, &mounts, notes) {
        Ok(found) => Some(found),
        Err(why) => {
            notes.push(format!("cgroup v1 not usable: {why}"));
            None
        }
    }
}

fn validate_name(name: &str) -> Result<(), CgroupError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use testutil::{host, must_not_skip, unique};

    #[test]
    fn rejects_bad_names_and_pids() {
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(65), "a\0b"] {
            assert!(
                matches!(validate_name(bad), Err(CgroupError::InvalidName(_))),
                "{bad:?}"
            );
        }
        validate_name("mcpd-1234-7_w.1").unwrap();
        assert!(Cgroups::detect(&Mode::Off).unwrap().is_none());
        assert!(matches!(
            Cgroups::detect(&Mode::Path("relative".into())),
            Err(CgroupError::Unusable { .. })
        ));
        assert!(matches!(
            Cgroups::detect(&Mode::Path("/tmp".into())),
            Err(CgroupError::Unusable { .. })
        ));
        let Some(cg) = host("rejects_bad_names_and_pids") else {
            return;
        };
        assert!(matches!(
            cg.create("../escape", &Limits::default()),
            Err(CgroupError::InvalidName(_))
        ));
        let g = cg.create(&unique("pid"), &Limits::default()).unwrap();
        assert!(matches!(g.add(0), Err(CgroupError::InvalidPid(0))));
        assert!(matches!(g.add(u32::MAX), Err(CgroupError::InvalidPid(_))));
        let paths: Vec<PathBuf> = g.paths().iter().map(|p| p.to_path_buf()).collect();
        drop(g);
        for p in paths {
            assert!(!p.exists(), "{} left behind by Drop", p.display());
        }
    }

    #[test]
    fn detects_pids_and_memory_here() {
        let Some(cg) = host("detects_pids_and_memory_here") else {
            return;
        };
        assert!(cg.version() == 1 || cg.version() == 2);
        if must_not_skip() {
            let c = cg.controllers();
            assert!(c.pids && c.memory, "{}", cg.describe());
        }
    }
}
