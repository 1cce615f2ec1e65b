//! Authentication: who is speaking. Each transport has an [`Authenticator`] that turns what
//! the transport knows of a peer ([`Credentials`]: the transport, the peer's address or
//! process, later a certificate or a bearer token) into a [`Principal`] — a client id of the
//! policy and how it was established — or refuses.
//!
//! Does not decide what a principal may do (that is `mcpd_policy::Policy::decide`) and keeps no
//! state: a principal is established for every session (stdio) or every request (HTTP), under
//! the policy in force at that moment, so a reload that drops a client takes effect at once.
//!
//! Trusts only the kernel's view of the peer (its socket address, its parent process) and the
//! policy; nothing a client *says* about itself.
#![forbid(unsafe_code)]

pub mod buscred;
pub mod jwt;
pub mod peercred;
pub mod x509;

use mcpd_policy::{ClientId, Policy};

/// An authenticated client: a client id of the policy, how it was established, what the audit
/// log may say about the credential (never the credential itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The policy's client id.
    pub client: ClientId,
    /// How the principal was established (`local-process`, `none (loopback listener)`, ...).
    pub method: &'static str,
    /// Facts for the `auth.success` record (issuer, key id, token digest, certificate subject,
    /// peer uid...). Never a secret.
    pub attributes: Vec<(&'static str, String)>,
    /// What the credential itself restricts the principal to (a bearer token's scopes, sorted
    /// and deduplicated); `None`: no restriction beyond the policy.
    pub scopes: Option<Vec<String>>,
}

impl Principal {
    /// A principal established by `method`, with no attributes and no scope restriction.
    pub fn new(client: ClientId, method: &'static str) -> Self {
        Self {
            client,
            method,
            attributes: Vec::new(),
            scopes: None,
        }
    }
}

/// Where a session comes from, for the audit log.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Transport name (`stdio`, `http`, `http-stateless`, `unix`, `unix-http`,
    /// `unix-http-stateless`, `websocket`).
    pub transport: &'static str,
    /// Peer description (stdio: the parent process; HTTP: the socket address; a Unix
    /// socket: `uid=… gid=… pid=…`).
    pub peer: String,
}

/// What a transport knows of a peer when it asks who the peer is. Everything here was read
/// from the kernel or verified by the transport (TLS); nothing is the client's say-so except
/// `authorization`, which the authenticator must verify.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The transport asking.
    pub transport: &'static str,
    /// The peer, as the transport saw it (socket address, parent process).
    pub peer: &'a str,
    /// The `Authorization` header, when exactly one was sent (HTTP); unverified.
    pub authorization: Option<&'a str>,
    /// A Unix-socket peer's (uid, gid, pid), read from the kernel (`SO_PEERCRED`).
    pub unix_peer: Option<(u32, u32, i32)>,
    /// The DER end-entity certificate the TLS layer verified (mTLS), if any.
    pub client_cert: Option<&'a [u8]>,
    /// A D-Bus caller's credentials, from the bus daemon (`GetConnectionCredentials`).
    pub bus_peer: Option<&'a buscred::BusPeer>,
}

impl<'a> Credentials<'a> {
    /// What every transport knows: itself and the peer's address.
    pub fn new(transport: &'static str, peer: &'a str) -> Self {
        Self {
            transport,
            peer,
            authorization: None,
            unix_peer: None,
            client_cert: None,
            bus_peer: None,
        }
    }

    /// With the kernel's credentials of a Unix-socket peer (uid, gid, pid).
    pub fn with_unix_peer(mut self, uid: u32, gid: u32, pid: i32) -> Self {
        self.unix_peer = Some((uid, gid, pid));
        self
    }

    /// With a D-Bus caller's credentials, as the bus daemon reported them.
    pub fn with_bus_peer(mut self, peer: &'a buscred::BusPeer) -> Self {
        self.bus_peer = Some(peer);
        self
    }

