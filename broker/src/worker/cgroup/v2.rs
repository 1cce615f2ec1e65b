//! cgroup v2, the unified hierarchy: finding a subtree the broker may create worker groups in
//! (the delegated parent of its own cgroup, its own cgroup's `mcpd-workers` child, or a
//! directory the operator configured), enabling `pids` and `memory` for the groups
//! (`cgroup.subtree_control`), and the v2 side of [`Hierarchy`]: `memory.max` with
//! `memory.swap.max` 0, `memory.events`, and ending a group at once with `cgroup.kill` (5.14+)
//! or, without it, `cgroup.freeze` while the common kill loop (`group.rs`) runs.
//!
//! Moves no process but the broker itself, and that only into the constant leaf `broker` of
//! a cgroup delegated to it that holds nothing else (systemd `Delegate=yes` before
//! `DelegateSubgroup=` existed); creates no directory but that leaf and `mcpd-workers`. Trusts the kernel (`/proc/self/cgroup`,
//! `/proc/self/mountinfo`, `statfs`) and the operator's configuration for where the subtree
//! is; does not trust a directory merely because it is writable: as root only systemd's
//! delegate attribute counts as delegation (see [`is_delegated`]).
#![forbid(unsafe_code)]

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::files::{
    procs_empty, read_bounded, read_keyed, read_u64, writable_group, write_file, MAX_POLL_DELAY,
    MOUNTINFO_MAX, SMALL_FILE_MAX,
};
use super::hierarchy::Hierarchy;
use super::parse::{dir_in_mount, join_rel, parent_rel, parse_mountinfo, Mount, ProcCgroup};
use super::{io_err, CgroupError, Cgroups, Controllers, GroupStats};

/// `statfs` magic of cgroup2 file systems (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_SUPER_MAGIC: i128 = 0x6367_7270;
/// Child of the broker's own v2 cgroup used by the fallback layout.
const WORKERS_DIR: &str = "mcpd-workers";
/// Upper bound on the wait for a v2 group to report `frozen 1`.
const FREEZE_TIMEOUT: Duration = Duration::from_millis(500);

/// The v2 subtree worker groups are created in.
#[derive(Debug, Clone)]
pub(super) struct V2 {
    base: PathBuf,
    base_rel: String,
    controllers: Controllers,
}

impl V2 {
    /// The [`Cgroups`] of one v2 subtree: `base`, which `/proc/<pid>/cgroup` shows as
    /// `base_rel`, with `controllers` enabled for its children.
    pub(super) fn cgroups(
        layout: &'static str,
        base: PathBuf,
        base_rel: String,
        controllers: Controllers,
    ) -> Cgroups {
        Cgroups {
            layout,
            hierarchies: vec![Arc::new(V2 {
                base,
                base_rel,
                controllers,
            })],
        }
    }
}

impl Hierarchy for V2 {
    fn version(&self) -> u8 {
        2
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
        line.hierarchy_id == "0" && line.controllers.is_empty()
    }

