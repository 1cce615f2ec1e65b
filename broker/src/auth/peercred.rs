//! The Unix-socket transport's authenticator: the peer is who the kernel says connected
//! (`SO_PEERCRED`, read by the transport at accept), mapped to a client by the policy's
//! identity rules (`[clients.NAME.identity] unix_uid = [...]`, else `unix_gid = [...]`).
//!
//! Does not read the socket (the transport hands it [`Credentials::unix_peer`]) and keeps no
//! state. Trusts only the kernel's credentials; uid 0 is not special: it needs a rule like any
//! other uid. A peer whose uid and gid name no client is refused.
#![forbid(unsafe_code)]

use mcpd_policy::{Policy, Presented};

use super::{AuthError, Authenticator, Credentials, Principal};

/// How a Unix-socket principal was established, for `auth.success`.
pub const METHOD: &str = "unix-peer-credentials";

/// The refusal of a peer whose kernel (or bus) credentials name no client by the identity
/// rules; shared with the D-Bus authenticator, which maps by the same rules.
pub(super) fn no_identity_rule(creds: &Credentials<'_>) -> AuthError {
    AuthError::NoClient {
        transport: creds.transport,
        setting: "[clients.NAME.identity] unix_uid / unix_gid",
        peer: creds.peer.to_string(),
    }
}

/// Maps a Unix-socket peer's uid/gid to a client (`Policy::client_for`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerCredentials;

impl Authenticator for PeerCredentials {
    fn authenticate(
        &self,
        policy: &Policy,
        creds: &Credentials<'_>,
    ) -> Result<Principal, AuthError> {
        let refused = || no_identity_rule(creds);
        let (uid, gid, pid) = creds.unix_peer.ok_or_else(refused)?;
        let client = policy
            .client_for(&Presented::Unix { uid, gid })
            .cloned()
            .ok_or_else(refused)?;
        let mut p = Principal::new(client, METHOD);
        p.attributes = vec![
            ("uid", uid.to_string()),
            ("gid", gid.to_string()),
            ("pid", pid.to_string()),
        ];
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uid_then_gid_and_nothing_else() {
        let p = Policy::from_toml(
            "t.toml",
            "[clients.a.identity]\nunix_uid = [1000]\n[clients.b.identity]\nunix_gid = [100]\n[clients.local]\n",
            &|p: &std::path::Path| Ok(p.to_path_buf()),
        )
        .unwrap();
        let auth = |c: Credentials<'_>| PeerCredentials.authenticate(&p, &c);
        let base = Credentials::new("unix", "uid=1000 gid=100 pid=7");
        let a = auth(base.with_unix_peer(1000, 100, 7)).unwrap();
        assert_eq!((a.client.as_str(), a.method), ("a", METHOD));
        assert_eq!(
            a.attributes,
            vec![
                ("uid", "1000".to_string()),
                ("gid", "100".to_string()),
                ("pid", "7".to_string())
            ]
        );
        assert_eq!(
            auth(base.with_unix_peer(1001, 100, 7))
                .unwrap()
                .client
                .as_str(),
            "b"
        );
        // No rule: refused, uid 0 included; no kernel credentials: refused.
        for c in [
            base.with_unix_peer(1001, 101, 7),
            base.with_unix_peer(0, 0, 1),
            base,
        ] {
            let e = auth(c).unwrap_err();
            assert!(e.to_string().contains("unix_uid / unix_gid"), "{e}");
        }
    }
}
