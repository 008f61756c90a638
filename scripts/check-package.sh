#!/bin/bash
# Checks slb's Debian package the way an operator would meet it: what it contains (binaries,
# units, tmpfiles entry, man pages, completions, 0600 conffiles), then installs it with dpkg
# into a throw-away Debian 12 root (mmdebstrap, with systemd), runs every binary there,
# verifies the systemd units against that root, applies the tmpfiles entry, and purges it.
# Usage: scripts/check-package.sh target/debian/slb_VERSION_amd64.deb
set -euo pipefail
deb=${1:?usage: $0 PACKAGE.deb}
fail() {
    echo "check-package: $*" >&2
    exit 1
}

contents=$(dpkg-deb -c "$deb")
want=(
    ./usr/sbin/slbd ./usr/sbin/slbctl ./usr/sbin/amgr ./usr/sbin/slb-heartbeat ./usr/sbin/slb-node-config
    ./usr/sbin/slb-dr-server ./usr/sbin/slb-bird-config
    ./usr/lib/systemd/system/slbd.service ./usr/lib/systemd/system/amgr.service
    ./usr/lib/tmpfiles.d/slb.conf ./etc/slb/slb_conf.json ./etc/slb/amgr.json
    ./usr/share/doc/slb/README.md ./usr/share/doc/slb/slb_conf.md ./usr/share/doc/slb/amgr.md
)
for bin in slbd slbctl amgr slb-heartbeat; do
    want+=("./usr/share/man/man8/$bin.8.gz" "./usr/share/bash-completion/completions/$bin"
        "./usr/share/zsh/vendor-completions/_$bin" "./usr/share/fish/vendor_completions.d/$bin.fish")
done
for path in "${want[@]}"; do
    grep -q " $path\$" <<<"$contents" || fail "$path is missing from $deb"
done
for conf in ./etc/slb/slb_conf.json ./etc/slb/amgr.json; do
    grep -q "^-rw------- 0/0 .* $conf\$" <<<"$contents" || fail "$conf is not root-owned 0600"
done
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
for conf in /etc/slb/slb_conf.json /etc/slb/amgr.json; do
    grep -qx "$conf" <<<"$conffiles" || fail "$conf is not a conffile"
done
echo "check-package: contents ok (${#want[@]} paths, conffiles 0600)"

work=$(mktemp -d /tmp/slb-package-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp "$deb" "$work/slb.deb"
# The .deb must be at the same path inside the new root as outside for --include.
mmdebstrap --quiet --variant=apt \
    --setup-hook="mkdir -p \"\$1$work\" && cp $work/slb.deb \"\$1$work/\"" \
    --include="systemd,$work/slb.deb" bookworm "$work/root" ||
    fail "installing $deb into a fresh Debian 12 root failed"
root=$work/root
# shellcheck disable=SC2016 # ${Status} is dpkg-query's field, not a shell expansion
chroot "$root" dpkg-query -W -f='${Status}\n' slb | grep -q "install ok installed" || fail "slb is not installed"
for bin in slbd slbctl amgr slb-heartbeat; do
    version=$(chroot "$root" "/usr/sbin/$bin" --version) || fail "$bin --version failed in the new root"
    echo "check-package: $version"
done
chroot "$root" /usr/sbin/slbd --check --config /etc/slb/slb_conf.json >/dev/null ||
    fail "the packaged slb_conf.json does not pass slbd --check"
chroot "$root" /usr/sbin/amgr run --check --config /etc/slb/amgr.json >/dev/null ||
    fail "the packaged amgr.json does not pass amgr run --check"
chroot "$root" /usr/sbin/slb-node-config --help >/dev/null || fail "slb-node-config --help failed"
chroot "$root" /usr/sbin/slb-dr-server --help >/dev/null || fail "slb-dr-server --help failed"
chroot "$root" /usr/sbin/slb-bird-config --help >/dev/null || fail "slb-bird-config --help failed"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify --man=no --root="$root" \
        "$root/usr/lib/systemd/system/slbd.service" "$root/usr/lib/systemd/system/amgr.service" ||
        fail "systemd-analyze verify refused the units"
    echo "check-package: systemd-analyze verify: slbd.service amgr.service ok"
fi
systemd-tmpfiles --root="$root" --create slb.conf
[ "$(stat -c %a "$root/run/slb")" = 700 ] || fail "/run/slb is not 0700 after systemd-tmpfiles"
chroot "$root" dpkg --purge slb >/dev/null || fail "dpkg --purge slb failed"
if [ -e "$root/usr/sbin/slbd" ] || [ -e "$root/etc/slb/slb_conf.json" ]; then
    fail "purge left files behind"
fi
echo "check-package: $deb installs, runs, verifies and purges cleanly"
