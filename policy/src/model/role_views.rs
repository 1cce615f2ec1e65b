//! Role views: what a client holds when a bearer token names only some of its roles
//! (`[auth.jwt] roles_claim`). A view is the client's own grant plus a subset of its roles'
//! grants, built at load for every proper subset of every client's roles, so that a token can
//! only ever *narrow* its client: never a role the client does not have, never a limit above
//! the client's (a view keeps the client's merged limits, which a smaller set of roles could
//! otherwise loosen: limits take the smallest role value).
//!
//! A view has a client id of its own, `CLIENT+ROLE+ROLE` (sorted roles; `CLIENT+` for the own
//! grant alone), which no configuration can name (`+` is not allowed in client ids), so every
//! decision, listing and audit record works on it unchanged; [`ClientId::tenant`] gives back the
//! client for what belongs to the tenant (its worker uid, prompts, quotas).
//!
//! Does no I/O beyond the caller's `Canonicalize`; decides nothing.

use std::collections::{BTreeMap, BTreeSet};

use super::merge::merge;
use super::types::{Canonicalize, ClientId, Permissions, Policy};
use crate::config::{ConfigError, RawConfig, Source};
use crate::exec::OperatorTool;

/// Most roles a client may have when tokens can name roles (each subset is a view: 2^N).
pub const MAX_ROLES_PER_CLIENT_WITH_ROLES_CLAIM: usize = 8;

/// The separator between a client id and the roles of its view.
const SEP: char = '+';

impl ClientId {
    /// The client a role view belongs to (itself for a configured client).
    pub fn tenant(&self) -> ClientId {
        match self.0.split_once(SEP) {
            Some((base, _)) => ClientId(base.to_string()),
            None => self.clone(),
        }
    }

    /// Whether this id is a role view of a client (never a configured client).
    pub fn is_role_view(&self) -> bool {
        self.0.contains(SEP)
    }

    fn view(base: &ClientId, roles: &BTreeSet<&str>) -> ClientId {
        let mut s = format!("{}{SEP}", base.0);
        let joined: Vec<&str> = roles.iter().copied().collect();
        s.push_str(&joined.join(&SEP.to_string()));
        ClientId(s)
    }
}

/// Every proper subset view of every client with roles (only called with a roles claim), and
/// each such client's roles.
#[allow(clippy::type_complexity)]
pub(super) fn build(
    src: &Source,
    raw: &RawConfig,
    clients: &BTreeMap<ClientId, Permissions>,
    operator_tools: &BTreeMap<String, OperatorTool>,
    canon: Canonicalize<'_>,
) -> Result<
    (
        BTreeMap<ClientId, Permissions>,
        BTreeMap<ClientId, BTreeSet<String>>,
    ),
    ConfigError,
> {
    let mut views = BTreeMap::new();
    let mut client_roles = BTreeMap::new();
    for (name, grant) in &raw.clients {
        let Some(id) = ClientId::parse(name) else {
            continue;
        };
        let Some(full) = clients.get(&id) else {
            continue;
        };
        let mut roles: Vec<&str> = grant
            .get_ref()
            .roles
            .iter()
            .map(|r| r.get_ref().as_str())
            .collect();
        roles.sort_unstable();
        roles.dedup();
        if roles.len() > MAX_ROLES_PER_CLIENT_WITH_ROLES_CLAIM {
            return Err(src.error(
                Some(grant.span()),
                format!(
                    "client '{name}': at most {MAX_ROLES_PER_CLIENT_WITH_ROLES_CLAIM} roles with [auth.jwt] roles_claim (each subset of them is a view a token may select)"
                ),
            ));
        }
        if roles.is_empty() {
            continue;
        }
        client_roles.insert(id.clone(), roles.iter().map(|r| r.to_string()).collect());
        // Every subset but the full one (that is the client itself).
        let full_mask = (1u32 << roles.len()) - 1;
        for mask in 0..full_mask {
            let chosen: BTreeSet<&str> = roles
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, r)| *r)
                .collect();
            let mut parts = vec![(name.as_str(), grant)];
            for r in &chosen {
                if let Some(role) = raw.roles.get(*r) {
                    parts.push((r, role));
                }
            }
            // The client's warnings were given for the whole client already.
            let mut perms = merge(src, name, &parts, canon, &mut Vec::new())?;
            perms.limits = full.limits.clone();
            for (tname, tool) in operator_tools {
                if tool.clients.contains(name) || chosen.iter().any(|r| tool.roles.contains(*r)) {
                    perms.operator_tools.insert(tname.clone());
                }
            }
            views.insert(ClientId::view(&id, &chosen), perms);
        }
    }
    Ok((views, client_roles))
}

