//! cgroup v1 (hybrid hosts): one hierarchy per controller. Worker groups are
//! `<the broker's own group in the pids hierarchy>/<name>` and the same in the memory
//! hierarchy (one directory when both are mounted together). This file finds those hierarchies
//! and implements [`Hierarchy`] for them: which `/proc/<pid>/cgroup` line is theirs, and the
//! v1 memory files (`memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`, `memory.failcnt`,
//! `memory.oom_control`).
//!
//! Does not freeze and has no `cgroup.kill`: a v1 group is emptied by the common kill loop alone
//! (`group.rs`), after `pids.max` 0 stopped its forks. Trusts the kernel's `/proc/self/cgroup`
//! and `/proc/self/mountinfo` for where the broker's own groups are; creates nothing here (a
//! group is created only by [`super::Cgroups::create`]).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::files::{read_keyed, read_u64, writable_group, write_file};
use super::hierarchy::Hierarchy;
use super::parse::{controller_listed, dir_in_mount, Mount, ProcCgroup};
use super::{io_err, CgroupError, Cgroups, Controllers, GroupStats};

/// One v1 hierarchy (pids, memory, or both co-mounted) worker groups are created in.
#[derive(Debug, Clone)]
pub(super) struct V1 {
    /// The controller field of this hierarchy's line in `/proc/<pid>/cgroup`, exactly (e.g.
    /// `pids`, `memory`, `cpu,cpuacct`).
    proc_controllers: String,
    base: PathBuf,
    base_rel: String,
    controllers: Controllers,
}

impl Hierarchy for V1 {
    fn version(&self) -> u8 {
        1
    }

    fn base(&self) -> &Path {
        &self.base
    }

    fn base_rel(&self) -> &str {
        &self.base_rel
    }

    fn controllers(&self) -> Controllers {
        self.controllers
    }

    fn is_own_line(&self, line: &ProcCgroup) -> bool {
        line.hierarchy_id != "0" && line.controllers == self.proc_controllers
    }

    fn set_memory_limit(&self, dir: &Path, bytes: u64) -> Result<(), CgroupError> {
        let value = bytes.to_string();
        // memory.limit_in_bytes first: memsw must never be below it.
        let file = dir.join("memory.limit_in_bytes");
        write_file(&file, &value).map_err(|e| io_err("write", &file, e))?;
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            if let Err(e) = write_file(&memsw, &value) {
                tracing::debug!(path = %memsw.display(), "swap limit not applied: {e}");
            }
        }
        Ok(())
    }

    fn read_memory_stats(&self, dir: &Path, s: &mut GroupStats) {
        s.memory_current = read_u64(&dir.join("memory.usage_in_bytes"));
        s.memory_peak = read_u64(&dir.join("memory.max_usage_in_bytes"));
        s.memory_limit_hits = read_u64(&dir.join("memory.failcnt"));
        s.oom_kills = read_keyed(&dir.join("memory.oom_control"), "oom_kill");
    }

    /// v1 has no `cgroup.kill`, and its freezer hierarchy is not used: nothing to do.
    fn kill_or_freeze(&self, _dir: &Path, _use_kill_file: bool) -> bool {
        false
    }

    /// Never frozen (see [`V1::kill_or_freeze`]).
    fn thaw(&self, _dir: &Path) {}
}

/// The broker's own groups in writable v1 pids and memory hierarchies, as `own`
/// (`/proc/self/cgroup`) and `mounts` (`/proc/self/mountinfo`) show them. Each controller not
/// found or not writable adds a note; `Err` when neither is usable.
pub(super) fn detect(
    own: &[ProcCgroup],
    mounts: &[Mount],
    notes: &mut Vec<String>,
) -> Result<Cgroups, String> {
    let mut hierarchies: Vec<V1> = Vec::new();
    for ctl in ["pids", "memory"] {
        let Some(line) = own
            .iter()
            .find(|l| l.hierarchy_id != "0" && controller_listed(&l.controllers, ctl))
        else {
            notes.push(format!(
                "cgroup v1: no {ctl} hierarchy in /proc/self/cgroup"
            ));
            continue;
        };
        let Some(dir) = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup" && controller_listed(&m.super_opts, ctl))
            .find_map(|m| dir_in_mount(m, &line.path).filter(|d| d.is_dir()))
        else {
            notes.push(format!(
                "cgroup v1: no mounted {ctl} hierarchy contains {}",
                line.path
            ));
            continue;
        };
        if let Err(why) = writable_group(&dir) {
            notes.push(format!("cgroup v1 {ctl}: {why}"));
            continue;
        }
        let is_pids = ctl == "pids";
        if let Some(h) = hierarchies.iter_mut().find(|h| h.base == dir) {
            h.controllers.pids |= is_pids;
            h.controllers.memory |= !is_pids;
        } else {
            hierarchies.push(V1 {
                proc_controllers: line.controllers.clone(),
                base: dir,
                base_rel: line.path.clone(),
                controllers: Controllers {
                    pids: is_pids,
                    memory: !is_pids,
                },
            });
        }
    }
    if hierarchies.is_empty() {
        return Err("no writable pids or memory hierarchy".to_string());
    }
    Ok(Cgroups {
        layout: "own groups",
        hierarchies: hierarchies
            .into_iter()
            .map(|h| Arc::new(h) as Arc<dyn Hierarchy>)
            .collect(),
    })
}
