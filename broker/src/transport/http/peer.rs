//! Who is on the other end of an HTTP connection, as the kernel says: [`Peer`], put on every
//! request of a connection by the code that accepted it (TCP: the source address; the Unix
//! socket: the `SO_PEERCRED` uid, gid and pid, [`UnixPeer`]). A peer whose credentials name
//! no client is recorded as `auth.failure` by the reject auditor (`gate::audit_rejects`), with
//! its uid, gid and pid, as the line protocol records its refusals.
//!
//! Does not authenticate (the listener's [`crate::auth::Authenticator`] does, from the
//! [`Credentials`] built here) and reads nothing the peer sends. Trusts the kernel's view of
//! the socket; the one header that can name a peer is a trusted proxy's forwarded header
//! (`[http] trusted_proxies`, read by `forwarded`), and then the proxy stays on record.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::Credentials;

/// The kernel's credentials of a Unix-socket peer (`SO_PEERCRED`: the process that called
/// `connect()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixPeer {
    /// Its effective uid.
    pub uid: u32,
    /// Its effective (primary) gid.
    pub gid: u32,
    /// Its pid (in mcpd's PID namespace).
    pub pid: i32,
}

impl UnixPeer {
    /// How logs and the audit log name it: `uid=… gid=… pid=…`.
    pub fn describe(&self) -> String {
        format!("uid={} gid={} pid={}", self.uid, self.gid, self.pid)
    }
}

/// The peer of a connection, on every request of it (a request extension).
#[derive(Debug, Clone)]
pub struct Peer {
    /// For logs and the audit log: the socket address, or the Unix peer's `uid=… gid=… pid=…`.
    describe: Arc<str>,
    /// A Unix-socket peer's credentials.
    pub(super) unix: Option<UnixPeer>,
    /// A TCP peer's source address, as the kernel says.
    pub(super) addr: Option<SocketAddr>,
    /// The client a trusted proxy (`addr`) relays for: its address from the forwarded header.
    pub(super) forwarded: Option<std::net::IpAddr>,
}

impl Peer {
    /// A TCP peer: its source address.
    pub(super) fn tcp(addr: SocketAddr) -> Self {
        Self {
            describe: addr.to_string().into(),
            unix: None,
            addr: Some(addr),
            forwarded: None,
        }
    }

    /// A client a trusted proxy relays for: described as `CLIENT via PROXY:PORT`.
    pub(super) fn forwarded_by(proxy: SocketAddr, client: std::net::IpAddr) -> Self {
        Self {
            describe: format!("{client} via {proxy}").into(),
            unix: None,
            addr: Some(proxy),
            forwarded: Some(client),
        }
    }

    /// A Unix-socket peer: its kernel credentials.
    pub fn unix(p: UnixPeer) -> Self {
        Self {
            describe: p.describe().into(),
            unix: Some(p),
            addr: None,
            forwarded: None,
        }
    }

    /// How logs and the audit log name the peer.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// What the authenticator of `transport` is told about this peer.
    pub(super) fn credentials(&self, transport: &'static str) -> Credentials<'_> {
        let c = Credentials::new(transport, &self.describe);
        match self.unix {
            Some(u) => c.with_unix_peer(u.uid, u.gid, u.pid),
            None => c,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_peer_is_described_by_its_credentials_and_authenticated_by_them() {
        let p = Peer::unix(UnixPeer {
            uid: 1000,
            gid: 100,
            pid: 42,
        });
        assert_eq!(p.describe(), "uid=1000 gid=100 pid=42");
        assert_eq!(p.to_string(), "uid=1000 gid=100 pid=42");
        let c = p.credentials("unix-http");
        assert_eq!(c.transport, "unix-http");
        assert_eq!(c.unix_peer, Some((1000, 100, 42)));
        assert_eq!(c.authorization, None);
        let t = Peer::tcp("127.0.0.1:4000".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(t.describe(), "127.0.0.1:4000");
        assert_eq!(t.credentials("http").unix_peer, None);
        let f = Peer::forwarded_by(
            "127.0.0.1:4000".parse().unwrap_or_else(|_| unreachable!()),
            "203.0.113.7".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(f.describe(), "203.0.113.7 via 127.0.0.1:4000");
        assert_eq!(f.credentials("http").peer, "203.0.113.7 via 127.0.0.1:4000");
    }
}
