#!/usr/bin/env bash
# Build release mcpd, its worker, the load client (bench/client) and the rmcp comparator
# (bench/rmcp-server, a workspace of its own), then run bench/http_bench.py: mcpd against rmcp
# over Streamable HTTP, interleaved, at 1, 16, 64, 256 and 1000 sessions. Arguments go to
# http_bench.py (e.g. --levels 1,64 --secs 2 --rounds 1). Results: bench/results/http-*.json.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/.." && pwd)"
cargo build --release --locked -p mcpd -p mcpd-worker -p mcpd-bench --manifest-path "$top/Cargo.toml" >&2
cargo build --release --locked --manifest-path "$here/rmcp-server/Cargo.toml" >&2
exec python3 "$here/http_bench.py" "$@"
