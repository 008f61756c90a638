#!/usr/bin/env bash
# Installs what building and running slb needs on Debian 12, as root: the C libraries the
# nftables crates link (libnftnl, libmnl), the tools the lab drives (iproute2, nftables,
# ethtool), a Rust toolchain if there is none, and cargo-nextest for the test suite.
set -euo pipefail
need_apt=()
for pkg in build-essential pkg-config libnftnl-dev libmnl-dev nftables iproute2 ethtool ca-certificates curl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  # Debian 12's own rustc is too old for the dependencies; rustup installs a current stable.
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if [ "${1:-}" = "--tests" ] && ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
