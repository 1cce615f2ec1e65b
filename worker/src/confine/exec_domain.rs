//! Per-program exec domains: every process the worker starts (a `run_command` program, a
//! shell command line, a code-session interpreter, an operator tool) runs in a nested Landlock
//! domain of its own that may execute only that program's *exec set*: the program, its `#!`
//! interpreter chain, the dynamic loader and the helper files or directories the operator
//! declared for it (`exec_helpers`). The broker computes each set (`broker/src/sandbox.rs`).
//!
//! # Why
//!
//! The worker's own domain (step 5, [`super::landlock_rules`]) lets the *union* of the client's
//! programs be executed. Without a domain per program, any granted program could start any other
//! one with any arguments: `git status` runs a repository's `core.fsmonitor` hook, a python3
//! code session calls `subprocess.run(["git", ...])` past git's `exec_args`, `env B` runs `B`.
//! With it, `git` can execute only git (and its declared `git-core`), `python3` only python3.
//!
//! # How
//!
//! * [`ExecDomain::build`] runs in the worker, **before** the fork: it creates a ruleset that
//!   handles only `AccessFs::Execute` and adds an `Execute` rule per path of the set (each
//!   opened `O_PATH` now: a missing path is an error, never a silently different domain).
//! * The child's `pre_exec` hook ([`super::child::ChildSetup::exec_domain`]) makes exactly one
//!   raw, async-signal-safe syscall: `landlock_restrict_self(fd, 0)`. `no_new_privs` is already
//!   set (the worker set it in step 4 and the child inherits it). The ruleset fd is
//!   close-on-exec, so the program never holds it.
//! * Landlock domains only stack: the worker's outer domain (read/write roots, TCP, scopes)
//!   still applies in full; the nested one only takes `Execute` away from everything outside the
//!   set, for that process and everything it starts.
//!
//! # Without Landlock
//!
//! A worker runs without an enforced Landlock domain only when the operator set
//! `allow_degraded_sandbox`. On such a kernel the crate cannot create a ruleset
//! ([`ExecDomain::enforced`] is false) and programs start without a nested domain, like the
//! outer one: degraded, as the operator accepted.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use ::landlock::{
    AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr,
};

/// Most paths in one exec set (a program with its chain, loaders and helpers is a handful; the
/// shell's set is every program of the client).
pub const MAX_EXEC_SET: usize = 4096;

/// Why a domain could not be built. Operator-facing detail; the client is told only that the
/// program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ExecDomainError {
    /// The set is empty: nothing could be executed, not even the program (a spec bug).
    #[error("empty exec set")]
    Empty,
    /// Too many paths.
    #[error("exec set has {0} paths (at most {MAX_EXEC_SET})")]
    TooLarge(usize),
    /// A path is relative, missing or cannot be opened.
    #[error("exec set path {path:?}: {message}")]
    Path {
        /// the path from the spec
        path: String,
        /// why
        message: String,
    },
    /// The ruleset could not be created or filled.
    #[error("exec domain ruleset: {0}")]
    Ruleset(String),
}

/// A ruleset that lets exactly one exec set be executed, ready for the child's `pre_exec`.
#[derive(Debug)]
pub struct ExecDomain {
    fd: Option<OwnedFd>,
}

impl ExecDomain {
    /// Build the domain of `set` (absolute paths of files or directories). Call it before the
    /// fork; keep the value alive until the child has been spawned.
    pub fn build<S: AsRef<str>>(set: &[S]) -> Result<Self, ExecDomainError> {
        if set.is_empty() {
            return Err(ExecDomainError::Empty);
        }
        if set.len() > MAX_EXEC_SET {
            return Err(ExecDomainError::TooLarge(set.len()));
        }
        let err = |e: ::landlock::RulesetError| ExecDomainError::Ruleset(e.to_string());
        let mut created = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::Execute)
            .map_err(err)?
            .create()
            .map_err(err)?;
        for path in set {
            let path = path.as_ref();
            let refuse = |message: String| ExecDomainError::Path {
                path: path.to_string(),
                message,
            };
            if !path.starts_with('/') {
                return Err(refuse("not an absolute path".into()));
            }
            let fd = PathFd::new(path).map_err(|e| refuse(e.to_string()))?;
            created = created
                .add_rule(PathBeneath::new(fd, AccessFs::Execute))
                .map_err(err)?;
        }
        Ok(Self {
            fd: Option::<OwnedFd>::from(created),
        })
    }

    /// Whether the kernel will enforce the domain (false only on a kernel without Landlock,
    /// where the worker itself runs degraded by the operator's choice).
    pub fn enforced(&self) -> bool {
        self.fd.is_some()
    }

    /// The ruleset fd for [`super::child::ChildSetup::exec_domain`].
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_relative_and_missing_sets_are_refused() {
        assert!(matches!(
            ExecDomain::build::<&str>(&[]),
            Err(ExecDomainError::Empty)
        ));
        assert!(matches!(
            ExecDomain::build(&["bin/sh"]),
            Err(ExecDomainError::Path { .. })
        ));
        assert!(matches!(
            ExecDomain::build(&["/bin/sh", "/nonexistent/mcpd-exec-domain"]),
            Err(ExecDomainError::Path { .. })
        ));
    }
}
