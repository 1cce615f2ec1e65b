//! Step 5: the Landlock ruleset.
//!
//! # Pinned ABI: 6
//!
//! ABI 6 (Linux 6.12) is the first with everything the architecture asks for: all
//! filesystem rights including `Refer` (v2), `Truncate` (v3) and `IoctlDev` (v5), TCP
//! bind/connect (v4), and the abstract-Unix-socket and signal scopes (v6). The `landlock`
//! crate's ABI 7 adds no access right, network right or scope — only the audit-logging flags
//! of `landlock_restrict_self` (`LOG_SAME_EXEC_OFF`, `LOG_NEW_EXEC_ON`, `LOG_SUBDOMAINS_OFF`),
//! which we leave at the kernel defaults — so pinning 6 enforces exactly the same rights and
//! keeps "fully enforced" reachable on 6.12–6.14 kernels. Moving to ABI 9 (`ResolveUnix`, named
//! Unix sockets) or 10 (UDP) is a deliberate change: bump [`PINNED_ABI`], review the rights
//! below, and test on both kernels.
//!
//! # Rights
//!
//! Every filesystem right of the pinned ABI is *handled* (denied unless a rule allows it):
//!
//! | paths        | rights                                                                     |
//! |--------------|----------------------------------------------------------------------------|
//! | `read_paths` | `ReadFile`, `ReadDir`                                                      |
//! | `write_paths`| every right but `Execute`, `MakeChar`, `MakeBlock`, `IoctlDev`: `ReadFile ReadDir WriteFile Truncate RemoveDir RemoveFile MakeDir MakeReg MakeSock MakeFifo MakeSym Refer` |
//! | the view's private `/tmp`, `/dev/shm` | as `write_paths`                                |
//! | the view's `/proc` | `ReadFile`, `ReadDir`                                                |
//! | the view's devices (`/dev/null`, `zero`, `full`, `random`, `urandom`) | as `device_paths` |
//! | `exec_paths` | `ReadFile`, `ReadDir`, `Execute`                                           |
//! | `exec.system_read_paths` | `ReadFile`, `ReadDir` (libraries, loader cache: only when execution is granted) |
//! | `exec.device_paths` | `ReadFile`, `WriteFile` (`/dev/null`, `/dev/zero`, `/dev/urandom`)   |
//!
//! A rule on a non-directory keeps only the rights that apply to files (Landlock refuses
//! directory rights on a file). `BindTcp | ConnectTcp` are handled with no rule (all TCP
//! bind/connect denied) unless the spec grants network, in which case TCP is not handled at
//! all (and seccomp allows `AF_INET`/`AF_INET6` sockets). Both scopes are always on.
//!
//! # Compatibility
//!
//! The ruleset is built best-effort, so an older kernel yields `PartiallyEnforced` or
//! `NotEnforced` instead of an error; anything but `FullyEnforced` is then a hard error unless
//! the operator set `allow_degraded`.

use ::landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use mcpd_ipc::{LandlockStatus, SandboxSpec};

use super::ConfineError;

/// The Landlock ABI whose rights are requested (see the module docs).
pub const PINNED_ABI: ABI = ABI::V6;
const PINNED_ABI_NUMBER: u32 = 6;
/// First ABI with TCP rights.
const NET_ABI: u32 = 4;
/// First ABI with scopes.
const SCOPE_ABI: u32 = 6;

/// What step 5 achieved.
#[derive(Debug)]
pub(super) struct Outcome {
    pub kernel_abi: u32,
    pub status: LandlockStatus,
    pub net: bool,
    pub scoped: bool,
}

/// Rights of a read-only path.
fn read_access() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

/// Rights of a read-write path: everything the pinned ABI handles except `Execute`, device
/// creation (`MakeChar`, `MakeBlock`) and device ioctls (`IoctlDev`).
fn write_access() -> BitFlags<AccessFs> {
    AccessFs::from_all(PINNED_ABI)
        & !(AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock | AccessFs::IoctlDev)
}

/// Rights of a path whose programs may be executed.
fn exec_access() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::Execute
}

/// Rights of a device file commands may use (`/dev/null`, `/dev/zero`, `/dev/urandom`): read
/// and write, no ioctl.
fn device_access() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::WriteFile
}

fn ruleset_err(context: &'static str) -> impl FnOnce(::landlock::RulesetError) -> ConfineError {
    move |e| ConfineError::Landlock {
        context,
        message: e.to_string(),
    }
}