    fn set_memory_limit(&self, dir: &Path, bytes: u64) -> Result<(), CgroupError> {
        let file = dir.join("memory.max");
        write_file(&file, &bytes.to_string()).map_err(|e| io_err("write", &file, e))?;
        // Without this the limit only bounds RAM and the group spills into swap.
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            write_file(&swap, "0").map_err(|e| io_err("write", &swap, e))?;
        }
        Ok(())
    }

    fn read_memory_stats(&self, dir: &Path, s: &mut GroupStats) {
        let events = dir.join("memory.events");
        s.memory_current = read_u64(&dir.join("memory.current"));
        s.memory_peak = read_u64(&dir.join("memory.peak"));
        s.memory_limit_hits = read_keyed(&events, "max");
        s.oom_events = read_keyed(&events, "oom");
        s.oom_kills = read_keyed(&events, "oom_kill");
    }

    fn kill_or_freeze(&self, dir: &Path, use_kill_file: bool) -> bool {
        let kill_file = dir.join("cgroup.kill");
        if use_kill_file && kill_file.exists() {
            match write_file(&kill_file, "1") {
                Ok(()) => return false,
                Err(e) => {
                    tracing::warn!(path = %kill_file.display(), "cgroup.kill failed: {e}")
                }
            }
        }
        freeze(dir)
    }

    fn thaw(&self, dir: &Path) {
        let file = dir.join("cgroup.freeze");
        if let Err(e) = write_file(&file, "0") {
            tracing::warn!(path = %file.display(), "cannot thaw: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Detection

/// The v2 subtree for [`super::Mode::Auto`]: the delegated parent of the broker's own cgroup,
/// else its own cgroup's `mcpd-workers` child (see the layouts in `mod.rs`). Rejected layouts
/// add a note; `Err` says why v2 is not usable at all.
pub(super) fn detect(
    own: &[ProcCgroup],
    mounts: &[Mount],
    notes: &mut Vec<String>,
) -> Result<Cgroups, String> {
    let path = &own
        .iter()
        .find(|l| l.hierarchy_id == "0" && l.controllers.is_empty())
        .ok_or("no 0:: line in /proc/self/cgroup")?
        .path;
    let (mount, own_dir) = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .find_map(|m| dir_in_mount(m, path).filter(|d| d.is_dir()).map(|d| (m, d)))
        .ok_or_else(|| format!("no mounted cgroup2 file system contains {path}"))?;
    let wanted = read_controllers(&own_dir.join("cgroup.controllers"));
    if !wanted.any() {
        return Err(format!(
            "neither pids nor memory is available in {} (hybrid host, or not delegated)",
            own_dir.display()
        ));
    }

    // Layout 0 (systemd < 254: `Delegate=yes` without `DelegateSubgroup=`): our own cgroup is
    // delegated to us and holds this process alone; move it into a `broker` leaf, which makes
    // the delegated cgroup a parent without processes (layout 1 below).
    let (own_dir, path) = match move_into_leaf(&own_dir, path, mount, notes) {
        Some(moved) => moved,
        None => (own_dir, path.clone()),
    };
    let path = &path;

    // Layout 1: the parent is delegated to us and holds no processes (DelegateSubgroup=).
    if own_dir != mount.mount_point {
        if let (Some(parent), Some(parent_rel)) = (own_dir.parent(), parent_rel(path)) {
            match use_delegated_parent(parent) {
                Ok(enabled) => {
                    return Ok(V2::cgroups(
                        "delegated parent",
                        parent.to_path_buf(),
                        parent_rel,
                        enabled,
                    ))
                }
                Err(why) => notes.push(format!(
                    "cgroup v2: parent {} not usable: {why}",
                    parent.display()
                )),
            }
        }
    }

    // Layout 2: <own>/mcpd-workers, only if controllers can be enabled below our own cgroup.
    writable_group(&own_dir)?;
    let enabled = enable_controllers(&own_dir, wanted);
    if !enabled.any() {
        return Err(format!(
            "cannot enable pids/memory for the children of {} (it holds the broker's \
             processes; run the broker with systemd DelegateSubgroup=, see docs/cgroups.md)",
            own_dir.display()
        ));
    }
    let workers = own_dir.join(WORKERS_DIR);
    match fs::create_dir(&workers) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("mkdir {}: {e}", workers.display())),
    }
    if !fs::symlink_metadata(&workers).is_ok_and(|m| m.is_dir()) {
        return Err(format!("{} is not a directory", workers.display()));
    }
    let enabled = enable_controllers(&workers, enabled);
    if !enabled.any() {
        return Err(format!(
            "cannot enable pids/memory in {}",
            workers.display()
        ));
    }
    Ok(V2::cgroups(
        "own cgroup's mcpd-workers child",
        workers,
        join_rel(path, WORKERS_DIR),
        enabled,
    ))
}

/// The leaf the broker moves itself into when its own cgroup is delegated to it (layout 0).
const LEAF_DIR: &str = "broker";

/// Layout 0: when the broker's own v2 cgroup is delegated to it (the systemd attribute, or
/// owned by the non-root broker) and holds this process and nothing else, create `broker`
/// below it and move this process there (writing our pid to its `cgroup.procs` moves every
/// thread). Returns the new own directory and cgroup path; `None` (with a note when it was
/// tried) leaves everything as it was. Any other process in the cgroup, a directory that is
/// not delegated, or the cgroup root: nothing is moved.
fn move_into_leaf(
    own_dir: &Path,
    path: &str,
    mount: &Mount,
    notes: &mut Vec<String>,
) -> Option<(PathBuf, String)> {
    if own_dir == mount.mount_point || !is_delegated(own_dir) {
        return None;
    }
    let me = std::process::id().to_string();
    let procs = match read_bounded(&own_dir.join("cgroup.procs"), SMALL_FILE_MAX) {
        Ok(t) => t,
        Err(e) => {
            notes.push(format!(
                "cgroup v2: {}: cgroup.procs: {e}",
                own_dir.display()
            ));
            return None;
        }
    };
    let pids: Vec<&str> = procs.split_whitespace().collect();
    if pids != [me.as_str()] {
        notes.push(format!(
            "cgroup v2: {} is delegated but holds {} process(es) besides the broker: not moving into a leaf",
            own_dir.display(),
            pids.iter().filter(|p| **p != me).count()
        ));
        return None;
    }
    let leaf = own_dir.join(LEAF_DIR);
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            notes.push(format!("cgroup v2: mkdir {}: {e}", leaf.display()));
            return None;
        }
    }
    if !fs::symlink_metadata(&leaf).is_ok_and(|m| m.is_dir()) {
        notes.push(format!("cgroup v2: {} is not a directory", leaf.display()));
        return None;
    }
    if let Err(e) = write_file(&leaf.join("cgroup.procs"), &me) {
        notes.push(format!(
            "cgroup v2: moving the broker into {}: {e}",
            leaf.display()
        ));
        return None;
    }
    tracing::info!(
        "cgroup v2: moved the broker into {} (its delegated cgroup now holds only groups)",
        leaf.display()
    );
    Some((leaf, join_rel(path, LEAF_DIR)))
}

