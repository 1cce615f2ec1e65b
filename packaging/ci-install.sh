#!/usr/bin/env bash
# The Debian package's install/purge cycle on this machine (`.ci/run` calls it; run it as root
# on a machine where no mcpd package is installed):
#   build the .deb (cargo deb -p mcpd), install it with dpkg -i, then check the installed
#   files, user and key; systemd-analyze verify and security (exposure <= 1.5) on the
#   *installed* units; the installed `mcpd check-config` on the installed configuration; the
#   installed binary as a stdio server against the official Python SDK, and the audit chain
#   it wrote verified with the installed key; finally dpkg --purge, and nothing left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "package check FAILED: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"
if dpkg-query -W -f='${Status}' mcpd 2>/dev/null | grep -q "install ok"; then
  fail "an mcpd package is installed already; purge it first"
fi
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb

echo "== cargo deb -p mcpd"
rm -f target/debian/mcpd_*.deb
cargo deb -p mcpd --locked 2>&1 | tail -n 3
deb=$(ls target/debian/mcpd_*.deb)
dpkg-deb --info "$deb" | sed -n '/Package:/,/Description:/p'
dpkg-deb --contents "$deb" | awk '{print $1, $2, $6}'

echo "== dpkg -i"
trap 'dpkg --purge mcpd >/dev/null 2>&1 || true' EXIT
dpkg -i "$deb"

echo "== installed files, user, directories, key"
for f in /usr/bin/mcpd /usr/libexec/mcpd/mcpd-worker; do [ -x "$f" ] || fail "$f missing"; done
for f in /etc/mcpd/mcpd.toml /usr/lib/sysusers.d/mcpd.conf /usr/lib/tmpfiles.d/mcpd.conf \
  /usr/share/man/man8/mcpd.8.gz /usr/share/man/man5/mcpd.toml.5.gz \
  /usr/share/bash-completion/completions/mcpd /usr/lib/systemd/system/mcpd-dbus.service \
  /usr/share/dbus-1/system.d/org.mcpd.Server1.conf \
  /usr/share/dbus-1/system-services/org.mcpd.Server1.service \
  /usr/share/dbus-1/interfaces/org.mcpd.Server1.xml /usr/share/doc/mcpd/dbus.md; do
  [ -e "$f" ] || [ -e "${f%.gz}" ] || fail "$f missing"
done
dpkg-query -W -f='${Conffiles}\n' mcpd | grep -q '/etc/mcpd/mcpd.toml' || fail "mcpd.toml is not a conffile"
id mcpd >/dev/null || fail "no mcpd user"
getent group mcpd-clients >/dev/null || fail "no mcpd-clients group"
[ "$(stat -c '%a %U:%G' /var/log/mcpd)" = "750 mcpd:mcpd" ] || fail "/var/log/mcpd is $(stat -c '%a %U:%G' /var/log/mcpd)"
[ "$(stat -c '%a %U:%G' /etc/mcpd/audit.key)" = "600 mcpd:mcpd" ] || fail "/etc/mcpd/audit.key is $(stat -c '%a %U:%G' /etc/mcpd/audit.key)"
[ -s /etc/mcpd/audit.pub ] || fail "no public key"
/usr/bin/mcpd --version
/usr/libexec/mcpd/mcpd-worker --version
# A reinstall (the configure step again) keeps the key: never regenerated or overwritten.
sum=$(sha256sum /etc/mcpd/audit.key)
dpkg -i "$deb" >/dev/null
[ "$(sha256sum /etc/mcpd/audit.key)" = "$sum" ] || fail "reinstalling changed the audit key"

echo "== systemd-analyze on the installed units"
bash packaging/unit-check.sh /usr/lib/systemd/system --installed

echo "== installed mcpd check-config on the installed configuration"
out=$(/usr/bin/mcpd check-config)
echo "$out" | tail -n 3
echo "$out" | grep -q "configuration OK" || fail "check-config: $out"
echo "$out" | grep -qi "checkpoint_key is not set" && fail "the package's configuration has no checkpoint key"

echo "== installed mcpd as a stdio server, driven by the Python SDK"
py="${MCPD_TEST_PYTHON:-python3}"
"$py" tests/python/installed_stdio.py /usr/bin/mcpd
[ -s /var/log/mcpd/audit.jsonl ] || fail "no audit log written"
/usr/bin/mcpd audit verify --key /etc/mcpd/audit.pub /var/log/mcpd/audit.jsonl
/usr/bin/mcpd audit tail -n 5 /var/log/mcpd/audit.jsonl

echo "== dpkg --purge"
trap - EXIT
dpkg --purge mcpd
for f in /usr/bin/mcpd /usr/libexec/mcpd /etc/mcpd /var/log/mcpd /var/lib/mcpd \
  /usr/lib/systemd/system/mcpd-http.service /usr/lib/systemd/system/mcpd-dbus.service \
  /usr/share/dbus-1/system.d/org.mcpd.Server1.conf; do
  [ ! -e "$f" ] || fail "$f left behind after purge"
done
echo "package: install, checks and purge OK"
