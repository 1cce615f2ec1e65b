//! The worker's private filesystem view (sandbox v2): a fresh tmpfs root that holds only the
//! client's roots, the system paths its programs need, a minimal `/dev`, a private `/tmp` and
//! `/dev/shm`, and a `/proc` of its own PID namespace. Everything else on the host does not
//! exist for the worker: `stat`, `chmod`, `chown`, `*xattr`, `utime`, `connect` to a named
//! socket, `link` or `rename` of a path outside the view fail with `ENOENT`.
//!
//! # How it is built (in the worker's new mount namespace, before `pivot_root`)
//!
//! 1. Propagation of every inherited mount is made private, so nothing below reaches the host.
//! 2. Every source is captured first as a detached copy (`open_tree(OPEN_TREE_CLONE |
//!    AT_RECURSIVE)`), while the host's tree is still visible at its usual place, and gets its
//!    attributes on the detached copy (`mount_setattr`, recursive): `nosuid,nodev` always,
//!    `ro` unless it is a write root, `noexec` on the client's roots (only the programs the
//!    policy lists may run; their files are mounted on their own, without `noexec`), and the
//!    owner mapping of an idmapped mount when [`Source::idmap`] names one.
//! 3. A size-bounded tmpfs becomes the new root; mount points are made at the sources' host
//!    paths (the paths are canonical, so clients and tools keep the paths they know), parents
//!    before children, and each copy is attached with `move_mount`.
//! 4. The host's symlink chains of [`Isolation::aliases`] (`/lib64/ld-linux-x86-64.so.2`,
//!    `/bin/sh`) are reproduced, so programs find their loader and `#!` interpreters.
//! 5. `pivot_root`, the old root is detached, and the new root's own tmpfs is made read-only.
//!
//! # What it does not do
//!
//! * It decides nothing: the paths come from the broker's spec. A path that cannot be mounted
//!   is an error (the worker refuses to start), never a silently different view.
//! * It must run in PID 1 of the worker's new PID namespace (its `/proc` shows the process
//!   that mounts it).
//! * It does not hide anything *inside* a root: what is beneath a root is visible, as the
//!   policy says.
//!
//! # What it trusts
//!
//! The broker's spec and the kernel. It runs before any client byte is read.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use mcpd_ipc::SandboxSpec;
use rustix::fs::{FileType, Mode, CWD};
use rustix::mount::{
    mount, mount_change, move_mount, open_tree, unmount, MountFlags, MountPropagationFlags,
    MoveMountFlags, OpenTreeFlags, UnmountFlags,
};

use super::ConfineError;

/// Size of the new root's own tmpfs (it holds only mount points and symlinks).
const ROOT_TMPFS_BYTES: u64 = 1024 * 1024;
/// Inodes of the new root's own tmpfs.
const ROOT_TMPFS_INODES: u64 = 4096;
/// Size of the private `/dev` tmpfs (device mount points and a few symlinks).
const DEV_TMPFS_BYTES: u64 = 64 * 1024;
/// Longest symlink chain followed when reproducing an alias.
const MAX_ALIAS_HOPS: usize = 16;
/// The device files every view holds (bound from the host's devices; no other device exists).
pub const VIEW_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];
/// Directories, in order, one of which is used as the staging mount point of the new root
/// (inside the worker's own mount namespace; the host never sees it).
const STAGING_DIRS: &[&str] = &["/tmp", "/var/tmp", "/mnt", "/run"];

fn err(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> ConfineError {
    let what = what.into();
    move |e| ConfineError::View {
        message: format!("{what}: {e}"),
    }
}

fn fail(message: impl Into<String>) -> ConfineError {
    ConfineError::View {
        message: message.into(),
    }
}

/// Mount attributes (`MOUNT_ATTR_*`, uapi `linux/mount.h`).
pub(super) mod attr {
    pub const RDONLY: u64 = 0x0000_0001;
    pub const NOSUID: u64 = 0x0000_0002;
    pub const NODEV: u64 = 0x0000_0004;
    pub const NOEXEC: u64 = 0x0000_0008;
    pub const IDMAP: u64 = 0x0010_0000;
}

/// What kind of thing a source is, and so which attributes its copy gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A client read root: `ro,nosuid,nodev,noexec`, idmapped when asked.
    Read,
    /// A client write root: `nosuid,nodev,noexec`, idmapped when asked.
    Write,
    /// A program, interpreter, loader or helper directory: `ro,nosuid,nodev`.
    Exec,
    /// Libraries and the loader's configuration: `ro,nosuid,nodev`.
    System,
    /// A host device node: `nosuid,noexec` (devices must work through it).
    Device,
}

