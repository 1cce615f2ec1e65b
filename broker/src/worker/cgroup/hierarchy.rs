//! The one interface both cgroup versions implement: [`Hierarchy`], a cgroup hierarchy worker
//! groups are created in, and what can be done to one worker's directory in it (make it, set
//! its limits, add a process, stop its forks, kill or freeze it, read its counters, remove it).
//! A v2 host has one such hierarchy (`v2.rs`); a v1 host one per controller (`v1.rs`).
//! [`super::Cgroups`] and [`super::WorkerGroup`] only ever go through this trait.
//!
//! What is the same on both versions (`cgroup.procs`, `pids.*`, `mkdir`/`rmdir`) is written
//! once here as provided methods; an implementation supplies only what differs: which line of
//! `/proc/<pid>/cgroup` is its own, the memory files, and the version's way to stop a whole
//! group at once. Killing process by process is *not* here: the kill loop spans every hierarchy
//! of a group (`group.rs`).
//!
//! Trusts the kernel's cgroupfs, not what the worker may have written into its own group (its
//! sub-groups are walked with bounds). Blocking I/O: call from a blocking context.
#![forbid(unsafe_code)]

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::files::{read_keyed, read_u64, rmdir_retry, subtree, write_file};
use super::parse::ProcCgroup;
use super::{io_err, CgroupError, Controllers, GroupStats, Limits};

/// One cgroup hierarchy worker groups are created in, cgroup v1 or v2.
///
/// `dir` arguments are a worker group's directory in this hierarchy (below [`Hierarchy::base`]).
pub(super) trait Hierarchy: fmt::Debug + Send + Sync {
    /// The cgroup version of this hierarchy: 1 or 2.
    fn version(&self) -> u8;

    /// Directory the worker groups are created in.
    fn base(&self) -> &Path;

    /// [`Hierarchy::base`] as a cgroup path, as `/proc/<pid>/cgroup` shows it to the broker.
    fn base_rel(&self) -> &str;

    /// The controllers worker groups get in this hierarchy.
    fn controllers(&self) -> Controllers;

    /// Whether this line of `/proc/<pid>/cgroup` describes this hierarchy.
    fn is_own_line(&self, line: &ProcCgroup) -> bool;

    /// Write the memory limit of a group (called only when the hierarchy carries `memory`).
    fn set_memory_limit(&self, dir: &Path, bytes: u64) -> Result<(), CgroupError>;

    /// Read a group's memory counters into `stats` (called only when the hierarchy carries
    /// `memory`).
    fn read_memory_stats(&self, dir: &Path, stats: &mut GroupStats);

    /// Before the kill loop: end every process of the group at once where the version can
    /// (v2 `cgroup.kill`; `use_kill_file: false` skips it, for tests), else freeze the group
    /// so nothing forks while it is killed process by process. Returns whether the group is
    /// now frozen: [`Hierarchy::thaw`] must then follow the kill loop.
    fn kill_or_freeze(&self, dir: &Path, use_kill_file: bool) -> bool;

    /// Undo the freeze of [`Hierarchy::kill_or_freeze`].
    fn thaw(&self, dir: &Path);

    // -----------------------------------------------------------------------------------------
    // Provided: the same on v1 and v2.

    /// Make the directory of group `name` (an already validated name); an existing one is an
    /// error, never adopted.
    fn make_group(&self, name: &str) -> Result<PathBuf, CgroupError> {
        let path = self.base().join(name);
        fs::create_dir(&path).map_err(|e| io_err("mkdir", &path, e))?;
        Ok(path)
    }

    /// Write the limits of the controllers this hierarchy carries (`pids.max`, then memory).
    fn set_limits(&self, dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
        let controllers = self.controllers();
        if let (true, Some(n)) = (controllers.pids, limits.max_processes) {
            let file = dir.join("pids.max");
            write_file(&file, &n.to_string()).map_err(|e| io_err("write", &file, e))?;
        }
        if let (true, Some(bytes)) = (controllers.memory, limits.memory_bytes) {
            self.set_memory_limit(dir, bytes)?;
        }
        Ok(())
    }

    /// Move a process (all its threads) into the group (`cgroup.procs`); `pid` is validated
    /// by the caller.
    fn add_process(&self, dir: &Path, pid: u32) -> Result<(), CgroupError> {
        let file = dir.join("cgroup.procs");
        write_file(&file, &pid.to_string()).map_err(|e| io_err("write cgroup.procs", &file, e))
    }

    /// Make the group refuse new processes (`pids.max` 0) where this hierarchy carries `pids`;
    /// a failure is logged, the kill goes on.
    fn stop_forks(&self, dir: &Path) {
        if !self.controllers().pids {
            return;
        }
        let file = dir.join("pids.max");
        if let Err(e) = write_file(&file, "0") {
            tracing::warn!(path = %file.display(), "cannot stop forks before kill: {e}");
        }
    }

    /// Read the counters of the controllers this hierarchy carries into `stats`.
    fn read_stats(&self, dir: &Path, stats: &mut GroupStats) {
        let controllers = self.controllers();
        if controllers.pids {
            stats.pids_current = read_u64(&dir.join("pids.current"));
            stats.pids_limit_hits = read_keyed(&dir.join("pids.events"), "max");
        }
        if controllers.memory {
            self.read_memory_stats(dir, stats);
        }
    }

    /// Remove the group's directory, sub-groups first, retrying briefly while the kernel
    /// reports them busy. Every failure is logged; the first is returned, and the directories
    /// that could be removed are removed regardless.
    fn remove_group(&self, dir: &Path) -> Result<(), CgroupError> {
        let mut first_err = None;
        for d in subtree(dir).iter().rev() {
            if let Err(e) = rmdir_retry(d) {
                tracing::warn!("{e}");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// The names (UTF-8 only) among the first `max` entries of [`Hierarchy::base`], for finding
    /// the groups of dead brokers; empty when it cannot be read.
    fn entry_names(&self, max: usize) -> Vec<String> {
        let Ok(rd) = fs::read_dir(self.base()) else {
            return Vec::new();
        };
        rd.flatten()
            .take(max)
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect()
    }
}
