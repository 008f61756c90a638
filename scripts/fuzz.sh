#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside bytes (fuzz/fuzz_targets): each target
# for SECONDS (default 30), started from its seed corpus (fuzz/corpus, the unit tests'
# fixtures) in a scratch copy. libFuzzer through cargo-fuzz with --sanitizer none: it needs
# no nightly toolchain (the sanitizers do), and a Rust panic is the crash being looked for;
# debug assertions are on, so an arithmetic overflow is one too. A crash fails the run and
# leaves its input under fuzz/artifacts/TARGET/ (turn it into a unit test).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
seconds=${1:-30}
shift || true
if ! command -v cargo-fuzz >/dev/null; then
  cargo install --locked -q cargo-fuzz
fi
cd fuzz
mapfile -t targets < <(if [ $# -gt 0 ]; then printf '%s\n' "$@"; else cargo fuzz list; fi)
cargo fuzz build -O --debug-assertions --sanitizer none >/dev/null
scratch=$(mktemp -d /tmp/slb-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  if cargo fuzz run -O --debug-assertions --sanitizer none "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | grep -o '[0-9]*' || echo '?')
    echo "fuzz $t: $runs runs in ${seconds} s, coverage $cov, corpus $(find "$scratch/$t" -type f | wc -l) inputs, 0 crashes"
  else
    failed=1
    echo "fuzz $t: CRASH"
    grep -E 'panicked|SUMMARY|Test unit written|^thread' "$log" | head -n 20
  fi
done
exit $failed
