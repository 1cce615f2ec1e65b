//! Parsing what the kernel tells the broker about cgroups: the lines of `/proc/<pid>/cgroup`,
//! the cgroup mounts of `/proc/self/mountinfo` (with its `\ooo` escapes), and the arithmetic of
//! cgroup paths (joining, parent, "is below", where a cgroup path lies in a mount).
//!
//! Pure functions over text: no I/O, no cgroupfs writes, no policy. Trusts the kernel's procfs
//! for the *format* of these files, not for sane content: a cgroup path with `.` or `..`
//! components (shown for cgroups outside our namespace) or outside a mount's root maps to no
//! directory at all rather than to one outside the mount.
#![forbid(unsafe_code)]

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProcCgroup {
    pub(super) hierarchy_id: String,
    pub(super) controllers: String,
    pub(super) path: String,
}

pub(super) fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let hierarchy_id = it.next()?.to_string();
            let controllers = it.next()?.to_string();
            let path = it.next()?.to_string();
            Some(ProcCgroup {
                hierarchy_id,
                controllers,
                path,
            })
        })
        .collect()
}

/// One line of `/proc/self/mountinfo` (the fields used here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    /// The mount's root within its file system (for cgroups: a cgroup path).
    pub(super) root: String,
    pub(super) mount_point: PathBuf,
    pub(super) fstype: String,
    pub(super) super_opts: String,
}

pub(super) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            // id parent maj:min root mount-point options [optional...] - fstype source super-opts
            let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
            Some(Mount {
                root: String::from_utf8_lossy(&unescape_octal(fields.get(3)?)).into_owned(),
                mount_point: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_octal(
                    fields.get(4)?,
                ))),
                fstype: (*fields.get(sep + 1)?).to_string(),
                super_opts: (*fields.get(sep + 3)?).to_string(),
            })
        })
        .collect()
}

/// Undo mountinfo's `\ooo` escapes (space, tab, newline, backslash).
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b
            .get(i + 1..i + 4)
            .filter(|d| b.get(i) == Some(&b'\\') && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match digits {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                if let Some(c) = b.get(i) {
                    out.push(*c);
                }
                i += 1;
            }
        }
    }
    out
}

pub(super) fn controller_listed(list: &str, name: &str) -> bool {
    list.split(',').any(|c| c == name)
}

/// The directory of cgroup `cg_path` (as `/proc/<pid>/cgroup` shows it) in mount `m`, if the
/// mount contains it. Components `.` and `..` (shown for cgroups outside our namespace) are
/// rejected.
pub(super) fn dir_in_mount(m: &Mount, cg_path: &str) -> Option<PathBuf> {
    if !cg_path.starts_with('/') {
        return None;
    }
    let rest = if m.root == "/" {
        cg_path
    } else {
        let rest = cg_path.strip_prefix(m.root.as_str())?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest
    };
    let mut dir = m.mount_point.clone();
    for comp in rest.split('/').filter(|c| !c.is_empty()) {
        if comp == "." || comp == ".." {
            return None;
        }
        dir.push(comp);
    }
    Some(dir)
}

pub(super) fn join_rel(base: &str, name: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

/// Parent of a cgroup path (`/a/b` → `/a`, `/a` → `/`); `None` for `/`.
pub(super) fn parent_rel(rel: &str) -> Option<String> {
    let trimmed = rel.trim_end_matches('/');
    let (parent, _) = trimmed.rsplit_once('/')?;
    Some(if parent.is_empty() { "/" } else { parent }.to_string())
}

/// `path` is `group` or below it.
pub(super) fn rel_within(group: &str, path: &str) -> bool {
    path == group
        || path
            .strip_prefix(group)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_cgroup_and_mountinfo() {
        let own = parse_proc_cgroup("8:pids:/\n4:memory:/a/b:c\n0::/x\n");
        assert_eq!(own.len(), 3);
        assert_eq!(own[1].path, "/a/b:c");
        assert_eq!(own[2].hierarchy_id, "0");
        let mounts = parse_mountinfo(
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
             41 31 0:38 /sub /mnt/my\\040cg rw shared:5 - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].fstype, "cgroup");
        assert!(controller_listed(&mounts[0].super_opts, "memory"));
        assert_eq!(mounts[1].mount_point, PathBuf::from("/mnt/my cg"));
        assert_eq!(mounts[1].fstype, "cgroup2");
        assert_eq!(
            dir_in_mount(&mounts[1], "/sub/x/y"),
            Some(PathBuf::from("/mnt/my cg/x/y"))
        );
        assert_eq!(dir_in_mount(&mounts[1], "/subx"), None);
        assert_eq!(dir_in_mount(&mounts[1], "/sub/../etc"), None);
        assert_eq!(
            dir_in_mount(&mounts[0], "/"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(parent_rel("/a/b").as_deref(), Some("/a"));
        assert_eq!(parent_rel("/a").as_deref(), Some("/"));
        assert_eq!(parent_rel("/"), None);
        assert_eq!(join_rel("/", "w"), "/w");
        assert!(rel_within("/a/w", "/a/w/sub"));
        assert!(!rel_within("/a/w", "/a/w2"));
    }
}