impl Kind {
    fn attrs(self) -> u64 {
        match self {
            Kind::Read => attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC,
            Kind::Write => attr::NOSUID | attr::NODEV | attr::NOEXEC,
            Kind::Exec | Kind::System => attr::RDONLY | attr::NOSUID | attr::NODEV,
            Kind::Device => attr::NOSUID | attr::NOEXEC,
        }
    }
}

/// One host path to mount into the view at the same path.
#[derive(Debug)]
struct Source {
    path: String,
    kind: Kind,
    is_dir: bool,
    /// Idmapped mount: a user namespace whose mapping shows the root's owner as the worker.
    idmap: Option<usize>,
}

/// A private tmpfs inside the view.
#[derive(Debug, Clone)]
struct Tmpfs {
    path: &'static str,
    bytes: u64,
    mode: u32,
    attrs: u64,
}

/// The plan of a view: computed from the spec with the host's tree in sight, applied later.
#[derive(Debug)]
pub(super) struct Plan {
    /// Built by root in the initial user namespace (else in the worker's own user namespace).
    root: bool,
    sources: Vec<Source>,
    tmpfs: Vec<Tmpfs>,
    aliases: Vec<String>,
    /// Owners (uid, gid) of the roots that get an idmapped mount, one user namespace each.
    pub idmap_owners: Vec<(u32, u32)>,
}

/// What the view holds beyond the spec's own paths, for the Landlock rules that follow.
#[derive(Debug, Default, Clone)]
pub struct Built {
    /// Private writable tmpfs directories (`/tmp`, `/dev/shm`).
    pub private_writable: Vec<String>,
    /// Device files present (read and write, no ioctl).
    pub devices: Vec<String>,
    /// Whether `/proc` is the worker's own.
    pub proc: bool,
    /// Roots mounted idmapped.
    pub idmapped: Vec<String>,
    /// Roots whose filesystem refused an idmapped mount (first write root first).
    pub not_idmapped: Vec<(String, u32, u32)>,
}

