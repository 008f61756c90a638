#!/usr/bin/env bash
# The demo: builds slb, makes a client, two balancers (an amgr pair, each with slbd and sshd)
# and 3 real servers in network namespaces, shows requests to the VIP spread over the servers,
# kills the ACTIVE balancer while a client keeps requesting and prints the service gap, then
# switches back and removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bins -q
exec ./target/release/slb-lab demo
