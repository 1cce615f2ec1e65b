//! The service manager's side of the broker: sockets systemd passed (socket activation,
//! `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`) and state notifications (`sd_notify`: `READY=1`
//! once every listener serves, `RELOADING=1` … `READY=1` around a `SIGHUP` reload,
//! `STOPPING=1` when a stop begins, each with a `STATUS=` line, and `WATCHDOG=1` at half the unit's
//! `WatchdogSec=`).
//!
//! What it does: takes the passed descriptors once, at start (before any other code could open
//! descriptors of those numbers), and hands each to the transport that asks for its name;
//! sends notifications through the `sd-notify` crate (a no-op without `NOTIFY_SOCKET`).
//! What it does not do: decide what a socket serves (the transports check the kind of socket
//! they get) or keep any state of the service manager.
//! What it trusts: the environment systemd set, only after `LISTEN_PID` names this process.
//! Workers never see any of it: their environment is cleared at spawn.
#![forbid(unsafe_code)]

use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Duration;

use sd_notify::NotifyState;

const LOG: &str = "mcpd";

/// The descriptors systemd passed, by `FileDescriptorName=` (systemd's default name is the
/// socket unit's name, e.g. `mcpd-http.socket`).
#[derive(Debug, Default)]
pub struct ListenFds {
    fds: Mutex<Vec<(String, OwnedFd)>>,
}

impl ListenFds {
    /// Take every passed descriptor and remove the variables (so nothing started later sees
    /// them). Fails when the variables are absent, name another process, or name descriptors
    /// that are not open: a unit that asked for socket activation and got none must not start.
    pub fn take() -> std::io::Result<Self> {
        let e = |m: String| std::io::Error::other(format!("socket activation: {m}"));
        let var = |k: &str| std::env::var(k).ok();
        let pid = var("LISTEN_PID").and_then(|v| v.parse::<u32>().ok());
        let fds = var("LISTEN_FDS").and_then(|v| v.parse::<i32>().ok());
        let names = var("LISTEN_FDNAMES").unwrap_or_default();
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(k);
        }
        if pid != Some(std::process::id()) {
            return Err(e(format!(
                "LISTEN_PID is {pid:?}, not this process ({}): no socket was passed to mcpd",
                std::process::id()
            )));
        }
        let n = fds
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| e("LISTEN_FDS names no descriptor (1 to 64)".into()))?;
        let mut names = names.split(':');
        let mut taken = Vec::new();
        for i in 0..n {
            let fd = crate::sys::take_inherited_fd(3 + i)
                .ok_or_else(|| e(format!("descriptor {} is not open", 3 + i)))?;
            rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
                .map_err(|x| e(x.to_string()))?;
            taken.push((names.next().unwrap_or("").to_string(), fd));
        }
        Ok(Self {
            fds: Mutex::new(taken),
        })
    }

    /// The descriptors named `name`; when none carries that name and exactly one descriptor
    /// was passed (a unit without `FileDescriptorName=`), that one.
    pub fn named(&self, name: &str) -> Vec<OwnedFd> {
        let Ok(mut fds) = self.fds.lock() else {
            return Vec::new();
        };
        if !fds.iter().any(|(n, _)| n == name) {
            return if fds.len() == 1 {
                fds.drain(..).map(|(_, fd)| fd).collect()
            } else {
                Vec::new()
            };
        }
        let (mine, rest): (Vec<_>, Vec<_>) = fds.drain(..).partition(|(n, _)| n == name);
        *fds = rest;
        mine.into_iter().map(|(_, fd)| fd).collect()
    }

    /// Names of the descriptors nobody took (a unit passing sockets mcpd does not serve).
    pub fn left_over(&self) -> Vec<String> {
        self.fds
            .lock()
            .map(|f| f.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default()
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(target: LOG, "sd_notify: {e}");
    }
}

/// `READY=1` with a status line: start-up is complete, every listener serves.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` (with the `MONOTONIC_USEC=` systemd 253+ asks for): a reload begins; end it
/// with [`reloaded`].
pub fn reloading() {
    send(&[
        NotifyState::Reloading,
        NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Custom("MONOTONIC_USEC=0")),
        NotifyState::Status("reloading the policy"),
    ]);
}

/// `READY=1` after a reload, with a status saying how it went.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`: a stop begins (in-flight calls drain, then workers end, the audit log is
/// flushed).
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Ping the watchdog every half interval for as long as the runtime runs this task. A runtime
/// that stops polling its tasks (a deadlock, a thread stuck in a blocking call) stops the
/// pings, and systemd restarts the service.
pub async fn watchdog(interval: Duration) {
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}
