//! The validated, immutable policy: its types, how it is built and merged from a parsed
//! configuration, the command-line overlay (`overlay`: every `mcpd serve` flag, validated;
//! `quick_start`: its grant flags), the HTTP transport settings, and the sandbox spec derived
//! from it.
//!
//! One file per part: `types` (the model, defaults, read-only views), `build` (validation and
//! canonicalisation), `merge` (grants and limits of a client and its roles), `role_views` (a client narrowed
//! to some of its roles by a token), `overlay`,
//! `quick_start`, `http`, `metrics`, `sandbox`. Does no I/O (paths go through the caller's
//! `Canonicalize`); decisions are in `crate::decide`. Trusts the operator's configuration and
//! flags only after `build`'s and `overlay`'s checks. Fields that configuration or flags set are
//! not public: outside this crate a `Policy` is read through accessors, never patched.

mod build;
mod dbus;
mod describe_json;
mod http;
mod jwt;
mod merge;
mod metrics;
mod overlay;
mod quick_start;
mod role_views;
mod sandbox;
mod tls;
mod types;
mod unix;

pub(crate) use build::canonical;
pub use dbus::*;
pub use http::{parse_listen, ForwardedHeader, HttpSettings, ProxyNet, MAX_TRUSTED_PROXIES};
pub use jwt::{
    access_key, JwtKey, JwtSettings, RawAuth, RawJwt, RawJwtKey, RawJwtScopes,
    DEFAULT_JWT_LEEWAY_SECS, JWT_ALGORITHMS, MAX_JWT_LEEWAY_SECS,
};
pub use metrics::{
    parse_metrics_listen, MetricsListen, MetricsSettings, RawMetrics, METRICS_UNIX_PREFIX,
};
pub use overlay::{Overlay, PolicyError, KNOWN_TOOLSETS};
pub use role_views::MAX_ROLES_PER_CLIENT_WITH_ROLES_CLAIM;
pub use tls::{RawTls, TlsOverlay, TlsSettings, TlsVersion, MAX_CRL_FILES};
pub use types::*;
pub use unix::*;
