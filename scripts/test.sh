#!/usr/bin/env bash
# The whole test suite: formatting, clippy, unit tests and the network-namespace lab tests
# against the real binaries (needs root: the lab builds namespaces, nftables rules and queues),
# then what ships: the Vagrant files and shell scripts, and the Debian package (built, its
# contents checked, installed into a throw-away root, its units verified).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --tests
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
# The lab tests run the slbd and lab-server binaries, so build them first.
cargo build --bins -q
cargo nextest run --workspace --no-fail-fast
scripts/check-vagrant.sh
deb=$(scripts/package.sh | tail -n1)
scripts/check-package.sh "$deb"
