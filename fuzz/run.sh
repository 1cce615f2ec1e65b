#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 10), one after the other, starting from its
# committed seed corpus (fuzz/corpus/<target>/; new inputs go to a scratch copy, so the
# committed corpus only changes when someone adds to it on purpose). Stops at the first crash,
# leak, timeout or out-of-memory, printing the target and the artifact path.
#
#   bash fuzz/run.sh 10            # every target, 10 s each
#   bash fuzz/run.sh 600 seal_state  # one target (or several), 10 minutes
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install --locked cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-10}
shift || true
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
work=${FUZZ_WORK:-$(mktemp -d)}
mkdir -p artifacts
echo "fuzz: ${#targets[@]} target(s), ${secs}s each, scratch corpora in $work"
cargo +nightly fuzz build 2>&1 | tail -n 3
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "artifacts/$t"
  [ -d "corpus/$t" ] && cp -n corpus/"$t"/* "$work/$t"/ 2>/dev/null || true
  log="$work/$t.log"
  set +e
  # -timeout: an input running longer than 10 s is a hang; -rss_limit_mb: 2 GiB is an OOM.
  cargo +nightly fuzz run "$t" "$work/$t" -- -max_total_time="$secs" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$PWD/artifacts/$t/" >"$log" 2>&1
  status=$?
  set -e
  execs=$(grep -m1 -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  cov=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+' || true)
  if [ "$status" -ne 0 ]; then
    echo "FAIL $t (exit $status)"
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|deadly signal|Test unit written' "$log" | head -n 20
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/Test unit written to //')
    echo "artifact: ${artifact:-$PWD/artifacts/$t/ (none written)}"
    echo "full log: $log"
    echo "reproduce: (cd fuzz && cargo +nightly fuzz run $t ${artifact:-artifacts/$t/})"
    exit 1
  fi
  printf 'ok   %-22s %10s execs  %s\n' "$t" "${execs:-?}" "$cov"
done
echo "fuzz: all ${#targets[@]} target(s) ran ${secs}s without a crash"
