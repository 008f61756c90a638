#!/usr/bin/env bash
# The benchmark: slbd beside route-only, the kernel's own NAT (nft dnat), HAProxy and the
# write-back ceiling, in one lab, interleaved over rounds. Installs what it needs (Debian 12,
# root), builds in release mode, and writes the table, raw CSV and chart to
# bench/results/DATE/ (or --out DIR). Extra flags go to slb-bench:
#   --rounds N (3)  --seconds S per measurement (5)  --variants route,nft-dnat,haproxy,writeback,slbd
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
need=()
for pkg in nginx-light haproxy wrk iperf3 conntrack fonts-dejavu-core; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --bins -q
out="bench/results/$(date +%F)"
exec ./target/release/slb-bench --out "$out" "$@"
