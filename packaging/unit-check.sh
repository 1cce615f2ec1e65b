#!/usr/bin/env bash
# systemd-analyze on mcpd's units in DIR: `verify` must print nothing, and every service's
# `security --offline=yes` exposure must be at most 1.5. A template whose instance is a port
# (mcpd-http@.socket, ListenStream=127.0.0.1:%i) is checked as instance 8081; the Accept=yes
# template (mcpd@.service) as systemd's own placeholder instance.
#   bash packaging/unit-check.sh packaging/systemd     # the source tree (binaries not installed)
#   bash packaging/unit-check.sh /usr/lib/systemd/system --installed
set -euo pipefail
dir=$1
installed=${2:-}
threshold=1.5
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for f in "$dir"/mcpd*.socket "$dir"/mcpd*.service; do
  name=$(basename "$f")
  case "$name" in
    mcpd-http@.socket | mcpd-http@.service)
      cp "$dir/mcpd-http@.socket" "$work/mcpd-http@8081.socket"
      cp "$dir/mcpd-http@.service" "$work/mcpd-http@8081.service"
      target="$work/${name/@./@8081.}"
      ;;
    *) target=$f ;;
  esac
  problems=$(systemd-analyze verify --man=no "$target" 2>&1 || true)
  if [ -z "$installed" ]; then
    # The binaries are not installed here: that one complaint is expected.
    problems=$(printf '%s\n' "$problems" | grep -v -E 'Command /usr/bin/mcpd is not executable' || true)
  fi
  if [ -n "$problems" ]; then
    echo "$problems"
    echo "systemd-analyze verify failed for $name"
    exit 1
  fi
  echo "verify $name: ok"
  case "$name" in
    *.service)
      score=$(systemd-analyze security --offline=yes --no-pager "$target" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
      echo "security $name: exposure $score (threshold $threshold)"
      if ! awk -v s="$score" -v t="$threshold" 'BEGIN { exit !(s != "" && s + 0 <= t + 0) }'; then
        echo "$name: exposure $score is above $threshold"
        exit 1
      fi
      ;;
  esac
done
