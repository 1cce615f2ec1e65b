//! mcpd policy: the configuration model, its TOML parser, the deny-by-default decision
//! function, and the derivation of each client's worker sandbox from the same policy.
//!
//! What it does: turns operator configuration (a file and/or the command-line [`Overlay`],
//! through [`Policy::load`] or [`Policy::from_toml`]) into an immutable [`Policy`], answers
//! [`Policy::decide`] for every request, and derives the [`mcpd_ipc::SandboxSpec`] the kernel
//! will enforce, so that the broker's decision and the worker's confinement cannot disagree.
//!
//! What it does not do: any I/O in the decision path. Loading needs path canonicalisation,
//! which the caller supplies as a [`Canonicalize`] function (the broker passes the real
//! `realpath`; tests pass a fake). No tokio, no sockets, no unsafe code.
//!
//! What it trusts: the operator's configuration file (it validates it strictly: unknown keys,
//! unknown roles, relative paths and refused permissions are errors with line and column).
#![forbid(unsafe_code)]

mod config;
mod decide;
mod exec;
mod identity;
mod model;
mod prompts;

pub use config::{ConfigError, RawConfig};
pub use decide::{base_dir, lexical_normalize, Allow, Decision, DenyReason, ExecRequest, Request};
pub use exec::{
    language_alias, template_placeholders, ArgPattern, ExecGrant, Language, OperatorTool, Program,
    ENV_NEVER_FROM_CLIENT, TRUSTED_SEARCH_PATH,
};
pub use identity::{
    IdentityKind, IdentityRules, Presented, RawIdentity, MAX_IDENTITIES_PER_CLIENT,
};
pub use model::UnixProtocol;
pub use model::{
    access_key, check_socket_path, JwtKey, JwtSettings, RawAuth, RawGroup, RawJwt, RawJwtKey,
    RawJwtScopes, RawMode, RawUnix, UnixGroup, UnixSettings, DEFAULT_JWT_LEEWAY_SECS,
    DEFAULT_UNIX_MAX_CONNECTIONS, DEFAULT_UNIX_MAX_CONNECTIONS_PER_UID, DEFAULT_UNIX_MODE,
    JWT_ALGORITHMS, MAX_JWT_LEEWAY_SECS, MAX_ROLES_PER_CLIENT_WITH_ROLES_CLAIM,
};
pub use model::{
    parse_listen, AuditSettings, Canonicalize, CgroupSetting, ClientId, HttpSettings, Limits,
    Overlay, Permissions, Policy, PolicyError, QuickStart, ToolSet, DEFAULT_CLIENT,
    DEFAULT_MAX_OUTPUT_BYTES, KNOWN_TOOLSETS, MAX_RESULT_BYTES_CEILING,
};
pub use model::{
    parse_metrics_listen, MetricsListen, MetricsSettings, RawMetrics, METRICS_UNIX_PREFIX,
};
pub use model::{DbusBus, DbusSettings, RawDbus};
pub use model::{ForwardedHeader, ProxyNet, MAX_TRUSTED_PROXIES};
pub use model::{RawTls, TlsOverlay, TlsSettings, TlsVersion, MAX_CRL_FILES};
pub use prompts::Prompt;
