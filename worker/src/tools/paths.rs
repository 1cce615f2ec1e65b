//! Resolution of client paths beneath open root directories (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`).
//!
//! At start-up the worker opens every allowed root once ([`Roots::open`]) and keeps an
//! `O_PATH` descriptor for it. A client path is then resolved in two steps:
//!
//! 1. **Lexical scoping.** The client string is split into components (empty components,
//!    i.e. repeated or trailing slashes, are dropped; `.` and `..` are kept verbatim and never
//!    folded). NUL bytes, paths longer than [`MAX_PATH_LEN`] and Windows drive paths are
//!    refused; `~` is not expanded. An absolute path must start, component by component, with a root's path, so
//!    `/srv/root-evil` is *not* under `/srv/root`. A relative path is taken relative to the
//!    **first root** (the first entry of `read_paths`, or of `write_paths` when there are no
//!    read roots). The most specific root that grants the wanted [`Access`] is tried first; a
//!    path under a read-write root is also readable. If resolution beneath that root escapes,
//!    the next (less specific) granting root is tried.
//! 2. **Kernel resolution.** The remainder after the root prefix is opened with
//!    `openat2(root_fd, rest, …, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`. The kernel, not this
//!    module, decides whether `..` or a symlink leaves the root: any escape fails with `EXDEV`
//!    (or `ELOOP` for magic links), including absolute symlinks — even ones that point back
//!    inside the root — which are therefore not followed.
//!
//! Every failure to stay inside the roots maps to the single message
//! [`OUTSIDE_ALLOWED`], which is the same whether or not the target exists and never names
//! anything outside the roots. Errors about paths inside the roots echo only the client's own
//! path string (or a path composed from it), never a resolved real path.
//!
//! Roots that are regular files (the spec allows them) are kept as the file's parent
//! directory plus the file name; they are opened with `RESOLVE_NO_SYMLINKS` in addition, so a
//! swapped-in symlink cannot redirect to a sibling, and they are always written in place.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

/// The longest client path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// The one message for every path outside the allowed roots (and every escape attempt).
pub const OUTSIDE_ALLOWED: &str = "Access denied - path outside allowed directories";

/// How often an `openat2` that reports `EAGAIN` (a concurrent rename raced a `..` lookup) is
/// retried before giving up.
const OPENAT2_RETRIES: usize = 16;

/// Mode of files this module creates (before the umask).
pub const FILE_MODE: u32 = 0o644;
/// Mode of directories this module creates (before the umask).
pub const DIR_MODE: u32 = 0o755;

/// What a caller wants to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read (a path under any root).
    Read,
    /// Create, modify, move or delete (a path under a writable root).
    Write,
}

/// A client-safe path error. Its `Display` text may be sent to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Outside every root, or an escape attempt. Deliberately carries nothing.
    #[error("Access denied - path outside allowed directories")]
    Outside,
    /// The path is inside the roots, but only under read-only ones.
    #[error("Access denied - {0} is in a read-only directory")]
    ReadOnly(String),
    /// The client string itself is unusable.
    #[error("Invalid path: {0}")]
    Invalid(&'static str),
    /// An operating-system error on a path inside the roots.
    #[error("{}: {path}", errno_text(*.errno))]
    Io {
        /// The client's path (or a path composed from it).
        path: String,
        /// What went wrong.
        errno: Errno,
    },
    /// Any other client-safe failure, already formatted.
    #[error("{0}")]
    Other(String),
}

impl PathError {
    /// An OS error on a client path.
    pub fn io(path: &str, errno: Errno) -> Self {
        PathError::Io {
            path: path.to_owned(),
            errno,
        }
    }

    /// True if the error is an `ENOENT` on an in-scope path.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            PathError::Io {
                errno: Errno::NOENT,
                ..
            }
        )
    }
}

/// A short, fixed description of an errno (never anything the kernel formats with paths).
pub fn errno_text(e: Errno) -> &'static str {
    match e {
        Errno::NOENT => "No such file or directory",
        Errno::NOTDIR => "Not a directory",
        Errno::ISDIR => "Is a directory",
        Errno::EXIST => "File already exists",
        Errno::ACCESS | Errno::PERM => "Permission denied",
        Errno::NOTEMPTY => "Directory not empty",
        Errno::NOSPC => "No space left on device",
        Errno::DQUOT => "Disk quota exceeded",
        Errno::ROFS => "Read-only file system",
        Errno::FBIG => "File too large",
        Errno::NAMETOOLONG => "File name too long",
        Errno::BUSY => "Device or resource busy",
        Errno::TXTBSY => "Text file busy",
        Errno::XDEV => "Cannot move across file systems",
        Errno::INVAL => "Invalid argument",
        Errno::NXIO => "No such device or address",
        Errno::MLINK => "Too many links",
        Errno::AGAIN => "Resource temporarily unavailable",
        Errno::NOSYS => "Operation not supported by this kernel",
        Errno::OPNOTSUPP => "Operation not supported",
        Errno::MFILE | Errno::NFILE => "Too many open files",
        Errno::NOMEM => "Out of memory",
        Errno::IO => "Input/output error",
        _ => "Operation failed",
    }
}

