//! File-system primitives on cgroupfs and procfs, all bounded: reads capped in size (a longer
//! file is cut at its last complete line), single-`write` writes that refuse symlinks, the
//! walk of a group's sub-groups capped in depth and count, and `rmdir` retried for a bounded
//! time while the kernel reports a group busy.
//!
//! Knows nothing of cgroup versions, layouts or limits: the callers choose the files. Trusts
//! the kernel's cgroupfs and procfs to be what they are; trusts nothing *written into* them by
//! anyone else (a worker could fill its own group with sub-groups: the walk stops at
//! [`TREE_MAX_DIRS`]). May sleep (retries are bounded to a few seconds): call from a blocking
//! context.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use rustix::fs::{Access, AtFlags};

use super::{io_err, CgroupError};

/// Read limit for small cgroupfs and procfs files.
pub(super) const SMALL_FILE_MAX: u64 = 64 * 1024;
/// Read limit for `/proc/self/mountinfo`.
pub(super) const MOUNTINFO_MAX: u64 = 4 * 1024 * 1024;
/// Read limit for one `cgroup.procs` file (about 140 000 pids).
pub(super) const PROCS_MAX: u64 = 1024 * 1024;
/// Upper bound on the time spent retrying one `rmdir` that fails with `EBUSY`.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest sleep between two polls.
pub(super) const MAX_POLL_DELAY: Duration = Duration::from_millis(50);
/// Sub-groups below a worker group visited by kill and removal (depth, count).
const TREE_MAX_DEPTH: usize = 8;
const TREE_MAX_DIRS: usize = 1024;

/// Read at most `max` bytes; a longer file is cut at its last complete line.
pub(super) fn read_bounded(path: &Path, max: u64) -> io::Result<String> {
    let file = File::open(path)?;
    let mut buf = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if u64::try_from(buf.len()).map_or(true, |n| n > max) {
        let keep = buf.iter().rposition(|c| *c == b'\n').map_or(0, |i| i + 1);
        buf.truncate(keep);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

pub(super) fn read_u64(path: &Path) -> Option<u64> {
    read_bounded(path, SMALL_FILE_MAX).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` lines).
pub(super) fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = read_bounded(path, SMALL_FILE_MAX).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Write a cgroupfs file in a single `write` (the kernel parses each write on its own).
pub(super) fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let n = file.write(value.as_bytes())?;
    if n == value.len() {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::WriteZero, "short write"))
    }
}

/// `dir` and its sub-directories (parents before children), bounded in depth and count;
/// symlinks are not followed (cgroupfs has none).
pub(super) fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((path, depth)) = stack.pop() {
        out.push(path.clone());
        if depth >= TREE_MAX_DEPTH {
            continue;
        }
        let Ok(entries) = fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            if out.len() + stack.len() >= TREE_MAX_DIRS {
                break;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    out
}

/// `rmdir`, retried while the kernel reports the group busy (exiting processes), bounded.
pub(super) fn rmdir_retry(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + RMDIR_TIMEOUT;
    let mut delay = Duration::from_millis(1);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                sleep(delay);
                delay = (delay * 2).min(MAX_POLL_DELAY);
            }
            Err(e) => return Err(io_err("rmdir", dir, e)),
        }
    }
}

/// The group directory and its `cgroup.procs` are writable with the effective ids (read-only
/// mounts fail here too).
pub(super) fn writable_group(dir: &Path) -> Result<(), String> {
    for p in [dir.to_path_buf(), dir.join("cgroup.procs")] {
        rustix::fs::accessat(rustix::fs::CWD, &p, Access::WRITE_OK, AtFlags::EACCESS)
            .map_err(|e| format!("{} not writable: {e}", p.display()))?;
    }
    Ok(())
}

/// Whether the group's `cgroup.procs` lists no process.
pub(super) fn procs_empty(dir: &Path) -> Result<bool, String> {
    let file = dir.join("cgroup.procs");
    read_bounded(&file, PROCS_MAX)
        .map(|t| t.trim().is_empty())
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
}
