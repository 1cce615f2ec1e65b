#!/usr/bin/env bash
# Build release mcpd, install the reference server-filesystem from npm (pinned), and run the
# stdio benchmark comparing both in one run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/.." && pwd)"
cargo build --release --locked -p mcpd -p mcpd-worker -p mcpd-bench --manifest-path "$top/Cargo.toml"
ref_pkg="@modelcontextprotocol/server-filesystem@${REFERENCE_VERSION:-2026.8.31}"
if [ ! -f "$here/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js" ]; then
  npm install --no-audit --no-fund --prefix "$here" "$ref_pkg" >/dev/null
fi
python3 "$here/stdio_bench.py" --mcpd "$top/target/release/mcpd" \
  --reference "$here/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js" "$@"

# The same measurement with a compiled client (bench/client), whose own overhead per round trip
# is a few microseconds instead of Python's ~25: closer to the servers' own latency.
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT
head -c 3072 /dev/urandom | base64 -w 64 | head -c 4096 > "$data/file4k.txt"
echo
echo "compiled client (mcpd-stdio-bench), same file size, 2000 calls after 200 warm-up, cold start median of 20:"
m=$("$top/target/release/mcpd-stdio-bench" --file "$data/file4k.txt" -- "$top/target/release/mcpd" serve --stdio --allow-read "$data" --log warn)
r=$("$top/target/release/mcpd-stdio-bench" --file "$data/file4k.txt" -- node "$here/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js" "$data")
echo "mcpd:      $m"
echo "reference: $r"
python3 - "$m" "$r" <<'PY'
import json, sys
m, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ratios mcpd/reference (compiled client): p50 {m['p50_us']/r['p50_us']:.3f} (target <= 0.200), "
      f"p99 {m['p99_us']/r['p99_us']:.3f}, throughput x{m['calls_per_s']/r['calls_per_s']:.1f}, "
      f"cold start {m['cold_median_ms']/r['cold_median_ms']:.3f}")
PY