impl Policy {
    /// The view of `client` a token whose roles claim names `token_roles` holds: `client`
    /// itself when the token names every role of it (or the client has none, or tokens name no
    /// roles in this policy), else the view of the roles both have.
    pub fn role_view(&self, client: &ClientId, token_roles: &[String]) -> ClientId {
        let Some(roles) = self.client_roles.get(client) else {
            return client.clone();
        };
        let held: BTreeSet<&str> = roles
            .iter()
            .map(String::as_str)
            .filter(|r| token_roles.iter().any(|t| t == r))
            .collect();
        if held.len() == roles.len() {
            return client.clone();
        }
        ClientId::view(client, &held)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::decide::{Decision, Request};
    use mcpd_ipc::ToolAccess;
    use std::path::{Path, PathBuf};

    fn canon(p: &Path) -> std::io::Result<PathBuf> {
        Ok(p.to_path_buf())
    }

    const JWT: &str = "[auth.jwt]\nissuer = \"https://as.example\"\naudience = \"https://mcp.example/mcp\"\njwks = \"/etc/jwks.json\"\nroles_claim = \"roles\"\n";

    fn policy(extra: &str) -> Policy {
        Policy::from_toml("p.toml", &format!("{JWT}{extra}"), &canon).unwrap()
    }

    const ALICE: &str = "[clients.alice]\nread = [\"/own\"]\ntools = [\"read_text_file\", \"list_directory\"]\nroles = [\"writer\", \"reader\"]\n[clients.alice.identity]\njwt_sub = [\"alice\"]\n[clients.alice.limits]\ncall_timeout_secs = 20\n[roles.reader]\nread = [\"/data\"]\n[roles.writer]\nwrite = [\"/data\"]\ntools = [\"write_file\"]\n[roles.writer.limits]\ncall_timeout_secs = 90\nmax_concurrent_calls = 9\n";

    fn reads(p: &Policy, c: &ClientId, path: &str) -> bool {
        let perms = p.permissions(c).unwrap();
        perms
            .read
            .iter()
            .chain(&perms.write)
            .any(|r| Path::new(path).starts_with(r))
    }

    #[test]
    fn a_token_holds_only_the_roles_it_names_of_its_client() {
        let p = policy(ALICE);
        let alice = ClientId::parse("alice").unwrap();
        let all = ["reader".to_string(), "writer".to_string()];
        // Every role named (in any order, with extras the client lacks): the client itself.
        assert_eq!(p.role_view(&alice, &all), alice);
        let mut more = all.to_vec();
        more.push("admin".into());
        assert_eq!(p.role_view(&alice, &more), alice);
        // One role: a view with that role's grant and the client's own, not the other role's.
        let r = p.role_view(&alice, &["reader".into(), "admin".into()]);
        assert_eq!(r.as_str(), "alice+reader");
        assert!(r.is_role_view() && r.tenant() == alice);
        assert!(reads(&p, &r, "/data/x") && reads(&p, &r, "/own/y"));
        assert!(p.permissions(&r).unwrap().write.is_empty());
        let write = Request::CallTool {
            tool: "write_file",
            access: ToolAccess::FileWrite,
            paths: vec![("/data/f", true)],
            exec: None,
        };
        assert!(matches!(p.decide(&r, &write), Decision::Deny(_)));
        let w = p.role_view(&alice, &["writer".into()]);
        assert_eq!(w.as_str(), "alice+writer");
        assert!(!p.permissions(&w).unwrap().write.is_empty());
        // No roles claim in the token: the client's own grant alone.
        let none = p.role_view(&alice, &[]);
        assert_eq!(none.as_str(), "alice+");
        assert!(reads(&p, &none, "/own/y") && !reads(&p, &none, "/data/x"));
        // A view never loosens a limit: the writer role alone would allow 90 s and 9 calls.
        let full = p.permissions(&alice).unwrap().limits.clone();
        assert_eq!(p.permissions(&w).unwrap().limits, full);
        assert_eq!(p.permissions(&none).unwrap().limits, full);
        // The tenant's worker uid, whatever the view.
        assert_eq!(p.worker_uid(&w), p.worker_uid(&alice));
        assert_eq!(p.worker_uid(&none), p.worker_uid(&alice));
        // A view's worker is confined to the view's roots, not the client's.
        let spec = p.sandbox_spec(&r);
        assert!(spec.read_paths.contains(&"/data".to_string()));
        assert!(spec.write_paths.is_empty());
        assert_eq!(p.sandbox_spec(&none).read_paths, vec!["/own".to_string()]);
        // Views are not clients: never listed, never an identity.
        assert_eq!(p.clients().count(), 1);
    }

    #[test]
    fn operator_tools_follow_the_roles_a_view_holds() {
        let p = policy(&format!(
            "{ALICE}[tools.deploy]\ndescription = \"d\"\ncommand = [\"/bin/echo\"]\nroles = [\"writer\"]\n"
        ));
        let alice = ClientId::parse("alice").unwrap();
        assert!(p
            .permissions(&alice)
            .unwrap()
            .operator_tools
            .contains("deploy"));
        let r = p.role_view(&alice, &["reader".into()]);
        assert!(!p.permissions(&r).unwrap().operator_tools.contains("deploy"));
        let w = p.role_view(&alice, &["writer".into()]);
        assert!(p.permissions(&w).unwrap().operator_tools.contains("deploy"));
    }

    #[test]
    fn without_a_roles_claim_or_roles_there_is_nothing_to_narrow() {
        let no_claim = Policy::from_toml(
            "p.toml",
            &format!("{}{ALICE}", JWT.replace("roles_claim = \"roles\"\n", "")),
            &canon,
        )
        .unwrap();
        let alice = ClientId::parse("alice").unwrap();
        assert_eq!(no_claim.role_view(&alice, &[]), alice);
        assert!(no_claim.permissions(&ClientId("alice+".into())).is_none());
        let p = policy("[clients.bob]\nread = [\"/b\"]\n");
        let bob = ClientId::parse("bob").unwrap();
        assert_eq!(p.role_view(&bob, &[]), bob);
    }

    #[test]
    fn too_many_roles_and_bad_claim_names_are_refused() {
        let mut text = String::from("[clients.c]\nread = [\"/c\"]\nroles = [");
        for i in 0..=MAX_ROLES_PER_CLIENT_WITH_ROLES_CLAIM {
            text.push_str(&format!("\"r{i}\", "));
        }
        text.push_str("]\n");
        for i in 0..=MAX_ROLES_PER_CLIENT_WITH_ROLES_CLAIM {
            text.push_str(&format!("[roles.r{i}]\nread = [\"/r{i}\"]\n"));
        }
        let e = Policy::from_toml("p.toml", &format!("{JWT}{text}"), &canon).unwrap_err();
        assert!(e.to_string().contains("at most 8 roles"), "{e}");
        let e = Policy::from_toml(
            "p.toml",
            &JWT.replace("roles_claim = \"roles\"", "roles_claim = \"a b\""),
            &canon,
        )
        .unwrap_err();
        assert!(e.to_string().contains("auth.jwt.roles_claim"), "{e}");
    }
}
