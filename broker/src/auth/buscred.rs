//! The D-Bus transport's authenticator: the caller is who the bus daemon says owns its unique
//! name (`org.freedesktop.DBus.GetConnectionCredentials`: `UnixUserID`, `UnixGroupIDs`,
//! `ProcessID`, `LinuxSecurityLabel`, read by the transport), mapped to a client by the
//! policy's identity rules, as for the Unix socket: `[clients.NAME.identity] unix_uid`, else
//! `unix_gid` against any of the caller's groups (groups naming two clients name none).
//!
//! Does not talk to the bus (the transport hands it [`BusPeer`]) and keeps no state. Trusts
//! the bus daemon (it read the credentials from the kernel when the caller connected) and the
//! policy; nothing the caller says. uid 0 is not special. A caller no rule names is refused.
#![forbid(unsafe_code)]

use mcpd_policy::{Policy, Presented};

use super::{AuthError, Authenticator, Credentials, Principal};

/// How a D-Bus principal was established, for `auth.success`.
pub const METHOD: &str = "dbus-credentials";
/// Longest security label kept (longer ones are cut, for the audit log).
pub const MAX_LABEL_CHARS: usize = 256;
/// Most groups looked at.
pub const MAX_GROUPS: usize = 256;

/// A D-Bus caller as the bus daemon describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusPeer {
    /// The caller's unique name (`:1.42`).
    pub name: String,
    /// `UnixUserID` (`None`: the bus did not say: refused).
    pub uid: Option<u32>,
    /// `UnixGroupIDs` (at most [`MAX_GROUPS`]).
    pub gids: Vec<u32>,
    /// `ProcessID`.
    pub pid: Option<u32>,
    /// `LinuxSecurityLabel` (SELinux context, AppArmor label), printable, bounded.
    pub label: Option<String>,
}

impl BusPeer {
    /// The peer's description for the audit log: `name=:1.42 uid=1000 pid=77`.
    pub fn describe(&self) -> String {
        let n = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
        format!("name={} uid={} pid={}", self.name, n(self.uid), n(self.pid))
    }

    /// A security label as the bus gives it (bytes, NUL-terminated) made printable and
    /// bounded.
    pub fn label_from_bytes(b: &[u8]) -> Option<String> {
        let b = b.split(|c| *c == 0).next().unwrap_or_default();
        if b.is_empty() {
            return None;
        }
        Some(
            String::from_utf8_lossy(b)
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .take(MAX_LABEL_CHARS)
                .collect(),
        )
    }
}

/// Maps a D-Bus caller's uid/groups to a client (`Policy::client_for`).
#[derive(Debug, Clone, Copy, Default)]
pub struct BusCredentials;

impl Authenticator for BusCredentials {
    fn authenticate(
        &self,
        policy: &Policy,
        creds: &Credentials<'_>,
    ) -> Result<Principal, AuthError> {
        let refused = || super::peercred::no_identity_rule(creds);
        let peer = creds.bus_peer.ok_or_else(refused)?;
        let uid = peer.uid.ok_or_else(refused)?;
        let gids = &peer.gids[..peer.gids.len().min(MAX_GROUPS)];
        let client = policy
            .client_for(&Presented::Bus { uid, gids })
            .cloned()
            .ok_or_else(refused)?;
        let mut p = Principal::new(client, METHOD);
        p.attributes = vec![("bus_name", peer.name.clone()), ("uid", uid.to_string())];
        if let Some(pid) = peer.pid {
            p.attributes.push(("pid", pid.to_string()));
        }
        if let Some(l) = &peer.label {
            p.attributes.push(("security_label", l.clone()));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uid_then_groups_and_nothing_else() {
        let p = Policy::from_toml(
            "t.toml",
            "[clients.a.identity]\nunix_uid = [1000]\n[clients.b.identity]\nunix_gid = [100]\n[clients.c.identity]\nunix_gid = [200]\n",
            &|p: &std::path::Path| Ok(p.to_path_buf()),
        )
        .unwrap();
        let peer = |uid: Option<u32>, gids: Vec<u32>| BusPeer {
            name: ":1.7".into(),
            uid,
            gids,
            pid: Some(42),
            label: BusPeer::label_from_bytes(b"unconfined\0"),
        };
        let auth = |b: &BusPeer| {
            let d = b.describe();
            BusCredentials.authenticate(&p, &Credentials::new("dbus", &d).with_bus_peer(b))
        };
        let a = auth(&peer(Some(1000), vec![200])).unwrap();
        assert_eq!((a.client.as_str(), a.method), ("a", METHOD));
        assert_eq!(
            a.attributes,
            vec![
                ("bus_name", ":1.7".to_string()),
                ("uid", "1000".to_string()),
                ("pid", "42".to_string()),
                ("security_label", "unconfined".to_string())
            ]
        );
        assert_eq!(
            auth(&peer(Some(5), vec![1, 100])).unwrap().client.as_str(),
            "b"
        );
        for b in [
            peer(Some(5), vec![100, 200]),
            peer(Some(0), vec![0]),
            peer(None, vec![100]),
        ] {
            let e = auth(&b).unwrap_err();
            assert!(e.to_string().contains("unix_uid / unix_gid"), "{e}");
        }
        let e = BusCredentials
            .authenticate(&p, &Credentials::new("dbus", "x"))
            .unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        assert_eq!(BusPeer::label_from_bytes(b"\0"), None);
        assert_eq!(BusPeer::label_from_bytes(b"a\nb").as_deref(), Some("a?b"));
    }
}
