#!/usr/bin/env bash
# Concurrent stdio sessions with and without the broker's poll after a worker request
# (server.ipc_spin_us): K clients (bench/client), each with its own mcpd and worker, run 6000
# sequential read_text_file calls and 6000 pings at once; prints the wall time of the whole
# batch and the median of the clients' call p50, alternating the two settings REPS times.
# Usage: bench/sessions.sh [K...]   (default: 1 2 4 8; REPS=4)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/.." && pwd)"
cargo build --release --locked -p mcpd -p mcpd-worker -p mcpd-bench --manifest-path "$top/Cargo.toml" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/data"
head -c 3072 /dev/urandom | base64 -w 64 | head -c 4096 > "$work/data/file4k.txt"
for spin in 0 100; do
  printf '[server]\nipc_spin_us = %s\n[stdio]\nclient = "bench"\n[clients.bench]\nread = ["%s"]\n' \
    "$spin" "$work/data" > "$work/spin$spin.toml"
done
one() { # K SPIN -> "wall_s median_p50_us"
  local k=$1 spin=$2 i t0 t1
  t0=$(date +%s.%N)
  for i in $(seq "$k"); do
    "$top/target/release/mcpd-stdio-bench" --calls 6000 --warmup 200 --cold-runs 0 \
      --file "$work/data/file4k.txt" -- "$top/target/release/mcpd" serve --stdio \
      --config "$work/spin$spin.toml" --log warn > "$work/out.$i" &
  done
  wait
  t1=$(date +%s.%N)
  python3 - "$k" "$t0" "$t1" "$work" <<'PY'
import json, statistics, sys
k, t0, t1, work = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
p50 = statistics.median(json.load(open(f"{work}/out.{i}"))["p50_us"] for i in range(1, k + 1))
print(f"{t1 - t0:.2f} {p50:.0f}")
PY
}
echo "sessions  ipc_spin_us  wall s (each rep)            median call p50 us (each rep)"
ks=("$@")
[ ${#ks[@]} -gt 0 ] || ks=(1 2 4 8)
declare -A walls p50s
for k in "${ks[@]}"; do
  walls=() p50s=()
  for _ in $(seq "${REPS:-4}"); do
    for spin in 0 100; do
      read -r w p < <(one "$k" "$spin")
      walls[$spin]="${walls[$spin]:-} $w"
      p50s[$spin]="${p50s[$spin]:-} $p"
    done
  done
  for spin in 0 100; do
    printf '%8s  %11s  %-28s %s\n' "$k" "$spin" "${walls[$spin]}" "${p50s[$spin]}"
  done
done
