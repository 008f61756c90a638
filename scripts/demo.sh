#!/usr/bin/env bash
# The demo: builds slb, makes a client, a balancer and 3 real servers in network namespaces,
# starts slbd, prints which real server answered each request to the VIP, then removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bins -q
exec ./target/release/slb-lab demo
