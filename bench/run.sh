#!/usr/bin/env bash
# Build release mcpd, install the reference server-filesystem from npm (pinned), and run the
# stdio benchmark comparing both in one run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/.." && pwd)"
cargo build --release --locked -p mcpd -p mcpd-worker --manifest-path "$top/Cargo.toml"
ref_pkg="@modelcontextprotocol/server-filesystem@${REFERENCE_VERSION:-2026.8.31}"
if [ ! -f "$here/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js" ]; then
  npm install --no-audit --no-fund --prefix "$here" "$ref_pkg" >/dev/null
fi
python3 "$here/stdio_bench.py" --mcpd "$top/target/release/mcpd" \
  --reference "$here/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js" "$@"