fn depth(p: &str) -> usize {
    Path::new(p)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

fn covered_by(path: &str, ancestor: &str) -> bool {
    Path::new(path).starts_with(ancestor)
}

/// Plan the view of `spec`. `idmap`: the worker starts as root (in the initial user
/// namespace) and switches to its uid, so roots are idmapped and each root's owner is looked
/// up now.
pub(super) fn plan(spec: &SandboxSpec, idmap: bool) -> Result<Plan, ConfineError> {
    let mut sources: Vec<Source> = Vec::new();
    let mut owners: Vec<(u32, u32)> = Vec::new();
    let mut seen = BTreeSet::new();
    let groups: [(&[String], Kind); 5] = [
        (&spec.read_paths, Kind::Read),
        (&spec.write_paths, Kind::Write),
        (&spec.exec_paths, Kind::Exec),
        (&spec.exec.system_read_paths, Kind::System),
        (&spec.exec.device_paths, Kind::Device),
    ];
    for (paths, kind) in groups {
        for p in paths {
            if !p.starts_with('/') || p.contains('\0') {
                return Err(fail(format!("{p:?} is not an absolute path")));
            }
            if kind != Kind::Device
                && (covered_by(p, "/proc") || covered_by(p, "/dev") || covered_by(p, "/sys"))
                && p != "/"
            {
                return Err(fail(format!(
                    "{p}: paths beneath /proc, /dev or /sys cannot be part of a worker's view"
                )));
            }
            if kind == Kind::Device && !p.starts_with("/dev/") {
                return Err(fail(format!("{p}: a device path must be beneath /dev")));
            }
            // A path given twice (e.g. read and write) is mounted once, with the first kind:
            // the broker lists write roots after read roots only when they differ.
            if !seen.insert(p.clone()) {
                continue;
            }
            let st = rustix::fs::stat(p.as_str()).map_err(err(format!("stat {p}")))?;
            let is_dir = FileType::from_raw_mode(st.st_mode).is_dir();
            let idmap_ix = if idmap && matches!(kind, Kind::Read | Kind::Write) {
                let owner = (st.st_uid, st.st_gid);
                Some(match owners.iter().position(|o| *o == owner) {
                    Some(i) => i,
                    None => {
                        owners.push(owner);
                        owners.len() - 1
                    }
                })
            } else {
                None
            };
            sources.push(Source {
                path: p.clone(),
                kind,
                is_dir,
                idmap: idmap_ix,
            });
        }
    }
    for d in VIEW_DEVICES {
        if seen.insert((*d).to_string()) && Path::new(d).exists() {
            sources.push(Source {
                path: (*d).to_string(),
                kind: Kind::Device,
                is_dir: false,
                idmap: None,
            });
        }
    }
    let roots: Vec<&str> = spec
        .read_paths
        .iter()
        .chain(&spec.write_paths)
        .map(String::as_str)
        .collect();
    let tmp_bytes = spec.isolation.tmp_bytes.max(1024 * 1024);
    let mut tmpfs = vec![
        Tmpfs {
            path: "/dev",
            bytes: DEV_TMPFS_BYTES,
            mode: 0o755,
            attrs: attr::NOSUID | attr::NOEXEC,
        },
        Tmpfs {
            path: "/dev/shm",
            bytes: tmp_bytes,
            mode: 0o1777,
            attrs: attr::NOSUID | attr::NODEV | attr::NOEXEC,
        },
    ];
    // A client root that is (or contains) /tmp is the client's /tmp: no private one over it.
    if !roots.iter().any(|r| covered_by("/tmp", r)) {
        tmpfs.push(Tmpfs {
            path: "/tmp",
            bytes: tmp_bytes,
            mode: 0o1777,
            attrs: attr::NOSUID | attr::NODEV | attr::NOEXEC,
        });
    }
    Ok(Plan {
        root: idmap,
        sources,
        tmpfs,
        aliases: spec.isolation.aliases.clone(),
        idmap_owners: owners,
    })
}

/// `mount_setattr(2)` on the mount `fd` refers to: set `set` (and the idmapping of `userns`),
/// on the whole tree beneath it when `recursive`.
#[allow(unsafe_code)]
fn set_attrs(
    fd: BorrowedFd<'_>,
    set: u64,
    userns: Option<BorrowedFd<'_>>,
    recursive: bool,
) -> std::io::Result<()> {
    /// uapi `struct mount_attr` (MOUNT_ATTR_SIZE_VER0 = 32 bytes).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const AT_EMPTY_PATH: libc::c_uint = 0x1000;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let mut a = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if let Some(ns) = userns {
        a.attr_set |= attr::IDMAP;
        a.userns_fd = ns.as_raw_fd() as u64;
    }
    let flags = if recursive {
        AT_EMPTY_PATH | AT_RECURSIVE
    } else {
        AT_EMPTY_PATH
    };
    let empty = c"";
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from `a`, a valid local laid
    // out as the kernel's `struct mount_attr`, and the NUL-terminated empty path; `fd` and the
    // optional user-namespace fd are open descriptors borrowed for the call. It changes no
    // memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Make every directory of `path` (absolute) beneath `root`, as real directories; components
/// that already exist (inside a mount attached earlier) are kept.
fn make_dirs(root: &Path, path: &str) -> Result<(), ConfineError> {
    let mut cur = root.to_path_buf();
    for c in Path::new(path).components() {
        if let Component::Normal(n) = c {
            cur.push(n);
            match rustix::fs::mkdir(&cur, Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(err(format!("mkdir {}", cur.display()))(e)),
            }
        }
    }
    Ok(())
}

/// The mount point of a source at `path` beneath `root`: a directory, or an empty file.
fn make_mount_point(root: &Path, path: &str, is_dir: bool) -> Result<PathBuf, ConfineError> {
    let target = root.join(path.trim_start_matches('/'));
    if is_dir {
        make_dirs(root, path)?;
    } else {
        if let Some(parent) = Path::new(path).parent() {
            make_dirs(root, &parent.to_string_lossy())?;
        }
        // O_EXCL: an existing file is never opened for writing (a host file inside a mount
        // attached earlier — opening it writable could fail with ETXTBSY while it runs
        // elsewhere, which made worker starts fail under load).
        match rustix::fs::open(
            &target,
            rustix::fs::OFlags::CREATE
                | rustix::fs::OFlags::EXCL
                | rustix::fs::OFlags::WRONLY
                | rustix::fs::OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(_) => {}
            // Already there: mount over it.
            Err(rustix::io::Errno::EXIST) => {}
            Err(rustix::io::Errno::ROFS) | Err(rustix::io::Errno::ACCESS) if target.exists() => {}
            Err(e) => return Err(err(format!("mount point {}", target.display()))(e)),
        }
    }
    Ok(target)
}

fn mount_tmpfs(target: &Path, t: &Tmpfs) -> Result<(), ConfineError> {
    let inodes = if t.path == "/" {
        format!(",nr_inodes={ROOT_TMPFS_INODES}")
    } else {
        String::new()
    };
    let data = CString::new(format!("size={},mode={:o}{inodes}", t.bytes, t.mode))
        .map_err(|_| fail("tmpfs options"))?;
    let mut flags = MountFlags::empty();
    if t.attrs & attr::NOSUID != 0 {
        flags |= MountFlags::NOSUID;
    }
    if t.attrs & attr::NODEV != 0 {
        flags |= MountFlags::NODEV;
    }
    if t.attrs & attr::NOEXEC != 0 {
        flags |= MountFlags::NOEXEC;
    }
    mount("tmpfs", target, "tmpfs", flags, data.as_c_str())
        .map_err(err(format!("tmpfs on {}", t.path)))
}

/// Build the view of `plan` and `pivot_root` into it. Runs in the worker's own mount
/// namespace with the capabilities to mount (root, or root of its own user namespace).
/// `userns`: the idmap user namespaces, in the order of [`Plan::idmap_owners`].
pub(super) fn build(plan: &Plan, userns: &[OwnedFd]) -> Result<Built, ConfineError> {
    let mut built = Built::default();
    // 1. Nothing we mount propagates anywhere.
    mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(err("making / private"))?;

    // 2. Detached copies of every source, with their attributes, while the host tree is in
    //    sight.
    let mut copies: Vec<(&Source, OwnedFd)> = Vec::with_capacity(plan.sources.len());
    for s in &plan.sources {
        let fd = open_tree(
            CWD,
            s.path.as_str(),
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_RECURSIVE
                | OpenTreeFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(err(format!("copying the mount of {}", s.path)))?;
        let ns = s.idmap.and_then(|i| userns.get(i)).map(AsFd::as_fd);
        // Asked for, but no user namespace could be made for it: as a refused idmap.
        let refused_before = if s.idmap.is_some() && ns.is_none() {
            Err(std::io::Error::from_raw_os_error(libc::EINVAL))
        } else {
            Ok(())
        };
        match refused_before.and_then(|()| set_attrs(fd.as_fd(), s.kind.attrs(), ns, true)) {
            Ok(()) => {
                if ns.is_some() {
                    built.idmapped.push(s.path.clone());
                }
            }
            Err(e) if s.idmap.is_some() && e.raw_os_error() == Some(libc::EINVAL) => {
                // The filesystem cannot be idmapped: the documented fallback (the worker
                // runs as the owner of this root; see `isolate`).
                let owner = s
                    .idmap
                    .and_then(|i| plan.idmap_owners.get(i))
                    .copied()
                    .unwrap_or((0, 0));
                let entry = (s.path.clone(), owner.0, owner.1);
                if s.kind == Kind::Write {
                    built.not_idmapped.insert(0, entry);
                } else {
                    built.not_idmapped.push(entry);
                }
                set_attrs(fd.as_fd(), s.kind.attrs(), None, true)
                    .map_err(|e| fail(format!("mount attributes of {}: {e}", s.path)))?;
            }
            Err(e) => return Err(fail(format!("mount attributes of {}: {e}", s.path))),
        }
        copies.push((s, fd));
    }

    // 3. The new root, on a staging directory of this (private) mount namespace.
    let staging = STAGING_DIRS
        .iter()
        .find(|d| Path::new(d).is_dir())
        .ok_or_else(|| fail("no staging directory (/tmp, /var/tmp, /mnt, /run)"))?;
    let root = PathBuf::from(staging);
    mount_tmpfs(
        &root,
        &Tmpfs {
            path: "/",
            bytes: ROOT_TMPFS_BYTES,
            mode: 0o755,
            attrs: attr::NOSUID | attr::NODEV | attr::NOEXEC,
        },
    )?;

    // Parents before children: sources and private tmpfs mounts in order of depth.
    enum Step<'a> {
        Attach(&'a Source, &'a OwnedFd),
        Tmpfs(&'a Tmpfs),
    }
    let mut steps: Vec<(usize, String, Step<'_>)> = Vec::new();
    for (s, fd) in &copies {
        steps.push((depth(&s.path), s.path.clone(), Step::Attach(s, fd)));
    }
    for t in &plan.tmpfs {
        steps.push((depth(t.path), t.path.to_string(), Step::Tmpfs(t)));
    }
    // Equal depth: private tmpfs first (a device bound at /dev/null needs /dev first).
    steps.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| matches!(b.2, Step::Tmpfs(_)).cmp(&matches!(a.2, Step::Tmpfs(_))))
            .then_with(|| a.1.cmp(&b.1))
    });
    for (_, path, step) in &steps {
        match step {
            Step::Attach(s, fd) => {
                let target = if s.path == "/" {
                    root.clone()
                } else {
                    make_mount_point(&root, &s.path, s.is_dir)?
                };
                move_mount(
                    fd.as_fd(),
                    "",
                    CWD,
                    &target,
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
                )
                .map_err(err(format!("mounting {path}")))?;
                if s.kind == Kind::Device {
                    built.devices.push(s.path.clone());
                }
            }
            Step::Tmpfs(t) => {
                let target = make_mount_point(&root, t.path, true)?;
                mount_tmpfs(&target, t)?;
                if t.path != "/dev" {
                    built.private_writable.push(t.path.to_string());
                }
            }
        }
    }
    // /dev's usual symlinks into the worker's own /proc.
    for (link, target) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
    ] {
        match rustix::fs::symlink(target, root.join(link)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(err(format!("/{link}"))(e)),
        }
    }
    // The worker's own /proc, mounted while the host's is still attached: the kernel lets a
    // user namespace mount procfs only where a fully visible one exists in its mount
    // namespace. Mounted by the caller, PID 1 of the new PID namespace: procfs shows the
    // namespace of the process that mounts it.
    make_dirs(&root, "/proc")?;
    match mount_proc(&root.join("proc")) {
        Ok(()) => built.proc = true,
        // A user namespace beside an over-mounted /proc (the service manager's
        // ProtectKernelTunables=, ProcSubset=): no /proc in the view (reported).
        Err(rustix::io::Errno::PERM) if !plan.root => built.proc = false,
        Err(e) => return Err(err("mounting /proc")(e)),
    }

    // 4. The host's symlink chains of the aliases.
    for a in &plan.aliases {
        reproduce_alias(&root, a)?;
    }

    // 5. Into the new root; the old one is detached (it stays reachable from nowhere).
    rustix::process::chdir(&root).map_err(err("chdir to the new root"))?;
    rustix::process::pivot_root(".", ".").map_err(err("pivot_root"))?;
    unmount(".", UnmountFlags::DETACH).map_err(err("detaching the old root"))?;
    rustix::process::chdir("/").map_err(err("chdir /"))?;
    Ok(built)
}

