#!/usr/bin/env bash
# Installs what building and running slb needs on Debian 12, as root: the C libraries the
# nftables crates link (libnftnl, libmnl) and OpenSSL for ssh2, the tools the lab drives (iproute2, nftables,
# ethtool, sshd), a Rust toolchain if there is none; with --tests also cargo-nextest, cargo-deb
# and the tools that check the package and the Vagrant files; with --vm all of that and what
# the Vagrant bed needs (scripts/vagrant-demo.sh): libvirt, QEMU, vagrant-libvirt, and the
# tools scripts/build-box.sh makes the box with.
set -euo pipefail
mode=${1:-}
tests=
case $mode in --tests | --vm) tests=1 ;; esac
need_apt=()
# libssl-dev: ssh2 (amgr's config sync) builds libssh2 against OpenSSL. openssh-server: the
# pair's lab runs a real sshd in each balancer namespace (the host's ssh service is not started).
# conntrack: the operator's view of offload flows (the lab checks what slbd leaves in conntrack).
missing() {
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
  done
}
mapfile -t need_apt < <(missing build-essential pkg-config libnftnl-dev libmnl-dev libssl-dev nftables \
  iproute2 ethtool ca-certificates curl openssh-client openssh-server conntrack)
# The tests also check what ships: the Vagrantfile (vagrant validate), the shell scripts
# (shellcheck) and the Debian package, installed into a throw-away root (mmdebstrap).
# Without recommends: vagrant's would pull in libvirt, an NFS server and a kernel.
need_ship=()
if [ -n "$tests" ]; then
  # faketime: the failover lab sets one balancer's wall clock off, as a rebooted VM's is.
  # bird2: the cluster lab (tests/src/cluster.rs) runs BIRD in a router namespace and in
  # each balancer's (its host service is not started).
  mapfile -t need_ship < <(missing vagrant shellcheck mmdebstrap faketime bird2)
fi
# The bed (--vm): bookworm's libvirt 9 without recommends (no NFS server, no desktop);
# dnsmasq-base for the management network's DHCP; the box builder's disk tools. QEMU comes
# from the suite of the installed qemu-utils: bookworm's qemu-system-common (7.2) cannot be
# installed beside the backports qemu-utils some images carry, so there QEMU comes from
# bookworm-backports (a source added for it if there is none).
need_vm=() need_qemu=() qemu_suite=bookworm
if [ "$mode" = --vm ]; then
  mapfile -t need_vm < <(missing vagrant-libvirt libvirt-daemon-system libvirt-clients \
    dnsmasq-base iptables rsync extlinux syslinux-common fdisk e2fsprogs)
  # shellcheck disable=SC2016 # ${Version} is dpkg-query's field, not a shell expansion
  case $(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true) in
    *bpo12*) qemu_suite=bookworm-backports ;;
  esac
  mapfile -t need_qemu < <(missing qemu-system-x86 qemu-system-common qemu-system-data seabios qemu-utils)
  if [ ${#need_qemu[@]} -gt 0 ] && [ "$qemu_suite" = bookworm-backports ] &&
    ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
      'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
      >/etc/apt/sources.list.d/bookworm-backports.sources
  fi
fi
if [ $((${#need_apt[@]} + ${#need_ship[@]} + ${#need_vm[@]} + ${#need_qemu[@]})) -gt 0 ]; then
  apt-get update -qq
  # Keep package installs from starting services (sshd, libvirtd on the host): only the lab's
  # and the bed's run, each in its own namespace.
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  if [ ${#need_apt[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  fi
  if [ ${#need_ship[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${need_ship[@]}" >/dev/null
  fi
  if [ ${#need_qemu[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t "$qemu_suite" \
      qemu-system-x86 qemu-system-common qemu-system-data seabios qemu-utils >/dev/null
  fi
  if [ ${#need_vm[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${need_vm[@]}" >/dev/null
  fi
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  # Debian 12's own rustc is too old for the dependencies; rustup installs a current stable.
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if [ -n "$tests" ] && ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
if [ -n "$tests" ] && ! cargo deb --version >/dev/null 2>&1; then
  cargo install --locked cargo-deb
fi
