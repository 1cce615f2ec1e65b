#!/usr/bin/env bash
# Install what the test suite needs beyond Rust (idempotent; `.ci/run` calls it too):
#   the official Python MCP SDK mcp==2.3.0 (a real client: tests/tests/python_sdk.rs, jwt.rs,
#     tls.rs) and the Prometheus client prometheus-client==0.26.0 (its OpenMetrics parser reads
#     /metrics: tests/tests/metrics.rs) — into the interpreter MCPD_TEST_PYTHON names (default
#     python3), e.g. a venv's;
#   Node 22 and the official conformance suites 0.1.16 and 0.2.0-alpha.12 in target/conformance
#     (tests/conformance/install.sh; MCPD_CONFORMANCE_DIR to put them elsewhere);
#   groff (Debian: groff-base), which renders the man pages in broker/tests/manpages.rs,
#     nginx (nginx-light) and HAProxy (haproxy), the load balancers in front of two instances in
#     tests/tests/balancer.rs, and for tests/tests/dbus.rs a private bus (dbus-daemon), busctl
#     (systemd) and gdbus (libglib2.0-bin).
# The kernel features (Landlock, seccomp, namespaces, cgroups) and root for the sandbox tests
# come from the machine; `mcpd doctor` says what it offers.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: groff (the man pages), nginx and HAProxy (the balancers of tests/tests/balancer.rs).
missing=()
command -v groff >/dev/null 2>&1 || missing+=(groff-base)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# The D-Bus transport's tests (tests/tests/dbus.rs): a private bus and two command-line callers.
command -v dbus-daemon >/dev/null 2>&1 || missing+=(dbus-daemon)
command -v busctl >/dev/null 2>&1 || missing+=(systemd)
command -v gdbus >/dev/null 2>&1 || missing+=(libglib2.0-bin)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
  fi
fi
if command -v groff >/dev/null 2>&1; then groff --version | head -n 1; fi
py="${MCPD_TEST_PYTHON:-python3}"
if [ -n "${VIRTUAL_ENV:-}" ] || [ "$(id -u)" -ne 0 ]; then
  "$py" -m pip install --quiet --disable-pip-version-check "mcp==2.3.0" "prometheus-client==0.26.0"
else
  "$py" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "mcp==2.3.0" "prometheus-client==0.26.0"
fi
"$py" -c "import importlib.metadata as m; print('python mcp SDK', m.version('mcp'))"
"$py" -c "import importlib.metadata as m; print('python prometheus-client', m.version('prometheus-client'))"
bash tests/conformance/install.sh
