#!/usr/bin/env bash
# Soak run: SESSIONS stdio clients (one broker per session) and SESSIONS HTTP clients (one
# broker) churn sessions for MINUTES on loopback — open, file reads and listings, run_command
# of an allowed program, run_code, close — while the HTTP broker's fds, RSS and threads, the
# mcpd-worker processes and this run's cgroups are sampled every SOAK_SAMPLE_SECS (5). Prints
# the table and exits 1 if any of them grows without bound, anything is left at the end, or a
# call failed (bench/soak.py has the criteria). Stops by itself.
# Usage: bench/soak.sh MINUTES SESSIONS     (e.g. bench/soak.sh 15 4)
# Env: PROFILE=debug|release (release), CARGO_TARGET_DIR, SOAK_TOL (0.25), SOAK_SAMPLE_SECS (5).
set -euo pipefail
[ $# -eq 2 ] || { sed -n '2,9p' "$0" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/.." && pwd)"
profile="${PROFILE:-release}"
flag=(); [ "$profile" = release ] && flag=(--release)
cargo build "${flag[@]}" -p mcpd -p mcpd-worker --manifest-path "$top/Cargo.toml" >&2
bin="${CARGO_TARGET_DIR:-$top/target}/$profile"
exec python3 "$here/soak.py" "$bin/mcpd" "$bin/mcpd-worker" "$1" "$2"