/// Build and enforce the ruleset on the calling thread (inherited by threads and processes
/// created afterwards).
pub(super) fn apply(
    spec: &SandboxSpec,
    view: Option<&super::view::Built>,
) -> Result<Outcome, ConfineError> {
    let deny_tcp = !spec.allow_network;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(PINNED_ABI))
        .map_err(ruleset_err("handling filesystem rights"))?;
    if deny_tcp {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(ruleset_err("handling TCP rights"))?;
    }
    let mut created = ruleset
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(ruleset_err("scoping abstract Unix sockets and signals"))?
        .create()
        .map_err(ruleset_err("creating the ruleset"))?;

    let groups = [
        ("read", &spec.read_paths, read_access()),
        ("write", &spec.write_paths, write_access()),
        ("exec", &spec.exec_paths, exec_access()),
        ("system", &spec.exec.system_read_paths, read_access()),
        ("device", &spec.exec.device_paths, device_access()),
    ];
    // The private view's own paths: its /tmp and /dev/shm (private tmpfs, read-write but never
    // executable), its devices, and its own /proc (read-only).
    let (private, devices, proc_dir) = match view {
        Some(v) => (
            v.private_writable.clone(),
            v.devices.clone(),
            if v.proc {
                vec!["/proc".to_string()]
            } else {
                vec![]
            },
        ),
        None => (vec![], vec![], vec![]),
    };
    let extra = [
        ("private", &private, write_access()),
        ("device", &devices, device_access()),
        ("proc", &proc_dir, read_access()),
    ];
    for (kind, paths, access) in groups.iter().chain(extra.iter()) {
        let (kind, access) = (*kind, *access);
        for path in paths.iter() {
            let rule = path_rule(kind, path, access)?;
            created = created
                .add_rule(rule)
                .map_err(ruleset_err("adding a path rule"))?;
        }
    }

    // no_new_privs is already set (step 4); the crate sets it again, idempotently.
    let status = created
        .restrict_self()
        .map_err(ruleset_err("landlock_restrict_self"))?;
    outcome(&status, deny_tcp, spec.allow_degraded)
}

/// One rule, from a path opened now (`O_PATH`): a missing path is an error.
fn path_rule(
    kind: &'static str,
    path: &str,
    access: BitFlags<AccessFs>,
) -> Result<PathBeneath<PathFd>, ConfineError> {
    let refuse = |message: String| ConfineError::LandlockPath {
        kind,
        path: path.to_string(),
        message,
    };
    if !path.starts_with('/') {
        // A relative path would be resolved against whatever the cwd is.
        return Err(refuse("not an absolute path".into()));
    }
    let fd = PathFd::new(path).map_err(|e| refuse(e.to_string()))?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| refuse(format!("fstat: {e}")))?;
    let is_dir = rustix::fs::FileType::from_raw_mode(stat.st_mode).is_dir();
    let access = if is_dir {
        access
    } else {
        access & AccessFs::from_file(PINNED_ABI)
    };
    Ok(PathBeneath::new(fd, access))
}

fn outcome(
    status: &RestrictionStatus,
    deny_tcp: bool,
    allow_degraded: bool,
) -> Result<Outcome, ConfineError> {
    let kernel_abi = match status.landlock {
        ::landlock::LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => kernel_abi
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or_else(|| abi_number(effective_abi)),
        ::landlock::LandlockStatus::NotEnabled | ::landlock::LandlockStatus::NotImplemented => 0,
    };
    let status = match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockStatus::FullyEnforced,
        RulesetStatus::PartiallyEnforced => LandlockStatus::PartiallyEnforced,
        RulesetStatus::NotEnforced => LandlockStatus::NotEnforced,
    };
    if status != LandlockStatus::FullyEnforced && !allow_degraded {
        return Err(ConfineError::LandlockDegraded {
            status,
            abi: kernel_abi,
            needed: PINNED_ABI_NUMBER,
        });
    }
    let enforced = status != LandlockStatus::NotEnforced;
    Ok(Outcome {
        kernel_abi,
        status,
        net: enforced && deny_tcp && kernel_abi >= NET_ABI,
        scoped: enforced && kernel_abi >= SCOPE_ABI,
    })
}

/// The number of a known ABI (the crate's enum is `#[non_exhaustive]`; its `Display` prints
/// the number).
fn abi_number(abi: ABI) -> u32 {
    abi.to_string().parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_are_what_the_docs_say() {
        assert!(!write_access().contains(AccessFs::Execute));
        for right in [
            AccessFs::WriteFile,
            AccessFs::Truncate,
            AccessFs::Refer,
            AccessFs::MakeReg,
            AccessFs::RemoveFile,
            AccessFs::MakeSock,
        ] {
            assert!(write_access().contains(right), "{right:?}");
        }
        for right in [AccessFs::MakeChar, AccessFs::MakeBlock, AccessFs::IoctlDev] {
            assert!(!write_access().contains(right), "{right:?}");
        }
        assert_eq!(
            write_access()
                | AccessFs::Execute
                | AccessFs::MakeChar
                | AccessFs::MakeBlock
                | AccessFs::IoctlDev,
            AccessFs::from_all(PINNED_ABI)
        );
        assert!(!read_access().contains(AccessFs::Execute));
        assert!(exec_access().contains(AccessFs::Execute));
        assert_eq!(abi_number(PINNED_ABI), PINNED_ABI_NUMBER);
        // ABI 7 adds no right: pinning 6 loses nothing.
        assert_eq!(AccessFs::from_all(ABI::V7), AccessFs::from_all(ABI::V6));
        assert_eq!(AccessNet::from_all(ABI::V7), AccessNet::from_all(ABI::V6));
        assert_eq!(Scope::from_all(ABI::V7), Scope::from_all(ABI::V6));
    }
}
