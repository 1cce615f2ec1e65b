//! `mcpd-hostile-worker`: a test worker that speaks the IPC handshake and then breaks the
//! protocol on purpose, to check that the broker ends it, answers the client and keeps serving
//! (`tests/tests/faults.rs`). A test binary, never installed. It does **not** confine itself: it
//! reports full enforcement in `Ready` (a lie the broker cannot detect; the broker's defence
//! is that it trusts nothing the worker sends).
//!
//! The broker starts workers with an empty environment and no arguments, so the behaviour is
//! chosen by a file: the first `.hostile-mode` found in one of the sandbox's read or write
//! roots (the test puts it in the client's root). Modes, applied to each `Call`:
//!
//! - `garbage`: a frame whose payload is not a message;
//! - `oversized`: a frame header announcing more than `MAX_FRAME`;
//! - `unknown-id`: a `Result` for a call id the broker never made;
//! - `duplicate`: the `Result`, then the same `Result` again;
//! - `early`: a `Result` before the handshake, instead of `Ready`;
//! - `reverse`: holds each odd call until the next one arrives and answers the two in reverse
//!   order (legal: answers are matched by id);
//! - anything else (or no file): answers each call once, correctly.
//!
//! Every answer is a text result `hostile <mode> <tool> <id>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

use mcpd_ipc::channel::{recv_blocking, send_blocking};
use mcpd_ipc::{
    BrokerToWorker, Content, Enforcement, IsolationReport, LandlockStatus, ToolResult,
    WorkerToBroker, MAX_FRAME, PROTOCOL_VERSION, WORKER_FD,
};

fn text(mode: &str, tool: &str, id: u64) -> WorkerToBroker {
    WorkerToBroker::Result {
        id,
        result: ToolResult {
            content: vec![Content::Text {
                text: format!("hostile {mode} {tool} {id}"),
            }],
            structured_json: None,
            is_error: false,
            input_required: None,
        },
    }
}

/// Write one raw packet on the socket (not a well-formed frame).
fn raw(fd: &OwnedFd, bytes: &[u8]) {
    let _ = rustix::net::send(fd, bytes, rustix::net::SendFlags::NOSIGNAL);
}

fn main() -> ExitCode {
    // It passes the broker's start-up check like a real worker; the hostility starts after.
    if std::env::args_os().nth(1).is_some_and(|a| a == "--version") {
        println!("{}", mcpd_worker::serve::version_line());
        return ExitCode::SUCCESS;
    }
    // SAFETY: the broker passes its end of the socketpair as fd 3 (`WORKER_FD`); nothing else
    // in this process owns it, and it is taken once, here.
    #[allow(unsafe_code)]
    let fd = unsafe { OwnedFd::from_raw_fd(WORKER_FD) };
    let Ok(Some(BrokerToWorker::Confine { spec, .. })) =
        recv_blocking::<BrokerToWorker>(fd.as_fd(), MAX_FRAME)
    else {
        return ExitCode::from(11);
    };
    let mode = spec
        .read_paths
        .iter()
        .chain(&spec.write_paths)
        .find_map(|r| std::fs::read_to_string(format!("{r}/.hostile-mode")).ok())
        .map(|m| m.trim().to_string())
        .unwrap_or_default();
    eprintln!("mcpd-hostile-worker: mode {mode:?}");
    if mode == "early" {
        let _ = send_blocking(fd.as_fd(), &text(&mode, "none", 1));
    }
    let ready = WorkerToBroker::Ready {
        version: PROTOCOL_VERSION,
        enforcement: Enforcement {
            landlock_abi: 6,
            landlock: LandlockStatus::FullyEnforced,
            landlock_net: true,
            landlock_scoped: true,
            seccomp: true,
            no_new_privs: true,
            isolation: IsolationReport {
                namespaces: true,
                network_namespace: true,
                capabilities_cleared: true,
                proc: true,
                ..IsolationReport::default()
            },
        },
        tools: mcpd_worker::Registry::builtin().descriptors(),
    };
    if send_blocking(fd.as_fd(), &ready).is_err() {
        return ExitCode::from(13);
    }
    let mut held: Option<(String, u64)> = None;
    loop {
        let msg = match recv_blocking::<BrokerToWorker>(fd.as_fd(), MAX_FRAME) {
            Ok(Some(m)) => m,
            Ok(None) => return ExitCode::SUCCESS,
            Err(_) => return ExitCode::from(13),
        };
        let (tool, id) = match msg {
            BrokerToWorker::Call { id, tool, .. } => (tool, id),
            BrokerToWorker::Shutdown => return ExitCode::SUCCESS,
            _ => continue,
        };
        let sent = match mode.as_str() {
            // A frame of 8 bytes that decodes to no message (variant index out of range).
            "garbage" => {
                raw(&fd, &[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
                Ok(())
            }
            "oversized" => {
                let mut p = u32::try_from(MAX_FRAME + 1).unwrap().to_le_bytes().to_vec();
                p.extend_from_slice(&[0u8; 64]);
                raw(&fd, &p);
                Ok(())
            }
            "unknown-id" => send_blocking(fd.as_fd(), &text(&mode, &tool, id + 1000)),
            "duplicate" => send_blocking(fd.as_fd(), &text(&mode, &tool, id))
                .and_then(|()| send_blocking(fd.as_fd(), &text(&mode, &tool, id))),
            "reverse" => match held.take() {
                None => {
                    held = Some((tool, id));
                    Ok(())
                }
                Some((t0, id0)) => send_blocking(fd.as_fd(), &text(&mode, &tool, id))
                    .and_then(|()| send_blocking(fd.as_fd(), &text(&mode, &t0, id0))),
            },
            _ => send_blocking(fd.as_fd(), &text(&mode, &tool, id)),
        };
        if sent.is_err() {
            return ExitCode::from(13);
        }
    }
}
