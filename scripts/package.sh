#!/bin/bash
# Builds slb's Debian package: the release binaries, their man pages and shell completions
# (generated from each binary's own clap definition), then cargo-deb. Prints the .deb's path.
# Needs cargo-deb (scripts/setup.sh --package installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bins -p slbd -p slbctl -p amgr -p heartbeat
out=target/slb-package
rm -rf "$out"
mkdir -p "$out"/{man,bash,zsh,fish}
for bin in slbd slbctl amgr slb-heartbeat; do
    "target/release/$bin" --generate-man | gzip -9n >"$out/man/$bin.8.gz"
    "target/release/$bin" --generate-completions bash >"$out/bash/$bin"
    "target/release/$bin" --generate-completions zsh >"$out/zsh/_$bin"
    "target/release/$bin" --generate-completions fish >"$out/fish/$bin.fish"
done
cargo deb --no-build --strip --quiet -p slbd --output target/debian/