/// Use the parent of the broker's v2 cgroup if it is delegated to the broker, holds no
/// processes, and offers pids or memory; returns the controllers enabled for its children.
fn use_delegated_parent(parent: &Path) -> Result<Controllers, String> {
    writable_group(parent)?;
    if !is_delegated(parent) {
        return Err(
            "not delegated to this broker (no systemd delegate xattr, and not owned by \
                    the broker's non-root user)"
                .to_string(),
        );
    }
    if !procs_empty(parent)? {
        return Err("it holds processes".to_string());
    }
    let enabled = enable_controllers(parent, read_controllers(&parent.join("cgroup.controllers")));
    if enabled.any() {
        Ok(enabled)
    } else {
        Err("cannot enable pids or memory in its cgroup.subtree_control".to_string())
    }
}

/// Evidence that a v2 cgroup was delegated to this process: systemd's `trusted.delegate` /
/// `user.delegate` extended attribute (systemd 251+/252+), or, for a non-root broker, the
/// directory and its `cgroup.procs` being owned by the broker's user (delegation `chown`s them).
/// For root, write access proves nothing, so only the attribute counts.
fn is_delegated(dir: &Path) -> bool {
    for name in ["trusted.delegate", "user.delegate"] {
        let mut buf = [0u8; 8];
        if let Ok(n) = rustix::fs::getxattr(dir, name, &mut buf[..]) {
            if buf.get(..n) == Some(b"1".as_slice()) {
                return true;
            }
        }
    }
    let euid = rustix::process::geteuid();
    if euid.is_root() {
        return false;
    }
    let owned = |p: &Path| fs::metadata(p).is_ok_and(|m| m.uid() == euid.as_raw());
    owned(dir) && owned(&dir.join("cgroup.procs"))
}