    /// With the verified client certificate of the connection (DER), if any.
    pub fn with_client_cert(mut self, der: Option<&'a [u8]>) -> Self {
        self.client_cert = der;
        self
    }
}

/// Why a peer was not given a principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The policy names no client for this transport (its setting named): it is refused.
    #[error("the policy names no client for {transport} ({setting} = ...): {transport} is refused (peer {peer})")]
    NoClient {
        /// The transport.
        transport: &'static str,
        /// The policy setting that would name the client.
        setting: &'static str,
        /// The peer refused.
        peer: String,
    },
    /// A verified client certificate names no client (or two), or none was presented.
    #[error("client certificate refused: {reason} (peer {peer})")]
    Certificate {
        /// Why.
        reason: String,
        /// The peer refused.
        peer: String,
    },
    /// The listener wants a bearer token and none was sent (HTTP: 401 with a challenge).
    #[error("no bearer token (peer {peer})")]
    MissingToken {
        /// The peer refused.
        peer: String,
    },
    /// A bearer token was sent and refused (HTTP: 401 `invalid_token`). `reason` is a short
    /// code for the audit log; never the token.
    #[error("bearer token refused: {reason} (peer {peer})")]
    InvalidToken {
        /// Why (`expired`, `wrong_audience`, `bad_signature`, ...).
        reason: &'static str,
        /// The peer refused.
        peer: String,
    },
}

/// Two authenticators that must both accept a peer and name the same client (a listener with
/// client certificates *and* bearer tokens). The second's principal is kept (its scopes and
/// attributes), with the first's attributes added.
#[derive(Debug)]
pub struct Both<A, B>(pub A, pub B);

impl<A: Authenticator, B: Authenticator> Authenticator for Both<A, B> {
    fn authenticate(
        &self,
        policy: &Policy,
        creds: &Credentials<'_>,
    ) -> Result<Principal, AuthError> {
        let first = self.0.authenticate(policy, creds)?;
        let mut second = self.1.authenticate(policy, creds)?;
        if first.client != second.client {
            return Err(AuthError::Certificate {
                reason: format!(
                    "the certificate names client '{}', the token client '{}'",
                    first.client, second.client
                ),
                peer: creds.peer.to_string(),
            });
        }
        second.attributes.extend(first.attributes);
        Ok(second)
    }
}

/// Establishes the principal of a peer of one transport.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// The principal `creds` speak for under `policy`, or why not.
    fn authenticate(
        &self,
        policy: &Policy,
        creds: &Credentials<'_>,
    ) -> Result<Principal, AuthError>;
}

/// The stdio transport: the process that started mcpd (it holds the pipes) speaks for the
/// policy's stdio client (`[stdio] client`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalProcess;

impl Authenticator for LocalProcess {
    fn authenticate(
        &self,
        policy: &Policy,
        creds: &Credentials<'_>,
    ) -> Result<Principal, AuthError> {
        policy
            .stdio_client()
            .cloned()
            .map(|client| Principal::new(client, "local-process"))
            .ok_or_else(|| AuthError::NoClient {
                transport: creds.transport,
                setting: "[stdio] client",
                peer: creds.peer.to_string(),
            })
    }
}

/// An HTTP listener without authentication (loopback, or the explicit insecure opt-in): every
/// peer speaks for the listener's configured client (`[http] client`). Kept until TLS client
/// certificates and bearer tokens give each peer its own principal.
#[derive(Debug, Clone)]
pub struct ListenerClient {
    client: ClientId,
}

impl ListenerClient {
    /// Every peer of the listener speaks for `client`.
    pub fn new(client: ClientId) -> Self {
        Self { client }
    }
}

impl Authenticator for ListenerClient {
    fn authenticate(
        &self,
        _policy: &Policy,
        _creds: &Credentials<'_>,
    ) -> Result<Principal, AuthError> {
        Ok(Principal::new(
            self.client.clone(),
            "none (loopback listener)",
        ))
    }
}