/// How a root is held.
#[derive(Debug)]
enum RootKind {
    /// A directory: `O_PATH | O_DIRECTORY` descriptor.
    Dir(OwnedFd),
    /// A single file: its parent directory (`O_PATH`) and its name.
    File { parent: OwnedFd, name: String },
}

/// One allowed root.
#[derive(Debug)]
struct Root {
    /// Canonical absolute path as given by the broker.
    path: String,
    /// Its components.
    comps: Vec<String>,
    kind: RootKind,
    writable: bool,
}

impl Root {
    /// Base descriptor, path relative to it, and resolve flags for a remainder `rel`.
    fn base(&self, rel: &[&str]) -> (BorrowedFd<'_>, String, ResolveFlags) {
        let beneath = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        match &self.kind {
            RootKind::Dir(fd) => {
                let rel = if rel.is_empty() {
                    ".".to_owned()
                } else {
                    rel.join("/")
                };
                (fd.as_fd(), rel, beneath)
            }
            RootKind::File { parent, name } => {
                let mut p = name.clone();
                for c in rel {
                    p.push('/');
                    p.push_str(c);
                }
                (parent.as_fd(), p, beneath | ResolveFlags::NO_SYMLINKS)
            }
        }
    }
}

/// A root as shown to clients (`list_allowed_directories`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    /// The absolute path.
    pub path: String,
    /// Whether writes are allowed beneath it.
    pub writable: bool,
    /// Whether it is a single file rather than a directory.
    pub is_file: bool,
}

/// The parent directory of a path, for operations on its final component.
#[derive(Debug)]
pub struct Parent {
    /// `O_PATH | O_DIRECTORY` descriptor of the parent, resolved beneath a root.
    pub dir: OwnedFd,
    /// The final component (never empty, `.` or `..`, never contains `/`).
    pub name: String,
    /// The target is a file root itself: operate in place, never create siblings.
    pub file_root: bool,
    /// The target is a directory root itself (it cannot be moved or deleted).
    pub is_root: bool,
}

/// The client's allowed roots. Relative client paths resolve against the first root.
#[derive(Debug, Default)]
pub struct Roots {
    roots: Vec<Root>,
}

/// Split a path into components, dropping empty ones (keeps `.` and `..`).
fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

/// Validate a client path string.
fn check_client_path(path: &str) -> Result<(), PathError> {
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::Invalid("path too long"));
    }
    if path.contains('\0') {
        return Err(PathError::Invalid("path contains a NUL byte"));
    }
    // Like the reference server: never reinterpret `C:\...` as a relative POSIX name.
    let b = path.as_bytes();
    if b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b[1] == b':'
        && (b.len() == 2 || b[2] == b'/' || b[2] == b'\\')
    {
        return Err(PathError::Invalid(
            "Windows-style path received on a POSIX host",
        ));
    }
    Ok(())
}

/// `openat2` with `O_CLOEXEC`, retrying `EAGAIN`/`EINTR`.
fn openat2_retry(
    dir: BorrowedFd<'_>,
    rel: &str,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::CLOEXEC;
    let mut last = Errno::AGAIN;
    for _ in 0..OPENAT2_RETRIES {
        match rfs::openat2(dir, rel, flags, mode, resolve) {
            Err(e @ (Errno::AGAIN | Errno::INTR)) => last = e,
            r => return r,
        }
    }
    Err(last)
}

/// Map an error of a *resolution* (openat2 beneath a root) to a client-safe error.
fn resolve_err(path: &str, e: Errno) -> PathError {
    match e {
        // RESOLVE_BENEATH escapes (`..` above the root, absolute symlinks) and magic links /
        // symlink loops: one generic answer.
        Errno::XDEV | Errno::LOOP => PathError::Outside,
        e => PathError::io(path, e),
    }
}

/// The type of a stat result.
pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode as _)
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_name() -> String {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(".mcpd-{}-{n}-{nanos:08x}.tmp", std::process::id())
}