/// The operator's directory of [`super::Mode::Path`]: absolute, canonical, on cgroup2, writable,
/// empty of processes, and with pids or memory enabled for its children; every other case is
/// [`CgroupError::Unusable`], never a fallback.
pub(super) fn detect_path(path: &Path) -> Result<Cgroups, CgroupError> {
    let unusable = |reason: String| CgroupError::Unusable {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_absolute() {
        return Err(unusable("must be an absolute path".to_string()));
    }
    let canonical = fs::canonicalize(path).map_err(|e| unusable(e.to_string()))?;
    if canonical != path {
        return Err(unusable(format!(
            "must be canonical, without symlinks, '.' or '..' (it resolves to {})",
            canonical.display()
        )));
    }
    let st = rustix::fs::statfs(path).map_err(|e| unusable(format!("statfs: {e}")))?;
    if i128::from(st.f_type) != CGROUP2_SUPER_MAGIC {
        return Err(unusable("not a cgroup v2 directory".to_string()));
    }
    let mounts = read_bounded(Path::new("/proc/self/mountinfo"), MOUNTINFO_MAX)
        .map(|t| parse_mountinfo(&t))
        .map_err(|e| unusable(format!("cannot read /proc/self/mountinfo: {e}")))?;
    let base_rel = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .filter_map(|m| Some((m, path.strip_prefix(&m.mount_point).ok()?)))
        .max_by_key(|(m, _)| m.mount_point.as_os_str().len())
        .and_then(|(m, rest)| {
            let mut rel = m.root.clone();
            for comp in rest.components() {
                rel = join_rel(&rel, comp.as_os_str().to_str()?);
            }
            Some(rel)
        })
        .ok_or_else(|| unusable("not below a mounted cgroup2 file system".to_string()))?;
    writable_group(path).map_err(unusable)?;
    if !procs_empty(path).map_err(unusable)? {
        return Err(unusable(
            "holds processes; v2 allows controllers for its children only when it is empty \
             (use the unit's cgroup with DelegateSubgroup=)"
                .to_string(),
        ));
    }
    let available = read_controllers(&path.join("cgroup.controllers"));
    if !available.any() {
        return Err(unusable(
            "neither pids nor memory in cgroup.controllers (not delegated?)".to_string(),
        ));
    }
    let enabled = enable_controllers(path, available);
    if !enabled.any() {
        return Err(unusable(
            "cannot enable pids or memory in cgroup.subtree_control".to_string(),
        ));
    }
    Ok(V2::cgroups(
        "configured directory",
        path.to_path_buf(),
        base_rel,
        enabled,
    ))
}

/// pids and memory as listed in a v2 `cgroup.controllers` or `cgroup.subtree_control`.
fn read_controllers(file: &Path) -> Controllers {
    let text = read_bounded(file, SMALL_FILE_MAX).unwrap_or_default();
    let mut c = Controllers::default();
    for word in text.split_whitespace() {
        match word {
            "pids" => c.pids = true,
            "memory" => c.memory = true,
            _ => {}
        }
    }
    c
}

/// Enable `wanted` for the children of the v2 group `dir`; returns what is enabled afterwards.
fn enable_controllers(dir: &Path, wanted: Controllers) -> Controllers {
    let file = dir.join("cgroup.subtree_control");
    let present = read_controllers(&file);
    for (want, have, name) in [
        (wanted.pids, present.pids, "+pids"),
        (wanted.memory, present.memory, "+memory"),
    ] {
        if want && !have {
            if let Err(e) = write_file(&file, name) {
                tracing::debug!(path = %file.display(), "{name}: {e}");
            }
        }
    }
    read_controllers(&file).and(wanted)
}

/// Freeze a v2 group and wait (bounded) until the kernel reports it frozen.
fn freeze(dir: &Path) -> bool {
    let file = dir.join("cgroup.freeze");
    if !file.exists() {
        return false;
    }
    if let Err(e) = write_file(&file, "1") {
        tracing::warn!(path = %file.display(), "cannot freeze: {e}");
        return false;
    }
    let events = dir.join("cgroup.events");
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    let mut delay = Duration::from_millis(1);
    while read_keyed(&events, "frozen") != Some(1) && Instant::now() < deadline {
        sleep(delay);
        delay = (delay * 2).min(MAX_POLL_DELAY);
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::worker::cgroup::parse::parse_proc_cgroup;
    use crate::worker::cgroup::testutil::{assert_gone, must_not_skip_v2, start_daemon_in, unique};
    use crate::worker::cgroup::{Limits, Mode};

    /// Layout 0's decision on a stand-in tree (this host's v2 hierarchy has no pids/memory, so
    /// the real migration is not reachable here): nothing moves unless the cgroup is
    /// delegated and holds this process alone; then the pid goes to `broker/cgroup.procs`.
    #[test]
    fn the_broker_moves_into_a_leaf_only_of_a_delegated_cgroup_it_alone_occupies() {
        let root = tempfile::tempdir().unwrap();
        let mount = Mount {
            root: "/".into(),
            mount_point: root.path().to_path_buf(),
            fstype: "cgroup2".into(),
            super_opts: String::new(),
        };
        let own = root.path().join("mcpd.service");
        fs::create_dir(&own).unwrap();
        let me = std::process::id().to_string();
        fs::write(own.join("cgroup.procs"), format!("{me}\n")).unwrap();
        let mut notes = Vec::new();
        // Not delegated (root broker, no attribute): untouched.
        if rustix::process::geteuid().is_root() {
            assert!(move_into_leaf(&own, "/mcpd.service", &mount, &mut notes).is_none());
            assert!(!own.join(LEAF_DIR).exists());
        }
        // Delegated: systemd's attribute (root may set trusted.*; others get ownership).
        let delegated = rustix::fs::setxattr(
            &own,
            "trusted.delegate",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .is_ok()
            || !rustix::process::geteuid().is_root();
        assert!(delegated, "cannot mark the stand-in cgroup delegated");
        // Another process in it: untouched, and said why.
        fs::write(own.join("cgroup.procs"), format!("{me}\n1\n")).unwrap();
        assert!(move_into_leaf(&own, "/mcpd.service", &mount, &mut notes).is_none());
        assert!(
            notes
                .last()
                .unwrap()
                .contains("holds 1 process(es) besides"),
            "{notes:?}"
        );
        assert!(!own.join(LEAF_DIR).exists());
        // Alone in it: the leaf is made and our pid written to its cgroup.procs (the kernel's
        // file exists in a real leaf; the stand-in needs it created).
        fs::write(own.join("cgroup.procs"), format!("{me}\n")).unwrap();
        fs::create_dir(own.join(LEAF_DIR)).unwrap();
        fs::write(own.join(LEAF_DIR).join("cgroup.procs"), "").unwrap();
        let (dir, rel) = move_into_leaf(&own, "/mcpd.service", &mount, &mut notes).unwrap();
        assert_eq!(dir, own.join(LEAF_DIR));
        assert_eq!(rel, "/mcpd.service/broker");
        assert_eq!(fs::read_to_string(dir.join("cgroup.procs")).unwrap(), me);
        // The cgroup root itself: never.
        assert!(move_into_leaf(root.path(), "/", &mount, &mut notes).is_none());
    }

    /// The broker's own v2 cgroup directory and path, when writable.
    fn own_v2_dir() -> Option<(PathBuf, String)> {
        let own =
            parse_proc_cgroup(&read_bounded(Path::new("/proc/self/cgroup"), SMALL_FILE_MAX).ok()?);
        let path = own
            .iter()
            .find(|l| l.hierarchy_id == "0" && l.controllers.is_empty())?
            .path
            .clone();
        let text = read_bounded(Path::new("/proc/self/mountinfo"), MOUNTINFO_MAX).ok()?;
        let dir = parse_mountinfo(&text)
            .iter()
            .filter(|m| m.fstype == "cgroup2")
            .find_map(|m| dir_in_mount(m, &path).filter(|d| d.is_dir()))?;
        writable_group(&dir).ok()?;
        Some((dir, path))
    }

    /// The v2 kill paths (`cgroup.kill`, and the `cgroup.freeze` fallback) need no controller,
    /// so they are exercised below the broker's own v2 cgroup even on this hybrid host, where
    /// Auto detection picks v1.
    #[test]
    fn v2_kill_and_freeze_reach_a_daemon() {
        let Some((dir, rel)) = own_v2_dir() else {
            assert!(
                !must_not_skip_v2(),
                "a writable cgroup2 hierarchy is mounted, but not for this process"
            );
            eprintln!("\n!!!!!!!! SKIP v2_kill_and_freeze_reach_a_daemon: no writable cgroup2 directory !!!!!!!!\n");
            return;
        };
        let cg = V2::cgroups("core only (test)", dir, rel, Controllers::default());
        // A limit needs a controller this layout does not have.
        assert!(matches!(
            cg.create(
                &unique("v2nolimit"),
                &Limits {
                    max_processes: Some(1),
                    memory_bytes: None
                }
            ),
            Err(CgroupError::MissingController("pids"))
        ));
        for use_kill_file in [true, false] {
            eprintln!(
                "cgroup test exercised: {} via {}",
                cg.describe(),
                if use_kill_file {
                    "cgroup.kill"
                } else {
                    "cgroup.freeze + SIGKILL loop"
                }
            );
            let g = cg.create(&unique("v2"), &Limits::default()).unwrap();
            let (daemon, start) = start_daemon_in(&g);
            g.kill_all_with(use_kill_file).unwrap();
            assert_gone(daemon, start);
            let paths: Vec<PathBuf> = g.paths().iter().map(|p| p.to_path_buf()).collect();
            g.remove().unwrap();
            for p in paths {
                assert!(!p.exists(), "{} left behind", p.display());
            }
        }
    }

    /// A configured directory without pids/memory (this hybrid host's cgroup2) is an error.
    #[test]
    fn configured_path_without_controllers_is_rejected() {
        let Some((dir, _)) = own_v2_dir() else {
            eprintln!("SKIP configured_path_without_controllers_is_rejected: no writable cgroup2");
            return;
        };
        if read_controllers(&dir.join("cgroup.controllers")).any() {
            eprintln!("SKIP configured_path_without_controllers_is_rejected: v2 has controllers");
            return;
        }
        let name = unique("cfg");
        let probe = dir.join(&name);
        fs::create_dir(&probe).unwrap();
        let result = Cgroups::detect(&Mode::Path(probe.clone()));
        fs::remove_dir(&probe).unwrap();
        match result {
            Err(CgroupError::Unusable { reason, .. }) => {
                eprintln!("configured path rejected as expected: {reason}");
                assert!(reason.contains("neither pids nor memory"), "{reason}");
            }
            other => panic!("expected Unusable, got {other:?}"),
        }
    }
}
