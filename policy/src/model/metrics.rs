//! The metrics listener settings (`[metrics]`, `mcpd serve --metrics ADDR`): where the broker
//! serves its Prometheus metrics, if anywhere. Off by default. Opens no socket (the broker
//! does).
//!
//! The metrics name the configured clients and tools, so the listener is loopback or a Unix
//! socket: a TCP address that is not loopback is refused unless `allow_non_loopback = true`
//! says the operator accepts that (loudly, as a warning). Trusts the parsed config only as far
//! as it checks it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::types::Policy;
use crate::config::{ConfigError, Source};

/// The prefix of a Unix-socket `listen` value: `unix:/run/mcpd/metrics.sock`.
pub const METRICS_UNIX_PREFIX: &str = "unix:";

/// `[metrics]`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// `"IP:PORT"`, `"localhost:PORT"` or `"unix:/ABSOLUTE/PATH"`.
    pub listen: Option<Spanned<String>>,
    /// Accept a TCP address that is not loopback (the metrics name clients and tools).
    #[serde(default)]
    pub allow_non_loopback: bool,
}

/// Where the metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    /// A TCP address (loopback unless `allow_non_loopback`).
    Tcp(SocketAddr),
    /// A Unix socket, created owner-only (mode 0600).
    Unix(PathBuf),
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "{METRICS_UNIX_PREFIX}{}", p.display()),
        }
    }
}

/// The metrics listener settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Where to listen (`None`: no metrics listener, the default).
    pub listen: Option<MetricsListen>,
    /// A non-loopback TCP address was explicitly allowed.
    pub allow_non_loopback: bool,
}

impl MetricsSettings {
    /// One line for `check-config`.
    pub fn describe(&self) -> String {
        match &self.listen {
            None => "metrics: off\n".into(),
            Some(l) => format!(
                "metrics: {l} (GET /metrics, OpenMetrics text){}\n",
                if self.allow_non_loopback {
                    ", non-loopback ALLOWED"
                } else {
                    ""
                }
            ),
        }
    }
}

/// A `listen` value: `unix:/PATH` or a TCP address as [`super::parse_listen`] reads it
/// (`localhost:PORT` is `127.0.0.1:PORT`).
pub fn parse_metrics_listen(s: &str) -> Result<MetricsListen, String> {
    if let Some(p) = s.strip_prefix(METRICS_UNIX_PREFIX) {
        let path = PathBuf::from(p);
        super::unix::check_socket_path(&path)?;
        return Ok(MetricsListen::Unix(path));
    }
    let (a, _) = super::parse_listen(s)
        .map_err(|m| format!("{m}; or unix:/ABSOLUTE/PATH for a Unix socket"))?;
    Ok(MetricsListen::Tcp(a))
}

/// The refusal of a non-loopback TCP address, if `l` is one and it was not allowed.
fn exposure(l: &MetricsListen, allowed: bool) -> Option<String> {
    match l {
        MetricsListen::Tcp(a) if !a.ip().is_loopback() && !allowed => Some(format!(
            "{a} is not a loopback address: the metrics name clients and tools and have no authentication; use 127.0.0.1, [::1] or unix:/PATH (or allow_non_loopback = true in [metrics])"
        )),
        _ => None,
    }
}

pub(super) fn metrics_settings(
    src: &Source,
    raw: Option<&RawMetrics>,
    warnings: &mut Vec<String>,
) -> Result<MetricsSettings, ConfigError> {
    let Some(raw) = raw else {
        return Ok(MetricsSettings::default());
    };
    let listen = match &raw.listen {
        None => None,
        Some(l) => {
            let v = parse_metrics_listen(l.get_ref())
                .map_err(|m| src.error(Some(l.span()), format!("metrics.listen: {m}")))?;
            if let Some(m) = exposure(&v, raw.allow_non_loopback) {
                return Err(src.error(Some(l.span()), format!("metrics.listen: {m}")));
            }
            if matches!(&v, MetricsListen::Tcp(a) if !a.ip().is_loopback()) {
                warnings.push(format!(
                    "metrics.allow_non_loopback = true: the metrics (client and tool names) are served without authentication on {v}"
                ));
            }
            Some(v)
        }
    };
    Ok(MetricsSettings {
        listen,
        allow_non_loopback: raw.allow_non_loopback,
    })
}

impl Policy {
    /// The metrics listener settings (`[metrics]`, `--metrics`).
    pub fn metrics(&self) -> &MetricsSettings {
        &self.metrics
    }

