//! Identity: the worker holds no privilege, ever.
//!
//! [`drop_privileges`] empties the capability bounding set, locks the securebits (no
//! capabilities for uid 0 on exec, no set-uid fix-up, no ambient raise), switches to the
//! worker's uid/gid with no supplementary groups when it started as root, clears the
//! effective, permitted, inheritable and ambient sets, and checks the result with `capget`.
//!
//! # What it does not do
//!
//! * It chooses no uid: the broker derives it from `server.worker_uids` (or, for a root that
//!   cannot be idmapped, `isolate` picks the root's owner: the documented fallback).
//! * In an unprivileged user namespace the kernel forbids `setgroups` (the broker's own
//!   supplementary groups stay, shown as `nogroup`); the broker's unit should not have any.
//!
//! # What it trusts
//!
//! The kernel's answers; it runs single-threaded at start-up (credentials are per thread).

use rustix::process::{Gid, Uid};
use rustix::thread::{CapabilitiesSecureBits, CapabilitySet, CapabilitySets};

use super::ConfineError;

/// Highest capability number tried when emptying the bounding set (the kernel's
/// `CAP_LAST_CAP` is 40 on 6.x; numbers past it answer `EINVAL` and end the loop).
const MAX_CAP: u32 = 63;

fn id_err(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> ConfineError {
    move |e| ConfineError::Identity {
        message: format!("{what}: {e}"),
    }
}

/// Whether this thread holds `CAP_SETPCAP` (needed for the bounding set and securebits).
fn has_setpcap() -> bool {
    rustix::thread::capabilities(None)
        .map(|c| c.effective.contains(CapabilitySet::SETPCAP))
        .unwrap_or(false)
}

#[allow(unsafe_code)]
fn drop_bounding_set() -> Result<(), ConfineError> {
    for cap in 0..=MAX_CAP {
        // SAFETY: prctl(PR_CAPBSET_DROP, n) takes integers only and changes this thread's
        // bounding set; no memory is passed.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past CAP_LAST_CAP
            }
            return Err(ConfineError::Identity {
                message: format!("PR_CAPBSET_DROP {cap}: {e}"),
            });
        }
    }
    Ok(())
}

/// What [`drop_privileges`] did.
#[derive(Debug, Clone, Copy)]
pub struct Dropped {
    /// The uid the process now has (as this namespace sees it).
    pub uid: u32,
    /// All capability sets are empty (checked with `capget`).
    pub cleared: bool,
}

/// Drop everything. `to`: the (uid, gid) to switch to (only when the process is root in its
/// namespace and the spec names one). Restores `PR_SET_DEATHSIG` afterwards, which a
/// credential change clears, and re-checks that the parent is still `parent`.
pub fn drop_privileges(
    to: Option<(u32, u32)>,
    death_signal_parent: Option<DeathCheck>,
) -> Result<Dropped, ConfineError> {
    if has_setpcap() {
        drop_bounding_set()?;
        let bits = CapabilitiesSecureBits::NO_ROOT
            | CapabilitiesSecureBits::NO_ROOT_LOCKED
            | CapabilitiesSecureBits::NO_SETUID_FIXUP
            | CapabilitiesSecureBits::NO_SETUID_FIXUP_LOCKED
            | CapabilitiesSecureBits::KEEP_CAPS_LOCKED
            | CapabilitiesSecureBits::NO_CAP_AMBIENT_RAISE
            | CapabilitiesSecureBits::NO_CAP_AMBIENT_RAISE_LOCKED;
        rustix::thread::set_capabilities_secure_bits(bits).map_err(id_err("securebits"))?;
    }
    if let Some((uid, gid)) = to {
        rustix::thread::set_thread_groups(&[]).map_err(id_err("setgroups"))?;
        let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
        rustix::thread::set_thread_res_gid(g, g, g).map_err(id_err("setresgid"))?;
        rustix::thread::set_thread_res_uid(u, u, u).map_err(id_err("setresuid"))?;
    }
    let empty = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    rustix::thread::set_capabilities(None, empty).map_err(id_err("capset"))?;
    // Ambient capabilities need permitted+inheritable, both empty now; clear them anyway.
    rustix::thread::clear_ambient_capability_set().map_err(id_err("clearing ambient"))?;
    let now = rustix::thread::capabilities(None).map_err(id_err("capget"))?;
    let cleared =
        now.effective.is_empty() && now.permitted.is_empty() && now.inheritable.is_empty();
    if !cleared {
        return Err(ConfineError::Identity {
            message: format!("capabilities left after clearing: {now:?}"),
        });
    }
    // A credential change makes the process dumpable again and clears the death signal.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(id_err("PR_SET_DUMPABLE"))?;
    if let Some(check) = death_signal_parent {
        check.arm()?;
    }
    let uid = rustix::process::getuid().as_raw();
    if let Some((want, _)) = to {
        if uid != want {
            return Err(ConfineError::Identity {
                message: format!("uid is {uid} after switching to {want}"),
            });
        }
    }
    Ok(Dropped { uid, cleared })
}

/// How to verify, after arming `PR_SET_PDEATHSIG`, that the parent has not died already.
#[derive(Debug, Clone, Copy)]
pub enum DeathCheck {
    /// `getppid()` must still return this pid.
    Parent(i32),
    /// The parent holds the write end of this pipe open; a hang-up means it died.
    Pipe(i32),
}

impl DeathCheck {
    /// Arm `PR_SET_PDEATHSIG(SIGKILL)` and check that the parent is still there.
    #[allow(unsafe_code)]
    pub fn arm(self) -> Result<(), ConfineError> {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(id_err("PR_SET_PDEATHSIG"))?;
        let alive = match self {
            DeathCheck::Parent(pid) => {
                rustix::process::getppid().map_or(0, |p| p.as_raw_pid()) == pid
            }
            DeathCheck::Pipe(fd) => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll reads and writes exactly one valid, exclusively borrowed
                // `pollfd`; a zero timeout never blocks.
                let rc = unsafe { libc::poll(&mut p, 1, 0) };
                !(rc < 0 || p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
            }
        };
        if alive {
            Ok(())
        } else {
            Err(ConfineError::Identity {
                message: "the parent process exited during start-up".into(),
            })
        }
    }
}