impl Roots {
    /// Open the roots named by the spec: `read_paths` read-only, `write_paths` read-write (a
    /// path in both lists is writable). Order is kept: read roots first, then write roots not
    /// already listed; the first one is the base of relative client paths.
    pub fn open(spec: &mcpd_ipc::SandboxSpec) -> std::io::Result<Self> {
        let mut roots: Vec<Root> = Vec::new();
        let listed = spec
            .read_paths
            .iter()
            .map(|p| (p, false))
            .chain(spec.write_paths.iter().map(|p| (p, true)));
        for (path, writable) in listed {
            let comps: Vec<String> = components(path).into_iter().map(String::from).collect();
            if !path.starts_with('/') || comps.iter().any(|c| c == "." || c == "..") {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("allowed path is not absolute and canonical: {path}"),
                ));
            }
            if let Some(r) = roots.iter_mut().find(|r| r.comps == comps) {
                r.writable |= writable;
                continue;
            }
            let kind = Self::open_root(path, &comps)?;
            let path = format!("/{}", comps.join("/"));
            roots.push(Root {
                path,
                comps,
                kind,
                writable,
            });
        }
        Ok(Self { roots })
    }

    fn open_root(path: &str, comps: &[String]) -> std::io::Result<RootKind> {
        let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match rfs::open(path, dir_flags, Mode::empty()) {
            Ok(fd) => Ok(RootKind::Dir(fd)),
            Err(Errno::NOTDIR) => {
                let (name, parent) = comps.split_last().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "root is not a directory")
                })?;
                let parent_path = format!("/{}", parent.join("/"));
                let parent = rfs::open(parent_path.as_str(), dir_flags, Mode::empty())?;
                // The file must exist now (as a non-directory, non-symlink).
                let st = rfs::statat(&parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                if file_type(&st) == FileType::Symlink {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("allowed path is a symlink: {path}"),
                    ));
                }
                Ok(RootKind::File {
                    parent,
                    name: name.clone(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// True if no root is open.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The roots, in order.
    pub fn list(&self) -> Vec<RootInfo> {
        self.roots
            .iter()
            .map(|r| RootInfo {
                path: r.path.clone(),
                writable: r.writable,
                is_file: matches!(r.kind, RootKind::File { .. }),
            })
            .collect()
    }

    /// Components of the absolute form of a client path (relative → under the first root).
    fn absolute_components<'a>(&'a self, path: &'a str) -> Vec<&'a str> {
        if path.starts_with('/') {
            components(path)
        } else {
            let mut v: Vec<&str> = match self.roots.first() {
                Some(r) => r.comps.iter().map(String::as_str).collect(),
                None => Vec::new(),
            };
            v.extend(components(path));
            v
        }
    }

    /// The absolute, lexical form of a client path for display in results (relative paths are
    /// shown under the first root; `..` is kept verbatim). Only use it for paths that resolved.
    pub fn display_path(&self, path: &str) -> String {
        let comps: Vec<&str> = self
            .absolute_components(path)
            .into_iter()
            .filter(|c| *c != ".")
            .collect();
        format!("/{}", comps.join("/"))
    }

    /// Roots under which `path` lies lexically and that grant `access`, most specific first,
    /// each with the remainder.
    fn candidates<'a>(
        &'a self,
        path: &'a str,
        access: Access,
    ) -> Result<Vec<(&'a Root, Vec<&'a str>)>, PathError> {
        check_client_path(path)?;
        let comps = self.absolute_components(path);
        let mut under: Vec<(&Root, Vec<&str>)> = self
            .roots
            .iter()
            .filter(|r| {
                r.comps.len() <= comps.len()
                    && r.comps.iter().zip(comps.iter()).all(|(a, b)| a == b)
            })
            .map(|r| (r, comps[r.comps.len()..].to_vec()))
            .collect();
        if under.is_empty() {
            return Err(PathError::Outside);
        }
        under.sort_by_key(|c| std::cmp::Reverse(c.0.comps.len()));
        if access == Access::Write {
            let (writable, read_only): (Vec<_>, Vec<_>) =
                under.into_iter().partition(|(r, _)| r.writable);
            if writable.is_empty() {
                // Only read-only roots: say so, unless the path escapes them (then it is
                // outside, with the generic answer; resolution stops at the escape, so this
                // reveals nothing about what lies outside).
                for (root, rel) in &read_only {
                    let (dir, rel, resolve) = root.base(rel);
                    match openat2_retry(dir, &rel, OFlags::PATH, Mode::empty(), resolve) {
                        Err(Errno::XDEV | Errno::LOOP) => continue,
                        _ => return Err(PathError::ReadOnly(path.to_owned())),
                    }
                }
                return Err(PathError::Outside);
            }
            under = writable;
        }
        Ok(under)
    }

    /// Run `f` beneath each candidate root until one does not report an escape.
    fn try_roots<T>(
        &self,
        path: &str,
        access: Access,
        mut f: impl FnMut(&Root, &[&str]) -> Result<T, PathError>,
    ) -> Result<T, PathError> {
        for (root, rel) in self.candidates(path, access)? {
            match f(root, &rel) {
                Err(PathError::Outside) => continue,
                r => return r,
            }
        }
        Err(PathError::Outside)
    }

    /// Open a client path beneath the roots with `flags` (`O_CLOEXEC` is added) and `mode`.
    pub fn open_at(
        &self,
        path: &str,
        access: Access,
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, PathError> {
        self.try_roots(path, access, |root, rel| {
            let (dir, rel, resolve) = root.base(rel);
            openat2_retry(dir, &rel, flags, mode, resolve).map_err(|e| resolve_err(path, e))
        })
    }

    /// An `O_PATH` descriptor (follows symlinks that stay inside the roots); for `stat`.
    pub fn open_path(&self, path: &str, access: Access) -> Result<OwnedFd, PathError> {
        self.open_at(path, access, OFlags::PATH, Mode::empty())
    }

    /// A directory opened for reading its entries.
    pub fn open_dir(&self, path: &str, access: Access) -> Result<OwnedFd, PathError> {
        self.open_at(
            path,
            access,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
    }

    /// Open a regular file for reading its content. Opened non-blocking (so a FIFO cannot hang
    /// the worker) and refused unless it is a regular file.
    pub fn open_regular(&self, path: &str, access: Access) -> Result<(File, Stat), PathError> {
        let fd = self.open_at(
            path,
            access,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )?;
        check_regular(path, fd)
    }

    /// The parent directory of a client path and its final component, for `*at` operations.
    /// The final component must not be `.`, `..` or empty.
    pub fn parent(&self, path: &str, access: Access) -> Result<Parent, PathError> {
        let bad_last = matches!(path.rsplit('/').find(|c| !c.is_empty()), Some("." | ".."));
        self.try_roots(path, access, |root, rel| {
            // Checked only once the path is known to be in scope, so that out-of-scope paths
            // get the generic answer.
            if bad_last {
                let (dir, rel, resolve) = root.base(rel);
                openat2_retry(dir, &rel, OFlags::PATH, Mode::empty(), resolve)
                    .map_err(|e| resolve_err(path, e))?;
                return Err(PathError::Invalid(
                    "the final component may not be '.' or '..'",
                ));
            }
            let dflags = OFlags::PATH | OFlags::DIRECTORY;
            match (&root.kind, rel.split_last()) {
                (RootKind::File { parent, name }, None) => {
                    let dir = openat2_retry(
                        parent.as_fd(),
                        ".",
                        dflags,
                        Mode::empty(),
                        ResolveFlags::BENEATH,
                    )
                    .map_err(|e| PathError::io(path, e))?;
                    Ok(Parent {
                        dir,
                        name: name.clone(),
                        file_root: true,
                        is_root: false,
                    })
                }
                (RootKind::File { .. }, Some(_)) => Err(PathError::io(path, Errno::NOTDIR)),
                (RootKind::Dir(fd), None) => {
                    // The root itself: give its own descriptor; callers refuse to remove it.
                    let dir = openat2_retry(
                        fd.as_fd(),
                        ".",
                        dflags,
                        Mode::empty(),
                        ResolveFlags::BENEATH,
                    )
                    .map_err(|e| PathError::io(path, e))?;
                    Ok(Parent {
                        dir,
                        name: ".".to_owned(),
                        file_root: false,
                        is_root: true,
                    })
                }
                (RootKind::Dir(_), Some((name, dir_rel))) => {
                    let (base, rel, resolve) = root.base(dir_rel);
                    let dir = openat2_retry(base, &rel, dflags, Mode::empty(), resolve)
                        .map_err(|e| resolve_err(path, e))?;
                    Ok(Parent {
                        dir,
                        name: (*name).to_owned(),
                        file_root: false,
                        is_root: false,
                    })
                }
            }
        })
    }

    /// Create a directory and any missing parents (`mkdir -p`); succeeds if it exists.
    pub fn create_dir_all(&self, path: &str) -> Result<(), PathError> {
        self.try_roots(path, Access::Write, |root, rel| {
            let (base, _, resolve) = root.base(&[]);
            let dflags = OFlags::PATH | OFlags::DIRECTORY;
            if let RootKind::File { .. } = root.kind {
                return Err(PathError::io(path, Errno::NOTDIR));
            }
            let mut cur = openat2_retry(base, ".", dflags, Mode::empty(), resolve)
                .map_err(|e| resolve_err(path, e))?;
            for i in 0..rel.len() {
                let prefix = rel[..=i].join("/");
                match openat2_retry(base, &prefix, dflags, Mode::empty(), resolve) {
                    Ok(fd) => cur = fd,
                    Err(Errno::NOENT) => {
                        let name = rel[i];
                        if name == "." || name == ".." {
                            return Err(PathError::io(path, Errno::NOENT));
                        }
                        match rfs::mkdirat(&cur, name, Mode::from_raw_mode(DIR_MODE as _)) {
                            Ok(()) | Err(Errno::EXIST) => {}
                            Err(e) => return Err(PathError::io(path, e)),
                        }
                        cur = openat2_retry(base, &prefix, dflags, Mode::empty(), resolve)
                            .map_err(|e| resolve_err(path, e))?;
                    }
                    Err(e) => return Err(resolve_err(path, e)),
                }
            }
            Ok(())
        })
    }

    /// Replace (or create) a regular file's content.
    ///
    /// A regular or missing target in a directory root is replaced atomically (temporary file
    /// in the same directory + `rename`, keeping the old permission bits). A final component
    /// that is a symlink (which must stay inside the roots) and file roots are written in place.
    /// Non-regular targets are refused.
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<(), PathError> {
        let parent = self.parent(path, Access::Write)?;
        if parent.is_root {
            return Err(PathError::io(path, Errno::ISDIR));
        }
        let existing =
            match rfs::statat(&parent.dir, parent.name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Some(st),
                Err(Errno::NOENT) => None,
                Err(e) => return Err(PathError::io(path, e)),
            };
        let kind = existing.as_ref().map(file_type);
        match kind {
            Some(FileType::Directory) => Err(PathError::io(path, Errno::ISDIR)),
            Some(FileType::Symlink) => self.write_in_place(path, data),
            _ if parent.file_root => self.write_in_place(path, data),
            Some(FileType::RegularFile) | None => {
                let mode = existing.map(|st| st.st_mode & 0o7777);
                write_atomic(path, &parent, data, mode)
            }
            Some(_) => Err(not_regular(path)),
        }
    }

    fn write_in_place(&self, path: &str, data: &[u8]) -> Result<(), PathError> {
        let fd = self.open_at(
            path,
            Access::Write,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::from_raw_mode(FILE_MODE as _),
        )?;
        let st = rfs::fstat(&fd).map_err(|e| PathError::io(path, e))?;
        if file_type(&st) != FileType::RegularFile {
            return Err(not_regular(path));
        }
        rfs::ftruncate(&fd, 0).map_err(|e| PathError::io(path, e))?;
        let mut f = File::from(fd);
        f.write_all(data).map_err(|e| io_to_path_err(path, &e))?;
        Ok(())
    }
}

fn write_atomic(
    path: &str,
    parent: &Parent,
    data: &[u8],
    mode: Option<u32>,
) -> Result<(), PathError> {
    let tmp = tmp_name();
    let fd = rfs::openat(
        &parent.dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(FILE_MODE as _),
    )
    .map_err(|e| PathError::io(path, e))?;
    let result = (|| {
        if let Some(m) = mode {
            rfs::fchmod(&fd, Mode::from_raw_mode(m as _)).map_err(|e| PathError::io(path, e))?;
        }
        let mut f = File::from(fd);
        f.write_all(data).map_err(|e| io_to_path_err(path, &e))?;
        drop(f);
        rfs::renameat(&parent.dir, tmp.as_str(), &parent.dir, parent.name.as_str())
            .map_err(|e| PathError::io(path, e))
    })();
    if result.is_err() {
        let _ = rfs::unlinkat(&parent.dir, tmp.as_str(), AtFlags::empty());
    }
    result
}

fn not_regular(path: &str) -> PathError {
    PathError::Other(format!("Not a regular file: {path}"))
}

/// Map a `std::io::Error` from reading/writing an in-scope file.
pub fn io_to_path_err(path: &str, e: &std::io::Error) -> PathError {
    match e.raw_os_error() {
        Some(n) => PathError::io(path, Errno::from_raw_os_error(n)),
        None => PathError::io(path, Errno::IO),
    }
}

/// fstat an opened descriptor and refuse anything but a regular file.
fn check_regular(path: &str, fd: OwnedFd) -> Result<(File, Stat), PathError> {
    let st = rfs::fstat(&fd).map_err(|e| PathError::io(path, e))?;
    match file_type(&st) {
        FileType::RegularFile => Ok((File::from(fd), st)),
        FileType::Directory => Err(PathError::io(path, Errno::ISDIR)),
        _ => Err(not_regular(path)),
    }
}

// ----------------------------------------------------------------------------------------
// Walking helpers: children are opened one component at a time with RESOLVE_NO_SYMLINKS, so
// a walk never follows a symlink, and never leaves the directory it was started from.

/// Kind of a directory entry (symlinks are never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (not followed).
    Symlink,
    /// FIFO, socket, device, unknown.
    Other,
}

impl EntryKind {
    fn from_file_type(t: FileType) -> Self {
        match t {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink,
            _ => EntryKind::Other,
        }
    }
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct DirEntryInfo {
    /// The name, lossily converted to UTF-8 for display.
    pub name: String,
    /// The raw name, for opening the entry.
    pub raw: CString,
    /// Its kind (from `d_type`, or `fstatat(AT_SYMLINK_NOFOLLOW)` when unknown).
    pub kind: EntryKind,
}

/// Read at most `max` entries of a directory (without `.` and `..`), sorted by raw name.
/// Returns the entries and whether more were left unread. `dir` may be any descriptor of the
/// directory (including `O_PATH`); it is reopened for reading.
pub fn read_dir(dir: BorrowedFd<'_>, max: usize) -> Result<(Vec<DirEntryInfo>, bool), Errno> {
    let rd = openat2_retry(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )?;
    let mut d = rfs::Dir::new(rd)?;
    let mut out = Vec::new();
    let mut more = false;
    for ent in &mut d {
        let ent = ent?;
        let raw = ent.file_name();
        let bytes = raw.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if out.len() >= max {
            more = true;
            break;
        }
        let kind = match ent.file_type() {
            FileType::Unknown => match rfs::statat(dir, raw, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => EntryKind::from_file_type(file_type(&st)),
                Err(_) => EntryKind::Other,
            },
            t => EntryKind::from_file_type(t),
        };
        out.push(DirEntryInfo {
            name: String::from_utf8_lossy(bytes).into_owned(),
            raw: raw.to_owned(),
            kind,
        });
    }
    out.sort_by(|a, b| a.raw.as_bytes().cmp(b.raw.as_bytes()));
    Ok((out, more))
}

/// Open a child directory of `dir` (a single component; never follows a symlink).
pub fn open_child_dir(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    let name = child_name(name)?;
    openat2_retry(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Open a child regular file of `dir` for reading (non-blocking, never follows a symlink);
/// anything but a regular file is refused with `EINVAL`.
pub fn open_child_regular(dir: BorrowedFd<'_>, name: &CStr) -> Result<(File, Stat), Errno> {
    let name = child_name(name)?;
    let fd = openat2_retry(
        dir,
        name,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    let st = rfs::fstat(&fd)?;
    if file_type(&st) != FileType::RegularFile {
        return Err(Errno::INVAL);
    }
    Ok((File::from(fd), st))
}

/// `lstat` of a child of `dir`.
pub fn stat_child(dir: BorrowedFd<'_>, name: &CStr) -> Result<Stat, Errno> {
    rfs::statat(dir, child_name(name)?, AtFlags::SYMLINK_NOFOLLOW)
}

fn child_name(name: &CStr) -> Result<&str, Errno> {
    let s = name.to_str().map_err(|_| Errno::ILSEQ)?;
    if s.is_empty() || s == "." || s == ".." || s.contains('/') {
        return Err(Errno::INVAL);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::{symlink, PermissionsExt};

    struct Fixture {
        _tmp: tempfile::TempDir,
        base: String,
        ro: String,
        rw: String,
        roots: Roots,
    }

    /// `<tmp>/ro` (read-only root), `<tmp>/rw` (read-write root), `<tmp>/rw-evil`,
    /// `<tmp>/outside/secret`.
    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let ro = format!("{base}/ro");
        let rw = format!("{base}/rw");
        for d in [
            &ro,
            &rw,
            &format!("{base}/rw-evil"),
            &format!("{base}/outside"),
        ] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(format!("{base}/outside/secret"), "secret").unwrap();
        std::fs::write(format!("{base}/rw-evil/secret"), "secret").unwrap();
        std::fs::write(format!("{ro}/a.txt"), "ro-a").unwrap();
        std::fs::create_dir(format!("{rw}/sub")).unwrap();
        std::fs::write(format!("{rw}/sub/b.txt"), "rw-b").unwrap();
        let spec = mcpd_ipc::SandboxSpec {
            read_paths: vec![ro.clone()],
            write_paths: vec![rw.clone()],
            ..Default::default()
        };
        let roots = Roots::open(&spec).unwrap();
        Fixture {
            _tmp: tmp,
            base,
            ro,
            rw,
            roots,
        }
    }

    fn read(roots: &Roots, p: &str) -> Result<String, PathError> {
        let (mut f, _) = roots.open_regular(p, Access::Read)?;
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        Ok(s)
    }

    #[test]
    fn reads_inside_roots() {
        let f = fixture();
        assert_eq!(read(&f.roots, &format!("{}/a.txt", f.ro)).unwrap(), "ro-a");
        assert_eq!(
            read(&f.roots, &format!("{}/sub/b.txt", f.rw)).unwrap(),
            "rw-b"
        );
        assert_eq!(
            read(&f.roots, &format!("{}//sub///b.txt", f.rw)).unwrap(),
            "rw-b"
        );
        // Relative paths resolve against the first root (the read-only one here).
        assert_eq!(read(&f.roots, "a.txt").unwrap(), "ro-a");
        assert_eq!(read(&f.roots, "./a.txt").unwrap(), "ro-a");
        // `..` that stays beneath the root is fine.
        assert_eq!(
            read(&f.roots, &format!("{}/sub/../sub/b.txt", f.rw)).unwrap(),
            "rw-b"
        );
    }

    #[test]
    fn escapes_are_generic_and_existence_blind() {
        let f = fixture();
        symlink(
            format!("{}/outside/secret", f.base),
            format!("{}/abs-link", f.rw),
        )
        .unwrap();
        symlink(
            format!("{}/outside/missing", f.base),
            format!("{}/abs-missing", f.rw),
        )
        .unwrap();
        symlink("../outside/secret", format!("{}/rel-link", f.rw)).unwrap();
        symlink("../outside/missing", format!("{}/rel-missing", f.rw)).unwrap();
        symlink("../outside", format!("{}/dir-link", f.rw)).unwrap();
        let cases = [
            format!("{}/../outside/secret", f.rw),
            format!("{}/../outside/missing", f.rw),
            "../outside/secret".to_owned(),
            "../outside/missing".to_owned(),
            format!("{}/outside/secret", f.base),
            format!("{}/outside/missing", f.base),
            "/etc/passwd".to_owned(),
            "/definitely/not/here".to_owned(),
            format!("{}/rw-evil/secret", f.base),
            format!("{}/rw-evil/missing", f.base),
            format!("{}/abs-link", f.rw),
            format!("{}/abs-missing", f.rw),
            format!("{}/rel-link", f.rw),
            format!("{}/rel-missing", f.rw),
            format!("{}/dir-link/secret", f.rw),
            format!("{}/dir-link/missing", f.rw),
            format!("/proc/self/root{}/../outside/secret", f.rw),
            format!("/proc/self/root{}/..", f.rw),
            format!("{}/sub/../../outside/secret", f.rw),
            format!("{}/..", f.rw),
            format!("{}/../rw-evil/..", f.rw),
        ];
        for c in &cases {
            let e = read(&f.roots, c).unwrap_err();
            assert_eq!(e, PathError::Outside, "{c}");
            assert_eq!(e.to_string(), OUTSIDE_ALLOWED);
            assert!(!e.to_string().contains(&f.base));
            for access in [Access::Read, Access::Write] {
                assert_eq!(
                    f.roots.open_path(c, access).unwrap_err().to_string(),
                    OUTSIDE_ALLOWED,
                    "{c}"
                );
            }
            assert_eq!(
                f.roots.write_file(c, b"x").unwrap_err().to_string(),
                OUTSIDE_ALLOWED,
                "{c}"
            );
            assert_eq!(
                f.roots.create_dir_all(c).unwrap_err().to_string(),
                OUTSIDE_ALLOWED,
                "{c}"
            );
        }
        // Nothing was created or changed outside.
        assert_eq!(
            std::fs::read_to_string(format!("{}/outside/secret", f.base)).unwrap(),
            "secret"
        );
        assert!(!std::path::Path::new(&format!("{}/outside/missing", f.base)).exists());
    }

    #[test]
    fn swapped_directory_is_caught() {
        let f = fixture();
        let p = format!("{}/sub/b.txt", f.rw);
        assert_eq!(read(&f.roots, &p).unwrap(), "rw-b");
        std::fs::rename(format!("{}/sub", f.rw), format!("{}/sub-old", f.rw)).unwrap();
        std::fs::write(format!("{}/outside/b.txt", f.base), "outside").unwrap();
        symlink(format!("{}/outside", f.base), format!("{}/sub", f.rw)).unwrap();
        assert_eq!(read(&f.roots, &p).unwrap_err(), PathError::Outside);
        assert_eq!(
            f.roots.write_file(&p, b"x").unwrap_err(),
            PathError::Outside
        );
        assert_eq!(
            std::fs::read_to_string(format!("{}/outside/b.txt", f.base)).unwrap(),
            "outside"
        );
    }

    #[test]
    fn write_needs_a_writable_root() {
        let f = fixture();
        let p = format!("{}/new.txt", f.ro);
        let e = f.roots.write_file(&p, b"x").unwrap_err();
        assert_eq!(e, PathError::ReadOnly(p.clone()));
        assert!(e.to_string().starts_with("Access denied"));
        assert!(f.roots.create_dir_all(&format!("{}/d", f.ro)).is_err());
        assert!(!std::path::Path::new(&p).exists());
        // Relative writes go to the first root, which is read-only here.
        assert!(matches!(
            f.roots.write_file("rel.txt", b"x"),
            Err(PathError::ReadOnly(_))
        ));
    }

    #[test]
    fn writes_create_and_replace() {
        let f = fixture();
        let p = format!("{}/sub/new.txt", f.rw);
        f.roots.write_file(&p, b"one").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        f.roots.write_file(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "permission bits are kept");
        // A symlink that stays inside is written through.
        symlink("sub/new.txt", format!("{}/inner-link", f.rw)).unwrap();
        f.roots
            .write_file(&format!("{}/inner-link", f.rw), b"three")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "three");
        assert!(std::fs::symlink_metadata(format!("{}/inner-link", f.rw))
            .unwrap()
            .file_type()
            .is_symlink());
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(format!("{}/sub", f.rw))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        // Writing a directory or the root is refused.
        assert!(f.roots.write_file(&format!("{}/sub", f.rw), b"x").is_err());
        assert!(f.roots.write_file(&f.rw, b"x").is_err());
    }

    #[test]
    fn create_dir_all_works_and_is_idempotent() {
        let f = fixture();
        let p = format!("{}/x/y/z", f.rw);
        f.roots.create_dir_all(&p).unwrap();
        f.roots.create_dir_all(&p).unwrap();
        assert!(std::path::Path::new(&p).is_dir());
        f.roots.create_dir_all(&f.rw).unwrap();
        // A file in the way.
        let e = f
            .roots
            .create_dir_all(&format!("{}/sub/b.txt/c", f.rw))
            .unwrap_err();
        assert_eq!(
            e,
            PathError::io(&format!("{}/sub/b.txt/c", f.rw), Errno::NOTDIR)
        );
    }

    #[test]
    fn parent_rejects_dot_components() {
        let f = fixture();
        for p in [
            format!("{}/sub/.", f.rw),
            format!("{}/sub/..", f.rw),
            format!("{}/sub/../", f.rw),
        ] {
            assert!(matches!(
                f.roots.parent(&p, Access::Write),
                Err(PathError::Invalid(_))
            ));
        }
        let parent = f
            .roots
            .parent(&format!("{}/sub/b.txt", f.rw), Access::Write)
            .unwrap();
        assert_eq!(parent.name, "b.txt");
        assert!(!parent.is_root);
        assert!(f.roots.parent(&f.rw, Access::Write).unwrap().is_root);
    }

    #[test]
    fn invalid_client_strings() {
        let f = fixture();
        assert!(matches!(
            read(&f.roots, "C:\\x"),
            Err(PathError::Invalid(_))
        ));
        assert!(matches!(read(&f.roots, "c:/x"), Err(PathError::Invalid(_))));
        // The empty path is the first root (as `path.resolve(root, "")` in the reference).
        assert!(f.roots.open_path("", Access::Read).is_ok());
        assert_eq!(f.roots.display_path(""), f.ro);
        assert_eq!(f.roots.display_path("./x/./y"), format!("{}/x/y", f.ro));
        assert!(matches!(read(&f.roots, "a\0b"), Err(PathError::Invalid(_))));
        let long = format!("{}/{}", f.rw, "a".repeat(MAX_PATH_LEN));
        assert!(matches!(read(&f.roots, &long), Err(PathError::Invalid(_))));
    }

    #[test]
    fn fifo_is_refused_promptly() {
        let f = fixture();
        let p = format!("{}/fifo", f.rw);
        rfs::mkfifoat(rfs::CWD, p.as_str(), Mode::from_raw_mode(0o644)).unwrap();
        let start = std::time::Instant::now();
        let e = read(&f.roots, &p).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(e.to_string(), format!("Not a regular file: {p}"));
        assert!(f.roots.write_file(&p, b"x").is_err());
    }

    #[test]
    fn not_found_inside_echoes_client_path() {
        let f = fixture();
        let p = format!("{}/nope.txt", f.rw);
        let e = read(&f.roots, &p).unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), format!("No such file or directory: {p}"));
    }

    #[test]
    fn nested_roots_pick_the_most_specific_and_fall_back() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let base = base.to_str().unwrap();
        std::fs::create_dir_all(format!("{base}/a/b")).unwrap();
        std::fs::write(format!("{base}/a/c.txt"), "c").unwrap();
        let spec = mcpd_ipc::SandboxSpec {
            read_paths: vec![format!("{base}/a")],
            write_paths: vec![format!("{base}/a/b"), format!("{base}/a")],
            ..Default::default()
        };
        let roots = Roots::open(&spec).unwrap();
        // `/a` is in both lists: writable, listed once.
        assert_eq!(roots.list().len(), 2);
        assert!(roots.list().iter().all(|r| r.writable));
        // `/a/b/../c.txt` escapes `/a/b` but is inside `/a`.
        assert_eq!(read(&roots, &format!("{base}/a/b/../c.txt")).unwrap(), "c");
        roots.write_file(&format!("{base}/a/b/new"), b"n").unwrap();
        assert_eq!(
            std::fs::read_to_string(format!("{base}/a/b/new")).unwrap(),
            "n"
        );
    }

    #[test]
    fn file_roots_are_supported() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let base = base.to_str().unwrap();
        std::fs::write(format!("{base}/one.txt"), "one").unwrap();
        std::fs::write(format!("{base}/sibling.txt"), "sibling").unwrap();
        let spec = mcpd_ipc::SandboxSpec {
            write_paths: vec![format!("{base}/one.txt")],
            ..Default::default()
        };
        let roots = Roots::open(&spec).unwrap();
        assert_eq!(read(&roots, &format!("{base}/one.txt")).unwrap(), "one");
        assert_eq!(
            read(&roots, &format!("{base}/sibling.txt")).unwrap_err(),
            PathError::Outside
        );
        roots
            .write_file(&format!("{base}/one.txt"), b"two")
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(format!("{base}/one.txt")).unwrap(),
            "two"
        );
        // Swapped for a symlink to a sibling: refused.
        std::fs::remove_file(format!("{base}/one.txt")).unwrap();
        symlink("sibling.txt", format!("{base}/one.txt")).unwrap();
        assert_eq!(
            read(&roots, &format!("{base}/one.txt")).unwrap_err(),
            PathError::Outside
        );
        assert_eq!(
            roots
                .write_file(&format!("{base}/one.txt"), b"x")
                .unwrap_err(),
            PathError::Outside
        );
        assert_eq!(
            std::fs::read_to_string(format!("{base}/sibling.txt")).unwrap(),
            "sibling"
        );
    }

    #[test]
    fn walk_helpers_never_follow_symlinks() {
        let f = fixture();
        symlink(format!("{}/outside", f.base), format!("{}/out", f.rw)).unwrap();
        symlink("sub", format!("{}/in", f.rw)).unwrap();
        let dir = f.roots.open_dir(&f.rw, Access::Read).unwrap();
        let (entries, more) = read_dir(dir.as_fd(), 100).unwrap();
        assert!(!more);
        let names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(
            names,
            vec![
                ("in", EntryKind::Symlink),
                ("out", EntryKind::Symlink),
                ("sub", EntryKind::Dir)
            ]
        );
        for e in &entries {
            let r = open_child_dir(dir.as_fd(), &e.raw);
            assert_eq!(r.is_ok(), e.kind == EntryKind::Dir, "{}", e.name);
        }
        let (_, more) = read_dir(dir.as_fd(), 2).unwrap();
        assert!(more);
        assert!(open_child_dir(dir.as_fd(), c"..").is_err());
    }
}