    /// The command line's `--metrics ADDR` (a relative `unix:` path resolves against `cwd`),
    /// replacing `metrics.listen`, under the same loopback rule as the file.
    pub(super) fn apply_metrics_flag(
        &mut self,
        listen: &str,
        cwd: &Path,
    ) -> Result<(), ConfigError> {
        let flags = Source::new("<flags>", "");
        let listen = match listen.strip_prefix(METRICS_UNIX_PREFIX) {
            Some(p) if !Path::new(p).is_absolute() => {
                format!("{METRICS_UNIX_PREFIX}{}", cwd.join(p).display())
            }
            _ => listen.to_string(),
        };
        let v = parse_metrics_listen(&listen)
            .map_err(|m| flags.error(None, format!("--metrics: {m}")))?;
        if let Some(m) = exposure(&v, self.metrics.allow_non_loopback) {
            return Err(flags.error(None, format!("--metrics: {m}")));
        }
        if matches!(&v, MetricsListen::Tcp(a) if !a.ip().is_loopback()) {
            self.warnings.push(format!(
                "--metrics {v}: the metrics (client and tool names) are served without authentication"
            ));
        }
        self.metrics.listen = Some(v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(text: &str) -> Result<Policy, ConfigError> {
        Policy::from_toml("t.toml", text, &|p: &Path| Ok(p.to_path_buf()))
    }

    #[test]
    fn off_by_default_and_loopback_or_unix_when_on() {
        let p = policy("[clients.a]\n").unwrap();
        assert_eq!(p.metrics(), &MetricsSettings::default());
        assert!(p.metrics().listen.is_none());
        assert!(p.describe().contains("metrics: off\n"), "{}", p.describe());
        let p = policy("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(
            p.metrics().listen,
            Some(MetricsListen::Tcp("127.0.0.1:9464".parse().unwrap()))
        );
        assert!(p
            .describe()
            .contains("metrics: 127.0.0.1:9464 (GET /metrics"));
        let p = policy("[metrics]\nlisten = \"localhost:9464\"\n").unwrap();
        assert_eq!(
            p.metrics().listen,
            Some(MetricsListen::Tcp("127.0.0.1:9464".parse().unwrap()))
        );
        let p = policy("[metrics]\nlisten = \"[::1]:9464\"\n").unwrap();
        assert!(matches!(p.metrics().listen, Some(MetricsListen::Tcp(a)) if a.ip().is_loopback()));
        let p = policy("[metrics]\nlisten = \"unix:/run/mcpd/metrics.sock\"\n").unwrap();
        assert_eq!(
            p.metrics().listen,
            Some(MetricsListen::Unix("/run/mcpd/metrics.sock".into()))
        );
        assert!(p
            .describe()
            .contains("metrics: unix:/run/mcpd/metrics.sock"));
        assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    }

    #[test]
    fn a_non_loopback_address_is_refused_unless_allowed() {
        let e = policy("[clients.a]\n[metrics]\nlisten = \"0.0.0.0:9464\"\n").unwrap_err();
        assert!(
            e.message
                .contains("metrics.listen: 0.0.0.0:9464 is not a loopback address"),
            "{e}"
        );
        assert_eq!((e.line, e.column), (Some(3), Some(10)), "{e}");
        let e = policy("[metrics]\nlisten = \"192.0.2.1:9464\"\n").unwrap_err();
        assert!(e.message.contains("not a loopback"), "{e}");
        let p =
            policy("[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_non_loopback = true\n").unwrap();
        assert_eq!(
            p.metrics().listen,
            Some(MetricsListen::Tcp("0.0.0.0:9464".parse().unwrap()))
        );
        assert!(
            p.warnings()
                .iter()
                .any(|w| w.contains("without authentication on 0.0.0.0:9464")),
            "{:?}",
            p.warnings()
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        for (text, msg) in [
            (
                "[metrics]\nlisten = \"unix:rel.sock\"\n",
                "not an absolute path",
            ),
            (
                "[metrics]\nlisten = \"unix:/a/../b\"\n",
                "without '.' or '..'",
            ),
            (
                "[metrics]\nlisten = \"metrics.internal:9464\"\n",
                "not resolved",
            ),
            ("[metrics]\nlisten = \"9464\"\n", "or unix:/ABSOLUTE/PATH"),
            ("[metrics]\npath = \"/x\"\n", "path"),
        ] {
            let e = policy(text).unwrap_err();
            assert!(e.to_string().contains(msg), "{text}: {e}");
            assert!(e.to_string().starts_with("t.toml:2:"), "{text}: {e}");
        }
    }

    #[test]
    fn the_flag_replaces_the_file_under_the_same_rule() {
        let mut p = policy("[metrics]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        p.apply_metrics_flag("127.0.0.1:0", Path::new("/cwd"))
            .unwrap();
        assert_eq!(
            p.metrics().listen,
            Some(MetricsListen::Tcp("127.0.0.1:0".parse().unwrap()))
        );
        p.apply_metrics_flag("unix:m.sock", Path::new("/cwd"))
            .unwrap();
        assert_eq!(
            p.metrics().listen,
            Some(MetricsListen::Unix("/cwd/m.sock".into()))
        );
        let e = p
            .apply_metrics_flag("10.0.0.1:9464", Path::new("/cwd"))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("<flags>: --metrics: 10.0.0.1:9464 is not a loopback address"),
            "{e}"
        );
        assert_eq!(
            p.metrics().listen,
            Some(MetricsListen::Unix("/cwd/m.sock".into())),
            "unchanged"
        );
        let mut p = policy("[metrics]\nallow_non_loopback = true\n").unwrap();
        assert!(p.metrics().listen.is_none());
        p.apply_metrics_flag("0.0.0.0:9464", Path::new("/"))
            .unwrap();
    }
}