/// After `/proc` is mounted: the new root's own tmpfs becomes read-only, so nothing can be
/// created beside the mounts.
pub(super) fn seal_root() -> Result<(), ConfineError> {
    let fd = rustix::fs::open(
        "/",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err("opening /"))?;
    set_attrs(
        fd.as_fd(),
        attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC,
        None,
        false,
    )
    .map_err(|e| fail(format!("making / read-only: {e}")))
}

/// Mount the worker's own `/proc` (`nosuid,nodev,noexec`) at `target`. Must run inside the
/// new PID namespace: procfs shows the namespace of the process that mounts it.
fn mount_proc(target: &Path) -> Result<(), rustix::io::Errno> {
    mount(
        "proc",
        target,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        c"",
    )
}

/// Reproduce the host's symlinks along `alias` beneath `root` (before `pivot_root`), so that
/// it resolves inside the view as it does on the host. Components that exist in the view
/// already (inside attached mounts) are followed, not created; a chain that leads outside
/// the view simply dangles.
fn reproduce_alias(root: &Path, alias: &str) -> Result<(), ConfineError> {
    let mut pending: PathBuf = PathBuf::from(alias);
    for _ in 0..MAX_ALIAS_HOPS {
        let comps: Vec<_> = pending
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_owned()),
                _ => None,
            })
            .collect();
        let mut host = PathBuf::from("/");
        let mut next: Option<PathBuf> = None;
        for (i, c) in comps.iter().enumerate() {
            host.push(c);
            let view = root.join(host.strip_prefix("/").unwrap_or(&host));
            let in_view = rustix::fs::lstat(&view).ok();
            let on_host = rustix::fs::lstat(&host).ok();
            let ty = |st: &rustix::fs::Stat| FileType::from_raw_mode(st.st_mode);
            let link_of = |p: &Path| std::fs::read_link(p).ok();
            let target = match (&in_view, &on_host) {
                (Some(st), _) if ty(st) == FileType::Symlink => link_of(&view),
                (Some(_), _) => None, // a directory or file the view has: go on
                (None, Some(st)) if ty(st) == FileType::Symlink => {
                    let t = link_of(&host).ok_or_else(|| fail("readlink"))?;
                    match rustix::fs::symlink(&t, &view) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        // Inside a read-only mount: the host's own link is already there.
                        Err(rustix::io::Errno::ROFS) => {}
                        Err(e) => return Err(err(format!("symlink {}", host.display()))(e)),
                    }
                    Some(t)
                }
                (None, Some(st)) if ty(st) == FileType::Directory => {
                    match rustix::fs::mkdir(&view, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => None,
                        Err(_) => return Ok(()),
                    }
                }
                // A file the view does not hold, or nothing on the host: not granted.
                _ => return Ok(()),
            };
            if let Some(t) = target {
                let base = host.parent().map(Path::to_path_buf).unwrap_or_default();
                let mut resolved = if t.is_absolute() { t } else { base.join(t) };
                for rest in &comps[i + 1..] {
                    resolved.push(rest);
                }
                next = Some(resolved);
                break;
            }
        }
        match next {
            Some(n) => pending = n,
            None => return Ok(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn depth_counts_normal_components() {
        assert_eq!(depth("/"), 0);
        assert_eq!(depth("/tmp"), 1);
        assert_eq!(depth("/tmp/a/b"), 3);
    }

    #[test]
    fn roots_beneath_proc_or_dev_are_refused_and_tmp_roots_replace_the_private_tmp() {
        let mut spec = SandboxSpec {
            read_paths: vec!["/proc/self".into()],
            ..SandboxSpec::default()
        };
        assert!(plan(&spec, false).is_err());
        spec.read_paths = vec!["/tmp".into()];
        let p = plan(&spec, false).unwrap();
        assert!(!p.tmpfs.iter().any(|t| t.path == "/tmp"));
        spec.read_paths = vec!["/usr".into()];
        let p = plan(&spec, false).unwrap();
        assert!(p.tmpfs.iter().any(|t| t.path == "/tmp"));
        assert!(p.sources.iter().any(|s| s.path == "/dev/null"));
        assert!(p.idmap_owners.is_empty());
        let p = plan(&spec, true).unwrap();
        assert_eq!(p.idmap_owners.len(), 1);
    }

    #[test]
    fn attributes_of_each_kind() {
        assert_ne!(Kind::Read.attrs() & attr::RDONLY, 0);
        assert_eq!(Kind::Write.attrs() & attr::RDONLY, 0);
        for k in [Kind::Read, Kind::Write] {
            assert_ne!(k.attrs() & attr::NOEXEC, 0);
            assert_ne!(k.attrs() & attr::NODEV, 0);
        }
        assert_eq!(Kind::Exec.attrs() & attr::NOEXEC, 0);
        assert_eq!(Kind::Device.attrs() & attr::NODEV, 0);
        for k in [
            Kind::Read,
            Kind::Write,
            Kind::Exec,
            Kind::System,
            Kind::Device,
        ] {
            assert_ne!(k.attrs() & attr::NOSUID, 0);
        }
    }
}
