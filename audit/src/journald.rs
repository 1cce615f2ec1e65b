//! Best-effort forwarding of records to journald's native protocol socket.
//!
//! Each record becomes one datagram with the fields `MESSAGE`, `MESSAGE_ID` (a fixed 128-bit id
//! per event kind: the first 16 bytes of SHA-256("mcpd-audit-event\n" + event), hex),
//! `PRIORITY` (4 for events whose name mentions deny/fail/error, 5 for `log.*`, 6 otherwise),
//! `SYSLOG_IDENTIFIER=mcpd-audit`, `MCPD_EVENT`, `MCPD_SEQ` and `MCPD_RECORD` (the JSON line).
//! The socket is non-blocking and errors are ignored (reported once on stderr): forwarding never
//! delays or fails the log. Records too large for one datagram are dropped from the journal (the
//! file log still has them).

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// Journal sender.
#[derive(Debug)]
pub(crate) struct Journald {
    sock: Option<UnixDatagram>,
    path: PathBuf,
    warned: bool,
}

/// The MESSAGE_ID used for `event`.
pub(crate) fn message_id(event: &str) -> String {
    let d = Sha256::new()
        .chain_update(b"mcpd-audit-event\n")
        .chain_update(event.as_bytes())
        .finalize();
    hex::encode(&d[..16])
}

fn priority(event: &str) -> u8 {
    let e = event.to_ascii_lowercase();
    if ["deny", "denied", "fail", "error"]
        .iter()
        .any(|w| e.contains(w))
    {
        4
    } else if e.starts_with("log.") {
        5
    } else {
        6
    }
}

fn field(buf: &mut Vec<u8>, key: &str, value: &str) {
    buf.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    } else {
        buf.push(b'=');
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    }
}

/// Encodes one record as a native-protocol datagram.
pub(crate) fn encode(seq: u64, event: &str, line: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(line.len() + 256);
    field(
        &mut buf,
        "MESSAGE",
        &format!("mcpd audit: {event} seq={seq}"),
    );
    field(&mut buf, "MESSAGE_ID", &message_id(event));
    field(&mut buf, "PRIORITY", &priority(event).to_string());
    field(&mut buf, "SYSLOG_IDENTIFIER", "mcpd-audit");
    field(&mut buf, "MCPD_EVENT", event);
    field(&mut buf, "MCPD_SEQ", &seq.to_string());
    field(&mut buf, "MCPD_RECORD", line.trim_end_matches('\n'));
    buf
}

impl Journald {
    pub(crate) fn new(path: PathBuf) -> Self {
        let sock = UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s));
        let mut j = Self {
            sock: None,
            path,
            warned: false,
        };
        match sock {
            Ok(s) => j.sock = Some(s),
            Err(e) => j.warn(&e),
        }
        j
    }

    fn warn(&mut self, e: &std::io::Error) {
        if !self.warned {
            self.warned = true;
            eprintln!(
                "mcpd: audit: journald forwarding to {} failed (continuing without it): {e}",
                self.path.display()
            );
        }
    }

    /// Sends one record; never blocks, never fails.
    pub(crate) fn send(&mut self, seq: u64, event: &str, line: &str) {
        let Some(sock) = &self.sock else { return };
        let dgram = encode(seq, event, line);
        if let Err(e) = sock.send_to(&dgram, &self.path) {
            self.warn(&e);
        }
    }
}
